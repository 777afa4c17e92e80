//! What the in-memory chat directory is built from: a consistent snapshot of users,
//! conversations, members and blocks, and the version number that says when to read it again.

use postgres::IsolationLevel;

use super::{Conn, Db, Postgres};
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

impl Postgres {
    /// Runs `f` in a read-only REPEATABLE READ transaction on a pooled connection: all its
    /// queries see the database as of the first one (under the default READ COMMITTED each
    /// would see the commits made since the one before, and a member could be read without
    /// their conversation). Nothing is written, so nothing can fail to serialise.
    fn read_consistent<T>(
        &self,
        f: impl FnOnce(&mut Db<'_, postgres::Transaction<'_>>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut conn = self.pool()?;
        let Conn { client, cache } = &mut *conn;
        // A transaction object rather than a BEGIN through `with`: if `f` fails it is rolled
        // back when dropped, instead of going back to the pool still open.
        let mut tx = client
            .build_transaction()
            .isolation_level(IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()?;
        let result = f(&mut Db {
            client: &mut tx,
            cache,
        })?;
        tx.commit()?;
        Ok(result)
    }
}
