//! Push notifications for offline users: a content-free, HMAC-signed POST to a receiver this
//! test runs, once for a burst, retried after a 500; gone endpoints are unregistered; private
//! targets are refused unless allowed.

mod common;

use std::time::Duration;

use common::chat::*;
use common::{eventually, TestServer};
use ring::hmac;
use rumqttc::v5::mqttbytes::QoS;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

const SECRET: &str = "test-secret";

/// One request the receiver got: the signature header and the body.
struct Received {
    signature: String,
    body: Vec<u8>,
}

/// A minimal HTTP receiver answering each request with the next status in `script` (then 200).
async fn receiver(script: Vec<u16>) -> (String, mpsc::UnboundedReceiver<Received>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "http://127.0.0.1:{}/push",
        listener.local_addr().unwrap().port()
    );
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut script = script.into_iter();
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            let (head, body) = loop {
                let n = sock.read(&mut chunk).await.unwrap_or(0);
                if n == 0 {
                    break (String::new(), Vec::new());
                }
                buf.extend_from_slice(&chunk[..n]);
                if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
                    let len: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0);
                    while buf.len() < end + 4 + len {
                        let n = sock.read(&mut chunk).await.unwrap_or(0);
                        if n == 0 {
                            break;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                    }
                    break (head, buf[end + 4..].to_vec());
                }
            };
            let signature = head
                .lines()
                .find_map(|l| l.strip_prefix("x-natter-signature:"))
                .unwrap_or("")
                .trim()
                .to_string();
            let status = script.next().unwrap_or(200);
            let reply =
                format!("HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
            let _ = sock.write_all(reply.as_bytes()).await;
            let _ = tx.send(Received { signature, body });
        }
    });
    (url, rx)
}

fn valid_signature(r: &Received) -> bool {
    let key = hmac::Key::new(hmac::HMAC_SHA256, SECRET.as_bytes());
    let Some(hex) = r.signature.strip_prefix("sha256=") else {
        return false;
    };
    let bytes: Option<Vec<u8>> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect();
    bytes.is_some_and(|b| hmac::verify(&key, &r.body, &b).is_ok())
}

async fn next(rx: &mut mpsc::UnboundedReceiver<Received>) -> Received {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("a push arrives")
        .expect("receiver running")
}

/// A server with the receiver's secret, gathering each offline user's messages for
/// `coalesce_ms` before one push goes out.
fn server(allow_private: bool, coalesce_ms: u64) -> TestServer {
    TestServer::start_with_users(USERS, |c| {
        c.push.secret = SECRET.into();
        c.push.allow_private_targets = allow_private;
        c.push.coalesce_ms = coalesce_ms;
        c.push.retry_base_ms = 100;
    })
}

#[tokio::test]
async fn an_offline_user_gets_one_signed_push_for_a_burst_retried_after_a_500() {
    // A window far longer than the three commits take even on a loaded machine, so the burst
    // cannot straddle two windows.
    let server = server(true, 1500);
    let (url, mut pushes) = receiver(vec![500]).await;
    {
        let mut bob = login(&server, "bob").await;
        let reply = request(&mut bob, "bob", "push.register", json!({"url": url})).await;
        assert_eq!(reply["ok"], true, "{reply}");
        bob.client.disconnect().await.unwrap();
        while bob.next().await.is_ok() {}
    }
    // Alice's login subscribes through the router after Bob's close: he is offline by then.
    let alice = login(&server, "alice").await;
    for t in ["one", "two", "secret plans"] {
        alice
            .client
            .publish("c/d.alice.bob/m", QoS::AtLeastOnce, false, t)
            .await
            .unwrap();
    }
    let first = next(&mut pushes).await;
    let retried = next(&mut pushes).await;
    assert!(valid_signature(&first) && valid_signature(&retried));
    assert_eq!(
        first.body, retried.body,
        "the retry carries the same notification"
    );
    let body: Value = serde_json::from_slice(&first.body).unwrap();
    assert_eq!(body["user"], "bob");
    assert_eq!(
        body["conversations"],
        json!([{"conv": "d.alice.bob", "count": 3}])
    );
    assert!(
        !String::from_utf8_lossy(&first.body).contains("secret"),
        "no message text in a push"
    );
    // One push for the burst: nothing more comes.
    assert!(
        tokio::time::timeout(Duration::from_millis(800), pushes.recv())
            .await
            .is_err()
    );
}

#[tokio::test]
async fn connected_users_get_no_push_and_gone_endpoints_are_dropped() {
    let server = server(true, 300);
    let (url, mut pushes) = receiver(vec![410]).await;
    let mut bob = login(&server, "bob").await;
    let reply = request(&mut bob, "bob", "push.register", json!({"url": url})).await;
    assert_eq!(reply["ok"], true);
    let mut alice = login(&server, "alice").await;
    alice
        .client
        .publish("c/d.alice.bob/m", QoS::AtLeastOnce, false, "you are here")
        .await
        .unwrap();
    publish_on(&mut bob, "u/bob/c/d.alice.bob/m").await;
    assert!(
        tokio::time::timeout(Duration::from_millis(800), pushes.recv())
            .await
            .is_err()
    );

    bob.client.disconnect().await.unwrap();
    while bob.next().await.is_ok() {}
    // Bob's socket closing only proves the router has his close queued. Alice's SUBSCRIBE goes
    // through the router after it, and the router tells presence of the close before answering
    // her: once the SUBACK is in, Bob is offline before her message is stored.
    subscribe(&mut alice, "u/alice/#").await;
    alice
        .client
        .publish(
            "c/d.alice.bob/m",
            QoS::AtLeastOnce,
            false,
            "now you are not",
        )
        .await
        .unwrap();
    let gone = next(&mut pushes).await;
    assert!(valid_signature(&gone));
    // 410: unregistered.
    eventually(
        Duration::from_secs(5),
        "the endpoint goes after 410",
        async || {
            let endpoints = server.with_store(|s| s.push_endpoints("bob").unwrap());
            endpoints.is_empty().then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn private_targets_are_refused_unless_allowed() {
    let server = server(false, 300);
    let mut bob = login(&server, "bob").await;
    for url in [
        "http://127.0.0.1:9/x",
        "http://10.0.0.1/x",
        "ftp://example.org/x",
        "not a url",
    ] {
        let reply = request(&mut bob, "bob", "push.register", json!({"url": url})).await;
        assert_eq!(reply["ok"], false, "{url}: {reply}");
        assert_eq!(reply["error"], "bad_request");
    }
}
