//! How kiln-executor reaches registries, against real ones on loopback: a plain-HTTP registry on
//! 127.0.0.1 works without any insecure flag (HTTPS is tried first, then plain HTTP, as kaniko
//! does for local addresses) while a name kaniko does not call local never gets a plain request;
//! a registry whose certificate a test CA issued works with `--registry-certificate` and fails
//! with advice without it; one that asks for client certificates works with
//! `--registry-client-cert` and fails with advice without it. The same in container mode: the
//! executor image under podman, with the certificate files inside the container's own `/` (which
//! the in-place build clears) and the test CA trusted through `SSL_CERT_FILE` under `/kiln`.
//! Images are seeded and checked with skopeo, never with Kiln's own client.
//!
//! Needs the local registry and base images (`KILN_TEST_REGISTRY`; `bash scripts/test.sh` sets
//! them up), `docker-registry`, `skopeo` and `openssl`; the container-mode test needs podman.

mod support;

use std::fs;
use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kiln_oci::registry::{Registry, RegistryOptions};
use kiln_testkit::{
    podman, registry, registry_digest, require_tools, run_bounded, run_ok, runtime, tail, Output,
    TestCa, TestRegistry, Usage,
};
use support::build_executor_image;

const TIMEOUT: Duration = Duration::from_secs(300);

/// The info line logged when a registry falls back to plain HTTP.
const FELL_BACK: &str = "does not answer over HTTPS: using plain HTTP";

/// A build context: FROM `base`, one RUN (so the base is pulled and unpacked), a file.
fn context(dir: &Path, base: &str) {
    fs::create_dir_all(dir).unwrap();
    fs::write(
        dir.join("Dockerfile"),
        format!("FROM {base}\nRUN echo over tls > /made\nCOPY hello.txt /hello.txt\n"),
    )
    .unwrap();
    fs::write(dir.join("hello.txt"), "hello\n").unwrap();
}

/// Runs the executor on `ctx` with `flags` and an empty docker config; returns its output.
fn executor(ctx: &Path, flags: &[&str]) -> Output {
    let empty = ctx.parent().unwrap().join("docker-config");
    fs::create_dir_all(&empty).unwrap();
    fs::write(empty.join("config.json"), "{}").unwrap();
    run_bounded(
        Command::new(env!("CARGO_BIN_EXE_kiln-executor"))
            .arg("--context")
            .arg(format!("dir://{}", ctx.display()))
            .args(flags)
            .env("DOCKER_CONFIG", &empty),
        TIMEOUT,
    )
    .unwrap_or_else(|e| panic!("kiln-executor {flags:?}: {e}"))
}

fn output_text(out: &Output) -> String {
    format!("{}{}", out.stdout, out.stderr)
}

fn succeeds(out: &Output) -> String {
    let log = output_text(out);
    assert!(out.success(), "kiln-executor failed:\n{}", tail(&log, 4000));
    log
}

fn fails(out: &Output) -> String {
    let log = output_text(out);
    assert!(
        !out.success(),
        "kiln-executor should have failed:\n{}",
        tail(&log, 4000)
    );
    log
}

/// Copies the shared busybox base image into `tls_reg` with skopeo, trusting `certs`.
fn seed_busybox(tls_reg: &str, certs: &Path) -> String {
    let dest = format!("{tls_reg}/kiln-test/busybox:latest");
    run_ok(
        Command::new("skopeo")
            .args(["copy", "--quiet", "--src-tls-verify=false"])
            .arg("--dest-cert-dir")
            .arg(certs)
            .arg(format!("docker://{}/kiln-test/busybox:latest", registry()))
            .arg(format!("docker://{dest}")),
        TIMEOUT,
    )
    .unwrap_or_else(|e| panic!("seeding {dest}: {e}"));
    dest
}

/// The digest skopeo reads for `image` over verified TLS with `certs`.
fn tls_digest(image: &str, certs: &Path) -> String {
    let out = run_ok(
        Command::new("skopeo")
            .args(["inspect", "--format", "{{.Digest}}", "--cert-dir"])
            .arg(certs)
            .arg(format!("docker://{image}")),
        Duration::from_secs(120),
    )
    .unwrap_or_else(|e| panic!("skopeo inspect {image}: {e}"));
    out.stdout.trim().to_string()
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn loopback_plain_http_registries_need_no_insecure_flag() {
    if !require_tools(&["docker-registry", "skopeo"]) {
        return;
    }
    let shared = registry();
    let dest_reg = TestRegistry::start();
    let tmp = tempfile::tempdir().unwrap();
    let ctx = tmp.path().join("ctx");
    context(&ctx, &format!("{shared}/kiln-test/busybox:latest"));
    let dest = format!("{}/plain/app:v1", dest_reg.addr);
    // No --insecure, --insecure-pull or --insecure-registry: both are on 127.0.0.1.
    let log = succeeds(&executor(&ctx, &["--destination", &dest]));
    assert!(registry_digest(&dest)
        .expect("skopeo reads the pushed image")
        .starts_with("sha256:"));
    // Decided once per registry and run, and said once.
    for reg in [&shared, &dest_reg.addr] {
        let lines = log
            .lines()
            .filter(|l| l.contains(FELL_BACK) && l.contains(reg.as_str()))
            .count();
        assert_eq!(lines, 1, "fallback for {reg} logged {lines} times:\n{log}");
    }
}

/// Records the first bytes of every connection to a loopback address, then closes it.
struct Recorder {
    addr: String,
    seen: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl Recorder {
    fn start(ip: &str) -> Recorder {
        let listener = TcpListener::bind((ip, 0)).expect("bind a loopback address");
        let addr = listener.local_addr().unwrap().to_string();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = seen.clone();
        std::thread::spawn(move || {
            for mut conn in listener.incoming().flatten() {
                let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
                let mut first = [0u8; 8];
                let n = conn.read(&mut first).unwrap_or(0);
                record.lock().unwrap().push(first[..n].to_vec());
            }
        });
        Recorder { addr, seen }
    }

    /// Connections that started with a TLS handshake record, and those that were plain HTTP.
    fn counts(&self) -> (usize, usize) {
        let seen = self.seen.lock().unwrap();
        let tls = seen.iter().filter(|b| b.first() == Some(&0x16)).count();
        let plain = seen.iter().filter(|b| b.starts_with(b"GET ")).count();
        (tls, plain)
    }
}

#[test]
fn only_names_kaniko_calls_local_fall_back_to_plain_http() {
    let rt = runtime();
    let pull = |addr: &str| {
        let registry = Registry::new(RegistryOptions::default()).unwrap();
        rt.block_on(registry.pull_image(&format!("{addr}/team/app:v1")))
            .unwrap_err()
    };
    // 127.0.0.2 is loopback, but go-containerregistry matches only the text 127.0.0.1: HTTPS only.
    let other = Recorder::start("127.0.0.2");
    let err = pull(&other.addr);
    let (tls, plain) = other.counts();
    assert!(tls >= 1 && plain == 0, "{tls} TLS, {plain} plain: {err}");
    // The same server on 127.0.0.1 is tried over HTTPS, then over plain HTTP.
    let local = Recorder::start("127.0.0.1");
    let err = pull(&local.addr);
    let (tls, plain) = local.counts();
    assert!(tls >= 1 && plain >= 1, "{tls} TLS, {plain} plain: {err}");
}

#[test]
fn registry_certificate_and_client_certificate_over_tls() {
    if !require_tools(&["docker-registry", "skopeo", "openssl"]) {
        return;
    }
    let server_ca = TestCa::new("kiln-test-server-ca");
    let client_ca = TestCa::new("kiln-test-client-ca");
    let client = client_ca.issue("kiln-client", Usage::Client);
    let tmp = tempfile::tempdir().unwrap();
    let ca = server_ca.cert.to_str().unwrap().to_string();

    // Server TLS only.
    let tls = TestRegistry::with_tls_from(&server_ca, None);
    let certs = server_ca.cert_dir("tls", None);
    let base = seed_busybox(&tls.addr, &certs);
    let ctx = tmp.path().join("ctx");
    context(&ctx, &base);
    let dest = format!("{}/tls/app:v1", tls.addr);
    let trust = format!("{}={ca}", tls.addr);
    let log = succeeds(&executor(
        &ctx,
        &["--destination", &dest, "--registry-certificate", &trust],
    ));
    assert!(!log.contains(FELL_BACK), "fell back to plain HTTP:\n{log}");
    assert!(tls_digest(&dest, &certs).starts_with("sha256:"));
    let log = fails(&executor(&ctx, &["--destination", &dest]));
    assert!(
        log.contains("not trusted")
            && log.contains(&format!("--registry-certificate={}=", tls.addr)),
        "no advice to pass the CA:\n{}",
        tail(&log, 3000)
    );

    // Mutual TLS: the registry asks for a client certificate the client CA issued.
    let mtls = TestRegistry::with_tls_from(&server_ca, Some(&client_ca));
    let mcerts = server_ca.cert_dir("mtls", Some(&client));
    let base = seed_busybox(&mtls.addr, &mcerts);
    let mctx = tmp.path().join("mctx");
    context(&mctx, &base);
    let dest = format!("{}/mtls/app:v1", mtls.addr);
    let trust = format!("{}={ca}", mtls.addr);
    let identity = format!("{}={},{}", mtls.addr, path(&client.0), path(&client.1));
    succeeds(&executor(
        &mctx,
        &[
            "--destination",
            &dest,
            "--registry-certificate",
            &trust,
            "--registry-client-cert",
            &identity,
        ],
    ));
    assert!(tls_digest(&dest, &mcerts).starts_with("sha256:"));
    let log = fails(&executor(
        &mctx,
        &["--destination", &dest, "--registry-certificate", &trust],
    ));
    assert!(
        log.contains(&format!("--registry-client-cert={}=", mtls.addr)),
        "no advice to pass a client certificate:\n{}",
        tail(&log, 3000)
    );
    // A key that is not the certificate's is refused before any request, naming the flag.
    let wrong = format!("{}={},{}", mtls.addr, path(&client.0), path(&client.0));
    let log = fails(&executor(
        &mctx,
        &["--destination", &dest, "--registry-client-cert", &wrong],
    ));
    assert!(
        log.contains("--registry-client-cert"),
        "{}",
        tail(&log, 2000)
    );
}

/// Files put into a created container's own filesystem (not a mount) with `podman cp`.
fn podman_cp(container: &str, files: &[(&Path, &str)]) {
    for (from, to) in files {
        run_ok(
            podman()
                .arg("cp")
                .arg(from)
                .arg(format!("{container}:{to}")),
            Duration::from_secs(120),
        )
        .unwrap_or_else(|e| panic!("podman cp {} {to}: {e}", from.display()));
    }
}

/// Runs the executor image in place under podman on `ctx` with `files` copied into its `/`,
/// `env` and `args`; returns its output. The container is removed afterwards.
fn in_container(
    image: &str,
    ctx: &Path,
    files: &[(&Path, &str)],
    env: &[&str],
    args: &[&str],
) -> Output {
    let mut create = podman();
    create.args([
        "create",
        "--network",
        "host",
        "--tls-verify=false",
        "--pull=always",
    ]);
    for e in env {
        create.args(["-e", e]);
    }
    create
        .arg("-v")
        .arg(format!("{}:/workspace:ro", ctx.display()))
        .arg(image)
        .args(["--context", "dir:///workspace"])
        .args(args);
    let id = run_ok(&mut create, TIMEOUT)
        .unwrap_or_else(|e| panic!("podman create: {e}"))
        .stdout
        .trim()
        .to_string();
    podman_cp(&id, files);
    let out = run_bounded(podman().args(["start", "-a", &id]), TIMEOUT)
        .unwrap_or_else(|e| panic!("podman start: {e}"));
    let _ = run_bounded(podman().args(["rm", "-f", &id]), Duration::from_secs(120));
    out
}

#[test]
fn container_mode_reads_certificates_before_clearing_root_and_trusts_ssl_cert_file() {
    if !require_tools(&["docker-registry", "skopeo", "openssl", "podman"]) {
        return;
    }
    let reg = registry();
    let executor_image = build_executor_image(&reg);
    let server_ca = TestCa::new("kiln-test-server-ca");
    let client_ca = TestCa::new("kiln-test-client-ca");
    let client = client_ca.issue("kiln-client", Usage::Client);
    let mtls = TestRegistry::with_tls_from(&server_ca, Some(&client_ca));
    let certs = server_ca.cert_dir("mtls", Some(&client));
    let base = seed_busybox(&mtls.addr, &certs);
    let tmp = tempfile::tempdir().unwrap();
    let ctx = tmp.path().join("ctx");
    context(&ctx, &base);
    // In the container's own /, which the in-place build clears before it pushes.
    let files: [(&Path, &str); 3] = [
        (&server_ca.cert, "/etc/ca.pem"),
        (&client.0, "/etc/client.pem"),
        (&client.1, "/etc/client-key.pem"),
    ];
    let identity = format!("{}=/etc/client.pem,/etc/client-key.pem", mtls.addr);

    let dest = format!("{}/inpod/app:flags", mtls.addr);
    let out = in_container(
        &executor_image,
        &ctx,
        &files,
        &[],
        &[
            "--destination",
            &dest,
            "--registry-certificate",
            &format!("{}=/etc/ca.pem", mtls.addr),
            "--registry-client-cert",
            &identity,
        ],
    );
    let log = output_text(&out);
    eprintln!(
        "--- with the flags, inside podman ---\n{}",
        tail(&log, 3000)
    );
    assert!(
        out.success(),
        "in-place build failed:\n{}",
        tail(&log, 4000)
    );
    assert!(
        log.contains("cleared /"),
        "not in place:\n{}",
        tail(&log, 3000)
    );
    assert!(tls_digest(&dest, &certs).starts_with("sha256:"));

    // The CA as a system CA: SSL_CERT_FILE under /kiln, which the build never clears.
    let bundle: PathBuf = tmp.path().join("bundle.pem");
    let mut pem = fs::read(&server_ca.cert).unwrap();
    pem.extend(fs::read("/etc/ssl/certs/ca-certificates.crt").unwrap_or_default());
    fs::write(&bundle, pem).unwrap();
    let mut with_bundle = files.to_vec();
    with_bundle.push((&bundle, "/kiln/test-bundle.pem"));
    let dest = format!("{}/inpod/app:system", mtls.addr);
    let out = in_container(
        &executor_image,
        &ctx,
        &with_bundle,
        &["SSL_CERT_FILE=/kiln/test-bundle.pem"],
        &["--destination", &dest, "--registry-client-cert", &identity],
    );
    let log = output_text(&out);
    eprintln!(
        "--- with SSL_CERT_FILE, inside podman ---\n{}",
        tail(&log, 3000)
    );
    let _ = run_bounded(
        podman().args(["rmi", "-f", &executor_image]),
        Duration::from_secs(120),
    );
    assert!(
        out.success(),
        "in-place build failed:\n{}",
        tail(&log, 4000)
    );
    assert!(
        log.contains("cleared /"),
        "not in place:\n{}",
        tail(&log, 3000)
    );
    assert!(tls_digest(&dest, &certs).starts_with("sha256:"));
}
