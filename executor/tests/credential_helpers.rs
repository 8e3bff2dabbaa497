//! Docker credential helpers, end to end: the real `kiln-executor` pushes to and pulls from a
//! registry with htpasswd auth whose credentials only a credential helper holds
//! (`docker-credential-kilntest`, a shell script speaking the helper protocol, on the executor's
//! `PATH`; see `kiln_testkit::credhelper`), named by the docker config's `credHelpers` or
//! `credsStore`. Checked: the helper is asked lazily (only for registries contacted) and once per
//! registry per run; its answer wins over an `auths` entry; "credentials not found" means
//! anonymous access (and so a clear 401 on push); a failing helper stops the build with an error
//! naming the helper and the registry, without its stdout; the secret is never in the executor's
//! stdout or stderr (at trace verbosity).
//!
//! Needs docker-registry and the local test registry with the base images.

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use base64::Engine;
use kiln_testkit::{
    htpasswd_line, registry, require_tools, run_bounded, HelperBehaviour, Output,
    TestCredentialHelper, TestRegistry,
};
use serde_json::json;

const BUILD_TIMEOUT: Duration = Duration::from_secs(300);
const USER: &str = "kilnhelper";

/// The protected registry, its password, and a work directory.
struct Setup {
    reg: TestRegistry,
    password: String,
    work: tempfile::TempDir,
}

fn setup() -> Option<Setup> {
    if !require_tools(&["docker-registry"]) {
        return None;
    }
    let password = format!("helper-pw-{}-Zq8", std::process::id());
    Some(Setup {
        reg: TestRegistry::with_auth(&htpasswd_line(USER, &password)),
        password,
        work: tempfile::Builder::new()
            .prefix("kiln-credhelpers-")
            .tempdir()
            .expect("temp dir"),
    })
}

impl Setup {
    /// A helper answering this registry's credentials, "not found" for any other server.
    fn answering_helper(&self) -> TestCredentialHelper {
        TestCredentialHelper::new(
            "kilntest",
            HelperBehaviour::Answer {
                server: self.reg.addr.clone(),
                username: USER.into(),
                secret: self.password.clone(),
            },
        )
    }

    /// A context directory `name` with `dockerfile` and a file `hello.txt`.
    fn context(&self, name: &str, dockerfile: &str) -> std::path::PathBuf {
        let ctx = self.work.path().join(name);
        fs::create_dir_all(&ctx).expect("context dir");
        fs::write(ctx.join("Dockerfile"), dockerfile).expect("Dockerfile");
        fs::write(ctx.join("hello.txt"), format!("{name}\n")).expect("hello.txt");
        ctx
    }

    /// The strings that must never appear in the executor's output.
    fn needles(&self) -> Vec<String> {
        vec![
            self.password.clone(),
            base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{}", self.password)),
        ]
    }

    fn assert_no_secret(&self, out: &Output) {
        for needle in self.needles() {
            assert!(
                !out.stdout.contains(&needle) && !out.stderr.contains(&needle),
                "the registry's secret is in the executor's output:\n{}\n{}",
                out.stderr,
                out.stdout
            );
        }
    }
}

/// Runs kiln-executor on `context`, pushing to `dest`, with the helper on its `PATH` and the
/// docker config in `docker_config`.
fn build(
    context: &Path,
    dest: &str,
    docker_config: &Path,
    helper: &TestCredentialHelper,
) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kiln-executor"));
    cmd.env("PATH", helper.path_env())
        .env("DOCKER_CONFIG", docker_config)
        .env_remove("KILN_LOG")
        .arg("--context")
        .arg(format!("dir://{}", context.display()))
        .args([
            "--destination",
            dest,
            "--insecure",
            "--insecure-pull",
            "--verbosity",
            "trace",
        ]);
    run_bounded(&mut cmd, BUILD_TIMEOUT).unwrap_or_else(|e| panic!("kiln-executor: {e}"))
}

fn busybox() -> String {
    format!("{}/kiln-test/busybox:latest", registry())
}

fn assert_built(out: &Output) {
    assert!(
        out.success(),
        "the build failed:\n{}\n{}",
        out.stderr,
        out.stdout
    );
}

#[test]
fn cred_helpers_entry_pushes_and_pulls() {
    let Some(s) = setup() else { return };
    let helper = s.answering_helper();
    let config = helper.docker_config(&s.work.path().join("docker"), Some(&s.reg.addr), json!({}));

    let push = build(
        &s.context("push", &format!("FROM {}\nCOPY hello.txt /\n", busybox())),
        &format!("{}/helper/app:v1", s.reg.addr),
        &config,
        &helper,
    );
    assert_built(&push);
    assert!(s.reg.has_tag("helper/app", "v1"));
    // Only the registry with a credHelpers entry, once; the base image's registry has none.
    assert_eq!(helper.calls(), vec![format!("get {}", s.reg.addr)]);
    s.assert_no_secret(&push);

    // The protected image as a base: pulled and pushed with one call of the helper.
    let pull = build(
        &s.context(
            "pull",
            &format!(
                "FROM {}/helper/app:v1\nCOPY hello.txt /pull.txt\n",
                s.reg.addr
            ),
        ),
        &format!("{}/helper/app:v2", s.reg.addr),
        &config,
        &helper,
    );
    assert_built(&pull);
    assert!(s.reg.has_tag("helper/app", "v2"));
    assert_eq!(helper.calls().len(), 2, "{:?}", helper.calls());
    s.assert_no_secret(&pull);
}

#[test]
fn creds_store_answers_for_every_registry_and_wins_over_auths() {
    let Some(s) = setup() else { return };
    let helper = s.answering_helper();
    // A wrong `auths` entry for the registry: as in Docker, the store's answer is used instead.
    let wrong = base64::engine::general_purpose::STANDARD.encode(format!("{USER}:not-the-pw"));
    let config = helper.docker_config(
        &s.work.path().join("docker"),
        None,
        json!({"auths": {&s.reg.addr: {"auth": wrong}}}),
    );
    let out = build(
        &s.context("store", &format!("FROM {}\nCOPY hello.txt /\n", busybox())),
        &format!("{}/helper/store:v1", s.reg.addr),
        &config,
        &helper,
    );
    assert_built(&out);
    assert!(s.reg.has_tag("helper/store", "v1"));
    // Asked for each registry contacted, once: the base image's registry ("not found":
    // anonymous, which that registry allows) and the protected one.
    let mut calls = helper.calls();
    calls.sort();
    let mut expected = vec![format!("get {}", registry()), format!("get {}", s.reg.addr)];
    expected.sort();
    assert_eq!(calls, expected);
    s.assert_no_secret(&out);
}

#[test]
fn a_failing_helper_names_itself_and_the_registry() {
    let Some(s) = setup() else { return };
    let stdout_text = format!("stdout-of-the-helper {}", s.password);
    let helper = TestCredentialHelper::new(
        "kilntest",
        HelperBehaviour::Fail {
            stdout: stdout_text.clone(),
            stderr: "kilntest: the identity service is unreachable".into(),
        },
    );
    let config = helper.docker_config(&s.work.path().join("docker"), Some(&s.reg.addr), json!({}));
    let out = build(
        &s.context("fail", &format!("FROM {}\nCOPY hello.txt /\n", busybox())),
        &format!("{}/helper/fail:v1", s.reg.addr),
        &config,
        &helper,
    );
    assert!(!out.success(), "the build succeeded:\n{}", out.stderr);
    let log = format!("{}{}", out.stderr, out.stdout);
    assert!(
        log.contains("credential helper docker-credential-kilntest (credHelpers in docker config")
            && log.contains(&format!("registry {}", s.reg.addr))
            && log.contains("the identity service is unreachable"),
        "{log}"
    );
    assert!(!log.contains("stdout-of-the-helper"), "{log}");
    s.assert_no_secret(&out);
    assert!(!s.reg.has_tag("helper/fail", "v1"));
}

#[test]
fn credentials_not_found_means_anonymous_and_a_clear_401() {
    let Some(s) = setup() else { return };
    let helper = TestCredentialHelper::new("kilntest", HelperBehaviour::NotFound);
    let config = helper.docker_config(&s.work.path().join("docker"), Some(&s.reg.addr), json!({}));
    let out = build(
        &s.context("anon", &format!("FROM {}\nCOPY hello.txt /\n", busybox())),
        &format!("{}/helper/anon:v1", s.reg.addr),
        &config,
        &helper,
    );
    assert!(!out.success(), "the build succeeded:\n{}", out.stderr);
    let log = format!("{}{}", out.stderr, out.stdout);
    assert!(
        log.contains(&format!("unauthorized for {}/helper/anon", s.reg.addr))
            && log.contains(&format!(
                "docker-credential-kilntest (credHelpers in docker config {}) has none for {}, \
                 so access was anonymous",
                config.join("config.json").display(),
                s.reg.addr
            )),
        "{log}"
    );
    assert_eq!(helper.calls(), vec![format!("get {}", s.reg.addr)]);
}
