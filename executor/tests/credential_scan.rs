//! A build with credentials present leaks none of them. The executor (chroot isolation) pushes to
//! a registry with htpasswd auth, whose credentials only a docker config (`DOCKER_CONFIG`) holds,
//! with `--cache` (cache layers pushed with the same credentials) and an OCI layout output, while
//! `GIT_TOKEN`, `GIT_PASSWORD` and an AWS key sit in its environment. Then every blob the registry
//! stores (layers decompressed, configs, manifests), the layout, and the executor's stdout and
//! stderr at trace verbosity are searched for the password, `user:password`, its base64 form, and
//! the tokens. While the build runs, the executor's `/proc/<pid>/environ` must already be free of
//! the secret-bearing variables (it re-executes itself without them; see
//! `kiln_executor::credentials`). The in-Pod counterpart is tests/inpod_isolation.rs.
//!
//! Needs root, docker-registry and the local test registry with the base images.

mod support;

use std::fs;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use kiln_executor::credentials::HANDOVER_ARG;
use kiln_testkit::{htpasswd_line, registry, require_root, require_tools, TestRegistry};
use support::{decompressed, find_in, scan_files};

const BUILD_TIMEOUT: Duration = Duration::from_secs(300);

/// Kills the executor if the test fails before it ends.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// The executor's `/proc/<pid>/environ` once it has re-executed itself (its command line carries
/// the hand-over marker); `None` if it ended first or the deadline passed.
fn environ_after_reexec(child: &mut Child, deadline: Instant) -> Option<Vec<u8>> {
    let proc_dir = format!("/proc/{}", child.id());
    while Instant::now() < deadline {
        if !matches!(child.try_wait(), Ok(None)) {
            return None;
        }
        let cmdline = fs::read(format!("{proc_dir}/cmdline")).unwrap_or_default();
        if cmdline
            .split(|b| *b == 0)
            .any(|arg| arg == HANDOVER_ARG.as_bytes())
        {
            return fs::read(format!("{proc_dir}/environ")).ok();
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    None
}

fn wait_bounded(child: &mut Child, deadline: Instant) -> std::process::ExitStatus {
    loop {
        if let Some(status) = child.try_wait().expect("waiting for the executor") {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "the executor did not finish within {} s",
            BUILD_TIMEOUT.as_secs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn write_context(dir: &Path, base_reg: &str) {
    fs::create_dir_all(dir).expect("context dir");
    // The steps try every way a step might find a credential; in chroot isolation the host's
    // files and processes are out of reach, and the environment is the image's and the ARG's.
    fs::write(
        dir.join("Dockerfile"),
        format!(
            r#"FROM {base_reg}/kiln-test/busybox:latest
ARG PLAIN=plain-arg
RUN env | sort | tee /env.txt; (cat /proc/1/environ; echo) > /pid1-environ 2>&1; \
    cat "$DOCKER_CONFIG/config.json" /root/.docker/config.json /kiln/.docker/config.json > /configs 2>&1; \
    echo kiln-scan-control > /control; true
COPY hello.txt /hello.txt
RUN cat /env.txt /pid1-environ /configs
"#
        ),
    )
    .expect("write Dockerfile");
    fs::write(dir.join("hello.txt"), "hello\n").expect("write hello.txt");
}

#[test]
fn credentials_reach_no_layer_config_manifest_or_log() {
    if !require_tools(&["docker-registry"]) || !require_root("chroot isolation needs root") {
        return;
    }
    let base_reg = registry();
    let nonce = std::process::id();
    let user = format!("scanner{nonce}");
    let password = format!("pw-{nonce}-Hd4");
    let user_password = format!("{user}:{password}");
    let auth = base64::engine::general_purpose::STANDARD.encode(&user_password);
    let git_token = format!("gittok-{nonce}-Pa9");
    let git_password = format!("gitpw-{nonce}-Ty6");
    let aws_secret = format!("awssecret-{nonce}-Jc1");
    let needles = [
        ("the registry password", password.as_str()),
        ("user:password", user_password.as_str()),
        ("the docker config's auth (base64)", auth.as_str()),
        ("GIT_TOKEN", git_token.as_str()),
        ("GIT_PASSWORD", git_password.as_str()),
        ("AWS_SECRET_ACCESS_KEY", aws_secret.as_str()),
    ];

    let reg = TestRegistry::with_auth(&htpasswd_line(&user, &password));
    let work = tempfile::Builder::new()
        .prefix("kiln-credscan-")
        .tempdir()
        .expect("temp dir");
    let docker = work.path().join("docker");
    fs::create_dir_all(&docker).expect("docker config dir");
    fs::write(
        docker.join("config.json"),
        format!(r#"{{"auths":{{"{}":{{"auth":"{auth}"}}}}}}"#, reg.addr),
    )
    .expect("write docker config");
    let context = work.path().join("context");
    write_context(&context, &base_reg);
    let layout = work.path().join("layout");
    let (stdout_path, stderr_path) = (work.path().join("stdout"), work.path().join("stderr"));

    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kiln-executor"));
    cmd.env_remove("KILN_CONTAINER")
        .env("DOCKER_CONFIG", &docker)
        .env("GIT_TOKEN", &git_token)
        .env("GIT_USERNAME", "git-user")
        .env("GIT_PASSWORD", &git_password)
        .env("AWS_SECRET_ACCESS_KEY", &aws_secret)
        .args([
            "--isolation",
            "chroot",
            "--insecure",
            "--insecure-pull",
            "--verbosity",
            "trace",
        ])
        .arg("--context")
        .arg(format!("dir://{}", context.display()))
        .arg("--dockerfile")
        .arg(context.join("Dockerfile"))
        .args(["--destination", &format!("{}/scan/app:latest", reg.addr)])
        .args([
            "--cache",
            "--cache-repo",
            &format!("{}/scan/cache", reg.addr),
        ])
        .arg("--oci-layout-path")
        .arg(&layout)
        .stdin(Stdio::null())
        .stdout(fs::File::create(&stdout_path).expect("stdout file"))
        .stderr(fs::File::create(&stderr_path).expect("stderr file"));
    let deadline = Instant::now() + BUILD_TIMEOUT;
    let mut running = Running(cmd.spawn().expect("start kiln-executor"));

    // While it runs: the environment block the kernel shows holds none of the secrets, but the
    // variables that carry none are still there.
    let environ = environ_after_reexec(&mut running.0, deadline);
    let status = wait_bounded(&mut running.0, deadline);
    let stdout = fs::read_to_string(&stdout_path).unwrap_or_default();
    let stderr = fs::read_to_string(&stderr_path).unwrap_or_default();
    assert!(
        status.success(),
        "the build failed ({status}):\n{stderr}\n{stdout}"
    );
    let environ = environ.unwrap_or_else(|| {
        panic!("never saw the executor re-executed without its secrets:\n{stderr}")
    });
    let found = find_in("/proc/<executor>/environ", &environ, &needles);
    assert!(found.is_empty(), "{found:?}");
    let names: Vec<String> = environ
        .split(|b| *b == 0)
        .filter_map(|kv| kv.split(|b| *b == b'=').next())
        .map(|n| String::from_utf8_lossy(n).into_owned())
        .collect();
    for secret_name in [
        "GIT_TOKEN",
        "GIT_USERNAME",
        "GIT_PASSWORD",
        "AWS_SECRET_ACCESS_KEY",
    ] {
        assert!(
            !names.iter().any(|n| n == secret_name),
            "{secret_name} is still in /proc/<executor>/environ: {names:?}"
        );
    }
    assert!(
        names.iter().any(|n| n == "DOCKER_CONFIG"),
        "DOCKER_CONFIG (no secret) was dropped: {names:?}"
    );

    // The RUN steps ran and printed what they saw.
    assert!(
        stdout.contains("PLAIN=plain-arg") || stderr.contains("PLAIN=plain-arg"),
        "the RUN steps' output is missing:\n{stderr}\n{stdout}"
    );
    let found = [
        find_in("the executor's stdout", stdout.as_bytes(), &needles),
        find_in("the executor's stderr", stderr.as_bytes(), &needles),
    ]
    .concat();
    assert!(found.is_empty(), "{found:?}");

    // Every blob the registry holds (image and cache), and the OCI layout.
    let storage = reg
        .blob_data_path(&format!("sha256:{}", "0".repeat(64)))
        .ancestors()
        .nth(5)
        .expect("the registry's v2 directory")
        .to_path_buf();
    for dir in [&storage, &layout] {
        let (found, files) = scan_files(dir, &needles);
        assert!(found.is_empty(), "{found:?}");
        // The scanner reads the layers: the control file a step wrote is found, decompressed.
        let (control, _) = scan_files(dir, &[("control", "kiln-scan-control")]);
        assert!(
            control.iter().any(|c| c.contains("(decompressed)")),
            "no layer of {} shows the control file ({files} files scanned)",
            dir.display()
        );
    }
}

/// The scanner itself: values are found raw and inside gzip and zstd blobs.
#[test]
fn the_scanner_finds_values_raw_and_compressed() {
    let needles = [("token", "tok-123"), ("empty", "")];
    assert_eq!(
        find_in("log", b"a tok-123 b", &needles),
        vec!["token in log"]
    );
    assert!(find_in("log", b"tok-12", &needles).is_empty());
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, b"xx tok-123 yy").unwrap();
    let gz = gz.finish().unwrap();
    assert!(find_in("raw", &gz, &needles).is_empty());
    assert_eq!(
        find_in("blob", &decompressed(&gz).unwrap(), &needles),
        vec!["token in blob"]
    );
    let zst = zstd::stream::encode_all(&b"tok-123"[..], 1).unwrap();
    assert_eq!(decompressed(&zst).unwrap(), b"tok-123");
}
