//! Object-store contexts against a real server for each API on loopback: moto (S3, with IAM
//! authentication on, so every signature is checked), fake-gcs-server (the Cloud Storage JSON
//! API) and Azurite (Azure Blob, Shared Key checked). Each context tarball is uploaded with a
//! client independent of Kiln (curl's SigV4 signer, curl, Azure's Python SDK), then built by the
//! real `kiln-executor` binary; wrong credentials fail naming the object, never the secret.
//! scripts/test.sh installs the servers (pip, the Go module proxy, npm).

mod support;

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use kiln_testkit::{
    free_port, require_tools, run_bounded, run_ok, skip_or_fail, wait_for_port, KillOnDrop,
};

/// A server process for one test, killed when the test ends, pass or fail.
struct Server {
    _child: KillOnDrop,
    port: u16,
}

/// Starts `cmd` (which must listen on 127.0.0.1:`port`) with its output in `dir/server.log`.
fn start(mut cmd: Command, port: u16, dir: &Path) -> Server {
    let log = fs::File::create(dir.join("server.log")).unwrap();
    let mut child = cmd
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("starting {cmd:?}: {e}"));
    wait_for_port(port, &mut child);
    Server {
        _child: KillOnDrop(child),
        port,
    }
}

/// Every variable the object stores read, emptied (Kiln treats empty as unset) so that the
/// developer's own cloud settings and files cannot leak into a run.
const CLOUD_VARS: [&str; 19] = [
    "AWS_ACCESS_KEY_ID",
    "AWS_ACCESS_KEY",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SECRET_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_SHARED_CREDENTIALS_FILE",
    "AWS_CONFIG_FILE",
    "S3_ENDPOINT",
    "S3_FORCE_PATH_STYLE",
    "GOOGLE_APPLICATION_CREDENTIALS",
    "STORAGE_EMULATOR_HOST",
    "GCE_METADATA_HOST",
    "AZURE_STORAGE_ACCESS_KEY",
    "KILN_AZURE_BLOB_ENDPOINT",
    "CLOUDSDK_CONFIG",
];

/// Builds `context` with `envs` (on top of emptied cloud variables and `HOME=dir`) into an OCI
/// layout under `dir`; returns success, the log and the layout.
fn build(context: &str, envs: &[(&str, &str)], dir: &Path) -> (bool, String, std::path::PathBuf) {
    let layout = dir.join(format!("layout-{}", free_port()));
    let home = dir.to_str().unwrap();
    let mut all: Vec<(&str, &str)> = CLOUD_VARS.iter().map(|&k| (k, "")).collect();
    all.push(("HOME", home));
    all.extend_from_slice(envs);
    let (ok, log) = support::run_executor(
        &[
            "--context",
            context,
            "--no-push",
            "--oci-layout-path",
            layout.to_str().unwrap(),
        ],
        &all,
        None,
    );
    (ok, log, layout)
}

/// The context every test uploads: a Dockerfile copying `hello.txt` holding `marker`.
fn context_tarball(dir: &Path, marker: &str) -> std::path::PathBuf {
    let path = dir.join(format!("{}.tar.gz", marker.replace(' ', "-")));
    fs::write(
        &path,
        support::tar_gz(&[
            ("Dockerfile", "FROM scratch\nCOPY hello.txt /hello.txt\n"),
            ("hello.txt", marker),
        ]),
    )
    .unwrap();
    path
}

fn assert_built(ok: bool, log: &str, layout: &Path, marker: &str, context: &str) {
    assert!(ok, "build from {context} failed:\n{log}");
    assert_eq!(
        support::layout_entry(layout, "/hello.txt").as_deref(),
        Some(marker),
        "{context}"
    );
}

/// A failed build whose log names `context` and `says`, and holds none of `secrets`.
fn assert_refused(ok: bool, log: &str, context: &str, says: &str, secrets: &[&str]) {
    assert!(!ok, "build from {context} succeeded unexpectedly:\n{log}");
    assert!(
        log.contains(context) && log.contains(says),
        "the error must name {context} and say {says:?}:\n{log}"
    );
    for secret in secrets {
        assert!(!log.contains(secret), "a credential is in the log:\n{log}");
    }
}

/// curl, failing the test on an HTTP error; returns the body.
fn curl(args: &[&str]) -> String {
    let out = run_ok(
        Command::new("curl")
            .args(["-sS", "--fail-with-body"])
            .args(args),
        Duration::from_secs(60),
    )
    .unwrap_or_else(|e| panic!("curl {args:?}: {e}"));
    out.stdout
}

fn xml_field(body: &str, tag: &str) -> String {
    let start = body
        .find(&format!("<{tag}>"))
        .unwrap_or_else(|| panic!("no <{tag}> in {body}"))
        + tag.len()
        + 2;
    let end = body[start..].find(&format!("</{tag}>")).unwrap() + start;
    body[start..end].to_string()
}

/// moto with IAM authentication enforced after the three unauthenticated calls that create the
/// user, its policy and its access key; everything after that (the bucket, the upload, Kiln's
/// GET) must be signed with that key.
#[test]
fn s3_context_through_moto() {
    if !require_tools(&["moto_server", "curl"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let port = free_port();
    let mut cmd = Command::new("moto_server");
    cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .env("INITIAL_NO_AUTH_ACTION_COUNT", "3");
    let server = start(cmd, port, d);
    let endpoint = format!("http://127.0.0.1:{}", server.port);
    let iam = |form: &[&str]| {
        let mut args = vec![
            "--aws-sigv4",
            "aws:amz:us-east-1:iam",
            "--user",
            "AKIDBOOTSTRAP:bootstrap",
            "-X",
            "POST",
            "-d",
            "Version=2010-05-08",
        ];
        for f in form {
            args.extend(["--data-urlencode", f]);
        }
        args.push(&endpoint);
        curl(&args)
    };
    iam(&["Action=CreateUser", "UserName=kiln"]);
    iam(&[
        "Action=PutUserPolicy",
        "UserName=kiln",
        "PolicyName=s3",
        r#"PolicyDocument={"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"s3:*","Resource":"*"}]}"#,
    ]);
    let key = iam(&["Action=CreateAccessKey", "UserName=kiln"]);
    let (id, secret) = (
        xml_field(&key, "AccessKeyId"),
        xml_field(&key, "SecretAccessKey"),
    );
    let user = format!("{id}:{secret}");
    let s3 = |extra: &[&str], path: &str| {
        let mut args = vec!["--aws-sigv4", "aws:amz:us-east-1:s3", "--user", &user];
        args.extend_from_slice(extra);
        let url = format!("{endpoint}{path}");
        args.push(&url);
        curl(&args)
    };
    // moto checks the payload hash header that the AWS SDKs send; curl adds none of its own.
    s3(
        &[
            "-X",
            "PUT",
            "-H",
            "x-amz-content-sha256: e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        ],
        "/ctx-bucket",
    );
    for (key, marker) in [
        ("dir/ctx.tar.gz", "from s3"),
        ("context.tar.gz", "default s3"),
    ] {
        let file = context_tarball(d, marker);
        let upload = format!("@{}", file.display());
        s3(
            &[
                "-X",
                "PUT",
                "-H",
                "x-amz-content-sha256: UNSIGNED-PAYLOAD",
                "-H",
                "Content-Type: application/octet-stream",
                "--data-binary",
                &upload,
            ],
            &format!("/ctx-bucket/{key}"),
        );
    }

    let base_env = [
        ("S3_ENDPOINT", endpoint.as_str()),
        ("S3_FORCE_PATH_STYLE", "true"),
        ("AWS_REGION", "us-east-1"),
    ];
    let context = "s3://ctx-bucket/dir/ctx.tar.gz";
    let mut env = base_env.to_vec();
    env.extend([
        ("AWS_ACCESS_KEY_ID", id.as_str()),
        ("AWS_SECRET_ACCESS_KEY", secret.as_str()),
    ]);
    let (ok, log, layout) = build(context, &env, d);
    assert_built(ok, &log, &layout, "from s3", context);
    assert!(
        !log.contains(&secret),
        "the secret key is in the log:\n{log}"
    );
    let (found, files) = support::scan_files(&layout, &[("AWS_SECRET_ACCESS_KEY", &secret)]);
    assert!(found.is_empty() && files > 0, "{found:?} ({files} files)");

    // kaniko's default object name, with the key from a shared credentials file's profile.
    let creds = d.join("aws-credentials");
    fs::write(
        &creds,
        format!("[ci]\naws_access_key_id = {id}\naws_secret_access_key = {secret}\n"),
    )
    .unwrap();
    let mut env = base_env.to_vec();
    env.extend([
        ("AWS_SHARED_CREDENTIALS_FILE", creds.to_str().unwrap()),
        ("AWS_PROFILE", "ci"),
    ]);
    let (ok, log, layout) = build("s3://ctx-bucket", &env, d);
    assert_built(ok, &log, &layout, "default s3", "s3://ctx-bucket");

    let wrong = "wrongSecretKey0000000000000000000000000000";
    let mut env = base_env.to_vec();
    env.extend([
        ("AWS_ACCESS_KEY_ID", id.as_str()),
        ("AWS_SECRET_ACCESS_KEY", wrong),
    ]);
    let (ok, log, _) = build(context, &env, d);
    assert_refused(
        ok,
        &log,
        context,
        "SignatureDoesNotMatch",
        &[wrong, &secret],
    );

    let mut env = base_env.to_vec();
    env.extend([
        ("AWS_ACCESS_KEY_ID", id.as_str()),
        ("AWS_SECRET_ACCESS_KEY", secret.as_str()),
    ]);
    let missing = "s3://ctx-bucket/nope.tar.gz";
    let (ok, log, _) = build(missing, &env, d);
    assert_refused(ok, &log, missing, "NoSuchKey", &[&secret]);
}

/// fake-gcs-server as `STORAGE_EMULATOR_HOST` (no credentials, as Google's client does there);
/// a service-account key whose token endpoint refuses it fails before any object is asked for.
#[test]
fn gcs_context_through_fake_gcs_server() {
    if !require_tools(&["fake-gcs-server", "curl", "openssl"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let port = free_port();
    let mut cmd = Command::new("fake-gcs-server");
    cmd.args([
        "-backend",
        "memory",
        "-scheme",
        "http",
        "-host",
        "127.0.0.1",
    ])
    .args(["-port", &port.to_string(), "-log-level", "warn"]);
    let server = start(cmd, port, d);
    let base = format!("http://127.0.0.1:{}", server.port);
    curl(&[
        "-X",
        "POST",
        "-H",
        "Content-Type: application/json",
        "-d",
        r#"{"name":"ctx-bucket"}"#,
        &format!("{base}/storage/v1/b"),
    ]);
    let file = context_tarball(d, "from gcs");
    curl(&[
        "-X",
        "POST",
        "-H",
        "Content-Type: application/octet-stream",
        "--data-binary",
        &format!("@{}", file.display()),
        &format!("{base}/upload/storage/v1/b/ctx-bucket/o?uploadType=media&name=dir/ctx.tar.gz"),
    ]);

    let host = format!("127.0.0.1:{}", server.port);
    let context = "gs://ctx-bucket/dir/ctx.tar.gz";
    let (ok, log, layout) = build(context, &[("STORAGE_EMULATOR_HOST", &host)], d);
    assert_built(ok, &log, &layout, "from gcs", context);
    let missing = "gs://ctx-bucket/nope.tar.gz";
    let (ok, log, _) = build(missing, &[("STORAGE_EMULATOR_HOST", &base)], d);
    assert_refused(ok, &log, missing, "404", &[]);

    // A real RSA key, signed into a JWT grant and sent to a token endpoint that refuses it.
    let pem = d.join("key.pem");
    run_ok(
        Command::new("openssl")
            .args([
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
                "-out",
            ])
            .arg(&pem),
        Duration::from_secs(60),
    )
    .unwrap();
    let pem_text = fs::read_to_string(&pem).unwrap();
    let key_file = d.join("sa.json");
    fs::write(
        &key_file,
        serde_json::json!({
            "type": "service_account",
            "client_email": "builder@project.iam.gserviceaccount.com",
            "private_key": pem_text,
            "token_uri": format!("{base}/oauth2/token"),
        })
        .to_string(),
    )
    .unwrap();
    let (ok, log, _) = build(
        context,
        &[("GOOGLE_APPLICATION_CREDENTIALS", key_file.to_str().unwrap())],
        d,
    );
    let key_body: String = pem_text.lines().nth(1).unwrap().to_string();
    assert_refused(ok, &log, context, "token endpoint", &[&key_body]);
}

/// Azurite at `KILN_AZURE_BLOB_ENDPOINT` with its well-known development account; the blob is
/// uploaded with Azure's own Python SDK.
#[test]
fn azure_blob_context_through_azurite() {
    if !require_tools(&["azurite-blob", "python3"]) {
        return;
    }
    let sdk = run_bounded(
        Command::new("python3").args(["-c", "import azure.storage.blob"]),
        Duration::from_secs(60),
    );
    if !sdk.is_ok_and(|o| o.success()) {
        skip_or_fail(
            "the Python package azure-storage-blob is missing (pip install azure-storage-blob)",
        );
        return;
    }
    const ACCOUNT: &str = "devstoreaccount1";
    // Azurite's documented development key (public, not a secret).
    const KEY: &str =
        "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let port = free_port();
    let mut cmd = Command::new("azurite-blob");
    cmd.args(["--blobHost", "127.0.0.1", "--blobPort", &port.to_string()])
        .args([
            "--inMemoryPersistence",
            "--disableTelemetry",
            "--skipApiVersionCheck",
            "--silent",
        ]);
    let server = start(cmd, port, d);
    let endpoint = format!("http://127.0.0.1:{}/{ACCOUNT}", server.port);
    let file = context_tarball(d, "from azure");
    let upload = "import sys\nfrom azure.storage.blob import BlobServiceClient\n\
         svc = BlobServiceClient.from_connection_string(sys.argv[1])\n\
         svc.create_container('ctr').upload_blob('dir/ctx.tar.gz', open(sys.argv[2], 'rb').read())\n";
    let connection = format!(
        "DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={KEY};BlobEndpoint={endpoint};"
    );
    run_ok(
        Command::new("python3")
            .args(["-c", upload, &connection])
            .arg(&file),
        Duration::from_secs(120),
    )
    .unwrap_or_else(|e| panic!("uploading with azure-storage-blob: {e}"));

    let context = format!("{endpoint}/ctr/dir/ctx.tar.gz");
    let (ok, log, layout) = build(
        &context,
        &[
            ("KILN_AZURE_BLOB_ENDPOINT", &endpoint),
            ("AZURE_STORAGE_ACCESS_KEY", KEY),
        ],
        d,
    );
    assert_built(ok, &log, &layout, "from azure", &context);

    let wrong = "d3Jvbmcta2V5LXdyb25nLWtleS13cm9uZy1rZXktd3Jvbmcta2V5LXdyb25nLWtleQ==";
    let (ok, log, _) = build(
        &context,
        &[
            ("KILN_AZURE_BLOB_ENDPOINT", &endpoint),
            ("AZURE_STORAGE_ACCESS_KEY", wrong),
        ],
        d,
    );
    assert_refused(ok, &log, &context, "403", &[wrong, KEY]);
}
