//! The history in SQLite: the [`Log`] the writer thread appends through (its own connection,
//! a batch per transaction), and the queries that read entries back.
//!
//! With `synchronous = FULL` a COMMIT has reached the disk (power loss safe); with `NORMAL`
//! (WAL) it survives a process crash but the last commits may be lost on power loss. The last
//! sequence number of each conversation is kept in `conv_seq`, so sequences never go back, even
//! after retention removed every entry of a conversation. Only the writer thread appends, so it
//! keeps each conversation's last sequence number in memory between batches.
//!
//! The files: `batch.rs` (one batch's transaction), `append.rs` (one message inside it; who may
//! edit, delete or react is [`crate::chat::edits`]), `index.rs` (the full-text indexes, which
//! follow the history off the commit path), and the readers `history.rs`, `search.rs`,
//! `receipts.rs`, `retention.rs`.

mod append;
mod batch;
mod history;
mod index;
mod receipts;
mod retention;
mod search;
#[cfg(test)]
mod tests;

pub(super) use index::Index;

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, ErrorCode, OpenFlags};

use super::checkpoint::Checkpoints;
use crate::config::Synchronous;
use crate::store::messages::{AppendError, Appended, NewMessage};
use crate::store::writer::{Committed, Log, WAIT_MAX};
use crate::store::StoreError;

/// Prepared statements the writer keeps (it uses about a dozen).
const STATEMENT_CACHE: usize = 32;

/// The writer thread's connection and what it remembers between batches.
pub(in crate::store) struct SqliteLog {
    conn: Connection,
    /// Each conversation's last sequence number, as committed.
    last_seq: HashMap<String, u64>,
    /// The log's checkpoints, which run on a thread of their own (`../checkpoint.rs`).
    checkpoints: Checkpoints,
    /// The busy timeout of the next attempt.
    wait: Duration,
}

impl SqliteLog {
    /// Opens the writer's own connection to `path`, durable as `sync` asks; `checkpoints`
    /// copies what it commits into the database file.
    pub(in crate::store) fn open(
        path: &Path,
        sync: Synchronous,
        checkpoints: Checkpoints,
    ) -> Result<SqliteLog, StoreError> {
        // Only the writer thread uses this connection: SQLite's per-connection mutex would be
        // pure overhead on every call.
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        conn.busy_timeout(WAIT_MAX)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "wal_autocheckpoint", 0)?;
        conn.pragma_update(
            None,
            "synchronous",
            match sync {
                Synchronous::Full => "FULL",
                Synchronous::Normal => "NORMAL",
            },
        )?;
        Ok(SqliteLog {
            conn,
            last_seq: HashMap::new(),
            checkpoints,
            wait: WAIT_MAX,
        })
    }
}

impl Log for SqliteLog {
    fn commit(&mut self, batch: &[&NewMessage]) -> Result<Committed, StoreError> {
        self.checkpoints.restart_if_wanted(&self.conn, self.wait);
        let results = batch::commit(&mut self.conn, batch, &mut self.last_seq);
        if results.is_err() {
            // Sequence numbers handed out in the rolled-back transaction were not stored.
            self.last_seq.clear();
        }
        results
    }

    fn set_wait(&mut self, wait: Duration) {
        self.wait = wait;
        if let Err(e) = self.conn.busy_timeout(wait) {
            tracing::warn!(error = %e, "cannot set the history writer's busy timeout");
        }
    }

    fn is_transient(&self, e: &StoreError) -> bool {
        is_transient(e)
    }
}

/// Whether a failed statement may succeed later: another connection holds the lock, the disk
/// is full, or the file system failed for a moment.
fn is_transient(e: &StoreError) -> bool {
    let StoreError::Sqlite(e) = e else {
        return false;
    };
    matches!(
        e.sqlite_error_code(),
        Some(
            ErrorCode::DatabaseBusy
                | ErrorCode::DatabaseLocked
                | ErrorCode::DiskFull
                | ErrorCode::SystemIoFailure
                | ErrorCode::CannotOpen
                | ErrorCode::OutOfMemory
        )
    )
}
