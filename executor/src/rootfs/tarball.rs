//! The one reader of tar streams: picks the decompressor by magic bytes, iterates entries, and
//! reads each entry's name, kind and recorded metadata. It writes nothing and gives entries no
//! meaning (a layer change or an archive member is the caller's business).

use std::borrow::Cow;
use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use filetime::FileTime;
use tar::EntryType;

use super::writer::NodeKind;

const GZIP_MAGIC: &[u8] = &[0x1f, 0x8b];
const ZSTD_MAGIC: &[u8] = &[0x28, 0xb5, 0x2f, 0xfd];
const BZIP2_MAGIC: &[u8] = b"BZh";
const XZ_MAGIC: &[u8] = &[0xfd, b'7', b'z', b'X', b'Z', 0x00];
const READ_BUFFER: usize = 256 * 1024;

/// The largest LZMA2 dictionary an xz archive may ask for (xz's `-9` preset uses 64 MiB): a
/// hostile header cannot make the decoder allocate gigabytes.
const XZ_MEMORY_LIMIT_KIB: u32 = 256 * 1024;

/// The compressions a caller recognises.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Formats {
    /// Layers: gzip and zstd; anything else is read as a plain tar, whose first bytes are an
    /// entry name and may be anything (`BZh…` included).
    Layer,
    /// ADD archives and tar contexts: gzip, bzip2, xz and zstd, detected by their magic bytes as
    /// Docker's `archive.DetectCompression` does.
    Archive,
}

/// Wrap `source` in the decompressor its first bytes call for (multi-member gzip, as pigz and
/// concatenated streams write, is valid; so are concatenated bzip2 and xz streams).
pub fn decompress(
    source: Box<dyn Read + Send>,
    formats: Formats,
) -> io::Result<Box<dyn Read + Send>> {
    let mut reader = BufReader::with_capacity(READ_BUFFER, source);
    let head = reader.fill_buf()?;
    if head.starts_with(GZIP_MAGIC) {
        Ok(Box::new(flate2::bufread::MultiGzDecoder::new(reader)))
    } else if head.starts_with(ZSTD_MAGIC) {
        Ok(Box::new(zstd::stream::read::Decoder::with_buffer(reader)?))
    } else if formats == Formats::Archive && head.starts_with(BZIP2_MAGIC) {
        Ok(Box::new(bzip2::bufread::MultiBzDecoder::new(reader)))
    } else if formats == Formats::Archive && head.starts_with(XZ_MAGIC) {
        Ok(Box::new(lzma_rust2::XzReader::new_mem_limit(
            reader,
            true,
            XZ_MEMORY_LIMIT_KIB,
        )))
    } else {
        Ok(Box::new(reader))
    }
}

/// Whether ADD should extract `path`: a tar stream, plain or compressed with gzip, bzip2, xz or
/// zstd. A compressed file that does not hold a tar is copied as it is, as Docker does.
pub fn is_archive(path: &Path) -> bool {
    let Ok(file) = File::open(path) else {
        return false;
    };
    let Ok(mut stream) = decompress(Box::new(file), Formats::Archive) else {
        return false;
    };
    let mut header = [0u8; 512];
    if stream.read_exact(&mut header).is_err() {
        return false;
    }
    is_tar_header(&header)
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

/// Call `apply` on every entry of the (already decompressed) tar `stream`, in order. Long names
/// and PAX records are folded into the entries they describe by the tar crate.
pub fn for_each_entry<E>(
    stream: Box<dyn Read>,
    read_err: impl Fn(io::Error) -> E,
    mut apply: impl FnMut(&mut TarEntry<'_>) -> Result<(), E>,
) -> Result<(), E> {
    let mut archive = tar::Archive::new(stream);
    for entry in archive.entries().map_err(&read_err)? {
        let mut entry = TarEntry(entry.map_err(&read_err)?);
        apply(&mut entry)?;
    }
    Ok(())
}

/// What an entry is, as far as writing it goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Regular, contiguous and GNU sparse files (the tar crate fills a sparse file's holes).
    File,
    Dir,
    Symlink,
    Hardlink,
    Char,
    Block,
    Fifo,
    /// Headers that describe other entries (PAX, GNU long names) and reach the caller only when
    /// global or in a header the tar crate does not recognise.
    Extension,
    Other(EntryType),
}

impl Kind {
    /// The node a device or fifo entry makes.
    pub fn node(self) -> Option<NodeKind> {
        match self {
            Kind::Char => Some(NodeKind::Char),
            Kind::Block => Some(NodeKind::Block),
            Kind::Fifo => Some(NodeKind::Fifo),
            _ => None,
        }
    }
}

/// How an entry's recorded numbers are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// Layers: PAX records (`uid`, `gid`, `mtime` with its fraction, `SCHILY.xattr.*`) take
    /// precedence over the header; a blank or garbled numeric field reads as 0, as GNU tar
    /// reads it; ids beyond 32 bits saturate.
    Layer,
    /// ADD archives and tar contexts: the header fields alone, a garbled one is an error, ids
    /// keep their low 32 bits, and no xattrs are read.
    Archive,
}

/// Mode, owner, mtime and xattrs as an entry records them.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub mode: u32,
    /// `None` when the caller did not ask for it.
    pub owner: Option<(u32, u32)>,
    pub mtime: FileTime,
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

/// One entry of a tar stream; reading it yields a file entry's content.
pub struct TarEntry<'a>(tar::Entry<'a, Box<dyn Read>>);

impl TarEntry<'_> {
    pub fn kind(&self) -> Kind {
        match self.0.header().entry_type() {
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => Kind::File,
            EntryType::Directory => Kind::Dir,
            EntryType::Symlink => Kind::Symlink,
            EntryType::Link => Kind::Hardlink,
            EntryType::Char => Kind::Char,
            EntryType::Block => Kind::Block,
            EntryType::Fifo => Kind::Fifo,
            EntryType::XGlobalHeader
            | EntryType::XHeader
            | EntryType::GNULongName
            | EntryType::GNULongLink => Kind::Extension,
            other => Kind::Other(other),
        }
    }

    /// The raw name, long names and PAX `path` applied.
    pub fn path_bytes(&self) -> Cow<'_, [u8]> {
        self.0.path_bytes()
    }

    /// The name for messages.
    pub fn name(&self) -> String {
        String::from_utf8_lossy(&self.0.path_bytes()).into_owned()
    }

    /// The name as a clean path relative to where the stream is extracted (see
    /// [`clean_entry_path`]).
    pub fn clean_path(&self) -> Result<PathBuf, String> {
        clean_entry_path(&self.0.path_bytes())
    }

    /// A link's target as recorded; `None` when the entry has none.
    pub fn link_bytes(&self) -> Option<Cow<'_, [u8]>> {
        self.0.link_name_bytes()
    }

    /// The device number of a character or block device entry.
    pub fn device(&self, dialect: Dialect) -> io::Result<u64> {
        let header = self.0.header();
        let (major, minor) = match dialect {
            Dialect::Layer => (
                header.device_major().ok().flatten().unwrap_or(0),
                header.device_minor().ok().flatten().unwrap_or(0),
            ),
            Dialect::Archive => (
                header.device_major()?.unwrap_or(0),
                header.device_minor()?.unwrap_or(0),
            ),
        };
        Ok(nix::sys::stat::makedev(u64::from(major), u64::from(minor)))
    }

    /// The entry's recorded metadata read the `dialect`'s way; the owner only when `owner`.
    pub fn recorded(&mut self, dialect: Dialect, owner: bool) -> io::Result<Recorded> {
        match dialect {
            Dialect::Layer => self.recorded_layer(owner),
            Dialect::Archive => self.recorded_archive(owner),
        }
    }

    fn recorded_archive(&self, owner: bool) -> io::Result<Recorded> {
        let header = self.0.header();
        let mode = header.mode()? & 0o7777;
        let owner = if owner {
            Some((header.uid()? as u32, header.gid()? as u32))
        } else {
            None
        };
        Ok(Recorded {
            mode,
            owner,
            mtime: FileTime::from_unix_time(header.mtime()? as i64, 0),
            xattrs: Vec::new(),
        })
    }

    fn recorded_layer(&mut self, owner: bool) -> io::Result<Recorded> {
        let header = self.0.header();
        let mode = header.mode().unwrap_or(0) & 0o7777;
        let mut uid = header.uid().unwrap_or(0);
        let mut gid = header.gid().unwrap_or(0);
        let mut mtime =
            FileTime::from_unix_time(i64::try_from(header.mtime().unwrap_or(0)).unwrap_or(0), 0);
        let mut xattrs = Vec::new();
        if let Some(pax) = self.0.pax_extensions()? {
            for ext in pax {
                let ext = ext?;
                let key = ext.key_bytes();
                let value = ext.value_bytes();
                if let Some(xattr) = key.strip_prefix(b"SCHILY.xattr.") {
                    xattrs.push((xattr.to_vec(), value.to_vec()));
                    continue;
                }
                let text = std::str::from_utf8(value).unwrap_or("");
                match key {
                    b"uid" => uid = text.parse().unwrap_or(uid),
                    b"gid" => gid = text.parse().unwrap_or(gid),
                    b"mtime" => {
                        if let Some(t) = parse_pax_time(text) {
                            mtime = t;
                        }
                    }
                    _ => {}
                }
            }
        }
        let id32 = |id: u64| u32::try_from(id).unwrap_or(u32::MAX);
        Ok(Recorded {
            mode,
            owner: owner.then(|| (id32(uid), id32(gid))),
            mtime,
            xattrs,
        })
    }
}

impl Read for TarEntry<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}

/// Turn a tar entry name into a path relative to where the stream is extracted: a leading `/`
/// is dropped, `.` skipped, `..` applied lexically; a `..` that would climb above the start is
/// an error (no tool writes one, so it is hostile).
pub fn clean_entry_path(raw: &[u8]) -> Result<PathBuf, String> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_paths_are_cleaned() {
        assert_eq!(
            clean_entry_path(b"/a/./b//c/").unwrap(),
            PathBuf::from("a/b/c")
        );
        assert_eq!(clean_entry_path(b"a/../b").unwrap(), PathBuf::from("b"));
        assert_eq!(clean_entry_path(b"./").unwrap(), PathBuf::new());
        assert!(clean_entry_path(b"../x").is_err());
        assert!(clean_entry_path(b"a/../../x").is_err());
        assert_eq!(
            parse_pax_time("12.5"),
            Some(FileTime::from_unix_time(12, 500_000_000))
        );
        assert_eq!(parse_pax_time("7"), Some(FileTime::from_unix_time(7, 0)));
    }
}
