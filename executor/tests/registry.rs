//! Registry layer against a real registry (Debian's `docker-registry`) and real image tools
//! (skopeo, umoci). Each test starts its own registry (`kiln_testkit::TestRegistry`) on a free
//! loopback port and stops it on drop. A missing tool fails the test under `CI=true` and skips it
//! loudly elsewhere, naming what to install.

use std::io::Write;
use std::path::PathBuf;
use std::process::Command;

use kiln_oci::registry::{
    sha256_digest, Blob, BlobSource, OciLayout, Platform, Registry, RegistryError, RegistryOptions,
    MEDIA_TYPE_OCI_INDEX, MEDIA_TYPE_OCI_MANIFEST,
};
use kiln_testkit::{
    free_port, htpasswd_line, require_tools, run, runtime as rt, skopeo_push_layout as skopeo_push,
    TestImage, TestRegistry,
};
use serde_json::json;

fn file_digest(p: &std::path::Path) -> String {
    sha256_digest(&std::fs::read(p).unwrap())
}

#[test]
fn layout_is_accepted_by_skopeo_and_umoci() {
    if !require_tools(&["skopeo", "umoci"]) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let img = TestImage::hello(&tmp.path().join("work"), "amd64", "hello from kiln\n");
    let dir = tmp.path().join("layout");
    let layout = OciLayout::create(&dir).unwrap();
    img.write_to_layout(&layout, Some("v1"));

    let out = run(Command::new("skopeo")
        .args(["inspect", "--raw"])
        .arg(format!("oci:{}:v1", dir.display())));
    assert_eq!(out.as_bytes(), &img.manifest[..]);
    let out = run(Command::new("skopeo")
        .arg("inspect")
        .arg(format!("oci:{}:v1", dir.display())));
    assert!(out.contains(&img.manifest_digest), "{out}");

    run(Command::new("umoci")
        .args(["stat", "--image"])
        .arg(format!("{}:v1", dir.display())));
    let bundle = tmp.path().join("bundle");
    run(Command::new("umoci")
        .args(["unpack", "--image"])
        .arg(format!("{}:v1", dir.display()))
        .arg(&bundle));
    assert_eq!(
        std::fs::read_to_string(bundle.join("rootfs/hello.txt")).unwrap(),
        "hello from kiln\n"
    );
}

#[test]
fn pull_manifest_config_and_verified_blobs() {
    if !require_tools(&["docker-registry", "skopeo"]) {
        return;
    }
    let reg = TestRegistry::start();
    let tmp = tempfile::tempdir().unwrap();
    let img = TestImage::hello(&tmp.path().join("work"), "amd64", "pull me\n");
    let dir = tmp.path().join("layout");
    img.write_to_layout(&OciLayout::create(&dir).unwrap(), Some("v1"));
    let oci_ref = format!("{}/test/oci:v1", reg.addr);
    let docker_ref = format!("{}/test/docker:v1", reg.addr);
    skopeo_push(&dir, "v1", &oci_ref, &[]);
    // Docker v2 schema 2 media types, as most registries still serve them.
    skopeo_push(&dir, "v1", &docker_ref, &["--format", "v2s2"]);

    let rt = rt();
    let registry = Registry::new(reg.options()).unwrap();

    let pulled = rt.block_on(registry.pull_image(&oci_ref)).unwrap();
    assert_eq!(pulled.reference, oci_ref);
    assert_eq!(pulled.manifest_digest, img.manifest_digest);
    assert_eq!(pulled.manifest_bytes, img.manifest);
    assert_eq!(pulled.config_digest, img.config_digest);
    assert_eq!(pulled.config_bytes, img.config);
    assert_eq!(pulled.config.architecture().to_string(), "amd64");
    assert!(pulled.index_digest.is_none());

    // By digest, the manifest digest is checked against the reference.
    let by_digest = format!("{}/test/oci@{}", reg.addr, img.manifest_digest);
    let again = rt.block_on(registry.pull_image(&by_digest)).unwrap();
    assert_eq!(again.manifest_digest, img.manifest_digest);

    let docker = rt.block_on(registry.pull_image(&docker_ref)).unwrap();
    assert_eq!(
        docker.manifest_media_type,
        "application/vnd.docker.distribution.manifest.v2+json"
    );
    assert_eq!(
        docker.manifest.layers()[0].media_type().to_string(),
        "application/vnd.docker.image.rootfs.diff.tar.gzip"
    );
    assert_eq!(docker.config.rootfs().diff_ids().len(), 1);
    let layer_digest = docker.manifest.layers()[0].digest().to_string();

    let dest = tmp.path().join("blobs/layer");
    std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
    let n = rt
        .block_on(registry.fetch_blob_to_file(
            &docker_ref,
            &layer_digest,
            docker.manifest.layers()[0].size(),
            &dest,
        ))
        .unwrap();
    assert_eq!(n, std::fs::metadata(&dest).unwrap().len());
    assert_eq!(file_digest(&dest), layer_digest);
    let leftovers: Vec<_> = std::fs::read_dir(dest.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(leftovers, vec![std::ffi::OsString::from("layer")]);
}

#[test]
fn corrupted_blob_and_missing_things_are_reported() {
    if !require_tools(&["docker-registry", "skopeo"]) {
        return;
    }
    let reg = TestRegistry::start();
    let tmp = tempfile::tempdir().unwrap();
    let img = TestImage::hello(&tmp.path().join("work"), "amd64", "corrupt me\n");
    let dir = tmp.path().join("layout");
    img.write_to_layout(&OciLayout::create(&dir).unwrap(), Some("v1"));
    let image = format!("{}/test/corrupt:v1", reg.addr);
    skopeo_push(&dir, "v1", &image, &[]);

    // Damage the layer inside the registry's storage: the registry serves it as is.
    let data = reg.blob_data_path(&img.layer().digest);
    let mut bytes = std::fs::read(&data).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&data, &bytes).unwrap();

    let rt = rt();
    let registry = Registry::new(reg.options()).unwrap();
    let out = tmp.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    let dest = out.join("layer");
    let err = rt
        .block_on(registry.fetch_blob_to_file(&image, &img.layer().digest, img.layer().size, &dest))
        .unwrap_err();
    assert!(matches!(err, RegistryError::DigestMismatch { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains(&img.layer().digest) && msg.contains(&reg.addr),
        "{msg}"
    );
    assert!(!dest.exists());
    assert_eq!(
        std::fs::read_dir(&out).unwrap().count(),
        0,
        "temp file left behind"
    );

    // A corrupted config fails the pull.
    let cdata = reg.blob_data_path(&img.config_digest);
    let mut c = std::fs::read(&cdata).unwrap();
    c[0] = b' ';
    std::fs::write(&cdata, &c).unwrap();
    let err = rt.block_on(registry.pull_image(&image)).unwrap_err();
    assert!(matches!(err, RegistryError::DigestMismatch { .. }), "{err}");

    // Unknown tag and unknown blob.
    let err = rt
        .block_on(registry.pull_image(&format!("{}/test/corrupt:nope", reg.addr)))
        .unwrap_err();
    assert!(matches!(err, RegistryError::NotFound { .. }), "{err}");
    assert!(
        err.to_string().contains("check the image name and tag"),
        "{err}"
    );
    let missing = sha256_digest(b"not there");
    let err = rt
        .block_on(registry.fetch_blob_to_file(&image, &missing, 9, &dest))
        .unwrap_err();
    assert!(matches!(err, RegistryError::NotFound { .. }), "{err}");
    assert!(!dest.exists());
}

#[test]
fn unreachable_registry_says_what_to_check() {
    let port = free_port();
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("config.json");
    std::fs::write(&cfg, "{}").unwrap();
    let addr = format!("127.0.0.1:{port}");
    let registry = Registry::new(RegistryOptions {
        insecure_registries: vec![addr.clone()],
        docker_config: Some(cfg),
        ..RegistryOptions::default()
    })
    .unwrap();
    let err = rt()
        .block_on(registry.pull_image(&format!("{addr}/x/y:1")))
        .unwrap_err();
    assert!(matches!(err, RegistryError::Unreachable { .. }), "{err}");
    assert!(err.to_string().contains("--insecure-registry"), "{err}");
}

#[test]
fn push_then_read_back_with_skopeo_and_skip_existing_blobs() {
    if !require_tools(&["docker-registry", "skopeo"]) {
        return;
    }
    let reg = TestRegistry::start();
    let tmp = tempfile::tempdir().unwrap();
    let img = TestImage::hello(&tmp.path().join("work"), "amd64", "pushed by kiln\n");
    let rt = rt();
    let registry = Registry::new(reg.options()).unwrap();
    let target = format!("{}/kiln/pushed:v1", reg.addr);
    let blobs = img.blobs(None);
    let digest = rt
        .block_on(registry.push_image(&target, &blobs, &img.manifest, MEDIA_TYPE_OCI_MANIFEST))
        .unwrap();
    assert_eq!(digest, img.manifest_digest);

    let raw = run(Command::new("skopeo")
        .args(["inspect", "--raw", "--tls-verify=false"])
        .arg(format!("docker://{target}")));
    assert_eq!(
        raw.as_bytes(),
        &img.manifest[..],
        "manifest not pushed byte for byte"
    );
    let info = run(Command::new("skopeo")
        .args(["inspect", "--tls-verify=false"])
        .arg(format!("docker://{target}")));
    assert!(info.contains(&digest), "{info}");

    let back = tmp.path().join("back");
    run(Command::new("skopeo")
        .args(["copy", "--quiet", "--src-tls-verify=false"])
        .arg(format!("docker://{target}"))
        .arg(format!("oci:{}:v1", back.display())));
    let layout = OciLayout::open(&back).unwrap();
    assert_eq!(
        layout.resolve("v1").unwrap().digest().to_string(),
        img.manifest_digest
    );
    layout.verify_blob(&img.layer().digest).unwrap();
    assert_eq!(
        layout.read_blob_verified(&img.config_digest).unwrap(),
        img.config
    );

    // Second push under another tag: the blobs exist, so their sources are never read
    // (the file path below does not exist and would fail if it were opened).
    let gone = vec![Blob {
        digest: img.layer().digest.clone(),
        size: img.layer().size,
        source: BlobSource::File(tmp.path().join("does-not-exist")),
        mount_from: None,
        fresh: false,
    }];
    let d2 = rt
        .block_on(registry.push_image(
            &format!("{}/kiln/pushed:v2", reg.addr),
            &gone,
            &img.manifest,
            MEDIA_TYPE_OCI_MANIFEST,
        ))
        .unwrap();
    assert_eq!(d2, digest);

    // Another repository of the registry gets the layer by a mount from the one this client
    // pushed it to: the missing source is not read either.
    let mounted = [gone[0].clone(), img.config_blob()];
    let d3 = rt
        .block_on(registry.push_image(
            &format!("{}/kiln/mounted:v1", reg.addr),
            &mounted,
            &img.manifest,
            MEDIA_TYPE_OCI_MANIFEST,
        ))
        .unwrap();
    assert_eq!(d3, digest);

    // A client that has not seen the blob anywhere uploads it into a fresh repository: the
    // same missing source fails with the path in the message, and no manifest is pushed.
    let unaware = Registry::new(reg.options()).unwrap();
    let err = rt
        .block_on(unaware.push_image(
            &format!("{}/kiln/other:v1", reg.addr),
            &gone,
            &img.manifest,
            MEDIA_TYPE_OCI_MANIFEST,
        ))
        .unwrap_err();
    assert!(err.to_string().contains("does-not-exist"), "{err}");
    let err = rt
        .block_on(registry.pull_image(&format!("{}/kiln/other:v1", reg.addr)))
        .unwrap_err();
    assert!(matches!(err, RegistryError::NotFound { .. }), "{err}");

    // A manifest naming a blob that is neither given nor present is refused before upload.
    let err = rt
        .block_on(registry.push_image(
            &format!("{}/kiln/third:v1", reg.addr),
            &blobs[..1],
            &img.manifest,
            MEDIA_TYPE_OCI_MANIFEST,
        ))
        .unwrap_err();
    assert!(matches!(err, RegistryError::NotFound { .. }), "{err}");
    assert!(err.to_string().contains(&img.config_digest), "{err}");
}

#[test]
fn image_index_picks_the_configured_platform() {
    if !require_tools(&["docker-registry", "skopeo"]) {
        return;
    }
    let reg = TestRegistry::start();
    let tmp = tempfile::tempdir().unwrap();
    let amd = TestImage::hello(&tmp.path().join("amd"), "amd64", "amd64\n");
    let arm = TestImage::hello(&tmp.path().join("arm"), "arm64", "arm64\n");
    let dir = tmp.path().join("layout");
    let layout = OciLayout::create(&dir).unwrap();
    amd.write_to_layout(&layout, None);
    arm.write_to_layout(&layout, None);
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_TYPE_OCI_INDEX,
        "manifests": [
            {"mediaType": MEDIA_TYPE_OCI_MANIFEST, "digest": amd.manifest_digest, "size": amd.manifest.len(),
             "platform": {"os": "linux", "architecture": "amd64"}},
            {"mediaType": MEDIA_TYPE_OCI_MANIFEST, "digest": arm.manifest_digest, "size": arm.manifest.len(),
             "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}}
        ]
    }))
    .unwrap();
    let index_digest = layout
        .add_manifest(&index, MEDIA_TYPE_OCI_INDEX, Some("multi"))
        .unwrap();
    let image = format!("{}/test/multi:latest", reg.addr);
    skopeo_push(&dir, "multi", &image, &["--all"]);

    let rt = rt();
    let pull = |platform: &str| {
        let mut opts = reg.options();
        opts.platform = platform.parse::<Platform>().unwrap();
        let registry = Registry::new(opts).unwrap();
        rt.block_on(registry.pull_image(&image))
    };
    let a = pull("linux/amd64").unwrap();
    assert_eq!(a.manifest_digest, amd.manifest_digest);
    assert_eq!(a.index_digest.as_deref(), Some(index_digest.as_str()));
    assert_eq!(a.config.architecture().to_string(), "amd64");
    let b = pull("linux/arm64").unwrap();
    assert_eq!(b.manifest_digest, arm.manifest_digest);
    assert_eq!(b.config_bytes, arm.config);
    let b8 = pull("linux/arm64/v8").unwrap();
    assert_eq!(b8.manifest_digest, arm.manifest_digest);

    let err = pull("linux/s390x").unwrap_err();
    assert!(
        matches!(err, RegistryError::PlatformNotFound { .. }),
        "{err}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("linux/s390x")
            && msg.contains("linux/amd64")
            && msg.contains("linux/arm64/v8"),
        "{msg}"
    );
}

#[test]
fn basic_auth_with_docker_config() {
    if !require_tools(&["docker-registry", "skopeo"]) {
        return;
    }
    use base64::Engine as _;
    let password = "Kiln-s3cret-Passw0rd";
    let reg = TestRegistry::with_auth(&htpasswd_line("kiln", password));
    let tmp = tempfile::tempdir().unwrap();
    let img = TestImage::hello(&tmp.path().join("work"), "amd64", "private\n");
    let dir = tmp.path().join("layout");
    img.write_to_layout(&OciLayout::create(&dir).unwrap(), Some("v1"));
    let image = format!("{}/private/app:v1", reg.addr);
    skopeo_push(
        &dir,
        "v1",
        &image,
        &["--dest-creds", &format!("kiln:{password}")],
    );

    let config_with = |user: &str, pw: &str, key: &str| {
        let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pw}"));
        let path = tmp.path().join(format!("config-{user}-{}.json", pw.len()));
        std::fs::write(
            &path,
            serde_json::to_vec(&json!({"auths": {key: {"auth": auth}}})).unwrap(),
        )
        .unwrap();
        path
    };
    let rt = rt();
    let registry_with = |cfg: PathBuf| {
        let mut opts = reg.options();
        opts.docker_config = Some(cfg);
        Registry::new(opts).unwrap()
    };

    // Right credentials, keyed with a scheme as `docker login` writes them.
    let good = registry_with(config_with(
        "kiln",
        password,
        &format!("http://{}", reg.addr),
    ));
    let pulled = rt.block_on(good.pull_image(&image)).unwrap();
    assert_eq!(pulled.manifest_digest, img.manifest_digest);
    let dest = tmp.path().join("layer");
    rt.block_on(good.fetch_blob_to_file(&image, &img.layer().digest, img.layer().size, &dest))
        .unwrap();
    // Push with the same credentials.
    let blobs = vec![img.config_blob()];
    let pushed = rt
        .block_on(good.push_image(
            &format!("{}/private/app:v2", reg.addr),
            &blobs,
            &img.manifest,
            MEDIA_TYPE_OCI_MANIFEST,
        ))
        .unwrap();
    assert_eq!(pushed, img.manifest_digest);

    // Wrong password: unauthorized, with a hint, and the password is nowhere in the error.
    let wrong_pw = "Wrong-Passw0rd-kiln";
    let bad = registry_with(config_with("kiln", wrong_pw, &reg.addr));
    for err in [
        rt.block_on(bad.pull_image(&image)).unwrap_err(),
        rt.block_on(bad.fetch_blob_to_file(
            &image,
            &img.layer().digest,
            img.layer().size,
            &tmp.path().join("x"),
        ))
        .unwrap_err(),
        rt.block_on(bad.push_image(&image, &blobs, &img.manifest, MEDIA_TYPE_OCI_MANIFEST))
            .unwrap_err(),
    ] {
        assert!(matches!(err, RegistryError::Unauthorized { .. }), "{err}");
        let msg = format!("{err} {err:?}");
        assert!(msg.contains("check the credentials"), "{msg}");
        assert!(!msg.contains(wrong_pw) && !msg.contains(password), "{msg}");
        let b64 = base64::engine::general_purpose::STANDARD.encode(format!("kiln:{wrong_pw}"));
        assert!(!msg.contains(&b64), "{msg}");
    }

    // No credentials at all.
    let anon = Registry::new(reg.options()).unwrap();
    let err = rt.block_on(anon.pull_image(&image)).unwrap_err();
    assert!(matches!(err, RegistryError::Unauthorized { .. }), "{err}");
}

#[test]
fn docker_hub_images_come_from_mirrors_in_order() {
    if !require_tools(&["docker-registry", "skopeo"]) {
        return;
    }
    let reg = TestRegistry::start();
    let tmp = tempfile::tempdir().unwrap();
    let img = TestImage::hello(&tmp.path().join("work"), "amd64", "mirrored\n");
    let dir = tmp.path().join("layout");
    img.write_to_layout(&OciLayout::create(&dir).unwrap(), Some("v1"));
    // As a pull-through cache stores it: official images under library/, and a second
    // copy under a path prefix.
    skopeo_push(&dir, "v1", &format!("{}/library/hello:v1", reg.addr), &[]);
    skopeo_push(
        &dir,
        "v1",
        &format!("{}/hub/library/hello:v1", reg.addr),
        &[],
    );

    let dead_port = free_port();
    let dead = format!("127.0.0.1:{dead_port}");
    let rt = rt();
    for mirrors in [
        vec![reg.addr.clone()],
        vec![dead.clone(), format!("{}/hub", reg.addr)],
    ] {
        let mut opts = reg.options();
        opts.insecure_registries.push(dead.clone());
        opts.mirrors = mirrors;
        let registry = Registry::new(opts).unwrap();
        let pulled = rt.block_on(registry.pull_image("hello:v1")).unwrap();
        assert_eq!(pulled.reference, "docker.io/library/hello:v1");
        assert_eq!(pulled.manifest_digest, img.manifest_digest);
        let dest = tmp.path().join("mirrored-layer");
        rt.block_on(registry.fetch_blob_to_file(
            "hello:v1",
            &img.layer().digest,
            img.layer().size,
            &dest,
        ))
        .unwrap();
        assert_eq!(file_digest(&dest), img.layer().digest);
        std::fs::remove_file(&dest).unwrap();
    }
}

#[test]
fn non_image_artifacts_are_refused_with_their_media_type() {
    if !require_tools(&["docker-registry"]) {
        return;
    }
    let reg = TestRegistry::start();
    let rt = rt();
    let registry = Registry::new(reg.options()).unwrap();
    let config = br#"{"name":"chart"}"#.to_vec();
    let content = b"not a layer".to_vec();
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_TYPE_OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.cncf.helm.config.v1+json", "digest": sha256_digest(&config), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.cncf.helm.chart.content.v1.tar+gzip", "digest": sha256_digest(&content), "size": content.len()}]
    }))
    .unwrap();
    let blobs = [&config, &content].map(|b| Blob {
        digest: sha256_digest(b),
        size: b.len() as u64,
        source: BlobSource::Bytes(b.clone()),
        mount_from: None,
        fresh: false,
    });
    let image = format!("{}/charts/app:1", reg.addr);
    rt.block_on(registry.push_image(&image, &blobs, &manifest, MEDIA_TYPE_OCI_MANIFEST))
        .unwrap();
    let err = rt.block_on(registry.pull_image(&image)).unwrap_err();
    assert!(
        matches!(err, RegistryError::UnsupportedMediaType { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("helm.config"), "{err}");

    // A blob whose bytes do not match its digest is refused before anything is sent.
    let lying = [Blob {
        digest: sha256_digest(b"something else"),
        size: config.len() as u64,
        source: BlobSource::Bytes(config.clone()),
        mount_from: None,
        fresh: false,
    }];
    let err = rt
        .block_on(registry.push_image(&image, &lying, &manifest, MEDIA_TYPE_OCI_MANIFEST))
        .unwrap_err();
    assert!(matches!(err, RegistryError::InvalidBlob { .. }), "{err}");
}

#[test]
fn self_signed_tls_needs_skip_tls_verify() {
    if !require_tools(&["docker-registry", "skopeo", "openssl"]) {
        return;
    }
    let reg = TestRegistry::with_tls();
    let tmp = tempfile::tempdir().unwrap();
    let img = TestImage::hello(&tmp.path().join("work"), "amd64", "tls\n");
    let dir = tmp.path().join("layout");
    img.write_to_layout(&OciLayout::create(&dir).unwrap(), Some("v1"));
    let image = format!("{}/tls/app:v1", reg.addr);
    skopeo_push(&dir, "v1", &image, &[]);

    let rt = rt();
    let base = RegistryOptions {
        docker_config: Some(reg.empty_docker_config()),
        ..RegistryOptions::default()
    };
    let verifying = Registry::new(base.clone()).unwrap();
    let err = rt.block_on(verifying.pull_image(&image)).unwrap_err();
    // Refused, not unreachable: the advice names the flags that fix it.
    assert!(matches!(err, RegistryError::Tls { .. }), "{err}");
    assert!(
        err.to_string().contains("--skip-tls-verify-registry")
            && err.to_string().contains("--registry-certificate"),
        "{err}"
    );

    let per_registry = Registry::new(RegistryOptions {
        skip_tls_verify_registries: vec![reg.addr.clone()],
        ..base.clone()
    })
    .unwrap();
    let pulled = rt.block_on(per_registry.pull_image(&image)).unwrap();
    assert_eq!(pulled.manifest_digest, img.manifest_digest);

    let global = Registry::new(RegistryOptions {
        skip_tls_verify: true,
        ..base
    })
    .unwrap();
    let blobs = [img.config_blob()];
    let d = rt
        .block_on(global.push_image(
            &format!("{}/tls/app:v2", reg.addr),
            &blobs,
            &img.manifest,
            MEDIA_TYPE_OCI_MANIFEST,
        ))
        .unwrap();
    assert_eq!(d, img.manifest_digest);
}

#[test]
fn pull_into_a_layout_that_umoci_unpacks() {
    if !require_tools(&["docker-registry", "skopeo", "umoci"]) {
        return;
    }
    let reg = TestRegistry::start();
    let tmp = tempfile::tempdir().unwrap();
    let img = TestImage::hello(&tmp.path().join("work"), "amd64", "warmed\n");
    let dir = tmp.path().join("src");
    img.write_to_layout(&OciLayout::create(&dir).unwrap(), Some("v1"));
    let image = format!("{}/warm/app:v1", reg.addr);
    skopeo_push(&dir, "v1", &image, &[]);
    let docker_image = format!("{}/warm/docker:v1", reg.addr);
    skopeo_push(&dir, "v1", &docker_image, &["--format", "v2s2"]);

    let rt = rt();
    let registry = Registry::new(reg.options()).unwrap();
    let cache = OciLayout::create(&tmp.path().join("cache")).unwrap();
    let pulled = rt
        .block_on(registry.pull_to_layout(&image, &cache, Some("warm-app")))
        .unwrap();
    let desc = cache.resolve("warm-app").unwrap();
    assert_eq!(desc.digest().to_string(), pulled.manifest_digest);
    assert_eq!(
        cache.read_blob_verified(&pulled.manifest_digest).unwrap(),
        pulled.manifest_bytes
    );
    for l in pulled.manifest.layers() {
        cache.verify_blob(l.digest().as_ref()).unwrap();
    }
    // Pulling again reuses the stored layers and keeps one index entry.
    rt.block_on(registry.pull_to_layout(&image, &cache, Some("warm-app")))
        .unwrap();
    assert_eq!(cache.manifests().unwrap().len(), 1);

    // Docker-typed manifests are stored as served, so the cache keeps the registry's
    // digest (skopeo and umoci only resolve OCI-typed entries by name; kiln reads both).
    let docker = rt
        .block_on(registry.pull_to_layout(&docker_image, &cache, Some("warm-docker")))
        .unwrap();
    let desc = cache.resolve("warm-docker").unwrap();
    assert_eq!(desc.digest().to_string(), docker.manifest_digest);
    assert_eq!(
        desc.media_type().to_string(),
        "application/vnd.docker.distribution.manifest.v2+json"
    );
    assert_eq!(
        cache.read_blob_verified(&docker.manifest_digest).unwrap(),
        docker.manifest_bytes
    );
    assert_eq!(cache.manifests().unwrap().len(), 2);

    let bundle = tmp.path().join("bundle");
    run(Command::new("umoci")
        .args(["unpack", "--image"])
        .arg(format!("{}:warm-app", cache.dir().display()))
        .arg(&bundle));
    assert_eq!(
        std::fs::read_to_string(bundle.join("rootfs/hello.txt")).unwrap(),
        "warmed\n"
    );
}

/// Everything logged by the test binary, at every level, `log` records of the HTTP stack
/// included (tracing-subscriber installs the `log` bridge).
fn captured_logs() -> &'static std::sync::Mutex<Vec<u8>> {
    static LOGS: std::sync::OnceLock<std::sync::Mutex<Vec<u8>>> = std::sync::OnceLock::new();
    LOGS.get_or_init(|| {
        struct Sink;
        impl Write for Sink {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                captured_logs().lock().unwrap().extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(|| Sink)
            .try_init()
            .expect("no other global subscriber in this test binary");
        std::sync::Mutex::new(Vec::new())
    })
}

#[test]
fn credentials_never_reach_trace_logs_or_errors() {
    if !require_tools(&["docker-registry"]) {
        return;
    }
    use base64::Engine as _;
    let logs = captured_logs();
    let password = "Tr4ce-Leak-Canary-77";
    let reg = TestRegistry::with_auth(&htpasswd_line("tracer", password));
    let tmp = tempfile::tempdir().unwrap();
    let img = TestImage::hello(&tmp.path().join("work"), "amd64", "traced\n");
    let cfg = tmp.path().join("config.json");
    let auth = |pw: &str| base64::engine::general_purpose::STANDARD.encode(format!("tracer:{pw}"));
    let write_cfg = |pw: &str| {
        std::fs::write(
            &cfg,
            serde_json::to_vec(&json!({"auths": {reg.addr.clone(): {"auth": auth(pw)}}})).unwrap(),
        )
        .unwrap()
    };
    write_cfg(password);
    let mut opts = reg.options();
    opts.docker_config = Some(cfg.clone());
    opts.push_retries = 1;
    opts.pull_retries = 1;
    let registry = Registry::new(opts.clone()).unwrap();
    let rt = rt();
    let target = format!("{}/traced/app:v1", reg.addr);
    let blobs = img.blobs(None);
    rt.block_on(registry.push_image(&target, &blobs, &img.manifest, MEDIA_TYPE_OCI_MANIFEST))
        .unwrap();
    rt.block_on(registry.pull_image(&target)).unwrap();
    rt.block_on(registry.fetch_blob_to_file(
        &target,
        &img.layer().digest,
        img.layer().size,
        &tmp.path().join("l"),
    ))
    .unwrap();
    // A wrong password, whose failure is logged and returned.
    let wrong = "Wr0ng-Leak-Canary-88";
    write_cfg(wrong);
    let bad = Registry::new(opts).unwrap();
    let err = rt.block_on(bad.pull_image(&target)).unwrap_err();
    let err_text = format!("{err} {err:?} {bad:?}");

    let text = String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
    // The capture works: kiln's own events and the HTTP stack's are in it.
    assert!(text.contains("pushed manifest"), "nothing captured");
    assert!(text.contains("TRACE"), "no trace-level events captured");
    for secret in [
        password.to_string(),
        auth(password),
        wrong.to_string(),
        auth(wrong),
    ] {
        assert!(!text.contains(&secret), "a credential is in the logs");
        assert!(
            !err_text.contains(&secret),
            "a credential is in an error: {err_text}"
        );
    }
}
