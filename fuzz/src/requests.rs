//! The typed requests of `q/{user}/{op}` (`chat::requests::Request`) on any op and payload.
//!
//! Input: byte 0 picks the op from [`OPS`] (past its end: the op is the input up to the first
//! newline); the rest is the payload.
//!
//! Properties: the MQTT form (`Request::parse` on bytes) and the HTTP form (`Request::from_json`
//! on the same JSON as a value) agree; every accepted request has its page size within bounds;
//! a request written back as the JSON fields of its op parses to itself.

use natter::chat::requests::Request;
use serde_json::{json, Value};

/// Every op `Request::parse` knows.
pub const OPS: [&str; 16] = [
    "group.create",
    "group.add",
    "group.role",
    "group.remove",
    "group.leave",
    "group.update",
    "block",
    "unblock",
    "conversations",
    "members",
    "sync",
    "presence",
    "push.register",
    "push.unregister",
    "history",
    "search",
];

pub fn check(data: &[u8]) {
    let Some((&ctl, rest)) = data.split_first() else {
        return;
    };
    let (op, payload) = match OPS.get(usize::from(ctl)) {
        Some(op) => (*op, rest),
        None => {
            let end = rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len());
            let Ok(op) = std::str::from_utf8(&rest[..end]) else {
                return;
            };
            (op, rest.get(end + 1..).unwrap_or_default())
        }
    };
    let parsed = Request::parse(op, payload);
    check_same_as_http(op, payload, &parsed);
    let Ok(request) = parsed else {
        return;
    };
    check_bounds(&request);
    let (op_again, fields) = fields_of(&request);
    let again = Request::parse(op_again, fields.to_string().as_bytes());
    assert_eq!(again, Ok(request), "written back as {op_again} {fields}");
}

/// HTTP bodies arrive as a JSON value: where the payload is JSON, both forms give one answer.
/// A payload the bytes form refuses may still be a value (a duplicated key collapses in it),
/// so only an accepted payload must be accepted as a value too; and a value's own text must
/// read like the value (error messages may differ: only the text form has line numbers).
fn check_same_as_http(op: &str, payload: &[u8], parsed: &Result<Request, impl std::fmt::Debug>) {
    let text: &[u8] = if payload.is_empty() { b"{}" } else { payload };
    let Ok(value) = serde_json::from_slice::<Value>(text) else {
        return;
    };
    let from_value = Request::from_json(op, value.clone());
    if let Ok(request) = parsed {
        assert_eq!(from_value.as_ref().ok(), Some(request), "from_json differs");
    }
    let from_text = Request::parse(op, value.to_string().as_bytes());
    assert_eq!(from_text.ok(), from_value.ok(), "{value}");
}

/// What parsing promises: page sizes in `1..=200`, history positions within SQLite's `i64`,
/// a search text that is not blank.
fn check_bounds(r: &Request) {
    let page = |limit: usize| assert!((1..=200).contains(&limit), "limit {limit}");
    match r {
        Request::SyncConversation { limit, .. } | Request::SyncAll { limit, .. } => page(*limit),
        Request::History { before, limit, .. } => {
            page(*limit);
            assert!(i64::try_from(*before).is_ok(), "before {before}");
        }
        Request::Search { q, limit } => {
            page(*limit);
            assert!(!q.trim().is_empty());
        }
        _ => {}
    }
}

/// The op and JSON fields a client sends for `r`.
fn fields_of(r: &Request) -> (&'static str, Value) {
    match r {
        Request::CreateGroup { id, name, members } => (
            "group.create",
            json!({"id": id, "name": name, "members": members}),
        ),
        Request::AddMember { conv, user, role } => (
            "group.add",
            json!({"conv": conv, "user": user, "role": role}),
        ),
        Request::SetRole { conv, user, role } => (
            "group.role",
            json!({"conv": conv, "user": user, "role": role}),
        ),
        Request::RemoveMember { conv, user } => {
            ("group.remove", json!({"conv": conv, "user": user}))
        }
        Request::Leave { conv } => ("group.leave", json!({ "conv": conv })),
        Request::UpdateGroup { conv, name, topic } => (
            "group.update",
            json!({"conv": conv, "name": name, "topic": topic}),
        ),
        Request::Block { user } => ("block", json!({ "user": user })),
        Request::Unblock { user } => ("unblock", json!({ "user": user })),
        Request::Conversations => ("conversations", json!({})),
        Request::Members { conv } => ("members", json!({ "conv": conv })),
        other => fields_of_reads(other),
    }
}

/// The second half of [`fields_of`]: presence, push, and the reading ops.
fn fields_of_reads(r: &Request) -> (&'static str, Value) {
    match r {
        Request::SyncConversation { conv, after, limit } => (
            "sync",
            json!({"conv": conv, "after": after, "limit": limit}),
        ),
        Request::SyncAll { since, limit } => ("sync", json!({"since": since, "limit": limit})),
        Request::Presence { away, hidden } => {
            let status = if *away { "away" } else { "online" };
            ("presence", json!({"status": status, "hidden": hidden}))
        }
        Request::PushRegister { url } => ("push.register", json!({ "url": url })),
        Request::PushUnregister { url } => ("push.unregister", json!({ "url": url })),
        Request::History {
            conv,
            before,
            limit,
        } => (
            "history",
            json!({"conv": conv, "before": before, "limit": limit}),
        ),
        Request::Search { q, limit } => ("search", json!({"q": q, "limit": limit})),
        other => unreachable!("fields_of handles {other:?}"),
    }
}
