//! What the app sends and receives: drafts, stored entries, receipts, presence, typing,
//! membership changes and the server's error reports, as typed values.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A message to send: text, or media with an optional caption, optionally a reply or in a
/// thread. `"hi".into()` is a plain text message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Draft {
    pub text: Option<String>,
    /// The `seq` this message replies to.
    pub reply_to: Option<u64>,
    /// The `seq` of the thread's first message.
    pub thread: Option<u64>,
    /// Media ids from [`crate::Client::upload`].
    pub media: Vec<String>,
}

impl From<&str> for Draft {
    fn from(text: &str) -> Draft {
        Draft {
            text: Some(text.to_string()),
            ..Draft::default()
        }
    }
}

impl From<String> for Draft {
    fn from(text: String) -> Draft {
        Draft {
            text: Some(text),
            ..Draft::default()
        }
    }
}

/// What a stored entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Msg,
    Edit,
    Delete,
    React,
    Unreact,
}

/// One entry of a conversation's history, as the server stored it: a message, or an edit,
/// delete or reaction aimed at one (`target`). Entries of one conversation reach the app once
/// each, in `seq` order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Server message id, increasing across all conversations.
    pub id: i64,
    pub conv: String,
    /// Dense per conversation: 1, 2, 3…
    pub seq: u64,
    pub from: String,
    /// The sending device's client id.
    pub dev: String,
    /// Milliseconds since the epoch, when stored.
    pub ts: i64,
    #[serde(rename = "k")]
    pub kind: Kind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cid: Option<String>,
    #[serde(rename = "t", default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    #[serde(rename = "re", default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<u64>,
    #[serde(rename = "th", default, skip_serializing_if = "Option::is_none")]
    pub thread: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub emoji: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub media: Vec<String>,
    /// History pages only: the text is the latest edit.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub edited: bool,
    /// History pages only: a tombstone.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub deleted: bool,
    /// History pages only: emoji → count.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub reactions: BTreeMap<String, u64>,
}

/// Where a message of this client is: stored on the server, with its place in the
/// conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stored {
    pub id: i64,
    pub seq: u64,
}

/// A delivered or read receipt: `user` has everything up to `seq`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    /// `delivered` or `read`.
    #[serde(rename = "type")]
    pub kind: String,
    pub conv: String,
    pub user: String,
    pub seq: u64,
}

/// A user's presence as the server sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Presence {
    pub user: String,
    /// `online`, `away` or `offline`; `hidden` when the user cleared it.
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen: Option<i64>,
}

/// A membership or conversation change on `u/{you}/events`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Membership {
    /// `member_added`, `member_removed`, `role_changed` or `conversation_updated`.
    #[serde(rename = "type")]
    pub kind: String,
    pub conv: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
}

/// Why the server refused something this user published (`u/{you}/errors`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerError {
    pub error: String,
    pub message: String,
    #[serde(default)]
    pub topic: String,
    #[serde(default)]
    pub client: String,
}

/// What the client tells the app, in order.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// Connected (again); catching up follows.
    Connected,
    /// The connection is gone; the client reconnects by itself.
    Disconnected {
        reason: String,
    },
    /// Every conversation is caught up after a (re)connect: what follows is live.
    Synced,
    /// A stored entry (message, edit, delete, reaction), once, in `seq` order per conversation.
    Entry(Entry),
    /// One of this client's messages is stored (its handle resolves at the same time).
    Sent {
        conv: String,
        cid: String,
        seq: u64,
    },
    Receipt(Receipt),
    Presence(Presence),
    Typing {
        conv: String,
        user: String,
    },
    Membership(Membership),
    /// The server refused a publish (the handle of a message, if any, fails at the same time).
    Refused(ServerError),
    /// A conversation's stored history starts after the last `seq` this client had: entries
    /// up to `first - 1` were removed by retention before this client caught up.
    HistoryStartsAt {
        conv: String,
        first: u64,
    },
    /// The client stopped for good (refused login, a takeover); nothing more follows.
    Stopped {
        error: String,
    },
}
