//! Reading the history back: pages after or before a sequence number, a user's stream since an
//! id, and each entry with what later entries did to it (edited, deleted, reactions).

use std::collections::BTreeMap;

use rusqlite::params;

use crate::chat::envelope::{Envelope, Kind};
use crate::store::messages::{Item, Page};
use crate::store::sqlite::Sqlite;
use crate::store::{History, StoreError};

/// The columns of an entry, in the order [`row_to_envelope`] reads them.
pub(super) const SELECT: &str =
    "SELECT id, conv, seq, sender, device, ts, kind, cid, body, reply_to,
    thread, target, emoji, edited, deleted, media FROM messages";

/// An entry as read with [`SELECT`].
pub(super) fn row_to_envelope(r: &rusqlite::Row<'_>) -> rusqlite::Result<Envelope> {
    let kind: String = r.get(6)?;
    Ok(Envelope {
        id: r.get(0)?,
        conv: r.get(1)?,
        seq: r.get(2)?,
        from: r.get(3)?,
        dev: r.get(4)?,
        ts: r.get(5)?,
        k: Kind::parse(&kind).unwrap_or(Kind::Msg),
        cid: r.get(7)?,
        t: r.get(8)?,
        re: r.get(9)?,
        th: r.get(10)?,
        target: r.get(11)?,
        emoji: r.get(12)?,
        media: r
            .get::<_, Option<String>>(15)?
            .map(|m| m.split(',').map(str::to_string).collect())
            .unwrap_or_default(),
    })
}

impl History for Sqlite {
    fn after(&self, conv: &str, after: u64, limit: usize) -> Result<Page, StoreError> {
        self.page(
            &format!("{SELECT} WHERE conv = ?1 AND seq > ?2 ORDER BY seq ASC LIMIT ?3"),
            params![conv, after, limit as i64 + 1],
            limit,
        )
    }

    fn before(&self, conv: &str, before: u64, limit: usize) -> Result<Page, StoreError> {
        self.page(
            &format!("{SELECT} WHERE conv = ?1 AND seq < ?2 ORDER BY seq DESC LIMIT ?3"),
            params![conv, before, limit as i64 + 1],
            limit,
        )
    }

    fn since(&self, convs: &[String], since: i64, limit: usize) -> Result<Page, StoreError> {
        if convs.is_empty() {
            return Ok(Page {
                items: Vec::new(),
                more: false,
            });
        }
        let list = convs.iter().map(|_| "?").collect::<Vec<_>>().join(",");
        let sql = format!("{SELECT} WHERE id > ? AND conv IN ({list}) ORDER BY id ASC LIMIT ?");
        let mut values: Vec<rusqlite::types::Value> = vec![since.into()];
        values.extend(convs.iter().map(|c| c.clone().into()));
        values.push((limit as i64 + 1).into());
        self.page(&sql, rusqlite::params_from_iter(values), limit)
    }

    fn first_seq(&self, conv: &str) -> Result<Option<u64>, StoreError> {
        let conn = self.lock();
        Ok(conn.query_row(
            "SELECT MIN(seq) FROM messages WHERE conv = ?1",
            params![conv],
            |r| r.get(0),
        )?)
    }
}

impl Sqlite {
    pub(super) fn page(
        &self,
        sql: &str,
        params: impl rusqlite::Params,
        limit: usize,
    ) -> Result<Page, StoreError> {
        let conn = self.lock();
        let mut stmt = conn.prepare_cached(sql)?;
        let mut rows: Vec<(Envelope, bool, bool)> = stmt
            .query_map(params, |r| {
                Ok((
                    row_to_envelope(r)?,
                    r.get::<_, bool>(13)?,
                    r.get::<_, bool>(14)?,
                ))
            })?
            .collect::<Result<_, _>>()?;
        let more = rows.len() > limit;
        rows.truncate(limit);
        let mut reactions = conn.prepare_cached(
            "SELECT emoji, SUM(CASE kind WHEN 'react' THEN 1 ELSE -1 END) FROM messages
             WHERE conv = ?1 AND target = ?2 AND kind IN ('react', 'unreact')
             GROUP BY emoji HAVING SUM(CASE kind WHEN 'react' THEN 1 ELSE -1 END) > 0
             ORDER BY emoji",
        )?;
        let mut items = Vec::with_capacity(rows.len());
        for (envelope, edited, deleted) in rows {
            let reactions = if envelope.k == Kind::Msg {
                reactions
                    .query_map(params![envelope.conv, envelope.seq], |r| {
                        Ok((r.get(0)?, r.get::<_, i64>(1)? as u64))
                    })?
                    .collect::<Result<_, _>>()?
            } else {
                BTreeMap::new()
            };
            items.push(Item {
                envelope,
                edited,
                deleted,
                reactions,
            });
        }
        Ok(Page { items, more })
    }
}
