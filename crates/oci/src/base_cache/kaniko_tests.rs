//! kaniko's warmer entries, written here the way go-containerregistry's `tarball.Write` lays
//! them out (config `sha256:<hex>`, layers `<hex>.tar.gz`, `manifest.json` last), good and
//! hostile. The executor's test (executor/tests/kaniko_cache.rs) reads entries that kaniko's
//! real warmer wrote.

use std::fs;
use std::path::Path;
use std::time::Duration;

use serde_json::json;

use super::*;
use crate::registry::{sha256_digest, MEDIA_TYPE_OCI_MANIFEST};

const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

struct Entry {
    digest: String,
    manifest: Vec<u8>,
    config: Vec<u8>,
    layers: Vec<Vec<u8>>,
}

fn image(layers: &[&[u8]]) -> Entry {
    let diff_ids: Vec<String> = layers
        .iter()
        .map(|l| sha256_digest(&[*l, b"-diff"].concat()))
        .collect();
    let config = serde_json::to_vec(&json!({
        "architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": diff_ids}
    }))
    .unwrap();
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": DOCKER_MANIFEST,
        "config": {"mediaType": "application/vnd.docker.container.image.v1+json",
                   "digest": sha256_digest(&config), "size": config.len()},
        "layers": layers.iter().map(|l| json!({
            "mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip",
            "digest": sha256_digest(l), "size": l.len()})).collect::<Vec<_>>()
    }))
    .unwrap();
    Entry {
        digest: sha256_digest(&manifest),
        manifest,
        config,
        layers: layers.iter().map(|l| l.to_vec()).collect(),
    }
}

fn hex(digest: &str) -> &str {
    digest.strip_prefix("sha256:").unwrap()
}

/// The archive's members as (name, content), in go-containerregistry's order.
fn members(e: &Entry) -> Vec<(String, Vec<u8>)> {
    let mut out = vec![(sha256_digest(&e.config), e.config.clone())];
    for l in &e.layers {
        let name = format!("{}.tar.gz", hex(&sha256_digest(l)));
        if !out.iter().any(|(n, _)| *n == name) {
            out.push((name, l.clone()));
        }
    }
    out.push(("manifest.json".to_string(), b"[]".to_vec()));
    out
}

fn write_entry(dir: &Path, digest: &str, manifest: &[u8], members: &[(String, Vec<u8>)]) {
    let mut tar = tar::Builder::new(Vec::new());
    for (name, content) in members {
        let mut h = tar::Header::new_ustar();
        h.set_size(content.len() as u64);
        h.set_mode(0o644);
        tar.append_data(&mut h, name, &content[..]).unwrap();
    }
    fs::write(dir.join(digest), tar.into_inner().unwrap()).unwrap();
    fs::write(dir.join(format!("{digest}.json")), manifest).unwrap();
}

fn setup(e: &Entry) -> (tempfile::TempDir, BaseImageCache, std::path::PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("cache");
    fs::create_dir(&dir).unwrap();
    write_entry(&dir, &e.digest, &e.manifest, &members(e));
    let cache = BaseImageCache::open_existing(&dir, Duration::from_secs(60)).unwrap();
    let blobs = tmp.path().join("blobs");
    (tmp, cache, blobs)
}

fn amd64() -> Platform {
    "linux/amd64".parse().unwrap()
}

fn read(
    cache: &BaseImageCache,
    digest: &str,
    blobs: &Path,
) -> Result<Option<CachedImage>, CacheError> {
    cache.kaniko_image(digest, "r.example/a:1", &amd64(), blobs)
}

#[test]
fn reads_an_entry_and_copies_verified_layers_out() {
    let e = image(&[b"layer one", b"layer two"]);
    let (_tmp, cache, blobs) = setup(&e);
    assert!(cache.has_kaniko_entries());
    assert!(cache.has_kaniko_entry(&e.digest));
    // Nothing of Kiln's own layout was written into kaniko's directory.
    assert!(!cache.dir().join("oci-layout").exists());
    assert!(cache.find("r.example/a:1", &amd64()).unwrap().is_none());

    let got = read(&cache, &e.digest, &blobs).unwrap().expect("entry");
    assert_eq!(got.manifest_digest, e.digest);
    assert_eq!(got.manifest_bytes, e.manifest);
    assert_eq!(got.config_bytes, e.config);
    assert!(got.layers_verified);
    assert_eq!(got.layers.len(), 2);
    for (layer, bytes) in got.layers.iter().zip(&e.layers) {
        assert_eq!(layer.digest, sha256_digest(bytes));
        assert_eq!(fs::read(&layer.path).unwrap(), *bytes);
        assert!(layer.path.starts_with(&blobs));
    }
    // The same layer twice (go-containerregistry writes it once) and a second read reuse files.
    let twice = image(&[b"same", b"same"]);
    write_entry(
        cache.dir(),
        &twice.digest,
        &twice.manifest,
        &members(&twice)[..],
    );
    let got = read(&cache, &twice.digest, &blobs).unwrap().expect("entry");
    assert_eq!(got.layers[0].path, got.layers[1].path);
    assert!(read(&cache, &e.digest, &blobs).unwrap().is_some());
}

#[test]
fn absent_entries_and_names_are_misses() {
    let e = image(&[b"layer"]);
    let (_tmp, cache, blobs) = setup(&e);
    let other = sha256_digest(b"nothing");
    assert!(read(&cache, &other, &blobs).unwrap().is_none());
    assert!(!cache.has_kaniko_entry(&other));
    // Not a digest: never turned into a path.
    assert!(read(&cache, "sha256:../../etc/passwd", &blobs)
        .unwrap()
        .is_none());
    assert!(read(&cache, "../x", &blobs).unwrap().is_none());

    let empty = tempfile::tempdir().unwrap();
    let cache = BaseImageCache::open_existing(empty.path(), Duration::from_secs(60)).unwrap();
    assert!(!cache.has_kaniko_entries());
}

/// Every way an entry can lie about its content is an error, and no layer file is left.
#[test]
fn lying_or_damaged_entries_are_errors() {
    let e = image(&[b"layer one", b"layer two"]);
    let other = image(&[b"another image"]);
    type Case = (&'static str, Box<dyn Fn(&Path)>);
    let d = e.digest.clone();
    let cases: Vec<Case> = vec![
        (
            "manifest of another image under this name",
            Box::new({
                let (d, m) = (d.clone(), other.manifest.clone());
                move |dir: &Path| fs::write(dir.join(format!("{d}.json")), &m).unwrap()
            }),
        ),
        (
            "no manifest file",
            Box::new({
                let d = d.clone();
                move |dir: &Path| fs::remove_file(dir.join(format!("{d}.json"))).unwrap()
            }),
        ),
        (
            "a layer's bytes replaced, same size",
            Box::new({
                let (d, e_members) = (d.clone(), members(&e));
                let manifest = e.manifest.clone();
                move |dir: &Path| {
                    let mut m = e_members.clone();
                    m[1].1 = b"layer 0ne".to_vec();
                    write_entry(dir, &d, &manifest, &m);
                }
            }),
        ),
        (
            "the config replaced",
            Box::new({
                let (d, e_members) = (d.clone(), members(&e));
                let manifest = e.manifest.clone();
                move |dir: &Path| {
                    let mut m = e_members.clone();
                    m[0].1 = br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#.to_vec();
                    write_entry(dir, &d, &manifest, &m);
                }
            }),
        ),
        (
            "a layer missing from the tarball",
            Box::new({
                let (d, e_members) = (d.clone(), members(&e));
                let manifest = e.manifest.clone();
                move |dir: &Path| {
                    let mut m = e_members.clone();
                    m.remove(2);
                    write_entry(dir, &d, &manifest, &m);
                }
            }),
        ),
        (
            "a layer twice in the tarball",
            Box::new({
                let (d, e_members) = (d.clone(), members(&e));
                let manifest = e.manifest.clone();
                move |dir: &Path| {
                    let mut m = e_members.clone();
                    m.push(m[1].clone());
                    write_entry(dir, &d, &manifest, &m);
                }
            }),
        ),
        (
            "the tarball cut short",
            Box::new({
                let d = d.clone();
                move |dir: &Path| {
                    let bytes = fs::read(dir.join(&d)).unwrap();
                    fs::write(dir.join(&d), &bytes[..600]).unwrap();
                }
            }),
        ),
        (
            "not a tarball",
            Box::new({
                let d = d.clone();
                move |dir: &Path| fs::write(dir.join(&d), vec![0x5au8; 4096]).unwrap()
            }),
        ),
    ];
    for (what, damage) in cases {
        let (_tmp, cache, blobs) = setup(&e);
        damage(cache.dir());
        let got = read(&cache, &e.digest, &blobs);
        assert!(
            got.is_err(),
            "{what}: accepted ({:?})",
            got.map(|i| i.is_some())
        );
        let left: Vec<_> = fs::read_dir(&blobs)
            .map(|d| d.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default();
        assert!(
            left.iter().all(|n| {
                let n = n.to_string_lossy();
                // Layers verified before the damaged one may stay: they are what they claim.
                e.layers
                    .iter()
                    .any(|l| n == format!("sha256-{}", hex(&sha256_digest(l))))
            }),
            "{what}: left {left:?}"
        );
        assert!(
            cache
                .kaniko_find_or_pull(&e.digest, "r.example/a:1", &amd64(), &blobs)
                .is_none(),
            "{what}"
        );
    }
}

#[test]
fn an_index_or_a_symlink_is_not_an_entry() {
    let e = image(&[b"layer"]);
    let (_tmp, cache, blobs) = setup(&e);
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{"mediaType": MEDIA_TYPE_OCI_MANIFEST, "digest": e.digest, "size": e.manifest.len()}]
    }))
    .unwrap();
    let index_digest = sha256_digest(&index);
    write_entry(cache.dir(), &index_digest, &index, &members(&e));
    assert!(read(&cache, &index_digest, &blobs).is_err());

    // A layer member that is a symlink to a file elsewhere is not read through.
    let mut tar = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_ustar();
    h.set_size(e.config.len() as u64);
    h.set_mode(0o644);
    tar.append_data(&mut h, sha256_digest(&e.config), &e.config[..])
        .unwrap();
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(tar::EntryType::Symlink);
    h.set_size(0);
    tar.append_link(
        &mut h,
        format!("{}.tar.gz", hex(&sha256_digest(&e.layers[0]))),
        "/etc/passwd",
    )
    .unwrap();
    fs::write(cache.dir().join(&e.digest), tar.into_inner().unwrap()).unwrap();
    let err = read(&cache, &e.digest, &blobs).unwrap_err();
    assert!(err.to_string().contains("not one regular file"), "{err}");
}
