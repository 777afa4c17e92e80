//! A cluster's retained messages.

use super::Postgres;
use crate::store::clock::now_ms;
use crate::store::{Retained, RetainedRecord, StoreError};

impl Retained for Postgres {
    fn set_retained(
        &self,
        topic: &str,
        message: Option<&[u8]>,
        expires_at_ms: Option<i64>,
    ) -> Result<(), StoreError> {
        self.with(|db| match message {
            Some(m) => db.exec(
                "INSERT INTO retained (topic, message, expires_at_ms) VALUES ($1, $2, $3)
                 ON CONFLICT (topic) DO UPDATE
                 SET message = excluded.message, expires_at_ms = excluded.expires_at_ms",
                &[&topic, &m, &expires_at_ms],
            ),
            None => db.exec("DELETE FROM retained WHERE topic = $1", &[&topic]),
        })?;
        Ok(())
    }

    fn retained(&self) -> Result<Vec<RetainedRecord>, StoreError> {
        self.with(|db| {
            db.exec(
                "DELETE FROM retained WHERE expires_at_ms <= $1",
                &[&now_ms()],
            )?;
            db.query("SELECT message, expires_at_ms FROM retained", &[])?
                .iter()
                .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
                .collect()
        })
    }
}
