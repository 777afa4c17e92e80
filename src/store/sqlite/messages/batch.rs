//! One batch's transaction: every message appended in order, the new entries indexed, and
//! each conversation's last sequence number (and a direct conversation's row) recorded.

use std::collections::HashMap;

use rusqlite::{params, Connection, Transaction, TransactionBehavior};

use super::append::append;
use super::index::index_new;
use super::is_transient;
use crate::store::clock::now_ms;
use crate::store::messages::{AppendError, Appended, NewMessage};
use crate::store::StoreError;

/// Appends a batch in one transaction; a refused message does not fail the others, nor does
/// one the database refuses (see [`append_isolated`]).
pub(super) fn commit(
    conn: &mut Connection,
    batch: &[&NewMessage],
    last_seq: &mut HashMap<String, u64>,
) -> Result<Vec<Result<Appended, AppendError>>, StoreError> {
    // IMMEDIATE: the write lock is taken (waiting out the busy timeout) before anything is
    // read, so a commit by another connection in between cannot void this one's snapshot.
    let mut tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut results = Vec::with_capacity(batch.len());
    // Per conversation with new entries: the last seq, and who wrote the first.
    let mut top: HashMap<&str, (u64, &str)> = HashMap::new();
    let mut unindexed = None;
    for m in batch {
        if m.content.target.is_some() {
            // An edit or delete updates its target through the index triggers, which must
            // find the target indexed.
            index_new(&tx, &mut unindexed)?;
        }
        let result = append_isolated(&mut tx, m, last_seq)?;
        if let Ok(Appended {
            envelope,
            duplicate: false,
        }) = &result
        {
            top.entry(&m.conv)
                .and_modify(|(seq, _)| *seq = envelope.seq)
                .or_insert((envelope.seq, &m.sender));
            unindexed.get_or_insert(envelope.id);
        }
        results.push(result);
    }
    index_new(&tx, &mut unindexed)?;
    record_conversations(&tx, top)?;
    tx.commit()?;
    Ok(results)
}

/// Appends one message in its own savepoint. An error that concerns this message alone (a
/// value the database cannot hold, a broken constraint) undoes just its changes and fails just
/// it: other senders' messages in the batch still commit. An error that may pass, or one that
/// ended the transaction (the savepoint is then gone), fails the batch, which is retried whole.
fn append_isolated(
    tx: &mut Transaction<'_>,
    m: &NewMessage,
    last_seq: &mut HashMap<String, u64>,
) -> Result<Result<Appended, AppendError>, StoreError> {
    let savepoint = tx.savepoint()?;
    match append(&savepoint, m, last_seq) {
        Ok(result) => {
            savepoint.commit()?;
            Ok(result)
        }
        Err(e) if is_transient(&e) => Err(e),
        Err(e) => {
            // Dropping rolls back to the savepoint and releases it; finish() reports failure.
            savepoint.finish()?;
            tracing::error!(error = %e, conv = %m.conv, sender = %m.sender, "message not stored");
            Ok(Err(AppendError::Store(e)))
        }
    }
}

/// Records, per conversation with new entries, its last sequence number and (for a direct
/// conversation) that it exists.
fn record_conversations(
    tx: &Transaction<'_>,
    top: HashMap<&str, (u64, &str)>,
) -> Result<(), StoreError> {
    for (conv, (seq, first_sender)) in top {
        tx.prepare_cached(
            "INSERT INTO conv_seq (conv, last) VALUES (?1, ?2)
             ON CONFLICT (conv) DO UPDATE SET last = MAX(last, excluded.last)",
        )?
        .execute(params![conv, seq])?;
        // A direct conversation exists once it has an entry. Checked per batch, not cached:
        // removing a user deletes the row from another connection.
        if crate::topics::is_direct(conv) {
            tx.prepare_cached(
                "INSERT INTO conversations (id, kind, created_by, created_at)
                 VALUES (?1, 'direct', ?2, ?3) ON CONFLICT (id) DO NOTHING",
            )?
            .execute(params![conv, first_sender, now_ms() / 1000])?;
        }
    }
    Ok(())
}
