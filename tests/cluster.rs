//! natter as a cluster: nodes on one PostgreSQL database and one NATS server, clients spread
//! over the nodes. Skipped (loudly) without `NATTER_TEST_POSTGRES_URL` or `nats-server`.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::chat::{login, login_device, password, publish_on, request_ok, subscribe, USERS};
use common::clients::v5;
use common::cluster::{Cluster, NODE_TIMEOUT_SECS};
use common::http::Api;
use common::WAIT;
use reqwest::StatusCode;
use rumqttc::v5::mqttbytes::v5::{DisconnectReasonCode, PubAckReason, SubscribeReasonCode};
use rumqttc::v5::mqttbytes::QoS;
use serde_json::{json, Value};

/// A plain anonymous client of `node`.
async fn plain(node: &common::TestServer, id: &str) -> v5::Client {
    let mut o = v5::MqttOptions::new(id, "127.0.0.1", node.port());
    o.set_keep_alive(Duration::from_secs(5));
    v5::Client::connect(o).await.0
}

fn envelope(p: &rumqttc::v5::mqttbytes::v5::Publish) -> Value {
    serde_json::from_slice(&p.payload).expect("JSON envelope")
}

#[tokio::test]
async fn chat_crosses_nodes_once_and_in_order_with_receipts() {
    let Some(cluster) = Cluster::start(3, USERS) else {
        return;
    };
    let [n1, n2, n3] = &cluster.nodes[..] else {
        unreachable!()
    };
    let mut alice = login(n1, "alice").await;
    let mut bob = login(n2, "bob").await;
    let mut eve = login(n3, "eve").await;

    // A direct message from node 1 to node 2.
    alice
        .client
        .publish("c/d.alice.bob/m", QoS::AtLeastOnce, false, "hi bob")
        .await
        .unwrap();
    let got = publish_on(&mut bob, "u/bob/c/d.alice.bob/m").await;
    assert_eq!(envelope(&got)["t"], "hi bob");
    assert_eq!(envelope(&got)["seq"], 1);

    // A group with a member on every node: the event reaches the others' nodes.
    request_ok(
        &mut alice,
        "alice",
        "group.create",
        json!({"id": "team", "members": ["bob", "eve"]}),
    )
    .await;
    for (c, user) in [(&mut bob, "bob"), (&mut eve, "eve")] {
        let event = publish_on(c, &format!("u/{user}/events")).await;
        assert_eq!(envelope(&event)["type"], "member_added");
    }

    // Nodes 2 and 3 learn the membership from the store a moment after the event can arrive
    // (see topics.md, "Cluster"): each member's first message is accepted once they have.
    for (c, user) in [(&mut bob, "bob"), (&mut eve, "eve")] {
        common::eventually(WAIT, "the member's node knows the group", async || {
            c.client
                .publish(
                    "c/g.team/m",
                    QoS::AtLeastOnce,
                    false,
                    format!("{user} joins"),
                )
                .await
                .unwrap();
            loop {
                if let v5::Incoming::PubAck(ack) = c.next().await.expect("connected") {
                    return (ack.reason == PubAckReason::Success).then_some(());
                }
            }
        })
        .await;
    }

    // Every member writes from their own node at once: every member gets every message once,
    // in seq order.
    const EACH: usize = 30;
    const TOTAL: usize = 2 + 3 * EACH;
    for (c, user) in [(&alice, "alice"), (&bob, "bob"), (&eve, "eve")] {
        for i in 0..EACH {
            c.client
                .publish("c/g.team/m", QoS::AtLeastOnce, false, format!("{user} {i}"))
                .await
                .unwrap();
        }
    }
    // Bob's and Eve's devices acknowledge Alice's messages on nodes 2 and 3: the delivered
    // receipts come back to node 1 (read on the way).
    let mut delivered_by = HashMap::new();
    for (c, user) in [(&mut bob, "bob"), (&mut eve, "eve"), (&mut alice, "alice")] {
        let (messages, receipts) = (
            format!("u/{user}/c/g.team/m"),
            format!("u/{user}/c/g.team/r"),
        );
        let mut seqs = Vec::new();
        delivered_by.clear();
        while seqs.last() != Some(&(TOTAL as u64)) || (user == "alice" && delivered_by.len() < 2) {
            let p = c.publish().await;
            let e = envelope(&p);
            if p.topic == messages {
                seqs.push(e["seq"].as_u64().unwrap());
            } else if p.topic == receipts && e["type"] == "delivered" && e["user"] != user {
                delivered_by.insert(e["user"].as_str().unwrap().to_string(), e["seq"].clone());
            }
        }
        // The members' first messages may have come while they waited for their own PUBACK.
        let first = seqs[0];
        assert!(first <= 3, "{user}: {seqs:?}");
        let want: Vec<u64> = (first..=TOTAL as u64).collect();
        assert_eq!(seqs, want, "{user}: every message once, in seq order");
    }
    assert!(delivered_by.contains_key("bob") && delivered_by.contains_key("eve"));

    // What crossed is counted on /metrics.
    let metrics = Api::new(n2)
        .fetch("/metrics", None)
        .await
        .text()
        .await
        .unwrap();
    let count = |name: &str| -> u64 {
        let line = metrics
            .lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .unwrap();
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    assert!(count("natter_cluster_frames_received_total") >= 2 * EACH as u64);
    assert!(count("natter_cluster_frames_sent_total") >= EACH as u64);
    assert_eq!(count("natter_cluster_frames_refused_total"), 0);
}

#[tokio::test]
async fn plain_topics_cross_nodes_with_their_qos_retained_and_shared() {
    let Some(cluster) = Cluster::start(3, &[]) else {
        return;
    };
    let [n1, n2, n3] = &cluster.nodes[..] else {
        unreachable!()
    };
    let mut sub = plain(n2, "sub").await;
    sub.client
        .subscribe("sensors/#", QoS::ExactlyOnce)
        .await
        .unwrap();
    sub.suback().await;
    let publisher = plain(n1, "pub").await;
    // Interest reaches NATS after the SUBACK: a first message may cross before it does.
    common::eventually(WAIT, "interest reaches the publisher's node", async || {
        publisher
            .client
            .publish("sensors/probe", QoS::AtMostOnce, false, "probe")
            .await
            .unwrap();
        let got = tokio::time::timeout(Duration::from_millis(200), sub.publish()).await;
        matches!(got, Ok(p) if p.topic == "sensors/probe").then_some(())
    })
    .await;
    // Interest: only node 2 asks NATS for these topics, so they never travel to node 3.
    let subs = cluster.nats.subscriptions().await;
    let wanted =
        |node: &str| subs[&format!("natter-{node}")].contains(&"natter.t.sensors.>".to_string());
    assert!(wanted("n2") && !wanted("n1") && !wanted("n3"), "{subs:?}");
    for (i, qos) in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce]
        .into_iter()
        .enumerate()
    {
        let topic = format!("sensors/t{i}");
        publisher
            .client
            .publish(topic.as_str(), qos, false, format!("m{i}"))
            .await
            .unwrap();
        let p = publish_on(&mut sub, &topic).await;
        assert_eq!((p.qos, &p.payload[..]), (qos, format!("m{i}").as_bytes()));
    }

    // Retained on node 1, read by a new subscriber on node 3.
    publisher
        .client
        .publish("status/door", QoS::AtLeastOnce, true, "open")
        .await
        .unwrap();
    common::eventually(WAIT, "node 3 has the retained message", async || {
        let mut late = plain(n3, "late").await;
        late.client
            .subscribe("status/#", QoS::AtLeastOnce)
            .await
            .unwrap();
        late.suback().await;
        let got = tokio::time::timeout(Duration::from_millis(300), late.publish()).await;
        matches!(got, Ok(p) if p.retain && &p.payload[..] == b"open").then_some(())
    })
    .await;

    // A shared group with a member on node 2 and one on node 3: each message to one of them.
    let mut workers = Vec::new();
    for (node, id) in [(n2, "w2"), (n3, "w3")] {
        let mut w = plain(node, id).await;
        w.client
            .subscribe("$share/g/jobs/#", QoS::AtLeastOnce)
            .await
            .unwrap();
        w.suback().await;
        workers.push(w);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    const JOBS: usize = 40;
    for i in 0..JOBS {
        publisher
            .client
            .publish(format!("jobs/{i}"), QoS::AtLeastOnce, false, "job")
            .await
            .unwrap();
    }
    let mut seen = Vec::new();
    for w in &mut workers {
        w.publishes_within(Duration::from_millis(1500), |p| {
            seen.push(String::from_utf8_lossy(&p.topic).to_string())
        })
        .await;
    }
    seen.sort();
    seen.dedup();
    let total: usize = seen.len();
    assert_eq!(total, JOBS, "each job to exactly one worker, cluster-wide");
}

#[tokio::test]
async fn a_client_id_connecting_to_another_node_takes_the_session_over() {
    let Some(cluster) = Cluster::start(2, &[]) else {
        return;
    };
    let mut first = plain(&cluster.nodes[0], "phone").await;
    let _second = plain(&cluster.nodes[1], "phone").await;
    let ended = first.ended().await;
    assert!(
        ended
            .0
            .contains(&format!("{:?}", DisconnectReasonCode::SessionTakenOver)),
        "ended with DISCONNECT 0x8E: {ended:?}"
    );
}

#[tokio::test]
async fn kicks_and_membership_changes_reach_every_node() {
    let Some(cluster) = Cluster::start(2, USERS) else {
        return;
    };
    let [n1, n2] = &cluster.nodes[..] else {
        unreachable!()
    };
    let mut alice = login(n1, "alice").await;
    request_ok(
        &mut alice,
        "alice",
        "group.create",
        json!({"id": "team", "members": ["bob"]}),
    )
    .await;
    let mut bob = login(n2, "bob").await;
    // Node 2 reloads the membership as soon as node 1 announces it (see topics.md, "Cluster").
    common::eventually(WAIT, "node 2 knows the group", async || {
        let code = subscribe(&mut bob, "c/g.team/m").await;
        (code == SubscribeReasonCode::Success(QoS::AtLeastOnce)).then_some(())
    })
    .await;

    // Removed on node 1: node 2 refuses Bob's next publish into the group.
    request_ok(
        &mut alice,
        "alice",
        "group.remove",
        json!({"conv": "g.team", "user": "bob"}),
    )
    .await;
    common::eventually(WAIT, "node 2 refuses the removed member", async || {
        bob.client
            .publish("c/g.team/m", QoS::AtLeastOnce, false, "still here?")
            .await
            .unwrap();
        loop {
            match bob.next().await {
                Ok(v5::Incoming::PubAck(ack)) => {
                    return (ack.reason != PubAckReason::Success).then_some(())
                }
                Ok(_) => continue,
                Err(e) => panic!("{e:?}"),
            }
        }
    })
    .await;

    // Bob's password changed over node 1's API: his connection on node 2 ends.
    let api = Api::new(n1);
    let token = api.token("bob", password("bob")).await;
    let (s, _) = api
        .post(
            "/api/v1/password",
            Some(&token),
            json!({"old": password("bob"), "new": "a new one"}),
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let ended = tokio::time::timeout(WAIT, bob.ended()).await;
    assert!(ended.is_ok(), "bob's connection on node 2 was closed");
}

/// Logs in as `user.device` at `addr`, subscribed to the user's own stream.
async fn login_at(addr: std::net::SocketAddr, user: &str, device: &str) -> v5::Client {
    let mut o = v5::MqttOptions::new(format!("{user}.{device}"), "127.0.0.1", addr.port());
    o.set_keep_alive(Duration::from_secs(5));
    o.set_credentials(user, password(user));
    let (mut c, _) = v5::Client::connect(o).await;
    subscribe(&mut c, &format!("u/{user}/#")).await;
    c
}

/// Alice (on `node`) sends `n` direct messages to Bob, one every few milliseconds.
fn send_to_bob(alice: &v5::Client, n: usize) -> tokio::task::JoinHandle<()> {
    let client = alice.client.clone();
    tokio::spawn(async move {
        for i in 1..=n {
            client
                .publish("c/d.alice.bob/m", QoS::AtLeastOnce, false, format!("m{i}"))
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
}

/// The `seq`s Bob's live stream brings, until `until` of them (or `stop` says so).
async fn bob_reads(bob: &mut v5::Client, until: usize) -> Vec<u64> {
    let mut seqs = Vec::new();
    while seqs.len() < until {
        let p = publish_on(bob, "u/bob/c/d.alice.bob/m").await;
        seqs.push(envelope(&p)["seq"].as_u64().unwrap());
    }
    seqs
}

/// Everything after `after` in Bob's direct conversation, by `sync`, page by page.
async fn sync_after(bob: &mut v5::Client, mut after: u64) -> Vec<u64> {
    let mut seqs = Vec::new();
    loop {
        let body = json!({"conv": "d.alice.bob", "after": after});
        let reply = request_ok(bob, "bob", "sync", body).await;
        for m in reply["messages"].as_array().unwrap() {
            after = m["seq"].as_u64().unwrap();
            seqs.push(after);
        }
        if reply["more"] != true {
            return seqs;
        }
    }
}

/// Whether presence on `p/bob` says `status` within `within` (read a second at a time, so
/// a quiet stretch is no failure).
async fn bob_shows(alice: &mut v5::Client, status: &str, within: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    while tokio::time::Instant::now() < deadline {
        let mut seen = false;
        alice
            .publishes_within(Duration::from_secs(1), |p| {
                seen |=
                    p.topic == "p/bob" && !p.payload.is_empty() && envelope(&p)["status"] == status;
            })
            .await;
        if seen {
            return true;
        }
    }
    false
}

#[tokio::test]
async fn a_node_killed_mid_stream_loses_nothing_and_its_users_go_offline() {
    let Some(cluster) = Cluster::start(1, USERS) else {
        return;
    };
    let n1 = &cluster.nodes[0];
    let (n2, _n2_dir) = cluster.process_node("n2");
    let mut alice = login(n1, "alice").await;
    // A first message makes them contacts, who may see each other's presence.
    alice
        .client
        .publish("c/d.alice.bob/m", QoS::AtLeastOnce, false, "hi")
        .await
        .unwrap();
    alice.pubacks(1).await;
    assert_eq!(
        subscribe(&mut alice, "p/bob").await,
        SubscribeReasonCode::Success(QoS::AtLeastOnce)
    );
    let mut bob = login_at(n2.mqtt, "bob", "phone").await;
    assert!(bob_shows(&mut alice, "online", 2 * WAIT).await);

    // Node 2 dies with kill -9 while Alice (on node 1) writes to Bob (on node 2).
    const N: usize = 100;
    let mut sender = login_device(n1, "alice", "laptop").await;
    let sending = send_to_bob(&sender, N);
    let live = bob_reads(&mut bob, 20).await;
    n2.kill();
    let timeout = Duration::from_secs(4 * NODE_TIMEOUT_SECS);
    assert!(
        bob_shows(&mut alice, "offline", timeout).await,
        "Bob shows offline once his node has been silent for the node timeout"
    );
    sending.await.unwrap();
    sender.pubacks(N).await;

    // Bob's phone reconnects (through the load balancer, to node 1) and syncs what it missed.
    let mut bob = login_at(n1.mqtt, "bob", "phone").await;
    let last = *live.last().unwrap();
    let synced = sync_after(&mut bob, last).await;
    let mut all = live.clone();
    all.extend(&synced);
    let want: Vec<u64> = (2..=N as u64 + 1).collect();
    assert_eq!(all, want, "every acknowledged message, once, in order");
    let stored =
        cluster.nodes[0].with_store(|s| s.after("d.alice.bob", 0, 1000).unwrap().items.len());
    assert_eq!(stored, N + 1);
}

#[tokio::test]
async fn a_nats_restart_loses_no_chat_message_and_live_delivery_resumes() {
    let Some(mut cluster) = Cluster::start(2, USERS) else {
        return;
    };
    let mut alice = login(&cluster.nodes[0], "alice").await;
    let mut bob = login(&cluster.nodes[1], "bob").await;
    const N: usize = 150;
    // Alice's acknowledgements are read below, so nothing else reads her events.
    let sending = send_to_bob(&alice, N);
    let mut seqs = bob_reads(&mut bob, 20).await;
    cluster.nats.restart();
    sending.await.unwrap();
    alice.pubacks(N).await;
    // Messages that crossed no bus while NATS was down leave a hole that the next live one
    // reveals: node 2 reads the hole from the store and delivers it in order.
    alice
        .client
        .publish("c/d.alice.bob/m", QoS::AtLeastOnce, false, "after")
        .await
        .unwrap();
    seqs.extend(bob_reads(&mut bob, N + 1 - seqs.len()).await);
    let want: Vec<u64> = (1..=N as u64 + 1).collect();
    assert_eq!(
        seqs, want,
        "live, once and in order, across the NATS restart"
    );
}

#[tokio::test]
async fn presence_and_connection_limits_count_every_node() {
    let Some(cluster) = Cluster::start_with(2, USERS, |c| {
        c.chat.presence_grace_secs = 1;
        c.limits.max_connections_per_user = 2;
    }) else {
        return;
    };
    let [n1, n2] = &cluster.nodes[..] else {
        unreachable!()
    };
    let mut alice = login(n1, "alice").await;
    alice
        .client
        .publish("c/d.alice.bob/m", QoS::AtLeastOnce, false, "hi")
        .await
        .unwrap();
    subscribe(&mut alice, "p/bob").await;
    let phone = login_at(n1.mqtt, "bob", "phone").await;
    assert!(bob_shows(&mut alice, "online", 2 * WAIT).await);
    let laptop = login_at(n2.mqtt, "bob", "laptop").await;

    // A third connection anywhere is one too many for the user.
    let mut o = v5::MqttOptions::new("bob.tablet", "127.0.0.1", n2.port());
    o.set_credentials("bob", password("bob"));
    let (_, refused) = v5::Client::try_connect(o).await;
    assert!(
        format!("{refused:?}").contains("QuotaExceeded"),
        "the third connection, counted across nodes, is refused: {refused:?}"
    );

    // The phone leaves node 1; the laptop on node 2 keeps Bob online past the grace period.
    drop(phone);
    let offline = bob_shows(&mut alice, "offline", Duration::from_secs(3)).await;
    assert!(!offline, "still online through node 2");
    drop(laptop);
    let offline = bob_shows(&mut alice, "offline", 2 * WAIT).await;
    assert!(offline, "offline once both are gone");
}

#[tokio::test]
async fn a_persistent_sessions_queue_stays_on_its_node() {
    let Some(cluster) = Cluster::start(2, &[]) else {
        return;
    };
    let [n1, n2] = &cluster.nodes[..] else {
        unreachable!()
    };
    let persistent = |node: &common::TestServer| {
        let mut o = v5::MqttOptions::new("meter", "127.0.0.1", node.port());
        o.set_clean_start(false);
        o.set_connect_properties(rumqttc::v5::mqttbytes::v5::ConnectProperties {
            session_expiry_interval: Some(300),
            ..Default::default()
        });
        o
    };
    let (mut meter, _) = v5::Client::connect(persistent(n1)).await;
    meter
        .client
        .subscribe("jobs/#", QoS::AtLeastOnce)
        .await
        .unwrap();
    meter.suback().await;
    meter.vanish();
    let publisher = plain(n2, "dispatcher").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    publisher
        .client
        .publish("jobs/1", QoS::AtLeastOnce, false, "queued on node 1")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Back on the same node: the session and its queue are there.
    let (mut meter, connack) = v5::Client::connect(persistent(n1)).await;
    assert!(matches!(connack, v5::Incoming::ConnAck(ref a) if a.session_present));
    let p = meter.publish().await;
    assert_eq!(&p.payload[..], b"queued on node 1");
    meter.vanish();
    publisher
        .client
        .publish("jobs/2", QoS::AtLeastOnce, false, "queued on node 1 again")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;

    // On another node: a new session (session present = 0), and what node 1 queued is gone.
    let (mut meter, connack) = v5::Client::connect(persistent(n2)).await;
    assert!(matches!(connack, v5::Incoming::ConnAck(ref a) if !a.session_present));
    meter.no_publish(Duration::from_millis(500)).await;
}

#[tokio::test]
async fn a_takeover_whose_message_was_lost_is_fenced_by_the_roster() {
    let Some(cluster) = Cluster::start(1, USERS) else {
        return;
    };
    let mut phone = login_at(cluster.nodes[0].mqtt, "bob", "phone").await;
    // Another node takes bob.phone over in the store, and its message over NATS never comes.
    common::eventually(WAIT, "node 1 has recorded bob.phone", async || {
        let n = cluster.nodes[0].with_store(|s| s.user_connections("bob", "", None).unwrap());
        (n == 1).then_some(())
    })
    .await;
    // By a node that is alive (and not one a busy machine could get expired meanwhile, taking
    // its rows with it).
    cluster.nodes[0].with_store(|s| {
        s.node_alive("n9").unwrap();
        s.device_connected("n9", "bob.phone", "bob").unwrap()
    });
    let ended = tokio::time::timeout(WAIT, phone.ended())
        .await
        .expect("closed");
    assert!(ended.0.contains("SessionTakenOver"), "{ended:?}");
}

/// Subscribes on `node` to `filter` and returns the retained payloads that come at once.
async fn retained_on(node: &common::TestServer, id: &str, filter: &str) -> Vec<Vec<u8>> {
    let mut c = plain(node, id).await;
    c.client.subscribe(filter, QoS::AtLeastOnce).await.unwrap();
    c.suback().await;
    let mut got = Vec::new();
    c.publishes_within(Duration::from_millis(300), |p| {
        if p.retain {
            got.push(p.payload.to_vec())
        }
    })
    .await;
    got
}

#[tokio::test]
async fn a_node_started_later_has_the_retained_messages() {
    let Some(mut cluster) = Cluster::start(1, &[]) else {
        return;
    };
    let setter = plain(&cluster.nodes[0], "setter").await;
    for (topic, payload) in [("status/door", "open"), ("status/light", "on")] {
        setter
            .client
            .publish(topic, QoS::AtLeastOnce, true, payload)
            .await
            .unwrap();
    }
    // Written to the store behind the PUBACK; give it a moment.
    tokio::time::sleep(Duration::from_millis(300)).await;
    cluster.add_node(&[], |_| {});
    let mut got = retained_on(&cluster.nodes[1], "reader", "status/#").await;
    got.sort();
    assert_eq!(got, [b"on".to_vec(), b"open".to_vec()]);

    // Cleared on node 2: a third node starts without it.
    let clearer = plain(&cluster.nodes[1], "clearer").await;
    clearer
        .client
        .publish("status/door", QoS::AtLeastOnce, true, "")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    cluster.add_node(&[], |_| {});
    let got = retained_on(&cluster.nodes[2], "reader3", "status/#").await;
    assert_eq!(got, [b"on".to_vec()]);
}

#[tokio::test]
async fn a_postgres_outage_holds_the_pubacks_and_the_cluster_recovers_by_itself() {
    if std::env::var(natter::store::postgres::TEST_URL_VAR).is_err() {
        eprintln!("SKIPPED: needs PostgreSQL installed (NATTER_TEST_POSTGRES_URL says it is)");
        return;
    }
    // A PostgreSQL of this test's own, since it stops it.
    let pg = tempfile::tempdir().unwrap();
    let admin = common::postgres_ctl("start", pg.path());
    let database = natter::store::postgres::test_database_on(&admin);
    let Some(cluster) = Cluster::start_on(database, 2, USERS, |c| {
        c.storage.commit_retry_secs = 60;
    }) else {
        common::postgres_ctl("stop", pg.path());
        return;
    };
    let [n1, n2] = &cluster.nodes[..] else {
        unreachable!()
    };
    let mut alice = login_device(n1, "alice", "laptop").await;
    let mut watcher = login(n1, "alice").await;
    let mut bob = login_at(n2.mqtt, "bob", "phone").await;
    alice
        .client
        .publish("c/d.alice.bob/m", QoS::AtLeastOnce, false, "before")
        .await
        .unwrap();
    alice.pubacks(1).await;
    assert_eq!(bob_reads(&mut bob, 1).await, [1]);

    // Down for longer than a node's timeout: no PUBACK for what is not committed.
    common::postgres_ctl("stop", pg.path());
    alice
        .client
        .publish("c/d.alice.bob/m", QoS::AtLeastOnce, false, "during")
        .await
        .unwrap();
    let early = tokio::time::timeout(Duration::from_secs(3), alice.pubacks(1)).await;
    assert!(early.is_err(), "a PUBACK while the database was down");
    // Longer than a node's timeout (NODE_TIMEOUT_SECS) in all.
    tokio::time::sleep(Duration::from_secs(NODE_TIMEOUT_SECS)).await;
    common::postgres_ctl("start", pg.path());
    tokio::time::timeout(WAIT * 4, alice.pubacks(1))
        .await
        .expect("the PUBACK once it is committed");
    assert_eq!(
        bob_reads(&mut bob, 1).await,
        [2],
        "delivered across nodes, no restart"
    );

    // The nodes expired each other while neither could say it was alive; each records its
    // devices again, so Bob (connected throughout) shows online.
    tokio::time::sleep(Duration::from_secs(NODE_TIMEOUT_SECS)).await;
    assert_eq!(
        subscribe(&mut watcher, "p/bob").await,
        SubscribeReasonCode::Success(QoS::AtLeastOnce)
    );
    let p = publish_on(&mut watcher, "p/bob").await;
    assert_eq!(envelope(&p)["status"], "online", "{}", envelope(&p));
    drop(cluster);
    common::postgres_ctl("stop", pg.path());
}

#[tokio::test]
async fn an_account_made_on_one_node_is_usable_on_another_at_once() {
    let Some(cluster) = Cluster::start(2, USERS) else {
        return;
    };
    let mut alice = login(&cluster.nodes[1], "alice").await;
    // Registered over node 1's API, added to a group on node 2 straight away.
    Api::new(&cluster.nodes[0]).account("zed", "phone").await;
    request_ok(
        &mut alice,
        "alice",
        "group.create",
        json!({"id": "new", "members": ["zed"]}),
    )
    .await;
    // Added behind every node's back (as `natter user add` does): node 2 finds it in the
    // store rather than refusing it until its next reload.
    cluster.nodes[0].add_user("yan", "pw-y");
    request_ok(
        &mut alice,
        "alice",
        "group.add",
        json!({"conv": "g.new", "user": "yan"}),
    )
    .await;
}

/// Sends `{user}-{i}` for `i` in `from..n` into `g.team` from `addr`, each waiting for its
/// PUBACK; returns how many were acknowledged before the connection ended (if it did).
fn send_numbered(
    addr: std::net::SocketAddr,
    user: &'static str,
    from: usize,
    n: usize,
) -> tokio::task::JoinHandle<usize> {
    tokio::spawn(async move {
        let mut o = v5::MqttOptions::new(format!("{user}.sender"), "127.0.0.1", addr.port());
        o.set_keep_alive(Duration::from_secs(5));
        o.set_credentials(user, password(user));
        let (mut c, _) = v5::Client::connect(o).await;
        for i in from..n {
            let body = json!({"cid": format!("{user}-{i}"), "t": format!("{user} {i}")});
            if c.client
                .publish("c/g.team/m", QoS::AtLeastOnce, false, body.to_string())
                .await
                .is_err()
            {
                return i;
            }
            loop {
                match c.next().await {
                    Ok(v5::Incoming::PubAck(ack)) => {
                        assert_eq!(ack.reason, PubAckReason::Success, "{user}-{i}");
                        break;
                    }
                    Ok(_) => continue,
                    Err(_) => return i,
                }
            }
            tokio::time::sleep(Duration::from_millis(3)).await;
        }
        n
    })
}

/// The `seq`s a reader's live stream of `g.team` brings, until `until` arrives or the
/// connection ends.
async fn read_team(c: &mut v5::Client, user: &str, until: Option<u64>) -> Vec<u64> {
    let topic = format!("u/{user}/c/g.team/m");
    let mut seqs = Vec::new();
    while until.is_none_or(|u| seqs.last() != Some(&u)) {
        match c.next().await {
            Ok(v5::Incoming::Publish(p)) if p.topic == topic => {
                seqs.push(envelope(&p)["seq"].as_u64().unwrap());
            }
            Ok(_) => continue,
            Err(_) => break,
        }
    }
    seqs
}

#[tokio::test]
async fn a_node_killed_under_load_on_every_node_loses_no_acknowledged_message() {
    let Some(cluster) = Cluster::start(2, USERS) else {
        return;
    };
    let [n1, n2] = &cluster.nodes[..] else {
        unreachable!()
    };
    let (n3, _n3_dir) = cluster.process_node("n3");
    let mut alice = login(n1, "alice").await;
    let mut bob = login(n2, "bob").await;
    let mut eve = login_at(n3.mqtt, "eve", "phone").await;
    request_ok(
        &mut alice,
        "alice",
        "group.create",
        json!({"id": "team", "members": ["bob", "eve"]}),
    )
    .await;
    for (c, user) in [(&mut bob, "bob"), (&mut eve, "eve")] {
        publish_on(c, &format!("u/{user}/events")).await;
    }
    // Nodes 2 and 3 install the membership a moment after the event (topics.md, "Cluster").
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Publishers and subscribers on every node; node 3 dies mid-stream.
    const N: usize = 80;
    let senders = [
        send_numbered(n1.mqtt, "alice", 0, N),
        send_numbered(n2.mqtt, "bob", 0, N),
        send_numbered(n3.mqtt, "eve", 0, N),
    ];
    let mut eve_seen = Vec::new();
    let until = tokio::time::Instant::now() + Duration::from_millis(400);
    while let Ok(Ok(p)) = tokio::time::timeout_at(until, eve.next()).await {
        if let v5::Incoming::Publish(p) = p {
            if p.topic == "u/eve/c/g.team/m" {
                eve_seen.push(envelope(&p)["seq"].as_u64().unwrap());
            }
        }
    }
    assert!(!eve_seen.is_empty(), "the stream had begun");
    n3.kill();
    let [a, b, e] = senders;
    let (a, b, eve_acked) = (a.await.unwrap(), b.await.unwrap(), e.await.unwrap());
    assert_eq!((a, b), (N, N), "the survivors kept serving");
    assert!(eve_acked < N, "node 3 died mid-stream");
    // Eve's phone comes back through the load balancer (to node 1) and sends what was not
    // acknowledged, under the same cids: what node 3 stored without acknowledging is kept once.
    assert_eq!(
        send_numbered(n1.mqtt, "eve", eve_acked, N).await.unwrap(),
        N
    );
    let total = cluster.nodes[0].with_store(|s| {
        let items = s.after("g.team", 0, 10_000).unwrap().items;
        let mut cids: Vec<String> = items
            .iter()
            .filter_map(|i| i.envelope.cid.clone())
            .collect();
        cids.sort();
        let mut want: Vec<String> = ["alice", "bob", "eve"]
            .iter()
            .flat_map(|u| (0..N).map(move |i| format!("{u}-{i}")))
            .collect();
        want.sort();
        assert_eq!(cids, want, "every message once in the store");
        items.len() as u64
    });
    // Those connected to the survivors got everything live, once, in order.
    let want: Vec<u64> = (1..=total).collect();
    assert_eq!(read_team(&mut bob, "bob", Some(total)).await, want);
    assert_eq!(read_team(&mut alice, "alice", Some(total)).await, want);
    // Eve syncs from the last message she saw.
    let mut eve = login_at(n1.mqtt, "eve", "phone").await;
    let mut after = *eve_seen.last().unwrap();
    let mut all = eve_seen;
    loop {
        let body = json!({"conv": "g.team", "after": after});
        let reply = request_ok(&mut eve, "eve", "sync", body).await;
        for m in reply["messages"].as_array().unwrap() {
            after = m["seq"].as_u64().unwrap();
            all.push(after);
        }
        if reply["more"] != true {
            break;
        }
    }
    assert_eq!(
        all, want,
        "eve: every message once, in order, after her sync"
    );
}
