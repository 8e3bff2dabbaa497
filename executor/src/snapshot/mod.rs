//! Filesystem snapshots: detect what a step changed under the build root and write exactly that
//! as a layer. Reads the root only; it must never modify it, follow a symlink while walking, or
//! descend into an ignored subtree.
//!
//! Change detection compares `lstat` results of one walk against the previous walk (type, mode,
//! owner, size, mtime, ctime, inode, device, symlink target). ctime cannot be set from user space,
//! so a rewrite that restores the mtime is still seen; unchanged files are never read.
//!
//! A step usually changes a handful of paths in a tree of 100,000, so a state is kept per
//! directory, each listing sorted by name: comparing two states is a merge of sorted lists, with
//! no per-path hashing or whole-path keys, and only the changes are put in layer order.

use std::borrow::Cow;
use std::cmp::Ordering;
use std::collections::{HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use rustix::fs::{Mode, OFlags};
use tar::{EntryType, Header};
use xattr::FileExt as _;

use crate::layer::{LayerFile, MEDIA_TYPE_LAYER_GZIP, MEDIA_TYPE_LAYER_ZSTD};
use crate::unpack::WHITEOUT_PREFIX;

mod scan;
#[cfg(test)]
mod tests;
mod writer;

use scan::scan;
pub use writer::{BlobWatch, GrowingBlob};
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
    #[error(
        "internal error: the state of {root} was not recorded before the step, so its changes \
         cannot be told apart; please report this"
    )]
    NotRecorded { root: PathBuf },
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

/// A path relative to the root as raw bytes, names joined by `/`; the root itself is empty.
type RelPath = Box<[u8]>;

/// One name within a directory, as raw bytes.
type Name = Box<[u8]>;

/// Every path under the root, as the listing of each directory walked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct State {
    /// By directory path. The root is always there, and so is every entry of kind `Dir` (with
    /// an empty listing when it vanished before it could be read); nothing else is. Listings
    /// are sorted by name.
    dirs: HashMap<RelPath, Vec<(Name, Node)>>,
}

impl State {
    fn get(&self, path: &[u8]) -> Option<&Node> {
        let (parent, name) = split_parent(path);
        let listing = self.dirs.get(parent)?;
        let i = listing.binary_search_by(|(n, _)| (**n).cmp(name)).ok()?;
        Some(&listing[i].1)
    }
}

/// What goes in a layer, in the order it is written (see [`layer_order`]). Parent directories
/// borrow their path from the new state; other paths are put together.
type Changes<'a> = Vec<(Cow<'a, [u8]>, Change<'a>)>;

/// What to put in the layer for a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Change<'a> {
    /// Write the path's current state, which is this.
    Entry(&'a Node),
    /// A whiteout for the named sibling (`dir/.wh.name`).
    Whiteout,
}

/// Remembers the state of a root between build steps and turns the difference into a layer.
pub struct Snapshotter {
    root: PathBuf,
    /// Ignored subtrees, relative to `root`.
    ignore: Vec<RelPath>,
    state: State,
    /// The root changed since `state` was recorded (a base or cached layer was unpacked), and
    /// no layer is to be made of that change: `state` is read again before the next step runs.
    stale: bool,
}

impl Snapshotter {
    /// Record the current state of `root`, skipping `ignore` (absolute in-image paths).
    pub fn new(root: &Path, ignore: Vec<PathBuf>) -> Result<Self, SnapshotError> {
        let mut snapshotter = Self::deferred(root, ignore);
        snapshotter.refresh()?;
        Ok(snapshotter)
    }

    /// A snapshotter of `root` whose state is read only when [`Self::record_if_stale`] is
    /// called, before the first step that may change the root: a stage whose first steps are
    /// cache hits scans its root once, after the last of them, rather than after each.
    pub fn deferred(root: &Path, ignore: Vec<PathBuf>) -> Self {
        Snapshotter {
            root: root.to_path_buf(),
            ignore: rel_paths(&ignore),
            state: State::default(),
            stale: true,
        }
    }

    /// The root was changed in a way no layer is made of (a cached layer unpacked into it):
    /// the state is read again before the next step ([`Self::record_if_stale`]).
    pub fn mark_stale(&mut self) {
        self.stale = true;
    }

    /// Reads the root's state if it changed since it was last read: called before a step
    /// whose changes may be snapshotted.
    pub fn record_if_stale(&mut self) -> Result<(), SnapshotError> {
        if self.stale {
            self.refresh()?;
        }
        Ok(())
    }

    /// Replace the ignored paths before the next snapshot. In place, a step can move a mount
    /// point (`mv /var /v` takes a Secret mounted below `/var` along): the mount must stay out of
    /// the layer at its new path, so the caller reads the mount points again. What the previous
    /// state holds under a newly ignored path is forgotten, so it does not read as deleted.
    pub fn set_ignore(&mut self, ignore: Vec<PathBuf>) {
        let ignore = rel_paths(&ignore);
        if ignore == self.ignore {
            return;
        }
        let under = |path: &[u8]| {
            ignore.iter().any(|ig| {
                path.starts_with(ig) && (path.len() == ig.len() || path[ig.len()] == b'/')
            })
        };
        self.state
            .dirs
            .retain(|dir, _| dir.is_empty() || !under(dir));
        for (dir, listing) in self.state.dirs.iter_mut() {
            listing.retain(|(name, _)| !under(&scan::join(dir, name)));
        }
        self.ignore = ignore;
    }

    /// Re-record the state without writing a layer (after unpacking a base or cached layer).
    pub fn refresh(&mut self) -> Result<(), SnapshotError> {
        self.state = scan(&self.root, &self.ignore)?;
        self.stale = false;
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
        self.snapshot_layer_watched(out_dir, opts, None)
    }

    /// [`Self::snapshot_layer`], telling `watch` (when given) of the layer file's progress as it
    /// is written, and of its digest at the end; dropped unfinished when there is no layer.
    pub fn snapshot_layer_watched(
        &mut self,
        out_dir: &Path,
        opts: &LayerOptions,
        watch: Option<BlobWatch>,
    ) -> Result<Option<LayerFile>, SnapshotError> {
        if self.stale {
            // The step ran on a root whose state was not recorded: what it changed is unknown.
            return Err(SnapshotError::NotRecorded {
                root: self.root.clone(),
            });
        }
        let started = std::time::Instant::now();
        let new = scan(&self.root, &self.ignore)?;
        let changes = diff(&self.state, &new);
        if changes.is_empty() {
            self.state = new;
            return Ok(None);
        }
        let scanned = started.elapsed();
        let layer = self.write_layer(&changes, out_dir, opts, watch)?;
        tracing::debug!(
            layer = %layer.path.display(),
            entries = changes.len(),
            size = layer.size,
            scan_ms = scanned.as_millis(),
            write_ms = (started.elapsed() - scanned).as_millis(),
            "snapshot layer written"
        );
        self.state = new;
        Ok(Some(layer))
    }

    /// A layer with no entries (`--force-build-metadata` gives every step a layer), written
    /// into `out_dir` like any other. Leaves the snapshot state alone.
    pub fn empty_layer(
        &self,
        out_dir: &Path,
        opts: &LayerOptions,
    ) -> Result<LayerFile, SnapshotError> {
        self.write_layer(&Vec::new(), out_dir, opts, None)
    }

    fn write_layer(
        &self,
        changes: &Changes<'_>,
        out_dir: &Path,
        opts: &LayerOptions,
        watch: Option<BlobWatch>,
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
        if let Some(watch) = &watch {
            let path = tmp.path().to_path_buf();
            watch.send_modify(|blob| blob.path = Some(path));
        }
        let mut layer = LayerWriter::new(file, opts.compression, watch).map_err(write_err)?;
        // Regular files are opened, their xattrs and size read and their first bytes read on
        // helper threads, READ_AHEAD_FILES ahead of the writer: on a root of many small files
        // the system calls, not the tar stream, are the work. Each thread reads every n-th
        // batch, and the writer takes the batches in turn, so in its order.
        let opened = files_to_open(changes);
        let threads = read_ahead_threads(opened.len());
        std::thread::scope(|scope| -> Result<(), SnapshotError> {
            let mut ahead = Ahead {
                rx: Vec::new(),
                turn: 0,
                batch: Vec::new().into_iter(),
            };
            let mut readers = Vec::new();
            for first in 0..threads {
                let (tx, rx) =
                    std::sync::mpsc::sync_channel(READ_AHEAD_FILES / READ_AHEAD_BATCH / threads);
                ahead.rx.push(rx);
                let root = &self.root;
                let opened = &opened;
                let reader = std::thread::Builder::new()
                    .name("kiln-read-ahead".into())
                    .spawn_scoped(scope, move || {
                        let mut files = match Opener::new(root) {
                            Ok(files) => files,
                            Err(e) => {
                                let _ = tx.send(vec![Err(io::Error::from(e))]);
                                return;
                            }
                        };
                        let batches = opened.chunks(READ_AHEAD_BATCH).skip(first);
                        for batch in batches.step_by(threads) {
                            let read = batch
                                .iter()
                                .map(|rel| read_ahead(&mut files, rel))
                                .collect();
                            if tx.send(read).is_err() {
                                return;
                            }
                        }
                    })
                    .map_err(write_err)?;
                readers.push(reader);
            }
            // First path written for each multiply-linked inode; later ones become hardlink
            // entries.
            let mut written_inodes: HashMap<(u64, u64), &[u8]> = HashMap::new();
            for (rel, change) in changes {
                match change {
                    Change::Whiteout => {
                        let mut header = Header::new_gnu();
                        header.set_entry_type(EntryType::Regular);
                        header.set_mode(0);
                        header.set_size(0);
                        header.set_mtime(0);
                        layer
                            .append(&mut header, rel, None, &[], io::empty())
                            .map_err(write_err)?;
                    }
                    Change::Entry(node) => {
                        let entry = Entry {
                            ahead: &mut ahead,
                            rel,
                            node,
                        };
                        self.append_entry(&mut layer, entry, opts, &mut written_inodes, out_dir)?;
                    }
                }
            }
            // A writer that failed leaves the reader blocked on a full channel: dropping the
            // receiving end frees it.
            drop(ahead);
            for reader in readers {
                let _ = reader.join();
            }
            Ok(())
        })?;
        let (written, watch) = layer.finish().map_err(write_err)?;
        let hex = written.digest.trim_start_matches("sha256:");
        let (ext, media_type) = match opts.compression {
            Compression::Gzip { .. } => ("tar.gz", MEDIA_TYPE_LAYER_GZIP),
            Compression::Zstd { .. } => ("tar.zst", MEDIA_TYPE_LAYER_ZSTD),
        };
        let path = out_dir.join(format!("{hex}.{ext}"));
        tmp.persist(&path).map_err(|e| write_err(e.error))?;
        if let Some(watch) = watch {
            watch.send_modify(|blob| {
                blob.path = Some(path.clone());
                blob.written = written.size;
                blob.digest = Some(written.digest.clone());
            });
        }
        Ok(LayerFile {
            path,
            digest: written.digest,
            diff_id: written.diff_id,
            size: written.size,
            media_type: media_type.to_string(),
        })
    }

    fn append_entry<'a>(
        &self,
        layer: &mut LayerWriter,
        Entry { ahead, rel, node }: Entry<'_, 'a>,
        opts: &LayerOptions,
        written_inodes: &mut HashMap<(u64, u64), &'a [u8]>,
        out_dir: &Path,
    ) -> Result<(), SnapshotError> {
        let host = || self.root.join(OsStr::from_bytes(rel));
        let write_err = |source| SnapshotError::Write {
            dir: out_dir.to_path_buf(),
            source,
        };
        let read_err = |source| SnapshotError::Read {
            path: host(),
            source,
        };
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
                    return layer
                        .append(&mut header, rel, Some(first), &[], io::empty())
                        .map_err(write_err);
                }
                None => {
                    written_inodes.insert((node.dev, node.ino), rel);
                }
            }
        }

        if node.kind == Kind::File {
            let ReadAhead {
                rel: read,
                mut file,
                xattrs,
                len,
                head,
            } = ahead
                .next()
                .ok_or_else(|| read_err(io::Error::other("the read-ahead thread stopped")))?
                .map_err(read_err)?;
            debug_assert_eq!(read, rel);
            header.set_entry_type(EntryType::Regular);
            header.set_size(len);
            // The error that carries this path says where the root is.
            let rest = len - head.len() as u64;
            let rest: Box<dyn Read + '_> = match &mut file {
                Some(file) => Box::new(ExactReader::new(
                    file,
                    rest,
                    Path::new(OsStr::from_bytes(rel)),
                )),
                None => Box::new(io::empty()),
            };
            let data = io::Cursor::new(head).chain(rest);
            return layer
                .append(&mut header, rel, None, &xattrs, data)
                .map_err(|e| {
                    if e.kind() == io::ErrorKind::UnexpectedEof {
                        read_err(e)
                    } else {
                        write_err(e)
                    }
                });
        }

        let host = host();
        let xattrs = read_xattrs(xattr::list(&host), |n| xattr::get(&host, n)).map_err(read_err)?;
        match node.kind {
            // Written above.
            Kind::File => Ok(()),
            Kind::Dir => {
                header.set_entry_type(EntryType::Directory);
                let mut dir_name = rel.to_vec();
                dir_name.push(b'/');
                layer
                    .append(&mut header, &dir_name, None, &xattrs, io::empty())
                    .map_err(write_err)
            }
            Kind::Symlink => {
                header.set_entry_type(EntryType::Symlink);
                let target = node.link.as_deref().unwrap_or(OsStr::new("")).as_bytes();
                layer
                    .append(&mut header, rel, Some(target), &xattrs, io::empty())
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
                    .append(&mut header, rel, None, &xattrs, io::empty())
                    .map_err(write_err)
            }
            // Left out by `diff` already.
            Kind::Socket => Ok(()),
        }
    }
}

/// Extended attributes worth carrying in a layer, as sorted PAX `SCHILY.xattr.*` records, from
/// the names `list` found and their values read by `get`.
fn read_xattrs(
    list: io::Result<xattr::XAttrs>,
    get: impl Fn(&OsStr) -> io::Result<Option<Vec<u8>>>,
) -> io::Result<Vec<(String, Vec<u8>)>> {
    let names = match list {
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
        if let Some(value) = get(&name)? {
            out.push((format!("SCHILY.xattr.{text}"), value));
        }
    }
    out.sort();
    Ok(out)
}

/// One path to add to a layer: how to open it, where it is and what the walk saw.
struct Entry<'f, 'a> {
    /// The regular files of the layer, read ahead in order.
    ahead: &'f mut Ahead<'a>,
    rel: &'a [u8],
    node: &'a Node,
}

/// About how many regular files the read-ahead threads may be ahead of the layer writer (each
/// also holds the batch it is reading). With at most [`READ_AHEAD_BYTES`] read of each, the
/// memory they hold stays under 16 MiB.
const READ_AHEAD_FILES: usize = 128;

/// How much of each file the read-ahead thread reads (a whole small file; the writer reads the
/// rest of a bigger one from the open file).
const READ_AHEAD_BYTES: u64 = 64 * 1024;

/// Files are handed from the read-ahead thread to the writer this many at a time (one wake-up
/// per file would cost more than it saves).
const READ_AHEAD_BATCH: usize = 32;

/// How many threads read ahead: one per core, at most 2 (more only contend on the directory),
/// and one for a layer of few files.
fn read_ahead_threads(files: usize) -> usize {
    if files < 4 * READ_AHEAD_BATCH {
        return 1;
    }
    std::thread::available_parallelism().map_or(1, |n| n.get().min(2))
}

/// The writer's end of the read-ahead: batches of files from each thread in turn.
struct Ahead<'a> {
    rx: Vec<std::sync::mpsc::Receiver<Vec<io::Result<ReadAhead<'a>>>>>,
    /// The thread whose batch comes next.
    turn: usize,
    batch: std::vec::IntoIter<io::Result<ReadAhead<'a>>>,
}

impl<'a> Iterator for Ahead<'a> {
    type Item = io::Result<ReadAhead<'a>>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(next) = self.batch.next() {
                return Some(next);
            }
            let rx = self.rx.get(self.turn)?;
            self.turn = (self.turn + 1) % self.rx.len();
            self.batch = rx.recv().ok()?.into_iter();
        }
    }
}

/// A regular file of a layer, opened and partly read ahead of the writer.
struct ReadAhead<'a> {
    rel: &'a [u8],
    /// Open while bytes are left to read after `head`.
    file: Option<File>,
    xattrs: Vec<(String, Vec<u8>)>,
    /// The size when it was opened: what the tar header promises.
    len: u64,
    head: Vec<u8>,
}

/// The regular files of `changes` the writer reads, in its order: every file but a further
/// path of an inode already written (a hardlink entry).
fn files_to_open<'c>(changes: &'c Changes<'_>) -> Vec<&'c [u8]> {
    let mut linked = HashSet::new();
    changes
        .iter()
        .filter_map(|(rel, change)| match change {
            Change::Entry(node) if node.kind == Kind::File => {
                (node.nlink <= 1 || linked.insert((node.dev, node.ino))).then_some(rel.as_ref())
            }
            _ => None,
        })
        .collect()
}

/// Opens the regular file at `rel` (not through a symlink), reads its xattrs (through the open
/// file: one path lookup instead of two), its size and its first [`READ_AHEAD_BYTES`]; a file
/// read whole is closed.
fn read_ahead<'a>(files: &mut Opener, rel: &'a [u8]) -> io::Result<ReadAhead<'a>> {
    let mut file = files.open(rel)?;
    let xattrs = read_xattrs(file.list_xattr(), |n| file.get_xattr(n))?;
    let len = file.metadata()?.len();
    let want = len.min(READ_AHEAD_BYTES);
    let mut head = Vec::with_capacity(want as usize);
    (&mut file).take(want).read_to_end(&mut head)?;
    if (head.len() as u64) < want {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!(
                "{} ended before the {len} bytes it had",
                String::from_utf8_lossy(rel)
            ),
        ));
    }
    Ok(ReadAhead {
        rel,
        file: (len > want).then_some(file),
        xattrs,
        len,
        head,
    })
}

/// Opens the files of a layer relative to their directory, kept open from one file to the next:
/// a layer lists a directory's files together, so the kernel resolves each file's own name
/// rather than its whole path from `/`.
struct Opener {
    root: OwnedFd,
    /// The directory of the last file opened below the root.
    dir: Option<(Vec<u8>, OwnedFd)>,
}

impl Opener {
    fn new(root: &Path) -> rustix::io::Result<Self> {
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
        Ok(Opener {
            root: rustix::fs::open(root, flags, Mode::empty())?,
            dir: None,
        })
    }

    /// Open the regular file at `rel` for reading, not through a symlink.
    fn open(&mut self, rel: &[u8]) -> rustix::io::Result<File> {
        let (parent, name) = split_parent(rel);
        let dir = if parent.is_empty() {
            &self.root
        } else {
            match &mut self.dir {
                Some((path, fd)) if path.as_slice() == parent => fd,
                dir => {
                    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
                    let fd = rustix::fs::openat(&self.root, parent, flags, Mode::empty())?;
                    &dir.insert((parent.to_vec(), fd)).1
                }
            }
        };
        let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        Ok(File::from(rustix::fs::openat(
            dir,
            name,
            flags,
            Mode::empty(),
        )?))
    }
}

/// What a layer must hold to turn `old` into `new`: changed and added paths, whiteouts for the
/// topmost deleted paths, and every parent directory of those (so the layer applies on its own).
fn diff<'a>(old: &State, new: &'a State) -> Changes<'a> {
    let mut changes: Changes<'a> = Vec::new();
    // Directories with a change directly in them.
    let mut touched: Vec<&'a [u8]> = Vec::new();
    let nothing = Vec::new();
    // A deleted path's whiteout goes in its parent directory when that is still a directory;
    // when the parent is gone too (or is no longer a directory), the parent's own whiteout or
    // replacement covers it. So only directories of `new` can hold changes.
    for (dir, listing) in &new.dirs {
        let before = old.dirs.get(dir).unwrap_or(&nothing);
        let first = changes.len();
        // Both listings are sorted by name: merge them.
        let (mut i, mut j) = (0, 0);
        while i < before.len() || j < listing.len() {
            let order = match (before.get(i), listing.get(j)) {
                (Some((was, _)), Some((is, _))) => was.cmp(is),
                (Some(_), None) => Ordering::Less,
                _ => Ordering::Greater,
            };
            if order == Ordering::Less {
                changes.push((
                    Cow::Owned(whiteout_path(dir, &before[i].0)),
                    Change::Whiteout,
                ));
                i += 1;
                continue;
            }
            let (name, node) = &listing[j];
            j += 1;
            if order == Ordering::Equal {
                i += 1;
                if before[i - 1].1 == *node {
                    continue;
                }
            }
            // Sockets cannot be stored in a tar; they are recreated by whoever listens, and one
            // alone must not produce a layer of bare parent directories.
            if node.kind == Kind::Socket {
                continue;
            }
            let path = scan::join(dir, name);
            if name.starts_with(WHITEOUT_PREFIX.as_bytes()) {
                tracing::warn!(
                    path = %OsStr::from_bytes(&path).to_string_lossy(),
                    "not adding a file whose name starts with {WHITEOUT_PREFIX}: layers reserve it for deletions"
                );
                continue;
            }
            changes.push((Cow::Owned(path.into_vec()), Change::Entry(node)));
        }
        if changes.len() > first {
            touched.push(dir);
        }
    }
    let mut parents: HashSet<&'a [u8]> = HashSet::new();
    for dir in touched {
        let mut parent = dir;
        // A parent already added came with its own parents.
        while !parent.is_empty() && parents.insert(parent) {
            parent = split_parent(parent).0;
        }
    }
    for p in parents {
        if let Some(node) = new.get(p).filter(|n| n.kind == Kind::Dir) {
            changes.push((Cow::Borrowed(p), Change::Entry(node)));
        }
    }
    // Stable, so of two changes for one path the first pushed stays: a changed directory or a
    // whiteout is not replaced by a plain parent entry.
    changes.sort_by(|a, b| layer_order(&a.0, &b.0));
    changes.dedup_by(|later, earlier| later.0 == earlier.0);
    changes
}

/// `dir/.wh.name`.
fn whiteout_path(dir: &[u8], name: &[u8]) -> Vec<u8> {
    let mut path = Vec::with_capacity(dir.len() + 1 + WHITEOUT_PREFIX.len() + name.len());
    if !dir.is_empty() {
        path.extend_from_slice(dir);
        path.push(b'/');
    }
    path.extend_from_slice(WHITEOUT_PREFIX.as_bytes());
    path.extend_from_slice(name);
    path
}

/// The order of paths in a layer, the order `Path` compares in (name by name): a directory right
/// before its subtree, the subtree contiguous. Comparing the bytes with `/` ranked below every
/// other byte gives exactly that without splitting into names, since names hold neither `/` nor
/// NUL; plain byte order would not (`a-b` < `a/b`, but the directory `a` and its subtree `a/b`
/// must come before `a-b`).
fn layer_order(a: &[u8], b: &[u8]) -> Ordering {
    let rank = |c: u8| if c == b'/' { 0 } else { c };
    match a.iter().zip(b).position(|(x, y)| x != y) {
        Some(i) => rank(a[i]).cmp(&rank(b[i])),
        None => a.len().cmp(&b.len()),
    }
}

/// `(parent, name)` of a relative path; the parent of a top-level name is empty.
/// Absolute in-image paths as paths relative to the root; `/` itself names the root, which a
/// walk never lists, so ignoring it ignores nothing.
fn rel_paths(paths: &[PathBuf]) -> Vec<RelPath> {
    paths
        .iter()
        .filter_map(|p| {
            let names: Vec<&[u8]> = p
                .components()
                .filter_map(|c| match c {
                    Component::Normal(name) => Some(name.as_bytes()),
                    _ => None,
                })
                .collect();
            (!names.is_empty()).then(|| names.join(&b'/').into_boxed_slice())
        })
        .collect()
}

fn split_parent(path: &[u8]) -> (&[u8], &[u8]) {
    match path.iter().rposition(|&c| c == b'/') {
        Some(cut) => (&path[..cut], &path[cut + 1..]),
        None => (&[], path),
    }
}
