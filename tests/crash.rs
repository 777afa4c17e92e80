//! "Sent" means on disk: publishers send QoS 1 chat messages as fast as they can, the server is
//! killed with SIGKILL mid-stream and started again, and every message whose PUBACK a client
//! received is in the history, in order, exactly once.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::{history_cids, poll_until, RawClient, ServerProcess};
use rumqttc::v5::mqttbytes::v5::{Packet, Publish};
use rumqttc::v5::mqttbytes::QoS;
use serde_json::json;

const PUBLISHERS: usize = 3;
/// Messages each publisher keeps in flight.
const WINDOW: u16 = 32;

/// Publishes numbered messages in windows until the connection breaks; records every number
/// whose PUBACK arrived.
async fn publish_until_killed(
    addr: std::net::SocketAddr,
    n: usize,
    acked: Arc<Mutex<Vec<String>>>,
) {
    let mut c = RawClient::login(addr, "alice", "pw-a", &format!("alice.p{n}"), 30).await;
    let mut next = 0u64;
    loop {
        let mut in_flight = HashMap::new();
        for pkid in 1..=WINDOW {
            let cid = format!("p{n}-{next}");
            next += 1;
            let body = json!({"cid": cid, "t": cid}).to_string();
            let mut p = Publish::new("c/d.alice.bob/m", QoS::AtLeastOnce, Bytes::from(body), None);
            p.pkid = pkid;
            in_flight.insert(pkid, cid);
            if c.try_send(Packet::Publish(p)).await.is_err() {
                // Killed mid-window: nothing more can be acknowledged.
                return;
            }
        }
        while !in_flight.is_empty() {
            match c.recv_within(Duration::from_secs(5)).await {
                Ok(Some(Packet::PubAck(a))) => {
                    assert_eq!(a.reason, rumqttc::v5::mqttbytes::v5::PubAckReason::Success);
                    let cid = in_flight
                        .remove(&a.pkid)
                        .expect("PUBACK for a packet in flight");
                    acked.lock().unwrap().push(cid);
                }
                Ok(Some(_)) => {}
                // Killed: whatever was not acknowledged may or may not be stored.
                Ok(None) | Err(_) => return,
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_messages_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let storage = common::storage(
        natter::config::Config::default_config().storage,
        dir.path().to_path_buf(),
    );
    common::outside_runtime(|| {
        let store = natter::store::open(&storage).unwrap();
        for (user, pw) in [("alice", "pw-a"), ("bob", "pw-b")] {
            store
                .add_user(user, &natter::password::hash(pw, 1000).unwrap())
                .unwrap();
        }
    });
    let server = ServerProcess::start(&storage);
    let acked = Arc::new(Mutex::new(Vec::new()));
    let publishers: Vec<_> = (0..PUBLISHERS)
        .map(|n| tokio::spawn(publish_until_killed(server.mqtt, n, acked.clone())))
        .collect();
    // Let the stream get going, then pull the plug mid-stream.
    let going = async || (acked.lock().unwrap().len() >= 600).then_some(());
    poll_until(Duration::from_secs(10), going).await;
    server.kill();
    for p in publishers {
        p.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() >= 100,
        "only {} messages acknowledged before the kill",
        acked.len()
    );

    // Start again on the same data and read everything back.
    let server = ServerProcess::start(&storage);
    let stored = history_cids(server.mqtt, "bob", "pw-b", "d.alice.bob").await;

    // Dense sequence numbers, no cid twice, every acknowledged cid present.
    for (i, (seq, _)) in stored.iter().enumerate() {
        assert_eq!(*seq, i as u64 + 1, "sequence numbers have a hole");
    }
    let position: HashMap<&str, usize> = stored
        .iter()
        .enumerate()
        .map(|(i, (_, cid))| (cid.as_str(), i))
        .collect();
    assert_eq!(position.len(), stored.len(), "a message was stored twice");
    for cid in &acked {
        assert!(
            position.contains_key(cid.as_str()),
            "{cid} was acknowledged but is not in the history"
        );
    }
    // Each publisher's messages are in the order it sent them.
    for n in 0..PUBLISHERS {
        let prefix = format!("p{n}-");
        let numbers: Vec<u64> = stored
            .iter()
            .filter_map(|(_, cid)| cid.strip_prefix(&prefix)?.parse().ok())
            .collect();
        assert!(
            numbers.windows(2).all(|w| w[0] < w[1]),
            "publisher {n} out of order"
        );
    }
    eprintln!(
        "{} acknowledged before kill -9, {} stored",
        acked.len(),
        stored.len()
    );
}
