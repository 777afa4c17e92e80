//! Topic names and topic filters: the only code that parses or builds topic strings.
//!
//! `topics.md` at the top of the repository documents the scheme this module implements; keep the
//! two in step. For now the scheme is plain MQTT (MQTT 3.1.1 §4.7, MQTT 5.0 §4.7–4.8) plus the
//! `$SYS/broker/…` statistics names; the chat namespaces (`c/…`, `u/…`, `q/…`, `p/…`) join here.

use std::fmt;

/// Longest topic or filter accepted, in bytes (the MQTT string limit).
pub const MAX_TOPIC_LEN: usize = 65_535;

/// The prefix of shared subscriptions (`$share/{group}/{filter}`, MQTT 5.0 §4.8.2).
const SHARE_PREFIX: &str = "$share/";

/// Why a topic name or filter was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    #[error("topic is empty")]
    Empty,
    #[error("topic is longer than 65535 bytes")]
    TooLong,
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

/// Checks a topic name as used in PUBLISH (no wildcards).
pub fn validate_name(topic: &str) -> Result<(), TopicError> {
    check_common(topic)?;
    if topic.contains(['+', '#']) {
        return Err(TopicError::WildcardInName);
    }
    Ok(())
}

/// Checks a topic filter as used in SUBSCRIBE (wildcards allowed in whole levels).
pub fn validate_filter(filter: &str) -> Result<(), TopicError> {
    check_common(filter)?;
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

fn check_common(s: &str) -> Result<(), TopicError> {
    if s.is_empty() {
        return Err(TopicError::Empty);
    }
    if s.len() > MAX_TOPIC_LEN {
        return Err(TopicError::TooLong);
    }
    if s.contains('\0') {
        return Err(TopicError::Nul);
    }
    Ok(())
}

/// Whether a filter contains `+` or `#`.
pub fn has_wildcard(filter: &str) -> bool {
    filter.contains(['+', '#'])
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
pub fn parse_subscription(raw: &str) -> Result<Subscription<'_>, TopicError> {
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
    validate_filter(parsed.filter)?;
    Ok(parsed)
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

#[cfg(test)]
mod tests {
    use super::*;

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
            assert_eq!(validate_filter(filter), *want, "{filter:?}");
        }
    }

    #[test]
    fn name_validation_table() {
        assert_eq!(validate_name("a/b"), Ok(()));
        assert_eq!(validate_name("a/+"), Err(TopicError::WildcardInName));
        assert_eq!(validate_name("#"), Err(TopicError::WildcardInName));
        assert_eq!(validate_name(""), Err(TopicError::Empty));
        assert_eq!(validate_name(&"x".repeat(70_000)), Err(TopicError::TooLong));
    }

    #[test]
    fn shared_subscriptions_parse() {
        let s = parse_subscription("$share/g1/a/+").unwrap();
        assert_eq!(s.group, Some("g1"));
        assert_eq!(s.filter, "a/+");
        assert_eq!(parse_subscription("a/b").unwrap().group, None);
        assert_eq!(parse_subscription("$share/g1"), Err(TopicError::BadShare));
        assert_eq!(parse_subscription("$share//a"), Err(TopicError::BadShare));
        assert_eq!(parse_subscription("$share/g+/a"), Err(TopicError::BadShare));
        assert_eq!(
            parse_subscription("$share/g/a#"),
            Err(TopicError::BadMultiLevel)
        );
    }

    #[test]
    fn sys_topics_are_sys() {
        for t in SysTopic::ALL {
            assert!(is_sys(t.as_str()));
            assert_eq!(validate_name(t.as_str()), Ok(()));
        }
        assert!(!is_sys("$SYSX/a"));
    }
}
