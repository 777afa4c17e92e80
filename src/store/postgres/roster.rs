//! The cluster's roster: live nodes and the devices connected to each.

use super::Postgres;
use crate::store::{Roster, StoreError};

impl Roster for Postgres {
    fn node_alive(&self, node: &str) -> Result<bool, StoreError> {
        self.with(|db| {
            let known = db.exec(
                "UPDATE cluster_nodes SET seen_at = now() WHERE node = $1",
                &[&node],
            )? > 0;
            if !known {
                db.exec(
                    "INSERT INTO cluster_nodes (node, seen_at) VALUES ($1, now())
                     ON CONFLICT (node) DO UPDATE SET seen_at = now()",
                    &[&node],
                )?;
            }
            Ok(known)
        })
    }

    fn expire_nodes(&self, timeout_secs: u64) -> Result<Vec<String>, StoreError> {
        let secs = timeout_secs as f64;
        self.with(|db| {
            db.query(
                "WITH dead AS (
                     DELETE FROM cluster_nodes
                     WHERE seen_at < now() - make_interval(secs => $1) RETURNING node)
                 DELETE FROM cluster_devices WHERE node IN (SELECT node FROM dead)
                 RETURNING user_id",
                &[&secs],
            )?
            .iter()
            .map(|r| Ok(r.try_get(0)?))
            .collect()
        })
    }

    fn reset_node(&self, node: &str) -> Result<Vec<String>, StoreError> {
        self.with(|db| {
            db.query(
                "DELETE FROM cluster_devices WHERE node = $1 RETURNING user_id",
                &[&node],
            )?
            .iter()
            .map(|r| Ok(r.try_get(0)?))
            .collect()
        })
    }

    fn device_connected(&self, node: &str, client: &str, user: &str) -> Result<u64, StoreError> {
        self.with(|db| {
            db.exec(
                "INSERT INTO cluster_devices (node, client, user_id) VALUES ($1, $2, $3)
                 ON CONFLICT (client) DO UPDATE SET node = excluded.node, user_id = excluded.user_id",
                &[&node, &client, &user],
            )?;
            count(db, user, "", "")
        })
    }

    fn restore_device(&self, node: &str, client: &str, user: &str) -> Result<(), StoreError> {
        self.with(|db| {
            db.exec(
                "INSERT INTO cluster_devices (node, client, user_id) VALUES ($1, $2, $3)
                 ON CONFLICT (client) DO NOTHING",
                &[&node, &client, &user],
            )
        })?;
        Ok(())
    }

    fn device_disconnected(&self, node: &str, client: &str, user: &str) -> Result<u64, StoreError> {
        self.with(|db| {
            db.exec(
                "DELETE FROM cluster_devices WHERE node = $1 AND client = $2",
                &[&node, &client],
            )?;
            count(db, user, "", "")
        })
    }

    fn taken_elsewhere(&self, node: &str, clients: &[String]) -> Result<Vec<String>, StoreError> {
        self.with(|db| {
            db.query(
                "SELECT client FROM cluster_devices WHERE client = ANY($1) AND node <> $2",
                &[&clients, &node],
            )?
            .iter()
            .map(|r| Ok(r.try_get(0)?))
            .collect()
        })
    }

    fn user_connections(
        &self,
        user: &str,
        except: &str,
        not_on: Option<&str>,
    ) -> Result<u64, StoreError> {
        self.with(|db| count(db, user, except, not_on.unwrap_or("")))
    }
}

/// The user's connections on every node but `not_on`, but client `except`'s ("" for none:
/// node ids and client ids are never empty).
fn count(
    db: &mut super::Db<'_, postgres::Client>,
    user: &str,
    except: &str,
    not_on: &str,
) -> Result<u64, StoreError> {
    let n: i64 = db
        .one(
            "SELECT count(*) FROM cluster_devices WHERE user_id = $1 AND client <> $2 AND node <> $3",
            &[&user, &except, &not_on],
        )?
        .try_get(0)?;
    Ok(n as u64)
}
