//! Chat domain rules, with no I/O: who exists, who belongs to which conversation, and what each
//! user may publish, subscribe to and receive in the chat namespaces (`topics.md`).
//!
//! [`Directory`] is an in-memory view of the accounts and memberships in the store, shared by
//! every connection (authorization on each PUBLISH and SUBSCRIBE) and by the router (each
//! delivery through a filter that can reach chat topics is checked again, so a removed member
//! stops receiving at once). [`crate::service::requests`] changes it together with the store.

pub mod edits;
pub mod envelope;
pub mod requests;
pub mod seq;
pub mod snapshot;

use std::collections::{BTreeSet, HashMap, HashSet};

use crate::topics::{self, ChatTopic, ConvId, FilterScope};
pub use snapshot::{ConversationRow, Snapshot, UserRow};

/// A member's role in a group.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Member,
    Admin,
    Owner,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Owner => "owner",
            Role::Admin => "admin",
            Role::Member => "member",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        Some(match s {
            "owner" => Role::Owner,
            "admin" => Role::Admin,
            "member" => Role::Member,
            _ => return None,
        })
    }
}

/// Why a chat action was refused; the code goes into error events and request replies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    #[error("you are not a member of this conversation")]
    NotMember,
    #[error("this user does not accept messages from you")]
    Blocked,
    #[error("only the server writes here")]
    ServerOnly,
    #[error("this belongs to another user")]
    NotYours,
    #[error("not a valid chat topic (see topics.md)")]
    Malformed,
    #[error("log in to use chat topics")]
    Anonymous,
    #[error("your role in this group does not allow that")]
    Role,
    /// A group keeps an owner: the last one hands it over (`group.transfer`) before stepping
    /// down or leaving while others remain.
    #[error("the last owner must hand the group over (group.transfer) first")]
    LastOwner,
    #[error("no such user")]
    NoSuchUser,
    #[error("no such conversation")]
    NoSuchConversation,
}

#[derive(Debug, Clone, Default)]
pub struct Group {
    pub name: String,
    pub topic: String,
    pub members: HashMap<String, Role>,
}

#[derive(Debug, Clone, Default)]
pub struct Directory {
    /// User id → admin flag.
    users: HashMap<String, bool>,
    /// Group conversation id (`g.…`) → group.
    groups: HashMap<String, Group>,
    /// User id → the group conversations they belong to.
    groups_of: HashMap<String, BTreeSet<String>>,
    /// (user, user they blocked)
    blocks: HashSet<(String, String)>,
    /// Pairs of users with a direct conversation that has history (sorted pair).
    contacts: HashSet<(String, String)>,
}

impl Directory {
    pub fn from_snapshot(snap: Snapshot) -> Directory {
        let mut d = Directory::default();
        for u in snap.users {
            d.users.insert(u.id, u.admin);
        }
        for c in snap.conversations {
            if let Some(ConvId::Direct(a, b)) = topics::parse_conv(&c.id) {
                d.contacts.insert((a.to_string(), b.to_string()));
                continue;
            }
            if topics::parse_conv(&c.id).is_some_and(|id| matches!(id, ConvId::Group(_))) {
                d.groups.insert(
                    c.id,
                    Group {
                        name: c.name,
                        topic: c.topic,
                        members: HashMap::new(),
                    },
                );
            }
        }
        for (conv, user, role) in snap.members {
            if let (Some(g), Some(role)) = (d.groups.get_mut(&conv), Role::parse(&role)) {
                g.members.insert(user.clone(), role);
                d.groups_of.entry(user).or_default().insert(conv);
            }
        }
        d.blocks = snap.blocks.into_iter().collect();
        d
    }

    pub fn user_exists(&self, user: &str) -> bool {
        self.users.contains_key(user)
    }

    pub fn is_admin(&self, user: &str) -> bool {
        self.users.get(user).copied().unwrap_or(false)
    }

    pub fn users(&self) -> impl Iterator<Item = &str> {
        self.users.keys().map(String::as_str)
    }

    pub fn group(&self, conv: &str) -> Option<&Group> {
        self.groups.get(conv)
    }

    pub fn role(&self, conv: &str, user: &str) -> Option<Role> {
        self.groups.get(conv)?.members.get(user).copied()
    }

    /// The members of a conversation. Direct conversations need no setup: both users, as long
    /// as both exist.
    pub fn members<'a>(&'a self, conv: &'a str) -> Vec<&'a str> {
        match topics::parse_conv(conv) {
            Some(ConvId::Direct(a, b)) if self.user_exists(a) && self.user_exists(b) => vec![a, b],
            Some(ConvId::Group(_)) => self
                .groups
                .get(conv)
                .map(|g| g.members.keys().map(String::as_str).collect())
                .unwrap_or_default(),
            _ => Vec::new(),
        }
    }

    pub fn is_member(&self, conv: &str, user: &str) -> bool {
        match topics::parse_conv(conv) {
            Some(ConvId::Direct(a, b)) => {
                (user == a || user == b) && self.user_exists(a) && self.user_exists(b)
            }
            Some(ConvId::Group(_)) => self.role(conv, user).is_some(),
            None => false,
        }
    }

    /// The group conversations of a user.
    pub fn groups_of(&self, user: &str) -> impl Iterator<Item = &str> {
        self.groups_of
            .get(user)
            .into_iter()
            .flat_map(|s| s.iter().map(String::as_str))
    }

    /// Whether two users share a conversation — a group, or a direct conversation with history
    /// (what makes presence visible).
    pub fn share_a_conversation(&self, a: &str, b: &str) -> bool {
        let pair = if a <= b { (a, b) } else { (b, a) };
        if self
            .contacts
            .contains(&(pair.0.to_string(), pair.1.to_string()))
        {
            return true;
        }
        let (Some(ga), Some(gb)) = (self.groups_of.get(a), self.groups_of.get(b)) else {
            return false;
        };
        ga.intersection(gb).next().is_some()
    }

    /// Whether the direct conversation of `a` and `b` (sorted) has history.
    pub fn has_direct_history(&self, a: &str, b: &str) -> bool {
        self.contacts.contains(&(a.to_string(), b.to_string()))
    }

    /// Records that the direct conversation of `a` and `b` (sorted) has history (an entry was
    /// committed), so the two share a conversation.
    pub fn note_direct_history(&mut self, a: &str, b: &str) {
        self.contacts.insert((a.to_string(), b.to_string()));
    }

    pub fn has_blocked(&self, user: &str, other: &str) -> bool {
        self.blocks.contains(&(user.to_string(), other.to_string()))
    }

    /// May `actor` put `user` into a group (creating it, or adding a member)? Not someone who
    /// has blocked them: a group would otherwise be a way round the block.
    pub fn can_add_member(&self, actor: &str, user: &str) -> Result<(), Denied> {
        if !self.user_exists(user) {
            return Err(Denied::NoSuchUser);
        }
        if self.has_blocked(user, actor) {
            return Err(Denied::Blocked);
        }
        Ok(())
    }

    /// Whether `user` sees `other`'s presence: their own, or a contact's who has not blocked
    /// them.
    fn sees_presence_of(&self, user: &str, other: &str) -> bool {
        other == user
            || (self.user_exists(other)
                && self.share_a_conversation(user, other)
                && !self.has_blocked(other, user))
    }

    /// May `user` publish to this chat topic?
    pub fn can_publish(&self, user: Option<&str>, topic: ChatTopic<'_>) -> Result<(), Denied> {
        let Some(user) = user else {
            return Err(Denied::Anonymous);
        };
        match topic {
            ChatTopic::Conv { conv, .. } => {
                if !self.is_member(conv, user) {
                    return Err(Denied::NotMember);
                }
                if let Some(ConvId::Direct(a, b)) = topics::parse_conv(conv) {
                    let other = if user == a { b } else { a };
                    if self.has_blocked(other, user) {
                        return Err(Denied::Blocked);
                    }
                }
                Ok(())
            }
            ChatTopic::Request { user: owner, .. } if owner == user => Ok(()),
            ChatTopic::Request { .. } => Err(Denied::NotYours),
            ChatTopic::Stream { .. } | ChatTopic::Presence { .. } => Err(Denied::ServerOnly),
            ChatTopic::Malformed => Err(Denied::Malformed),
        }
    }

    /// May `user` receive a message published on this chat topic?
    pub fn can_read(&self, user: Option<&str>, topic: ChatTopic<'_>) -> bool {
        let Some(user) = user else {
            return false;
        };
        match topic {
            ChatTopic::Conv { conv, .. } => self.is_member(conv, user),
            ChatTopic::Stream { user: owner } => owner == user,
            ChatTopic::Presence { user: other } => self.sees_presence_of(user, other),
            ChatTopic::Request { .. } | ChatTopic::Malformed => false,
        }
    }

    /// May `user` subscribe to a filter with a literal second level in a chat namespace? Wide
    /// filters are always accepted and narrowed per message with [`Directory::can_read`].
    pub fn can_subscribe(&self, user: Option<&str>, scope: FilterScope<'_>) -> Result<(), Denied> {
        let FilterScope::Chat { root, id } = scope else {
            return Ok(());
        };
        let Some(user) = user else {
            return Err(Denied::Anonymous);
        };
        match root {
            "c" if self.is_member(id, user) => Ok(()),
            "c" => Err(Denied::NotMember),
            "u" if id == user => Ok(()),
            "p" if self.sees_presence_of(user, id) => Ok(()),
            "q" => Err(Denied::ServerOnly),
            _ => Err(Denied::NotYours),
        }
    }

    // Changes, applied after the store has committed them.

    pub fn set_user(&mut self, user: &str, admin: bool) {
        self.users.insert(user.to_string(), admin);
    }

    pub fn set_group_info(&mut self, conv: &str, name: &str, topic: &str) {
        let g = self.groups.entry(conv.to_string()).or_default();
        g.name = name.to_string();
        g.topic = topic.to_string();
    }

    pub fn set_member(&mut self, conv: &str, user: &str, role: Role) {
        self.groups
            .entry(conv.to_string())
            .or_default()
            .members
            .insert(user.to_string(), role);
        self.groups_of
            .entry(user.to_string())
            .or_default()
            .insert(conv.to_string());
    }

    pub fn remove_member(&mut self, conv: &str, user: &str) {
        if let Some(g) = self.groups.get_mut(conv) {
            g.members.remove(user);
        }
        if let Some(set) = self.groups_of.get_mut(user) {
            set.remove(conv);
        }
    }

    pub fn set_block(&mut self, user: &str, other: &str, on: bool) {
        let key = (user.to_string(), other.to_string());
        if on {
            self.blocks.insert(key);
        } else {
            self.blocks.remove(&key);
        }
    }

    /// How group memberships differ from `self` to `newer`.
    pub fn membership_changes(&self, newer: &Directory) -> MembershipChanges {
        let mut changes = MembershipChanges::default();
        for (conv, g) in &self.groups {
            for user in g.members.keys() {
                if newer.role(conv, user).is_none() {
                    changes.removed.push((conv.clone(), user.clone()));
                }
            }
        }
        for (conv, g) in &newer.groups {
            for (user, role) in &g.members {
                if self.role(conv, user).is_none() {
                    changes.added.push((conv.clone(), user.clone(), *role));
                }
            }
        }
        changes
    }
}

/// Memberships that appeared or disappeared between two directories.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct MembershipChanges {
    /// (conversation, user)
    pub removed: Vec<(String, String)>,
    /// (conversation, user, role)
    pub added: Vec<(String, String, Role)>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn directory() -> Directory {
        let user = |id: &str, admin| UserRow {
            id: id.into(),
            admin,
            created_at: 0,
        };
        let s = |x: &str| x.to_string();
        Directory::from_snapshot(Snapshot {
            users: vec![
                user("alice", false),
                user("bob", false),
                user("carol", false),
                user("root", true),
            ],
            conversations: vec![
                ConversationRow {
                    id: s("g.team"),
                    name: s("Team"),
                    topic: s(""),
                },
                ConversationRow {
                    id: s("d.carol.root"),
                    name: s(""),
                    topic: s(""),
                },
            ],
            members: vec![
                (s("g.team"), s("alice"), s("owner")),
                (s("g.team"), s("bob"), s("member")),
            ],
            blocks: vec![(s("carol"), s("alice"))],
        })
    }

    #[test]
    fn publish_decisions_table() {
        let d = directory();
        let cases: &[(Option<&str>, &str, Result<(), Denied>)] = &[
            (Some("alice"), "c/g.team/m", Ok(())),
            (Some("bob"), "c/g.team/e", Ok(())),
            (Some("carol"), "c/g.team/m", Err(Denied::NotMember)),
            (Some("alice"), "c/d.alice.bob/m", Ok(())),
            (Some("bob"), "c/d.alice.bob/t", Ok(())),
            (Some("carol"), "c/d.alice.bob/m", Err(Denied::NotMember)),
            (Some("alice"), "c/d.alice.carol/m", Err(Denied::Blocked)),
            (Some("carol"), "c/d.alice.carol/m", Ok(())),
            (Some("alice"), "c/d.alice.nobody/m", Err(Denied::NotMember)),
            (Some("alice"), "c/g.other/m", Err(Denied::NotMember)),
            (Some("alice"), "u/alice/events", Err(Denied::ServerOnly)),
            (Some("alice"), "u/bob/c/g.team/m", Err(Denied::ServerOnly)),
            (Some("alice"), "p/alice", Err(Denied::ServerOnly)),
            (Some("alice"), "p/bob", Err(Denied::ServerOnly)),
            (Some("alice"), "q/alice/group.create", Ok(())),
            (Some("alice"), "q/bob/group.create", Err(Denied::NotYours)),
            (Some("alice"), "c/d.bob.alice/m", Err(Denied::Malformed)),
            (None, "c/g.team/m", Err(Denied::Anonymous)),
            (None, "q/alice/x", Err(Denied::Anonymous)),
        ];
        for (user, topic, want) in cases {
            let t = topics::classify(topic).expect("chat topic");
            assert_eq!(d.can_publish(*user, t), *want, "{user:?} publishes {topic}");
        }
    }

    #[test]
    fn read_decisions_table() {
        let d = directory();
        let cases: &[(Option<&str>, &str, bool)] = &[
            (Some("alice"), "c/g.team/m", true),
            (Some("carol"), "c/g.team/m", false),
            (Some("carol"), "c/d.alice.carol/m", true),
            (Some("bob"), "c/d.alice.carol/m", false),
            (Some("alice"), "u/alice/c/g.team/m", true),
            (Some("alice"), "u/bob/c/g.team/m", false),
            (Some("alice"), "p/bob", true),
            (Some("alice"), "p/alice", true),
            (Some("carol"), "p/alice", false),
            (Some("carol"), "p/root", true),
            (Some("alice"), "q/alice/x", false),
            (Some("alice"), "c/zzz/m", false),
            (None, "c/g.team/m", false),
            (None, "p/alice", false),
        ];
        for (user, topic, want) in cases {
            let t = topics::classify(topic).expect("chat topic");
            assert_eq!(d.can_read(*user, t), *want, "{user:?} reads {topic}");
        }
    }

    #[test]
    fn subscribe_decisions_table() {
        let d = directory();
        let cases: &[(Option<&str>, &str, Result<(), Denied>)] = &[
            (Some("alice"), "c/g.team/m", Ok(())),
            (Some("alice"), "c/g.team/#", Ok(())),
            (Some("carol"), "c/g.team/#", Err(Denied::NotMember)),
            (Some("alice"), "u/alice/#", Ok(())),
            (Some("alice"), "u/bob/#", Err(Denied::NotYours)),
            (Some("alice"), "p/bob", Ok(())),
            (Some("carol"), "p/bob", Err(Denied::NotYours)),
            (Some("alice"), "q/alice/#", Err(Denied::ServerOnly)),
            (Some("alice"), "c", Err(Denied::NotMember)),
            (Some("carol"), "#", Ok(())),
            (Some("carol"), "c/+/m", Ok(())),
            (Some("carol"), "u/+/#", Ok(())),
            (None, "u/alice/#", Err(Denied::Anonymous)),
            (Some("alice"), "sensors/#", Ok(())),
        ];
        for (user, filter, want) in cases {
            assert_eq!(
                d.can_subscribe(*user, topics::filter_scope(filter)),
                *want,
                "{user:?} subscribes {filter}"
            );
        }
    }

    #[test]
    fn blocks_decide_group_adds_and_presence_table() {
        // Carol has blocked Alice; both are in g.team, so they share a conversation.
        let mut d = directory();
        d.set_member("g.team", "carol", Role::Member);
        let adds: &[(&str, &str, Result<(), Denied>)] = &[
            ("alice", "carol", Err(Denied::Blocked)),
            ("carol", "alice", Ok(())),
            ("alice", "bob", Ok(())),
            ("bob", "carol", Ok(())),
            ("alice", "nobody", Err(Denied::NoSuchUser)),
        ];
        for (actor, user, want) in adds {
            assert_eq!(d.can_add_member(actor, user), *want, "{actor} adds {user}");
        }
        let presence: &[(&str, &str, bool)] = &[
            ("alice", "p/carol", false),
            ("carol", "p/alice", true),
            ("bob", "p/carol", true),
            ("carol", "p/carol", true),
            ("alice", "p/bob", true),
        ];
        for (user, topic, want) in presence {
            let t = topics::classify(topic).expect("chat topic");
            assert_eq!(d.can_read(Some(user), t), *want, "{user} reads {topic}");
            let sub = d.can_subscribe(Some(user), topics::filter_scope(topic));
            assert_eq!(sub.is_ok(), *want, "{user} subscribes {topic}: {sub:?}");
        }
    }

    #[test]
    fn membership_changes_are_diffed() {
        let old = directory();
        let mut new = old.clone();
        new.remove_member("g.team", "bob");
        new.set_member("g.team", "carol", Role::Admin);
        let changes = old.membership_changes(&new);
        assert_eq!(changes.removed, [("g.team".to_string(), "bob".to_string())]);
        assert_eq!(
            changes.added,
            [("g.team".to_string(), "carol".to_string(), Role::Admin)]
        );
        assert!(new.share_a_conversation("alice", "carol"));
        assert!(!new.share_a_conversation("alice", "bob"));
    }
}
