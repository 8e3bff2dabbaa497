//! A cache directory filled by kaniko's real warmer (v1.24, built from its Go module by
//! `scripts/kaniko.sh`) serves kiln-executor's `--cache-dir`: the base image's blobs are read
//! from it, never from the registry, which a counting proxy in front of the local test
//! registry (`KILN_TEST_REGISTRY`) shows. A damaged or lying entry is a warning and a pull,
//! never a wrong image.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use kiln_testkit::{registry, run_ok, skip_or_fail, FaultProxy};

const BUILD_TIMEOUT: Duration = Duration::from_secs(300);
/// Where `scripts/kaniko.sh` puts kaniko's warmer (scripts/test.sh runs it before the tests).
const KANIKO_WARMER: &str = "/var/cache/kiln/bin/kaniko-warmer";

/// kaniko's warmer, or `None` (a failure under CI, a loud skip elsewhere) when it is not built.
fn kaniko_warmer() -> Option<PathBuf> {
    let path = PathBuf::from(KANIKO_WARMER);
    if path.is_file() {
        return Some(path);
    }
    skip_or_fail(&format!(
        "{KANIKO_WARMER} is missing: build it with `bash scripts/kaniko.sh --binary-only`"
    ));
    None
}

/// Runs kaniko's warmer on `image` (pulled from the test registry directly) into `dir`.
fn kaniko_warm(warmer: &Path, dir: &Path, image: &str) {
    fs::create_dir_all(dir).expect("cache dir");
    run_ok(
        Command::new(warmer).arg("--cache-dir").arg(dir).args([
            "--image",
            image,
            "--insecure-pull",
        ]),
        BUILD_TIMEOUT,
    )
    .unwrap_or_else(|e| panic!("kaniko's warmer failed: {e}"));
}

/// The one entry kaniko's warmer wrote: (digest, tarball path).
fn kaniko_entry(dir: &Path) -> (String, PathBuf) {
    let mut names: Vec<String> = fs::read_dir(dir)
        .expect("cache dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("sha256:") && !n.ends_with(".json"))
        .collect();
    assert_eq!(names.len(), 1, "kaniko's warmer wrote {names:?}");
    let digest = names.remove(0);
    assert!(
        dir.join(format!("{digest}.json")).is_file(),
        "no manifest beside the tarball"
    );
    (digest.clone(), dir.join(digest))
}

struct Built {
    digest: String,
    log: String,
    layout: PathBuf,
}

/// Builds `FROM <base>` plus a RUN step (so the base is unpacked) into an OCI layout, reading
/// base images from `cache_dir`.
fn build(work: &Path, name: &str, base: &str, cache_dir: &Path) -> Built {
    let ctx = work.join(format!("ctx-{name}"));
    fs::create_dir_all(&ctx).expect("context");
    fs::write(
        ctx.join("Dockerfile"),
        format!("FROM {base}\nRUN echo from-kaniko-cache > /marker\n"),
    )
    .expect("Dockerfile");
    let layout = work.join(format!("out-{name}"));
    let digest_file = work.join(format!("digest-{name}"));
    let out = run_ok(
        Command::new(env!("CARGO_BIN_EXE_kiln-executor"))
            .arg("--context")
            .arg(format!("dir://{}", ctx.display()))
            .args([
                "--destination",
                "kiln.invalid/kaniko-cache/out:1",
                "--no-push",
                "--insecure-pull",
                "--reproducible",
            ])
            .arg("--cache-dir")
            .arg(cache_dir)
            .arg("--oci-layout-path")
            .arg(&layout)
            .arg("--digest-file")
            .arg(&digest_file)
            .env("KILN_TERMINATION_LOG", work.join(format!("term-{name}"))),
        BUILD_TIMEOUT,
    )
    .unwrap_or_else(|e| panic!("kiln build {name} failed: {e}"));
    Built {
        digest: fs::read_to_string(&digest_file)
            .expect("digest file")
            .trim()
            .to_string(),
        log: out.stderr,
        layout,
    }
}

fn blob_requests(proxy: &FaultProxy) -> Vec<String> {
    proxy
        .seen()
        .into_iter()
        .filter(|s| s.path.contains("/blobs/"))
        .map(|s| format!("{} {}", s.method, s.path))
        .collect()
}

/// The layer digests of the single image in an OCI layout.
fn layout_layers(layout: &Path) -> Vec<String> {
    let blob = |d: &str| layout.join("blobs/sha256").join(&d["sha256:".len()..]);
    let index: serde_json::Value =
        serde_json::from_slice(&fs::read(layout.join("index.json")).expect("index")).unwrap();
    let manifest: serde_json::Value = serde_json::from_slice(
        &fs::read(blob(index["manifests"][0]["digest"].as_str().unwrap())).unwrap(),
    )
    .unwrap();
    manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_string())
        .collect()
}

/// The layer digests the manifest of kaniko's entry names.
fn entry_layers(dir: &Path, digest: &str) -> Vec<String> {
    let m: serde_json::Value =
        serde_json::from_slice(&fs::read(dir.join(format!("{digest}.json"))).unwrap()).unwrap();
    m["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_string())
        .collect()
}

/// The multi-platform base (an image index) warmed by kaniko, then built from through a
/// counting proxy: the tag is resolved with manifest requests, no blob is requested, and the
/// image has the base layers of the entry. By digest, the registry is not asked at all.
#[test]
fn kaniko_warmed_directory_serves_base_images_without_blob_requests() {
    let Some(warmer) = kaniko_warmer() else {
        return;
    };
    let work = tempfile::tempdir().expect("temp dir");
    let cache_dir = work.path().join("kaniko-cache");
    kaniko_warm(
        &warmer,
        &cache_dir,
        &format!("{}/kiln-test/busybox:multiarch", registry()),
    );
    let (digest, _) = kaniko_entry(&cache_dir);
    let base_layers = entry_layers(&cache_dir, &digest);

    let proxy = FaultProxy::start(&registry(), Vec::new());
    let by_tag = build(
        work.path(),
        "tag",
        &format!("{}/kiln-test/busybox:multiarch", proxy.addr),
        &cache_dir,
    );
    assert!(
        by_tag.log.contains("read from kaniko's warmed cache"),
        "{}",
        by_tag.log
    );
    assert_eq!(
        blob_requests(&proxy),
        Vec::<String>::new(),
        "base blobs were requested\n{}",
        by_tag.log
    );
    assert!(
        proxy.count("GET", "/manifests/") + proxy.count("HEAD", "/manifests/") >= 1,
        "the tag was not resolved at the registry: {:?}",
        proxy.seen()
    );
    let layers = layout_layers(&by_tag.layout);
    assert_eq!(layers.len(), base_layers.len() + 1, "{layers:?}");
    assert_eq!(layers[..base_layers.len()], base_layers[..]);
    // Nothing was written into kaniko's directory.
    let names: Vec<_> = fs::read_dir(&cache_dir).unwrap().flatten().collect();
    assert_eq!(names.len(), 2, "{names:?}");

    let pinned_proxy = FaultProxy::start(&registry(), Vec::new());
    let by_digest = build(
        work.path(),
        "digest",
        &format!("{}/kiln-test/busybox@{digest}", pinned_proxy.addr),
        &cache_dir,
    );
    assert!(
        by_digest.log.contains("read from kaniko's warmed cache"),
        "{}",
        by_digest.log
    );
    assert!(
        pinned_proxy.seen().is_empty(),
        "a pinned base found in the cache needs no registry: {:?}",
        pinned_proxy.seen()
    );
    assert_eq!(by_digest.digest, by_tag.digest);
}

/// An entry whose layer was altered inside the tarball, or whose manifest file is another
/// image's, is refused with a warning; the base is pulled from the registry and the image is
/// the one a clean build gives.
#[test]
fn damaged_or_lying_kaniko_entries_are_pulled_instead() {
    let Some(warmer) = kaniko_warmer() else {
        return;
    };
    let work = tempfile::tempdir().expect("temp dir");
    let busybox = format!("{}/kiln-test/busybox:latest", registry());
    let clean_dir = work.path().join("clean");
    kaniko_warm(&warmer, &clean_dir, &busybox);
    let proxy = FaultProxy::start(&registry(), Vec::new());
    let base = format!("{}/kiln-test/busybox:latest", proxy.addr);
    let clean = build(work.path(), "clean", &base, &clean_dir);
    assert!(
        clean.log.contains("read from kaniko's warmed cache"),
        "{}",
        clean.log
    );
    assert!(blob_requests(&proxy).is_empty(), "{:?}", proxy.seen());

    // One byte of the layer (the bulk of the tarball, past its config) flipped.
    let damaged_dir = work.path().join("damaged");
    kaniko_warm(&warmer, &damaged_dir, &busybox);
    let (_, tarball) = kaniko_entry(&damaged_dir);
    let mut bytes = fs::read(&tarball).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x55;
    fs::write(&tarball, &bytes).unwrap();

    // The manifest file of another image (kaniko's Debian entry) under busybox's name.
    let lying_dir = work.path().join("lying");
    kaniko_warm(&warmer, &lying_dir, &busybox);
    let (digest, _) = kaniko_entry(&lying_dir);
    let debian_dir = work.path().join("debian");
    kaniko_warm(
        &warmer,
        &debian_dir,
        &format!("{}/kiln-test/debian:bookworm", registry()),
    );
    let (debian, _) = kaniko_entry(&debian_dir);
    fs::copy(
        debian_dir.join(format!("{debian}.json")),
        lying_dir.join(format!("{digest}.json")),
    )
    .unwrap();

    for (name, dir) in [("damaged", &damaged_dir), ("lying", &lying_dir)] {
        let proxy = FaultProxy::start(&registry(), Vec::new());
        let base = format!("{}/kiln-test/busybox:latest", proxy.addr);
        let built = build(work.path(), name, &base, dir);
        assert!(
            built.log.contains("cannot use kaniko's cache entry")
                && built.log.contains("hashes to"),
            "{name}: no warning\n{}",
            built.log
        );
        assert!(
            !blob_requests(&proxy).is_empty(),
            "{name}: the base was not pulled\n{}",
            built.log
        );
        assert_eq!(
            built.digest, clean.digest,
            "{name}: the image differs from the clean build\n{}",
            built.log
        );
    }
}
