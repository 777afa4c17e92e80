//! Waiting for something to happen: a deadline for prompt events, and polling with a short
//! backoff until a condition holds, so tests wait for events rather than fixed times.

use std::time::Duration;

/// How long a test waits for something that should happen promptly.
pub const WAIT: Duration = Duration::from_secs(5);

/// The longest pause between two polls of [`eventually`].
const MAX_POLL_PAUSE: Duration = Duration::from_millis(200);

/// Polls `check` with a short, growing pause until it gives `Some`, and returns that value;
/// panics naming `what` once `within` has passed.
pub async fn eventually<T>(
    within: Duration,
    what: &str,
    check: impl AsyncFnMut() -> Option<T>,
) -> T {
    match poll_until(within, check).await {
        Some(value) => value,
        None => panic!("never within {within:?}: {what}"),
    }
}

/// Polls `check` like [`eventually`], but gives `None` past the deadline instead of failing
/// (for waits whose deadline only bounds how long to try).
pub async fn poll_until<T>(
    within: Duration,
    mut check: impl AsyncFnMut() -> Option<T>,
) -> Option<T> {
    let deadline = tokio::time::Instant::now() + within;
    let mut pause = Duration::from_millis(10);
    loop {
        if let Some(value) = check().await {
            return Some(value);
        }
        let now = tokio::time::Instant::now();
        if now >= deadline {
            return None;
        }
        tokio::time::sleep(pause.min(deadline - now)).await;
        pause = (pause * 2).min(MAX_POLL_PAUSE);
    }
}
