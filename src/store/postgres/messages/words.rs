//! The word index behind search, kept off the commit path: a GIN insert costs several times the
//! rest of a message's insert (measured here: ~200 µs of a ~250 µs append), and a sender waits
//! for its commit. The writer queues the id of every entry it adds, edits or deletes in
//! `words_pending`, inside its transaction; [`index_pending`] moves the queue into
//! `message_words` in bulk, where the GIN work per entry is a fraction of one-by-one inserts.
//! A thread does it every [`INTERVAL`], and every search does it first, so a search still sees
//! every message committed before it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::super::{Conn, Db, Manager};
use crate::store::StoreError;

/// How often the background thread indexes what was queued.
pub(in crate::store::postgres) const INTERVAL: Duration = Duration::from_millis(500);
/// Entries indexed per transaction.
const CHUNK: i64 = 2000;

/// Indexes every queued entry, a chunk per transaction; how many were taken from the queue.
/// Chunks are taken in id order and locked, so two indexers (the thread and a search, or
/// several natter processes) take turns rather than index an entry twice or deadlock.
pub(in crate::store::postgres) fn index_pending(
    pool: &r2d2::Pool<Manager>,
) -> Result<usize, StoreError> {
    let mut conn = pool.get()?;
    let Conn { client, cache } = &mut *conn;
    let mut total = 0;
    loop {
        let mut tx = client.transaction()?;
        let mut db = Db {
            client: &mut tx,
            cache,
        };
        let ids: Vec<i64> = db
            .query(
                "DELETE FROM words_pending WHERE id IN (
                     SELECT id FROM words_pending ORDER BY id LIMIT $1 FOR UPDATE)
                 RETURNING id",
                &[&CHUNK],
            )?
            .iter()
            .map(|r| r.get(0))
            .collect();
        if ids.is_empty() {
            return Ok(total);
        }
        // An entry's words as its text is now: new, edited, or gone (deleted, or a tombstone).
        db.exec(
            "INSERT INTO message_words (id, words)
             SELECT id, to_tsvector('simple', natter_unaccent(body)) FROM messages
             WHERE id = ANY($1) AND kind = 'msg' AND body IS NOT NULL
             ON CONFLICT (id) DO UPDATE SET words = excluded.words",
            &[&ids],
        )?;
        db.exec(
            "DELETE FROM message_words w WHERE w.id = ANY($1) AND NOT EXISTS (
                 SELECT 1 FROM messages m
                 WHERE m.id = w.id AND m.kind = 'msg' AND m.body IS NOT NULL)",
            &[&ids],
        )?;
        tx.commit()?;
        total += ids.len();
        if (ids.len() as i64) < CHUNK {
            return Ok(total);
        }
    }
}

/// Starts the thread that indexes queued entries every [`INTERVAL`] until `stop`.
pub(in crate::store::postgres) fn start_indexer(
    pool: r2d2::Pool<Manager>,
    stop: Arc<AtomicBool>,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("natter-pg-words".into())
        .spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(INTERVAL);
                if let Err(e) = index_pending(&pool) {
                    // The database may be restarting; the next round, or a search, catches up.
                    tracing::warn!(error = %e, "cannot index new messages for search yet");
                }
            }
        })
        .map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chat::envelope::{Content, Kind};
    use crate::config::Synchronous;
    use crate::store::messages::NewMessage;
    use crate::store::postgres::{test_database, Postgres};
    use crate::store::{History, Store};

    /// The thread indexes what the writer queued without a search asking for it.
    #[test]
    fn the_thread_indexes_queued_entries_by_itself() {
        let Some(url) = test_database() else {
            eprintln!("SKIPPED: the word index thread's test (no test PostgreSQL)");
            return;
        };
        let store = Postgres::open(&url).unwrap();
        let m = NewMessage {
            conv: "g.team".into(),
            sender: "alice".into(),
            device: "alice.phone".into(),
            pkid: None,
            dup: false,
            moderator: false,
            content: Content {
                kind: Kind::Msg,
                cid: None,
                text: Some("café au lait".into()),
                reply_to: None,
                thread: None,
                target: None,
                emoji: None,
                media: Vec::new(),
            },
        };
        let mut log = store.log(Synchronous::Normal).unwrap();
        log.commit(&[&m, &m]).unwrap();
        assert_eq!(store.after("g.team", 0, 10).unwrap().items.len(), 2);
        let counts = |store: &Postgres| {
            store
                .with(|db| {
                    let n = |db: &mut Db<'_, postgres::Client>, sql| -> Result<i64, StoreError> {
                        Ok(db.one(sql, &[])?.get(0))
                    };
                    Ok((
                        n(db, "SELECT COUNT(*) FROM words_pending")?,
                        n(db, "SELECT COUNT(*) FROM message_words")?,
                    ))
                })
                .unwrap()
        };
        let deadline = std::time::Instant::now() + 10 * INTERVAL;
        while counts(&store) != (0, 2) {
            assert!(std::time::Instant::now() < deadline, "{:?}", counts(&store));
            std::thread::sleep(INTERVAL / 5);
        }
    }
}
