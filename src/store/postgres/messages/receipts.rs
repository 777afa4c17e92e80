//! Receipts: how far each member has received and read a conversation, and how much is unread.

use super::super::{big, Postgres};
use crate::store::{Receipts, StoreError};

impl Receipts for Postgres {
    fn mark_delivered(&self, rows: &[(String, String, u64)]) -> Result<Vec<bool>, StoreError> {
        self.tx(|db| {
            let mut advanced = Vec::with_capacity(rows.len());
            for (conv, user, seq) in rows {
                // Only for a user of the conversation as it stands (see the SQLite twin).
                let n = db.exec(
                    "INSERT INTO receipts (conv, user_id, delivered)
                     SELECT $1, $2, $3 WHERE EXISTS (
                         SELECT 1 FROM conversations c WHERE c.id = $1 AND (
                             (c.kind = 'direct' AND EXISTS (SELECT 1 FROM users WHERE id = $2))
                             OR EXISTS (SELECT 1 FROM members
                                        WHERE conv = $1 AND user_id = $2)))
                     ON CONFLICT (conv, user_id) DO UPDATE SET delivered = excluded.delivered
                     WHERE excluded.delivered > receipts.delivered",
                    &[conv, user, &big(*seq)?],
                )?;
                advanced.push(n > 0);
            }
            Ok(advanced)
        })
    }

    fn mark_read(
        &self,
        conv: &str,
        user: &str,
        seq: u64,
        private: bool,
    ) -> Result<Option<u64>, StoreError> {
        let seq = big(seq)?;
        self.tx(|db| {
            let last: i64 = db
                .opt("SELECT last FROM conv_seq WHERE conv = $1", &[&conv])?
                .map_or(0, |r| r.get(0));
            let seq = seq.min(last);
            if seq == 0 {
                // Nothing to have read (an empty conversation): no receipt row either.
                return Ok(None);
            }
            let sql = if private {
                "INSERT INTO receipts (conv, user_id, read_private) VALUES ($1, $2, $3)
                 ON CONFLICT (conv, user_id) DO UPDATE SET read_private = excluded.read_private
                 WHERE excluded.read_private > GREATEST(receipts.read_private, receipts.read)"
            } else {
                "INSERT INTO receipts (conv, user_id, read) VALUES ($1, $2, $3)
                 ON CONFLICT (conv, user_id) DO UPDATE SET read = excluded.read
                 WHERE excluded.read > receipts.read"
            };
            let raised = db.exec(sql, &[&conv, &user, &seq])? > 0;
            Ok(raised.then_some(seq as u64))
        })
    }

    fn receipts(&self, conv: &str) -> Result<Vec<(String, u64, u64)>, StoreError> {
        self.with(|db| {
            // Byte order, as SQLite sorts, whatever the database's collation.
            let rows = db.query(
                r#"SELECT user_id, delivered, read FROM receipts WHERE conv = $1
                   ORDER BY user_id COLLATE "C""#,
                &[&conv],
            )?;
            Ok(rows
                .iter()
                .map(|r| {
                    (
                        r.get(0),
                        r.get::<_, i64>(1) as u64,
                        r.get::<_, i64>(2) as u64,
                    )
                })
                .collect())
        })
    }

    fn unread(&self, conv: &str, user: &str) -> Result<u64, StoreError> {
        self.with(|db| {
            let n: i64 = db
                .one(
                    "SELECT COUNT(*) FROM messages WHERE conv = $1 AND kind = 'msg' AND sender <> $2
                     AND seq > COALESCE((SELECT GREATEST(read, read_private) FROM receipts
                                         WHERE conv = $1 AND user_id = $2), 0)",
                    &[&conv, &user],
                )?
                .get(0);
            Ok(n as u64)
        })
    }
}
