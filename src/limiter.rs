//! The login limiter that HTTP logins, registrations and MQTT password CONNECTs share
//! (`http.login_attempts_per_minute`): it refuses a password check *before* the slow hash once
//! too many have failed for the user or from the address this minute.
//!
//! What counts, and why:
//! - Failed password checks, per user and per client address. Correct logins do not count: a
//!   household or office behind one address, or a device reconnecting in a loop with the
//!   right password, must not be limited; guessing is what costs a hash and leaks nothing else.
//! - A refused attempt does not count either, so a limit ends one minute after the failures
//!   that caused it, however long the refused attempts go on.
//! - The per-user count would let anyone lock a user out by failing on purpose. So an address
//!   where the user logged in before is "known" for that user, and a login of the user from it
//!   is held only by the failures of that user *from that address*: an attacker elsewhere
//!   cannot lock the user out of their usual addresses, and one guessing from the user's own
//!   address is still limited there. Access tokens skip the limiter altogether (they are cheap
//!   to check and cannot be guessed), which also keeps a user's logged-in apps working.
//! - Registrations are counted per address, every attempt (each one that succeeds costs a hash
//!   and an account).
//!
//! IPv6 addresses count per /64: one host commonly holds a whole /64.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Counts are kept per fixed window of this length from a key's first failure.
const WINDOW: Duration = Duration::from_secs(60);
/// How long an address stays known for a user after a successful login there.
const KNOWN_FOR: Duration = Duration::from_secs(30 * 86_400);
/// The most known (user, address) pairs kept; the oldest go first.
const MAX_KNOWN: usize = 100_000;
/// Expired entries are swept at most this often (not on every call: the maps can be large
/// under attack).
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// What a count is kept for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    User(String),
    Addr(IpAddr),
    UserAt(String, IpAddr),
    Register(IpAddr),
}

/// The count of one key in its current window.
#[derive(Debug, Clone, Copy)]
struct Count {
    since: Instant,
    n: u32,
}

#[derive(Debug)]
struct State {
    counts: HashMap<Key, Count>,
    /// (user, address) pairs with a successful login, and when.
    known: HashMap<(String, IpAddr), Instant>,
    swept: Instant,
}

/// Failed logins and registrations per user and per address; see the module doc.
#[derive(Debug)]
pub struct LoginLimiter {
    per_minute: u32,
    state: Mutex<State>,
    /// Password hashes and checks (PBKDF2, slow on purpose, each on a blocking thread) in
    /// flight, over MQTT and HTTP together.
    checks: tokio::sync::Semaphore,
}

impl LoginLimiter {
    /// A limiter that allows `per_minute` failures (or registrations) per key and minute, and
    /// `concurrent_checks` password checks at once.
    pub fn new(per_minute: u32, concurrent_checks: usize) -> LoginLimiter {
        LoginLimiter {
            per_minute,
            state: Mutex::new(State {
                counts: HashMap::new(),
                known: HashMap::new(),
                swept: Instant::now(),
            }),
            checks: tokio::sync::Semaphore::new(concurrent_checks.max(1)),
        }
    }

    /// Waits for a turn to hash or check a password; `None` only if the semaphore was closed.
    pub async fn password_check(&self) -> Option<tokio::sync::SemaphorePermit<'_>> {
        self.checks.acquire().await.ok()
    }

    /// Whether a password of `user` from `addr` may be checked now; counts nothing.
    pub fn allow_login(&self, user: &str, addr: IpAddr) -> bool {
        self.allow_login_at(user, addr, Instant::now())
    }

    /// Records a failed password check.
    pub fn failed(&self, user: &str, addr: IpAddr) {
        self.failed_at(user, addr, Instant::now());
    }

    /// Records a successful password login: `addr` becomes known for `user`.
    pub fn succeeded(&self, user: &str, addr: IpAddr) {
        self.succeeded_at(user, addr, Instant::now());
    }

    /// Counts a registration attempt from `addr`; whether it is within the limit.
    pub fn allow_registration(&self, addr: IpAddr) -> bool {
        self.allow_registration_at(addr, Instant::now())
    }

    fn allow_login_at(&self, user: &str, addr: IpAddr, now: Instant) -> bool {
        let addr = bucket(addr);
        let state = self.lock(now);
        let pair = (user.to_string(), addr);
        if state.known.contains_key(&pair) {
            return self.under(&state, &Key::UserAt(pair.0, addr), now);
        }
        self.under(&state, &Key::User(pair.0), now) && self.under(&state, &Key::Addr(addr), now)
    }

    fn failed_at(&self, user: &str, addr: IpAddr, now: Instant) {
        let addr = bucket(addr);
        let mut state = self.lock(now);
        for key in [
            Key::User(user.to_string()),
            Key::Addr(addr),
            Key::UserAt(user.to_string(), addr),
        ] {
            count(&mut state, key, now);
        }
    }

    fn succeeded_at(&self, user: &str, addr: IpAddr, now: Instant) {
        let mut state = self.lock(now);
        if state.known.len() >= MAX_KNOWN {
            forget_oldest(&mut state.known);
        }
        state.known.insert((user.to_string(), bucket(addr)), now);
    }

    fn allow_registration_at(&self, addr: IpAddr, now: Instant) -> bool {
        let mut state = self.lock(now);
        count(&mut state, Key::Register(bucket(addr)), now) <= self.per_minute
    }

    /// Whether `key` has had fewer than the limit in its current window.
    fn under(&self, state: &State, key: &Key, now: Instant) -> bool {
        state
            .counts
            .get(key)
            .filter(|c| now.duration_since(c.since) < WINDOW)
            .is_none_or(|c| c.n < self.per_minute)
    }

    /// The state, with expired entries swept if the last sweep is a while ago.
    fn lock(&self, now: Instant) -> MutexGuard<'_, State> {
        // The maps stay consistent even if a holder panicked: keep going.
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if now.duration_since(state.swept) >= SWEEP_EVERY {
            state
                .counts
                .retain(|_, c| now.duration_since(c.since) < WINDOW);
            state
                .known
                .retain(|_, at| now.duration_since(*at) < KNOWN_FOR);
            state.swept = now;
        }
        state
    }
}

/// Adds one to `key`'s count (a new window if the last one is over); the new count.
fn count(state: &mut State, key: Key, now: Instant) -> u32 {
    let c = state
        .counts
        .entry(key)
        .or_insert(Count { since: now, n: 0 });
    if now.duration_since(c.since) >= WINDOW {
        *c = Count { since: now, n: 0 };
    }
    c.n = c.n.saturating_add(1);
    c.n
}

fn forget_oldest(known: &mut HashMap<(String, IpAddr), Instant>) {
    if let Some(oldest) = known
        .iter()
        .min_by_key(|(_, at)| **at)
        .map(|(k, _)| k.clone())
    {
        known.remove(&oldest);
    }
}

/// The address a count is kept for: IPv4 as it is (also when mapped into IPv6), IPv6 by its
/// /64 network.
fn bucket(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V4(_) => addr,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !u128::from(u64::MAX)).into()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 2));

    #[test]
    fn failures_limit_the_user_and_the_address_for_a_minute() {
        let l = LoginLimiter::new(3, 1);
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(l.allow_login_at("alice", A, t0));
            l.failed_at("alice", A, t0);
        }
        assert!(!l.allow_login_at("alice", A, t0), "the user's limit");
        assert!(!l.allow_login_at("alice", B, t0), "per user, any address");
        assert!(!l.allow_login_at("bob", A, t0), "per address, any user");
        assert!(l.allow_login_at("bob", B, t0), "others are not affected");
        let later = t0 + WINDOW;
        assert!(l.allow_login_at("alice", A, later), "a minute later");
    }

    #[test]
    fn correct_logins_do_not_count() {
        let l = LoginLimiter::new(2, 1);
        let t0 = Instant::now();
        for _ in 0..10 {
            assert!(l.allow_login_at("alice", A, t0));
            l.succeeded_at("alice", A, t0);
        }
    }

    #[test]
    fn an_attacker_elsewhere_cannot_lock_a_user_out_of_a_known_address() {
        let l = LoginLimiter::new(2, 1);
        let t0 = Instant::now();
        l.succeeded_at("alice", A, t0);
        for _ in 0..5 {
            l.failed_at("alice", B, t0);
        }
        assert!(!l.allow_login_at("alice", B, t0));
        assert!(l.allow_login_at("alice", A, t0), "alice's known address");
        // Guessing from the known address is limited there.
        l.failed_at("alice", A, t0);
        l.failed_at("alice", A, t0);
        assert!(!l.allow_login_at("alice", A, t0));
    }

    #[test]
    fn registrations_count_every_attempt_per_address() {
        let l = LoginLimiter::new(2, 1);
        let t0 = Instant::now();
        assert!(l.allow_registration_at(A, t0));
        assert!(l.allow_registration_at(A, t0));
        assert!(!l.allow_registration_at(A, t0));
        assert!(l.allow_registration_at(B, t0));
        assert!(l.allow_registration_at(A, t0 + WINDOW));
        assert!(l.allow_login_at("alice", A, t0), "logins count apart");
    }

    #[test]
    fn ipv6_counts_per_network_and_mapped_ipv4_as_ipv4() {
        let one: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let other_host: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let other_net: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(bucket(one), bucket(other_host));
        assert_ne!(bucket(one), bucket(other_net));
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(bucket(mapped), A);
    }
}
