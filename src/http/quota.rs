//! The media quota under parallel uploads. An upload reserves the bytes it may write before it
//! streams, in the same critical section that reads the user's stored total and the bytes other
//! uploads in progress hold, so uploads running at once cannot together pass the quota. The
//! reservation goes when the upload is recorded (its row counts from then on) or fails.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use super::{blocking, ApiError, AppState};
use crate::refusal::Refusal;

/// Quota bytes held by uploads in progress, per user. One server process owns the store, so
/// memory is the right place: a crash frees every reservation with the uploads themselves.
#[derive(Default)]
pub struct Reservations(Arc<Mutex<HashMap<String, u64>>>);

fn lock(held: &Mutex<HashMap<String, u64>>) -> MutexGuard<'_, HashMap<String, u64>> {
    held.lock().unwrap_or_else(|e| e.into_inner())
}

/// The bytes held for one upload: what it may write. Released on drop.
pub struct Reservation {
    held: Arc<Mutex<HashMap<String, u64>>>,
    user: String,
    limit: u64,
    /// Whether the quota (not the upload size limit) set `limit`.
    by_quota: bool,
}

impl Reservation {
    /// The most bytes the upload may write.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// The refusal for an upload that would write more than [`limit`](Self::limit).
    pub fn over(&self, max_upload: u64) -> ApiError {
        if self.by_quota {
            ApiError::from(Refusal::QuotaExceeded)
        } else {
            ApiError::from(Refusal::TooLarge)
                .with_message(format!("uploads are limited to {max_upload} bytes"))
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let mut map = lock(&self.held);
        if let Some(bytes) = map.get_mut(&self.user) {
            *bytes = bytes.saturating_sub(self.limit);
            if *bytes == 0 {
                map.remove(&self.user);
            }
        }
    }
}

/// What one upload may write: `(limit, by_quota)`, where `used` counts stored and reserved
/// bytes and `cap` is a bound the request itself gives (its `Content-Length`). `None` when the
/// quota is used up.
fn allowance(quota: u64, max_upload: u64, used: u64, cap: Option<u64>) -> Option<(u64, bool)> {
    let left = quota.saturating_sub(used);
    if left == 0 {
        return None;
    }
    let limit = left.min(max_upload).min(cap.unwrap_or(u64::MAX));
    Some((limit, left < max_upload))
}

/// Reserves what `user` may upload now, at most `cap` bytes when the request says how long it
/// is (so a small upload does not hold the whole quota while it runs).
pub async fn reserve(
    state: &Arc<AppState>,
    user: &str,
    cap: Option<u64>,
) -> Result<Reservation, ApiError> {
    let held = state.uploads.0.clone();
    let (quota, max_upload) = (state.settings.media_quota, state.settings.max_upload);
    let u = user.to_string();
    let reserved = blocking(state, move |store| {
        // The lock spans the read of the stored total: no other upload reserves in between.
        let mut map = lock(&held);
        let pending = map.get(&u).copied().unwrap_or(0);
        let used = store.media_usage(&u)?.saturating_add(pending);
        let Some((limit, by_quota)) = allowance(quota, max_upload, used, cap) else {
            return Ok(None);
        };
        map.insert(u.clone(), pending + limit);
        drop(map);
        Ok(Some(Reservation {
            held: held.clone(),
            user: u,
            limit,
            by_quota,
        }))
    })
    .await?;
    reserved.ok_or_else(|| ApiError::from(Refusal::QuotaExceeded))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (case, quota, max upload, used, cap, allowance)
    type Case = (
        &'static str,
        u64,
        u64,
        u64,
        Option<u64>,
        Option<(u64, bool)>,
    );

    #[test]
    fn allowance_table() {
        let cases: &[Case] = &[
            (
                "room for a whole upload",
                1000,
                100,
                0,
                None,
                Some((100, false)),
            ),
            ("the quota binds", 1000, 100, 950, None, Some((50, true))),
            (
                "the length binds",
                1000,
                100,
                0,
                Some(30),
                Some((30, false)),
            ),
            (
                "length within what is left",
                1000,
                100,
                950,
                Some(30),
                Some((30, true)),
            ),
            ("used up", 1000, 100, 1000, None, None),
            ("over (reserved by others)", 1000, 100, 1500, Some(1), None),
        ];
        for &(what, quota, max, used, cap, want) in cases {
            assert_eq!(allowance(quota, max, used, cap), want, "{what}");
        }
    }

    #[test]
    fn a_reservation_is_released_on_drop() {
        let held = Arc::new(Mutex::new(HashMap::from([("alice".to_string(), 70)])));
        let r = Reservation {
            held: held.clone(),
            user: "alice".into(),
            limit: 50,
            by_quota: true,
        };
        drop(r);
        assert_eq!(lock(&held).get("alice"), Some(&20));
        let r = Reservation {
            held: held.clone(),
            user: "alice".into(),
            limit: 20,
            by_quota: false,
        };
        drop(r);
        assert!(lock(&held).is_empty());
    }
}
