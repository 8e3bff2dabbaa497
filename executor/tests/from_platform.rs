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
use support::{layout_blob, layout_config, layout_entry, manifest_entry, run_executor};

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
fn a_run_kiln_cannot_emulate_fails_at_once_naming_its_platform() {
    if !ready() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // No QEMU emulator Kiln knows: refused before the stage's first step runs.
    let ctx = context(dir.path(), "FROM scratch\nCOPY Dockerfile /\nRUN true\n");
    let (ok, log) = run_executor(
        &[
            "--context",
            &ctx,
            "--no-push",
            "--custom-platform",
            "linux/mips64le",
        ],
        &[],
        None,
    );
    assert!(!ok, "{log}");
    assert!(
        log.contains("for platform linux/mips64le") && log.contains("cannot emulate"),
        "{log}"
    );
    assert!(log.contains("line 3"), "{log}");
    assert!(!log.contains("step 1/2"), "nothing ran: {log}");
}

/// The ELF machine of an executable (`e_machine`).
fn elf_machine(bytes: &[u8]) -> u16 {
    assert_eq!(&bytes[..4], b"\x7fELF");
    u16::from_le_bytes([bytes[18], bytes[19]])
}

#[test]
fn run_steps_of_a_foreign_platform_run_under_emulation() {
    if !ready() || !require_tools(&["qemu-aarch64-static", "file", "podman"]) {
        return;
    }
    let binfmt_before = std::fs::read_dir("/proc/sys/fs/binfmt_misc")
        .map(|d| d.count())
        .unwrap_or(0);
    let reg = TestRegistry::start();
    let dir = tempfile::tempdir().unwrap();
    let base = format!("{}/kiln-test/busybox:multiplatform", registry());
    let ctx = context(
        dir.path(),
        &format!(
            "FROM {base}\n\
             ARG TARGETARCH\n\
             RUN echo \"$(uname -m) $TARGETARCH\" > /arch && cat /arch && ls /bin/sh >/dev/null\n"
        ),
    );
    let dest = format!("{}/kiln-test/emulated:v1", reg.addr);
    let layout = dir.path().join("layout");
    let (ok, log) = run_executor(
        &[
            "--context",
            &ctx,
            "--custom-platform",
            "linux/amd64,linux/arm64",
            "--destination",
            &dest,
            "--insecure",
            "--insecure-pull",
            "--oci-layout-path",
            &layout.display().to_string(),
        ],
        &[],
        None,
    );
    assert!(ok, "{log}");
    assert!(log.contains("run under QEMU user emulation"), "{log}");
    let index = pushed_manifest(&dest);
    let entries = index["manifests"].as_array().unwrap();
    let mut seen = Vec::new();
    for m in entries {
        let manifest = layout_blob(&layout, m["digest"].as_str().unwrap());
        let arch = m["platform"]["architecture"].as_str().unwrap().to_string();
        let text = manifest_entry(&layout, &manifest, "/arch").unwrap();
        seen.push((arch, text));
    }
    assert_eq!(
        seen,
        vec![
            ("amd64".to_string(), "x86_64 amd64\n".to_string()),
            ("arm64".to_string(), "aarch64 arm64\n".to_string())
        ]
    );
    // The arm64 image holds arm64 programs (`file` says so), which QEMU runs directly too.
    let arm = layout_blob(&layout, entries[1]["digest"].as_str().unwrap());
    let unpacked = dir.path().join("arm64-root");
    support::manifest_unpack(&layout, &arm, &unpacked);
    let busybox = unpacked.join("bin/busybox");
    assert_eq!(
        elf_machine(&fs::read(&busybox).unwrap()),
        0xb7,
        "EM_AARCH64"
    );
    let described = kiln_testkit::run(std::process::Command::new("file").arg(&busybox));
    assert!(described.contains("ARM aarch64"), "{described}");
    let direct = kiln_testkit::run(
        std::process::Command::new("qemu-aarch64-static")
            .arg(&busybox)
            .args(["uname", "-m"]),
    );
    assert_eq!(direct.trim(), "aarch64");
    // podman runs the pushed arm64 image under emulation: the emulator (a static program of this
    // machine) is mounted into the container as its entrypoint, so no host handler is needed.
    let arm_image = format!(
        "{}/kiln-test/emulated@{}",
        reg.addr,
        entries[1]["digest"].as_str().unwrap()
    );
    let qemu = kiln_testkit::find_tool("qemu-aarch64-static").expect("found above");
    for (args, expected) in [
        (["uname", "-m"], "aarch64"),
        (["cat", "/arch"], "aarch64 arm64"),
    ] {
        let out = kiln_testkit::run_ok(
            kiln_testkit::podman_run_command()
                .args(["--platform", "linux/arm64", "--entrypoint", "/qemu", "-v"])
                .arg(format!("{}:/qemu:ro", qemu.display()))
                .arg(&arm_image)
                .arg("/bin/busybox")
                .args(args),
            std::time::Duration::from_secs(180),
        )
        .unwrap_or_else(|e| panic!("podman run {arm_image}: {e}"));
        assert_eq!(out.stdout.trim(), expected, "podman run {args:?}");
    }
    let _ = kiln_testkit::run_bounded(
        kiln_testkit::podman().args(["rmi", "-f", "--ignore", &arm_image]),
        std::time::Duration::from_secs(60),
    );
    // The host's binfmt_misc is as it was: the handler lived in the step's own namespace.
    let binfmt_after = std::fs::read_dir("/proc/sys/fs/binfmt_misc")
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(binfmt_before, binfmt_after);
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

#[test]
fn one_build_for_two_platforms_pushes_one_index() {
    if !ready() {
        return;
    }
    let reg = TestRegistry::start();
    let dir = tempfile::tempdir().unwrap();
    let base = format!("{}/kiln-test/marker:1", reg.addr);
    push_two_platform_base(dir.path(), &base);
    let host = Platform::default().to_string();
    let foreign = format!("linux/{}", foreign_arch());
    // A builder stage on the build platform for each target (it reads TARGETARCH), a final
    // stage per target platform from the two-platform base.
    let busybox = format!("{}/kiln-test/busybox:latest", registry());
    let ctx = context(
        dir.path(),
        &format!(
            "FROM --platform=$BUILDPLATFORM {busybox} AS tools\n\
             ARG TARGETARCH\n\
             RUN echo \"built for $TARGETARCH on $(uname -m)\" > /target\n\
             FROM {base}\n\
             ARG TARGETPLATFORM\n\
             ENV BUILT_FOR=$TARGETPLATFORM\n\
             COPY --from=tools /target /target\n"
        ),
    );
    let dest = format!("{}/kiln-test/multi:v1", reg.addr);
    let layout = dir.path().join("layout");
    let tar = dir.path().join("image.tar");
    let digest_file = dir.path().join("digest");
    let platforms = format!("{host},{foreign}");
    let (ok, log) = run_executor(
        &[
            "--context",
            &ctx,
            "--platform",
            &platforms,
            "--destination",
            &dest,
            "--insecure",
            "--insecure-pull",
            "--oci-layout-path",
            &layout.display().to_string(),
            "--tar-path",
            &tar.display().to_string(),
            "--digest-file",
            &digest_file.display().to_string(),
        ],
        &[],
        None,
    );
    assert!(ok, "{log}");
    assert!(log.contains(&format!("platform 1/2: {host}")), "{log}");
    assert!(log.contains(&format!("platform 2/2: {foreign}")), "{log}");

    // The registry: one index under the tag, naming both platform images in the order given.
    let index = pushed_manifest(&dest);
    assert_eq!(index["mediaType"], MEDIA_TYPE_OCI_INDEX, "{index}");
    let entries = index["manifests"].as_array().unwrap();
    let archs: Vec<&str> = entries
        .iter()
        .map(|m| m["platform"]["architecture"].as_str().unwrap())
        .collect();
    assert_eq!(
        archs,
        vec![Platform::default().architecture.as_str(), foreign_arch()]
    );
    assert!(entries.iter().all(|m| m["platform"]["os"] == "linux"));
    let index_digest = fs::read_to_string(&digest_file).unwrap();
    assert!(
        log.contains(&format!("pushed {dest}@{index_digest}")),
        "{log}"
    );
    // Each platform image is in the repository by digest.
    for m in entries {
        let by_digest = format!(
            "{}/kiln-test/multi@{}",
            reg.addr,
            m["digest"].as_str().unwrap()
        );
        assert_eq!(
            pushed_manifest(&by_digest)["config"]["mediaType"],
            "application/vnd.oci.image.config.v1+json"
        );
    }

    // The layout: index.json names the index (tagged v1); each image has its platform's files,
    // config platform and TARGET* values.
    let top: serde_json::Value =
        serde_json::from_slice(&fs::read(layout.join("index.json")).unwrap()).unwrap();
    let named = top["manifests"].as_array().unwrap();
    assert_eq!(named.len(), 1, "{top}");
    assert_eq!(named[0]["mediaType"], MEDIA_TYPE_OCI_INDEX);
    assert_eq!(named[0]["digest"].as_str().unwrap(), index_digest);
    assert_eq!(
        named[0]["annotations"]["org.opencontainers.image.ref.name"],
        "v1"
    );
    let local_index = layout_blob(&layout, &index_digest);
    assert_eq!(local_index, index);
    let host_arch = Platform::default().architecture;
    for (m, (arch, platform)) in entries.iter().zip([
        (host_arch.as_str(), host.as_str()),
        (foreign_arch(), foreign.as_str()),
    ]) {
        let manifest = layout_blob(&layout, m["digest"].as_str().unwrap());
        let config = layout_blob(&layout, manifest["config"]["digest"].as_str().unwrap());
        assert_eq!(config["architecture"], arch);
        let env = config["config"]["Env"].to_string();
        assert!(env.contains(&format!("BUILT_FOR={platform}")), "{env}");
        assert_eq!(
            manifest_entry(&layout, &manifest, "/marker").as_deref(),
            Some(format!("{arch}\n").as_str())
        );
        // The builder stage ran on this machine, once per target (it reads TARGETARCH).
        let machine = std::env::consts::ARCH;
        assert_eq!(
            manifest_entry(&layout, &manifest, "/target").as_deref(),
            Some(format!("built for {arch} on {machine}\n").as_str())
        );
    }

    // --tar-path: the same index as an OCI archive.
    let out = kiln_testkit::run(
        std::process::Command::new("skopeo")
            .args(["inspect", "--raw"])
            .arg(format!("oci-archive:{}", tar.display())),
    );
    let archived: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(archived, index);
}

#[test]
fn docker_image_format_writes_docker_media_types_and_a_manifest_list() {
    if !ready() {
        return;
    }
    let reg = TestRegistry::start();
    let dir = tempfile::tempdir().unwrap();
    let multi = format!("{}/kiln-test/busybox:multiplatform", registry());
    let ctx = context(
        dir.path(),
        &format!("FROM {multi}\nARG TARGETARCH\nCOPY Dockerfile /built-for-$TARGETARCH\n"),
    );
    let list = format!("{}/kiln-test/docker-format:list", reg.addr);
    let single = format!("{}/kiln-test/docker-format:single", reg.addr);
    for (dest, platforms) in [(&list, "linux/amd64,linux/arm64"), (&single, "linux/arm64")] {
        let (ok, log) = run_executor(
            &[
                "--context",
                &ctx,
                "--platform",
                platforms,
                "--destination",
                dest,
                "--image-format",
                "docker",
                "--insecure",
                "--insecure-pull",
            ],
            &[],
            None,
        );
        assert!(ok, "{log}");
    }
    let check_image = |image: &str, arch: &str| {
        let manifest = pushed_manifest(image);
        assert_eq!(
            manifest["mediaType"], "application/vnd.docker.distribution.manifest.v2+json",
            "{manifest}"
        );
        assert_eq!(
            manifest["config"]["mediaType"],
            "application/vnd.docker.container.image.v1+json"
        );
        let layers = manifest["layers"].as_array().unwrap();
        assert!(
            layers
                .iter()
                .all(|l| l["mediaType"] == "application/vnd.docker.image.rootfs.diff.tar.gzip"),
            "{manifest}"
        );
        // skopeo reads it as the platform's image.
        let out = kiln_testkit::run(
            std::process::Command::new("skopeo")
                .args([
                    "inspect",
                    "--tls-verify=false",
                    "--format",
                    "{{.Architecture}}",
                ])
                .arg(format!("docker://{image}")),
        );
        assert_eq!(out.trim(), arch);
    };
    let index = pushed_manifest(&list);
    assert_eq!(
        index["mediaType"], "application/vnd.docker.distribution.manifest.list.v2+json",
        "{index}"
    );
    let entries = index["manifests"].as_array().unwrap();
    assert_eq!(entries.len(), 2);
    for (m, arch) in entries.iter().zip(["amd64", "arm64"]) {
        assert_eq!(m["platform"]["architecture"], arch);
        assert_eq!(
            m["mediaType"],
            "application/vnd.docker.distribution.manifest.v2+json"
        );
        check_image(
            &format!(
                "{}/kiln-test/docker-format@{}",
                reg.addr,
                m["digest"].as_str().unwrap()
            ),
            arch,
        );
    }
    check_image(&single, "arm64");
    // zstd has no Docker media type: refused before anything is built.
    let (ok, log) = run_executor(
        &[
            "--context",
            &ctx,
            "--no-push",
            "--image-format",
            "docker",
            "--compression",
            "zstd",
        ],
        &[],
        None,
    );
    assert!(
        !ok && log.contains("Docker's image format has no zstd"),
        "{log}"
    );
}

#[test]
fn a_platform_list_is_checked_before_anything_is_built() {
    if !ready() {
        return;
    }
    for (list, says) in [
        ("linux/amd64,,linux/arm64", "empty platform"),
        ("linux/arm64,linux/arm64", "named twice"),
        ("linux/amd64,linux", "invalid platform"),
    ] {
        let (ok, log) = run_executor(
            &[
                "--context",
                "dir:///nonexistent",
                "--no-push",
                "--custom-platform",
                list,
            ],
            &[],
            None,
        );
        assert!(!ok, "{list}: {log}");
        assert!(
            log.contains(says) && log.contains("--custom-platform"),
            "{list}: {log}"
        );
    }
}

#[test]
fn a_build_platform_stage_runs_once_for_all_platforms() {
    if !ready() {
        return;
    }
    let reg = TestRegistry::start();
    let dir = tempfile::tempdir().unwrap();
    let busybox = format!("{}/kiln-test/busybox:latest", registry());
    let multi = format!("{}/kiln-test/busybox:multiplatform", registry());
    // The builder stage reads no TARGET* ARG, so it is the same for both platforms.
    let ctx = context(
        dir.path(),
        &format!(
            "FROM --platform=$BUILDPLATFORM {busybox} AS builder\n\
             RUN echo \"built on $(uname -m)\" > /out\n\
             FROM {multi}\n\
             COPY --from=builder /out /out\n"
        ),
    );
    let cache = format!("{}/kiln-test/cache", reg.addr);
    let layout = dir.path().join("layout");
    let layout_arg = layout.display().to_string();
    for with_cache in [false, true] {
        let dest = format!("{}/kiln-test/cross:v1", reg.addr);
        let mut args = vec![
            "--context",
            &ctx,
            "--platform",
            "linux/amd64,linux/arm64",
            "--destination",
            &dest,
            "--insecure",
            "--insecure-pull",
            "--oci-layout-path",
            &layout_arg,
        ];
        if with_cache {
            args.extend(["--cache", "--cache-repo", &cache]);
        }
        let (ok, log) = run_executor(&args, &[], None);
        assert!(ok, "{log}");
        let builder_runs = log
            .lines()
            .filter(|l| l.contains("(builder)] step 1/1 done"))
            .count();
        assert_eq!(builder_runs, 1, "cache {with_cache}: {log}");
        assert!(
            log.contains("(builder)] the same for every platform: built once, by the build for"),
            "{log}"
        );
        // Each platform's image holds the builder's file, made on this machine.
        let top: serde_json::Value =
            serde_json::from_slice(&fs::read(layout.join("index.json")).unwrap()).unwrap();
        let index = layout_blob(&layout, top["manifests"][0]["digest"].as_str().unwrap());
        let machine = std::env::consts::ARCH;
        for m in index["manifests"].as_array().unwrap() {
            let manifest = layout_blob(&layout, m["digest"].as_str().unwrap());
            assert_eq!(
                manifest_entry(&layout, &manifest, "/out").as_deref(),
                Some(format!("built on {machine}\n").as_str()),
                "{}",
                m["platform"]
            );
        }
        fs::remove_dir_all(&layout).unwrap();
    }
}

#[test]
fn the_platforms_of_a_build_are_built_at_the_same_time() {
    if !ready() || !require_tools(&["qemu-aarch64-static"]) {
        return;
    }
    if std::thread::available_parallelism().map_or(1, usize::from) < 2 {
        eprintln!("skipped: one core builds one platform at a time");
        return;
    }
    let reg = TestRegistry::start();
    let dir = tempfile::tempdir().unwrap();
    let multi = format!("{}/kiln-test/busybox:multiplatform", registry());
    // Each platform's step leaves its mark in a shared cache mount and waits (at most 60 s) for
    // the other's: both succeed only when both steps run at once.
    let ctx = context(
        dir.path(),
        &format!(
            "FROM {multi}\n\
             ARG TARGETARCH\n\
             RUN --mount=type=cache,id=rendezvous,target=/r \\\n\
                 touch /r/$TARGETARCH; \\\n\
                 for i in $(seq 1 600); do \\\n\
                   if [ -e /r/amd64 ] && [ -e /r/arm64 ]; then echo met > /met; exit 0; fi; \\\n\
                   sleep 0.1; \\\n\
                 done; echo \"$TARGETARCH waited alone\"; exit 1\n"
        ),
    );
    let mount_cache = dir.path().join("mount-cache");
    let (ok, log) = run_executor(
        &[
            "--context",
            &ctx,
            "--platform",
            "linux/amd64,linux/arm64",
            "--destination",
            &format!("{}/kiln-test/together:v1", reg.addr),
            "--mount-cache-dir",
            &mount_cache.display().to_string(),
            "--insecure",
            "--insecure-pull",
        ],
        &[],
        None,
    );
    assert!(ok, "{log}");
    assert!(log.contains("2 platforms are built at a time"), "{log}");
    // Every line of a platform's build names it.
    assert!(
        log.lines()
            .filter(|l| l.contains("step 2/2 done"))
            .all(|l| l.contains("platform{platform=linux/")),
        "{log}"
    );
}

#[test]
fn when_one_platform_fails_the_others_stop() {
    if !ready() || !require_tools(&["qemu-aarch64-static"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let multi = format!("{}/kiln-test/busybox:multiplatform", registry());
    // arm64 fails at its first step; amd64 would go on for 5 more steps of 2 s.
    let ctx = context(
        dir.path(),
        &format!(
            "FROM {multi}\n\
             ARG TARGETARCH\n\
             RUN if [ $TARGETARCH = arm64 ]; then echo broken; exit 3; fi; sleep 2\n\
             RUN sleep 2\n\
             RUN sleep 2\n\
             RUN sleep 2\n\
             RUN sleep 2\n\
             RUN sleep 2\n"
        ),
    );
    let kiln_dir = dir.path().join("kiln");
    let (ok, log) = run_executor(
        &[
            "--context",
            &ctx,
            "--platform",
            "linux/amd64,linux/arm64",
            "--no-push",
            "--kiln-dir",
            &kiln_dir.display().to_string(),
            "--insecure-pull",
        ],
        &[],
        None,
    );
    assert!(!ok, "{log}");
    // The error is arm64's own, not the stop of the other.
    assert!(
        log.contains("exit") && log.contains("linux/arm64 failed"),
        "{log}"
    );
    assert!(!log.contains("step 7/7"), "amd64 went on: {log}");
    let last = log.lines().last().unwrap_or_default();
    assert!(!last.contains("another platform"), "{log}");
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
