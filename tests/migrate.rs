//! `natter migrate-to-postgres`: a SQLite deployment built through the store interface is
//! copied by the real binary into a fresh PostgreSQL database, which then answers every read
//! of the interface as SQLite did, continues each conversation's numbering with new ids, and
//! refuses a second copy.
//!
//! Needs a PostgreSQL server (`NATTER_TEST_POSTGRES_URL`); without one it says so and passes.
//! Plain `#[test]`s: the synchronous PostgreSQL client panics inside a tokio runtime.

use std::path::Path;
use std::process::{Command, Output};

use natter::chat::envelope::{Content, Kind};
use natter::config::Synchronous;
use natter::store::messages::{Appended, NewMessage, Page};
use natter::store::postgres::{test_database, Postgres, TEST_URL_VAR};
use natter::store::sqlite::Sqlite;
use natter::store::{
    Accounts, Conversations, Devices, Directory, History, Media, MediaRow, Push, Receipts, Search,
    Store,
};
use natter::topics::direct_conv;

const TEAM: &str = "g.team";
/// Far in the future, in seconds: the refresh tokens stay valid.
const EXPIRES: i64 = 4_000_000_000;

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

/// Appends `batch` through the store's history writer connection, in one transaction.
fn commit(store: &dyn Store, batch: Vec<NewMessage>) -> Vec<Appended> {
    let mut log = store.log(Synchronous::Normal).expect("open the log");
    log.commit(&batch.iter().collect::<Vec<_>>())
        .expect("commit")
        .results
        .into_iter()
        .map(|r| r.expect("appended"))
        .collect()
}

fn migrate(data_dir: &Path, url: &str) -> Output {
    Command::new(env!("CARGO_BIN_EXE_natter"))
        .arg("migrate-to-postgres")
        .arg("--data-dir")
        .arg(data_dir)
        .args(["--to", url])
        .output()
        .expect("run natter")
}

/// A deployment with a bit of everything: accounts (one admin), devices (one revoked) with a
/// refresh token, a group with roles and a block, a direct conversation, messages with a
/// client id, packet id, reply and thread, an edit, a delete, reactions (one taken back),
/// text in accents and in Japanese, an upload referenced by a message, receipts public and
/// private, push endpoints. Then carol is removed, taking her direct conversation and its
/// messages (the newest ids) with her.
/// Returns the generation of alice's phone.
fn build(s: &Sqlite) -> String {
    for u in ["alice", "bob", "carol", "dave"] {
        s.add_user(u, &format!("hash-of-{u}")).unwrap();
    }
    s.set_admin("alice", true).unwrap();
    for (u, d) in [
        ("alice", "alice.phone"),
        ("alice", "alice.laptop"),
        ("bob", "bob.phone"),
    ] {
        s.upsert_device(u, d).unwrap();
    }
    let gen = s
        .add_refresh_token("r-alice", "alice", "alice.phone", EXPIRES)
        .unwrap()
        .expect("a generation");
    s.add_refresh_token("r-bob", "bob", "bob.phone", EXPIRES)
        .unwrap()
        .expect("a generation");
    s.revoke_device("alice", "alice.laptop").unwrap();

    s.create_conversation(
        TEAM,
        false,
        "The team",
        "alice",
        &[("alice", "owner"), ("bob", "member"), ("dave", "member")],
    )
    .unwrap();
    s.update_conversation(TEAM, "The team", "shipping").unwrap();
    s.set_member(TEAM, "bob", "admin").unwrap();
    let ab = direct_conv("alice", "bob");
    s.create_conversation(
        &ab,
        true,
        "",
        "alice",
        &[("alice", "member"), ("bob", "member")],
    )
    .unwrap();
    s.set_block("dave", "bob", true).unwrap();
    s.add_push_endpoint("alice", "https://push.example/a1")
        .unwrap();
    s.add_push_endpoint("alice", "https://push.example/a2")
        .unwrap();
    s.add_push_endpoint("bob", "https://push.example/b1")
        .unwrap();
    s.add_media(&MediaRow {
        id: "m-photo".into(),
        hash: "h-photo".into(),
        owner: "alice".into(),
        size: 12_345,
        mime: "image/png".into(),
    })
    .unwrap();
    s.add_media(&MediaRow {
        id: "m-unused".into(),
        hash: "h-unused".into(),
        owner: "bob".into(),
        size: 99,
        mime: "image/jpeg".into(),
    })
    .unwrap();

    let mut with_cid = text("alice", TEAM, "hello team, café at noon");
    with_cid.content.cid = Some("c-1".into());
    with_cid.pkid = Some(7);
    let mut photo = text("alice", TEAM, "the photo");
    photo.content.media = vec!["m-photo".into()];
    commit(
        s,
        vec![
            with_cid,                                  // 1
            text("bob", TEAM, "hello alice"),          // 2
            text("dave", TEAM, "typo heer"),           // 3
            text("alice", TEAM, "東京で会いましょう"), // 4
            photo,                                     // 5
            text("alice", &ab, "psst bob"),            // 1
            text("bob", &ab, "hello back"),            // 2
        ],
    );
    let mut reply = text("bob", TEAM, "replying in a thread");
    reply.content.reply_to = Some(2);
    reply.content.thread = Some(2);
    let mut react = message("bob", TEAM, content(Kind::React, None, Some(1)));
    react.content.emoji = Some("👍".into());
    let mut react2 = message("dave", TEAM, content(Kind::React, None, Some(1)));
    react2.content.emoji = Some("👍".into());
    let mut react3 = message("dave", TEAM, content(Kind::React, None, Some(4)));
    react3.content.emoji = Some("🎉".into());
    let mut unreact = message("dave", TEAM, content(Kind::Unreact, None, Some(4)));
    unreact.content.emoji = Some("🎉".into());
    commit(
        s,
        vec![
            reply, // 6
            message(
                "dave",
                TEAM,
                content(Kind::Edit, Some("typo here"), Some(3)),
            ), // 7
            message("bob", TEAM, content(Kind::Delete, None, Some(2))), // 8
            react, // 9
            react2, // 10
            react3, // 11
            unreact, // 12
        ],
    );

    s.mark_delivered(&[
        (TEAM.into(), "bob".into(), 9),
        (TEAM.into(), "dave".into(), 12),
        (ab.clone(), "bob".into(), 1),
    ])
    .unwrap();
    s.mark_read(TEAM, "bob", 5, false).unwrap();
    s.mark_read(TEAM, "dave", 8, true).unwrap();
    s.mark_read(&ab, "bob", 1, false).unwrap();

    // Carol's direct conversation holds the newest ids when she is removed.
    let ac = direct_conv("alice", "carol");
    s.create_conversation(
        &ac,
        true,
        "",
        "alice",
        &[("alice", "member"), ("carol", "member")],
    )
    .unwrap();
    commit(
        s,
        vec![text("carol", &ac, "bye"), text("alice", &ac, "bye carol")],
    );
    assert!(s.remove_user("carol").unwrap());
    gen
}

/// Everything a conversation holds, read through the interface.
#[derive(Debug, PartialEq, Eq)]
struct ConvState {
    after: Page,
    receipts: Vec<(String, u64, u64)>,
    unread: Vec<u64>,
    first_seq: Option<u64>,
}

/// A device as `Devices::devices` lists it.
type Device = (String, i64, bool);

/// Everything the deployment holds, read through the interface, in a comparable order.
#[derive(Debug, PartialEq, Eq)]
struct State {
    users: Vec<(String, bool, i64)>,
    conversations: Vec<(String, String, String)>,
    members: Vec<(String, String, String)>,
    blocks: Vec<(String, String)>,
    directory_version: i64,
    convs: Vec<(String, ConvState)>,
    stream: Page,
    /// Per user: (device, created_at, revoked).
    devices: Vec<(String, Vec<Device>)>,
    push: Vec<(String, Vec<String>)>,
    media: Vec<(String, Option<MediaRow>, Vec<String>)>,
    usage: Vec<(String, u64)>,
    direct: Vec<(String, Vec<String>)>,
    searches: Vec<(String, Vec<i64>)>,
}

const USERS: [&str; 4] = ["alice", "bob", "carol", "dave"];
const QUERIES: [&str; 5] = ["hello", "cafe", "東京で会", "here", "photo"];

fn state(s: &dyn Store) -> State {
    let snap = s.snapshot().unwrap();
    let mut users: Vec<_> = snap
        .users
        .iter()
        .map(|u| (u.id.clone(), u.admin, u.created_at))
        .collect();
    users.sort();
    let mut conversations: Vec<_> = snap
        .conversations
        .iter()
        .map(|c| (c.id.clone(), c.name.clone(), c.topic.clone()))
        .collect();
    conversations.sort();
    let mut members = snap.members.clone();
    members.sort();
    let mut blocks = snap.blocks.clone();
    blocks.sort();
    let conv_ids: Vec<String> = [
        TEAM.to_string(),
        direct_conv("alice", "bob"),
        direct_conv("alice", "carol"),
    ]
    .into();
    let convs = conv_ids
        .iter()
        .map(|c| {
            let state = ConvState {
                after: s.after(c, 0, 1000).unwrap(),
                receipts: {
                    let mut r = s.receipts(c).unwrap();
                    r.sort();
                    r
                },
                unread: USERS.iter().map(|u| s.unread(c, u).unwrap()).collect(),
                first_seq: s.first_seq(c).unwrap(),
            };
            (c.clone(), state)
        })
        .collect();
    State {
        users,
        conversations,
        members,
        blocks,
        directory_version: s.directory_version().unwrap(),
        convs,
        stream: s.since(&conv_ids, 0, 1000).unwrap(),
        devices: USERS
            .iter()
            .map(|u| {
                let mut d = s.devices(u).unwrap();
                d.sort();
                (u.to_string(), d)
            })
            .collect(),
        push: USERS
            .iter()
            .map(|u| {
                let mut p = s.push_endpoints(u).unwrap();
                p.sort();
                (u.to_string(), p)
            })
            .collect(),
        media: ["m-photo", "m-unused", "m-none"]
            .iter()
            .map(|m| {
                (
                    m.to_string(),
                    s.media(m).unwrap(),
                    s.media_conversations(m).unwrap(),
                )
            })
            .collect(),
        usage: USERS
            .iter()
            .map(|u| (u.to_string(), s.media_usage(u).unwrap()))
            .collect(),
        direct: USERS
            .iter()
            .map(|u| {
                let mut d = s.direct_conversations(u).unwrap();
                d.sort();
                (u.to_string(), d)
            })
            .collect(),
        searches: QUERIES
            .iter()
            .map(|q| {
                let ids = s
                    .search(&conv_ids, q, 100)
                    .unwrap()
                    .iter()
                    .map(|i| i.envelope.id)
                    .collect();
                (q.to_string(), ids)
            })
            .collect(),
    }
}

/// The target database, or `None` after saying why the test is skipped.
fn target() -> Option<String> {
    let url = test_database();
    if url.is_none() {
        eprintln!("SKIPPED: migrating SQLite to PostgreSQL ({TEST_URL_VAR} is not set)");
    }
    url
}

#[test]
fn a_sqlite_deployment_moves_to_postgres_intact() {
    let Some(url) = target() else { return };
    let dir = tempfile::tempdir().unwrap();
    let sqlite = Sqlite::open(dir.path()).unwrap();
    let gen = build(&sqlite);
    let before = state(&sqlite);
    // The fixture is what it should be, or the comparison below proves little.
    let team = &before.convs[0].1;
    assert_eq!(team.after.items.len(), 12);
    assert!(team.after.items[1].deleted && team.after.items[2].edited);
    assert_eq!(team.after.items[0].reactions.get("👍"), Some(&2));
    assert_eq!(team.after.items[4].envelope.media, ["m-photo"]);
    assert!(before.convs[2].1.after.items.is_empty());
    for (q, ids) in &before.searches {
        assert!(!ids.is_empty(), "SQLite finds nothing for {q}");
    }

    let out = migrate(dir.path(), &url);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    assert!(stdout.contains("users 3,"), "{stdout}");
    assert!(stdout.contains("messages 14,"), "{stdout}");
    assert!(
        !stdout.contains(&url),
        "the URL may hold a password: {stdout}"
    );

    let pg = Postgres::open(&url).unwrap();
    let after = state(&pg);
    assert_eq!(after, before);

    // What the state does not show: password hashes, token generations, the refresh tokens.
    for u in ["alice", "bob", "dave"] {
        assert_eq!(
            pg.login_info(u).unwrap(),
            sqlite.login_info(u).unwrap(),
            "{u}"
        );
    }
    assert_eq!(
        pg.take_refresh_token("r-alice", 1).unwrap(),
        Some(("alice".into(), "alice.phone".into()))
    );
    assert_eq!(pg.take_refresh_token("r-alice", 1).unwrap(), None);
    assert_eq!(
        pg.take_refresh_token("r-bob", 1).unwrap(),
        Some(("bob".into(), "bob.phone".into()))
    );
    assert!(pg.token_current("alice", "alice.phone", &gen).unwrap());
    assert!(!pg.token_current("alice", "alice.laptop", "").unwrap());
    assert!(!pg.token_current("alice", "alice.laptop", &gen).unwrap());

    // The numbering goes on: the next seq of each conversation, an id past every id SQLite
    // handed out (carol's deleted messages included).
    let last_id = sqlite
        .since(&[TEAM.into()], 0, 1000)
        .unwrap()
        .items
        .last()
        .map(|i| i.envelope.id)
        .unwrap();
    let ab = direct_conv("alice", "bob");
    let appended = commit(
        &pg,
        vec![
            text("bob", TEAM, "first on postgres"),
            text("alice", &ab, "me too"),
        ],
    );
    assert_eq!(appended[0].envelope.seq, 13);
    assert_eq!(appended[1].envelope.seq, 3);
    assert!(
        appended[0].envelope.id > last_id + 2,
        "id {} reuses one of SQLite's (last {last_id}, then carol's two)",
        appended[0].envelope.id
    );
    assert!(appended[1].envelope.id > appended[0].envelope.id);
    assert_eq!(
        pg.unread(TEAM, "alice").unwrap(),
        sqlite.unread(TEAM, "alice").unwrap() + 1
    );
    assert_eq!(
        pg.search(&[TEAM.into()], "postgres", 10).unwrap()[0]
            .envelope
            .id,
        appended[0].envelope.id
    );

    // A second copy into the same database is refused and changes nothing.
    let changed = state(&pg);
    let again = migrate(dir.path(), &url);
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(!again.status.success(), "a second migration succeeded");
    assert!(
        stderr.contains("already holds data") && stderr.contains("users"),
        "{stderr}"
    );
    assert!(again.stdout.is_empty());
    assert_eq!(state(&pg), changed);
}

#[test]
fn a_missing_sqlite_database_is_named_and_creates_nothing() {
    let Some(url) = target() else { return };
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nowhere");
    let out = migrate(&missing, &url);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("no SQLite database at"), "{stderr}");
    assert!(!missing.exists(), "an empty database was created");
}

/// The target's indexes on `messages`, by name.
fn message_indexes(url: &str) -> Vec<String> {
    let mut client = postgres::Client::connect(url, postgres::NoTls).unwrap();
    client
        .query(
            "SELECT indexname FROM pg_indexes WHERE tablename = 'messages' ORDER BY indexname",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

#[test]
fn a_copy_that_fails_halfway_leaves_the_target_as_it_was() {
    let Some(url) = target() else { return };
    let pg = Postgres::open(&url).unwrap();
    let indexes = message_indexes(&url);
    let version = pg.directory_version().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let sqlite = Sqlite::open(dir.path()).unwrap();
    build(&sqlite);
    // A packet id SQLite took but PostgreSQL's `integer` cannot hold: the copy fails at the
    // messages, after the accounts and conversations went over.
    let raw = rusqlite::Connection::open(dir.path().join("natter.db")).unwrap();
    raw.execute("UPDATE messages SET pkid = 3000000000 WHERE id = 3", [])
        .unwrap();

    let out = migrate(dir.path(), &url);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("messages.pkid holds 3000000000"),
        "{stderr}"
    );
    assert!(pg.list_users().unwrap().is_empty());
    assert!(pg.snapshot().unwrap().conversations.is_empty());
    assert_eq!(pg.directory_version().unwrap(), version);
    assert_eq!(message_indexes(&url), indexes);

    // Mended, the same target takes the copy, and ends up as a fresh one would: its indexes
    // all there, its directory triggers on.
    raw.execute("UPDATE messages SET pkid = 7 WHERE id = 3", [])
        .unwrap();
    let out = migrate(dir.path(), &url);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(message_indexes(&url), indexes);
    assert_eq!(state(&pg), state(&sqlite));
    let copied = pg.directory_version().unwrap();
    pg.add_user("zed", "hash").unwrap();
    assert!(pg.directory_version().unwrap() > copied);
}
