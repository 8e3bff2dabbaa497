//! Unpacks layer tarballs into the build root. Hostile-input territory: no entry may write outside
//! the root, and nothing here ever follows a symlink out of it or touches an ignored subtree.
//!
//! Semantics follow the OCI image-spec "applying changesets" rules (as containerd, kaniko and umoci
//! implement them): whiteouts delete lower-layer paths, opaque markers empty a directory of its
//! lower-layer contents, an entry of a different type replaces what is there, and directory mtimes
//! are set once every entry of the layer has been written.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::rc::Rc;

use filetime::FileTime;
use sha2::{Digest as _, Sha256};
use tar::EntryType;

use crate::fsutil::resolve_in_root;

#[cfg(test)]
mod tests;

/// Prefix of a whiteout file: `dir/.wh.name` deletes `dir/name` from the lower layers.
pub const WHITEOUT_PREFIX: &str = ".wh.";
/// Marker making its directory opaque: the lower layers' contents of it are hidden.
pub const OPAQUE_MARKER: &str = ".wh..wh..opq";

const GZIP_MAGIC: &[u8] = &[0x1f, 0x8b];
const ZSTD_MAGIC: &[u8] = &[0x28, 0xb5, 0x2f, 0xfd];
const COPY_BUFFER: usize = 256 * 1024;

/// How to apply a layer.
#[derive(Debug, Clone, Default)]
pub struct UnpackOptions {
    /// Absolute in-image paths whose subtrees are never touched (`/proc`, `/kiln`, mount points).
    pub ignore: Vec<PathBuf>,
    /// Give files the uid/gid recorded in the layer (needs root); otherwise they belong to the caller.
    pub same_owner: bool,
}

/// What an unpack did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UnpackStats {
    /// Entries applied, whiteouts included; ignored entries are not counted.
    pub entries: u64,
    /// Bytes of regular-file content written.
    pub bytes: u64,
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
    apply_stream(Box::new(file), blob, root, opts)
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
    let hasher = Rc::new(RefCell::new(Sha256::new()));
    let reader = HashingReader {
        inner: file,
        hasher: hasher.clone(),
    };
    let applied = apply_stream(Box::new(reader), blob, root, opts);
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
    let actual = format!("sha256:{}", hex::encode(hasher.take().finalize()));
    if actual != digest {
        return Err(UnpackError::Digest {
            layer: blob.to_path_buf(),
            expected: digest.to_string(),
            actual,
        });
    }
    applied
}

/// Hashes what passes through it into a hasher shared with whoever checks the digest.
struct HashingReader {
    inner: File,
    hasher: Rc<RefCell<Sha256>>,
}

impl Read for HashingReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.borrow_mut().update(&buf[..n]);
        Ok(n)
    }
}

fn apply_stream(
    source: Box<dyn Read>,
    blob: &Path,
    root: &Path,
    opts: &UnpackOptions,
) -> Result<UnpackStats, UnpackError> {
    let reader = decompressed(source).map_err(|source| UnpackError::Open {
        layer: blob.to_path_buf(),
        source,
    })?;
    let mut archive = tar::Archive::new(reader);
    let mut unpacker = Unpacker::new(blob, root, opts);
    let read_err = |source| UnpackError::Read {
        layer: blob.to_path_buf(),
        source,
    };
    for entry in archive.entries().map_err(read_err)? {
        let mut entry = entry.map_err(read_err)?;
        unpacker.apply(&mut entry)?;
    }
    unpacker.finish()?;
    tracing::debug!(
        layer = %blob.display(),
        entries = unpacker.stats.entries,
        bytes = unpacker.stats.bytes,
        "layer unpacked"
    );
    Ok(unpacker.stats)
}

/// Wrap `source` in the decompressor its first bytes call for.
fn decompressed(source: Box<dyn Read>) -> io::Result<Box<dyn Read>> {
    let mut reader = BufReader::with_capacity(COPY_BUFFER, source);
    let head = reader.fill_buf()?;
    if head.starts_with(GZIP_MAGIC) {
        // Multi-member gzip (pigz, concatenated streams) is valid for layers.
        Ok(Box::new(flate2::bufread::MultiGzDecoder::new(reader)))
    } else if head.starts_with(ZSTD_MAGIC) {
        Ok(Box::new(zstd::stream::read::Decoder::with_buffer(reader)?))
    } else {
        Ok(Box::new(reader))
    }
}

/// Ownership, permissions, times and xattrs of an entry, with PAX records applied.
struct EntryMeta {
    mode: u32,
    uid: u64,
    gid: u64,
    mtime: FileTime,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

struct Unpacker<'a> {
    layer: &'a Path,
    root: &'a Path,
    same_owner: bool,
    /// Ignored subtrees as host paths under `root`.
    ignore: Vec<PathBuf>,
    /// Host paths written by this layer and their ancestors, which an opaque marker or whiteout
    /// must not delete.
    seen: HashSet<PathBuf>,
    /// Directory mtimes, set last so that writing children does not disturb them.
    dir_times: Vec<(PathBuf, FileTime)>,
    buf: Vec<u8>,
    /// Parent directories resolved and created so far, in-image path → host path: resolving
    /// costs an lstat per component, and a layer has far fewer directories than entries. Every
    /// component a cached resolution went through exists (as a directory, or a symlink it
    /// followed), so only removing a directory or a symlink can change one: creating an entry
    /// where one exists goes through such a removal. Emptied on every such removal.
    parent_cache: RefCell<HashMap<PathBuf, PathBuf>>,
    stats: UnpackStats,
}

impl<'a> Unpacker<'a> {
    fn new(layer: &'a Path, root: &'a Path, opts: &UnpackOptions) -> Self {
        let ignore = opts
            .ignore
            .iter()
            .map(|p| {
                let mut host = root.to_path_buf();
                host.extend(p.components().filter(|c| matches!(c, Component::Normal(_))));
                host
            })
            .filter(|p| p != root)
            .collect();
        Unpacker {
            layer,
            root,
            same_owner: opts.same_owner,
            ignore,
            seen: HashSet::new(),
            dir_times: Vec::new(),
            buf: vec![0; COPY_BUFFER],
            parent_cache: RefCell::new(HashMap::new()),
            stats: UnpackStats::default(),
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

    fn is_ignored(&self, host: &Path) -> bool {
        self.ignore.iter().any(|ig| host.starts_with(ig))
    }

    /// True when an ignored subtree lies strictly below `host`, so `host` itself must stay.
    fn holds_ignored(&self, host: &Path) -> bool {
        self.ignore
            .iter()
            .any(|ig| ig != host && ig.starts_with(host))
    }

    /// Resolve an in-image directory path to a host path, following symlinks inside the root only.
    fn resolve_dir(&self, entry: &str, rel: &Path) -> Result<PathBuf, UnpackError> {
        let resolved = resolve_in_root(self.root, &Path::new("/").join(rel), true)
            .map_err(|e| self.apply_err(entry, "resolve", rel, e))?;
        if !resolved.starts_with(self.root) {
            // resolve_in_root guarantees this; checked again because a mistake here is an escape.
            return Err(self.unsafe_entry(entry, "resolves outside the root"));
        }
        Ok(resolved)
    }

    fn apply<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<(), UnpackError> {
        let kind = entry.header().entry_type();
        let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        match kind {
            EntryType::XGlobalHeader
            | EntryType::XHeader
            | EntryType::GNULongName
            | EntryType::GNULongLink => {
                return Ok(());
            }
            _ => {}
        }
        let rel = clean_entry_path(&entry.path_bytes()).map_err(|r| self.unsafe_entry(&name, r))?;

        let file_name = match rel.file_name() {
            Some(f) => f.to_os_string(),
            None => return self.apply_root(entry, &name, kind),
        };
        let parent_rel = rel.parent().unwrap_or(Path::new(""));

        if let Some(target) = file_name
            .as_bytes()
            .strip_prefix(WHITEOUT_PREFIX.as_bytes())
        {
            let parent = self.resolve_dir(&name, parent_rel)?;
            if self.is_ignored(&parent) {
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

        let cached = self.parent_cache.borrow().get(parent_rel).cloned();
        let parent = match &cached {
            Some(parent) => parent.clone(),
            None => self.resolve_dir(&name, parent_rel)?,
        };
        let host = parent.join(&file_name);
        if self.is_ignored(&host) {
            tracing::debug!(entry = %name, "skipping entry in an ignored path");
            return Ok(());
        }
        if kind != EntryType::Directory && self.holds_ignored(&host) {
            tracing::warn!(
                entry = %name,
                "not replacing {} with a non-directory: it holds an ignored path",
                host.display()
            );
            return Ok(());
        }
        if cached.is_none() {
            fs::create_dir_all(&parent)
                .map_err(|e| self.apply_err(&name, "create parent directories", &parent, e))?;
            self.parent_cache
                .borrow_mut()
                .insert(parent_rel.to_path_buf(), parent.clone());
        }

        let meta = read_meta(entry).map_err(|source| UnpackError::Read {
            layer: self.layer.to_path_buf(),
            source,
        })?;

        // Each entry is created where it goes and only when something is already there is that
        // looked at and replaced (see `create_replacing`): most entries of a layer are new, and
        // this saves an lstat for each of them.
        match kind {
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                self.write_file(entry, &name, &host, &meta)?;
            }
            EntryType::Directory => {
                self.create_replacing(&name, &host, true, "create directory", || {
                    fs::DirBuilder::new().mode(0o700).create(&host)
                })?;
                // A real directory now (made, or an existing one checked with lstat), so the
                // entries below it need not resolve or create it again.
                self.parent_cache
                    .borrow_mut()
                    .insert(rel.clone(), host.clone());
                self.set_meta(&name, &host, &meta, kind)?;
                self.dir_times.push((host.clone(), meta.mtime));
            }
            EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| self.unsafe_entry(&name, "is a symlink without a target"))?;
                // Stored as-is: a symlink is only dangerous when followed, and nothing here follows
                // one out of the root.
                let target = OsStr::from_bytes(&target).to_os_string();
                self.create_replacing(&name, &host, false, "create symlink", || {
                    std::os::unix::fs::symlink(&target, &host)
                })?;
                self.set_meta(&name, &host, &meta, kind)?;
            }
            EntryType::Link => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| self.unsafe_entry(&name, "is a hardlink without a target"))?;
                self.hardlink(&name, &host, &target)?;
            }
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                let major = entry.header().device_major().ok().flatten().unwrap_or(0);
                let minor = entry.header().device_minor().ok().flatten().unwrap_or(0);
                let sflag = match kind {
                    EntryType::Char => nix::sys::stat::SFlag::S_IFCHR,
                    EntryType::Block => nix::sys::stat::SFlag::S_IFBLK,
                    _ => nix::sys::stat::SFlag::S_IFIFO,
                };
                self.create_replacing(&name, &host, false, "create device node", || {
                    nix::sys::stat::mknod(
                        &host,
                        sflag,
                        nix::sys::stat::Mode::from_bits_truncate(0o600),
                        nix::sys::stat::makedev(u64::from(major), u64::from(minor)),
                    )
                    .map_err(io::Error::from)
                })?;
                self.set_meta(&name, &host, &meta, kind)?;
            }
            other => {
                tracing::warn!(entry = %name, kind = ?other, "skipping tar entry of unsupported type");
                return Ok(());
            }
        }
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
    fn apply_root<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        name: &str,
        kind: EntryType,
    ) -> Result<(), UnpackError> {
        if kind != EntryType::Directory {
            return Err(self.unsafe_entry(
                name,
                "would replace the root directory with a non-directory",
            ));
        }
        let meta = read_meta(entry).map_err(|source| UnpackError::Read {
            layer: self.layer.to_path_buf(),
            source,
        })?;
        let root = self.root.to_path_buf();
        self.set_meta(name, &root, &meta, EntryType::Directory)?;
        self.dir_times.push((root, meta.mtime));
        self.stats.entries += 1;
        Ok(())
    }

    fn write_file<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        name: &str,
        host: &Path,
        meta: &EntryMeta,
    ) -> Result<(), UnpackError> {
        // O_EXCL fails on whatever is there, a symlink included (never followed).
        let open = || {
            OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                .open(host)
        };
        let mut file = match open() {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                self.remove_existing(name, host, false)?;
                open().map_err(|e| self.apply_err(name, "create file", host, e))?
            }
            Err(e) => return Err(self.apply_err(name, "create file", host, e)),
        };
        loop {
            let n = match entry.read(&mut self.buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(source) => {
                    return Err(UnpackError::Read {
                        layer: self.layer.to_path_buf(),
                        source,
                    })
                }
            };
            let chunk = &self.buf[..n];
            file.write_all(chunk).map_err(|e| UnpackError::Apply {
                layer: self.layer.to_path_buf(),
                entry: name.to_string(),
                action: "write",
                path: host.to_path_buf(),
                source: e,
            })?;
            self.stats.bytes += n as u64;
        }
        // Through the open handle: no path lookup, so nothing can be swapped underneath.
        if self.same_owner {
            std::os::unix::fs::fchown(&file, Some(id32(meta.uid)), Some(id32(meta.gid)))
                .map_err(|e| self.apply_err(name, "chown", host, e))?;
        }
        // After chown, which clears setuid/setgid bits.
        file.set_permissions(fs::Permissions::from_mode(meta.mode))
            .map_err(|e| self.apply_err(name, "chmod", host, e))?;
        for (key, value) in &meta.xattrs {
            let key = OsStr::from_bytes(key);
            if let Err(e) = xattr::FileExt::set_xattr(&file, key, value) {
                self.xattr_failed(name, host, key, e)?;
            }
        }
        filetime::set_file_handle_times(&file, Some(meta.mtime), Some(meta.mtime))
            .map_err(|e| self.apply_err(name, "set times of", host, e))?;
        Ok(())
    }

    /// Ownership, mode, xattrs and (for non-directories) times of a just-created non-regular
    /// entry of type `kind`.
    fn set_meta(
        &self,
        name: &str,
        host: &Path,
        meta: &EntryMeta,
        kind: EntryType,
    ) -> Result<(), UnpackError> {
        let is_symlink = kind == EntryType::Symlink;
        if self.same_owner {
            std::os::unix::fs::lchown(host, Some(id32(meta.uid)), Some(id32(meta.gid)))
                .map_err(|e| self.apply_err(name, "chown", host, e))?;
        }
        if !is_symlink {
            // `host` was just created or checked to be a non-symlink, so this does not follow one.
            fs::set_permissions(host, fs::Permissions::from_mode(meta.mode))
                .map_err(|e| self.apply_err(name, "chmod", host, e))?;
        }
        for (key, value) in &meta.xattrs {
            let key = OsStr::from_bytes(key);
            // `xattr::set` uses lsetxattr: never through a symlink.
            if let Err(e) = xattr::set(host, key, value) {
                self.xattr_failed(name, host, key, e)?;
            }
        }
        // Directory times are set once the whole layer is written (`finish`).
        if kind != EntryType::Directory {
            filetime::set_symlink_file_times(host, meta.mtime, meta.mtime)
                .map_err(|e| self.apply_err(name, "set times of", host, e))?;
        }
        Ok(())
    }

    /// Filesystems without xattr support, and xattr namespaces we may not write, should not make
    /// an image unusable: warn and go on. Anything else is a real failure.
    fn xattr_failed(
        &self,
        name: &str,
        host: &Path,
        key: &OsStr,
        e: io::Error,
    ) -> Result<(), UnpackError> {
        match e.raw_os_error() {
            Some(libc::ENOTSUP) | Some(libc::EPERM) => {
                tracing::warn!(entry = %name, xattr = ?key, error = %e, "cannot set extended attribute; skipped");
                Ok(())
            }
            _ => Err(self.apply_err(name, "set extended attribute on", host, e)),
        }
    }

    /// Create an entry with `create`; when something is already at `host`, replace it (see
    /// `remove_existing`) and create again, unless it is a directory and so is the new entry.
    fn create_replacing(
        &self,
        name: &str,
        host: &Path,
        new_is_dir: bool,
        action: &'static str,
        create: impl Fn() -> io::Result<()>,
    ) -> Result<(), UnpackError> {
        match create() {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                if self.remove_existing(name, host, new_is_dir)? {
                    create().map_err(|e| self.apply_err(name, action, host, e))
                } else {
                    Ok(())
                }
            }
            Err(e) => Err(self.apply_err(name, action, host, e)),
        }
    }

    /// Remove what is at `host` unless it is a directory and the new entry is one too.
    /// Returns whether `host` is free now (false: a directory was kept).
    fn remove_existing(
        &self,
        name: &str,
        host: &Path,
        new_is_dir: bool,
    ) -> Result<bool, UnpackError> {
        let meta = match fs::symlink_metadata(host) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(true),
            Err(e) => return Err(self.apply_err(name, "inspect", host, e)),
        };
        if meta.is_dir() && new_is_dir {
            return Ok(false);
        }
        if meta.is_dir() || meta.file_type().is_symlink() {
            // Removing a file cannot change how a directory path resolves; these can.
            self.parent_cache.borrow_mut().clear();
        }
        if meta.is_dir() {
            self.remove_tree(host)
                .map_err(|e| self.apply_err(name, "remove directory", host, e))?;
        } else {
            fs::remove_file(host).map_err(|e| self.apply_err(name, "remove", host, e))?;
        }
        Ok(true)
    }

    /// Remove a directory tree without following symlinks, sparing ignored subtrees (and so the
    /// directories that lead to them).
    fn remove_tree(&self, dir: &Path) -> io::Result<()> {
        if !self.holds_ignored(dir) {
            // std's remove_dir_all never follows symlinks inside the tree.
            return fs::remove_dir_all(dir);
        }
        for child in fs::read_dir(dir)? {
            let path = child?.path();
            self.remove_path(&path)?;
        }
        Ok(())
    }

    fn remove_path(&self, path: &Path) -> io::Result<()> {
        self.parent_cache.borrow_mut().clear();
        if self.is_ignored(path) {
            return Ok(());
        }
        match fs::symlink_metadata(path) {
            Ok(m) if m.is_dir() => self.remove_tree(path),
            Ok(_) => fs::remove_file(path),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn whiteout(&self, name: &str, target: &Path) -> Result<(), UnpackError> {
        // A whiteout only deletes lower layers' files, never what this layer wrote.
        if self.seen.contains(target) {
            return Ok(());
        }
        self.remove_path(target)
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
                self.remove_path(&path)?;
            }
        }
        Ok(())
    }

    fn hardlink(&self, name: &str, host: &Path, raw_target: &[u8]) -> Result<(), UnpackError> {
        let target_rel = clean_entry_path(raw_target)
            .map_err(|r| self.unsafe_entry(name, format!("is a hardlink whose target {r}")))?;
        let target_name = target_rel
            .file_name()
            .ok_or_else(|| self.unsafe_entry(name, "is a hardlink to the root directory"))?;
        // The target's own last component is not followed: link(2) links a symlink itself.
        let target = self
            .resolve_dir(name, target_rel.parent().unwrap_or(Path::new("")))?
            .join(target_name);
        if self.is_ignored(&target) {
            tracing::warn!(entry = %name, "skipping hardlink to an ignored path");
            return Ok(());
        }
        if target == host {
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
        self.create_replacing(name, host, false, "create hardlink", || {
            fs::hard_link(&target, host)
        })
    }

    fn finish(&mut self) -> Result<(), UnpackError> {
        for (dir, mtime) in std::mem::take(&mut self.dir_times) {
            // A later entry of the layer may have replaced the directory.
            if fs::symlink_metadata(&dir)
                .map(|m| m.is_dir())
                .unwrap_or(false)
            {
                filetime::set_symlink_file_times(&dir, mtime, mtime)
                    .map_err(|e| self.apply_err("", "set times of", &dir, e))?;
            }
        }
        Ok(())
    }
}

/// Turn a tar entry name into a path relative to the root: a leading `/` is dropped, `.` skipped,
/// `..` applied lexically; a `..` that would climb above the root is an error (no layer tool writes
/// one, so it is hostile).
fn clean_entry_path(raw: &[u8]) -> Result<PathBuf, String> {
    let mut parts: Vec<&[u8]> = Vec::new();
    for part in raw.split(|b| *b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => {
                if parts.pop().is_none() {
                    return Err("climbs above the root with `..`".to_string());
                }
            }
            p => parts.push(p),
        }
    }
    Ok(parts.iter().map(|p| OsStr::from_bytes(p)).collect())
}

fn id32(id: u64) -> u32 {
    u32::try_from(id).unwrap_or(u32::MAX)
}

/// Mode, owner, mtime and xattrs of an entry, with PAX records (`uid`, `gid`, `mtime`,
/// `SCHILY.xattr.*`) taking precedence over the header, as writers use them for values that do not
/// fit in it.
fn read_meta<R: Read>(entry: &mut tar::Entry<'_, R>) -> io::Result<EntryMeta> {
    let header = entry.header();
    // Some writers leave numeric fields blank; like GNU tar, read a blank or garbled field as 0
    // (root-owned, no permissions) rather than refusing the layer.
    let mut meta = EntryMeta {
        mode: header.mode().unwrap_or(0) & 0o7777,
        uid: header.uid().unwrap_or(0),
        gid: header.gid().unwrap_or(0),
        mtime: FileTime::from_unix_time(i64::try_from(header.mtime().unwrap_or(0)).unwrap_or(0), 0),
        xattrs: Vec::new(),
    };
    if let Some(pax) = entry.pax_extensions()? {
        for ext in pax {
            let ext = ext?;
            let key = ext.key_bytes();
            let value = ext.value_bytes();
            if let Some(xattr) = key.strip_prefix(b"SCHILY.xattr.") {
                meta.xattrs.push((xattr.to_vec(), value.to_vec()));
                continue;
            }
            let text = std::str::from_utf8(value).unwrap_or("");
            match key {
                b"uid" => meta.uid = text.parse().unwrap_or(meta.uid),
                b"gid" => meta.gid = text.parse().unwrap_or(meta.gid),
                b"mtime" => {
                    if let Some(t) = parse_pax_time(text) {
                        meta.mtime = t;
                    }
                }
                _ => {}
            }
        }
    }
    Ok(meta)
}

/// PAX times are decimal seconds with an optional fraction, possibly negative.
fn parse_pax_time(text: &str) -> Option<FileTime> {
    let (secs, frac) = text.split_once('.').unwrap_or((text, ""));
    let secs: i64 = secs.parse().ok()?;
    let digits: String = frac.chars().take(9).collect();
    let nanos: u32 = if digits.is_empty() {
        0
    } else {
        format!("{digits:0<9}").parse().ok()?
    };
    Some(FileTime::from_unix_time(secs, nanos))
}
