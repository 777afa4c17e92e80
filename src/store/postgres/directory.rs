//! What the in-memory chat directory is built from: a consistent snapshot of users,
//! conversations, members and blocks, and the version number that says when to read it again.

use super::Postgres;
use crate::store::{ConversationRow, Directory, Snapshot, StoreError, UserRow};

impl Directory for Postgres {
    fn directory_version(&self) -> Result<i64, StoreError> {
        self.with(|db| {
            Ok(db
                .one(
                    "SELECT value FROM meta WHERE key = 'directory_version'",
                    &[],
                )?
                .try_get(0)?)
        })
    }

    fn snapshot(&self) -> Result<Snapshot, StoreError> {
        self.read_consistent(|db| {
            let mut snap = Snapshot::default();
            for r in db.query("SELECT id, admin, created_at FROM users", &[])? {
                snap.users.push(UserRow {
                    id: r.try_get(0)?,
                    admin: r.try_get(1)?,
                    created_at: r.try_get(2)?,
                });
            }
            for r in db.query("SELECT id, name, topic FROM conversations", &[])? {
                snap.conversations.push(ConversationRow {
                    id: r.try_get(0)?,
                    name: r.try_get(1)?,
                    topic: r.try_get(2)?,
                });
            }
            for r in db.query("SELECT conv, user_id, role FROM members", &[])? {
                snap.members
                    .push((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?));
            }
            for r in db.query("SELECT user_id, blocked FROM blocks", &[])? {
                snap.blocks.push((r.try_get(0)?, r.try_get(1)?));
            }
            Ok(snap)
        })
    }
}
