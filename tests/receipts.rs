//! Delivered receipts from the recipient device's own PUBACK, read markers, unread counts,
//! presence the server derives from connections (abrupt drops included), and typing.

mod common;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use common::chat::*;
use common::clients::v5;
use common::{RawClient, TestServer};
use rumqttc::v5::mqttbytes::v5::{Filter, Packet, PubAck, Publish, Subscribe, SubscribeReasonCode};
use rumqttc::v5::mqttbytes::QoS;
use serde_json::{json, Value};

/// A device that acknowledges nothing unless told to.
async fn raw_login(server: &TestServer, user: &str, id: &str, keep_alive: u16) -> RawClient {
    RawClient::login(server.mqtt, user, password(user), id, keep_alive).await
}

async fn raw_subscribe(c: &mut RawClient, filter: &str) {
    c.send(Packet::Subscribe(Subscribe::new(
        Filter::new(filter, QoS::AtLeastOnce),
        None,
    )))
    .await;
    loop {
        if let Some(Packet::SubAck(a)) = c.recv().await {
            assert_eq!(
                a.return_codes,
                [SubscribeReasonCode::Success(QoS::AtLeastOnce)]
            );
            return;
        }
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn json_of(p: &rumqttc::v5::mqttbytes::v5::Publish) -> Value {
    serde_json::from_slice(&p.payload).unwrap()
}

/// The next read marker on the receipt topic `topic`, skipping delivered receipts.
async fn read_marker(c: &mut v5::Client, topic: &str) -> Value {
    loop {
        let r = json_of(&publish_on(c, topic).await);
        if r["type"] == "read" {
            return r;
        }
    }
}

#[tokio::test]
async fn delivered_only_after_the_recipient_device_acknowledges() {
    let server = TestServer::start_with_users(USERS, |_| {});
    let mut alice = login(&server, "alice").await;
    let mut bob = raw_login(&server, "bob", "bob.phone", 30).await;
    raw_subscribe(&mut bob, "u/bob/#").await;

    alice
        .client
        .publish("c/d.alice.bob/m", QoS::AtLeastOnce, false, "are you there?")
        .await
        .unwrap();
    let delivered = bob.publish().await;
    // Bob's device has not acknowledged: no receipt, even after a few batching intervals.
    alice
        .publishes_within(Duration::from_millis(2500), |p| {
            assert_ne!(
                p.topic, "u/alice/c/d.alice.bob/r",
                "receipt before any PUBACK: {p:?}"
            )
        })
        .await;
    bob.send(Packet::PubAck(PubAck::new(delivered.pkid, None)))
        .await;
    let receipt = json_of(&publish_on(&mut alice, "u/alice/c/d.alice.bob/r").await);
    assert_eq!(
        receipt,
        json!({"type": "delivered", "conv": "d.alice.bob", "user": "bob", "seq": 1})
    );

    // Stored: a sender who was away learns it from sync.
    let reply = request(&mut alice, "alice", "sync", json!({"conv": "d.alice.bob"})).await;
    assert_eq!(
        reply["receipts"],
        json!([{"user": "bob", "delivered": 1, "read": 0}])
    );
}

#[tokio::test]
async fn a_server_without_delivery_receipts_records_and_sends_none() {
    let server = TestServer::start_with_users(USERS, |c| {
        c.chat.delivery_receipts = false;
        c.chat.receipt_interval_ms = 100;
    });
    let mut alice = login(&server, "alice").await;
    let mut bob = raw_login(&server, "bob", "bob.phone", 30).await;
    raw_subscribe(&mut bob, "u/bob/#").await;
    alice
        .client
        .publish("c/d.alice.bob/m", QoS::AtLeastOnce, false, "no receipts")
        .await
        .unwrap();
    let delivered = bob.publish().await;
    bob.send(Packet::PubAck(PubAck::new(delivered.pkid, None)))
        .await;
    // Read markers still work; they are the next thing on the receipt topic, no delivered
    // receipt before them (many batching intervals later: time is what this waits for, as a
    // receipt that never comes has no event to wait on).
    tokio::time::sleep(Duration::from_millis(1000)).await;
    bob.send(Packet::Publish(Publish::new(
        "c/d.alice.bob/r",
        QoS::AtMostOnce,
        Bytes::from(r#"{"read": 1}"#),
        None,
    )))
    .await;
    let marker = json_of(&publish_on(&mut alice, "u/alice/c/d.alice.bob/r").await);
    assert_eq!(marker["type"], "read", "{marker}");
    let reply = request(&mut alice, "alice", "sync", json!({"conv": "d.alice.bob"})).await;
    assert_eq!(
        reply["receipts"],
        json!([{"user": "bob", "delivered": 0, "read": 1}])
    );
}

#[tokio::test]
async fn receipts_for_many_acknowledgements_are_batched_into_one_event() {
    let interval = Duration::from_millis(1000);
    let server = TestServer::start_with_users(USERS, |c| {
        c.chat.receipt_interval_ms = interval.as_millis() as u64;
    });
    let mut alice = login(&server, "alice").await;
    let mut bob = raw_login(&server, "bob", "bob.phone", 30).await;
    raw_subscribe(&mut bob, "u/bob/#").await;
    for i in 1..=10 {
        alice
            .client
            .publish("c/d.alice.bob/m", QoS::AtLeastOnce, false, format!("m{i}"))
            .await
            .unwrap();
    }
    let mut pkids = Vec::new();
    while pkids.len() < 10 {
        match bob.recv().await {
            Some(Packet::Publish(p)) => pkids.push(p.pkid),
            Some(_) => continue,
            None => panic!("bob closed"),
        }
    }
    // All ten acknowledgements in one write, so they land within one batching interval.
    let mut acks = bytes::BytesMut::new();
    for pkid in pkids {
        Packet::PubAck(PubAck::new(pkid, None))
            .write(&mut acks, None)
            .unwrap();
    }
    bob.send_bytes(&acks).await;
    let acked = Instant::now();
    let receipt = json_of(&publish_on(&mut alice, "u/alice/c/d.alice.bob/r").await);
    assert_eq!(
        receipt,
        json!({"type": "delivered", "conv": "d.alice.bob", "user": "bob", "seq": 10})
    );
    // Out at the next batching tick (up to one interval away), then stored and routed.
    assert!(acked.elapsed() <= interval * 2, "{:?}", acked.elapsed());
    // Nothing more acknowledged: no further receipt, however many intervals pass.
    alice
        .publishes_within(interval * 3, |p| {
            assert_ne!(
                p.topic, "u/alice/c/d.alice.bob/r",
                "a second receipt: {p:?}"
            )
        })
        .await;
}

#[tokio::test]
async fn read_markers_reach_the_sender_and_the_readers_other_devices_unless_private() {
    let server = TestServer::start_with_users(USERS, |_| {});
    let mut alice = login(&server, "alice").await;
    let mut bob = login(&server, "bob").await;
    let mut tablet = login_device(&server, "bob", "tablet").await;
    for t in ["one", "two", "three"] {
        alice
            .client
            .publish("c/d.alice.bob/m", QoS::AtLeastOnce, false, t)
            .await
            .unwrap();
    }
    for _ in 0..3 {
        publish_on(&mut bob, "u/bob/c/d.alice.bob/m").await;
    }
    let reply = request(&mut bob, "bob", "sync", json!({"conv": "d.alice.bob"})).await;
    assert_eq!(reply["unread"], 3);

    bob.client
        .publish(
            "c/d.alice.bob/r",
            QoS::AtLeastOnce,
            false,
            json!({"read": 2}).to_string(),
        )
        .await
        .unwrap();
    let want = json!({"type": "read", "conv": "d.alice.bob", "user": "bob", "seq": 2});
    assert_eq!(
        read_marker(&mut alice, "u/alice/c/d.alice.bob/r").await,
        want
    );
    assert_eq!(
        read_marker(&mut tablet, "u/bob/c/d.alice.bob/r").await,
        want
    );
    let reply = request(&mut bob, "bob", "conversations", json!({})).await;
    assert_eq!(reply["conversations"][0]["unread"], 1, "{reply}");

    // Private: the tablet hears of it, Alice does not.
    bob.client
        .publish(
            "c/d.alice.bob/r",
            QoS::AtLeastOnce,
            false,
            json!({"read": 3, "private": true}).to_string(),
        )
        .await
        .unwrap();
    // The tablet hears of the private marker (seq 3), after any earlier ones.
    while read_marker(&mut tablet, "u/bob/c/d.alice.bob/r").await["seq"] != 3 {}
    alice
        .publishes_within(Duration::from_millis(1500), |p| {
            if p.topic == "u/alice/c/d.alice.bob/r" {
                assert_ne!(
                    json_of(&p)["type"],
                    "read",
                    "a private read marker reached the sender"
                );
            }
        })
        .await;
    let reply = request(&mut bob, "bob", "sync", json!({"conv": "d.alice.bob"})).await;
    assert_eq!(reply["unread"], 0);
    // Markers never go back.
    bob.client
        .publish(
            "c/d.alice.bob/r",
            QoS::AtLeastOnce,
            false,
            json!({"read": 1}).to_string(),
        )
        .await
        .unwrap();
    let reply = request(&mut alice, "alice", "sync", json!({"conv": "d.alice.bob"})).await;
    assert_eq!(reply["receipts"][0]["read"], 2, "{reply}");
}

#[tokio::test]
async fn presence_follows_connections_with_a_grace_period() {
    let server = TestServer::start_with_users(USERS, |c| c.chat.presence_grace_secs = 1);
    let mut alice = login(&server, "alice").await;
    let reply = request(
        &mut alice,
        "alice",
        "group.create",
        json!({"id": "pals", "members": ["bob"]}),
    )
    .await;
    assert_eq!(reply["ok"], true);
    alice
        .client
        .subscribe("p/bob", QoS::AtLeastOnce)
        .await
        .unwrap();
    alice.suback().await;

    // Bob's phone connects (keep alive 1 s), then goes silent, as a killed app would. The
    // server's keep-alive clock starts after this instant, however late "online" reaches Alice.
    let connecting = Instant::now();
    let bob = raw_login(&server, "bob", "bob.phone", 1).await;
    let online = json_of(&publish_on(&mut alice, "p/bob").await);
    assert_eq!(online["status"], "online");
    let gone_ms = now_ms();
    let offline = json_of(&publish_on(&mut alice, "p/bob").await);
    assert_eq!(offline["status"], "offline");
    // Last seen when the server noticed the phone gone (keep alive, 1.5 s), not when the grace
    // period ended a second later.
    let last_seen = offline["last_seen"].as_i64().unwrap();
    assert!(
        last_seen >= gone_ms && last_seen <= gone_ms + 1500 + 400,
        "last_seen {} ms after the phone went silent",
        last_seen - gone_ms
    );
    // Keep alive (1.5 s) + grace (1 s), give or take a tick.
    let took = connecting.elapsed();
    assert!(
        took >= Duration::from_millis(2000) && took < Duration::from_millis(4500),
        "{took:?}"
    );
    drop(bob);

    // A quick reconnect inside the grace period does not flap.
    let phone = raw_login(&server, "bob", "bob.phone", 30).await;
    assert_eq!(
        json_of(&publish_on(&mut alice, "p/bob").await)["status"],
        "online"
    );
    phone.vanish();
    let _again = raw_login(&server, "bob", "bob.phone", 30).await;
    alice.no_publish(Duration::from_millis(2000)).await;

    // Away, by request.
    let (mut bob5, _) = v5::Client::connect(opts(&server, "bob", "bob.desk")).await;
    bob5.client
        .subscribe("u/bob/#", QoS::AtLeastOnce)
        .await
        .unwrap();
    bob5.suback().await;
    let reply = request(&mut bob5, "bob", "presence", json!({"status": "away"})).await;
    assert_eq!(reply["ok"], true);
    assert_eq!(
        json_of(&publish_on(&mut alice, "p/bob").await)["status"],
        "away"
    );
    // Nobody may write presence themselves.
    bob5.client
        .publish("p/bob", QoS::AtLeastOnce, true, "{\"status\":\"online\"}")
        .await
        .unwrap();
    loop {
        if let v5::Incoming::PubAck(a) = bob5.next().await.unwrap() {
            assert_eq!(
                a.reason,
                rumqttc::v5::mqttbytes::v5::PubAckReason::NotAuthorized
            );
            break;
        }
    }
}

#[tokio::test]
async fn non_members_see_neither_presence_nor_typing() {
    let server = TestServer::start_with_users(USERS, |_| {});
    let alice = login(&server, "alice").await;
    let mut bob = login(&server, "bob").await;
    let mut eve = login(&server, "eve").await;
    assert_eq!(
        subscribe(&mut eve, "p/bob").await,
        SubscribeReasonCode::NotAuthorized
    );
    subscribe(&mut eve, "p/+").await;
    subscribe(&mut eve, "c/+/t").await;
    // Bob reconnects on another device (presence stays online) and Alice types twice quickly,
    // then once more on her second device: the limit is per user, not per device.
    let _bob2 = raw_login(&server, "bob", "bob.two", 30).await;
    let alice2 = login_device(&server, "alice", "tablet").await;
    for c in [&alice, &alice, &alice2] {
        c.client
            .publish("c/d.alice.bob/t", QoS::AtMostOnce, false, Bytes::new())
            .await
            .unwrap();
    }
    let typing = json_of(&publish_on(&mut bob, "u/bob/c/d.alice.bob/t").await);
    assert_eq!(
        typing,
        json!({"type": "typing", "conv": "d.alice.bob", "user": "alice"})
    );
    // Only one of the three went through (one per second), and Eve saw nothing at all.
    bob.publishes_within(Duration::from_millis(500), |p| {
        assert_ne!(p.topic, "u/bob/c/d.alice.bob/t", "typing not rate limited")
    })
    .await;
    eve.no_publish(Duration::from_millis(300)).await;
}

/// A device that speaks MessagePack sends its read markers in it too.
#[tokio::test]
async fn a_read_marker_in_messagepack_is_read_like_json() {
    let server = TestServer::start_with_users(USERS, |_| {});
    let mut alice = login(&server, "alice").await;
    let mut bob = login(&server, "bob").await;
    alice
        .client
        .publish("c/d.alice.bob/m", QoS::AtLeastOnce, false, "one")
        .await
        .unwrap();
    publish_on(&mut bob, "u/bob/c/d.alice.bob/m").await;
    let marker = rmp_serde::to_vec_named(&json!({"read": 1})).unwrap();
    bob.client
        .publish("c/d.alice.bob/r", QoS::AtLeastOnce, false, marker)
        .await
        .unwrap();
    let want = json!({"type": "read", "conv": "d.alice.bob", "user": "bob", "seq": 1});
    assert_eq!(
        read_marker(&mut alice, "u/alice/c/d.alice.bob/r").await,
        want
    );
}
