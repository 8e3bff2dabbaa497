//! Decompressing a layer on a helper thread while the unpacker writes what came before.
//!
//! Unpacking a gzip layer is two jobs of about the same size: reading, hashing and inflating the
//! blob, and parsing the tar and writing its files. One thread did both in turn; here a helper
//! thread does the first into a few fixed-size chunks while the calling thread does the second,
//! so on two cores the unpack takes about as long as the slower of the two. Memory stays bounded:
//! at most [`DEPTH`] chunks wait, plus the one being read and the one being filled.
//!
//! The helper stops when the stream ends, when reading it fails (the error is handed to the
//! reader in the stream's place), or when the reader is dropped (its next send fails): a reader
//! that gives up half-way (a bound passed, an unsafe entry) leaves the helper no more than one
//! chunk of work. Run it in a [`std::thread::scope`] so that it has finished, and so has every
//! read of the source it makes, when the scope ends.

use std::io::{self, Read};
use std::sync::mpsc::{channel, sync_channel, Receiver, Sender};
use std::thread::Scope;

/// Bytes per chunk handed from the helper to the reader.
pub const CHUNK: usize = 256 * 1024;
/// Chunks that may wait for the reader.
pub const DEPTH: usize = 4;

/// The reading end: what the helper read from the source, in order, then its end or its error.
pub struct ReadAhead {
    chunks: Receiver<io::Result<Vec<u8>>>,
    /// Emptied chunks go back to the helper, so the same few buffers are used throughout.
    spent: Sender<Vec<u8>>,
    current: Vec<u8>,
    pos: usize,
    done: bool,
}

/// Start reading `source` ahead on a thread of `scope`.
pub fn spawn<'scope, 'env>(
    scope: &'scope Scope<'scope, 'env>,
    source: Box<dyn Read + Send + 'env>,
) -> ReadAhead {
    spawn_sized(scope, source, CHUNK, DEPTH)
}

fn spawn_sized<'scope, 'env>(
    scope: &'scope Scope<'scope, 'env>,
    mut source: Box<dyn Read + Send + 'env>,
    chunk: usize,
    depth: usize,
) -> ReadAhead {
    let (tx, chunks) = sync_channel::<io::Result<Vec<u8>>>(depth);
    let (spent, recycled) = channel::<Vec<u8>>();
    scope.spawn(move || loop {
        let mut buf = recycled.try_recv().unwrap_or_default();
        buf.resize(chunk, 0);
        // Fill the chunk whole (fewer hand-overs) unless the stream ends first.
        let mut filled = 0;
        let mut ended = false;
        while filled < chunk {
            match source.read(&mut buf[filled..]) {
                Ok(0) => {
                    ended = true;
                    break;
                }
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // What was read before the error first, then the error itself.
                    buf.truncate(filled);
                    if filled > 0 && tx.send(Ok(buf)).is_err() {
                        return;
                    }
                    let _ = tx.send(Err(e));
                    return;
                }
            }
        }
        buf.truncate(filled);
        if filled > 0 && tx.send(Ok(buf)).is_err() {
            // The reader is gone.
            return;
        }
        if ended {
            return;
        }
    });
    ReadAhead {
        chunks,
        spent,
        current: Vec::new(),
        pos: 0,
        done: false,
    }
}

impl Read for ReadAhead {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        loop {
            if self.pos < self.current.len() {
                let n = out.len().min(self.current.len() - self.pos);
                out[..n].copy_from_slice(&self.current[self.pos..self.pos + n]);
                self.pos += n;
                return Ok(n);
            }
            if self.done {
                return Ok(0);
            }
            let spent = std::mem::take(&mut self.current);
            if spent.capacity() > 0 {
                // The helper may have ended already; the buffer is then simply freed.
                let _ = self.spent.send(spent);
            }
            self.pos = 0;
            match self.chunks.recv() {
                Ok(Ok(chunk)) => self.current = chunk,
                Ok(Err(e)) => {
                    self.done = true;
                    return Err(e);
                }
                // The helper ended: the stream is over.
                Err(_) => self.done = true,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    /// A source handing out `data` a few bytes at a time, then failing with `fail` if set.
    struct Dribble {
        data: Vec<u8>,
        pos: usize,
        step: usize,
        fail: Option<io::ErrorKind>,
        reads: Arc<AtomicUsize>,
    }

    impl Read for Dribble {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.reads.fetch_add(1, Ordering::SeqCst);
            if self.pos == self.data.len() {
                return match self.fail {
                    Some(kind) => Err(io::Error::new(kind, "the source broke")),
                    None => Ok(0),
                };
            }
            let n = buf.len().min(self.step).min(self.data.len() - self.pos);
            buf[..n].copy_from_slice(&self.data[self.pos..self.pos + n]);
            self.pos += n;
            Ok(n)
        }
    }

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    fn dribble(data: &[u8], step: usize, fail: Option<io::ErrorKind>) -> Dribble {
        Dribble {
            data: data.to_vec(),
            pos: 0,
            step,
            fail,
            reads: Arc::new(AtomicUsize::new(0)),
        }
    }

    #[test]
    fn the_stream_comes_through_whole_and_in_order() {
        // Lengths around the chunk size, read with buffers of odd sizes.
        for len in [0, 1, 15, 16, 17, 100, 1000] {
            let data = pattern(len);
            let got = std::thread::scope(|scope| {
                let mut ahead = spawn_sized(scope, Box::new(dribble(&data, 3, None)), 16, 2);
                let mut got = Vec::new();
                let mut buf = [0u8; 7];
                loop {
                    let n = ahead.read(&mut buf).unwrap();
                    if n == 0 {
                        break;
                    }
                    got.extend_from_slice(&buf[..n]);
                }
                // The end stays the end.
                assert_eq!(ahead.read(&mut buf).unwrap(), 0);
                got
            });
            assert_eq!(got, data, "length {len}");
        }
    }

    #[test]
    fn an_error_comes_after_the_bytes_read_before_it() {
        let data = pattern(40);
        std::thread::scope(|scope| {
            let mut ahead = spawn_sized(
                scope,
                Box::new(dribble(&data, 5, Some(io::ErrorKind::InvalidData))),
                16,
                2,
            );
            let mut got = Vec::new();
            let err = loop {
                let mut buf = [0u8; 9];
                match ahead.read(&mut buf) {
                    Ok(0) => panic!("the stream ended without its error"),
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                    Err(e) => break e,
                }
            };
            assert_eq!(got, data);
            assert_eq!(err.kind(), io::ErrorKind::InvalidData);
            assert_eq!(err.to_string(), "the source broke");
        });
    }

    #[test]
    fn a_reader_that_gives_up_stops_the_helper() {
        // 1 MiB offered in 16-byte chunks with 2 waiting: after the reader takes one chunk and
        // goes, the helper reads at most the chunks that fit in the queue, the one it was
        // filling and the one it then fails to hand over.
        let data = pattern(1 << 20);
        let source = dribble(&data, 16, None);
        let reads = source.reads.clone();
        std::thread::scope(|scope| {
            let mut ahead = spawn_sized(scope, Box::new(source), 16, 2);
            let mut buf = [0u8; 16];
            assert_eq!(ahead.read(&mut buf).unwrap(), 16);
            drop(ahead);
        });
        let reads = reads.load(Ordering::SeqCst);
        assert!(reads <= 6, "the helper went on reading: {reads} reads");
    }
}
