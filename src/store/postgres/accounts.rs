//! User accounts: creating, listing and removing users, their password hashes and admin flag.

use super::conversations::direct_conversations_of;
use super::devices::renew_all_generations;
use super::Postgres;
use crate::store::clock::now;
use crate::store::{Accounts, StoreError, UserRow};

impl Accounts for Postgres {
    fn add_user(&self, id: &str, password_hash: &str) -> Result<(), StoreError> {
        // ON CONFLICT rather than catching the unique violation: nothing is inserted, so the
        // directory version does not move either.
        let inserted = self.with(|db| {
            db.exec(
                "INSERT INTO users (id, password, created_at) VALUES ($1, $2, $3)
                 ON CONFLICT (id) DO NOTHING",
                &[&id, &password_hash, &now()],
            )
        })?;
        if inserted == 0 {
            return Err(StoreError::Exists(format!("user {id}")));
        }
        Ok(())
    }

    fn remove_user(&self, id: &str) -> Result<bool, StoreError> {
        self.tx(|db| {
            for conv in direct_conversations_of(db, id)? {
                // media_refs go with their messages (ON DELETE CASCADE).
                db.exec("DELETE FROM messages WHERE conv = $1", &[&conv])?;
                db.exec("DELETE FROM receipts WHERE conv = $1", &[&conv])?;
                db.exec("DELETE FROM conversations WHERE id = $1", &[&conv])?;
                // Its `conv_seq` row stays: the other user's devices sync after the sequence
                // numbers they saw, so a new conversation under this id must continue past
                // them.
            }
            db.exec("DELETE FROM receipts WHERE user_id = $1", &[&id])?;
            // Their group messages stay, but a later account with this id must not match them
            // as its own resends (idempotency by cid or packet id) or own their uploads; '' is
            // never a user id.
            db.exec(
                "UPDATE messages SET cid = NULL, pkid = NULL WHERE sender = $1",
                &[&id],
            )?;
            db.exec("UPDATE media SET owner = '' WHERE owner = $1", &[&id])?;
            // Memberships, blocks, devices (with their refresh tokens) and push endpoints go
            // with the row (ON DELETE CASCADE).
            let removed = db.exec("DELETE FROM users WHERE id = $1", &[&id])?;
            Ok(removed > 0)
        })
    }

    fn list_users(&self) -> Result<Vec<UserRow>, StoreError> {
        self.with(|db| {
            db.query("SELECT id, admin, created_at FROM users ORDER BY id", &[])?
                .iter()
                .map(|r| {
                    Ok(UserRow {
                        id: r.try_get(0)?,
                        admin: r.try_get(1)?,
                        created_at: r.try_get(2)?,
                    })
                })
                .collect()
        })
    }

    fn set_password(&self, id: &str, password_hash: &str) -> Result<bool, StoreError> {
        self.tx(|db| {
            let n = db.exec(
                "UPDATE users SET password = $2 WHERE id = $1",
                &[&id, &password_hash],
            )?;
            renew_all_generations(db, id)?;
            Ok(n > 0)
        })
    }

    fn user_exists(&self, id: &str) -> Result<bool, StoreError> {
        self.with(|db| {
            Ok(db
                .opt("SELECT 1 FROM users WHERE id = $1", &[&id])?
                .is_some())
        })
    }

    fn set_admin(&self, id: &str, admin: bool) -> Result<bool, StoreError> {
        let n =
            self.with(|db| db.exec("UPDATE users SET admin = $2 WHERE id = $1", &[&id, &admin]))?;
        Ok(n > 0)
    }

    fn login_info(&self, id: &str) -> Result<Option<(String, bool)>, StoreError> {
        self.with(|db| {
            db.opt("SELECT password, admin FROM users WHERE id = $1", &[&id])?
                .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
                .transpose()
        })
    }
}
