//! When to try connecting again: exponential caps with full jitter (a uniformly random wait up
//! to the cap), reset once a connection proved stable, and a floor after load refusals.

use std::time::Duration;

use ring::rand::{SecureRandom, SystemRandom};

use crate::config::Backoff;

/// Why the last connection ended, as far as the wait before the next one cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// A network failure or an ordinary refusal.
    Failed,
    /// The server is busy or this user is over a limit: wait at least `Backoff::busy`.
    Busy,
}

pub struct Retry {
    config: Backoff,
    attempt: u32,
    random: SystemRandom,
}

impl Retry {
    pub fn new(config: Backoff) -> Retry {
        Retry {
            config,
            attempt: 0,
            random: SystemRandom::new(),
        }
    }

    /// A connection lasted `lived`: if that was long enough, the next failure starts small.
    pub fn connected_for(&mut self, lived: Duration) {
        if lived >= self.config.stable {
            self.attempt = 0;
        }
    }

    /// The wait before the next attempt.
    pub fn next_wait(&mut self, ending: Ending) -> Duration {
        let cap = self
            .config
            .base
            .saturating_mul(1u32 << self.attempt.min(16))
            .min(self.config.max);
        self.attempt = self.attempt.saturating_add(1);
        let wait = cap.mul_f64(self.unit());
        match ending {
            Ending::Failed => wait,
            Ending::Busy => self.config.busy + wait,
        }
    }

    /// A uniform number in [0, 1).
    fn unit(&self) -> f64 {
        let mut bytes = [0u8; 8];
        if self.random.fill(&mut bytes).is_err() {
            return 0.5;
        }
        (u64::from_le_bytes(bytes) >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// A fresh random id (hex), for client message ids.
pub fn random_id(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    // The system's randomness does not fail on a working machine; a zero id would still be
    // unique enough per conversation for one device's next message.
    let _ = SystemRandom::new().fill(&mut buf);
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Backoff {
        Backoff {
            base: Duration::from_millis(100),
            max: Duration::from_secs(2),
            busy: Duration::from_secs(5),
            stable: Duration::from_secs(10),
        }
    }

    #[test]
    fn waits_grow_to_the_cap_with_jitter_and_reset_when_stable() {
        let mut retry = Retry::new(config());
        let waits: Vec<Duration> = (0..12).map(|_| retry.next_wait(Ending::Failed)).collect();
        for (i, w) in waits.iter().enumerate() {
            let cap = Duration::from_millis(100 << i.min(16)).min(Duration::from_secs(2));
            assert!(*w <= cap, "attempt {i}: {w:?} over {cap:?}");
        }
        // Full jitter: the late waits are not all equal to the cap.
        assert!(waits[6..].iter().any(|w| *w < Duration::from_millis(1900)));
        retry.connected_for(Duration::from_secs(1));
        assert!(retry.next_wait(Ending::Failed) <= Duration::from_secs(2));
        retry.connected_for(Duration::from_secs(10));
        assert!(retry.next_wait(Ending::Failed) <= Duration::from_millis(100));
    }

    #[test]
    fn a_busy_server_is_left_alone_longer() {
        let mut retry = Retry::new(config());
        assert!(retry.next_wait(Ending::Busy) >= Duration::from_secs(5));
    }

    #[test]
    fn random_ids_differ() {
        assert_ne!(random_id(8), random_id(8));
        assert_eq!(random_id(8).len(), 16);
    }
}
