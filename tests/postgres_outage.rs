//! PostgreSQL stopped for five seconds while senders stream chat messages: they wait (or are
//! told 0x80 and may send again), nothing acknowledged is lost, and the server recovers by
//! itself when the database is back, without a restart.
//!
//! The test runs its own PostgreSQL cluster (`.ci/postgres`), since it stops it; it runs where
//! `NATTER_TEST_POSTGRES_URL` says PostgreSQL is installed, and says so when skipped.

mod common;

use std::collections::HashSet;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{eventually, history_cids, RawClient, TestServer};
use natter::config::Backend;
use natter::store::postgres::TEST_URL_VAR;
use rumqttc::v5::mqttbytes::v5::{Packet, PubAckReason, Publish};
use rumqttc::v5::mqttbytes::QoS;
use serde_json::json;

const USERS: &[(&str, &str)] = &[("alice", "pw-a"), ("bob", "pw-b")];
const PUBLISHERS: usize = 2;
const OUTAGE: Duration = Duration::from_secs(5);

/// What one publisher saw.
#[derive(Default)]
struct Outcome {
    acked: Vec<String>,
    refused: usize,
}

/// Publishes numbered messages one at a time (each waiting for its PUBACK, however long)
/// until `stop`; a message refused with 0x80 is sent again under the same cid, as a client
/// does.
async fn publish(
    addr: std::net::SocketAddr,
    n: usize,
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Outcome>>,
) {
    let mut c = RawClient::login(addr, "alice", "pw-a", &format!("alice.p{n}"), 60).await;
    let mut next = 0u64;
    let mut pkid = 0u16;
    while !stop.load(Ordering::Relaxed) {
        let cid = format!("p{n}-{next}");
        pkid = pkid % 60000 + 1;
        let body = json!({"cid": cid, "t": cid}).to_string();
        let mut p = Publish::new("c/d.alice.bob/m", QoS::AtLeastOnce, Bytes::from(body), None);
        p.pkid = pkid;
        c.send(Packet::Publish(p)).await;
        let ack = loop {
            match c.recv_within(Duration::from_secs(60)).await {
                Ok(Some(Packet::PubAck(a))) if a.pkid == pkid => break a,
                Ok(Some(_)) => {}
                other => panic!("publisher {n}: connection lost waiting for a PUBACK: {other:?}"),
            }
        };
        let mut seen = seen.lock().unwrap();
        match ack.reason {
            PubAckReason::Success => {
                seen.acked.push(cid);
                next += 1;
            }
            PubAckReason::UnspecifiedError => seen.refused += 1,
            other => panic!("publisher {n}: unexpected PUBACK {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_stopped_for_five_seconds_loses_nothing_acknowledged() {
    if std::env::var(TEST_URL_VAR).is_err() {
        eprintln!("SKIPPED: PostgreSQL outage test ({TEST_URL_VAR} is not set)");
        return;
    }
    let pg = Cluster(tempfile::tempdir().unwrap());
    let url = common::postgres_ctl("start", pg.path());
    let server = TestServer::start_with_users(USERS, |c| {
        c.storage.backend = Backend::Postgres;
        c.storage.postgres_url = url.clone();
        c.storage.commit_retry_secs = 30;
    });

    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Mutex::new(Outcome::default()));
    let publishers: Vec<_> = (0..PUBLISHERS)
        .map(|n| tokio::spawn(publish(server.mqtt, n, stop.clone(), seen.clone())))
        .collect();
    let acked = || seen.lock().unwrap().acked.len();
    eventually(Duration::from_secs(30), "the stream going", async || {
        (acked() >= 200).then_some(())
    })
    .await;

    // Stop it mid-stream (fast: open transactions are cut), keep it down, start it again.
    common::postgres_ctl("stop", pg.path());
    let before = acked();
    let down = Instant::now();
    tokio::time::sleep(OUTAGE).await;
    let during = acked() - before;
    common::postgres_ctl("start", pg.path());
    eprintln!(
        "database down for {:?}; {during} acknowledged meanwhile",
        down.elapsed()
    );

    // The stream resumes by itself.
    let resumed = acked();
    eventually(Duration::from_secs(30), "the stream resuming", async || {
        (acked() >= resumed + 200).then_some(())
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    for p in publishers {
        p.await.unwrap();
    }
    // During the outage at most what was already on its way (committed before the stop) is
    // acknowledged: nothing is acknowledged without a commit.
    assert!(
        during <= 2 * PUBLISHERS,
        "{during} acknowledged while the database was down"
    );

    // New connections log in again (the pool recovered) and read the whole history back.
    let stored = history_cids(server.mqtt, "bob", "pw-b", "d.alice.bob").await;
    for (i, (seq, _)) in stored.iter().enumerate() {
        assert_eq!(*seq, i as u64 + 1, "sequence numbers have a hole");
    }
    let cids: HashSet<&str> = stored.iter().map(|(_, c)| c.as_str()).collect();
    assert_eq!(cids.len(), stored.len(), "a message was stored twice");
    let seen = seen.lock().unwrap();
    for cid in &seen.acked {
        assert!(
            cids.contains(cid.as_str()),
            "{cid} was acknowledged but is not stored"
        );
    }
    eprintln!(
        "{} acknowledged, {} refused with 0x80 and sent again, {} stored",
        seen.acked.len(),
        seen.refused,
        stored.len()
    );
    drop(server);
}

/// The test's own cluster, stopped when the test ends, however it ends.
struct Cluster(tempfile::TempDir);

impl Cluster {
    fn path(&self) -> &Path {
        self.0.path()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/.ci/postgres");
        let _ = Command::new(script).arg("stop").arg(self.path()).status();
    }
}
