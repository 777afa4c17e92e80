//! Retention: removing entries past their age or beyond a conversation's newest.

use std::time::Duration;

use super::super::{big, Postgres};
use crate::store::clock::now_ms;
use crate::store::{Retention, StoreError};

impl Retention for Postgres {
    fn enforce_retention(
        &self,
        max_age: Option<Duration>,
        max_per_conv: u64,
    ) -> Result<usize, StoreError> {
        let max_per_conv = big(max_per_conv)?;
        self.with(|db| {
            let mut removed = 0;
            if let Some(age) = max_age {
                let cutoff = now_ms().saturating_sub(age.as_millis().min(i64::MAX as u128) as i64);
                removed += db.exec("DELETE FROM messages WHERE ts < $1", &[&cutoff])?;
            }
            if max_per_conv > 0 {
                // Against each conversation's last number handed out, which is what SQLite's
                // MAX(seq) is once its writer committed.
                removed += db.exec(
                    "DELETE FROM messages m USING conv_seq s
                     WHERE s.conv = m.conv AND m.seq <= s.last - $1",
                    &[&max_per_conv],
                )?;
            }
            Ok(removed as usize)
        })
    }
}
