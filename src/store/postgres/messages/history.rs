//! Reading the history back: pages after or before a sequence number, a user's stream since an
//! id, and each entry with what later entries did to it (edited, deleted, reactions).

use std::collections::BTreeMap;

use postgres::{GenericClient, Row};

use super::super::{big, Db, Param, Postgres};
use crate::chat::envelope::{Envelope, Kind};
use crate::store::messages::{Item, Page};
use crate::store::{History, StoreError};

/// The columns of an entry, in the order [`row_to_envelope`] reads them.
pub(super) const SELECT: &str = "SELECT id, conv, seq, sender, device, ts, kind, cid, body,
    reply_to, thread, target, emoji, edited, deleted, media FROM messages";

/// An entry as read with [`SELECT`] (numbers are stored as `bigint`, never negative).
pub(super) fn row_to_envelope(r: &Row) -> Envelope {
    let number = |i: usize| r.get::<_, Option<i64>>(i).map(|n| n as u64);
    Envelope {
        id: r.get(0),
        conv: r.get(1),
        seq: r.get::<_, i64>(2) as u64,
        from: r.get(3),
        dev: r.get(4),
        ts: r.get(5),
        k: Kind::parse(r.get(6)).unwrap_or(Kind::Msg),
        cid: r.get(7),
        t: r.get(8),
        re: number(9),
        th: number(10),
        target: number(11),
        emoji: r.get(12),
        media: r
            .get::<_, Option<String>>(15)
            .map(|m| m.split(',').map(str::to_string).collect())
            .unwrap_or_default(),
    }
}

impl History for Postgres {
    fn after(&self, conv: &str, after: u64, limit: usize) -> Result<Page, StoreError> {
        let sql = format!("{SELECT} WHERE conv = $1 AND seq > $2 ORDER BY seq ASC LIMIT $3");
        self.with(|db| page(db, &sql, &[&conv, &big(after)?, &(limit as i64 + 1)], limit))
    }

    fn before(&self, conv: &str, before: u64, limit: usize) -> Result<Page, StoreError> {
        let sql = format!("{SELECT} WHERE conv = $1 AND seq < $2 ORDER BY seq DESC LIMIT $3");
        self.with(|db| {
            page(
                db,
                &sql,
                &[&conv, &big(before)?, &(limit as i64 + 1)],
                limit,
            )
        })
    }

    fn since(&self, convs: &[String], since: i64, limit: usize) -> Result<Page, StoreError> {
        let sql = format!("{SELECT} WHERE id > $1 AND conv = ANY($2) ORDER BY id ASC LIMIT $3");
        self.with(|db| page(db, &sql, &[&since, &convs, &(limit as i64 + 1)], limit))
    }

    fn first_seq(&self, conv: &str) -> Result<Option<u64>, StoreError> {
        self.with(|db| {
            let min: Option<i64> = db
                .one("SELECT MIN(seq) FROM messages WHERE conv = $1", &[&conv])?
                .get(0);
            Ok(min.map(|s| s as u64))
        })
    }
}

/// Up to `limit` entries that `sql` (selecting [`SELECT`]'s columns, and one more row than
/// `limit` to tell whether there are more) finds, with their reactions.
pub(super) fn page<C: GenericClient>(
    db: &mut Db<'_, C>,
    sql: &str,
    params: &[Param<'_>],
    limit: usize,
) -> Result<Page, StoreError> {
    let rows = db.query(sql, params)?;
    let more = rows.len() > limit;
    let rows = &rows[..rows.len().min(limit)];
    let items = with_reactions(db, rows)?;
    Ok(Page { items, more })
}

/// The entries of `rows` with what was done to them; reactions are read for all of them in
/// one query (a round trip per entry would dominate a page).
pub(super) fn with_reactions<C: GenericClient>(
    db: &mut Db<'_, C>,
    rows: &[Row],
) -> Result<Vec<Item>, StoreError> {
    let entries: Vec<(Envelope, bool, bool)> = rows
        .iter()
        .map(|r| (row_to_envelope(r), r.get(13), r.get(14)))
        .collect();
    let (convs, seqs): (Vec<&str>, Vec<i64>) = entries
        .iter()
        .filter(|(e, _, _)| e.k == Kind::Msg)
        .map(|(e, _, _)| (e.conv.as_str(), e.seq as i64))
        .unzip();
    let mut reactions: BTreeMap<(String, u64), BTreeMap<String, u64>> = BTreeMap::new();
    if !convs.is_empty() {
        let found = db.query(
            "SELECT m.conv, m.target, m.emoji,
                    SUM(CASE m.kind WHEN 'react' THEN 1 ELSE -1 END)::BIGINT
             FROM messages m
             JOIN UNNEST($1::TEXT[], $2::BIGINT[]) AS t(conv, seq)
               ON m.conv = t.conv AND m.target = t.seq
             WHERE m.kind IN ('react', 'unreact') AND m.emoji IS NOT NULL
             GROUP BY m.conv, m.target, m.emoji
             HAVING SUM(CASE m.kind WHEN 'react' THEN 1 ELSE -1 END) > 0",
            &[&convs, &seqs],
        )?;
        for r in &found {
            let key = (r.get::<_, String>(0), r.get::<_, i64>(1) as u64);
            let count = r.get::<_, i64>(3) as u64;
            reactions.entry(key).or_default().insert(r.get(2), count);
        }
    }
    Ok(entries
        .into_iter()
        .map(|(envelope, edited, deleted)| {
            let reactions = if envelope.k == Kind::Msg {
                reactions
                    .remove(&(envelope.conv.clone(), envelope.seq))
                    .unwrap_or_default()
            } else {
                BTreeMap::new()
            };
            Item {
                envelope,
                edited,
                deleted,
                reactions,
            }
        })
        .collect())
}
