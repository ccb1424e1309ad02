//! A token bucket: the per-connection limits on messages sent, reads, joins
//! and the rest.
//!
//! A bucket holds up to `burst` tokens and refills at `rate` per second; each
//! request takes one. Kept as the time it will be full again (GCRA, the
//! generic cell rate algorithm): eight bytes a bucket, since a connection
//! holds seven and an idle one should cost little, with the limit's shape
//! (`Limit`) kept once by whoever holds the buckets. A few lines of
//! arithmetic, here rather than from a rate-limiting crate, whose limiters
//! carry their own quota and clock each.

use std::sync::LazyLock;
use std::time::Instant;

/// When the process's buckets count time from.
static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);

/// A bucket's shape: tokens per second, and how many it holds.
#[derive(Clone, Copy, Debug)]
pub struct Limit {
    /// Nanoseconds a token takes to come back (at least 1).
    every_ns: u64,
    burst: u64,
}

impl Limit {
    /// `rate` tokens a second (at least 1), up to `burst` (at least 1).
    pub const fn new(rate: u32, burst: u32) -> Limit {
        let rate = if rate == 0 { 1 } else { rate as u64 };
        let every_ns = 1_000_000_000 / rate;
        Limit {
            every_ns: if every_ns == 0 { 1 } else { every_ns },
            burst: if burst == 0 { 1 } else { burst as u64 },
        }
    }
}

/// A bucket, full when made.
#[derive(Debug, Default)]
pub struct TokenBucket {
    /// Nanoseconds since `EPOCH` from which the bucket is full again.
    full_at: u64,
}

fn now_ns() -> u64 {
    EPOCH.elapsed().as_nanos() as u64
}

impl TokenBucket {
    /// Takes a token if there is one.
    pub fn take(&mut self, limit: Limit) -> bool {
        self.take_at(limit, now_ns())
    }

    /// Whether the bucket has refilled to its burst: its holder has been
    /// quiet long enough to be forgotten.
    pub fn is_full(&self) -> bool {
        self.is_full_at(now_ns())
    }

    fn is_full_at(&self, now: u64) -> bool {
        self.full_at <= now
    }

    fn take_at(&mut self, limit: Limit, now: u64) -> bool {
        let after = self.full_at.max(now).saturating_add(limit.every_ns);
        // Taking leaves the bucket short of `after - now` worth of tokens.
        if after - now > limit.every_ns.saturating_mul(limit.burst) {
            return false;
        }
        self.full_at = after;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    #[test]
    fn allows_a_burst_then_the_rate() {
        let limit = Limit::new(10, 3);
        let start = now_ns();
        let mut bucket = TokenBucket::default();
        assert_eq!((0..5).filter(|_| bucket.take_at(limit, start)).count(), 3);
        let later = start + 250 * MS;
        assert_eq!((0..5).filter(|_| bucket.take_at(limit, later)).count(), 2);
        let much_later = later + 60_000 * MS;
        assert_eq!(
            (0..10)
                .filter(|_| bucket.take_at(limit, much_later))
                .count(),
            3
        );
    }

    #[test]
    fn a_bucket_is_full_once_its_tokens_are_back() {
        let limit = Limit::new(1_000, 2);
        let start = now_ns();
        let mut bucket = TokenBucket::default();
        assert!(bucket.is_full_at(start));
        assert!(bucket.take_at(limit, start));
        assert!(bucket.take_at(limit, start));
        assert!(!bucket.is_full_at(start + MS), "one token of two is back");
        assert!(bucket.is_full_at(start + 2 * MS));
    }

    #[test]
    fn extreme_limits_neither_overflow_nor_refuse_their_burst() {
        for limit in [
            Limit::new(u32::MAX, u32::MAX),
            Limit::new(1, u32::MAX),
            Limit::new(0, 0),
        ] {
            let mut bucket = TokenBucket::default();
            let now = now_ns();
            assert!(bucket.take_at(limit, now));
            assert!(bucket.take_at(limit, u64::MAX));
        }
    }
}
