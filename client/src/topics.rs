//! The topics of natter's scheme (`topics.md`) as this client uses them: the one place that
//! builds or reads a topic string.

use crate::local::Topic;

/// Everyone's presence this user may read (the server narrows the filter).
pub const PRESENCE: &str = "p/+";

/// Where an outbox entry is published: `c/{conv}/m`, `…/e` or `…/r`.
pub fn publish(conv: &str, topic: Topic) -> String {
    let kind = match topic {
        Topic::Message => "m",
        Topic::Event => "e",
        Topic::Read => "r",
    };
    format!("c/{conv}/{kind}")
}

/// Typing in a conversation.
pub fn typing(conv: &str) -> String {
    format!("c/{conv}/t")
}

/// A request to the server.
pub fn request(user: &str, op: &str) -> String {
    format!("q/{user}/{op}")
}

/// The MQTT 5 response topic of this device's requests (other devices of the user ignore it).
pub fn reply(user: &str, device: &str) -> String {
    format!("u/{user}/reply/{device}")
}

/// What a connection subscribes to: the user's streams of every conversation, membership
/// events, refusal reports, replies (this device's on 5.0; 3.1.1 has no response topics, so
/// all of the user's) and presence.
pub fn filters(user: &str, device: &str, v5: bool) -> [String; 5] {
    [
        format!("u/{user}/c/#"),
        format!("u/{user}/events"),
        format!("u/{user}/errors"),
        if v5 {
            reply(user, device)
        } else {
            format!("u/{user}/reply/+")
        },
        PRESENCE.to_string(),
    ]
}

/// What a received topic is.
#[derive(Debug, PartialEq, Eq)]
pub enum Received<'a> {
    /// A conversation's stored entries (`m`, `e`).
    Entries,
    Receipts,
    Typing {
        conv: &'a str,
    },
    Events,
    Errors,
    /// A reply, with the last level (the op on 3.1.1).
    Reply {
        last: &'a str,
    },
    Presence {
        user: &'a str,
    },
    /// Nothing this client asked for.
    Other,
}

/// Reads a topic delivered to `user`.
pub fn parse<'a>(user: &str, topic: &'a str) -> Received<'a> {
    let levels: Vec<&str> = topic.split('/').collect();
    match levels.as_slice() {
        ["u", u, rest @ ..] if *u == user => match rest {
            ["c", _, "m" | "e"] => Received::Entries,
            ["c", _, "r"] => Received::Receipts,
            ["c", conv, "t"] => Received::Typing { conv },
            ["events"] => Received::Events,
            ["errors"] => Received::Errors,
            ["reply", .., last] => Received::Reply { last },
            _ => Received::Other,
        },
        ["p", who] => Received::Presence { user: who },
        _ => Received::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_read_back() {
        assert_eq!(publish("d.a.b", Topic::Read), "c/d.a.b/r");
        assert_eq!(parse("a", "u/a/c/d.a.b/m"), Received::Entries);
        assert_eq!(parse("a", "u/a/c/g.t/t"), Received::Typing { conv: "g.t" });
        assert_eq!(
            parse("a", "u/a/reply/phone"),
            Received::Reply { last: "phone" }
        );
        assert_eq!(parse("a", "p/b"), Received::Presence { user: "b" });
        // Someone else's stream is not this user's.
        assert_eq!(parse("a", "u/b/c/d.a.b/m"), Received::Other);
        assert_eq!(
            parse("a", &filters("a", "x", true)[3]),
            Received::Reply { last: "x" }
        );
    }
}
