//! What an in-place `RUN` step can reach in a Pod, tested under podman as a Pod runs the executor
//! image: the context at `/workspace`, the push credentials mounted read-only at
//! `/kiln/.docker/config.json`, a service-account token at
//! `/var/run/secrets/kubernetes.io/serviceaccount/token`, a read-only file and a read-only
//! directory mounted elsewhere (as Secret volumes can be), and `GIT_TOKEN` and an AWS key in the
//! environment. Both branches of the executor's probe:
//!
//! - default capabilities: steps share the container (kaniko's exposure); the executor warns
//!   exactly once, the build works, and no step reads the executor's environment or executable;
//! - a user-namespaced container with `SYS_ADMIN` (what `hostUsers: false` plus `SYS_ADMIN` gives
//!   in Kubernetes): each step has its own mount and PID namespaces, in which the docker config,
//!   the token, `/kiln`, the context and the executor's process are out of reach and the step
//!   cannot unmount what covers them.
//!
//! In both, the step's environment is the image's plus the build arguments, and neither the
//! markers nor the registry credentials (the push goes to a registry with htpasswd auth) appear
//! in the executor's output or in any blob the registry stores.
//!
//! Needs root, podman, skopeo, docker-registry and the local registry with the base images, as
//! container_mode does; the executor image comes from scripts/build-executor-image.sh (static
//! release binaries, cached in `$CARGO_TARGET_DIR`). It runs nothing in place on this host.

mod support;

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use base64::Engine;
use kiln_testkit::{
    htpasswd_line, podman, podman_run_command, registry, require_tools, run_bounded, tail,
    TestRegistry,
};
use support::{build_executor_image, find_in, scan_files, Needle};

const BUILD_TIMEOUT: Duration = Duration::from_secs(600);

/// The warning of the shared branch, and the log line of the private one.
const SHARED_WARNING: &str = "without private namespaces";
const PRIVATE_INFO: &str = "each in private mount and PID namespaces";

/// The files a step looks for (non-empty means visible); every one is there for the executor. The last two are read-only
/// mounts outside the fixed places, as a Pod's Secret volumes can be: a file and a directory.
const GUARDED: [&str; 6] = [
    "/kiln/.docker/config.json",
    "/var/run/secrets/kubernetes.io/serviceaccount/token",
    "/kiln/executor",
    "/workspace/Dockerfile",
    "/etc/kiln-test-secret.conf",
    "/mnt/secret-volume/key",
];

/// A writable file under `/var/run/secrets` (so not hidden as a read-only mount), below `/var`,
/// which the first step moves to `/var-moved`.
const MOVED_SECRET: &str = "run/secrets/kiln-test/rw-token";

static EXECUTOR_IMAGE: OnceLock<String> = OnceLock::new();
/// One podman build at a time: the machine has 2 cores.
static SERIAL: Mutex<()> = Mutex::new(());

fn executor_image() -> &'static str {
    EXECUTOR_IMAGE.get_or_init(|| build_executor_image(&registry()))
}

fn tools_present() -> bool {
    require_tools(&["podman", "skopeo", "docker-registry"])
}

/// Values that must stay out of every log and blob; unique per run so that nothing left over
/// from an earlier run can match.
struct Secrets {
    user: String,
    password: String,
    /// `user:password`, and its base64 form as a docker config's `auth` holds it.
    user_password: String,
    auth: String,
    git_token: String,
    aws_secret: String,
    sa_token: String,
}

impl Secrets {
    fn new(tag: &str) -> Secrets {
        let nonce = format!("{tag}{}", std::process::id());
        let user = format!("pusher{nonce}");
        let password = format!("pw-{nonce}-Zq8");
        let user_password = format!("{user}:{password}");
        Secrets {
            auth: base64::engine::general_purpose::STANDARD.encode(&user_password),
            user,
            password,
            user_password,
            git_token: format!("gittok-{nonce}-Xv3"),
            aws_secret: format!("awssecret-{nonce}-Lm5"),
            sa_token: format!("satoken-{nonce}-Rk2"),
        }
    }

    fn needles(&self) -> Vec<Needle<'_>> {
        vec![
            ("the registry password", &self.password),
            ("user:password", &self.user_password),
            ("the docker config's auth (base64)", &self.auth),
            ("GIT_TOKEN", &self.git_token),
            ("AWS_SECRET_ACCESS_KEY", &self.aws_secret),
            ("the service-account token", &self.sa_token),
        ]
    }
}

/// The Dockerfile: two RUN steps report what they can reach, one line per fact, prefixed
/// `probe `, then `extra_steps`. The values of the secrets appear nowhere in it.
fn dockerfile(base_reg: &str, extra_steps: &str) -> String {
    let checks: String = GUARDED
        .iter()
        .map(|f| {
            format!(
                "if [ -s {f} ]; then echo \"probe visible {f}\"; else echo \"probe hidden {f}\"; fi; "
            )
        })
        .collect();
    // After step one has moved /var: the writable file under /var/run/secrets is hidden only if
    // the executor follows the directory it hides, not its old path.
    let moved_check = format!(
        "if [ -s /var-moved/{MOVED_SECRET} ]; then echo \"probe visible moved\"; else echo \"probe hidden moved\"; fi; "
    );
    format!(
        r#"FROM {base_reg}/kiln-test/busybox:latest
ARG VISIBLE=build-arg-value
RUN {checks}\
    for p in /proc/[0-9]*; do \
      exe=$(readlink $p/exe 2>/dev/null) && echo "probe process ${{p#/proc/}} $exe"; \
      if grep -a -q -e GIT_TOKEN= -e AWS_SECRET $p/environ 2>/dev/null; then echo "probe environ-with-secret ${{p#/proc/}}"; fi; \
    done; \
    env | sed 's/^/probe env /'; \
    sed -n 's/^CapBnd:[[:space:]]*/probe capbnd /p' /proc/self/status; \
    if umount /kiln 2>/dev/null; then echo "probe umount-worked"; else echo "probe umount-refused"; fi; \
    echo step-one > /made-by-step-one; \
    mv /var /var-moved && echo "probe moved /var"
RUN {checks}{moved_check}echo step-two > /made-by-step-two
{extra_steps}"#
    )
}

/// A `RUN --network=none` step reporting its interfaces (`/proc/net/dev`, which shows the
/// reader's network namespace; the container's `/sys` was mounted in the container's), whether
/// `lo` is up, and whether the test registry on the host network answers.
fn network_none_step(base_reg: &str) -> String {
    format!(
        r#"RUN --network=none sed -n 's/^ *\([^:]*\):.*/probe netdev \1/p' /proc/net/dev; \
    if ifconfig lo | grep -q UP; then echo "probe lo-up"; fi; \
    if wget -q -T 10 -O /dev/null http://{base_reg}/v2/; then echo "probe registry-reached"; \
    else echo "probe registry-unreachable"; fi
"#
    )
}

/// What one containerised build showed.
struct InPodBuild {
    /// The executor's stdout and stderr (podman's too).
    output: String,
    /// The `probe ` lines, without the prefix.
    probe: Vec<String>,
    secrets: Secrets,
    registry: TestRegistry,
}

impl InPodBuild {
    fn has(&self, line: &str) -> bool {
        self.probe.iter().any(|l| l == line)
    }

    fn report(&self) -> String {
        format!(
            "probe lines:\n{}\n--- executor output (tail) ---\n{}",
            self.probe.join("\n"),
            tail(&self.output, 4000)
        )
    }

    /// The registry's storage (every blob and manifest it holds).
    fn storage(&self) -> PathBuf {
        let blob = self
            .registry
            .blob_data_path(&format!("sha256:{}", "0".repeat(64)));
        // <storage>/docker/registry/v2/blobs/sha256/00/<hex>/data
        blob.ancestors()
            .nth(5)
            .expect("the registry's v2 directory")
            .to_path_buf()
    }
}

/// Run the executor image in podman (`extra`: podman options of the branch) as a Pod runs it,
/// pushing to a registry with htpasswd auth whose credentials only the mounted docker config has;
/// `extra_steps` end the Dockerfile.
fn build_in_podman(tag: &str, extra: &[&str], extra_steps: &str) -> InPodBuild {
    let base_reg = registry();
    let image = executor_image();
    let secrets = Secrets::new(tag);
    let reg = TestRegistry::with_auth(&htpasswd_line(&secrets.user, &secrets.password));
    let work = tempfile::Builder::new()
        .prefix("kiln-inpod-iso-")
        .tempdir()
        .expect("temp dir");
    let context = work.path().join("context");
    fs::create_dir_all(&context).expect("context dir");
    fs::write(
        context.join("Dockerfile"),
        dockerfile(&base_reg, extra_steps),
    )
    .expect("write Dockerfile");
    let config = work.path().join("config.json");
    fs::write(
        &config,
        format!(
            r#"{{"auths":{{"{}":{{"auth":"{}"}}}}}}"#,
            reg.addr, secrets.auth
        ),
    )
    .expect("write docker config");
    let token = work.path().join("token");
    fs::write(&token, &secrets.sa_token).expect("write token");
    let volume = work.path().join("secret-volume");
    fs::create_dir_all(&volume).expect("secret volume dir");
    fs::write(volume.join("key"), &secrets.sa_token).expect("write secret volume");
    let mount = |src: &Path, dst: &str| format!("{}:{dst}:ro", src.display());
    let destination = format!("{}/inpod/{tag}:latest", reg.addr);

    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let run = run_bounded(
        podman_run_command()
            .args(extra)
            .args(["-v", &mount(&context, "/workspace")])
            .args(["-v", &mount(&config, "/kiln/.docker/config.json")])
            .args([
                "-v",
                &mount(
                    &token,
                    "/var/run/secrets/kubernetes.io/serviceaccount/token",
                ),
            ])
            .args(["-v", &mount(&token, "/etc/kiln-test-secret.conf")])
            .args(["-v", &mount(&volume, "/mnt/secret-volume")])
            .args(["-v", &format!("{}:/var/{MOVED_SECRET}", token.display())])
            .args(["-e", &format!("GIT_TOKEN={}", secrets.git_token)])
            .args([
                "-e",
                &format!("AWS_SECRET_ACCESS_KEY={}", secrets.aws_secret),
            ])
            .arg(image)
            .args(["--context", "dir:///workspace"])
            .args(["--dockerfile", "/workspace/Dockerfile"])
            .args([
                "--destination",
                &destination,
                "--insecure",
                "--insecure-pull",
            ]),
        BUILD_TIMEOUT,
    )
    .unwrap_or_else(|e| panic!("podman run of the executor image: {e}"));
    let _ = run_bounded(
        podman().args(["rmi", "-f", "--ignore", image]),
        Duration::from_secs(60),
    );
    let output = format!("{}{}", run.stdout, run.stderr);
    let probe = output
        .lines()
        .filter_map(|l| l.strip_prefix("probe "))
        .map(str::to_string)
        .collect();
    let build = InPodBuild {
        output,
        probe,
        secrets,
        registry: reg,
    };
    assert!(
        run.success(),
        "the executor failed inside podman ({:?}):\n{}",
        run.status,
        build.report()
    );
    assert!(
        build.output.contains("cleared /"),
        "the build did not run in place:\n{}",
        build.report()
    );
    build
}

/// What both branches guarantee: the step's environment is the image's plus the build
/// arguments, no process's environment shows a secret, the executor's executable is out of
/// reach, and no secret is in the output or any blob the registry holds.
fn check_common(build: &InPodBuild) {
    eprintln!("{}", build.report());
    let env: Vec<&str> = build
        .probe
        .iter()
        .filter_map(|l| l.strip_prefix("env "))
        .collect();
    assert!(
        env.contains(&"VISIBLE=build-arg-value"),
        "the build argument is missing from the step's environment:\n{}",
        build.report()
    );
    for name in [
        "GIT_TOKEN=",
        "AWS_",
        "DOCKER_CONFIG=",
        "KILN_CONTAINER=",
        "SSL_CERT_FILE=",
    ] {
        assert!(
            !env.iter().any(|e| e.starts_with(name)),
            "the executor's {name} reached the step's environment:\n{}",
            build.report()
        );
    }
    assert!(
        !build
            .probe
            .iter()
            .any(|l| l.starts_with("environ-with-secret")),
        "a step read a secret from a process's /proc/<pid>/environ:\n{}",
        build.report()
    );
    let executor_seen: Vec<&String> = build
        .probe
        .iter()
        .filter(|l| l.starts_with("process ") && !l.ends_with(" /bin/busybox"))
        .collect();
    assert!(
        executor_seen.is_empty(),
        "a step could follow another process's /proc/<pid>/exe: {executor_seen:?}\n{}",
        build.report()
    );

    let needles = build.secrets.needles();
    let in_output = find_in("the executor's output", build.output.as_bytes(), &needles);
    assert!(in_output.is_empty(), "{in_output:?}");
    let (in_blobs, files) = scan_files(&build.storage(), &needles);
    assert!(in_blobs.is_empty(), "{in_blobs:?}");
    // The scanner sees into the layers: both steps' files are found, decompressed.
    let (controls, _) = scan_files(
        &build.storage(),
        &[
            ("step one", "made-by-step-one"),
            ("step two", "made-by-step-two"),
        ],
    );
    assert!(
        controls.iter().any(|c| c.starts_with("step one"))
            && controls.iter().any(|c| c.starts_with("step two")),
        "the pushed layers were not found in the registry's storage ({files} files): {controls:?}"
    );
}

#[test]
fn default_capabilities_share_the_container_and_warn_once() {
    if !tools_present() {
        return;
    }
    let build = build_in_podman("shared", &[], "");
    assert_eq!(
        build.output.matches(SHARED_WARNING).count(),
        1,
        "the shared-namespace warning must appear exactly once:\n{}",
        build.report()
    );
    let warning = build
        .output
        .lines()
        .find(|l| l.contains(SHARED_WARNING))
        .unwrap_or_default();
    for part in ["hostUsers: false", "SYS_ADMIN", "/kiln/.docker/config.json"] {
        assert!(warning.contains(part), "{part} missing from: {warning}");
    }
    assert!(!build.output.contains(PRIVATE_INFO), "{}", build.report());
    assert!(
        build.has("moved /var") && build.has("visible moved"),
        "{}",
        build.report()
    );
    // kaniko's exposure, as the README documents it: the files are there for the step.
    for f in GUARDED {
        assert!(
            build.has(&format!("visible {f}")),
            "{f} should be visible in the shared branch:\n{}",
            build.report()
        );
    }
    check_common(&build);
}

/// Podman's options for a user-namespaced container (`hostUsers: false`): `--userns=auto` needs
/// /etc/subuid ranges for "containers", an explicit map needs nothing.
const USERNS: [&str; 4] = ["--uidmap", "0:300000:65536", "--gidmap", "0:300000:65536"];

/// The capability bounding set a step reported, from `/proc/self/status`.
fn step_bounding_set(build: &InPodBuild) -> u64 {
    let hex = build
        .probe
        .iter()
        .find_map(|l| l.strip_prefix("capbnd "))
        .unwrap_or_else(|| panic!("no CapBnd line:\n{}", build.report()));
    u64::from_str_radix(hex.trim(), 16).unwrap_or_else(|e| panic!("CapBnd {hex:?}: {e}"))
}

const CAP_SYS_ADMIN: u64 = 1 << 21;

/// What the private branch guarantees, whatever the Pod's capability set.
fn check_private(build: &InPodBuild) {
    assert!(
        !build.output.contains(SHARED_WARNING),
        "the probe did not find private namespaces:\n{}",
        build.report()
    );
    assert!(build.output.contains(PRIVATE_INFO), "{}", build.report());
    for f in GUARDED {
        assert_eq!(
            build
                .probe
                .iter()
                .filter(|l| **l == format!("hidden {f}"))
                .count(),
            2,
            "{f} must be hidden from both steps:\n{}",
            build.report()
        );
    }
    assert!(
        build.has("moved /var") && build.has("hidden moved"),
        "a secret directory moved by a step must stay hidden from the next one:\n{}",
        build.report()
    );
    assert!(
        build.has("umount-refused"),
        "a step could unmount what covers /kiln:\n{}",
        build.report()
    );
    // The step is PID 1 of its own namespace: the only processes are its own.
    assert!(
        build.has("process 1 /bin/busybox"),
        "the step is not PID 1 of a new PID namespace:\n{}",
        build.report()
    );
    check_common(build);
}

#[test]
fn user_namespace_with_sys_admin_hides_credentials_and_the_executor() {
    if !tools_present() {
        return;
    }
    let mut opts = USERNS.to_vec();
    opts.extend(["--cap-add", "SYS_ADMIN"]);
    let build = build_in_podman("private", &opts, &network_none_step(&registry()));
    check_private(&build);
    // RUN --network=none: a network namespace of its own with only lo, up, although podman's
    // default set has no NET_ADMIN; the registry on the container's (host) network is out of reach.
    let interfaces: Vec<&str> = build
        .probe
        .iter()
        .filter_map(|l| l.strip_prefix("netdev "))
        .collect();
    assert_eq!(
        interfaces,
        ["lo"],
        "a --network=none step saw other interfaces:\n{}",
        build.report()
    );
    assert!(
        build.has("lo-up") && build.has("registry-unreachable"),
        "{}",
        build.report()
    );
    assert!(
        !build.output.contains("shares the container's network"),
        "the --network=none step was warned about sharing the network:\n{}",
        build.report()
    );
    // Podman's default set has SETPCAP: SYS_ADMIN leaves the step's bounding set too.
    assert_eq!(
        step_bounding_set(&build) & CAP_SYS_ADMIN,
        0,
        "the step kept SYS_ADMIN in its bounding set:\n{}",
        build.report()
    );
}

/// Kiln's hardened executor Pods drop every capability and add back only the build set (no
/// SETPCAP); with SYS_ADMIN added in a user namespace the steps are still private. The step keeps
/// the Pod's capabilities (its bounding set cannot shrink without SETPCAP), and seccomp alone
/// keeps it from unmounting what hides the credentials.
#[test]
fn hardened_capabilities_with_sys_admin_are_private_too() {
    if !tools_present() {
        return;
    }
    let mut opts = USERNS.to_vec();
    opts.extend(["--cap-drop", "ALL"]);
    for cap in [
        "CHOWN",
        "DAC_OVERRIDE",
        "FOWNER",
        "FSETID",
        "KILL",
        "SETFCAP",
        "SETGID",
        "SETUID",
        "SYS_ADMIN",
    ] {
        opts.extend(["--cap-add", cap]);
    }
    let build = build_in_podman("hardened", &opts, "");
    check_private(&build);
    assert_ne!(
        step_bounding_set(&build) & CAP_SYS_ADMIN,
        0,
        "expected the Pod's bounding set in the step:\n{}",
        build.report()
    );
}
