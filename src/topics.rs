//! Topic names and topic filters: the only code that parses or builds topic strings.
//!
//! `topics.md` at the top of the repository documents the scheme this module implements; keep the
//! two in step: plain MQTT (MQTT 3.1.1 §4.7, MQTT 5.0 §4.7–4.8), the `$SYS/broker/…` statistics
//! names, and the chat namespaces `c/…` (conversations), `u/…` (a user's stream), `q/…`
//! (requests) and `p/…` (presence), with the user and conversation ids inside them.

use std::fmt::{self, Write};

/// Longest topic or filter the protocol allows, in bytes (the MQTT string limit).
pub const MAX_TOPIC_LEN: usize = 65_535;

/// The prefix of shared subscriptions (`$share/{group}/{filter}`, MQTT 5.0 §4.8.2).
const SHARE_PREFIX: &str = "$share/";

/// The server's caps on topic names and filters, below the protocol's (`mqtt.max_topic_len`,
/// `mqtt.max_topic_levels`): every level costs the server work when a topic is matched or a
/// filter indexed, and a 32 KB filter of `+` levels serves no client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopicLimits {
    /// Longest topic or filter, in bytes.
    pub max_len: usize,
    /// Most levels (`/`-separated parts).
    pub max_levels: usize,
}

impl TopicLimits {
    /// Only the protocol's limit: for the operator's own rules (the ACL file).
    pub const PROTOCOL: TopicLimits = TopicLimits {
        max_len: MAX_TOPIC_LEN,
        max_levels: usize::MAX,
    };

    fn check(&self, s: &str) -> Result<(), TopicError> {
        if s.len() > self.max_len.min(MAX_TOPIC_LEN) {
            return Err(TopicError::TooLong);
        }
        // Counted on bytes, and only once the length is known to be bounded.
        if s.bytes().filter(|&b| b == b'/').count() >= self.max_levels {
            return Err(TopicError::TooDeep);
        }
        Ok(())
    }
}

/// Why a topic name or filter was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    #[error("topic is empty")]
    Empty,
    #[error("topic is longer than the server allows")]
    TooLong,
    #[error("topic has more levels than the server allows")]
    TooDeep,
    #[error("topic contains a NUL character")]
    Nul,
    #[error("topic name contains a wildcard")]
    WildcardInName,
    #[error("'#' must be the last level of a filter and stand alone")]
    BadMultiLevel,
    #[error("'+' must occupy a whole level")]
    BadSingleLevel,
    #[error("malformed shared subscription")]
    BadShare,
}

/// Checks a topic name as used in PUBLISH, wills and response topics (no wildcards).
pub fn validate_name(topic: &str, limits: &TopicLimits) -> Result<(), TopicError> {
    check_common(topic, limits)?;
    if topic.contains(['+', '#']) {
        return Err(TopicError::WildcardInName);
    }
    Ok(())
}

/// Checks a topic filter as used in SUBSCRIBE (wildcards allowed in whole levels).
pub fn validate_filter(filter: &str, limits: &TopicLimits) -> Result<(), TopicError> {
    check_common(filter, limits)?;
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        if level.contains('#') && (level != "#" || levels.peek().is_some()) {
            return Err(TopicError::BadMultiLevel);
        }
        if level.contains('+') && level != "+" {
            return Err(TopicError::BadSingleLevel);
        }
    }
    Ok(())
}

fn check_common(s: &str, limits: &TopicLimits) -> Result<(), TopicError> {
    if s.is_empty() {
        return Err(TopicError::Empty);
    }
    limits.check(s)?;
    if s.contains('\0') {
        return Err(TopicError::Nul);
    }
    Ok(())
}

/// Whether a filter contains `+` or `#`.
pub fn has_wildcard(filter: &str) -> bool {
    filter.contains(['+', '#'])
}

/// The levels of a valid filter before its first wildcard, without the separator after them:
/// every topic the filter matches starts with it (`u/bob/#` → `u/bob`, `#` → ``).
pub fn literal_prefix(filter: &str) -> &str {
    let mut end = 0;
    for (i, level) in filter.split('/').enumerate() {
        if level == "+" || level == "#" {
            break;
        }
        end += level.len() + usize::from(i > 0);
    }
    &filter[..end]
}

/// Whether `topic` matches `filter`. Both must be valid; topics that start with `$` are not
/// matched by a filter whose first level is a wildcard (MQTT 5.0 §4.7.2).
pub fn matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && filter.starts_with(['+', '#']) {
        return false;
    }
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(fl), Some(tl)) if fl == tl => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// A SUBSCRIBE filter split into its shared-subscription group (if any) and the filter proper.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription<'a> {
    pub group: Option<&'a str>,
    pub filter: &'a str,
}

/// Parses and validates a SUBSCRIBE/UNSUBSCRIBE filter, recognising `$share/{group}/{filter}`.
pub fn parse_subscription<'a>(
    raw: &'a str,
    limits: &TopicLimits,
) -> Result<Subscription<'a>, TopicError> {
    if raw.len() > limits.max_len {
        return Err(TopicError::TooLong);
    }
    let parsed = match raw.strip_prefix(SHARE_PREFIX) {
        Some(rest) => {
            let (group, filter) = rest.split_once('/').ok_or(TopicError::BadShare)?;
            if group.is_empty() || group.contains(['+', '#']) || filter.is_empty() {
                return Err(TopicError::BadShare);
            }
            Subscription {
                group: Some(group),
                filter,
            }
        }
        None => Subscription {
            group: None,
            filter: raw,
        },
    };
    validate_filter(parsed.filter, limits)?;
    Ok(parsed)
}

/// Longest user id and group id.
pub const MAX_ID_LEN: usize = 32;

/// Whether `id` is a valid user id (or group id): `[a-z0-9_-]{1,32}`.
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// A conversation id: `d.{a}.{b}` (direct, the two user ids sorted) or `g.{id}` (group).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConvId<'a> {
    Direct(&'a str, &'a str),
    Group(&'a str),
}

/// Parses a conversation id; direct ids must name two different users in sorted order, so each
/// pair of users has exactly one direct conversation.
pub fn parse_conv(id: &str) -> Option<ConvId<'_>> {
    if let Some(rest) = id.strip_prefix("d.") {
        let (a, b) = rest.split_once('.')?;
        (valid_id(a) && valid_id(b) && a < b).then_some(ConvId::Direct(a, b))
    } else {
        let g = id.strip_prefix("g.")?;
        valid_id(g).then_some(ConvId::Group(g))
    }
}

/// Whether `conv` is a valid direct conversation id.
pub fn is_direct(conv: &str) -> bool {
    matches!(parse_conv(conv), Some(ConvId::Direct(..)))
}

/// Whether `conv` is a valid direct conversation id with `user` as one of its two users.
pub fn direct_includes(conv: &str, user: &str) -> bool {
    matches!(parse_conv(conv), Some(ConvId::Direct(a, b)) if a == user || b == user)
}

/// The client id of a user's device: `{user}.{device}`.
pub fn device_client_id(user: &str, device: &str) -> String {
    format!("{user}.{device}")
}

/// The direct conversation of two users.
pub fn direct_conv(a: &str, b: &str) -> String {
    let (x, y) = if a <= b { (a, b) } else { (b, a) };
    format!("d.{x}.{y}")
}

/// The conversation id of group `id`.
pub fn group_conv(id: &str) -> String {
    format!("g.{id}")
}

/// What a topic inside a conversation carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConvKind {
    /// `m`: messages.
    Messages,
    /// `e`: edits, deletes, reactions.
    Events,
    /// `r`: receipts.
    Receipts,
    /// `t`: typing.
    Typing,
}

impl ConvKind {
    fn parse(s: &str) -> Option<ConvKind> {
        Some(match s {
            "m" => ConvKind::Messages,
            "e" => ConvKind::Events,
            "r" => ConvKind::Receipts,
            "t" => ConvKind::Typing,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ConvKind::Messages => "m",
            ConvKind::Events => "e",
            ConvKind::Receipts => "r",
            ConvKind::Typing => "t",
        }
    }
}

/// A topic in one of the chat namespaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChatTopic<'a> {
    /// `c/{conv}/{m|e|r|t}`
    Conv { conv: &'a str, kind: ConvKind },
    /// `u/{user}/…`: written by the server, read by the user.
    Stream { user: &'a str },
    /// `q/{user}/{op}`: a request from `user` to the server.
    Request { user: &'a str, op: &'a str },
    /// `p/{user}`: presence, written by the server.
    Presence { user: &'a str },
    /// In a chat namespace but not one of the forms above.
    Malformed,
}

/// The first levels reserved for chat.
const CHAT_ROOTS: [&str; 4] = ["c", "u", "q", "p"];

/// Classifies a topic name: `None` for plain MQTT topics.
pub fn classify(topic: &str) -> Option<ChatTopic<'_>> {
    let mut levels = topic.split('/');
    let root = levels.next()?;
    if !CHAT_ROOTS.contains(&root) {
        return None;
    }
    let parts: Vec<&str> = levels.collect();
    let parsed = match (root, parts.as_slice()) {
        ("c", [conv, kind]) if parse_conv(conv).is_some() => {
            ConvKind::parse(kind).map(|kind| ChatTopic::Conv { conv, kind })
        }
        ("u", [user, _, ..]) if valid_id(user) => Some(ChatTopic::Stream { user }),
        ("q", [user, op]) if valid_id(user) && !op.is_empty() => {
            Some(ChatTopic::Request { user, op })
        }
        ("p", [user]) if valid_id(user) => Some(ChatTopic::Presence { user }),
        _ => None,
    };
    Some(parsed.unwrap_or(ChatTopic::Malformed))
}

/// How a SUBSCRIBE filter relates to the chat namespaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FilterScope<'a> {
    /// Matches plain topics only.
    Plain,
    /// Matches chat topics in one namespace with a literal second level: `c/{conv}/…`,
    /// `u/{user}/…`, `q/{user}/…`, `p/{user}`.
    Chat { root: &'a str, id: &'a str },
    /// May match chat topics of many conversations or users (a wildcard at the first or second
    /// level); what it delivers is narrowed message by message.
    Wide,
}

/// Classifies a (valid) SUBSCRIBE filter.
pub fn filter_scope(filter: &str) -> FilterScope<'_> {
    let mut levels = filter.split('/');
    let root = levels.next().unwrap_or_default();
    if root == "+" || root == "#" {
        return FilterScope::Wide;
    }
    if !CHAT_ROOTS.contains(&root) {
        return FilterScope::Plain;
    }
    match levels.next() {
        Some("+") | Some("#") => FilterScope::Wide,
        Some(id) => FilterScope::Chat { root, id },
        None => FilterScope::Chat { root, id: "" },
    }
}

/// Whether a filter can match only requests (`q/…`): its first level is `q`. Requests are for
/// the server alone, so such a filter is refused whatever its wildcards.
pub fn is_request_filter(filter: &str) -> bool {
    filter.split('/').next() == Some("q")
}

/// A conversation topic: `c/{conv}/{kind}`.
pub fn conv_topic(conv: &str, kind: ConvKind) -> String {
    format!("c/{conv}/{}", kind.as_str())
}

/// A user's presence: `p/{user}`.
pub fn presence_topic(user: &str) -> String {
    format!("p/{user}")
}

/// A user's copy of a conversation's traffic: `u/{user}/c/{conv}/{kind}`.
pub fn stream_copy(user: &str, conv: &str, kind: ConvKind) -> String {
    format!("u/{user}/c/{conv}/{}", kind.as_str())
}

/// Membership changes for a user: `u/{user}/events`.
pub fn user_events(user: &str) -> String {
    format!("u/{user}/events")
}

/// Errors for a user (refused publishes a 3.1.1 client cannot be told about otherwise).
pub fn user_errors(user: &str) -> String {
    format!("u/{user}/errors")
}

/// Replies to a user's requests: `u/{user}/reply/{op}`.
pub fn user_reply(user: &str, op: &str) -> String {
    format!("u/{user}/reply/{op}")
}

/// The `$SYS` topics the broker publishes (mosquitto's names, so existing dashboards work).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SysTopic {
    Version,
    Uptime,
    ClientsConnected,
    ClientsTotal,
    MessagesReceived,
    MessagesSent,
    MessagesDropped,
    BytesReceived,
    BytesSent,
    RetainedCount,
    SubscriptionsCount,
}

impl SysTopic {
    pub const ALL: [SysTopic; 11] = [
        SysTopic::Version,
        SysTopic::Uptime,
        SysTopic::ClientsConnected,
        SysTopic::ClientsTotal,
        SysTopic::MessagesReceived,
        SysTopic::MessagesSent,
        SysTopic::MessagesDropped,
        SysTopic::BytesReceived,
        SysTopic::BytesSent,
        SysTopic::RetainedCount,
        SysTopic::SubscriptionsCount,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SysTopic::Version => "$SYS/broker/version",
            SysTopic::Uptime => "$SYS/broker/uptime",
            SysTopic::ClientsConnected => "$SYS/broker/clients/connected",
            SysTopic::ClientsTotal => "$SYS/broker/clients/total",
            SysTopic::MessagesReceived => "$SYS/broker/messages/received",
            SysTopic::MessagesSent => "$SYS/broker/messages/sent",
            SysTopic::MessagesDropped => "$SYS/broker/publish/messages/dropped",
            SysTopic::BytesReceived => "$SYS/broker/bytes/received",
            SysTopic::BytesSent => "$SYS/broker/bytes/sent",
            SysTopic::RetainedCount => "$SYS/broker/retained messages/count",
            SysTopic::SubscriptionsCount => "$SYS/broker/subscriptions/count",
        }
    }
}

impl fmt::Display for SysTopic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether a topic lies in the broker's own `$SYS` tree, which clients may read but never write.
pub fn is_sys(topic: &str) -> bool {
    topic == "$SYS" || topic.starts_with("$SYS/")
}

/// The NATS subjects a cluster's nodes use (see `cluster`): every subject starts here.
pub const NATS_ROOT: &str = "natter";

/// A topic level as one NATS subject token. NATS tokens are split on `.`, cannot be empty and
/// treat `*` and `>` as wildcards, so any level that is not plain `[A-Za-z0-9_-]+` is written
/// as `~` and its bytes in hex. The two forms cannot collide (a plain level has no `~`), so a
/// level and a filter's literal level always encode alike, and MQTT's `+` maps onto NATS's `*`.
fn nats_token(level: &str, out: &mut String) {
    let plain = !level.is_empty()
        && level
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if plain {
        out.push_str(level);
    } else {
        out.push('~');
        for b in level.bytes() {
            let _ = write!(out, "{b:02x}");
        }
    }
}

/// The NATS subject a plain topic's messages cross nodes on: `natter.t.{levels}`.
pub fn nats_topic_subject(topic: &str) -> String {
    let mut out = String::with_capacity(NATS_ROOT.len() + 3 + topic.len());
    out.push_str(NATS_ROOT);
    out.push_str(".t");
    for level in topic.split('/') {
        out.push('.');
        nats_token(level, &mut out);
    }
    out
}

/// The NATS subjects that carry every topic a (valid, unshared) filter matches: `+` is `*`; a
/// trailing `#` is `>` plus the parent itself (`a/#` matches `a`). A node may receive more than
/// the filter matches (`#` also takes `$` topics); its own index matches again.
pub fn nats_filter_subjects(filter: &str) -> Vec<String> {
    let (levels, below) = match filter.strip_suffix("#") {
        Some("") => return vec![format!("{NATS_ROOT}.t.>")],
        Some(parent) => (parent.trim_end_matches('/'), true),
        None => (filter, false),
    };
    let mut subject = format!("{NATS_ROOT}.t");
    for level in levels.split('/') {
        subject.push('.');
        if level == "+" {
            subject.push('*');
        } else {
            nats_token(level, &mut subject);
        }
    }
    if below {
        vec![format!("{subject}.>"), subject]
    } else {
        vec![subject]
    }
}

/// The NATS subject of a conversation's traffic: `natter.c.{conv}.{kind}`.
pub fn nats_conv_subject(conv: &str, kind: ConvKind) -> String {
    let mut out = format!("{NATS_ROOT}.c.");
    nats_token(conv, &mut out);
    out.push('.');
    out.push_str(kind.as_str());
    out
}

/// The NATS subject that takes every conversation's traffic.
pub fn nats_all_convs() -> String {
    format!("{NATS_ROOT}.c.>")
}

/// The NATS subject of retained messages (every node takes them all).
pub fn nats_retained() -> String {
    format!("{NATS_ROOT}.r")
}

/// The NATS subject of what one node tells every other (kicks, takeovers, directory changes).
pub fn nats_control() -> String {
    format!("{NATS_ROOT}.ctl")
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: TopicLimits = TopicLimits::PROTOCOL;

    #[test]
    fn filter_matching_table() {
        let cases: &[(&str, &str, bool)] = &[
            ("a/b/c", "a/b/c", true),
            ("a/b/c", "a/b", false),
            ("a/b", "a/b/c", false),
            ("a/+/c", "a/b/c", true),
            ("a/+/c", "a/b/d", false),
            ("a/+", "a/", true),
            ("+", "a", true),
            ("+", "a/b", false),
            ("+/+", "/a", true),
            ("#", "a/b/c", true),
            ("#", "/", true),
            ("a/#", "a", true),
            ("a/#", "a/b/c", true),
            ("a/#", "ab", false),
            ("a/b/#", "a/b", true),
            ("+/b/#", "x/b/y/z", true),
            ("#", "$SYS/broker/uptime", false),
            ("+/broker/uptime", "$SYS/broker/uptime", false),
            ("$SYS/#", "$SYS/broker/uptime", true),
            ("$SYS/+/uptime", "$SYS/broker/uptime", true),
            ("a//c", "a//c", true),
            ("a/+/c", "a//c", true),
            ("sport/tennis/+", "sport/tennis/player1/ranking", false),
        ];
        for (filter, topic, want) in cases {
            assert_eq!(matches(filter, topic), *want, "{filter} vs {topic}");
            // The router narrows retained topics by the literal prefix before matching.
            if *want {
                assert!(
                    topic.starts_with(literal_prefix(filter)),
                    "{filter} vs {topic}"
                );
            }
        }
        for (filter, prefix) in [
            ("u/bob/#", "u/bob"),
            ("a/b/c", "a/b/c"),
            ("a/+/c", "a"),
            ("#", ""),
            ("+/b", ""),
            ("/a/+", "/a"),
            ("a//+", "a/"),
        ] {
            assert_eq!(literal_prefix(filter), prefix, "{filter}");
        }
    }

    #[test]
    fn filter_validation_table() {
        let cases: &[(&str, Result<(), TopicError>)] = &[
            ("a/b", Ok(())),
            ("#", Ok(())),
            ("+", Ok(())),
            ("a/+/b/#", Ok(())),
            ("/", Ok(())),
            ("", Err(TopicError::Empty)),
            ("a/#/b", Err(TopicError::BadMultiLevel)),
            ("a#", Err(TopicError::BadMultiLevel)),
            ("a/b#", Err(TopicError::BadMultiLevel)),
            ("a+/b", Err(TopicError::BadSingleLevel)),
            ("a/++", Err(TopicError::BadSingleLevel)),
            ("a\0b", Err(TopicError::Nul)),
        ];
        for (filter, want) in cases {
            assert_eq!(validate_filter(filter, &P), *want, "{filter:?}");
        }
    }

    #[test]
    fn name_validation_table() {
        assert_eq!(validate_name("a/b", &P), Ok(()));
        assert_eq!(validate_name("a/+", &P), Err(TopicError::WildcardInName));
        assert_eq!(validate_name("#", &P), Err(TopicError::WildcardInName));
        assert_eq!(validate_name("", &P), Err(TopicError::Empty));
        assert_eq!(
            validate_name(&"x".repeat(70_000), &P),
            Err(TopicError::TooLong)
        );
    }

    #[test]
    fn caps_on_length_and_levels() {
        let caps = TopicLimits {
            max_len: 16,
            max_levels: 3,
        };
        assert_eq!(validate_name("a/b/c", &caps), Ok(()));
        assert_eq!(validate_name("a/b/c/d", &caps), Err(TopicError::TooDeep));
        assert_eq!(validate_name("///", &caps), Err(TopicError::TooDeep));
        assert_eq!(validate_filter("+/+/#", &caps), Ok(()));
        assert_eq!(validate_filter("+/+/+/+", &caps), Err(TopicError::TooDeep));
        assert_eq!(validate_name(&"x".repeat(16), &caps), Ok(()));
        assert_eq!(
            validate_name(&"x".repeat(17), &caps),
            Err(TopicError::TooLong)
        );
        assert_eq!(
            parse_subscription("$share/g/a/b/c", &caps).map(|s| s.filter),
            Ok("a/b/c")
        );
        assert_eq!(
            parse_subscription("$share/group/a/bc", &caps),
            Err(TopicError::TooLong)
        );
        let deep = vec!["+"; 16_000].join("/");
        assert_eq!(
            parse_subscription(
                &deep,
                &TopicLimits {
                    max_len: 4096,
                    max_levels: 128
                }
            ),
            Err(TopicError::TooLong)
        );
        assert_eq!(
            validate_filter(&deep, &P),
            Ok(()),
            "the protocol alone allows it"
        );
    }

    #[test]
    fn shared_subscriptions_parse() {
        let s = parse_subscription("$share/g1/a/+", &P).unwrap();
        assert_eq!(s.group, Some("g1"));
        assert_eq!(s.filter, "a/+");
        assert_eq!(parse_subscription("a/b", &P).unwrap().group, None);
        assert_eq!(
            parse_subscription("$share/g1", &P),
            Err(TopicError::BadShare)
        );
        assert_eq!(
            parse_subscription("$share//a", &P),
            Err(TopicError::BadShare)
        );
        assert_eq!(
            parse_subscription("$share/g+/a", &P),
            Err(TopicError::BadShare)
        );
        assert_eq!(
            parse_subscription("$share/g/a#", &P),
            Err(TopicError::BadMultiLevel)
        );
    }

    #[test]
    fn ids_and_conversations() {
        for (id, ok) in [
            ("alice", true),
            ("a-b_9", true),
            ("", false),
            ("Alice", false),
            ("a.b", false),
            ("a/b", false),
            ("é", false),
        ] {
            assert_eq!(valid_id(id), ok, "{id:?}");
        }
        assert!(!valid_id(&"a".repeat(33)));
        assert_eq!(
            parse_conv("d.alice.bob"),
            Some(ConvId::Direct("alice", "bob"))
        );
        assert_eq!(parse_conv("d.bob.alice"), None, "unsorted");
        assert_eq!(parse_conv("d.bob.bob"), None, "with oneself");
        assert_eq!(parse_conv("g.team-1"), Some(ConvId::Group("team-1")));
        assert_eq!(parse_conv("g."), None);
        assert_eq!(parse_conv("x.a"), None);
        assert!(is_direct("d.alice.bob"));
        assert!(!is_direct("d.bob.alice"));
        assert!(!is_direct("g.team-1"));
        assert!(direct_includes("d.alice.bob", "alice"));
        assert!(direct_includes("d.alice.bob", "bob"));
        assert!(!direct_includes("d.alice.bob", "ali"));
        assert!(!direct_includes("d.bob.alice", "bob"), "unsorted");
        assert!(!direct_includes("g.bob", "bob"));
        assert_eq!(device_client_id("alice", "phone"), "alice.phone");
        assert_eq!(direct_conv("bob", "alice"), "d.alice.bob");
        assert_eq!(group_conv("t"), "g.t");
    }

    #[test]
    fn chat_topic_classification_table() {
        use ChatTopic as T;
        let cases: &[(&str, Option<ChatTopic>)] = &[
            (
                "c/g.team/m",
                Some(T::Conv {
                    conv: "g.team",
                    kind: ConvKind::Messages,
                }),
            ),
            (
                "c/d.a.b/t",
                Some(T::Conv {
                    conv: "d.a.b",
                    kind: ConvKind::Typing,
                }),
            ),
            ("c/d.b.a/m", Some(T::Malformed)),
            ("c/g.team/x", Some(T::Malformed)),
            ("c/g.team/m/extra", Some(T::Malformed)),
            ("u/alice/c/g.team/m", Some(T::Stream { user: "alice" })),
            ("u/alice/events", Some(T::Stream { user: "alice" })),
            ("u/alice", Some(T::Malformed)),
            (
                "q/alice/group.create",
                Some(T::Request {
                    user: "alice",
                    op: "group.create",
                }),
            ),
            ("q/alice/a/b", Some(T::Malformed)),
            ("p/alice", Some(T::Presence { user: "alice" })),
            ("p/alice/x", Some(T::Malformed)),
            ("c", Some(T::Malformed)),
            ("sensors/1", None),
            ("cx/1", None),
            ("$SYS/broker/uptime", None),
        ];
        for (topic, want) in cases {
            assert_eq!(classify(topic), *want, "{topic}");
        }
    }

    #[test]
    fn filter_scope_table() {
        use FilterScope as S;
        let cases: &[(&str, FilterScope)] = &[
            ("#", S::Wide),
            ("+/+/+", S::Wide),
            ("c/#", S::Wide),
            ("c/+/m", S::Wide),
            ("u/+/events", S::Wide),
            (
                "c/g.x/m",
                S::Chat {
                    root: "c",
                    id: "g.x",
                },
            ),
            (
                "c/g.x/#",
                S::Chat {
                    root: "c",
                    id: "g.x",
                },
            ),
            (
                "u/bob/#",
                S::Chat {
                    root: "u",
                    id: "bob",
                },
            ),
            (
                "p/bob",
                S::Chat {
                    root: "p",
                    id: "bob",
                },
            ),
            ("c", S::Chat { root: "c", id: "" }),
            ("sensors/#", S::Plain),
            ("$SYS/#", S::Plain),
        ];
        for (filter, want) in cases {
            assert_eq!(filter_scope(filter), *want, "{filter}");
        }
        for (filter, want) in [
            ("q/#", true),
            ("q/+/x", true),
            ("q", true),
            ("#", false),
            ("+/alice/x", false),
            ("qq/#", false),
        ] {
            assert_eq!(is_request_filter(filter), want, "{filter}");
        }
    }

    #[test]
    fn sys_topics_are_sys() {
        for t in SysTopic::ALL {
            assert!(is_sys(t.as_str()));
            assert_eq!(validate_name(t.as_str(), &P), Ok(()));
        }
        assert!(!is_sys("$SYSX/a"));
    }

    #[test]
    fn nats_subjects_keep_mqtt_matching() {
        assert_eq!(nats_topic_subject("a/b"), "natter.t.a.b");
        assert_eq!(nats_topic_subject("a.b//$x"), "natter.t.~612e62.~.~2478");
        assert_eq!(nats_filter_subjects("a/+/c"), ["natter.t.a.*.c"]);
        assert_eq!(nats_filter_subjects("a/#"), ["natter.t.a.>", "natter.t.a"]);
        assert_eq!(nats_filter_subjects("#"), ["natter.t.>"]);
        assert_eq!(nats_filter_subjects("+/#"), ["natter.t.*.>", "natter.t.*"]);
        assert_eq!(nats_filter_subjects("a.b/~"), ["natter.t.~612e62.~7e"]);
        assert_eq!(
            nats_conv_subject("d.alice.bob", ConvKind::Messages),
            "natter.c.~642e616c6963652e626f62.m"
        );
        assert!(nats_conv_subject("g.x", ConvKind::Typing).starts_with("natter.c."));
    }
}
