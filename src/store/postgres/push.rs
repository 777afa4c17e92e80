//! Push endpoints: the URLs a user's devices registered for notifications.

use super::Postgres;
use crate::store::clock::now;
use crate::store::{Push, StoreError};

impl Push for Postgres {
    fn add_push_endpoint(&self, user: &str, url: &str) -> Result<(), StoreError> {
        self.with(|db| {
            db.exec(
                "INSERT INTO push_endpoints (user_id, url, created_at) VALUES ($1, $2, $3)
                 ON CONFLICT DO NOTHING",
                &[&user, &url, &now()],
            )
        })?;
        Ok(())
    }

    fn remove_push_endpoint(&self, user: &str, url: &str) -> Result<bool, StoreError> {
        let n = self.with(|db| {
            db.exec(
                "DELETE FROM push_endpoints WHERE user_id = $1 AND url = $2",
                &[&user, &url],
            )
        })?;
        Ok(n > 0)
    }

    fn push_endpoints(&self, user: &str) -> Result<Vec<String>, StoreError> {
        self.with(|db| {
            db.query(
                "SELECT url FROM push_endpoints WHERE user_id = $1 ORDER BY url",
                &[&user],
            )?
            .iter()
            .map(|r| Ok(r.try_get(0)?))
            .collect()
        })
    }
}
