//! Hardening of topics and subscriptions: caps on topic depth and length, iterative trie
//! walks, shared groups that skip members who may not read, response topics, `q/` filters,
//! presence permission following the commit, and SUBSCRIBE/PUBLISH ordering.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::chat::USERS;
use common::{RawClient, TestServer};
use rumqttc::v5::mqttbytes::v5::{
    Filter, Packet, PubAck, Publish, RetainForwardRule, Subscribe, SubscribeReasonCode,
};
use rumqttc::v5::mqttbytes::QoS;

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

async fn publish_acked(c: &mut RawClient, pkid: u16, topic: &str, payload: &str) {
    let mut p = Publish::new(topic, QoS::AtLeastOnce, payload.to_string(), None);
    p.pkid = pkid;
    c.send(Packet::Publish(p)).await;
    loop {
        match c.recv().await {
            Some(Packet::PubAck(a)) if a.pkid == pkid => return,
            Some(_) => continue,
            None => panic!("closed while waiting for PUBACK"),
        }
    }
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
