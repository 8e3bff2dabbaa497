//! `FROM --platform` against a real registry: a two-platform base index pushed to a
//! [`TestRegistry`], builds for a foreign target platform that take each stage's base for its
//! own platform, the automatic platform ARGs in RUN steps, and a RUN in a foreign stage refused
//! with the platform named. Runs the real kiln-executor binary; talks only to loopback.

mod support;

use std::fs;
use std::path::Path;

use kiln_oci::registry::{OciLayout, Platform, MEDIA_TYPE_OCI_INDEX};
use kiln_testkit::image::tar_with_file;
use kiln_testkit::{
    registry, require_root, require_tools, skopeo_push_layout, Layer, TestImage, TestRegistry,
};
use serde_json::json;
use support::{layout_config, layout_entry, run_executor};

/// An architecture other than this machine's, for the foreign platform.
fn foreign_arch() -> &'static str {
    if Platform::default().architecture == "s390x" {
        "riscv64"
    } else {
        "s390x"
    }
}

/// One small image for `arch` whose `/marker` names that architecture.
fn marker_image(work: &Path, arch: &str) -> TestImage {
    let tar = tar_with_file("marker", format!("{arch}\n").as_bytes());
    let layer = Layer::gzip(&work.join(arch), &tar, flate2::Compression::fast());
    TestImage::new(
        vec![layer],
        json!({
            "architecture": arch,
            "os": "linux",
            "config": {"Env": ["PATH=/bin"]},
            "history": [{"created_by": format!("marker {arch}")}]
        }),
    )
}

/// Pushes `reference` as an index of a marker image for this machine and one for the foreign
/// architecture.
fn push_two_platform_base(work: &Path, reference: &str) {
    let dir = work.join("base-layout");
    let layout = OciLayout::create(&dir).unwrap();
    let host = Platform::default().architecture;
    let mut entries = Vec::new();
    for arch in [host.as_str(), foreign_arch()] {
        let image = marker_image(work, arch);
        image.write_to_layout(&layout, None);
        entries.push(json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": image.manifest_digest,
            "size": image.manifest.len(),
            "platform": {"os": "linux", "architecture": arch}
        }));
    }
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_TYPE_OCI_INDEX,
        "manifests": entries
    }))
    .unwrap();
    layout
        .add_manifest(&index, MEDIA_TYPE_OCI_INDEX, Some("multi"))
        .unwrap();
    skopeo_push_layout(&dir, "multi", reference, &["--all"]);
}

fn context(dir: &Path, dockerfile: &str) -> String {
    let ctx = dir.join("ctx");
    fs::create_dir_all(&ctx).unwrap();
    fs::write(ctx.join("Dockerfile"), dockerfile).unwrap();
    format!("dir://{}", ctx.display())
}

fn ready() -> bool {
    require_root("kiln-executor builds need root") && require_tools(&["docker-registry", "skopeo"])
}

#[test]
fn each_stage_base_is_pulled_for_its_own_platform() {
    if !ready() {
        return;
    }
    let reg = TestRegistry::start();
    let dir = tempfile::tempdir().unwrap();
    let base = format!("{}/kiln-test/marker:1", reg.addr);
    push_two_platform_base(dir.path(), &base);
    let host = Platform::default();
    let foreign = format!("linux/{}", foreign_arch());
    // The cross-compile pattern: tools and builder stages run on this machine's platform, the
    // final stage is the target's and only copies from them.
    let busybox = format!("{}/kiln-test/busybox:latest", registry());
    let dockerfile = format!(
        "FROM --platform=$BUILDPLATFORM {busybox} AS tools\n\
         ARG TARGETARCH\n\
         ARG BUILDARCH\n\
         RUN echo \"$TARGETARCH $BUILDARCH\" > /args\n\
         FROM --platform=$BUILDPLATFORM {base} AS build\n\
         FROM {base}\n\
         COPY --from=build /marker /build-marker\n\
         COPY --from=tools /args /args\n",
    );
    let ctx = context(dir.path(), &dockerfile);
    let layout = dir.path().join("out");
    let (ok, log) = run_executor(
        &[
            "--context",
            &ctx,
            "--no-push",
            "--custom-platform",
            &foreign,
            "--oci-layout-path",
            &layout.display().to_string(),
        ],
        &[],
        None,
    );
    assert!(ok, "{log}");
    let entry = |p: &str| layout_entry(&layout, p).unwrap_or_else(|| panic!("{p} missing"));
    assert_eq!(entry("/marker"), format!("{}\n", foreign_arch()));
    assert_eq!(entry("/build-marker"), format!("{}\n", host.architecture));
    assert_eq!(
        entry("/args"),
        format!("{} {}\n", foreign_arch(), host.architecture)
    );
    let config = layout_config(&layout).unwrap();
    assert_eq!(config["architecture"], foreign_arch());
}

#[test]
fn a_run_in_a_foreign_stage_fails_naming_its_platform() {
    if !ready() {
        return;
    }
    let reg = TestRegistry::start();
    let dir = tempfile::tempdir().unwrap();
    let base = format!("{}/kiln-test/marker:1", reg.addr);
    push_two_platform_base(dir.path(), &base);
    let foreign = format!("linux/{}", foreign_arch());
    let ctx = context(
        dir.path(),
        &format!("FROM --platform={foreign} {base}\nRUN cat /marker\n"),
    );
    let (ok, log) = run_executor(&["--context", &ctx, "--no-push"], &[], None);
    assert!(!ok, "{log}");
    assert!(
        log.contains(&format!("for platform {foreign}")) && log.contains("does not emulate"),
        "{log}"
    );
    assert!(log.contains("line 2"), "{log}");
}

#[test]
fn without_custom_platform_the_config_keeps_the_final_base_platform() {
    if !ready() {
        return;
    }
    let reg = TestRegistry::start();
    let dir = tempfile::tempdir().unwrap();
    let base = format!("{}/kiln-test/marker:1", reg.addr);
    push_two_platform_base(dir.path(), &base);
    let foreign = format!("linux/{}", foreign_arch());
    let ctx = context(
        dir.path(),
        &format!("FROM --platform={foreign} {base}\nENV X=1\n"),
    );
    let layout = dir.path().join("out");
    let (ok, log) = run_executor(
        &[
            "--context",
            &ctx,
            "--no-push",
            "--oci-layout-path",
            &layout.display().to_string(),
        ],
        &[],
        None,
    );
    assert!(ok, "{log}");
    // BuildKit without --platform: the image is the platform of the base it was built on.
    assert_eq!(
        layout_config(&layout).unwrap()["architecture"],
        foreign_arch()
    );
}

/// The manifest of `image` as the registry serves it (`skopeo inspect --raw`).
fn pushed_manifest(image: &str) -> serde_json::Value {
    let out = kiln_testkit::run(
        std::process::Command::new("skopeo")
            .args(["inspect", "--raw", "--tls-verify=false"])
            .arg(format!("docker://{image}")),
    );
    serde_json::from_str(&out).unwrap()
}

#[test]
fn the_pushed_manifest_names_the_final_base_image() {
    if !ready() {
        return;
    }
    let reg = TestRegistry::start();
    let dir = tempfile::tempdir().unwrap();
    let base = format!("{}/kiln-test/marker:1", reg.addr);
    push_two_platform_base(dir.path(), &base);
    let host_manifest = marker_image(dir.path(), &Platform::default().architecture).manifest_digest;
    let push = |dockerfile: &str, dest: &str| {
        let sub = dir.path().join(dest.replace([':', '/'], "-"));
        let ctx = context(&sub, dockerfile);
        let (ok, log) = run_executor(
            &[
                "--context",
                &ctx,
                "--destination",
                dest,
                "--base-image-annotations",
            ],
            &[],
            None,
        );
        assert!(ok, "{log}");
        pushed_manifest(dest)
    };
    // Through a stage built FROM the image.
    let image = format!("{}/kiln-test/out:1", reg.addr);
    let m = push(&format!("FROM {base} AS b\nFROM b\nENV X=1\n"), &image);
    let a = &m["annotations"];
    assert_eq!(a["org.opencontainers.image.base.name"], base, "{m}");
    assert_eq!(
        a["org.opencontainers.image.base.digest"], host_manifest,
        "{m}"
    );
    let scratch = format!("{}/kiln-test/out:2", reg.addr);
    let m = push("FROM scratch\nENV X=1\n", &scratch);
    assert!(m.get("annotations").is_none(), "{m}");
    // Off by default, as in BuildKit and kaniko.
    let sub = dir.path().join("default");
    let ctx = context(&sub, &format!("FROM {base}\nENV X=1\n"));
    let plain = format!("{}/kiln-test/out:3", reg.addr);
    let (ok, log) = run_executor(&["--context", &ctx, "--destination", &plain], &[], None);
    assert!(ok, "{log}");
    assert!(pushed_manifest(&plain).get("annotations").is_none());
}

/// What kiln-warmer warms for `FROM --platform` stages is what the executor reads: each
/// platform's entry of the base is stored as the warmer stores it (one client per platform),
/// the registry is stopped, and the build still finds both in `--cache-dir`.
#[test]
fn warmed_platforms_are_the_ones_the_build_reads() {
    if !ready() {
        return;
    }
    let mut reg = TestRegistry::start();
    let dir = tempfile::tempdir().unwrap();
    let base = format!("{}/kiln-test/marker:1", reg.addr);
    push_two_platform_base(dir.path(), &base);
    let foreign = format!("linux/{}", foreign_arch());
    let cache_dir = dir.path().join("base-cache");
    let cache = kiln_oci::base_cache::BaseImageCache::open(
        &cache_dir,
        std::time::Duration::from_secs(3600),
    )
    .unwrap();
    let runtime = kiln_testkit::runtime();
    for platform in [Platform::default(), foreign.parse().unwrap()] {
        let client = kiln_oci::registry::Registry::new(kiln_oci::registry::RegistryOptions {
            platform,
            ..reg.options()
        })
        .unwrap();
        runtime
            .block_on(cache.store(&client, &base, false))
            .unwrap();
    }
    reg.stop();
    let ctx = context(
        dir.path(),
        &format!(
            "FROM --platform=$BUILDPLATFORM {base} AS build\nFROM {base}\n\
             COPY --from=build /marker /build-marker\n"
        ),
    );
    let layout = dir.path().join("out");
    let (ok, log) = run_executor(
        &[
            "--context",
            &ctx,
            "--no-push",
            "--custom-platform",
            &foreign,
            "--cache-dir",
            &cache_dir.display().to_string(),
            "--oci-layout-path",
            &layout.display().to_string(),
        ],
        &[],
        None,
    );
    assert!(ok, "{log}");
    assert_eq!(
        log.matches("read from the base-image cache").count(),
        2,
        "{log}"
    );
    let entry = |p: &str| layout_entry(&layout, p).unwrap_or_else(|| panic!("{p} missing"));
    assert_eq!(entry("/marker"), format!("{}\n", foreign_arch()));
    assert_eq!(
        entry("/build-marker"),
        format!("{}\n", Platform::default().architecture)
    );
}
