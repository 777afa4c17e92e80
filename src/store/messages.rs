//! The history's records, whatever the backend: a message to append and its result, and the
//! entries read back. The writer thread is [`super::Writer`]; each backend appends and reads
//! in its own `messages` module.

use std::collections::BTreeMap;

use super::StoreError;
use crate::chat::edits::EditRefused;
use crate::chat::envelope::{Content, Envelope};

/// A message to append.
#[derive(Debug, Clone)]
pub struct NewMessage {
    pub conv: String,
    pub sender: String,
    pub device: String,
    /// The MQTT packet id and DUP flag, for resends without a client message id.
    pub pkid: Option<u16>,
    pub dup: bool,
    /// Whether the sender may delete others' messages (a group owner or admin).
    pub moderator: bool,
    pub content: Content,
}

impl NewMessage {
    /// The envelope of this message stored as entry `seq` with row id `id` at `ts`.
    pub(in crate::store) fn envelope(&self, id: i64, seq: u64, ts: i64) -> Envelope {
        let c = &self.content;
        Envelope {
            id,
            conv: self.conv.clone(),
            seq,
            from: self.sender.clone(),
            dev: self.device.clone(),
            ts,
            k: c.kind,
            cid: c.cid.clone(),
            t: c.text.clone(),
            re: c.reply_to,
            th: c.thread,
            target: c.target,
            emoji: c.emoji.clone(),
            media: c.media.clone(),
        }
    }
}

/// The stored message; `duplicate` when it was stored before (same sender, conversation and cid, or a DUP
/// resend): it must then not be delivered again.
#[derive(Debug, Clone)]
pub struct Appended {
    pub envelope: Envelope,
    pub duplicate: bool,
}

/// Why a message was not appended.
#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    #[error("{0}")]
    Refused(EditRefused),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the history writer has stopped")]
    Stopped,
}

/// A history entry with what later events did to it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Item {
    #[serde(flatten)]
    pub envelope: Envelope,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub edited: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub deleted: bool,
    /// Emoji → number of reactions with it (messages only).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub reactions: BTreeMap<String, u64>,
}

/// One page of history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    pub items: Vec<Item>,
    /// More entries exist beyond this page in the direction read.
    pub more: bool,
}

/// Whether a text goes into the trigram index (the `cjk` column of both backends' schemas).
pub(in crate::store) fn has_cjk(text: Option<&str>) -> bool {
    text.is_some_and(|t| t.chars().any(is_cjk))
}

/// Han, kana, hangul: scripts written without spaces between words. SQLite's migration that
/// added the `cjk` column lists the same ranges.
pub(in crate::store) fn is_cjk(c: char) -> bool {
    matches!(c as u32, 0x3040..=0x30FF | 0x3400..=0x4DBF | 0x4E00..=0x9FFF | 0xAC00..=0xD7AF | 0xF900..=0xFAFF)
}

/// A LIKE pattern (escape character `\`) that matches text containing `query` literally.
pub(in crate::store) fn contains_pattern(query: &str) -> String {
    let escaped = query
        .replace('\\', "\\\\")
        .replace('%', "\\%")
        .replace('_', "\\_");
    format!("%{escaped}%")
}
