//! The full-text indexes, off the commit path: they live in a database of their own,
//! `{data_dir}/natter-search.db`, which an indexer thread brings up to date with the history
//! every [`INDEX_EVERY`], in steps of at most [`STEP`] entries. A history commit never writes
//! them nor waits for them (measured: indexing in the commit doubled the p50 and multiplied
//! the p99 of a PUBACK; indexing the same file from the writer between commits stalled it for
//! whole steps), and they grow in large segments instead of one per batch.
//!
//! The index is derived data: `cursor` holds the last entry id indexed, in the same file, so a
//! crash loses at most steps that the indexer does again, and a removed file is rebuilt. Words
//! go into `words`, and text in scripts written without spaces also into `tri` (trigrams).
//! Both are contentless: edits and deletes are entries of the history too, and the step that
//! reaches one replaces its target's indexed text with the current one. Entries removed by
//! retention or with their user stay in the index but are never found: a search joins each
//! hit with its entry (ids are never reused).
//!
//! A search first indexes what the indexer has not reached yet, so it finds every stored
//! message (`search.rs`).

use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use rusqlite::{Connection, ErrorCode};

use crate::store::StoreError;

/// The index's file, beside `natter.db`.
const FILE: &str = "natter-search.db";
/// How often the indexer looks for new entries.
const INDEX_EVERY: Duration = Duration::from_millis(100);
/// Most entry ids one step covers: a step after a long backlog (a rebuild) holds the index,
/// and the searches waiting for it, only briefly.
const STEP: i64 = 4096;

const SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS search.cursor (id INTEGER NOT NULL);
    INSERT INTO search.cursor (id) SELECT 0 WHERE NOT EXISTS (SELECT 1 FROM search.cursor);
    CREATE VIRTUAL TABLE IF NOT EXISTS search.words USING fts5(
        body, content = '', contentless_delete = 1,
        tokenize = 'unicode61 remove_diacritics 2'
    );
    CREATE VIRTUAL TABLE IF NOT EXISTS search.tri USING fts5(
        body, content = '', contentless_delete = 1, tokenize = 'trigram'
    );
    INSERT INTO search.words (words, rank) VALUES ('automerge', 8);
    INSERT INTO search.tri (tri, rank) VALUES ('automerge', 8);
";
/// Pages of the index the connection keeps in memory (KiB, as SQLite's negative
/// `cache_size`): merging segments rereads them.
const CACHE_KIB: i64 = 16 * 1024;

/// The index's connection: `natter.db` as `main` (read only here), the index as `search`.
pub(in crate::store) struct Index {
    conn: Mutex<Connection>,
}

impl Index {
    /// Opens (creating if needed) the index beside the history at `history`. An index file
    /// that is not a sound database is removed and built again: it holds nothing the history
    /// does not.
    pub(in crate::store) fn open(history: &Path) -> Result<Index, StoreError> {
        let path = history.with_file_name(FILE);
        let Some(file) = path.to_str() else {
            return Err(StoreError::Dir {
                path,
                source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "not UTF-8"),
            });
        };
        match Index::open_at(history, file) {
            Err(StoreError::Sqlite(e))
                if matches!(
                    e.sqlite_error_code(),
                    Some(ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase)
                ) =>
            {
                tracing::warn!(error = %e, file, "the search index is damaged; building it again");
                for suffix in ["", "-wal", "-shm"] {
                    let _ = std::fs::remove_file(format!("{file}{suffix}"));
                }
                Index::open_at(history, file)
            }
            opened => opened,
        }
    }

    fn open_at(history: &Path, file: &str) -> Result<Index, StoreError> {
        let conn = Connection::open(history)?;
        conn.busy_timeout(Duration::from_secs(5))?;
        conn.execute("ATTACH DATABASE ?1 AS search", [file])?;
        conn.pragma_update(Some("search"), "journal_mode", "WAL")?;
        // Derived data: a crash loses at most steps the indexer does again.
        conn.pragma_update(Some("search"), "synchronous", "NORMAL")?;
        conn.pragma_update(Some("search"), "cache_size", -CACHE_KIB)?;
        // The word index merges 8 segments at a time instead of 4: half the merge work per
        // entry, at the price of searches reading up to twice as many segments.
        conn.execute_batch(SCHEMA)?;
        Ok(Index {
            conn: Mutex::new(conn),
        })
    }

    /// The connection, for a step or a search (one at a time).
    pub(super) fn lock(&self) -> MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Indexes every entry not yet indexed.
    pub(super) fn catch_up(conn: &mut Connection) -> Result<(), StoreError> {
        while step(conn)? {}
        Ok(())
    }

    /// Starts the indexer thread; it ends with the last handle of `index`.
    pub(in crate::store) fn follow(index: &Arc<Index>) -> Result<(), StoreError> {
        let weak = Arc::downgrade(index);
        std::thread::Builder::new()
            .name("natter-indexer".into())
            .spawn(move || follow(&weak))
            .map_err(StoreError::Thread)?;
        Ok(())
    }
}

/// The indexer thread's loop.
fn follow(index: &Weak<Index>) {
    loop {
        std::thread::sleep(INDEX_EVERY);
        let Some(index) = index.upgrade() else {
            return;
        };
        // One step at a time, letting a search in between.
        loop {
            match step(&mut index.lock()) {
                Ok(true) => continue,
                Ok(false) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot update the search index; trying again later");
                    break;
                }
            }
        }
    }
}

/// Indexes the entries after the cursor, at most [`STEP`] ids past it, and moves the cursor;
/// `true` if more wait. Each index gets one statement per step (FTS5 writes a segment per
/// statement).
fn step(conn: &mut Connection) -> Result<bool, StoreError> {
    // Deferred: the history is only read (a snapshot), the write lock taken is the index's.
    let tx = conn.transaction()?;
    let (cursor, last): (i64, i64) = tx
        .prepare_cached(
            "SELECT (SELECT id FROM search.cursor), (SELECT COALESCE(MAX(id), 0) FROM messages)",
        )?
        .query_row([], |r| Ok((r.get(0)?, r.get(1)?)))?;
    let upto = last.min(cursor.saturating_add(STEP));
    if upto <= cursor {
        return Ok(false);
    }
    for sql in [
        "INSERT INTO search.words (rowid, body) SELECT id, body FROM messages
         WHERE id > ?1 AND id <= ?2 AND kind = 'msg' AND body IS NOT NULL",
        "INSERT INTO search.tri (rowid, body) SELECT id, body FROM messages
         WHERE id > ?1 AND id <= ?2 AND kind = 'msg' AND cjk AND body IS NOT NULL",
        // Edits and deletes in the range: their targets indexed before it get their current
        // text (none once deleted). Targets inside the range were indexed as they are now.
        "DELETE FROM search.words WHERE rowid IN (SELECT id FROM search_targets)",
        "DELETE FROM search.tri WHERE rowid IN (SELECT id FROM search_targets)",
        "INSERT INTO search.words (rowid, body)
         SELECT id, body FROM search_targets WHERE body IS NOT NULL",
        "INSERT INTO search.tri (rowid, body)
         SELECT id, body FROM search_targets WHERE cjk AND body IS NOT NULL",
    ] {
        let sql = sql.replace(
            "search_targets",
            "(SELECT DISTINCT t.id, t.body, t.cjk FROM messages e
               JOIN messages t ON t.conv = e.conv AND t.seq = e.target
              WHERE e.id > ?1 AND e.id <= ?2 AND e.kind IN ('edit', 'delete')
                AND t.kind = 'msg' AND t.id <= ?1)",
        );
        tx.prepare_cached(&sql)?.execute([cursor, upto])?;
    }
    tx.prepare_cached("UPDATE search.cursor SET id = ?1")?
        .execute([upto])?;
    tx.commit()?;
    Ok(upto < last)
}
