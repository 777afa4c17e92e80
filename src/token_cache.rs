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
    confirmed: Mutex<Confirmed>,
}

#[derive(Default)]
struct Confirmed {
    at: HashMap<u64, Instant>,
    /// The last [`TokenCache::forget_all`]: a confirmation read from the store before it may
    /// be stale, and is not kept.
    forgotten_at: Option<Instant>,
}

impl Default for TokenCache {
    fn default() -> Self {
        TokenCache {
            keys: RandomState::new(),
            confirmed: Mutex::default(),
        }
    }
}

impl TokenCache {
    /// Whether the store confirmed this device's generation `gen` less than [`TTL`] ago.
    pub fn is_current(&self, user: &str, device: &str, gen: &str, now: Instant) -> bool {
        let key = self.key(user, device, gen);
        self.lock()
            .at
            .get(&key)
            .is_some_and(|at| now.saturating_duration_since(*at) < TTL)
    }

    /// The store said this device's generation is `gen` (it issued it, or confirmed it) in a
    /// read that started at `asked`. Not kept if everything was forgotten since.
    pub fn confirm(&self, user: &str, device: &str, gen: &str, asked: Instant) {
        let key = self.key(user, device, gen);
        let mut confirmed = self.lock();
        if confirmed.forgotten_at.is_some_and(|f| asked <= f) {
            return;
        }
        let at = &mut confirmed.at;
        if at.len() >= MAX {
            at.retain(|_, t| asked.saturating_duration_since(*t) < TTL);
            if at.len() >= MAX {
                at.clear();
            }
        }
        at.insert(key, asked);
    }

    /// A device was revoked or a password changed: nothing confirmed before holds any more
    /// (rare enough that forgetting everyone's costs only a few store reads).
    pub fn forget_all(&self) {
        let mut confirmed = self.lock();
        confirmed.at.clear();
        confirmed.forgotten_at = Some(Instant::now());
    }

    fn key(&self, user: &str, device: &str, gen: &str) -> u64 {
        // Lengths first, so that no two triples hash the same bytes.
        self.keys
            .hash_one((user.len(), device.len(), user, device, gen))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Confirmed> {
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
        // A store read that started before the revoke does not bring it back.
        cache.confirm("alice", "phone", "g1", t0);
        assert!(!cache.is_current("alice", "phone", "g1", t0));
        let later = Instant::now();
        cache.confirm("alice", "phone", "g1", later);
        assert!(cache.is_current("alice", "phone", "g1", later));
    }

    #[test]
    fn the_cache_stays_bounded() {
        let cache = TokenCache::default();
        let t0 = Instant::now();
        for i in 0..MAX + 10 {
            cache.confirm(&format!("u{i}"), "d", "g", t0);
        }
        assert!(cache.lock().at.len() <= MAX);
        assert!(cache.is_current(&format!("u{}", MAX + 9), "d", "g", t0));
    }
}
