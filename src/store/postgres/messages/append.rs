//! One message's append inside a batch's transaction, as SQLite's: a resend is recognised,
//! media and the target are checked, then the entry gets its sequence number, is stored, links
//! its media and applies an edit or delete to its target.

use postgres::{GenericClient, Transaction};

use super::super::{big, is_unique_violation, Db};
use super::history::{row_to_envelope, SELECT};
use super::is_transient;
use crate::chat::edits::{self, EditRefused, Target};
use crate::chat::envelope::{Envelope, Kind};
use crate::store::clock::now_ms;
use crate::store::messages::{has_cjk, AppendError, Appended, NewMessage};
use crate::store::StoreError;

/// How far back a DUP resend without a client message id is matched against what was stored.
const DUP_WINDOW_MS: i64 = 24 * 3600 * 1000;

/// Appends `m` in its own savepoint. An error that concerns this message alone (a value the
/// database cannot hold, a broken constraint) undoes just its changes and fails just it. An
/// error that may pass fails the batch, which is retried whole.
pub(super) fn append_isolated(
    db: &mut Db<'_, Transaction<'_>>,
    m: &NewMessage,
) -> Result<Result<Appended, AppendError>, StoreError> {
    match db.savepoint(|sp| append(sp, m)) {
        Ok(result) => Ok(result),
        Err(e) if is_transient(&e) => Err(e),
        // The same (sender, conversation, cid) committed by another process since this one
        // looked: the index waited for that commit, so the original is there to find.
        Err(e) if is_unique_violation(&e) && m.content.cid.is_some() => {
            Ok(match find_duplicate(db, m)? {
                Some(envelope) => Ok(Appended {
                    envelope,
                    duplicate: true,
                }),
                None => Err(AppendError::Store(e)),
            })
        }
        Err(e) => {
            tracing::error!(error = %e, conv = %m.conv, sender = %m.sender, "message not stored");
            Ok(Err(AppendError::Store(e)))
        }
    }
}

/// Appends `m`, or finds it stored before; the inner error is a refusal, the outer one a
/// database error.
pub(super) fn append<C: GenericClient>(
    db: &mut Db<'_, C>,
    m: &NewMessage,
) -> Result<Result<Appended, AppendError>, StoreError> {
    if let Some(envelope) = find_duplicate(db, m)? {
        return Ok(Ok(Appended {
            envelope,
            duplicate: true,
        }));
    }
    if let Err(refused) = check_media(db, m)? {
        return Ok(Err(AppendError::Refused(refused)));
    }
    if let Err(refused) = check_target(db, m)? {
        return Ok(Err(AppendError::Refused(refused)));
    }
    let ts = now_ms();
    let c = &m.content;
    let number = |n: Option<u64>| n.map(big).transpose();
    // One round trip: the next number (insert or increment: the conversation's row stays
    // locked until COMMIT), the entry under it, and its place in the word index's queue.
    let row = db.one(
        "WITH next AS (
             INSERT INTO conv_seq (conv, last) VALUES ($1, 1)
             ON CONFLICT (conv) DO UPDATE SET last = conv_seq.last + 1 RETURNING last),
         added AS (
             INSERT INTO messages (conv, seq, sender, device, ts, cid, pkid, kind, body,
                                   reply_to, thread, target, emoji, media, cjk)
             SELECT $1, next.last, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14
             FROM next RETURNING id, seq),
         queued AS (INSERT INTO words_pending (id) SELECT id FROM added)
         SELECT id, seq FROM added",
        &[
            &m.conv,
            &m.sender,
            &m.device,
            &ts,
            &c.cid,
            &m.pkid.map(i32::from),
            &c.kind.as_str(),
            &c.text,
            &number(c.reply_to)?,
            &number(c.thread)?,
            &number(c.target)?,
            &c.emoji,
            &(!c.media.is_empty()).then(|| c.media.join(",")),
            &has_cjk(c.text.as_deref()),
        ],
    )?;
    let (id, seq): (i64, i64) = (row.get(0), row.get(1));
    for media in &c.media {
        db.exec(
            "INSERT INTO media_refs (media, message, conv) VALUES ($1, $2, $3)
             ON CONFLICT DO NOTHING",
            &[media, &id, &m.conv],
        )?;
    }
    apply_to_target(db, m)?;
    Ok(Ok(Appended {
        envelope: m.envelope(id, seq as u64, ts),
        duplicate: false,
    }))
}

/// The stored entry `m` repeats, if it is a resend: by client message id, or by packet id.
fn find_duplicate<C: GenericClient>(
    db: &mut Db<'_, C>,
    m: &NewMessage,
) -> Result<Option<Envelope>, StoreError> {
    let c = &m.content;
    if let Some(cid) = &c.cid {
        let sql = format!("{SELECT} WHERE sender = $1 AND conv = $2 AND cid = $3");
        return Ok(db
            .opt(&sql, &[&m.sender, &m.conv, cid])?
            .map(|r| row_to_envelope(&r)));
    }
    let (true, Some(pkid)) = (m.dup, m.pkid) else {
        return Ok(None);
    };
    // A resend (DUP) without cid: the same device's latest message with this packet id, if
    // it carried the same content to the same conversation.
    let sql =
        format!("{SELECT} WHERE device = $1 AND pkid = $2 AND ts > $3 ORDER BY id DESC LIMIT 1");
    let found = db
        .opt(
            &sql,
            &[&m.device, &i32::from(pkid), &(now_ms() - DUP_WINDOW_MS)],
        )?
        .map(|r| row_to_envelope(&r));
    Ok(found.filter(|e| e.conv == m.conv && e.t == c.text && e.k == c.kind))
}

/// Whether `m` may carry each of its media ids: its sender uploaded it, or the conversation
/// has seen it already.
fn check_media<C: GenericClient>(
    db: &mut Db<'_, C>,
    m: &NewMessage,
) -> Result<Result<(), EditRefused>, StoreError> {
    for id in &m.content.media {
        let ok: bool = db
            .one(
                "SELECT EXISTS (SELECT 1 FROM media WHERE id = $1 AND (owner = $2 OR EXISTS (
                    SELECT 1 FROM media_refs WHERE media = $1 AND conv = $3)))",
                &[id, &m.sender, &m.conv],
            )?
            .get(0);
        if !ok {
            return Ok(Err(EditRefused::UnknownMedia));
        }
    }
    Ok(Ok(()))
}

/// Whether `m`'s sender may do what `m` does to its target, if it has one ([`edits::check`]
/// over the target as stored).
fn check_target<C: GenericClient>(
    db: &mut Db<'_, C>,
    m: &NewMessage,
) -> Result<Result<(), EditRefused>, StoreError> {
    let Some(target) = m.content.target else {
        return Ok(Ok(()));
    };
    let row = db.opt(
        "SELECT sender, kind, deleted FROM messages WHERE conv = $1 AND seq = $2",
        &[&m.conv, &big(target)?],
    )?;
    let stored: Option<(String, String, bool)> = row.map(|r| (r.get(0), r.get(1), r.get(2)));
    let target = stored.as_ref().map(|(sender, kind, deleted)| Target {
        sender,
        kind: Kind::parse(kind),
        deleted: *deleted,
    });
    Ok(edits::check(target, &m.sender, m.moderator, m.content.kind))
}

/// Applies an edit (new text) or a delete (a tombstone) to the entry it targets.
fn apply_to_target<C: GenericClient>(db: &mut Db<'_, C>, m: &NewMessage) -> Result<(), StoreError> {
    let c = &m.content;
    let Some(target) = c.target else {
        return Ok(());
    };
    let target = big(target)?;
    if matches!(c.kind, Kind::Edit | Kind::Delete) {
        // The target's words change: the word index takes them again.
        db.exec(
            "INSERT INTO words_pending (id) SELECT id FROM messages WHERE conv = $1 AND seq = $2
             ON CONFLICT DO NOTHING",
            &[&m.conv, &target],
        )?;
    }
    match c.kind {
        Kind::Edit => {
            db.exec(
                "UPDATE messages SET body = $3, cjk = $4, edited = TRUE
                 WHERE conv = $1 AND seq = $2",
                &[&m.conv, &target, &c.text, &has_cjk(c.text.as_deref())],
            )?;
        }
        Kind::Delete => {
            // A tombstone: the entry stays (sequence numbers stay dense), its text and media
            // go; released references let unreferenced uploads be collected.
            db.exec(
                "DELETE FROM media_refs WHERE message =
                   (SELECT id FROM messages WHERE conv = $1 AND seq = $2)",
                &[&m.conv, &target],
            )?;
            db.exec(
                "UPDATE messages SET body = NULL, media = NULL, deleted = TRUE
                 WHERE conv = $1 AND seq = $2",
                &[&m.conv, &target],
            )?;
        }
        _ => {}
    }
    Ok(())
}
