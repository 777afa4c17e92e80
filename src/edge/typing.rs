//! The typing indicators' gate: at most one indicator per user and conversation per interval,
//! however many devices the user types on.

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

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    /// How many entries the gate holds.
    fn size(gate: &TypingGate) -> usize {
        gate.state.lock().map(|g| g.last.len()).unwrap_or_default()
    }

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
    fn one_indicator_per_interval_across_devices() {
        // The gate knows users, not devices: a second device of the same user typing in the
        // same conversation within the interval is held back like the first one.
        let gate = TypingGate::default();
        let alice: Arc<str> = "alice".into();
        let t0 = Instant::now();
        assert!(gate.allow(&alice, "g.team", SECOND, t0));
        for ms in [0, 1, 500, 999] {
            let now = t0 + Duration::from_millis(ms);
            assert!(
                !gate.allow(&alice.clone(), "g.team", SECOND, now),
                "{ms} ms"
            );
        }
    }

    #[test]
    fn the_next_goes_out_after_the_interval_counted_from_the_last_sent() {
        let gate = TypingGate::default();
        let alice: Arc<str> = "alice".into();
        let t0 = Instant::now();
        assert!(gate.allow(&alice, "g.team", SECOND, t0));
        assert!(!gate.allow(&alice, "g.team", SECOND, t0 + SECOND / 2));
        assert!(gate.allow(&alice, "g.team", SECOND, t0 + SECOND));
        // A refused one does not move the window; the sent one does.
        assert!(!gate.allow(&alice, "g.team", SECOND, t0 + SECOND * 3 / 2));
        assert!(gate.allow(&alice, "g.team", SECOND, t0 + SECOND * 2));
        // A clock that goes backwards reads as no time passed.
        assert!(!gate.allow(&alice, "g.team", SECOND, t0));
    }

    #[test]
    fn the_sweep_keeps_the_map_bounded() {
        let gate = TypingGate::default();
        let t0 = Instant::now();
        for i in 0..TYPING_SWEEP {
            assert!(gate.allow(&format!("u{i}").into(), "g.team", SECOND, t0));
        }
        assert_eq!(size(&gate), TYPING_SWEEP);
        // Full and all stale: the next one sweeps them out and only it remains.
        assert!(gate.allow(&"late".into(), "g.team", SECOND, t0 + SECOND));
        assert_eq!(size(&gate), 1);
        // Waves of new typists, each wave stale by the next: the map never holds more than
        // twice a wave.
        for wave in 2..6u32 {
            let now = t0 + SECOND * wave;
            for i in 0..TYPING_SWEEP {
                let user: Arc<str> = format!("w{wave}-{i}").into();
                assert!(gate.allow(&user, "g.team", SECOND, now));
                assert!(size(&gate) <= 2 * TYPING_SWEEP, "wave {wave}, {i}");
            }
        }
    }
}
