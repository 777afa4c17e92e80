//! Chat history: one writer thread that appends messages in batches (group commit), and the
//! queries that read them back.
//!
//! Every message gets the next sequence number of its conversation inside the transaction that
//! stores it, so sequences are dense and gap-free; a reply goes back to each waiting connection
//! only after the batch's COMMIT returns, which is what lets the connection PUBACK the sender.
//! With `synchronous = FULL` that COMMIT has reached the disk (power loss safe); with `NORMAL`
//! (WAL) it survives a process crash but the last commits may be lost on power loss.
//!
//! A commit that fails for a reason that may pass (the database busy, the disk full, an I/O
//! error) is retried with backoff while the senders wait, each at most until its deadline
//! (`storage.commit_retry_secs` after it was submitted); only then is it reported as failed.
//! The last sequence number of each conversation is kept in `conv_seq`, so sequences never go
//! back, even after retention removed every entry of a conversation.
//!
//! Within a batch each message has its own savepoint: an error that concerns one message (a
//! value the database refuses) fails that message alone, and the rest of the batch commits.
//!
//! The files: `writer.rs` (the thread, batching, commit and retry), `batch.rs` (one batch's
//! transaction), `append.rs` (one message inside it; who may edit, delete or react is
//! [`crate::chat::edits`]), `index.rs` (the full-text indexes), and the readers `history.rs`,
//! `search.rs`, `receipts.rs`, `retention.rs`.

mod append;
mod batch;
mod history;
mod index;
mod receipts;
mod retention;
mod search;
#[cfg(test)]
mod tests;
mod writer;

pub use history::{Item, Page};
pub use writer::Writer;

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
