//! Conversations, their members and roles, and blocks between users.

use postgres::GenericClient;

use super::{Db, Postgres};
use crate::store::clock::now;
use crate::store::{Conversations, StoreError};

/// Every direct conversation of `user` that left a trace: a conversation row (the history
/// writer adds one with the first message) or a receipt. Direct conversations have no member
/// rows, so they are found by id: LIKE only narrows the search (`_` in a user id is a LIKE
/// wildcard; `ESCAPE ''` keeps a backslash in one from escaping, as in SQLite, where LIKE has
/// no escape character unless asked); the exact test is [`crate::topics::direct_includes`].
pub(super) fn direct_conversations_of<C: GenericClient>(
    db: &mut Db<'_, C>,
    user: &str,
) -> Result<Vec<String>, StoreError> {
    let candidates = db.query(
        "SELECT id FROM conversations
         WHERE id LIKE 'd.' || $1::TEXT || '.%' ESCAPE '' OR id LIKE 'd.%.' || $1::TEXT ESCAPE ''
         UNION
         SELECT conv FROM receipts
         WHERE conv LIKE 'd.' || $1::TEXT || '.%' ESCAPE '' OR conv LIKE 'd.%.' || $1::TEXT ESCAPE ''
         ORDER BY 1",
        &[&user],
    )?;
    let mut convs = Vec::new();
    for r in &candidates {
        let conv: String = r.try_get(0)?;
        if crate::topics::direct_includes(&conv, user) {
            convs.push(conv);
        }
    }
    Ok(convs)
}

impl Conversations for Postgres {
    fn create_conversation(
        &self,
        id: &str,
        direct: bool,
        name: &str,
        created_by: &str,
        members: &[(&str, &str)],
    ) -> Result<(), StoreError> {
        let kind = if direct { "direct" } else { "group" };
        self.tx(|db| {
            // ON CONFLICT rather than catching the unique violation: the transaction stays
            // usable, and nothing inserted bumps nothing.
            let inserted = db.exec(
                "INSERT INTO conversations (id, kind, name, created_by, created_at)
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (id) DO NOTHING",
                &[&id, &kind, &name, &created_by, &now()],
            )?;
            if inserted == 0 {
                return Err(StoreError::Exists(format!("conversation {id}")));
            }
            for (user, role) in members {
                db.exec(
                    "INSERT INTO members (conv, user_id, role, joined_at) VALUES ($1, $2, $3, $4)",
                    &[&id, user, role, &now()],
                )?;
            }
            Ok(())
        })
    }

    fn set_member(&self, conv: &str, user: &str, role: &str) -> Result<(), StoreError> {
        self.with(|db| {
            db.exec(
                "INSERT INTO members (conv, user_id, role, joined_at) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (conv, user_id) DO UPDATE SET role = excluded.role",
                &[&conv, &user, &role, &now()],
            )
        })?;
        Ok(())
    }

    fn transfer_ownership(&self, conv: &str, from: &str, to: &str) -> Result<(), StoreError> {
        self.tx(|db| {
            for (user, role) in [(to, "owner"), (from, "admin")] {
                db.exec(
                    "UPDATE members SET role = $3 WHERE conv = $1 AND user_id = $2",
                    &[&conv, &user, &role],
                )?;
            }
            Ok(())
        })
    }

    fn remove_member(&self, conv: &str, user: &str) -> Result<bool, StoreError> {
        let n = self.with(|db| {
            db.exec(
                "DELETE FROM members WHERE conv = $1 AND user_id = $2",
                &[&conv, &user],
            )
        })?;
        Ok(n > 0)
    }

    fn update_conversation(&self, conv: &str, name: &str, topic: &str) -> Result<(), StoreError> {
        self.with(|db| {
            db.exec(
                "UPDATE conversations SET name = $2, topic = $3 WHERE id = $1",
                &[&conv, &name, &topic],
            )
        })?;
        Ok(())
    }

    fn set_block(&self, user: &str, blocked: &str, on: bool) -> Result<(), StoreError> {
        self.with(|db| {
            if on {
                db.exec(
                    "INSERT INTO blocks (user_id, blocked) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                    &[&user, &blocked],
                )
            } else {
                db.exec(
                    "DELETE FROM blocks WHERE user_id = $1 AND blocked = $2",
                    &[&user, &blocked],
                )
            }
        })?;
        Ok(())
    }

    fn direct_conversations(&self, user: &str) -> Result<Vec<String>, StoreError> {
        let rows = self.with(|db| {
            db.query(
                "SELECT id FROM conversations WHERE kind = 'direct'
                 AND (id LIKE 'd.' || $1::TEXT || '.%' ESCAPE ''
                      OR id LIKE 'd.%.' || $1::TEXT ESCAPE '')
                 ORDER BY id",
                &[&user],
            )
        })?;
        let mut convs = Vec::new();
        for r in &rows {
            let conv: String = r.try_get(0)?;
            if crate::topics::direct_includes(&conv, user) {
                convs.push(conv);
            }
        }
        Ok(convs)
    }
}
