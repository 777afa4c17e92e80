//! The history on every backend: appending (sequence numbers, resends, edits, refusals),
//! reading back, search, receipts and retention; and on PostgreSQL, several writers (natter
//! processes) appending to one conversation at once.

use std::collections::BTreeMap;

use super::{backends, Backend};
use crate::chat::edits::EditRefused;
use crate::chat::envelope::{Content, Kind};
use crate::config::Synchronous;
use crate::store::messages::{AppendError, Appended, NewMessage};
use crate::store::Store;

fn content(kind: Kind, text: Option<&str>, target: Option<u64>) -> Content {
    Content {
        kind,
        cid: None,
        text: text.map(str::to_string),
        reply_to: None,
        thread: None,
        target,
        emoji: None,
        media: Vec::new(),
    }
}

fn message(sender: &str, conv: &str, content: Content) -> NewMessage {
    NewMessage {
        conv: conv.into(),
        sender: sender.into(),
        device: format!("{sender}.phone"),
        pkid: None,
        dup: false,
        moderator: false,
        content,
    }
}

fn text(sender: &str, conv: &str, t: &str) -> NewMessage {
    message(sender, conv, content(Kind::Msg, Some(t), None))
}

fn with_cid(mut m: NewMessage, cid: &str) -> NewMessage {
    m.content.cid = Some(cid.into());
    m
}

/// Commits `batch` through a new writer connection; each message's result.
fn commit(store: &dyn Store, batch: &[NewMessage]) -> Vec<Result<Appended, AppendError>> {
    let mut log = store.log(Synchronous::Normal).expect("open the log");
    log.commit(&batch.iter().collect::<Vec<_>>())
        .expect("commit")
        .results
}

fn seqs(b: &Backend, results: &[Result<Appended, AppendError>]) -> Vec<u64> {
    results
        .iter()
        .map(|r| match r {
            Ok(a) => a.envelope.seq,
            Err(e) => panic!("{}: not appended: {e}", b.name),
        })
        .collect()
}

fn texts(items: &[crate::store::messages::Item]) -> Vec<String> {
    items
        .iter()
        .map(|i| i.envelope.t.clone().unwrap_or_default())
        .collect()
}

#[test]
fn sequence_numbers_are_dense_per_conversation_and_pages_read_back() {
    for b in backends() {
        let s = b.store.as_ref();
        let batch: Vec<NewMessage> = (1..=5)
            .map(|i| text("alice", "g.team", &format!("m{i}")))
            .chain([text("bob", "g.other", "x")])
            .collect();
        assert_eq!(
            seqs(&b, &commit(s, &batch)),
            [1, 2, 3, 4, 5, 1],
            "{}",
            b.name
        );
        // A later batch on a new connection continues the numbering.
        let next = commit(s, &[text("bob", "g.team", "m6")]);
        assert_eq!(seqs(&b, &next), [6], "{}", b.name);

        let page = s.after("g.team", 2, 3).unwrap();
        assert_eq!(texts(&page.items), ["m3", "m4", "m5"], "{}", b.name);
        assert!(page.more, "{}", b.name);
        let page = s.before("g.team", 3, 10).unwrap();
        assert_eq!(texts(&page.items), ["m2", "m1"], "{}", b.name);
        assert!(!page.more, "{}", b.name);
        assert_eq!(s.first_seq("g.team").unwrap(), Some(1), "{}", b.name);
        assert_eq!(s.first_seq("g.none").unwrap(), None, "{}", b.name);

        let all = s
            .since(&["g.team".into(), "g.other".into()], 0, 100)
            .unwrap();
        assert_eq!(all.items.len(), 7, "{}", b.name);
        let ids: Vec<i64> = all.items.iter().map(|i| i.envelope.id).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "{}: {ids:?}", b.name);
        let later = s.since(&["g.other".into()], ids[2], 100).unwrap();
        assert_eq!(texts(&later.items), ["x"], "{}", b.name);
        assert!(s.since(&[], 0, 10).unwrap().items.is_empty(), "{}", b.name);
    }
}

#[test]
fn a_resend_is_recognised_by_cid_per_sender_and_conversation() {
    for b in backends() {
        let s = b.store.as_ref();
        let first = commit(s, &[with_cid(text("alice", "g.team", "hi"), "c-1")]);
        let again = commit(
            s,
            &[
                with_cid(text("alice", "g.team", "hi"), "c-1"),
                // The same cid in another conversation, or from another sender, is new.
                with_cid(text("alice", "g.other", "hi"), "c-1"),
                with_cid(text("bob", "g.team", "hi"), "c-1"),
            ],
        );
        let first = first[0].as_ref().unwrap();
        let dup = again[0].as_ref().unwrap();
        assert!(dup.duplicate, "{}", b.name);
        assert_eq!(dup.envelope.id, first.envelope.id, "{}", b.name);
        assert!(!again[1].as_ref().unwrap().duplicate, "{}", b.name);
        assert_eq!(again[2].as_ref().unwrap().envelope.seq, 2, "{}", b.name);
        assert_eq!(
            s.after("g.team", 0, 10).unwrap().items.len(),
            2,
            "{}",
            b.name
        );
    }
}

/// One batch mixing conversations, a resend of a message earlier in the same batch, and an
/// edit of it: every message in order, as if appended one by one.
#[test]
fn a_mixed_batch_is_appended_in_order() {
    for b in backends() {
        let s = b.store.as_ref();
        let results = commit(
            s,
            &[
                with_cid(text("alice", "g.team", "one"), "c-1"),
                with_cid(text("alice", "g.team", "one"), "c-1"),
                text("bob", "g.other", "x"),
                message("alice", "g.team", content(Kind::Edit, Some("uno"), Some(1))),
                text("bob", "g.team", "two"),
                text("bob", "g.other", "y"),
            ],
        );
        let appended: Vec<&Appended> = results
            .iter()
            .map(|r| r.as_ref().unwrap_or_else(|e| panic!("{}: {e}", b.name)))
            .collect();
        let seqs: Vec<u64> = appended.iter().map(|a| a.envelope.seq).collect();
        assert_eq!(seqs, [1, 1, 1, 2, 3, 2], "{}", b.name);
        assert!(appended[1].duplicate, "{}", b.name);
        assert_eq!(
            appended[1].envelope.id, appended[0].envelope.id,
            "{}",
            b.name
        );
        let ids: Vec<i64> = [0, 2, 3, 4, 5]
            .iter()
            .map(|&i| appended[i].envelope.id)
            .collect();
        assert!(
            ids.windows(2).all(|w| w[0] < w[1]),
            "{}: ids {ids:?}",
            b.name
        );
        let team = s.after("g.team", 0, 10).unwrap().items;
        assert_eq!(texts(&team), ["uno", "uno", "two"], "{}", b.name);
        assert_eq!(
            texts(&s.after("g.other", 0, 10).unwrap().items),
            ["x", "y"],
            "{}",
            b.name
        );
    }
}

#[test]
fn edits_deletes_and_reactions_apply_to_their_target() {
    for b in backends() {
        let s = b.store.as_ref();
        commit(s, &[text("alice", "g.team", "helo")]);
        let react = |who: &str, kind, emoji: &str| {
            let mut m = message(who, "g.team", content(kind, None, Some(1)));
            m.content.emoji = Some(emoji.into());
            m
        };
        let results = commit(
            s,
            &[
                message(
                    "alice",
                    "g.team",
                    content(Kind::Edit, Some("hello"), Some(1)),
                ),
                message(
                    "bob",
                    "g.team",
                    content(Kind::Edit, Some("hacked"), Some(1)),
                ),
                react("bob", Kind::React, "👍"),
                react("carol", Kind::React, "👍"),
                react("carol", Kind::React, "🎉"),
                react("carol", Kind::Unreact, "🎉"),
            ],
        );
        assert!(results[0].is_ok(), "{}", b.name);
        assert!(
            matches!(
                results[1],
                Err(AppendError::Refused(EditRefused::NotAuthor))
            ),
            "{}: {:?}",
            b.name,
            results[1]
        );
        let item = &s.after("g.team", 0, 1).unwrap().items[0];
        assert_eq!(item.envelope.t.as_deref(), Some("hello"), "{}", b.name);
        assert!(item.edited, "{}", b.name);
        assert_eq!(
            item.reactions,
            BTreeMap::from([("👍".to_string(), 2)]),
            "{}",
            b.name
        );

        commit(
            s,
            &[message(
                "alice",
                "g.team",
                content(Kind::Delete, None, Some(1)),
            )],
        );
        let item = &s.after("g.team", 0, 1).unwrap().items[0];
        assert!(item.deleted, "{}", b.name);
        assert_eq!(item.envelope.t, None, "{}", b.name);
        let late = commit(
            s,
            &[message(
                "alice",
                "g.team",
                content(Kind::Edit, Some("x"), Some(1)),
            )],
        );
        assert!(late[0].is_err(), "{}: edited a deleted message", b.name);
        // A target that does not exist.
        let none = commit(
            s,
            &[message(
                "alice",
                "g.team",
                content(Kind::Edit, Some("x"), Some(99)),
            )],
        );
        assert!(
            matches!(none[0], Err(AppendError::Refused(_))),
            "{}",
            b.name
        );
    }
}

/// A message the database refuses (a reply-to number a signed 64-bit column cannot hold,
/// which the envelope parser refuses before it gets here) fails alone: the rest of its batch
/// commits, with dense sequence numbers.
#[test]
fn a_message_the_database_refuses_fails_alone() {
    for b in backends() {
        let s = b.store.as_ref();
        let mut bad = text("alice", "g.team", "bad");
        bad.content.reply_to = Some(u64::MAX);
        let results = commit(
            s,
            &[
                text("alice", "g.team", "one"),
                bad,
                text("bob", "g.team", "two"),
            ],
        );
        assert!(
            matches!(results[1], Err(AppendError::Store(_))),
            "{}: {:?}",
            b.name,
            results[1]
        );
        assert_eq!(results[2].as_ref().unwrap().envelope.seq, 2, "{}", b.name);
        let stored = s.after("g.team", 0, 10).unwrap().items;
        assert_eq!(texts(&stored), ["one", "two"], "{}", b.name);
    }
}

#[test]
fn search_matches_words_without_accents_and_cjk_text_as_substrings() {
    for b in backends() {
        let s = b.store.as_ref();
        commit(
            s,
            &[
                text("alice", "g.team", "Un café au lait"),
                text("alice", "g.team", "caffeine is not coffee"),
                text("alice", "g.team", "我们明天见面吧"),
                text("alice", "g.team", "東京タワーに行きました"),
                text("bob", "g.other", "another café"),
                text("alice", "g.team", "deleted café"),
            ],
        );
        // "deleted café" is g.team's fifth.
        commit(
            s,
            &[message(
                "alice",
                "g.team",
                content(Kind::Delete, None, Some(5)),
            )],
        );
        let team = ["g.team".to_string()];
        let found = |q: &str| texts(&s.search(&team, q, 10).unwrap());
        assert_eq!(found("cafe"), ["Un café au lait"], "{}", b.name);
        assert_eq!(found("CAFÉ"), ["Un café au lait"], "{}", b.name);
        assert_eq!(found("au lait"), ["Un café au lait"], "{}", b.name);
        assert!(
            found("lait au").is_empty(),
            "{}: a phrase, in order",
            b.name
        );
        assert!(found("caf").is_empty(), "{}: whole words", b.name);
        assert_eq!(found("明天"), ["我们明天见面吧"], "{}", b.name);
        assert_eq!(found("明天见面"), ["我们明天见面吧"], "{}", b.name);
        assert_eq!(found("タワー"), ["東京タワーに行きました"], "{}", b.name);
        assert!(
            found("\"; DROP TABLE messages; --").is_empty(),
            "{}",
            b.name
        );
        assert!(found("100%").is_empty(), "{}", b.name);
        // Newest first, and only the conversations asked for.
        let both = ["g.team".to_string(), "g.other".to_string()];
        assert_eq!(
            texts(&s.search(&both, "cafe", 10).unwrap()),
            ["another café", "Un café au lait"],
            "{}",
            b.name
        );
        assert!(s.search(&[], "cafe", 10).unwrap().is_empty(), "{}", b.name);
    }
}

#[test]
fn receipts_only_go_up_and_read_marks_stop_at_the_end() {
    for b in backends() {
        let s = b.store.as_ref();
        for user in ["alice", "bob"] {
            s.add_user(user, "h").unwrap();
        }
        let conv = "d.alice.bob";
        commit(
            s,
            &[
                text("alice", conv, "1"),
                text("alice", conv, "2"),
                text("bob", conv, "3"),
                text("alice", conv, "4"),
            ],
        );
        let row = |seq| (conv.to_string(), "bob".to_string(), seq);
        assert_eq!(
            s.mark_delivered(&[row(2), row(1)]).unwrap(),
            [true, false],
            "{}",
            b.name
        );
        assert_eq!(s.unread(conv, "bob").unwrap(), 3, "{}", b.name);
        assert_eq!(
            s.mark_read(conv, "bob", 2, false).unwrap(),
            Some(2),
            "{}",
            b.name
        );
        assert_eq!(
            s.mark_read(conv, "bob", 1, false).unwrap(),
            None,
            "{}",
            b.name
        );
        assert_eq!(s.unread(conv, "bob").unwrap(), 1, "{}", b.name);
        // Private marks count for unread but are not shown to others.
        assert_eq!(
            s.mark_read(conv, "bob", 99, true).unwrap(),
            Some(4),
            "{}",
            b.name
        );
        assert_eq!(s.unread(conv, "bob").unwrap(), 0, "{}", b.name);
        assert_eq!(
            s.receipts(conv).unwrap(),
            [("bob".to_string(), 2, 2)],
            "{}",
            b.name
        );
        assert_eq!(
            s.mark_read("d.alice.carol", "carol", 5, false).unwrap(),
            None,
            "{}",
            b.name
        );
    }
}

/// A delivered receipt batched before its user went (or left the group) is not stored: an
/// account created later under the same id would inherit it.
#[test]
fn receipts_of_users_no_longer_in_the_conversation_are_not_stored() {
    for b in backends() {
        let s = b.store.as_ref();
        for user in ["alice", "bob", "carol"] {
            s.add_user(user, "h").unwrap();
        }
        let members = [("alice", "owner"), ("carol", "member")];
        s.create_conversation("g.team", false, "Team", "alice", &members)
            .unwrap();
        commit(
            s,
            &[
                text("alice", "d.alice.bob", "hi"),
                text("alice", "g.team", "hi"),
            ],
        );
        assert!(s.remove_user("bob").unwrap(), "{}", b.name);
        assert!(s.remove_member("g.team", "carol").unwrap(), "{}", b.name);
        let rows = [
            ("d.alice.bob".to_string(), "bob".to_string(), 1),
            ("g.team".to_string(), "carol".to_string(), 1),
            ("g.team".to_string(), "alice".to_string(), 1),
        ];
        assert_eq!(
            s.mark_delivered(&rows).unwrap(),
            [false, false, true],
            "{}",
            b.name
        );
        assert!(s.receipts("d.alice.bob").unwrap().is_empty(), "{}", b.name);
        assert_eq!(
            s.receipts("g.team").unwrap(),
            [("alice".to_string(), 1, 0)],
            "{}",
            b.name
        );
    }
}

#[test]
fn retention_keeps_the_newest_per_conversation_and_numbering_goes_on() {
    for b in backends() {
        let s = b.store.as_ref();
        let batch: Vec<NewMessage> = (1..=5)
            .map(|i| text("alice", "g.team", &i.to_string()))
            .collect();
        commit(s, &batch);
        assert_eq!(s.enforce_retention(None, 2).unwrap(), 3, "{}", b.name);
        assert_eq!(
            texts(&s.after("g.team", 0, 10).unwrap().items),
            ["4", "5"],
            "{}",
            b.name
        );
        assert_eq!(s.first_seq("g.team").unwrap(), Some(4), "{}", b.name);
        assert_eq!(s.enforce_retention(None, 0).unwrap(), 0, "{}", b.name);
        let next = commit(s, &[text("alice", "g.team", "6")]);
        assert_eq!(seqs(&b, &next), [6], "{}", b.name);
        // Everything is older than a zero age... but only what was stored before now.
        std::thread::sleep(std::time::Duration::from_millis(5));
        assert_eq!(
            s.enforce_retention(Some(std::time::Duration::ZERO), 0)
                .unwrap(),
            3,
            "{}",
            b.name
        );
        assert_eq!(s.first_seq("g.team").unwrap(), None, "{}", b.name);
        let next = commit(s, &[text("alice", "g.team", "7")]);
        assert_eq!(seqs(&b, &next), [7], "{}", b.name);
    }
}

/// Several natter processes share one PostgreSQL database: each has its own writer. Writing to
/// the same conversation at once, they still number its messages 1, 2, 3… without a gap or a
/// repeat, and a message resent through another process (same cid) is stored once.
#[test]
fn writers_of_several_processes_share_a_conversation_without_gaps() {
    const WRITERS: usize = 4;
    const BATCHES: usize = 10;
    const PER_BATCH: usize = 25;
    for b in backends().into_iter().filter(|b| b.name == "postgres") {
        std::thread::scope(|scope| {
            for w in 0..WRITERS {
                let store = b.store.clone();
                scope.spawn(move || {
                    let mut log = store.log(Synchronous::Normal).unwrap();
                    for batch in 0..BATCHES {
                        let messages: Vec<NewMessage> = (0..PER_BATCH)
                            .map(|i| {
                                // Every writer also sends cid "shared-{batch}", as a client
                                // resending through another node would.
                                let cid = if i == 0 {
                                    format!("shared-{batch}")
                                } else {
                                    format!("w{w}-{batch}-{i}")
                                };
                                with_cid(text("alice", "g.team", &cid), &cid)
                            })
                            .collect();
                        let results = log
                            .commit(&messages.iter().collect::<Vec<_>>())
                            .unwrap()
                            .results;
                        assert!(results.iter().all(|r| r.is_ok()), "{results:?}");
                    }
                });
            }
        });
        let s = b.store.as_ref();
        let mut stored = Vec::new();
        let mut after = 0;
        loop {
            let page = s.after("g.team", after, 200).unwrap();
            after = page.items.last().map_or(after, |i| i.envelope.seq);
            stored.extend(page.items);
            if !page.more {
                break;
            }
        }
        let expected = BATCHES + WRITERS * BATCHES * (PER_BATCH - 1);
        assert_eq!(stored.len(), expected);
        for (i, item) in stored.iter().enumerate() {
            assert_eq!(item.envelope.seq, i as u64 + 1, "a gap or a repeat");
        }
        let cids: std::collections::HashSet<_> =
            stored.iter().map(|i| i.envelope.cid.clone()).collect();
        assert_eq!(cids.len(), expected, "a cid stored twice");
    }
}
