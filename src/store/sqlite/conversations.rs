//! Conversations, their members and roles, and blocks between users.

use rusqlite::{params, Connection};

use super::Sqlite;
use crate::store::clock::now;
use crate::store::{Conversations, StoreError};

/// Every direct conversation of `user` that left a trace: a conversation row (the history
/// writer adds one with the first message) or a receipt. Direct conversations have no member
/// rows, so they are found by id: LIKE only narrows the search (`_` in a user id is a LIKE
/// wildcard, and LIKE ignores case); the exact test is [`crate::topics::direct_includes`].
pub(super) fn direct_conversations_of(
    tx: &Connection,
    user: &str,
) -> Result<Vec<String>, StoreError> {
    let mut stmt = tx.prepare(
        "SELECT id FROM conversations WHERE id LIKE 'd.' || ?1 || '.%' OR id LIKE 'd.%.' || ?1
         UNION SELECT conv FROM receipts WHERE conv LIKE 'd.' || ?1 || '.%' OR conv LIKE 'd.%.' || ?1",
    )?;
    let candidates = stmt.query_map(params![user], |r| r.get::<_, String>(0))?;
    let mut convs = Vec::new();
    for conv in candidates {
        let conv = conv?;
        if crate::topics::direct_includes(&conv, user) {
            convs.push(conv);
        }
    }
    Ok(convs)
}

impl Conversations for Sqlite {
    fn create_conversation(
        &self,
        id: &str,
        direct: bool,
        name: &str,
        created_by: &str,
        members: &[(&str, &str)],
    ) -> Result<(), StoreError> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        let inserted = tx.execute(
            "INSERT INTO conversations (id, kind, name, created_by, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (id) DO NOTHING",
            params![
                id,
                if direct { "direct" } else { "group" },
                name,
                created_by,
                now()
            ],
        )?;
        if inserted == 0 {
            return Err(StoreError::Exists(format!("conversation {id}")));
        }
        for (user, role) in members {
            tx.execute(
                "INSERT INTO members (conv, user, role, joined_at) VALUES (?1, ?2, ?3, ?4)",
                params![id, user, role, now()],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    fn set_member(&self, conv: &str, user: &str, role: &str) -> Result<(), StoreError> {
        let conn = self.lock();
        conn.execute(
            "INSERT INTO members (conv, user, role, joined_at) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (conv, user) DO UPDATE SET role = excluded.role",
            params![conv, user, role, now()],
        )?;
        Ok(())
    }

    fn transfer_ownership(&self, conv: &str, from: &str, to: &str) -> Result<(), StoreError> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        for (user, role) in [(to, "owner"), (from, "admin")] {
            tx.execute(
                "UPDATE members SET role = ?3 WHERE conv = ?1 AND user = ?2",
                params![conv, user, role],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    fn remove_member(&self, conv: &str, user: &str) -> Result<bool, StoreError> {
        let conn = self.lock();
        let n = conn.execute(
            "DELETE FROM members WHERE conv = ?1 AND user = ?2",
            params![conv, user],
        )?;
        Ok(n > 0)
    }

    fn update_conversation(&self, conv: &str, name: &str, topic: &str) -> Result<(), StoreError> {
        let conn = self.lock();
        conn.execute(
            "UPDATE conversations SET name = ?2, topic = ?3 WHERE id = ?1",
            params![conv, name, topic],
        )?;
        Ok(())
    }

    fn set_block(&self, user: &str, blocked: &str, on: bool) -> Result<(), StoreError> {
        let conn = self.lock();
        if on {
            conn.execute(
                "INSERT INTO blocks (user, blocked) VALUES (?1, ?2) ON CONFLICT DO NOTHING",
                params![user, blocked],
            )?;
        } else {
            conn.execute(
                "DELETE FROM blocks WHERE user = ?1 AND blocked = ?2",
                params![user, blocked],
            )?;
        }
        Ok(())
    }

    fn direct_conversations(&self, user: &str) -> Result<Vec<String>, StoreError> {
        let conn = self.lock();
        let mut stmt = conn.prepare_cached(
            "SELECT id FROM conversations WHERE kind = 'direct'
             AND (id LIKE 'd.' || ?1 || '.%' OR id LIKE 'd.%.' || ?1)",
        )?;
        let rows = stmt.query_map(params![user], |r| r.get::<_, String>(0))?;
        Ok(rows
            .collect::<Result<Vec<_>, _>>()?
            .into_iter()
            .filter(|c| crate::topics::direct_includes(c, user))
            .collect())
    }
}
