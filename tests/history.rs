//! Durable history: idempotent resends, sync and paging, edits/deletes/reactions, search that
//! never crosses conversations, retention, bad payloads, MessagePack delivery.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::chat::*;
use common::clients::{v4, v5};
use common::http::Api;
use common::{eventually, RawClient, TestServer};
use rumqttc::v5::mqttbytes::v5::{ConnectProperties, Packet, PubAckReason, Publish};
use rumqttc::v5::mqttbytes::QoS;
use serde_json::{json, Value};

/// Sends on `topic` and returns the PUBACK reason.
async fn send(c: &mut v5::Client, topic: &str, payload: impl Into<Vec<u8>>) -> PubAckReason {
    c.client
        .publish(topic, QoS::AtLeastOnce, false, payload.into())
        .await
        .unwrap();
    puback(c).await
}

fn texts(reply: &Value) -> Vec<String> {
    reply["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["t"].as_str().unwrap_or("").to_string())
        .collect()
}

fn seqs(reply: &Value) -> Vec<u64> {
    reply["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["seq"].as_u64().unwrap())
        .collect()
}

#[tokio::test]
async fn the_same_cid_or_a_dup_resend_is_stored_and_delivered_once() {
    // No delivered receipts: Bob's client acknowledges both messages, and the receipt the next
    // batching tick would publish on his own stream must not be mistaken for a third delivery.
    let server = TestServer::start_with_users(USERS, |c| c.chat.delivery_receipts = false);
    let mut alice = login(&server, "alice").await;
    let mut bob = login(&server, "bob").await;
    let body = json!({"cid": "c-1", "t": "once"}).to_string();
    assert_eq!(
        send(&mut alice, "c/d.alice.bob/m", body.clone()).await,
        PubAckReason::Success
    );
    assert_eq!(
        send(&mut alice, "c/d.alice.bob/m", body).await,
        PubAckReason::Success
    );

    // A 5.0 client without cid resends the same packet with DUP after losing the PUBACK.
    let mut raw = RawClient::login(server.mqtt, "alice", "pw-a", "alice.raw", 30).await;
    for dup in [false, true] {
        let mut p = Publish::new(
            "c/d.alice.bob/m",
            QoS::AtLeastOnce,
            Bytes::from_static(b"twice?"),
            None,
        );
        p.pkid = 42;
        p.dup = dup;
        raw.send(Packet::Publish(p)).await;
        assert!(matches!(raw.recv().await, Some(Packet::PubAck(a)) if a.pkid == 42));
    }

    let first = publish_on(&mut bob, "u/bob/c/d.alice.bob/m").await;
    assert_eq!(text(&first), "once");
    let second = publish_on(&mut bob, "u/bob/c/d.alice.bob/m").await;
    assert_eq!(text(&second), "twice?");
    bob.no_publish(Duration::from_millis(300)).await;
    let reply = request(&mut bob, "bob", "sync", json!({"conv": "d.alice.bob"})).await;
    assert_eq!(texts(&reply), ["once", "twice?"]);
    assert_eq!(seqs(&reply), [1, 2]);
}

#[tokio::test]
async fn sync_pages_forward_and_history_pages_backward() {
    let server = TestServer::start_with_users(USERS, |_| {});
    let mut alice = login(&server, "alice").await;
    for i in 1..=7 {
        assert_eq!(
            send(&mut alice, "c/d.alice.bob/m", format!("m{i}")).await,
            PubAckReason::Success
        );
    }
    // Bob was offline the whole time: he catches up page by page, and is told when there is more.
    let mut bob = login(&server, "bob").await;
    let mut after = 0;
    let mut got = Vec::new();
    loop {
        let reply = request(
            &mut bob,
            "bob",
            "sync",
            json!({"conv": "d.alice.bob", "after": after, "limit": 3}),
        )
        .await;
        assert_eq!(reply["ok"], true, "{reply}");
        got.extend(texts(&reply));
        after = reply["next"].as_u64().unwrap();
        if reply["more"] == false {
            break;
        }
    }
    assert_eq!(got, ["m1", "m2", "m3", "m4", "m5", "m6", "m7"]);
    assert_eq!(after, 7);

    // The same through the user-wide stream position.
    let reply = request(&mut bob, "bob", "sync", json!({"since": 0, "limit": 5})).await;
    assert_eq!(texts(&reply), ["m1", "m2", "m3", "m4", "m5"]);
    assert_eq!(reply["more"], true);
    let next = reply["next"].clone();
    let reply = request(&mut bob, "bob", "sync", json!({"since": next})).await;
    assert_eq!(texts(&reply), ["m6", "m7"]);
    assert_eq!(reply["more"], false);

    // Scrolling up from the end.
    let reply = request(
        &mut bob,
        "bob",
        "history",
        json!({"conv": "d.alice.bob", "before": 6, "limit": 2}),
    )
    .await;
    assert_eq!(seqs(&reply), [5, 4]);
    assert_eq!(reply["more"], true);

    // Nobody else can read it.
    let mut eve = login(&server, "eve").await;
    let reply = request(&mut eve, "eve", "sync", json!({"conv": "d.alice.bob"})).await;
    assert_eq!(reply["error"], "not_member");
    let reply = request(&mut eve, "eve", "sync", json!({"since": 0})).await;
    assert_eq!(texts(&reply), Vec::<String>::new());
}

#[tokio::test]
async fn edits_deletes_and_reactions_reference_their_message() {
    let server = TestServer::start_with_users(USERS, |_| {});
    let mut alice = login(&server, "alice").await;
    let mut bob = login(&server, "bob").await;
    // Bob's tablet only listens.
    let mut tablet = login_device(&server, "bob", "tablet").await;
    let conv = "c/d.alice.bob";
    send(&mut alice, &format!("{conv}/m"), "helo").await;
    send(&mut alice, &format!("{conv}/m"), "to be deleted").await;
    let edit = json!({"op": "edit", "target": 1, "t": "hello"}).to_string();
    assert_eq!(
        send(&mut alice, &format!("{conv}/e"), edit.clone()).await,
        PubAckReason::Success
    );
    // Only the author edits.
    assert_eq!(
        send(&mut bob, &format!("{conv}/e"), edit).await,
        PubAckReason::ImplementationSpecificError
    );
    for (who, op) in [(&mut bob, "react"), (&mut alice, "react")] {
        let r = json!({"op": op, "target": 1, "emoji": "+1"}).to_string();
        assert_eq!(
            send(who, &format!("{conv}/e"), r).await,
            PubAckReason::Success
        );
    }
    let unreact = json!({"op": "unreact", "target": 1, "emoji": "+1"}).to_string();
    send(&mut bob, &format!("{conv}/e"), unreact).await;
    let delete = json!({"op": "delete", "target": 2}).to_string();
    assert_eq!(
        send(&mut alice, &format!("{conv}/e"), delete).await,
        PubAckReason::Success
    );
    // Bob's stream carries the events themselves.
    let event = publish_on(&mut tablet, "u/bob/c/d.alice.bob/e").await;
    let event: Value = serde_json::from_slice(&event.payload).unwrap();
    assert_eq!(
        (event["k"].as_str(), event["target"].as_u64()),
        (Some("edit"), Some(1))
    );

    let reply = request(&mut bob, "bob", "sync", json!({"conv": "d.alice.bob"})).await;
    let messages = reply["messages"].as_array().unwrap();
    assert_eq!(messages[0]["t"], "hello");
    assert_eq!(messages[0]["edited"], true);
    assert_eq!(messages[0]["reactions"], json!({"+1": 1}));
    assert_eq!(messages[1]["deleted"], true);
    assert!(messages[1].get("t").is_none(), "a tombstone keeps no text");
    // Events have sequence numbers too: the history stays dense.
    assert_eq!(seqs(&reply), [1, 2, 3, 4, 5, 6, 7]);
}

#[tokio::test]
async fn search_finds_only_the_searchers_conversations() {
    let server = TestServer::start_with_users(USERS, |_| {});
    let mut alice = login(&server, "alice").await;
    let mut eve = login(&server, "eve").await;
    send(&mut alice, "c/d.alice.bob/m", "Meet at the Café Pinapple").await;
    send(&mut eve, "c/d.bob.eve/m", "pinapple pizza?").await;
    let reply = request(&mut alice, "alice", "search", json!({"q": "cafe"})).await;
    assert_eq!(texts(&reply), ["Meet at the Café Pinapple"]);
    let reply = request(&mut alice, "alice", "search", json!({"q": "pinapple"})).await;
    assert_eq!(texts(&reply), ["Meet at the Café Pinapple"]);
    let reply = request(&mut eve, "eve", "search", json!({"q": "pinapple"})).await;
    assert_eq!(texts(&reply), ["pinapple pizza?"]);
    // Chinese has no spaces between words: trigrams, and a substring scan for shorter queries.
    send(&mut alice, "c/d.alice.bob/m", "我们明天见面吧").await;
    for q in ["明天见", "明天"] {
        let reply = request(&mut alice, "alice", "search", json!({"q": q})).await;
        assert_eq!(texts(&reply), ["我们明天见面吧"], "{q}");
        let reply = request(&mut eve, "eve", "search", json!({"q": q})).await;
        assert_eq!(texts(&reply), Vec::<String>::new(), "{q}");
    }
    // FTS syntax in the query is just text.
    let reply = request(
        &mut eve,
        "eve",
        "search",
        json!({"q": "pinapple OR \"cafe"}),
    )
    .await;
    assert_eq!(reply["ok"], true, "{reply}");
}

#[tokio::test]
async fn retention_keeps_the_newest_entries_and_sync_says_where_history_starts() {
    let server = TestServer::start_with_users(USERS, |c| {
        c.storage.retention_per_conversation = 3;
        c.storage.retention_interval_secs = 1;
    });
    let mut alice = login(&server, "alice").await;
    for i in 1..=5 {
        send(&mut alice, "c/d.alice.bob/m", format!("m{i}")).await;
    }
    let mut bob = login(&server, "bob").await;
    let reply = eventually(Duration::from_secs(5), "retention runs", async || {
        let reply = request(&mut bob, "bob", "sync", json!({"conv": "d.alice.bob"})).await;
        (reply["first"] == 3).then_some(reply)
    })
    .await;
    assert_eq!(texts(&reply), ["m3", "m4", "m5"]);
}

/// Files under `dir`, recursively (none if it does not exist).
fn files_under(dir: &std::path::Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| {
            if e.path().is_dir() {
                files_under(&e.path())
            } else {
                1
            }
        })
        .sum()
}

#[tokio::test]
async fn retention_releases_media_whose_file_goes_after_the_grace_period() {
    let server = TestServer::start_with_users(USERS, |c| {
        c.storage.retention_per_conversation = 1;
        c.storage.retention_interval_secs = 1;
        c.media.unreferenced_grace_secs = 1;
    });
    let http = Api::new(&server);
    let token = http.token("alice", password("alice")).await;
    let (status, upload) = http
        .upload(&token, b"a file only a message keeps".to_vec())
        .await;
    assert_eq!(status, reqwest::StatusCode::CREATED);
    let id = upload["id"].as_str().unwrap();
    let blobs = server.path("data/media/blobs");
    assert_eq!(files_under(&blobs), 1);

    let mut alice = login(&server, "alice").await;
    let with_media = json!({"t": "see attached", "media": [id]}).to_string();
    assert_eq!(
        send(&mut alice, "c/d.alice.bob/m", with_media).await,
        PubAckReason::Success
    );
    // Referenced, it outlives the grace period and a few retention runs. Time is what this
    // checks (nothing happens to observe), so a fixed wait it is.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(files_under(&blobs), 1, "a referenced upload was deleted");

    // A newer message pushes it out of the history: the reference goes, then the file.
    assert_eq!(
        send(&mut alice, "c/d.alice.bob/m", "newer").await,
        PubAckReason::Success
    );
    eventually(
        Duration::from_secs(10),
        "the unreferenced file goes",
        async || (files_under(&blobs) == 0).then_some(()),
    )
    .await;
    let mut bob = login(&server, "bob").await;
    let reply = request(&mut bob, "bob", "sync", json!({"conv": "d.alice.bob"})).await;
    assert_eq!(texts(&reply), ["newer"]);
}

#[tokio::test]
async fn bad_payloads_are_refused_and_the_connection_stays() {
    let server = TestServer::start_with_users(USERS, |_| {});
    let mut alice = login(&server, "alice").await;
    for bad in [
        json!({"t": "x", "seq": 99}).to_string(),
        json!({"t": "x", "from": "bob"}).to_string(),
        "{not json".to_string(),
        json!({"cid": "no text"}).to_string(),
    ] {
        assert_eq!(
            send(&mut alice, "c/d.alice.bob/m", bad.clone()).await,
            PubAckReason::PayloadFormatInvalid,
            "{bad}"
        );
        let err = publish_on(&mut alice, "u/alice/errors").await;
        let err: Value = serde_json::from_slice(&err.payload).unwrap();
        assert!(
            err["error"] == "bad_payload" || err["error"] == "invalid_message",
            "{err}"
        );
    }
    assert_eq!(
        send(&mut alice, "c/d.alice.bob/m", "still here").await,
        PubAckReason::Success
    );
}

#[tokio::test]
async fn devices_may_ask_for_messagepack() {
    let server = TestServer::start_with_users(USERS, |_| {});
    let mut o = opts(&server, "bob", "bob.watch");
    let mut props = ConnectProperties::new();
    props.user_properties = vec![("format".into(), "msgpack".into())];
    o.set_connect_properties(props);
    let (mut watch, _) = v5::Client::connect(o).await;
    watch
        .client
        .subscribe("u/bob/#", QoS::AtLeastOnce)
        .await
        .unwrap();
    watch.suback().await;
    let mut alice = login(&server, "alice").await;
    send(&mut alice, "c/d.alice.bob/m", "compact").await;
    let got = publish_on(&mut watch, "u/bob/c/d.alice.bob/m").await;
    assert_eq!(
        got.properties
            .as_ref()
            .and_then(|p| p.content_type.as_deref()),
        Some("application/msgpack")
    );
    let envelope: Value = rmp_serde::from_slice(&got.payload).expect("MessagePack envelope");
    assert_eq!(envelope["t"], "compact");
    assert_eq!(envelope["from"], "alice");
}

/// The PUBACK reason of the next acknowledgement, skipping other packets.
async fn puback(c: &mut v5::Client) -> PubAckReason {
    loop {
        if let v5::Incoming::PubAck(a) = c.next().await.unwrap() {
            return a.reason;
        }
    }
}

#[tokio::test]
async fn a_message_that_cannot_be_committed_is_never_acknowledged_and_the_writer_recovers() {
    // Long enough that a history read on a loaded machine finishes well within it, which a
    // read queued behind the blocked writer never could.
    const BOUND: Duration = Duration::from_secs(3);
    let server = TestServer::start_with_users(USERS, |c| {
        c.storage.commit_retry_secs = BOUND.as_secs();
    });
    let mut alice = login(&server, "alice").await;
    let mut bob = login(&server, "bob").await;
    assert_eq!(
        send(&mut alice, "c/d.alice.bob/m", "before").await,
        PubAckReason::Success
    );
    let mut o4 = v4::MqttOptions::new("alice.old", "127.0.0.1", server.port());
    o4.set_keep_alive(Duration::from_secs(30));
    o4.set_credentials("alice", "pw-a");
    let (mut old, _) = v4::Client::connect(o4).await;

    // Another process holds the write lock (as a full disk would, no commit can happen);
    // readers still read.
    let lock = server.lock_history();

    let sent = Instant::now();
    alice
        .client
        .publish("c/d.alice.bob/m", QoS::AtLeastOnce, false, "blocked")
        .await
        .unwrap();
    let reply = request(&mut bob, "bob", "sync", json!({"conv": "d.alice.bob"})).await;
    assert_eq!(texts(&reply), ["before"]);
    assert!(
        sent.elapsed() < BOUND,
        "history reads waited for the writer: {:?}",
        sent.elapsed()
    );
    // 5.0: no PUBACK while the writer retries, then 0x80 so the client sends again.
    assert_eq!(puback(&mut alice).await, PubAckReason::UnspecifiedError);
    assert!(
        sent.elapsed() >= BOUND - Duration::from_millis(100),
        "refused before the retry bound: {:?}",
        sent.elapsed()
    );

    // 3.1.1 has no negative acknowledgement: no PUBACK ever, the connection is closed instead.
    let sent = Instant::now();
    old.client
        .publish(
            "c/d.alice.bob/m",
            rumqttc::QoS::AtLeastOnce,
            false,
            "blocked too",
        )
        .await
        .unwrap();
    loop {
        match old.next().await {
            Ok(v4::Incoming::PubAck(a)) => panic!("acknowledged without a commit: {a:?}"),
            Ok(_) => continue,
            Err(_) => break,
        }
    }
    assert!(
        sent.elapsed() >= BOUND - Duration::from_millis(100),
        "disconnected before the retry bound: {:?}",
        sent.elapsed()
    );

    // Space is back: new messages are acknowledged and stored, the refused ones never were.
    drop(lock);
    assert_eq!(
        send(&mut alice, "c/d.alice.bob/m", "after").await,
        PubAckReason::Success
    );
    let reply = request(&mut bob, "bob", "sync", json!({"conv": "d.alice.bob"})).await;
    assert_eq!(texts(&reply), ["before", "after"]);
    assert_eq!(seqs(&reply), [1, 2]);
}
