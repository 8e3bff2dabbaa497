//! Extraction of a plain archive (ADD of a local tar, a tar build context) under a destination
//! directory of a root. Members are written as they are, with no layer semantics: `.wh.*` names
//! are plain files, as Docker's untar writes them. Whether to extract at all (ADD's
//! [`super::is_archive`]) is the caller's decision; every write goes through [`RootWriter`].

use std::collections::HashSet;
use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::resolve::clean_abs;
use super::tarball::{self, Dialect, Formats, Kind, TarEntry};
use super::writer::{
    Content, DirTimes, ImpliedDirs, Meta, RootWriter, WriteError, WriterOptions, XattrFailures,
};
use super::{image_path, Protected};

/// Owner given to extracted members.
#[derive(Debug, Clone, Copy)]
pub enum ArchiveOwner {
    /// Everything 0:0 (a build context).
    Root,
    /// The uid/gid recorded in the archive; directories the archive does not describe (the
    /// destination, missing parents) get `created` (ADD `--chown`, else 0:0). buildah does not
    /// apply `--chown` to the extracted members themselves.
    Recorded { created: (u32, u32) },
}

/// Why an archive could not be extracted. The messages are those ADD has always reported.
#[derive(Debug, thiserror::Error)]
pub enum ExtractError {
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
    #[error("writing {path} into the image: {source}")]
    Write { path: String, source: io::Error },
    #[error("cannot create directory {path} in the image: a non-directory is in the way")]
    NotADirectory { path: String },
}

impl From<WriteError> for ExtractError {
    fn from(e: WriteError) -> Self {
        let path = |rel: &Path| clean_abs(&rel.to_string_lossy());
        match e {
            WriteError::Io { rel, source, .. }
            | WriteError::Content { rel, source }
            | WriteError::DeviceNotPermitted { rel, source, .. } => ExtractError::Write {
                path: path(&rel),
                source,
            },
            WriteError::NotADirectory { rel } => ExtractError::NotADirectory { path: path(&rel) },
            WriteError::Outside { rel } => ExtractError::Write {
                path: path(&rel),
                source: io::Error::other("resolved outside the root"),
            },
        }
    }
}

/// Open `file` (its name in messages: `label`) as a tar stream, plain or compressed with gzip,
/// bzip2, xz or zstd, chosen by its first bytes.
pub fn open_archive(file: File, label: &str) -> Result<Box<dyn Read + Send>, ExtractError> {
    tarball::decompress(Box::new(file), Formats::Archive).map_err(|source| ExtractError::Archive {
        path: label.to_string(),
        source,
    })
}

/// Extract the tar `stream` under in-image directory `dest` of `root`. Members whose name (or
/// hard link target) climbs out of `dest` reject the whole archive; absolute names are taken
/// as relative to `dest`, like Docker. Returns the in-image paths written, after symlink
/// resolution, including directories created for `dest`.
pub fn extract_archive(
    stream: Box<dyn Read>,
    root: &Path,
    dest: &str,
    owner: ArchiveOwner,
) -> Result<Vec<String>, ExtractError> {
    let dest_clean = clean_abs(dest);
    let dest_rel = PathBuf::from(dest_clean.trim_start_matches('/'));
    let created = match owner {
        ArchiveOwner::Recorded { created } => created,
        ArchiveOwner::Root => (0, 0),
    };
    let opts = WriterOptions {
        implied_dirs: ImpliedDirs::Owned(created),
        // Archives carry no xattrs here (see `Dialect::Archive`).
        xattr_failures: XattrFailures::Ignore,
        dir_times: DirTimes::FirstWins,
        record: true,
    };
    let mut w = RootWriter::new(root, Protected::none(), opts);
    w.ensure_dir(&dest_rel)?;
    let mut extractor = Extractor {
        w: &mut w,
        dest_rel: &dest_rel,
        dest_clean: &dest_clean,
        owner,
        devices_skipped: 0,
        skipped: HashSet::new(),
    };
    tarball::for_each_entry(
        stream,
        |source| archive_err(&dest_clean, source),
        |entry| extractor.member(entry),
    )?;
    let skipped = extractor.devices_skipped;
    if skipped > 0 {
        tracing::info!(
            destination = %dest_clean,
            skipped,
            "{skipped} device node(s) of the archive extracted to {dest_clean} not created: this \
             process may not create device nodes (no CAP_MKNOD, or a user namespace), so they are \
             skipped, as containerd and BuildKit do in a user namespace; the rest is extracted"
        );
    }
    let written = w.finish()?;
    Ok(written.iter().map(|host| image_path(root, host)).collect())
}

fn archive_err(dest_clean: &str, source: io::Error) -> ExtractError {
    ExtractError::Archive {
        path: dest_clean.to_string(),
        source,
    }
}

struct Extractor<'w, 'r> {
    w: &'w mut RootWriter<'r>,
    dest_rel: &'w Path,
    dest_clean: &'w str,
    owner: ArchiveOwner,
    /// Character and block devices not created for lack of the right to (see
    /// [`WriteError::DeviceNotPermitted`]), and hard links to them.
    devices_skipped: u64,
    /// Where those devices would have been, so that hard links to them are skipped too.
    skipped: HashSet<PathBuf>,
}

impl Extractor<'_, '_> {
    fn member(&mut self, entry: &mut TarEntry<'_>) -> Result<(), ExtractError> {
        let name = entry.name();
        let unsafe_entry = || ExtractError::UnsafeEntry {
            entry: name.clone(),
        };
        let rel = entry.clean_path().map_err(|_| unsafe_entry())?;
        if rel.as_os_str().is_empty() {
            // "./" itself: never re-own or re-mode the destination.
            return Ok(());
        }
        let read_err = |source| archive_err(self.dest_clean, source);
        let recorded = entry
            .recorded(
                Dialect::Archive,
                matches!(self.owner, ArchiveOwner::Recorded { .. }),
            )
            .map_err(read_err)?;
        let meta = Meta {
            mode: recorded.mode,
            owner: Some(recorded.owner.unwrap_or((0, 0))),
            atime: recorded.mtime,
            mtime: recorded.mtime,
            xattrs: Vec::new(),
        };
        let mut t = self.w.locate(&self.dest_rel.join(lossy(&rel)))?;
        self.w.prepare(&mut t)?;
        match entry.kind() {
            Kind::Dir => self.w.dir(&mut t, &meta)?,
            Kind::File => {
                self.w.file(&mut t, Content::Stream(entry), &meta)?;
            }
            Kind::Symlink => {
                let link = entry.link_bytes().ok_or_else(unsafe_entry)?;
                self.w.symlink(&mut t, OsStr::from_bytes(&link), &meta)?;
            }
            Kind::Hardlink => {
                let link = entry.link_bytes().ok_or_else(unsafe_entry)?.into_owned();
                let link_rel = tarball::clean_entry_path(&link).map_err(|_| unsafe_entry())?;
                let bad = || ExtractError::BadHardLink {
                    entry: name.clone(),
                    target: String::from_utf8_lossy(&link).into_owned(),
                };
                if link_rel.as_os_str().is_empty() {
                    return Err(bad());
                }
                let existing = self.w.link_target(&self.dest_rel.join(lossy(&link_rel)))?;
                if self.skipped.contains(&existing) {
                    self.devices_skipped += 1;
                    return Ok(());
                }
                let is_file = fs::symlink_metadata(&existing)
                    .map(|m| !m.is_dir())
                    .unwrap_or(false);
                if !is_file {
                    return Err(bad());
                }
                self.w.hardlink(&mut t, &existing)?;
            }
            kind => match kind.node() {
                Some(node) => {
                    let rdev = entry.device(Dialect::Archive).map_err(read_err)?;
                    match self.w.node(&mut t, node, rdev, &meta) {
                        Err(WriteError::DeviceNotPermitted { .. }) => {
                            tracing::debug!(entry = %name, "device node not created: not permitted");
                            self.devices_skipped += 1;
                            self.skipped.insert(t.host().to_path_buf());
                        }
                        other => other?,
                    }
                }
                None => {
                    tracing::debug!(entry = %name, kind = ?kind, "skipping tar entry of unsupported type");
                }
            },
        }
        Ok(())
    }
}

/// Archive member names have always been taken as UTF-8, invalid bytes replaced.
fn lossy(path: &Path) -> PathBuf {
    match path.to_str() {
        Some(_) => path.to_path_buf(),
        None => PathBuf::from(path.to_string_lossy().into_owned()),
    }
}
