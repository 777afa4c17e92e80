//! MQTT 3.1.1 behaviour, driven by rumqttc's 3.1.1 client against a real server.

mod common;

use std::time::Duration;

use common::clients::v4::{Client, Incoming, MqttOptions};
use common::TestServer;
use rumqttc::{LastWill, QoS, SubscribeReasonCode};

fn options(server: &TestServer, id: &str) -> MqttOptions {
    let mut o = MqttOptions::new(id, "127.0.0.1", server.port());
    o.set_keep_alive(Duration::from_secs(5));
    o
}

async fn subscribed(server: &TestServer, id: &str, filter: &str, qos: QoS) -> Client {
    let (mut c, _) = Client::connect(options(server, id)).await;
    c.client.subscribe(filter, qos).await.unwrap();
    c.suback().await;
    c
}

#[tokio::test]
async fn delivery_is_at_the_lower_of_publish_and_subscription_qos() {
    let server = TestServer::start();
    let mut sub = subscribed(&server, "sub", "t/#", QoS::AtLeastOnce).await;
    let (publisher, _) = Client::connect(options(&server, "pub")).await;
    for (i, qos) in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce]
        .into_iter()
        .enumerate()
    {
        publisher
            .client
            .publish(format!("t/{i}"), qos, false, vec![i as u8])
            .await
            .unwrap();
        let got = sub.publish().await;
        assert_eq!(got.topic, format!("t/{i}"));
        assert_eq!(&got.payload[..], &[i as u8]);
        let want = if i == 0 {
            QoS::AtMostOnce
        } else {
            QoS::AtLeastOnce
        };
        assert_eq!(got.qos, want, "publish at {qos:?}");
        assert!(!got.retain);
    }
}

#[tokio::test]
async fn overlapping_subscriptions_deliver_once_at_the_highest_qos() {
    let server = TestServer::start();
    let (mut sub, _) = Client::connect(options(&server, "sub")).await;
    sub.client.subscribe("a/+", QoS::AtMostOnce).await.unwrap();
    sub.suback().await;
    sub.client.subscribe("a/#", QoS::ExactlyOnce).await.unwrap();
    sub.suback().await;
    let (publisher, _) = Client::connect(options(&server, "pub")).await;
    publisher
        .client
        .publish("a/b", QoS::ExactlyOnce, false, "x")
        .await
        .unwrap();
    let got = sub.publish().await;
    assert_eq!(got.qos, QoS::ExactlyOnce);
    sub.no_publish(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn retained_messages_are_set_replaced_and_cleared_only_by_empty_retained() {
    let server = TestServer::start();
    let (mut publisher, _) = Client::connect(options(&server, "pub")).await;
    let p = publisher.client.clone();
    p.publish("r/x", QoS::AtLeastOnce, true, "one")
        .await
        .unwrap();
    p.publish("r/x", QoS::AtLeastOnce, true, "two")
        .await
        .unwrap();
    // An empty message that is not retained must not clear anything (a rumqttd bug).
    p.publish("r/x", QoS::AtLeastOnce, false, "").await.unwrap();
    // The three PUBACKs: all three are routed before anyone subscribes.
    publisher.pubacks(3).await;

    let mut s1 = subscribed(&server, "s1", "r/#", QoS::AtLeastOnce).await;
    let got = s1.publish().await;
    assert_eq!(&got.payload[..], b"two");
    assert!(got.retain, "retained delivery on subscribe carries RETAIN");

    p.publish("r/x", QoS::AtLeastOnce, true, "").await.unwrap();
    let cleared = s1.publish().await;
    assert!(cleared.payload.is_empty());
    let mut s2 = subscribed(&server, "s2", "r/#", QoS::AtLeastOnce).await;
    s2.no_publish(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn will_is_published_on_abrupt_loss_but_not_after_clean_disconnect() {
    let server = TestServer::start();
    let mut watcher = subscribed(&server, "watcher", "will/#", QoS::AtLeastOnce).await;

    let mut o = options(&server, "dies");
    o.set_last_will(LastWill::new("will/dies", "gone", QoS::AtLeastOnce, false));
    let (dies, _) = Client::connect(o).await;
    dies.vanish();
    let will = watcher.publish().await;
    assert_eq!(will.topic, "will/dies");
    assert_eq!(&will.payload[..], b"gone");

    let mut o = options(&server, "polite");
    o.set_last_will(LastWill::new(
        "will/polite",
        "gone",
        QoS::AtLeastOnce,
        false,
    ));
    let (mut polite, _) = Client::connect(o).await;
    polite.client.disconnect().await.unwrap();
    // The event loop ends once DISCONNECT is written.
    polite.ended().await;
    watcher.no_publish(Duration::from_millis(500)).await;
}

#[tokio::test]
async fn persistent_session_keeps_subscriptions_and_queues_while_away() {
    let server = TestServer::start();
    let mut o = options(&server, "phone");
    o.set_clean_session(false);
    let (mut phone, ack) = Client::connect(o.clone()).await;
    assert!(matches!(ack, Incoming::ConnAck(a) if !a.session_present));
    phone
        .client
        .subscribe("inbox/#", QoS::AtLeastOnce)
        .await
        .unwrap();
    phone.suback().await;
    phone.client.disconnect().await.unwrap();
    phone.ended().await;

    let (mut publisher, _) = Client::connect(options(&server, "pub")).await;
    // QoS 0 is not queued for an absent client. Sent first, so the PUBACKs below prove it
    // reached the router before the phone is back.
    publisher
        .client
        .publish("inbox/1", QoS::AtMostOnce, false, "lost")
        .await
        .unwrap();
    for i in 0..3 {
        publisher
            .client
            .publish("inbox/1", QoS::AtLeastOnce, false, format!("m{i}"))
            .await
            .unwrap();
    }
    // Each PUBACK follows its message's hand-over to the router (and that of everything sent
    // before it), and the reconnect below reaches the router after all of them.
    publisher.pubacks(3).await;

    let (mut phone, ack) = Client::connect(o).await;
    assert!(matches!(ack, Incoming::ConnAck(a) if a.session_present));
    for i in 0..3 {
        assert_eq!(
            &phone.publish().await.payload[..],
            format!("m{i}").as_bytes()
        );
    }
    phone.no_publish(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn a_second_connection_with_the_same_client_id_takes_over() {
    let server = TestServer::start();
    let (mut first, _) = Client::connect(options(&server, "same")).await;
    let (_second, _) = Client::connect(options(&server, "same")).await;
    // The first connection is closed by the server.
    first.ended().await;
}

#[tokio::test]
async fn wildcards_do_not_match_dollar_topics() {
    // $SYS is for admins and whoever the ACL grants it to.
    let acl = tempfile::tempdir().unwrap();
    let path = acl.path().join("acl");
    std::fs::write(&path, "topic readwrite #\ntopic read $SYS/#\n").unwrap();
    let server = TestServer::start_with(|c| c.auth.acl_file = path.display().to_string());
    let mut all = subscribed(&server, "all", "#", QoS::AtMostOnce).await;
    let mut sys = subscribed(&server, "sys", "$SYS/broker/uptime", QoS::AtMostOnce).await;
    let got = sys.publish().await;
    assert_eq!(got.topic, "$SYS/broker/uptime");
    assert!(std::str::from_utf8(&got.payload)
        .unwrap()
        .ends_with(" seconds"));
    all.no_publish(Duration::from_millis(1500)).await;
}

#[tokio::test]
async fn unsubscribe_stops_delivery() {
    let server = TestServer::start();
    let mut sub = subscribed(&server, "sub", "un/+", QoS::AtLeastOnce).await;
    let (publisher, _) = Client::connect(options(&server, "pub")).await;
    publisher
        .client
        .publish("un/1", QoS::AtLeastOnce, false, "a")
        .await
        .unwrap();
    assert_eq!(&sub.publish().await.payload[..], b"a");
    sub.client.unsubscribe("un/+").await.unwrap();
    loop {
        if let Ok(Incoming::UnsubAck(_)) = sub.next().await {
            break;
        }
    }
    publisher
        .client
        .publish("un/1", QoS::AtLeastOnce, false, "b")
        .await
        .unwrap();
    sub.no_publish(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn invalid_filters_get_a_failure_code() {
    let server = TestServer::start();
    let (mut sub, _) = Client::connect(options(&server, "sub")).await;
    sub.client
        .subscribe_many([
            rumqttc::SubscribeFilter::new("ok/#".into(), QoS::AtLeastOnce),
            rumqttc::SubscribeFilter::new("$share/g".into(), QoS::AtLeastOnce),
        ])
        .await
        .unwrap();
    match sub.suback().await {
        Incoming::SubAck(ack) => assert_eq!(
            ack.return_codes,
            [
                SubscribeReasonCode::Success(QoS::AtLeastOnce),
                SubscribeReasonCode::Failure
            ]
        ),
        other => panic!("{other:?}"),
    }
}

/// Queues five QoS 1 messages for an offline persistent session whose queue holds three, and
/// returns what arrives when it reconnects.
async fn queued_after_overflow(overflow: natter::config::QueueOverflow) -> Vec<String> {
    let server = TestServer::start_with(|c| {
        c.mqtt.max_queued_messages = 3;
        c.mqtt.queue_overflow = overflow;
    });
    let mut o = options(&server, "away");
    o.set_clean_session(false);
    let (mut away, _) = Client::connect(o.clone()).await;
    away.client
        .subscribe("box/#", QoS::AtLeastOnce)
        .await
        .unwrap();
    away.suback().await;
    away.client.disconnect().await.unwrap();
    away.ended().await;

    let (mut publisher, _) = Client::connect(options(&server, "pub")).await;
    for i in 0..5 {
        publisher
            .client
            .publish("box/1", QoS::AtLeastOnce, false, format!("m{i}"))
            .await
            .unwrap();
    }
    // Each PUBACK follows its message's hand-over to the router, and the reconnect below
    // reaches the router after all of them.
    publisher.pubacks(5).await;
    let (mut away, _) = Client::connect(o).await;
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(String::from_utf8_lossy(&away.publish().await.payload).into_owned());
    }
    away.no_publish(Duration::from_millis(300)).await;
    got
}

#[tokio::test]
async fn a_full_queue_drops_the_oldest_or_the_newest_as_configured() {
    use natter::config::QueueOverflow;
    assert_eq!(
        queued_after_overflow(QueueOverflow::DropOldest).await,
        ["m2", "m3", "m4"]
    );
    assert_eq!(
        queued_after_overflow(QueueOverflow::DropNewest).await,
        ["m0", "m1", "m2"]
    );
}
