//! The bounds of unpacking layers: decompressed bytes per layer (`--max-layer-size`) and per
//! build (`--max-build-size`), entries per layer (`--max-layer-entries`). Bytes are counted as
//! they are decompressed and as file content is read for writing, before a byte is written, so
//! a gzip bomb stops at the bound instead of filling the disk first; it only counts and says
//! when a bound is passed, the unpacker turns that into its error.

use std::cell::Cell;
use std::io::{self, Read};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use kiln_oci::limits::{
    Limit, DEFAULT_MAX_BUILD_SIZE, DEFAULT_MAX_LAYER_ENTRIES, DEFAULT_MAX_LAYER_SIZE,
};

/// The per-layer bounds of an unpack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayerBounds {
    /// Decompressed bytes of the layer (`--max-layer-size`).
    pub size: Limit,
    /// Entries of the layer (`--max-layer-entries`).
    pub entries: Limit,
}

impl Default for LayerBounds {
    fn default() -> Self {
        LayerBounds {
            size: Limit::at(DEFAULT_MAX_LAYER_SIZE),
            entries: Limit::at(DEFAULT_MAX_LAYER_ENTRIES),
        }
    }
}

/// The decompressed bytes every unpack of one build may add up to (`--max-build-size`),
/// and how many they have used; shared by all the build's unpacks.
#[derive(Debug)]
pub struct BuildBudget {
    limit: Limit,
    used: AtomicU64,
}

impl BuildBudget {
    pub fn new(limit: Limit) -> Arc<BuildBudget> {
        Arc::new(BuildBudget {
            limit,
            used: AtomicU64::new(0),
        })
    }

    /// No bound; for unpacks outside a build (tests, tools).
    pub fn unlimited() -> Arc<BuildBudget> {
        BuildBudget::new(Limit::UNLIMITED)
    }

    pub fn limit(&self) -> Limit {
        self.limit
    }

    /// Bytes charged so far by the unpacks that finished.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    fn charge(&self, n: u64) {
        self.used.fetch_add(n, Ordering::Relaxed);
    }
}

impl Default for BuildBudget {
    fn default() -> Self {
        BuildBudget {
            limit: Limit::at(DEFAULT_MAX_BUILD_SIZE),
            used: AtomicU64::new(0),
        }
    }
}

/// Which bound an unpack passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Passed {
    /// `--max-layer-size`, with the bound.
    LayerSize(u64),
    /// `--max-build-size`, with the bound and what earlier layers used of it.
    BuildSize { limit: u64, before: u64 },
}

/// The error a metered read returns once a bound is passed; the unpacker asks the [`Meter`]
/// which one rather than looking for this in whatever wraps it on the way up.
#[derive(Debug, thiserror::Error)]
#[error("unpacking bound passed")]
struct BoundPassed;

/// Counts one layer's bytes: decompressed tar bytes and file content read for writing (they
/// differ for sparse files, whose holes the tar reader fills), charging the larger of the two.
#[derive(Debug)]
pub(super) struct Meter {
    layer: Limit,
    budget: Arc<BuildBudget>,
    /// What the build had used when this layer started.
    before: u64,
    stream: Cell<u64>,
    content: Cell<u64>,
    passed: Cell<Option<Passed>>,
}

impl Meter {
    pub(super) fn new(layer: Limit, budget: Arc<BuildBudget>) -> Rc<Meter> {
        let before = budget.used();
        Rc::new(Meter {
            layer,
            budget,
            before,
            stream: Cell::new(0),
            content: Cell::new(0),
            passed: Cell::new(None),
        })
    }

    /// The bytes this layer is charged with.
    pub(super) fn charge(&self) -> u64 {
        self.stream.get().max(self.content.get())
    }

    /// The bound passed, if one was.
    pub(super) fn passed(&self) -> Option<Passed> {
        self.passed.get()
    }

    /// Adds this layer's bytes to the build's, once it is applied.
    pub(super) fn commit(&self) {
        self.budget.charge(self.charge());
    }

    fn add(&self, counter: &Cell<u64>, n: usize) -> io::Result<()> {
        counter.set(counter.get().saturating_add(n as u64));
        let charge = self.charge();
        let passed = if let Some(max) = self.layer.get().filter(|max| charge > *max) {
            Some(Passed::LayerSize(max))
        } else {
            self.budget
                .limit
                .get()
                .filter(|max| self.before.saturating_add(charge) > *max)
                .map(|limit| Passed::BuildSize {
                    limit,
                    before: self.before,
                })
        };
        match passed {
            None => Ok(()),
            Some(p) => {
                if self.passed.get().is_none() {
                    self.passed.set(Some(p));
                }
                Err(io::Error::other(BoundPassed))
            }
        }
    }
}

/// What a [`Metered`] reader counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Counted {
    /// The decompressed tar stream.
    Stream,
    /// One entry's file content, as the writer reads it.
    Content,
}

/// A reader whose bytes count against a [`Meter`]; a read that passes a bound fails, and the
/// bytes it read are never handed on.
pub(super) struct Metered<R> {
    inner: R,
    meter: Rc<Meter>,
    counted: Counted,
}

impl<R> Metered<R> {
    pub(super) fn new(inner: R, meter: Rc<Meter>, counted: Counted) -> Metered<R> {
        Metered {
            inner,
            meter,
            counted,
        }
    }
}

impl<R: Read> Read for Metered<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.meter.passed().is_some() {
            return Err(io::Error::other(BoundPassed));
        }
        let n = self.inner.read(buf)?;
        let counter = match self.counted {
            Counted::Stream => &self.meter.stream,
            Counted::Content => &self.meter.content,
        };
        self.meter.add(counter, n)?;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(r: &mut impl Read) -> io::Result<u64> {
        io::copy(r, &mut io::sink())
    }

    #[test]
    fn layer_bound_stops_the_read_that_passes_it() {
        let meter = Meter::new(Limit::at(10), BuildBudget::unlimited());
        let mut r = Metered::new(&[7u8; 10][..], meter.clone(), Counted::Stream);
        assert_eq!(read_all(&mut r).unwrap(), 10);
        assert_eq!(meter.passed(), None);
        let meter = Meter::new(Limit::at(10), BuildBudget::unlimited());
        let mut r = Metered::new(&[7u8; 11][..], meter.clone(), Counted::Stream);
        assert!(read_all(&mut r).is_err());
        assert_eq!(meter.passed(), Some(Passed::LayerSize(10)));
        // Later reads fail too, whatever they would read.
        let mut again = Metered::new(&[][..], meter, Counted::Content);
        assert!(read_all(&mut again).is_err());
    }

    #[test]
    fn content_and_stream_are_charged_by_the_larger() {
        let meter = Meter::new(Limit::at(100), BuildBudget::unlimited());
        read_all(&mut Metered::new(
            &[0u8; 30][..],
            meter.clone(),
            Counted::Stream,
        ))
        .unwrap();
        read_all(&mut Metered::new(
            &[0u8; 60][..],
            meter.clone(),
            Counted::Content,
        ))
        .unwrap();
        assert_eq!(meter.charge(), 60);
    }

    #[test]
    fn the_build_budget_spans_layers() {
        let budget = BuildBudget::new(Limit::at(25));
        let first = Meter::new(Limit::UNLIMITED, budget.clone());
        read_all(&mut Metered::new(
            &[0u8; 20][..],
            first.clone(),
            Counted::Stream,
        ))
        .unwrap();
        first.commit();
        assert_eq!(budget.used(), 20);
        let second = Meter::new(Limit::UNLIMITED, budget.clone());
        assert!(read_all(&mut Metered::new(
            &[0u8; 6][..],
            second.clone(),
            Counted::Stream
        ))
        .is_err());
        assert_eq!(
            second.passed(),
            Some(Passed::BuildSize {
                limit: 25,
                before: 20
            })
        );
    }
}
