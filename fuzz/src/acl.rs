//! The mosquitto-style ACL file (`acl::Acl::parse`) and its decisions (`allows`, `covers`).
//!
//! Input (lossy UTF-8): the ACL file, then after the first NUL byte, query lines
//! `{user} {client id} {topic or filter}` (user `-`: anonymous).
//!
//! Properties: a syntax error names a line of the file; for a topic without wildcards,
//! subscribing to it is allowed exactly when reading it is; `covers(rule, filter)` is sound
//! (every topic the filter matches, the rule matches) and exact for wildcard-free filters, and
//! every valid filter covers itself.

use natter::acl::{self, Acl, Action, Client};
use natter::topics::{self, TopicLimits};

/// At most this many filters enter the pairwise `covers` checks (they are cubic).
const MAX_FILTERS: usize = 24;

pub fn check(data: &[u8]) {
    let split = data.iter().position(|&b| b == 0).unwrap_or(data.len());
    let file = String::from_utf8_lossy(&data[..split]);
    let queries = String::from_utf8_lossy(data.get(split + 1..).unwrap_or_default());
    let parsed = Acl::parse(&file);
    let mut filters: Vec<&str> = rule_topics(&file).collect();
    match &parsed {
        Ok(acl) => {
            for line in queries.lines() {
                if let Some(filter) = decide(acl, line) {
                    filters.push(filter);
                }
            }
        }
        Err(acl::AclError::Syntax { line, .. }) => {
            assert!((1..=file.lines().count()).contains(line), "line {line}");
        }
        Err(e) => panic!("parse does no I/O: {e}"),
    }
    filters.retain(|f| topics::validate_filter(f, &TopicLimits::PROTOCOL).is_ok());
    filters.truncate(MAX_FILTERS);
    check_covers(&filters);
}

/// The topics of `topic` and `pattern` lines, placeholders filled in as `parse` does.
fn rule_topics(file: &str) -> impl Iterator<Item = &str> {
    file.lines()
        .filter(|l| l.trim_start().starts_with("topic") || l.trim_start().starts_with("pattern"))
        .filter_map(|l| l.split_whitespace().last())
        .filter(|t| !t.contains('%'))
}

/// Checks one query line; returns its filter.
fn decide<'q>(acl: &Acl, line: &'q str) -> Option<&'q str> {
    let mut words = line.split_whitespace();
    let (user, client_id, filter) = (words.next()?, words.next()?, words.next()?);
    let client = Client {
        user: (user != "-").then_some(user),
        client_id,
    };
    // Publishing has no property to compare with; it must not panic.
    acl.allows(client, Action::Publish(filter));
    let read = acl.allows(client, Action::Read(filter));
    let subscribe = acl.allows(client, Action::Subscribe(filter));
    if topics::validate_name(filter, &TopicLimits::PROTOCOL).is_ok() {
        assert_eq!(subscribe, read, "{line:?}");
    }
    Some(filter)
}

/// `covers` against `matches` over every pair and triple of the valid filters.
fn check_covers(filters: &[&str]) {
    for &f in filters {
        assert!(acl::covers(f, f), "{f:?} covers itself");
        for &rule in filters {
            let covered = acl::covers(rule, f);
            if !topics::has_wildcard(f) {
                assert_eq!(covered, topics::matches(rule, f), "{rule:?} / {f:?}");
            }
            if !covered {
                continue;
            }
            for &t in filters.iter().filter(|t| !topics::has_wildcard(t)) {
                if topics::matches(f, t) {
                    assert!(topics::matches(rule, t), "{rule:?} covers {f:?}, not {t:?}");
                }
            }
        }
    }
}
