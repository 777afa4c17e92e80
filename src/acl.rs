//! Access rules for plain MQTT topics in mosquitto's `acl_file` format.
//!
//! ```text
//! # lines before the first `user` line apply to anonymous clients
//! topic read public/#
//! user alice
//! topic readwrite alice/#
//! topic deny alice/secret
//! # `pattern` lines apply to every client; %u is the user name, %c the client id
//! pattern readwrite devices/%c/#
//! ```
//!
//! Decisions deny by default: an action is allowed when a rule that applies to the client grants it
//! and no applicable `deny` rule matches. A SUBSCRIBE filter is granted only when *every* topic it
//! could match is readable under one grant (so `#` is refused unless a rule grants `#`); deliveries
//! through wildcard filters are checked again per message (see `router`).

use std::collections::HashMap;
use std::path::Path;

use crate::topics;

/// What a rule allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Grant {
    Read,
    Write,
    ReadWrite,
    Deny,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Rule {
    grant: Grant,
    /// A topic filter; in `pattern` rules it may contain `%u` and `%c`.
    topic: String,
}

/// The action being authorized.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action<'a> {
    /// PUBLISH (or a will) to a topic name.
    Publish(&'a str),
    /// Receiving a message published on a topic name.
    Read(&'a str),
    /// SUBSCRIBE with a topic filter (shared-subscription prefix already removed).
    Subscribe(&'a str),
}

/// Who is asking.
#[derive(Debug, Clone, Copy)]
pub struct Client<'a> {
    pub user: Option<&'a str>,
    pub client_id: &'a str,
}

#[derive(Debug, thiserror::Error)]
pub enum AclError {
    #[error("cannot read ACL file {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("ACL file line {line}: {reason}")]
    Syntax { line: usize, reason: String },
}

/// A parsed ACL file.
#[derive(Debug, Default, Clone)]
pub struct Acl {
    anonymous: Vec<Rule>,
    users: HashMap<String, Vec<Rule>>,
    patterns: Vec<Rule>,
}

impl Acl {
    pub fn load(path: &Path) -> Result<Acl, AclError> {
        let text = std::fs::read_to_string(path).map_err(|source| AclError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Acl::parse(&text)
    }

    pub fn parse(text: &str) -> Result<Acl, AclError> {
        let mut acl = Acl::default();
        let mut current_user: Option<String> = None;
        for (idx, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let syntax = |reason: &str| AclError::Syntax {
                line: idx + 1,
                reason: reason.to_string(),
            };
            let (keyword, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
            let rest = rest.trim();
            match keyword {
                "user" => {
                    if rest.is_empty() {
                        return Err(syntax("`user` needs a user name"));
                    }
                    current_user = Some(rest.to_string());
                }
                "topic" | "pattern" => {
                    let rule = parse_rule(rest).map_err(|r| syntax(&r))?;
                    if keyword == "pattern" {
                        acl.patterns.push(rule);
                    } else if let Some(user) = &current_user {
                        acl.users.entry(user.clone()).or_default().push(rule);
                    } else {
                        acl.anonymous.push(rule);
                    }
                }
                other => return Err(syntax(&format!("unknown keyword `{other}`"))),
            }
        }
        Ok(acl)
    }

    /// Decides one action for one client.
    pub fn allows(&self, client: Client<'_>, action: Action<'_>) -> bool {
        let direct = match client.user {
            Some(user) => self.users.get(user).map(Vec::as_slice).unwrap_or(&[]),
            None => &self.anonymous,
        };
        let patterns = self
            .patterns
            .iter()
            .filter_map(|rule| expand(rule, client).map(|topic| (rule.grant, topic)));
        let rules = direct
            .iter()
            .map(|rule| (rule.grant, std::borrow::Cow::Borrowed(rule.topic.as_str())))
            .chain(patterns);

        let mut granted = false;
        for (grant, topic) in rules {
            match (grant, action) {
                (Grant::Deny, Action::Subscribe(filter)) if covers(&topic, filter) => return false,
                (Grant::Deny, Action::Publish(name) | Action::Read(name))
                    if topics::matches(&topic, name) =>
                {
                    return false
                }
                (Grant::Write | Grant::ReadWrite, Action::Publish(name))
                | (Grant::Read | Grant::ReadWrite, Action::Read(name)) => {
                    granted |= topics::matches(&topic, name);
                }
                (Grant::Read | Grant::ReadWrite, Action::Subscribe(filter)) => {
                    granted |= covers(&topic, filter);
                }
                _ => {}
            }
        }
        granted
    }
}

fn parse_rule(rest: &str) -> Result<Rule, String> {
    let (first, tail) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
    let (grant, topic) = match first {
        "read" => (Grant::Read, tail.trim()),
        "write" => (Grant::Write, tail.trim()),
        "readwrite" => (Grant::ReadWrite, tail.trim()),
        "deny" => (Grant::Deny, tail.trim()),
        _ => (Grant::ReadWrite, rest),
    };
    // `%u`/`%c` are substituted before matching, so validate with placeholders filled in.
    let probe = topic.replace("%u", "u").replace("%c", "c");
    topics::validate_filter(&probe, &topics::TopicLimits::PROTOCOL)
        .map_err(|e| format!("bad topic `{topic}`: {e}"))?;
    Ok(Rule {
        grant,
        topic: topic.to_string(),
    })
}

/// Substitutes `%u` and `%c` in a pattern. A user name or client id containing a wildcard or `/`
/// could widen the rule, so such clients get no pattern rules at all (mosquitto does the same).
fn expand<'r>(rule: &'r Rule, client: Client<'_>) -> Option<std::borrow::Cow<'r, str>> {
    let unsafe_part = |s: &str| s.contains(['+', '#', '/']);
    let mut topic = std::borrow::Cow::Borrowed(rule.topic.as_str());
    if topic.contains("%u") {
        let user = client.user.filter(|u| !unsafe_part(u))?;
        topic = topic.replace("%u", user).into();
    }
    if topic.contains("%c") {
        if unsafe_part(client.client_id) {
            return None;
        }
        topic = topic.replace("%c", client.client_id).into();
    }
    Some(topic)
}

/// Whether every topic matched by `filter` is also matched by `rule` (both valid filters).
pub fn covers(rule: &str, filter: &str) -> bool {
    // `$` topics are never matched by a rule that starts with a wildcard.
    if filter.starts_with('$') && rule.starts_with(['+', '#']) {
        return false;
    }
    let mut r = rule.split('/');
    let mut f = filter.split('/');
    loop {
        match (r.next(), f.next()) {
            (Some("#"), _) => return true,
            (Some(_), Some("#")) => return false,
            (Some("+"), Some(_)) => {}
            (Some(rl), Some(fl)) if rl == fl && fl != "+" => {}
            (None, None) => return true,
            // `a/#` also matches `a` itself.
            (Some(_), None) => return r.next().is_none() && rule.ends_with("/#"),
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "\
# anonymous clients
topic read public/#

user alice
topic readwrite alice/#
topic deny alice/secret
topic write shared/inbox

user bob
topic read #

pattern readwrite devices/%c/#
pattern read users/%u/+
";

    fn alice() -> Client<'static> {
        Client {
            user: Some("alice"),
            client_id: "alice-phone",
        }
    }

    fn anon() -> Client<'static> {
        Client {
            user: None,
            client_id: "anon1",
        }
    }

    #[test]
    fn decisions_table() {
        let acl = Acl::parse(FILE).unwrap();
        let bob = Client {
            user: Some("bob"),
            client_id: "bob",
        };
        let cases: &[(Client, Action, bool)] = &[
            (anon(), Action::Read("public/news"), true),
            (anon(), Action::Subscribe("public/#"), true),
            (anon(), Action::Subscribe("public/+/x"), true),
            (anon(), Action::Subscribe("#"), false),
            (anon(), Action::Publish("public/news"), false),
            (anon(), Action::Read("alice/x"), false),
            (alice(), Action::Publish("alice/x"), true),
            (alice(), Action::Subscribe("alice/#"), true),
            (alice(), Action::Publish("alice/secret"), false),
            (alice(), Action::Read("alice/secret"), false),
            (alice(), Action::Subscribe("alice/secret"), false),
            (alice(), Action::Subscribe("#"), false),
            (alice(), Action::Subscribe("+/x"), false),
            (alice(), Action::Read("public/news"), false),
            (alice(), Action::Publish("shared/inbox"), true),
            (alice(), Action::Read("shared/inbox"), false),
            (alice(), Action::Publish("devices/alice-phone/temp"), true),
            (alice(), Action::Publish("devices/other/temp"), false),
            (alice(), Action::Subscribe("users/alice/+"), true),
            (alice(), Action::Subscribe("users/+/x"), false),
            (bob, Action::Subscribe("#"), true),
            (bob, Action::Subscribe("$SYS/#"), false),
            (bob, Action::Read("anything/at/all"), true),
            (bob, Action::Publish("anything"), false),
        ];
        for (client, action, want) in cases {
            assert_eq!(acl.allows(*client, *action), *want, "{client:?} {action:?}");
        }
    }

    #[test]
    fn wildcard_client_ids_get_no_patterns() {
        let acl = Acl::parse(FILE).unwrap();
        let sneaky = Client {
            user: Some("eve"),
            client_id: "#",
        };
        assert!(!acl.allows(sneaky, Action::Publish("devices/x/y")));
        let slashy = Client {
            user: Some("eve"),
            client_id: "a/b",
        };
        assert!(!acl.allows(slashy, Action::Publish("devices/a/b/c")));
    }

    #[test]
    fn covers_table() {
        let cases: &[(&str, &str, bool)] = &[
            ("#", "a/b", true),
            ("#", "#", true),
            ("a/#", "a", true),
            ("a/#", "a/+/c", true),
            ("a/+", "a/b", true),
            ("a/+", "a/+", true),
            ("a/+", "a/#", false),
            ("a/b", "a/+", false),
            ("a/b", "a/b", true),
            ("a", "a/b", false),
            ("+/b", "x/b", true),
            ("#", "$SYS/x", false),
            ("$SYS/#", "$SYS/broker/+", true),
        ];
        for (rule, filter, want) in cases {
            assert_eq!(covers(rule, filter), *want, "{rule} covers {filter}");
        }
    }

    #[test]
    fn syntax_errors_name_the_line() {
        let err = Acl::parse("user a\ntopic read a/#/b\n").unwrap_err();
        assert_eq!(err.to_string(), "ACL file line 2: bad topic `a/#/b`: '#' must be the last level of a filter and stand alone");
        assert!(Acl::parse("frobnicate x").is_err());
        assert!(Acl::parse("user").is_err());
    }
}
