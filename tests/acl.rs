//! The ACL file decides every SUBSCRIBE, PUBLISH and will, with the right codes per version, and
//! a wildcard subscription never carries a topic the rules deny.

mod common;

use std::time::Duration;

use common::clients::{v4, v5};
use common::TestServer;

const ACL: &str = "\
topic read open/#
topic readwrite rw/#
topic deny rw/secret
pattern readwrite own/%c/#
";

fn server_with_acl() -> (TestServer, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("acl");
    std::fs::write(&path, ACL).unwrap();
    let server = TestServer::start_with(|c| c.auth.acl_file = path.display().to_string());
    (server, dir)
}

fn v4_opts(server: &TestServer, id: &str) -> v4::MqttOptions {
    let mut o = v4::MqttOptions::new(id, "127.0.0.1", server.port());
    o.set_keep_alive(Duration::from_secs(5));
    o
}

fn v5_opts(server: &TestServer, id: &str) -> v5::MqttOptions {
    let mut o = v5::MqttOptions::new(id, "127.0.0.1", server.port());
    o.set_keep_alive(Duration::from_secs(5));
    o
}

#[tokio::test]
async fn refused_subscriptions_get_0x80_on_3_1_1_and_0x87_on_5_0() {
    use rumqttc::v5::mqttbytes::v5::SubscribeReasonCode as R5;
    use rumqttc::SubscribeReasonCode as R4;
    let (server, _acl) = server_with_acl();

    let (mut c4, _) = v4::Client::connect(v4_opts(&server, "c4")).await;
    for (filter, ok) in [
        ("open/#", true),
        ("#", false),
        ("rw/+", true),
        ("rw/secret", false),
        ("own/c4/x", true),
        ("own/other/x", false),
    ] {
        c4.client
            .subscribe(filter, rumqttc::QoS::AtLeastOnce)
            .await
            .unwrap();
        let want = if ok {
            R4::Success(rumqttc::QoS::AtLeastOnce)
        } else {
            R4::Failure
        };
        match c4.suback().await {
            v4::Incoming::SubAck(a) => assert_eq!(a.return_codes, [want], "{filter}"),
            other => panic!("{other:?}"),
        }
    }

    let (mut c5, _) = v5::Client::connect(v5_opts(&server, "c5")).await;
    for (filter, ok) in [("open/+", true), ("+/x", false), ("$SYS/#", false)] {
        c5.client
            .subscribe(filter, rumqttc::v5::mqttbytes::QoS::AtMostOnce)
            .await
            .unwrap();
        let want = if ok {
            R5::Success(rumqttc::v5::mqttbytes::QoS::AtMostOnce)
        } else {
            R5::NotAuthorized
        };
        match c5.suback().await {
            v5::Incoming::SubAck(a) => assert_eq!(a.return_codes, [want], "{filter}"),
            other => panic!("{other:?}"),
        }
    }
}

#[tokio::test]
async fn refused_publishes_get_0x87_on_5_0_and_are_dropped_on_3_1_1() {
    use rumqttc::v5::mqttbytes::v5::PubAckReason;
    let (server, _acl) = server_with_acl();
    let (mut watcher, _) = v4::Client::connect(v4_opts(&server, "watcher")).await;
    watcher
        .client
        .subscribe("rw/#", rumqttc::QoS::AtLeastOnce)
        .await
        .unwrap();
    watcher.suback().await;
    watcher
        .client
        .subscribe("open/#", rumqttc::QoS::AtLeastOnce)
        .await
        .unwrap();
    watcher.suback().await;

    let (mut p5, _) = v5::Client::connect(v5_opts(&server, "p5")).await;
    p5.client
        .publish(
            "open/x",
            rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
            false,
            "no",
        )
        .await
        .unwrap();
    loop {
        match p5.next().await.unwrap() {
            v5::Incoming::PubAck(a) => {
                assert_eq!(a.reason, PubAckReason::NotAuthorized);
                break;
            }
            _ => continue,
        }
    }

    let (p4, _) = v4::Client::connect(v4_opts(&server, "p4")).await;
    p4.client
        .publish("open/x", rumqttc::QoS::AtLeastOnce, false, "no")
        .await
        .unwrap();
    p4.client
        .publish("rw/secret", rumqttc::QoS::AtLeastOnce, false, "no")
        .await
        .unwrap();
    p4.client
        .publish("rw/fine", rumqttc::QoS::AtLeastOnce, false, "yes")
        .await
        .unwrap();
    let got = watcher.publish().await;
    assert_eq!(got.topic, "rw/fine");
    watcher.no_publish(Duration::from_millis(300)).await;
    // The 3.1.1 publisher stays connected (no reconnect loop).
    p4.client
        .publish("rw/again", rumqttc::QoS::AtLeastOnce, false, "yes")
        .await
        .unwrap();
    assert_eq!(watcher.publish().await.topic, "rw/again");
}

#[tokio::test]
async fn wildcard_subscriptions_skip_denied_topics_message_by_message() {
    // The server's own $SYS messages need no publish permission, so they show the read side
    // alone: the filter is allowed as a whole, one topic under it is not.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("acl");
    std::fs::write(&path, "topic read $SYS/#\ntopic deny $SYS/broker/uptime\n").unwrap();
    let server = TestServer::start_with(|c| c.auth.acl_file = path.display().to_string());
    let (mut sub, _) = v4::Client::connect(v4_opts(&server, "sub")).await;
    sub.client
        .subscribe("$SYS/#", rumqttc::QoS::AtMostOnce)
        .await
        .unwrap();
    sub.suback().await;
    // The retained set on subscribe, then one live round (each round starts with the version).
    let mut topics = std::collections::BTreeSet::new();
    let mut versions = 0;
    while versions < 2 {
        let topic = sub.publish().await.topic;
        versions += usize::from(topic == "$SYS/broker/version");
        topics.insert(topic);
    }
    assert!(
        topics.contains("$SYS/broker/clients/connected"),
        "{topics:?}"
    );
    assert!(!topics.contains("$SYS/broker/uptime"), "{topics:?}");
}

#[tokio::test]
async fn a_will_to_a_forbidden_topic_refuses_the_connection() {
    use rumqttc::v5::mqttbytes::v5::{ConnectReturnCode, LastWill};
    let (server, _acl) = server_with_acl();
    let mut o = v5_opts(&server, "w");
    o.set_last_will(LastWill::new(
        "open/will",
        "x",
        rumqttc::v5::mqttbytes::QoS::AtMostOnce,
        false,
        None,
    ));
    let (_c, result) = v5::Client::try_connect(o).await;
    let err = result.expect_err("refused");
    assert!(
        err.0
            .contains(&format!("{:?}", ConnectReturnCode::NotAuthorized)),
        "{err:?}"
    );
}
