//! kiln-warmer end to end, against a real registry (Debian's `docker-registry`) started by
//! each test on a free loopback port with its own storage. Base images are made here (a
//! busybox root from /bin/busybox, small text images, a 64 MiB random layer) with the system's
//! tar and gzip and pushed with kiln's registry client; the warmer runs as its binary, the way a
//! Pod runs it. The registry, the fault proxy and the skip-or-fail policy for missing tools come
//! from `kiln_testkit`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kiln_oci::base_cache::{BaseImageCache, CacheError, DEFAULT_TTL};
use kiln_oci::registry::{OciLayout, Platform, Registry, MEDIA_TYPE_OCI_MANIFEST};
use serde_json::{json, Value};

use kiln_testkit::image::{Layer, MEDIA_TYPE_LAYER_GZIP, MEDIA_TYPE_LAYER_TAR};
use kiln_testkit::{
    bounded, require_tools, rule, run, run_bounded, skopeo_push_layout, tool, Fault, FaultProxy,
    Gate, KillOnDrop, Output, TestCa, TestImage, TestRegistry,
};

/// The digest of a file as the system's `sha256sum` computes it: never kiln's own hashing.
fn sha256_file(p: &Path) -> String {
    let out = run(Command::new(tool("sha256sum")).arg(p));
    format!("sha256:{}", out.split_whitespace().next().unwrap())
}

/// An image pushed to the test registry.
struct Pushed {
    reference: String,
    manifest_digest: String,
    layer_digest: String,
    layer_size: u64,
}

/// Makes a one-layer image from the directory `root` (tar, gzipped when `gzip`) and pushes
/// it to `reference`.
fn push_image(reg: &TestRegistry, work: &Path, root: &Path, reference: &str, gzip: bool) -> Pushed {
    let (pushed, _) = push_layers(reg, work, &[root], reference, gzip);
    pushed
}

/// One layer per directory in `roots`, in order, made by the system's tar and gzip; returns the
/// image and every layer's `(digest, diff_id)`.
fn push_layers(
    reg: &TestRegistry,
    work: &Path,
    roots: &[&Path],
    reference: &str,
    gzip: bool,
) -> (Pushed, Vec<(String, String)>) {
    std::fs::create_dir_all(work).unwrap();
    let mut layers = Vec::new();
    for (i, root) in roots.iter().enumerate() {
        let tar_path = work.join(format!("layer{i}.tar"));
        run(Command::new(tool("tar"))
            .args([
                "--sort=name",
                "--mtime=@1700000000",
                "--owner=0",
                "--group=0",
                "--numeric-owner",
            ])
            .arg("-C")
            .arg(root)
            .arg("-cf")
            .arg(&tar_path)
            .arg("."));
        let diff_id = sha256_file(&tar_path);
        let (path, media_type) = if gzip {
            run(Command::new(tool("gzip")).args(["-n", "-f"]).arg(&tar_path));
            (work.join(format!("layer{i}.tar.gz")), MEDIA_TYPE_LAYER_GZIP)
        } else {
            (tar_path, MEDIA_TYPE_LAYER_TAR)
        };
        layers.push(Layer {
            digest: sha256_file(&path),
            size: std::fs::metadata(&path).unwrap().len(),
            path,
            diff_id,
            media_type: media_type.to_string(),
        });
    }
    let image = TestImage::new(
        layers,
        json!({
            "architecture": Platform::default().architecture,
            "os": "linux",
            "config": {"Cmd": ["/bin/sh"], "Env": ["PATH=/bin"]},
            "created": "2023-11-14T22:13:20Z"
        }),
    );
    let registry = Registry::new(reg.options()).unwrap();
    let manifest_digest = bounded(registry.push_image(
        reference,
        &image.blobs(None),
        &image.manifest,
        MEDIA_TYPE_OCI_MANIFEST,
    ))
    .unwrap();
    let pushed = Pushed {
        reference: reference.to_string(),
        manifest_digest,
        layer_digest: image.layer().digest.clone(),
        layer_size: image.layer().size,
    };
    let digests = image
        .layers
        .iter()
        .map(|l| (l.digest.clone(), l.diff_id.clone()))
        .collect();
    (pushed, digests)
}

/// A busybox root: /bin/busybox and /bin/sh pointing at it.
fn push_busybox(reg: &TestRegistry, work: &Path) -> Pushed {
    let root = work.join("busybox-root");
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
    std::os::unix::fs::symlink("busybox", root.join("bin/sh")).unwrap();
    push_image(
        reg,
        &work.join("busybox"),
        &root,
        &format!("{}/kiln-test/busybox:latest", reg.addr),
        true,
    )
}

fn push_text(reg: &TestRegistry, work: &Path, name: &str, text: &str) -> Pushed {
    let root = work.join(format!("{name}-root"));
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(root.join("hello.txt"), text).unwrap();
    push_image(
        reg,
        &work.join(name),
        &root,
        &format!("{}/kiln-test/{name}:1", reg.addr),
        true,
    )
}

/// A registry of the test's own, once the tools every test here uses are there: the registry,
/// and the system's tar, gzip and sha256sum, which make and check the layers independently of
/// kiln. `None` when one is missing (a failure under `CI=true`): the test returns.
fn start_registry() -> Option<TestRegistry> {
    require_tools(&["docker-registry", "tar", "gzip", "sha256sum"]).then(TestRegistry::start)
}

/// The warmer binary with the test registry's flags and an empty docker config.
fn warmer(reg: &TestRegistry, cache: &Path, termination: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_kiln-warmer"));
    c.arg("--cache-dir")
        .arg(cache)
        .arg("--insecure-registry")
        .arg(&reg.addr)
        .env("DOCKER_CONFIG", reg.docker_config_dir())
        .env("KILN_TERMINATION_LOG", termination)
        .env_remove("KILN_LOG");
    c
}

/// How long one warmer run may take: generous for a loaded machine, but bounded.
const WARM_TIMEOUT: Duration = Duration::from_secs(300);

fn output(cmd: &mut Command) -> (Output, String) {
    let out = run_bounded(cmd, WARM_TIMEOUT).unwrap_or_else(|e| panic!("kiln-warmer: {e}"));
    let log = format!("{}{}", out.stdout, out.stderr);
    (out, log)
}

fn succeed(cmd: &mut Command) -> String {
    let (out, log) = output(cmd);
    assert!(out.success(), "kiln-warmer failed:\n{log}");
    log
}

fn fail(cmd: &mut Command) -> String {
    let (out, log) = output(cmd);
    assert!(!out.success(), "kiln-warmer should have failed:\n{log}");
    log
}

fn status_count(log: &str, status: &str) -> usize {
    log.lines()
        .filter(|l| {
            l.contains(&format!("status=\"{status}\"")) || l.contains(&format!("status={status}"))
        })
        .count()
}

fn termination(path: &Path) -> Vec<(String, String)> {
    let v: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    v["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["reference"].as_str().unwrap().to_string(),
                i["digest"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// Every blob file (not temporary files) in the cache hashes to its name.
fn assert_all_blobs_verify(cache: &Path) {
    for ent in std::fs::read_dir(cache.join("blobs/sha256")).unwrap() {
        let ent = ent.unwrap();
        let name = ent.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        assert_eq!(
            sha256_file(&ent.path()),
            format!("sha256:{name}"),
            "blob {} does not match its digest",
            ent.path().display()
        );
    }
}

#[test]
fn warm_reuse_offline_force_ttl_and_corruption() {
    let Some(mut reg) = start_registry() else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let busybox = push_busybox(&reg, work.path());
    let hello = push_text(&reg, work.path(), "hello", "hello from the cache\n");
    let cache_dir = work.path().join("cache");
    let term = work.path().join("termination-log");
    let platform = Platform::default();

    // First warm: both pulled; the termination message names both with their digests.
    let log = succeed(warmer(&reg, &cache_dir, &term).args([
        "--image",
        &busybox.reference,
        "--image",
        &hello.reference,
    ]));
    assert_eq!(status_count(&log, "pulled"), 2, "{log}");
    assert_eq!(
        termination(&term),
        vec![
            (busybox.reference.clone(), busybox.manifest_digest.clone()),
            (hello.reference.clone(), hello.manifest_digest.clone()),
        ]
    );
    let index: Value =
        serde_json::from_slice(&std::fs::read(cache_dir.join("index.json")).unwrap()).unwrap();
    let entries = index["manifests"].as_array().unwrap();
    assert_eq!(entries.len(), 2, "{index}");
    for e in entries {
        let ann = &e["annotations"];
        assert!(ann["org.opencontainers.image.ref.name"]
            .as_str()
            .unwrap()
            .starts_with(&format!("{}/kiln-test/", reg.addr)));
        assert_eq!(ann["dev.kiln.platform"], platform.to_string());
        assert!(ann["dev.kiln.warmed-at"].as_str().unwrap().ends_with('Z'));
    }

    // Second warm with the registry stopped: everything comes from the cache, so nothing
    // can have been downloaded.
    reg.stop();
    std::fs::remove_file(&term).unwrap();
    let log = succeed(warmer(&reg, &cache_dir, &term).args([
        "--image",
        &busybox.reference,
        "--image",
        &hello.reference,
    ]));
    assert_eq!(status_count(&log, "cached"), 2, "{log}");
    assert_eq!(termination(&term).len(), 2);

    // A build reading the cache with the registry down gets verified images.
    let cache = BaseImageCache::open(&cache_dir, DEFAULT_TTL).unwrap();
    let img = cache
        .lookup(&busybox.reference, &platform)
        .unwrap()
        .expect("busybox is cached");
    assert_eq!(img.manifest_digest, busybox.manifest_digest);
    assert_eq!(img.layers.len(), 1);
    assert_eq!(img.layers[0].digest, busybox.layer_digest);
    assert_eq!(img.layers[0].size, busybox.layer_size);
    assert_eq!(sha256_file(&img.layers[0].path), busybox.layer_digest);
    let by_digest = cache
        .lookup(
            &format!("{}/kiln-test/hello@{}", reg.addr, hello.manifest_digest),
            &platform,
        )
        .unwrap()
        .expect("hello by digest");
    assert_eq!(by_digest.layers[0].digest, hello.layer_digest);

    // --force goes to the registry: with it down, the warm fails and names both images.
    let log = fail(warmer(&reg, &cache_dir, &term).args([
        "--force",
        "--image",
        &busybox.reference,
        "--image",
        &hello.reference,
    ]));
    assert!(log.contains("2 of 2 images could not be warmed"), "{log}");
    assert!(
        log.contains(&busybox.reference) && log.contains(&hello.reference),
        "{log}"
    );
    assert!(
        log.contains("--insecure-registry") || log.contains("cannot reach"),
        "{log}"
    );
    // The failed attempt left the cached copies intact.
    assert!(cache.lookup(&hello.reference, &platform).unwrap().is_some());

    reg.resume();
    let log = succeed(warmer(&reg, &cache_dir, &term).args([
        "--force=true",
        "--image",
        &hello.reference,
    ]));
    assert_eq!(status_count(&log, "pulled"), 1, "{log}");
    assert!(log.contains("fetched_layers=1"), "{log}");

    // An expired tag entry is not used (by digest it still is), and a warm with a short TTL
    // pulls again.
    let short = BaseImageCache::open(&cache_dir, Duration::from_millis(1)).unwrap();
    std::thread::sleep(Duration::from_millis(1100));
    assert!(short.lookup(&hello.reference, &platform).unwrap().is_none());
    assert!(short
        .lookup(
            &format!("{}/kiln-test/hello@{}", reg.addr, hello.manifest_digest),
            &platform
        )
        .unwrap()
        .is_some());
    let log = succeed(warmer(&reg, &cache_dir, &term).args([
        "--cache-ttl=1ms",
        "--image",
        &hello.reference,
    ]));
    assert_eq!(status_count(&log, "pulled"), 1, "{log}");
    // The layer was in the cache and verified: only manifest and config were fetched.
    assert!(
        log.contains("fetched_layers=0") && log.contains("reused_layers=1"),
        "{log}"
    );

    // A corrupted layer is detected by digest, reported with its path, and re-pulled.
    let blob = cache.layout().blob_path(&busybox.layer_digest);
    let mut bytes = std::fs::read(&blob).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&blob, &bytes).unwrap();
    match cache.lookup(&busybox.reference, &platform) {
        Err(CacheError::Corrupt { digest, path, .. }) => {
            assert_eq!(digest, busybox.layer_digest);
            assert_eq!(path, blob);
        }
        other => panic!("corruption not detected: {other:?}"),
    }
    let log = succeed(warmer(&reg, &cache_dir, &term).args(["--image", &busybox.reference]));
    assert!(log.contains("damaged"), "{log}");
    assert!(log.contains("fetched_layers=1"), "{log}");
    let again = cache
        .lookup(&busybox.reference, &platform)
        .unwrap()
        .unwrap();
    assert_eq!(again.manifest_digest, busybox.manifest_digest);
    assert_all_blobs_verify(&cache_dir);
}

#[test]
fn dockerfile_stages_and_partial_failure() {
    let Some(reg) = start_registry() else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let busybox = push_busybox(&reg, work.path());
    let hello = push_text(&reg, work.path(), "hello", "stage two\n");
    let cache_dir = work.path().join("cache");
    let term = work.path().join("termination-log");
    let dockerfile = work.path().join("Dockerfile");
    std::fs::write(
        &dockerfile,
        "ARG REG\nARG NAME=busybox\n\
         FROM ${REG}/kiln-test/${NAME}:latest AS build\nRUN echo hi > /x\n\
         FROM build AS test\nRUN true\n\
         FROM scratch\nCOPY --from=build /x /x\n\
         FROM ${REG}/kiln-test/hello:1\nCOPY --from=test /x /y\n",
    )
    .unwrap();
    let log = succeed(
        warmer(&reg, &cache_dir, &term)
            .arg("--dockerfile")
            .arg(&dockerfile)
            .args(["--build-arg", &format!("REG={}", reg.addr)]),
    );
    assert_eq!(status_count(&log, "pulled"), 2, "{log}");
    assert_eq!(
        termination(&term),
        vec![
            (busybox.reference.clone(), busybox.manifest_digest.clone()),
            (hello.reference.clone(), hello.manifest_digest.clone()),
        ]
    );

    // One missing image among good ones: all are tried, the run fails naming the missing
    // one, and the termination message is not written.
    std::fs::remove_file(&term).unwrap();
    let missing = format!("{}/kiln-test/missing:1", reg.addr);
    let log = fail(
        warmer(&reg, &cache_dir, &term)
            .args(["--image", &missing, "--image", &busybox.reference])
            .arg("--dockerfile")
            .arg(&dockerfile)
            .args(["--build-arg", &format!("REG={}", reg.addr)]),
    );
    assert!(log.contains("1 of 3 images could not be warmed"), "{log}");
    assert!(log.contains(&missing) && log.contains("not found"), "{log}");
    assert_eq!(status_count(&log, "cached"), 2, "{log}");
    assert!(!term.exists());
}

/// Size of the layer the kill test downloads, and how much of it the proxy sends before it holds
/// the rest back: the kill lands mid-transfer by construction, not by timing.
const BIG_LAYER: u64 = 64 << 20;
const SENT_BEFORE_STALL: usize = 8 << 20;

/// Bound on each wait of the kill test: generous for a loaded machine, yet it cannot hang.
const EVENT_TIMEOUT: Duration = Duration::from_secs(120);

#[test]
fn sigkill_mid_download_leaves_no_partial_blob() {
    let Some(reg) = start_registry() else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let root = work.path().join("big-root");
    std::fs::create_dir_all(&root).unwrap();
    let mut random = std::fs::File::create(root.join("random.bin")).unwrap();
    std::io::copy(
        &mut std::io::Read::take(std::fs::File::open("/dev/urandom").unwrap(), BIG_LAYER),
        &mut random,
    )
    .unwrap();
    drop(random);
    let big = push_image(
        &reg,
        &work.path().join("big"),
        &root,
        &format!("{}/kiln-test/big:1", reg.addr),
        false,
    );
    std::fs::remove_dir_all(&root).unwrap();
    // The warmer pulls through a proxy that sends the first part of the layer, says so, and
    // holds the rest until released.
    let gate = Gate::new();
    let hex = big.layer_digest.strip_prefix("sha256:").unwrap();
    let proxy = FaultProxy::start(
        &reg.addr,
        vec![rule(
            "GET",
            hex,
            Fault::Stall(SENT_BEFORE_STALL, gate.clone()),
            1,
        )],
    );
    let big = Pushed {
        reference: format!("{}/kiln-test/big:1", proxy.addr),
        ..big
    };
    let cache_dir = work.path().join("cache");
    let term = work.path().join("termination-log");
    let blobs = cache_dir.join("blobs/sha256");

    let mut child = KillOnDrop(
        warmer(&reg, &cache_dir, &term)
            .args(["--insecure-registry", &proxy.addr])
            .args(["--image", &big.reference])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    assert!(
        gate.wait_reached(EVENT_TIMEOUT),
        "the warmer did not start downloading the layer within {EVENT_TIMEOUT:?}"
    );
    // Part of the layer is on its way and the rest is held back: wait until the layer's
    // temporary file holds some of it, then kill.
    let deadline = Instant::now() + EVENT_TIMEOUT;
    let temp = loop {
        let found = std::fs::read_dir(&blobs).ok().and_then(|rd| {
            rd.flatten().find(|e| {
                e.file_name().to_string_lossy().starts_with(".kiln-blob-")
                    && e.metadata().map(|m| m.len() > 1 << 20).unwrap_or(false)
            })
        });
        if let Some(e) = found {
            break e.path();
        }
        if let Ok(Some(status)) = child.0.try_wait() {
            panic!("kiln-warmer finished ({status}) before it could be killed mid-download");
        }
        assert!(
            Instant::now() < deadline,
            "no data of the layer reached its temporary file within {EVENT_TIMEOUT:?}"
        );
        std::thread::sleep(Duration::from_millis(5));
    };
    child.0.kill().unwrap(); // SIGKILL
    child.0.wait().unwrap();
    // The rest of the held response goes nowhere: its client is gone.
    gate.release();

    let cache = BaseImageCache::open(&cache_dir, DEFAULT_TTL).unwrap();
    let layer_blob = cache.layout().blob_path(&big.layer_digest);
    assert!(
        !layer_blob.exists(),
        "the layer must not be visible under its digest after a kill mid-download"
    );
    let partial = std::fs::metadata(&temp).map(|m| m.len()).unwrap_or(0);
    assert!(
        partial < big.layer_size,
        "the kill came after the download finished"
    );
    assert_all_blobs_verify(&cache_dir);
    assert!(cache
        .lookup(&big.reference, &Platform::default())
        .unwrap()
        .is_none());

    // The next run completes; the leftover temporary file is ignored, and removed once stale.
    let log = succeed(
        warmer(&reg, &cache_dir, &term)
            .args(["--insecure-registry", &proxy.addr])
            .args(["--image", &big.reference]),
    );
    assert_eq!(status_count(&log, "pulled"), 1, "{log}");
    let img = cache
        .lookup(&big.reference, &Platform::default())
        .unwrap()
        .expect("complete after the second run");
    assert_eq!(img.layers[0].digest, big.layer_digest);
    assert_all_blobs_verify(&cache_dir);
    assert_eq!(
        termination(&term),
        vec![(big.reference.clone(), big.manifest_digest.clone())]
    );
    if temp.exists() {
        assert!(cache.clean_temp_files(Duration::ZERO).unwrap() >= 1);
        assert!(!temp.exists());
    }
}

#[test]
fn multi_layer_image_keeps_layer_order_and_shares_blobs() {
    let Some(reg) = start_registry() else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let busybox = push_busybox(&reg, work.path());
    let mut roots = Vec::new();
    for i in 0..5 {
        let root = work.path().join(format!("multi-root-{i}"));
        std::fs::create_dir_all(&root).unwrap();
        std::fs::write(
            root.join(format!("file{i}.txt")),
            format!("layer {i}\n").repeat(1000 * (i + 1)),
        )
        .unwrap();
        roots.push(root);
    }
    // The busybox layer comes first, so the two images share a blob.
    let bb_root = work.path().join("busybox-root");
    let mut all: Vec<&Path> = vec![bb_root.as_path()];
    all.extend(roots.iter().map(PathBuf::as_path));
    let (multi, layers) = push_layers(
        &reg,
        &work.path().join("multi"),
        &all,
        &format!("{}/kiln-test/multi:1", reg.addr),
        true,
    );
    assert_eq!(layers[0].0, busybox.layer_digest);

    let cache_dir = work.path().join("cache");
    let term = work.path().join("termination-log");
    let log = succeed(warmer(&reg, &cache_dir, &term).args(["--image", &busybox.reference]));
    assert!(log.contains("fetched_layers=1"), "{log}");
    let log = succeed(warmer(&reg, &cache_dir, &term).args(["--image", &multi.reference]));
    assert!(
        log.contains("fetched_layers=5") && log.contains("reused_layers=1"),
        "{log}"
    );

    let cache = BaseImageCache::open(&cache_dir, DEFAULT_TTL).unwrap();
    let img = cache
        .lookup(&multi.reference, &Platform::default())
        .unwrap()
        .unwrap();
    let got: Vec<(String, String)> = img
        .layers
        .iter()
        .map(|l| (l.digest.clone(), l.diff_id.clone()))
        .collect();
    assert_eq!(got, layers);
    for l in &img.layers {
        assert_eq!(sha256_file(&l.path), l.digest);
        assert_eq!(l.media_type, "application/vnd.oci.image.layer.v1.tar+gzip");
    }
}

#[test]
fn bounds_refuse_oversized_manifests_and_layers_and_insecure_covers_pulls() {
    let Some(reg) = start_registry() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let small = push_text(&reg, tmp.path(), "small", "small\n");
    let root = tmp.path().join("noisy-root");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(
        root.join("noise.bin"),
        kiln_testkit::image::noise(11, 256 << 10),
    )
    .unwrap();
    let noisy = push_image(
        &reg,
        &tmp.path().join("noisy"),
        &root,
        &format!("{}/kiln-test/noisy:1", reg.addr),
        true,
    );
    assert!(noisy.layer_size > 128 << 10, "{}", noisy.layer_size);
    let cache = tmp.path().join("cache");
    let term = tmp.path().join("termination");

    // A manifest over --max-manifest-size is not read, nor anything it names.
    let log = fail(
        warmer(&reg, &cache, &term)
            .args(["--image", &small.reference])
            .arg("--max-manifest-size=100"),
    );
    assert!(
        log.contains("is larger than 100 bytes (the --max-manifest-size bound)")
            && log.contains(&small.reference),
        "{log}"
    );
    assert!(!cache
        .join("blobs/sha256")
        .join(small.layer_digest.trim_start_matches("sha256:"))
        .exists());

    // A layer blob that cannot hold a layer within --max-layer-size is not downloaded.
    let log = fail(
        warmer(&reg, &cache, &term)
            .args(["--image", &noisy.reference])
            .arg("--max-layer-size=1KiB"),
    );
    assert!(
        log.contains(&format!("layer {}", noisy.layer_digest))
            && log.contains("(the --max-layer-size bound)"),
        "{log}"
    );
    assert!(!cache
        .join("blobs/sha256")
        .join(noisy.layer_digest.trim_start_matches("sha256:"))
        .exists());

    // The defaults let both through; the warmer only pulls, so --insecure is plain HTTP for
    // its pulls (no --insecure-registry here).
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kiln-warmer"));
    cmd.arg("--cache-dir")
        .arg(&cache)
        .arg("--insecure")
        .args(["--image", &small.reference, "--image", &noisy.reference])
        .env("DOCKER_CONFIG", reg.docker_config_dir())
        .env("KILN_TERMINATION_LOG", &term)
        .env_remove("KILN_LOG");
    succeed(&mut cmd);
    assert_all_blobs_verify(&cache);
}

/// `image` (one small layer) in `dir` as an OCI layout, tag `v1`.
fn hello_layout(dir: &Path, text: &str) -> (TestImage, PathBuf) {
    let img = TestImage::hello(&dir.join("work"), "amd64", text);
    let layout = dir.join("layout");
    img.write_to_layout(&OciLayout::create(&layout).unwrap(), Some("v1"));
    (img, layout)
}

#[test]
fn pulls_over_tls_with_registry_certificate() {
    if !require_tools(&["docker-registry", "skopeo", "openssl", "sha256sum"]) {
        return;
    }
    let ca = TestCa::new("kiln-warmer-test-ca");
    let reg = TestRegistry::with_tls_from(&ca, None);
    let tmp = tempfile::tempdir().unwrap();
    let (img, layout) = hello_layout(tmp.path(), "over tls\n");
    let image = format!("{}/kiln-test/tls:v1", reg.addr);
    let certs = ca.cert_dir("skopeo", None);
    skopeo_push_layout(
        &layout,
        "v1",
        &image,
        &["--dest-cert-dir", certs.to_str().unwrap()],
    );
    let (cache, term) = (tmp.path().join("cache"), tmp.path().join("termination"));
    let warm = || {
        let mut c = Command::new(env!("CARGO_BIN_EXE_kiln-warmer"));
        c.arg("--cache-dir")
            .arg(&cache)
            .args(["--image", &image])
            .env("DOCKER_CONFIG", reg.docker_config_dir())
            .env("KILN_TERMINATION_LOG", &term)
            .env_remove("KILN_LOG");
        c
    };
    let log = fail(&mut warm());
    assert!(
        log.contains(&format!("--registry-certificate={}=", reg.addr)),
        "no advice to pass the CA:\n{log}"
    );
    succeed(warm().arg(format!(
        "--registry-certificate={}={}",
        reg.addr,
        ca.cert.display()
    )));
    assert_eq!(termination(&term), [(image.clone(), img.manifest_digest)]);
    assert_all_blobs_verify(&cache);
}

#[test]
fn skip_default_registry_fallback_keeps_docker_hub_images_on_the_mirror() {
    let Some(mirror) = start_registry() else {
        return;
    };
    if !require_tools(&["skopeo"]) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (img, layout) = hello_layout(tmp.path(), "mirrored\n");
    skopeo_push_layout(
        &layout,
        "v1",
        &format!("{}/library/hello:v1", mirror.addr),
        &[],
    );
    let (cache, term) = (tmp.path().join("cache"), tmp.path().join("termination"));
    let warm = |image: &str| {
        let mut c = warmer(&mirror, &cache, &term);
        c.args([
            "--registry-mirror",
            &mirror.addr,
            "--skip-default-registry-fallback",
        ])
        .args(["--image", image]);
        c
    };
    succeed(&mut warm("hello:v1"));
    assert_eq!(termination(&term)[0].1, img.manifest_digest);
    // Not on the mirror: an error about the mirror, and Docker Hub is never asked.
    let log = fail(&mut warm("absent:v1"));
    assert!(
        log.contains(&format!("on registry {}", mirror.addr))
            && !log.contains("registry docker.io"),
        "{log}"
    );
}
