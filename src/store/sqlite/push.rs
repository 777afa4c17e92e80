//! Push endpoints: the URLs a user's devices registered for notifications.

use rusqlite::params;

use super::Sqlite;
use crate::store::clock::now;
use crate::store::{Push, StoreError};

impl Push for Sqlite {
    fn add_push_endpoint(&self, user: &str, url: &str) -> Result<(), StoreError> {
        self.lock().execute(
            "INSERT INTO push_endpoints (user, url, created_at) VALUES (?1, ?2, ?3)
             ON CONFLICT DO NOTHING",
            params![user, url, now()],
        )?;
        Ok(())
    }

    fn remove_push_endpoint(&self, user: &str, url: &str) -> Result<bool, StoreError> {
        Ok(self.lock().execute(
            "DELETE FROM push_endpoints WHERE user = ?1 AND url = ?2",
            params![user, url],
        )? > 0)
    }

    fn push_endpoints(&self, user: &str) -> Result<Vec<String>, StoreError> {
        let conn = self.lock();
        let mut stmt = conn.prepare_cached("SELECT url FROM push_endpoints WHERE user = ?1")?;
        let rows = stmt.query_map(params![user], |r| r.get(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}
