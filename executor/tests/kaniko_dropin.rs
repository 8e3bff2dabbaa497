//! The executor image as a drop-in for kaniko's: the debug variant (`scripts/build-executor-image.sh
//! --debug`, a busybox shell at `/busybox/sh`) run under podman the way CI systems run kaniko's
//! `:debug` image.
//!
//! - `debug_image_runs_the_executor_from_its_busybox_shell`: the image's layout (kaniko's paths,
//!   busybox and its applet links, PATH), then `/busybox/sh -c '/kaniko/executor …'` builds in place
//!   and pushes an image that runs, holds the right files and none of `/busybox`, `/kaniko`, `/kiln`;
//!   the shell still works after the build emptied `/`.
//! - `gitlab_documented_kaniko_job_runs_word_for_word`: GitLab's documented kaniko job (its YAML,
//!   verbatim, below) run as GitLab Runner runs it, against a registry with htpasswd auth on
//!   loopback: the script writes `/kaniko/.docker/config.json` with echo/printf/base64 and calls
//!   `/kaniko/executor` with no `--insecure` flag.
//! - `gitlab_job_matches_kaniko`: the same job (plus `--build-arg`) with kaniko v1.24
//!   (`bash scripts/kaniko.sh`) and with Kiln, on a Dockerfile of common instructions; the pushed
//!   images' configs and flattened trees (skopeo + umoci, never Kiln's reader) must be equal.
//!
//! Needs the local registry and base images (`KILN_TEST_REGISTRY`), podman, skopeo, umoci,
//! docker-registry, and for the last test kaniko's podman image. `bash scripts/test.sh` provides all.

mod support;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use kiln_testkit::{
    fetch_rootfs, htpasswd_line, image_config, podman, podman_check, podman_run_command, registry,
    require_root, require_tools, run_bounded, run_bounded_with_input, run_ok, skip_or_fail, tail,
    Output, TestRegistry,
};
use support::{build_debug_executor_image, diff_configs, diff_trees, scan_tree, Kind, Tree};

/// One build in podman, image pulls included.
const BUILD_TIMEOUT: Duration = Duration::from_secs(600);

/// kaniko's image as `scripts/kaniko.sh` leaves it in podman's storage.
const KANIKO_IMAGE: &str = "localhost/kiln-bench/kaniko:v1.24.0";

/// GitLab's documented kaniko job ("Use kaniko to build Docker images", doc/ci/docker/using_kaniko.md,
/// "Building a Docker image with kaniko"), word for word. Later revisions of the page drop the
/// `mkdir`/`echo` lines from this example because the runner writes the file itself, and keep the
/// same `echo` in the dependency-proxy variant; pipelines copied from the page carry this text.
const GITLAB_JOB: &str = r##"build:
  stage: build
  image:
    name: gcr.io/kaniko-project/executor:debug
    entrypoint: [""]
  script:
    - mkdir -p /kaniko/.docker
    - echo "{\"auths\":{\"${CI_REGISTRY}\":{\"auth\":\"$(printf "%s:%s" "${CI_REGISTRY_USER}" "${CI_REGISTRY_PASSWORD}" | base64 | tr -d '\n')\"}}}" > /kaniko/.docker/config.json
    - >-
      /kaniko/executor
      --context "${CI_PROJECT_DIR}"
      --dockerfile "${CI_PROJECT_DIR}/Dockerfile"
      --destination "${CI_REGISTRY_IMAGE}:${CI_COMMIT_TAG}"
  rules:
    - if: $CI_COMMIT_TAG
"##;

/// How GitLab Runner's Docker and Kubernetes executors start a job container whose entrypoint is
/// overridden: the command is `sh -c` with this shell detection (the first shell of the list that
/// exists, kaniko's `/busybox/sh` last), and the job script is written to that shell's stdin.
const DETECT_SHELL: &str =
    "for s in /usr/local/bin/bash /usr/bin/bash /bin/bash /usr/local/bin/sh \
     /usr/bin/sh /bin/sh /busybox/sh; do if [ -x \"$s\" ]; then exec \"$s\"; fi; done; \
     echo shell not found; exit 1";

const CI_PROJECT_DIR: &str = "/builds/kiln/dropin";
const CI_USER: &str = "gitlab-ci-token";
const CI_PASSWORD: &str = "dropin-Secret-7f3a";

/// The debug image, built once for all tests of this binary.
fn debug_image(reg: &str) -> &'static str {
    static IMAGE: OnceLock<String> = OnceLock::new();
    IMAGE.get_or_init(|| build_debug_executor_image(reg))
}

/// Whether this machine can run these tests; `false` after a skip (or a failure under CI).
fn ready() -> bool {
    require_root("podman runs the executor image as root")
        && require_tools(&["podman", "skopeo", "umoci", "docker-registry"])
}

/// A Dockerfile of common instructions: ARG before FROM (set with `--build-arg` or left at its
/// default), ARG, ENV, WORKDIR, COPY (with `--chown`), RUN as root and as a user, a deletion from
/// the base, USER, LABEL, EXPOSE, VOLUME, ENTRYPOINT and CMD.
fn dockerfile(reg: &str) -> String {
    format!(
        r#"ARG BASE={reg}/kiln-test/busybox:latest
FROM ${{BASE}}
ARG GREETING=hello
ARG UNUSED_ARG
ENV APP_HOME=/srv/app \
    GREETING_ENV=${{GREETING}}
WORKDIR ${{APP_HOME}}
COPY app/ ./
COPY --chown=1000:1000 data.txt /data/data.txt
RUN echo "${{GREETING}} from RUN" > greeting.txt && chmod 0444 greeting.txt \
 && ln -s greeting.txt current && mkdir -p /var/lib/app && chown 1000:1000 /var/lib/app \
 && rm -rf /var/tmp
USER 1000:1000
RUN echo "ran as $(id -u):$(id -g) in $(pwd)" > /var/lib/app/whoami
LABEL org.example.app="kiln drop-in" org.example.greeting="${{GREETING}}"
EXPOSE 8080 53/udp
VOLUME /var/lib/app
ENTRYPOINT ["/bin/sh", "-c"]
CMD ["cat /srv/app/greeting.txt /var/lib/app/whoami"]
"#
    )
}

fn write_context(dir: &Path, reg: &str) {
    let file = |rel: &str, content: &str, mode: u32| {
        let path = dir.join(rel);
        fs::create_dir_all(path.parent().expect("a parent")).expect("create context dir");
        fs::write(&path, content).expect("write context file");
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).expect("chmod context file");
    };
    file("Dockerfile", &dockerfile(reg), 0o644);
    file("app/run.sh", "#!/bin/sh\necho running\n", 0o755);
    file("app/conf/settings.ini", "[app]\nmode=dropin\n", 0o640);
    file("data.txt", "data for uid 1000\n", 0o644);
    std::os::unix::fs::symlink("run.sh", dir.join("app/start")).expect("symlink in context");
}

/// Files the built image must hold, with what they must be.
fn check_built_tree(tree: &Tree) {
    let file_of = |path: &str| match tree.get(path) {
        Some(e) => e,
        None => panic!("{path} missing from the built image: {:?}", tree.keys()),
    };
    assert_eq!(file_of("/srv/app/run.sh").mode, 0o755);
    assert_eq!(file_of("/srv/app/conf/settings.ini").mode, 0o640);
    assert_eq!(
        file_of("/srv/app/start").kind,
        Kind::Symlink {
            target: "run.sh".into()
        }
    );
    let data = file_of("/data/data.txt");
    assert_eq!((data.uid, data.gid), (1000, 1000));
    assert_eq!(file_of("/srv/app/greeting.txt").mode, 0o444);
    assert_eq!(
        (file_of("/var/lib/app").uid, file_of("/var/lib/app").gid),
        (1000, 1000)
    );
    assert_eq!(file_of("/var/lib/app/whoami").uid, 1000);
    assert!(
        !tree.contains_key("/var/tmp"),
        "RUN rm -rf /var/tmp was not kept"
    );
    for leaked in ["/busybox", "/kaniko", "/kiln", "/builds", "/workspace"] {
        assert!(
            !tree.contains_key(leaked),
            "{leaked} leaked into the built image"
        );
    }
}

/// What the built image prints when run (its ENTRYPOINT and CMD, as user 1000).
fn expected_output(greeting: &str) -> String {
    format!("{greeting} from RUN\nran as 1000:1000 in /srv/app")
}

/// Flattens an image of the open test registry with skopeo and umoci and scans it.
fn flat_tree(image: &str, dir: &Path, tag: &str) -> (PathBuf, Tree) {
    fs::create_dir_all(dir).expect("create flatten dir");
    let root = fetch_rootfs(image, dir, tag).unwrap_or_else(|e| panic!("flatten {image}: {e}"));
    let tree = scan_tree(&root).unwrap_or_else(|e| panic!("scan {image}: {e}"));
    (root, tree)
}

#[test]
fn debug_image_runs_the_executor_from_its_busybox_shell() {
    if !ready() {
        return;
    }
    let reg = registry();
    let work = tempfile::Builder::new()
        .prefix("kiln-dropin-a-")
        .tempdir()
        .expect("temp dir");
    let image = debug_image(&reg);

    // The layout: kaniko's paths, busybox with its applets, PATH through /kaniko and /busybox.
    let config = image_config(image).expect("debug image config");
    assert_eq!(
        config["config"]["Entrypoint"],
        serde_json::json!(["/kiln/executor"])
    );
    let env = config["config"]["Env"].to_string();
    assert!(
        env.contains("PATH=/usr/local/bin:/kiln:/kaniko:/busybox")
            && env.contains("KILN_CONTAINER=1"),
        "{env}"
    );
    let (_, layout) = flat_tree(image, &work.path().join("debug-image"), "debug");
    let link = |target: &str| Kind::Symlink {
        target: target.into(),
    };
    for (path, kind) in [
        ("/kaniko/executor", link("/kiln/executor")),
        ("/kaniko/warmer", link("/kiln/warmer")),
        ("/busybox/sh", link("busybox")),
        ("/busybox/ls", link("busybox")),
        ("/busybox/base64", link("busybox")),
        ("/bin/sh", link("/busybox/sh")),
        ("/kaniko/.docker", Kind::Dir),
    ] {
        match layout.get(path) {
            Some(e) => assert_eq!(e.kind, kind, "{path} in the debug image"),
            None => panic!("{path} missing from the debug image"),
        }
    }
    for path in ["/kiln/executor", "/kiln/warmer", "/busybox/busybox"] {
        assert!(
            matches!(layout.get(path), Some(e) if matches!(e.kind, Kind::File { .. }) && e.mode == 0o755),
            "{path} is not an executable file in the debug image"
        );
    }

    // /busybox/sh -c '/kaniko/executor …' builds in place; the shell outlives the emptied /.
    let context = work.path().join("context");
    write_context(&context, &reg);
    let dest = format!("{reg}/e2e/dropin-shell:latest");
    let script = format!(
        "/kaniko/executor --context dir:///workspace --dockerfile /workspace/Dockerfile \
         --destination {dest} --insecure --insecure-pull --build-arg GREETING=hi \
         && ls /busybox/sh /kaniko/executor && echo shell-still-works"
    );
    let run = run_bounded(
        podman_run_command()
            .args(["--entrypoint", "/busybox/sh"])
            .arg("-v")
            .arg(format!("{}:/workspace:ro", context.display()))
            .arg(image)
            .args(["-c", &script]),
        BUILD_TIMEOUT,
    )
    .unwrap_or_else(|e| panic!("podman run of the debug image: {e}"));
    assert!(
        run.success() && run.stdout.contains("shell-still-works"),
        "the build from the busybox shell failed ({:?}):\n{}\n{}",
        run.status,
        tail(&run.stderr, 4000),
        tail(&run.stdout, 1000)
    );
    assert!(
        run.stderr.contains("cleared /"),
        "the build did not run in place: {}",
        tail(&run.stderr, 3000)
    );

    let (_, built) = flat_tree(&dest, &work.path().join("built"), "built");
    check_built_tree(&built);
    podman_check(&dest, &[], &expected_output("hi")).unwrap_or_else(|e| panic!("{e}"));
}

/// The job of [`GITLAB_JOB`], as GitLab reads it.
struct Job {
    image: String,
    entrypoint: Vec<String>,
    script: Vec<String>,
}

fn gitlab_job() -> Job {
    let doc: serde_yaml::Value = serde_yaml::from_str(GITLAB_JOB).expect("the job is YAML");
    let build = &doc["build"];
    let strings = |v: &serde_yaml::Value| -> Vec<String> {
        v.as_sequence()
            .expect("a list")
            .iter()
            .map(|s| s.as_str().expect("a string").to_string())
            .collect()
    };
    assert_eq!(build["rules"][0]["if"].as_str(), Some("$CI_COMMIT_TAG"));
    Job {
        image: build["image"]["name"].as_str().expect("image name").into(),
        entrypoint: strings(&build["image"]["entrypoint"]),
        script: strings(&build["script"]),
    }
}

/// A job run: the image (in place of the job's), GitLab's predefined variables, and the project
/// checked out at `CI_PROJECT_DIR`.
struct JobRun<'a> {
    image: &'a str,
    /// `podman run` options before the image (mounts of the image's own layout, `--pull`).
    options: Vec<String>,
    registry: &'a str,
    project: &'a Path,
    /// Appended to the job's executor line (the differential run's `--build-arg`s).
    extra_flags: &'a str,
}

impl JobRun<'_> {
    fn destination(&self) -> String {
        format!("{}/kiln/dropin:v1.0.0", self.registry)
    }

    /// Runs the job's script like GitLab Runner: `sh -c <detect shell>` with the entrypoint
    /// cleared, the script on stdin after `set -eo pipefail`, the variables in the environment.
    fn run(&self, job: &Job) -> Output {
        assert_eq!(
            job.entrypoint,
            vec![String::new()],
            "the job clears the entrypoint"
        );
        let mut script = String::from("set -eo pipefail\n");
        for line in &job.script {
            script.push_str(line);
            if line.starts_with("/kaniko/executor") {
                script.push_str(self.extra_flags);
            }
            script.push('\n');
        }
        let vars = [
            ("CI_REGISTRY", self.registry.to_string()),
            ("CI_REGISTRY_USER", CI_USER.to_string()),
            ("CI_REGISTRY_PASSWORD", CI_PASSWORD.to_string()),
            (
                "CI_REGISTRY_IMAGE",
                format!("{}/kiln/dropin", self.registry),
            ),
            ("CI_PROJECT_DIR", CI_PROJECT_DIR.to_string()),
            ("CI_COMMIT_TAG", "v1.0.0".to_string()),
            ("GITLAB_CI", "true".to_string()),
        ];
        let mut cmd = podman();
        cmd.args(["run", "--rm", "-i", "--network", "host", "--entrypoint", ""])
            .args(&self.options)
            .arg("-v")
            .arg(format!("{}:{CI_PROJECT_DIR}", self.project.display()))
            .args(["-w", CI_PROJECT_DIR]);
        for (k, v) in vars {
            cmd.arg("-e").arg(format!("{k}={v}"));
        }
        cmd.arg(self.image).args(["sh", "-c", DETECT_SHELL]);
        run_bounded_with_input(&mut cmd, Some(script.into_bytes()), BUILD_TIMEOUT)
            .unwrap_or_else(|e| panic!("the GitLab job in {}: {e}", self.image))
    }
}

/// The registry a GitLab project pushes to: basic auth with the job's credentials, on loopback.
fn ci_registry() -> TestRegistry {
    TestRegistry::with_auth(&htpasswd_line(CI_USER, CI_PASSWORD))
}

/// Copies `image` out of the htpasswd registry into the open test registry as `dest`, so the
/// shared skopeo/umoci helpers read it; fails when the image is not there.
fn copy_out(image: &str, dest: &str) {
    run_ok(
        Command::new("skopeo")
            .args([
                "copy",
                "--quiet",
                "--src-tls-verify=false",
                "--dest-tls-verify=false",
            ])
            .args(["--src-creds", &format!("{CI_USER}:{CI_PASSWORD}")])
            .arg(format!("docker://{image}"))
            .arg(format!("docker://{dest}")),
        Duration::from_secs(300),
    )
    .unwrap_or_else(|e| panic!("copying {image} out of the CI registry: {e}"));
}

/// The credentials in every form the job handles them, none of which may appear in a log.
fn assert_no_credentials(out: &Output) {
    let basic = "Z2l0bGFiLWNpLXRva2VuOmRyb3Bpbi1TZWNyZXQtN2YzYQ=="; // base64 of user:password
    for secret in [CI_PASSWORD, basic] {
        assert!(
            !out.stderr.contains(secret) && !out.stdout.contains(secret),
            "credentials appear in the job log"
        );
    }
}

#[test]
fn gitlab_documented_kaniko_job_runs_word_for_word() {
    if !ready() {
        return;
    }
    let reg = registry();
    let work = tempfile::Builder::new()
        .prefix("kiln-dropin-b-")
        .tempdir()
        .expect("temp dir");
    let job = gitlab_job();
    assert_eq!(job.image, "gcr.io/kaniko-project/executor:debug");
    let image = debug_image(&reg);
    let ci = ci_registry();
    let project = work.path().join("project");
    write_context(&project, &reg);

    let run = JobRun {
        image,
        options: vec!["--tls-verify=false".into(), "--pull=always".into()],
        registry: &ci.addr,
        project: &project,
        extra_flags: "",
    };
    let out = run.run(&job);
    assert!(
        out.success(),
        "GitLab's kaniko job failed with Kiln's debug image ({:?}):\n{}\n{}",
        out.status,
        tail(&out.stderr, 5000),
        tail(&out.stdout, 1000)
    );
    assert_no_credentials(&out);

    // Pushed with the credentials the script wrote: anonymous access is refused.
    let dest = run.destination();
    let anonymous = run_bounded(
        Command::new("skopeo").args([
            "inspect",
            "--raw",
            "--tls-verify=false",
            &format!("docker://{dest}"),
        ]),
        Duration::from_secs(120),
    )
    .expect("skopeo inspect");
    assert!(
        !anonymous.success(),
        "the CI registry served {dest} without credentials"
    );
    let copy = format!("{reg}/e2e/dropin-gitlab:latest");
    copy_out(&dest, &copy);
    let (_, built) = flat_tree(&copy, &work.path().join("built"), "built");
    check_built_tree(&built);
    podman_check(&copy, &[], &expected_output("hello")).unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn gitlab_job_matches_kaniko() {
    if !ready() {
        return;
    }
    let exists = run_bounded(
        podman().args(["image", "exists", KANIKO_IMAGE]),
        Duration::from_secs(60),
    )
    .map(|o| o.success())
    .unwrap_or(false);
    if !exists {
        skip_or_fail(&format!(
            "podman has no {KANIKO_IMAGE}: run `bash scripts/kaniko.sh` (scripts/test.sh does)"
        ));
        return;
    }
    let reg = registry();
    let work = tempfile::Builder::new()
        .prefix("kiln-dropin-c-")
        .tempdir()
        .expect("temp dir");
    let job = gitlab_job();
    let image = debug_image(&reg);
    let (debug_root, _) = flat_tree(image, &work.path().join("debug-image"), "debug");
    let extra =
        format!(" --build-arg BASE={reg}/kiln-test/busybox:latest --build-arg GREETING=bonjour");

    let mut built = Vec::new();
    for side in ["kaniko", "kiln"] {
        let ci = ci_registry();
        let project = work.path().join(format!("project-{side}"));
        write_context(&project, &reg);
        let options: Vec<String> = if side == "kaniko" {
            // kaniko's :debug image: the same busybox at /busybox (a volume there, so kaniko
            // leaves it out of the build) and its PATH; the executor image itself unchanged.
            vec![
                "--pull=never".into(),
                "-v".into(),
                format!("{}:/busybox:ro", debug_root.join("busybox").display()),
                "-e".into(),
                "PATH=/usr/local/bin:/kaniko:/busybox".into(),
            ]
        } else {
            vec!["--tls-verify=false".into(), "--pull=always".into()]
        };
        let run = JobRun {
            image: if side == "kaniko" {
                KANIKO_IMAGE
            } else {
                image
            },
            options,
            registry: &ci.addr,
            project: &project,
            extra_flags: &extra,
        };
        let out = run.run(&job);
        assert!(
            out.success(),
            "the GitLab job with {side} failed ({:?}):\n{}\n{}",
            out.status,
            tail(&out.stderr, 5000),
            tail(&out.stdout, 1000)
        );
        assert_no_credentials(&out);
        let copy = format!("{reg}/e2e/dropin-diff:{side}");
        copy_out(&run.destination(), &copy);
        let config = image_config(&copy).unwrap_or_else(|e| panic!("config of {copy}: {e}"));
        let (_, tree) = flat_tree(&copy, &work.path().join(format!("built-{side}")), side);
        podman_check(&copy, &[], &expected_output("bonjour"))
            .unwrap_or_else(|e| panic!("{side}: {e}"));
        built.push((config, tree));
    }
    let (kiln_config, kiln_tree) = built.pop().expect("kiln's image");
    let (kaniko_config, kaniko_tree) = built.pop().expect("kaniko's image");
    check_built_tree(&kaniko_tree);
    let mut diffs = diff_configs(&kaniko_config, &kiln_config, &[]);
    diffs.extend(diff_trees(&kaniko_tree, &kiln_tree, &[]));
    assert!(
        diffs.is_empty(),
        "Kiln's image differs from kaniko's (expected = kaniko):\n{}",
        diffs.join("\n")
    );
}
