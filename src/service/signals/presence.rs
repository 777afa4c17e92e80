//! Presence: which users have a device connected, their chosen status, and the retained
//! `p/{user}` that says so — `offline` only once the last device has been gone for the grace
//! period.

use std::sync::Arc;
use std::time::Instant;

use rumqttc::v5::mqttbytes::QoS;
use serde_json::json;

use super::Signals;
use crate::router::{Control, Event, Message};
use crate::store::{Store, StoreError};
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
    /// A device connected: `online` is published unless the user was already shown connected
    /// (here, or in a cluster on another node).
    pub(super) async fn device_online(&mut self, user: Arc<str>, client: Arc<str>) {
        let (c, u) = (client.clone(), user.clone());
        let total = self
            .roster(move |s, node| s.device_connected(node, &c, &u))
            .await;
        let p = self.presence.entry(user.clone()).or_default();
        let was_offline =
            p.devices.is_empty() && p.left_at.is_none() && total.is_none_or(|n| n == 1);
        if !p.devices.contains(&client) {
            p.devices.reserve_exact(1);
            p.devices.push(client);
        }
        p.left_at = None;
        p.last_seen = None;
        if was_offline {
            self.publish_presence(&user).await;
        }
    }

    /// A device left: when it was the user's last (on every node), the grace period starts.
    pub(super) async fn device_offline(&mut self, user: &str, client: &str) {
        let (c, u) = (client.to_string(), user.to_string());
        let left = self
            .roster(move |s, node| s.device_disconnected(node, &c, &u))
            .await;
        if let Some(p) = self.presence.get_mut(user) {
            p.devices.retain(|c| &**c != client);
            if p.devices.is_empty() && left.is_none_or(|n| n == 0) {
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
            // In a cluster, a device may have connected to another node meanwhile.
            let u = user.clone();
            if self
                .roster(move |s, _| s.user_connections(&u, "", None))
                .await
                .is_some_and(|n| n > 0)
            {
                if let Some(p) = self.presence.get_mut(&user) {
                    p.left_at = None;
                }
                continue;
            }
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
        // Exact, as the topic (see `Message::server`): it is retained.
        let payload = payload.into_bytes().into_boxed_slice();
        let mut message = Message::server(topics::presence_topic(user), payload);
        message.retain = true;
        message.qos = QoS::AtLeastOnce;
        self.send(message).await;
    }

    /// Runs a roster call with this node's name on a blocking thread: `None` on a single node,
    /// or when the store failed (logged; presence then goes by this node's devices).
    async fn roster<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn Store, &str) -> Result<T, StoreError> + Send + 'static,
    ) -> Option<T> {
        let (node, _) = self.settings.cluster.clone()?;
        let store = self.store.clone();
        match tokio::task::spawn_blocking(move || f(store.as_ref(), &node)).await {
            Ok(Ok(v)) => Some(v),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "cannot update the cluster roster");
                None
            }
            Err(_) => None,
        }
    }

    /// A node starting: what the roster held for it from before (a crash, a quick restart)
    /// goes, and those users show offline unless connected elsewhere.
    pub(super) async fn join_roster(&mut self) {
        let users = self
            .roster(|s, node| {
                s.node_alive(node)?;
                s.reset_node(node)
            })
            .await;
        self.left_elsewhere(users.unwrap_or_default()).await;
    }

    /// Once a second, in one store call: says this node is alive, expires the nodes that have
    /// gone quiet (their users show offline unless connected elsewhere; only the node whose
    /// delete takes the rows announces), and closes the sessions other nodes took over.
    pub(super) async fn keep_roster(&mut self) {
        let Some((_, timeout)) = self.settings.cluster.clone() else {
            return;
        };
        let local = self.local_devices();
        let roster = self
            .roster(move |s, node| {
                let known = s.node_alive(node)?;
                if !known {
                    // Expired by the others (it went unheard): its devices are recorded again.
                    for (user, client) in &local {
                        s.restore_device(node, client, user)?;
                    }
                }
                let gone = s.expire_nodes(timeout.as_secs())?;
                // Devices another node holds now: the takeover's message over NATS ends their
                // sessions here at once, and this ends them even when that message was lost,
                // so two nodes never both go on serving one device.
                let clients: Vec<String> = local.into_iter().map(|(_, c)| c).collect();
                let taken = match clients.is_empty() {
                    true => Vec::new(),
                    false => s.taken_elsewhere(node, &clients)?,
                };
                Ok((known, gone, taken))
            })
            .await;
        let Some((known, gone, taken)) = roster else {
            return;
        };
        if !known && !self.presence.is_empty() {
            tracing::warn!(
                "this node had been expired from the cluster's roster; its devices are back"
            );
            let online: Vec<Arc<str>> = self
                .presence
                .iter()
                .filter(|(_, p)| !p.devices.is_empty())
                .map(|(u, _)| u.clone())
                .collect();
            for user in online {
                self.publish_presence(&user).await;
            }
        }
        self.left_elsewhere(gone).await;
        for client in taken {
            tracing::info!(client, "session held by another node; closed here");
            let control = Control::TakenOver(Arc::from(client.as_str()));
            let _ = self.router.send(Event::RemoteControl(control)).await;
        }
    }

    /// This node's connected devices: (user, client id).
    fn local_devices(&self) -> Vec<(String, String)> {
        self.presence
            .iter()
            .flat_map(|(u, p)| {
                p.devices
                    .iter()
                    .map(move |c| (u.to_string(), c.to_string()))
            })
            .collect()
    }

    /// Devices of these users were dropped from the roster without a goodbye: each user with
    /// no device left on any node is published offline.
    async fn left_elsewhere(&mut self, mut users: Vec<String>) {
        users.sort();
        users.dedup();
        for user in users {
            let u = user.clone();
            let left = self
                .roster(move |s, _| s.user_connections(&u, "", None))
                .await;
            let here = self
                .presence
                .get(user.as_str())
                .is_some_and(|p| !p.devices.is_empty());
            if left == Some(0) && !here {
                let p = self.presence.entry(Arc::from(user.as_str())).or_default();
                p.left_at = None;
                p.last_seen = Some(self.clock.now_ms());
                tracing::info!(user, "offline: its node is gone");
                self.publish_presence(&user).await;
            }
        }
    }
}
