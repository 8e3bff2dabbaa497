//! COPY/ADD into a root filesystem with Docker/BuildKit semantics, and safe tar extraction.
//! Every write is resolved with [`resolve_in_root`], so neither a symlink already in the image
//! (`/bin -> usr/bin`, a hostile `/x -> /`) nor a hostile archive entry can write outside `root`.
//! This module does not decide what to copy (the build context does) nor snapshot anything.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use filetime::FileTime;

use crate::fsutil::{clean_abs, resolve_in_root};

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

/// Owner given to entries extracted from a tar stream.
#[derive(Debug, Clone, Copy)]
pub(crate) enum TarOwnership {
    /// Everything 0:0 (a build context).
    Root,
    /// The uid/gid recorded in the archive; directories the archive does not describe (the
    /// destination, missing parents) get `created` (ADD `--chown`, else 0:0). buildah does not
    /// apply `--chown` to the extracted entries themselves.
    Keep { created: (u32, u32) },
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
    let parent_owner = opts.chown.unwrap_or((0, 0));
    let mut w = Writer::new(root);
    for src in sources {
        // A top-level symlink is followed (buildah and Docker copy what it points to).
        let meta = fs::metadata(src).map_err(|source| CopyError::Source {
            path: src.clone(),
            source,
        })?;
        if meta.is_dir() {
            w.ensure_dir(&dest_clean, parent_owner)?;
            copy_tree(&mut w, src, &dest_clean, opts)?;
        } else {
            let target = if into_dir {
                w.ensure_dir(&dest_clean, parent_owner)?;
                let name = src.file_name().ok_or_else(|| CopyError::Source {
                    path: src.clone(),
                    source: io::Error::new(io::ErrorKind::InvalidInput, "source has no file name"),
                })?;
                join_image(&dest_clean, &name.to_string_lossy())
            } else {
                w.ensure_dir(&parent_of(&dest_clean), parent_owner)?;
                dest_clean.clone()
            };
            copy_entry(&mut w, src, &meta, &target, opts)?;
        }
    }
    w.finish()
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
    let archive_err = |source: io::Error| CopyError::Archive {
        path: archive.display().to_string(),
        source,
    };
    let file = File::open(archive).map_err(archive_err)?;
    let mut reader = BufReader::new(file);
    let magic = reader.fill_buf().map_err(archive_err)?.to_vec();
    if let Some(format) = unsupported_compression(&magic) {
        return Err(CopyError::UnsupportedCompression {
            path: archive.display().to_string(),
            format,
        });
    }
    let stream = decompress(reader, &magic).map_err(archive_err)?;
    let owner = TarOwnership::Keep {
        created: chown.unwrap_or((0, 0)),
    };
    extract_tar(stream, root, dest, owner).map_err(|e| match e {
        CopyError::Archive { source, .. } => archive_err(source),
        other => other,
    })
}

/// Whether ADD should extract `path`: a tar stream, possibly gzip/zstd-compressed (bzip2 and xz
/// count too so that ADD reports them as unsupported instead of silently copying them).
pub fn is_archive(path: &Path) -> bool {
    let Ok(file) = File::open(path) else {
        return false;
    };
    let mut reader = BufReader::new(file);
    let Ok(magic) = reader.fill_buf().map(|b| b.to_vec()) else {
        return false;
    };
    if unsupported_compression(&magic).is_some() {
        return true;
    }
    let Ok(mut stream) = decompress(reader, &magic) else {
        return false;
    };
    let mut header = [0u8; 512];
    if stream.read_exact(&mut header).is_err() {
        return false;
    }
    is_tar_header(&header)
}

/// Open `file` as a possibly gzip/zstd-compressed stream, chosen by its first bytes.
pub(crate) fn decompressing_reader(file: File) -> Result<Box<dyn Read>, CopyError> {
    let mut reader = BufReader::new(file);
    let err = |source| CopyError::Archive {
        path: "build context".to_string(),
        source,
    };
    let magic = reader.fill_buf().map_err(err)?.to_vec();
    if let Some(format) = unsupported_compression(&magic) {
        return Err(CopyError::UnsupportedCompression {
            path: "build context".to_string(),
            format,
        });
    }
    decompress(reader, &magic).map_err(err)
}

fn decompress(reader: BufReader<File>, magic: &[u8]) -> io::Result<Box<dyn Read>> {
    if magic.starts_with(&[0x1f, 0x8b]) {
        Ok(Box::new(flate2::read::MultiGzDecoder::new(reader)))
    } else if magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Ok(Box::new(zstd::stream::read::Decoder::with_buffer(reader)?))
    } else {
        Ok(Box::new(reader))
    }
}

fn unsupported_compression(magic: &[u8]) -> Option<&'static str> {
    if magic.starts_with(b"BZh") {
        Some("bzip2")
    } else if magic.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0x00]) {
        Some("xz")
    } else {
        None
    }
}

/// A ustar/GNU magic, or a valid header checksum (old v7 archives have no magic).
fn is_tar_header(h: &[u8; 512]) -> bool {
    if &h[257..262] == b"ustar" {
        return true;
    }
    if h.iter().all(|b| *b == 0) {
        return false;
    }
    let stored = std::str::from_utf8(&h[148..156])
        .ok()
        .map(|s| s.trim_matches(|c: char| c == '\0' || c == ' '))
        .and_then(|s| u32::from_str_radix(s, 8).ok());
    let computed: u32 = h
        .iter()
        .enumerate()
        .map(|(i, b)| {
            if (148..156).contains(&i) {
                u32::from(b' ')
            } else {
                u32::from(*b)
            }
        })
        .sum();
    stored == Some(computed)
}

/// Extract a tar stream under in-image directory `dest` of `root`. Entries whose path (or hard
/// link target) climbs out of `dest` reject the whole archive; absolute names are taken as
/// relative to `dest`, like Docker.
pub(crate) fn extract_tar<R: Read>(
    reader: R,
    root: &Path,
    dest: &str,
    ownership: TarOwnership,
) -> Result<Vec<String>, CopyError> {
    let dest_clean = clean_abs(dest);
    let ar_err = |source: io::Error| CopyError::Archive {
        path: dest_clean.clone(),
        source,
    };
    let created_owner = match ownership {
        TarOwnership::Keep { created } => created,
        TarOwnership::Root => (0, 0),
    };
    let mut w = Writer::new(root);
    w.ensure_dir(&dest_clean, created_owner)?;
    let mut archive = tar::Archive::new(reader);
    for entry in archive.entries().map_err(ar_err)? {
        let mut entry = entry.map_err(ar_err)?;
        let raw = entry.path().map_err(ar_err)?.into_owned();
        let entry_name = raw.display().to_string();
        let rel = safe_rel(&raw).ok_or_else(|| CopyError::UnsafeEntry {
            entry: entry_name.clone(),
        })?;
        let header = entry.header();
        let kind = header.entry_type();
        if rel.is_empty() {
            // "./" itself: never re-own or re-mode the destination.
            continue;
        }
        let target = join_image(&dest_clean, &rel);
        let mode = header.mode().map_err(ar_err)? & 0o7777;
        let owner = match ownership {
            TarOwnership::Root => (0, 0),
            TarOwnership::Keep { .. } => (
                header.uid().map_err(ar_err)? as u32,
                header.gid().map_err(ar_err)? as u32,
            ),
        };
        let mtime = FileTime::from_unix_time(header.mtime().map_err(ar_err)? as i64, 0);
        let meta = EntryMeta {
            mode,
            owner,
            atime: mtime,
            mtime,
        };
        w.ensure_dir(&parent_of(&target), created_owner)?;
        match kind {
            tar::EntryType::Directory => w.make_dir(&target, &meta)?,
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
                w.write_file(&target, &mut entry, &meta, None)?;
            }
            tar::EntryType::Symlink => {
                let link = entry
                    .link_name()
                    .map_err(ar_err)?
                    .ok_or_else(|| CopyError::UnsafeEntry {
                        entry: entry_name.clone(),
                    })?
                    .into_owned();
                w.make_symlink(&target, &link, &meta)?;
            }
            tar::EntryType::Link => {
                let link = entry
                    .link_name()
                    .map_err(ar_err)?
                    .ok_or_else(|| CopyError::UnsafeEntry {
                        entry: entry_name.clone(),
                    })?
                    .into_owned();
                let link_rel = safe_rel(&link).ok_or_else(|| CopyError::UnsafeEntry {
                    entry: entry_name.clone(),
                })?;
                let existing = w.host_path(&join_image(&dest_clean, &link_rel), false)?;
                let is_file = fs::symlink_metadata(&existing)
                    .map(|m| !m.is_dir())
                    .unwrap_or(false);
                if link_rel.is_empty() || !is_file {
                    return Err(CopyError::BadHardLink {
                        entry: entry_name,
                        target: link.display().to_string(),
                    });
                }
                w.make_hardlink(&existing, &target)?;
            }
            tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => {
                let major = header.device_major().map_err(ar_err)?.unwrap_or(0);
                let minor = header.device_minor().map_err(ar_err)?.unwrap_or(0);
                let sflag = match kind {
                    tar::EntryType::Char => nix::sys::stat::SFlag::S_IFCHR,
                    tar::EntryType::Block => nix::sys::stat::SFlag::S_IFBLK,
                    _ => nix::sys::stat::SFlag::S_IFIFO,
                };
                let rdev = nix::sys::stat::makedev(u64::from(major), u64::from(minor));
                w.make_special(&target, sflag, rdev, &meta)?;
            }
            other => {
                tracing::debug!(entry = %entry_name, kind = ?other, "skipping tar entry of unsupported type");
            }
        }
    }
    w.finish()
}

/// A tar entry name as a `/`-joined path relative to the destination, `None` if `..` escapes.
fn safe_rel(raw: &Path) -> Option<String> {
    let mut parts: Vec<String> = Vec::new();
    for c in raw.components() {
        match c {
            Component::Normal(s) => parts.push(s.to_string_lossy().into_owned()),
            Component::ParentDir => {
                parts.pop()?;
            }
            _ => {}
        }
    }
    Some(parts.join("/"))
}

fn copy_tree(
    w: &mut Writer,
    src_dir: &Path,
    dest: &str,
    opts: &CopyOptions,
) -> Result<(), CopyError> {
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
        if (opts.exclude)(path) {
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
        copy_entry(w, path, &meta, &target, opts)?;
    }
    Ok(())
}

fn copy_entry(
    w: &mut Writer,
    src: &Path,
    meta: &fs::Metadata,
    target: &str,
    opts: &CopyOptions,
) -> Result<(), CopyError> {
    let owner = opts.chown.unwrap_or(if opts.preserve_owner {
        (meta.uid(), meta.gid())
    } else {
        (0, 0)
    });
    let mode = opts.chmod.unwrap_or(meta.mode() & 0o7777);
    let em = EntryMeta {
        mode,
        owner,
        atime: FileTime::from_last_access_time(meta),
        mtime: FileTime::from_last_modification_time(meta),
    };
    let src_err = |source| CopyError::Source {
        path: src.to_path_buf(),
        source,
    };
    let ft = meta.file_type();
    if ft.is_dir() {
        w.make_dir(target, &em)?;
    } else if ft.is_file() {
        let key = (meta.dev(), meta.ino());
        if meta.nlink() > 1 {
            if let Some(first) = w.links.get(&key).cloned() {
                return w.make_hardlink(&first, target);
            }
        }
        let mut file = File::open(src).map_err(src_err)?;
        let host = w.write_file(target, &mut file, &em, Some(src))?;
        if meta.nlink() > 1 {
            w.links.insert(key, host);
        }
    } else if ft.is_symlink() {
        let link = fs::read_link(src).map_err(src_err)?;
        w.make_symlink(target, &link, &em)?;
    } else {
        use std::os::unix::fs::FileTypeExt;
        let sflag = if ft.is_fifo() {
            nix::sys::stat::SFlag::S_IFIFO
        } else if ft.is_char_device() {
            nix::sys::stat::SFlag::S_IFCHR
        } else if ft.is_block_device() {
            nix::sys::stat::SFlag::S_IFBLK
        } else {
            tracing::debug!(path = %src.display(), "skipping socket in COPY source");
            return Ok(());
        };
        w.make_special(target, sflag, meta.rdev(), &em)?;
    }
    Ok(())
}

/// Mode, owner and times for one written entry.
struct EntryMeta {
    mode: u32,
    owner: (u32, u32),
    atime: FileTime,
    mtime: FileTime,
}

/// The write side shared by COPY and archive extraction: every path goes through
/// `resolve_in_root`, replaced entries are unlinked (never written through), directory times are
/// set last because writing children changes them.
struct Writer<'r> {
    root: &'r Path,
    written: Vec<String>,
    dir_times: Vec<(PathBuf, FileTime, FileTime)>,
    /// (dev, inode) of a source file with several links → where its first copy was written.
    links: HashMap<(u64, u64), PathBuf>,
}

impl<'r> Writer<'r> {
    fn new(root: &'r Path) -> Writer<'r> {
        Writer {
            root,
            written: Vec::new(),
            dir_times: Vec::new(),
            links: HashMap::new(),
        }
    }

    fn host_path(&self, image_path: &str, follow_final: bool) -> Result<PathBuf, CopyError> {
        resolve_in_root(self.root, Path::new(image_path), follow_final).map_err(|source| {
            CopyError::Write {
                path: image_path.to_string(),
                source,
            }
        })
    }

    fn record(&mut self, host: &Path) {
        let rel = host.strip_prefix(self.root).unwrap_or(host);
        self.written.push(clean_abs(&rel.to_string_lossy()));
    }

    /// Make sure in-image directory `dir` and its parents exist (following symlinks inside the
    /// root); missing ones are created 0755 with `owner`. Existing ones are left untouched.
    fn ensure_dir(&mut self, dir: &str, owner: (u32, u32)) -> Result<PathBuf, CopyError> {
        let mut prefix = String::new();
        let mut host = self.root.to_path_buf();
        for part in dir.split('/').filter(|p| !p.is_empty()) {
            prefix.push('/');
            prefix.push_str(part);
            host = self.host_path(&prefix, true)?;
            let werr = |source| CopyError::Write {
                path: prefix.clone(),
                source,
            };
            match fs::symlink_metadata(&host) {
                Ok(m) if m.is_dir() => {}
                Ok(_) => {
                    return Err(CopyError::NotADirectory {
                        path: prefix.clone(),
                    })
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    self.ensure_host_parent(&host, owner)?;
                    fs::create_dir(&host).map_err(werr)?;
                    fs::set_permissions(&host, fs::Permissions::from_mode(0o755)).map_err(werr)?;
                    std::os::unix::fs::lchown(&host, Some(owner.0), Some(owner.1)).map_err(werr)?;
                    self.record(&host);
                }
                Err(e) => return Err(werr(e)),
            }
        }
        Ok(host)
    }

    /// When `host` was reached through a symlink whose target does not exist yet (`/x -> a/b/c`),
    /// its parent may be missing: create that chain, as a real in-image path, before `host`.
    fn ensure_host_parent(&mut self, host: &Path, owner: (u32, u32)) -> Result<(), CopyError> {
        let Some(parent) = host.parent() else {
            return Ok(());
        };
        if parent == self.root || fs::symlink_metadata(parent).is_ok() {
            return Ok(());
        }
        let Ok(rel) = parent.strip_prefix(self.root) else {
            return Err(CopyError::Write {
                path: host.display().to_string(),
                source: io::Error::other("resolved outside the root"),
            });
        };
        self.ensure_dir(&clean_abs(&rel.to_string_lossy()), owner)?;
        Ok(())
    }

    /// Remove whatever non-directory (or, when `keep_dir`, nothing that is a directory) is at
    /// `host` so a new entry can take its place; symlinks are removed, never followed.
    fn clear(&self, host: &Path, image_path: &str, keep_dir: bool) -> Result<bool, CopyError> {
        let werr = |source| CopyError::Write {
            path: image_path.to_string(),
            source,
        };
        match fs::symlink_metadata(host) {
            Ok(m) if m.is_dir() => {
                if keep_dir {
                    return Ok(true);
                }
                fs::remove_dir_all(host).map_err(werr)?;
            }
            Ok(_) => fs::remove_file(host).map_err(werr)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(werr(e)),
        }
        Ok(false)
    }

    /// Create or merge into a directory. An existing directory is merged into and takes the new
    /// mode and owner; anything else there, a symlink included, is replaced — buildah (and the
    /// classic Docker builder) turn `/bin -> usr/bin` into a real `/bin` when a copied tree has a
    /// `bin/` directory. Only the COPY destination itself and its parents are followed.
    fn make_dir(&mut self, image_path: &str, m: &EntryMeta) -> Result<(), CopyError> {
        let host = self.host_path(image_path, false)?;
        let werr = |source| CopyError::Write {
            path: image_path.to_string(),
            source,
        };
        if !self.clear(&host, image_path, true)? {
            self.ensure_host_parent(&host, (0, 0))?;
            fs::create_dir(&host).map_err(werr)?;
        }
        std::os::unix::fs::lchown(&host, Some(m.owner.0), Some(m.owner.1)).map_err(werr)?;
        fs::set_permissions(&host, fs::Permissions::from_mode(m.mode)).map_err(werr)?;
        self.dir_times.push((host.clone(), m.atime, m.mtime));
        self.record(&host);
        Ok(())
    }

    /// Stream `content` into a new regular file replacing whatever was at `image_path`.
    fn write_file(
        &mut self,
        image_path: &str,
        content: &mut dyn Read,
        m: &EntryMeta,
        xattr_source: Option<&Path>,
    ) -> Result<PathBuf, CopyError> {
        let host = self.host_path(image_path, false)?;
        let werr = |source| CopyError::Write {
            path: image_path.to_string(),
            source,
        };
        self.clear(&host, image_path, false)?;
        self.ensure_host_parent(&host, (0, 0))?;
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&host)
            .map_err(werr)?;
        io::copy(content, &mut file).map_err(werr)?;
        // chown before chmod: changing the owner clears setuid/setgid bits.
        std::os::unix::fs::fchown(&file, Some(m.owner.0), Some(m.owner.1)).map_err(werr)?;
        file.set_permissions(fs::Permissions::from_mode(m.mode))
            .map_err(werr)?;
        if let Some(src) = xattr_source {
            copy_xattrs(src, &host);
        }
        filetime::set_file_handle_times(&file, Some(m.atime), Some(m.mtime)).map_err(werr)?;
        self.record(&host);
        Ok(host)
    }

    fn make_symlink(
        &mut self,
        image_path: &str,
        link: &Path,
        m: &EntryMeta,
    ) -> Result<(), CopyError> {
        let host = self.host_path(image_path, false)?;
        let werr = |source| CopyError::Write {
            path: image_path.to_string(),
            source,
        };
        self.clear(&host, image_path, false)?;
        self.ensure_host_parent(&host, (0, 0))?;
        std::os::unix::fs::symlink(link, &host).map_err(werr)?;
        std::os::unix::fs::lchown(&host, Some(m.owner.0), Some(m.owner.1)).map_err(werr)?;
        filetime::set_symlink_file_times(&host, m.atime, m.mtime).map_err(werr)?;
        self.record(&host);
        Ok(())
    }

    /// Hard link `image_path` to `existing`, a host path already inside the root.
    fn make_hardlink(&mut self, existing: &Path, image_path: &str) -> Result<(), CopyError> {
        let host = self.host_path(image_path, false)?;
        let werr = |source| CopyError::Write {
            path: image_path.to_string(),
            source,
        };
        if host == existing {
            return Ok(());
        }
        self.clear(&host, image_path, false)?;
        self.ensure_host_parent(&host, (0, 0))?;
        fs::hard_link(existing, &host).map_err(werr)?;
        self.record(&host);
        Ok(())
    }

    fn make_special(
        &mut self,
        image_path: &str,
        kind: nix::sys::stat::SFlag,
        rdev: u64,
        m: &EntryMeta,
    ) -> Result<(), CopyError> {
        let host = self.host_path(image_path, false)?;
        let werr = |source| CopyError::Write {
            path: image_path.to_string(),
            source,
        };
        self.clear(&host, image_path, false)?;
        self.ensure_host_parent(&host, (0, 0))?;
        let perm = nix::sys::stat::Mode::from_bits_truncate(0o600);
        nix::sys::stat::mknod(&host, kind, perm, rdev).map_err(|e| werr(io::Error::from(e)))?;
        std::os::unix::fs::lchown(&host, Some(m.owner.0), Some(m.owner.1)).map_err(werr)?;
        fs::set_permissions(&host, fs::Permissions::from_mode(m.mode)).map_err(werr)?;
        // Never `set_file_times` here: it opens the path, which blocks on a fifo.
        filetime::set_symlink_file_times(&host, m.atime, m.mtime).map_err(werr)?;
        self.record(&host);
        Ok(())
    }

    /// Apply directory times (children are all written now) and return the written paths.
    fn finish(self) -> Result<Vec<String>, CopyError> {
        for (host, atime, mtime) in self.dir_times.iter().rev() {
            filetime::set_symlink_file_times(host, *atime, *mtime).map_err(|source| {
                CopyError::Write {
                    path: host.display().to_string(),
                    source,
                }
            })?;
        }
        Ok(self.written)
    }
}

/// Copy extended attributes; failures (filesystem without xattrs, security.* without privilege)
/// are not fatal, as with buildah.
fn copy_xattrs(src: &Path, dst: &Path) {
    let Ok(names) = xattr::list(src) else { return };
    for name in names {
        match xattr::get(src, &name) {
            Ok(Some(value)) => {
                if let Err(e) = xattr::set(dst, &name, &value) {
                    tracing::debug!(attr = ?name, path = %dst.display(), error = %e, "could not copy xattr");
                }
            }
            Ok(None) => {}
            Err(e) => {
                tracing::debug!(attr = ?name, path = %src.display(), error = %e, "could not read xattr")
            }
        }
    }
}

fn is_dir_in_root(root: &Path, image_path: &str) -> bool {
    resolve_in_root(root, Path::new(image_path), true)
        .and_then(fs::symlink_metadata)
        .map(|m| m.is_dir())
        .unwrap_or(false)
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

#[cfg(test)]
mod tests {
    //! Expected behaviour was checked by hand against `buildah --storage-driver vfs bud --isolation
    //! chroot` (COPY into `FROM scratch`, then inspecting the mounted image) and is encoded here.

    use super::*;
    use std::io::Write;
    use std::os::unix::fs::symlink;

    fn no_exclude(_: &Path) -> bool {
        false
    }

    fn opts() -> CopyOptions<'static> {
        CopyOptions {
            chown: None,
            chmod: None,
            exclude: &no_exclude,
            preserve_owner: false,
        }
    }

    fn write(path: &Path, content: &str, mode: u32) {
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).unwrap();
        }
        fs::write(path, content).unwrap();
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
    }

    fn mode(path: &Path) -> u32 {
        fs::symlink_metadata(path).unwrap().mode() & 0o7777
    }

    fn owner(path: &Path) -> (u32, u32) {
        let m = fs::symlink_metadata(path).unwrap();
        (m.uid(), m.gid())
    }

    fn mtime(path: &Path) -> i64 {
        fs::symlink_metadata(path).unwrap().mtime()
    }

    /// Source tree:
    /// a.txt (0644), b.txt (04755), d/ (0700) { f (0640, mtime 2001), hl (hard link to f),
    /// link -> f, sub/ (0750) { g } }, alink -> a.txt
    struct Fixture {
        _dir: tempfile::TempDir,
        src: PathBuf,
        root: PathBuf,
        outside: PathBuf,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        let root = dir.path().join("root");
        let outside = dir.path().join("outside");
        fs::create_dir_all(&root).unwrap();
        fs::create_dir_all(&outside).unwrap();
        write(&src.join("a.txt"), "a", 0o644);
        write(&src.join("b.txt"), "b", 0o4755);
        write(&src.join("d/f"), "f", 0o640);
        write(&src.join("d/sub/g"), "g", 0o600);
        fs::hard_link(src.join("d/f"), src.join("d/hl")).unwrap();
        symlink("f", src.join("d/link")).unwrap();
        symlink("a.txt", src.join("alink")).unwrap();
        fs::set_permissions(src.join("d/sub"), fs::Permissions::from_mode(0o750)).unwrap();
        fs::set_permissions(src.join("d"), fs::Permissions::from_mode(0o700)).unwrap();
        let old = FileTime::from_unix_time(978_307_200, 0);
        filetime::set_file_times(src.join("d/f"), old, old).unwrap();
        filetime::set_file_times(src.join("d/sub"), old, old).unwrap();
        Fixture {
            _dir: dir,
            src,
            root,
            outside,
        }
    }

    #[test]
    fn file_to_file_creates_parents() {
        let fx = fixture();
        let written = copy_into_root(&[fx.src.join("a.txt")], &fx.root, "/p/q/r", &opts()).unwrap();
        assert_eq!(fs::read_to_string(fx.root.join("p/q/r")).unwrap(), "a");
        assert_eq!(mode(&fx.root.join("p/q/r")), 0o644);
        for d in ["p", "p/q"] {
            assert_eq!(mode(&fx.root.join(d)), 0o755);
            assert_eq!(owner(&fx.root.join(d)), (0, 0));
        }
        assert_eq!(written, ["/p", "/p/q", "/p/q/r"]);
    }

    #[test]
    fn file_into_directory_by_slash_or_existing_dir() {
        let fx = fixture();
        copy_into_root(&[fx.src.join("a.txt")], &fx.root, "/app/", &opts()).unwrap();
        assert!(fx.root.join("app/a.txt").is_file());
        // No trailing slash, but /existing is a directory: the file goes inside.
        fs::create_dir(fx.root.join("existing")).unwrap();
        copy_into_root(&[fx.src.join("a.txt")], &fx.root, "/existing", &opts()).unwrap();
        assert!(fx.root.join("existing/a.txt").is_file());
    }

    #[test]
    fn file_replaces_existing_file_and_symlink() {
        let fx = fixture();
        write(&fx.root.join("etc/conf"), "old", 0o600);
        copy_into_root(&[fx.src.join("a.txt")], &fx.root, "/etc/conf", &opts()).unwrap();
        assert_eq!(fs::read_to_string(fx.root.join("etc/conf")).unwrap(), "a");
        assert_eq!(mode(&fx.root.join("etc/conf")), 0o644);
        // A symlink at the destination is replaced, never written through.
        let victim = fx.outside.join("victim");
        write(&victim, "safe", 0o644);
        symlink(&victim, fx.root.join("etc/link")).unwrap();
        copy_into_root(&[fx.src.join("a.txt")], &fx.root, "/etc/link", &opts()).unwrap();
        assert_eq!(fs::read_to_string(&victim).unwrap(), "safe");
        assert!(fs::symlink_metadata(fx.root.join("etc/link"))
            .unwrap()
            .is_file());
    }

    #[test]
    fn directory_contents_are_copied() {
        let fx = fixture();
        copy_into_root(&[fx.src.join("d")], &fx.root, "/newd", &opts()).unwrap();
        let d = fx.root.join("newd");
        // buildah: the destination is created 0755, the source dir's own mode (0700) is not applied.
        assert_eq!(mode(&d), 0o755);
        assert!(!d.join("d").exists(), "contents, not the directory itself");
        assert_eq!(fs::read_to_string(d.join("f")).unwrap(), "f");
        assert_eq!(mode(&d.join("f")), 0o640);
        assert_eq!(mode(&d.join("sub")), 0o750);
        assert_eq!(mtime(&d.join("f")), 978_307_200);
        assert_eq!(
            mtime(&d.join("sub")),
            978_307_200,
            "directory mtimes are kept"
        );
        assert_eq!(fs::read_to_string(d.join("sub/g")).unwrap(), "g");
        assert_eq!(
            fs::read_link(d.join("link")).unwrap(),
            Path::new("f"),
            "symlinks are copied as symlinks"
        );
        // buildah keeps hard links between copied files.
        let f = fs::metadata(d.join("f")).unwrap();
        let hl = fs::metadata(d.join("hl")).unwrap();
        assert_eq!(f.ino(), hl.ino());
        assert_eq!(f.nlink(), 2);
    }

    #[test]
    fn directory_merges_into_existing_directory() {
        let fx = fixture();
        write(&fx.root.join("existing/keep"), "keep", 0o644);
        fs::set_permissions(fx.root.join("existing"), fs::Permissions::from_mode(0o711)).unwrap();
        copy_into_root(&[fx.src.join("d")], &fx.root, "/existing/", &opts()).unwrap();
        assert_eq!(
            fs::read_to_string(fx.root.join("existing/keep")).unwrap(),
            "keep"
        );
        assert!(fx.root.join("existing/sub/g").is_file());
        assert_eq!(
            mode(&fx.root.join("existing")),
            0o711,
            "an existing destination keeps its metadata"
        );
    }

    #[test]
    fn several_sources_need_a_directory() {
        let fx = fixture();
        let two = [fx.src.join("a.txt"), fx.src.join("b.txt")];
        let err = copy_into_root(&two, &fx.root, "/m", &opts()).unwrap_err();
        assert_eq!(
        err.to_string(),
        "when using COPY with more than one source file, the destination must be a directory and end with a /"
    );
        assert!(!fx.root.join("m").exists());
        copy_into_root(&two, &fx.root, "/m/", &opts()).unwrap();
        assert!(fx.root.join("m/a.txt").is_file() && fx.root.join("m/b.txt").is_file());
        // buildah also accepts an existing directory without the slash.
        fs::create_dir(fx.root.join("e")).unwrap();
        copy_into_root(&two, &fx.root, "/e", &opts()).unwrap();
        assert!(fx.root.join("e/b.txt").is_file());
    }

    #[test]
    fn chown_applies_to_everything_written_chmod_to_copied_entries() {
        let fx = fixture();
        let o = CopyOptions {
            chown: Some((5, 6)),
            chmod: Some(0o600),
            exclude: &no_exclude,
            preserve_owner: false,
        };
        copy_into_root(&[fx.src.join("d")], &fx.root, "/x/cho/", &o).unwrap();
        for p in [
            "x",
            "x/cho",
            "x/cho/f",
            "x/cho/sub",
            "x/cho/sub/g",
            "x/cho/link",
        ] {
            assert_eq!(owner(&fx.root.join(p)), (5, 6), "{p}");
        }
        // buildah: --chmod reaches copied files and sub-directories, not the destination or parents.
        assert_eq!(mode(&fx.root.join("x/cho")), 0o755);
        assert_eq!(mode(&fx.root.join("x")), 0o755);
        assert_eq!(mode(&fx.root.join("x/cho/f")), 0o600);
        assert_eq!(mode(&fx.root.join("x/cho/sub")), 0o600);
    }

    #[test]
    fn ownership_from_context_vs_from_stage() {
        let fx = fixture();
        std::os::unix::fs::chown(fx.src.join("a.txt"), Some(1234), Some(5678)).unwrap();
        copy_into_root(&[fx.src.join("a.txt")], &fx.root, "/ctx", &opts()).unwrap();
        assert_eq!(owner(&fx.root.join("ctx")), (0, 0));
        let keep = CopyOptions {
            preserve_owner: true,
            ..opts()
        };
        copy_into_root(&[fx.src.join("a.txt")], &fx.root, "/stage", &keep).unwrap();
        assert_eq!(owner(&fx.root.join("stage")), (1234, 5678));
    }

    #[test]
    fn setuid_bit_is_preserved() {
        let fx = fixture();
        copy_into_root(&[fx.src.join("b.txt")], &fx.root, "/bin/b", &opts()).unwrap();
        assert_eq!(mode(&fx.root.join("bin/b")), 0o4755);
        let o = CopyOptions {
            chown: Some((7, 7)),
            ..opts()
        };
        copy_into_root(&[fx.src.join("b.txt")], &fx.root, "/bin/b2", &o).unwrap();
        assert_eq!(
            mode(&fx.root.join("bin/b2")),
            0o4755,
            "chown must not clear setuid"
        );
    }

    #[test]
    fn top_level_symlink_source_is_followed() {
        let fx = fixture();
        copy_into_root(&[fx.src.join("alink")], &fx.root, "/alink", &opts()).unwrap();
        let m = fs::symlink_metadata(fx.root.join("alink")).unwrap();
        assert!(m.is_file());
        assert_eq!(fs::read_to_string(fx.root.join("alink")).unwrap(), "a");
        // The name stays the source's name.
        copy_into_root(&[fx.src.join("alink")], &fx.root, "/dir/", &opts()).unwrap();
        assert!(fx.root.join("dir/alink").is_file());
        // A symlink to a directory copies the directory's contents.
        symlink("d", fx.src.join("dlink")).unwrap();
        copy_into_root(&[fx.src.join("dlink")], &fx.root, "/dl", &opts()).unwrap();
        assert!(fx.root.join("dl/sub/g").is_file());
    }

    #[test]
    fn excluded_entries_are_skipped() {
        let fx = fixture();
        let sub = fx.src.join("d/sub");
        let f = fx.src.join("d/f");
        let exclude = move |p: &Path| p == sub || p == f;
        let o = CopyOptions {
            exclude: &exclude,
            ..opts()
        };
        copy_into_root(&[fx.src.join("d")], &fx.root, "/x", &o).unwrap();
        assert!(!fx.root.join("x/sub").exists());
        assert!(!fx.root.join("x/f").exists());
        assert!(fx.root.join("x/hl").is_file());
    }

    #[test]
    fn writes_go_through_image_symlinks_inside_the_root() {
        let fx = fixture();
        fs::create_dir_all(fx.root.join("usr/bin")).unwrap();
        symlink("usr/bin", fx.root.join("bin")).unwrap();
        let written =
            copy_into_root(&[fx.src.join("a.txt")], &fx.root, "/bin/tool", &opts()).unwrap();
        assert!(fx.root.join("usr/bin/tool").is_file());
        assert!(fs::symlink_metadata(fx.root.join("bin"))
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(written, ["/usr/bin/tool"]);
        // A directory destination is followed too.
        write(&fx.src.join("tree/bin/sh"), "sh", 0o755);
        copy_into_root(&[fx.src.join("tree/bin")], &fx.root, "/bin", &opts()).unwrap();
        assert!(fx.root.join("usr/bin/sh").is_file());
        assert!(fs::symlink_metadata(fx.root.join("bin"))
            .unwrap()
            .file_type()
            .is_symlink());
        // But a `bin/` directory inside a copied tree replaces the link, as buildah does.
        copy_into_root(&[fx.src.join("tree")], &fx.root, "/", &opts()).unwrap();
        assert!(fs::symlink_metadata(fx.root.join("bin")).unwrap().is_dir());
        assert!(fx.root.join("bin/sh").is_file());
        assert!(fx.root.join("usr/bin/tool").is_file());
    }

    #[test]
    fn hostile_symlinks_in_the_root_cannot_leak_writes() {
        let fx = fixture();
        symlink("/", fx.root.join("evil")).unwrap();
        symlink("../../../../../../../..", fx.root.join("up")).unwrap();
        symlink(&fx.outside, fx.root.join("abs")).unwrap();
        let sentinel_before: Vec<_> = fs::read_dir(&fx.outside).unwrap().collect();
        assert!(sentinel_before.is_empty());
        let outside_rel = fx
            .outside
            .strip_prefix("/")
            .unwrap()
            .to_string_lossy()
            .into_owned();

        copy_into_root(
            &[fx.src.join("a.txt")],
            &fx.root,
            &format!("/evil/{outside_rel}/pwned1"),
            &opts(),
        )
        .unwrap();
        copy_into_root(
            &[fx.src.join("a.txt")],
            &fx.root,
            &format!("/up/{outside_rel}/pwned2"),
            &opts(),
        )
        .unwrap();
        copy_into_root(&[fx.src.join("a.txt")], &fx.root, "/abs/pwned3", &opts()).unwrap();
        copy_into_root(&[fx.src.join("d")], &fx.root, "/abs/", &opts()).unwrap();

        assert_eq!(
            fs::read_dir(&fx.outside).unwrap().count(),
            0,
            "nothing may appear outside the root"
        );
        // They all landed under the root, where the links point when the root is `/`.
        let inside = fx.root.join(&outside_rel);
        for name in ["pwned1", "pwned2", "pwned3", "sub/g"] {
            assert!(inside.join(name).exists(), "{name}");
        }
    }

    fn tar_with(path: &Path, compress: &str, build: impl FnOnce(&mut tar::Builder<Vec<u8>>)) {
        let mut b = tar::Builder::new(Vec::new());
        build(&mut b);
        let data = b.into_inner().unwrap();
        let out = match compress {
            "gz" => {
                let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                e.write_all(&data).unwrap();
                e.finish().unwrap()
            }
            "zst" => zstd::encode_all(&data[..], 1).unwrap(),
            _ => data,
        };
        fs::write(path, out).unwrap();
    }

    fn entry(
        b: &mut tar::Builder<Vec<u8>>,
        name: &str,
        kind: tar::EntryType,
        link: &str,
        data: &[u8],
        uid: u64,
    ) {
        let mut h = tar::Header::new_old();
        {
            let old = h.as_old_mut();
            old.name[..name.len()].copy_from_slice(name.as_bytes());
            old.linkname[..link.len()].copy_from_slice(link.as_bytes());
        }
        h.set_entry_type(kind);
        h.set_mode(if kind == tar::EntryType::Directory {
            0o750
        } else {
            0o640
        });
        h.set_uid(uid);
        h.set_gid(uid);
        h.set_size(data.len() as u64);
        h.set_mtime(1_000_000_000);
        h.set_cksum();
        b.append(&h, data).unwrap();
    }

    #[test]
    fn add_archive_extracts_all_formats() {
        let fx = fixture();
        for compress in ["", "gz", "zst"] {
            let archive = fx.outside.join(format!("a.tar.{compress}"));
            tar_with(&archive, compress, |b| {
                entry(b, "pkg/", tar::EntryType::Directory, "", b"", 42);
                entry(b, "pkg/file", tar::EntryType::Regular, "", b"content", 42);
                entry(b, "pkg/hard", tar::EntryType::Link, "pkg/file", b"", 42);
                entry(b, "pkg/soft", tar::EntryType::Symlink, "file", b"", 42);
            });
            assert!(is_archive(&archive), "{compress}");
            let dest = format!("/opt/{compress}x");
            copy_check(&fx, &archive, &dest);
            fs::remove_file(&archive).unwrap();
        }
    }

    fn copy_check(fx: &Fixture, archive: &Path, dest: &str) {
        add_archive_into_root(archive, &fx.root, dest, None).unwrap();
        let base = fx.root.join(dest.trim_start_matches('/'));
        assert_eq!(
            fs::read_to_string(base.join("pkg/file")).unwrap(),
            "content"
        );
        assert_eq!(
            owner(&base.join("pkg/file")),
            (42, 42),
            "recorded owner kept without --chown"
        );
        assert_eq!(mode(&base.join("pkg")), 0o750);
        assert_eq!(mtime(&base.join("pkg")), 1_000_000_000);
        assert_eq!(
            fs::metadata(base.join("pkg/file")).unwrap().ino(),
            fs::metadata(base.join("pkg/hard")).unwrap().ino()
        );
        assert_eq!(
            fs::read_link(base.join("pkg/soft")).unwrap(),
            Path::new("file")
        );
        // buildah: --chown reaches the created destination, not the extracted entries.
        add_archive_into_root(archive, &fx.root, &format!("{dest}-chown"), Some((9, 9))).unwrap();
        let chowned = fx
            .root
            .join(format!("{}-chown", dest.trim_start_matches('/')));
        assert_eq!(owner(&chowned), (9, 9));
        assert_eq!(owner(&chowned.join("pkg/file")), (42, 42));
    }

    #[test]
    fn add_archive_rejects_escapes() {
        let fx = fixture();
        let archive = fx.outside.join("evil.tar");
        tar_with(&archive, "", |b| {
            entry(b, "../../../escaped", tar::EntryType::Regular, "", b"x", 0)
        });
        let err = add_archive_into_root(&archive, &fx.root, "/dest", None).unwrap_err();
        assert!(matches!(err, CopyError::UnsafeEntry { .. }), "{err}");

        tar_with(&archive, "", |b| {
            entry(
                b,
                "hl",
                tar::EntryType::Link,
                "../../../../etc/passwd",
                b"",
                0,
            )
        });
        assert!(add_archive_into_root(&archive, &fx.root, "/dest", None).is_err());

        // A symlink planted by the archive cannot redirect a later entry outside the root.
        let target = fx.outside.to_string_lossy().into_owned();
        tar_with(&archive, "", |b| {
            entry(b, "link", tar::EntryType::Symlink, &target, b"", 0);
            entry(b, "link/pwned", tar::EntryType::Regular, "", b"x", 0);
        });
        add_archive_into_root(&archive, &fx.root, "/dest", None).unwrap();
        assert_eq!(
            fs::read_dir(&fx.outside)
                .unwrap()
                .filter(|e| e.as_ref().unwrap().file_name() != "evil.tar")
                .count(),
            0
        );
        assert!(fx
            .root
            .join(target.trim_start_matches('/'))
            .join("pwned")
            .is_file());
    }

    #[test]
    fn archive_detection() {
        let fx = fixture();
        assert!(!is_archive(&fx.src.join("a.txt")));
        assert!(!is_archive(&fx.outside.join("missing")));
        // gzip of something that is not a tar is copied, not extracted.
        let gz = fx.outside.join("x.gz");
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(&[b'x'; 1024]).unwrap();
        fs::write(&gz, e.finish().unwrap()).unwrap();
        assert!(!is_archive(&gz));
        // bzip2 and xz are recognised but reported as unsupported.
        let bz = fx.outside.join("x.tar.bz2");
        fs::write(&bz, b"BZh91AY&SY").unwrap();
        assert!(is_archive(&bz));
        let err = add_archive_into_root(&bz, &fx.root, "/x", None).unwrap_err();
        assert!(
            err.to_string().contains("bzip2") && err.to_string().contains("not supported"),
            "{err}"
        );
    }

    /// One line per entry under `root`: path, type, mode, owner and content / link target / file
    /// mtime; hard links name the first path of their inode. Directory mtimes are left out (created
    /// directories get the current time, in buildah as here).
    fn listing(root: &Path) -> Vec<String> {
        let mut seen: HashMap<u64, String> = HashMap::new();
        let mut out = Vec::new();
        for entry in walkdir::WalkDir::new(root).min_depth(1).sort_by_file_name() {
            let entry = entry.unwrap();
            let rel = entry
                .path()
                .strip_prefix(root)
                .unwrap()
                .display()
                .to_string();
            let m = fs::symlink_metadata(entry.path()).unwrap();
            let head = format!("{rel} {:o} {}:{}", m.mode() & 0o7777, m.uid(), m.gid());
            let line = if m.is_dir() {
                format!("{head} dir")
            } else if m.file_type().is_symlink() {
                format!(
                    "{head} -> {}",
                    fs::read_link(entry.path()).unwrap().display()
                )
            } else if let Some(first) = seen.get(&m.ino()) {
                format!("{head} hardlink {first}")
            } else {
                seen.insert(m.ino(), rel.clone());
                let bytes = fs::read(entry.path()).unwrap();
                let content: String = String::from_utf8_lossy(&bytes).chars().take(40).collect();
                format!(
                    "{head} file {content:?} ({} bytes) mtime {}",
                    bytes.len(),
                    m.mtime()
                )
            };
            out.push(line);
        }
        out
    }

    /// One COPY: sources, destination, `--chown`, `--chmod`.
    type Step = (
        &'static [&'static str],
        &'static str,
        Option<(u32, u32)>,
        Option<u32>,
    );

    /// Run the same COPY steps through buildah and through `copy_into_root`, and compare the trees.
    /// Skipped (with a message) only when buildah is not installed.
    #[test]
    fn matches_buildah() {
        if std::process::Command::new("buildah")
            .arg("--version")
            .output()
            .is_err()
        {
            eprintln!("buildah not installed; skipping the comparison");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let ctx_dir = dir.path().join("ctx");
        let c = |p: &str| ctx_dir.join(p);
        write(&c("a.txt"), "a", 0o644);
        write(&c("b.txt"), "b", 0o600);
        write(&c("exec.sh"), "#!/bin/sh\n", 0o755);
        write(&c("d/f"), "f", 0o640);
        write(&c("d/sub/g"), "g", 0o600);
        write(&c("d/x.skip"), "skipped", 0o644);
        fs::hard_link(c("d/f"), c("d/hl")).unwrap();
        symlink("f", c("d/link")).unwrap();
        symlink("a.txt", c("alink")).unwrap();
        symlink("d", c("dlink")).unwrap();
        fs::create_dir_all(c("base/usr/bin")).unwrap();
        symlink("usr/bin", c("base/bin")).unwrap();
        write(&c("tree/bin/sh"), "sh", 0o755);
        fs::create_dir(c("exist")).unwrap();
        fs::set_permissions(c("exist"), fs::Permissions::from_mode(0o711)).unwrap();
        fs::set_permissions(c("d/sub"), fs::Permissions::from_mode(0o750)).unwrap();
        fs::set_permissions(c("d"), fs::Permissions::from_mode(0o700)).unwrap();
        write(&c(".dockerignore"), "**/*.skip\n", 0o644);
        // Fixed file times so that the comparison does not depend on the clock.
        let fixed = FileTime::from_unix_time(1_500_000_000, 0);
        for e in walkdir::WalkDir::new(&ctx_dir) {
            let e = e.unwrap();
            if e.file_type().is_file() {
                filetime::set_file_times(e.path(), fixed, fixed).unwrap();
            }
        }
        let old = FileTime::from_unix_time(978_307_200, 0);
        filetime::set_file_times(c("d/f"), old, old).unwrap();

        // (sources, dest, chown, chmod)
        let steps: &[Step] = &[
            (&["base/"], "/", None, None),
            (&["a.txt"], "/p/q/r", None, None),
            (&["a.txt", "b.txt"], "/m/", None, None),
            (&["d"], "/newd", None, None),
            (&["exist"], "/existing", None, None),
            (&["d"], "/existing/", None, None),
            (&["alink"], "/alink", None, None),
            (&["dlink"], "/dl", None, None),
            (&["d"], "/cho/", Some((5, 6)), None),
            (&["d"], "/chm", None, Some(0o600)),
            (&["a.txt"], "/bin/tool", None, None),
            (&["tree/bin"], "/bin", None, None),
            (&["tree/"], "/", None, None),
            (&["exec.sh"], "/m", None, None),
            (&["b.txt"], "/p/q/r", None, None),
            (&["*.txt"], "/w/", None, None),
            (&["a.txt"], "/deep/er/", Some((7, 8)), None),
        ];
        let mut dockerfile = String::from("FROM scratch\n");
        for (srcs, dest, chown, chmod) in steps {
            dockerfile.push_str("COPY ");
            if let Some((u, g)) = chown {
                dockerfile.push_str(&format!("--chown={u}:{g} "));
            }
            if let Some(m) = chmod {
                dockerfile.push_str(&format!("--chmod={m:o} "));
            }
            dockerfile.push_str(&format!("{} {dest}\n", srcs.join(" ")));
        }
        write(&c("Dockerfile"), &dockerfile, 0o644);

        // Ours.
        let ours = dir.path().join("ours");
        fs::create_dir(&ours).unwrap();
        let mut ctx =
            crate::context::BuildContext::open(ctx_dir.to_str().unwrap(), dir.path()).unwrap();
        ctx.load_ignore(&c("Dockerfile")).unwrap();
        let exclude = |p: &Path| ctx.is_excluded_host(p);
        for (srcs, dest, chown, chmod) in steps {
            let raw: Vec<String> = srcs.iter().map(|s| s.to_string()).collect();
            let sources = ctx.resolve_sources(&raw).unwrap();
            let o = CopyOptions {
                chown: *chown,
                chmod: *chmod,
                exclude: &exclude,
                preserve_owner: false,
            };
            copy_into_root(&sources, &ours, dest, &o).unwrap();
        }

        let theirs = buildah_tree(dir.path(), &ctx_dir);
        pretty_assertions::assert_eq!(listing(&ours), theirs);
    }

    fn have_buildah() -> bool {
        let ok = std::process::Command::new("buildah")
            .arg("--version")
            .output()
            .is_ok();
        if !ok {
            eprintln!("buildah not installed; skipping the comparison");
        }
        ok
    }

    /// Build `ctx_dir` (its Dockerfile) with buildah in a private storage under `work` and return
    /// the [`listing`] of the resulting root filesystem.
    fn buildah_tree(work: &Path, ctx_dir: &Path) -> Vec<String> {
        let storage = work.join("storage");
        let buildah = |args: &[&str]| -> String {
            let out = std::process::Command::new("timeout")
                .arg("300")
                .arg("buildah")
                .arg("--root")
                .arg(storage.join("root"))
                .arg("--runroot")
                .arg(storage.join("run"))
                .args(["--storage-driver", "vfs"])
                .args(args)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "buildah {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8(out.stdout).unwrap().trim().to_string()
        };
        buildah(&[
            "bud",
            "--isolation",
            "chroot",
            "-q",
            "-t",
            "kiln-copier-test",
            ctx_dir.to_str().unwrap(),
        ]);
        let container = buildah(&["from", "-q", "kiln-copier-test"]);
        let mount = buildah(&["mount", &container]);
        let tree = listing(Path::new(&mount));
        buildah(&["umount", &container]);
        buildah(&["rm", &container]);
        tree
    }

    /// `.dockerignore` (directory exclusion, `!` re-inclusion, `**`) and ADD of local archives,
    /// compared with buildah.
    #[test]
    fn matches_buildah_ignore_and_add() {
        if !have_buildah() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let ctx_dir = dir.path().join("ctx");
        let c = |p: &str| ctx_dir.join(p);
        for f in [
            "docs/a.md",
            "docs/keep.md",
            "docs/sub/x.md",
            "app.log",
            "src/tmp/t",
            "src/main.c",
            "src/tmp2/y",
            "README.md",
        ] {
            write(&c(f), f, 0o644);
        }
        write(
            &c(".dockerignore"),
            "docs\n!docs/keep.md\n*.log\n**/tmp\n",
            0o644,
        );
        write(
        &c("Dockerfile"),
        "FROM scratch\nCOPY . /all/\nCOPY docs /docs\nADD pkg.tar.gz /opt/\nADD pkg.tar /opt2\nADD --chown=3:4 pkg.tar.zst /opt3/\nADD plain.gz /plain/\n",
        0o644,
    );
        for (name, compress) in [
            ("pkg.tar.gz", "gz"),
            ("pkg.tar", ""),
            ("pkg.tar.zst", "zst"),
        ] {
            tar_with(&c(name), compress, |b| {
                entry(b, "pkg/", tar::EntryType::Directory, "", b"", 42);
                entry(b, "pkg/file", tar::EntryType::Regular, "", b"content", 42);
                entry(b, "pkg/hard", tar::EntryType::Link, "pkg/file", b"", 42);
                entry(b, "pkg/soft", tar::EntryType::Symlink, "file", b"", 42);
            });
        }
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(b"not a tar").unwrap();
        fs::write(c("plain.gz"), e.finish().unwrap()).unwrap();
        let fixed = FileTime::from_unix_time(1_500_000_000, 0);
        for e in walkdir::WalkDir::new(&ctx_dir) {
            let e = e.unwrap();
            if e.file_type().is_file() {
                filetime::set_file_times(e.path(), fixed, fixed).unwrap();
            }
        }

        let ours = dir.path().join("ours");
        fs::create_dir(&ours).unwrap();
        let mut ctx =
            crate::context::BuildContext::open(ctx_dir.to_str().unwrap(), dir.path()).unwrap();
        ctx.load_ignore(&c("Dockerfile")).unwrap();
        let exclude = |p: &Path| ctx.is_excluded_host(p);
        let o = CopyOptions {
            chown: None,
            chmod: None,
            exclude: &exclude,
            preserve_owner: false,
        };
        for (src, dest) in [(".", "/all/"), ("docs", "/docs")] {
            let sources = ctx.resolve_sources(&[src.to_string()]).unwrap();
            copy_into_root(&sources, &ours, dest, &o).unwrap();
        }
        for (src, dest, chown) in [
            ("pkg.tar.gz", "/opt/", None),
            ("pkg.tar", "/opt2", None),
            ("pkg.tar.zst", "/opt3/", Some((3, 4))),
            ("plain.gz", "/plain/", None),
        ] {
            let sources = ctx.resolve_sources(&[src.to_string()]).unwrap();
            if is_archive(&sources[0]) {
                add_archive_into_root(&sources[0], &ours, dest, chown).unwrap();
            } else {
                copy_into_root(&sources, &ours, dest, &CopyOptions { chown, ..o }).unwrap();
            }
        }
        let theirs = buildah_tree(dir.path(), &ctx_dir);
        pretty_assertions::assert_eq!(listing(&ours), theirs);
    }

    #[test]
    fn xattrs_and_fifos_are_copied() {
        let fx = fixture();
        let src = fx.src.join("a.txt");
        if let Err(e) = xattr::set(&src, "user.kiln", b"yes") {
            eprintln!("filesystem without user xattrs ({e}); only the fifo is checked");
        } else {
            copy_into_root(&[src], &fx.root, "/x", &opts()).unwrap();
            assert_eq!(
                xattr::get(fx.root.join("x"), "user.kiln")
                    .unwrap()
                    .as_deref(),
                Some(&b"yes"[..])
            );
        }
        let fifo_dir = fx.src.join("fifo");
        fs::create_dir(&fifo_dir).unwrap();
        nix::unistd::mkfifo(
            &fifo_dir.join("p"),
            nix::sys::stat::Mode::from_bits_truncate(0o640),
        )
        .unwrap();
        copy_into_root(&[fifo_dir], &fx.root, "/f", &opts()).unwrap();
        use std::os::unix::fs::FileTypeExt;
        let m = fs::symlink_metadata(fx.root.join("f/p")).unwrap();
        assert!(m.file_type().is_fifo());
        assert_eq!(m.mode() & 0o7777, 0o640);
    }
}
