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

/// The clocks presence and pushes are timed by: the system's, or one a test moves by hand.
#[derive(Debug, Clone)]
enum Clock {
    System,
    /// A fixed start and how far the test has moved on from it.
    #[cfg(test)]
    Manual {
        start: Instant,
        start_ms: i64,
        moved: Arc<std::sync::Mutex<Duration>>,
    },
}

impl Clock {
    /// The monotonic time, for grace periods and coalescing windows.
    fn now(&self) -> Instant {
        match self {
            Clock::System => Instant::now(),
            #[cfg(test)]
            Clock::Manual { start, moved, .. } => *start + *moved.lock().unwrap(),
        }
    }

    /// The wall-clock time in milliseconds, for `last_seen` and push timestamps.
    fn now_ms(&self) -> i64 {
        match self {
            Clock::System => now_ms(),
            #[cfg(test)]
            Clock::Manual {
                start_ms, moved, ..
            } => *start_ms + moved.lock().unwrap().as_millis() as i64,
        }
    }
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
    clock: Clock,
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
            clock: Clock::System,
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
                        p.left_at = Some(self.clock.now());
                        p.last_seen = Some(self.clock.now_ms());
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
            Signal::Stored { conv, from } => self.stored(&conv, &from),
            Signal::Status { user, away, hidden } => self.status(user, away, hidden).await,
        }
    }

    /// Counts a stored message towards a push for each member (but the sender) with no
    /// connected device.
    fn stored(&mut self, conv: &str, from: &str) {
        let members: Vec<String> = self
            .directory
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .members(conv)
            .iter()
            .map(|m| m.to_string())
            .collect();
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

    /// Records a user's chosen status and publishes their presence.
    async fn status(&mut self, user: Arc<str>, away: bool, hidden: bool) {
        let p = self.presence.entry(user.clone()).or_default();
        p.away = away;
        p.hidden = hidden;
        self.publish_presence(&user).await;
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

    fn is_online(&self, user: &str) -> bool {
        self.presence
            .get(user)
            .is_some_and(|p| !p.devices.is_empty())
    }

    /// Sends the pushes whose gathering time is over, to users still without a device.
    async fn flush_pushes(&mut self) {
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

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use serde_json::Value;

    use super::*;
    use crate::service::push::PushSettings;

    const GRACE: Duration = Duration::from_secs(5);
    /// The wall clock at the test's start, in milliseconds.
    const START_MS: i64 = 1_700_000_000_000;

    /// `Signals` with a hand-moved clock, over a real store in a temp dir where alice, bob and
    /// carol share `g.club`; what it sends to the router lands in `events`.
    struct Harness {
        signals: Signals,
        events: mpsc::Receiver<Event>,
        moved: Arc<Mutex<Duration>>,
        _dir: tempfile::TempDir,
    }

    fn harness() -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        for user in ["alice", "bob", "carol"] {
            store.add_user(user, "x").unwrap();
        }
        let members = [("alice", "owner"), ("bob", "member"), ("carol", "member")];
        store
            .create_conversation("g.club", false, "Club", "alice", &members)
            .unwrap();
        let directory = Directory::from_snapshot(store.snapshot().unwrap());
        let push = PushSettings {
            secret: b"test".to_vec(),
            allow_private: false,
            max_attempts: 1,
            base_delay: Duration::ZERO,
            timeout: Duration::from_secs(1),
        };
        let pusher = Arc::new(Pusher::new(push, store.clone()));
        let settings = Settings {
            grace: GRACE,
            receipt_interval: Duration::from_secs(1),
            push_coalesce: Duration::from_secs(30),
        };
        let (router, events) = mpsc::channel(64);
        let directory = Arc::new(RwLock::new(directory));
        let mut signals = Signals::new(settings, store, directory, router, pusher);
        let moved = Arc::new(Mutex::new(Duration::ZERO));
        signals.clock = Clock::Manual {
            start: Instant::now(),
            start_ms: START_MS,
            moved: moved.clone(),
        };
        Harness {
            signals,
            events,
            moved,
            _dir: dir,
        }
    }

    impl Harness {
        fn advance(&self, by: Duration) {
            *self.moved.lock().unwrap() += by;
        }

        async fn report(&mut self, report: Report) {
            self.signals.on_report(report).await;
        }

        /// Everything sent to the router since the last call: topic, retain flag, payload
        /// (as JSON; an empty payload is `null`) and the number of stream copies.
        fn published(&mut self) -> Vec<(String, bool, Value, usize)> {
            let mut out = Vec::new();
            while let Ok(event) = self.events.try_recv() {
                let (message, copies) = match event {
                    Event::ServerPublish(message) => (message, 0),
                    Event::ServerPublishTo { message, copies } => (message, copies.len()),
                    other => panic!("unexpected event {other:?}"),
                };
                let payload = if message.payload.is_empty() {
                    Value::Null
                } else {
                    serde_json::from_slice(&message.payload).unwrap()
                };
                out.push((
                    message.topic_str().to_string(),
                    message.retain,
                    payload,
                    copies,
                ));
            }
            out
        }
    }

    fn online(user: &str, client: &str) -> Report {
        Report::Online {
            user: user.into(),
            client: client.into(),
        }
    }

    fn offline(user: &str, client: &str) -> Report {
        Report::Offline {
            user: user.into(),
            client: client.into(),
        }
    }

    fn delivered(user: &str, seq: u64) -> Report {
        Report::Delivered {
            user: user.into(),
            conv: "g.club".into(),
            seq,
        }
    }

    fn presence(payload: Value) -> (String, bool, Value, usize) {
        (topics::presence_topic("bob"), true, payload, 0)
    }

    #[tokio::test]
    async fn a_reconnect_within_the_grace_period_never_shows_offline() {
        let mut h = harness();
        h.report(online("bob", "phone")).await;
        let status = json!({"user": "bob", "status": "online"});
        assert_eq!(h.published(), [presence(status)]);
        h.report(offline("bob", "phone")).await;
        h.advance(GRACE - Duration::from_millis(1));
        h.signals.expire_presence().await;
        h.report(online("bob", "laptop")).await;
        h.advance(GRACE * 3);
        h.signals.expire_presence().await;
        assert_eq!(h.published(), []);
    }

    #[tokio::test]
    async fn the_last_device_gone_past_the_grace_period_shows_offline_since_it_left() {
        let mut h = harness();
        h.report(online("bob", "phone")).await;
        h.report(online("bob", "laptop")).await;
        assert_eq!(h.published().len(), 1);
        h.advance(Duration::from_secs(1));
        h.report(offline("bob", "phone")).await;
        h.advance(Duration::from_secs(1));
        h.report(offline("bob", "laptop")).await;
        h.advance(GRACE - Duration::from_millis(1));
        h.signals.expire_presence().await;
        assert_eq!(h.published(), []);
        h.advance(Duration::from_millis(1));
        h.signals.expire_presence().await;
        let status = json!({"user": "bob", "status": "offline", "last_seen": START_MS + 2000});
        assert_eq!(h.published(), [presence(status)]);
        h.advance(GRACE);
        h.signals.expire_presence().await;
        assert_eq!(h.published(), []);
    }

    #[tokio::test]
    async fn deliveries_within_one_interval_become_one_monotonic_receipt_each() {
        let mut h = harness();
        for report in [
            delivered("bob", 3),
            delivered("bob", 5),
            delivered("carol", 2),
        ] {
            h.report(report).await;
        }
        h.report(delivered("bob", 4)).await;
        h.signals.flush_receipts().await;
        let receipt = |user: &str, seq: u64| {
            let body = json!({"type": "delivered", "conv": "g.club", "user": user, "seq": seq});
            (
                topics::conv_topic("g.club", ConvKind::Receipts),
                false,
                body,
                3,
            )
        };
        let mut sent = h.published();
        sent.sort_by(|a, b| a.2["user"].as_str().cmp(&b.2["user"].as_str()));
        assert_eq!(sent, [receipt("bob", 5), receipt("carol", 2)]);
        // Never backwards: a lower sequence number than the stored one announces nothing.
        h.report(delivered("bob", 4)).await;
        h.signals.flush_receipts().await;
        assert_eq!(h.published(), []);
        h.report(delivered("bob", 6)).await;
        h.signals.flush_receipts().await;
        assert_eq!(h.published(), [receipt("bob", 6)]);
    }
}
