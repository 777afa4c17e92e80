//! What the in-memory chat directory is built from: a consistent snapshot of users,
//! conversations, members and blocks, and the version number that says when to read it again.

use rusqlite::TransactionBehavior;

use super::Sqlite;
use crate::store::{ConversationRow, Directory, Snapshot, StoreError, UserRow};

impl Directory for Sqlite {
    fn directory_version(&self) -> Result<i64, StoreError> {
        Ok(self.lock().query_row(
            "SELECT value FROM meta WHERE key = 'directory_version'",
            [],
            |r| r.get(0),
        )?)
    }

    fn snapshot(&self) -> Result<Snapshot, StoreError> {
        let mut conn = self.lock();
        // Only reads: a snapshot, without holding the writers up.
        let tx = conn.transaction_with_behavior(TransactionBehavior::Deferred)?;
        let mut snap = Snapshot::default();
        {
            let mut stmt = tx.prepare("SELECT id, admin, created_at FROM users")?;
            snap.users = stmt
                .query_map([], |r| {
                    Ok(UserRow {
                        id: r.get(0)?,
                        admin: r.get(1)?,
                        created_at: r.get(2)?,
                    })
                })?
                .collect::<Result<_, _>>()?;
            let mut stmt = tx.prepare("SELECT id, name, topic FROM conversations")?;
            snap.conversations = stmt
                .query_map([], |r| {
                    Ok(ConversationRow {
                        id: r.get(0)?,
                        name: r.get(1)?,
                        topic: r.get(2)?,
                    })
                })?
                .collect::<Result<_, _>>()?;
            let mut stmt = tx.prepare("SELECT conv, user, role FROM members")?;
            snap.members = stmt
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                .collect::<Result<_, _>>()?;
            let mut stmt = tx.prepare("SELECT user, blocked FROM blocks")?;
            snap.blocks = stmt
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<Result<_, _>>()?;
        }
        tx.commit()?;
        Ok(snap)
    }
}
