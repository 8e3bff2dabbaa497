use std::fs;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::json;

use super::index::Entry;
use super::lookup::same_platform;
use super::*;
use crate::registry::MEDIA_TYPE_OCI_MANIFEST;

fn write_image(cache: &BaseImageCache, layer: &[u8]) -> (String, String) {
    let layout = cache.layout();
    let layer_digest = layout.write_blob_bytes(layer).unwrap();
    let diff_id = crate::registry::sha256_digest(b"uncompressed");
    let config = serde_json::to_vec(&json!({
        "architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [diff_id]}
    }))
    .unwrap();
    let config_digest = layout.write_blob_bytes(&config).unwrap();
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_TYPE_OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": layer_digest, "size": layer.len()}]
    }))
    .unwrap();
    let manifest_digest = layout.write_blob_bytes(&manifest).unwrap();
    (manifest_digest, layer_digest)
}

fn entry(digest: &str, name: &str, warmed_at: DateTime<Utc>) -> Entry {
    Entry {
        media_type: MEDIA_TYPE_OCI_MANIFEST.to_string(),
        digest: digest.to_string(),
        size: 1,
        ref_name: Some(name.to_string()),
        platform: Some("linux/amd64".parse().unwrap()),
        warmed_at: Some(warmed_at),
        index_digest: Some(
            "sha256:1111111111111111111111111111111111111111111111111111111111111111".to_string(),
        ),
    }
}

#[test]
fn tag_entries_expire_digest_entries_do_not() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = BaseImageCache::open(tmp.path(), Duration::from_secs(3600)).unwrap();
    let (md, _) = write_image(&cache, b"layer one");
    let amd64: Platform = "linux/amd64".parse().unwrap();
    let old = Utc::now() - chrono::Duration::hours(2);
    cache.record(&entry(&md, "r.example/a:1", old)).unwrap();
    assert!(cache.lookup("r.example/a:1", &amd64).unwrap().is_none());
    let by_digest = cache
        .lookup(&format!("r.example/a@{md}"), &amd64)
        .unwrap()
        .expect("digest entries never expire");
    assert_eq!(by_digest.manifest_digest, md);
    assert_eq!(by_digest.layers.len(), 1);
    let by_index = cache
        .lookup(
            "r.example/a@sha256:1111111111111111111111111111111111111111111111111111111111111111",
            &amd64,
        )
        .unwrap()
        .expect("found by index digest");
    assert_eq!(by_index.manifest_digest, md);

    // Re-recording replaces the entry (same reference and platform), now fresh.
    cache
        .record(&entry(&md, "r.example/a:1", Utc::now()))
        .unwrap();
    let hit = cache.lookup("r.example/a:1", &amd64).unwrap().unwrap();
    assert_eq!(hit.reference, "r.example/a:1");
    assert_eq!(cache.entries().unwrap().len(), 1);
    let arm: Platform = "linux/arm64".parse().unwrap();
    assert!(cache.lookup("r.example/a:1", &arm).unwrap().is_none());
}

#[test]
fn corrupt_and_missing_layers_are_reported_with_their_path() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = BaseImageCache::open(tmp.path(), DEFAULT_TTL).unwrap();
    let (md, ld) = write_image(&cache, b"layer two");
    cache
        .record(&entry(&md, "r.example/b:1", Utc::now()))
        .unwrap();
    let p: Platform = "linux/amd64".parse().unwrap();
    fs::write(cache.layout().blob_path(&ld), b"layer tw0").unwrap();
    let e = cache.lookup("r.example/b:1", &p).unwrap_err();
    assert!(
        matches!(&e, CacheError::Corrupt { digest, .. } if *digest == ld),
        "{e}"
    );
    assert!(e.is_damage());
    assert!(e
        .to_string()
        .contains(&cache.layout().blob_path(&ld).display().to_string()));
    // A build finds the entry without reading the layer, and its reader finds the damage.
    let found = cache
        .find("r.example/b:1", &p)
        .unwrap()
        .expect("same size: found");
    let e = cache.verify_layer(&found.layers[0].digest).unwrap_err();
    assert!(
        matches!(&e, CacheError::Corrupt { digest, .. } if *digest == ld),
        "{e}"
    );
    // A layer of the wrong size is damage the build sees before reading it.
    fs::write(cache.layout().blob_path(&ld), b"layer two, longer").unwrap();
    let e = cache.find("r.example/b:1", &p).unwrap_err();
    assert!(
        matches!(&e, CacheError::Corrupt { .. }) && e.is_damage(),
        "{e}"
    );
    assert!(
        e.to_string().contains("17 bytes, the manifest says 9"),
        "{e}"
    );
    assert!(cache.find_or_pull("r.example/b:1", &p).is_none());
    fs::remove_file(cache.layout().blob_path(&ld)).unwrap();
    let e = cache.lookup("r.example/b:1", &p).unwrap_err();
    assert!(matches!(e, CacheError::Missing { .. }), "{e}");
    let e = cache.find("r.example/b:1", &p).unwrap_err();
    assert!(matches!(e, CacheError::Missing { .. }), "{e}");
}

#[test]
fn old_temp_files_are_cleaned_and_recent_ones_kept() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = BaseImageCache::open(tmp.path(), DEFAULT_TTL).unwrap();
    let stale = tmp.path().join("blobs/sha256/.kiln-blob-stale");
    fs::write(&stale, b"partial").unwrap();
    let old = filetime::FileTime::from_unix_time(1_000_000_000, 0);
    filetime::set_file_mtime(&stale, old).unwrap();
    let live = tmp.path().join("blobs/sha256/.kiln-blob-live");
    fs::write(&live, b"partial").unwrap();
    assert_eq!(cache.clean_temp_files(Duration::from_secs(600)).unwrap(), 1);
    assert!(!stale.exists());
    assert!(live.exists());
}

#[test]
fn platforms_match_like_containerd() {
    let p = |s: &str| s.parse::<Platform>().unwrap();
    assert!(same_platform(&p("linux/arm64"), &p("linux/arm64/v8")));
    assert!(!same_platform(&p("linux/arm/v6"), &p("linux/arm/v7")));
    assert!(!same_platform(&p("linux/amd64"), &p("linux/arm64")));
}
