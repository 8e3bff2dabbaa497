//! Reading Kiln's own output back: an entry of the single image in an OCI layout written by
//! `--oci-layout-path`, through its gzip layers in order.

use std::fs;
use std::io::Read;
use std::path::Path;

/// The file at `path` in the layout's image (the last layer that writes it wins), or what a
/// symlink there points to as `-> target`; `None` when no layer has it or there is no layout.
pub fn layout_entry(layout: &Path, path: &str) -> Option<String> {
    manifest_entry(layout, &layout_manifest(layout)?, path)
}

/// The file at `path` in the image of `manifest`, whose blobs are in the layout (as
/// [`layout_entry`]).
pub fn manifest_entry(layout: &Path, manifest: &serde_json::Value, path: &str) -> Option<String> {
    let blob = |digest: &str| blob_path(layout, digest);
    let want = path.trim_start_matches('/');
    let mut found = None;
    for layer in manifest["layers"].as_array().unwrap() {
        let file = fs::File::open(blob(layer["digest"].as_str().unwrap())).unwrap();
        let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(file));
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let name = entry.path().unwrap().to_string_lossy().into_owned();
            let name = name.trim_start_matches("./").trim_start_matches('/');
            if name.trim_end_matches('/') != want {
                continue;
            }
            found = Some(match entry.link_name().unwrap() {
                Some(target) if entry.header().entry_type().is_symlink() => {
                    format!("-> {}", target.display())
                }
                _ => {
                    let mut s = String::new();
                    entry.read_to_string(&mut s).unwrap();
                    s
                }
            });
        }
    }
    found
}

/// The JSON blob `digest` of the layout.
pub fn layout_blob(layout: &Path, digest: &str) -> serde_json::Value {
    serde_json::from_slice(&fs::read(blob_path(layout, digest)).unwrap()).unwrap()
}

fn blob_path(layout: &Path, digest: &str) -> std::path::PathBuf {
    let hex = digest.strip_prefix("sha256:").expect("sha256 digest");
    layout.join("blobs/sha256").join(hex)
}

/// The manifest of the layout's first image; `None` when there is no layout.
pub fn layout_manifest(layout: &Path) -> Option<serde_json::Value> {
    let index: serde_json::Value =
        serde_json::from_slice(&fs::read(layout.join("index.json")).ok()?).unwrap();
    let manifest_digest = index["manifests"][0]["digest"].as_str().unwrap();
    Some(serde_json::from_slice(&fs::read(blob_path(layout, manifest_digest)).unwrap()).unwrap())
}

/// The config of the layout's first image; `None` when there is no layout.
pub fn layout_config(layout: &Path) -> Option<serde_json::Value> {
    let manifest = layout_manifest(layout)?;
    let digest = manifest["config"]["digest"].as_str().unwrap();
    Some(serde_json::from_slice(&fs::read(blob_path(layout, digest)).unwrap()).unwrap())
}

/// The permission bits recorded for `path` in the layout's image (the last layer that has it
/// wins); `None` when no layer has it.
pub fn layout_mode(layout: &Path, path: &str) -> Option<u32> {
    let manifest = layout_manifest(layout)?;
    let want = path.trim_start_matches('/');
    let mut found = None;
    for layer in manifest["layers"].as_array().unwrap() {
        let file = fs::File::open(blob_path(layout, layer["digest"].as_str().unwrap())).unwrap();
        let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(file));
        for entry in archive.entries().unwrap() {
            let entry = entry.unwrap();
            let name = entry.path().unwrap().to_string_lossy().into_owned();
            let name = name.trim_start_matches("./").trim_start_matches('/');
            if name.trim_end_matches('/') == want {
                found = Some(entry.header().mode().unwrap() & 0o7777);
            }
        }
    }
    found
}

/// Unpack every layer of the layout's image into `dest` in order (for images whose layers hold
/// no whiteouts), so host tools can inspect the result.
pub fn layout_unpack(layout: &Path, dest: &Path) {
    manifest_unpack(
        layout,
        &layout_manifest(layout).expect("an image in the layout"),
        dest,
    );
}

/// Unpacks the layers of the image of `manifest` (blobs in the layout) into `dest`.
pub fn manifest_unpack(layout: &Path, manifest: &serde_json::Value, dest: &Path) {
    for layer in manifest["layers"].as_array().unwrap() {
        let file = fs::File::open(blob_path(layout, layer["digest"].as_str().unwrap())).unwrap();
        let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(file));
        archive.set_preserve_permissions(true);
        archive.unpack(dest).unwrap();
    }
}
