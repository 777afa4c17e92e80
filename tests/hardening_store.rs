//! Hardening of the history and groups, end to end: sequence numbers the store cannot hold,
//! bad query input over HTTP and MQTT, read markers past the end, handing a group over, and
//! deleted messages that stay deleted.

mod common;

use common::chat::*;
use common::clients::v5;
use common::http::Api;
use common::TestServer;
use reqwest::StatusCode;
use rumqttc::v5::mqttbytes::v5::PubAckReason;
use rumqttc::v5::mqttbytes::QoS;
use serde_json::{json, Value};

/// One past the largest sequence number (i64::MAX, what SQLite holds).
const TOO_LARGE: &str = "9223372036854775808";

async fn publish(c: &mut v5::Client, topic: &str, payload: impl Into<Vec<u8>>) {
    c.client
        .publish(topic, QoS::AtLeastOnce, false, payload.into())
        .await
        .unwrap();
}

/// The next PUBACK's reason, skipping other packets.
async fn puback(c: &mut v5::Client) -> PubAckReason {
    loop {
        if let v5::Incoming::PubAck(a) = c.next().await.unwrap() {
            return a.reason;
        }
    }
}

async fn send(c: &mut v5::Client, topic: &str, payload: impl Into<Vec<u8>>) -> PubAckReason {
    publish(c, topic, payload).await;
    puback(c).await
}

/// The texts of a history reply, oldest first.
fn texts(reply: &Value) -> Vec<String> {
    let mut t: Vec<String> = reply["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["t"].as_str().unwrap_or("").to_string())
        .collect();
    t.reverse();
    t
}

/// A sequence number above i64::MAX in `re`, `th` or `target` is refused with 0x99 before the
/// store; before, it failed its whole group-commit batch, and another user's message sent at
/// the same moment with it.
#[tokio::test]
async fn a_number_above_the_store_range_is_refused_and_fails_no_one_else() {
    let server = TestServer::start_with_users(USERS, |_| {});
    let mut alice = login(&server, "alice").await;
    let mut bob = login(&server, "bob").await;
    let conv = "d.alice.bob";
    assert_eq!(
        send(&mut alice, &format!("c/{conv}/m"), "first").await,
        PubAckReason::Success
    );
    let bad = [
        ("m", format!(r#"{{"t":"x","re":{TOO_LARGE}}}"#)),
        ("m", r#"{"t":"x","th":18446744073709551615}"#.to_string()),
        ("e", format!(r#"{{"op":"delete","target":{TOO_LARGE}}}"#)),
        ("r", format!(r#"{{"read":{TOO_LARGE}}}"#)),
    ];
    for (i, (kind, payload)) in bad.iter().enumerate() {
        // Sent together, so that both reach the writer's same batch when the bad one gets
        // that far.
        publish(&mut alice, &format!("c/{conv}/{kind}"), payload.as_bytes()).await;
        publish(&mut bob, &format!("c/{conv}/m"), format!("good {i}")).await;
        let (refused, acked) = tokio::join!(puback(&mut alice), puback(&mut bob));
        assert_eq!(refused, PubAckReason::PayloadFormatInvalid, "{payload}");
        assert_eq!(acked, PubAckReason::Success, "beside {payload}");
    }
    let history = request_ok(&mut bob, "bob", "history", json!({"conv": conv})).await;
    assert_eq!(
        texts(&history),
        ["first", "good 0", "good 1", "good 2", "good 3"]
    );
}

/// Query input the store cannot take is a 400 with a clear JSON error, not a 500.
#[tokio::test]
async fn bad_numbers_and_control_characters_in_queries_are_bad_requests() {
    let server = TestServer::start_with_users(USERS, |_| {});
    let api = Api::new(&server);
    let token = api.token("alice", password("alice")).await;
    let cases = [
        format!("/api/v1/conversations/d.alice.bob/messages?after={TOO_LARGE}"),
        format!("/api/v1/conversations/d.alice.bob/messages?before={TOO_LARGE}"),
        "/api/v1/conversations/d.alice.bob/messages?after=-1".to_string(),
        "/api/v1/search?q=%00".to_string(),
        "/api/v1/search?q=a%01b".to_string(),
    ];
    for path in &cases {
        let (status, body) = api.get(path, &token).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}: {body}");
        assert_eq!(body["error"], "bad_request", "{path}: {body}");
        assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    let (status, body) = api
        .get(
            "/api/v1/conversations/d.alice.bob/messages?after=9223372036854775807",
            &token,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // The same operations over MQTT.
    let mut alice = login(&server, "alice").await;
    let sync = format!(r#"{{"conv":"d.alice.bob","after":{TOO_LARGE}}}"#);
    let search = json!({"q": "a\u{0}b"});
    for (op, body) in [
        ("sync", serde_json::from_str(&sync).unwrap()),
        ("search", search),
    ] {
        let reply = request(&mut alice, "alice", op, body).await;
        assert_eq!(reply["error"], "bad_request", "{op}: {reply}");
    }
}

/// A read marker past the conversation's end is kept at its last seq: a later message counts
/// as unread (before, unread stayed 0 for good).
#[tokio::test]
async fn a_read_marker_past_the_end_is_clamped_to_the_last_seq() {
    let server = TestServer::start_with_users(USERS, |_| {});
    let mut alice = login(&server, "alice").await;
    let mut bob = login(&server, "bob").await;
    let conv = "d.alice.bob";
    for t in ["one", "two"] {
        assert_eq!(
            send(&mut alice, &format!("c/{conv}/m"), t).await,
            PubAckReason::Success
        );
    }
    publish(&mut bob, &format!("c/{conv}/r"), r#"{"read": 1000}"#).await;
    let marker = loop {
        let p = publish_on(&mut alice, &format!("u/alice/c/{conv}/r")).await;
        let r: Value = serde_json::from_slice(&p.payload).unwrap();
        if r["type"] == "read" {
            break r;
        }
    };
    assert_eq!(marker["seq"], 2, "{marker}");
    assert_eq!(
        send(&mut alice, &format!("c/{conv}/m"), "three").await,
        PubAckReason::Success
    );
    // Stored (acknowledged) before this request: no wait needed.
    let reply = request_ok(&mut bob, "bob", "sync", json!({"conv": conv})).await;
    assert_eq!(reply["unread"], 1, "{reply}");
}

/// An owner hands the group over (MQTT or HTTP) and stays an admin; the last owner can neither
/// step down nor leave while others remain.
#[tokio::test]
async fn ownership_is_handed_over_and_a_group_never_loses_its_last_owner() {
    let server = TestServer::start_with_users(USERS, |_| {});
    let mut alice = login(&server, "alice").await;
    let mut bob = login(&server, "bob").await;
    let club = json!({"conv": "g.club"});
    request_ok(
        &mut alice,
        "alice",
        "group.create",
        json!({"id": "club", "members": ["bob", "eve"]}),
    )
    .await;
    let demote = json!({"conv": "g.club", "user": "alice", "role": "admin"});
    let reply = request(&mut alice, "alice", "group.role", demote.clone()).await;
    assert_eq!(reply["error"], "last_owner", "{reply}");
    let reply = request(&mut alice, "alice", "group.leave", club.clone()).await;
    assert_eq!(reply["error"], "last_owner", "{reply}");
    let to_eve = json!({"conv": "g.club", "user": "eve"});
    let reply = request(&mut bob, "bob", "group.transfer", to_eve.clone()).await;
    assert_eq!(reply["error"], "forbidden_by_role", "{reply}");

    request_ok(
        &mut alice,
        "alice",
        "group.transfer",
        json!({"conv": "g.club", "user": "bob"}),
    )
    .await;
    let members = request_ok(&mut bob, "bob", "members", club.clone()).await;
    assert_eq!(
        members["members"],
        json!([
            {"user": "alice", "role": "admin"},
            {"user": "bob", "role": "owner"},
            {"user": "eve", "role": "member"},
        ])
    );
    // The former owner, now an admin, may go; the new owner manages the group.
    request_ok(&mut alice, "alice", "group.leave", club.clone()).await;
    let reply = request(&mut bob, "bob", "group.leave", club.clone()).await;
    assert_eq!(reply["error"], "last_owner", "{reply}");

    // Over HTTP: the new owner hands it on to Eve.
    let api = Api::new(&server);
    let token = api.token("bob", password("bob")).await;
    let path = "/api/v1/groups/g.club/owner";
    let (status, body) = api.post(path, Some(&token), json!({"user": "alice"})).await;
    assert_eq!(
        (status, &body["error"]),
        (StatusCode::FORBIDDEN, &json!("not_member")),
        "{body}"
    );
    let (status, _) = api.post(path, Some(&token), json!({"user": "eve"})).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let members = request_ok(&mut bob, "bob", "members", club).await;
    assert_eq!(
        members["members"][0],
        json!({"user": "bob", "role": "admin"})
    );
    assert_eq!(
        members["members"][1],
        json!({"user": "eve", "role": "owner"})
    );
}

/// A deleted message is final: an edit cannot bring its text back, and no reaction lands on it.
#[tokio::test]
async fn a_deleted_message_cannot_be_edited_or_reacted_to() {
    let server = TestServer::start_with_users(USERS, |_| {});
    let mut alice = login(&server, "alice").await;
    let mut bob = login(&server, "bob").await;
    let conv = "d.alice.bob";
    let events = format!("c/{conv}/e");
    assert_eq!(
        send(&mut alice, &format!("c/{conv}/m"), "oops").await,
        PubAckReason::Success
    );
    let delete = r#"{"op":"delete","target":1}"#;
    assert_eq!(
        send(&mut alice, &events, delete).await,
        PubAckReason::Success
    );
    let edit = r#"{"op":"edit","target":1,"t":"back again"}"#;
    let react = r#"{"op":"react","target":1,"emoji":"+1"}"#;
    for (alice_sends, payload) in [(true, edit), (false, react), (true, delete)] {
        let c = if alice_sends { &mut alice } else { &mut bob };
        assert_eq!(
            send(c, &events, payload).await,
            PubAckReason::ImplementationSpecificError,
            "{payload}"
        );
    }
    let history = request_ok(&mut bob, "bob", "sync", json!({"conv": conv})).await;
    let first = &history["messages"][0];
    assert_eq!(first["deleted"], true, "{history}");
    assert!(first.get("t").is_none(), "{history}");
    assert!(first.get("reactions").is_none(), "{history}");
    assert_eq!(
        history["messages"].as_array().unwrap().len(),
        2,
        "{history}"
    );
}
