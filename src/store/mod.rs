//! All SQLite access: accounts, conversations, members, blocks, and (in [`messages`]) history.
//!
//! One file, `{data_dir}/natter.db`, in WAL mode, so the server and the `natter user …` /
//! `natter conv …` commands can use it at the same time (the server notices other processes'
//! changes through [`Store::directory_version`]). The schema is versioned
//! with `PRAGMA user_version`; `MIGRATIONS` lists every step in order.
//!
//! Calls block: async callers run them with `spawn_blocking`.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{params, Connection, OptionalExtension};

pub mod messages;

/// Schema steps; entry `i` takes the database from version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[
    "
    CREATE TABLE users (
        id TEXT PRIMARY KEY,
        password TEXT NOT NULL,
        admin INTEGER NOT NULL DEFAULT 0,
        created_at INTEGER NOT NULL
    );
    CREATE TABLE conversations (
        id TEXT PRIMARY KEY,
        kind TEXT NOT NULL CHECK (kind IN ('direct', 'group')),
        name TEXT NOT NULL DEFAULT '',
        topic TEXT NOT NULL DEFAULT '',
        created_by TEXT,
        created_at INTEGER NOT NULL
    );
    CREATE TABLE members (
        conv TEXT NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
        user TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        role TEXT NOT NULL CHECK (role IN ('owner', 'admin', 'member')),
        joined_at INTEGER NOT NULL,
        PRIMARY KEY (conv, user)
    );
    CREATE INDEX members_by_user ON members(user);
    CREATE TABLE blocks (
        user TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        blocked TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        PRIMARY KEY (user, blocked)
    );
",
    "
    CREATE TABLE messages (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        conv TEXT NOT NULL,
        seq INTEGER NOT NULL,
        sender TEXT NOT NULL,
        device TEXT NOT NULL,
        ts INTEGER NOT NULL,
        cid TEXT,
        pkid INTEGER,
        kind TEXT NOT NULL CHECK (kind IN ('msg', 'edit', 'delete', 'react', 'unreact')),
        body TEXT,
        reply_to INTEGER,
        thread INTEGER,
        target INTEGER,
        emoji TEXT,
        edited INTEGER NOT NULL DEFAULT 0,
        deleted INTEGER NOT NULL DEFAULT 0,
        UNIQUE (conv, seq)
    );
    CREATE UNIQUE INDEX messages_by_cid ON messages(sender, cid) WHERE cid IS NOT NULL;
    CREATE INDEX messages_by_device ON messages(device, pkid);
    CREATE INDEX messages_by_target ON messages(conv, target) WHERE target IS NOT NULL;
    CREATE VIRTUAL TABLE messages_fts USING fts5(
        body, content = 'messages', content_rowid = 'id',
        tokenize = 'unicode61 remove_diacritics 2'
    );
    CREATE TRIGGER messages_fts_insert AFTER INSERT ON messages
    WHEN new.kind = 'msg' AND new.body IS NOT NULL BEGIN
        INSERT INTO messages_fts (rowid, body) VALUES (new.id, new.body);
    END;
    CREATE TRIGGER messages_fts_delete AFTER DELETE ON messages
    WHEN old.kind = 'msg' AND old.body IS NOT NULL BEGIN
        INSERT INTO messages_fts (messages_fts, rowid, body) VALUES ('delete', old.id, old.body);
    END;
    CREATE TRIGGER messages_fts_update AFTER UPDATE OF body ON messages
    WHEN old.kind = 'msg' BEGIN
        INSERT INTO messages_fts (messages_fts, rowid, body)
            SELECT 'delete', old.id, old.body WHERE old.body IS NOT NULL;
        INSERT INTO messages_fts (rowid, body) SELECT new.id, new.body WHERE new.body IS NOT NULL;
    END;
",
    "
    CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
    INSERT INTO meta (key, value) VALUES ('directory_version', 0);
    CREATE TRIGGER users_insert_bumps AFTER INSERT ON users BEGIN
        UPDATE meta SET value = value + 1 WHERE key = 'directory_version';
    END;
    CREATE TRIGGER users_update_bumps AFTER UPDATE ON users BEGIN
        UPDATE meta SET value = value + 1 WHERE key = 'directory_version';
    END;
    CREATE TRIGGER users_delete_bumps AFTER DELETE ON users BEGIN
        UPDATE meta SET value = value + 1 WHERE key = 'directory_version';
    END;
    CREATE TRIGGER members_insert_bumps AFTER INSERT ON members BEGIN
        UPDATE meta SET value = value + 1 WHERE key = 'directory_version';
    END;
    CREATE TRIGGER members_update_bumps AFTER UPDATE ON members BEGIN
        UPDATE meta SET value = value + 1 WHERE key = 'directory_version';
    END;
    CREATE TRIGGER members_delete_bumps AFTER DELETE ON members BEGIN
        UPDATE meta SET value = value + 1 WHERE key = 'directory_version';
    END;
    CREATE TRIGGER blocks_insert_bumps AFTER INSERT ON blocks BEGIN
        UPDATE meta SET value = value + 1 WHERE key = 'directory_version';
    END;
    CREATE TRIGGER blocks_delete_bumps AFTER DELETE ON blocks BEGIN
        UPDATE meta SET value = value + 1 WHERE key = 'directory_version';
    END;
    CREATE TRIGGER conversations_insert_bumps AFTER INSERT ON conversations BEGIN
        UPDATE meta SET value = value + 1 WHERE key = 'directory_version';
    END;
    CREATE TRIGGER conversations_update_bumps AFTER UPDATE ON conversations BEGIN
        UPDATE meta SET value = value + 1 WHERE key = 'directory_version';
    END;
    CREATE TRIGGER conversations_delete_bumps AFTER DELETE ON conversations BEGIN
        UPDATE meta SET value = value + 1 WHERE key = 'directory_version';
    END;
",
    "
    CREATE TABLE receipts (
        conv TEXT NOT NULL,
        user TEXT NOT NULL,
        delivered INTEGER NOT NULL DEFAULT 0,
        read INTEGER NOT NULL DEFAULT 0,
        read_private INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (conv, user)
    );
",
    "
    CREATE TABLE push_endpoints (
        user TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        url TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        PRIMARY KEY (user, url)
    );
",
    "
    CREATE VIRTUAL TABLE messages_tri USING fts5(
        body, content = 'messages', content_rowid = 'id', tokenize = 'trigram'
    );
    INSERT INTO messages_tri (messages_tri) VALUES ('rebuild');
    CREATE TRIGGER messages_tri_insert AFTER INSERT ON messages
    WHEN new.kind = 'msg' AND new.body IS NOT NULL BEGIN
        INSERT INTO messages_tri (rowid, body) VALUES (new.id, new.body);
    END;
    CREATE TRIGGER messages_tri_delete AFTER DELETE ON messages
    WHEN old.kind = 'msg' AND old.body IS NOT NULL BEGIN
        INSERT INTO messages_tri (messages_tri, rowid, body) VALUES ('delete', old.id, old.body);
    END;
    CREATE TRIGGER messages_tri_update AFTER UPDATE OF body ON messages
    WHEN old.kind = 'msg' BEGIN
        INSERT INTO messages_tri (messages_tri, rowid, body)
            SELECT 'delete', old.id, old.body WHERE old.body IS NOT NULL;
        INSERT INTO messages_tri (rowid, body) SELECT new.id, new.body WHERE new.body IS NOT NULL;
    END;
",
    "
    CREATE TABLE devices (
        user TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        device TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        revoked INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (user, device)
    );
    CREATE TABLE refresh_tokens (
        hash TEXT PRIMARY KEY,
        user TEXT NOT NULL,
        device TEXT NOT NULL,
        expires_at INTEGER NOT NULL,
        FOREIGN KEY (user, device) REFERENCES devices (user, device) ON DELETE CASCADE
    );
",
    "
    CREATE TABLE media (
        id TEXT PRIMARY KEY,
        hash TEXT NOT NULL,
        owner TEXT NOT NULL,
        size INTEGER NOT NULL,
        mime TEXT NOT NULL,
        created_at INTEGER NOT NULL
    );
    CREATE INDEX media_by_owner ON media(owner);
    CREATE INDEX media_by_hash ON media(hash);
    CREATE TABLE media_refs (
        media TEXT NOT NULL REFERENCES media(id) ON DELETE CASCADE,
        message INTEGER NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
        conv TEXT NOT NULL,
        PRIMARY KEY (media, message)
    );
    CREATE INDEX media_refs_by_message ON media_refs(message);
    ALTER TABLE messages ADD COLUMN media TEXT;
",
    // The last sequence number handed out per conversation, kept apart from the messages so
    // that retention deleting every entry of a conversation cannot make `seq` start again at 1.
    // Not a column of `conversations`: its update triggers bump the directory version, which
    // must not happen on every message.
    "
    CREATE TABLE conv_seq (conv TEXT PRIMARY KEY, last INTEGER NOT NULL);
    INSERT INTO conv_seq (conv, last) SELECT conv, MAX(seq) FROM messages GROUP BY conv;
",
    // Two changes that made the history writer several times faster:
    // - New entries enter the full-text indexes once per committed batch, from the writer
    //   (`messages::index_new`), not from insert triggers: FTS5 flushes its pending terms at
    //   every statement savepoint, so a trigger wrote one index segment (and merge work) per
    //   message. Edits, deletes and retention still go through the triggers.
    // - The trigram index serves only queries in scripts written without spaces (see
    //   `messages::is_cjk`), and such a query can only match text that contains one of their
    //   characters: it indexes just that text (a 200-character message is ~200 trigrams). The
    //   writer sets `cjk` from the text; the GLOB class (SQLite compares its ranges by code
    //   point) lists the ranges of `is_cjk` once, for the entries stored before.
    // - The word index merges 8 segments at a time instead of 4: half the merge work per
    //   stored message (measured: 8 % more messages per second), at the price of searches
    //   reading up to twice as many segments.
    "
    DROP TRIGGER messages_fts_insert;
    INSERT INTO messages_fts (messages_fts, rank) VALUES ('automerge', 8);
    ALTER TABLE messages ADD COLUMN cjk INTEGER NOT NULL DEFAULT 0;
    UPDATE messages SET cjk = 1 WHERE body GLOB '*[\u{3040}-\u{30FF}\u{3400}-\u{4DBF}\u{4E00}-\u{9FFF}\u{AC00}-\u{D7AF}\u{F900}-\u{FAFF}]*';
    DROP TRIGGER messages_tri_insert;
    DROP TRIGGER messages_tri_delete;
    DROP TRIGGER messages_tri_update;
    INSERT INTO messages_tri (messages_tri) VALUES ('delete-all');
    INSERT INTO messages_tri (rowid, body) SELECT id, body FROM messages
        WHERE kind = 'msg' AND cjk AND body IS NOT NULL;
    CREATE TRIGGER messages_tri_delete AFTER DELETE ON messages
    WHEN old.kind = 'msg' AND old.cjk AND old.body IS NOT NULL BEGIN
        INSERT INTO messages_tri (messages_tri, rowid, body) VALUES ('delete', old.id, old.body);
    END;
    CREATE TRIGGER messages_tri_update AFTER UPDATE OF body ON messages
    WHEN old.kind = 'msg' BEGIN
        INSERT INTO messages_tri (messages_tri, rowid, body)
            SELECT 'delete', old.id, old.body WHERE old.cjk AND old.body IS NOT NULL;
        INSERT INTO messages_tri (rowid, body)
            SELECT new.id, new.body WHERE new.cjk AND new.body IS NOT NULL;
    END;
",
    // A client message id names a message per sender *and conversation*: one numbering its
    // messages per conversation (c-1, c-2… in each) had its second conversation's c-1
    // acknowledged as a resend of the first's, and lost.
    "
    DROP INDEX messages_by_cid;
    CREATE UNIQUE INDEX messages_by_cid ON messages(sender, conv, cid) WHERE cid IS NOT NULL;
",
];

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create {path}: {source}")]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("{0} already exists")]
    Exists(String),
    #[error("commit failed: {0}")]
    Commit(String),
    #[error("the database is at schema version {found}, newer than this natter ({known})")]
    TooNew { found: i64, known: usize },
}

/// A user as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRow {
    pub id: String,
    pub admin: bool,
    pub created_at: i64,
}

/// A conversation as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConversationRow {
    pub id: String,
    pub name: String,
    pub topic: String,
}

/// An uploaded file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaRow {
    pub id: String,
    pub hash: String,
    pub owner: String,
    pub size: u64,
    pub mime: String,
}

/// Everything the authorization rules need, read in one transaction.
#[derive(Debug, Default, Clone)]
pub struct Snapshot {
    pub users: Vec<UserRow>,
    pub conversations: Vec<ConversationRow>,
    /// (conversation, user, role)
    pub members: Vec<(String, String, String)>,
    /// (user, blocked user)
    pub blocks: Vec<(String, String)>,
}

pub struct Store {
    conn: Mutex<Connection>,
}

/// Every direct conversation of `user` that left a trace: a conversation row (the history
/// writer adds one with the first message) or a receipt. Direct conversations have no member
/// rows, so they are found by id: LIKE only narrows the search (`_` in a user id is a LIKE
/// wildcard, and LIKE ignores case); the exact test is [`crate::topics::direct_includes`].
fn direct_conversations_of(tx: &Connection, user: &str) -> Result<Vec<String>, StoreError> {
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

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

impl Store {
    /// Opens (creating if needed) the database in `data_dir` and brings its schema up to date.
    pub fn open(data_dir: &Path) -> Result<Store, StoreError> {
        std::fs::create_dir_all(data_dir).map_err(|source| StoreError::Dir {
            path: data_dir.to_path_buf(),
            source,
        })?;
        let conn = Connection::open(data_dir.join("natter.db"))?;
        conn.busy_timeout(Duration::from_secs(5))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        let store = Store {
            conn: Mutex::new(conn),
        };
        store.migrate()?;
        Ok(store)
    }

    fn lock(&self) -> MutexGuard<'_, Connection> {
        // rusqlite leaves the connection usable after a panic elsewhere; keep going.
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn migrate(&self) -> Result<(), StoreError> {
        let mut conn = self.lock();
        let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        if version as usize > MIGRATIONS.len() {
            return Err(StoreError::TooNew {
                found: version,
                known: MIGRATIONS.len(),
            });
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            let tx = conn.transaction()?;
            tx.execute_batch(sql)?;
            tx.pragma_update(None, "user_version", (i + 1) as i64)?;
            tx.commit()?;
        }
        Ok(())
    }

    /// Increases with every change to accounts, conversations, members or blocks, by any
    /// process (triggers keep it): the server polls it to pick up `natter user …` changes
    /// without reloading on every stored message.
    pub fn directory_version(&self) -> Result<i64, StoreError> {
        Ok(self.lock().query_row(
            "SELECT value FROM meta WHERE key = 'directory_version'",
            [],
            |r| r.get(0),
        )?)
    }

    pub fn add_user(&self, id: &str, password_hash: &str) -> Result<(), StoreError> {
        let conn = self.lock();
        let inserted = conn.execute(
            "INSERT INTO users (id, password, created_at) VALUES (?1, ?2, ?3)
             ON CONFLICT (id) DO NOTHING",
            params![id, password_hash, now()],
        )?;
        if inserted == 0 {
            return Err(StoreError::Exists(format!("user {id}")));
        }
        Ok(())
    }

    /// Removes a user with their memberships and blocks; returns whether they existed.
    ///
    /// Their direct conversations go too, with every message, receipt and media reference in
    /// them, so that an account created later under the same id inherits nothing. Groups stay
    /// for the other members.
    pub fn remove_user(&self, id: &str) -> Result<bool, StoreError> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        for conv in direct_conversations_of(&tx, id)? {
            // media_refs go with their messages (ON DELETE CASCADE).
            tx.execute("DELETE FROM messages WHERE conv = ?1", params![conv])?;
            tx.execute("DELETE FROM receipts WHERE conv = ?1", params![conv])?;
            tx.execute("DELETE FROM conversations WHERE id = ?1", params![conv])?;
            // Its `conv_seq` row stays: the other user's devices sync after the sequence
            // numbers they saw, so a new conversation under this id must continue past them.
        }
        tx.execute("DELETE FROM receipts WHERE user = ?1", params![id])?;
        // Their group messages stay, but a later account with this id must not match them as
        // its own resends (idempotency by cid or packet id) or own their uploads; '' is never
        // a user id.
        tx.execute(
            "UPDATE messages SET cid = NULL, pkid = NULL WHERE sender = ?1",
            params![id],
        )?;
        tx.execute("UPDATE media SET owner = '' WHERE owner = ?1", params![id])?;
        let removed = tx.execute("DELETE FROM users WHERE id = ?1", params![id])?;
        tx.commit()?;
        Ok(removed > 0)
    }

    pub fn list_users(&self) -> Result<Vec<UserRow>, StoreError> {
        let conn = self.lock();
        let mut stmt = conn.prepare("SELECT id, admin, created_at FROM users ORDER BY id")?;
        let rows = stmt.query_map([], |r| {
            Ok(UserRow {
                id: r.get(0)?,
                admin: r.get(1)?,
                created_at: r.get(2)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn set_password(&self, id: &str, password_hash: &str) -> Result<bool, StoreError> {
        let conn = self.lock();
        let n = conn.execute(
            "UPDATE users SET password = ?2 WHERE id = ?1",
            params![id, password_hash],
        )?;
        Ok(n > 0)
    }

    pub fn set_admin(&self, id: &str, admin: bool) -> Result<bool, StoreError> {
        let conn = self.lock();
        let n = conn.execute(
            "UPDATE users SET admin = ?2 WHERE id = ?1",
            params![id, admin],
        )?;
        Ok(n > 0)
    }

    /// A user's password hash and admin flag.
    pub fn login_info(&self, id: &str) -> Result<Option<(String, bool)>, StoreError> {
        let conn = self.lock();
        Ok(conn
            .query_row(
                "SELECT password, admin FROM users WHERE id = ?1",
                params![id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?)
    }

    /// Creates a conversation with its first members.
    pub fn create_conversation(
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

    /// Adds a member or changes their role.
    pub fn set_member(&self, conv: &str, user: &str, role: &str) -> Result<(), StoreError> {
        let conn = self.lock();
        conn.execute(
            "INSERT INTO members (conv, user, role, joined_at) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (conv, user) DO UPDATE SET role = excluded.role",
            params![conv, user, role, now()],
        )?;
        Ok(())
    }

    pub fn remove_member(&self, conv: &str, user: &str) -> Result<bool, StoreError> {
        let conn = self.lock();
        let n = conn.execute(
            "DELETE FROM members WHERE conv = ?1 AND user = ?2",
            params![conv, user],
        )?;
        Ok(n > 0)
    }

    pub fn update_conversation(
        &self,
        conv: &str,
        name: &str,
        topic: &str,
    ) -> Result<(), StoreError> {
        let conn = self.lock();
        conn.execute(
            "UPDATE conversations SET name = ?2, topic = ?3 WHERE id = ?1",
            params![conv, name, topic],
        )?;
        Ok(())
    }

    pub fn set_block(&self, user: &str, blocked: &str, on: bool) -> Result<(), StoreError> {
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

    /// Registers a device for a user (a login); a revoked device logging in again is restored.
    pub fn upsert_device(&self, user: &str, device: &str) -> Result<(), StoreError> {
        self.lock().execute(
            "INSERT INTO devices (user, device, created_at) VALUES (?1, ?2, ?3)
             ON CONFLICT (user, device) DO UPDATE SET revoked = 0",
            params![user, device, now()],
        )?;
        Ok(())
    }

    /// Revokes a device and its refresh tokens; whether it existed.
    pub fn revoke_device(&self, user: &str, device: &str) -> Result<bool, StoreError> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        let n = tx.execute(
            "UPDATE devices SET revoked = 1 WHERE user = ?1 AND device = ?2",
            params![user, device],
        )?;
        tx.execute(
            "DELETE FROM refresh_tokens WHERE user = ?1 AND device = ?2",
            params![user, device],
        )?;
        tx.commit()?;
        Ok(n > 0)
    }

    /// A user's devices: (device, created_at, revoked).
    pub fn devices(&self, user: &str) -> Result<Vec<(String, i64, bool)>, StoreError> {
        let conn = self.lock();
        let mut stmt = conn.prepare_cached(
            "SELECT device, created_at, revoked FROM devices WHERE user = ?1 ORDER BY device",
        )?;
        let rows = stmt.query_map(params![user], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Whether a device may use its tokens (known and not revoked).
    pub fn device_active(&self, user: &str, device: &str) -> Result<bool, StoreError> {
        Ok(self
            .lock()
            .query_row(
                "SELECT revoked FROM devices WHERE user = ?1 AND device = ?2",
                params![user, device],
                |r| r.get::<_, bool>(0),
            )
            .optional()?
            .is_some_and(|revoked| !revoked))
    }

    pub fn add_refresh_token(
        &self,
        hash: &str,
        user: &str,
        device: &str,
        expires_at: i64,
    ) -> Result<(), StoreError> {
        self.lock().execute(
            "INSERT INTO refresh_tokens (hash, user, device, expires_at) VALUES (?1, ?2, ?3, ?4)",
            params![hash, user, device, expires_at],
        )?;
        Ok(())
    }

    /// Removes a refresh token and returns its (user, device) if it was valid at `now`: each
    /// token is used once (rotation).
    pub fn take_refresh_token(
        &self,
        hash: &str,
        now: i64,
    ) -> Result<Option<(String, String)>, StoreError> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        let found: Option<(String, String, i64)> = tx
            .query_row(
                "SELECT user, device, expires_at FROM refresh_tokens WHERE hash = ?1",
                params![hash],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?;
        tx.execute("DELETE FROM refresh_tokens WHERE hash = ?1", params![hash])?;
        tx.commit()?;
        Ok(found
            .filter(|(_, _, exp)| *exp > now)
            .map(|(u, d, _)| (u, d)))
    }

    /// Records an upload; fails with `Exists` never (ids are random).
    pub fn add_media(&self, m: &MediaRow) -> Result<(), StoreError> {
        self.lock().execute(
            "INSERT INTO media (id, hash, owner, size, mime, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![m.id, m.hash, m.owner, m.size, m.mime, now()],
        )?;
        Ok(())
    }

    /// Whether any upload's row names the blob `hash`.
    pub fn media_hash_in_use(&self, hash: &str) -> Result<bool, StoreError> {
        Ok(self.lock().query_row(
            "SELECT EXISTS (SELECT 1 FROM media WHERE hash = ?1)",
            params![hash],
            |r| r.get(0),
        )?)
    }

    pub fn media(&self, id: &str) -> Result<Option<MediaRow>, StoreError> {
        Ok(self
            .lock()
            .query_row(
                "SELECT id, hash, owner, size, mime FROM media WHERE id = ?1",
                params![id],
                |r| {
                    Ok(MediaRow {
                        id: r.get(0)?,
                        hash: r.get(1)?,
                        owner: r.get(2)?,
                        size: r.get(3)?,
                        mime: r.get(4)?,
                    })
                },
            )
            .optional()?)
    }

    /// Bytes a user has uploaded (for the quota).
    pub fn media_usage(&self, owner: &str) -> Result<u64, StoreError> {
        Ok(self.lock().query_row(
            "SELECT COALESCE(SUM(size), 0) FROM media WHERE owner = ?1",
            params![owner],
            |r| r.get(0),
        )?)
    }

    /// The conversations whose messages reference a media id.
    pub fn media_conversations(&self, id: &str) -> Result<Vec<String>, StoreError> {
        let conn = self.lock();
        let mut stmt =
            conn.prepare_cached("SELECT DISTINCT conv FROM media_refs WHERE media = ?1")?;
        let rows = stmt.query_map(params![id], |r| r.get(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Deletes uploads no message references (any more) and older than `min_age_secs`; returns
    /// the hashes no upload uses any more (their files can go).
    pub fn release_unreferenced_media(&self, min_age_secs: i64) -> Result<Vec<String>, StoreError> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        let cutoff = now() - min_age_secs;
        let hashes: Vec<String> = {
            let mut stmt = tx.prepare(
                "SELECT DISTINCT hash FROM media WHERE created_at < ?1
                 AND id NOT IN (SELECT media FROM media_refs)",
            )?;
            let rows = stmt.query_map(params![cutoff], |r| r.get(0))?;
            rows.collect::<Result<_, _>>()?
        };
        tx.execute(
            "DELETE FROM media WHERE created_at < ?1 AND id NOT IN (SELECT media FROM media_refs)",
            params![cutoff],
        )?;
        let mut orphaned = Vec::new();
        for hash in hashes {
            let still: i64 = tx.query_row(
                "SELECT COUNT(*) FROM media WHERE hash = ?1",
                params![hash],
                |r| r.get(0),
            )?;
            if still == 0 {
                orphaned.push(hash);
            }
        }
        tx.commit()?;
        Ok(orphaned)
    }

    pub fn add_push_endpoint(&self, user: &str, url: &str) -> Result<(), StoreError> {
        self.lock().execute(
            "INSERT INTO push_endpoints (user, url, created_at) VALUES (?1, ?2, ?3)
             ON CONFLICT DO NOTHING",
            params![user, url, now()],
        )?;
        Ok(())
    }

    pub fn remove_push_endpoint(&self, user: &str, url: &str) -> Result<bool, StoreError> {
        Ok(self.lock().execute(
            "DELETE FROM push_endpoints WHERE user = ?1 AND url = ?2",
            params![user, url],
        )? > 0)
    }

    pub fn push_endpoints(&self, user: &str) -> Result<Vec<String>, StoreError> {
        let conn = self.lock();
        let mut stmt = conn.prepare_cached("SELECT url FROM push_endpoints WHERE user = ?1")?;
        let rows = stmt.query_map(params![user], |r| r.get(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Reads users, conversations, members and blocks in one consistent view.
    pub fn snapshot(&self) -> Result<Snapshot, StoreError> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        let mut snap = Snapshot::default();
        {
            let mut stmt = tx.prepare("SELECT id, admin, created_at FROM users")?;
            snap.users = stmt
                .query_map([], |r| {
                    Ok(UserRow {
                        id: r.get(0)?,
                        admin: r.get(1)?,
                        created_at: r.get(2)?,
                    })
                })?
                .collect::<Result<_, _>>()?;
            let mut stmt = tx.prepare("SELECT id, name, topic FROM conversations")?;
            snap.conversations = stmt
                .query_map([], |r| {
                    Ok(ConversationRow {
                        id: r.get(0)?,
                        name: r.get(1)?,
                        topic: r.get(2)?,
                    })
                })?
                .collect::<Result<_, _>>()?;
            let mut stmt = tx.prepare("SELECT conv, user, role FROM members")?;
            snap.members = stmt
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                .collect::<Result<_, _>>()?;
            let mut stmt = tx.prepare("SELECT user, blocked FROM blocks")?;
            snap.blocks = stmt
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<Result<_, _>>()?;
        }
        tx.commit()?;
        Ok(snap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_conversations_and_cascades() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.add_user("alice", "h1").unwrap();
        store.add_user("bob", "h2").unwrap();
        assert!(matches!(
            store.add_user("bob", "x"),
            Err(StoreError::Exists(_))
        ));
        assert_eq!(
            store.login_info("bob").unwrap(),
            Some(("h2".to_string(), false))
        );
        assert!(store.set_admin("alice", true).unwrap());
        store
            .create_conversation(
                "g.t",
                false,
                "Team",
                "alice",
                &[("alice", "owner"), ("bob", "member")],
            )
            .unwrap();
        // Direct conversations as production makes them: a row added by the history writer
        // with the first message, and no member rows.
        store.add_user("b_b", "h3").unwrap();
        for conv in ["d.alice.bob", "d.alice.b_b"] {
            store
                .create_conversation(conv, true, "", "alice", &[])
                .unwrap();
        }
        {
            let conn = store.lock();
            for (conv, seq, sender, cid) in [
                ("d.alice.bob", 1, "alice", "c1"),
                ("d.alice.bob", 2, "bob", "c2"),
                ("d.alice.b_b", 1, "b_b", "c3"),
                ("g.t", 1, "bob", "c4"),
            ] {
                conn.execute(
                    "INSERT INTO messages (conv, seq, sender, device, ts, cid, kind, body)
                     VALUES (?1, ?2, ?3, ?3, 0, ?4, 'msg', 'secret')",
                    params![conv, seq, sender, cid],
                )
                .unwrap();
            }
            // Indexed as the history writer indexes what it stores.
            conn.execute(
                "INSERT INTO messages_fts (rowid, body) SELECT id, body FROM messages",
                [],
            )
            .unwrap();
            for (conv, user) in [
                ("d.alice.bob", "alice"),
                ("d.alice.bob", "bob"),
                ("g.t", "bob"),
            ] {
                conn.execute(
                    "INSERT INTO receipts (conv, user, delivered, read) VALUES (?1, ?2, 1, 1)",
                    params![conv, user],
                )
                .unwrap();
            }
        }
        let count = |sql: &str| -> i64 { store.lock().query_row(sql, [], |r| r.get(0)).unwrap() };
        store.set_block("bob", "alice", true).unwrap();
        let snap = store.snapshot().unwrap();
        assert_eq!(snap.users.len(), 3);
        assert_eq!(snap.members.len(), 2);
        assert_eq!(snap.blocks, [("bob".to_string(), "alice".to_string())]);

        // `_` is a LIKE wildcard: removing b_b must not touch bob's conversation.
        assert!(store.remove_user("b_b").unwrap());
        assert_eq!(
            count("SELECT COUNT(*) FROM conversations WHERE id = 'd.alice.b_b'"),
            0
        );
        assert_eq!(
            count("SELECT COUNT(*) FROM messages WHERE conv = 'd.alice.b_b'"),
            0
        );
        assert_eq!(
            count("SELECT COUNT(*) FROM messages WHERE conv = 'd.alice.bob'"),
            2
        );

        assert!(store.remove_user("bob").unwrap());
        assert_eq!(
            count("SELECT COUNT(*) FROM messages WHERE conv = 'd.alice.bob'"),
            0,
            "the direct history went with bob"
        );
        assert_eq!(
            count("SELECT COUNT(*) FROM messages_fts WHERE messages_fts MATCH 'secret'"),
            1
        );
        assert_eq!(
            count("SELECT COUNT(*) FROM receipts"),
            0,
            "bob's receipts and those of his direct conversations went with him"
        );
        assert_eq!(
            count("SELECT COUNT(*) FROM messages WHERE conv = 'g.t' AND cid IS NULL"),
            1,
            "bob's group message stays, no longer matchable as a later bob's resend"
        );
        let snap = store.snapshot().unwrap();
        assert_eq!(
            snap.members,
            [("g.t".to_string(), "alice".to_string(), "owner".to_string())]
        );
        assert_eq!(
            snap.conversations.len(),
            1,
            "the direct conversation went with bob"
        );
        assert!(snap.blocks.is_empty());
        // Reopening keeps everything and does not migrate twice.
        drop(store);
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.list_users().unwrap()[0].id, "alice");
    }
}
