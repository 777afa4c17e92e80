//! Who may edit, delete or react to which history entry.
//!
//! The history writer applies this rule to every entry that names a target (an edit, delete,
//! reaction or its removal), with what it read of the target inside the transaction that stores
//! the entry, so the decision and the write see the same history.

use crate::chat::envelope::Kind;

/// Why an entry was refused: it names something it may not. Every reason reaches the client
/// under one code (`refused`, in `crate::refusal`'s table), with the text as its message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EditRefused {
    /// A media id that is neither the sender's upload nor already seen in the conversation.
    #[error("unknown media id")]
    UnknownMedia,
    #[error("no such message")]
    NoSuchMessage,
    #[error("only messages can be edited or reacted to")]
    NotAMessage,
    #[error("only the author may edit")]
    NotAuthor,
    #[error("only the author (or a group admin) may delete")]
    NotAuthorOrModerator,
    /// A deleted message is final: no edit brings its text back, no reaction lands on it.
    #[error("the message was deleted")]
    Deleted,
}

/// The stored entry an edit, delete or reaction names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target<'a> {
    /// Who wrote it.
    pub sender: &'a str,
    /// What it is; `None` for a kind this build does not know.
    pub kind: Option<Kind>,
    /// Whether it was deleted (a tombstone).
    pub deleted: bool,
}

/// May `actor` (a group owner or admin when `moderator`) store an entry of kind `requested`
/// that names `target` (`None`: no entry has that sequence number)?
pub fn check(
    target: Option<Target<'_>>,
    actor: &str,
    moderator: bool,
    requested: Kind,
) -> Result<(), EditRefused> {
    let Some(target) = target else {
        return Err(EditRefused::NoSuchMessage);
    };
    if target.kind != Some(Kind::Msg) {
        return Err(EditRefused::NotAMessage);
    }
    if target.deleted {
        return Err(EditRefused::Deleted);
    }
    let own = target.sender == actor;
    match requested {
        Kind::Edit if !own => Err(EditRefused::NotAuthor),
        Kind::Delete if !own && !moderator => Err(EditRefused::NotAuthorOrModerator),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (target, actor, moderator, requested, expected)
    type Case<'a> = (
        Option<Target<'a>>,
        &'a str,
        bool,
        Kind,
        Result<(), EditRefused>,
    );

    fn by(sender: &str, kind: Option<Kind>) -> Option<Target<'_>> {
        Some(Target {
            sender,
            kind,
            deleted: false,
        })
    }

    fn deleted(sender: &str) -> Option<Target<'_>> {
        Some(Target {
            sender,
            kind: Some(Kind::Msg),
            deleted: true,
        })
    }

    #[test]
    fn decisions_table() {
        use EditRefused::*;
        use Kind::*;
        let msg = Some(Msg);
        let cases: &[Case<'_>] = &[
            (None, "alice", false, Edit, Err(NoSuchMessage)),
            (None, "alice", true, Delete, Err(NoSuchMessage)),
            (None, "alice", false, React, Err(NoSuchMessage)),
            (
                by("alice", Some(Edit)),
                "alice",
                false,
                Edit,
                Err(NotAMessage),
            ),
            (
                by("alice", Some(React)),
                "alice",
                false,
                Delete,
                Err(NotAMessage),
            ),
            (
                by("alice", Some(Delete)),
                "alice",
                true,
                React,
                Err(NotAMessage),
            ),
            (by("alice", None), "alice", false, Unreact, Err(NotAMessage)),
            (by("alice", msg), "alice", false, Edit, Ok(())),
            (by("alice", msg), "bob", false, Edit, Err(NotAuthor)),
            (by("alice", msg), "bob", true, Edit, Err(NotAuthor)),
            (by("alice", msg), "alice", false, Delete, Ok(())),
            (
                by("alice", msg),
                "bob",
                false,
                Delete,
                Err(NotAuthorOrModerator),
            ),
            (by("alice", msg), "bob", true, Delete, Ok(())),
            (by("alice", msg), "bob", false, React, Ok(())),
            (by("alice", msg), "bob", false, Unreact, Ok(())),
            (by("alice", msg), "alice", false, React, Ok(())),
            (deleted("alice"), "alice", false, Edit, Err(Deleted)),
            (deleted("alice"), "bob", false, React, Err(Deleted)),
            (deleted("alice"), "alice", false, Unreact, Err(Deleted)),
            (deleted("alice"), "alice", true, Delete, Err(Deleted)),
            (deleted("alice"), "bob", false, Edit, Err(Deleted)),
        ];
        for (target, actor, moderator, requested, want) in cases {
            assert_eq!(
                check(*target, actor, *moderator, *requested),
                *want,
                "{actor} (moderator: {moderator}) {requested:?} on {target:?}"
            );
        }
    }

    #[test]
    fn texts_and_code_table() {
        let cases = [
            (EditRefused::UnknownMedia, "unknown media id"),
            (EditRefused::NoSuchMessage, "no such message"),
            (
                EditRefused::NotAMessage,
                "only messages can be edited or reacted to",
            ),
            (EditRefused::NotAuthor, "only the author may edit"),
            (
                EditRefused::NotAuthorOrModerator,
                "only the author (or a group admin) may delete",
            ),
            (EditRefused::Deleted, "the message was deleted"),
        ];
        for (refused, text) in cases {
            assert_eq!(refused.to_string(), text);
            assert_eq!(crate::refusal::Refusal::from(refused).code(), "refused");
        }
    }
}
