//! Docker credential helpers, end to end: the real `kiln-executor` pushes to and pulls from a
//! registry with htpasswd auth whose credentials only a credential helper holds
//! (`docker-credential-kilntest`, a shell script speaking the helper protocol, on the executor's
//! `PATH`; see `kiln_testkit::credhelper`), named by the docker config's `credHelpers` or
//! `credsStore`. Checked: the helper is asked lazily (only for registries contacted) and once per
//! registry per run; its answer wins over an `auths` entry; "credentials not found" means
//! anonymous access (and so a clear 401 on push); a failing helper stops the build with an error
//! naming the helper and the registry, without its stdout; the secret is never in the executor's
//! stdout or stderr (at trace verbosity). Then kaniko's cloud keychains: a registry whose host
//! is an Amazon ECR one and that the docker config has no entry for gets the answer of
//! `docker-credential-ecr-login` when it is installed (the ECR name resolves to the loopback
//! registry through an `/etc/hosts` of a mount namespace the test creates), and a 401 naming
//! that helper when it is not.
//!
//! Needs docker-registry and the local test registry with the base images; the ECR tests need
//! root and util-linux (`unshare`, `mount`).

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use base64::Engine;
use kiln_testkit::{
    htpasswd_line, registry, require_root, require_tools, run_bounded, tool, HelperBehaviour,
    Output, TestCredentialHelper, TestRegistry,
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
    executor_args(&mut cmd, context, dest, docker_config, helper);
    run_bounded(&mut cmd, BUILD_TIMEOUT).unwrap_or_else(|e| panic!("kiln-executor: {e}"))
}

/// The environment and arguments of [`build`].
fn executor_args(
    cmd: &mut Command,
    context: &Path,
    dest: &str,
    docker_config: &Path,
    helper: &TestCredentialHelper,
) {
    cmd.env("PATH", helper.path_env())
        .env("DOCKER_CONFIG", docker_config)
        .env_remove("KILN_LOG")
        .env_remove("CI_REGISTRY")
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

/// An Amazon ECR registry name (kaniko's ECR keychain matches it) for the loopback registry.
const ECR_HOST: &str = "123456789012.dkr.ecr.us-east-1.amazonaws.com";

impl Setup {
    /// The protected registry under [`ECR_HOST`], with its port.
    fn ecr_addr(&self) -> String {
        let port = self.reg.addr.rsplit_once(':').expect("host:port").1;
        format!("{ECR_HOST}:{port}")
    }

    /// [`build`] in a private mount namespace whose `/etc/hosts` maps [`ECR_HOST`] to 127.0.0.1,
    /// with an empty docker config: no credentials for the registry but the cloud helper's.
    fn build_as_ecr(&self, name: &str, helper: &TestCredentialHelper) -> Output {
        let hosts = self.work.path().join("hosts");
        let system = fs::read_to_string("/etc/hosts").unwrap_or_default();
        fs::write(&hosts, format!("{system}\n127.0.0.1 {ECR_HOST}\n")).expect("hosts file");
        let docker = self.work.path().join("docker-empty");
        fs::create_dir_all(&docker).expect("docker config dir");
        fs::write(docker.join("config.json"), "{}").expect("empty docker config");
        let context = self.context(name, &format!("FROM {}\nCOPY hello.txt /\n", busybox()));
        let mut cmd = Command::new(tool("unshare"));
        cmd.args(["--mount", "--propagation", "private", "--", "sh", "-c"])
            .arg(r#"mount --bind "$0" /etc/hosts && exec "$@""#)
            .arg(&hosts)
            .arg(env!("CARGO_BIN_EXE_kiln-executor"));
        executor_args(
            &mut cmd,
            &context,
            &format!("{}/ecr/{name}:v1", self.ecr_addr()),
            &docker,
            helper,
        );
        run_bounded(&mut cmd, BUILD_TIMEOUT).unwrap_or_else(|e| panic!("kiln-executor: {e}"))
    }
}

fn ecr_setup() -> Option<Setup> {
    if !require_root("the ECR tests give the executor its own /etc/hosts in a mount namespace")
        || !require_tools(&["unshare", "mount"])
    {
        return None;
    }
    setup()
}

#[test]
fn an_ecr_registry_without_a_config_entry_gets_ecr_logins_answer() {
    let Some(s) = ecr_setup() else { return };
    let helper = TestCredentialHelper::new(
        "ecr-login",
        HelperBehaviour::Answer {
            server: s.ecr_addr(),
            username: USER.into(),
            secret: s.password.clone(),
        },
    );
    let out = s.build_as_ecr("auto", &helper);
    assert_built(&out);
    assert!(s.reg.has_tag("ecr/auto", "v1"));
    // Asked once, for the ECR registry only: the base image's registry is not an ECR one.
    assert_eq!(helper.calls(), vec![format!("get {}", s.ecr_addr())]);
    let log = format!("{}{}", out.stderr, out.stdout);
    assert!(
        log.contains("credential helper docker-credential-ecr-login, asked as kaniko asks it"),
        "the debug log does not say where the credentials came from:\n{log}"
    );
    s.assert_no_secret(&out);
}

#[test]
fn an_ecr_registry_without_ecr_login_is_anonymous_and_the_401_names_the_helper() {
    let Some(s) = ecr_setup() else { return };
    // No docker-credential-ecr-login on PATH (another helper's directory, then the system's).
    let other = TestCredentialHelper::new("kilntest", HelperBehaviour::NotFound);
    let out = s.build_as_ecr("absent", &other);
    assert!(!out.success(), "the build succeeded:\n{}", out.stderr);
    let log = format!("{}{}", out.stderr, out.stdout);
    assert!(
        log.contains(&format!("unauthorized for {}/ecr/absent", s.ecr_addr()))
            && log.contains(&format!(
                "has no credentials for {}; the Amazon ECR helper docker-credential-ecr-login is \
                 not an executable file in {}:",
                s.ecr_addr(),
                other.dir().display()
            ))
            && log.contains(", so access was anonymous"),
        "{log}"
    );
    assert!(other.calls().is_empty(), "{:?}", other.calls());
}
