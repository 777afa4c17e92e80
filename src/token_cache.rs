//! Access tokens the store confirmed current a moment ago, so that a CONNECT or an HTTP request
//! with one does not read the database again (that read was most of a token CONNECT's cost).
//!
//! Bounded in time ([`TTL`]) and size ([`MAX`]). A token's signature, expiry, user and device
//! are still checked every time; the cache answers only the store's question, whether the
//! device's token generation is current. This process forgets everything at once when it
//! revokes a device or changes a password; a revoke made elsewhere (the `natter` command,
//! another node of a cluster) is seen within [`TTL`] (the router still ends the connections it
//! is told to end at once).

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a confirmation holds.
pub const TTL: Duration = Duration::from_secs(30);
/// Most confirmations kept (about 30 bytes each).
const MAX: usize = 100_000;

/// Confirmed (user, device, generation) triples, by a keyed 64-bit hash: a few bytes each, and
/// a forged collision would need the process's random key.
pub struct TokenCache {
    keys: RandomState,
    confirmed: Mutex<HashMap<u64, Instant>>,
}

impl Default for TokenCache {
    fn default() -> Self {
        TokenCache {
            keys: RandomState::new(),
            confirmed: Mutex::new(HashMap::new()),
        }
    }
}

impl TokenCache {
    /// Whether the store confirmed this device's generation `gen` less than [`TTL`] ago.
    pub fn is_current(&self, user: &str, device: &str, gen: &str, now: Instant) -> bool {
        let key = self.key(user, device, gen);
        self.lock()
            .get(&key)
            .is_some_and(|at| now.saturating_duration_since(*at) < TTL)
    }

    /// The store says this device's generation is `gen` (it just issued it, or confirmed it).
    pub fn confirm(&self, user: &str, device: &str, gen: &str, now: Instant) {
        let key = self.key(user, device, gen);
        let mut confirmed = self.lock();
        if confirmed.len() >= MAX {
            confirmed.retain(|_, at| now.saturating_duration_since(*at) < TTL);
            if confirmed.len() >= MAX {
                confirmed.clear();
            }
        }
        confirmed.insert(key, now);
    }

    /// A device was revoked or a password changed: nothing confirmed before holds any more
    /// (rare enough that forgetting everyone's costs only a few store reads).
    pub fn forget_all(&self) {
        self.lock().clear();
    }

    fn key(&self, user: &str, device: &str, gen: &str) -> u64 {
        // Lengths first, so that no two triples hash the same bytes.
        self.keys
            .hash_one((user.len(), device.len(), user, device, gen))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Instant>> {
        self.confirmed.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn confirmations_hold_for_their_ttl_and_are_forgotten_on_revoke() {
        let cache = TokenCache::default();
        let t0 = Instant::now();
        assert!(!cache.is_current("alice", "phone", "g1", t0));
        cache.confirm("alice", "phone", "g1", t0);
        assert!(cache.is_current("alice", "phone", "g1", t0 + TTL / 2));
        assert!(!cache.is_current("alice", "phone", "g1", t0 + TTL));
        assert!(
            !cache.is_current("alice", "phone", "g2", t0),
            "another generation"
        );
        assert!(
            !cache.is_current("alice", "laptop", "g1", t0),
            "another device"
        );
        assert!(
            !cache.is_current("alicephone", "", "g1", t0),
            "the same bytes"
        );
        cache.forget_all();
        assert!(!cache.is_current("alice", "phone", "g1", t0));
    }

    #[test]
    fn the_cache_stays_bounded() {
        let cache = TokenCache::default();
        let t0 = Instant::now();
        for i in 0..MAX + 10 {
            cache.confirm(&format!("u{i}"), "d", "g", t0);
        }
        assert!(cache.lock().len() <= MAX);
        assert!(cache.is_current(&format!("u{}", MAX + 9), "d", "g", t0));
    }
}
