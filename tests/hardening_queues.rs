//! Hardening: what a client that stops reading can make the server hold is bounded in bytes
//! (`mqtt.max_queued_bytes`: a session's queue, its in-flight window, its mailbox), and so is
//! the retained store (`mqtt.max_retained_bytes`). Each test publishes far more than the
//! bounds to a subscriber that has stopped reading, then lets it read and checks what arrives:
//! what the server held for it.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{RawClient, TestServer};
use natter::config::QueueOverflow;
use rumqttc::v5::mqttbytes::v5::{
    Connect, ConnectProperties, ConnectReturnCode, Filter, Packet, PubAck, Publish, Subscribe,
};
use rumqttc::v5::mqttbytes::QoS;

/// The payload of each message: 100 kB, so a `max_queued_bytes` of 1,050,000 holds ten.
const SIZE: usize = 100_000;
const BUDGET: usize = 1_050_000;

/// An anonymous 5.0 client (the test server has no ACL).
async fn connect(server: &TestServer, id: &str) -> RawClient {
    let mut c = RawClient::connect(server.mqtt).await;
    let connect = Connect {
        keep_alive: 0,
        client_id: id.into(),
        clean_start: true,
        properties: Some(ConnectProperties::new()),
    };
    c.send(Packet::Connect(connect, None, None)).await;
    match c.recv().await {
        Some(Packet::ConnAck(a)) => assert_eq!(a.code, ConnectReturnCode::Success),
        other => panic!("no CONNACK: {other:?}"),
    }
    c
}

async fn subscribe(c: &mut RawClient, filter: &str, qos: QoS) {
    c.send(Packet::Subscribe(Subscribe::new(
        Filter::new(filter, qos),
        None,
    )))
    .await;
    loop {
        if let Some(Packet::SubAck(_)) = c.recv().await {
            return;
        }
    }
}

/// A message of `SIZE` bytes whose payload starts with its number.
fn numbered(topic: &str, n: usize, qos: QoS) -> Packet {
    let mut payload = format!("{n:05}").into_bytes();
    payload.resize(SIZE, b'.');
    let mut p = Publish::new(topic, qos, payload, None);
    p.pkid = u16::try_from(n + 1).unwrap();
    Packet::Publish(p)
}

fn number(p: &Publish) -> usize {
    std::str::from_utf8(&p.payload[..5])
        .unwrap()
        .parse()
        .unwrap()
}

/// The server's `natter_{name}` counter from `/metrics`.
async fn metric(server: &TestServer, name: &str) -> u64 {
    let text = reqwest::get(format!("http://{}/metrics", server.http))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let prefix = format!("natter_{name} ");
    let line = text.lines().find(|l| l.starts_with(&prefix));
    line.and_then(|l| l[prefix.len()..].parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {text}"))
}

/// Reads publishes (acknowledging QoS 1 ones) until `last` arrives, then for a quiet moment
/// more; returns the numbers of all of them.
async fn read_until(c: &mut RawClient, last: usize) -> Vec<usize> {
    let mut got = Vec::new();
    let quiet = Duration::from_millis(300);
    loop {
        let wait = if got.last() == Some(&last) {
            quiet
        } else {
            common::WAIT
        };
        let Ok(packet) = c.recv_within(wait).await else {
            assert_eq!(got.last(), Some(&last), "never got {last}: {got:?}");
            return got;
        };
        match packet {
            Some(Packet::Publish(p)) => {
                if p.qos == QoS::AtLeastOnce {
                    c.send(Packet::PubAck(PubAck::new(p.pkid, None))).await;
                }
                got.push(number(&p));
            }
            Some(_) => {}
            None => panic!("connection closed after {got:?}"),
        }
    }
}

/// A server whose queues hold `BUDGET` bytes (and a thousand messages: the byte bound is the
/// one reached), with a window of 4 and no publish rate limit.
fn server(overflow: QueueOverflow) -> TestServer {
    TestServer::start_with(|c| {
        c.mqtt.max_inflight = 4;
        c.mqtt.max_queued_bytes = BUDGET;
        c.mqtt.queue_overflow = overflow;
        c.limits.publish_rate = 0;
    })
}

/// Publishes 100 QoS 1 messages of 100 kB to a subscriber that has stopped reading; returns
/// what it gets once it reads, and the server's dropped count.
async fn qos1_to_a_stalled_reader(overflow: QueueOverflow) -> (Vec<usize>, u64) {
    let server = server(overflow);
    let mut reader = connect(&server, "reader").await;
    subscribe(&mut reader, "load/#", QoS::AtLeastOnce).await;
    let mut writer = connect(&server, "writer").await;
    for n in 0..100 {
        writer.send(numbered("load/x", n, QoS::AtLeastOnce)).await;
    }
    // Each PUBACK follows its message's hand-over to the router, and the reader's PUBACKs reach
    // the router after all of them.
    let mut acked = 0;
    while acked < 100 {
        if let Some(Packet::PubAck(_)) = writer.recv().await {
            acked += 1;
        }
    }
    let last = match overflow {
        QueueOverflow::DropOldest => 99,
        QueueOverflow::DropNewest => 13,
    };
    let got = read_until(&mut reader, last).await;
    (got, metric(&server, "messages_dropped_total").await)
}

#[tokio::test]
async fn a_stalled_readers_queue_holds_max_queued_bytes_dropping_the_oldest() {
    let (got, dropped) = qos1_to_a_stalled_reader(QueueOverflow::DropOldest).await;
    // The window's 4, then the newest 10 (10 × 100 kB fit in 1,050,000 bytes, 11 do not).
    let expected: Vec<usize> = (0..4).chain(90..100).collect();
    assert_eq!(got, expected);
    assert_eq!(dropped, 86);
}

#[tokio::test]
async fn a_stalled_readers_queue_holds_max_queued_bytes_dropping_the_newest() {
    let (got, dropped) = qos1_to_a_stalled_reader(QueueOverflow::DropNewest).await;
    let expected: Vec<usize> = (0..14).collect();
    assert_eq!(got, expected);
    assert_eq!(dropped, 86);
}

#[tokio::test]
async fn a_stalled_readers_qos0_messages_are_bounded_in_bytes() {
    const COUNT: usize = 400;
    let server = server(QueueOverflow::DropOldest);
    let mut reader = connect(&server, "reader").await;
    subscribe(&mut reader, "load/#", QoS::AtMostOnce).await;
    let mut writer = connect(&server, "writer").await;
    subscribe(&mut writer, "sync", QoS::AtMostOnce).await;
    for n in 0..COUNT {
        writer.send(numbered("load/x", n, QoS::AtMostOnce)).await;
    }
    // The router handles one connection's messages in order: once the writer has its own
    // message back, every one before it has reached the reader's mailbox or been dropped.
    writer.send(numbered("sync", 0, QoS::AtMostOnce)).await;
    writer.publish().await;
    let got = read_until(&mut reader, COUNT - 1).await;
    // What waited in the mailbox: the newest 10, and not one more (those between were dropped).
    // Before it, what the socket's buffers and the connection's write batch held when the
    // reader stopped: about 50 here (4 MB of send buffer on loopback), depending on the
    // kernel's settings. With nothing bounding the mailbox's bytes, all 400 (40 MB) arrive.
    let newest: Vec<usize> = (COUNT - 10..COUNT).collect();
    let (before, last_ten) = got.split_at(got.len().saturating_sub(10));
    assert_eq!(last_ten, newest, "{got:?}");
    assert!(before.last() < Some(&(COUNT - 11)), "{got:?}");
    assert!(got.windows(2).all(|w| w[0] < w[1]), "{got:?}");
    assert!(got.len() <= COUNT / 2, "{} of {COUNT} arrived", got.len());
    let dropped = metric(&server, "messages_dropped_total").await;
    assert_eq!(dropped, (COUNT - got.len()) as u64);
}

/// Publishes a retained message of `size` bytes (payload and topic) on `topic`.
async fn retain(c: &mut RawClient, topic: &str, size: usize) {
    let payload = Bytes::from(vec![b'r'; size - topic.len()]);
    let mut p = Publish::new(topic, QoS::AtLeastOnce, payload, None);
    p.retain = true;
    p.pkid = 1;
    c.send(Packet::Publish(p)).await;
    while !matches!(c.recv().await, Some(Packet::PubAck(_))) {}
}

/// The retained messages a new subscription to `r/#` gets: (topic, size) in topic order.
async fn retained(server: &TestServer) -> Vec<(String, usize)> {
    let mut c = connect(server, "looker").await;
    subscribe(&mut c, "r/#", QoS::AtMostOnce).await;
    // Sent after the subscription's retained messages, so it arrives after them.
    c.send(Packet::Publish(Publish::new(
        "r/~end",
        QoS::AtMostOnce,
        "end",
        None,
    )))
    .await;
    let mut got = Vec::new();
    loop {
        let p = c.publish().await;
        let topic = String::from_utf8(p.topic.to_vec()).unwrap();
        if topic == "r/~end" {
            return got;
        }
        got.push((topic, p.topic.len() + p.payload.len()));
    }
}

#[tokio::test]
async fn the_retained_store_keeps_max_retained_bytes() {
    // The sizes leave 10 kB of room for the retained `$SYS` topics.
    let server = TestServer::start_with(|c| c.mqtt.max_retained_bytes = 300_000);
    let mut c = connect(&server, "keeper").await;
    retain(&mut c, "r/1", 100_000).await;
    retain(&mut c, "r/2", 100_000).await;
    retain(&mut c, "r/3", 110_000).await;
    let kept = |list: &[(&str, usize)]| -> Vec<(String, usize)> {
        list.iter().map(|(t, s)| (t.to_string(), *s)).collect()
    };
    assert_eq!(
        retained(&server).await,
        kept(&[("r/1", 100_000), ("r/2", 100_000)]),
        "310,000 bytes do not fit in 300,000"
    );
    // A smaller replacement counts the difference, and so makes room for a new topic.
    retain(&mut c, "r/1", 50_000).await;
    retain(&mut c, "r/3", 140_000).await;
    assert_eq!(
        retained(&server).await,
        kept(&[("r/1", 50_000), ("r/2", 100_000), ("r/3", 140_000)])
    );
    // A larger replacement that does not fit is not kept, and the message it would have
    // replaced, no longer the topic's latest, is forgotten.
    retain(&mut c, "r/2", 120_000).await;
    assert_eq!(
        retained(&server).await,
        kept(&[("r/1", 50_000), ("r/3", 140_000)])
    );
    assert_eq!(metric(&server, "retained_refused_total").await, 2);
}
