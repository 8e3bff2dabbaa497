//! COPY/ADD into a root filesystem with Docker/BuildKit semantics: where each source lands, with
//! which owner and mode. Every write goes through [`crate::rootfs`], so neither a symlink already
//! in the image (`/bin -> usr/bin`, a hostile `/x -> /`) nor a hostile archive entry can write
//! outside `root`. This module does not decide what to copy (the build context does), nor
//! snapshot anything, nor write a file itself.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use filetime::FileTime;

use crate::fsutil::{clean_abs, resolve_in_root};
use crate::rootfs::{
    extract_archive, image_path, open_archive, ArchiveOwner, Content, DirTimes, ExtractError,
    ImpliedDirs, Meta, NodeKind, Protected, RootWriter, WriteError, WriterOptions, XattrFailures,
};

pub use crate::rootfs::is_archive;

#[cfg(test)]
mod tests;

/// How COPY writes what it copies.
pub struct CopyOptions<'a> {
    /// `--chown`: owner of everything written, including created parent directories.
    pub chown: Option<(u32, u32)>,
    /// `--chmod`: mode of every copied file and directory (not of created parents or `dest`).
    pub chmod: Option<u32>,
    /// Host path of a source file/directory → skip it (`.dockerignore`); may always say no.
    pub exclude: &'a dyn Fn(&Path) -> bool,
    /// `COPY --from` keeps the source uid/gid; from the build context they become 0:0.
    pub preserve_owner: bool,
}

/// Why a copy or an extraction failed.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error("when using COPY with more than one source file, the destination must be a directory and end with a /")]
    MultipleSourcesNeedDirectory,
    #[error("reading COPY source {path}: {source}")]
    Source { path: PathBuf, source: io::Error },
    #[error("writing {path} into the image: {source}")]
    Write { path: String, source: io::Error },
    #[error("cannot create directory {path} in the image: a non-directory is in the way")]
    NotADirectory { path: String },
    #[error("reading archive {path}: {source}")]
    Archive { path: String, source: io::Error },
    #[error(
        "archive entry {entry} would be written outside its destination; refusing the archive"
    )]
    UnsafeEntry { entry: String },
    #[error(
        "archive entry {entry} is a hard link to {target}, which is not a file extracted before it"
    )]
    BadHardLink { entry: String, target: String },
    #[error("archive {path} is compressed with {format}, which is not supported yet; recompress it as tar, tar.gz or tar.zst")]
    UnsupportedCompression { path: String, format: &'static str },
}

impl From<ExtractError> for CopyError {
    fn from(e: ExtractError) -> Self {
        match e {
            ExtractError::Archive { path, source } => CopyError::Archive { path, source },
            ExtractError::UnsafeEntry { entry } => CopyError::UnsafeEntry { entry },
            ExtractError::BadHardLink { entry, target } => CopyError::BadHardLink { entry, target },
            ExtractError::UnsupportedCompression { path, format } => {
                CopyError::UnsupportedCompression { path, format }
            }
            ExtractError::Write { path, source } => CopyError::Write { path, source },
            ExtractError::NotADirectory { path } => CopyError::NotADirectory { path },
        }
    }
}

impl From<WriteError> for CopyError {
    fn from(e: WriteError) -> Self {
        ExtractError::from(e).into()
    }
}

/// Copy `sources` (absolute host paths) into `root` at in-image path `dest` (absolute, already
/// expanded and joined with WORKDIR; a trailing `/` means "into this directory").
///
/// Files land at `dest` itself, or at `dest/<name>` when `dest` ends with `/` or is an existing
/// directory; a directory's contents are merged into `dest` (created 0755 when missing, as buildah
/// does: the source directory's own mode is not applied to `dest`). A source that is a symlink is
/// followed; symlinks inside a copied directory are copied as symlinks; hard links among the copied
/// files stay hard links. `dest` and its parents are followed through image symlinks (confined to
/// `root`), but a directory inside a copied tree replaces a symlink of the same name, as buildah
/// does. Several sources need `dest` to end with `/` or to be an existing directory (buildah
/// accepts the latter). Returns the in-image paths written, after symlink resolution (for example
/// `/usr/bin/x` for `dest` `/bin/` when `/bin -> usr/bin`), including parent directories created.
pub fn copy_into_root(
    sources: &[PathBuf],
    root: &Path,
    dest: &str,
    opts: &CopyOptions,
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
        w: RootWriter::new(root, Protected::none(), writer_opts),
        links: HashMap::new(),
        opts,
    };
    for src in sources {
        // A top-level symlink is followed (buildah and Docker copy what it points to).
        let meta = fs::metadata(src).map_err(|source| CopyError::Source {
            path: src.clone(),
            source,
        })?;
        if meta.is_dir() {
            c.w.ensure_dir(in_root(&dest_clean))?;
            c.copy_tree(src, &dest_clean)?;
        } else {
            let target = if into_dir {
                c.w.ensure_dir(in_root(&dest_clean))?;
                let name = src.file_name().ok_or_else(|| CopyError::Source {
                    path: src.clone(),
                    source: io::Error::new(io::ErrorKind::InvalidInput, "source has no file name"),
                })?;
                join_image(&dest_clean, &name.to_string_lossy())
            } else {
                c.w.ensure_dir(in_root(&parent_of(&dest_clean)))?;
                dest_clean.clone()
            };
            c.copy_entry(src, &meta, &target)?;
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
    let archive_err = |source| CopyError::Archive {
        path: label.clone(),
        source,
    };
    let file = File::open(archive).map_err(archive_err)?;
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
    fn copy_tree(&mut self, src_dir: &Path, dest: &str) -> Result<(), CopyError> {
        let mut walker = walkdir::WalkDir::new(src_dir)
            .min_depth(1)
            .follow_links(false)
            .sort_by_file_name()
            .into_iter();
        while let Some(entry) = walker.next() {
            let entry = entry.map_err(|e| CopyError::Source {
                path: e
                    .path()
                    .map(Path::to_path_buf)
                    .unwrap_or_else(|| src_dir.to_path_buf()),
                source: e
                    .into_io_error()
                    .unwrap_or_else(|| io::Error::other("directory walk failed")),
            })?;
            let path = entry.path();
            if (self.opts.exclude)(path) {
                if entry.file_type().is_dir() {
                    walker.skip_current_dir();
                }
                continue;
            }
            let rel = path.strip_prefix(src_dir).map_err(|_| CopyError::Source {
                path: path.to_path_buf(),
                source: io::Error::other("walked outside the source directory"),
            })?;
            let target = join_image(dest, &rel.to_string_lossy());
            let meta = fs::symlink_metadata(path).map_err(|source| CopyError::Source {
                path: path.to_path_buf(),
                source,
            })?;
            self.copy_entry(path, &meta, &target)?;
        }
        Ok(())
    }

    /// Copy one source entry (not followed) to in-image path `target`. A directory over an
    /// existing directory merges into it; anything else there, a symlink included, is replaced:
    /// buildah (and the classic Docker builder) turn `/bin -> usr/bin` into a real `/bin` when a
    /// copied tree has a `bin/` directory. Only the destination and its parents are followed.
    fn copy_entry(
        &mut self,
        src: &Path,
        meta: &fs::Metadata,
        target: &str,
    ) -> Result<(), CopyError> {
        let opts = self.opts;
        let owner = opts.chown.unwrap_or(if opts.preserve_owner {
            (meta.uid(), meta.gid())
        } else {
            (0, 0)
        });
        let mut em = Meta {
            mode: opts.chmod.unwrap_or(meta.mode() & 0o7777),
            owner: Some(owner),
            atime: FileTime::from_last_access_time(meta),
            mtime: FileTime::from_last_modification_time(meta),
            xattrs: Vec::new(),
        };
        let src_err = |source| CopyError::Source {
            path: src.to_path_buf(),
            source,
        };
        let mut t = self.w.locate(in_root(target))?;
        let ft = meta.file_type();
        if ft.is_dir() {
            // Directories keep their xattrs like files do (buildah and BuildKit copy them;
            // default ACLs live there).
            em.xattrs = read_xattrs(src);
            self.w.dir(&mut t, &em)?;
        } else if ft.is_file() {
            let key = (meta.dev(), meta.ino());
            if meta.nlink() > 1 {
                if let Some(first) = self.links.get(&key) {
                    return Ok(self.w.hardlink(&mut t, first)?);
                }
            }
            let mut file = File::open(src).map_err(src_err)?;
            em.xattrs = read_xattrs(src);
            self.w.file(&mut t, Content::File(&mut file), &em)?;
            if meta.nlink() > 1 {
                self.links.insert(key, t.host().to_path_buf());
            }
        } else if ft.is_symlink() {
            let link = fs::read_link(src).map_err(src_err)?;
            self.w.symlink(&mut t, link.as_os_str(), &em)?;
        } else {
            use std::os::unix::fs::FileTypeExt;
            let kind = if ft.is_fifo() {
                NodeKind::Fifo
            } else if ft.is_char_device() {
                NodeKind::Char
            } else if ft.is_block_device() {
                NodeKind::Block
            } else {
                tracing::debug!(path = %src.display(), "skipping socket in COPY source");
                return Ok(());
            };
            self.w.node(&mut t, kind, meta.rdev(), &em)?;
        }
        Ok(())
    }
}

/// The extended attributes of `src` (not followed), to copy with it; those that cannot be read
/// are left out, as with buildah.
fn read_xattrs(src: &Path) -> Vec<(Vec<u8>, Vec<u8>)> {
    let Ok(names) = xattr::list(src) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for name in names {
        match xattr::get(src, &name) {
            Ok(Some(value)) => {
                use std::os::unix::ffi::OsStrExt;
                out.push((name.as_bytes().to_vec(), value));
            }
            Ok(None) => {}
            Err(e) => {
                tracing::debug!(attr = ?name, path = %src.display(), error = %e, "could not read xattr")
            }
        }
    }
    out
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
