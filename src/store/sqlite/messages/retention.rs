//! Retention: removing entries past their age or beyond a conversation's newest.

use std::time::Duration;

use rusqlite::params;

use crate::store::clock::now_ms;
use crate::store::sqlite::Sqlite;
use crate::store::{Retention, StoreError};

impl Retention for Sqlite {
    fn enforce_retention(
        &self,
        max_age: Option<Duration>,
        max_per_conv: u64,
    ) -> Result<usize, StoreError> {
        self.retain_at(now_ms(), max_age, max_per_conv)
    }
}

impl Sqlite {
    /// [`Retention::enforce_retention`] as if the time were `now_ms`.
    pub(super) fn retain_at(
        &self,
        now_ms: i64,
        max_age: Option<Duration>,
        max_per_conv: u64,
    ) -> Result<usize, StoreError> {
        let conn = self.lock();
        let mut removed = 0;
        if let Some(age) = max_age {
            let cutoff = now_ms - age.as_millis() as i64;
            removed += conn.execute("DELETE FROM messages WHERE ts < ?1", params![cutoff])?;
        }
        if max_per_conv > 0 {
            removed += conn.execute(
                "DELETE FROM messages WHERE id IN (
                   SELECT m.id FROM messages m
                   JOIN (SELECT conv, MAX(seq) AS top FROM messages GROUP BY conv) t
                     ON t.conv = m.conv
                   WHERE m.seq <= t.top - ?1)",
                params![max_per_conv as i64],
            )?;
        }
        Ok(removed)
    }
}
