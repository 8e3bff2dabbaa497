//! The single writer of untrusted input into a root filesystem, and the single tar reader.
//! Layers (`crate::unpack`), ADD archives and COPY (`crate::copier`) and tar build contexts
//! (`crate::context`) write only through [`RootWriter`]; it resolves every path inside the root
//! ([`resolve_in_root`]), creates each entry relative to its parent directory's open descriptor
//! ([`RootFd`]: `openat2(RESOLVE_IN_ROOT)` where the kernel has it, else an `O_NOFOLLOW`
//! descent), never writes through a symlink, and sets directory times last. What an entry means
//! (whiteouts, ignore paths, COPY's destination rules) is decided by those callers.
//!
//! Before this module, the layer unpacker and the copier each had their own extractor. Where
//! they differed, each caller keeps its behaviour through an option:
//! - compressions ([`Formats`]): layers gzip, zstd, else plain tar; archives also bzip2 and xz;
//! - recorded metadata ([`Dialect`]): layers honour PAX uid/gid/mtime (with nanoseconds) and
//!   `SCHILY.xattr.*`, read blank numbers as 0, saturate ids; archives read the header only,
//!   fail on a garbled number, truncate ids to 32 bits and apply no xattrs;
//! - owner ([`Meta::owner`]): layers the recorded one (or the caller's without `same_owner`),
//!   ADD the recorded one, contexts 0:0, COPY `--chown`, the source's (`--from`) or 0:0;
//! - implied parent directories ([`ImpliedDirs`]): layers umask mode and the caller's owner;
//!   COPY/ADD/contexts 0755 with the `--chown` owner (else 0:0), reported as written;
//! - xattrs applied: layers only `user.*` and `security.capability` ([`xattrs`]); COPY every
//!   one its source has (default ACLs included);
//! - xattr failures ([`XattrFailures`]): layers warn on ENOTSUP/EPERM and fail otherwise; COPY
//!   never fails on them;
//! - a directory written twice ([`DirTimes`]): layers keep the last time, the copier the first;
//! - the root entry `./`: layers apply a directory's metadata to the root and refuse any other
//!   type; archives skip it (the destination is never re-owned);
//! - hardlinks: both resolve the target inside the root (parent followed, last component not)
//!   and refuse `..` above it; layers name targets from the root, fail on a missing target or
//!   a directory, skip ignored ones and treat a link to itself as done before any check;
//!   archives name targets from the destination and report every bad target as one error;
//! - names: layers keep raw bytes, archives replace invalid UTF-8 (as they always did);
//! - whiteouts and ignore paths exist for layers only: in an ADD archive or a context, `.wh.*`
//!   is a plain file, as in Docker's untar.
//!
//! Two weaknesses are fixed for every caller. A directory's time used to be set through its
//! path after the whole stream, even when a later entry had replaced the directory or one of
//! its parents (by a symlink out of the root, which the time change then followed): times are
//! now set only on a directory still reached from the root through directories. And COPY
//! hardlinked later copies of a multiply-linked source to where it wrote the first, through
//! whatever that path had become (a parent replaced by a symlink out of the root linked a host
//! file into the image): a link target must now still be reached through directories.

mod archive;
mod at;
mod resolve;
mod tarball;
mod writer;
pub mod xattrs;

#[cfg(test)]
mod tests;

use std::path::{Component, Path, PathBuf};

pub use archive::{extract_archive, open_archive, ArchiveOwner, ExtractError};
#[cfg(test)]
pub use at::with_resolution;
pub use at::{list_dir, lstat_at, Follow, Resolution, RootFd, FORCE_FALLBACK_ENV};
pub use resolve::{clean_abs, resolve_in_root};
pub use tarball::{
    clean_entry_path, decompress, for_each_entry, is_archive, Dialect, Formats, Kind, Recorded,
    TarEntry,
};
pub use writer::{
    Content, DirTimes, ImpliedDirs, Meta, NodeKind, RootWriter, Target, WriteError, WriterOptions,
    XattrFailures,
};

/// Subtrees of a root that no write may touch or remove (`/kiln`, `/proc`, mount points), as
/// host paths.
#[derive(Debug, Clone, Default)]
pub struct Protected {
    subtrees: Vec<PathBuf>,
}

impl Protected {
    pub fn none() -> Self {
        Protected::default()
    }

    /// Protect the absolute in-image paths `paths` of `root` (the root itself cannot be).
    pub fn new(root: &Path, paths: &[PathBuf]) -> Self {
        let subtrees = paths
            .iter()
            .map(|p| {
                let mut host = root.to_path_buf();
                host.extend(p.components().filter(|c| matches!(c, Component::Normal(_))));
                host
            })
            .filter(|p| p != root)
            .collect();
        Protected { subtrees }
    }

    /// Whether `host` is in a protected subtree.
    pub fn contains(&self, host: &Path) -> bool {
        self.subtrees.iter().any(|p| host.starts_with(p))
    }

    /// Whether a protected subtree lies strictly below `host`, so `host` itself must stay.
    pub fn holds(&self, host: &Path) -> bool {
        self.subtrees
            .iter()
            .any(|p| p != host && p.starts_with(host))
    }
}

/// The in-image path of `host`, a host path under `root`.
pub fn image_path(root: &Path, host: &Path) -> String {
    let rel = host.strip_prefix(root).unwrap_or(host);
    clean_abs(&rel.to_string_lossy())
}
