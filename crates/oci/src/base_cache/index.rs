//! The cache's `index.json`: its entries with kiln's annotations, read by every lookup and
//! replaced under the layout's directory lock by a store.

use std::fs::{self, File};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::path::Path;

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{json, Value};

use super::{
    BaseImageCache, CacheError, ANNOTATION_INDEX_DIGEST, ANNOTATION_PLATFORM, ANNOTATION_WARMED_AT,
};
use crate::registry::layout::ANNOTATION_REF_NAME;
use crate::registry::{LayoutError, Platform, MEDIA_TYPE_DOCKER_MANIFEST, MEDIA_TYPE_OCI_MANIFEST};

const INDEX_FILE: &str = "index.json";

impl BaseImageCache {
    /// Every entry of `index.json` (entries written by other tools included).
    pub(super) fn entries(&self) -> Result<Vec<Entry>, CacheError> {
        if !self.is_layout {
            return Ok(Vec::new());
        }
        let index = self.read_index()?;
        Ok(index
            .get("manifests")
            .and_then(Value::as_array)
            .map(|list| list.iter().filter_map(Entry::from_json).collect())
            .unwrap_or_default())
    }

    fn read_index(&self) -> Result<Value, CacheError> {
        let path = self.layout.dir().join(INDEX_FILE);
        let text = fs::read(&path).map_err(|source| CacheError::Io {
            action: "cannot read",
            path: path.clone(),
            source,
        })?;
        serde_json::from_slice(&text).map_err(|e| {
            CacheError::Layout(LayoutError::InvalidIndex {
                path,
                detail: e.to_string(),
            })
        })
    }

    /// Adds `entry` to `index.json`, replacing the entry for the same reference and
    /// platform. `OciLayout::add_manifest` knows only the ref-name annotation, so the index
    /// is updated here under the same protocol: an exclusive `flock` on the layout
    /// directory, the new index written to a temporary file and renamed over the old one.
    pub(super) fn record(&self, entry: &Entry) -> Result<(), CacheError> {
        let dir = self.layout.dir();
        let _lock = DirLock::acquire(dir)?;
        let mut index = self.read_index()?;
        let path = dir.join(INDEX_FILE);
        let manifests = index
            .get_mut("manifests")
            .and_then(Value::as_array_mut)
            .ok_or_else(|| {
                CacheError::Layout(LayoutError::InvalidIndex {
                    path: path.clone(),
                    detail: "no manifests array".to_string(),
                })
            })?;
        manifests.retain(|m| {
            let Some(old) = Entry::from_json(m) else {
                return true;
            };
            !(old.ref_name == entry.ref_name && old.platform_key() == entry.platform_key())
        });
        manifests.push(entry.to_json());
        let body = serde_json::to_vec(&index).map_err(|e| {
            CacheError::Layout(LayoutError::InvalidIndex {
                path: path.clone(),
                detail: e.to_string(),
            })
        })?;
        write_atomic(dir, &path, &body)
    }
}

/// An `index.json` entry as the cache sees it.
#[derive(Debug, Clone)]
pub(super) struct Entry {
    pub(super) media_type: String,
    pub(super) digest: String,
    pub(super) size: u64,
    pub(super) ref_name: Option<String>,
    pub(super) platform: Option<Platform>,
    pub(super) warmed_at: Option<DateTime<Utc>>,
    pub(super) index_digest: Option<String>,
}

impl Entry {
    fn from_json(m: &Value) -> Option<Entry> {
        let media_type = m.get("mediaType")?.as_str()?.to_string();
        if media_type != MEDIA_TYPE_OCI_MANIFEST && media_type != MEDIA_TYPE_DOCKER_MANIFEST {
            return None;
        }
        let ann = |k: &str| {
            m.get("annotations")
                .and_then(|a| a.get(k))
                .and_then(Value::as_str)
                .map(str::to_string)
        };
        let platform = ann(ANNOTATION_PLATFORM)
            .and_then(|p| p.parse::<Platform>().ok())
            .or_else(|| {
                let p = m.get("platform")?;
                Some(Platform {
                    os: p.get("os")?.as_str()?.to_string(),
                    architecture: p.get("architecture")?.as_str()?.to_string(),
                    variant: p.get("variant").and_then(Value::as_str).map(str::to_string),
                })
            });
        Some(Entry {
            media_type,
            digest: m.get("digest")?.as_str()?.to_string(),
            size: m.get("size").and_then(Value::as_u64).unwrap_or(0),
            ref_name: ann(ANNOTATION_REF_NAME),
            platform,
            warmed_at: ann(ANNOTATION_WARMED_AT)
                .and_then(|t| DateTime::parse_from_rfc3339(&t).ok())
                .map(|t| t.with_timezone(&Utc)),
            index_digest: ann(ANNOTATION_INDEX_DIGEST),
        })
    }

    fn to_json(&self) -> Value {
        let mut annotations = serde_json::Map::new();
        if let Some(r) = &self.ref_name {
            annotations.insert(ANNOTATION_REF_NAME.into(), json!(r));
        }
        if let Some(p) = &self.platform {
            annotations.insert(ANNOTATION_PLATFORM.into(), json!(p.to_string()));
        }
        if let Some(t) = &self.warmed_at {
            annotations.insert(
                ANNOTATION_WARMED_AT.into(),
                json!(t.to_rfc3339_opts(SecondsFormat::Secs, true)),
            );
        }
        if let Some(d) = &self.index_digest {
            annotations.insert(ANNOTATION_INDEX_DIGEST.into(), json!(d));
        }
        let mut v = json!({
            "mediaType": self.media_type,
            "digest": self.digest,
            "size": self.size,
            "annotations": annotations,
        });
        if let Some(p) = &self.platform {
            let mut pj = json!({ "os": p.os, "architecture": p.architecture });
            if let Some(var) = &p.variant {
                pj["variant"] = json!(var);
            }
            v["platform"] = pj;
        }
        v
    }

    fn platform_key(&self) -> Option<String> {
        self.platform.as_ref().map(Platform::to_string)
    }
}

fn write_atomic(dir: &Path, dest: &Path, bytes: &[u8]) -> Result<(), CacheError> {
    let io = |action: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |source| CacheError::Io {
            action,
            path,
            source,
        }
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(".tmp-")
        .tempfile_in(dir)
        .map_err(io("cannot create a temporary file in", dir))?;
    tmp.write_all(bytes)
        .map_err(io("cannot write", tmp.path()))?;
    tmp.as_file().sync_all().map_err(io("cannot sync", dir))?;
    let perm = std::os::unix::fs::PermissionsExt::from_mode(0o644);
    tmp.as_file()
        .set_permissions(perm)
        .map_err(io("cannot set permissions in", dir))?;
    tmp.persist(dest)
        .map_err(|e| io("cannot rename into", dest)(e.error))?;
    Ok(())
}

/// An exclusive `flock` on the layout directory, the lock `OciLayout` takes for its own
/// index updates; released when dropped.
struct DirLock {
    _file: File,
}

impl DirLock {
    fn acquire(dir: &Path) -> Result<DirLock, CacheError> {
        let f = File::open(dir).map_err(|source| CacheError::Io {
            action: "cannot open",
            path: dir.to_path_buf(),
            source,
        })?;
        // SAFETY: flock on a descriptor owned by `f`, which lives as long as the lock.
        let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) };
        if rc != 0 {
            return Err(CacheError::Io {
                action: "cannot lock",
                path: dir.to_path_buf(),
                source: io::Error::last_os_error(),
            });
        }
        Ok(DirLock { _file: f })
    }
}
