//! One batch's transaction: every message appended in order, and each conversation's last
//! sequence number (and a direct conversation's row) recorded. The full-text indexes follow
//! on their own (`index.rs`).

use std::collections::HashMap;
use std::time::Instant;

use rusqlite::{params, Connection, Transaction, TransactionBehavior};

use super::append::append;
use super::is_transient;
use crate::store::clock::now_ms;
use crate::store::messages::{AppendError, Appended, NewMessage};
use crate::store::writer::Committed;
use crate::store::StoreError;

/// Appends a batch in one transaction; a refused message does not fail the others, nor does
/// one the database refuses. A savepoint per message costs two statements and a copy of each
/// page it touches, and a message the database refuses is rare: the batch goes without them
/// first, and only if a statement fails for a reason that will not pass is it done again with
/// one per message (see [`append_isolated`]), so that the failure stays that message's.
pub(super) fn commit(
    conn: &mut Connection,
    batch: &[&NewMessage],
    last_seq: &mut HashMap<String, u64>,
) -> Result<Committed, StoreError> {
    match attempt(conn, batch, last_seq, false) {
        Err(e) if !is_transient(&e) => {
            // Sequence numbers handed out in the rolled-back transaction were not stored.
            last_seq.clear();
            tracing::warn!(error = %e, "a message of the batch failed; isolating each");
            attempt(conn, batch, last_seq, true)
        }
        result => result,
    }
}

/// One attempt at the batch's transaction, each message in a savepoint of its own if
/// `isolated`, else a failure fails the batch.
fn attempt(
    conn: &mut Connection,
    batch: &[&NewMessage],
    last_seq: &mut HashMap<String, u64>,
    isolated: bool,
) -> Result<Committed, StoreError> {
    // IMMEDIATE: the write lock is taken (waiting out the busy timeout) before anything is
    // read, so a commit by another connection in between cannot void this one's snapshot.
    let mut tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut results = Vec::with_capacity(batch.len());
    // Per conversation with new entries: the last seq, and who wrote the first.
    let mut top: HashMap<&str, (u64, &str)> = HashMap::new();
    for m in batch {
        let result = if isolated {
            append_isolated(&mut tx, m, last_seq)?
        } else {
            append(&tx, m, last_seq)?
        };
        if let Ok(Appended {
            envelope,
            duplicate: false,
        }) = &result
        {
            top.entry(&m.conv)
                .and_modify(|(seq, _)| *seq = envelope.seq)
                .or_insert((envelope.seq, &m.sender));
        }
        results.push(result);
    }
    record_conversations(&tx, top)?;
    let started = Instant::now();
    tx.commit()?;
    Ok(Committed {
        results,
        sync: Some(started.elapsed()),
    })
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
