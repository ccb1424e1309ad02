//! A token bucket: the per-connection limit on messages sent.
//!
//! A bucket holds up to `burst` tokens and refills at `rate` per second; each
//! message takes one. Twenty lines of arithmetic, kept here rather than taken
//! from a rate-limiting crate, because a bucket per connection must cost a few
//! bytes and no clock of its own.

use std::time::Instant;

#[derive(Debug)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(rate: u32, burst: u32) -> TokenBucket {
        TokenBucket {
            rate: rate as f64,
            burst: burst as f64,
            tokens: burst as f64,
            last: Instant::now(),
        }
    }

    /// Takes a token if there is one.
    pub fn take(&mut self) -> bool {
        self.take_at(Instant::now())
    }

    /// Whether the bucket has refilled to its burst: its holder has been
    /// quiet long enough to be forgotten.
    pub fn is_full(&mut self) -> bool {
        self.refill(Instant::now());
        self.tokens >= self.burst
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
    }

    fn take_at(&mut self, now: Instant) -> bool {
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn allows_a_burst_then_the_rate() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(10, 3);
        bucket.last = start;
        assert_eq!((0..5).filter(|_| bucket.take_at(start)).count(), 3);
        let later = start + Duration::from_millis(250);
        assert_eq!((0..5).filter(|_| bucket.take_at(later)).count(), 2);
        let much_later = later + Duration::from_secs(60);
        assert_eq!((0..10).filter(|_| bucket.take_at(much_later)).count(), 3);
    }
}
