//! A user's devices and their refresh tokens: logging in registers a device, revoking it ends
//! its tokens.
//!
//! Each device has a token generation (`gen`): a random value that every access and refresh
//! token of the device carries, and that revoking the device or changing the user's password
//! replaces. A token is good only while its generation is the device's, so no later login
//! under the same device name, and no account later made under the same user id, brings an
//! old token back.

use rusqlite::{params, OptionalExtension, Transaction};

use super::Sqlite;
use crate::store::clock::now;
use crate::store::{Devices, StoreError};

/// A fresh generation, in SQL: 64 random bits, hex. Only distinctness matters (the value is
/// in every token the device holds, not a secret).
const NEW_GEN: &str = "lower(hex(randomblob(8)))";

impl Devices for Sqlite {
    fn upsert_device(&self, user: &str, device: &str) -> Result<(), StoreError> {
        self.lock().execute(
            &format!(
                "INSERT INTO devices (user, device, created_at, gen) VALUES (?1, ?2, ?3, {NEW_GEN})
                 ON CONFLICT (user, device) DO UPDATE SET revoked = 0"
            ),
            params![user, device, now()],
        )?;
        Ok(())
    }

    fn revoke_device(&self, user: &str, device: &str) -> Result<bool, StoreError> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        let n = tx.execute(
            &format!(
                "UPDATE devices SET revoked = 1, gen = {NEW_GEN} WHERE user = ?1 AND device = ?2"
            ),
            params![user, device],
        )?;
        tx.execute(
            "DELETE FROM refresh_tokens WHERE user = ?1 AND device = ?2",
            params![user, device],
        )?;
        tx.commit()?;
        Ok(n > 0)
    }

    fn devices(&self, user: &str) -> Result<Vec<(String, i64, bool)>, StoreError> {
        let conn = self.lock();
        let mut stmt = conn.prepare_cached(
            "SELECT device, created_at, revoked FROM devices WHERE user = ?1 ORDER BY device",
        )?;
        let rows = stmt.query_map(params![user], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn token_current(&self, user: &str, device: &str, gen: &str) -> Result<bool, StoreError> {
        // Every CONNECT and HTTP request with a token asks: kept prepared.
        Ok(self
            .lock()
            .prepare_cached("SELECT revoked, gen FROM devices WHERE user = ?1 AND device = ?2")?
            .query_row(params![user, device], |r| {
                Ok((r.get::<_, bool>(0)?, r.get::<_, String>(1)?))
            })
            .optional()?
            .is_some_and(|(revoked, current)| !revoked && current == gen))
    }

    fn add_refresh_token(
        &self,
        hash: &str,
        user: &str,
        device: &str,
        expires_at: i64,
    ) -> Result<Option<String>, StoreError> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        let Some(gen) = active_gen(&tx, user, device)? else {
            return Ok(None);
        };
        tx.execute(
            "INSERT INTO refresh_tokens (hash, user, device, expires_at, gen)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![hash, user, device, expires_at, gen],
        )?;
        tx.commit()?;
        Ok(Some(gen))
    }

    fn take_refresh_token(
        &self,
        hash: &str,
        now: i64,
    ) -> Result<Option<(String, String)>, StoreError> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        let found: Option<(String, String, i64, String)> = tx
            .query_row(
                "SELECT user, device, expires_at, gen FROM refresh_tokens WHERE hash = ?1",
                params![hash],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .optional()?;
        tx.execute("DELETE FROM refresh_tokens WHERE hash = ?1", params![hash])?;
        let Some((user, device, expires_at, gen)) = found else {
            return Ok(None);
        };
        let current = active_gen(&tx, &user, &device)?.is_some_and(|g| g == gen);
        tx.commit()?;
        Ok((current && expires_at > now).then_some((user, device)))
    }
}

/// Gives every device of `user` a new generation and drops their refresh tokens: every token
/// the user holds stops working (a password change).
pub(super) fn renew_all_generations(tx: &Transaction<'_>, user: &str) -> Result<(), StoreError> {
    tx.execute(
        &format!("UPDATE devices SET gen = {NEW_GEN} WHERE user = ?1"),
        params![user],
    )?;
    tx.execute("DELETE FROM refresh_tokens WHERE user = ?1", params![user])?;
    Ok(())
}

/// The generation of a device that is known and not revoked.
fn active_gen(
    tx: &Transaction<'_>,
    user: &str,
    device: &str,
) -> Result<Option<String>, StoreError> {
    Ok(tx
        .query_row(
            "SELECT gen FROM devices WHERE user = ?1 AND device = ?2 AND NOT revoked",
            params![user, device],
            |r| r.get(0),
        )
        .optional()?)
}
