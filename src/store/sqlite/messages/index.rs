//! The full-text indexes follow the history: entries are indexed after their commit, in
//! large steps, by the writer thread between batches (see [`crate::store::writer`]), and
//! `search_cursor` holds the last entry id indexed. Words go into the word index, and into the
//! trigram index only text in scripts written without spaces.
//!
//! What changes an entry's text through the index triggers (an edit, a delete, retention,
//! removing a user) catches the index up first, in its own transaction: the triggers remove
//! the old text from the index, which must hold it. A search catches up first too, so it sees
//! every stored entry.

use rusqlite::{Connection, TransactionBehavior};

use crate::store::sqlite::Sqlite;
use crate::store::StoreError;

/// Most entry ids one step of the writer covers, so that a step after a long backlog still
/// holds the writer only briefly.
const STEP: i64 = 4096;

/// Indexes every entry not yet indexed, inside the caller's write transaction.
pub(in crate::store::sqlite) fn catch_up(tx: &Connection) -> Result<(), StoreError> {
    index_after_cursor(tx, None)
}

/// One step of the writer: at most [`STEP`] ids in a transaction of its own.
pub(super) fn step(conn: &mut Connection) -> Result<(), StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    index_after_cursor(&tx, Some(STEP))?;
    tx.commit()?;
    Ok(())
}

impl Sqlite {
    /// Indexes every entry not yet indexed, for a search; when nothing waits (the writer
    /// indexes within [`INDEX_EVERY`](crate::store::writer)) that is one read, and no write
    /// lock is taken.
    pub(super) fn index_all(&self) -> Result<(), StoreError> {
        let mut conn = self.lock();
        let behind: bool = conn
            .prepare_cached(
                "SELECT (SELECT id FROM search_cursor) < (SELECT COALESCE(MAX(id), 0) FROM messages)",
            )?
            .query_row([], |r| r.get(0))?;
        if behind {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            catch_up(&tx)?;
            tx.commit()?;
        }
        Ok(())
    }
}

/// Adds the entries after the cursor (at most `max` ids past it) to the indexes, in one
/// statement each (FTS5 writes one segment per statement), and moves the cursor.
fn index_after_cursor(tx: &Connection, max: Option<i64>) -> Result<(), StoreError> {
    let (cursor, last): (i64, i64) = tx
        .prepare_cached(
            "SELECT (SELECT id FROM search_cursor), (SELECT COALESCE(MAX(id), 0) FROM messages)",
        )?
        .query_row([], |r| Ok((r.get(0)?, r.get(1)?)))?;
    let upto = max.map_or(last, |m| last.min(cursor.saturating_add(m)));
    if upto <= cursor {
        return Ok(());
    }
    tx.prepare_cached(
        "INSERT INTO messages_fts (rowid, body) SELECT id, body FROM messages
         WHERE id > ?1 AND id <= ?2 AND kind = 'msg' AND body IS NOT NULL",
    )?
    .execute([cursor, upto])?;
    tx.prepare_cached(
        "INSERT INTO messages_tri (rowid, body) SELECT id, body FROM messages
         WHERE id > ?1 AND id <= ?2 AND kind = 'msg' AND cjk AND body IS NOT NULL",
    )?
    .execute([cursor, upto])?;
    tx.prepare_cached("UPDATE search_cursor SET id = ?1")?
        .execute([upto])?;
    Ok(())
}
