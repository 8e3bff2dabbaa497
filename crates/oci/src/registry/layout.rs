//! OCI image layouts on disk (`oci-layout`, `index.json`, `blobs/sha256/…`): the format of
//! the warmed cache volume and of `--oci-layout-path` output. Every write goes to a temporary
//! file and is renamed into place; every blob is verified against its digest. It does not
//! talk to registries and does not interpret image contents beyond descriptors.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use oci_spec::image::Descriptor;
use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};

/// The annotation that names a manifest in `index.json`.
pub const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";
const LAYOUT_FILE: &str = "oci-layout";
const INDEX_FILE: &str = "index.json";
const LAYOUT_VERSION: &str = "1.0.0";
/// The largest blob [`OciLayout::read_blob_verified`] reads into memory. Manifests and configs
/// are bounded by `--max-manifest-size` (4 MiB by default) when they are pulled into a layout;
/// this only keeps a damaged or planted file on a shared cache volume from being read whole.
pub const MAX_READ_WHOLE: u64 = 64 << 20;

/// What went wrong with a layout; each message names the file or digest.
#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    #[error("{action} {path}: {source}; check that the directory exists, is writable and has free space")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{dir} is not an OCI image layout: {detail}; create it with `OciLayout::create` or point at the layout's top directory")]
    NotALayout { dir: PathBuf, detail: String },
    #[error("invalid digest {digest:?}: expected sha256:<64 lowercase hex>")]
    InvalidDigest { digest: String },
    #[error("digest mismatch for {path}: expected {expected}, got {actual}; the file changed or is corrupted, remove it and fetch it again")]
    DigestMismatch {
        path: PathBuf,
        expected: String,
        actual: String,
    },
    #[error("blob {digest} not found in layout {dir}")]
    MissingBlob { dir: PathBuf, digest: String },
    #[error("invalid {path}: {detail}; the layout's index is damaged, rewrite it")]
    InvalidIndex { path: PathBuf, detail: String },
    #[error("{path} is {size} bytes, more than the {limit} a manifest or config may have; the layout is damaged, remove the file")]
    TooLarge {
        path: PathBuf,
        size: u64,
        limit: u64,
    },
}

fn io_err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> LayoutError + 'a {
    move |source| LayoutError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

fn check_digest(digest: &str) -> Result<&str, LayoutError> {
    super::reference::sha256_hex(digest).ok_or_else(|| LayoutError::InvalidDigest {
        digest: digest.to_string(),
    })
}

/// An OCI image layout directory.
#[derive(Debug, Clone)]
pub struct OciLayout {
    dir: PathBuf,
}

impl OciLayout {
    /// Creates a layout in `dir` (and `dir` itself if needed). An existing layout is
    /// opened as is, so creating twice keeps what is there.
    pub fn create(dir: &Path) -> Result<OciLayout, LayoutError> {
        let blobs = dir.join("blobs/sha256");
        fs::create_dir_all(&blobs).map_err(io_err("cannot create", &blobs))?;
        let layout = OciLayout {
            dir: dir.to_path_buf(),
        };
        let marker = dir.join(LAYOUT_FILE);
        if !marker.exists() {
            let body = serde_json::to_vec(&json!({ "imageLayoutVersion": LAYOUT_VERSION }))
                .map_err(|e| LayoutError::InvalidIndex {
                    path: marker.clone(),
                    detail: e.to_string(),
                })?;
            layout.write_atomic(&marker, &body)?;
        }
        let index = dir.join(INDEX_FILE);
        if !index.exists() {
            let empty = json!({
                "schemaVersion": 2,
                "mediaType": super::MEDIA_TYPE_OCI_INDEX,
                "manifests": []
            });
            layout.write_index(&empty)?;
        }
        Ok(layout)
    }

    /// A handle on `dir` that checks nothing and writes nothing; for a directory that may
    /// not be a layout, whose blobs are then simply absent.
    pub(crate) fn unchecked(dir: &Path) -> OciLayout {
        OciLayout {
            dir: dir.to_path_buf(),
        }
    }

    /// Opens an existing layout, checking its `oci-layout` marker and `index.json`.
    pub fn open(dir: &Path) -> Result<OciLayout, LayoutError> {
        let marker = dir.join(LAYOUT_FILE);
        let text = fs::read(&marker).map_err(|e| LayoutError::NotALayout {
            dir: dir.to_path_buf(),
            detail: format!("cannot read {LAYOUT_FILE}: {e}"),
        })?;
        let v: Value = serde_json::from_slice(&text).map_err(|e| LayoutError::NotALayout {
            dir: dir.to_path_buf(),
            detail: format!("{LAYOUT_FILE} is not JSON: {e}"),
        })?;
        if v.get("imageLayoutVersion").and_then(Value::as_str) != Some(LAYOUT_VERSION) {
            return Err(LayoutError::NotALayout {
                dir: dir.to_path_buf(),
                detail: format!("{LAYOUT_FILE} has no imageLayoutVersion {LAYOUT_VERSION:?}"),
            });
        }
        let layout = OciLayout {
            dir: dir.to_path_buf(),
        };
        layout.read_index()?;
        Ok(layout)
    }

    /// The layout's top directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where blob `digest` is (or would be) stored.
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        let (alg, hex) = digest.split_once(':').unwrap_or(("sha256", digest));
        self.dir.join("blobs").join(alg).join(hex)
    }

    /// Whether blob `digest` is present (not re-verified: blobs are verified when written
    /// and when read with [`OciLayout::read_blob_verified`] or [`OciLayout::verify_blob`]).
    pub fn has_blob(&self, digest: &str) -> bool {
        check_digest(digest).is_ok() && self.blob_path(digest).is_file()
    }

    /// Stores the file `src` as blob `digest`: hard-linked when on the same filesystem,
    /// copied otherwise, hashed either way and renamed into place only when it matches.
    /// A hard link shares the inode, so `src` must not be modified afterwards (layer files
    /// are written once).
    pub fn write_blob_file(&self, src: &Path, digest: &str) -> Result<(), LayoutError> {
        check_digest(digest)?;
        if self.has_blob(digest) {
            return Ok(());
        }
        let dest = self.blob_path(digest);
        let dir = self.blob_dir();
        // Unique per call: builds in threads of one process may store the same blob at once.
        static LINKS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let tmp_path = dir.join(format!(
            ".tmp-link-{}-{}-{}",
            std::process::id(),
            LINKS.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            &digest[7..19]
        ));
        let _ = fs::remove_file(&tmp_path);
        if fs::hard_link(src, &tmp_path).is_ok() {
            let actual = hash_file(&tmp_path)?;
            if actual != digest {
                let _ = fs::remove_file(&tmp_path);
                return Err(LayoutError::DigestMismatch {
                    path: src.to_path_buf(),
                    expected: digest.to_string(),
                    actual,
                });
            }
            return fs::rename(&tmp_path, &dest).map_err(|e| {
                let _ = fs::remove_file(&tmp_path);
                io_err("cannot rename into", &dest)(e)
            });
        }
        // Cross-device or a filesystem without hard links: copy while hashing.
        self.copy_blob(src, digest)
    }

    /// Copies `src` into the blob store through a temporary file, hashing on the way.
    fn copy_blob(&self, src: &Path, digest: &str) -> Result<(), LayoutError> {
        let dest = self.blob_path(digest);
        let dir = self.blob_dir();
        let mut input = File::open(src).map_err(io_err("cannot open", src))?;
        let mut tmp = tempfile::Builder::new()
            .prefix(".tmp-blob-")
            .tempfile_in(&dir)
            .map_err(io_err("cannot create a temporary file in", &dir))?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = input.read(&mut buf).map_err(io_err("cannot read", src))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            tmp.write_all(&buf[..n])
                .map_err(io_err("cannot write", &dir))?;
        }
        let actual = format!("sha256:{}", hex::encode(hasher.finalize()));
        if actual != digest {
            return Err(LayoutError::DigestMismatch {
                path: src.to_path_buf(),
                expected: digest.to_string(),
                actual,
            });
        }
        tmp.as_file()
            .sync_all()
            .map_err(io_err("cannot sync", &dir))?;
        tmp.persist(&dest)
            .map_err(|e| io_err("cannot rename into", &dest)(e.error))?;
        Ok(())
    }

    /// Stores `bytes` as a blob and returns its digest.
    pub fn write_blob_bytes(&self, bytes: &[u8]) -> Result<String, LayoutError> {
        let digest = super::sha256_digest(bytes);
        if !self.has_blob(&digest) {
            self.write_atomic(&self.blob_path(&digest), bytes)?;
        }
        Ok(digest)
    }

    /// Reads a blob whole and checks its digest; for manifests and configs, not layers: a blob
    /// over [`MAX_READ_WHOLE`] is refused unread.
    pub fn read_blob_verified(&self, digest: &str) -> Result<Vec<u8>, LayoutError> {
        check_digest(digest)?;
        let path = self.blob_path(digest);
        let missing = |e: io::Error| {
            if e.kind() == io::ErrorKind::NotFound {
                LayoutError::MissingBlob {
                    dir: self.dir.clone(),
                    digest: digest.to_string(),
                }
            } else {
                io_err("cannot read", &path)(e)
            }
        };
        let file = File::open(&path).map_err(missing)?;
        let size = file
            .metadata()
            .map_err(io_err("cannot inspect", &path))?
            .len();
        if size > MAX_READ_WHOLE {
            return Err(LayoutError::TooLarge {
                path,
                size,
                limit: MAX_READ_WHOLE,
            });
        }
        let mut bytes = Vec::with_capacity(size as usize);
        // `take`: a file that grows while it is read is still read only up to the bound.
        file.take(MAX_READ_WHOLE + 1)
            .read_to_end(&mut bytes)
            .map_err(io_err("cannot read", &path))?;
        let actual = super::sha256_digest(&bytes);
        if actual != digest {
            return Err(LayoutError::DigestMismatch {
                path,
                expected: digest.to_string(),
                actual,
            });
        }
        Ok(bytes)
    }

    /// Hashes a stored blob without holding it in memory; for layers.
    pub fn verify_blob(&self, digest: &str) -> Result<(), LayoutError> {
        check_digest(digest)?;
        let path = self.blob_path(digest);
        if !path.is_file() {
            return Err(LayoutError::MissingBlob {
                dir: self.dir.clone(),
                digest: digest.to_string(),
            });
        }
        let actual = hash_file(&path)?;
        if actual != digest {
            return Err(LayoutError::DigestMismatch {
                path,
                expected: digest.to_string(),
                actual,
            });
        }
        Ok(())
    }

    /// Stores a manifest (or index) and records it in `index.json`. With `ref_name`, the
    /// entry carries `org.opencontainers.image.ref.name` and replaces any entry of that
    /// name; without, it is added unless the digest is already listed. Returns the digest.
    pub fn add_manifest(
        &self,
        manifest_bytes: &[u8],
        media_type: &str,
        ref_name: Option<&str>,
    ) -> Result<String, LayoutError> {
        self.add_manifest_annotated(manifest_bytes, media_type, ref_name, &Default::default())
    }

    /// [`OciLayout::add_manifest`] with more annotations on the `index.json` entry (such as
    /// `org.opencontainers.image.created`, which BuildKit's OCI exporter puts there).
    pub fn add_manifest_annotated(
        &self,
        manifest_bytes: &[u8],
        media_type: &str,
        ref_name: Option<&str>,
        annotations: &std::collections::BTreeMap<String, String>,
    ) -> Result<String, LayoutError> {
        let digest = self.write_blob_bytes(manifest_bytes)?;
        let _lock = self.lock()?;
        let mut index = self.read_index()?;
        let index_path = self.dir.join(INDEX_FILE);
        let manifests = index
            .get_mut("manifests")
            .and_then(Value::as_array_mut)
            .ok_or_else(|| LayoutError::InvalidIndex {
                path: index_path.clone(),
                detail: "no manifests array".to_string(),
            })?;
        let mut entry = json!({
            "mediaType": media_type,
            "digest": digest,
            "size": manifest_bytes.len(),
        });
        if !annotations.is_empty() {
            entry["annotations"] = json!(annotations);
        }
        match ref_name {
            Some(name) => {
                manifests.retain(|m| ref_name_of(m) != Some(name));
                entry["annotations"][ANNOTATION_REF_NAME] = json!(name);
                manifests.push(entry);
            }
            None => {
                if !manifests
                    .iter()
                    .any(|m| m.get("digest").and_then(Value::as_str) == Some(digest.as_str()))
                {
                    manifests.push(entry);
                }
            }
        }
        self.write_index(&index)?;
        Ok(digest)
    }

    /// The descriptor named `ref_name` in `index.json`, if any.
    pub fn resolve(&self, ref_name: &str) -> Option<Descriptor> {
        let index = self.read_index().ok()?;
        index
            .get("manifests")?
            .as_array()?
            .iter()
            .find(|m| ref_name_of(m) == Some(ref_name))
            .and_then(|m| serde_json::from_value(m.clone()).ok())
    }

    /// Every descriptor in `index.json`.
    pub fn manifests(&self) -> Result<Vec<Descriptor>, LayoutError> {
        let index = self.read_index()?;
        let path = self.dir.join(INDEX_FILE);
        let list = index
            .get("manifests")
            .cloned()
            .unwrap_or_else(|| Value::Array(Vec::new()));
        serde_json::from_value(list).map_err(|e| LayoutError::InvalidIndex {
            path,
            detail: e.to_string(),
        })
    }

    fn blob_dir(&self) -> PathBuf {
        self.dir.join("blobs/sha256")
    }

    fn read_index(&self) -> Result<Value, LayoutError> {
        let path = self.dir.join(INDEX_FILE);
        let text = fs::read(&path).map_err(|e| LayoutError::NotALayout {
            dir: self.dir.clone(),
            detail: format!("cannot read {INDEX_FILE}: {e}"),
        })?;
        let v: Value = serde_json::from_slice(&text).map_err(|e| LayoutError::InvalidIndex {
            path: path.clone(),
            detail: e.to_string(),
        })?;
        if !v.get("manifests").is_some_and(Value::is_array) {
            return Err(LayoutError::InvalidIndex {
                path,
                detail: "no manifests array".to_string(),
            });
        }
        Ok(v)
    }

    fn write_index(&self, index: &Value) -> Result<(), LayoutError> {
        let path = self.dir.join(INDEX_FILE);
        let body = serde_json::to_vec(index).map_err(|e| LayoutError::InvalidIndex {
            path: path.clone(),
            detail: e.to_string(),
        })?;
        self.write_atomic(&path, &body)
    }

    fn write_atomic(&self, dest: &Path, bytes: &[u8]) -> Result<(), LayoutError> {
        let dir = dest.parent().unwrap_or(&self.dir);
        let mut tmp = tempfile::Builder::new()
            .prefix(".tmp-")
            .tempfile_in(dir)
            .map_err(io_err("cannot create a temporary file in", dir))?;
        tmp.write_all(bytes).map_err(io_err("cannot write", dir))?;
        tmp.as_file()
            .sync_all()
            .map_err(io_err("cannot sync", dir))?;
        // Blobs and the index must be readable by other users of a shared cache volume.
        let perm = std::os::unix::fs::PermissionsExt::from_mode(0o644);
        tmp.as_file()
            .set_permissions(perm)
            .map_err(io_err("cannot set permissions on", dir))?;
        tmp.persist(dest)
            .map_err(|e| io_err("cannot rename into", dest)(e.error))?;
        Ok(())
    }

    /// Serialises index updates between processes sharing the layout (warmers and builds
    /// on one cache volume) with an exclusive `flock` on the layout directory.
    fn lock(&self) -> Result<DirLock, LayoutError> {
        let f = File::open(&self.dir).map_err(io_err("cannot open", &self.dir))?;
        // SAFETY: flock on a file descriptor we own; it stays open for the lock's lifetime.
        let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) };
        if rc != 0 {
            return Err(io_err("cannot lock", &self.dir)(io::Error::last_os_error()));
        }
        Ok(DirLock { _file: f })
    }
}

/// Holds the layout lock; closing the descriptor releases it.
struct DirLock {
    _file: File,
}

fn ref_name_of(m: &Value) -> Option<&str> {
    m.get("annotations")?.get(ANNOTATION_REF_NAME)?.as_str()
}

fn hash_file(path: &Path) -> Result<String, LayoutError> {
    let mut f = File::open(path).map_err(io_err("cannot open", path))?;
    let mut hasher = Sha256::new();
    io::copy(&mut f, &mut hasher).map_err(io_err("cannot read", path))?;
    Ok(format!("sha256:{}", hex::encode(hasher.finalize())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_write_resolve_reopen() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("layout");
        let layout = OciLayout::create(&dir).unwrap();
        let d = layout.write_blob_bytes(b"hello").unwrap();
        assert!(layout.has_blob(&d));
        assert_eq!(layout.read_blob_verified(&d).unwrap(), b"hello");

        let src = tmp.path().join("layer");
        fs::write(&src, b"layer bytes").unwrap();
        let ld = crate::registry::sha256_digest(b"layer bytes");
        layout.write_blob_file(&src, &ld).unwrap();
        layout.verify_blob(&ld).unwrap();

        let m1 = br#"{"schemaVersion":2}"#;
        let md = layout
            .add_manifest(m1, super::super::MEDIA_TYPE_OCI_MANIFEST, Some("v1"))
            .unwrap();
        let m2 = br#"{"schemaVersion":2, "x":1}"#;
        let md2 = layout
            .add_manifest(m2, super::super::MEDIA_TYPE_OCI_MANIFEST, Some("v1"))
            .unwrap();
        assert_ne!(md, md2);
        let reopened = OciLayout::open(&dir).unwrap();
        let desc = reopened.resolve("v1").unwrap();
        assert_eq!(desc.digest().to_string(), md2);
        assert_eq!(reopened.manifests().unwrap().len(), 1);
        assert!(reopened.resolve("v2").is_none());
    }

    #[test]
    fn an_entry_carries_extra_annotations_with_its_ref_name() {
        let tmp = tempfile::tempdir().unwrap();
        let layout = OciLayout::create(tmp.path()).unwrap();
        let extra = [(
            "org.opencontainers.image.created".to_string(),
            "2024-01-01T00:00:00Z".to_string(),
        )]
        .into_iter()
        .collect();
        layout
            .add_manifest_annotated(
                br#"{"schemaVersion":2}"#,
                super::super::MEDIA_TYPE_OCI_MANIFEST,
                Some("v1"),
                &extra,
            )
            .unwrap();
        let index: Value =
            serde_json::from_slice(&fs::read(tmp.path().join("index.json")).unwrap()).unwrap();
        let annotations = &index["manifests"][0]["annotations"];
        assert_eq!(annotations[ANNOTATION_REF_NAME], "v1");
        assert_eq!(
            annotations["org.opencontainers.image.created"],
            "2024-01-01T00:00:00Z"
        );
        assert!(OciLayout::open(tmp.path()).unwrap().resolve("v1").is_some());
    }

    #[test]
    fn wrong_digest_is_refused_and_nothing_is_left() {
        let tmp = tempfile::tempdir().unwrap();
        let layout = OciLayout::create(tmp.path()).unwrap();
        let src = tmp.path().join("f");
        fs::write(&src, b"abc").unwrap();
        let wrong = crate::registry::sha256_digest(b"abd");
        let e = layout.write_blob_file(&src, &wrong).unwrap_err();
        assert!(matches!(e, LayoutError::DigestMismatch { .. }), "{e}");
        assert!(!layout.has_blob(&wrong));
        let leftovers: Vec<_> = fs::read_dir(tmp.path().join("blobs/sha256"))
            .unwrap()
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");

        fs::write(layout.blob_path(&wrong), b"abc").unwrap();
        let e = layout.read_blob_verified(&wrong).unwrap_err();
        assert!(e.to_string().contains("digest mismatch"), "{e}");

        // A blob too large to be a manifest is not read into memory.
        let big = layout.blob_path(&wrong);
        fs::File::create(&big)
            .unwrap()
            .set_len(MAX_READ_WHOLE + 1)
            .unwrap();
        let e = layout.read_blob_verified(&wrong).unwrap_err();
        assert!(matches!(e, LayoutError::TooLarge { .. }), "{e}");
    }

    #[test]
    fn copy_fallback_verifies_and_cleans_up() {
        let tmp = tempfile::tempdir().unwrap();
        let layout = OciLayout::create(&tmp.path().join("l")).unwrap();
        let src = tmp.path().join("f");
        fs::write(&src, b"copied").unwrap();
        let d = crate::registry::sha256_digest(b"copied");
        layout.copy_blob(&src, &d).unwrap();
        layout.verify_blob(&d).unwrap();
        let wrong = crate::registry::sha256_digest(b"other");
        assert!(matches!(
            layout.copy_blob(&src, &wrong),
            Err(LayoutError::DigestMismatch { .. })
        ));
        assert_eq!(
            fs::read_dir(tmp.path().join("l/blobs/sha256"))
                .unwrap()
                .count(),
            1
        );
    }

    #[test]
    fn open_refuses_non_layouts() {
        let tmp = tempfile::tempdir().unwrap();
        let e = OciLayout::open(tmp.path()).unwrap_err();
        assert!(e.to_string().contains("is not an OCI image layout"), "{e}");
    }
}
