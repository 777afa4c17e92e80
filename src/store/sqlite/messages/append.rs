//! One message's append inside a batch's transaction: a resend is recognised, media and the
//! target are checked, then the entry gets its sequence number, is stored, links its media and
//! applies an edit or delete to its target.

use std::collections::HashMap;

use rusqlite::{params, Connection, OptionalExtension};

use super::history::{row_to_envelope, SELECT};
use super::{AppendError, Appended, NewMessage};
use crate::chat::edits::{self, EditRefused, Target};
use crate::chat::envelope::{Envelope, Kind};
use crate::store::clock::now_ms;
use crate::store::messages::has_cjk;
use crate::store::StoreError;

/// How far back a DUP resend without a client message id is matched against what was stored.
const DUP_WINDOW_MS: i64 = 24 * 3600 * 1000;

/// Appends `m` (inside the batch's transaction, in the message's own savepoint), or finds it
/// stored before; the inner error is a refusal, which fails only this message, the outer one a
/// database error (which [`super::batch`] decides about).
pub(super) fn append(
    tx: &Connection,
    m: &NewMessage,
    last_seq: &mut HashMap<String, u64>,
) -> Result<Result<Appended, AppendError>, StoreError> {
    if let Some(envelope) = find_duplicate(tx, m)? {
        return Ok(Ok(Appended {
            envelope,
            duplicate: true,
        }));
    }
    if let Err(refused) = check_media(tx, m)? {
        return Ok(Err(AppendError::Refused(refused)));
    }
    if let Err(refused) = check_target(tx, m)? {
        return Ok(Err(AppendError::Refused(refused)));
    }
    let seq = next_seq(tx, m, last_seq)?;
    let ts = now_ms();
    let id = insert(tx, m, seq, ts)?;
    link_media(tx, m, id)?;
    apply_to_target(tx, m)?;
    last_seq.insert(m.conv.clone(), seq);
    Ok(Ok(Appended {
        envelope: m.envelope(id, seq, ts),
        duplicate: false,
    }))
}

/// The stored entry `m` repeats, if it is a resend: by client message id, or by packet id.
fn find_duplicate(tx: &Connection, m: &NewMessage) -> Result<Option<Envelope>, StoreError> {
    let c = &m.content;
    // Idempotency: the same (sender, conversation, cid) is the same message. Per conversation,
    // so that a client numbering its messages per conversation loses none.
    if let Some(cid) = &c.cid {
        return Ok(tx
            .prepare_cached(&format!(
                "{SELECT} WHERE sender = ?1 AND conv = ?2 AND cid = ?3"
            ))?
            .query_row(params![m.sender, m.conv, cid], row_to_envelope)
            .optional()?);
    }
    let (true, Some(pkid)) = (m.dup, m.pkid) else {
        return Ok(None);
    };
    // A resend (DUP) without cid: the same device's latest message with this packet id, if
    // it carried the same content to the same conversation.
    let found = tx
        .prepare_cached(&format!(
            "{SELECT} WHERE device = ?1 AND pkid = ?2 AND ts > ?3 ORDER BY id DESC LIMIT 1"
        ))?
        .query_row(
            params![m.device, pkid, now_ms() - DUP_WINDOW_MS],
            row_to_envelope,
        )
        .optional()?;
    Ok(found.filter(|e| e.conv == m.conv && e.t == c.text && e.k == c.kind))
}

/// Whether `m` may carry each of its media ids.
fn check_media(tx: &Connection, m: &NewMessage) -> Result<Result<(), EditRefused>, StoreError> {
    for id in &m.content.media {
        // Media travel only with their uploader's messages, or within a conversation that has
        // seen them already.
        let ok: bool = tx
            .prepare_cached(
                "SELECT EXISTS (SELECT 1 FROM media WHERE id = ?1 AND (owner = ?2 OR EXISTS (
                SELECT 1 FROM media_refs WHERE media = ?1 AND conv = ?3)))",
            )?
            .query_row(params![id, m.sender, m.conv], |r| r.get(0))?;
        if !ok {
            return Ok(Err(EditRefused::UnknownMedia));
        }
    }
    Ok(Ok(()))
}

/// Whether `m`'s sender may do what `m` does to its target, if it has one ([`edits::check`]
/// over the target as stored).
fn check_target(tx: &Connection, m: &NewMessage) -> Result<Result<(), EditRefused>, StoreError> {
    let Some(target) = m.content.target else {
        return Ok(Ok(()));
    };
    let author: Option<(String, String, bool)> = tx
        .query_row(
            "SELECT sender, kind, deleted FROM messages WHERE conv = ?1 AND seq = ?2",
            params![m.conv, target],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .optional()?;
    let target = author.as_ref().map(|(sender, kind, deleted)| Target {
        sender,
        kind: Kind::parse(kind),
        deleted: *deleted,
    });
    Ok(edits::check(target, &m.sender, m.moderator, m.content.kind))
}

/// The sequence number `m` gets: one past its conversation's last.
fn next_seq(
    tx: &Connection,
    m: &NewMessage,
    last_seq: &HashMap<String, u64>,
) -> Result<u64, StoreError> {
    if let Some(s) = last_seq.get(&m.conv) {
        return Ok(s + 1);
    }
    // The stored last sequence, or the entries themselves for a conversation that
    // predates `conv_seq` without a row there.
    let last: i64 = tx
        .prepare_cached(
            "SELECT MAX(COALESCE((SELECT last FROM conv_seq WHERE conv = ?1), 0),
                            COALESCE((SELECT MAX(seq) FROM messages WHERE conv = ?1), 0))",
        )?
        .query_row(params![m.conv], |r| r.get(0))?;
    Ok(last as u64 + 1)
}

/// Stores `m` as entry `seq` at `ts`; returns its row id.
fn insert(tx: &Connection, m: &NewMessage, seq: u64, ts: i64) -> Result<i64, StoreError> {
    let c = &m.content;
    tx.prepare_cached(
        "INSERT INTO messages (conv, seq, sender, device, ts, cid, pkid, kind, body, reply_to,
                               thread, target, emoji, media, cjk)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)",
    )?
    .execute(params![
        m.conv,
        seq,
        m.sender,
        m.device,
        ts,
        c.cid,
        m.pkid,
        c.kind.as_str(),
        c.text,
        c.reply_to,
        c.thread,
        c.target,
        c.emoji,
        (!c.media.is_empty()).then(|| c.media.join(",")),
        has_cjk(c.text.as_deref())
    ])?;
    Ok(tx.last_insert_rowid())
}

/// Records that entry `id` references each of `m`'s media.
fn link_media(tx: &Connection, m: &NewMessage, id: i64) -> Result<(), StoreError> {
    for media in &m.content.media {
        tx.prepare_cached(
            "INSERT INTO media_refs (media, message, conv) VALUES (?1, ?2, ?3)
             ON CONFLICT DO NOTHING",
        )?
        .execute(params![media, id, m.conv])?;
    }
    Ok(())
}

/// Applies an edit (new text) or a delete (a tombstone) to the entry it targets.
fn apply_to_target(tx: &Connection, m: &NewMessage) -> Result<(), StoreError> {
    let c = &m.content;
    match (c.kind, c.target) {
        (Kind::Edit, Some(target)) => {
            tx.prepare_cached(
                "UPDATE messages SET body = ?3, cjk = ?4, edited = 1 WHERE conv = ?1 AND seq = ?2",
            )?
            .execute(params![m.conv, target, c.text, has_cjk(c.text.as_deref())])?;
        }
        (Kind::Delete, Some(target)) => {
            // A tombstone: the entry stays (sequence numbers stay dense), its text and media
            // go; released references let unreferenced uploads be collected.
            tx.prepare_cached(
                "DELETE FROM media_refs WHERE message =
                   (SELECT id FROM messages WHERE conv = ?1 AND seq = ?2)",
            )?
            .execute(params![m.conv, target])?;
            tx.prepare_cached(
                "UPDATE messages SET body = NULL, media = NULL, deleted = 1
                 WHERE conv = ?1 AND seq = ?2",
            )?
            .execute(params![m.conv, target])?;
        }
        _ => {}
    }
    Ok(())
}
