//! What enters the full-text indexes: every new message's text into the word index once per
//! batch, and into the trigram index only text in scripts written without spaces.

use rusqlite::Transaction;

use crate::store::StoreError;

/// Adds the entries from id `from` on (all of them this batch's) to the full-text indexes, in
/// one statement each: FTS5 writes what it has gathered at every statement, so one statement
/// per batch means one index segment per batch (see the schema's migrations).
pub(super) fn index_new(tx: &Transaction<'_>, from: &mut Option<i64>) -> Result<(), StoreError> {
    let Some(first) = from.take() else {
        return Ok(());
    };
    tx.prepare_cached(
        "INSERT INTO messages_fts (rowid, body) SELECT id, body FROM messages
         WHERE id >= ?1 AND kind = 'msg' AND body IS NOT NULL",
    )?
    .execute([first])?;
    tx.prepare_cached(
        "INSERT INTO messages_tri (rowid, body) SELECT id, body FROM messages
         WHERE id >= ?1 AND kind = 'msg' AND cjk AND body IS NOT NULL",
    )?
    .execute([first])?;
    Ok(())
}
