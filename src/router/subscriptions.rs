//! The subscription index: a trie over topic levels, so matching a topic costs its depth, not the
//! number of subscriptions.
//!
//! Each node keeps the subscribers whose filter ends there and those whose filter ends there with
//! `/#`; `+` is an ordinary child named `+`. Shared subscriptions (`$share/{group}/{filter}`) live
//! in groups beside the plain entries and deliver each message to one member, round-robin.

use std::collections::HashMap;
use std::sync::Arc;

use rumqttc::v5::mqttbytes::QoS;

/// A subscription's options (MQTT 5.0 §3.8.3.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubOptions {
    pub qos: QoS,
    pub no_local: bool,
    pub retain_as_published: bool,
    pub id: Option<usize>,
    /// Deliveries through this filter are authorized message by message.
    pub check_read: bool,
}

/// One match: who, and through which options.
#[derive(Debug, Clone)]
pub struct Hit<'a> {
    pub client: &'a Arc<str>,
    pub options: &'a SubOptions,
}

#[derive(Debug, Default)]
struct Entries {
    plain: Vec<(Arc<str>, SubOptions)>,
    shared: Vec<Group>,
}

#[derive(Debug)]
struct Group {
    name: Arc<str>,
    members: Vec<(Arc<str>, SubOptions)>,
    next: usize,
}

impl Entries {
    fn is_empty(&self) -> bool {
        self.plain.is_empty() && self.shared.is_empty()
    }
}

/// A trie node. Entries are boxed and created on demand: most nodes are either inner levels
/// with no subscribers or leaves with no children, and one client per topic (a device's own
/// stream) is the common shape, so an empty part must cost one pointer, not a struct.
#[derive(Debug, Default)]
struct Node {
    children: HashMap<Box<str>, Node>,
    here: Option<Box<Entries>>,
    below: Option<Box<Entries>>,
}

impl Node {
    fn is_empty(&self) -> bool {
        self.children.is_empty() && self.here.is_none() && self.below.is_none()
    }
}

#[derive(Debug, Default)]
pub struct Subscriptions {
    root: Node,
    count: usize,
}

impl Subscriptions {
    /// Number of subscriptions held.
    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Adds or replaces `client`'s subscription to `filter` (in `group` if shared). Returns
    /// whether it already existed.
    pub fn insert(
        &mut self,
        group: Option<&str>,
        filter: &str,
        client: &Arc<str>,
        options: SubOptions,
    ) -> bool {
        let entries = Self::entries_mut(&mut self.root, filter);
        let list = match group {
            None => &mut entries.plain,
            Some(name) => {
                let idx = match entries.shared.iter().position(|g| &*g.name == name) {
                    Some(i) => i,
                    None => {
                        entries.shared.push(Group {
                            name: name.into(),
                            members: Vec::new(),
                            next: 0,
                        });
                        entries.shared.len() - 1
                    }
                };
                &mut entries.shared[idx].members
            }
        };
        match list.iter_mut().find(|(c, _)| c == client) {
            Some(existing) => {
                existing.1 = options;
                true
            }
            None => {
                // Exact growth: most lists hold one subscriber.
                list.reserve_exact(1);
                list.push((client.clone(), options));
                self.count += 1;
                false
            }
        }
    }

    /// Removes a subscription; returns whether it existed.
    pub fn remove(&mut self, group: Option<&str>, filter: &str, client: &str) -> bool {
        let removed = Self::remove_in(&mut self.root, filter.split('/'), group, client);
        if removed {
            self.count -= 1;
        }
        removed
    }

    fn remove_in<'f>(
        node: &mut Node,
        mut levels: impl Iterator<Item = &'f str>,
        group: Option<&str>,
        client: &str,
    ) -> bool {
        let entries_remove = |slot: &mut Option<Box<Entries>>| -> bool {
            let Some(entries) = slot.as_mut() else {
                return false;
            };
            let list = match group {
                None => &mut entries.plain,
                Some(name) => match entries.shared.iter_mut().find(|g| &*g.name == name) {
                    Some(g) => &mut g.members,
                    None => return false,
                },
            };
            let before = list.len();
            list.retain(|(c, _)| &**c != client);
            let removed = list.len() != before;
            entries.shared.retain(|g| !g.members.is_empty());
            if entries.is_empty() {
                *slot = None;
            }
            removed
        };
        match levels.next() {
            None => entries_remove(&mut node.here),
            Some("#") => entries_remove(&mut node.below),
            Some(level) => {
                let Some(child) = node.children.get_mut(level) else {
                    return false;
                };
                let removed = Self::remove_in(child, levels, group, client);
                if child.is_empty() {
                    node.children.remove(level);
                }
                removed
            }
        }
    }

    fn entries_mut<'n>(mut node: &'n mut Node, filter: &str) -> &'n mut Entries {
        let mut levels = filter.split('/').peekable();
        while let Some(level) = levels.next() {
            if level == "#" && levels.peek().is_none() {
                return node.below.get_or_insert_with(Box::default);
            }
            node = node.children.entry(level.into()).or_default();
        }
        node.here.get_or_insert_with(Box::default)
    }

    /// Calls `hit` for every subscription matching `topic`; for each shared group it picks one
    /// member, the next in turn for which `eligible` holds (a connected one, say), else the next.
    pub fn for_each_match(
        &mut self,
        topic: &str,
        eligible: &dyn Fn(&Arc<str>) -> bool,
        hit: &mut dyn FnMut(Hit<'_>),
    ) {
        // `$` topics are not matched by wildcards at the first level (MQTT 5.0 §4.7.2).
        let dollar = topic.starts_with('$');
        let levels: Vec<&str> = topic.split('/').collect();
        Self::walk(&mut self.root, &levels, 0, dollar, eligible, hit);
    }

    fn walk(
        node: &mut Node,
        levels: &[&str],
        depth: usize,
        dollar: bool,
        eligible: &dyn Fn(&Arc<str>) -> bool,
        hit: &mut dyn FnMut(Hit<'_>),
    ) {
        let wild_ok = !(dollar && depth == 0);
        if wild_ok {
            // `a/#` matches `a` itself as well as everything below it.
            if let Some(below) = node.below.as_mut() {
                Self::emit(below, eligible, hit);
            }
        }
        let Some((level, rest)) = levels.split_first() else {
            if let Some(here) = node.here.as_mut() {
                Self::emit(here, eligible, hit);
            }
            return;
        };
        if let Some(child) = node.children.get_mut(*level) {
            Self::walk(child, rest, depth + 1, dollar, eligible, hit);
        }
        if wild_ok && *level != "+" {
            if let Some(child) = node.children.get_mut("+") {
                Self::walk(child, rest, depth + 1, dollar, eligible, hit);
            }
        }
    }

    fn emit(
        entries: &mut Entries,
        eligible: &dyn Fn(&Arc<str>) -> bool,
        hit: &mut dyn FnMut(Hit<'_>),
    ) {
        for (client, options) in &entries.plain {
            hit(Hit { client, options });
        }
        for group in &mut entries.shared {
            let n = group.members.len();
            let start = group.next % n;
            let pick = (0..n)
                .map(|i| (start + i) % n)
                .find(|&i| eligible(&group.members[i].0))
                .unwrap_or(start);
            group.next = pick + 1;
            let (client, options) = &group.members[pick];
            hit(Hit { client, options });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(qos: QoS) -> SubOptions {
        SubOptions {
            qos,
            no_local: false,
            retain_as_published: false,
            id: None,
            check_read: false,
        }
    }

    fn matches(subs: &mut Subscriptions, topic: &str) -> Vec<String> {
        let mut out = Vec::new();
        subs.for_each_match(topic, &|_| true, &mut |h| out.push(h.client.to_string()));
        out.sort();
        out
    }

    #[test]
    fn trie_agrees_with_topics_matches() {
        let filters = [
            "a/b", "a/+", "a/#", "#", "+/b", "+/+", "a/b/c", "+", "$SYS/#", "a//b", "+/#",
        ];
        let topics = [
            "a", "a/b", "a/c", "a/b/c", "b", "x/b", "$SYS/x", "a//b", "/b",
        ];
        let mut subs = Subscriptions::default();
        for f in filters {
            let client: Arc<str> = f.into();
            subs.insert(None, f, &client, opts(QoS::AtMostOnce));
        }
        for t in topics {
            let mut want: Vec<String> = filters
                .iter()
                .filter(|f| crate::topics::matches(f, t))
                .map(|f| f.to_string())
                .collect();
            want.sort();
            assert_eq!(matches(&mut subs, t), want, "topic {t}");
        }
    }

    #[test]
    fn insert_replaces_and_remove_prunes() {
        let mut subs = Subscriptions::default();
        let c: Arc<str> = "c".into();
        assert!(!subs.insert(None, "a/b/c", &c, opts(QoS::AtMostOnce)));
        assert!(subs.insert(None, "a/b/c", &c, opts(QoS::AtLeastOnce)));
        assert_eq!(subs.len(), 1);
        assert!(subs.remove(None, "a/b/c", "c"));
        assert!(!subs.remove(None, "a/b/c", "c"));
        assert_eq!(subs.len(), 0);
        assert!(subs.root.is_empty());
    }

    #[test]
    fn shared_groups_round_robin_over_eligible_members() {
        let mut subs = Subscriptions::default();
        for name in ["s1", "s2", "s3"] {
            subs.insert(Some("g"), "job/+", &Arc::from(name), opts(QoS::AtLeastOnce));
        }
        subs.insert(None, "job/+", &Arc::from("watcher"), opts(QoS::AtMostOnce));
        let mut seen = Vec::new();
        for _ in 0..6 {
            let mut hits = Vec::new();
            subs.for_each_match("job/1", &|c| &**c != "s2", &mut |h| {
                hits.push(h.client.to_string())
            });
            assert_eq!(hits.len(), 2);
            assert!(hits.contains(&"watcher".to_string()));
            seen.extend(hits.into_iter().filter(|h| h != "watcher"));
        }
        assert_eq!(seen, ["s1", "s3", "s1", "s3", "s1", "s3"]);
        assert!(subs.remove(Some("g"), "job/+", "s1"));
        assert_eq!(subs.len(), 3);
    }
}
