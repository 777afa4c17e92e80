//! The schema, versioned with `PRAGMA user_version`: `MIGRATIONS` lists every step in order,
//! and [`Store::migrate`] applies the ones a database lacks.

use super::Sqlite;
use crate::store::StoreError;

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
    //   (`messages::index::index_new`), not from insert triggers: FTS5 flushes its pending terms at
    //   every statement savepoint, so a trigger wrote one index segment (and merge work) per
    //   message. Edits, deletes and retention still go through the triggers.
    // - The trigram index serves only queries in scripts written without spaces (see
    //   `messages::index::is_cjk`), and such a query can only match text that contains one of their
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
    // Token generations (see `devices.rs`): every token carries its device's, and revoking the
    // device or changing the password replaces it. Active devices start at '' so the tokens
    // issued before this version (which carry none, read as '') keep working until then; a
    // device revoked before it gets a random one at once, or logging in again under its name
    // would bring its old tokens back.
    "
    ALTER TABLE devices ADD COLUMN gen TEXT NOT NULL DEFAULT '';
    UPDATE devices SET gen = lower(hex(randomblob(8))) WHERE revoked;
    ALTER TABLE refresh_tokens ADD COLUMN gen TEXT NOT NULL DEFAULT '';
",
    // A cluster's roster (`roster.rs`) and retained messages (`retained.rs`): the tables
    // exist for the one interface; a cluster keeps them in PostgreSQL.
    "
    CREATE TABLE cluster_nodes (node TEXT PRIMARY KEY, seen_at_ms INTEGER NOT NULL);
    CREATE TABLE cluster_devices (
        node TEXT NOT NULL,
        client TEXT NOT NULL,
        user TEXT NOT NULL,
        -- One node holds a client's session: a connection elsewhere takes the row over,
        -- and the node that lost it closes its own (the fence of a takeover).
        PRIMARY KEY (client)
    );
    CREATE TABLE retained (
        topic TEXT PRIMARY KEY,
        message BLOB NOT NULL,
        expires_at_ms BIGINT
    );
    CREATE INDEX cluster_devices_by_user ON cluster_devices(user);
",
    // The full-text indexes moved to a file of their own, which an indexer follows off the
    // commit path (`messages::index`); it builds them again from the history.
    "
    DROP TRIGGER messages_fts_delete;
    DROP TRIGGER messages_fts_update;
    DROP TRIGGER messages_tri_delete;
    DROP TRIGGER messages_tri_update;
    DROP TABLE messages_fts;
    DROP TABLE messages_tri;
",
];

impl Sqlite {
    pub(super) fn migrate(&self) -> Result<(), StoreError> {
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
}

#[cfg(test)]
mod tests {
    use rusqlite::{params, Connection};

    use super::*;
    use crate::store::*;

    /// A database made by the version before token generations, with an active and a revoked
    /// device and a refresh token: after the upgrade the active device's tokens (which carry no
    /// generation) still work, and the revoked device logging in again gets none of its old
    /// ones back.
    #[test]
    fn token_generations_migrate_an_existing_database() {
        let dir = tempfile::tempdir().unwrap();
        let before = MIGRATIONS
            .iter()
            .position(|sql| sql.contains("ADD COLUMN gen"))
            .expect("the token generations step");
        {
            let conn = Connection::open(dir.path().join("natter.db")).unwrap();
            for sql in &MIGRATIONS[..before] {
                conn.execute_batch(sql).unwrap();
            }
            conn.pragma_update(None, "user_version", before as i64)
                .unwrap();
            conn.execute_batch(
                "INSERT INTO users (id, password, created_at) VALUES ('alice', 'h', 0);
                 INSERT INTO devices (user, device, created_at) VALUES ('alice', 'phone', 0);
                 INSERT INTO devices (user, device, created_at, revoked)
                     VALUES ('alice', 'old', 0, 1);
                 INSERT INTO refresh_tokens (hash, user, device, expires_at)
                     VALUES ('r1', 'alice', 'phone', 100);",
            )
            .unwrap();
        }
        let store = Sqlite::open(dir.path()).unwrap();
        assert!(store.token_current("alice", "phone", "").unwrap());
        assert_eq!(
            store.take_refresh_token("r1", 50).unwrap(),
            Some(("alice".into(), "phone".into()))
        );
        store.upsert_device("alice", "old").unwrap();
        assert!(!store.token_current("alice", "old", "").unwrap());
        let version: i64 = store
            .lock()
            .query_row("PRAGMA user_version", params![], |r| r.get(0))
            .unwrap();
        assert_eq!(version as usize, MIGRATIONS.len());
    }
}
