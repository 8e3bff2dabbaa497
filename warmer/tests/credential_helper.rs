//! kiln-warmer with a docker credential helper: the images sit in a registry with htpasswd auth
//! whose credentials only `docker-credential-kilntest` (a shell script speaking the helper
//! protocol, on the warmer's `PATH`; `kiln_testkit::credhelper`) holds, named by the docker
//! config's `credHelpers`. The images are pushed by kiln's registry client through the same
//! helper. The warmer pulls two images for two platforms (a client each) and asks the helper once;
//! a helper that fails makes the warm fail naming it and the registry. The secret is never in the
//! warmer's output.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use kiln_oci::registry::{Platform, Registry, MEDIA_TYPE_OCI_MANIFEST};
use kiln_testkit::{
    bounded, htpasswd_line, require_tools, run_bounded, HelperBehaviour, Output,
    TestCredentialHelper, TestImage, TestRegistry,
};

const WARM_TIMEOUT: Duration = Duration::from_secs(300);
const USER: &str = "kilnwarm";

fn warm(
    cache: &Path,
    args: &[&str],
    docker_config: &Path,
    helper: &TestCredentialHelper,
) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kiln-warmer"));
    cmd.arg("--cache-dir")
        .arg(cache)
        .arg("--insecure")
        .env("PATH", helper.path_env())
        .env("DOCKER_CONFIG", docker_config)
        .env("KILN_TERMINATION_LOG", cache.with_extension("termination"))
        .env_remove("KILN_LOG");
    cmd.args(args);
    run_bounded(&mut cmd, WARM_TIMEOUT).unwrap_or_else(|e| panic!("kiln-warmer: {e}"))
}

#[test]
fn warms_through_a_credential_helper_asked_once() {
    if !require_tools(&["docker-registry"]) {
        return;
    }
    let password = format!("warm-pw-{}-Lk3", std::process::id());
    let reg = TestRegistry::with_auth(&htpasswd_line(USER, &password));
    let work = tempfile::tempdir().unwrap();
    let helper = TestCredentialHelper::new(
        "kilntest",
        HelperBehaviour::Answer {
            server: reg.addr.clone(),
            username: USER.into(),
            secret: password.clone(),
        },
    );
    let docker = helper.docker_config(
        &work.path().join("docker"),
        Some(&reg.addr),
        serde_json::json!({}),
    );

    // Two images, pushed by kiln's own client through the helper (found by its own search path).
    let mut opts = reg.options();
    opts.docker_config = Some(docker.join("config.json"));
    opts.credential_helpers.path = Some(helper.dir().as_os_str().to_owned());
    let client = Registry::new(opts).unwrap();
    let mut images = Vec::new();
    for (name, arch) in [
        ("one", Platform::default().architecture),
        ("two", "arm64".into()),
    ] {
        let image = TestImage::hello(&work.path().join(name), &arch, &format!("{name}\n"));
        let reference = format!("{}/warm/{name}:1", reg.addr);
        bounded(client.push_image(
            &reference,
            &image.blobs(None),
            &image.manifest,
            MEDIA_TYPE_OCI_MANIFEST,
        ))
        .unwrap();
        images.push(reference);
    }
    assert_eq!(helper.calls(), vec![format!("get {}", reg.addr)]);

    // The warmer, from a Dockerfile whose stages want two platforms: a client for each, one
    // keychain, one call of the helper.
    let cache = work.path().join("cache");
    let dockerfile = work.path().join("Dockerfile");
    std::fs::write(
        &dockerfile,
        format!(
            "FROM {} AS a\nFROM --platform=linux/arm64 {} AS b\n",
            images[0], images[1]
        ),
    )
    .unwrap();
    let out = warm(
        &cache,
        &["--dockerfile", dockerfile.to_str().unwrap()],
        &docker,
        &helper,
    );
    assert!(
        out.success(),
        "kiln-warmer failed:\n{}\n{}",
        out.stderr,
        out.stdout
    );
    assert_eq!(helper.calls().len(), 2, "{:?}", helper.calls());
    assert!(
        !out.stdout.contains(&password) && !out.stderr.contains(&password),
        "the secret is in the warmer's output"
    );

    // A failing helper: the warm fails, naming the helper and the registry.
    let failing = TestCredentialHelper::new(
        "kilntest",
        HelperBehaviour::Fail {
            stdout: format!("helper-stdout {password}"),
            stderr: "kilntest: no workload identity".into(),
        },
    );
    let out = warm(
        &work.path().join("cache2"),
        &["--image", &images[0]],
        &docker,
        &failing,
    );
    assert!(!out.success(), "the warm succeeded:\n{}", out.stderr);
    let log = format!("{}{}", out.stderr, out.stdout);
    assert!(
        log.contains("docker-credential-kilntest")
            && log.contains(&format!("registry {}", reg.addr))
            && log.contains("no workload identity"),
        "{log}"
    );
    assert!(
        !log.contains("helper-stdout") && !log.contains(&password),
        "{log}"
    );
}
