//! MQTT 5.0 behaviour, packet by packet: a bare client (`RawClient`) sends exactly what each
//! test needs and sees exactly what the server answers, reason codes and properties included.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{RawClient, TestServer};
use rumqttc::v5::mqttbytes::v5::{
    ConnAck, Connect, ConnectProperties, ConnectReturnCode, Disconnect, DisconnectReasonCode,
    Filter, LastWill, LastWillProperties, Login, Packet, PingReq, PubAck, PubAckReason, PubComp,
    PubCompReason, PubRec, PubRel, Publish, PublishProperties, RetainForwardRule, SubAck,
    Subscribe, SubscribeProperties, SubscribeReasonCode,
};
use rumqttc::v5::mqttbytes::QoS;

struct Opts {
    clean: bool,
    props: ConnectProperties,
    will: Option<LastWill>,
    login: Option<Login>,
    keep_alive: u16,
}

impl Default for Opts {
    fn default() -> Self {
        Opts {
            clean: true,
            props: ConnectProperties::new(),
            will: None,
            login: None,
            keep_alive: 30,
        }
    }
}

async fn connect_with(server: &TestServer, id: &str, o: Opts) -> (RawClient, ConnAck) {
    let mut c = RawClient::connect(server.mqtt).await;
    let connect = Connect {
        keep_alive: o.keep_alive,
        client_id: id.into(),
        clean_start: o.clean,
        properties: Some(o.props),
    };
    c.send(Packet::Connect(connect, o.will, o.login)).await;
    match c.recv().await {
        Some(Packet::ConnAck(ack)) => (c, ack),
        other => panic!("expected CONNACK, got {other:?}"),
    }
}

async fn connect(server: &TestServer, id: &str) -> RawClient {
    let (c, ack) = connect_with(server, id, Opts::default()).await;
    assert_eq!(ack.code, ConnectReturnCode::Success);
    c
}

fn expiring(secs: u32) -> Opts {
    let mut o = Opts::default();
    o.props.session_expiry_interval = Some(secs);
    o
}

async fn subscribe_filter(
    c: &mut RawClient,
    pkid: u16,
    filter: Filter,
    id: Option<usize>,
) -> SubAck {
    let props = id.map(|id| SubscribeProperties {
        id: Some(id),
        user_properties: Vec::new(),
    });
    c.send(Packet::Subscribe(Subscribe {
        pkid,
        filters: vec![filter],
        properties: props,
    }))
    .await;
    loop {
        match c.recv().await {
            Some(Packet::SubAck(ack)) => return ack,
            Some(_) => continue,
            None => panic!("closed while waiting for SUBACK"),
        }
    }
}

async fn subscribe(c: &mut RawClient, filter: &str, qos: QoS) {
    let ack = subscribe_filter(c, 1, Filter::new(filter, qos), None).await;
    assert_eq!(ack.return_codes, [SubscribeReasonCode::Success(qos)]);
}

fn publish(topic: &str, qos: QoS, pkid: u16, payload: &'static [u8]) -> Publish {
    let mut p = Publish::new(topic, qos, Bytes::from_static(payload), None);
    p.pkid = pkid;
    p
}

/// Asserts nothing but pings arrive for `quiet`.
async fn silent(c: &mut RawClient, quiet: Duration) {
    if let Ok(p) = tokio::time::timeout(quiet, c.recv()).await {
        panic!("expected silence, got {p:?}");
    }
}

fn disconnect_reason(p: Option<Packet>) -> DisconnectReasonCode {
    match p {
        Some(Packet::Disconnect(d)) => d.reason_code,
        other => panic!("expected DISCONNECT, got {other:?}"),
    }
}

#[tokio::test]
async fn connack_advertises_limits_and_assigns_client_ids() {
    let server = TestServer::start();
    let (_c, ack) = connect_with(&server, "", Opts::default()).await;
    let props = ack.properties.expect("CONNACK properties");
    let assigned = props.assigned_client_identifier.expect("assigned id");
    assert!(assigned.starts_with("anon:"), "{assigned}");
    assert_eq!(props.receive_max, Some(256));
    assert_eq!(props.max_packet_size, Some(1_048_576));
    assert_eq!(props.topic_alias_max, Some(64));
}

#[tokio::test]
async fn will_waits_for_its_delay_and_a_timely_reconnect_cancels_it() {
    let server = TestServer::start();
    let mut watcher = connect(&server, "watcher").await;
    subscribe(&mut watcher, "will/#", QoS::AtLeastOnce).await;

    let will = |topic: &str, delay| {
        let props = LastWillProperties {
            delay_interval: Some(delay),
            payload_format_indicator: None,
            message_expiry_interval: None,
            content_type: None,
            response_topic: None,
            correlation_data: None,
            user_properties: Vec::new(),
        };
        LastWill::new(topic, "gone", QoS::AtMostOnce, false, Some(props))
    };

    // Delayed will: nothing at once, the will after about 2 s.
    let mut o = expiring(60);
    o.will = Some(will("will/late", 2));
    let (late, _) = connect_with(&server, "late", o).await;
    let t0 = Instant::now();
    late.vanish();
    let got = watcher.publish().await;
    assert_eq!(&got.topic[..], b"will/late");
    assert!(
        t0.elapsed() >= Duration::from_millis(1500),
        "{:?}",
        t0.elapsed()
    );

    // Reconnecting to the session within the delay cancels the will.
    let mut o = expiring(60);
    o.will = Some(will("will/back", 2));
    let (back, _) = connect_with(&server, "back", o).await;
    back.vanish();
    // The server noticing the lost socket has no outward sign; the pause lets it, so the
    // reconnect resumes a session whose will is pending instead of taking over a live one.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut o = expiring(60);
    o.clean = false;
    let (_back, ack) = connect_with(&server, "back", o).await;
    assert!(ack.session_present);
    silent(&mut watcher, Duration::from_secs(3)).await;
}

#[tokio::test]
async fn sessions_expire_after_their_interval() {
    let server = TestServer::start();
    for (id, secs) in [("short", 1), ("long", 60)] {
        let (mut c, _) = connect_with(&server, id, expiring(secs)).await;
        subscribe(&mut c, "x/#", QoS::AtLeastOnce).await;
        c.send(Packet::Disconnect(Disconnect::new(
            DisconnectReasonCode::NormalDisconnection,
        )))
        .await;
        assert!(c.closed().await.is_none());
    }
    // Expiry (1 s) is checked on the router's 1 s tick: 3.5 s leaves room for a late tick.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    for (id, present) in [("short", false), ("long", true)] {
        let mut o = expiring(60);
        o.clean = false;
        let (_c, ack) = connect_with(&server, id, o).await;
        assert_eq!(ack.session_present, present, "{id}");
    }
}

#[tokio::test]
async fn shared_subscriptions_take_turns() {
    let server = TestServer::start();
    let mut a = connect(&server, "a").await;
    let mut b = connect(&server, "b").await;
    subscribe(&mut a, "$share/workers/job/#", QoS::AtMostOnce).await;
    subscribe(&mut b, "$share/workers/job/#", QoS::AtMostOnce).await;
    let mut p = connect(&server, "p").await;
    for _ in 0..4 {
        p.send(Packet::Publish(publish("job/1", QoS::AtMostOnce, 0, b"j")))
            .await;
    }
    for c in [&mut a, &mut b] {
        for _ in 0..2 {
            assert_eq!(&c.publish().await.topic[..], b"job/1");
        }
        silent(c, Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn inbound_topic_aliases_resolve_and_bad_ones_disconnect() {
    let server = TestServer::start();
    let mut sub = connect(&server, "sub").await;
    subscribe(&mut sub, "al/#", QoS::AtMostOnce).await;
    let mut p = connect(&server, "p").await;
    let aliased = |topic: &str, alias: u16, payload: &'static [u8]| {
        let props = PublishProperties {
            topic_alias: Some(alias),
            ..Default::default()
        };
        Packet::Publish(Publish::new(topic, QoS::AtMostOnce, payload, Some(props)))
    };
    p.send(aliased("al/1", 1, b"a")).await;
    p.send(aliased("", 1, b"b")).await;
    for want in [&b"a"[..], b"b"] {
        let got = sub.publish().await;
        assert_eq!(&got.topic[..], b"al/1");
        assert_eq!(&got.payload[..], want);
    }
    p.send(aliased("al/2", 65, b"c")).await;
    assert_eq!(
        disconnect_reason(p.closed().await),
        DisconnectReasonCode::TopicAliasInvalid
    );
}

#[tokio::test]
async fn outbound_topic_aliases_are_used_when_the_client_allows_them() {
    let server = TestServer::start();
    let mut o = Opts::default();
    o.props.topic_alias_max = Some(4);
    let (mut sub, _) = connect_with(&server, "sub", o).await;
    subscribe(&mut sub, "ao/#", QoS::AtMostOnce).await;
    let mut p = connect(&server, "p").await;
    for _ in 0..2 {
        p.send(Packet::Publish(publish("ao/1", QoS::AtMostOnce, 0, b"x")))
            .await;
    }
    let first = sub.publish().await;
    assert_eq!(&first.topic[..], b"ao/1");
    let alias = first
        .properties
        .and_then(|p| p.topic_alias)
        .expect("alias set");
    let second = sub.publish().await;
    assert!(second.topic.is_empty());
    assert_eq!(second.properties.and_then(|p| p.topic_alias), Some(alias));
}

#[tokio::test]
async fn expired_messages_are_not_delivered_and_others_carry_the_time_left() {
    let server = TestServer::start();
    let mut p = connect(&server, "p").await;
    for (topic, secs) in [("ex/short", 1), ("ex/long", 100)] {
        let props = PublishProperties {
            message_expiry_interval: Some(secs),
            ..Default::default()
        };
        let mut m = Publish::new(topic, QoS::AtLeastOnce, "v", Some(props));
        m.retain = true;
        m.pkid = 1;
        p.send(Packet::Publish(m)).await;
        assert!(matches!(p.recv().await, Some(Packet::PubAck(_))));
    }
    // Time is what is tested: the 1 s expiry has to pass.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let mut sub = connect(&server, "sub").await;
    subscribe(&mut sub, "ex/#", QoS::AtMostOnce).await;
    let got = sub.publish().await;
    assert_eq!(&got.topic[..], b"ex/long");
    let left = got
        .properties
        .and_then(|p| p.message_expiry_interval)
        .unwrap();
    assert!((98..=100).contains(&left), "{left}");
    silent(&mut sub, Duration::from_millis(200)).await;
}

#[tokio::test]
async fn expired_retained_messages_give_up_their_slots() {
    let server = TestServer::start_with(|c| {
        c.mqtt.max_retained = 2;
        c.mqtt.sys_interval_secs = 0;
    });
    let mut p = connect(&server, "p").await;
    for (pkid, topic, expiry) in [
        (1, "r/short", Some(1)),
        (2, "r/keep", None),
        (3, "r/new", None),
    ] {
        if pkid == 3 {
            // The store is full until the first one expires (1 s: time is what is tested).
            tokio::time::sleep(Duration::from_millis(1200)).await;
        }
        let props = PublishProperties {
            message_expiry_interval: expiry,
            ..Default::default()
        };
        let mut m = Publish::new(topic, QoS::AtLeastOnce, "v", Some(props));
        m.retain = true;
        m.pkid = pkid;
        p.send(Packet::Publish(m)).await;
        assert!(matches!(p.recv().await, Some(Packet::PubAck(a)) if a.pkid == pkid));
    }
    let mut sub = connect(&server, "sub").await;
    subscribe(&mut sub, "r/#", QoS::AtMostOnce).await;
    assert_eq!(&sub.publish().await.topic[..], b"r/keep");
    assert_eq!(&sub.publish().await.topic[..], b"r/new");
    silent(&mut sub, Duration::from_millis(200)).await;
}

#[tokio::test]
async fn no_local_suppresses_own_messages_only() {
    let server = TestServer::start();
    let mut me = connect(&server, "me").await;
    let mut f = Filter::new("nl/#", QoS::AtMostOnce);
    f.nolocal = true;
    subscribe_filter(&mut me, 1, f, None).await;
    me.send(Packet::Publish(publish(
        "nl/1",
        QoS::AtMostOnce,
        0,
        b"mine",
    )))
    .await;
    let mut other = connect(&server, "other").await;
    other
        .send(Packet::Publish(publish(
            "nl/1",
            QoS::AtMostOnce,
            0,
            b"theirs",
        )))
        .await;
    assert_eq!(&me.publish().await.payload[..], b"theirs");
}

#[tokio::test]
async fn request_response_properties_pass_through() {
    let server = TestServer::start();
    let mut responder = connect(&server, "responder").await;
    subscribe(&mut responder, "req/#", QoS::AtMostOnce).await;
    let mut requester = connect(&server, "requester").await;
    let props = PublishProperties {
        response_topic: Some("resp/requester".into()),
        correlation_data: Some(Bytes::from_static(b"\x00\x01corr")),
        user_properties: vec![("k".into(), "v".into()), ("k".into(), "w".into())],
        content_type: Some("text/plain".into()),
        payload_format_indicator: Some(1),
        ..Default::default()
    };
    requester
        .send(Packet::Publish(Publish::new(
            "req/time",
            QoS::AtMostOnce,
            "now?",
            Some(props.clone()),
        )))
        .await;
    let got = responder.publish().await;
    assert_eq!(got.properties, Some(props));
}

#[tokio::test]
async fn oversized_packets_are_refused_with_0x95() {
    let server = TestServer::start_with(|c| c.mqtt.max_packet_size = 1024);
    let mut c = connect(&server, "big").await;
    let payload: &'static [u8] = Box::leak(vec![7u8; 2000].into_boxed_slice());
    c.send(Packet::Publish(publish(
        "big/1",
        QoS::AtMostOnce,
        0,
        payload,
    )))
    .await;
    assert_eq!(
        disconnect_reason(c.closed().await),
        DisconnectReasonCode::PacketTooLarge
    );
    // The server keeps serving.
    let _ = connect(&server, "next").await;
}

/// A QoS 1 PUBLISH on `topic` whose whole encoding is exactly `size` bytes.
fn publish_of_size(topic: &str, pkid: u16, size: usize) -> Publish {
    let mut p = Publish::new(topic, QoS::AtLeastOnce, Bytes::new(), None);
    p.pkid = pkid;
    let overhead = p.size();
    // The remaining-length varint grows with the payload: shrink until the total fits exactly.
    let mut n = size - overhead;
    loop {
        p.payload = Bytes::from(vec![b'x'; n]);
        if p.size() <= size {
            break;
        }
        n -= 1;
    }
    assert_eq!(p.size(), size, "no payload gives exactly {size} bytes");
    p
}

#[tokio::test]
async fn a_packet_of_exactly_the_maximum_size_is_accepted_and_one_byte_more_is_not() {
    let server = TestServer::start_with(|c| c.mqtt.max_packet_size = 1024);
    let mut c = connect(&server, "edge").await;
    c.send(Packet::Publish(publish_of_size("edge/1", 1, 1024)))
        .await;
    assert!(
        matches!(c.recv().await, Some(Packet::PubAck(a)) if a.pkid == 1 && a.reason == PubAckReason::Success)
    );
    c.send(Packet::Publish(publish_of_size("edge/1", 2, 1025)))
        .await;
    assert_eq!(
        disconnect_reason(c.closed().await),
        DisconnectReasonCode::PacketTooLarge
    );
}

#[tokio::test]
async fn a_publish_arriving_in_pieces_spends_one_rate_token() {
    let server = TestServer::start_with(|c| {
        c.limits.publish_rate = 1;
        c.limits.publish_burst = 2;
    });
    let mut c = connect(&server, "slowpoke").await;
    // Two messages (the burst), each written in 20 pieces that the server reads one by one.
    // Each is acknowledged as soon as its last piece is in: spending a token per piece would
    // hold the first back for many seconds while tokens refill at 1/s.
    let mut first_complete = None;
    for pkid in [1, 2] {
        let mut bytes = bytes::BytesMut::new();
        Packet::Publish(publish_of_size("rate/1", pkid, 2000))
            .write(&mut bytes, None)
            .unwrap();
        let mut pieces = bytes.chunks(100).peekable();
        let mut last = None;
        while let Some(piece) = pieces.next() {
            if pieces.peek().is_none() {
                // Before the last piece goes out: the server cannot have the whole message, and
                // take its token, any earlier.
                last = Some(Instant::now());
            }
            c.send_bytes(piece).await;
            // A gap between pieces, so that the server reads them one at a time.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let last = last.expect("at least one piece");
        first_complete.get_or_insert(last);
        assert!(matches!(c.recv().await, Some(Packet::PubAck(a)) if a.pkid == pkid));
        assert!(
            last.elapsed() < Duration::from_secs(1),
            "message {pkid} waited for a token: {:?}",
            last.elapsed()
        );
    }
    // The bucket (1/s, burst 2) holds at most one token once the first message took its own,
    // so the third cannot get one until a second after that: it waits in the buffer. Had each
    // message cost two tokens, it would wait three seconds.
    let first_complete = first_complete.expect("first message sent");
    c.send(Packet::Publish(publish(
        "rate/1",
        QoS::AtLeastOnce,
        3,
        b"x",
    )))
    .await;
    assert!(matches!(c.recv().await, Some(Packet::PubAck(a)) if a.pkid == 3));
    let waited = first_complete.elapsed();
    assert!(
        waited >= Duration::from_millis(950) && waited < Duration::from_millis(2500),
        "{waited:?}"
    );
}

#[tokio::test]
async fn messages_larger_than_the_client_accepts_are_skipped() {
    let server = TestServer::start();
    let mut o = Opts::default();
    o.props.max_packet_size = Some(100);
    let (mut small, _) = connect_with(&server, "small", o).await;
    subscribe(&mut small, "sz/#", QoS::AtLeastOnce).await;
    let mut p = connect(&server, "p").await;
    let big: &'static [u8] = Box::leak(vec![1u8; 500].into_boxed_slice());
    p.send(Packet::Publish(publish("sz/1", QoS::AtLeastOnce, 1, big)))
        .await;
    p.send(Packet::Publish(publish(
        "sz/1",
        QoS::AtLeastOnce,
        2,
        b"small",
    )))
    .await;
    let got = small.publish().await;
    assert_eq!(&got.payload[..], b"small");
}

#[tokio::test]
async fn subscription_identifiers_are_returned_with_each_match() {
    let server = TestServer::start();
    let mut c = connect(&server, "c").await;
    subscribe_filter(&mut c, 1, Filter::new("si/#", QoS::AtMostOnce), Some(7)).await;
    subscribe_filter(&mut c, 2, Filter::new("si/+", QoS::AtMostOnce), Some(9)).await;
    let mut p = connect(&server, "p").await;
    p.send(Packet::Publish(publish("si/a", QoS::AtMostOnce, 0, b"x")))
        .await;
    let got = c.publish().await;
    let mut ids = got.properties.unwrap().subscription_identifiers;
    ids.sort();
    assert_eq!(ids, [7, 9]);
    silent(&mut c, Duration::from_millis(200)).await;
}

#[tokio::test]
async fn retain_handling_and_retain_as_published() {
    let server = TestServer::start();
    let mut p = connect(&server, "p").await;
    // QoS 1, so the PUBACK says the retained message is in place before anyone subscribes.
    let mut m = publish("rh/1", QoS::AtLeastOnce, 1, b"kept");
    m.retain = true;
    p.send(Packet::Publish(m.clone())).await;
    assert!(matches!(p.recv().await, Some(Packet::PubAck(_))));

    let mut c = connect(&server, "c").await;
    let with = |rule: RetainForwardRule, rap: bool| {
        let mut f = Filter::new("rh/#", QoS::AtMostOnce);
        f.retain_forward_rule = rule;
        f.preserve_retain = rap;
        f
    };
    subscribe_filter(&mut c, 1, with(RetainForwardRule::Never, false), None).await;
    silent(&mut c, Duration::from_millis(200)).await;
    subscribe_filter(
        &mut c,
        2,
        with(RetainForwardRule::OnNewSubscribe, false),
        None,
    )
    .await;
    silent(&mut c, Duration::from_millis(200)).await;
    subscribe_filter(
        &mut c,
        3,
        with(RetainForwardRule::OnEverySubscribe, false),
        None,
    )
    .await;
    assert!(c.publish().await.retain);

    let mut fresh = connect(&server, "fresh").await;
    subscribe_filter(
        &mut fresh,
        1,
        with(RetainForwardRule::OnNewSubscribe, true),
        None,
    )
    .await;
    assert!(fresh.publish().await.retain);
    // Live traffic: RETAIN kept only for the retain-as-published subscription.
    p.send(Packet::Publish(m)).await;
    assert!(fresh.publish().await.retain);
    assert!(!c.publish().await.retain);
}

#[tokio::test]
async fn outbound_flow_respects_the_clients_receive_maximum() {
    let server = TestServer::start();
    let mut o = Opts::default();
    o.props.receive_maximum = Some(2);
    let (mut slow, _) = connect_with(&server, "slow", o).await;
    subscribe(&mut slow, "rm/#", QoS::AtLeastOnce).await;
    let mut p = connect(&server, "p").await;
    for i in 1..=5 {
        p.send(Packet::Publish(publish("rm/1", QoS::AtLeastOnce, i, b"m")))
            .await;
    }
    let a = slow.publish().await;
    let _b = slow.publish().await;
    silent(&mut slow, Duration::from_millis(300)).await;
    slow.send(Packet::PubAck(PubAck::new(a.pkid, None))).await;
    let c = slow.publish().await;
    assert_ne!(c.pkid, 0);
    silent(&mut slow, Duration::from_millis(200)).await;
}

#[tokio::test]
async fn qos2_is_exactly_once_across_reconnects_both_ways() {
    let server = TestServer::start();
    let mut sub = {
        let (c, _) = connect_with(&server, "sub", expiring(60)).await;
        c
    };
    subscribe(&mut sub, "q2/#", QoS::ExactlyOnce).await;

    // Inbound: the publisher loses its connection after PUBREC and resends with DUP.
    let (mut p, _) = connect_with(&server, "p", expiring(60)).await;
    p.send(Packet::Publish(publish(
        "q2/1",
        QoS::ExactlyOnce,
        10,
        b"once",
    )))
    .await;
    assert!(matches!(p.recv().await, Some(Packet::PubRec(r)) if r.pkid == 10));
    p.vanish();
    let mut o = expiring(60);
    o.clean = false;
    let (mut p, ack) = connect_with(&server, "p", o).await;
    assert!(ack.session_present);
    let mut again = publish("q2/1", QoS::ExactlyOnce, 10, b"once");
    again.dup = true;
    p.send(Packet::Publish(again)).await;
    assert!(matches!(p.recv().await, Some(Packet::PubRec(r)) if r.pkid == 10));
    p.send(Packet::PubRel(PubRel::new(10, None))).await;
    assert!(matches!(p.recv().await, Some(Packet::PubComp(c)) if c.pkid == 10));

    // Outbound: the subscriber vanishes before PUBREC; the message comes again with DUP.
    let first = sub.publish().await;
    assert_eq!(&first.payload[..], b"once");
    assert!(!first.dup);
    sub.vanish();
    let mut o = expiring(60);
    o.clean = false;
    let (mut sub, ack) = connect_with(&server, "sub", o).await;
    assert!(ack.session_present);
    let resent = sub.publish().await;
    assert!(resent.dup);
    assert_eq!(resent.pkid, first.pkid);
    sub.send(Packet::PubRec(PubRec::new(resent.pkid, None)))
        .await;
    assert!(matches!(sub.recv().await, Some(Packet::PubRel(r)) if r.pkid == resent.pkid));
    sub.send(Packet::PubComp(PubComp::new(resent.pkid, None)))
        .await;
    silent(&mut sub, Duration::from_millis(300)).await;
}

/// Reconnects a persistent session after its connection vanished.
async fn resume(server: &TestServer, id: &str) -> RawClient {
    let mut o = expiring(60);
    o.clean = false;
    let (c, ack) = connect_with(server, id, o).await;
    assert!(ack.session_present);
    c
}

#[tokio::test]
async fn unacknowledged_deliveries_are_resent_after_a_reconnect() {
    let server = TestServer::start();
    let (mut sub, _) = connect_with(&server, "sub", expiring(60)).await;
    subscribe(&mut sub, "rs/#", QoS::ExactlyOnce).await;
    let mut p = connect(&server, "p").await;

    // QoS 1 without PUBACK: the same message, packet id and all, again with DUP.
    p.send(Packet::Publish(publish(
        "rs/1",
        QoS::AtLeastOnce,
        1,
        b"one",
    )))
    .await;
    let first = sub.publish().await;
    assert_eq!((first.qos, first.dup), (QoS::AtLeastOnce, false));
    sub.vanish();
    let mut sub = resume(&server, "sub").await;
    let again = sub.publish().await;
    assert!(again.dup);
    assert_eq!((again.pkid, &again.payload[..]), (first.pkid, &b"one"[..]));
    sub.send(Packet::PubAck(PubAck::new(again.pkid, None)))
        .await;
    silent(&mut sub, Duration::from_millis(200)).await;

    // QoS 2 after PUBREC: the PUBREL comes again, not the message.
    p.send(Packet::Publish(publish(
        "rs/2",
        QoS::ExactlyOnce,
        2,
        b"two",
    )))
    .await;
    let two = sub.publish().await;
    sub.send(Packet::PubRec(PubRec::new(two.pkid, None))).await;
    assert!(matches!(sub.recv().await, Some(Packet::PubRel(r)) if r.pkid == two.pkid));
    sub.vanish();
    let mut sub = resume(&server, "sub").await;
    assert!(matches!(sub.recv().await, Some(Packet::PubRel(r)) if r.pkid == two.pkid));
    sub.send(Packet::PubComp(PubComp::new(two.pkid, None)))
        .await;
    silent(&mut sub, Duration::from_millis(300)).await;
    // Completed: nothing comes after another reconnect.
    sub.vanish();
    let mut sub = resume(&server, "sub").await;
    silent(&mut sub, Duration::from_millis(300)).await;
}

#[tokio::test]
async fn pubrel_is_answered_after_a_reconnect_and_unknown_ids_get_0x92() {
    let server = TestServer::start();
    let mut sub = connect(&server, "sub").await;
    subscribe(&mut sub, "rel/#", QoS::AtLeastOnce).await;
    let (mut p, _) = connect_with(&server, "p", expiring(60)).await;
    p.send(Packet::PubRel(PubRel::new(77, None))).await;
    assert!(
        matches!(p.recv().await, Some(Packet::PubComp(c)) if c.pkid == 77 && c.reason == PubCompReason::PacketIdentifierNotFound)
    );
    // PUBREC, then the connection is lost: after reconnecting the client sends only PUBREL
    // (§4.4), which the session still recognises.
    p.send(Packet::Publish(publish("rel/1", QoS::ExactlyOnce, 5, b"r")))
        .await;
    assert!(matches!(p.recv().await, Some(Packet::PubRec(r)) if r.pkid == 5));
    p.vanish();
    let mut o = expiring(60);
    o.clean = false;
    let (mut p, ack) = connect_with(&server, "p", o).await;
    assert!(ack.session_present);
    p.send(Packet::PubRel(PubRel::new(5, None))).await;
    assert!(
        matches!(p.recv().await, Some(Packet::PubComp(c)) if c.pkid == 5 && c.reason == PubCompReason::Success)
    );
    p.send(Packet::PubRel(PubRel::new(5, None))).await;
    assert!(
        matches!(p.recv().await, Some(Packet::PubComp(c)) if c.pkid == 5 && c.reason == PubCompReason::PacketIdentifierNotFound)
    );
    assert_eq!(&sub.publish().await.payload[..], b"r");
    silent(&mut sub, Duration::from_millis(200)).await;
}

#[tokio::test]
async fn more_unacknowledged_qos2_than_receive_maximum_is_0x93() {
    let server = TestServer::start_with(|c| c.mqtt.receive_maximum = 2);
    let mut c = connect(&server, "eager").await;
    for pkid in [1, 2] {
        c.send(Packet::Publish(publish(
            "rm/1",
            QoS::ExactlyOnce,
            pkid,
            b"x",
        )))
        .await;
        assert!(matches!(c.recv().await, Some(Packet::PubRec(r)) if r.pkid == pkid));
    }
    // Releasing one makes room for one more.
    c.send(Packet::PubRel(PubRel::new(1, None))).await;
    assert!(matches!(c.recv().await, Some(Packet::PubComp(r)) if r.pkid == 1));
    c.send(Packet::Publish(publish("rm/1", QoS::ExactlyOnce, 3, b"x")))
        .await;
    assert!(matches!(c.recv().await, Some(Packet::PubRec(r)) if r.pkid == 3));
    c.send(Packet::Publish(publish("rm/1", QoS::ExactlyOnce, 4, b"x")))
        .await;
    assert_eq!(
        disconnect_reason(c.closed().await),
        DisconnectReasonCode::ReceiveMaximumExceeded
    );
}

#[tokio::test]
async fn chat_messages_waiting_for_their_commit_count_towards_receive_maximum() {
    let server = TestServer::start_with_users(common::chat::USERS, |c| c.mqtt.receive_maximum = 2);
    let o = Opts {
        login: Some(Login::new("alice", "pw-a")),
        ..Default::default()
    };
    let (mut c, ack) = connect_with(&server, "alice.raw", o).await;
    assert_eq!(ack.code, ConnectReturnCode::Success);
    let chat = "c/d.alice.bob/m";
    // One unreleased QoS 2 and one QoS 1 chat message: two, as allowed.
    c.send(Packet::Publish(publish("rm/x", QoS::ExactlyOnce, 1, b"q2")))
        .await;
    assert!(matches!(c.recv().await, Some(Packet::PubRec(r)) if r.pkid == 1));
    c.send(Packet::Publish(publish(chat, QoS::AtLeastOnce, 2, b"one")))
        .await;
    assert!(
        matches!(c.recv().await, Some(Packet::PubAck(a)) if a.pkid == 2 && a.reason == PubAckReason::Success)
    );
    // Two more chat messages in one write: while the first waits for its commit the QoS 2 and
    // it make two unacknowledged, and the second is one too many.
    let mut both = bytes::BytesMut::new();
    for pkid in [3, 4] {
        Packet::Publish(publish(chat, QoS::AtLeastOnce, pkid, b"more"))
            .write(&mut both, None)
            .unwrap();
    }
    c.send_bytes(&both).await;
    assert_eq!(
        disconnect_reason(c.closed().await),
        DisconnectReasonCode::ReceiveMaximumExceeded
    );
}

#[tokio::test]
async fn keep_alive_is_enforced_at_one_and_a_half_times() {
    let server = TestServer::start();
    let o = Opts {
        keep_alive: 1,
        ..Default::default()
    };
    // Before connecting: the server's keep-alive clock starts before the CONNACK arrives here.
    let t0 = Instant::now();
    let (mut c, _) = connect_with(&server, "sleepy", o).await;
    assert_eq!(
        disconnect_reason(c.closed().await),
        DisconnectReasonCode::KeepAliveTimeout
    );
    let waited = t0.elapsed();
    assert!(
        waited >= Duration::from_millis(1400) && waited < Duration::from_secs(3),
        "{waited:?}"
    );
}

#[tokio::test]
async fn server_keep_alive_caps_what_clients_ask_for() {
    let server = TestServer::start_with(|c| c.mqtt.max_keepalive_secs = 20);
    for asked in [0, 600] {
        let o = Opts {
            keep_alive: asked,
            ..Default::default()
        };
        let (_c, ack) = connect_with(&server, "k", o).await;
        assert_eq!(ack.properties.unwrap().server_keep_alive, Some(20));
    }
}

#[tokio::test]
async fn takeover_and_shutdown_say_why() {
    let mut server = TestServer::start();
    let mut old = connect(&server, "dup").await;
    let mut new = connect(&server, "dup").await;
    assert_eq!(
        disconnect_reason(old.closed().await),
        DisconnectReasonCode::SessionTakenOver
    );
    server.stop();
    assert_eq!(
        disconnect_reason(new.closed().await),
        DisconnectReasonCode::ServerShuttingDown
    );
}

#[tokio::test]
async fn sigterm_tells_clients_0x8b_and_exits_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let storage = common::storage(natter::config::Config::default_config().storage, data);
    let hash = natter::password::hash("pw-a", 1000).unwrap();
    common::outside_runtime(|| {
        natter::store::open(&storage)
            .unwrap()
            .add_user("alice", &hash)
            .unwrap()
    });
    let server = common::ServerProcess::start(&storage);
    let mut c = RawClient::login(server.mqtt, "alice", "pw-a", "alice.term", 30).await;
    server.terminate();
    assert_eq!(
        disconnect_reason(c.closed().await),
        DisconnectReasonCode::ServerShuttingDown
    );
    let status = server.wait();
    assert_eq!(status.code(), Some(0), "{status:?}");
}

#[tokio::test]
async fn keep_alive_zero_means_no_timeout() {
    let server = TestServer::start();
    let o = Opts {
        keep_alive: 0,
        ..Default::default()
    };
    let (mut c, _) = connect_with(&server, "quiet", o).await;
    // Three silent seconds: with any timeout in force the server would have closed by now
    // (the shortest keep alive, 1 s, ends at 1.5 s).
    silent(&mut c, Duration::from_secs(3)).await;
    c.send(Packet::PingReq(PingReq)).await;
    assert!(matches!(c.recv().await, Some(Packet::PingResp(_))));
}

#[tokio::test]
async fn credentials_and_anonymous_access_are_refused_properly() {
    let server = TestServer::start();
    let o = Opts {
        login: Some(Login::new("bob", "wrong")),
        ..Default::default()
    };
    let (_c, ack) = connect_with(&server, "bob", o).await;
    assert_eq!(ack.code, ConnectReturnCode::BadUserNamePassword);

    let closed = TestServer::start_with(|c| c.auth.allow_anonymous = false);
    let (_c, ack) = connect_with(&closed, "anon", Opts::default()).await;
    assert_eq!(ack.code, ConnectReturnCode::NotAuthorized);
}

#[tokio::test]
async fn invalid_topics_and_payloads_are_refused_per_message() {
    let server = TestServer::start();
    let mut c = connect(&server, "c").await;
    c.send(Packet::Publish(publish("a/+", QoS::AtLeastOnce, 1, b"x")))
        .await;
    assert!(
        matches!(c.recv().await, Some(Packet::PubAck(a)) if a.reason == PubAckReason::TopicNameInvalid)
    );
    let props = PublishProperties {
        payload_format_indicator: Some(1),
        ..Default::default()
    };
    c.send(Packet::Publish({
        let mut p = Publish::new("a/b", QoS::AtLeastOnce, &b"\xff\xfe"[..], Some(props));
        p.pkid = 2;
        p
    }))
    .await;
    assert!(
        matches!(c.recv().await, Some(Packet::PubAck(a)) if a.reason == PubAckReason::PayloadFormatInvalid)
    );
    c.send(Packet::Publish(publish(
        "$SYS/x",
        QoS::AtLeastOnce,
        3,
        b"x",
    )))
    .await;
    assert!(
        matches!(c.recv().await, Some(Packet::PubAck(a)) if a.reason == PubAckReason::NotAuthorized)
    );
}

#[tokio::test]
async fn over_the_publish_rate_5_0_clients_can_be_disconnected_with_0x96() {
    let server = TestServer::start_with(|c| {
        c.limits.publish_rate = 1;
        c.limits.publish_burst = 2;
        c.limits.publish_rate_action = natter::config::RateAction::Disconnect;
    });
    let mut c = connect(&server, "flood").await;
    for pkid in 1..=3 {
        c.send(Packet::Publish(publish(
            "flood/x",
            QoS::AtLeastOnce,
            pkid,
            b"x",
        )))
        .await;
    }
    // The burst is acknowledged; the third message is over the rate.
    for pkid in 1..=2 {
        match c.recv().await {
            Some(Packet::PubAck(a)) => assert_eq!(a.pkid, pkid),
            other => panic!("expected PUBACK {pkid}, got {other:?}"),
        }
    }
    match c.closed().await {
        Some(Packet::Disconnect(d)) => {
            assert_eq!(d.reason_code, DisconnectReasonCode::MessageRateTooHigh)
        }
        other => panic!("expected DISCONNECT 0x96, got {other:?}"),
    }

    // 3.1.1 has no such reason code: its flood is throttled, and every message acknowledged.
    let (mut v4c, _) = common::clients::v4::Client::connect(rumqttc::MqttOptions::new(
        "flood4",
        "127.0.0.1",
        server.port(),
    ))
    .await;
    for _ in 0..4 {
        v4c.client
            .publish("flood/y", rumqttc::QoS::AtLeastOnce, false, "y")
            .await
            .unwrap();
    }
    let started = Instant::now();
    // Panics if the 3.1.1 client is cut off instead.
    v4c.pubacks(4).await;
    assert!(
        started.elapsed() >= Duration::from_millis(1500),
        "not throttled"
    );
}
