//! The cluster's roster: live nodes and the devices connected to each (a single node's is
//! itself and its own devices).

use rusqlite::{params, Connection};

use super::Sqlite;
use crate::store::clock::now_ms;
use crate::store::{Roster, StoreError};

impl Roster for Sqlite {
    fn node_alive(&self, node: &str) -> Result<bool, StoreError> {
        let conn = self.lock();
        let known = conn.execute(
            "UPDATE cluster_nodes SET seen_at_ms = ?2 WHERE node = ?1",
            params![node, now_ms()],
        )? > 0;
        if !known {
            conn.execute(
                "INSERT INTO cluster_nodes (node, seen_at_ms) VALUES (?1, ?2)",
                params![node, now_ms()],
            )?;
        }
        Ok(known)
    }

    fn expire_nodes(&self, timeout_secs: u64) -> Result<Vec<String>, StoreError> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        let before = now_ms() - 1000 * timeout_secs as i64;
        let users = {
            let mut stmt = tx.prepare(
                "DELETE FROM cluster_devices WHERE node IN
                     (SELECT node FROM cluster_nodes WHERE seen_at_ms < ?1)
                 RETURNING user",
            )?;
            let rows = stmt.query_map(params![before], |r| r.get(0))?;
            rows.collect::<Result<Vec<String>, _>>()?
        };
        tx.execute(
            "DELETE FROM cluster_nodes WHERE seen_at_ms < ?1",
            params![before],
        )?;
        tx.commit()?;
        Ok(users)
    }

    fn reset_node(&self, node: &str) -> Result<Vec<String>, StoreError> {
        let conn = self.lock();
        let mut stmt =
            conn.prepare("DELETE FROM cluster_devices WHERE node = ?1 RETURNING user")?;
        let rows = stmt.query_map(params![node], |r| r.get(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn device_connected(&self, node: &str, client: &str, user: &str) -> Result<u64, StoreError> {
        let conn = self.lock();
        conn.execute(
            "INSERT INTO cluster_devices (node, client, user) VALUES (?1, ?2, ?3)
             ON CONFLICT (client) DO UPDATE SET node = excluded.node, user = excluded.user",
            params![node, client, user],
        )?;
        count(&conn, user, "", "")
    }

    fn restore_device(&self, node: &str, client: &str, user: &str) -> Result<(), StoreError> {
        self.lock().execute(
            "INSERT INTO cluster_devices (node, client, user) VALUES (?1, ?2, ?3)
             ON CONFLICT (client) DO NOTHING",
            params![node, client, user],
        )?;
        Ok(())
    }

    fn device_disconnected(&self, node: &str, client: &str, user: &str) -> Result<u64, StoreError> {
        let conn = self.lock();
        conn.execute(
            "DELETE FROM cluster_devices WHERE node = ?1 AND client = ?2",
            params![node, client],
        )?;
        count(&conn, user, "", "")
    }

    fn taken_elsewhere(&self, node: &str, clients: &[String]) -> Result<Vec<String>, StoreError> {
        let conn = self.lock();
        let mut stmt = conn.prepare_cached(
            "SELECT client FROM cluster_devices WHERE client = ?1 AND node <> ?2",
        )?;
        let mut taken = Vec::new();
        for client in clients {
            if stmt.exists(params![client, node])? {
                taken.push(client.clone());
            }
        }
        Ok(taken)
    }

    fn user_connections(
        &self,
        user: &str,
        except: &str,
        not_on: Option<&str>,
    ) -> Result<u64, StoreError> {
        count(&self.lock(), user, except, not_on.unwrap_or(""))
    }
}

/// The user's connections on every node but `not_on`, but client `except`'s ("" for none:
/// node ids and client ids are never empty).
fn count(conn: &Connection, user: &str, except: &str, not_on: &str) -> Result<u64, StoreError> {
    let n: i64 = conn.query_row(
        "SELECT count(*) FROM cluster_devices WHERE user = ?1 AND client <> ?2 AND node <> ?3",
        params![user, except, not_on],
        |r| r.get(0),
    )?;
    Ok(n as u64)
}
