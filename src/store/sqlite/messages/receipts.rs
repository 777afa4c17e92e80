//! Receipts: how far each member has received and read a conversation, and how much is unread.

use rusqlite::params;

use crate::store::sqlite::Sqlite;
use crate::store::{Receipts, StoreError};

impl Receipts for Sqlite {
    fn mark_delivered(&self, rows: &[(String, String, u64)]) -> Result<Vec<bool>, StoreError> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        let mut advanced = Vec::with_capacity(rows.len());
        for (conv, user, seq) in rows {
            // Only for a user of the conversation as it stands: a receipt batched before the
            // user (or the membership) went must not come back under a new account.
            let n = tx.execute(
                "INSERT INTO receipts (conv, user, delivered)
                 SELECT ?1, ?2, ?3 WHERE EXISTS (
                     SELECT 1 FROM conversations c WHERE c.id = ?1 AND (
                         (c.kind = 'direct' AND EXISTS (SELECT 1 FROM users WHERE id = ?2))
                         OR EXISTS (SELECT 1 FROM members WHERE conv = ?1 AND user = ?2)))
                 ON CONFLICT (conv, user) DO UPDATE SET delivered = excluded.delivered
                 WHERE excluded.delivered > receipts.delivered",
                params![conv, user, seq],
            )?;
            advanced.push(n > 0);
        }
        tx.commit()?;
        Ok(advanced)
    }

    fn mark_read(
        &self,
        conv: &str,
        user: &str,
        seq: u64,
        private: bool,
    ) -> Result<Option<u64>, StoreError> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        let last: u64 = tx.query_row(
            "SELECT MAX(COALESCE((SELECT last FROM conv_seq WHERE conv = ?1), 0),
                        COALESCE((SELECT MAX(seq) FROM messages WHERE conv = ?1), 0))",
            params![conv],
            |r| r.get(0),
        )?;
        let seq = seq.min(last);
        if seq == 0 {
            // Nothing to have read (an empty conversation): no receipt row either.
            return Ok(None);
        }
        let sql = if private {
            "INSERT INTO receipts (conv, user, read_private) VALUES (?1, ?2, ?3)
             ON CONFLICT (conv, user) DO UPDATE SET read_private = excluded.read_private
             WHERE excluded.read_private > MAX(receipts.read_private, receipts.read)"
        } else {
            "INSERT INTO receipts (conv, user, read) VALUES (?1, ?2, ?3)
             ON CONFLICT (conv, user) DO UPDATE SET read = excluded.read
             WHERE excluded.read > receipts.read"
        };
        let raised = tx.execute(sql, params![conv, user, seq])? > 0;
        tx.commit()?;
        Ok(raised.then_some(seq))
    }

    fn receipts(&self, conv: &str) -> Result<Vec<(String, u64, u64)>, StoreError> {
        let conn = self.lock();
        let mut stmt = conn.prepare_cached(
            "SELECT user, delivered, read FROM receipts WHERE conv = ?1 ORDER BY user",
        )?;
        let rows = stmt.query_map(params![conv], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn unread(&self, conv: &str, user: &str) -> Result<u64, StoreError> {
        let conn = self.lock();
        Ok(conn.query_row(
            "SELECT COUNT(*) FROM messages WHERE conv = ?1 AND kind = 'msg' AND sender != ?2
             AND seq > COALESCE((SELECT MAX(read, read_private) FROM receipts
                                 WHERE conv = ?1 AND user = ?2), 0)",
            params![conv, user],
            |r| r.get(0),
        )?)
    }
}
