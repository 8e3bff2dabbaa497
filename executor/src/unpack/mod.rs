//! Applies layer tarballs to the build root: the layer semantics only (whiteouts, opaque
//! directories, ignored paths, digest verification while streaming, the bounds of
//! [`bounds`], which xattrs apply, stats). Hostile-input territory: reading the tar and every
//! write go through [`crate::rootfs`], which keeps each entry inside the root; this module must
//! not touch the filesystem any other way than reading what is there and asking the writer to
//! remove it. A failed unpack leaves `root` partly written: the caller must discard it.
//!
//! Semantics follow the OCI image-spec "applying changesets" rules (as containerd, kaniko and umoci
//! implement them): whiteouts delete lower-layer paths, opaque markers empty a directory of its
//! lower-layer contents, an entry of a different type replaces what is there, and directory mtimes
//! are set once every entry of the layer has been written.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::{Arc, Mutex, PoisonError};

use sha2::{Digest as _, Sha256};

use crate::rootfs::{
    self, Content, Dialect, DirTimes, Formats, ImpliedDirs, Kind, Meta, Protected, RootWriter,
    TarEntry, Target, WriteError, WriterOptions, XattrFailures,
};
use bounds::{Counted, Meter, Metered, Passed};
use kiln_oci::limits::human_size;

mod ahead;
pub mod bounds;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_bounds;
#[cfg(test)]
mod tests_devices;

pub use bounds::{BuildBudget, LayerBounds};

/// Prefix of a whiteout file: `dir/.wh.name` deletes `dir/name` from the lower layers.
pub const WHITEOUT_PREFIX: &str = ".wh.";
/// Marker making its directory opaque: the lower layers' contents of it are hidden.
pub const OPAQUE_MARKER: &str = ".wh..wh..opq";

/// How to apply a layer.
#[derive(Debug, Clone, Default)]
pub struct UnpackOptions {
    /// Absolute in-image paths whose subtrees are never touched (`/proc`, `/kiln`, mount points).
    pub ignore: Vec<PathBuf>,
    /// Give files the uid/gid recorded in the layer (needs root); otherwise they belong to the caller.
    pub same_owner: bool,
    /// `--max-layer-size` and `--max-layer-entries`.
    pub bounds: LayerBounds,
    /// `--max-build-size`: what every unpack of the build may add up to; a layer is charged
    /// with its decompressed size once it is applied.
    pub budget: Arc<BuildBudget>,
}

/// What an unpack did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UnpackStats {
    /// Entries applied, whiteouts included; ignored entries are not counted.
    pub entries: u64,
    /// Bytes of regular-file content written.
    pub bytes: u64,
    /// Decompressed bytes of the layer (its tar stream, or the file content written when
    /// sparse files make that larger), as charged to the build's budget.
    pub decompressed: u64,
    /// Extended attributes recorded in the layer and not applied (see [`rootfs::xattrs`]).
    pub xattrs_skipped: u64,
    /// Character and block devices (and hard links to them) not created because this process
    /// may not create device nodes; see [`WriteError::DeviceNotPermitted`].
    pub devices_skipped: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error("cannot open layer {layer}: {source}; check that the blob was downloaded completely")]
    Open {
        layer: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "cannot read layer {layer}: {source}; the blob is corrupt, truncated, or not a tar \
         (plain, gzip or zstd)"
    )]
    Read {
        layer: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "layer {layer} is unsafe: entry {entry:?} {reason}; refusing to unpack it \
         (the image may be malicious or broken)"
    )]
    Unsafe {
        layer: PathBuf,
        entry: String,
        reason: String,
    },
    #[error(
        "layer {layer} does not match its digest {expected} (its content hashes to {actual}); \
         the blob is corrupted or was replaced, and what was unpacked from it must not be used"
    )]
    Digest {
        layer: PathBuf,
        expected: String,
        actual: String,
    },
    #[error(
        "layer {layer} is larger than {} decompressed (the --max-layer-size bound): refused \
         at that size, before more was written; the image is broken or hostile (a compression \
         bomb), or raise --max-layer-size if it is genuine", human_size(*limit)
    )]
    LayerTooLarge { layer: PathBuf, limit: u64 },
    #[error(
        "layer {layer} takes the build past {} of unpacked layers (the --max-build-size \
         bound; the layers before it used {}): refused at that size; raise --max-build-size if \
         the build is genuine", human_size(*limit), human_size(*before)
    )]
    BuildTooLarge {
        layer: PathBuf,
        limit: u64,
        before: u64,
    },
    #[error(
        "layer {layer} has more than {limit} entries (the --max-layer-entries bound): refused \
         there; raise --max-layer-entries if the image is genuine"
    )]
    TooManyEntries { layer: PathBuf, limit: u64 },
    #[error(
        "no space left on device while unpacking layer {layer} into {} ({action} {path} for \
         entry {entry:?}): free space on that filesystem, or point --kiln-dir at a larger one",
        root.display()
    )]
    NoSpace {
        layer: PathBuf,
        root: PathBuf,
        entry: String,
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("layer {layer}: cannot apply entry {entry:?}: {action} {path}: {source}")]
    Apply {
        layer: PathBuf,
        entry: String,
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Apply the layer stored in `blob` (plain, gzip or zstd tar, detected by magic bytes) onto `root`.
///
/// The layer is streamed; memory does not grow with its size (only with its number of entries, for
/// the opaque-directory bookkeeping).
pub fn unpack_layer(
    blob: &Path,
    root: &Path,
    opts: &UnpackOptions,
) -> Result<UnpackStats, UnpackError> {
    let file = File::open(blob).map_err(|source| UnpackError::Open {
        layer: blob.to_path_buf(),
        source,
    })?;
    apply_stream(Box::new(file), false, blob, root, opts)
}

/// [`unpack_layer`] for a blob whose content has not been checked against its `digest`
/// (`sha256:<hex>`) yet: the bytes are hashed as the unpacker reads them, and the rest of the
/// file after the archive's end too, so the blob is read once. A blob that does not match is
/// [`UnpackError::Digest`] (also when it broke the unpack half-way: corruption is the better
/// explanation then); by that time entries may have been applied, so the caller must discard
/// `root` and never use what is in it.
pub fn unpack_layer_verified(
    blob: &Path,
    root: &Path,
    opts: &UnpackOptions,
    digest: &str,
) -> Result<UnpackStats, UnpackError> {
    let open_err = |source| UnpackError::Open {
        layer: blob.to_path_buf(),
        source,
    };
    let file = File::open(blob).map_err(open_err)?;
    // A duplicate descriptor shares the file offset: after the unpack it reads on from the
    // last byte the unpacker took, which is where the hashing left off.
    let rest = file.try_clone().map_err(open_err)?;
    let hasher = Arc::new(Mutex::new(Sha256::new()));
    let reader = HashingReader {
        inner: file,
        hasher: hasher.clone(),
    };
    let applied = apply_stream(Box::new(reader), true, blob, root, opts);
    let mut tail = HashingReader {
        inner: rest,
        hasher: hasher.clone(),
    };
    if let Err(source) = io::copy(&mut tail, &mut io::sink()) {
        // Without the whole content there is no digest to compare.
        applied?;
        return Err(UnpackError::Read {
            layer: blob.to_path_buf(),
            source,
        });
    }
    let hasher = std::mem::take(&mut *hasher.lock().unwrap_or_else(PoisonError::into_inner));
    let actual = format!("sha256:{}", hex::encode(hasher.finalize()));
    if actual != digest {
        return Err(UnpackError::Digest {
            layer: blob.to_path_buf(),
            expected: digest.to_string(),
            actual,
        });
    }
    applied
}

/// Hashes what passes through it into a hasher shared with whoever checks the digest (the
/// unpack's read-ahead thread, then the caller for the rest of the file).
struct HashingReader {
    inner: File,
    hasher: Arc<Mutex<Sha256>>,
}

impl Read for HashingReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .update(&buf[..n]);
        Ok(n)
    }
}

/// Unpack the layer `source` reads. The work is a pipeline: the blob is decompressed on a helper
/// thread while this one writes the entries, and a blob being hashed (`hashed`) is also read and
/// hashed on a thread of its own; each thread's bytes are handed on in a few bounded chunks. The
/// threads belong to a scope that ends only once they have stopped reading, so the blob's file
/// offset is where the last of them left it.
fn apply_stream(
    source: Box<dyn Read + Send>,
    hashed: bool,
    blob: &Path,
    root: &Path,
    opts: &UnpackOptions,
) -> Result<UnpackStats, UnpackError> {
    let meter = Meter::new(opts.bounds.size, opts.budget.clone());
    let applied = std::thread::scope(|scope| {
        let source: Box<dyn Read + Send> = if hashed {
            Box::new(ahead::spawn(scope, source))
        } else {
            source
        };
        let reader =
            rootfs::decompress(source, Formats::Layer).map_err(|source| UnpackError::Open {
                layer: blob.to_path_buf(),
                source,
            })?;
        let reader = ahead::spawn(scope, reader);
        // Bytes are counted as they leave the decompressor, before the tar reader sees them.
        let reader: Box<dyn Read> = Box::new(Metered::new(reader, meter.clone(), Counted::Stream));
        let mut unpacker = Unpacker::new(blob, root, opts, meter.clone());
        rootfs::for_each_entry(
            reader,
            |source| UnpackError::Read {
                layer: blob.to_path_buf(),
                source,
            },
            |entry| unpacker.apply(entry),
        )
        .and_then(|()| {
            let stats = unpacker.stats;
            unpacker
                .w
                .finish()
                .map_err(|e| write_err(blob, root, "", e))?;
            Ok(stats)
        })
    });
    // Whichever error a passed bound surfaced as (a read, a write, the tar reader's), the
    // bound is what the user must hear about.
    let mut stats = applied.map_err(|e| match meter.passed() {
        Some(Passed::LayerSize(limit)) => UnpackError::LayerTooLarge {
            layer: blob.to_path_buf(),
            limit,
        },
        Some(Passed::BuildSize { limit, before }) => UnpackError::BuildTooLarge {
            layer: blob.to_path_buf(),
            limit,
            before,
        },
        None => e,
    })?;
    meter.commit();
    stats.decompressed = meter.charge();
    if stats.devices_skipped > 0 {
        // containerd (archive/tar.go, skipFile) and so BuildKit rootless skip device nodes when
        // they run in a user namespace; Kiln goes by the kernel's answer instead, which also
        // covers a Pod that drops CAP_MKNOD without a user namespace.
        tracing::info!(
            layer = %blob.display(),
            skipped = stats.devices_skipped,
            "{} device node(s) of the layer not created: this process may not create device \
             nodes (no CAP_MKNOD, or a user namespace), so they are skipped, as containerd and \
             BuildKit do in a user namespace; the rest of the layer is applied",
            stats.devices_skipped
        );
    }
    if stats.xattrs_skipped > 0 {
        tracing::info!(
            layer = %blob.display(),
            skipped = stats.xattrs_skipped,
            "{} extended attribute(s) of the layer not applied: only user.* and \
             security.capability are (each is logged at debug)",
            stats.xattrs_skipped
        );
    }
    tracing::debug!(
        layer = %blob.display(),
        entries = stats.entries,
        bytes = stats.bytes,
        decompressed = stats.decompressed,
        "layer unpacked"
    );
    Ok(stats)
}

/// A writer failure as the unpack error that names the layer and the entry.
fn write_err(layer: &Path, root: &Path, entry: &str, e: WriteError) -> UnpackError {
    let layer = layer.to_path_buf();
    let entry = entry.to_string();
    match e {
        WriteError::Io {
            action,
            path,
            source,
            ..
        } if is_no_space(&source) => UnpackError::NoSpace {
            layer,
            root: root.to_path_buf(),
            entry,
            action,
            path,
            source,
        },
        WriteError::Io {
            action,
            path,
            source,
            ..
        } => UnpackError::Apply {
            layer,
            entry,
            action,
            path,
            source,
        },
        WriteError::DeviceNotPermitted { path, source, .. } => UnpackError::Apply {
            layer,
            entry,
            action: "create device node",
            path,
            source,
        },
        WriteError::Content { source, .. } => UnpackError::Read { layer, source },
        WriteError::NotADirectory { rel } => UnpackError::Apply {
            layer,
            entry,
            action: "create parent directories",
            path: root.join(rel),
            source: io::Error::from_raw_os_error(libc::ENOTDIR),
        },
        WriteError::Outside { .. } => UnpackError::Unsafe {
            layer,
            entry,
            reason: "resolves outside the root".to_string(),
        },
    }
}

/// Disk full, or the quota of the filesystem reached.
fn is_no_space(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
}

/// Applies one layer's entries with the changeset rules; every write goes through the writer.
struct Unpacker<'a> {
    layer: &'a Path,
    root: &'a Path,
    w: RootWriter<'a>,
    same_owner: bool,
    /// Host paths written by this layer and their ancestors, which an opaque marker or whiteout
    /// must not delete.
    seen: HashSet<PathBuf>,
    /// Host paths of the device nodes this layer could not create, so that hard links to them
    /// are skipped too.
    skipped_devices: HashSet<PathBuf>,
    stats: UnpackStats,
    meter: Rc<Meter>,
    max_entries: kiln_oci::limits::Limit,
    /// Entries read so far, applied or not.
    read: u64,
}

impl<'a> Unpacker<'a> {
    fn new(layer: &'a Path, root: &'a Path, opts: &UnpackOptions, meter: Rc<Meter>) -> Self {
        let writer_opts = WriterOptions {
            implied_dirs: ImpliedDirs::Umask,
            xattr_failures: XattrFailures::WarnUnsupported,
            dir_times: DirTimes::LastWins,
            record: false,
        };
        Unpacker {
            layer,
            root,
            w: RootWriter::new(root, Protected::new(root, &opts.ignore), writer_opts),
            same_owner: opts.same_owner,
            seen: HashSet::new(),
            skipped_devices: HashSet::new(),
            stats: UnpackStats::default(),
            meter,
            max_entries: opts.bounds.entries,
            read: 0,
        }
    }

    fn unsafe_entry(&self, entry: &str, reason: impl Into<String>) -> UnpackError {
        UnpackError::Unsafe {
            layer: self.layer.to_path_buf(),
            entry: entry.to_string(),
            reason: reason.into(),
        }
    }

    fn apply_err(
        &self,
        entry: &str,
        action: &'static str,
        path: &Path,
        source: io::Error,
    ) -> UnpackError {
        UnpackError::Apply {
            layer: self.layer.to_path_buf(),
            entry: entry.to_string(),
            action,
            path: path.to_path_buf(),
            source,
        }
    }

    fn write_err(&self, entry: &str, e: WriteError) -> UnpackError {
        write_err(self.layer, self.root, entry, e)
    }

    fn read_err(&self, source: io::Error) -> UnpackError {
        UnpackError::Read {
            layer: self.layer.to_path_buf(),
            source,
        }
    }

    /// The entry's metadata as the layer records it, less the xattrs that are not applied.
    fn meta(&mut self, entry: &mut TarEntry<'_>, name: &str) -> Result<Meta, UnpackError> {
        let mut recorded = entry
            .recorded(Dialect::Layer, self.same_owner)
            .map_err(|e| self.read_err(e))?;
        self.stats.xattrs_skipped += rootfs::xattrs::retain_applied(&mut recorded.xattrs, name);
        Ok(Meta {
            mode: recorded.mode,
            owner: recorded.owner,
            atime: recorded.mtime,
            mtime: recorded.mtime,
            xattrs: recorded.xattrs,
        })
    }

    fn apply(&mut self, entry: &mut TarEntry<'_>) -> Result<(), UnpackError> {
        let kind = entry.kind();
        if kind == Kind::Extension {
            return Ok(());
        }
        self.read += 1;
        if let Some(limit) = self.max_entries.get().filter(|max| self.read > *max) {
            return Err(UnpackError::TooManyEntries {
                layer: self.layer.to_path_buf(),
                limit,
            });
        }
        let name = entry.name();
        let rel = entry
            .clean_path()
            .map_err(|r| self.unsafe_entry(&name, r))?;

        let Some(file_name) = rel.file_name() else {
            return self.apply_root(entry, &name, kind);
        };
        if let Some(target) = file_name
            .as_bytes()
            .strip_prefix(WHITEOUT_PREFIX.as_bytes())
        {
            let parent = self
                .w
                .resolve_dir(rel.parent().unwrap_or(Path::new("")))
                .map_err(|e| self.write_err(&name, e))?;
            if self.w.protected().contains(&parent) {
                return Ok(());
            }
            if file_name == OPAQUE_MARKER {
                self.make_opaque(&name, &parent)?;
            } else {
                if target.is_empty() || target == b"." || target == b".." {
                    return Err(self.unsafe_entry(&name, "is a whiteout without a valid name"));
                }
                self.whiteout(&name, &parent.join(OsStr::from_bytes(target)))?;
            }
            self.stats.entries += 1;
            return Ok(());
        }

        let mut t = self.w.locate(&rel).map_err(|e| self.write_err(&name, e))?;
        let host = t.host().to_path_buf();
        if self.w.protected().contains(&host) {
            tracing::debug!(entry = %name, "skipping entry in an ignored path");
            return Ok(());
        }
        if kind != Kind::Dir && self.w.protected().holds(&host) {
            tracing::warn!(
                entry = %name,
                "not replacing {} with a non-directory: it holds an ignored path",
                host.display()
            );
            return Ok(());
        }
        self.w
            .prepare(&mut t)
            .map_err(|e| self.write_err(&name, e))?;
        let meta = self.meta(entry, &name)?;

        let written = match kind {
            Kind::File => {
                // File content counts as it is read for writing: a sparse entry's holes are
                // filled by the tar reader and never pass the decompressed stream.
                let mut content = Metered::new(&mut *entry, self.meter.clone(), Counted::Content);
                self.w
                    .file(&mut t, Content::Stream(&mut content), &meta)
                    .map(|bytes| self.stats.bytes += bytes)
            }
            Kind::Dir => self.w.dir(&mut t, &meta),
            Kind::Symlink => {
                let target = entry
                    .link_bytes()
                    .ok_or_else(|| self.unsafe_entry(&name, "is a symlink without a target"))?;
                self.w.symlink(&mut t, OsStr::from_bytes(&target), &meta)
            }
            Kind::Hardlink => {
                let target = entry
                    .link_bytes()
                    .ok_or_else(|| self.unsafe_entry(&name, "is a hardlink without a target"))?
                    .into_owned();
                return self.hardlink(&name, &mut t, &target).map(|()| {
                    self.mark_seen(host);
                    self.stats.entries += 1;
                });
            }
            other => match other.node() {
                Some(node) => {
                    let rdev = entry.device(Dialect::Layer).map_err(|e| self.read_err(e))?;
                    match self.w.node(&mut t, node, rdev, &meta) {
                        Err(WriteError::DeviceNotPermitted { .. }) => {
                            tracing::debug!(entry = %name, "device node not created: not permitted");
                            self.stats.devices_skipped += 1;
                            self.skipped_devices.insert(host);
                            return Ok(());
                        }
                        other => other,
                    }
                }
                None => {
                    tracing::warn!(entry = %name, kind = ?other, "skipping tar entry of unsupported type");
                    return Ok(());
                }
            },
        };
        written.map_err(|e| self.write_err(&name, e))?;
        self.mark_seen(host);
        self.stats.entries += 1;
        Ok(())
    }

    /// Record a path this layer wrote, with its ancestors: an opaque marker or whiteout met later
    /// in the layer must not delete the directories that lead to it either.
    fn mark_seen(&mut self, host: PathBuf) {
        let mut path = Some(host.as_path());
        while let Some(p) = path {
            if p == self.root || !self.seen.insert(p.to_path_buf()) {
                break;
            }
            path = p.parent();
        }
    }

    /// The entry names the root itself (`./`): only a directory makes sense, and it only updates
    /// the root's metadata.
    fn apply_root(
        &mut self,
        entry: &mut TarEntry<'_>,
        name: &str,
        kind: Kind,
    ) -> Result<(), UnpackError> {
        if kind != Kind::Dir {
            return Err(self.unsafe_entry(
                name,
                "would replace the root directory with a non-directory",
            ));
        }
        let meta = self.meta(entry, name)?;
        let mut root = self
            .w
            .locate(Path::new(""))
            .map_err(|e| self.write_err(name, e))?;
        self.w
            .dir(&mut root, &meta)
            .map_err(|e| self.write_err(name, e))?;
        self.stats.entries += 1;
        Ok(())
    }

    fn whiteout(&self, name: &str, target: &Path) -> Result<(), UnpackError> {
        // A whiteout only deletes lower layers' files, never what this layer wrote.
        if self.seen.contains(target) {
            return Ok(());
        }
        self.w
            .remove(target)
            .map_err(|e| self.apply_err(name, "remove whited-out path", target, e))
    }

    fn make_opaque(&self, name: &str, dir: &Path) -> Result<(), UnpackError> {
        match fs::symlink_metadata(dir) {
            Ok(m) if m.is_dir() => {}
            _ => return Ok(()),
        }
        self.clear_unseen(dir)
            .map_err(|e| self.apply_err(name, "empty opaque directory", dir, e))
    }

    /// Delete everything under `dir` that this layer did not write. A directory this layer wrote
    /// is kept but cleared the same way: an opaque directory hides all of the lower layers.
    fn clear_unseen(&self, dir: &Path) -> io::Result<()> {
        for child in fs::read_dir(dir)? {
            let path = child?.path();
            if self.seen.contains(&path) {
                if fs::symlink_metadata(&path)?.is_dir() {
                    self.clear_unseen(&path)?;
                }
            } else {
                self.w.remove(&path)?;
            }
        }
        Ok(())
    }

    /// A hardlink entry: the target is named from the root and must resolve inside it.
    fn hardlink(
        &mut self,
        name: &str,
        t: &mut Target,
        raw_target: &[u8],
    ) -> Result<(), UnpackError> {
        let target_rel = rootfs::clean_entry_path(raw_target)
            .map_err(|r| self.unsafe_entry(name, format!("is a hardlink whose target {r}")))?;
        if target_rel.file_name().is_none() {
            return Err(self.unsafe_entry(name, "is a hardlink to the root directory"));
        }
        let target = self
            .w
            .link_target(&target_rel)
            .map_err(|e| self.write_err(name, e))?;
        if self.w.protected().contains(&target) {
            tracing::warn!(entry = %name, "skipping hardlink to an ignored path");
            return Ok(());
        }
        if target == t.host() {
            return Ok(());
        }
        if self.skipped_devices.contains(&target) {
            self.stats.devices_skipped += 1;
            return Ok(());
        }
        match fs::symlink_metadata(&target) {
            Ok(m) if m.is_dir() => {
                return Err(self.unsafe_entry(name, "is a hardlink to a directory"));
            }
            Ok(_) => {}
            Err(e) => {
                return Err(self.apply_err(name, "find hardlink target", &target, e));
            }
        }
        self.w
            .hardlink(t, &target)
            .map_err(|e| self.write_err(name, e))
    }
}
