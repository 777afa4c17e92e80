//! All SQL: accounts, conversations, members, blocks, media, push endpoints, and (in
//! [`messages`]) the history.
//!
//! One file, `{data_dir}/natter.db`, in WAL mode, so the server and the `natter user …` /
//! `natter conv …` commands can use it at the same time (the server notices other processes'
//! changes through [`Store::directory_version`]). Readers share the one connection of
//! [`Store`]; history entries are written by a single writer thread on its own connection
//! ([`messages::Writer`]), a batch per transaction. The schema is versioned with
//! `PRAGMA user_version` in `schema.rs`.
//!
//! Each file holds the queries of one kind of record, as `impl Store` blocks: `accounts.rs`
//! (users), `devices.rs` (devices and refresh tokens), `conversations.rs` (conversations,
//! members, blocks), `directory.rs` (the snapshot the chat directory is built from),
//! `media.rs`, `push.rs`. The rest of the server sees only these narrow methods and row types,
//! so that a PostgreSQL implementation can follow behind the same interfaces.
//!
//! Calls block: async callers run them with `spawn_blocking`.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use rusqlite::Connection;

mod accounts;
mod clock;
mod conversations;
mod devices;
mod directory;
mod media;
pub mod messages;
mod push;
mod schema;

pub use crate::chat::snapshot::{ConversationRow, Snapshot, UserRow};
pub use media::MediaRow;

/// Why a store call failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create {path}: {source}")]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("{0} already exists")]
    Exists(String),
    /// The history writer could not commit a batch; its messages are not stored.
    #[error("commit failed: {0}")]
    Commit(String),
    #[error("the database is at schema version {found}, newer than this natter ({known})")]
    TooNew { found: i64, known: usize },
}

/// The database, through one connection that every reader and every write outside the
/// history share.
pub struct Store {
    conn: Mutex<Connection>,
}

impl Store {
    /// Opens (creating if needed) the database in `data_dir` and brings its schema up to date.
    pub fn open(data_dir: &Path) -> Result<Store, StoreError> {
        std::fs::create_dir_all(data_dir).map_err(|source| StoreError::Dir {
            path: data_dir.to_path_buf(),
            source,
        })?;
        let conn = Connection::open(data_dir.join("natter.db"))?;
        conn.busy_timeout(Duration::from_secs(5))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        let store = Store {
            conn: Mutex::new(conn),
        };
        store.migrate()?;
        Ok(store)
    }

    fn lock(&self) -> MutexGuard<'_, Connection> {
        // rusqlite leaves the connection usable after a panic elsewhere; keep going.
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }
}
