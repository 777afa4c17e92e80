//! A token bucket per connection for PUBLISH packets.

use std::time::{Duration, Instant};

/// A token bucket: `rate` tokens a second, holding at most `burst`.
#[derive(Debug)]
pub struct RateLimit {
    /// Tokens per second; 0 disables the limit.
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl RateLimit {
    pub fn new(rate: u32, burst: u32, now: Instant) -> RateLimit {
        RateLimit {
            rate: f64::from(rate),
            burst: f64::from(burst),
            tokens: f64::from(burst),
            last: now,
        }
    }

    /// Whether there is a limit at all (a rate of 0 disables it).
    pub fn enabled(&self) -> bool {
        self.rate != 0.0
    }

    /// Takes one token, or says how long until one is there.
    pub fn take(&mut self, now: Instant) -> Result<(), Duration> {
        if self.rate == 0.0 {
            return Ok(());
        }
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - self.tokens) / self.rate))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bursts_then_refills_at_the_rate() {
        let t0 = Instant::now();
        let mut r = RateLimit::new(10, 3, t0);
        assert!((0..3).all(|_| r.take(t0).is_ok()));
        assert_eq!(r.take(t0), Err(Duration::from_millis(100)));
        assert!(r.take(t0 + Duration::from_millis(100)).is_ok());
        let wait = r.take(t0 + Duration::from_millis(150)).unwrap_err();
        assert!(
            wait > Duration::from_millis(40) && wait <= Duration::from_millis(50),
            "{wait:?}"
        );
        let mut off = RateLimit::new(0, 0, t0);
        assert!((0..1000).all(|_| off.take(t0).is_ok()));
    }
}
