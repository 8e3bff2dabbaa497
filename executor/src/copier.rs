//! COPY/ADD into a root filesystem with Docker/BuildKit semantics: where each source lands, with
//! which owner and mode. Every write goes through [`crate::rootfs`], so neither a symlink already
//! in the image (`/bin -> usr/bin`, a hostile `/x -> /`) nor a hostile archive entry can write
//! outside `root`; every read goes through [`read`], so no symlink in a source (a stage's
//! `/x/a -> /etc/shadow`) is followed out of the directory the source is confined to. This
//! module does not decide what to copy (the build context does), nor snapshot anything, nor
//! write a file itself.

mod read;

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::{self, File};
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use filetime::FileTime;
use rustix::fs::{FileType, Stat};

use crate::fsutil::{clean_abs, resolve_in_root};
use crate::rootfs::{
    extract_archive, image_path, list_dir, lstat_at, open_archive, ArchiveOwner, Content, DirTimes,
    ExtractError, ImpliedDirs, Meta, NodeKind, Protected, Resolution, RootWriter, WriteError,
    WriterOptions, XattrFailures,
};

use crate::context::IgnoreMatcher;
pub use crate::rootfs::is_archive;
pub use mode::Chmod;
pub use read::Source;
use read::{open_entry, open_source, Opened};

mod mode;
#[cfg(test)]
mod tests;

/// How COPY writes what it copies.
pub struct CopyOptions<'a> {
    /// `--chown`: owner of everything written, including created parent directories.
    pub chown: Option<(u32, u32)>,
    /// `--chmod`: mode of every copied file and directory (not of created parents or `dest`).
    pub chmod: Option<Chmod>,
    /// Host path of a source file/directory → skip it (`.dockerignore`); may always say no.
    pub exclude: &'a dyn Fn(&Path) -> bool,
    /// `--exclude=` patterns, matched (as `.dockerignore` lines, a directory's contents with
    /// it) against each entry's path relative to the source it is copied from, as BuildKit's
    /// copier does: a source named in the instruction, or matched by its wildcard, is never
    /// excluded itself.
    pub exclude_patterns: Option<&'a IgnoreMatcher>,
    /// `COPY --from` keeps the source uid/gid; from the build context they become 0:0.
    pub preserve_owner: bool,
}

/// Why a copy or an extraction failed: reading a source, or writing it into the root (the root
/// writer's own errors, shared with every other writer of untrusted input).
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error("when using COPY with more than one source file, the destination must be a directory and end with a /")]
    MultipleSourcesNeedDirectory,
    #[error("reading COPY source {path}: {source}")]
    Source { path: PathBuf, source: io::Error },
    #[error(transparent)]
    Extract(#[from] ExtractError),
}

impl From<WriteError> for CopyError {
    fn from(e: WriteError) -> Self {
        ExtractError::from(e).into()
    }
}

/// Copy `sources` into `root` at in-image path `dest` (absolute, already expanded and joined
/// with WORKDIR; a trailing `/` means "into this directory").
///
/// Files land at `dest` itself, or at `dest/<name>` when `dest` ends with `/` or is an existing
/// directory; a directory's contents are merged into `dest` (created 0755 when missing, as buildah
/// does: the source directory's own mode is not applied to `dest`). A source that is a symlink is
/// followed inside the directory the source is confined to ([`Source::root`]) and keeps its own
/// name; symlinks inside a copied directory are copied as symlinks, never followed; hard links
/// among the copied files stay hard links. `dest` and its parents are followed through image
/// symlinks (confined to `root`), but a directory inside a copied tree replaces a symlink of the
/// same name, as buildah does. Several sources need `dest` to end with `/` or to be an existing
/// directory (buildah accepts the latter). Returns the in-image paths written, after symlink
/// resolution (for example `/usr/bin/x` for `dest` `/bin/` when `/bin -> usr/bin`), including
/// parent directories created.
pub fn copy_into_root<S: Clone + Into<Source>>(
    sources: &[S],
    root: &Path,
    dest: &str,
    opts: &CopyOptions,
) -> Result<Vec<String>, CopyError> {
    copy_into_root_with(sources, root, dest, opts, Resolution::detect())
}

/// [`copy_into_root`], opening paths inside roots with `resolution` (tests run both).
pub fn copy_into_root_with<S: Clone + Into<Source>>(
    sources: &[S],
    root: &Path,
    dest: &str,
    opts: &CopyOptions,
    resolution: Resolution,
) -> Result<Vec<String>, CopyError> {
    let dest_clean = clean_abs(dest);
    let into_dir = dest.ends_with('/') || dest.ends_with("/.") || is_dir_in_root(root, &dest_clean);
    if sources.len() > 1 && !into_dir {
        return Err(CopyError::MultipleSourcesNeedDirectory);
    }
    let writer_opts = WriterOptions {
        implied_dirs: ImpliedDirs::Owned(opts.chown.unwrap_or((0, 0))),
        xattr_failures: XattrFailures::Ignore,
        dir_times: DirTimes::FirstWins,
        record: true,
    };
    let mut c = Copier {
        w: RootWriter::new(root, Protected::none(), writer_opts).with_resolution(resolution),
        links: HashMap::new(),
        opts,
    };
    for src in sources {
        let src: Source = src.clone().into();
        // A top-level symlink is followed inside the source's root (buildah and Docker copy
        // what it points to).
        let (stat, opened) = open_source(&src, resolution).map_err(|source| CopyError::Source {
            path: src.shown.clone(),
            source,
        })?;
        if let Opened::Dir(dir) = &opened {
            c.w.ensure_dir(in_root(&dest_clean))?;
            c.copy_tree(dir.as_fd(), &src.shown, Path::new(""), &dest_clean)?;
        } else {
            let target = if into_dir {
                c.w.ensure_dir(in_root(&dest_clean))?;
                if src.name.is_empty() {
                    return Err(CopyError::Source {
                        path: src.shown.clone(),
                        source: io::Error::new(
                            io::ErrorKind::InvalidInput,
                            "source has no file name",
                        ),
                    });
                }
                join_image(&dest_clean, &src.name.to_string_lossy())
            } else {
                c.w.ensure_dir(in_root(&parent_of(&dest_clean)))?;
                dest_clean.clone()
            };
            c.copy_entry(&stat, opened, &src.shown, &target)?;
        }
    }
    let written = c.w.finish()?;
    Ok(written.iter().map(|host| image_path(root, host)).collect())
}

/// Extract a local archive (tar, tar.gz, tar.zst; detected by content) into `dest` for ADD.
/// Entries keep their recorded owner; `chown` only applies to directories created for `dest`
/// (as buildah does). No entry may leave `dest`.
pub fn add_archive_into_root(
    archive: &Path,
    root: &Path,
    dest: &str,
    chown: Option<(u32, u32)>,
) -> Result<Vec<String>, CopyError> {
    let label = archive.display().to_string();
    let archive_err = |source| {
        CopyError::Extract(ExtractError::Archive {
            path: label.clone(),
            source,
        })
    };
    // The caller resolved the archive's path: a symlink there now was swapped in since.
    let file = File::options()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(archive)
        .map_err(archive_err)?;
    let stream = open_archive(file, &label)?;
    let owner = ArchiveOwner::Recorded {
        created: chown.unwrap_or((0, 0)),
    };
    extract_archive(stream, root, dest, owner).map_err(|e| match e {
        ExtractError::Archive { source, .. } => archive_err(source),
        other => other.into(),
    })
}

/// One COPY: the writer, and where each multiply-linked source file was first copied.
struct Copier<'r, 'o> {
    w: RootWriter<'r>,
    /// (dev, inode) of a source file with several links → where its first copy was written.
    links: HashMap<(u64, u64), PathBuf>,
    opts: &'o CopyOptions<'o>,
}

impl Copier<'_, '_> {
    /// Copy everything below the directory open as `dir` (shown as `shown`, at `rel` below the
    /// source) into `dest`, in name order, each directory before its entries; nothing is
    /// followed.
    fn copy_tree(
        &mut self,
        dir: BorrowedFd<'_>,
        shown: &Path,
        rel: &Path,
        dest: &str,
    ) -> Result<(), CopyError> {
        let src_err = |path: &Path, source| CopyError::Source {
            path: path.to_path_buf(),
            source,
        };
        let dir_shown = shown.join(rel);
        for name in list_dir(dir).map_err(|e| src_err(&dir_shown, e))? {
            let entry_shown = dir_shown.join(&name);
            if (self.opts.exclude)(&entry_shown) {
                continue;
            }
            let entry_rel = rel.join(&name);
            if let Some(patterns) = self.opts.exclude_patterns {
                let rel_text = entry_rel.to_string_lossy();
                if patterns.matches(&rel_text) {
                    if patterns.may_reinclude_under(&rel_text) {
                        return Err(src_err(
                            &entry_shown,
                            io::Error::new(
                                io::ErrorKind::Unsupported,
                                "--exclude: a ! pattern re-including files below an excluded \
                                 directory is not supported",
                            ),
                        ));
                    }
                    continue;
                }
            }
            let stat = match lstat_at(dir, &name) {
                Ok(stat) => stat,
                // Gone since the listing: as if it had not been there.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(src_err(&entry_shown, e)),
            };
            let target = join_image(dest, &entry_rel.to_string_lossy());
            let opened = open_entry(dir, &name, &stat, &entry_shown)
                .map_err(|e| src_err(&entry_shown, e))?;
            if let Opened::Dir(sub) = &opened {
                let sub = sub.try_clone().map_err(|e| src_err(&entry_shown, e))?;
                self.copy_entry(&stat, opened, &entry_shown, &target)?;
                self.copy_tree(sub.as_fd(), shown, &entry_rel, dest)?;
            } else {
                self.copy_entry(&stat, opened, &entry_shown, &target)?;
            }
        }
        Ok(())
    }

    /// Copy one source entry (not followed; `stat` is its lstat, `opened` what [`read`] opened)
    /// to in-image path `target`. A directory over an existing directory merges into it;
    /// anything else there, a symlink included, is replaced: buildah (and the classic Docker
    /// builder) turn `/bin -> usr/bin` into a real `/bin` when a copied tree has a `bin/`
    /// directory. Only the destination and its parents are followed.
    fn copy_entry(
        &mut self,
        stat: &Stat,
        opened: Opened,
        shown: &Path,
        target: &str,
    ) -> Result<(), CopyError> {
        let opts = self.opts;
        let owner = opts.chown.unwrap_or(if opts.preserve_owner {
            (stat.st_uid, stat.st_gid)
        } else {
            (0, 0)
        });
        let mut em = Meta {
            mode: match &opts.chmod {
                Some(chmod) => {
                    chmod.apply(stat.st_mode, stat.st_mode & libc::S_IFMT == libc::S_IFDIR)
                }
                None => stat.st_mode & 0o7777,
            },
            owner: Some(owner),
            atime: file_time(stat.st_atime, stat.st_atime_nsec),
            mtime: file_time(stat.st_mtime, stat.st_mtime_nsec),
            xattrs: Vec::new(),
        };
        let mut t = self.w.locate(in_root(target))?;
        match opened {
            Opened::Dir(dir) => {
                // Directories keep their xattrs like files do (buildah and BuildKit copy them;
                // default ACLs live there).
                em.xattrs = read_xattrs(&dir, shown);
                self.w.dir(&mut t, &em)?;
            }
            Opened::File(mut file) => {
                let key = (stat.st_dev, stat.st_ino);
                if stat.st_nlink > 1 {
                    if let Some(first) = self.links.get(&key) {
                        return Ok(self.w.hardlink(&mut t, first)?);
                    }
                }
                em.xattrs = read_xattrs(&file, shown);
                self.w.file(&mut t, Content::File(&mut file), &em)?;
                if stat.st_nlink > 1 {
                    self.links.insert(key, t.host().to_path_buf());
                }
            }
            Opened::Symlink(link) => {
                self.w.symlink(&mut t, &link, &em)?;
            }
            Opened::Other => {
                let kind = match FileType::from_raw_mode(stat.st_mode) {
                    FileType::Fifo => NodeKind::Fifo,
                    FileType::CharacterDevice => NodeKind::Char,
                    FileType::BlockDevice => NodeKind::Block,
                    _ => {
                        tracing::debug!(path = %shown.display(), "skipping socket in COPY source");
                        return Ok(());
                    }
                };
                self.w.node(&mut t, kind, stat.st_rdev, &em)?;
            }
        }
        Ok(())
    }
}

/// The extended attributes of the entry open as `file` (shown as `shown`), to copy with it;
/// those that cannot be read are left out, as with buildah.
fn read_xattrs(file: &File, shown: &Path) -> Vec<(Vec<u8>, Vec<u8>)> {
    use xattr::FileExt;
    let Ok(names) = file.list_xattr() else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for name in names {
        match file.get_xattr(&name) {
            Ok(Some(value)) => {
                use std::os::unix::ffi::OsStrExt;
                out.push((OsStr::as_bytes(&name).to_vec(), value));
            }
            Ok(None) => {}
            Err(e) => {
                tracing::debug!(attr = ?name, path = %shown.display(), error = %e, "could not read xattr")
            }
        }
    }
    out
}

/// A stat time (its field types differ between architectures) as a [`FileTime`].
fn file_time(secs: impl Into<i64>, nanos: impl TryInto<u32>) -> FileTime {
    FileTime::from_unix_time(secs.into(), nanos.try_into().unwrap_or(0))
}

fn is_dir_in_root(root: &Path, image_path: &str) -> bool {
    resolve_in_root(root, Path::new(image_path), true)
        .and_then(fs::symlink_metadata)
        .map(|m| m.is_dir())
        .unwrap_or(false)
}

/// An in-image path (absolute, clean) as the root-relative path the writer takes.
fn in_root(image_path: &str) -> &Path {
    Path::new(image_path.trim_start_matches('/'))
}

fn join_image(dir: &str, rel: &str) -> String {
    clean_abs(&format!("{dir}/{rel}"))
}

fn parent_of(image_path: &str) -> String {
    match image_path.rfind('/') {
        Some(0) | None => "/".to_string(),
        Some(i) => image_path[..i].to_string(),
    }
}
