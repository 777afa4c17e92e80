//! One batch's transaction: every message appended in order, the new entries indexed, and
//! each conversation's last sequence number (and a direct conversation's row) recorded.

use std::collections::HashMap;

use rusqlite::{params, Connection, Transaction, TransactionBehavior};

use super::append::append;
use super::index::index_new;
use super::writer::Job;
use super::{AppendError, Appended};
use crate::store::clock::now_ms;
use crate::store::StoreError;

/// Appends a batch in one transaction; a refused message does not fail the others.
pub(super) fn commit(
    conn: &mut Connection,
    batch: &[Job],
    last_seq: &mut HashMap<String, u64>,
) -> Result<Vec<Result<Appended, AppendError>>, StoreError> {
    // IMMEDIATE: the write lock is taken (waiting out the busy timeout) before anything is
    // read, so a commit by another connection in between cannot void this one's snapshot.
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut results = Vec::with_capacity(batch.len());
    // Per conversation with new entries: the last seq, and who wrote the first.
    let mut top: HashMap<&str, (u64, &str)> = HashMap::new();
    let mut unindexed = None;
    for job in batch {
        if job.message.content.target.is_some() {
            // An edit or delete updates its target through the index triggers, which must
            // find the target indexed.
            index_new(&tx, &mut unindexed)?;
        }
        let result = append(&tx, &job.message, last_seq)?;
        if let Ok(Appended {
            envelope,
            duplicate: false,
        }) = &result
        {
            top.entry(&job.message.conv)
                .and_modify(|(seq, _)| *seq = envelope.seq)
                .or_insert((envelope.seq, &job.message.sender));
            unindexed.get_or_insert(envelope.id);
        }
        results.push(result);
    }
    index_new(&tx, &mut unindexed)?;
    record_conversations(&tx, top)?;
    tx.commit()?;
    Ok(results)
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
