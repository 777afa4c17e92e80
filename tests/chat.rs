//! Chat identity and authorization end to end: accounts, direct and group conversations, the
//! per-user stream, and a third user who tries every filter and topic and gets nothing.

mod common;

use std::time::Duration;

use common::chat::*;
use common::clients::{v4, v5};
use common::mosquitto::{publish_ok, run, Sub};
use common::{eventually, TestServer};
use rumqttc::v5::mqttbytes::v5::{ConnectReturnCode, PubAckReason, SubscribeReasonCode};
use rumqttc::v5::mqttbytes::QoS;
use serde_json::{json, Value};

#[tokio::test]
async fn two_users_chat_directly_and_in_a_group_while_a_third_sees_nothing() {
    let server = TestServer::start_with_users(USERS, |_| {});
    let mut alice = login(&server, "alice").await;
    let mut bob = login(&server, "bob").await;
    let mut eve = login(&server, "eve").await;
    assert_eq!(
        subscribe(&mut bob, "u/bob/#").await,
        SubscribeReasonCode::Success(QoS::AtLeastOnce)
    );
    assert_eq!(
        subscribe(&mut alice, "u/alice/#").await,
        SubscribeReasonCode::Success(QoS::AtLeastOnce)
    );
    // Eve tries every wide filter (accepted, narrowed to what she may read) and Bob's stream
    // (refused outright).
    for filter in ["#", "c/#", "c/+/m", "+/+/+", "u/+/#", "+/+/+/+/+"] {
        assert_eq!(
            subscribe(&mut eve, filter).await,
            SubscribeReasonCode::Success(QoS::AtLeastOnce),
            "{filter}"
        );
    }
    for filter in [
        "u/bob/#",
        "u/alice/c/d.alice.bob/m",
        "c/d.alice.bob/m",
        "q/bob/#",
    ] {
        assert_eq!(
            subscribe(&mut eve, filter).await,
            SubscribeReasonCode::NotAuthorized,
            "{filter}"
        );
    }

    // Direct: no setup needed.
    alice
        .client
        .publish("c/d.alice.bob/m", QoS::AtLeastOnce, false, "hi bob")
        .await
        .unwrap();
    let got = publish_on(&mut bob, "u/bob/c/d.alice.bob/m").await;
    assert_eq!(text(&got), "hi bob");
    let envelope: Value = serde_json::from_slice(&got.payload).unwrap();
    assert_eq!(envelope["from"], "alice");
    assert_eq!(envelope["dev"], "alice.test");
    assert_eq!(envelope["conv"], "d.alice.bob");
    assert_eq!(envelope["seq"], 1);
    let echo = publish_on(&mut alice, "u/alice/c/d.alice.bob/m").await;
    assert_eq!(
        text(&echo),
        "hi bob",
        "the sender's other devices see it too"
    );

    // Group: created by request, with Bob as a member.
    let reply = request_ok(
        &mut alice,
        "alice",
        "group.create",
        json!({"id": "team", "name": "Team", "members": ["bob"]}),
    )
    .await;
    assert_eq!(reply["conv"], "g.team");
    let event = publish_on(&mut bob, "u/bob/events").await;
    let event: Value = serde_json::from_slice(&event.payload).unwrap();
    assert_eq!(event["type"], "member_added");
    assert_eq!(event["conv"], "g.team");
    bob.client
        .publish("c/g.team/m", QoS::AtLeastOnce, false, "hello team")
        .await
        .unwrap();
    let got = publish_on(&mut alice, "u/alice/c/g.team/m").await;
    assert_eq!(text(&got), "hello team");

    // Eve, subscribed to everything she could think of, got nothing at all.
    eve.no_publish(Duration::from_millis(500)).await;
}

#[tokio::test]
async fn refused_publishes_get_0x87_on_5_0_and_an_error_event_on_3_1_1() {
    let server = TestServer::start_with_users(USERS, |_| {});
    let mut eve = login(&server, "eve").await;
    subscribe(&mut eve, "u/eve/#").await;
    for topic in [
        "c/d.alice.bob/m",
        "p/alice",
        "p/eve",
        "u/alice/events",
        "q/alice/group.create",
        "c/g.nope/m",
    ] {
        eve.client
            .publish(topic, QoS::AtLeastOnce, false, "x")
            .await
            .unwrap();
        loop {
            match eve.next().await.unwrap() {
                v5::Incoming::PubAck(a) => {
                    assert_eq!(a.reason, PubAckReason::NotAuthorized, "{topic}");
                    break;
                }
                _ => continue,
            }
        }
    }

    // 3.1.1: acknowledged, dropped, explained on u/eve/errors, and still connected.
    let mut o = v4::MqttOptions::new("eve.old", "127.0.0.1", server.port());
    o.set_keep_alive(Duration::from_secs(5));
    o.set_credentials("eve", "pw-e");
    let (mut old, _) = v4::Client::connect(o).await;
    old.client
        .subscribe("u/eve/#", rumqttc::QoS::AtLeastOnce)
        .await
        .unwrap();
    old.suback().await;
    old.client
        .publish(
            "c/d.alice.bob/m",
            rumqttc::QoS::AtLeastOnce,
            false,
            "sneaky",
        )
        .await
        .unwrap();
    // Both the PUBACK and the error event arrive, in either order.
    let (mut acked, mut explained) = (false, false);
    while !(acked && explained) {
        match old.next().await {
            Ok(v4::Incoming::PubAck(_)) => acked = true,
            Ok(v4::Incoming::Publish(p)) => {
                assert_eq!(p.topic, "u/eve/errors", "{p:?}");
                let err: Value = serde_json::from_slice(&p.payload).unwrap();
                assert_eq!(err["error"], "not_member");
                assert_eq!(err["topic"], "c/d.alice.bob/m");
                explained = true;
            }
            Ok(v4::Incoming::ConnAck(a)) => panic!("the client reconnected: {a:?}"),
            Ok(_) => {}
            Err(e) => panic!("the refusal closed the connection: {e:?}"),
        }
    }
    // The same connection (this client never reconnects) still carries an allowed message
    // there and back: Eve's own copy of her direct message to Alice.
    old.client
        .publish(
            "c/d.alice.eve/m",
            rumqttc::QoS::AtLeastOnce,
            false,
            "still here",
        )
        .await
        .unwrap();
    let copy = old.publish().await;
    assert_eq!(copy.topic, "u/eve/c/d.alice.eve/m");
    let envelope: Value = serde_json::from_slice(&copy.payload).unwrap();
    assert_eq!(envelope["t"], "still here");
}

#[tokio::test]
async fn a_group_joined_later_arrives_on_the_same_subscription_and_leaving_stops_it() {
    // No delivered receipts: the one for "welcome", announced at a batching tick while Bob was
    // still a member, could reach his stream after the removal event, where only events may.
    let server = TestServer::start_with_users(USERS, |c| c.chat.delivery_receipts = false);
    let mut alice = login(&server, "alice").await;
    let mut bob = login(&server, "bob").await;
    subscribe(&mut bob, "u/bob/#").await;
    // Bob also subscribes directly to the group topic he does not belong to yet: refused.
    assert_eq!(
        subscribe(&mut bob, "c/g.later/m").await,
        SubscribeReasonCode::NotAuthorized
    );

    request_ok(&mut alice, "alice", "group.create", json!({"id": "later"})).await;
    request_ok(
        &mut alice,
        "alice",
        "group.add",
        json!({"conv": "g.later", "user": "bob"}),
    )
    .await;
    alice
        .client
        .publish("c/g.later/m", QoS::AtLeastOnce, false, "welcome")
        .await
        .unwrap();
    assert_eq!(
        text(&publish_on(&mut bob, "u/bob/c/g.later/m").await),
        "welcome"
    );

    // Now a member, Bob may subscribe to the topic itself too; removal stops both at once.
    assert_eq!(
        subscribe(&mut bob, "c/g.later/m").await,
        SubscribeReasonCode::Success(QoS::AtLeastOnce)
    );
    request_ok(
        &mut alice,
        "alice",
        "group.remove",
        json!({"conv": "g.later", "user": "bob"}),
    )
    .await;
    let event = event_of(&mut bob, "bob", "member_removed").await;
    assert_eq!(event["conv"], "g.later");
    alice
        .client
        .publish("c/g.later/m", QoS::AtLeastOnce, false, "secret")
        .await
        .unwrap();
    // Skip the events still in flight; no message may arrive.
    bob.publishes_within(Duration::from_millis(600), |p| {
        assert!(p.topic.ends_with(b"/events"), "after removal Bob got {p:?}")
    })
    .await;
}

#[tokio::test]
async fn roles_decide_who_manages_a_group() {
    let server = TestServer::start_with_users(USERS, |_| {});
    let mut alice = login(&server, "alice").await;
    let mut bob = login(&server, "bob").await;
    subscribe(&mut bob, "u/bob/#").await;
    request_ok(
        &mut alice,
        "alice",
        "group.create",
        json!({"id": "club", "members": ["bob"]}),
    )
    .await;
    let reply = request(
        &mut bob,
        "bob",
        "group.add",
        json!({"conv": "g.club", "user": "eve"}),
    )
    .await;
    assert_eq!(reply["ok"], false);
    assert_eq!(reply["error"], "forbidden_by_role");
    let reply = request(
        &mut bob,
        "bob",
        "group.remove",
        json!({"conv": "g.club", "user": "alice"}),
    )
    .await;
    assert_eq!(reply["error"], "forbidden_by_role");
    request_ok(
        &mut alice,
        "alice",
        "group.role",
        json!({"conv": "g.club", "user": "bob", "role": "admin"}),
    )
    .await;
    request_ok(
        &mut bob,
        "bob",
        "group.add",
        json!({"conv": "g.club", "user": "eve"}),
    )
    .await;
    let reply = request(&mut bob, "bob", "members", json!({"conv": "g.club"})).await;
    let users: Vec<&str> = reply["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["user"].as_str().unwrap())
        .collect();
    assert_eq!(users, ["alice", "bob", "eve"]);
    let reply = request(&mut bob, "bob", "group.create", json!({"id": "bad id"})).await;
    assert_eq!(reply["error"], "bad_request");
    let reply = request(&mut bob, "bob", "nonsense", json!({})).await;
    assert_eq!(reply["error"], "bad_request");
}

#[tokio::test]
async fn blocked_users_cannot_write_directly() {
    let server = TestServer::start_with_users(USERS, |_| {});
    let mut bob = login(&server, "bob").await;
    let mut eve = login(&server, "eve").await;
    subscribe(&mut bob, "u/bob/#").await;
    request_ok(&mut bob, "bob", "block", json!({"user": "eve"})).await;
    eve.client
        .publish("c/d.bob.eve/m", QoS::AtLeastOnce, false, "spam")
        .await
        .unwrap();
    loop {
        if let v5::Incoming::PubAck(a) = eve.next().await.unwrap() {
            assert_eq!(a.reason, PubAckReason::NotAuthorized);
            break;
        }
    }
}

#[tokio::test]
async fn logins_client_ids_and_limits() {
    let server = TestServer::start_with_users(USERS, |c| {
        c.auth.allow_anonymous = true;
        c.limits.max_connections_per_user = 2;
        c.limits.publish_rate = 1;
        c.limits.publish_burst = 2;
    });
    // Wrong password: a proper refusal, not a reset.
    let mut o = opts(&server, "alice", "alice");
    o.set_credentials("alice", "wrong");
    let (_c, r) = v5::Client::try_connect(o).await;
    assert!(r
        .unwrap_err()
        .0
        .contains(&format!("{:?}", ConnectReturnCode::BadUserNamePassword)));
    let mut o4 = v4::MqttOptions::new("alice", "127.0.0.1", server.port());
    o4.set_credentials("alice", "wrong");
    let (_c, r) = v4::Client::try_connect(o4).await;
    assert!(r.unwrap_err().0.contains("NotAuthorized"));

    // Client ids live in the user's namespace; anonymous clients cannot borrow one.
    for (user, id) in [
        ("alice", "bob"),
        ("alice", "bob.phone"),
        ("alice", "alicex"),
    ] {
        let (_c, r) = v5::Client::try_connect(opts(&server, user, id)).await;
        assert!(
            r.unwrap_err().0.contains("ClientIdentifierNotValid"),
            "{user} as {id}"
        );
    }
    let mut anon = v5::MqttOptions::new("alice.phone", "127.0.0.1", server.port());
    anon.set_keep_alive(Duration::from_secs(5));
    let (_c, r) = v5::Client::try_connect(anon).await;
    assert!(r.unwrap_err().0.contains("ClientIdentifierNotValid"));
    let (mut empty, ack) = v5::Client::connect(opts(&server, "alice", "")).await;
    match ack {
        v5::Incoming::ConnAck(a) => {
            let id = a.properties.unwrap().assigned_client_identifier.unwrap();
            assert!(id.starts_with("alice."), "{id}");
        }
        other => panic!("{other:?}"),
    }

    // Two connections for Alice at most (the one above and one more).
    let (_a2, _) = v5::Client::connect(opts(&server, "alice", "alice.two")).await;
    let (_c, r) = v5::Client::try_connect(opts(&server, "alice", "alice.three")).await;
    assert!(r.unwrap_err().0.contains("QuotaExceeded"));

    // Publish rate: a burst of 2, then the connection is read no faster than 1 a second;
    // nothing is refused.
    let started = std::time::Instant::now();
    let mut reasons = Vec::new();
    for i in 0..3 {
        empty
            .client
            .publish("plain/x", QoS::AtLeastOnce, false, vec![i])
            .await
            .unwrap();
        loop {
            if let v5::Incoming::PubAck(a) = empty.next().await.unwrap() {
                reasons.push(a.reason);
                break;
            }
        }
    }
    assert_eq!(reasons, [PubAckReason::Success; 3]);
    assert!(
        started.elapsed() >= Duration::from_millis(800),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn the_cli_manages_accounts_while_the_server_runs() {
    let server = TestServer::start_with_users(USERS, |_| {});
    let out = server.natter(&["user", "add", "carol"]);
    let generated = out.trim().rsplit(' ').next().unwrap().to_string();
    assert_eq!(generated.len(), 16, "{out}");

    // Carol logs in at once with the generated password, and chats with Alice.
    let mut o = v5::MqttOptions::new("carol", "127.0.0.1", server.port());
    o.set_credentials("carol", generated);
    o.set_keep_alive(Duration::from_secs(5));
    let (mut carol, _) = v5::Client::connect(o).await;
    let mut alice = login(&server, "alice").await;
    subscribe(&mut alice, "u/alice/#").await;
    carol
        .client
        .publish("c/d.alice.carol/m", QoS::AtLeastOnce, false, "hi")
        .await
        .unwrap();
    assert_eq!(
        text(&publish_on(&mut alice, "u/alice/c/d.alice.carol/m").await),
        "hi"
    );

    // A group made from the CLI reaches Alice's stream as an event.
    let conv = server.natter(&[
        "conv", "create", "--owner", "alice", "--id", "ops", "--member", "carol",
    ]);
    assert_eq!(conv.trim(), "g.ops");
    let event = publish_on(&mut alice, "u/alice/events").await;
    let event: Value = serde_json::from_slice(&event.payload).unwrap();
    assert_eq!(event["conv"], "g.ops");
    assert!(server.natter(&["user", "list"]).contains("carol"));

    // Removing Carol closes her connection with DISCONNECT 0x98 (administrative action).
    server.natter(&["user", "remove", "carol"]);
    let e = carol.ended().await;
    assert!(e.0.contains("AdministrativeAction"), "{e:?}");
}

#[test]
fn mosquitto_clients_chat_with_passwords() {
    let server = TestServer::start_with_users(USERS, |_| {});
    let port = server.port();
    let sub = Sub::subscribed(
        port,
        "-u bob -P pw-b -i bob.cli -t u/bob/# -q 1 -C 1 -v",
        "1",
    );
    publish_ok(
        port,
        "-u alice -P pw-a -t c/d.alice.bob/m -m 'hi from the shell'",
    );
    let out = sub.finish();
    let line = out.messages().join("\n");
    let (topic, envelope) = line.split_once(' ').expect("topic and payload");
    assert_eq!(topic, "u/bob/c/d.alice.bob/m");
    let envelope: Value = serde_json::from_str(envelope).unwrap();
    assert_eq!(envelope["t"], "hi from the shell");
    assert_eq!(envelope["from"], "alice");

    // A wrong password is "not authorised", not a reset.
    let out = run("mosquitto_pub", port, "-u alice -P wrong -t x -m x");
    assert!(out.stderr.contains("not authorised"), "{out:?}");
}

#[tokio::test]
async fn a_user_created_again_under_a_removed_id_inherits_nothing() {
    let server = TestServer::start_with_users(USERS, |_| {});
    let alice = login(&server, "alice").await;
    let mut bob = login(&server, "bob").await;
    alice
        .client
        .publish("c/d.alice.bob/m", QoS::AtLeastOnce, false, "secret plans")
        .await
        .unwrap();
    assert_eq!(
        text(&publish_on(&mut bob, "u/bob/c/d.alice.bob/m").await),
        "secret plans"
    );
    // The history is there, and so is the presence contact it makes (once the server has
    // noticed the new conversation).
    let reply = request(&mut bob, "bob", "history", json!({"conv": "d.alice.bob"})).await;
    assert_eq!(reply["messages"].as_array().unwrap().len(), 1, "{reply}");
    // And bob's delivered receipt (batched): the old account's data is all in place before it
    // is removed.
    publish_on(&mut bob, "u/bob/c/d.alice.bob/r").await;
    eventually(common::WAIT, "a presence contact", async || {
        let code = subscribe(&mut bob, "p/alice").await;
        (code == SubscribeReasonCode::Success(QoS::AtLeastOnce)).then_some(())
    })
    .await;

    // `natter user remove bob`: his connection closes once the server has reloaded.
    assert!(server.with_store(|s| s.remove_user("bob").unwrap()));
    let e = bob.ended().await;
    assert!(e.0.contains("AdministrativeAction"), "{e:?}");

    // Someone else gets the id `bob`.
    server.add_user("bob", password("bob"));
    let mut bob = login(&server, "bob").await;
    let reply = request_ok(&mut bob, "bob", "history", json!({"conv": "d.alice.bob"})).await;
    assert_eq!(reply["messages"], json!([]), "{reply}");
    let reply = request(&mut bob, "bob", "sync", json!({"conv": "d.alice.bob"})).await;
    assert_eq!(reply["messages"], json!([]), "{reply}");
    assert_eq!(reply["receipts"], json!([]), "{reply}");
    let reply = request(&mut bob, "bob", "sync", json!({})).await;
    assert_eq!(reply["messages"], json!([]), "{reply}");
    let reply = request(&mut bob, "bob", "search", json!({"q": "secret"})).await;
    assert_eq!(reply["messages"], json!([]), "{reply}");
    let reply = request(&mut bob, "bob", "conversations", json!({})).await;
    assert_eq!(reply["conversations"], json!([]), "{reply}");
    assert_eq!(
        subscribe(&mut bob, "p/alice").await,
        SubscribeReasonCode::NotAuthorized,
        "no presence contact survives the old account"
    );
}

#[tokio::test]
async fn a_block_also_keeps_the_blocked_user_out_of_groups_and_presence() {
    let server = TestServer::start_with_users(USERS, |_| {});
    let mut alice = login(&server, "alice").await;
    let mut bob = login(&server, "bob").await;
    let mut eve = login(&server, "eve").await;
    request_ok(
        &mut alice,
        "alice",
        "group.create",
        json!({"id": "all", "members": ["bob", "eve"]}),
    )
    .await;
    // Sharing a group, Eve sees Bob's presence, until he blocks her.
    assert_eq!(
        subscribe(&mut eve, "p/bob").await,
        SubscribeReasonCode::Success(QoS::AtLeastOnce)
    );
    request_ok(&mut bob, "bob", "block", json!({"user": "eve"})).await;
    assert_eq!(
        subscribe(&mut eve, "p/bob").await,
        SubscribeReasonCode::NotAuthorized
    );
    subscribe(&mut alice, "p/+").await;
    publish_on(&mut alice, "p/bob").await;
    subscribe(&mut eve, "p/+").await;
    eve.publishes_within(Duration::from_millis(500), |p| {
        assert_ne!(p.topic, "p/bob", "the block hides Bob's presence from Eve")
    })
    .await;

    // Nor can Eve pull Bob into a group of hers to write to him there.
    let reply = request(
        &mut eve,
        "eve",
        "group.create",
        json!({"id": "trap", "members": ["bob"]}),
    )
    .await;
    assert_eq!(reply["error"], "blocked", "{reply}");
    request_ok(&mut eve, "eve", "group.create", json!({"id": "trap"})).await;
    let reply = request(
        &mut eve,
        "eve",
        "group.add",
        json!({"conv": "g.trap", "user": "bob"}),
    )
    .await;
    assert_eq!(reply["error"], "blocked", "{reply}");
    let reply = request(
        &mut eve,
        "eve",
        "group.add",
        json!({"conv": "g.trap", "user": "alice"}),
    )
    .await;
    assert_eq!(reply["ok"], true, "others can still be added: {reply}");
    // Bob, who did the blocking, may still add Eve to his own groups.
    request_ok(
        &mut bob,
        "bob",
        "group.create",
        json!({"id": "bobs", "members": ["eve"]}),
    )
    .await;
}

#[tokio::test]
async fn wills_to_chat_topics_are_refused_for_members_and_strangers_alike() {
    use rumqttc::v5::mqttbytes::v5::LastWill;
    let server = TestServer::start_with_users(USERS, |_| {});
    let mut alice = login(&server, "alice").await;
    request_ok(&mut alice, "alice", "group.create", json!({"id": "x"})).await;
    let will = |topic: &str| LastWill::new(topic, "gone", QoS::AtLeastOnce, false, None);

    // A member's will to her own group: refused too (the server never writes a chat message
    // on behalf of a client that is gone).
    let mut o = opts(&server, "alice", "alice.will");
    o.set_last_will(will("c/g.x/m"));
    let (_c, r) = v5::Client::try_connect(o).await;
    let err = r.expect_err("a will to c/g.x/m");
    assert!(
        err.0
            .contains(&format!("{:?}", ConnectReturnCode::NotAuthorized)),
        "{err:?}"
    );
    // A non-member's, on 3.1.1: CONNACK 0x05.
    let mut o = v4::MqttOptions::new("eve.will", "127.0.0.1", server.port());
    o.set_keep_alive(Duration::from_secs(5));
    o.set_credentials("eve", password("eve"));
    o.set_last_will(rumqttc::LastWill::new(
        "c/g.x/m",
        "gone",
        rumqttc::QoS::AtLeastOnce,
        false,
    ));
    let (_c, r) = v4::Client::try_connect(o).await;
    let err = r.expect_err("a will to c/g.x/m");
    assert!(err.0.contains("NotAuthorized"), "{err:?}");

    // The same member with a will to a plain topic connects, and the will is published when
    // the connection is lost.
    subscribe(&mut alice, "status/#").await;
    let mut o = opts(&server, "alice", "alice.will");
    o.set_last_will(will("status/alice"));
    let (c, _) = v5::Client::connect(o).await;
    c.vanish();
    assert_eq!(publish_on(&mut alice, "status/alice").await.payload, "gone");
    alice.no_publish(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn subscriptions_beyond_the_per_connection_limit_get_0x97_or_0x80() {
    let server = TestServer::start_with_users(USERS, |c| {
        c.limits.max_subscriptions_per_connection = 2;
    });
    let (mut c5, _) = v5::Client::connect(opts(&server, "alice", "alice.five")).await;
    let mut codes = Vec::new();
    for filter in ["a/1", "a/2", "a/3", "a/1"] {
        codes.push(subscribe(&mut c5, filter).await);
    }
    let ok = SubscribeReasonCode::Success(QoS::AtLeastOnce);
    assert_eq!(
        codes,
        [ok, ok, SubscribeReasonCode::QuotaExceeded, ok],
        "the third filter is one too many; renewing one is not"
    );
    c5.client.unsubscribe("a/2").await.unwrap();
    assert_eq!(
        subscribe(&mut c5, "a/3").await,
        ok,
        "unsubscribing frees a slot"
    );

    let mut o = v4::MqttOptions::new("bob.four", "127.0.0.1", server.port());
    o.set_keep_alive(Duration::from_secs(5));
    o.set_credentials("bob", password("bob"));
    let (mut c4, _) = v4::Client::connect(o).await;
    let mut codes = Vec::new();
    for filter in ["b/1", "b/2", "b/3"] {
        c4.client
            .subscribe(filter, rumqttc::QoS::AtLeastOnce)
            .await
            .unwrap();
        match c4.suback().await {
            v4::Incoming::SubAck(ack) => codes.push(ack.return_codes[0]),
            other => panic!("{other:?}"),
        }
    }
    let ok = rumqttc::SubscribeReasonCode::Success(rumqttc::QoS::AtLeastOnce);
    assert_eq!(codes, [ok, ok, rumqttc::SubscribeReasonCode::Failure]);
}

/// The next event of `type` on the user's `u/{user}/events`, skipping others.
async fn event_of(c: &mut v5::Client, user: &str, kind: &str) -> Value {
    loop {
        let p = publish_on(c, &format!("u/{user}/events")).await;
        let event: Value = serde_json::from_slice(&p.payload).unwrap();
        if event["type"] == kind {
            return event;
        }
    }
}

#[tokio::test]
async fn members_leave_but_an_owner_leaves_last() {
    let server = TestServer::start_with_users(USERS, |_| {});
    let mut alice = login(&server, "alice").await;
    let mut bob = login(&server, "bob").await;
    request_ok(
        &mut alice,
        "alice",
        "group.create",
        json!({"id": "club", "members": ["bob"]}),
    )
    .await;
    let leave = json!({"conv": "g.club"});
    let reply = request(&mut alice, "alice", "group.leave", leave.clone()).await;
    assert_eq!(reply["error"], "last_owner", "{reply}");

    request_ok(&mut bob, "bob", "group.leave", leave.clone()).await;
    let event = event_of(&mut alice, "alice", "member_removed").await;
    assert_eq!(event["user"], "bob");
    assert_eq!(event["by"], "bob");
    let reply = request(&mut bob, "bob", "members", leave.clone()).await;
    assert_eq!(reply["error"], "not_member", "{reply}");
    let reply = request(&mut bob, "bob", "group.leave", leave.clone()).await;
    assert_eq!(reply["ok"], false, "{reply}");

    // Alone now, the owner may go.
    request_ok(&mut alice, "alice", "group.leave", leave.clone()).await;
    let reply = request(&mut alice, "alice", "members", leave).await;
    assert_eq!(reply["error"], "not_member", "{reply}");
}

#[tokio::test]
async fn group_updates_reach_the_members_as_events() {
    let server = TestServer::start_with_users(USERS, |_| {});
    let mut alice = login(&server, "alice").await;
    let mut bob = login(&server, "bob").await;
    request_ok(
        &mut alice,
        "alice",
        "group.create",
        json!({"id": "club", "name": "Club", "members": ["bob"]}),
    )
    .await;
    let reply = request(
        &mut bob,
        "bob",
        "group.update",
        json!({"conv": "g.club", "name": "Mine"}),
    )
    .await;
    assert_eq!(reply["error"], "forbidden_by_role", "{reply}");

    request_ok(
        &mut alice,
        "alice",
        "group.update",
        json!({"conv": "g.club", "topic": "chess"}),
    )
    .await;
    let event = event_of(&mut bob, "bob", "conversation_updated").await;
    assert_eq!(
        event,
        json!({"type": "conversation_updated", "conv": "g.club", "name": "Club",
               "topic": "chess", "by": "alice"}),
        "an update without a name keeps the name"
    );
    let reply = request(&mut bob, "bob", "conversations", json!({})).await;
    assert_eq!(reply["conversations"][0]["topic"], "chess", "{reply}");
    let reply = request(
        &mut alice,
        "alice",
        "group.update",
        json!({"conv": "g.nope", "name": "x"}),
    )
    .await;
    assert_eq!(reply["error"], "no_such_conversation", "{reply}");
}

#[tokio::test]
async fn natter_user_passwd_replaces_the_password() {
    let server = TestServer::start_with_users(USERS, |_| {});
    // The old password works (and the server has verified it once) before the change.
    let (before, _) = v5::Client::connect(opts(&server, "bob", "bob.before")).await;
    before.vanish();
    server.natter(&["user", "passwd", "bob", "--password", "new-pw-b"]);
    let (_c, r) = v5::Client::try_connect(opts(&server, "bob", "bob.old")).await;
    let err = r.expect_err("the old password is refused");
    assert!(
        err.0
            .contains(&format!("{:?}", ConnectReturnCode::BadUserNamePassword)),
        "{err:?}"
    );
    let mut o = opts(&server, "bob", "bob.new");
    o.set_credentials("bob", "new-pw-b");
    let (_c, ack) = v5::Client::connect(o).await;
    assert!(matches!(ack, v5::Incoming::ConnAck(_)), "{ack:?}");
}
