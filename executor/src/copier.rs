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
/// files stay hard links. Returns the in-image paths written, after symlink resolution (for example
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
        filetime::set_file_times(&host, m.atime, m.mtime).map_err(werr)?;
        self.record(&host);
        Ok(())
    }

    /// Apply directory times (children are all written now) and return the written paths.
    fn finish(self) -> Result<Vec<String>, CopyError> {
        for (host, atime, mtime) in self.dir_times.iter().rev() {
            filetime::set_file_times(host, *atime, *mtime).map_err(|source| CopyError::Write {
                path: host.display().to_string(),
                source,
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
mod tests;
