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
                        let out =
                            deflate_block(&mut compress, level, &job.dict, &job.data, job.last);
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

/// Input is judged compressible or not in pieces of this size.
const PROBE_SIZE: usize = 64 * 1024;

/// Bits per byte from which a piece is stored rather than compressed: Huffman coding cannot gain
/// more than `(8 - entropy) / 8` (0.6 % here) on such bytes, and deflate spends most of its time
/// finding that out. Only repeats within the window could still pay, and random or already
/// compressed payloads (the usual high-entropy content of a layer) do not have them.
const STORE_ENTROPY: f64 = 7.95;

/// Raw deflate's stored blocks hold at most this many bytes.
const STORED_MAX: usize = 65_535;

/// Compress one block as raw deflate, ended by a sync flush, or by the final block when `last`.
/// Pieces that look incompressible are written as stored blocks, the rest is deflated at
/// `level`, each run primed with the 32 KiB of input before it; level 0 stores everything.
fn deflate_block(
    compress: &mut Compress,
    level: u32,
    dict: &[u8],
    data: &[u8],
    last: bool,
) -> io::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(data.len() + data.len() / 1000 + 64);
    if data.is_empty() {
        deflate_run(compress, dict, data, last, &mut out)?;
        return Ok(out);
    }
    let mut start = 0;
    while start < data.len() {
        let stored = level == 0 || looks_incompressible(&data[start..]);
        // Extend the run while the pieces keep the same verdict.
        let mut end = (start + PROBE_SIZE).min(data.len());
        while end < data.len() && (level == 0 || looks_incompressible(&data[end..]) == stored) {
            end = (end + PROBE_SIZE).min(data.len());
        }
        let run_last = last && end == data.len();
        if stored {
            write_stored(&data[start..end], run_last, &mut out);
        } else {
            let window = window_before(dict, data, start);
            deflate_run(compress, &window, &data[start..end], run_last, &mut out)?;
        }
        start = end;
    }
    Ok(out)
}

/// Whether the next piece of `rest` is near-uniform bytes (see [`STORE_ENTROPY`]). Short tails
/// are always compressed: their byte counts say too little.
fn looks_incompressible(rest: &[u8]) -> bool {
    let piece = &rest[..rest.len().min(PROBE_SIZE)];
    if piece.len() < 4096 {
        return false;
    }
    let mut counts = [0u32; 256];
    for &b in piece {
        counts[usize::from(b)] += 1;
    }
    let n = piece.len() as f64;
    let entropy: f64 = counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = f64::from(c) / n;
            -p * p.log2()
        })
        .sum();
    entropy >= STORE_ENTROPY
}

/// The last [`DICT_SIZE`] bytes of input before `data[start]`, reaching into `dict` (the input
/// before `data`) when `start` is small.
fn window_before(dict: &[u8], data: &[u8], start: usize) -> Vec<u8> {
    let from_data = &data[start.saturating_sub(DICT_SIZE)..start];
    let from_dict = &dict[dict.len().saturating_sub(DICT_SIZE - from_data.len())..];
    [from_dict, from_data].concat()
}

/// Append `data` as stored deflate blocks; the stream is byte-aligned here (after a sync flush,
/// another stored block, or at the start).
fn write_stored(data: &[u8], last: bool, out: &mut Vec<u8>) {
    let pieces = data.chunks(STORED_MAX);
    let count = pieces.len();
    for (i, piece) in pieces.enumerate() {
        // BFINAL in bit 0, BTYPE 00 (stored), then padding to the byte boundary.
        out.push(u8::from(last && i + 1 == count));
        let len = piece.len() as u16;
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(piece);
    }
}

/// Deflate `data` primed with `window`, ending with a sync flush or the final block.
fn deflate_run(
    compress: &mut Compress,
    window: &[u8],
    data: &[u8],
    last: bool,
    out: &mut Vec<u8>,
) -> io::Result<()> {
    compress.reset();
    if !window.is_empty() {
        compress.set_dictionary(window).map_err(io::Error::other)?;
    }
    let flush = if last {
        FlushCompress::Finish
    } else {
        FlushCompress::Sync
    };
    let start_in = compress.total_in();
    loop {
        let consumed = usize::try_from(compress.total_in() - start_in).unwrap_or(data.len());
        if out.capacity() - out.len() < 64 {
            out.reserve(out.capacity().max(4096));
        }
        let status = compress
            .compress_vec(&data[consumed..], out, flush)
            .map_err(io::Error::other)?;
        let all_in = compress.total_in() - start_in == data.len() as u64;
        match status {
            Status::StreamEnd => return Ok(()),
            // A flush is complete when all input is in and the output was not filled up.
            Status::Ok | Status::BufError if !last && all_in && out.len() < out.capacity() => {
                return Ok(())
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
        // The next block's dictionary: the last 32 KiB of input so far.
        self.dict = window_before(&dict, &data, data.len());

        let seq = self.next_seq;
        self.next_seq += 1;
        if self.threads == 1 || (last && self.pool.is_none()) {
            // One thread, or the whole stream is one block: no worker is worth starting.
            let mut compress = Compress::new(Compression::new(self.level), false);
            let out = deflate_block(&mut compress, self.level, &dict, &data, last)?;
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

    /// Bytes of 6 bits of entropy: compressible, but only by Huffman coding unless repeated.
    fn six_bit_noise(len: usize) -> Vec<u8> {
        sample(100_000 + len)[100_000..]
            .iter()
            .map(|b| b'0' + (b & 63))
            .collect()
    }

    #[test]
    fn priming_lets_blocks_refer_back_across_the_boundary() {
        // A 16 KiB unit repeated: primed with the previous 32 KiB, a block is matches only;
        // cold, it must code the unit once more.
        let unit = six_bit_noise(16 * 1024);
        let data: Vec<u8> = unit.iter().copied().cycle().take(2 * BLOCK_SIZE).collect();
        let second = &data[BLOCK_SIZE..];
        let mut c = Compress::new(Compression::new(6), false);
        let cold = deflate_block(&mut c, 6, &[], second, false).unwrap().len();
        let window = &data[BLOCK_SIZE - DICT_SIZE..BLOCK_SIZE];
        let primed = deflate_block(&mut c, 6, window, second, false)
            .unwrap()
            .len();
        assert!(
            primed + unit.len() / 2 < cold,
            "primed {primed} vs cold {cold}"
        );
        let gz = compress(&data, 6, 2, 65536);
        assert!(gz.len() < 2 * cold, "{} vs {cold}", gz.len());
        assert_eq!(gunzip(&gz), data);
    }

    #[test]
    fn random_data_is_stored_not_expanded_and_mixed_data_round_trips() {
        // 100 KB of noise, repeated: ~3 MB that repeats only beyond deflate's 32 KiB window.
        let random = sample(200_000)[100_000..].repeat(30);
        assert!(looks_incompressible(&random) && !looks_incompressible(&sample(PROBE_SIZE)));
        let gz = compress(&random, 1, 2, 65536);
        // Stored blocks cost 5 bytes per 64 KiB; deflate's fixed codes would add ~5 %.
        assert!(
            gz.len() <= random.len() + random.len() / 1000 + 64,
            "{} for {} random bytes",
            gz.len(),
            random.len()
        );
        assert_eq!(gunzip(&gz), random);
        // Runs of noise, text and noise again, with edges that do not fall on piece edges.
        let mut mixed = random[..700_001].to_vec();
        mixed.extend(sample(900_003));
        mixed.extend(&random[..300_007]);
        mixed.extend(six_bit_noise(5_000));
        for level in [0, 1, 6, 9] {
            let gz = compress(&mixed, level, 2, 10_000);
            assert_eq!(gunzip(&gz), mixed, "level {level}");
        }
        let text_part = compress(&sample(900_003), 6, 1, 65536).len();
        let whole = compress(&mixed, 6, 2, 65536).len();
        // The noise costs its size, the 6-bit tail about 3/4 of its 5,000 bytes, and each switch
        // between stored and deflated runs a few bytes.
        let bound = 1_000_008 + text_part + 5_000 + 1_000;
        assert!(whole < bound, "mixed {whole}, expected under {bound}");
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
        // Missing gzip fails under CI=true and skips loudly elsewhere.
        if kiln_testkit::require_tool("gzip").is_none() {
            return;
        }
        let status = std::process::Command::new("gzip")
            .arg("--version")
            .output()
            .unwrap();
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
