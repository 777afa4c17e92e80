//! A user's devices and their refresh tokens: logging in registers a device, revoking it ends
//! its tokens.
//!
//! Each device has a token generation (`gen`): a random value that every access and refresh
//! token of the device carries, and that revoking the device or changing the user's password
//! replaces. A token is good only while its generation is the device's, so no later login
//! under the same device name, and no account later made under the same user id, brings an
//! old token back.

use postgres::GenericClient;

use super::{Db, Postgres};
use crate::store::clock::now;
use crate::store::{Devices, StoreError};

/// A fresh generation: 64 random bits, hex, as SQLite's `lower(hex(randomblob(8)))`. Made
/// here (the system's random source, through ring) because PostgreSQL's own random bytes
/// need pgcrypto, which the schema does not load. Only distinctness matters (the value is in
/// every token the device holds, not a secret).
fn new_gen() -> String {
    crate::ids::random_hex(8)
}

impl Devices for Postgres {
    fn upsert_device(&self, user: &str, device: &str) -> Result<(), StoreError> {
        self.with(|db| {
            db.exec(
                "INSERT INTO devices (user_id, device, created_at, gen) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (user_id, device) DO UPDATE SET revoked = FALSE",
                &[&user, &device, &now(), &new_gen()],
            )
        })?;
        Ok(())
    }

    fn revoke_device(&self, user: &str, device: &str) -> Result<bool, StoreError> {
        self.tx(|db| {
            let n = db.exec(
                "UPDATE devices SET revoked = TRUE, gen = $3 WHERE user_id = $1 AND device = $2",
                &[&user, &device, &new_gen()],
            )?;
            db.exec(
                "DELETE FROM refresh_tokens WHERE user_id = $1 AND device = $2",
                &[&user, &device],
            )?;
            Ok(n > 0)
        })
    }

    fn devices(&self, user: &str) -> Result<Vec<(String, i64, bool)>, StoreError> {
        self.with(|db| {
            db.query(
                "SELECT device, created_at, revoked FROM devices WHERE user_id = $1
                 ORDER BY device",
                &[&user],
            )?
            .iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)))
            .collect()
        })
    }

    fn token_current(&self, user: &str, device: &str, gen: &str) -> Result<bool, StoreError> {
        let found = self.with(|db| {
            db.opt(
                "SELECT revoked, gen FROM devices WHERE user_id = $1 AND device = $2",
                &[&user, &device],
            )?
            .map(|r| Ok::<_, StoreError>((r.try_get::<_, bool>(0)?, r.try_get::<_, String>(1)?)))
            .transpose()
        })?;
        Ok(found.is_some_and(|(revoked, current)| !revoked && current == gen))
    }

    fn add_refresh_token(
        &self,
        hash: &str,
        user: &str,
        device: &str,
        expires_at: i64,
    ) -> Result<Option<String>, StoreError> {
        self.tx(|db| {
            // FOR SHARE: a revocation by another connection waits for this transaction, so
            // the token is stored under the generation the device still has.
            let Some(gen) = active_gen(db, user, device, true)? else {
                return Ok(None);
            };
            db.exec(
                "INSERT INTO refresh_tokens (hash, user_id, device, expires_at, gen)
                 VALUES ($1, $2, $3, $4, $5)",
                &[&hash, &user, &device, &expires_at, &gen],
            )?;
            Ok(Some(gen))
        })
    }

    fn take_refresh_token(
        &self,
        hash: &str,
        now: i64,
    ) -> Result<Option<(String, String)>, StoreError> {
        self.tx(|db| {
            // Read by the DELETE itself: of two connections presenting the same token at
            // once, only the one whose DELETE removed it gets it.
            let Some(r) = db.opt(
                "DELETE FROM refresh_tokens WHERE hash = $1
                 RETURNING user_id, device, expires_at, gen",
                &[&hash],
            )?
            else {
                return Ok(None);
            };
            let user: String = r.try_get(0)?;
            let device: String = r.try_get(1)?;
            let expires_at: i64 = r.try_get(2)?;
            let gen: String = r.try_get(3)?;
            let current = active_gen(db, &user, &device, false)?.is_some_and(|g| g == gen);
            Ok((current && expires_at > now).then_some((user, device)))
        })
    }
}

/// Gives every device of `user` a new generation and drops their refresh tokens: every token
/// the user holds stops working (a password change).
///
/// Each device gets its own generation, as SQLite's per-row `randomblob` gives them: the
/// devices are locked (in name order, so two such changes cannot deadlock) and updated one by
/// one (a user has a handful).
pub(super) fn renew_all_generations<C: GenericClient>(
    db: &mut Db<'_, C>,
    user: &str,
) -> Result<(), StoreError> {
    let devices = db.query(
        "SELECT device FROM devices WHERE user_id = $1 ORDER BY device FOR UPDATE",
        &[&user],
    )?;
    for r in &devices {
        let device: String = r.try_get(0)?;
        db.exec(
            "UPDATE devices SET gen = $3 WHERE user_id = $1 AND device = $2",
            &[&user, &device, &new_gen()],
        )?;
    }
    db.exec("DELETE FROM refresh_tokens WHERE user_id = $1", &[&user])?;
    Ok(())
}

/// The generation of a device that is known and not revoked; with `lock`, its row is locked
/// against updates (a revocation, a password change) until the transaction ends.
fn active_gen<C: GenericClient>(
    db: &mut Db<'_, C>,
    user: &str,
    device: &str,
    lock: bool,
) -> Result<Option<String>, StoreError> {
    let sql = if lock {
        "SELECT gen FROM devices WHERE user_id = $1 AND device = $2 AND NOT revoked FOR SHARE"
    } else {
        "SELECT gen FROM devices WHERE user_id = $1 AND device = $2 AND NOT revoked"
    };
    db.opt(sql, &[&user, &device])?
        .map(|r| Ok(r.try_get(0)?))
        .transpose()
}
