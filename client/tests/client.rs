//! natter-client against the real server: sends resolve once stored, entries arrive once and in
//! order, the outbox survives restarts and cuts, catch-up after a long absence, the reason codes
//! that stop a client, and the codec hook.

#[path = "../../tests/common/mod.rs"]
mod common;

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::proxy::Proxy;
use common::{eventually, TestServer};
use natter_client::{
    direct, Client, Codec, Config, Credentials, Entry, Error, Event, Format, Protocol,
};

/// Long enough for a busy 2-core machine; every wait polls, so a pass is quick.
const LONG: Duration = Duration::from_secs(30);

const USERS: &[(&str, &str)] = &[
    ("alice", "alice-secret"),
    ("bob", "bob-secret"),
    ("carol", "carol-secret"),
];

fn secret(user: &str) -> String {
    format!("{user}-secret")
}

/// A client with a quick backoff (tests cut connections on purpose).
fn config(mqtt: std::net::SocketAddr, user: &str, device: &str, dir: &Path) -> Config {
    let mut c = Config::new(
        mqtt.to_string(),
        user,
        device,
        Credentials::Password(secret(user)),
        dir.join(format!("{user}.{device}")),
    );
    c.backoff.base = Duration::from_millis(50);
    c.backoff.max = Duration::from_millis(500);
    c.backoff.busy = Duration::from_millis(500);
    c
}

/// A running client and everything its events said, collected by a task that takes each event
/// as it comes (so live messages are acknowledged).
struct Device {
    client: Client,
    seen: Arc<Mutex<Vec<Event>>>,
}

impl Device {
    fn start(config: Config) -> Device {
        let (client, mut events) = Client::start(config).expect("start the client");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        tokio::spawn(async move {
            while let Some(e) = events.next().await {
                log.lock().unwrap().push(e);
            }
        });
        Device { client, seen }
    }

    /// Waits until an event matching `pred` has come.
    async fn saw(&self, what: &str, pred: impl Fn(&Event) -> bool) {
        eventually(LONG, what, async || {
            self.events().iter().any(&pred).then_some(())
        })
        .await;
    }

    fn events(&self) -> Vec<Event> {
        self.seen.lock().unwrap().clone()
    }

    /// Entries of `conv` as handed to the app, in the order handed.
    fn entries(&self, conv: &str) -> Vec<Entry> {
        self.events()
            .into_iter()
            .filter_map(|e| match e {
                Event::Entry(e) if e.conv == conv => Some(e),
                _ => None,
            })
            .collect()
    }

    /// Waits until `n` entries of `conv` arrived, then checks they are 1..=n exactly once, in order.
    async fn has_all(&self, conv: &str, n: u64) -> Vec<Entry> {
        eventually(LONG, &format!("{n} entries of {conv}"), async || {
            (self.entries(conv).len() as u64 >= n).then_some(())
        })
        .await;
        let entries = self.entries(conv);
        let seqs: Vec<u64> = entries.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, (1..=n).collect::<Vec<_>>(), "once each, in order");
        entries
    }
}

fn count<T: std::hash::Hash + Eq>(items: impl IntoIterator<Item = T>) -> usize {
    items.into_iter().collect::<HashSet<_>>().len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_are_stored_then_delivered_once_in_order_with_receipts() {
    for (protocol, format) in [
        (Protocol::V5, Format::Json),
        (Protocol::V5, Format::MsgPack),
        (Protocol::V311, Format::Json),
    ] {
        let server = TestServer::start_with_users(USERS, |_| {});
        let dir = tempfile::tempdir().unwrap();
        let make = |user: &str| {
            let mut c = config(server.mqtt, user, "phone", dir.path());
            c.protocol = protocol;
            c.format = format;
            Device::start(c)
        };
        let (alice, bob) = (make("alice"), make("bob"));
        alice.client.synced(LONG).await.unwrap();
        bob.client.synced(LONG).await.unwrap();
        let conv = direct("bob", "alice");
        assert_eq!(conv, "d.alice.bob");
        let mut seqs = Vec::new();
        for i in 0..20 {
            let sending = alice.client.send(&conv, format!("hello {i}")).unwrap();
            seqs.push(sending.stored().await.unwrap().seq);
        }
        assert_eq!(
            seqs,
            (1..=20).collect::<Vec<_>>(),
            "{protocol:?} {format:?}"
        );
        let got = bob.has_all(&conv, 20).await;
        assert_eq!(got[7].text.as_deref(), Some("hello 7"));
        assert_eq!(got[7].from, "alice");
        // Alice sees her own messages once too, and a Sent for each.
        alice.has_all(&conv, 20).await;
        let sent = alice
            .events()
            .iter()
            .filter(|e| matches!(e, Event::Sent { .. }))
            .count();
        assert_eq!(sent, 20);
        // Bob's device took them, so it acknowledged them: alice gets a delivered receipt.
        let delivered = |e: &Event| matches!(e, Event::Receipt(r) if r.kind == "delivered" && r.user == "bob" && r.seq == 20);
        alice.saw("a delivered receipt up to 20", delivered).await;
        // A read marker goes out and comes back as a read receipt.
        bob.client.mark_read(&conv, 20).unwrap();
        alice
            .saw(
                "a read receipt",
                |e| matches!(e, Event::Receipt(r) if r.kind == "read" && r.seq == 20),
            )
            .await;
        // Edits, reactions and requests.
        alice
            .client
            .edit(&conv, 3, "hello three")
            .unwrap()
            .stored()
            .await
            .unwrap();
        bob.client
            .react(&conv, 3, "👍")
            .unwrap()
            .stored()
            .await
            .unwrap();
        let history = bob.client.history(&conv, None, 50).await.unwrap();
        let third = history.iter().find(|e| e.seq == 3).unwrap();
        assert_eq!(third.text.as_deref(), Some("hello three"));
        assert!(third.edited);
        assert_eq!(third.reactions.get("👍"), Some(&1));
        let convs = bob.client.conversations().await.unwrap();
        assert_eq!(convs.len(), 1);
        assert_eq!(convs[0].conv, conv);
        // A refusal resolves the handle with the server's reason (not a member of a stranger's
        // conversation).
        let refused = alice.client.send("d.bob.carol", "let me in").unwrap();
        match refused.stored().await {
            Err(Error::Refused { code, .. }) => {
                assert_eq!(code, "not_member", "{protocol:?}")
            }
            other => panic!("{protocol:?}: {other:?}"),
        }
        alice.client.close().await;
        bob.client.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_typing_and_presence() {
    let server = TestServer::start_with_users(USERS, |_| {});
    let dir = tempfile::tempdir().unwrap();
    let alice = Device::start(config(server.mqtt, "alice", "phone", dir.path()));
    let bob = Device::start(config(server.mqtt, "bob", "phone", dir.path()));
    alice.client.synced(LONG).await.unwrap();
    bob.client.synced(LONG).await.unwrap();
    let conv = alice
        .client
        .create_group(Some("team"), Some("Team"), &["bob"])
        .await
        .unwrap();
    assert_eq!(conv, "g.team");
    bob.saw(
        "bob hears he was added",
        |e| matches!(e, Event::Membership(m) if m.kind == "member_added" && m.conv == "g.team"),
    )
    .await;
    bob.client
        .send(&conv, "hi team")
        .unwrap()
        .stored()
        .await
        .unwrap();
    alice.has_all(&conv, 1).await;
    bob.client.typing(&conv).unwrap();
    alice
        .saw(
            "alice sees bob typing",
            |e| matches!(e, Event::Typing { conv, user } if conv == "g.team" && user == "bob"),
        )
        .await;
    alice
        .saw(
            "alice sees bob online",
            |e| matches!(e, Event::Presence(p) if p.user == "bob" && p.status == "online"),
        )
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_outbox_survives_a_restart_of_the_client_while_the_server_is_away() {
    let server = TestServer::start_with_users(USERS, |_| {});
    let proxy = Proxy::start(server.mqtt);
    proxy.set_refusing(true);
    let dir = tempfile::tempdir().unwrap();
    let conv = direct("alice", "bob");
    {
        let alice = Device::start(config(proxy.addr(), "alice", "phone", dir.path()));
        for i in 0..10 {
            alice.client.send(&conv, format!("offline {i}")).unwrap();
        }
        assert_eq!(alice.client.outbox_len().unwrap(), 10);
        alice.client.close().await;
    }
    // A new process on the same data directory, with the server reachable again.
    proxy.set_refusing(false);
    let alice = Device::start(config(proxy.addr(), "alice", "phone", dir.path()));
    alice.client.flush(LONG).await.unwrap();
    let bob = Device::start(config(server.mqtt, "bob", "phone", dir.path()));
    let got = bob.has_all(&conv, 10).await;
    let texts: Vec<String> = got.iter().filter_map(|e| e.text.clone()).collect();
    let expected: Vec<String> = (0..10).map(|i| format!("offline {i}")).collect();
    assert_eq!(texts, expected, "stored once each, in the order sent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_process_on_one_data_directory_is_refused() {
    let server = TestServer::start_with_users(USERS, |_| {});
    let dir = tempfile::tempdir().unwrap();
    let first = Device::start(config(server.mqtt, "alice", "phone", dir.path()));
    let second = Client::start(config(server.mqtt, "alice", "phone", dir.path()));
    assert!(matches!(second.err(), Some(Error::DataDirInUse(_))));
    first.client.synced(LONG).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_credentials_and_a_takeover_stop_the_client() {
    let server = TestServer::start_with_users(USERS, |_| {});
    let dir = tempfile::tempdir().unwrap();
    let mut wrong = config(server.mqtt, "alice", "phone", dir.path());
    wrong.credentials = Credentials::Password("nope".into());
    let wrong = Device::start(wrong);
    assert!(wrong.client.synced(LONG).await.is_err());
    wrong
        .saw("a Stopped event", |e| matches!(e, Event::Stopped { .. }))
        .await;

    // Two processes of one device (two data directories, one client id): the older one is
    // taken over and stops instead of taking the session back.
    let proxy = Proxy::start(server.mqtt);
    let first = Device::start(config(server.mqtt, "bob", "phone", &dir.path().join("a")));
    first.client.synced(LONG).await.unwrap();
    let second = Device::start(config(server.mqtt, "bob", "phone", &dir.path().join("b")));
    second.client.synced(LONG).await.unwrap();
    first
        .saw("the first stops", |e| matches!(e, Event::Stopped { .. }))
        .await;
    // No duel: the second stays connected.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!second
        .events()
        .iter()
        .any(|e| matches!(e, Event::Disconnected { .. })));
    drop(proxy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offline_device_catches_up_on_a_burst_of_5000_by_sync() {
    let server = TestServer::start_with_users(USERS, |c| c.limits.publish_rate = 0);
    let dir = tempfile::tempdir().unwrap();
    let conv = direct("alice", "bob");
    // Bob was here once (seq 1), then goes away.
    let alice = Device::start(config(server.mqtt, "alice", "phone", dir.path()));
    {
        let bob = Device::start(config(server.mqtt, "bob", "phone", dir.path()));
        bob.client.synced(LONG).await.unwrap();
        alice
            .client
            .send(&conv, "before")
            .unwrap()
            .stored()
            .await
            .unwrap();
        bob.has_all(&conv, 1).await;
        bob.client.close().await;
    }
    let mut last = None;
    for i in 0..5000 {
        last = Some(alice.client.send(&conv, format!("burst {i}")).unwrap());
    }
    assert_eq!(last.unwrap().stored().await.unwrap().seq, 5001);
    // Back on the same data directory: exactly what it missed, once, in order (seq 1 was
    // taken before, so it does not come again).
    let bob = Device::start(config(server.mqtt, "bob", "phone", dir.path()));
    eventually(LONG, "the burst", async || {
        (bob.entries(&conv).len() >= 5000).then_some(())
    })
    .await;
    let got = bob.entries(&conv);
    let seqs: Vec<u64> = got.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (2..=5001).collect::<Vec<_>>());
    assert_eq!(got[4999].text.as_deref(), Some("burst 4999"));
}

/// 1,000 messages from two devices into one conversation through a proxy that delays traffic
/// and cuts every connection after a random short life: each is stored once, and every
/// receiver gets every one once, in `seq` order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cuts_and_delays_lose_nothing_and_duplicate_nothing() {
    let server = TestServer::start_with_users(USERS, |c| c.limits.publish_rate = 0);
    let proxy = Proxy::start(server.mqtt);
    proxy.set_delay(Duration::from_millis(5));
    let dir = tempfile::tempdir().unwrap();
    let conv = "g.chaos";
    let setup = Device::start(config(server.mqtt, "alice", "admin", dir.path()));
    setup.client.synced(LONG).await.unwrap();
    setup
        .client
        .create_group(Some("chaos"), None, &["bob", "carol"])
        .await
        .unwrap();
    setup.client.close().await;

    let via =
        |user: &str, device: &str| Device::start(config(proxy.addr(), user, device, dir.path()));
    let (alice, bob, carol) = (
        via("alice", "phone"),
        via("bob", "phone"),
        via("carol", "phone"),
    );
    proxy.set_random_cuts(Some((
        Duration::from_millis(200),
        Duration::from_millis(900),
    )));
    let senders = [("alice", &alice), ("bob", &bob)];
    let mut handles = Vec::new();
    for round in 0..500 {
        for (who, device) in senders {
            handles.push(device.client.send(conv, format!("{who} {round}")).unwrap());
        }
        // Spread over a few seconds, so that the cuts land in the middle of it.
        if round % 10 == 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    for h in handles {
        tokio::time::timeout(LONG * 4, h.stored())
            .await
            .expect("stored in time")
            .expect("stored");
    }
    proxy.set_random_cuts(None);
    assert!(
        proxy.connections() > 6,
        "the proxy did cut ({} connections)",
        proxy.connections()
    );
    for device in [&alice, &bob, &carol] {
        let got = device.has_all(conv, 1000).await;
        assert_eq!(
            count(got.iter().map(|e| e.text.clone())),
            1000,
            "each text once"
        );
    }
    // In the store: 1000 entries, each (sender, cid) once.
    let stored = server.with_store(|s| s.after(conv, 0, 5000).expect("read").items);
    assert_eq!(stored.len(), 1000);
    assert_eq!(
        count(
            stored
                .iter()
                .map(|i| (i.envelope.from.clone(), i.envelope.cid.clone()))
        ),
        1000
    );
    // Per sender, the order sent.
    let mut per_sender: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for i in &stored {
        let t = i.envelope.t.clone().unwrap_or_default();
        let (who, n) = t.split_once(' ').unwrap();
        per_sender
            .entry(who.to_string())
            .or_default()
            .push(n.parse().unwrap());
    }
    for (who, ns) in per_sender {
        assert_eq!(
            ns,
            (0..500).collect::<Vec<_>>(),
            "{who}'s messages in the order sent"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_restart_mid_conversation_loses_nothing() {
    let mut server = TestServer::start_with_users(USERS, |c| c.limits.publish_rate = 0);
    let proxy = Proxy::start(server.mqtt);
    let dir = tempfile::tempdir().unwrap();
    let conv = direct("alice", "bob");
    let alice = Device::start(config(proxy.addr(), "alice", "phone", dir.path()));
    let bob = Device::start(config(proxy.addr(), "bob", "phone", dir.path()));
    alice.client.synced(LONG).await.unwrap();
    bob.client.synced(LONG).await.unwrap();
    let mut handles = Vec::new();
    for i in 0..300 {
        handles.push(alice.client.send(&conv, format!("m {i}")).unwrap());
        if i == 100 {
            server.restart();
            proxy.set_target(server.mqtt);
        }
    }
    for h in handles {
        tokio::time::timeout(LONG, h.stored())
            .await
            .expect("in time")
            .expect("stored");
    }
    bob.has_all(&conv, 300).await;
    let stored = server.with_store(|s| s.after(&conv, 0, 1000).expect("read").items);
    assert_eq!(stored.len(), 300);
}

/// A codec that reverses text: what the server stores is not what the app wrote.
struct Reverse;

impl Codec for Reverse {
    fn seal(&self, _conv: &str, text: String) -> Result<String, Error> {
        Ok(text.chars().rev().collect())
    }
    fn open(&self, _conv: &str, text: String) -> Result<String, Error> {
        Ok(text.chars().rev().collect())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_codec_wraps_what_is_sent_and_unwraps_what_is_received() {
    let server = TestServer::start_with_users(USERS, |_| {});
    let dir = tempfile::tempdir().unwrap();
    let conv = direct("alice", "bob");
    let with_codec = |user: &str| {
        let mut c = config(server.mqtt, user, "phone", dir.path());
        c.codec = Arc::new(Reverse);
        Device::start(c)
    };
    let (alice, bob) = (with_codec("alice"), with_codec("bob"));
    alice
        .client
        .send(&conv, "secret plan")
        .unwrap()
        .stored()
        .await
        .unwrap();
    let got = bob.has_all(&conv, 1).await;
    assert_eq!(got[0].text.as_deref(), Some("secret plan"));
    let stored = server.with_store(|s| s.after(&conv, 0, 10).expect("read").items);
    assert_eq!(stored[0].envelope.t.as_deref(), Some("nalp terces"));
    let history = bob.client.history(&conv, None, 10).await.unwrap();
    assert_eq!(history[0].text.as_deref(), Some("secret plan"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_login_and_media() {
    let server = TestServer::start_with_users(USERS, |_| {});
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(server.mqtt, "alice", "tablet", dir.path());
    c.credentials = Credentials::Token {
        password: secret("alice"),
    };
    c.http = Some(format!("http://{}", server.http));
    let alice = Device::start(c);
    alice.client.synced(LONG).await.unwrap();
    let bytes = b"\x89PNG not really, just bytes".to_vec();
    let media = alice.client.upload(bytes.clone()).await.unwrap();
    let conv = direct("alice", "bob");
    let sent = alice
        .client
        .send(
            &conv,
            natter_client::Draft {
                text: Some("look".into()),
                media: vec![media.id.clone()],
                ..Default::default()
            },
        )
        .unwrap();
    sent.stored().await.unwrap();
    assert_eq!(alice.client.download(&media.id).await.unwrap(), bytes);
}

/// A refusal for a limit (too many connections for the user) is not retried at once: the client
/// waits at least `Backoff::busy` between attempts, and gets in once the limit allows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_limit_refusal_backs_off_longer() {
    let server = TestServer::start_with_users(USERS, |c| c.limits.max_connections_per_user = 1);
    let dir = tempfile::tempdir().unwrap();
    let phone = Device::start(config(server.mqtt, "alice", "phone", dir.path()));
    phone.client.synced(LONG).await.unwrap();
    let mut tablet = config(server.mqtt, "alice", "tablet", dir.path());
    tablet.backoff.busy = Duration::from_secs(2);
    let tablet = Device::start(tablet);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let refusals: Vec<String> = tablet
        .events()
        .into_iter()
        .filter_map(|e| match e {
            Event::Disconnected { reason } => Some(reason),
            _ => None,
        })
        .collect();
    assert!(
        (1..=2).contains(&refusals.len()),
        "one or two attempts in 3 s, not a storm: {refusals:?}"
    );
    assert!(refusals[0].contains("QuotaExceeded"), "{refusals:?}");
    phone.client.close().await;
    tablet.client.synced(LONG).await.unwrap();
}

/// What cannot go is refused before it reaches the outbox: a message too large for any server,
/// and any send once the client has stopped (it would otherwise go out on the next start after
/// the app was told it failed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_that_cannot_go_are_refused_before_the_outbox() {
    let server = TestServer::start_with_users(USERS, |_| {});
    let dir = tempfile::tempdir().unwrap();
    let alice = Device::start(config(server.mqtt, "alice", "phone", dir.path()));
    let conv = direct("alice", "bob");
    let huge = "x".repeat(300 * 1024);
    assert!(matches!(
        alice.client.send(&conv, huge),
        Err(Error::Refused { code, .. }) if code == "too_large"
    ));
    let other = alice.client.clone();
    let pending = other.send(&conv, "in flight when closed").unwrap();
    alice.client.close().await;
    assert!(matches!(pending.stored().await, Ok(_) | Err(Error::Closed)));
    assert!(matches!(other.send(&conv, "too late"), Err(Error::Closed)));
    assert!(
        other.outbox_len().unwrap() <= 1,
        "only the one sent before closing"
    );
}
