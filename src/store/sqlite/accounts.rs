//! User accounts: creating, listing and removing users, their password hashes and admin flag.

use rusqlite::{params, OptionalExtension};

use super::conversations::direct_conversations_of;
use super::devices::renew_all_generations;
use super::Sqlite;
use crate::store::clock::now;
use crate::store::{Accounts, StoreError, UserRow};

impl Accounts for Sqlite {
    fn add_user(&self, id: &str, password_hash: &str) -> Result<(), StoreError> {
        let conn = self.lock();
        let inserted = conn.execute(
            "INSERT INTO users (id, password, created_at) VALUES (?1, ?2, ?3)
             ON CONFLICT (id) DO NOTHING",
            params![id, password_hash, now()],
        )?;
        if inserted == 0 {
            return Err(StoreError::Exists(format!("user {id}")));
        }
        Ok(())
    }

    fn remove_user(&self, id: &str) -> Result<bool, StoreError> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        for conv in direct_conversations_of(&tx, id)? {
            // media_refs go with their messages (ON DELETE CASCADE).
            tx.execute("DELETE FROM messages WHERE conv = ?1", params![conv])?;
            tx.execute("DELETE FROM receipts WHERE conv = ?1", params![conv])?;
            tx.execute("DELETE FROM conversations WHERE id = ?1", params![conv])?;
            // Its `conv_seq` row stays: the other user's devices sync after the sequence
            // numbers they saw, so a new conversation under this id must continue past them.
        }
        tx.execute("DELETE FROM receipts WHERE user = ?1", params![id])?;
        // Their group messages stay, but a later account with this id must not match them as
        // its own resends (idempotency by cid or packet id) or own their uploads; '' is never
        // a user id.
        tx.execute(
            "UPDATE messages SET cid = NULL, pkid = NULL WHERE sender = ?1",
            params![id],
        )?;
        tx.execute("UPDATE media SET owner = '' WHERE owner = ?1", params![id])?;
        let removed = tx.execute("DELETE FROM users WHERE id = ?1", params![id])?;
        tx.commit()?;
        Ok(removed > 0)
    }

    fn list_users(&self) -> Result<Vec<UserRow>, StoreError> {
        let conn = self.lock();
        let mut stmt = conn.prepare("SELECT id, admin, created_at FROM users ORDER BY id")?;
        let rows = stmt.query_map([], |r| {
            Ok(UserRow {
                id: r.get(0)?,
                admin: r.get(1)?,
                created_at: r.get(2)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn set_password(&self, id: &str, password_hash: &str) -> Result<bool, StoreError> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        let n = tx.execute(
            "UPDATE users SET password = ?2 WHERE id = ?1",
            params![id, password_hash],
        )?;
        renew_all_generations(&tx, id)?;
        tx.commit()?;
        Ok(n > 0)
    }

    fn user_exists(&self, id: &str) -> Result<bool, StoreError> {
        let conn = self.lock();
        Ok(conn
            .query_row("SELECT 1 FROM users WHERE id = ?1", params![id], |_| Ok(()))
            .optional()?
            .is_some())
    }

    fn set_admin(&self, id: &str, admin: bool) -> Result<bool, StoreError> {
        let conn = self.lock();
        let n = conn.execute(
            "UPDATE users SET admin = ?2 WHERE id = ?1",
            params![id, admin],
        )?;
        Ok(n > 0)
    }

    fn login_info(&self, id: &str) -> Result<Option<(String, bool)>, StoreError> {
        let conn = self.lock();
        Ok(conn
            .query_row(
                "SELECT password, admin FROM users WHERE id = ?1",
                params![id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?)
    }
}

#[cfg(test)]
mod tests {
    use crate::store::sqlite::Sqlite;
    use crate::store::*;

    /// The backend-neutral account tests are in `store::tests::directory`; this one is about
    /// the database file.
    #[test]
    fn reopening_keeps_users_and_does_not_migrate_twice() {
        let dir = tempfile::tempdir().unwrap();
        let store = Sqlite::open(dir.path()).unwrap();
        store.add_user("alice", "h1").unwrap();
        drop(store);
        let store = Sqlite::open(dir.path()).unwrap();
        assert_eq!(store.list_users().unwrap()[0].id, "alice");
        assert_eq!(
            store.login_info("alice").unwrap(),
            Some(("h1".into(), false))
        );
    }
}
