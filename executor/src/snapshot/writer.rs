//! Streams one layer to disk: tar → sha256 (diff_id) → compressor (gzip on all cores, or zstd) →
//! sha256 (digest) → file, in a single pass. Knows nothing about which entries belong in a layer;
//! it must not walk the root.

use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::path::Path;

use sha2::{Digest, Sha256};
use tar::Header;

use super::Compression;
use crate::pargz::{self, ParGzEncoder};

/// Counts and hashes what passes through it.
pub(super) struct HashWriter<W> {
    inner: W,
    hasher: Sha256,
    len: u64,
}

impl<W: Write> HashWriter<W> {
    fn new(inner: W) -> Self {
        HashWriter {
            inner,
            hasher: Sha256::new(),
            len: 0,
        }
    }

    fn finish(self) -> (W, String, u64) {
        let digest = format!("sha256:{}", hex::encode(self.hasher.finalize()));
        (self.inner, digest, self.len)
    }
}

impl<W: Write> Write for HashWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

enum Encoder<W: Write> {
    Gzip(ParGzEncoder<W>),
    Zstd(zstd::stream::write::Encoder<'static, W>),
}

impl<W: Write> Encoder<W> {
    fn new(inner: W, compression: Compression) -> io::Result<Self> {
        Ok(match compression {
            // mtime 0 and no file name in the gzip header, and blocks that do not depend on the
            // thread count: output depends only on the input bytes and the level.
            Compression::Gzip { level } => {
                Encoder::Gzip(ParGzEncoder::new(inner, level, pargz::default_threads()))
            }
            Compression::Zstd { level } => {
                Encoder::Zstd(zstd::stream::write::Encoder::new(inner, level)?)
            }
        })
    }

    fn finish(self) -> io::Result<W> {
        match self {
            Encoder::Gzip(e) => e.finish(),
            Encoder::Zstd(e) => e.finish(),
        }
    }
}

impl<W: Write> Write for Encoder<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Encoder::Gzip(e) => e.write(buf),
            Encoder::Zstd(e) => e.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Encoder::Gzip(e) => e.flush(),
            Encoder::Zstd(e) => e.flush(),
        }
    }
}

/// Tar header name fields are 100 bytes; longer names and link targets go in PAX records.
const NAME_FIELD: usize = 100;

type Sink = HashWriter<Encoder<HashWriter<BufWriter<Watched>>>>;

/// The layer's file, telling a watcher (an upload that runs beside the writing) how many bytes
/// have reached it.
pub(super) struct Watched {
    file: File,
    written: u64,
    watch: Option<BlobWatch>,
}

/// The sending end of a layer blob's progress, see [`GrowingBlob`].
pub type BlobWatch = tokio::sync::watch::Sender<GrowingBlob>;
pub use kiln_oci::registry::GrowingBlob;

impl Write for Watched {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        self.written += n as u64;
        if let Some(watch) = &self.watch {
            let written = self.written;
            watch.send_modify(|blob| blob.written = written);
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

/// The identities of a finished layer blob.
pub(super) struct Written {
    pub digest: String,
    pub diff_id: String,
    pub size: u64,
}

/// A tar stream being written, compressed and hashed.
pub(super) struct LayerWriter {
    builder: tar::Builder<Sink>,
}

impl LayerWriter {
    /// `watch`, when given, hears of every write that reaches `file`.
    pub fn new(file: File, compression: Compression, watch: Option<BlobWatch>) -> io::Result<Self> {
        let file = Watched {
            file,
            written: 0,
            watch,
        };
        let compressed = HashWriter::new(BufWriter::with_capacity(256 * 1024, file));
        let tar_stream = HashWriter::new(Encoder::new(compressed, compression)?);
        Ok(LayerWriter {
            builder: tar::Builder::new(tar_stream),
        })
    }

    /// Append one entry with the name and link target stored byte for byte (the tar crate's own
    /// path setters normalise them), falling back to PAX `path`/`linkpath` records when they do
    /// not fit, and with `xattrs` as PAX records.
    pub fn append<R: Read>(
        &mut self,
        header: &mut Header,
        name: &[u8],
        link: Option<&[u8]>,
        xattrs: &[(String, Vec<u8>)],
        data: R,
    ) -> io::Result<()> {
        let mut pax: Vec<(&str, &[u8])> = Vec::new();
        if name.len() > NAME_FIELD {
            pax.push(("path", name));
        }
        if let Some(link) = link {
            if link.len() > NAME_FIELD {
                pax.push(("linkpath", link));
            }
        }
        for (key, value) in xattrs {
            pax.push((key.as_str(), value.as_slice()));
        }
        if !pax.is_empty() {
            self.builder.append_pax_extensions(pax)?;
        }
        let old = header.as_old_mut();
        let n = name.len().min(NAME_FIELD);
        old.name[..n].copy_from_slice(&name[..n]);
        if let Some(link) = link {
            let n = link.len().min(NAME_FIELD);
            old.linkname[..n].copy_from_slice(&link[..n]);
        }
        header.set_cksum();
        self.builder.append(header, data)
    }

    /// Write the end-of-archive blocks, flush the compressor and return the blob's identities
    /// (and the watch, for the caller to report the finished file on).
    pub fn finish(self) -> io::Result<(Written, Option<BlobWatch>)> {
        let tar_stream = self.builder.into_inner()?;
        let (encoder, diff_id, _) = tar_stream.finish();
        let (buffered, digest, size) = encoder.finish()?.finish();
        let file = buffered.into_inner().map_err(|e| e.into_error())?;
        Ok((
            Written {
                digest,
                diff_id,
                size,
            },
            file.watch,
        ))
    }
}

/// Reads exactly `len` bytes from a file and fails if it ends sooner: the tar header already
/// promised that many, and a short entry would corrupt every entry after it.
pub(super) struct ExactReader<'a> {
    inner: io::Take<&'a mut File>,
    remaining: u64,
    path: &'a Path,
}

impl<'a> ExactReader<'a> {
    pub fn new(file: &'a mut File, len: u64, path: &'a Path) -> Self {
        ExactReader {
            inner: file.take(len),
            remaining: len,
            path,
        }
    }
}

impl Read for ExactReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.remaining == 0 {
            return Ok(0);
        }
        let n = self.inner.read(buf)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "{} shrank while it was being added to the layer",
                    self.path.display()
                ),
            ));
        }
        self.remaining -= n as u64;
        Ok(n)
    }
}
