//! The embedded default backend: one SQLite file, `{data_dir}/natter.db`, in WAL mode, so the
//! server and the `natter user …` / `natter conv …` commands can use it at the same time (the
//! server notices other processes' changes through `Directory::directory_version`, which
//! triggers keep).
//!
//! Readers and every write outside the history share the one connection of [`Sqlite`];
//! history entries are written by the writer thread on its own connection
//! (`messages::SqliteLog`), a batch per transaction. The full-text indexes are derived data in
//! `{data_dir}/natter-search.db`, kept up to date by an indexer thread (`messages/index.rs`).
//! While the server runs, the log's checkpoints are a thread's of their own (`checkpoint.rs`),
//! off the history's commits. The schema is versioned with `PRAGMA user_version` in
//! `schema.rs`.
//!
//! Each file implements one trait of the interface: `accounts.rs`, `devices.rs` (devices and
//! refresh tokens), `conversations.rs` (conversations, members, blocks), `directory.rs` (the
//! snapshot the chat directory is built from), `media.rs`, `push.rs`, and in `messages/` the
//! history, its search, receipts and retention.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rusqlite::{Connection, TransactionBehavior};

use super::writer::Log;
use super::{Store, StoreError};
use crate::config::Synchronous;

mod accounts;
mod checkpoint;
mod conversations;
mod devices;
mod directory;
mod media;
mod messages;
mod push;
mod retained;
mod roster;
mod schema;

/// The database, through one connection that every reader and every write outside the
/// history share.
pub struct Sqlite {
    conn: Mutex<Connection>,
    path: PathBuf,
    /// The full-text indexes, in a file of their own (`messages/index.rs`).
    index: Arc<messages::Index>,
}

impl Sqlite {
    /// Opens (creating if needed) the database in `data_dir` and brings its schema up to date.
    pub fn open(data_dir: &Path) -> Result<Sqlite, StoreError> {
        std::fs::create_dir_all(data_dir).map_err(|source| StoreError::Dir {
            path: data_dir.to_path_buf(),
            source,
        })?;
        let path = data_dir.join("natter.db");
        let mut conn = Connection::open(&path)?;
        conn.busy_timeout(Duration::from_secs(5))?;
        // A transaction that reads and then writes would find the write lock taken (by the
        // history writer, or a checkpoint) and fail at once: SQLite cannot wait for a lock it
        // must upgrade to inside a transaction. Taking it at BEGIN waits the busy timeout.
        conn.set_transaction_behavior(TransactionBehavior::Immediate);
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        let store = Sqlite {
            conn: Mutex::new(conn),
            index: Arc::new(messages::Index::open(&path)?),
            path,
        };
        store.migrate()?;
        Ok(store)
    }

    fn lock(&self) -> MutexGuard<'_, Connection> {
        // rusqlite leaves the connection usable after a panic elsewhere; keep going.
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Store for Sqlite {
    /// The history writer's log; the search index follows it from now on.
    fn log(&self, sync: Synchronous) -> Result<Box<dyn Log>, StoreError> {
        // Checkpoints are the checkpoint thread's (and the writer's restarts) from now on.
        self.lock().pragma_update(None, "wal_autocheckpoint", 0)?;
        let checkpoints = checkpoint::Checkpoints::start(&self.path)?;
        let log = messages::SqliteLog::open(&self.path, sync, checkpoints)?;
        messages::Index::follow(&self.index)?;
        Ok(Box::new(log))
    }
}
