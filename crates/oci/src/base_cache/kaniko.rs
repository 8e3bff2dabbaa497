//! Reading the entries kaniko's warmer (v1.24) writes, so that a volume warmed by kaniko still
//! serves kiln-executor. Read only: it never writes to the cache directory, and never trusts a
//! name in it without hashing what it names.
//!
//! kaniko's `warmToFile` stores one image as two files named by the digest of its platform
//! manifest as the registry served it (`img.Digest()` of the resolved image):
//!
//! - `<dir>/sha256:<hex>`: a docker-archive written by go-containerregistry's `tarball.Write`:
//!   the config as `sha256:<hex>`, each distinct layer's compressed blob as `<hex>.tar.gz`
//!   (whatever its compression), then `manifest.json`;
//! - `<dir>/sha256:<hex>.json`: the manifest, byte for byte as the registry served it.
//!
//! kaniko keeps no tag: its executor resolves a tag at the registry (one manifest request, no
//! blob) and opens the entry of that digest, which the caller does here too. An entry is used
//! only when the whole chain checks out: the manifest file hashes to its name, the config and
//! every layer inside the tarball hash to the digests that manifest gives. The tarball's own
//! `manifest.json` is not read: the registry's manifest says what the image is. The layer blobs
//! are copied out of the tarball into the caller's directory, hashed on the way, since a build
//! reads layers as files; kaniko's `manifest.json`, tags and file times change nothing.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use oci_spec::image::{ImageConfiguration, ImageManifest};
use sha2::{Digest as _, Sha256};

use super::{BaseImageCache, CacheError, CachedImage, CachedLayer};
use crate::registry::reference::sha256_hex;
use crate::registry::{
    parse_reference, sha256_digest, sniff_media_type, Platform, MEDIA_TYPE_DOCKER_MANIFEST,
    MEDIA_TYPE_OCI_MANIFEST,
};

/// The largest manifest or config read from a kaniko entry (containerd's manifest bound).
const MAX_JSON: u64 = 4 << 20;
/// At most this many entries are read from a kaniko tarball's headers: a docker-archive of
/// one image has one per layer, its config and `manifest.json` (images have at most 127
/// layers in practice, and a registry rarely serves more than a few hundred).
const MAX_TAR_ENTRIES: usize = 4096;

/// Where one file of the tarball lies: its content starts at `offset` and has `size` bytes.
#[derive(Debug, Clone, Copy)]
struct Span {
    offset: u64,
    size: u64,
}

impl BaseImageCache {
    /// Whether the cache directory holds an entry of kaniko's warmer (a file named
    /// `sha256:<64 hex digits>`). Stops at the first one.
    pub fn has_kaniko_entries(&self) -> bool {
        let Ok(dir) = fs::read_dir(self.dir()) else {
            return false;
        };
        dir.flatten().any(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| sha256_hex(n).is_some())
                && e.file_type().is_ok_and(|t| t.is_file())
        })
    }

    /// Whether kaniko's warmer stored an entry named `digest` (tarball and manifest).
    pub fn has_kaniko_entry(&self, digest: &str) -> bool {
        self.kaniko_paths(digest)
            .is_some_and(|(tarball, manifest)| tarball.is_file() && manifest.is_file())
    }

    fn kaniko_paths(&self, digest: &str) -> Option<(PathBuf, PathBuf)> {
        sha256_hex(digest)?;
        let tarball = self.dir().join(digest);
        let manifest = self.dir().join(format!("{digest}.json"));
        Some((tarball, manifest))
    }

    /// [`BaseImageCache::kaniko_image`] for a build: a damaged, lying or unreadable entry is
    /// logged as a warning naming the reason and gives `None`, so the build pulls the image
    /// from the registry instead.
    pub fn kaniko_find_or_pull(
        &self,
        digest: &str,
        reference: &str,
        platform: &Platform,
        blob_dir: &Path,
    ) -> Option<CachedImage> {
        match self.kaniko_image(digest, reference, platform, blob_dir) {
            Ok(Some(image)) => {
                tracing::info!(reference, digest, cache_dir = %self.dir().display(), "base image read from kaniko's warmed cache");
                Some(image)
            }
            Ok(None) => {
                tracing::debug!(reference, digest, cache_dir = %self.dir().display(), "base image not in kaniko's warmed cache");
                None
            }
            Err(e) => {
                tracing::warn!(reference, digest, error = %e, "cannot use kaniko's cache entry; pulling the image from the registry");
                None
            }
        }
    }

    /// The image kaniko's warmer stored under `digest` (a platform manifest digest, as
    /// [`crate::registry::Registry::resolve_digest`] gives it), every blob verified, its layer
    /// blobs copied into `blob_dir` as `sha256-<hex>` (a blob already there is kept: the caller
    /// writes only verified blobs there). `None` when there is no such entry. An entry whose
    /// manifest file is missing or whose content does not hash to what names it is an error;
    /// nothing of it is returned.
    pub fn kaniko_image(
        &self,
        digest: &str,
        reference: &str,
        platform: &Platform,
        blob_dir: &Path,
    ) -> Result<Option<CachedImage>, CacheError> {
        let Some((tarball_path, manifest_path)) = self.kaniko_paths(digest) else {
            return Ok(None);
        };
        let mut tarball = match File::open(&tarball_path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(io_error("cannot open", &tarball_path, source)),
        };
        let meta = tarball
            .metadata()
            .map_err(|e| io_error("cannot inspect", &tarball_path, e))?;
        if !meta.is_file() {
            return Ok(None);
        }
        let manifest_bytes = read_manifest_file(&manifest_path, digest)?;
        let manifest = parse_manifest(&manifest_bytes, digest)?;
        let spans = index_tarball(&mut tarball, &tarball_path)?;

        let config_digest = manifest.config().digest().to_string();
        let config_bytes = read_json_member(
            &mut tarball,
            &tarball_path,
            &spans,
            &config_digest,
            manifest.config().size(),
        )?;
        let config: ImageConfiguration =
            serde_json::from_slice(&config_bytes).map_err(|e| CacheError::Invalid {
                what: "image config of kaniko's cache entry",
                digest: config_digest.clone(),
                detail: e.to_string(),
            })?;
        let diff_ids = config.rootfs().diff_ids();
        if diff_ids.len() != manifest.layers().len() {
            return Err(CacheError::Invalid {
                what: "image config of kaniko's cache entry",
                digest: config_digest.clone(),
                detail: format!(
                    "{} diff_ids for {} layers",
                    diff_ids.len(),
                    manifest.layers().len()
                ),
            });
        }

        fs::create_dir_all(blob_dir).map_err(|e| io_error("cannot create", blob_dir, e))?;
        let mut layers = Vec::with_capacity(manifest.layers().len());
        for (l, diff_id) in manifest.layers().iter().zip(diff_ids) {
            let layer_digest = l.digest().to_string();
            let hex = sha256_hex(&layer_digest).ok_or_else(|| CacheError::Invalid {
                what: "manifest of kaniko's cache entry",
                digest: digest.to_string(),
                detail: format!("layer digest {layer_digest:?} is not sha256"),
            })?;
            let span = member(&spans, &format!("{hex}.tar.gz"), &tarball_path, l.size())?;
            let dest = blob_dir.join(format!("sha256-{hex}"));
            if !dest.is_file() {
                copy_verified(&mut tarball, &tarball_path, span, &layer_digest, &dest)?;
            }
            layers.push(CachedLayer {
                digest: layer_digest,
                diff_id: diff_id.clone(),
                size: l.size(),
                media_type: l.media_type().to_string(),
                path: dest,
            });
        }
        let normalized = parse_reference(reference)?.whole();
        let warmed_at = meta.modified().ok().map(DateTime::<Utc>::from);
        Ok(Some(CachedImage {
            reference: normalized,
            platform: platform.clone(),
            manifest_digest: digest.to_string(),
            manifest_media_type: sniff_media_type(&manifest_bytes),
            manifest_bytes,
            manifest,
            index_digest: None,
            config_digest,
            config_bytes,
            config,
            layers,
            warmed_at,
            layers_verified: true,
        }))
    }
}

fn io_error(action: &'static str, path: &Path, source: io::Error) -> CacheError {
    CacheError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// `<digest>.json`, bounded, hashing to `digest`.
fn read_manifest_file(path: &Path, digest: &str) -> Result<Vec<u8>, CacheError> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(CacheError::Missing {
                digest: digest.to_string(),
                path: path.to_path_buf(),
            })
        }
        Err(source) => return Err(io_error("cannot open", path, source)),
    };
    let mut bytes = Vec::new();
    file.take(MAX_JSON + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| io_error("cannot read", path, e))?;
    if bytes.len() as u64 > MAX_JSON {
        return Err(CacheError::Corrupt {
            digest: digest.to_string(),
            path: path.to_path_buf(),
            detail: format!("it is larger than {MAX_JSON} bytes"),
        });
    }
    let actual = sha256_digest(&bytes);
    if actual != digest {
        return Err(CacheError::Corrupt {
            digest: digest.to_string(),
            path: path.to_path_buf(),
            detail: format!("its content hashes to {actual}"),
        });
    }
    Ok(bytes)
}

/// The manifest of an entry: an image manifest (an index is not an entry kaniko writes).
fn parse_manifest(bytes: &[u8], digest: &str) -> Result<ImageManifest, CacheError> {
    let invalid = |detail: String| CacheError::Invalid {
        what: "manifest of kaniko's cache entry",
        digest: digest.to_string(),
        detail,
    };
    let media_type = sniff_media_type(bytes);
    if media_type != MEDIA_TYPE_OCI_MANIFEST && media_type != MEDIA_TYPE_DOCKER_MANIFEST {
        return Err(invalid(format!(
            "it is a {media_type}, not an image manifest"
        )));
    }
    serde_json::from_slice(bytes).map_err(|e| invalid(e.to_string()))
}

/// Where each regular file of the tarball lies, by name. Headers only: contents are skipped
/// by seeking. A name that appears twice, a non-regular entry under a name the image needs,
/// and more than [`MAX_TAR_ENTRIES`] entries are errors (see [`member`]).
fn index_tarball(
    file: &mut File,
    path: &Path,
) -> Result<HashMap<String, Option<Span>>, CacheError> {
    let corrupt = |detail: String| CacheError::Corrupt {
        digest: path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        path: path.to_path_buf(),
        detail,
    };
    file.seek(SeekFrom::Start(0))
        .map_err(|e| io_error("cannot read", path, e))?;
    let mut archive = tar::Archive::new(&mut *file);
    let entries = archive
        .entries_with_seek()
        .map_err(|e| corrupt(format!("not a tar archive: {e}")))?;
    // `None` marks a name that cannot be used: twice in the archive, or not a regular file.
    let mut spans: HashMap<String, Option<Span>> = HashMap::new();
    for (count, entry) in entries.enumerate() {
        if count >= MAX_TAR_ENTRIES {
            return Err(corrupt(format!(
                "it has more than {MAX_TAR_ENTRIES} entries"
            )));
        }
        let entry = entry.map_err(|e| corrupt(format!("unreadable tar entry: {e}")))?;
        let Ok(name) = std::str::from_utf8(&entry.path_bytes()).map(str::to_string) else {
            continue;
        };
        let regular = entry.header().entry_type().is_file();
        let span = Span {
            offset: entry.raw_file_position(),
            size: entry.size(),
        };
        match spans.entry(name) {
            std::collections::hash_map::Entry::Occupied(mut o) => {
                o.insert(None);
            }
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(regular.then_some(span));
            }
        }
    }
    Ok(spans)
}

/// The file `name` of the tarball, which must be there once, regular, with `size` bytes.
fn member(
    spans: &HashMap<String, Option<Span>>,
    name: &str,
    tarball: &Path,
    size: u64,
) -> Result<Span, CacheError> {
    let missing = |detail: String| CacheError::Invalid {
        what: "tarball of kaniko's cache entry",
        digest: tarball
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        detail,
    };
    match spans.get(name) {
        None => Err(missing(format!("it has no {name}"))),
        Some(None) => Err(missing(format!("{name} is not one regular file in it"))),
        Some(Some(span)) if span.size != size => Err(missing(format!(
            "{name} has {} bytes, the manifest says {size}",
            span.size
        ))),
        Some(Some(span)) => Ok(*span),
    }
}

/// Reads the config `digest` (named so in the tarball) whole, bounded, hashing to `digest`.
fn read_json_member(
    file: &mut File,
    path: &Path,
    spans: &HashMap<String, Option<Span>>,
    digest: &str,
    size: u64,
) -> Result<Vec<u8>, CacheError> {
    if sha256_hex(digest).is_none() {
        return Err(CacheError::Invalid {
            what: "manifest of kaniko's cache entry",
            digest: digest.to_string(),
            detail: "the config digest is not sha256".to_string(),
        });
    }
    if size > MAX_JSON {
        return Err(CacheError::Invalid {
            what: "image config of kaniko's cache entry",
            digest: digest.to_string(),
            detail: format!("its manifest gives {size} bytes, more than {MAX_JSON}"),
        });
    }
    let span = member(spans, digest, path, size)?;
    file.seek(SeekFrom::Start(span.offset))
        .map_err(|e| io_error("cannot read", path, e))?;
    let mut bytes = Vec::with_capacity(span.size as usize);
    (&mut *file)
        .take(span.size)
        .read_to_end(&mut bytes)
        .map_err(|e| io_error("cannot read", path, e))?;
    let actual = sha256_digest(&bytes);
    if bytes.len() as u64 != span.size || actual != digest {
        return Err(CacheError::Corrupt {
            digest: digest.to_string(),
            path: path.to_path_buf(),
            detail: format!("the config in it hashes to {actual}"),
        });
    }
    Ok(bytes)
}

/// Copies `span` of the tarball to `dest` through a temporary file beside it, hashing on the
/// way; renamed into place only when it hashes to `digest`.
fn copy_verified(
    file: &mut File,
    path: &Path,
    span: Span,
    digest: &str,
    dest: &Path,
) -> Result<(), CacheError> {
    let dir = dest.parent().unwrap_or(Path::new("."));
    file.seek(SeekFrom::Start(span.offset))
        .map_err(|e| io_error("cannot read", path, e))?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".kaniko-layer-")
        .tempfile_in(dir)
        .map_err(|e| io_error("cannot create a temporary file in", dir, e))?;
    let mut hasher = Sha256::new();
    let mut reader = (&mut *file).take(span.size);
    let mut buf = vec![0u8; 1 << 20];
    let mut copied = 0u64;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io_error("cannot read", path, e)),
        };
        hasher.update(&buf[..n]);
        tmp.write_all(&buf[..n])
            .map_err(|e| io_error("cannot write", tmp.path(), e))?;
        copied += n as u64;
    }
    let actual = format!("sha256:{}", hex::encode(hasher.finalize()));
    if copied != span.size || actual != digest {
        return Err(CacheError::Corrupt {
            digest: digest.to_string(),
            path: path.to_path_buf(),
            detail: format!("the layer in it hashes to {actual} ({copied} bytes)"),
        });
    }
    tmp.persist(dest)
        .map_err(|e| io_error("cannot rename into", dest, e.error))?;
    Ok(())
}
