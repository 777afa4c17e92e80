//! A cluster's retained messages (a single node keeps its own in memory; this is the one
//! interface's).

use rusqlite::params;

use super::Sqlite;
use crate::store::clock::now_ms;
use crate::store::{Retained, RetainedRecord, StoreError};

impl Retained for Sqlite {
    fn set_retained(
        &self,
        topic: &str,
        message: Option<&[u8]>,
        expires_at_ms: Option<i64>,
    ) -> Result<(), StoreError> {
        let conn = self.lock();
        match message {
            Some(m) => conn.execute(
                "INSERT INTO retained (topic, message, expires_at_ms) VALUES (?1, ?2, ?3)
                 ON CONFLICT (topic) DO UPDATE
                 SET message = excluded.message, expires_at_ms = excluded.expires_at_ms",
                params![topic, m, expires_at_ms],
            )?,
            None => conn.execute("DELETE FROM retained WHERE topic = ?1", params![topic])?,
        };
        Ok(())
    }

    fn retained(&self) -> Result<Vec<RetainedRecord>, StoreError> {
        let conn = self.lock();
        conn.execute(
            "DELETE FROM retained WHERE expires_at_ms <= ?1",
            params![now_ms()],
        )?;
        let mut stmt = conn.prepare("SELECT message, expires_at_ms FROM retained")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}
