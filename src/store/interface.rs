//! The storage interface: one narrow trait per kind of record, and [`Store`], all of them
//! together, which is what the rest of the server holds (`Arc<dyn Store>`).
//!
//! Traits rather than an enum: each backend is a complete, separately tested implementation
//! (its own SQL, its own transactions), the rest of the server cannot tell them apart, and a
//! test or a tool can name just the part it needs. The calls block (a pooled or shared
//! connection does the work): async callers run them with `spawn_blocking`.

use std::time::Duration;

use super::messages::{Item, Page};
use super::writer::Log;
use super::{MediaRow, Snapshot, StoreError, UserRow};
use crate::config::Synchronous;

/// User accounts.
pub trait Accounts {
    /// Creates a user; `Exists` if the id is taken.
    fn add_user(&self, id: &str, password_hash: &str) -> Result<(), StoreError>;
    /// Removes a user with their memberships and blocks; returns whether they existed.
    ///
    /// Their direct conversations go too, with every message, receipt and media reference in
    /// them, so that an account created later under the same id inherits nothing. Groups stay
    /// for the other members.
    fn remove_user(&self, id: &str) -> Result<bool, StoreError>;
    fn list_users(&self) -> Result<Vec<UserRow>, StoreError>;
    /// Sets a user's password; every access and refresh token they hold stops working (a
    /// changed password must shut out whoever had the old one). Whether the user exists.
    fn set_password(&self, id: &str, password_hash: &str) -> Result<bool, StoreError>;
    /// Whether a user id is taken (checked before hashing a new account's password).
    fn user_exists(&self, id: &str) -> Result<bool, StoreError>;
    /// Sets or clears the admin flag; whether the user exists.
    fn set_admin(&self, id: &str, admin: bool) -> Result<bool, StoreError>;
    /// A user's password hash and admin flag.
    fn login_info(&self, id: &str) -> Result<Option<(String, bool)>, StoreError>;
}

/// Devices, their token generations, and refresh tokens.
pub trait Devices {
    /// Registers a device for a user (a login); a revoked device logging in again is restored,
    /// with the generation its revocation gave it (its old tokens stay dead).
    fn upsert_device(&self, user: &str, device: &str) -> Result<(), StoreError>;
    /// Revokes a device and its refresh tokens (a new generation ends its access tokens);
    /// whether it existed.
    fn revoke_device(&self, user: &str, device: &str) -> Result<bool, StoreError>;
    /// A user's devices: (device, created_at, revoked).
    fn devices(&self, user: &str) -> Result<Vec<(String, i64, bool)>, StoreError>;
    /// Whether a token of this device and generation is good: the device is known, not
    /// revoked, and still at that generation.
    fn token_current(&self, user: &str, device: &str, gen: &str) -> Result<bool, StoreError>;
    /// Stores a refresh token for an active device, with the device's current generation,
    /// which it returns for the access token issued with it (one transaction, so a revocation
    /// cannot fall between the two). `None`: the device is gone or revoked.
    fn add_refresh_token(
        &self,
        hash: &str,
        user: &str,
        device: &str,
        expires_at: i64,
    ) -> Result<Option<String>, StoreError>;
    /// Removes a refresh token and returns its (user, device) if it was valid at `now`: not
    /// expired, and of its device's current generation (not revoked since, no password change
    /// since). Each token is used once (rotation).
    fn take_refresh_token(
        &self,
        hash: &str,
        now: i64,
    ) -> Result<Option<(String, String)>, StoreError>;
}

/// Conversations, their members, and blocks between users.
pub trait Conversations {
    /// Creates a conversation with its first members, (user, role); `Exists` if the id is
    /// taken.
    fn create_conversation(
        &self,
        id: &str,
        direct: bool,
        name: &str,
        created_by: &str,
        members: &[(&str, &str)],
    ) -> Result<(), StoreError>;
    /// Adds a member or changes their role.
    fn set_member(&self, conv: &str, user: &str, role: &str) -> Result<(), StoreError>;
    /// Makes `to` the owner of `conv` and `from` an admin, together.
    fn transfer_ownership(&self, conv: &str, from: &str, to: &str) -> Result<(), StoreError>;
    /// Removes a member; whether they were one.
    fn remove_member(&self, conv: &str, user: &str) -> Result<bool, StoreError>;
    /// Sets a group's name and topic.
    fn update_conversation(&self, conv: &str, name: &str, topic: &str) -> Result<(), StoreError>;
    /// Blocks (`on`) or unblocks `blocked` for `user`.
    fn set_block(&self, user: &str, blocked: &str, on: bool) -> Result<(), StoreError>;
    /// The conversations a user has direct messages in (groups come from the directory).
    fn direct_conversations(&self, user: &str) -> Result<Vec<String>, StoreError>;
}

/// The directory the chat rules are checked against: accounts, conversations, members, blocks.
pub trait Directory {
    /// Increases with every change to accounts, conversations, members or blocks, by any
    /// process: the server polls it to pick up `natter user …` changes without reloading on
    /// every stored message.
    fn directory_version(&self) -> Result<i64, StoreError>;
    /// Reads users, conversations, members and blocks in one consistent view.
    fn snapshot(&self) -> Result<Snapshot, StoreError>;
}

/// Uploaded media and which messages reference them.
pub trait Media {
    /// Records an upload (ids are random: never `Exists`).
    fn add_media(&self, m: &MediaRow) -> Result<(), StoreError>;
    /// Whether any upload's row names the blob `hash`.
    fn media_hash_in_use(&self, hash: &str) -> Result<bool, StoreError>;
    /// An upload's row.
    fn media(&self, id: &str) -> Result<Option<MediaRow>, StoreError>;
    /// Bytes a user has uploaded (for the quota).
    fn media_usage(&self, owner: &str) -> Result<u64, StoreError>;
    /// The conversations whose messages reference a media id.
    fn media_conversations(&self, id: &str) -> Result<Vec<String>, StoreError>;
    /// Deletes uploads no message references (any more) and older than `min_age_secs`; returns
    /// the hashes no upload uses any more (their files can go).
    fn release_unreferenced_media(&self, min_age_secs: i64) -> Result<Vec<String>, StoreError>;
}

/// Web push endpoints per user.
pub trait Push {
    fn add_push_endpoint(&self, user: &str, url: &str) -> Result<(), StoreError>;
    /// Whether it was registered.
    fn remove_push_endpoint(&self, user: &str, url: &str) -> Result<bool, StoreError>;
    fn push_endpoints(&self, user: &str) -> Result<Vec<String>, StoreError>;
}

/// A cluster's live nodes and the devices connected to each: what presence and per-user
/// connection limits count across nodes. A node that stops being heard from is expired by the
/// others, with its devices.
pub trait Roster {
    /// `node` is alive now (the database's clock, so the nodes' clocks need not agree).
    /// Returns whether the roster knew it: `false` for a node starting, or one the others
    /// expired (it went unheard, say while the database was unreachable), whose devices are
    /// gone from the roster and must be recorded again.
    fn node_alive(&self, node: &str) -> Result<bool, StoreError>;
    /// Forgets nodes not heard from for `timeout_secs`, with their devices; returns the users
    /// those devices belonged to (once per device).
    fn expire_nodes(&self, timeout_secs: u64) -> Result<Vec<String>, StoreError>;
    /// Forgets what `node` recorded before it (re)started; returns the users, as above.
    fn reset_node(&self, node: &str) -> Result<Vec<String>, StoreError>;
    /// A device of `user` connected to `node` (taking over the row of a node that held it
    /// before); returns the user's connections on every node.
    fn device_connected(&self, node: &str, client: &str, user: &str) -> Result<u64, StoreError>;
    /// Records a device of `node` again after the node was expired, unless another node
    /// holds it now (then that node's takeover stands, and this node's session is fenced).
    fn restore_device(&self, node: &str, client: &str, user: &str) -> Result<(), StoreError>;
    /// It left; returns the user's connections left on every node.
    fn device_disconnected(&self, node: &str, client: &str, user: &str) -> Result<u64, StoreError>;
    /// Which of `clients` (connected to `node`) another node holds now: a takeover this node
    /// missed, whose sessions here must end.
    fn taken_elsewhere(&self, node: &str, clients: &[String]) -> Result<Vec<String>, StoreError>;
    /// The user's connections on every node, or on every node but `not_on` (a node counts its
    /// own itself, at once, rather than as the roster catches up), but client `except`'s (one
    /// that reconnects).
    fn user_connections(
        &self,
        user: &str,
        except: &str,
        not_on: Option<&str>,
    ) -> Result<u64, StoreError>;
}

/// A retained message as the store keeps it: its encoding and its expiry (Unix milliseconds).
pub type RetainedRecord = (Vec<u8>, Option<i64>);

/// Retained messages of a cluster, kept where every node (and a node started later) finds
/// them. A message is opaque here: the cluster's own encoding of it.
pub trait Retained {
    /// Sets `topic`'s retained message (`None`: clears it); it expires at `expires_at_ms`
    /// (Unix milliseconds), if set.
    fn set_retained(
        &self,
        topic: &str,
        message: Option<&[u8]>,
        expires_at_ms: Option<i64>,
    ) -> Result<(), StoreError>;
    /// Every retained message not yet expired: (message, expires_at_ms).
    fn retained(&self) -> Result<Vec<RetainedRecord>, StoreError>;
}

/// Reading the history back (the writing is [`Store::log`]'s).
pub trait History {
    /// Entries of `conv` with `seq > after`, oldest first.
    fn after(&self, conv: &str, after: u64, limit: usize) -> Result<Page, StoreError>;
    /// Entries of `conv` with `seq < before`, newest first (scrolling up).
    fn before(&self, conv: &str, before: u64, limit: usize) -> Result<Page, StoreError>;
    /// Entries of the given conversations with `id > since`, in id order (a user's stream).
    fn since(&self, convs: &[String], since: i64, limit: usize) -> Result<Page, StoreError>;
    /// The lowest sequence number still stored in `conv` (after retention), if any.
    fn first_seq(&self, conv: &str) -> Result<Option<u64>, StoreError>;
}

/// Searching the history.
pub trait Search {
    /// Full-text search over the messages of the given conversations, newest first. Words
    /// match whole words, accents ignored (`cafe` finds `café`); text in scripts written
    /// without spaces (Chinese, Japanese, Korean) matches as a substring.
    fn search(&self, convs: &[String], query: &str, limit: usize) -> Result<Vec<Item>, StoreError>;
}

/// Trimming the history.
pub trait Retention {
    /// Deletes entries older than `max_age` and beyond the newest `max_per_conv` of each
    /// conversation (0 disables either rule); returns how many went.
    fn enforce_retention(
        &self,
        max_age: Option<Duration>,
        max_per_conv: u64,
    ) -> Result<usize, StoreError>;
}

/// Delivered and read marks.
pub trait Receipts {
    /// Raises each (conversation, user)'s delivered mark to `seq`; for each row, whether it
    /// went up (marks never go back).
    fn mark_delivered(&self, rows: &[(String, String, u64)]) -> Result<Vec<bool>, StoreError>;
    /// Raises a user's read mark (public, or private: seen only by the user's own devices) to
    /// `seq`, clamped to the conversation's last sequence number; the mark stored, if it went
    /// up.
    ///
    /// Clamped rather than refused, as chat apps do: a client may mark read up to what it
    /// believes is the end, and a race with a delete or retention is no error. Stored as sent,
    /// a mark past the end would count every later message as read, so unread stayed 0.
    fn mark_read(
        &self,
        conv: &str,
        user: &str,
        seq: u64,
        private: bool,
    ) -> Result<Option<u64>, StoreError>;
    /// Everyone's public receipts in a conversation: (user, delivered, read).
    fn receipts(&self, conv: &str) -> Result<Vec<(String, u64, u64)>, StoreError>;
    /// Messages from others after the user's read mark (public or private).
    fn unread(&self, conv: &str, user: &str) -> Result<u64, StoreError>;
}

/// Everything the server persists.
pub trait Store:
    Accounts
    + Devices
    + Conversations
    + Directory
    + Media
    + Push
    + History
    + Search
    + Retention
    + Receipts
    + Roster
    + Retained
    + Send
    + Sync
{
    /// Opens what the history writer appends through: its own connection, as durable as
    /// `sync` asks (SQLite; PostgreSQL commits are always durable).
    fn log(&self, sync: Synchronous) -> Result<Box<dyn Log>, StoreError>;
}
