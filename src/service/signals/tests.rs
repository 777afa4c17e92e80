//! Signals driven directly, with a hand-moved clock and a real store: presence grace and
//! receipt batching.

use std::sync::Mutex;
use std::time::Instant;

use serde_json::{json, Value};

use super::*;
use crate::service::push::PushSettings;
use crate::topics::{self, ConvKind};

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
    let store: Arc<dyn Store> = crate::store::sqlite::Sqlite::open(dir.path())
        .map(Arc::new)
        .unwrap();
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
        cluster: None,
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
