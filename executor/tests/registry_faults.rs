//! Registry access through a misbehaving network: a TCP fault proxy written here sits between
//! kiln and a real `docker-registry` and answers 5xx/4xx, cuts bodies or delays, so that retries,
//! "no manifest without its blobs", cross-repository mounts and registry maps are shown against
//! a real registry. The proxy listens on 127.0.0.1 only and stops on drop or after 60 s.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kiln_oci::registry::{
    sha256_digest, Blob, BlobSource, OciLayout, Registry, RegistryError, RegistryOptions,
    MEDIA_TYPE_OCI_MANIFEST,
};
use serde_json::json;

fn require_tool(name: &str) -> PathBuf {
    for dir in std::env::var("PATH").unwrap_or_default().split(':') {
        let p = Path::new(dir).join(name);
        if p.is_file() {
            return p;
        }
    }
    panic!("{name} is not installed; these tests need it (Debian: apt-get install -y {name})");
}

fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A `docker-registry serve` process with its own storage; killed on drop.
struct TestRegistry {
    child: Child,
    addr: String,
    storage: PathBuf,
    dir: tempfile::TempDir,
}

impl TestRegistry {
    fn start() -> TestRegistry {
        let bin = require_tool("docker-registry");
        let dir = tempfile::tempdir().unwrap();
        let storage = dir.path().join("storage");
        std::fs::create_dir_all(&storage).unwrap();
        let addr = format!("127.0.0.1:{}", free_port());
        let config = format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {addr}\n",
            storage.display()
        );
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, config).unwrap();
        let child = Command::new(bin)
            .arg("serve")
            .arg(&config_path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("cannot start docker-registry");
        let reg = TestRegistry {
            child,
            addr,
            storage,
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        while TcpStream::connect(&reg.addr).is_err() {
            assert!(Instant::now() < deadline, "docker-registry did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        reg
    }

    /// Options for reaching `addrs` over plain HTTP, with no docker config from the host,
    /// short retry delays so the tests stay fast.
    fn options(&self, addrs: &[&str]) -> RegistryOptions {
        let cfg = self.dir.path().join("empty-config.json");
        std::fs::write(&cfg, "{}").unwrap();
        RegistryOptions {
            insecure_registries: addrs.iter().map(|a| a.to_string()).collect(),
            docker_config: Some(cfg),
            retry_base_delay: Duration::from_millis(20),
            ..RegistryOptions::default()
        }
    }

    /// Whether the registry holds tag `tag` of `repo`, read from its storage directly.
    fn has_tag(&self, repo: &str, tag: &str) -> bool {
        self.storage
            .join("docker/registry/v2/repositories")
            .join(repo)
            .join("_manifests/tags")
            .join(tag)
            .exists()
    }
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What the proxy does to requests matching a rule.
#[derive(Clone, Debug)]
enum Fault {
    /// Answer with this status and body instead of forwarding.
    Status(u16, &'static str),
    /// Forward only this many bytes of the request body, then close both connections.
    CutRequest(usize),
    /// Forward only this many bytes of the response body, then close.
    CutResponse(usize),
    /// Wait this long before forwarding the response.
    Delay(Duration),
}

#[derive(Clone, Debug)]
struct Rule {
    method: &'static str,
    /// A substring of the request path (query included).
    path: String,
    fault: Fault,
    /// How many matching requests get the fault; later ones pass through.
    times: usize,
}

fn rule(method: &'static str, path: impl Into<String>, fault: Fault, times: usize) -> Rule {
    Rule {
        method,
        path: path.into(),
        fault,
        times,
    }
}

/// One request seen by the proxy and the status it answered (0 when cut).
#[derive(Clone, Debug)]
struct Seen {
    method: String,
    path: String,
    status: u16,
}

/// A TCP proxy on 127.0.0.1 speaking just enough HTTP/1.1 to find request boundaries: every
/// request is forwarded with `Connection: close`, so a response ends when upstream closes.
struct FaultProxy {
    addr: String,
    seen: Arc<Mutex<Vec<Seen>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FaultProxy {
    fn start(upstream: &str, rules: Vec<Rule>) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let rules = Arc::new(Mutex::new(rules));
        let (seen2, stop2, upstream) = (seen.clone(), stop.clone(), upstream.to_string());
        let thread = std::thread::spawn(move || {
            // Stops by itself even if the test forgets to drop it.
            let deadline = Instant::now() + Duration::from_secs(60);
            while !stop2.load(Ordering::SeqCst) && Instant::now() < deadline {
                match listener.accept() {
                    Ok((client, _)) => {
                        let (seen, rules, upstream) =
                            (seen2.clone(), rules.clone(), upstream.clone());
                        std::thread::spawn(move || {
                            let _ = handle(client, &upstream, &rules, &seen);
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        FaultProxy {
            addr,
            seen,
            stop,
            thread: Some(thread),
        }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    fn count(&self, method: &str, path: &str) -> usize {
        self.seen()
            .iter()
            .filter(|s| s.method == method && s.path.contains(path))
            .count()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn read_head(s: &mut TcpStream) -> std::io::Result<(Vec<u8>, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut byte = [0u8; 4096];
    loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = buf.split_off(i + 4);
            return Ok((buf, rest));
        }
        let n = s.read(&mut byte)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&byte[..n]);
    }
}

fn handle(
    mut client: TcpStream,
    upstream: &str,
    rules: &Mutex<Vec<Rule>>,
    seen: &Mutex<Vec<Seen>>,
) -> std::io::Result<()> {
    client.set_nonblocking(false)?;
    client.set_read_timeout(Some(Duration::from_secs(30)))?;
    let (head, mut body_start) = read_head(&mut client)?;
    let text = String::from_utf8_lossy(&head).into_owned();
    let mut lines = text.split("\r\n");
    let request_line = lines.next().unwrap_or("").to_string();
    let mut parts = request_line.split(' ');
    let method = parts.next().unwrap_or("").to_string();
    let path = parts.next().unwrap_or("").to_string();
    let mut length = 0usize;
    let mut headers = Vec::new();
    for line in lines.filter(|l| !l.is_empty()) {
        let (name, value) = line.split_once(':').unwrap_or((line, ""));
        match name.trim().to_ascii_lowercase().as_str() {
            "content-length" => length = value.trim().parse().unwrap_or(0),
            "transfer-encoding" => panic!("chunked requests are not expected: {request_line}"),
            _ => {}
        }
        if !name.eq_ignore_ascii_case("connection") {
            headers.push(line.to_string());
        }
    }
    let fault = {
        let mut rules = rules.lock().unwrap();
        rules
            .iter_mut()
            .find(|r| r.times > 0 && r.method == method && path.contains(&r.path))
            .map(|r| {
                r.times -= 1;
                r.fault.clone()
            })
    };
    let record = |status: u16| {
        seen.lock().unwrap().push(Seen {
            method: method.clone(),
            path: path.clone(),
            status,
        })
    };

    if let Some(Fault::Status(code, body)) = fault {
        // Drain the request body so the client sees the answer rather than a reset.
        let mut remaining = length.saturating_sub(body_start.len());
        let mut sink = [0u8; 65536];
        while remaining > 0 {
            let n = client.read(&mut sink[..remaining.min(65536)])?;
            if n == 0 {
                break;
            }
            remaining -= n;
        }
        record(code);
        let content_type = if body.starts_with('{') {
            "application/json"
        } else {
            "text/plain"
        };
        write!(
            client,
            "HTTP/1.1 {code} Injected\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )?;
        return Ok(());
    }

    let mut server = TcpStream::connect(upstream)?;
    server.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut out = format!("{request_line}\r\n");
    for h in &headers {
        out.push_str(h);
        out.push_str("\r\n");
    }
    out.push_str("Connection: close\r\n\r\n");
    server.write_all(out.as_bytes())?;
    // The request body: what came with the head, then the rest.
    let limit = match fault {
        Some(Fault::CutRequest(n)) => n,
        _ => usize::MAX,
    };
    let mut sent = 0usize;
    let mut remaining = length;
    let mut buf = vec![0u8; 65536];
    loop {
        if !body_start.is_empty() {
            let take = body_start.len().min(remaining);
            let chunk: Vec<u8> = body_start.drain(..).take(take).collect();
            let allowed = chunk.len().min(limit - sent);
            server.write_all(&chunk[..allowed])?;
            sent += allowed;
            remaining -= chunk.len();
        }
        if sent >= limit && limit != usize::MAX {
            record(0);
            let _ = server.shutdown(Shutdown::Both);
            let _ = client.shutdown(Shutdown::Both);
            return Ok(());
        }
        if remaining == 0 {
            break;
        }
        let n = client.read(&mut buf[..remaining.min(65536)])?;
        if n == 0 {
            break;
        }
        body_start.extend_from_slice(&buf[..n]);
    }

    if let Some(Fault::Delay(d)) = fault {
        std::thread::sleep(d);
    }
    let (resp_head, mut resp_body) = read_head(&mut server)?;
    let status: u16 = String::from_utf8_lossy(&resp_head)
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let cut = match fault {
        Some(Fault::CutResponse(n)) => Some(n),
        _ => None,
    };
    record(if cut.is_some() { 0 } else { status });
    client.write_all(&resp_head)?;
    let mut forwarded = 0usize;
    loop {
        if let Some(n) = cut {
            let allowed = resp_body.len().min(n - forwarded);
            client.write_all(&resp_body[..allowed])?;
            forwarded += allowed;
            if forwarded >= n {
                let _ = client.shutdown(Shutdown::Both);
                return Ok(());
            }
        } else {
            client.write_all(&resp_body)?;
        }
        resp_body.clear();
        let n = server.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        resp_body.extend_from_slice(&buf[..n]);
    }
}

/// A one-layer image whose layer is a few hundred KiB of incompressible bytes, so bodies
/// can be cut in the middle.
struct TestImage {
    layer_path: PathBuf,
    layer_digest: String,
    layer_size: u64,
    config: Vec<u8>,
    config_digest: String,
    manifest: Vec<u8>,
    manifest_digest: String,
}

impl TestImage {
    fn new(work: &Path, seed: u64) -> TestImage {
        std::fs::create_dir_all(work).unwrap();
        let mut x = seed | 1;
        let content: Vec<u8> = (0..300_000)
            .map(|_| {
                // xorshift: incompressible and deterministic.
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let mut tar_bytes = Vec::new();
        {
            let mut b = tar::Builder::new(&mut tar_bytes);
            let mut h = tar::Header::new_gnu();
            h.set_size(content.len() as u64);
            h.set_mode(0o644);
            h.set_mtime(1_700_000_000);
            h.set_cksum();
            b.append_data(&mut h, "noise.bin", &content[..]).unwrap();
            b.finish().unwrap();
        }
        let diff_id = sha256_digest(&tar_bytes);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&tar_bytes).unwrap();
        let gz = gz.finish().unwrap();
        let layer_digest = sha256_digest(&gz);
        let layer_path = work.join("layer.tar.gz");
        std::fs::write(&layer_path, &gz).unwrap();
        let config = serde_json::to_vec(&json!({
            "architecture": "amd64",
            "os": "linux",
            "config": {"Cmd": ["/bin/sh"]},
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
            "history": [{"created_by": format!("kiln fault test {seed}")}]
        }))
        .unwrap();
        let config_digest = sha256_digest(&config);
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": MEDIA_TYPE_OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config.len()},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": layer_digest, "size": gz.len()}]
        }))
        .unwrap();
        TestImage {
            layer_path,
            layer_digest,
            layer_size: gz.len() as u64,
            config_digest,
            manifest_digest: sha256_digest(&manifest),
            config,
            manifest,
        }
    }

    fn blobs(&self, mount_from: Option<&str>) -> Vec<Blob> {
        vec![
            Blob {
                digest: self.layer_digest.clone(),
                size: self.layer_size,
                source: BlobSource::File(self.layer_path.clone()),
                mount_from: mount_from.map(str::to_string),
            },
            Blob {
                digest: self.config_digest.clone(),
                size: self.config.len() as u64,
                source: BlobSource::Bytes(self.config.clone()),
                mount_from: None,
            },
        ]
    }

    /// Puts the image into `reference` with skopeo, bypassing kiln.
    fn skopeo_push(&self, work: &Path, reference: &str) {
        require_tool("skopeo");
        let dir = work.join("layout");
        let layout = OciLayout::create(&dir).unwrap();
        layout
            .write_blob_file(&self.layer_path, &self.layer_digest)
            .unwrap();
        layout.write_blob_bytes(&self.config).unwrap();
        layout
            .add_manifest(&self.manifest, MEDIA_TYPE_OCI_MANIFEST, Some("v1"))
            .unwrap();
        run(Command::new("skopeo")
            .args(["copy", "--quiet", "--dest-tls-verify=false"])
            .arg(format!("oci:{}:v1", dir.display()))
            .arg(format!("docker://{reference}")));
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Runs `f` on a fresh runtime and fails the test if it takes more than 50 s.
fn bounded<T>(f: impl std::future::Future<Output = T>) -> T {
    rt().block_on(async {
        tokio::time::timeout(Duration::from_secs(50), f)
            .await
            .expect("registry operation did not finish within 50 s")
    })
}

const UPLOADS: &str = "/blobs/uploads/";

/// The hex part of a digest: upload URLs carry the digest URL-encoded (`sha256%3A…`).
fn hex(digest: &str) -> &str {
    digest.strip_prefix("sha256:").unwrap()
}

#[test]
fn push_with_retries_survives_500s_cut_uploads_and_delays() {
    let reg = TestRegistry::start();
    let tmp = tempfile::tempdir().unwrap();
    let img = TestImage::new(tmp.path(), 1);
    let proxy = FaultProxy::start(
        &reg.addr,
        vec![
            rule("POST", UPLOADS, Fault::Status(500, "boom"), 1),
            // The layer's upload: the config is smaller than the cut-off.
            rule("PUT", hex(&img.layer_digest), Fault::CutRequest(100_000), 1),
            rule("PUT", hex(&img.layer_digest), Fault::Status(503, "busy"), 1),
            rule(
                "HEAD",
                "/blobs/",
                Fault::Delay(Duration::from_millis(300)),
                2,
            ),
            rule("PUT", "/manifests/", Fault::Status(502, "bad gateway"), 1),
        ],
    );
    let mut opts = reg.options(&[&proxy.addr, &reg.addr]);
    opts.push_retries = 3;
    let registry = Registry::new(opts).unwrap();
    let target = format!("{}/faults/pushed:v1", proxy.addr);
    let digest = bounded(registry.push_image(
        &target,
        &img.blobs(None),
        &img.manifest,
        MEDIA_TYPE_OCI_MANIFEST,
    ))
    .unwrap();
    assert_eq!(digest, img.manifest_digest);

    // Every fault was hit, so the retries were really exercised.
    let seen = proxy.seen();
    for (method, path, status) in [
        ("POST", UPLOADS, 500),
        ("PUT", UPLOADS, 0),
        ("PUT", UPLOADS, 503),
        ("PUT", "/manifests/", 502),
    ] {
        assert!(
            seen.iter()
                .any(|s| s.method == method && s.path.contains(path) && s.status == status),
            "no {method} {path} answered {status}: {seen:#?}"
        );
    }
    let info = run(Command::new("skopeo")
        .args(["inspect", "--tls-verify=false"])
        .arg(format!("docker://{}/faults/pushed:v1", reg.addr)));
    assert!(info.contains(&img.manifest_digest), "{info}");
}

#[test]
fn push_without_retries_fails_clearly_and_leaves_no_manifest() {
    let reg = TestRegistry::start();
    let tmp = tempfile::tempdir().unwrap();
    let img = TestImage::new(tmp.path(), 2);
    let rt = rt();
    for (name, fault) in [
        ("cut", Fault::CutRequest(50_000)),
        ("five-hundred", Fault::Status(500, "storage on fire")),
    ] {
        // Only the layer's upload (the big one) fails; the config goes through.
        let proxy = FaultProxy::start(
            &reg.addr,
            vec![rule("PUT", hex(&img.layer_digest), fault, 100)],
        );
        let registry = Registry::new(reg.options(&[&proxy.addr])).unwrap();
        let target = format!("{}/faults/{name}:v1", proxy.addr);
        let err = rt
            .block_on(async {
                tokio::time::timeout(
                    Duration::from_secs(50),
                    registry.push_image(
                        &target,
                        &img.blobs(None),
                        &img.manifest,
                        MEDIA_TYPE_OCI_MANIFEST,
                    ),
                )
                .await
            })
            .expect("push did not finish in time")
            .unwrap_err();
        let msg = err.to_string();
        assert!(
            matches!(err, RegistryError::Transient { .. }),
            "{name}: {msg}"
        );
        assert!(
            msg.contains(&proxy.addr) && msg.contains(&img.layer_digest),
            "{msg}"
        );
        assert!(msg.contains("--push-retry"), "{msg}");
        assert!(!msg.contains('\n'), "not one line: {msg}");
        assert_eq!(
            proxy.count("PUT", hex(&img.layer_digest)),
            1,
            "retried without --push-retry"
        );
        assert_eq!(
            proxy.count("PUT", "/manifests/"),
            0,
            "manifest sent after a failed blob"
        );
        assert!(!reg.has_tag(&format!("faults/{name}"), "v1"));
        let out = Command::new("skopeo")
            .args(["inspect", "--raw", "--tls-verify=false"])
            .arg(format!("docker://{}/faults/{name}:v1", reg.addr))
            .output()
            .unwrap();
        assert!(
            !out.status.success(),
            "a manifest exists for the failed push"
        );
    }
}

#[test]
fn pull_with_retries_completes_and_verifies() {
    let reg = TestRegistry::start();
    let tmp = tempfile::tempdir().unwrap();
    let img = TestImage::new(tmp.path(), 3);
    img.skopeo_push(tmp.path(), &format!("{}/faults/pull:v1", reg.addr));
    let proxy = FaultProxy::start(
        &reg.addr,
        vec![
            rule("GET", "/manifests/", Fault::Status(500, "boom"), 1),
            rule(
                "GET",
                hex(&img.config_digest),
                Fault::Status(503, "busy"),
                1,
            ),
            rule("GET", hex(&img.layer_digest), Fault::CutResponse(70_000), 2),
            rule(
                "GET",
                hex(&img.layer_digest),
                Fault::Delay(Duration::from_millis(300)),
                1,
            ),
        ],
    );
    let image = format!("{}/faults/pull:v1", proxy.addr);
    let out = tmp.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    let dest = out.join("layer");

    // Without retries the first fault is final.
    let strict = Registry::new(reg.options(&[&proxy.addr])).unwrap();
    let err = bounded(strict.pull_image(&image)).unwrap_err();
    assert!(matches!(err, RegistryError::Transient { .. }), "{err}");
    assert!(err.to_string().contains("--image-download-retry"), "{err}");

    let mut opts = reg.options(&[&proxy.addr]);
    opts.pull_retries = 3;
    let registry = Registry::new(opts).unwrap();
    let pulled = bounded(registry.pull_image(&image)).unwrap();
    assert_eq!(pulled.manifest_digest, img.manifest_digest);
    assert_eq!(pulled.config_bytes, img.config);
    let n = bounded(registry.fetch_blob_to_file(&image, &img.layer_digest, &dest)).unwrap();
    assert_eq!(n, img.layer_size);
    assert_eq!(
        sha256_digest(&std::fs::read(&dest).unwrap()),
        img.layer_digest
    );
    // Two cut downloads, then the delayed whole one; no temporary file left behind.
    assert_eq!(proxy.count("GET", hex(&img.layer_digest)), 3);
    assert_eq!(std::fs::read_dir(&out).unwrap().count(), 1);
}

#[test]
fn client_errors_are_not_retried() {
    let reg = TestRegistry::start();
    let tmp = tempfile::tempdir().unwrap();
    let img = TestImage::new(tmp.path(), 4);
    img.skopeo_push(tmp.path(), &format!("{}/faults/there:v1", reg.addr));
    let denied =
        r#"{"errors":[{"code":"DENIED","message":"requested access to the resource is denied"}]}"#;
    let proxy = FaultProxy::start(
        &reg.addr,
        vec![
            rule(
                "GET",
                "/faults/locked/manifests/",
                Fault::Status(401, "{}"),
                100,
            ),
            rule(
                "POST",
                "/faults/refused/blobs/uploads/",
                Fault::Status(403, denied),
                100,
            ),
        ],
    );
    let mut opts = reg.options(&[&proxy.addr]);
    opts.pull_retries = 3;
    opts.push_retries = 3;
    let registry = Registry::new(opts).unwrap();

    // 404: a tag that does not exist.
    let err =
        bounded(registry.pull_image(&format!("{}/faults/there:nope", proxy.addr))).unwrap_err();
    assert!(matches!(err, RegistryError::NotFound { .. }), "{err}");
    assert!(
        err.to_string().contains("check the image name and tag"),
        "{err}"
    );
    assert_eq!(proxy.count("GET", "/faults/there/manifests/nope"), 1);
    // A repository that does not exist.
    let err =
        bounded(registry.pull_image(&format!("{}/faults/missing:v1", proxy.addr))).unwrap_err();
    assert!(matches!(err, RegistryError::NotFound { .. }), "{err}");
    assert_eq!(proxy.count("GET", "/faults/missing/manifests/"), 1);

    // 401.
    let err =
        bounded(registry.pull_image(&format!("{}/faults/locked:v1", proxy.addr))).unwrap_err();
    assert!(matches!(err, RegistryError::Unauthorized { .. }), "{err}");
    assert!(err.to_string().contains("check the credentials"), "{err}");
    assert_eq!(proxy.count("GET", "/faults/locked/manifests/"), 1);

    // 403 "denied" on push: a permission problem, said as such, tried once, no manifest.
    let err = bounded(registry.push_image(
        &format!("{}/faults/refused:v1", proxy.addr),
        &img.blobs(None),
        &img.manifest,
        MEDIA_TYPE_OCI_MANIFEST,
    ))
    .unwrap_err();
    assert!(matches!(err, RegistryError::Denied { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("may not push to") && msg.contains(&proxy.addr),
        "{msg}"
    );
    assert!(!msg.contains('\n'), "{msg}");
    assert!(proxy.count("POST", "/faults/refused/blobs/uploads/") <= 2); // one per blob
    assert_eq!(proxy.count("PUT", "/faults/refused/manifests/"), 0);
    assert!(!reg.has_tag("faults/refused", "v1"));
}

#[test]
fn blobs_are_mounted_across_repositories_of_the_same_registry() {
    let reg = TestRegistry::start();
    let tmp = tempfile::tempdir().unwrap();
    let img = TestImage::new(tmp.path(), 5);
    img.skopeo_push(tmp.path(), &format!("{}/base/image:v1", reg.addr));
    let proxy = FaultProxy::start(&reg.addr, vec![]);
    let registry = Registry::new(reg.options(&[&proxy.addr])).unwrap();

    // The layer comes from base/image: mounted, never uploaded.
    let source = format!("{}/base/image:v1", proxy.addr);
    let d = bounded(registry.push_image(
        &format!("{}/team/app:v1", proxy.addr),
        &img.blobs(Some(&source)),
        &img.manifest,
        MEDIA_TYPE_OCI_MANIFEST,
    ))
    .unwrap();
    assert_eq!(d, img.manifest_digest);
    let seen = proxy.seen();
    assert!(
        seen.iter().any(|s| s.method == "POST"
            && s.path.contains("/team/app/blobs/uploads/")
            && s.path.contains("mount=")
            && s.path.contains("from=base%2Fimage")
            && s.status == 201),
        "{seen:#?}"
    );
    assert_eq!(
        proxy.count("PUT", hex(&img.layer_digest)),
        0,
        "layer uploaded: {seen:#?}"
    );

    // Pushing again skips everything (HEAD finds the blobs).
    let before = proxy.seen().len();
    bounded(registry.push_image(
        &format!("{}/team/app:v2", proxy.addr),
        &img.blobs(Some(&source)),
        &img.manifest,
        MEDIA_TYPE_OCI_MANIFEST,
    ))
    .unwrap();
    let after: Vec<Seen> = proxy.seen()[before..].to_vec();
    assert!(
        after
            .iter()
            .all(|s| s.method == "HEAD" || s.path.contains("/manifests/") || s.path == "/v2/"),
        "{after:#?}"
    );

    // A source repository without the blob: the registry answers 202 and kiln uploads.
    let other = TestImage::new(&tmp.path().join("other"), 6);
    bounded(registry.push_image(
        &format!("{}/team/other:v1", proxy.addr),
        &other.blobs(Some(&source)),
        &other.manifest,
        MEDIA_TYPE_OCI_MANIFEST,
    ))
    .unwrap();
    let seen = proxy.seen();
    assert!(
        seen.iter().any(|s| s.method == "POST"
            && s.path.contains("/team/other/blobs/uploads/?mount=")
            && s.status == 202),
        "{seen:#?}"
    );
    assert_eq!(proxy.count("PUT", hex(&other.layer_digest)), 1);
    let info = run(Command::new("skopeo")
        .args(["inspect", "--tls-verify=false"])
        .arg(format!("docker://{}/team/other:v1", reg.addr)));
    assert!(info.contains(&other.manifest_digest), "{info}");

    // Another registry's repository is never used as a mount source.
    let third = TestImage::new(&tmp.path().join("third"), 7);
    bounded(registry.push_image(
        &format!("{}/team/third:v1", proxy.addr),
        &third.blobs(Some(&format!("{}/base/image:v1", reg.addr))),
        &third.manifest,
        MEDIA_TYPE_OCI_MANIFEST,
    ))
    .unwrap();
    assert!(!proxy
        .seen()
        .iter()
        .any(|s| s.path.contains("/team/third/") && s.path.contains("mount=")));
}

#[test]
fn registry_map_tries_remaps_in_order_then_the_original() {
    let reg = TestRegistry::start();
    let tmp = tempfile::tempdir().unwrap();
    let img = TestImage::new(tmp.path(), 8);
    img.skopeo_push(tmp.path(), &format!("{}/team/app:v1", reg.addr));
    img.skopeo_push(tmp.path(), &format!("{}/library/hello:v1", reg.addr));
    let proxy = FaultProxy::start(&reg.addr, vec![]);
    let dead = format!("127.0.0.1:{}", free_port());

    // The original registry is not reachable at all; the first remap is dead, the
    // second (the proxy) serves the image.
    let mut opts = reg.options(&[&proxy.addr, &dead, &reg.addr]);
    opts.registry_maps = vec![
        format!("kiln-original.invalid={dead}"),
        format!("kiln-original.invalid={}", proxy.addr),
    ];
    let registry = Registry::new(opts.clone()).unwrap();
    let pulled = bounded(registry.pull_image("kiln-original.invalid/team/app:v1")).unwrap();
    assert_eq!(pulled.reference, "kiln-original.invalid/team/app:v1");
    assert_eq!(pulled.manifest_digest, img.manifest_digest);
    let dest = tmp.path().join("layer");
    bounded(registry.fetch_blob_to_file(
        "kiln-original.invalid/team/app:v1",
        &img.layer_digest,
        &dest,
    ))
    .unwrap();
    assert_eq!(proxy.count("GET", "/team/app/manifests/v1"), 1);

    // Docker Hub, named as kaniko users write it, with `;` separating remaps.
    opts.registry_maps = vec![format!("index.docker.io={dead};{}", reg.addr)];
    let registry = Registry::new(opts.clone()).unwrap();
    let hub = bounded(registry.pull_image("hello:v1")).unwrap();
    assert_eq!(hub.manifest_digest, img.manifest_digest);

    // Other registries are not remapped: the original is used (and here fails).
    let err = bounded(registry.pull_image(&format!("{dead}/team/app:v1"))).unwrap_err();
    assert!(matches!(err, RegistryError::Unreachable { .. }), "{err}");

    for bad in ["no-equals-sign", "=mirror", "docker.io="] {
        opts.registry_maps = vec![bad.to_string()];
        let err = Registry::new(opts.clone()).unwrap_err();
        assert!(
            matches!(err, RegistryError::InvalidOption { .. }),
            "{bad}: {err}"
        );
        assert!(err.to_string().contains("--registry-map"), "{err}");
    }
}
