//! The history writer and its readers together: retention, batched indexing, idempotency,
//! direct conversation rows and media references.

use std::sync::Arc;
use std::time::Duration;

use crate::chat::envelope::{Content, Envelope, Kind};
use crate::config::Synchronous;
use crate::stats::Stats;
use crate::store::clock::now_ms;
use crate::store::messages::{AppendError, NewMessage};
use crate::store::sqlite::Sqlite;
use crate::store::*;

fn start(store: &Sqlite) -> Writer {
    Writer::start(
        store.log(Synchronous::Normal).unwrap(),
        true,
        Duration::from_secs(1),
        Arc::new(Stats::default()),
    )
    .unwrap()
}

fn content(kind: Kind, text: Option<&str>, target: Option<u64>, media: &[&str]) -> Content {
    Content {
        kind,
        cid: None,
        text: text.map(str::to_string),
        reply_to: None,
        thread: None,
        target,
        emoji: None,
        media: media.iter().map(|m| m.to_string()).collect(),
    }
}

fn from_alice(conv: &str, content: Content) -> NewMessage {
    NewMessage {
        conv: conv.into(),
        sender: "alice".into(),
        device: "alice.phone".into(),
        pkid: None,
        dup: false,
        moderator: false,
        content,
    }
}

async fn append(writer: &Writer, conv: &str, content: Content) -> Envelope {
    writer
        .submit(from_alice(conv, content))
        .await
        .await
        .unwrap()
        .unwrap()
        .envelope
}

async fn text(writer: &Writer, conv: &str, t: &str) -> u64 {
    append(writer, conv, content(Kind::Msg, Some(t), None, &[]))
        .await
        .seq
}

fn count(store: &Sqlite, sql: &str) -> i64 {
    store.lock().query_row(sql, [], |r| r.get(0)).unwrap()
}

#[tokio::test]
async fn age_retention_removes_only_old_entries_and_seq_never_goes_back() {
    let dir = tempfile::tempdir().unwrap();
    let store = Sqlite::open(dir.path()).unwrap();
    let writer = start(&store);
    for t in ["a", "b", "c"] {
        text(&writer, "d.alice.bob", t).await;
    }
    let day = Duration::from_secs(86_400);
    // Not a day old yet: everything stays.
    assert_eq!(store.retain_at(now_ms(), Some(day), 0).unwrap(), 0);
    assert_eq!(store.after("d.alice.bob", 0, 10).unwrap().items.len(), 3);
    // Two days later every entry is over a day old.
    let later = now_ms() + 2 * day.as_millis() as i64;
    assert_eq!(store.retain_at(later, Some(day), 0).unwrap(), 3);
    assert_eq!(store.first_seq("d.alice.bob").unwrap(), None);
    // The writer continues where it was...
    assert_eq!(text(&writer, "d.alice.bob", "d").await, 4);
    store.retain_at(later, Some(day), 0).unwrap();
    // ...and so does a restarted one, whose sequence cache starts empty.
    drop(writer);
    let writer = start(&store);
    assert_eq!(text(&writer, "d.alice.bob", "e").await, 5);
    assert_eq!(text(&writer, "g.other", "x").await, 1);
}

/// Entries are indexed after their commit; an edit or delete in the same batch as its target
/// must still find it indexed, and the trigram index holds only CJK text.
#[tokio::test]
async fn batched_indexing_keeps_both_indexes_consistent() {
    let dir = tempfile::tempdir().unwrap();
    let store = Sqlite::open(dir.path()).unwrap();
    let writer = start(&store);
    let conv = "d.alice.bob";
    // Submitted together, so that they share batches.
    let submit = |c: Content| writer.submit(from_alice(conv, c));
    let replies = [
        submit(content(Kind::Msg, Some("alpha one"), None, &[])).await,
        submit(content(Kind::Edit, Some("beta one"), Some(1), &[])).await,
        submit(content(Kind::Msg, Some("東京で会いましょう"), None, &[])).await,
        submit(content(Kind::Edit, Some("gamma"), Some(3), &[])).await,
        submit(content(Kind::Msg, Some("delta 서울"), None, &[])).await,
        submit(content(Kind::Delete, None, Some(5), &[])).await,
        submit(content(Kind::Msg, Some("epsilon 北京"), None, &[])).await,
    ];
    for r in replies {
        r.await.unwrap().unwrap();
    }
    let convs = [conv.to_string()];
    let found = |q: &str| -> Vec<u64> {
        store
            .search(&convs, q, 10)
            .unwrap()
            .iter()
            .map(|i| i.envelope.seq)
            .collect()
    };
    assert_eq!(found("beta"), [1]);
    assert!(found("alpha").is_empty());
    assert!(found("東京で").is_empty(), "edited away");
    assert_eq!(found("gamma"), [3]);
    assert!(found("delta").is_empty(), "deleted");
    assert_eq!(found("北京"), [7]);
    assert_eq!(found("epsilon"), [7]);
    let index = store.index.lock();
    // Only the one stored text with CJK left is in the trigram index.
    let tri: i64 = index
        .query_row("SELECT COUNT(*) FROM search.tri_docsize", [], |r| r.get(0))
        .unwrap();
    assert_eq!(tri, 1);
    for table in ["words", "tri"] {
        index
            .execute(
                &format!("INSERT INTO search.{table} ({table}) VALUES ('integrity-check')"),
                [],
            )
            .unwrap();
    }
}

/// The index follows the history off the commit path: without any search, the indexer
/// indexes what was committed within its interval (bounded here by one second); a search
/// before that indexes what is missing itself; edits and deletes reach the index too; and a
/// removed index file is built again.
#[tokio::test]
async fn the_index_follows_the_history_within_its_bound() {
    let dir = tempfile::tempdir().unwrap();
    let store = Sqlite::open(dir.path()).unwrap();
    let writer = start(&store);
    let cursor = |store: &Sqlite| -> i64 {
        store
            .index
            .lock()
            .query_row("SELECT id FROM search.cursor", [], |r| r.get(0))
            .unwrap()
    };
    let conv = ["d.alice.bob".to_string()];
    text(&writer, "d.alice.bob", "first words").await;
    let last = count(&store, "SELECT MAX(id) FROM messages");
    let committed = std::time::Instant::now();
    while cursor(&store) < last {
        assert!(
            committed.elapsed() < Duration::from_secs(1),
            "not indexed within a second of its commit"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // A search right after a commit finds it, indexed or not.
    text(&writer, "d.alice.bob", "second words").await;
    assert_eq!(store.search(&conv, "second", 10).unwrap().len(), 1);
    assert_eq!(
        cursor(&store),
        count(&store, "SELECT MAX(id) FROM messages")
    );
    // An edit of an entry indexed long before replaces its text in the index.
    append(
        &writer,
        "d.alice.bob",
        content(Kind::Edit, Some("third"), Some(1), &[]),
    )
    .await;
    assert!(store.search(&conv, "first", 10).unwrap().is_empty());
    assert_eq!(store.search(&conv, "third", 10).unwrap().len(), 1);
    // The index is derived data: a store opened on a directory without it builds it again.
    drop(writer);
    drop(store);
    let index = dir.path().join("natter-search.db");
    std::fs::remove_file(&index).unwrap();
    let found = |store: &Sqlite| -> Vec<u64> {
        store
            .search(&conv, "words", 10)
            .unwrap()
            .iter()
            .map(|i| i.envelope.seq)
            .collect()
    };
    let store = Sqlite::open(dir.path()).unwrap();
    assert_eq!(found(&store), [2]);
    // So does one whose index file is damaged.
    drop(store);
    std::fs::write(
        &index,
        b"not a database, and long enough to be read as a header",
    )
    .unwrap();
    let store = Sqlite::open(dir.path()).unwrap();
    assert_eq!(found(&store), [2]);
}

#[tokio::test]
async fn a_cid_names_one_message_per_sender_and_conversation() {
    let dir = tempfile::tempdir().unwrap();
    let _store = Sqlite::open(dir.path()).unwrap();
    let writer = start(&_store);
    let with_cid = |t: &str| Content {
        cid: Some("c-1".into()),
        ..content(Kind::Msg, Some(t), None, &[])
    };
    let first = append(&writer, "d.alice.bob", with_cid("hi bob")).await;
    let again = append(&writer, "d.alice.bob", with_cid("hi bob")).await;
    let elsewhere = append(&writer, "d.alice.carol", with_cid("hi carol")).await;
    assert_eq!((again.id, again.seq), (first.id, first.seq));
    assert_ne!(elsewhere.id, first.id);
    assert_eq!(
        (
            elsewhere.conv.as_str(),
            elsewhere.seq,
            elsewhere.t.as_deref()
        ),
        ("d.alice.carol", 1, Some("hi carol"))
    );
}

/// The row that makes a direct conversation exist comes back with its next entry, even
/// after another connection removed it (as removing a user does) while the writer ran.
#[tokio::test]
async fn a_direct_conversation_row_returns_with_its_next_entry() {
    let dir = tempfile::tempdir().unwrap();
    let store = Sqlite::open(dir.path()).unwrap();
    for user in ["alice", "bob"] {
        store.add_user(user, "x").unwrap();
    }
    let writer = start(&store);
    text(&writer, "d.alice.bob", "hi").await;
    assert_eq!(store.direct_conversations("bob").unwrap(), ["d.alice.bob"]);
    assert!(store.remove_user("bob").unwrap());
    store.add_user("bob", "x").unwrap();
    assert!(store.direct_conversations("bob").unwrap().is_empty());
    text(&writer, "d.alice.bob", "hi again").await;
    assert_eq!(store.direct_conversations("bob").unwrap(), ["d.alice.bob"]);
}

#[tokio::test]
async fn a_deleted_message_releases_its_media() {
    let dir = tempfile::tempdir().unwrap();
    let store = Sqlite::open(dir.path()).unwrap();
    for id in ["m1", "m2"] {
        store
            .add_media(&MediaRow {
                id: id.into(),
                hash: format!("h-{id}"),
                owner: "alice".into(),
                size: 3,
                mime: "image/png".into(),
            })
            .unwrap();
    }
    let writer = start(&store);
    let conv = "d.alice.bob";
    let kept = append(&writer, conv, content(Kind::Msg, None, None, &["m1"])).await;
    let gone = append(&writer, conv, content(Kind::Msg, Some("x"), None, &["m2"])).await;
    append(
        &writer,
        conv,
        content(Kind::Delete, None, Some(gone.seq), &[]),
    )
    .await;

    let items = store.after(conv, 0, 10).unwrap().items;
    assert_eq!(items[0].envelope.media, ["m1"]);
    assert!(items[1].deleted);
    assert!(items[1].envelope.media.is_empty(), "{:?}", items[1]);
    assert!(items[1].envelope.t.is_none());
    assert!(store.media_conversations("m2").unwrap().is_empty());
    assert_eq!(store.media_conversations("m1").unwrap(), [conv]);
    // With the grace over, the deleted message's upload (and file) can go; the other stays.
    assert_eq!(
        store.release_unreferenced_media(-10).unwrap(),
        ["h-m2".to_string()]
    );
    assert_eq!(count(&store, "SELECT COUNT(*) FROM media"), 1);
    assert_eq!(kept.seq, 1);
}

/// A message the database refuses (here a reply-to number SQLite's signed integers cannot
/// hold, which the envelope parser refuses before it gets here) fails alone: the rest of its
/// group-commit batch commits, with dense sequence numbers.
#[test]
fn a_failing_insert_fails_only_its_own_message_in_a_batch() {
    let dir = tempfile::tempdir().unwrap();
    let store = Sqlite::open(dir.path()).unwrap();
    let mut log = store.log(Synchronous::Normal).unwrap();
    let bad = Content {
        reply_to: Some(u64::MAX),
        ..content(Kind::Msg, Some("bad"), None, &[])
    };
    let batch = [
        from_alice("g.team", content(Kind::Msg, Some("one"), None, &[])),
        from_alice("g.team", bad),
        NewMessage {
            sender: "bob".into(),
            device: "bob.phone".into(),
            ..from_alice("g.team", content(Kind::Msg, Some("two"), None, &[]))
        },
    ];
    let results = log
        .commit(&batch.iter().collect::<Vec<_>>())
        .unwrap()
        .results;
    assert!(
        matches!(results[1], Err(AppendError::Store(_))),
        "{:?}",
        results[1]
    );
    let seqs: Vec<u64> = [&results[0], &results[2]]
        .iter()
        .map(|r| r.as_ref().unwrap().envelope.seq)
        .collect();
    assert_eq!(seqs, [1, 2]);
    let stored: Vec<_> = store.after("g.team", 0, 10).unwrap().items;
    let texts: Vec<_> = stored.iter().map(|i| i.envelope.t.as_deref()).collect();
    assert_eq!(texts, [Some("one"), Some("two")]);
    assert_eq!(
        store.after("g.team", 0, 10).unwrap().items[1].envelope.from,
        "bob"
    );
}

/// A read marker past the end is kept at the end, so later messages count as unread.
#[tokio::test]
async fn a_read_marker_past_the_end_is_clamped_to_the_last_seq() {
    let dir = tempfile::tempdir().unwrap();
    let store = Sqlite::open(dir.path()).unwrap();
    let writer = start(&store);
    let conv = "d.alice.bob";
    text(&writer, conv, "one").await;
    text(&writer, conv, "two").await;
    assert_eq!(
        store.mark_read(conv, "bob", 1_000_000, false).unwrap(),
        Some(2)
    );
    assert_eq!(
        store.mark_read(conv, "bob", 7, false).unwrap(),
        None,
        "already at the end"
    );
    assert_eq!(store.unread(conv, "bob").unwrap(), 0);
    text(&writer, conv, "three").await;
    assert_eq!(store.unread(conv, "bob").unwrap(), 1);
    assert_eq!(
        store.mark_read(conv, "bob", u64::MAX, true).unwrap(),
        Some(3)
    );
    assert_eq!(store.unread(conv, "bob").unwrap(), 0);
    assert_eq!(
        store.mark_read("d.alice.carol", "carol", 5, false).unwrap(),
        None
    );
}

/// Checkpoints run beside the writer (`../checkpoint.rs`); under commits that never pause the
/// log must still start over rather than grow with everything ever written.
#[tokio::test]
async fn the_log_starts_over_under_commits_that_never_pause() {
    let dir = tempfile::tempdir().unwrap();
    let store = Sqlite::open(dir.path()).unwrap();
    let writer = start(&store);
    let wal = dir.path().join("natter.db-wal");
    let page = "x".repeat(12_000);
    // About 8 frames a commit, 16,000 in all: 64 MiB of log were it never started over.
    for i in 0..2000 {
        text(&writer, &format!("g.{}", i % 50), &page).await;
    }
    let size = std::fs::metadata(&wal).unwrap().len();
    assert!(size < 32 << 20, "the log grew to {size} bytes");
    let messages = count(&store, "SELECT count(*) FROM messages");
    assert_eq!(messages, 2000);
    // With the history writer idle, other writes (here retained messages) are restarted by
    // the checkpoint thread.
    for i in 0..4000 {
        let topic = format!("t/{}", i % 50);
        store
            .set_retained(&topic, Some(page.as_bytes()), None)
            .unwrap();
    }
    let size = std::fs::metadata(&wal).unwrap().len();
    assert!(size < 32 << 20, "the log grew to {size} bytes");
}
