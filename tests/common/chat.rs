//! Chat helpers shared by the chat and history tests: standard users, logging in as them, and
//! requests on `q/{user}/{op}`.

use std::time::Duration;

use rumqttc::v5::mqttbytes::v5::{Publish, SubscribeReasonCode};
use rumqttc::v5::mqttbytes::QoS;
use serde_json::Value;

use super::clients::v5;
use super::TestServer;

pub const USERS: &[(&str, &str)] = &[("alice", "pw-a"), ("bob", "pw-b"), ("eve", "pw-e")];

pub fn password(user: &str) -> &'static str {
    USERS
        .iter()
        .find(|(u, _)| *u == user)
        .map(|(_, p)| *p)
        .unwrap_or("nope")
}

pub fn opts(server: &TestServer, user: &str, client_id: &str) -> v5::MqttOptions {
    let mut o = v5::MqttOptions::new(client_id, "127.0.0.1", server.port());
    o.set_keep_alive(Duration::from_secs(5));
    o.set_credentials(user, password(user));
    o
}

/// Logs in as `user.test`, subscribed to the user's own stream (as an app would be).
pub async fn login(server: &TestServer, user: &str) -> v5::Client {
    login_device(server, user, "test").await
}

/// Logs in as `user.device`, subscribed to the user's own stream.
pub async fn login_device(server: &TestServer, user: &str, device: &str) -> v5::Client {
    let (mut c, _) = v5::Client::connect(opts(server, user, &format!("{user}.{device}"))).await;
    let own = format!("u/{user}/#");
    assert_eq!(
        subscribe(&mut c, &own).await,
        SubscribeReasonCode::Success(QoS::AtLeastOnce)
    );
    c
}

pub async fn subscribe(c: &mut v5::Client, filter: &str) -> SubscribeReasonCode {
    c.client.subscribe(filter, QoS::AtLeastOnce).await.unwrap();
    match c.suback().await {
        v5::Incoming::SubAck(ack) => ack.return_codes[0],
        other => panic!("{other:?}"),
    }
}

/// Sends a request on `q/{user}/{op}` and returns the JSON reply.
pub async fn request(c: &mut v5::Client, user: &str, op: &str, body: Value) -> Value {
    c.client
        .publish(
            format!("q/{user}/{op}"),
            QoS::AtLeastOnce,
            false,
            body.to_string(),
        )
        .await
        .unwrap();
    loop {
        let p = c.publish().await;
        if p.topic == format!("u/{user}/reply/{op}") {
            return serde_json::from_slice(&p.payload).unwrap();
        }
    }
}

/// Sends a request on `q/{user}/{op}`, asserts the reply says `ok: true`, and returns it.
pub async fn request_ok(c: &mut v5::Client, user: &str, op: &str, body: Value) -> Value {
    let reply = request(c, user, op, body).await;
    assert_eq!(reply["ok"], true, "{op} failed: {reply}");
    reply
}

/// The text of a delivered chat envelope.
pub fn text(p: &Publish) -> String {
    let v: Value = serde_json::from_slice(&p.payload).expect("JSON envelope");
    v["t"].as_str().expect("text").to_string()
}

/// The next publish whose topic is `topic`, skipping others (events, copies).
pub async fn publish_on(c: &mut v5::Client, topic: &str) -> Publish {
    loop {
        let p = c.publish().await;
        if p.topic == topic {
            return p;
        }
    }
}
