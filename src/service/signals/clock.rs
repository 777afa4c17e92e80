//! The clocks presence and pushes are timed by: the system's, or one a test moves by hand.

#[cfg(test)]
use std::sync::{Arc, Mutex};
#[cfg(test)]
use std::time::Duration;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Where signals read the time.
#[derive(Debug, Clone)]
pub(super) enum Clock {
    System,
    /// A fixed start and how far the test has moved on from it.
    #[cfg(test)]
    Manual {
        start: Instant,
        start_ms: i64,
        moved: Arc<Mutex<Duration>>,
    },
}

impl Clock {
    /// The monotonic time, for grace periods and coalescing windows.
    pub(super) fn now(&self) -> Instant {
        match self {
            Clock::System => Instant::now(),
            #[cfg(test)]
            Clock::Manual { start, moved, .. } => *start + *moved.lock().unwrap(),
        }
    }

    /// The wall-clock time in milliseconds, for `last_seen` and push timestamps.
    pub(super) fn now_ms(&self) -> i64 {
        match self {
            Clock::System => now_ms(),
            #[cfg(test)]
            Clock::Manual {
                start_ms, moved, ..
            } => *start_ms + moved.lock().unwrap().as_millis() as i64,
        }
    }
}

/// The system's wall-clock time in milliseconds.
fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}
