//! Push coalescing: messages stored for members with no connected device gather per user, and
//! one content-free notification goes out per `push_coalesce`.

use std::collections::HashMap;
use std::time::Instant;

use serde_json::json;

use super::Signals;

/// New messages for an offline user, waiting to be pushed.
#[derive(Debug)]
pub(super) struct PendingPush {
    since: Instant,
    counts: HashMap<String, u64>,
}

impl Signals {
    /// Counts a stored message towards a push for each member (but the sender) with no
    /// connected device.
    pub(super) fn stored(&mut self, conv: &str, from: &str) {
        let members = self.members(conv);
        for member in members.into_iter().filter(|m| *m != from) {
            if self.is_online(&member) {
                continue;
            }
            let pending = self.pushes.entry(member).or_insert_with(|| PendingPush {
                since: self.clock.now(),
                counts: HashMap::new(),
            });
            *pending.counts.entry(conv.to_string()).or_insert(0) += 1;
        }
    }

    /// Sends the pushes whose gathering time is over, to users still without a device.
    pub(super) async fn flush_pushes(&mut self) {
        let window = self.settings.push_coalesce;
        let now = self.clock.now();
        let due: Vec<String> = self
            .pushes
            .iter()
            .filter(|(_, p)| now.duration_since(p.since) >= window)
            .map(|(u, _)| u.clone())
            .collect();
        for user in due {
            let Some(pending) = self.pushes.remove(&user) else {
                continue;
            };
            if self.is_online(&user) {
                continue;
            }
            let store = self.store.clone();
            let u = user.clone();
            let endpoints =
                match tokio::task::spawn_blocking(move || store.push_endpoints(&u)).await {
                    Ok(Ok(e)) => e,
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, "cannot read push endpoints");
                        continue;
                    }
                    Err(_) => continue,
                };
            if endpoints.is_empty() {
                continue;
            }
            let mut conversations: Vec<_> = pending.counts.into_iter().collect();
            conversations.sort();
            let body = json!({
                "user": user,
                "conversations": conversations
                    .iter()
                    .map(|(conv, count)| json!({"conv": conv, "count": count}))
                    .collect::<Vec<_>>(),
                "ts": self.clock.now_ms(),
            })
            .to_string()
            .into_bytes();
            for url in endpoints {
                let (pusher, user, body) = (self.pusher.clone(), user.clone(), body.clone());
                tokio::spawn(async move { pusher.deliver(&user, &url, body).await });
            }
        }
    }
}
