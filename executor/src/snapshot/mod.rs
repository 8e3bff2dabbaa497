//! Filesystem snapshots: detect what a step changed under the build root and write exactly that
//! as a layer. Reads the root only; it must never modify it, follow a symlink while walking, or
//! descend into an ignored subtree.
//!
//! Change detection compares `lstat` results of one walk against the previous walk (type, mode,
//! owner, size, mtime, ctime, inode, device, symlink target). ctime cannot be set from user space,
//! so a rewrite that restores the mtime is still seen; unchanged files are never read.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::fs::{self, OpenOptions};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};

use tar::{EntryType, Header};

use crate::layer::{LayerFile, MEDIA_TYPE_LAYER_GZIP, MEDIA_TYPE_LAYER_ZSTD};
use crate::unpack::WHITEOUT_PREFIX;

#[cfg(test)]
mod tests;
mod writer;

use writer::{ExactReader, LayerWriter};

/// Layer compression.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// gzip; levels 0–9.
    Gzip { level: u32 },
    /// zstd; levels 1–22 (negative levels are the fast modes).
    Zstd { level: i32 },
}

impl Default for Compression {
    /// gzip level 1: what kaniko writes (go-containerregistry's default, `gzip.BestSpeed`),
    /// readable by every registry and runtime, and several times faster to write than level 6
    /// for a few percent more bytes.
    fn default() -> Self {
        Compression::Gzip { level: 1 }
    }
}

/// How to write a layer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LayerOptions {
    /// Write every mtime as 0 so identical trees give identical digests.
    pub reproducible: bool,
    pub compression: Compression,
}

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("cannot scan {path} for changes: {source}; check that the build root is readable")]
    Scan {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "cannot add {path} to the layer: {source}; was it changed or removed while the snapshot \
         was being taken?"
    )]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot write a layer into {dir}: {source}; check free space and permissions there")]
    Write {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    File,
    Dir,
    Symlink,
    Char,
    Block,
    Fifo,
    Socket,
}

/// What one `lstat` (and `readlink`) told us about a path. Equal nodes mean "unchanged".
#[derive(Debug, Clone, PartialEq, Eq)]
struct Node {
    kind: Kind,
    /// Permission bits including setuid/setgid/sticky.
    mode: u32,
    uid: u32,
    gid: u32,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
    ino: u64,
    dev: u64,
    rdev: u64,
    nlink: u64,
    link: Option<OsString>,
}

/// Paths relative to the root, in component order: a directory comes before its children and a
/// subtree is contiguous, which is the order a layer is written in.
type State = BTreeMap<PathBuf, Node>;

/// What to put in the layer for a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Change {
    /// Write the path's current state.
    Entry,
    /// A whiteout for the named sibling (`dir/.wh.name`).
    Whiteout,
}

/// Remembers the state of a root between build steps and turns the difference into a layer.
pub struct Snapshotter {
    root: PathBuf,
    /// Ignored subtrees as host paths under `root`.
    ignore: Vec<PathBuf>,
    state: State,
}

impl Snapshotter {
    /// Record the current state of `root`, skipping `ignore` (absolute in-image paths).
    pub fn new(root: &Path, ignore: Vec<PathBuf>) -> Result<Self, SnapshotError> {
        let ignore = ignore
            .iter()
            .map(|p| {
                let mut host = root.to_path_buf();
                host.extend(p.components().filter(|c| matches!(c, Component::Normal(_))));
                host
            })
            .collect();
        let mut snapshotter = Snapshotter {
            root: root.to_path_buf(),
            ignore,
            state: State::new(),
        };
        snapshotter.refresh()?;
        Ok(snapshotter)
    }

    /// Re-record the state without writing a layer (after unpacking a base or cached layer).
    pub fn refresh(&mut self) -> Result<(), SnapshotError> {
        self.state = scan(&self.root, &self.ignore)?;
        Ok(())
    }

    /// Write what changed since the last snapshot as one layer in a new file in `out_dir`, or
    /// return `None` when nothing changed. `out_dir` must be outside the root or ignored, or the
    /// layers would end up in the next snapshot.
    pub fn snapshot_layer(
        &mut self,
        out_dir: &Path,
        opts: &LayerOptions,
    ) -> Result<Option<LayerFile>, SnapshotError> {
        let new = scan(&self.root, &self.ignore)?;
        let changes = diff(&self.state, &new);
        if changes.is_empty() {
            self.state = new;
            return Ok(None);
        }
        let layer = self.write_layer(&new, &changes, out_dir, opts)?;
        tracing::debug!(
            layer = %layer.path.display(),
            entries = changes.len(),
            size = layer.size,
            "snapshot layer written"
        );
        self.state = new;
        Ok(Some(layer))
    }

    fn write_layer(
        &self,
        new: &State,
        changes: &BTreeMap<PathBuf, Change>,
        out_dir: &Path,
        opts: &LayerOptions,
    ) -> Result<LayerFile, SnapshotError> {
        let write_err = |source| SnapshotError::Write {
            dir: out_dir.to_path_buf(),
            source,
        };
        fs::create_dir_all(out_dir).map_err(write_err)?;
        let tmp = tempfile::Builder::new()
            .prefix(".layer-")
            .tempfile_in(out_dir)
            .map_err(write_err)?;
        let file = tmp.as_file().try_clone().map_err(write_err)?;
        let mut layer = LayerWriter::new(file, opts.compression).map_err(write_err)?;

        // First path written for each multiply-linked inode; later ones become hardlink entries.
        let mut written_inodes: HashMap<(u64, u64), PathBuf> = HashMap::new();
        for (rel, change) in changes {
            match change {
                Change::Whiteout => {
                    let mut header = Header::new_gnu();
                    header.set_entry_type(EntryType::Regular);
                    header.set_mode(0);
                    header.set_size(0);
                    header.set_mtime(0);
                    layer
                        .append(
                            &mut header,
                            rel.as_os_str().as_bytes(),
                            None,
                            &[],
                            io::empty(),
                        )
                        .map_err(write_err)?;
                }
                Change::Entry => {
                    let Some(node) = new.get(rel) else { continue };
                    self.append_entry(&mut layer, rel, node, opts, &mut written_inodes, out_dir)?;
                }
            }
        }
        let written = layer.finish().map_err(write_err)?;
        let hex = written.digest.trim_start_matches("sha256:");
        let (ext, media_type) = match opts.compression {
            Compression::Gzip { .. } => ("tar.gz", MEDIA_TYPE_LAYER_GZIP),
            Compression::Zstd { .. } => ("tar.zst", MEDIA_TYPE_LAYER_ZSTD),
        };
        let path = out_dir.join(format!("{hex}.{ext}"));
        tmp.persist(&path).map_err(|e| write_err(e.error))?;
        Ok(LayerFile {
            path,
            digest: written.digest,
            diff_id: written.diff_id,
            size: written.size,
            media_type: media_type.to_string(),
        })
    }

    fn append_entry(
        &self,
        layer: &mut LayerWriter,
        rel: &Path,
        node: &Node,
        opts: &LayerOptions,
        written_inodes: &mut HashMap<(u64, u64), PathBuf>,
        out_dir: &Path,
    ) -> Result<(), SnapshotError> {
        let host = self.root.join(rel);
        let write_err = |source| SnapshotError::Write {
            dir: out_dir.to_path_buf(),
            source,
        };
        let read_err = |source| SnapshotError::Read {
            path: host.clone(),
            source,
        };
        let name = rel.as_os_str().as_bytes();
        let mut header = Header::new_gnu();
        header.set_mode(node.mode);
        header.set_uid(u64::from(node.uid));
        header.set_gid(u64::from(node.gid));
        header.set_mtime(if opts.reproducible {
            0
        } else {
            u64::try_from(node.mtime.0).unwrap_or(0)
        });
        header.set_size(0);

        if node.kind != Kind::Dir && node.nlink > 1 {
            match written_inodes.get(&(node.dev, node.ino)) {
                Some(first) => {
                    header.set_entry_type(EntryType::Link);
                    let target = first.as_os_str().as_bytes().to_vec();
                    return layer
                        .append(&mut header, name, Some(&target), &[], io::empty())
                        .map_err(write_err);
                }
                None => {
                    written_inodes.insert((node.dev, node.ino), rel.to_path_buf());
                }
            }
        }

        let xattrs = read_xattrs(&host).map_err(read_err)?;
        match node.kind {
            Kind::File => {
                let mut file = OpenOptions::new()
                    .read(true)
                    .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                    .open(&host)
                    .map_err(read_err)?;
                let len = file.metadata().map_err(read_err)?.len();
                header.set_entry_type(EntryType::Regular);
                header.set_size(len);
                let data = ExactReader::new(&mut file, len, &host);
                layer
                    .append(&mut header, name, None, &xattrs, data)
                    .map_err(|e| {
                        if e.kind() == io::ErrorKind::UnexpectedEof {
                            read_err(e)
                        } else {
                            write_err(e)
                        }
                    })
            }
            Kind::Dir => {
                header.set_entry_type(EntryType::Directory);
                let mut dir_name = name.to_vec();
                dir_name.push(b'/');
                layer
                    .append(&mut header, &dir_name, None, &xattrs, io::empty())
                    .map_err(write_err)
            }
            Kind::Symlink => {
                header.set_entry_type(EntryType::Symlink);
                let target = node.link.as_deref().unwrap_or(OsStr::new("")).as_bytes();
                layer
                    .append(&mut header, name, Some(target), &xattrs, io::empty())
                    .map_err(write_err)
            }
            Kind::Char | Kind::Block | Kind::Fifo => {
                header.set_entry_type(match node.kind {
                    Kind::Char => EntryType::Char,
                    Kind::Block => EntryType::Block,
                    _ => EntryType::Fifo,
                });
                if node.kind != Kind::Fifo {
                    let major = u32::try_from(nix::sys::stat::major(node.rdev)).unwrap_or(0);
                    let minor = u32::try_from(nix::sys::stat::minor(node.rdev)).unwrap_or(0);
                    header.set_device_major(major).map_err(write_err)?;
                    header.set_device_minor(minor).map_err(write_err)?;
                }
                layer
                    .append(&mut header, name, None, &xattrs, io::empty())
                    .map_err(write_err)
            }
            // Left out by `diff` already.
            Kind::Socket => Ok(()),
        }
    }
}

/// Extended attributes worth carrying in a layer, as sorted PAX `SCHILY.xattr.*` records.
fn read_xattrs(path: &Path) -> io::Result<Vec<(String, Vec<u8>)>> {
    let names = match xattr::list(path) {
        Ok(names) => names,
        Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for name in names {
        let Some(text) = name.to_str() else { continue };
        // SELinux labels belong to the build host and are relabelled at run time; overlayfs'
        // own attributes describe the host's storage, not the image.
        if text == "security.selinux" || text.starts_with("trusted.overlay.") {
            continue;
        }
        if let Some(value) = xattr::get(path, &name)? {
            out.push((format!("SCHILY.xattr.{text}"), value));
        }
    }
    out.sort();
    Ok(out)
}

/// One walk of `root`, never following symlinks, pruning ignored subtrees.
fn scan(root: &Path, ignore: &[PathBuf]) -> Result<State, SnapshotError> {
    let scan_err = |path: &Path, source| SnapshotError::Scan {
        path: path.to_path_buf(),
        source,
    };
    let mut state = State::new();
    let walker = walkdir::WalkDir::new(root)
        .follow_links(false)
        .min_depth(1)
        .into_iter()
        .filter_entry(|e| !ignore.iter().any(|ig| e.path() == ig));
    for entry in walker {
        let entry = match entry {
            Ok(e) => e,
            Err(e) => {
                let path = e.path().unwrap_or(root).to_path_buf();
                let io = io::Error::from(e);
                // Something a step left running may delete files while we walk; a vanished path
                // is simply not part of this state.
                if io.kind() == io::ErrorKind::NotFound {
                    continue;
                }
                return Err(scan_err(&path, io));
            }
        };
        let meta = match entry.metadata() {
            Ok(m) => m,
            Err(e) => {
                let io = io::Error::from(e);
                if io.kind() == io::ErrorKind::NotFound {
                    continue;
                }
                return Err(scan_err(entry.path(), io));
            }
        };
        let Ok(rel) = entry.path().strip_prefix(root) else {
            continue;
        };
        let ft = meta.file_type();
        let kind = if ft.is_dir() {
            Kind::Dir
        } else if ft.is_symlink() {
            Kind::Symlink
        } else if ft.is_file() {
            Kind::File
        } else if ft.is_char_device() {
            Kind::Char
        } else if ft.is_block_device() {
            Kind::Block
        } else if ft.is_fifo() {
            Kind::Fifo
        } else {
            Kind::Socket
        };
        let link = if kind == Kind::Symlink {
            match fs::read_link(entry.path()) {
                Ok(t) => Some(t.into_os_string()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(scan_err(entry.path(), e)),
            }
        } else {
            None
        };
        state.insert(
            rel.to_path_buf(),
            Node {
                kind,
                mode: meta.mode() & 0o7777,
                uid: meta.uid(),
                gid: meta.gid(),
                size: meta.size(),
                mtime: (meta.mtime(), meta.mtime_nsec()),
                ctime: (meta.ctime(), meta.ctime_nsec()),
                ino: meta.ino(),
                dev: meta.dev(),
                rdev: meta.rdev(),
                nlink: meta.nlink(),
                link,
            },
        );
    }
    Ok(state)
}

/// What a layer must hold to turn `old` into `new`: changed and added paths, whiteouts for the
/// topmost deleted paths, and every parent directory of those (so the layer applies on its own).
fn diff(old: &State, new: &State) -> BTreeMap<PathBuf, Change> {
    let mut changes = BTreeMap::new();
    for (path, node) in new {
        if old.get(path) != Some(node) {
            // Sockets cannot be stored in a tar; they are recreated by whoever listens, and one
            // alone must not produce a layer of bare parent directories.
            if node.kind == Kind::Socket {
                continue;
            }
            if is_whiteout_name(path) {
                tracing::warn!(
                    path = %path.display(),
                    "not adding a file whose name starts with {WHITEOUT_PREFIX}: layers reserve it for deletions"
                );
                continue;
            }
            changes.insert(path.clone(), Change::Entry);
        }
    }
    for path in old.keys() {
        if new.contains_key(path) {
            continue;
        }
        let parent = path.parent().unwrap_or(Path::new(""));
        // When the parent is gone too (or is no longer a directory), the parent's own whiteout
        // or replacement covers this path.
        let parent_is_dir =
            parent.as_os_str().is_empty() || new.get(parent).is_some_and(|n| n.kind == Kind::Dir);
        if !parent_is_dir {
            continue;
        }
        let Some(name) = path.file_name() else {
            continue;
        };
        let mut whiteout = OsString::from(WHITEOUT_PREFIX);
        whiteout.push(name);
        changes.insert(parent.join(whiteout), Change::Whiteout);
    }
    let mut parents: HashSet<PathBuf> = HashSet::new();
    for path in changes.keys() {
        let mut parent = path.parent();
        while let Some(p) = parent {
            if p.as_os_str().is_empty() || !parents.insert(p.to_path_buf()) {
                break;
            }
            parent = p.parent();
        }
    }
    for p in parents {
        if new.get(&p).is_some_and(|n| n.kind == Kind::Dir) {
            changes.entry(p).or_insert(Change::Entry);
        }
    }
    changes
}

fn is_whiteout_name(path: &Path) -> bool {
    path.file_name()
        .is_some_and(|n| n.as_bytes().starts_with(WHITEOUT_PREFIX.as_bytes()))
}
