//! Hardening of topics and subscriptions: caps on topic depth and length, iterative trie
//! walks, shared groups that skip members who may not read, response topics, `q/` filters,
//! presence permission following the commit, and SUBSCRIBE/PUBLISH ordering.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::chat::{self, USERS};
use common::clients::{v4, v5};
use common::{RawClient, TestServer};
use rumqttc::v5::mqttbytes::v5::{
    Disconnect, DisconnectReasonCode, Filter, Packet, PubAck, PubAckReason, Publish,
    PublishProperties, RetainForwardRule, Subscribe, SubscribeReasonCode, UnsubAckReason,
    Unsubscribe,
};
use rumqttc::v5::mqttbytes::QoS;
use serde_json::Value;

fn filter(path: &str, qos: QoS) -> Filter {
    Filter {
        path: path.into(),
        qos,
        nolocal: false,
        preserve_retain: false,
        retain_forward_rule: RetainForwardRule::OnEverySubscribe,
    }
}

async fn subscribe(c: &mut RawClient, pkid: u16, path: &str) -> Vec<SubscribeReasonCode> {
    c.send(Packet::Subscribe(Subscribe {
        pkid,
        filters: vec![filter(path, QoS::AtLeastOnce)],
        properties: None,
    }))
    .await;
    loop {
        match c.recv().await {
            Some(Packet::SubAck(a)) if a.pkid == pkid => return a.return_codes,
            Some(_) => continue,
            None => panic!("closed while waiting for SUBACK"),
        }
    }
}

/// Publishes at QoS 1 and returns the PUBACK's reason code.
async fn publish_with(
    c: &mut RawClient,
    pkid: u16,
    topic: &str,
    payload: &str,
    properties: Option<PublishProperties>,
) -> PubAckReason {
    let mut p = Publish::new(topic, QoS::AtLeastOnce, payload.to_string(), properties);
    p.pkid = pkid;
    c.send(Packet::Publish(p)).await;
    loop {
        match c.recv().await {
            Some(Packet::PubAck(a)) if a.pkid == pkid => return a.reason,
            Some(_) => continue,
            None => panic!("closed while waiting for PUBACK"),
        }
    }
}

async fn publish_acked(c: &mut RawClient, pkid: u16, topic: &str, payload: &str) {
    assert_eq!(
        publish_with(c, pkid, topic, payload, None).await,
        PubAckReason::Success
    );
}

fn users() -> TestServer {
    TestServer::start_with_users(USERS, |_| {})
}

async fn raw_login(server: &TestServer, user: &str, device: &str) -> RawClient {
    let id = format!("{user}.{device}");
    RawClient::login(server.mqtt, user, chat::password(user), &id, 30).await
}

/// A topic (or filter) of `levels` copies of `level`.
fn deep(level: &str, levels: usize) -> String {
    vec![level; levels].join("/")
}

/// A SUBSCRIBE of 16,000 `+` levels (32 KB), its UNSUBSCRIBE, a PUBLISH that deep and the
/// disconnect used to overflow the router's stack and abort the process. Now the filter and
/// the topic are refused at the caps and the server goes on serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filter_of_16000_levels_is_refused_and_the_server_serves_on() {
    let server = users();
    let mut c = raw_login(&server, "alice", "deep").await;
    let filter = deep("+", 16_000);
    assert_eq!(
        subscribe(&mut c, 1, &filter).await,
        [SubscribeReasonCode::TopicFilterInvalid]
    );
    c.send(Packet::Unsubscribe(Unsubscribe {
        pkid: 2,
        filters: vec![filter],
        properties: None,
    }))
    .await;
    match c.recv().await {
        Some(Packet::UnsubAck(a)) => assert_eq!(a.reasons, [UnsubAckReason::TopicFilterInvalid]),
        other => panic!("expected UNSUBACK, got {other:?}"),
    }
    assert_eq!(
        publish_with(&mut c, 3, &deep("a", 16_000), "x", None).await,
        PubAckReason::TopicNameInvalid
    );
    c.send(Packet::Disconnect(Disconnect::new(
        DisconnectReasonCode::NormalDisconnection,
    )))
    .await;
    assert!(c.closed().await.is_none());

    // Within the caps (4096 bytes, 128 levels) all is as before; one level more is refused.
    let mut c = raw_login(&server, "alice", "after").await;
    assert_eq!(
        subscribe(&mut c, 1, &deep("+", 129)).await,
        [SubscribeReasonCode::TopicFilterInvalid]
    );
    let topic = deep("a", 128);
    assert_eq!(
        subscribe(&mut c, 2, &deep("+", 128)).await,
        [SubscribeReasonCode::Success(QoS::AtLeastOnce)]
    );
    publish_acked(&mut c, 3, &topic, "still here").await;
    assert_eq!(c.publish().await.topic, Bytes::from(topic));
}

/// 3.1.1 has no 0x8F: a filter beyond the caps gets the failure code 0x80, and a PUBLISH
/// beyond them ends the connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_3_1_1_too_deep_filters_get_0x80_and_too_deep_names_disconnect() {
    let server = users();
    let mut o = v4::MqttOptions::new("bob.v4", "127.0.0.1", server.port());
    o.set_credentials("bob", chat::password("bob"));
    o.set_max_packet_size(1 << 20, 1 << 20);
    let (mut c, _) = v4::Client::connect(o).await;
    c.client
        .subscribe(deep("+", 16_000), rumqttc::QoS::AtLeastOnce)
        .await
        .unwrap();
    match c.suback().await {
        v4::Incoming::SubAck(a) => {
            assert_eq!(a.return_codes, [rumqttc::SubscribeReasonCode::Failure])
        }
        other => panic!("{other:?}"),
    }
    c.client
        .publish(deep("a", 200), rumqttc::QoS::AtLeastOnce, false, "x")
        .await
        .unwrap();
    c.ended().await;
}

/// A shared group's message goes to a member who may read it: eve, in the group through a
/// wide filter but no member of the conversation, must not take (and drop) half of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_groups_deliver_only_to_members_who_may_read() {
    let server = users();
    let mut alice = chat::login(&server, "alice").await;
    let mut members = Vec::new();
    for user in ["bob", "eve"] {
        let (mut c, _) = v5::Client::connect(chat::opts(&server, user, &format!("{user}.s"))).await;
        assert_eq!(
            chat::subscribe(&mut c, "$share/g/c/+/m").await,
            SubscribeReasonCode::Success(QoS::AtLeastOnce)
        );
        members.push(c);
    }
    for i in 0..10 {
        alice
            .client
            .publish("c/d.alice.bob/m", QoS::AtLeastOnce, false, format!("m{i}"))
            .await
            .unwrap();
    }
    alice.pubacks(10).await;
    let [bob, eve] = &mut members[..] else {
        unreachable!()
    };
    for i in 0..10 {
        assert_eq!(chat::text(&bob.publish().await), format!("m{i}"));
    }
    eve.no_publish(Duration::from_millis(300)).await;
}

/// A 5.0 response topic must be a topic name: `u/alice/#` used to make the server publish the
/// reply to a wildcard topic. Now the request is refused (PUBACK 0x90, and a `bad_request`
/// event saying why); a valid response topic in the user's stream still gets the reply.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_topic_with_a_wildcard_is_refused() {
    let server = users();
    let mut c = raw_login(&server, "alice", "rt").await;
    subscribe(&mut c, 1, "u/alice/#").await;
    let with_response = |t: &str| {
        Some(PublishProperties {
            response_topic: Some(t.into()),
            ..Default::default()
        })
    };
    let reason = publish_with(
        &mut c,
        2,
        "q/alice/conversations",
        "{}",
        with_response("u/alice/#"),
    )
    .await;
    assert_eq!(reason, PubAckReason::TopicNameInvalid);
    let event = c.publish().await;
    assert_eq!(event.topic, Bytes::from("u/alice/errors"));
    let body: Value = serde_json::from_slice(&event.payload).unwrap();
    assert_eq!(body["error"], "bad_request", "{body}");

    let reason = publish_with(
        &mut c,
        3,
        "q/alice/conversations",
        "{}",
        with_response("u/alice/answers"),
    )
    .await;
    assert_eq!(reason, PubAckReason::Success);
    let reply = c.publish().await;
    assert_eq!(reply.topic, Bytes::from("u/alice/answers"));
}

/// topics.md: no `q/…` filter is granted, whatever its wildcards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_filters_are_refused_even_with_wildcards() {
    let server = users();
    let mut c = raw_login(&server, "bob", "q").await;
    for (pkid, filter) in [(1, "q/#"), (2, "q/+/sync"), (3, "q/bob/sync")] {
        assert_eq!(
            subscribe(&mut c, pkid, filter).await,
            [SubscribeReasonCode::NotAuthorized],
            "{filter}"
        );
    }
}

/// After the first direct message is acknowledged, the two users share a conversation: an
/// explicit `p/{other}` subscription is granted at once, not after the next reload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_is_readable_as_soon_as_the_first_direct_message_is_acknowledged() {
    let server = users();
    let mut bob = raw_login(&server, "bob", "p").await;
    assert_eq!(
        subscribe(&mut bob, 1, "p/alice").await,
        [SubscribeReasonCode::NotAuthorized]
    );
    let mut alice = raw_login(&server, "alice", "p").await;
    publish_acked(&mut alice, 1, "c/d.alice.bob/m", "hi bob").await;
    assert_eq!(
        subscribe(&mut bob, 2, "p/alice").await,
        [SubscribeReasonCode::Success(QoS::AtLeastOnce)]
    );
}

/// A SUBSCRIBE answered with SUBACK is in force for every PUBLISH the router receives after
/// it: 100 tries of subscribe, then another client's QoS 1 publish, all delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_acknowledged_sees_the_next_publish_of_another_client() {
    let server = TestServer::start_with_users(USERS, |_| {});
    let mut sub = RawClient::login(server.mqtt, "alice", "pw-a", "alice.sub", 30).await;
    let mut publ = RawClient::login(server.mqtt, "bob", "pw-b", "bob.pub", 30).await;
    let mut received = 0;
    for i in 1..=100u16 {
        let topic = format!("order/{i}");
        assert_eq!(
            subscribe(&mut sub, i, &topic).await,
            [SubscribeReasonCode::Success(QoS::AtLeastOnce)]
        );
        publish_acked(&mut publ, i, &topic, "x").await;
        match sub.recv_within(Duration::from_secs(2)).await {
            Ok(Some(Packet::Publish(p))) => {
                assert_eq!(p.topic, Bytes::from(topic));
                sub.send(Packet::PubAck(PubAck::new(p.pkid, None))).await;
                received += 1;
            }
            other => eprintln!("try {i}: {other:?}"),
        }
    }
    assert_eq!(received, 100);
}
