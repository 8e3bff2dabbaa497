//! Parallel gzip: compresses a stream in fixed-size blocks on worker threads and joins them into
//! one standard gzip member, the scheme pigz uses. The output depends only on the input bytes and
//! the level, never on the number of threads or their timing, so `--reproducible` layers keep
//! their digests on any machine. It holds a bounded number of blocks in memory and must not read
//! or write anything but the stream it is given.
//!
//! Written here rather than taken from a crate: the parallel gzip crates either give no inner
//! writer back from `finish` (the layer writer needs it to read its hashes) or emit one gzip
//! member per block, which RFC 1952 allows but single-member decoders (flate2's `GzDecoder`
//! among them) stop reading after the first.
//!
//! How the blocks join: every block but the last is raw deflate ended by a sync flush (an empty
//! stored block, so it ends on a byte boundary) and the last ends with the final-block bit, so
//! their concatenation is one deflate stream. Each block is primed with the previous 32 KiB of
//! input as its dictionary, which is exactly the window a decoder has at that point, so the
//! ratio stays within a fraction of a percent of a single-threaded stream. The CRC-32 and size
//! for the gzip trailer are computed in order on the caller's thread.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use flate2::{Compress, Compression, FlushCompress, Status};

/// Input bytes per block. Large enough that the per-block dictionary reset and sync marker cost
/// nothing measurable, small enough that a layer of a few MiB still spreads over the cores.
pub const BLOCK_SIZE: usize = 1024 * 1024;

/// deflate's window: what a block may refer back to.
const DICT_SIZE: usize = 32 * 1024;

/// gzip header: magic, deflate, no flags, mtime 0, no extra flags, OS "unknown" (as flate2's
/// `GzEncoder` writes it, so output does not depend on the build host).
const GZIP_HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255];

/// More workers than this only add memory: layer writing is bounded by reading the files.
const MAX_THREADS: usize = 8;

/// Worker threads to use by default: the CPUs this process may use (cgroup quotas included), at
/// most [`MAX_THREADS`].
pub fn default_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(MAX_THREADS)
}

struct Job {
    seq: u64,
    data: Vec<u8>,
    dict: Vec<u8>,
    last: bool,
}

type Done = (u64, io::Result<Vec<u8>>);

/// Worker threads fed through one queue; results come back tagged with their block number.
struct Pool {
    jobs: Option<Sender<Job>>,
    done: Receiver<Done>,
    workers: Vec<JoinHandle<()>>,
}

impl Pool {
    fn start(threads: usize, level: u32) -> io::Result<Pool> {
        let (job_tx, job_rx) = mpsc::channel::<Job>();
        let (done_tx, done_rx) = mpsc::channel::<Done>();
        let job_rx = Arc::new(Mutex::new(job_rx));
        let mut workers = Vec::with_capacity(threads);
        for n in 0..threads {
            let job_rx = Arc::clone(&job_rx);
            let done_tx = done_tx.clone();
            let worker = std::thread::Builder::new()
                .name(format!("kiln-gzip-{n}"))
                .spawn(move || {
                    let mut compress = Compress::new(Compression::new(level), false);
                    loop {
                        // The lock is held only while taking a job, not while compressing.
                        let job = match job_rx.lock() {
                            Ok(rx) => rx.recv(),
                            Err(_) => return,
                        };
                        let Ok(job) = job else { return };
                        let out = deflate_block(&mut compress, &job.dict, &job.data, job.last);
                        if done_tx.send((job.seq, out)).is_err() {
                            return;
                        }
                    }
                })?;
            workers.push(worker);
        }
        Ok(Pool {
            jobs: Some(job_tx),
            done: done_rx,
            workers,
        })
    }

    fn stop(&mut self) {
        self.jobs = None;
        for worker in self.workers.drain(..) {
            let _ = worker.join();
        }
    }
}

/// Compress one block as raw deflate: ended by a sync flush, or by the final block when `last`.
fn deflate_block(
    compress: &mut Compress,
    dict: &[u8],
    data: &[u8],
    last: bool,
) -> io::Result<Vec<u8>> {
    compress.reset();
    if !dict.is_empty() {
        compress.set_dictionary(dict).map_err(io::Error::other)?;
    }
    let flush = if last {
        FlushCompress::Finish
    } else {
        FlushCompress::Sync
    };
    // deflate's worst case is a few bytes per 16 KiB stored block over the input size.
    let mut out = Vec::with_capacity(data.len() + data.len() / 1000 + 64);
    let start_in = compress.total_in();
    loop {
        let consumed = usize::try_from(compress.total_in() - start_in).unwrap_or(data.len());
        if out.capacity() - out.len() < 64 {
            out.reserve(out.capacity().max(4096));
        }
        let status = compress
            .compress_vec(&data[consumed..], &mut out, flush)
            .map_err(io::Error::other)?;
        let all_in = compress.total_in() - start_in == data.len() as u64;
        match status {
            Status::StreamEnd => return Ok(out),
            // A flush is complete when all input is in and the output was not filled up.
            Status::Ok | Status::BufError if !last && all_in && out.len() < out.capacity() => {
                return Ok(out)
            }
            Status::Ok | Status::BufError => {}
        }
    }
}

/// A `Write` that gzips what it is given on `threads` worker threads.
pub struct ParGzEncoder<W: Write> {
    inner: Option<W>,
    level: u32,
    threads: usize,
    block: Vec<u8>,
    /// The last [`DICT_SIZE`] bytes of input before `block`.
    dict: Vec<u8>,
    crc: crc32fast::Hasher,
    total_in: u64,
    header_written: bool,
    /// Next block number to hand out, and the next one to write to `inner`.
    next_seq: u64,
    next_out: u64,
    /// Blocks that finished before an earlier one.
    finished: BTreeMap<u64, Vec<u8>>,
    pool: Option<Pool>,
}

impl<W: Write> ParGzEncoder<W> {
    /// `level` 0–9 as zlib's; `threads` 1 compresses on the caller's thread only.
    pub fn new(inner: W, level: u32, threads: usize) -> Self {
        ParGzEncoder {
            inner: Some(inner),
            level: level.min(9),
            threads: threads.clamp(1, MAX_THREADS),
            block: Vec::with_capacity(BLOCK_SIZE),
            dict: Vec::new(),
            crc: crc32fast::Hasher::new(),
            total_in: 0,
            header_written: false,
            next_seq: 0,
            next_out: 0,
            finished: BTreeMap::new(),
            pool: None,
        }
    }

    fn inner(&mut self) -> io::Result<&mut W> {
        self.inner
            .as_mut()
            .ok_or_else(|| io::Error::other("gzip stream already finished"))
    }

    fn write_header(&mut self) -> io::Result<()> {
        if !self.header_written {
            self.inner()?.write_all(&GZIP_HEADER)?;
            self.header_written = true;
        }
        Ok(())
    }

    /// Hand the current block to a worker (or compress it here with one thread).
    fn submit(&mut self, last: bool) -> io::Result<()> {
        self.write_header()?;
        let data = std::mem::replace(&mut self.block, Vec::with_capacity(BLOCK_SIZE));
        self.crc.update(&data);
        self.total_in += data.len() as u64;
        let dict = std::mem::take(&mut self.dict);
        // The next block's dictionary: the last 32 KiB of input so far, which may reach back
        // into this block's dictionary when the block is short.
        let mut next_dict = Vec::with_capacity(DICT_SIZE);
        if data.len() < DICT_SIZE {
            let from_dict = DICT_SIZE - data.len();
            next_dict.extend_from_slice(&dict[dict.len().saturating_sub(from_dict)..]);
        }
        next_dict.extend_from_slice(&data[data.len().saturating_sub(DICT_SIZE)..]);
        self.dict = next_dict;

        let seq = self.next_seq;
        self.next_seq += 1;
        if self.threads == 1 || (last && self.pool.is_none()) {
            // One thread, or the whole stream is one block: no worker is worth starting.
            let mut compress = Compress::new(Compression::new(self.level), false);
            let out = deflate_block(&mut compress, &dict, &data, last)?;
            self.finished.insert(seq, out);
            return self.write_ready();
        }
        if self.pool.is_none() {
            self.pool = Some(Pool::start(self.threads, self.level)?);
        }
        let job = Job {
            seq,
            data,
            dict,
            last,
        };
        let sent = self
            .pool
            .as_ref()
            .and_then(|p| p.jobs.as_ref())
            .map(|jobs| jobs.send(job).is_ok())
            .unwrap_or(false);
        if !sent {
            return Err(worker_gone());
        }
        // Two blocks per worker in flight keeps every worker busy while bounding memory.
        while self.next_seq - self.next_out > 2 * self.threads as u64 {
            self.wait_one()?;
        }
        self.collect_ready()
    }

    /// Take finished blocks without waiting, and write those that are next in order.
    fn collect_ready(&mut self) -> io::Result<()> {
        if let Some(pool) = &self.pool {
            while let Ok((seq, out)) = pool.done.try_recv() {
                self.finished.insert(seq, out?);
            }
        }
        self.write_ready()
    }

    /// Wait for one more block from the workers, then write what is in order.
    fn wait_one(&mut self) -> io::Result<()> {
        let pool = self.pool.as_ref().ok_or_else(worker_gone)?;
        let (seq, out) = pool.done.recv().map_err(|_| worker_gone())?;
        self.finished.insert(seq, out?);
        self.write_ready()
    }

    fn write_ready(&mut self) -> io::Result<()> {
        while let Some(out) = self.finished.remove(&self.next_out) {
            self.inner()?.write_all(&out)?;
            self.next_out += 1;
        }
        Ok(())
    }

    /// Compress what is left, write the gzip trailer and return the inner writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.submit(true)?;
        while self.next_out < self.next_seq {
            self.wait_one()?;
        }
        if let Some(mut pool) = self.pool.take() {
            pool.stop();
        }
        let crc = self.crc.clone().finalize();
        // ISIZE is the input size modulo 2^32 (RFC 1952).
        let isize = (self.total_in & 0xffff_ffff) as u32;
        let mut inner = self.inner.take().ok_or_else(worker_gone)?;
        inner.write_all(&crc.to_le_bytes())?;
        inner.write_all(&isize.to_le_bytes())?;
        Ok(inner)
    }
}

fn worker_gone() -> io::Error {
    io::Error::other("a gzip compression thread stopped unexpectedly")
}

impl<W: Write> Write for ParGzEncoder<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let room = BLOCK_SIZE - self.block.len();
        let n = buf.len().min(room);
        self.block.extend_from_slice(&buf[..n]);
        if self.block.len() == BLOCK_SIZE {
            self.submit(false)?;
        }
        Ok(n)
    }

    /// Writes out the blocks already compressed; a partial block stays buffered, since flushing it
    /// would make the output depend on when flushes happen.
    fn flush(&mut self) -> io::Result<()> {
        self.collect_ready()?;
        self.inner()?.flush()
    }
}

impl<W: Write> Drop for ParGzEncoder<W> {
    fn drop(&mut self) {
        if let Some(mut pool) = self.pool.take() {
            pool.stop();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    /// Deterministic bytes that compress somewhat (text-like) and some that do not.
    fn sample(len: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(len);
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        while out.len() < len {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            if (out.len() / 100_000) % 2 == 0 {
                out.extend_from_slice(format!("line {} of some text\n", x % 1000).as_bytes());
            } else {
                out.extend_from_slice(&x.to_le_bytes());
            }
        }
        out.truncate(len);
        out
    }

    fn compress(data: &[u8], level: u32, threads: usize, piece: usize) -> Vec<u8> {
        let mut enc = ParGzEncoder::new(Vec::new(), level, threads);
        for chunk in data.chunks(piece.max(1)) {
            enc.write_all(chunk).unwrap();
        }
        enc.finish().unwrap()
    }

    /// Decodes with a single-member decoder: trailing data or a second member would be an error.
    fn gunzip(gz: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut dec = flate2::read::GzDecoder::new(gz);
        dec.read_to_end(&mut out).unwrap();
        out
    }

    #[test]
    fn round_trips_at_every_size_around_block_edges() {
        for len in [
            0,
            1,
            DICT_SIZE - 1,
            DICT_SIZE + 1,
            BLOCK_SIZE - 1,
            BLOCK_SIZE,
            BLOCK_SIZE + 1,
            3 * BLOCK_SIZE + 12_345,
        ] {
            let data = sample(len);
            for threads in [1, 2, 4] {
                let gz = compress(&data, 6, threads, 7919);
                assert_eq!(&gz[..2], &[0x1f, 0x8b], "len {len}");
                assert_eq!(gunzip(&gz), data, "len {len}, threads {threads}");
            }
        }
    }

    #[test]
    fn output_does_not_depend_on_threads_or_write_sizes() {
        let data = sample(5 * BLOCK_SIZE / 2);
        let reference = compress(&data, 1, 1, BLOCK_SIZE);
        for (threads, piece) in [(1, 1), (2, 512), (3, 100_000), (8, 3 * BLOCK_SIZE)] {
            let piece = if piece == 1 { 4093 } else { piece };
            assert_eq!(
                compress(&data, 1, threads, piece),
                reference,
                "threads {threads}, writes of {piece}"
            );
        }
    }

    #[test]
    fn one_member_with_the_right_trailer() {
        let data = sample(2 * BLOCK_SIZE + 5);
        let gz = compress(&data, 6, 2, 65536);
        let n = gz.len();
        let crc = u32::from_le_bytes(gz[n - 8..n - 4].try_into().unwrap());
        let size = u32::from_le_bytes(gz[n - 4..].try_into().unwrap());
        assert_eq!(crc, crc32fast::hash(&data));
        assert_eq!(size as usize, data.len());
        // A multi-member reader sees exactly the same bytes: there is no second member.
        let mut multi = Vec::new();
        flate2::read::MultiGzDecoder::new(&gz[..])
            .read_to_end(&mut multi)
            .unwrap();
        assert_eq!(multi, data);
    }

    #[test]
    fn priming_lets_blocks_refer_back_across_the_boundary() {
        // A 16 KiB random unit repeated: primed with the previous 32 KiB, a block is matches
        // only; cold, it must store the unit once more (16 KiB that do not compress).
        let unit = sample(100_000 + 16 * 1024)[100_000..].to_vec();
        let data: Vec<u8> = unit.iter().copied().cycle().take(2 * BLOCK_SIZE).collect();
        let second = &data[BLOCK_SIZE..];
        let mut c = Compress::new(Compression::new(6), false);
        let cold = deflate_block(&mut c, &[], second, false).unwrap().len();
        let primed = deflate_block(&mut c, &data[BLOCK_SIZE - DICT_SIZE..BLOCK_SIZE], second, false)
            .unwrap()
            .len();
        assert!(
            primed + unit.len() * 9 / 10 < cold,
            "primed {primed} vs cold {cold}"
        );
        let gz = compress(&data, 6, 2, 65536);
        assert!(gz.len() < 2 * cold, "{} vs {cold}", gz.len());
        assert_eq!(gunzip(&gz), data);
    }

    #[test]
    fn level_zero_stores() {
        let data = sample(BLOCK_SIZE + 10);
        let gz = compress(&data, 0, 2, 65536);
        assert!(gz.len() > data.len());
        assert_eq!(gunzip(&gz), data);
    }

    #[test]
    fn gnu_gzip_reads_it() {
        let Ok(status) = std::process::Command::new("gzip").arg("--version").output() else {
            eprintln!("gzip not installed; skipping");
            return;
        };
        assert!(status.status.success());
        let data = sample(3 * BLOCK_SIZE + 1);
        let gz = compress(&data, 6, 2, 65536);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.gz");
        std::fs::write(&path, &gz).unwrap();
        let out = std::process::Command::new("gzip")
            .arg("-dc")
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(out.stdout, data);
    }
}
