//! Receipts and presence: what the server derives from acknowledgements and connections.
//!
//! - *Delivered*: the router reports each recipient device's PUBACK (PUBCOMP) for a stored
//!   message; receipts are batched per conversation and user (one event per
//!   `receipt_interval`), monotonic, stored, and published on `c/{conv}/r` (so on every member's
//!   `u/{member}/c/{conv}/r`).
//! - *Read*: a client publishes `{"read": SEQ}` (optionally `"private": true`) on `c/{conv}/r`;
//!   public markers go to all members, private ones only to the reader's own devices.
//! - *Presence*: the router reports devices connecting and leaving; `p/{user}` (retained) says
//!   `online` while any device is connected, the user's chosen `away`, or `offline` with
//!   `last_seen` once the last device has been gone for the grace period (so a phone's quick
//!   reconnect does not flap). Hidden users' presence is cleared.
//! - *Push*: members with no connected device when a message is stored get one content-free
//!   notification per `push_coalesce` (see [`super::push`]).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use rumqttc::v5::mqttbytes::QoS;
use serde_json::json;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::push::Pusher;
use crate::chat::Directory;
use crate::router::{Event, Message, Report};
use crate::store::Store;
use crate::topics::{self, ConvKind};

/// What the edge and the request service report (the router's own reports are [`Report`]s).
#[derive(Debug)]
pub enum Signal {
    /// A read marker from a client.
    Read {
        user: Arc<str>,
        conv: String,
        seq: u64,
        private: bool,
    },
    /// A message was stored: members with no connected device get a push notification.
    Stored { conv: String, from: String },
    /// A user sets their status (`online` or `away`) and whether presence is hidden.
    Status {
        user: Arc<str>,
        away: bool,
        hidden: bool,
    },
}

#[derive(Debug, Clone, Copy)]
pub struct Settings {
    pub grace: Duration,
    pub receipt_interval: Duration,
    /// How long new messages for an offline user gather before one push goes out.
    pub push_coalesce: Duration,
}

/// New messages for an offline user, waiting to be pushed.
#[derive(Debug)]
struct PendingPush {
    since: Instant,
    counts: HashMap<String, u64>,
}

#[derive(Debug, Default)]
struct Presence {
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

pub struct Signals {
    settings: Settings,
    store: Arc<Store>,
    directory: Arc<RwLock<Directory>>,
    router: mpsc::Sender<Event>,
    /// (conv, user) → highest delivered seq not yet announced.
    delivered: HashMap<(String, Arc<str>), u64>,
    presence: HashMap<Arc<str>, Presence>,
    pusher: Arc<Pusher>,
    pushes: HashMap<String, PendingPush>,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

impl Signals {
    pub fn new(
        settings: Settings,
        store: Arc<Store>,
        directory: Arc<RwLock<Directory>>,
        router: mpsc::Sender<Event>,
        pusher: Arc<Pusher>,
    ) -> Signals {
        Signals {
            settings,
            store,
            directory,
            router,
            delivered: HashMap::new(),
            presence: HashMap::new(),
            pusher,
            pushes: HashMap::new(),
        }
    }

    /// Runs until shutdown, or until the router and every other sender are gone.
    pub async fn run(
        mut self,
        mut reports: mpsc::UnboundedReceiver<Report>,
        mut rx: mpsc::UnboundedReceiver<Signal>,
        shutdown: CancellationToken,
    ) {
        let mut receipts = tokio::time::interval(self.settings.receipt_interval);
        let mut presence = tokio::time::interval(Duration::from_millis(250));
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                report = reports.recv() => match report {
                    Some(r) => self.on_report(r).await,
                    None => break,
                },
                Some(signal) = rx.recv() => self.handle(signal).await,
                _ = receipts.tick() => self.flush_receipts().await,
                _ = presence.tick() => {
                    self.expire_presence().await;
                    self.flush_pushes().await;
                }
            }
        }
        self.flush_receipts().await;
    }

    async fn on_report(&mut self, report: Report) {
        match report {
            Report::Delivered { user, conv, seq } => {
                let best = self.delivered.entry((conv, user)).or_insert(0);
                *best = (*best).max(seq);
            }
            Report::Online { user, client } => {
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
            Report::Offline { user, client } => {
                if let Some(p) = self.presence.get_mut(&user) {
                    p.devices.retain(|c| *c != client);
                    if p.devices.is_empty() {
                        p.left_at = Some(Instant::now());
                        p.last_seen = Some(now_ms());
                    }
                }
            }
        }
    }

    async fn handle(&mut self, signal: Signal) {
        match signal {
            Signal::Read {
                user,
                conv,
                seq,
                private,
            } => self.read(user, conv, seq, private).await,
            Signal::Stored { conv, from } => {
                let members: Vec<String> = self
                    .directory
                    .read()
                    .unwrap_or_else(|e| e.into_inner())
                    .members(&conv)
                    .iter()
                    .map(|m| m.to_string())
                    .collect();
                for member in members.into_iter().filter(|m| *m != from) {
                    if self.is_online(&member) {
                        continue;
                    }
                    let pending = self.pushes.entry(member).or_insert_with(|| PendingPush {
                        since: Instant::now(),
                        counts: HashMap::new(),
                    });
                    *pending.counts.entry(conv.clone()).or_insert(0) += 1;
                }
            }
            Signal::Status { user, away, hidden } => {
                let p = self.presence.entry(user.clone()).or_default();
                p.away = away;
                p.hidden = hidden;
                self.publish_presence(&user).await;
            }
        }
    }

    async fn read(&mut self, user: Arc<str>, conv: String, seq: u64, private: bool) {
        let store = self.store.clone();
        let (u, c) = (user.to_string(), conv.clone());
        let stored =
            tokio::task::spawn_blocking(move || store.mark_read(&c, &u, seq, private)).await;
        match stored {
            Ok(Ok(true)) => {}
            // Not newer than what is stored: markers never go backwards.
            Ok(Ok(false)) => return,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "cannot store a read marker");
                return;
            }
            Err(_) => return,
        }
        let body = json!({"type": "read", "conv": conv, "user": &*user, "seq": seq});
        if private {
            // Only the reader's own devices, so unread counts agree across them.
            let topic = topics::stream_copy(&user, &conv, ConvKind::Receipts);
            self.send(Message::server(topic, body.to_string())).await;
        } else {
            self.announce(&conv, body.to_string()).await;
        }
    }

    async fn flush_receipts(&mut self) {
        if self.delivered.is_empty() {
            return;
        }
        let batch: Vec<((String, Arc<str>), u64)> = self.delivered.drain().collect();
        let store = self.store.clone();
        let rows: Vec<(String, String, u64)> = batch
            .iter()
            .map(|((c, u), s)| (c.clone(), u.to_string(), *s))
            .collect();
        let advanced = match tokio::task::spawn_blocking(move || store.mark_delivered(&rows)).await
        {
            Ok(Ok(advanced)) => advanced,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "cannot store delivery receipts");
                return;
            }
            Err(_) => return,
        };
        for (((conv, user), seq), went_up) in batch.into_iter().zip(advanced) {
            if !went_up {
                continue;
            }
            let body = json!({"type": "delivered", "conv": conv, "user": &*user, "seq": seq});
            self.announce(&conv, body.to_string()).await;
        }
    }

    async fn expire_presence(&mut self) {
        let grace = self.settings.grace;
        let due: Vec<Arc<str>> = self
            .presence
            .iter()
            .filter(|(_, p)| p.left_at.is_some_and(|t| t.elapsed() >= grace))
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

    fn is_online(&self, user: &str) -> bool {
        self.presence
            .get(user)
            .is_some_and(|p| !p.devices.is_empty())
    }

    /// Sends the pushes whose gathering time is over, to users still without a device.
    async fn flush_pushes(&mut self) {
        let window = self.settings.push_coalesce;
        let due: Vec<String> = self
            .pushes
            .iter()
            .filter(|(_, p)| p.since.elapsed() >= window)
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
                "ts": now_ms(),
            })
            .to_string()
            .into_bytes();
            for url in endpoints {
                let (pusher, user, body) = (self.pusher.clone(), user.clone(), body.clone());
                tokio::spawn(async move { pusher.deliver(&user, &url, body).await });
            }
        }
    }

    /// Publishes the user's presence as it stands (retained).
    async fn publish_presence(&self, user: &str) {
        let p = self.presence.get(user);
        let hidden = p.is_some_and(|p| p.hidden);
        let connected = p.is_some_and(|p| {
            !p.devices.is_empty() || p.left_at.is_some_and(|t| t.elapsed() < self.settings.grace)
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
            let last_seen = p.and_then(|p| p.last_seen).unwrap_or_else(now_ms);
            json!({"user": user, "status": "offline", "last_seen": last_seen}).to_string()
        };
        let mut message = Message::server(topics::presence_topic(user), payload);
        message.retain = true;
        message.qos = QoS::AtLeastOnce;
        self.send(message).await;
    }

    /// Publishes on `c/{conv}/r` and each member's copy of it.
    async fn announce(&self, conv: &str, body: String) {
        let members: Vec<String> = self
            .directory
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .members(conv)
            .iter()
            .map(|m| m.to_string())
            .collect();
        let copies = members
            .iter()
            .map(|m| Bytes::from(topics::stream_copy(m, conv, ConvKind::Receipts)))
            .collect();
        let message = Message::server(topics::conv_topic(conv, ConvKind::Receipts), body);
        if self
            .router
            .send(Event::ServerPublishTo { message, copies })
            .await
            .is_err()
        {
            tracing::debug!("router gone; receipt not published");
        }
    }

    async fn send(&self, message: Message) {
        let _ = self.router.send(Event::ServerPublish(message)).await;
    }
}
