//! Layer compression through the binary: the default (gzip level 1, on every core), gzip at
//! level 9 and zstd layers are pushed to the local test registry, fetched with skopeo and read
//! with the system's gzip, zstd and tar, and a zstd image is run with podman. Kiln's own readers
//! are never the judge here.
//!
//! Needs the local registry and base images (`KILN_TEST_REGISTRY`; `bash scripts/test.sh` sets
//! them up).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use kiln_testkit::{podman_check, registry, run_ok, skopeo_fetch};

const TIMEOUT: Duration = Duration::from_secs(300);

/// A layer with text (compressible), noise (not) and the checksums of both, written by the RUN
/// itself so the check does not depend on how anything was read back.
fn context(dir: &Path, reg: &str) {
    fs::write(
        dir.join("Dockerfile"),
        format!(
            "FROM {reg}/kiln-test/busybox:latest\n\
             RUN mkdir -p /data && seq 1 300000 > /data/text \
             && head -c 3000000 /dev/urandom > /data/noise \
             && cd / && sha256sum data/text data/noise > /data/sums\n\
             RUN true\n\
             CMD [\"sh\", \"-c\", \"cd / && sha256sum -c data/sums >/dev/null && echo verified\"]\n"
        ),
    )
    .unwrap();
}

/// Builds and pushes; returns kiln's log.
fn build(ctx: &Path, dest: &str, flags: &[&str]) -> String {
    let out = run_ok(
        Command::new(env!("CARGO_BIN_EXE_kiln-executor"))
            .arg("--context")
            .arg(format!("dir://{}", ctx.display()))
            .args(["--destination", dest, "--insecure", "--insecure-pull"])
            .args(flags),
        TIMEOUT,
    )
    .unwrap_or_else(|e| panic!("kiln build {flags:?} failed: {e}"));
    format!("{}{}", out.stdout, out.stderr)
}

/// The media type and blob path of the image's last layer in an OCI layout.
fn last_layer(layout: &Path) -> (String, PathBuf) {
    let read = |p: PathBuf| -> serde_json::Value {
        serde_json::from_slice(&fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display())))
            .unwrap()
    };
    let blob = |digest: &str| {
        layout
            .join("blobs/sha256")
            .join(digest.trim_start_matches("sha256:"))
    };
    let index = read(layout.join("index.json"));
    let manifest = read(blob(index["manifests"][0]["digest"].as_str().unwrap()));
    let layer = manifest["layers"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    (
        layer["mediaType"].as_str().unwrap().to_string(),
        blob(layer["digest"].as_str().unwrap()),
    )
}

/// Decompresses `blob` with the system tool, extracts it with tar and checks the files against
/// the checksums the RUN wrote.
fn check_with_system_tools(blob: &Path, decompress: &str, out: &Path) {
    fs::create_dir_all(out).unwrap();
    run_ok(
        Command::new("sh").args([
            "-c",
            &format!(
                "{decompress} -dc '{}' | tar -x -C '{}'",
                blob.display(),
                out.display()
            ),
        ]),
        TIMEOUT,
    )
    .unwrap_or_else(|e| panic!("{decompress} | tar failed on {}: {e}", blob.display()));
    let sums = run_ok(
        Command::new("sha256sum")
            .args(["-c", "data/sums"])
            .current_dir(out),
        TIMEOUT,
    )
    .unwrap_or_else(|e| panic!("files in the layer do not match their checksums: {e}"));
    assert!(sums.stdout.contains("data/noise: OK"), "{}", sums.stdout);
    assert!(sums.stdout.contains("data/text: OK"), "{}", sums.stdout);
}

#[test]
fn gzip_and_zstd_layers_are_read_by_standard_tools_and_run() {
    let reg = registry();
    let work = tempfile::tempdir().unwrap();
    let ctx = work.path().join("ctx");
    fs::create_dir_all(&ctx).unwrap();
    context(&ctx, &reg);

    let cases: &[(&str, &[&str], &str, &str)] = &[
        (
            "default",
            &[],
            "application/vnd.oci.image.layer.v1.tar+gzip",
            "gzip",
        ),
        (
            "gzip9",
            &["--compression=gzip", "--compression-level=9"],
            "application/vnd.oci.image.layer.v1.tar+gzip",
            "gzip",
        ),
        (
            "zstd",
            &["--compression", "zstd", "--compression-level", "3"],
            "application/vnd.oci.image.layer.v1.tar+zstd",
            "zstd",
        ),
    ];
    // Repositories of this run only, so what the push finds there is what this build put there.
    let run = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let repo = |name: &str| format!("{reg}/compression-{run}/{name}");
    let mut sizes = Vec::new();
    for (name, flags, media_type, tool) in cases {
        let image = format!("{}:1", repo(name));
        let log = build(&ctx, &image, flags);
        // The RUN layer was uploaded while the build went on (a later RUN, which changes
        // nothing, follows it): the push finds it there (and uploads the base layer and the
        // config).
        assert!(log.contains(" present=1"), "{name}: {log}");
        let layout = work.path().join(format!("layout-{name}"));
        skopeo_fetch(&image, &layout, "t").unwrap_or_else(|e| panic!("{e}"));
        let (got_type, blob) = last_layer(&layout);
        assert_eq!(&got_type, media_type, "{name}");
        check_with_system_tools(&blob, tool, &work.path().join(format!("out-{name}")));
        sizes.push(fs::metadata(&blob).unwrap().len());
    }
    // The level is applied: 300,000 lines of text shrink more at 9 than at 1. The 3 MB of noise
    // is stored by both (never more than a few bytes per 64 KiB over its size).
    assert!(
        sizes[1] < sizes[0],
        "level 9 {} vs level 1 {}",
        sizes[1],
        sizes[0]
    );
    assert!(
        sizes[0] < 3_000_000 + 2_000_000,
        "default layer {} bytes",
        sizes[0]
    );

    // A runtime reads the zstd layer, and the files it sees match their checksums.
    podman_check(&format!("{}:1", repo("zstd")), &[], "verified").unwrap_or_else(|e| panic!("{e}"));

    // Without the trailing RUN the layer is the last one: it goes with the push itself (uploaded
    // with the config, the base layer mounted), not ahead of it just before.
    let dockerfile = fs::read_to_string(ctx.join("Dockerfile")).unwrap();
    fs::write(ctx.join("Dockerfile"), dockerfile.replace("RUN true\n", "")).unwrap();
    let log = build(&ctx, &format!("{}:1", repo("last")), &[]);
    assert!(
        log.contains(" uploaded=2 ") && log.contains(" present=0"),
        "{log}"
    );
}
