//! The PostgreSQL schema, versioned in the table `schema_version`: `MIGRATIONS` lists every
//! step in order, and [`Postgres::migrate`] applies the ones a database lacks, each in its own
//! transaction, under an advisory lock so that natter processes starting together take turns.
//!
//! Version 1 is the SQLite schema's current shape (the SQLite steps record how it got there):
//! the same tables and meanings, with PostgreSQL's types (`bigint`, `boolean`), `user_id` for
//! SQLite's `user` (a reserved word here), and PostgreSQL's own full-text search: a `tsvector`
//! of the accent-stripped text (`simple` configuration, so no language's stemming) for words,
//! in a table of its own, and a trigram index for text in scripts written without spaces.

use super::Postgres;
use crate::store::StoreError;

/// Schema steps; entry `i` takes the database from version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[
    r#"
    CREATE EXTENSION IF NOT EXISTS unaccent;
    CREATE EXTENSION IF NOT EXISTS pg_trgm;
    -- unaccent() is only STABLE (its dictionary could change); with the dictionary named it
    -- may be declared IMMUTABLE, so the planner folds it once for a query's constant text.
    CREATE FUNCTION natter_unaccent(text) RETURNS text
        LANGUAGE sql IMMUTABLE PARALLEL SAFE STRICT
        AS $$ SELECT public.unaccent('public.unaccent'::regdictionary, $1) $$;

    CREATE TABLE meta (key TEXT PRIMARY KEY, value BIGINT NOT NULL);
    INSERT INTO meta (key, value) VALUES ('directory_version', 0);
    -- Every change to the directory (accounts, conversations, members, blocks) bumps its
    -- version, so servers reload it. Row-level: an INSERT … ON CONFLICT DO NOTHING that
    -- inserts nothing bumps nothing.
    CREATE FUNCTION natter_bump_directory() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        UPDATE meta SET value = value + 1 WHERE key = 'directory_version';
        RETURN NULL;
    END $$;

    CREATE TABLE users (
        id TEXT PRIMARY KEY,
        password TEXT NOT NULL,
        admin BOOLEAN NOT NULL DEFAULT FALSE,
        created_at BIGINT NOT NULL
    );
    CREATE TABLE conversations (
        id TEXT PRIMARY KEY,
        kind TEXT NOT NULL CHECK (kind IN ('direct', 'group')),
        name TEXT NOT NULL DEFAULT '',
        topic TEXT NOT NULL DEFAULT '',
        created_by TEXT,
        created_at BIGINT NOT NULL
    );
    CREATE TABLE members (
        conv TEXT NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
        user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        role TEXT NOT NULL CHECK (role IN ('owner', 'admin', 'member')),
        joined_at BIGINT NOT NULL,
        PRIMARY KEY (conv, user_id)
    );
    CREATE INDEX members_by_user ON members(user_id);
    CREATE TABLE blocks (
        user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        blocked TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        PRIMARY KEY (user_id, blocked)
    );
    CREATE TRIGGER users_bump AFTER INSERT OR UPDATE OR DELETE ON users
        FOR EACH ROW EXECUTE FUNCTION natter_bump_directory();
    CREATE TRIGGER conversations_bump AFTER INSERT OR UPDATE OR DELETE ON conversations
        FOR EACH ROW EXECUTE FUNCTION natter_bump_directory();
    CREATE TRIGGER members_bump AFTER INSERT OR UPDATE OR DELETE ON members
        FOR EACH ROW EXECUTE FUNCTION natter_bump_directory();
    CREATE TRIGGER blocks_bump AFTER INSERT OR UPDATE OR DELETE ON blocks
        FOR EACH ROW EXECUTE FUNCTION natter_bump_directory();

    CREATE TABLE messages (
        id BIGSERIAL PRIMARY KEY,
        conv TEXT NOT NULL,
        seq BIGINT NOT NULL,
        sender TEXT NOT NULL,
        device TEXT NOT NULL,
        ts BIGINT NOT NULL,
        cid TEXT,
        pkid INTEGER,
        kind TEXT NOT NULL CHECK (kind IN ('msg', 'edit', 'delete', 'react', 'unreact')),
        body TEXT,
        reply_to BIGINT,
        thread BIGINT,
        target BIGINT,
        emoji TEXT,
        edited BOOLEAN NOT NULL DEFAULT FALSE,
        deleted BOOLEAN NOT NULL DEFAULT FALSE,
        media TEXT,
        cjk BOOLEAN NOT NULL DEFAULT FALSE,
        UNIQUE (conv, seq)
    );
    CREATE UNIQUE INDEX messages_by_cid ON messages(sender, conv, cid) WHERE cid IS NOT NULL;
    CREATE INDEX messages_by_device ON messages(device, pkid);
    CREATE INDEX messages_by_target ON messages(conv, target) WHERE target IS NOT NULL;
    CREATE INDEX messages_by_ts ON messages(ts);
    -- The word index, kept off the commit path (see `messages::words`): a GIN insert costs
    -- several times the rest of a message's insert. The writer queues each new, edited or
    -- deleted message's id in `words_pending` in its transaction (a small B-tree insert), and
    -- the index catches up in bulk: in the background, and before every search.
    CREATE TABLE message_words (
        id BIGINT PRIMARY KEY REFERENCES messages(id) ON DELETE CASCADE,
        words TSVECTOR NOT NULL
    );
    CREATE INDEX message_words_gin ON message_words USING gin (words);
    CREATE TABLE words_pending (id BIGINT PRIMARY KEY);
    CREATE INDEX messages_trigrams ON messages USING gin (body gin_trgm_ops)
        WHERE kind = 'msg' AND cjk;
    -- The last sequence number handed out per conversation: its row lock serialises appends
    -- to one conversation across processes, and retention cannot make `seq` start again.
    CREATE TABLE conv_seq (conv TEXT PRIMARY KEY, last BIGINT NOT NULL);

    CREATE TABLE receipts (
        conv TEXT NOT NULL,
        user_id TEXT NOT NULL,
        delivered BIGINT NOT NULL DEFAULT 0,
        read BIGINT NOT NULL DEFAULT 0,
        read_private BIGINT NOT NULL DEFAULT 0,
        PRIMARY KEY (conv, user_id)
    );
    CREATE TABLE push_endpoints (
        user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        url TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        PRIMARY KEY (user_id, url)
    );
    CREATE TABLE devices (
        user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        device TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        revoked BOOLEAN NOT NULL DEFAULT FALSE,
        gen TEXT NOT NULL DEFAULT '',
        PRIMARY KEY (user_id, device)
    );
    CREATE TABLE refresh_tokens (
        hash TEXT PRIMARY KEY,
        user_id TEXT NOT NULL,
        device TEXT NOT NULL,
        expires_at BIGINT NOT NULL,
        gen TEXT NOT NULL DEFAULT '',
        FOREIGN KEY (user_id, device) REFERENCES devices (user_id, device) ON DELETE CASCADE
    );
    CREATE TABLE media (
        id TEXT PRIMARY KEY,
        hash TEXT NOT NULL,
        owner TEXT NOT NULL,
        size BIGINT NOT NULL,
        mime TEXT NOT NULL,
        created_at BIGINT NOT NULL
    );
    CREATE INDEX media_by_owner ON media(owner);
    CREATE INDEX media_by_hash ON media(hash);
    CREATE TABLE media_refs (
        media TEXT NOT NULL REFERENCES media(id) ON DELETE CASCADE,
        message BIGINT NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
        conv TEXT NOT NULL,
        PRIMARY KEY (media, message)
    );
    CREATE INDEX media_refs_by_message ON media_refs(message);
"#,
    // A cluster: its roster (`roster.rs`, live state, never copied) and its retained messages
    // (`retained.rs`).
    r#"
    CREATE TABLE cluster_nodes (
        node TEXT PRIMARY KEY,
        seen_at TIMESTAMPTZ NOT NULL
    );
    CREATE TABLE cluster_devices (
        node TEXT NOT NULL,
        client TEXT NOT NULL,
        user_id TEXT NOT NULL,
        -- One node holds a client's session: a connection elsewhere takes the row over,
        -- and the node that lost it closes its own (the fence of a takeover).
        PRIMARY KEY (client)
    );
    CREATE TABLE retained (
        topic TEXT PRIMARY KEY,
        message BYTEA NOT NULL,
        expires_at_ms BIGINT
    );
    CREATE INDEX cluster_devices_by_user ON cluster_devices(user_id);
"#,
];

/// The advisory lock key migrations hold ("natter" in ASCII).
const MIGRATION_LOCK: i64 = 0x6e_61_74_74_65_72;

impl Postgres {
    pub(super) fn migrate(&self) -> Result<(), StoreError> {
        let mut conn = self.pool()?;
        let client = &mut conn.client;
        client.execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])?;
        let result = migrate(client);
        client.execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])?;
        result
    }
}

fn migrate(client: &mut postgres::Client) -> Result<(), StoreError> {
    client.batch_execute("CREATE TABLE IF NOT EXISTS schema_version (version BIGINT NOT NULL)")?;
    let version: i64 = client
        .query_opt("SELECT version FROM schema_version", &[])?
        .map(|r| r.get(0))
        .unwrap_or(0);
    if version as usize > MIGRATIONS.len() {
        return Err(StoreError::TooNew {
            found: version,
            known: MIGRATIONS.len(),
        });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        let mut tx = client.transaction()?;
        tx.batch_execute(sql)?;
        tx.execute("DELETE FROM schema_version", &[])?;
        tx.execute(
            "INSERT INTO schema_version (version) VALUES ($1)",
            &[&((i + 1) as i64)],
        )?;
        tx.commit()?;
    }
    Ok(())
}
