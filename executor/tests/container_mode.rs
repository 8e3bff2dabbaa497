//! End-to-end test of container mode: the executor image is built by Kiln itself
//! (`scripts/build-executor-image.sh`), then run with podman exactly as a Pod runs it — context at
//! `/workspace`, docker config mounted read-only at `/kiln/.docker/config.json`, a
//! `/dev/termination-log` file — to build a multi-stage Dockerfile in place over its own `/`.
//! The pushed image must flatten (skopeo + umoci, never Kiln's own reader) to the same tree as the
//! same Dockerfile built outside a container with `--isolation=chroot`; the mounts and `/kiln` must
//! be absent from it; the termination message must hold the pushed digest; and the `--tar-path`
//! archive must load and run with `podman load`. A second in-place build checks where credential
//! helpers run from. It must not run an in-place build on this host.
//!
//! Needs the local registry and base images: `bash scripts/registry.sh start &&
//! bash scripts/base-images.sh && export KILN_TEST_REGISTRY=127.0.0.1:5000`, then
//! `cargo test -p kiln-executor --test container_mode`. The release build of the static binaries
//! is the slow part; it is cached in `$CARGO_TARGET_DIR`. Podman flags come from
//! `KILN_PODMAN_FLAGS` (default `--runtime runc --cgroup-manager cgroupfs --storage-driver vfs`).

mod support;

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use kiln_testkit::{
    fetch_rootfs, image_config, podman, podman_run_command, registry, registry_digest, run_bounded,
    run_ok, tail, CmdError, HelperBehaviour, TestCredentialHelper, TestRegistry,
};
use support::{build_executor_image, diff_trees, scan_tree};

const BUILD_TIMEOUT: Duration = Duration::from_secs(300);

/// The Dockerfile built both ways: a RUN, a COPY from the context, a stage FROM an earlier stage,
/// and COPY --from two earlier stages (both must be moved aside before `/` is cleared).
fn dockerfile(reg: &str) -> String {
    format!(
        r#"FROM {reg}/kiln-test/busybox:latest AS builder
RUN mkdir -p /out/sub && echo built > /out/greeting && chmod 0640 /out/greeting \
 && ln -s greeting /out/link && chown 1000:1000 /out/sub
COPY hello.txt /out/hello.txt

FROM builder AS extended
RUN echo extended > /out/extended && rm /out/link

FROM {reg}/kiln-test/busybox:latest
COPY --from=builder /out/ /app/
COPY --from=extended /out/extended /app/extended
COPY hello.txt /hello.txt
RUN cat /app/greeting /hello.txt > /combined && echo "app:x:1234:1234::/app:/bin/sh" >> /etc/passwd \
 && rm -rf /tmp/* && mkdir -p /var/lib/made
CMD ["cat", "/combined"]
"#
    )
}

fn write_context(dir: &Path, reg: &str) {
    fs::create_dir_all(dir).expect("create context dir");
    fs::write(dir.join("Dockerfile"), dockerfile(reg)).expect("write Dockerfile");
    fs::write(dir.join("hello.txt"), "hello from the context\n").expect("write hello.txt");
}

/// Fetch with skopeo and flatten with umoci into `dir/rootfs-<tag>`.
fn flatten(image: &str, dir: &Path, tag: &str) -> Result<std::path::PathBuf, CmdError> {
    fs::create_dir_all(dir).expect("create flatten dir");
    fetch_rootfs(image, dir, tag)
}

#[test]
fn executor_image_builds_in_podman_like_in_a_pod() {
    let reg = registry();
    let work = tempfile::Builder::new()
        .prefix("kiln-podmode-")
        .tempdir()
        .expect("temp dir");
    let context = work.path().join("context");
    write_context(&context, &reg);

    let executor_image = build_executor_image(&reg);

    // The executor image itself: entrypoint, the container signal, nothing but /kiln, /kaniko, /etc.
    let config = image_config(&executor_image).expect("executor image config");
    assert_eq!(
        config["config"]["Entrypoint"],
        serde_json::json!(["/kiln/executor"]),
        "{config}"
    );
    let env = config["config"]["Env"].to_string();
    assert!(
        env.contains("KILN_CONTAINER=1") && env.contains("DOCKER_CONFIG=/kiln/.docker"),
        "{env}"
    );
    let exec_root = flatten(&executor_image, &work.path().join("exec-image"), "exec")
        .expect("flatten executor image");
    let exec_tree = scan_tree(&exec_root).expect("scan executor image");
    for path in [
        "/kiln/executor",
        "/kiln/warmer",
        "/kiln/ssl/certs/ca-certificates.crt",
        "/kaniko/executor",
        "/kaniko/warmer",
        "/kaniko/.docker",
        "/workspace",
    ] {
        assert!(
            exec_tree.contains_key(path),
            "{path} missing from the executor image: {:?}",
            exec_tree.keys()
        );
    }
    for tool in ["executor", "warmer"] {
        assert_eq!(
            exec_tree[&format!("/kaniko/{tool}")].kind,
            support::Kind::Symlink {
                target: format!("/kiln/{tool}")
            },
            "pipelines written for kaniko call /kaniko/{tool}"
        );
    }
    assert!(
        !exec_tree.contains_key("/busybox"),
        "only the debug variant has a shell"
    );
    let exec_size: u64 = exec_tree
        .values()
        .map(|e| {
            if let support::Kind::File { size, .. } = e.kind {
                size
            } else {
                0
            }
        })
        .sum();
    eprintln!(
        "executor image: {} entries, {} bytes of files",
        exec_tree.len(),
        exec_size
    );

    // Inside podman, as a Pod: context, read-only docker config, termination log, an output volume.
    let docker_config = work.path().join("config.json");
    // Credentials for a registry this build never talks to: they must be read, never leak into the image.
    fs::write(
        &docker_config,
        r#"{"auths":{"registry.invalid":{"auth":"dXNlcjpzZWNyZXQ="}}}"#,
    )
    .expect("write docker config");
    let termination = work.path().join("termination-log");
    fs::write(&termination, "").expect("create termination log");
    let output = work.path().join("output");
    fs::create_dir_all(&output).expect("create output dir");
    let in_pod = format!("{reg}/e2e/inpod:latest");
    let run = run_bounded(
        podman_run_command()
            .arg("-v")
            .arg(format!("{}:/workspace:ro", context.display()))
            .arg("-v")
            .arg(format!(
                "{}:/kiln/.docker/config.json:ro",
                docker_config.display()
            ))
            .arg("-v")
            .arg(format!("{}:/dev/termination-log", termination.display()))
            .arg("-v")
            .arg(format!("{}:/output", output.display()))
            .arg(&executor_image)
            .args([
                "--context",
                "dir:///workspace",
                "--dockerfile",
                "/workspace/Dockerfile",
            ])
            .args([
                "--destination",
                &in_pod,
                "--insecure",
                "--insecure-pull",
                "--tar-path",
                "/output/image.tar",
            ]),
        BUILD_TIMEOUT,
    )
    .unwrap_or_else(|e| panic!("podman run of the executor image: {e}"));
    assert!(
        run.success(),
        "the executor failed inside podman ({:?}):\n{}\n{}",
        run.status,
        tail(&run.stderr, 4000),
        tail(&run.stdout, 1000)
    );
    eprintln!(
        "--- executor log inside podman ---\n{}",
        tail(&run.stderr, 6000)
    );
    assert!(
        run.stderr.contains("cleared /"),
        "the build did not run in place: {}",
        tail(&run.stderr, 3000)
    );
    for secret in ["dXNlcjpzZWNyZXQ=", "user:secret"] {
        assert!(
            !run.stderr.contains(secret) && !run.stdout.contains(secret),
            "credentials from the docker config appear in the log"
        );
    }

    // The termination message names exactly the pushed digest.
    let pushed =
        registry_digest(&in_pod).unwrap_or_else(|e| panic!("skopeo inspect {in_pod}: {e}"));
    let message: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&termination).expect("read termination log"))
            .unwrap_or_else(|e| panic!("termination log is not JSON: {e}"));
    assert_eq!(message["digest"], serde_json::json!(pushed), "{message}");
    assert_eq!(
        message["references"],
        serde_json::json!([format!("{in_pod}@{pushed}")]),
        "{message}"
    );
    // And the size the operator reports: the pushed manifest's config and layers.
    let size = kiln_testkit::registry_image_size(&in_pod)
        .unwrap_or_else(|e| panic!("the size of {in_pod}: {e}"));
    assert_eq!(message["size"], serde_json::json!(size), "{message}");

    // The same Dockerfile outside a container, in a private root.
    let chroot_ref = format!("{reg}/e2e/inpod:chroot");
    run_ok(
        Command::new(env!("CARGO_BIN_EXE_kiln-executor"))
            .env_remove("KILN_CONTAINER")
            .args([
                "--isolation",
                "chroot",
                "--insecure",
                "--insecure-pull",
                "--destination",
                &chroot_ref,
            ])
            .arg("--context")
            .arg(format!("dir://{}", context.display()))
            .arg("--dockerfile")
            .arg(context.join("Dockerfile")),
        BUILD_TIMEOUT,
    )
    .unwrap_or_else(|e| panic!("chroot build: {e}"));

    let in_pod_root =
        flatten(&in_pod, &work.path().join("inpod"), "inpod").expect("flatten in-pod image");
    let chroot_root =
        flatten(&chroot_ref, &work.path().join("chroot"), "chroot").expect("flatten chroot image");
    let in_pod_tree = scan_tree(&in_pod_root).expect("scan in-pod image");
    let chroot_tree = scan_tree(&chroot_root).expect("scan chroot image");
    let diffs = diff_trees(&chroot_tree, &in_pod_tree, &[]);
    assert!(
        diffs.is_empty(),
        "in-pod image differs from the chroot build (expected = chroot):\n{}",
        diffs.join("\n")
    );
    for path in [
        "/kiln",
        "/kaniko",
        "/workspace",
        "/output",
        "/kiln/.docker/config.json",
        "/dev/termination-log",
    ] {
        assert!(
            !in_pod_tree.contains_key(path),
            "{path} leaked into the image built in place"
        );
    }
    for path in [
        "/app/greeting",
        "/app/hello.txt",
        "/app/link",
        "/combined",
        "/var/lib/made",
    ] {
        assert!(
            in_pod_tree.contains_key(path),
            "{path} missing from the image built in place"
        );
    }

    // --tar-path: podman loads the archive and runs it.
    let archive = output.join("image.tar");
    assert!(
        archive.is_file(),
        "--tar-path wrote nothing at {}",
        archive.display()
    );
    let loaded = run_ok(
        podman().arg("load").arg("-i").arg(&archive),
        Duration::from_secs(180),
    )
    .unwrap_or_else(|e| panic!("podman load of the --tar-path archive: {e}"));
    assert!(
        loaded.stdout.contains("e2e/inpod:latest") || loaded.stderr.contains("e2e/inpod:latest"),
        "podman load did not report the tag: {} {}",
        loaded.stdout,
        loaded.stderr
    );
    let ran = run_ok(
        podman().args(["run", "--rm", "--network", "host", "--pull=never", &in_pod]),
        Duration::from_secs(120),
    )
    .unwrap_or_else(|e| panic!("podman run of the loaded image: {e}"));
    assert_eq!(ran.stdout, "built\nhello from the context\n");
    credential_helper_runs_from_kiln_in_place(&executor_image, &reg, work.path());
    two_platforms_in_place_share_the_build_platform_stage(&executor_image, &reg, work.path());
    let _ = run_bounded(
        podman().args(["rmi", "-f", &in_pod, &executor_image]),
        Duration::from_secs(60),
    );
}

/// In place, a credential helper runs from `/kiln`, which the build keeps while it clears `/`,
/// and never from a `PATH` directory outside what the build keeps: a decoy of the same name in
/// `/usr/local/bin` (first on the image's `PATH`) never runs. The docker config's `credsStore`
/// names the helper, so it is asked for the base image's registry (before `/` is cleared) and
/// for the destination's, a second registry, at the push (after the base image replaced `/`).
/// It answers "not found" (both registries are open). The executor image has no shell, and a
/// helper must not depend on the base image's, so the script's interpreter is the host's static
/// busybox, mounted at `/kiln/busybox`.
fn credential_helper_runs_from_kiln_in_place(executor_image: &str, reg: &str, work: &Path) {
    let shell = "/kiln/busybox sh";
    let helper =
        TestCredentialHelper::with_interpreter("kilntest", HelperBehaviour::NotFound, shell);
    let decoy =
        TestCredentialHelper::with_interpreter("kilntest", HelperBehaviour::NotFound, shell);
    let dest = TestRegistry::start();
    let context = work.join("helper-context");
    fs::create_dir_all(&context).expect("context dir");
    fs::write(
        context.join("Dockerfile"),
        format!("FROM {reg}/kiln-test/busybox:latest\nRUN echo helped > /helped\n"),
    )
    .expect("write Dockerfile");
    let docker = helper.docker_config(&work.join("helper-docker"), None, serde_json::json!({}));
    let script = |h: &TestCredentialHelper| h.dir().join("docker-credential-kilntest");
    // Each helper's directory at its own path (where its script logs), kept as a mount point.
    let mount =
        |p: &Path, at: &Path, mode: &str| format!("{}:{}:{mode}", p.display(), at.display());
    let run = run_bounded(
        podman_run_command()
            .args(["-v", &mount(&context, Path::new("/workspace"), "ro")])
            .args([
                "-v",
                &mount(
                    &docker.join("config.json"),
                    Path::new("/kiln/.docker/config.json"),
                    "ro",
                ),
            ])
            .args([
                "-v",
                &mount(Path::new("/bin/busybox"), Path::new("/kiln/busybox"), "ro"),
            ])
            .args(["-v", &mount(helper.dir(), helper.dir(), "rw")])
            .args(["-v", &mount(decoy.dir(), decoy.dir(), "rw")])
            .args([
                "-v",
                &mount(
                    &script(&helper),
                    Path::new("/kiln/docker-credential-kilntest"),
                    "ro",
                ),
            ])
            .args([
                "-v",
                &mount(
                    &script(&decoy),
                    Path::new("/usr/local/bin/docker-credential-kilntest"),
                    "ro",
                ),
            ])
            .arg(executor_image)
            .args([
                "--context",
                "dir:///workspace",
                "--dockerfile",
                "/workspace/Dockerfile",
            ])
            .args(["--destination", &format!("{}/helped/app:1", dest.addr)])
            .args(["--insecure", "--insecure-pull"]),
        BUILD_TIMEOUT,
    )
    .unwrap_or_else(|e| panic!("podman run of the executor image with a helper: {e}"));
    assert!(
        run.success(),
        "the executor failed inside podman with a credential helper ({:?}):\n{}",
        run.status,
        tail(&run.stderr, 4000)
    );
    assert!(dest.has_tag("helped/app", "1"));
    let mut calls = helper.calls();
    calls.sort();
    let mut expected = vec![format!("get {reg}"), format!("get {}", dest.addr)];
    expected.sort();
    assert_eq!(calls, expected, "{}", tail(&run.stderr, 3000));
    assert!(
        decoy.calls().is_empty(),
        "the decoy outside /kiln ran: {:?}",
        decoy.calls()
    );
}

/// In place (as in a Pod) the platforms of a multi-platform build are built one after the other,
/// each clearing `/`: a stage the same for every platform is built by the first and its files,
/// moved aside into the first platform's work directory, are used by the second; the pushed
/// index names both platforms, each image holding the stage's file.
fn two_platforms_in_place_share_the_build_platform_stage(
    executor_image: &str,
    reg: &str,
    work: &Path,
) {
    let context = work.join("multi-context");
    fs::create_dir_all(&context).unwrap();
    fs::write(
        context.join("Dockerfile"),
        format!(
            "FROM --platform=$BUILDPLATFORM {reg}/kiln-test/busybox:latest AS builder\n\
             RUN echo \"built on $(uname -m)\" > /out\n\
             FROM {reg}/kiln-test/busybox:multiplatform\n\
             COPY --from=builder /out /out\n"
        ),
    )
    .unwrap();
    let dest = format!("{reg}/e2e/inpod-multi:latest");
    let run = run_bounded(
        podman_run_command()
            .arg("-v")
            .arg(format!("{}:/workspace:ro", context.display()))
            .arg(executor_image)
            .args([
                "--context",
                "dir:///workspace",
                "--dockerfile",
                "/workspace/Dockerfile",
            ])
            .args([
                "--platform",
                "linux/amd64,linux/arm64",
                "--destination",
                &dest,
            ])
            .args(["--insecure", "--insecure-pull"]),
        BUILD_TIMEOUT,
    )
    .unwrap_or_else(|e| panic!("podman run of the executor image: {e}"));
    let log = tail(&run.stderr, 8000);
    assert!(
        run.success(),
        "the multi-platform build failed in place:\n{log}"
    );
    assert!(log.contains("cleared /"), "not in place: {log}");
    assert_eq!(
        log.matches("(builder)] step 1/1 done").count(),
        1,
        "the builder stage ran more than once: {log}"
    );
    assert!(
        log.contains(
            "(builder)] the same for every platform: built once, by the build for linux/amd64"
        ),
        "{log}"
    );
    let index = run_ok(
        Command::new("skopeo")
            .args(["inspect", "--raw", "--tls-verify=false"])
            .arg(format!("docker://{dest}")),
        Duration::from_secs(60),
    )
    .unwrap_or_else(|e| panic!("skopeo inspect {dest}: {e}"));
    let index: serde_json::Value = serde_json::from_str(&index.stdout).unwrap();
    let repo = dest.trim_end_matches(":latest");
    for m in index["manifests"].as_array().expect("an image index") {
        let image = format!("{repo}@{}", m["digest"].as_str().unwrap());
        let root = flatten(
            &image,
            &work.join(format!(
                "multi-{}",
                m["platform"]["architecture"].as_str().unwrap()
            )),
            "m",
        )
        .unwrap_or_else(|e| panic!("flatten {image}: {e}"));
        assert_eq!(
            fs::read_to_string(root.join("out")).unwrap(),
            format!("built on {}\n", std::env::consts::ARCH),
            "{image}"
        );
    }
}
