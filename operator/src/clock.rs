//! The time reconcilers decide by: the system clock, moved forward by tests that check what
//! happens after an hour or a day (retention TTLs, timeouts) without waiting for it. Every clone
//! shares one offset, so a test advances the clock of a running operator.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};

#[derive(Debug, Clone, Default)]
pub struct Clock {
    /// Milliseconds added to the system clock (0 outside tests).
    offset_ms: Arc<AtomicI64>,
}

impl Clock {
    pub fn now(&self) -> Timestamp {
        let offset = SignedDuration::from_millis(self.offset_ms.load(Ordering::Relaxed));
        Timestamp::now()
            .checked_add(offset)
            .unwrap_or_else(|_| Timestamp::now())
    }

    /// Moves this clock, and every clone of it, forward by `by`.
    pub fn advance(&self, by: Duration) {
        let ms = i64::try_from(by.as_millis()).unwrap_or(i64::MAX);
        self.offset_ms.fetch_add(ms, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clones_share_the_offset() {
        let a = Clock::default();
        let b = a.clone();
        let before = b.now();
        a.advance(Duration::from_secs(3600));
        let after = b.now();
        let moved = after.duration_since(before);
        assert!(moved >= SignedDuration::from_secs(3600), "{moved:?}");
        assert!(moved < SignedDuration::from_secs(3660), "{moved:?}");
    }
}
