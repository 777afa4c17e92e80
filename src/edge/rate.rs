//! A token bucket per connection for PUBLISH packets, and the typing indicators' gate per user
//! and conversation.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// When each user's typing indicator was last forwarded, per conversation: at most one per
/// interval however many devices the user types on.
#[derive(Debug, Default)]
pub struct TypingGate {
    state: Mutex<Gate>,
}

#[derive(Debug, Default)]
struct Gate {
    last: HashMap<(Arc<str>, String), Instant>,
    /// The size at which entries older than the interval are swept out next: twice what a
    /// sweep left, so that sweeps stay rare however many are typing at once.
    sweep_at: usize,
}

/// The smallest map that is ever swept.
const TYPING_SWEEP: usize = 4096;

impl TypingGate {
    /// Whether `user`'s indicator for `conv` goes out now (and if so, remembers it).
    pub fn allow(&self, user: &Arc<str>, conv: &str, interval: Duration, now: Instant) -> bool {
        let mut gate = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let Gate { last, sweep_at } = &mut *gate;
        if last.len() >= (*sweep_at).max(TYPING_SWEEP) {
            last.retain(|_, t| now.saturating_duration_since(*t) < interval);
            *sweep_at = 2 * last.len();
        }
        match last.entry((user.clone(), conv.to_string())) {
            Entry::Occupied(e) if now.saturating_duration_since(*e.get()) < interval => false,
            Entry::Occupied(mut e) => {
                e.insert(now);
                true
            }
            Entry::Vacant(e) => {
                e.insert(now);
                true
            }
        }
    }
}

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
    fn typing_goes_out_once_per_user_conversation_and_interval() {
        let gate = TypingGate::default();
        let (alice, bob): (Arc<str>, Arc<str>) = ("alice".into(), "bob".into());
        let (t0, second) = (Instant::now(), Duration::from_secs(1));
        assert!(gate.allow(&alice, "d.alice.bob", second, t0));
        assert!(!gate.allow(&alice, "d.alice.bob", second, t0 + second / 2));
        assert!(gate.allow(&alice, "g.team", second, t0));
        assert!(gate.allow(&bob, "d.alice.bob", second, t0));
        assert!(gate.allow(&alice, "d.alice.bob", second, t0 + second));
    }

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
