//! A user's devices and their refresh tokens: logging in registers a device, revoking it ends
//! its tokens.

use rusqlite::{params, OptionalExtension};

use super::clock::now;
use super::{Store, StoreError};

impl Store {
    /// Registers a device for a user (a login); a revoked device logging in again is restored.
    pub fn upsert_device(&self, user: &str, device: &str) -> Result<(), StoreError> {
        self.lock().execute(
            "INSERT INTO devices (user, device, created_at) VALUES (?1, ?2, ?3)
             ON CONFLICT (user, device) DO UPDATE SET revoked = 0",
            params![user, device, now()],
        )?;
        Ok(())
    }

    /// Revokes a device and its refresh tokens; whether it existed.
    pub fn revoke_device(&self, user: &str, device: &str) -> Result<bool, StoreError> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        let n = tx.execute(
            "UPDATE devices SET revoked = 1 WHERE user = ?1 AND device = ?2",
            params![user, device],
        )?;
        tx.execute(
            "DELETE FROM refresh_tokens WHERE user = ?1 AND device = ?2",
            params![user, device],
        )?;
        tx.commit()?;
        Ok(n > 0)
    }

    /// A user's devices: (device, created_at, revoked).
    pub fn devices(&self, user: &str) -> Result<Vec<(String, i64, bool)>, StoreError> {
        let conn = self.lock();
        let mut stmt = conn.prepare_cached(
            "SELECT device, created_at, revoked FROM devices WHERE user = ?1 ORDER BY device",
        )?;
        let rows = stmt.query_map(params![user], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Whether a device may use its tokens (known and not revoked).
    pub fn device_active(&self, user: &str, device: &str) -> Result<bool, StoreError> {
        Ok(self
            .lock()
            .query_row(
                "SELECT revoked FROM devices WHERE user = ?1 AND device = ?2",
                params![user, device],
                |r| r.get::<_, bool>(0),
            )
            .optional()?
            .is_some_and(|revoked| !revoked))
    }

    pub fn add_refresh_token(
        &self,
        hash: &str,
        user: &str,
        device: &str,
        expires_at: i64,
    ) -> Result<(), StoreError> {
        self.lock().execute(
            "INSERT INTO refresh_tokens (hash, user, device, expires_at) VALUES (?1, ?2, ?3, ?4)",
            params![hash, user, device, expires_at],
        )?;
        Ok(())
    }

    /// Removes a refresh token and returns its (user, device) if it was valid at `now`: each
    /// token is used once (rotation).
    pub fn take_refresh_token(
        &self,
        hash: &str,
        now: i64,
    ) -> Result<Option<(String, String)>, StoreError> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        let found: Option<(String, String, i64)> = tx
            .query_row(
                "SELECT user, device, expires_at FROM refresh_tokens WHERE hash = ?1",
                params![hash],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?;
        tx.execute("DELETE FROM refresh_tokens WHERE hash = ?1", params![hash])?;
        tx.commit()?;
        Ok(found
            .filter(|(_, _, exp)| *exp > now)
            .map(|(u, d, _)| (u, d)))
    }
}
