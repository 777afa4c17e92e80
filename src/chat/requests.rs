//! Typed chat requests: the operations a user asks of the server on `q/{user}/{op}` (and over
//! HTTP), parsed from their JSON fields with no I/O.
//!
//! Parsing applies every rule that needs no state — required fields, unknown fields refused,
//! defaults, page-size bounds — so the service only authorizes and acts. Every parse error is a
//! `bad_request`.

use serde::de::DeserializeOwned;
use serde::Deserialize;

use super::{seq, Role};

/// Page size bounds for history replies.
const DEFAULT_PAGE: usize = 50;
const MAX_PAGE: usize = 200;

/// The page size for a requested `limit`: the default when absent, within `1..=MAX_PAGE`.
pub fn page_size(limit: Option<usize>) -> usize {
    limit.unwrap_or(DEFAULT_PAGE).clamp(1, MAX_PAGE)
}

/// One request, with its defaults applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// `group.create`: a group owned by the requester (a random id when none is given).
    CreateGroup {
        id: Option<String>,
        name: String,
        members: Vec<String>,
    },
    /// `group.add`: adds a member, as `member` unless another role is given.
    AddMember {
        conv: String,
        user: String,
        role: Role,
    },
    /// `group.role`: changes a member's role.
    SetRole {
        conv: String,
        user: String,
        role: Role,
    },
    /// `group.remove`: removes a member.
    RemoveMember { conv: String, user: String },
    /// `group.transfer`: the owner hands the group to another member and becomes an admin.
    TransferOwnership { conv: String, user: String },
    /// `group.leave`: the requester leaves a group.
    Leave { conv: String },
    /// `group.update`: changes a group's name or topic (absent ones stay).
    UpdateGroup {
        conv: String,
        name: Option<String>,
        topic: Option<String>,
    },
    /// `block`: refuses messages from a user.
    Block { user: String },
    /// `unblock`: accepts messages from a user again.
    Unblock { user: String },
    /// `conversations`: the requester's conversations, with unread counts.
    Conversations,
    /// `members`: a conversation's members and roles.
    Members { conv: String },
    /// `sync` with `conv`: one conversation after a sequence number.
    SyncConversation {
        conv: String,
        after: u64,
        limit: usize,
    },
    /// `sync` without `conv`: all the requester's conversations after a stream position
    /// (message id).
    SyncAll { since: i64, limit: usize },
    /// `presence`: the requester's status (`away` or online) and whether it is hidden.
    Presence { away: bool, hidden: bool },
    /// `push.register`: adds a push endpoint.
    PushRegister { url: String },
    /// `push.unregister`: removes a push endpoint.
    PushUnregister { url: String },
    /// `history`: one conversation's messages before a sequence number, newest first.
    History {
        conv: String,
        before: u64,
        limit: usize,
    },
    /// `search`: messages in the requester's conversations matching `q`.
    Search { q: String, limit: usize },
}

/// Why a request could not be read; its code is always `bad_request`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct RequestError(String);

impl RequestError {
    fn new(message: impl Into<String>) -> RequestError {
        RequestError(message.into())
    }

    /// The stable machine-readable code.
    pub fn code(&self) -> &'static str {
        "bad_request"
    }
}

/// Where a request's fields come from: an MQTT payload, or an HTTP body already read as JSON.
enum Fields<'a> {
    Bytes(&'a [u8]),
    Json(serde_json::Value),
}

impl Fields<'_> {
    /// Reads the fields as `T`; an empty payload is an empty object.
    fn decode<T: DeserializeOwned>(self) -> Result<T, RequestError> {
        match self {
            Fields::Bytes(payload) => {
                let payload = if payload.is_empty() { b"{}" } else { payload };
                serde_json::from_slice(payload)
            }
            Fields::Json(value) => serde_json::from_value(value),
        }
        .map_err(|e| RequestError::new(e.to_string()))
    }
}

impl Request {
    /// Reads the request `op` from its MQTT payload.
    pub fn parse(op: &str, payload: &[u8]) -> Result<Request, RequestError> {
        Request::build(op, Fields::Bytes(payload))
    }

    /// Reads the request `op` from an HTTP body, with the same rules as [`Request::parse`].
    pub fn from_json(op: &str, body: serde_json::Value) -> Result<Request, RequestError> {
        Request::build(op, Fields::Json(body))
    }

    /// `history`: before `before` (the newest when absent), at most `limit` (a page size).
    pub fn history(conv: String, before: Option<u64>, limit: Option<usize>) -> Request {
        Request::History {
            conv,
            before: before.unwrap_or(i64::MAX as u64).min(i64::MAX as u64),
            limit: page_size(limit),
        }
    }

    /// `sync` of one conversation after sequence number `after` (nothing lies past the
    /// largest sequence number, so a larger one asks for nothing and reads as it).
    pub fn sync_conversation(conv: String, after: u64, limit: Option<usize>) -> Request {
        Request::SyncConversation {
            conv,
            after: after.min(seq::MAX),
            limit: page_size(limit),
        }
    }

    /// `search` for `q`, which must not be blank nor hold control characters (a NUL would end
    /// the query early inside SQLite's full-text parser; none of them is ever searched for).
    pub fn search(q: String, limit: Option<usize>) -> Result<Request, RequestError> {
        if q.trim().is_empty() {
            return Err(RequestError::new("q must not be empty"));
        }
        if q.chars().any(|c| c.is_control() && !c.is_whitespace()) {
            return Err(RequestError::new("q must not contain control characters"));
        }
        let limit = page_size(limit);
        Ok(Request::Search { q, limit })
    }

    /// The table of operations: each op name, the fields it reads, and the request they make.
    fn build(op: &str, fields: Fields<'_>) -> Result<Request, RequestError> {
        match op {
            "group.create" => fields.decode::<CreateGroupOp>().map(Request::from),
            "group.add" => fields.decode::<MemberOp>().map(MemberOp::add),
            "group.role" => fields.decode::<MemberOp>().and_then(MemberOp::set_role),
            "group.remove" => fields.decode::<MemberOp>().map(MemberOp::remove),
            "group.transfer" => fields.decode::<TransferOp>().map(Request::from),
            "group.leave" => fields.decode::<ConvOp>().map(ConvOp::leave),
            "group.update" => fields.decode::<ConvOp>().map(ConvOp::update),
            "block" => fields
                .decode::<UserOp>()
                .map(|r| Request::Block { user: r.user }),
            "unblock" => fields
                .decode::<UserOp>()
                .map(|r| Request::Unblock { user: r.user }),
            // Takes no fields: its payload is never read.
            "conversations" => Ok(Request::Conversations),
            "members" => fields.decode::<ConvOp>().map(ConvOp::members),
            "sync" => fields.decode::<SyncOp>().map(Request::from),
            "presence" => fields.decode::<PresenceOp>().and_then(Request::try_from),
            "push.register" => fields
                .decode::<PushOp>()
                .map(|r| Request::PushRegister { url: r.url }),
            "push.unregister" => fields
                .decode::<PushOp>()
                .map(|r| Request::PushUnregister { url: r.url }),
            "history" => fields.decode::<HistoryOp>().map(Request::from),
            "search" => fields
                .decode::<SearchOp>()
                .and_then(|r| Request::search(r.q, r.limit)),
            other => Err(RequestError::new(format!("unknown request `{other}`"))),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateGroupOp {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    name: String,
    #[serde(default)]
    members: Vec<String>,
}

impl From<CreateGroupOp> for Request {
    fn from(r: CreateGroupOp) -> Request {
        Request::CreateGroup {
            id: r.id,
            name: r.name,
            members: r.members,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MemberOp {
    conv: String,
    user: String,
    #[serde(default)]
    role: Option<Role>,
}

impl MemberOp {
    /// `group.add`: the role defaults to `member`.
    fn add(self) -> Request {
        Request::AddMember {
            conv: self.conv,
            user: self.user,
            role: self.role.unwrap_or(Role::Member),
        }
    }

    /// `group.role`: the role is required.
    fn set_role(self) -> Result<Request, RequestError> {
        let role = self
            .role
            .ok_or_else(|| RequestError::new("role is required"))?;
        Ok(Request::SetRole {
            conv: self.conv,
            user: self.user,
            role,
        })
    }

    /// `group.remove`: a role, if given, is ignored.
    fn remove(self) -> Request {
        Request::RemoveMember {
            conv: self.conv,
            user: self.user,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TransferOp {
    conv: String,
    user: String,
}

impl From<TransferOp> for Request {
    fn from(r: TransferOp) -> Request {
        Request::TransferOwnership {
            conv: r.conv,
            user: r.user,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConvOp {
    conv: String,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    topic: Option<String>,
}

impl ConvOp {
    /// `group.leave`: a name or topic, if given, is ignored.
    fn leave(self) -> Request {
        Request::Leave { conv: self.conv }
    }

    /// `group.update`.
    fn update(self) -> Request {
        Request::UpdateGroup {
            conv: self.conv,
            name: self.name,
            topic: self.topic,
        }
    }

    /// `members`: a name or topic, if given, is ignored.
    fn members(self) -> Request {
        Request::Members { conv: self.conv }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UserOp {
    user: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SyncOp {
    /// One conversation, after this sequence number…
    #[serde(default)]
    conv: Option<String>,
    #[serde(default, deserialize_with = "seq::required")]
    after: u64,
    /// …or all of the user's conversations after this stream position (message id).
    #[serde(default)]
    since: i64,
    #[serde(default)]
    limit: Option<usize>,
}

impl From<SyncOp> for Request {
    fn from(r: SyncOp) -> Request {
        match r.conv {
            Some(conv) => Request::sync_conversation(conv, r.after, r.limit),
            None => Request::SyncAll {
                since: r.since,
                limit: page_size(r.limit),
            },
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PresenceOp {
    status: String,
    #[serde(default)]
    hidden: bool,
}

impl TryFrom<PresenceOp> for Request {
    type Error = RequestError;

    fn try_from(r: PresenceOp) -> Result<Request, RequestError> {
        let away = match r.status.as_str() {
            "online" => false,
            "away" => true,
            _ => return Err(RequestError::new("status is online or away")),
        };
        Ok(Request::Presence {
            away,
            hidden: r.hidden,
        })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PushOp {
    url: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HistoryOp {
    conv: String,
    #[serde(default)]
    before: Option<u64>,
    #[serde(default)]
    limit: Option<usize>,
}

impl From<HistoryOp> for Request {
    fn from(r: HistoryOp) -> Request {
        Request::history(r.conv, r.before, r.limit)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SearchOp {
    q: String,
    #[serde(default)]
    limit: Option<usize>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &str) -> String {
        v.to_string()
    }

    #[test]
    fn parses_each_op_with_its_defaults() {
        let max = i64::MAX as u64;
        let cases: Vec<(&str, &str, Request)> = vec![
            (
                "group.create",
                "",
                Request::CreateGroup {
                    id: None,
                    name: s(""),
                    members: vec![],
                },
            ),
            (
                "group.create",
                r#"{"id":"club","name":"Club","members":["bob"]}"#,
                Request::CreateGroup {
                    id: Some(s("club")),
                    name: s("Club"),
                    members: vec![s("bob")],
                },
            ),
            (
                "group.add",
                r#"{"conv":"g.c","user":"bob"}"#,
                Request::AddMember {
                    conv: s("g.c"),
                    user: s("bob"),
                    role: Role::Member,
                },
            ),
            (
                "group.add",
                r#"{"conv":"g.c","user":"bob","role":"admin"}"#,
                Request::AddMember {
                    conv: s("g.c"),
                    user: s("bob"),
                    role: Role::Admin,
                },
            ),
            (
                "group.role",
                r#"{"conv":"g.c","user":"bob","role":"owner"}"#,
                Request::SetRole {
                    conv: s("g.c"),
                    user: s("bob"),
                    role: Role::Owner,
                },
            ),
            (
                "group.remove",
                r#"{"conv":"g.c","user":"bob","role":"admin"}"#,
                Request::RemoveMember {
                    conv: s("g.c"),
                    user: s("bob"),
                },
            ),
            (
                "group.transfer",
                r#"{"conv":"g.c","user":"bob"}"#,
                Request::TransferOwnership {
                    conv: s("g.c"),
                    user: s("bob"),
                },
            ),
            (
                "group.leave",
                r#"{"conv":"g.c","name":"ignored"}"#,
                Request::Leave { conv: s("g.c") },
            ),
            (
                "group.update",
                r#"{"conv":"g.c","topic":"t"}"#,
                Request::UpdateGroup {
                    conv: s("g.c"),
                    name: None,
                    topic: Some(s("t")),
                },
            ),
            (
                "block",
                r#"{"user":"eve"}"#,
                Request::Block { user: s("eve") },
            ),
            (
                "unblock",
                r#"{"user":"eve"}"#,
                Request::Unblock { user: s("eve") },
            ),
            ("conversations", "", Request::Conversations),
            ("conversations", "not json", Request::Conversations),
            (
                "members",
                r#"{"conv":"g.c"}"#,
                Request::Members { conv: s("g.c") },
            ),
            (
                "sync",
                r#"{"conv":"g.c","after":4,"since":9}"#,
                Request::SyncConversation {
                    conv: s("g.c"),
                    after: 4,
                    limit: 50,
                },
            ),
            (
                "sync",
                r#"{"after":4,"since":9,"limit":0}"#,
                Request::SyncAll { since: 9, limit: 1 },
            ),
            (
                "sync",
                "",
                Request::SyncAll {
                    since: 0,
                    limit: 50,
                },
            ),
            (
                "presence",
                r#"{"status":"away"}"#,
                Request::Presence {
                    away: true,
                    hidden: false,
                },
            ),
            (
                "presence",
                r#"{"status":"online","hidden":true}"#,
                Request::Presence {
                    away: false,
                    hidden: true,
                },
            ),
            (
                "push.register",
                r#"{"url":"http://p"}"#,
                Request::PushRegister { url: s("http://p") },
            ),
            (
                "push.unregister",
                r#"{"url":"http://p"}"#,
                Request::PushUnregister { url: s("http://p") },
            ),
            (
                "history",
                r#"{"conv":"g.c"}"#,
                Request::History {
                    conv: s("g.c"),
                    before: max,
                    limit: 50,
                },
            ),
            (
                "history",
                r#"{"conv":"g.c","before":18446744073709551615,"limit":1000}"#,
                Request::History {
                    conv: s("g.c"),
                    before: max,
                    limit: 200,
                },
            ),
            (
                "history",
                r#"{"conv":"g.c","before":7,"limit":3}"#,
                Request::History {
                    conv: s("g.c"),
                    before: 7,
                    limit: 3,
                },
            ),
            (
                "search",
                r#"{"q":"hi"}"#,
                Request::Search {
                    q: s("hi"),
                    limit: 50,
                },
            ),
        ];
        for (op, payload, want) in cases {
            assert_eq!(
                Request::parse(op, payload.as_bytes()),
                Ok(want),
                "{op} {payload}"
            );
        }
    }

    #[test]
    fn refuses_bad_requests_with_todays_texts() {
        let cases: &[(&str, &str, &str)] = &[
            ("nonsense", "{}", "unknown request `nonsense`"),
            ("group.role", r#"{"conv":"g.c","user":"b"}"#, "role is required"),
            ("presence", r#"{"status":"busy"}"#, "status is online or away"),
            ("search", r#"{"q":"  "}"#, "q must not be empty"),
            (
                "search",
                r#"{"q":"a\u0000b"}"#,
                "q must not contain control characters",
            ),
            (
                "sync",
                r#"{"conv":"g.c","after":9223372036854775808}"#,
                "a sequence number is at most 9223372036854775807 at line 1 column 42",
            ),
            (
                "group.add",
                r#"{"conv":"g.c"}"#,
                "missing field `user` at line 1 column 14",
            ),
            (
                "block",
                r#"{"user":"b","x":1}"#,
                "unknown field `x`, expected `user` at line 1 column 15",
            ),
            ("history", "", "missing field `conv` at line 1 column 2"),
            (
                "group.add",
                r#"{"conv":"g.c","user":"b","role":"king"}"#,
                "unknown variant `king`, expected one of `member`, `admin`, `owner` at line 1 column 38",
            ),
            ("members", "[", "EOF while parsing a list at line 1 column 1"),
            (
                "group.transfer",
                r#"{"conv":"g.c","user":"b","role":"owner"}"#,
                "unknown field `role`, expected `conv` or `user` at line 1 column 31",
            ),
        ];
        for (op, payload, message) in cases {
            let err = Request::parse(op, payload.as_bytes()).unwrap_err();
            assert_eq!(err.to_string(), *message, "{op} {payload}");
            assert_eq!(err.code(), "bad_request");
        }
    }

    #[test]
    fn json_bodies_follow_the_same_rules() {
        let body = serde_json::json!({"conv": "g.c", "user": "bob"});
        assert_eq!(
            Request::from_json("group.add", body),
            Ok(Request::AddMember {
                conv: s("g.c"),
                user: s("bob"),
                role: Role::Member,
            })
        );
        let err = Request::from_json("group.create", serde_json::json!({"owner": "x"}));
        assert_eq!(
            err.unwrap_err().to_string(),
            "unknown field `owner`, expected one of `id`, `name`, `members`"
        );
    }

    #[test]
    fn page_sizes_are_bounded() {
        for (limit, want) in [(None, 50), (Some(0), 1), (Some(7), 7), (Some(201), 200)] {
            assert_eq!(page_size(limit), want, "{limit:?}");
        }
    }
}
