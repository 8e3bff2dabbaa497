//! Registry access through a misbehaving network: the test kit's fault proxy
//! (`kiln_testkit::FaultProxy`) sits between kiln and a real `docker-registry` and answers
//! 5xx/4xx, cuts bodies or delays, so that retries, "no manifest without its blobs",
//! cross-repository mounts and registry maps are shown against a real registry. The proxy
//! listens on 127.0.0.1 only and stops on drop. A missing tool fails the test under `CI=true`
//! and skips it loudly elsewhere.

use std::process::Command;
use std::time::Duration;

use kiln_oci::registry::{
    sha256_digest, GrowingBlob, Registry, RegistryError, RegistryOptions, MEDIA_TYPE_OCI_MANIFEST,
    STREAM_PIECE,
};
use kiln_testkit::{
    bounded, free_port, require_tools, rule, run, run_bounded, Fault, FaultProxy, Seen, TestImage,
    TestRegistry, TOOL_TIMEOUT,
};

/// Options for reaching `addrs` over plain HTTP, with no docker config from the host, short
/// retry delays so the tests stay fast.
fn options(reg: &TestRegistry, addrs: &[&str]) -> RegistryOptions {
    RegistryOptions {
        insecure_registries: addrs.iter().map(|a| a.to_string()).collect(),
        retry_base_delay: Duration::from_millis(20),
        ..reg.options()
    }
}

const UPLOADS: &str = "/blobs/uploads/";

/// The hex part of a digest: upload URLs carry the digest URL-encoded (`sha256%3A…`).
fn hex(digest: &str) -> &str {
    digest.strip_prefix("sha256:").unwrap()
}

#[test]
fn push_with_retries_survives_500s_cut_uploads_and_delays() {
    if !require_tools(&["docker-registry", "skopeo"]) {
        return;
    }
    let reg = TestRegistry::start();
    let tmp = tempfile::tempdir().unwrap();
    let img = TestImage::noise(tmp.path(), 1);
    let proxy = FaultProxy::start(
        &reg.addr,
        vec![
            rule("POST", UPLOADS, Fault::Status(500, "boom"), 1),
            // The layer's upload: the config is smaller than the cut-off.
            rule(
                "PUT",
                hex(&img.layer().digest),
                Fault::CutRequest(100_000),
                1,
            ),
            rule(
                "PUT",
                hex(&img.layer().digest),
                Fault::Status(503, "busy"),
                1,
            ),
            rule(
                "HEAD",
                "/blobs/",
                Fault::Delay(Duration::from_millis(300)),
                2,
            ),
            rule("PUT", "/manifests/", Fault::Status(502, "bad gateway"), 1),
        ],
    );
    let mut opts = options(&reg, &[&proxy.addr, &reg.addr]);
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
    if !require_tools(&["docker-registry", "skopeo"]) {
        return;
    }
    let reg = TestRegistry::start();
    let tmp = tempfile::tempdir().unwrap();
    let img = TestImage::noise(tmp.path(), 2);
    for (name, fault) in [
        ("cut", Fault::CutRequest(50_000)),
        ("five-hundred", Fault::Status(500, "storage on fire")),
    ] {
        // Only the layer's upload (the big one) fails; the config goes through.
        let proxy = FaultProxy::start(
            &reg.addr,
            vec![rule("PUT", hex(&img.layer().digest), fault, 100)],
        );
        let registry = Registry::new(options(&reg, &[&proxy.addr])).unwrap();
        let target = format!("{}/faults/{name}:v1", proxy.addr);
        let err = bounded(registry.push_image(
            &target,
            &img.blobs(None),
            &img.manifest,
            MEDIA_TYPE_OCI_MANIFEST,
        ))
        .unwrap_err();
        let msg = err.to_string();
        assert!(
            matches!(err, RegistryError::Transient { .. }),
            "{name}: {msg}"
        );
        assert!(
            msg.contains(&proxy.addr) && msg.contains(&img.layer().digest),
            "{msg}"
        );
        assert!(msg.contains("--push-retry"), "{msg}");
        assert!(!msg.contains('\n'), "not one line: {msg}");
        assert_eq!(
            proxy.count("PUT", hex(&img.layer().digest)),
            1,
            "retried without --push-retry"
        );
        assert_eq!(
            proxy.count("PUT", "/manifests/"),
            0,
            "manifest sent after a failed blob"
        );
        assert!(!reg.has_tag(&format!("faults/{name}"), "v1"));
        let out = run_bounded(
            Command::new("skopeo")
                .args(["inspect", "--raw", "--tls-verify=false"])
                .arg(format!("docker://{}/faults/{name}:v1", reg.addr)),
            TOOL_TIMEOUT,
        )
        .unwrap();
        assert!(!out.success(), "a manifest exists for the failed push");
    }
}

/// A registry holding a noise image of three layers as `repo:v1`, the test's directory, and an
/// empty directory in it for the blob the test fetches; `None` without the tools.
fn registry_with_noise(
    repo: &str,
) -> Option<(
    TestRegistry,
    tempfile::TempDir,
    TestImage,
    std::path::PathBuf,
)> {
    if !require_tools(&["docker-registry", "skopeo"]) {
        return None;
    }
    let reg = TestRegistry::start();
    let tmp = tempfile::tempdir().unwrap();
    let img = TestImage::noise(tmp.path(), 3);
    img.skopeo_push(tmp.path(), &format!("{}/{repo}:v1", reg.addr));
    let out = tmp.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    Some((reg, tmp, img, out))
}

#[test]
fn pull_with_retries_completes_and_verifies() {
    let Some((reg, _tmp, img, out)) = registry_with_noise("faults/pull") else {
        return;
    };
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
            rule(
                "GET",
                hex(&img.layer().digest),
                Fault::CutResponse(70_000),
                2,
            ),
            rule(
                "GET",
                hex(&img.layer().digest),
                Fault::Delay(Duration::from_millis(300)),
                1,
            ),
        ],
    );
    let image = format!("{}/faults/pull:v1", proxy.addr);
    let dest = out.join("layer");

    // Without retries the first fault is final.
    let strict = Registry::new(options(&reg, &[&proxy.addr])).unwrap();
    let err = bounded(strict.pull_image(&image)).unwrap_err();
    assert!(matches!(err, RegistryError::Transient { .. }), "{err}");
    assert!(err.to_string().contains("--image-download-retry"), "{err}");

    let mut opts = options(&reg, &[&proxy.addr]);
    opts.pull_retries = 3;
    let registry = Registry::new(opts).unwrap();
    let pulled = bounded(registry.pull_image(&image)).unwrap();
    assert_eq!(pulled.manifest_digest, img.manifest_digest);
    assert_eq!(pulled.config_bytes, img.config);
    let n =
        bounded(registry.fetch_blob_to_file(&image, &img.layer().digest, img.layer().size, &dest))
            .unwrap();
    assert_eq!(n, img.layer().size);
    assert_eq!(
        sha256_digest(&std::fs::read(&dest).unwrap()),
        img.layer().digest
    );
    // Two cut downloads, then the delayed whole one; no temporary file left behind.
    assert_eq!(proxy.count("GET", hex(&img.layer().digest)), 3);
    assert_eq!(std::fs::read_dir(&out).unwrap().count(), 1);
}

/// A blob served with other bytes than its digest names, at the right length, is refused with
/// the digest it had and leaves no file; with a retry, the next (good) download is kept. Kiln
/// hashes what it reads itself (oci-client's verifying stream is not used), so this is the
/// check that stands between a tampered blob and the cache.
#[test]
fn a_blob_served_with_other_bytes_is_refused() {
    let Some((reg, _tmp, img, out)) = registry_with_noise("faults/flip") else {
        return;
    };
    let layer = img.layer();
    let proxy = FaultProxy::start(
        &reg.addr,
        vec![rule("GET", hex(&layer.digest), Fault::Flip(1000), 2)],
    );
    let image = format!("{}/faults/flip:v1", proxy.addr);
    let dest = out.join("layer");

    let strict = Registry::new(options(&reg, &[&proxy.addr])).unwrap();
    let err =
        bounded(strict.fetch_blob_to_file(&image, &layer.digest, layer.size, &dest)).unwrap_err();
    let text = err.to_string();
    assert!(text.contains("digest mismatch"), "{text}");
    assert!(
        text.contains(&format!("expected {}", layer.digest)),
        "{text}"
    );
    assert!(!dest.exists());
    assert_eq!(std::fs::read_dir(&out).unwrap().count(), 0, "no file left");

    // The second download is flipped too, the third is not.
    let mut opts = options(&reg, &[&proxy.addr]);
    opts.pull_retries = 2;
    let registry = Registry::new(opts).unwrap();
    let n = bounded(registry.fetch_blob_to_file(&image, &layer.digest, layer.size, &dest)).unwrap();
    assert_eq!(n, layer.size);
    assert_eq!(sha256_digest(&std::fs::read(&dest).unwrap()), layer.digest);
    assert_eq!(proxy.count("GET", hex(&layer.digest)), 3);
}

#[test]
fn client_errors_are_not_retried() {
    if !require_tools(&["docker-registry", "skopeo"]) {
        return;
    }
    let reg = TestRegistry::start();
    let tmp = tempfile::tempdir().unwrap();
    let img = TestImage::noise(tmp.path(), 4);
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
    let mut opts = options(&reg, &[&proxy.addr]);
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
    if !require_tools(&["docker-registry", "skopeo"]) {
        return;
    }
    let reg = TestRegistry::start();
    let tmp = tempfile::tempdir().unwrap();
    let img = TestImage::noise(tmp.path(), 5);
    img.skopeo_push(tmp.path(), &format!("{}/base/image:v1", reg.addr));
    let proxy = FaultProxy::start(&reg.addr, vec![]);
    let registry = Registry::new(options(&reg, &[&proxy.addr])).unwrap();

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
        proxy.count("PUT", hex(&img.layer().digest)),
        0,
        "layer uploaded: {seen:#?}"
    );

    // Pushing again skips every layer (HEAD finds them); only the config, small and new in
    // almost every push, is sent without asking (one POST and its PUT).
    let before = proxy.seen().len();
    bounded(registry.push_image(
        &format!("{}/team/app:v2", proxy.addr),
        &img.blobs(Some(&source)),
        &img.manifest,
        MEDIA_TYPE_OCI_MANIFEST,
    ))
    .unwrap();
    let after: Vec<Seen> = proxy.seen()[before..].to_vec();
    let config_upload = |s: &Seen| {
        (s.method == "POST" && s.path.starts_with("/v2/team/app/blobs/uploads/"))
            || (s.method == "PUT" && s.path.contains(hex(&img.config_digest)))
    };
    assert!(
        after.iter().all(|s| s.method == "HEAD"
            || s.path.contains("/manifests/")
            || s.path == "/v2/"
            || config_upload(s)),
        "{after:#?}"
    );
    assert!(
        after.iter().filter(|s| s.method == "POST").count() <= 1,
        "{after:#?}"
    );

    // A source repository without the blob: the registry answers 202 and kiln uploads.
    let other = TestImage::noise(&tmp.path().join("other"), 6);
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
    assert_eq!(proxy.count("PUT", hex(&other.layer().digest)), 1);
    let info = run(Command::new("skopeo")
        .args(["inspect", "--tls-verify=false"])
        .arg(format!("docker://{}/team/other:v1", reg.addr)));
    assert!(info.contains(&other.manifest_digest), "{info}");

    // Another registry's repository is never used as a mount source.
    let third = TestImage::noise(&tmp.path().join("third"), 7);
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
    if !require_tools(&["docker-registry", "skopeo"]) {
        return;
    }
    let reg = TestRegistry::start();
    let tmp = tempfile::tempdir().unwrap();
    let img = TestImage::noise(tmp.path(), 8);
    img.skopeo_push(tmp.path(), &format!("{}/team/app:v1", reg.addr));
    img.skopeo_push(tmp.path(), &format!("{}/library/hello:v1", reg.addr));
    let proxy = FaultProxy::start(&reg.addr, vec![]);
    let dead = format!("127.0.0.1:{}", free_port());

    // The original registry is not reachable at all; the first remap is dead, the
    // second (the proxy) serves the image.
    let mut opts = options(&reg, &[&proxy.addr, &dead, &reg.addr]);
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
        &img.layer().digest,
        img.layer().size,
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

/// A base image's layers download at the same time: the proxy holds the first layer's download
/// half-way until the second layer is asked for (fetched one after the other, the second would
/// never be), then lets it finish; the build succeeds with both.
#[test]
fn base_image_layers_download_at_the_same_time() {
    if !require_tools(&["docker-registry", "skopeo"])
        || !kiln_testkit::require_root("kiln-executor builds need root")
    {
        return;
    }
    let reg = TestRegistry::start();
    let tmp = tempfile::tempdir().unwrap();
    let layers = push_two_layer_image(
        &reg,
        tmp.path(),
        "faults/layers",
        ["part0.bin", "part1.bin"],
    );
    let (first, second) = (layers[0].clone(), layers[1].clone());
    let gate = kiln_testkit::Gate::new();
    let proxy = FaultProxy::start(
        &reg.addr,
        vec![rule(
            "GET",
            hex(&first),
            Fault::Stall(10_000, gate.clone()),
            1,
        )],
    );
    let (mut child, err_file) =
        start_build(tmp.path(), &format!("{}/faults/layers:v1", proxy.addr));
    let reached = gate.wait_reached(Duration::from_secs(120));
    let asked = reached && wait_until(|| proxy.count("GET", hex(&second)) > 0);
    gate.release();
    let status = wait_for_exit(&mut child);
    let err = std::fs::read_to_string(err_file).unwrap_or_default();
    assert!(reached, "the first layer's download never started: {err}");
    assert!(
        asked,
        "the second layer was not asked for while the first was downloading: {err}"
    );
    assert!(status.is_some_and(|s| s.success()), "{err}");
}

/// A two-layer image pushed to `reg` as `repo:v1`: one file of 300,000 bytes of noise per layer,
/// named `files`, each layer gzip-compressed. Returns the layers' digests.
fn push_two_layer_image(
    reg: &TestRegistry,
    tmp: &std::path::Path,
    repo: &str,
    files: [&str; 2],
) -> Vec<String> {
    let layers: Vec<kiln_testkit::Layer> = files
        .iter()
        .enumerate()
        .map(|(n, name)| {
            let data = kiln_testkit::image::noise(100 + n as u64, 300_000);
            let tar = kiln_testkit::image::tar_with_file(name, &data);
            kiln_testkit::Layer::gzip(
                &tmp.join(format!("l{n}")),
                &tar,
                flate2::Compression::fast(),
            )
        })
        .collect();
    let digests = layers.iter().map(|l| l.digest.clone()).collect();
    let img = TestImage::new(
        layers,
        serde_json::json!({
            "architecture": kiln_oci::registry::Platform::default().architecture,
            "os": "linux",
            "config": {"Env": ["PATH=/bin"]},
            "history": [{"created_by": files[0]}, {"created_by": files[1]}]
        }),
    );
    img.skopeo_push(tmp, &format!("{}/{repo}:v1", reg.addr));
    digests
}

/// Starts a build (no push) FROM `base` with its kiln dir at `tmp/kiln`; returns the child and
/// the file its stderr goes to.
fn start_build(tmp: &std::path::Path, base: &str) -> (std::process::Child, std::path::PathBuf) {
    let ctx = tmp.join("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::write(
        ctx.join("Dockerfile"),
        format!("FROM {base}\nCOPY Dockerfile /built\n"),
    )
    .unwrap();
    let err = tmp.join("executor.err");
    let child = Command::new(env!("CARGO_BIN_EXE_kiln-executor"))
        .arg("--context")
        .arg(format!("dir://{}", ctx.display()))
        .arg("--kiln-dir")
        .arg(tmp.join("kiln"))
        .args(["--no-push", "--insecure-pull"])
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .unwrap();
    (child, err)
}

/// Whether `cond` holds within 60 s (checked every 50 ms).
fn wait_until(mut cond: impl FnMut() -> bool) -> bool {
    let t = std::time::Instant::now();
    while t.elapsed() < Duration::from_secs(60) {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// The exit status of `child` within 180 s; killed and `None` after that.
fn wait_for_exit(child: &mut std::process::Child) -> Option<std::process::ExitStatus> {
    let deadline = std::time::Instant::now() + Duration::from_secs(180);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A base image pulled from the registry the image is pushed to: its layers are mounted from
/// the base's repository there (as BuildKit does), not uploaded a second time; only the
/// build's own layer is uploaded. The same build pushed to another registry uploads them.
#[test]
fn base_layers_pushed_to_their_own_registry_are_mounted_not_uploaded() {
    if !require_tools(&["docker-registry", "skopeo"])
        || !kiln_testkit::require_root("kiln-executor builds need root")
    {
        return;
    }
    let reg = TestRegistry::start();
    let tmp = tempfile::tempdir().unwrap();
    let img = TestImage::noise(tmp.path(), 7);
    img.skopeo_push(tmp.path(), &format!("{}/base/noise:v1", reg.addr));
    let base_layer = img.layer().digest.clone();
    let proxy = FaultProxy::start(&reg.addr, vec![]);
    let ctx = tmp.path().join("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::write(
        ctx.join("Dockerfile"),
        format!(
            "FROM {}/base/noise:v1\nCOPY Dockerfile /built\n",
            proxy.addr
        ),
    )
    .unwrap();
    let build = |dest: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_kiln-executor"))
            .arg("--context")
            .arg(format!("dir://{}", ctx.display()))
            .args(["--insecure", "--insecure-pull", "--destination", dest])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(out.status.success(), "{err}");
        err
    };
    let err = build(&format!("{}/team/app:v1", proxy.addr));
    let seen = proxy.seen();
    assert_eq!(proxy.count("GET", hex(&base_layer)), 1, "{seen:#?}");
    assert!(
        seen.iter().any(|s| s.method == "POST"
            && s.path.contains("/team/app/blobs/uploads/")
            && s.path
                .contains(&format!("mount={}", base_layer.replace(':', "%3A")))
            && s.path.contains("from=base%2Fnoise")
            && s.status == 201),
        "{seen:#?}"
    );
    assert_eq!(
        proxy.count("PUT", hex(&base_layer)),
        0,
        "base layer uploaded: {seen:#?}"
    );
    assert!(err.contains("mounted=1"), "{err}");

    // Pushed to another registry (the same one under its own address, which the build did not
    // pull from): nothing to mount from there, so the base layer is uploaded, and the image
    // is whole.
    let err = build(&format!("{}/team/direct:v1", reg.addr));
    assert!(err.contains("mounted=0"), "{err}");
    let raw = Command::new("skopeo")
        .args(["inspect", "--tls-verify=false", "--raw"])
        .arg(format!("docker://{}/team/direct:v1", reg.addr))
        .output()
        .unwrap();
    let raw = String::from_utf8_lossy(&raw.stdout);
    assert!(raw.contains(&base_layer), "{raw}");
}

/// A base image (`TestImage::noise`) pushed as `base/NAME:v1` to a registry of its own, and one
/// kiln-executor build through a fault-free proxy of `FROM <base>` plus `steps`, with `flags`
/// (`{proxy}` in a flag is the proxy's address). Returns the proxy (what it saw), the base and
/// the build's log; `None` when a tool is missing.
fn build_through_proxy(
    name: &str,
    steps: &str,
    flags: &[&str],
) -> Option<(FaultProxy, TestImage, String)> {
    if !require_tools(&["docker-registry", "skopeo"])
        || !kiln_testkit::require_root("kiln-executor builds need root")
    {
        return None;
    }
    let reg = TestRegistry::start();
    let tmp = tempfile::tempdir().unwrap();
    let img = TestImage::noise(tmp.path(), 3);
    img.skopeo_push(tmp.path(), &format!("{}/base/{name}:v1", reg.addr));
    let proxy = FaultProxy::start(&reg.addr, vec![]);
    let ctx = tmp.path().join("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::write(
        ctx.join("Dockerfile"),
        format!("FROM {}/base/{name}:v1\n{steps}", proxy.addr),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_kiln-executor"))
        .arg("--context")
        .arg(format!("dir://{}", ctx.display()))
        .args(["--insecure", "--insecure-pull"])
        .args(flags.iter().map(|f| f.replace("{proxy}", &proxy.addr)))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "{err}");
    Some((proxy, img, err))
}

/// [`build_through_proxy`]'s flags for a build with the layer cache (COPY layers included) and
/// the image on the proxied registry.
const CACHED_BUILD: &[&str] = &[
    "--cache",
    "--cache-copy-layers",
    "--cache-repo={proxy}/team/cache",
    "--destination={proxy}/team/app:v1",
];

/// A `--cache` build whose step misses reads the base's manifest and config once: the skip-base
/// decision reads them to work out the cache keys, and the build that then needs the base's
/// layers uses what it read (the tag is resolved once per build).
#[test]
fn a_cache_miss_reads_the_base_manifest_once() {
    let Some((proxy, img, err)) =
        build_through_proxy("once", "COPY Dockerfile /built\n", CACHED_BUILD)
    else {
        return;
    };
    assert!(err.contains("cache: 0 hits, 1 misses"), "{err}");
    let seen = proxy.seen();
    assert_eq!(
        proxy.count("GET", "/v2/base/once/manifests/"),
        1,
        "{seen:#?}"
    );
    assert_eq!(proxy.count("GET", hex(&img.config_digest)), 1, "{seen:#?}");
}

/// A `--cache` build sends each new layer to the registry once: its layer cache and its
/// destination are repositories of one registry, and the second of the two gets the layer by a
/// cross-repository mount. The new layers (small, just made) are uploaded without asking
/// first; the base layers, asked about in the destination while the build runs, are not asked
/// about again by the push.
#[test]
fn a_new_layer_is_uploaded_once_for_the_cache_and_the_image() {
    let Some((proxy, img, err)) = build_through_proxy(
        "upload-once",
        "COPY Dockerfile /built\nCOPY Dockerfile /again\n",
        CACHED_BUILD,
    ) else {
        return;
    };
    let seen = proxy.seen();
    // "(cache miss, layer sha256:<12 hex> (<size>)": one for each COPY.
    let new_layers: Vec<&str> = err
        .lines()
        .filter_map(|l| l.split("cache miss, layer sha256:").nth(1))
        .map(|rest| &rest[..12])
        .collect();
    assert_eq!(new_layers.len(), 2, "{err}");
    let count = |method: &str, wanted: &dyn Fn(&Seen) -> bool| {
        seen.iter()
            .filter(|s| s.method == method && wanted(s))
            .count()
    };
    for short in &new_layers {
        let uploads = count("PUT", &|s| {
            s.path.contains(UPLOADS) && s.path.contains(short)
        });
        assert_eq!(
            uploads, 1,
            "layer {short} uploaded {uploads} times: {seen:#?}"
        );
        let mount = format!("mount=sha256%3A{short}");
        let mounts = count("POST", &|s| s.path.contains(&mount) && s.status == 201);
        assert_eq!(mounts, 1, "layer {short} mounted {mounts} times: {seen:#?}");
        let asked = count("HEAD", &|s| s.path.contains(short));
        assert_eq!(asked, 0, "new layer {short} asked about: {seen:#?}");
    }
    for layer in &img.layers {
        let asked = count("HEAD", &|s| {
            s.path.contains("/team/app/") && s.path.contains(hex(&layer.digest))
        });
        assert_eq!(
            asked, 1,
            "base layer {} asked about {asked} times: {seen:#?}",
            layer.digest
        );
    }
    assert!(err.contains("cache: 0 hits, 2 misses"), "{err}");
}

/// A registry that asks for no authorization (`GET /v2/` answers 200 without a challenge) is
/// asked so once per client, not before every request: a build pulling a base and pushing an
/// image through the proxy sends `GET /v2/` at most once for each side (pull, push), however
/// many manifests and blobs it reads and writes.
#[test]
fn an_open_registry_is_asked_for_a_challenge_once_per_client() {
    let Some((proxy, _, _)) = build_through_proxy(
        "open",
        "COPY Dockerfile /built\nCOPY Dockerfile /again\n",
        &["--destination={proxy}/team/open:v1"],
    ) else {
        return;
    };
    let seen = proxy.seen();
    let pings = seen
        .iter()
        .filter(|s| s.method == "GET" && s.path == "/v2/")
        .count();
    let others = seen.len() - pings;
    assert!(
        others >= 8,
        "fewer requests than the build needs: {seen:#?}"
    );
    assert!(
        (1..=2).contains(&pings),
        "{pings} GET /v2/ for {others} other requests: {seen:#?}"
    );
}

/// How many bytes the registry holds of the unfinished uploads to `repo` (its filesystem
/// driver's `_uploads/*/data` files).
fn uploaded_so_far(reg: &TestRegistry, repo: &str) -> u64 {
    let dir = reg
        .storage()
        .join("docker/registry/v2/repositories")
        .join(repo)
        .join("_uploads");
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| std::fs::metadata(e.path().join("data")).ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// The writer of a streamed blob finishes: the rest of `data` (from `from` on) appended to its
/// file, then its size and digest reported on `tx`.
fn finish_writing(
    tx: &tokio::sync::watch::Sender<GrowingBlob>,
    path: &std::path::Path,
    data: &[u8],
    from: usize,
) {
    let mut file = std::fs::OpenOptions::new().append(true).open(path).unwrap();
    std::io::Write::write_all(&mut file, &data[from..]).unwrap();
    tx.send_modify(|b| {
        b.written = data.len() as u64;
        b.digest = Some(sha256_digest(data));
    });
}

/// A blob uploaded while it is written (a big layer beside its compressor): what is written
/// reaches the registry while the file is still growing, and the upload is committed only
/// once the writer reports the digest, with that digest. A writer that stops without
/// finishing commits nothing.
#[test]
fn a_blob_is_uploaded_while_its_file_is_written() {
    if !require_tools(&["docker-registry"]) {
        return;
    }
    let reg = TestRegistry::start();
    let registry = std::sync::Arc::new(Registry::new(options(&reg, &[&reg.addr])).unwrap());
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("blob");
    let data = kiln_testkit::image::noise(16, 3 * STREAM_PIECE + 1000);
    let digest = sha256_digest(&data);

    let (tx, rx) = tokio::sync::watch::channel(GrowingBlob {
        path: Some(path.clone()),
        ..Default::default()
    });
    std::fs::write(&path, &data[..2 * STREAM_PIECE]).unwrap();
    tx.send_modify(|b| b.written = 2 * STREAM_PIECE as u64);
    let dest = format!("{}/stream/blob:v1", reg.addr);
    let upload = {
        let registry = registry.clone();
        let dest = dest.clone();
        std::thread::spawn(move || bounded(registry.push_growing_blob(&dest, rx)))
    };
    // What is written so far reaches the registry while the file is unfinished.
    assert!(
        wait_until(|| uploaded_so_far(&reg, "stream/blob") >= 2 * STREAM_PIECE as u64),
        "{} bytes uploaded",
        uploaded_so_far(&reg, "stream/blob")
    );
    finish_writing(&tx, &path, &data, 2 * STREAM_PIECE);
    assert_eq!(upload.join().unwrap().unwrap(), digest);
    let out = tmp.path().join("back");
    bounded(registry.fetch_blob_to_file(&dest, &digest, data.len() as u64, &out)).unwrap();
    assert_eq!(std::fs::read(&out).unwrap(), data);

    // The writer stops half-way (drops its end without a digest): the upload fails and
    // nothing is committed.
    let (tx, rx) = tokio::sync::watch::channel(GrowingBlob {
        path: Some(path.clone()),
        written: 2 * STREAM_PIECE as u64,
        digest: None,
    });
    let upload = {
        let registry = registry.clone();
        let dest = format!("{}/stream/cut:v1", reg.addr);
        std::thread::spawn(move || bounded(registry.push_growing_blob(&dest, rx)))
    };
    assert!(wait_until(
        || uploaded_so_far(&reg, "stream/cut") >= 2 * STREAM_PIECE as u64
    ));
    drop(tx);
    let err = upload.join().unwrap().unwrap_err().to_string();
    assert!(err.contains("stopped before finishing"), "{err}");
    let blobs = reg
        .storage()
        .join("docker/registry/v2/repositories/stream/cut/_layers");
    assert!(!blobs.exists(), "a blob was committed");
}

/// A blob uploaded as it is written (a big layer streamed to the image's repository) is not
/// uploaded a second time by another push of it to the same registry (the layer cache's entry):
/// once the writer has reported the digest, that push waits for the streamed upload and mounts
/// the blob from where it went. The stream's commit is held back at the proxy, so that the
/// second push comes while the first is still under way.
#[test]
fn a_blob_uploaded_as_it_is_written_is_mounted_by_a_second_push_of_it() {
    if !require_tools(&["docker-registry"]) {
        return;
    }
    let reg = TestRegistry::start();
    let proxy = FaultProxy::start(
        &reg.addr,
        vec![rule(
            "PUT",
            "/team/app/blobs/uploads/",
            Fault::Delay(Duration::from_secs(2)),
            1,
        )],
    );
    let registry = std::sync::Arc::new(Registry::new(options(&reg, &[&proxy.addr])).unwrap());
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("layer");
    let data = kiln_testkit::image::noise(18, 3 * STREAM_PIECE + 1000);
    let digest = sha256_digest(&data);
    std::fs::write(&path, &data[..2 * STREAM_PIECE]).unwrap();
    let (tx, rx) = tokio::sync::watch::channel(GrowingBlob {
        path: Some(path.clone()),
        written: 2 * STREAM_PIECE as u64,
        digest: None,
    });
    let app = format!("{}/team/app:v1", proxy.addr);
    let stream = {
        let registry = registry.clone();
        let app = app.clone();
        std::thread::spawn(move || bounded(registry.push_growing_blob(&app, rx)))
    };
    // The upload session is open: the stream is under way.
    assert!(wait_until(|| proxy
        .count("POST", "/team/app/blobs/uploads/")
        == 1));
    finish_writing(&tx, &path, &data, 2 * STREAM_PIECE);
    // The layer cache's push of the finished file, while the stream's commit is held back.
    let blob = kiln_oci::registry::Blob {
        digest: digest.clone(),
        size: data.len() as u64,
        source: kiln_oci::registry::BlobSource::File(path.clone()),
        mount_from: None,
        fresh: true,
    };
    let cache = format!("{}/team/cache:entry", proxy.addr);
    bounded(registry.push_blob_ahead(&cache, &blob)).unwrap();
    assert_eq!(stream.join().unwrap().unwrap(), digest);
    let seen = proxy.seen();
    let uploads = seen
        .iter()
        .filter(|s| s.method == "PUT" && s.path.contains(UPLOADS) && s.path.contains(hex(&digest)))
        .count();
    assert_eq!(uploads, 1, "uploaded {uploads} times: {seen:#?}");
    let mount = format!("mount=sha256%3A{}", hex(&digest));
    let mounts = seen
        .iter()
        .filter(|s| {
            s.method == "POST"
                && s.path.contains("/team/cache/")
                && s.path.contains(&mount)
                && s.status == 201
        })
        .count();
    assert_eq!(mounts, 1, "mounted {mounts} times: {seen:#?}");
    // Both repositories hold it, whole.
    for repo in [&app, &cache] {
        let out = tmp.path().join("back");
        bounded(registry.fetch_blob_to_file(repo, &digest, data.len() as u64, &out)).unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), data, "{repo}");
    }
}

/// A build's big layer goes to the registry while it is written (PATCH requests of the
/// streamed upload), and the image is whole; when the registry refuses the streamed upload,
/// the finished file is uploaded instead and the build still succeeds. With `--cache`, the
/// layer cache's entry mounts the streamed layer rather than uploading it again.
#[test]
fn a_big_layer_is_uploaded_as_it_is_written_or_else_from_its_file() {
    if !require_tools(&["docker-registry", "skopeo"])
        || !kiln_testkit::require_root("kiln-executor builds need root")
    {
        return;
    }
    let reg = TestRegistry::start();
    let tmp = tempfile::tempdir().unwrap();
    let img = TestImage::noise(tmp.path(), 8);
    img.skopeo_push(tmp.path(), &format!("{}/base/noise:v1", reg.addr));
    let proxy = FaultProxy::start(
        &reg.addr,
        vec![rule("PATCH", "/team/refused/", Fault::Status(500, "no"), 1)],
    );
    let ctx = tmp.path().join("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    // 24 MiB of data that does not compress: past the size from which a layer is streamed.
    std::fs::write(
        ctx.join("big.bin"),
        kiln_testkit::image::noise(17, 24 << 20),
    )
    .unwrap();
    std::fs::write(
        ctx.join("Dockerfile"),
        format!("FROM {}/base/noise:v1\nCOPY big.bin /big.bin\n", proxy.addr),
    )
    .unwrap();
    // team/cached: a --cache build, whose entry for the layer goes to team/layers.
    let cache_repo = format!("--cache-repo={}/team/layers", proxy.addr);
    for repo in ["team/streamed", "team/refused", "team/cached"] {
        let dest = format!("{}/{repo}:v1", proxy.addr);
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_kiln-executor"));
        cmd.arg("--context")
            .arg(format!("dir://{}", ctx.display()))
            .args(["--insecure", "--insecure-pull", "--destination", &dest])
            .args(["--verbosity", "debug"]);
        if repo == "team/cached" {
            cmd.args(["--cache", "--cache-copy-layers", &cache_repo]);
        }
        let out = cmd.output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(out.status.success(), "{repo}: {err}");
        let patches = proxy.count("PATCH", &format!("/{repo}/blobs/uploads/"));
        // One PATCH: the upload as the layer was written (refused for team/refused, which
        // then gets the finished file in one PUT).
        assert_eq!(patches, 1, "{repo}: {:#?}", proxy.seen());
        let streamed = err.contains("uploaded to") && err.contains("while it was written");
        assert_eq!(streamed, repo != "team/refused", "{repo}: {err}");
        if repo == "team/cached" {
            // The cache entry's push of the layer waited for the stream and mounted it: the
            // layer went over the wire once.
            let short = err
                .lines()
                .find_map(|l| l.split("cache miss, layer sha256:").nth(1))
                .map(|rest| rest[..12].to_string())
                .unwrap_or_else(|| panic!("no cache miss line: {err}"));
            let seen = proxy.seen();
            let to = |repo: &str| {
                seen.iter()
                    .filter(|s| s.path.contains(&format!("/{repo}/blobs/uploads/")))
                    .filter(|s| s.path.contains(&short))
                    .map(|s| (s.method.as_str(), s.status))
                    .collect::<Vec<_>>()
            };
            assert_eq!(to("team/cached"), [("PUT", 201)], "{seen:#?}");
            assert_eq!(to("team/layers"), [("POST", 201)], "{seen:#?}");
            assert_eq!(proxy.count("PATCH", "/team/layers/"), 0, "{seen:#?}");
        }
        // skopeo checks every blob's digest as it copies the image.
        let copied = Command::new("skopeo")
            .args(["copy", "-q", "--src-tls-verify=false"])
            .arg(format!("docker://{}/{repo}:v1", reg.addr))
            .arg(format!(
                "oci:{}:x",
                tmp.path().join(repo.replace('/', "-")).display()
            ))
            .output()
            .unwrap();
        assert!(
            copied.status.success(),
            "{repo}: {}",
            String::from_utf8_lossy(&copied.stderr)
        );
    }
}

/// A base image's layers are unpacked as they arrive: while the second layer's download is held
/// half-way, the first layer's file is already in the stage's root. The build then succeeds.
#[test]
fn a_base_layer_is_unpacked_while_the_next_one_downloads() {
    if !require_tools(&["docker-registry", "skopeo"])
        || !kiln_testkit::require_root("kiln-executor builds need root")
    {
        return;
    }
    let reg = TestRegistry::start();
    let tmp = tempfile::tempdir().unwrap();
    let layers = push_two_layer_image(
        &reg,
        tmp.path(),
        "faults/ordered",
        ["first.bin", "second.bin"],
    );
    let gate = kiln_testkit::Gate::new();
    let proxy = FaultProxy::start(
        &reg.addr,
        vec![rule(
            "GET",
            hex(&layers[1]),
            Fault::Stall(10_000, gate.clone()),
            1,
        )],
    );
    let (mut child, err_file) =
        start_build(tmp.path(), &format!("{}/faults/ordered:v1", proxy.addr));
    let reached = gate.wait_reached(Duration::from_secs(120));
    let unpacked = tmp.path().join("kiln/build/stages/0/rootfs/first.bin");
    let seen =
        reached && wait_until(|| std::fs::metadata(&unpacked).is_ok_and(|m| m.len() == 300_000));
    gate.release();
    let status = wait_for_exit(&mut child);
    let err = std::fs::read_to_string(err_file).unwrap_or_default();
    assert!(reached, "the second layer's download never started: {err}");
    assert!(
        seen,
        "{} was not unpacked while the second layer downloaded: {err}",
        unpacked.display()
    );
    assert!(status.is_some_and(|s| s.success()), "{err}");
}
