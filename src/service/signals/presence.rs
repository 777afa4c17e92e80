//! Presence: which users have a device connected, their chosen status, and the retained
//! `p/{user}` that says so — `offline` only once the last device has been gone for the grace
//! period.

use std::sync::Arc;
use std::time::Instant;

use rumqttc::v5::mqttbytes::QoS;
use serde_json::json;

use super::Signals;
use crate::router::Message;
use crate::topics;

#[derive(Debug, Default)]
pub(super) struct Presence {
    /// The connected devices' client ids: a few per user, so a `Vec` (a set's table would
    /// cost every online user a hundred bytes more).
    devices: Vec<Arc<str>>,
    away: bool,
    hidden: bool,
    /// When the last device left; `offline` is published once the grace period has passed.
    left_at: Option<Instant>,
    /// The same moment in wall-clock milliseconds: the `last_seen` that `offline` carries, which
    /// is when the user left, not when the grace period ended.
    last_seen: Option<i64>,
}

impl Signals {
    /// A device connected: `online` is published unless the user was already shown connected.
    pub(super) async fn device_online(&mut self, user: Arc<str>, client: Arc<str>) {
        let p = self.presence.entry(user.clone()).or_default();
        let was_offline = p.devices.is_empty() && p.left_at.is_none();
        if !p.devices.contains(&client) {
            p.devices.push(client);
        }
        p.left_at = None;
        p.last_seen = None;
        if was_offline {
            self.publish_presence(&user).await;
        }
    }

    /// A device left: when it was the user's last, the grace period starts.
    pub(super) fn device_offline(&mut self, user: &str, client: &str) {
        if let Some(p) = self.presence.get_mut(user) {
            p.devices.retain(|c| &**c != client);
            if p.devices.is_empty() {
                p.left_at = Some(self.clock.now());
                p.last_seen = Some(self.clock.now_ms());
            }
        }
    }

    /// Records a user's chosen status and publishes their presence.
    pub(super) async fn status(&mut self, user: Arc<str>, away: bool, hidden: bool) {
        let p = self.presence.entry(user.clone()).or_default();
        p.away = away;
        p.hidden = hidden;
        self.publish_presence(&user).await;
    }

    /// Publishes `offline` for users whose last device left a grace period ago.
    pub(super) async fn expire_presence(&mut self) {
        let grace = self.settings.grace;
        let now = self.clock.now();
        let due: Vec<Arc<str>> = self
            .presence
            .iter()
            .filter(|(_, p)| p.left_at.is_some_and(|t| now.duration_since(t) >= grace))
            .map(|(u, _)| u.clone())
            .collect();
        for user in due {
            self.publish_presence(&user).await;
            if let Some(p) = self.presence.get_mut(&user) {
                p.left_at = None;
                if !p.away && !p.hidden {
                    // Nothing left to remember about an offline user with default settings.
                    self.presence.remove(&user);
                }
            }
        }
    }

    /// Whether the user has a device connected now.
    pub(super) fn is_online(&self, user: &str) -> bool {
        self.presence
            .get(user)
            .is_some_and(|p| !p.devices.is_empty())
    }

    /// Publishes the user's presence as it stands (retained).
    async fn publish_presence(&self, user: &str) {
        let p = self.presence.get(user);
        let hidden = p.is_some_and(|p| p.hidden);
        let now = self.clock.now();
        let connected = p.is_some_and(|p| {
            !p.devices.is_empty()
                || p.left_at
                    .is_some_and(|t| now.duration_since(t) < self.settings.grace)
        });
        let payload = if hidden {
            // An empty retained message clears what subscribers would otherwise see.
            String::new()
        } else if connected {
            let status = if p.is_some_and(|p| p.away) {
                "away"
            } else {
                "online"
            };
            json!({"user": user, "status": status}).to_string()
        } else {
            let last_seen = p
                .and_then(|p| p.last_seen)
                .unwrap_or_else(|| self.clock.now_ms());
            json!({"user": user, "status": "offline", "last_seen": last_seen}).to_string()
        };
        let mut message = Message::server(topics::presence_topic(user), payload);
        message.retain = true;
        message.qos = QoS::AtLeastOnce;
        self.send(message).await;
    }
}
