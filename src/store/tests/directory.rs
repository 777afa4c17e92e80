//! Accounts, devices and refresh tokens, conversations, the directory, media and push
//! endpoints, on every backend: each scenario runs on a fresh store of each, and names the
//! backend when it fails.

use super::backends;
use crate::chat::envelope::{Content, Envelope, Kind};
use crate::config::Synchronous;
use crate::store::clock::now;
use crate::store::messages::NewMessage;
use crate::store::*;

/// Far enough ahead that a refresh token does not expire during a test.
const LATER: i64 = i64::MAX / 2;

/// Appends a text message through the backend's history log, as the writer thread does, and
/// returns what was stored (`duplicate` too).
fn append(
    log: &mut Box<dyn Log>,
    conv: &str,
    sender: &str,
    cid: &str,
    text: &str,
    media: &[&str],
) -> (Envelope, bool) {
    let m = NewMessage {
        conv: conv.into(),
        sender: sender.into(),
        device: format!("{sender}.phone"),
        pkid: None,
        dup: false,
        moderator: false,
        content: Content {
            kind: Kind::Msg,
            cid: Some(cid.into()),
            text: Some(text.into()),
            reply_to: None,
            thread: None,
            target: None,
            emoji: None,
            media: media.iter().map(|m| m.to_string()).collect(),
        },
    };
    let mut results = log.commit(&[&m]).expect("commit").results;
    let appended = results.remove(0).expect("appended");
    (appended.envelope, appended.duplicate)
}

fn upload(id: &str, hash: &str, owner: &str, size: u64) -> MediaRow {
    MediaRow {
        id: id.into(),
        hash: hash.into(),
        owner: owner.into(),
        size,
        mime: "image/png".into(),
    }
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

/// The ids of a snapshot's conversations, sorted.
fn conversation_ids(s: &dyn Store) -> Vec<String> {
    sorted(
        s.snapshot()
            .expect("snapshot")
            .conversations
            .into_iter()
            .map(|c| c.id)
            .collect(),
    )
}

/// A snapshot's members, sorted.
fn members(s: &dyn Store) -> Vec<(String, String, String)> {
    let mut m = s.snapshot().expect("snapshot").members;
    m.sort();
    m
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[test]
fn users_conversations_and_cascades() {
    for b in backends() {
        let (s, n) = (&*b.store, b.name);
        s.add_user("alice", "h1").unwrap();
        s.add_user("bob", "h2").unwrap();
        assert!(
            matches!(s.add_user("bob", "x"), Err(StoreError::Exists(_))),
            "{n}: a taken id"
        );
        assert_eq!(
            s.login_info("bob").unwrap(),
            Some(("h2".to_string(), false)),
            "{n}"
        );
        assert!(s.set_admin("alice", true).unwrap(), "{n}");
        s.create_conversation(
            "g.t",
            false,
            "Team",
            "alice",
            &[("alice", "owner"), ("bob", "member")],
        )
        .unwrap();
        s.add_user("b_b", "h3").unwrap();
        s.add_media(&upload("m1", "blob1", "alice", 10)).unwrap();
        // Direct conversations as production makes them: the history writer adds their row
        // with the first message, and no member rows.
        let mut log = s.log(Synchronous::Normal).unwrap();
        for (conv, sender, cid, media) in [
            ("d.alice.bob", "alice", "c1", &["m1"][..]),
            ("d.alice.bob", "bob", "c2", &[][..]),
            ("d.alice.b_b", "b_b", "c3", &[][..]),
            ("g.t", "bob", "c4", &[][..]),
        ] {
            append(&mut log, conv, sender, cid, "secret", media);
        }
        s.mark_delivered(&[
            ("d.alice.bob".into(), "alice".into(), 1),
            ("d.alice.bob".into(), "bob".into(), 2),
            ("g.t".into(), "bob".into(), 1),
            // A direct conversation known from a receipt alone (no entry, no row).
            ("d.b_b.bob".into(), "bob".into(), 1),
        ])
        .unwrap();
        assert_eq!(s.media_conversations("m1").unwrap(), ["d.alice.bob"], "{n}");
        s.set_block("bob", "alice", true).unwrap();
        let snap = s.snapshot().unwrap();
        assert_eq!(snap.users.len(), 3, "{n}");
        assert_eq!(snap.members.len(), 2, "{n}");
        assert_eq!(
            snap.blocks,
            [("bob".to_string(), "alice".to_string())],
            "{n}"
        );
        assert_eq!(
            conversation_ids(s),
            ["d.alice.b_b", "d.alice.bob", "g.t"],
            "{n}: the writer added the direct conversations' rows"
        );

        // `_` is a LIKE wildcard: removing b_b must not touch bob's conversation.
        assert!(s.remove_user("b_b").unwrap(), "{n}");
        assert!(
            s.after("d.alice.b_b", 0, 10).unwrap().items.is_empty(),
            "{n}: b_b's direct history went with them"
        );
        assert_eq!(s.after("d.alice.bob", 0, 10).unwrap().items.len(), 2, "{n}");
        assert!(
            s.receipts("d.b_b.bob").unwrap().is_empty(),
            "{n}: the receipts of a direct conversation with no row went too"
        );
        assert_eq!(
            conversation_ids(s),
            ["d.alice.bob", "g.t"],
            "{n}: only b_b's direct conversation went"
        );

        assert!(s.remove_user("bob").unwrap(), "{n}");
        assert!(!s.remove_user("bob").unwrap(), "{n}: already gone");
        assert!(
            s.after("d.alice.bob", 0, 10).unwrap().items.is_empty(),
            "{n}: the direct history went with bob"
        );
        let everywhere = strings(&["d.alice.bob", "d.alice.b_b", "g.t"]);
        let found = s.search(&everywhere, "secret", 10).unwrap();
        assert_eq!(
            found.len(),
            1,
            "{n}: only bob's group message is still found: {found:?}"
        );
        assert_eq!(found[0].envelope.conv, "g.t", "{n}");
        for conv in ["d.alice.bob", "g.t"] {
            assert!(
                s.receipts(conv).unwrap().is_empty(),
                "{n}: bob's receipts and those of his direct conversations went with him ({conv})"
            );
        }
        assert!(
            s.media_conversations("m1").unwrap().is_empty(),
            "{n}: the media references of the direct history went with it"
        );
        let group = s.after("g.t", 0, 10).unwrap().items;
        assert_eq!(group.len(), 1, "{n}: bob's group message stays");
        assert_eq!(
            group[0].envelope.cid, None,
            "{n}: no longer matchable as a later bob's resend"
        );
        let snap = s.snapshot().unwrap();
        assert_eq!(
            snap.members,
            [("g.t".to_string(), "alice".to_string(), "owner".to_string())],
            "{n}"
        );
        assert_eq!(
            conversation_ids(s),
            ["g.t"],
            "{n}: the direct conversation went with bob"
        );
        assert!(snap.blocks.is_empty(), "{n}");

        // A later account under the same id inherits nothing, and its resend of "c4" is a new
        // message.
        s.add_user("bob", "h4").unwrap();
        let (again, duplicate) = append(&mut log, "g.t", "bob", "c4", "new", &[]);
        assert!(!duplicate, "{n}: not the old bob's message");
        assert_eq!(again.seq, 2, "{n}");
        // The direct conversation's numbering goes on past what alice's devices have seen.
        let (next, _) = append(&mut log, "d.alice.bob", "alice", "c5", "hi", &[]);
        assert_eq!(next.seq, 3, "{n}: sequence numbers never go back");
        assert_eq!(s.list_users().unwrap()[0].id, "alice", "{n}");
    }
}

#[test]
fn accounts() {
    for b in backends() {
        let (s, n) = (&*b.store, b.name);
        assert!(!s.user_exists("carol").unwrap(), "{n}");
        assert_eq!(s.login_info("carol").unwrap(), None, "{n}");
        assert!(!s.set_admin("carol", true).unwrap(), "{n}: no such user");
        assert!(!s.set_password("carol", "h").unwrap(), "{n}: no such user");
        assert!(!s.remove_user("carol").unwrap(), "{n}: no such user");
        for id in ["carol", "alice", "bob"] {
            s.add_user(id, &format!("hash-{id}")).unwrap();
        }
        assert!(s.user_exists("carol").unwrap(), "{n}");
        let before = now();
        assert!(s.set_admin("bob", true).unwrap(), "{n}");
        let users = s.list_users().unwrap();
        assert_eq!(
            users.iter().map(|u| u.id.as_str()).collect::<Vec<_>>(),
            ["alice", "bob", "carol"],
            "{n}: listed by id"
        );
        assert_eq!(
            users.iter().map(|u| u.admin).collect::<Vec<_>>(),
            [false, true, false],
            "{n}"
        );
        assert!(
            users
                .iter()
                .all(|u| u.created_at > 0 && u.created_at <= before),
            "{n}: created_at in seconds: {users:?}"
        );
        assert_eq!(
            s.login_info("bob").unwrap(),
            Some(("hash-bob".to_string(), true)),
            "{n}"
        );
        assert!(s.set_admin("bob", false).unwrap(), "{n}");
        assert!(s.set_password("bob", "new").unwrap(), "{n}");
        assert_eq!(
            s.login_info("bob").unwrap(),
            Some(("new".to_string(), false)),
            "{n}"
        );
    }
}

#[test]
fn devices_and_refresh_tokens() {
    for b in backends() {
        let (s, n) = (&*b.store, b.name);
        s.add_user("alice", "h").unwrap();
        assert_eq!(
            s.add_refresh_token("r0", "alice", "phone", LATER).unwrap(),
            None,
            "{n}: an unknown device gets no token"
        );
        assert!(!s.revoke_device("alice", "phone").unwrap(), "{n}: unknown");
        s.upsert_device("alice", "phone").unwrap();
        s.upsert_device("alice", "phone").unwrap();
        s.upsert_device("alice", "laptop").unwrap();
        let devices = s.devices("alice").unwrap();
        assert_eq!(
            devices
                .iter()
                .map(|(d, _, revoked)| (d.as_str(), *revoked))
                .collect::<Vec<_>>(),
            [("laptop", false), ("phone", false)],
            "{n}: one row per device, by name"
        );
        assert!(devices.iter().all(|(_, at, _)| *at > 0), "{n}");
        assert!(
            !s.token_current("alice", "phone", "").unwrap(),
            "{n}: a new device starts at a random generation"
        );

        let gen = s
            .add_refresh_token("r1", "alice", "phone", LATER)
            .unwrap()
            .expect("an active device gets a token");
        assert_eq!(gen.len(), 16, "{n}: 64 bits in hex: {gen}");
        assert!(
            gen.bytes()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()),
            "{n}"
        );
        assert!(s.token_current("alice", "phone", &gen).unwrap(), "{n}");
        assert!(
            !s.token_current("alice", "laptop", &gen).unwrap(),
            "{n}: each device has its own generation"
        );
        assert!(!s.token_current("bob", "phone", &gen).unwrap(), "{n}");
        let laptop = s.add_refresh_token("r2", "alice", "laptop", LATER).unwrap();
        assert_ne!(laptop.as_deref(), Some(gen.as_str()), "{n}");

        // Rotation: each token is taken once.
        assert_eq!(
            s.take_refresh_token("r1", now()).unwrap(),
            Some(("alice".to_string(), "phone".to_string())),
            "{n}"
        );
        assert_eq!(
            s.take_refresh_token("r1", now()).unwrap(),
            None,
            "{n}: used"
        );
        assert_eq!(s.take_refresh_token("nope", now()).unwrap(), None, "{n}");
        assert!(
            s.token_current("alice", "phone", &gen).unwrap(),
            "{n}: taking a refresh token keeps the generation"
        );

        // An expired token is refused, and gone.
        s.add_refresh_token("r3", "alice", "phone", 100).unwrap();
        assert_eq!(
            s.take_refresh_token("r3", 100).unwrap(),
            None,
            "{n}: expired"
        );
        assert_eq!(
            s.take_refresh_token("r3", 50).unwrap(),
            None,
            "{n}: removed"
        );

        // Revoking ends the device's access and refresh tokens.
        s.add_refresh_token("r4", "alice", "phone", LATER).unwrap();
        assert!(s.revoke_device("alice", "phone").unwrap(), "{n}");
        assert!(!s.token_current("alice", "phone", &gen).unwrap(), "{n}");
        assert_eq!(s.take_refresh_token("r4", now()).unwrap(), None, "{n}");
        assert_eq!(
            s.add_refresh_token("r5", "alice", "phone", LATER).unwrap(),
            None,
            "{n}: a revoked device gets no token"
        );
        assert!(
            s.devices("alice")
                .unwrap()
                .contains(&("phone".to_string(), devices[1].1, true)),
            "{n}: listed as revoked"
        );
        assert_eq!(
            s.take_refresh_token("r2", now()).unwrap(),
            Some(("alice".to_string(), "laptop".to_string())),
            "{n}: the other device's token still works"
        );

        // Logging in again restores the device, under a new generation: no old token
        // comes back.
        s.upsert_device("alice", "phone").unwrap();
        assert!(!s.token_current("alice", "phone", &gen).unwrap(), "{n}");
        let renewed = s
            .add_refresh_token("r6", "alice", "phone", LATER)
            .unwrap()
            .expect("restored");
        assert_ne!(renewed, gen, "{n}");
        assert!(s.token_current("alice", "phone", &renewed).unwrap(), "{n}");
        assert!(
            s.devices("alice")
                .unwrap()
                .iter()
                .all(|(_, _, revoked)| !revoked),
            "{n}"
        );

        // A later account under the same id has none of the old devices.
        assert!(s.remove_user("alice").unwrap(), "{n}");
        s.add_user("alice", "h").unwrap();
        assert!(s.devices("alice").unwrap().is_empty(), "{n}");
        assert!(!s.token_current("alice", "phone", &renewed).unwrap(), "{n}");
        assert_eq!(s.take_refresh_token("r6", now()).unwrap(), None, "{n}");
    }
}

#[test]
fn password_change_ends_every_token() {
    for b in backends() {
        let (s, n) = (&*b.store, b.name);
        for user in ["alice", "bob"] {
            s.add_user(user, "h").unwrap();
            for device in ["phone", "laptop"] {
                s.upsert_device(user, device).unwrap();
            }
        }
        let mut old = Vec::new();
        for (hash, device) in [("a1", "phone"), ("a2", "laptop")] {
            old.push(
                s.add_refresh_token(hash, "alice", device, LATER)
                    .unwrap()
                    .unwrap(),
            );
        }
        let bobs = s
            .add_refresh_token("b1", "bob", "phone", LATER)
            .unwrap()
            .unwrap();

        assert!(s.set_password("alice", "h2").unwrap(), "{n}");
        for (device, gen) in ["phone", "laptop"].iter().zip(&old) {
            assert!(
                !s.token_current("alice", device, gen).unwrap(),
                "{n}: {device}'s access tokens end"
            );
        }
        for hash in ["a1", "a2"] {
            assert_eq!(
                s.take_refresh_token(hash, now()).unwrap(),
                None,
                "{n}: {hash}"
            );
        }
        let phone = s
            .add_refresh_token("a3", "alice", "phone", LATER)
            .unwrap()
            .unwrap();
        let laptop = s
            .add_refresh_token("a4", "alice", "laptop", LATER)
            .unwrap()
            .unwrap();
        assert!(
            !old.contains(&phone) && !old.contains(&laptop),
            "{n}: new generations"
        );
        assert_ne!(phone, laptop, "{n}: each device gets its own generation");
        assert!(
            s.devices("alice")
                .unwrap()
                .iter()
                .all(|(_, _, revoked)| !revoked),
            "{n}: the devices stay, active"
        );
        assert_eq!(
            s.take_refresh_token("a3", now()).unwrap(),
            Some(("alice".to_string(), "phone".to_string())),
            "{n}: tokens issued after the change work"
        );
        assert!(
            s.token_current("bob", "phone", &bobs).unwrap(),
            "{n}: other users keep theirs"
        );
        assert_eq!(
            s.take_refresh_token("b1", now()).unwrap(),
            Some(("bob".to_string(), "phone".to_string())),
            "{n}"
        );
    }
}

#[test]
fn conversations_members_and_blocks() {
    for b in backends() {
        let (s, n) = (&*b.store, b.name);
        for user in ["alice", "bob", "carol"] {
            s.add_user(user, "h").unwrap();
        }
        s.create_conversation("g.x", false, "X", "alice", &[("alice", "owner")])
            .unwrap();
        assert!(
            matches!(
                s.create_conversation("g.x", false, "Y", "bob", &[("bob", "owner")]),
                Err(StoreError::Exists(_))
            ),
            "{n}: a taken id"
        );
        let row = |user: &str, role: &str| ("g.x".to_string(), user.to_string(), role.to_string());
        assert_eq!(
            members(s),
            [row("alice", "owner")],
            "{n}: the refused creation added nobody"
        );
        let snap = s.snapshot().unwrap();
        assert_eq!(
            (
                snap.conversations[0].name.as_str(),
                snap.conversations[0].topic.as_str()
            ),
            ("X", ""),
            "{n}: nor renamed anything"
        );

        s.set_member("g.x", "bob", "member").unwrap();
        s.set_member("g.x", "carol", "member").unwrap();
        s.set_member("g.x", "bob", "admin").unwrap();
        assert_eq!(
            members(s),
            [
                row("alice", "owner"),
                row("bob", "admin"),
                row("carol", "member")
            ],
            "{n}: added, and a role changed"
        );
        s.transfer_ownership("g.x", "alice", "carol").unwrap();
        assert_eq!(
            members(s),
            [
                row("alice", "admin"),
                row("bob", "admin"),
                row("carol", "owner")
            ],
            "{n}: ownership moved"
        );
        assert!(s.remove_member("g.x", "bob").unwrap(), "{n}");
        assert!(
            !s.remove_member("g.x", "bob").unwrap(),
            "{n}: no longer one"
        );
        assert!(!s.remove_member("g.nope", "alice").unwrap(), "{n}");
        assert_eq!(
            members(s),
            [row("alice", "admin"), row("carol", "owner")],
            "{n}"
        );
        assert!(
            s.set_member("g.x", "nobody", "member").is_err(),
            "{n}: members are users"
        );

        s.update_conversation("g.x", "New name", "A topic").unwrap();
        s.update_conversation("g.nope", "N", "T").unwrap();
        let snap = s.snapshot().unwrap();
        assert_eq!(snap.conversations.len(), 1, "{n}");
        assert_eq!(
            snap.conversations[0],
            ConversationRow {
                id: "g.x".into(),
                name: "New name".into(),
                topic: "A topic".into()
            },
            "{n}"
        );

        s.set_block("alice", "bob", true).unwrap();
        s.set_block("alice", "bob", true).unwrap();
        s.set_block("carol", "alice", true).unwrap();
        let mut blocks = s.snapshot().unwrap().blocks;
        blocks.sort();
        assert_eq!(
            blocks,
            [
                ("alice".to_string(), "bob".to_string()),
                ("carol".to_string(), "alice".to_string())
            ],
            "{n}: blocking twice is blocking once"
        );
        s.set_block("alice", "bob", false).unwrap();
        s.set_block("alice", "bob", false).unwrap();
        assert_eq!(
            s.snapshot().unwrap().blocks,
            [("carol".to_string(), "alice".to_string())],
            "{n}"
        );

        // Direct conversations are found by their id, exactly: `_` matches only itself.
        for (id, direct) in [
            ("d.a_c.bob", true),
            ("d.0.a_c", true),
            ("d.a_c.zed", true),
            ("d.abc.bob", true),
            ("d.a_cc.bob", true),
            ("d.a_c.yy", false),
        ] {
            s.create_conversation(id, direct, "", "a_c", &[]).unwrap();
        }
        assert_eq!(
            sorted(s.direct_conversations("a_c").unwrap()),
            ["d.0.a_c", "d.a_c.bob", "d.a_c.zed"],
            "{n}"
        );
        assert_eq!(
            sorted(s.direct_conversations("bob").unwrap()),
            ["d.a_c.bob", "d.a_cc.bob", "d.abc.bob"],
            "{n}"
        );
        assert!(s.direct_conversations("a").unwrap().is_empty(), "{n}");
        assert!(
            s.direct_conversations("alice").unwrap().is_empty(),
            "{n}: groups are not direct conversations"
        );
    }
}

#[test]
fn directory_version_follows_every_change_and_only_changes() {
    fn raises(s: &dyn Store, n: &str, what: &str, f: impl FnOnce()) {
        let before = s.directory_version().unwrap();
        f();
        let after = s.directory_version().unwrap();
        assert!(
            after > before,
            "{n}: {what} must raise the directory version"
        );
    }
    fn keeps(s: &dyn Store, n: &str, what: &str, f: impl FnOnce()) {
        let before = s.directory_version().unwrap();
        f();
        let after = s.directory_version().unwrap();
        assert_eq!(
            after, before,
            "{n}: {what} changes nothing in the directory"
        );
    }

    for b in backends() {
        let (s, n) = (&*b.store, b.name);
        raises(s, n, "add_user", || s.add_user("alice", "h").unwrap());
        s.add_user("bob", "h").unwrap();
        s.add_user("carol", "h").unwrap();
        keeps(s, n, "add_user of a taken id", || {
            assert!(s.add_user("alice", "h").is_err())
        });
        raises(s, n, "set_admin", || {
            assert!(s.set_admin("alice", true).unwrap())
        });
        keeps(s, n, "set_admin of nobody", || {
            assert!(!s.set_admin("nobody", true).unwrap())
        });
        raises(s, n, "set_password", || {
            assert!(s.set_password("alice", "h2").unwrap())
        });
        keeps(s, n, "set_password of nobody", || {
            assert!(!s.set_password("nobody", "h2").unwrap())
        });
        raises(s, n, "create_conversation", || {
            s.create_conversation("g.x", false, "X", "alice", &[("alice", "owner")])
                .unwrap()
        });
        keeps(s, n, "create_conversation of a taken id", || {
            assert!(s
                .create_conversation("g.x", false, "X", "bob", &[])
                .is_err())
        });
        raises(s, n, "set_member (new)", || {
            s.set_member("g.x", "bob", "member").unwrap()
        });
        raises(s, n, "set_member (role)", || {
            s.set_member("g.x", "bob", "admin").unwrap()
        });
        raises(s, n, "transfer_ownership", || {
            s.transfer_ownership("g.x", "alice", "bob").unwrap()
        });
        keeps(s, n, "transfer_ownership in no conversation", || {
            s.transfer_ownership("g.nope", "alice", "bob").unwrap()
        });
        raises(s, n, "update_conversation", || {
            s.update_conversation("g.x", "Y", "T").unwrap()
        });
        keeps(s, n, "update_conversation of no conversation", || {
            s.update_conversation("g.nope", "Y", "T").unwrap()
        });
        raises(s, n, "remove_member", || {
            assert!(s.remove_member("g.x", "alice").unwrap())
        });
        keeps(s, n, "remove_member of a non-member", || {
            assert!(!s.remove_member("g.x", "alice").unwrap())
        });
        raises(s, n, "set_block (on)", || {
            s.set_block("alice", "bob", true).unwrap()
        });
        keeps(s, n, "set_block (on) again", || {
            s.set_block("alice", "bob", true).unwrap()
        });
        raises(s, n, "set_block (off)", || {
            s.set_block("alice", "bob", false).unwrap()
        });
        keeps(s, n, "set_block (off) again", || {
            s.set_block("alice", "bob", false).unwrap()
        });
        keeps(s, n, "devices, tokens, media and push endpoints", || {
            s.upsert_device("carol", "phone").unwrap();
            s.add_refresh_token("r", "carol", "phone", LATER).unwrap();
            s.revoke_device("carol", "phone").unwrap();
            s.add_media(&upload("m", "h", "carol", 1)).unwrap();
            s.add_push_endpoint("carol", "https://push.example/1")
                .unwrap();
        });
        let mut log = s.log(Synchronous::Normal).unwrap();
        raises(s, n, "a direct conversation's first message", || {
            append(&mut log, "d.alice.carol", "alice", "c1", "hi", &[]);
        });
        keeps(s, n, "a direct conversation's later messages", || {
            append(&mut log, "d.alice.carol", "carol", "c2", "hi", &[]);
        });
        keeps(s, n, "remove_user of nobody", || {
            assert!(!s.remove_user("nobody").unwrap())
        });
        raises(s, n, "remove_user", || {
            assert!(s.remove_user("carol").unwrap())
        });
    }
}

#[test]
fn media_rows_references_and_release() {
    for b in backends() {
        let (s, n) = (&*b.store, b.name);
        s.add_user("alice", "h").unwrap();
        assert_eq!(s.media("m1").unwrap(), None, "{n}");
        assert_eq!(s.media_usage("alice").unwrap(), 0, "{n}: nothing uploaded");
        assert!(!s.media_hash_in_use("blob1").unwrap(), "{n}");
        let m1 = upload("m1", "blob1", "alice", 1000);
        s.add_media(&m1).unwrap();
        s.add_media(&upload("m2", "blob1", "alice", 1000)).unwrap();
        s.add_media(&upload("m3", "blob3", "alice", 24)).unwrap();
        s.add_media(&upload("m4", "blob4", "bob", 7)).unwrap();
        assert!(
            s.add_media(&upload("big", "blob5", "alice", u64::MAX))
                .is_err(),
            "{n}: a size past i64 is refused"
        );
        assert_eq!(s.media("m1").unwrap(), Some(m1), "{n}");
        assert!(s.media_hash_in_use("blob1").unwrap(), "{n}");
        assert_eq!(s.media_usage("alice").unwrap(), 2024, "{n}");
        assert_eq!(s.media_usage("bob").unwrap(), 7, "{n}");

        let mut log = s.log(Synchronous::Normal).unwrap();
        append(&mut log, "d.alice.bob", "alice", "c1", "look", &["m1"]);
        append(&mut log, "g.t", "alice", "c2", "look", &["m1", "m3"]);
        assert_eq!(
            sorted(s.media_conversations("m1").unwrap()),
            ["d.alice.bob", "g.t"],
            "{n}"
        );
        assert_eq!(s.media_conversations("m3").unwrap(), ["g.t"], "{n}");
        assert!(s.media_conversations("m2").unwrap().is_empty(), "{n}");

        assert!(
            s.release_unreferenced_media(3600).unwrap().is_empty(),
            "{n}: fresh uploads stay"
        );
        assert_eq!(s.media_usage("alice").unwrap(), 2024, "{n}");
        // A negative age puts the cutoff in the future: every unreferenced upload is old
        // enough.
        let released = sorted(s.release_unreferenced_media(-10).unwrap());
        assert_eq!(
            released,
            ["blob4"],
            "{n}: m2 went, but its blob is still m1's; m4's blob is free"
        );
        assert_eq!(s.media("m2").unwrap(), None, "{n}");
        assert_eq!(s.media("m4").unwrap(), None, "{n}");
        assert!(s.media("m1").unwrap().is_some(), "{n}: referenced");
        assert!(s.media("m3").unwrap().is_some(), "{n}: referenced");
        assert_eq!(s.media_usage("alice").unwrap(), 1024, "{n}");
        assert!(
            s.release_unreferenced_media(-10).unwrap().is_empty(),
            "{n}: nothing left to release"
        );
    }
}

#[test]
fn push_endpoints() {
    for b in backends() {
        let (s, n) = (&*b.store, b.name);
        for user in ["alice", "bob"] {
            s.add_user(user, "h").unwrap();
        }
        let (one, two) = ("https://push.example/2", "https://push.example/1");
        assert!(s.push_endpoints("alice").unwrap().is_empty(), "{n}");
        s.add_push_endpoint("alice", one).unwrap();
        s.add_push_endpoint("alice", one).unwrap();
        s.add_push_endpoint("alice", two).unwrap();
        s.add_push_endpoint("bob", one).unwrap();
        assert_eq!(
            sorted(s.push_endpoints("alice").unwrap()),
            [two, one],
            "{n}: registering twice is registering once"
        );
        assert!(
            s.add_push_endpoint("nobody", one).is_err(),
            "{n}: endpoints belong to users"
        );
        assert!(s.remove_push_endpoint("alice", one).unwrap(), "{n}");
        assert!(!s.remove_push_endpoint("alice", one).unwrap(), "{n}: gone");
        assert_eq!(s.push_endpoints("alice").unwrap(), [two], "{n}");
        assert_eq!(s.push_endpoints("bob").unwrap(), [one], "{n}: bob's stays");
        assert!(s.remove_user("alice").unwrap(), "{n}");
        s.add_user("alice", "h").unwrap();
        assert!(
            s.push_endpoints("alice").unwrap().is_empty(),
            "{n}: they went with the user"
        );
    }
}

#[test]
fn a_refresh_token_is_taken_once_by_concurrent_callers() {
    for b in backends() {
        let n = b.name;
        b.store.add_user("alice", "h").unwrap();
        b.store.upsert_device("alice", "phone").unwrap();
        for round in 0..5 {
            let hash = format!("r{round}");
            b.store
                .add_refresh_token(&hash, "alice", "phone", LATER)
                .unwrap()
                .unwrap();
            let barrier = std::sync::Arc::new(std::sync::Barrier::new(4));
            let takers: Vec<_> = (0..4)
                .map(|_| {
                    let (store, barrier, hash) = (b.store.clone(), barrier.clone(), hash.clone());
                    std::thread::spawn(move || {
                        barrier.wait();
                        store.take_refresh_token(&hash, now()).unwrap()
                    })
                })
                .collect();
            let taken = takers.into_iter().filter_map(|t| t.join().unwrap()).count();
            assert_eq!(taken, 1, "{n}: round {round}: one caller gets the token");
        }
    }
}

#[test]
fn the_roster_counts_a_users_devices_across_nodes_until_a_node_expires() {
    for b in backends() {
        let s = &b.store;
        assert!(!s.node_alive("n1").unwrap(), "a new node");
        assert!(s.node_alive("n1").unwrap(), "{}", b.name);
        s.node_alive("n2").unwrap();
        assert_eq!(s.device_connected("n1", "alice.phone", "alice").unwrap(), 1);
        assert_eq!(
            s.device_connected("n2", "alice.laptop", "alice").unwrap(),
            2
        );
        assert_eq!(
            s.device_connected("n2", "alice.laptop", "alice").unwrap(),
            2,
            "{}",
            b.name
        );
        assert_eq!(s.device_connected("n2", "bob.phone", "bob").unwrap(), 1);
        assert_eq!(
            s.user_connections("alice", "alice.phone", None).unwrap(),
            1,
            "{}",
            b.name
        );
        assert_eq!(
            s.user_connections("alice", "", Some("n2")).unwrap(),
            1,
            "{}: n2 counts its own",
            b.name
        );
        assert_eq!(
            s.user_connections("alice", "alice.laptop", Some("n1"))
                .unwrap(),
            0
        );
        assert_eq!(
            s.device_disconnected("n1", "alice.phone", "alice").unwrap(),
            1
        );
        assert_eq!(s.user_connections("alice", "", None).unwrap(), 1);
        // Nothing is older than an hour: no node expires.
        assert!(s.expire_nodes(3600).unwrap().is_empty(), "{}", b.name);
        std::thread::sleep(std::time::Duration::from_millis(1100));
        s.node_alive("n1").unwrap();
        assert_eq!(
            sorted(s.expire_nodes(1).unwrap()),
            ["alice", "bob"],
            "{}: n2 went quiet",
            b.name
        );
        assert_eq!(s.user_connections("alice", "", None).unwrap(), 0);
        assert!(
            !s.node_alive("n2").unwrap(),
            "{}: n2 learns it was expired",
            b.name
        );
        s.device_connected("n1", "bob.tablet", "bob").unwrap();
        assert_eq!(s.reset_node("n1").unwrap(), ["bob"], "{}", b.name);
        assert_eq!(s.user_connections("bob", "", None).unwrap(), 0);
    }
}

#[test]
fn retained_messages_are_set_replaced_cleared_and_expire() {
    for b in backends() {
        let s = &b.store;
        s.set_retained("a/b", Some(b"one"), None).unwrap();
        s.set_retained("a/b", Some(b"two"), None).unwrap();
        s.set_retained("a/c", Some(b"gone"), Some(1)).unwrap();
        s.set_retained("a/d", Some(b"cleared"), None).unwrap();
        s.set_retained("a/d", None, None).unwrap();
        let later = i64::MAX / 2;
        s.set_retained("a/e", Some(b"later"), Some(later)).unwrap();
        let mut all = s.retained().unwrap();
        all.sort();
        assert_eq!(
            all,
            [(b"later".to_vec(), Some(later)), (b"two".to_vec(), None)],
            "{}",
            b.name
        );
    }
}
