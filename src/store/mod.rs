//! Everything the server persists, behind one interface ([`Store`], made of the narrow traits
//! in `interface.rs`): accounts, devices and tokens, conversations, members and blocks, the
//! history with its receipts and search, media rows, push endpoints. No SQL lives outside this
//! module.
//!
//! - `interface.rs`: the traits. `messages.rs`: the history's records (a message to append,
//!   its result, entries read back).
//! - `writer.rs`: the history writer thread (group commit, retries), the same for every
//!   backend, over a backend's [`Log`].
//! - `sqlite/`: the embedded default, one file in the data directory.
//! - `postgres/`: a PostgreSQL database that several natter processes can share.
//! - `clock.rs`: timestamps as stored.

use std::path::PathBuf;
use std::sync::Arc;

mod clock;
mod interface;
pub mod messages;
pub mod postgres;
pub mod sqlite;
#[cfg(test)]
mod tests;
pub mod transfer;
mod writer;

pub use crate::chat::snapshot::{ConversationRow, Snapshot, UserRow};
pub use interface::{
    Accounts, Conversations, Devices, Directory, History, Media, Push, Receipts, Retained,
    RetainedRecord, Retention, Roster, Search, Store,
};
pub use writer::{Log, Writer};

use crate::config::{Backend, StorageConfig};

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
    #[error("cannot start the history writer: {0}")]
    Thread(std::io::Error),
    /// Its text carries the causes, so it names no source.
    #[error("postgres: {}", with_causes(.0))]
    Postgres(::postgres::Error),
    #[error("postgres: {0}")]
    Pool(String),
    #[error("{0} does not fit a signed 64-bit number")]
    OutOfRange(u64),
}

/// An uploaded file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaRow {
    pub id: String,
    pub hash: String,
    pub owner: String,
    pub size: u64,
    pub mime: String,
}

impl From<::postgres::Error> for StoreError {
    fn from(e: ::postgres::Error) -> StoreError {
        StoreError::Postgres(e)
    }
}

impl From<r2d2::Error> for StoreError {
    fn from(e: r2d2::Error) -> StoreError {
        StoreError::Pool(e.to_string())
    }
}

/// An error with what caused it: the postgres client's own message is often only "error
/// connecting to server", the reason ("connection refused") is its source.
pub(crate) fn with_causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let more = s.to_string();
        if !text.contains(&more) {
            text = format!("{text}: {more}");
        }
        source = s.source();
    }
    text
}

/// Opens the configured backend and brings its schema up to date.
pub fn open(config: &StorageConfig) -> Result<Arc<dyn Store>, StoreError> {
    Ok(match config.backend {
        Backend::Sqlite => Arc::new(sqlite::Sqlite::open(&config.data_dir)?),
        Backend::Postgres => Arc::new(postgres::Postgres::open(&config.postgres_url)?),
    })
}
