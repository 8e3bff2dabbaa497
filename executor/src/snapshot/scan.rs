//! The walk behind every snapshot: records what `lstat` says about each path under a root,
//! directory by directory. It reads the tree only, never follows a symlink and never enters an
//! ignored subtree.
//!
//! Each directory is opened relative to its parent's descriptor and its entries are `fstatat`-ed
//! relative to its own, so the kernel resolves one name per entry instead of the whole path;
//! directories are shared out to a few threads. This is written by hand because walkdir, jwalk
//! and ignore's parallel walker all stat by full path, which is the cost this walk removes.

use std::ffi::{CStr, OsStr, OsString};
use std::mem::MaybeUninit;
use std::num::NonZeroUsize;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread;

use rustix::fs::{AtFlags, FileType, Mode, OFlags, RawDir, CWD};
use rustix::io::Errno;

use super::{split_parent, Kind, Name, Node, RelPath, SnapshotError, State};

/// Two threads halve a 100,000-entry walk on two cores. A directory is the unit of work and the
/// queue has one lock, so more threads than this are not expected to help (not measured beyond
/// two cores).
const MAX_WORKERS: usize = 4;

/// getdents buffer per thread: a few hundred names per call, as glibc's `readdir` reads.
const DIRENT_BUFFER: usize = 32 * 1024;

/// One directory's entries, sorted by name.
type Listing = Vec<(Name, Node)>;

/// Walk `root`, pruning the paths (and subtrees) whose relative paths are in `ignore`. The
/// result is the same whatever the thread timing: each directory is read once and its entries
/// sorted.
pub(super) fn scan(root: &Path, ignore: &[RelPath]) -> Result<State, SnapshotError> {
    let workers = thread::available_parallelism().map_or(1, NonZeroUsize::get);
    scan_with(root, ignore, workers.min(MAX_WORKERS))
}

/// [`scan`] with a given number of threads (at least one: the caller's).
pub(super) fn scan_with(
    root: &Path,
    ignore: &[RelPath],
    workers: usize,
) -> Result<State, SnapshotError> {
    let walk = Walk { root, ignore };
    let mut state = State::default();
    // The root itself is opened through a symlink, as `walkdir` did: it is where the caller
    // points, not something a build step made.
    let fd = match rustix::fs::openat(
        CWD,
        root,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => fd,
        // A root that does not exist has no contents, as a walk of it used to report.
        Err(Errno::NOENT) => {
            state.dirs.insert(RelPath::default(), Vec::new());
            return Ok(state);
        }
        Err(e) => return Err(walk.error(b"", e)),
    };
    let mut buf = Vec::with_capacity(DIRENT_BUFFER);
    let (listing, subdirs) = walk.read_dir(fd, b"", buf.spare_capacity_mut())?;
    state.dirs.insert(RelPath::default(), listing);

    let shared = Shared {
        queue: Mutex::new(Queue {
            pending: subdirs,
            busy: 0,
            failed: None,
            aborted: false,
        }),
        wake: Condvar::new(),
    };
    let parts = thread::scope(|s| {
        // A thread that cannot be started (a pids limit) only makes the walk slower.
        let helpers: Vec<_> = (1..workers.max(1))
            .filter_map(|_| {
                thread::Builder::new()
                    .name("kiln-snapshot".into())
                    .spawn_scoped(s, || {
                        walk.work(&shared, &mut Vec::with_capacity(DIRENT_BUFFER))
                    })
                    .ok()
            })
            .collect();
        let mut parts = vec![walk.work(&shared, &mut buf)];
        for helper in helpers {
            parts.push(
                helper
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
            );
        }
        parts
    });
    let queue = shared
        .queue
        .into_inner()
        .unwrap_or_else(PoisonError::into_inner);
    if let Some(e) = queue.failed {
        return Err(e);
    }
    state.dirs.reserve(parts.iter().map(Vec::len).sum());
    for part in parts {
        state.dirs.extend(part);
    }
    Ok(state)
}

/// A directory to read. Its parent stays open until all its subdirectories have been opened, so
/// no path is ever resolved again.
struct Task {
    parent: Arc<OwnedFd>,
    /// Its path; the last name is the one to open in `parent`.
    rel: RelPath,
}

struct Queue {
    /// Found, not yet read. Used as a stack, so the open parents are about one path from the
    /// root per thread rather than a whole level of a wide tree.
    pending: Vec<Task>,
    /// Threads reading a directory now; the walk is over when none is and nothing is pending.
    busy: usize,
    failed: Option<SnapshotError>,
    /// A thread panicked mid-directory: its `busy` count will never drop, so the others stop.
    aborted: bool,
}

struct Shared {
    queue: Mutex<Queue>,
    wake: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Stops the other threads when this one unwinds, instead of leaving them waiting for it.
struct AbortOnUnwind<'a>(&'a Shared);

impl Drop for AbortOnUnwind<'_> {
    fn drop(&mut self) {
        if thread::panicking() {
            self.0.lock().aborted = true;
            self.0.wake.notify_all();
        }
    }
}

struct Walk<'a> {
    root: &'a Path,
    ignore: &'a [RelPath],
}

impl Walk<'_> {
    fn error(&self, rel: &[u8], errno: Errno) -> SnapshotError {
        SnapshotError::Scan {
            path: self.root.join(OsStr::from_bytes(rel)),
            source: errno.into(),
        }
    }

    /// One thread's share of the walk: the directories it read, in no particular order.
    fn work(&self, shared: &Shared, buf: &mut Vec<u8>) -> Vec<(RelPath, Listing)> {
        let _abort = AbortOnUnwind(shared);
        let mut found = Vec::new();
        let mut queue = shared.lock();
        loop {
            let task = loop {
                if queue.failed.is_some() || queue.aborted {
                    return found;
                }
                if let Some(task) = queue.pending.pop() {
                    break task;
                }
                if queue.busy == 0 {
                    return found;
                }
                queue = shared
                    .wake
                    .wait(queue)
                    .unwrap_or_else(PoisonError::into_inner);
            };
            queue.busy += 1;
            drop(queue);
            let result = self.read_task(task, buf.spare_capacity_mut(), &mut found);
            queue = shared.lock();
            queue.busy -= 1;
            match result {
                Ok(subdirs) => queue.pending.extend(subdirs),
                Err(e) => {
                    queue.failed.get_or_insert(e);
                }
            }
            // Wake the others for new work, or to let them see the walk is over.
            if !queue.pending.is_empty() || queue.busy == 0 || queue.failed.is_some() {
                shared.wake.notify_all();
            }
        }
    }

    fn read_task(
        &self,
        task: Task,
        buf: &mut [MaybeUninit<u8>],
        found: &mut Vec<(RelPath, Listing)>,
    ) -> Result<Vec<Task>, SnapshotError> {
        let name = split_parent(&task.rel).1;
        let opened = open_subdir(&*task.parent, name).map_err(|e| self.error(&task.rel, e))?;
        // The parent is released as soon as its last subdirectory is open.
        drop(task.parent);
        let (listing, subdirs) = match opened {
            Some(fd) => self.read_dir(fd, &task.rel, buf)?,
            // Recorded as a directory, so it is listed as one, with nothing in it.
            None => (Vec::new(), Vec::new()),
        };
        found.push((task.rel, listing));
        Ok(subdirs)
    }

    /// `lstat` every entry of the directory open as `fd` (at `rel`): its sorted listing and the
    /// subdirectories to read next.
    fn read_dir(
        &self,
        fd: OwnedFd,
        rel: &[u8],
        buf: &mut [MaybeUninit<u8>],
    ) -> Result<(Listing, Vec<Task>), SnapshotError> {
        // Ignored paths are few; only those directly in this directory can match an entry.
        let ignored: Vec<&[u8]> = self
            .ignore
            .iter()
            .filter_map(|path| match split_parent(path) {
                (parent, name) if parent == rel => Some(name),
                _ => None,
            })
            .collect();
        let mut listing = Vec::new();
        let mut subdir_names = Vec::new();
        let mut entries = RawDir::new(&fd, buf);
        while let Some(entry) = entries.next() {
            let entry = match entry {
                Ok(entry) => entry,
                // Removed while being read: what was read is all there is.
                Err(Errno::NOENT) => break,
                Err(e) => return Err(self.error(rel, e)),
            };
            let name = entry.file_name();
            if name == c"." || name == c".." {
                continue;
            }
            if ignored.contains(&name.to_bytes()) {
                continue;
            }
            let node =
                stat_entry(&fd, name).map_err(|e| self.error(&join(rel, name.to_bytes()), e))?;
            let Some(node) = node else { continue };
            if node.kind == Kind::Dir {
                subdir_names.push(listing.len());
            }
            listing.push((Name::from(name.to_bytes()), node));
        }
        let subdirs = if subdir_names.is_empty() {
            Vec::new()
        } else {
            let parent = Arc::new(fd);
            subdir_names
                .into_iter()
                .map(|i| Task {
                    parent: Arc::clone(&parent),
                    rel: join(rel, &listing[i].0),
                })
                .collect()
        };
        listing.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        Ok((listing, subdirs))
    }
}

/// `rel/name`, or `name` at the top.
pub(super) fn join(rel: &[u8], name: &[u8]) -> RelPath {
    let mut path = Vec::with_capacity(rel.len() + 1 + name.len());
    if !rel.is_empty() {
        path.extend_from_slice(rel);
        path.push(b'/');
    }
    path.extend_from_slice(name);
    path.into_boxed_slice()
}

/// Open a subdirectory found by `stat_entry`, or `None` when it is no longer a directory by
/// that name: removed, or replaced by a file or a symlink (which is never followed) since it was
/// stat-ed. Either way the next snapshot sees the new entry; its old contents are gone.
pub(super) fn open_subdir(parent: impl AsFd, name: &[u8]) -> Result<Option<OwnedFd>, Errno> {
    match rustix::fs::openat(
        parent,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => Ok(Some(fd)),
        Err(Errno::NOENT | Errno::NOTDIR | Errno::LOOP) => Ok(None),
        Err(e) => Err(e),
    }
}

/// `lstat` (and `readlink`) the entry `name` of the directory open as `dir`, or `None` when it
/// vanished since the directory was read: something a step left running may delete files while
/// we walk, and a vanished path is simply not part of this state.
pub(super) fn stat_entry(dir: impl AsFd, name: &CStr) -> Result<Option<Node>, Errno> {
    let st = match rustix::fs::statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => st,
        Err(Errno::NOENT) => return Ok(None),
        Err(e) => return Err(e),
    };
    let kind = match FileType::from_raw_mode(st.st_mode) {
        FileType::Directory => Kind::Dir,
        FileType::Symlink => Kind::Symlink,
        FileType::RegularFile => Kind::File,
        FileType::CharacterDevice => Kind::Char,
        FileType::BlockDevice => Kind::Block,
        FileType::Fifo => Kind::Fifo,
        // Like sockets, anything else cannot be stored in a layer and is left out by `diff`.
        FileType::Socket | FileType::Unknown => Kind::Socket,
    };
    let link = if kind == Kind::Symlink {
        match rustix::fs::readlinkat(&dir, name, Vec::new()) {
            Ok(target) => Some(OsString::from_vec(target.into_bytes())),
            Err(Errno::NOENT) => return Ok(None),
            Err(e) => return Err(e),
        }
    } else {
        None
    };
    // The same conversions as std's `MetadataExt`, so a state means what it did before. (The
    // field types differ between architectures, hence `as`.)
    Ok(Some(Node {
        kind,
        mode: st.st_mode & 0o7777,
        uid: st.st_uid,
        gid: st.st_gid,
        size: st.st_size as u64,
        mtime: (st.st_mtime as i64, st.st_mtime_nsec as i64),
        ctime: (st.st_ctime as i64, st.st_ctime_nsec as i64),
        ino: st.st_ino as u64,
        dev: st.st_dev as u64,
        rdev: st.st_rdev as u64,
        nlink: st.st_nlink as u64,
        link,
    }))
}
