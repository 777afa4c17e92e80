//! The subscription index: a trie over topic levels, so matching a topic costs its depth, not the
//! number of subscriptions.
//!
//! Each node keeps the subscribers whose filter ends there and those whose filter ends there with
//! `/#`; `+` is an ordinary child named `+`. Shared subscriptions (`$share/{group}/{filter}`) live
//! in groups beside the plain entries and deliver each message to one member, round-robin.
//!
//! Nothing here recurses per level (insert, remove, match, drop): a filter's depth is capped at
//! the edge (`mqtt.max_topic_levels`), but the trie must not depend on that for its stack.

use std::cell::Cell;
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
    /// `receives` already let this one through (a shared group's pick): no need to ask again.
    pub received: bool,
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
    /// Where the round-robin resumes. A `Cell`: matching only reads the trie otherwise.
    next: Cell<usize>,
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
    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.children.is_empty() && self.here.is_none() && self.below.is_none()
    }
}

impl Drop for Node {
    /// Frees the subtree with a stack of its own: the default drop recurses once per level,
    /// and a deep chain of levels would overflow the thread's stack.
    fn drop(&mut self) {
        let mut stack: Vec<Node> = self.children.drain().map(|(_, n)| n).collect();
        while let Some(mut node) = stack.pop() {
            stack.extend(node.children.drain().map(|(_, n)| n));
        }
    }
}

#[derive(Debug, Default)]
pub struct Subscriptions {
    root: Node,
    count: usize,
    /// In a cluster, a shared group takes each message once cluster-wide, through a NATS queue
    /// group ([`Subscriptions::pick_shared`]): matching then leaves the groups out.
    shared_by_cluster: bool,
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
                            next: Cell::new(0),
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
        let (path, below) = split_filter(filter);
        let Some(node) = self.node_mut(&path) else {
            return false;
        };
        let slot = if below {
            &mut node.below
        } else {
            &mut node.here
        };
        let removed = remove_from(slot, group, client);
        if removed {
            self.count -= 1;
            self.prune(&path);
        }
        removed
    }

    /// The node at the end of `path`, if it exists.
    fn node_mut(&mut self, path: &[&str]) -> Option<&mut Node> {
        let mut node = &mut self.root;
        for level in path {
            node = node.children.get_mut(*level)?;
        }
        Some(node)
    }

    /// Drops the nodes at the end of `path` left holding nothing but the path itself: one pass
    /// down finds where that empty tail starts, and its parent lets go of it.
    fn prune(&mut self, path: &[&str]) {
        let mut cut = None;
        let mut node = &self.root;
        for (i, level) in path.iter().enumerate() {
            let Some(child) = node.children.get(*level) else {
                return;
            };
            let others = if i + 1 == path.len() { 0 } else { 1 };
            if child.here.is_none() && child.below.is_none() && child.children.len() == others {
                cut.get_or_insert(i);
            } else {
                cut = None;
            }
            node = child;
        }
        if let Some(cut) = cut {
            if let Some(parent) = self.node_mut(&path[..cut]) {
                parent.children.remove(path[cut]);
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

    /// Leaves shared groups out of [`Subscriptions::for_each_match`] (see `shared_by_cluster`).
    pub fn share_through_cluster(&mut self) {
        self.shared_by_cluster = true;
    }

    /// The member of shared group `group` on `filter` that takes a message, picked as
    /// [`Subscriptions::for_each_match`] picks (for a message the cluster gave this node).
    pub fn pick_shared(
        &self,
        group: &str,
        filter: &str,
        receives: &dyn Fn(&Arc<str>, &SubOptions) -> Option<bool>,
    ) -> Option<(Arc<str>, SubOptions)> {
        let (path, below) = split_filter(filter);
        let mut node = &self.root;
        for level in path {
            node = node.children.get(level)?;
        }
        let entries = if below { &node.below } else { &node.here };
        let g = entries
            .as_ref()?
            .shared
            .iter()
            .find(|g| &*g.name == group)?;
        let pick = g.pick(receives)?;
        g.next.set(pick + 1);
        let (client, options) = &g.members[pick];
        Some((client.clone(), options.clone()))
    }

    /// Calls `hit` for every subscription matching `topic`. For each shared group it picks one
    /// member, the next in turn that `receives` (`None`: may not receive this message; else
    /// whether it is connected) says is connected, else the next that may receive it; a group
    /// none of whose members may receive it is skipped.
    pub fn for_each_match(
        &self,
        topic: &str,
        receives: &dyn Fn(&Arc<str>, &SubOptions) -> Option<bool>,
        hit: &mut dyn FnMut(Hit<'_>),
    ) {
        // `$` topics are not matched by wildcards at the first level (MQTT 5.0 §4.7.2).
        let dollar = topic.starts_with('$');
        let levels: Vec<&str> = topic.split('/').collect();
        // Depth first with a stack of its own, not recursion: a topic's depth must not be the
        // depth of the thread's stack.
        let mut stack: Vec<(&Node, usize)> = vec![(&self.root, 0)];
        while let Some((node, depth)) = stack.pop() {
            let wild_ok = !(dollar && depth == 0);
            if wild_ok {
                // `a/#` matches `a` itself as well as everything below it.
                if let Some(below) = &node.below {
                    emit(below, !self.shared_by_cluster, receives, hit);
                }
            }
            let Some(level) = levels.get(depth) else {
                if let Some(here) = &node.here {
                    emit(here, !self.shared_by_cluster, receives, hit);
                }
                continue;
            };
            if let Some(child) = node.children.get(*level) {
                stack.push((child, depth + 1));
            }
            if wild_ok && *level != "+" {
                if let Some(child) = node.children.get("+") {
                    stack.push((child, depth + 1));
                }
            }
        }
    }
}

/// A valid filter's levels up to a trailing `#`, and whether it had one.
fn split_filter(filter: &str) -> (Vec<&str>, bool) {
    let mut path: Vec<&str> = filter.split('/').collect();
    let below = path.last() == Some(&"#");
    if below {
        path.pop();
    }
    (path, below)
}

/// Removes `client` from the entries in `slot` (its group's, if shared); empties are dropped.
fn remove_from(slot: &mut Option<Box<Entries>>, group: Option<&str>, client: &str) -> bool {
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
}

fn emit(
    entries: &Entries,
    shared: bool,
    receives: &dyn Fn(&Arc<str>, &SubOptions) -> Option<bool>,
    hit: &mut dyn FnMut(Hit<'_>),
) {
    for (client, options) in &entries.plain {
        hit(Hit {
            client,
            options,
            received: false,
        });
    }
    if !shared {
        return;
    }
    for group in &entries.shared {
        if let Some(pick) = group.pick(receives) {
            group.next.set(pick + 1);
            let (client, options) = &group.members[pick];
            hit(Hit {
                client,
                options,
                received: true,
            });
        }
    }
}

impl Group {
    /// The member that takes the next message: in turn from `next`, the first connected one
    /// that may receive it, else the first that may (its session queues it).
    fn pick(&self, receives: &dyn Fn(&Arc<str>, &SubOptions) -> Option<bool>) -> Option<usize> {
        let n = self.members.len();
        let start = self.next.get() % n;
        let mut fallback = None;
        for i in (0..n).map(|i| (start + i) % n) {
            let (client, options) = &self.members[i];
            match receives(client, options) {
                Some(true) => return Some(i),
                Some(false) => {
                    fallback.get_or_insert(i);
                }
                None => {}
            }
        }
        fallback
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
        subs.for_each_match(topic, &|_, _| Some(true), &mut |h| {
            out.push(h.client.to_string())
        });
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
            subs.for_each_match("job/1", &|c, _| Some(&**c != "s2"), &mut |h| {
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

    #[test]
    fn shared_groups_skip_members_who_may_not_receive() {
        let mut subs = Subscriptions::default();
        for name in ["bob", "eve"] {
            subs.insert(Some("g"), "job/+", &Arc::from(name), opts(QoS::AtLeastOnce));
        }
        let pick = |subs: &Subscriptions, eve_connected: bool| {
            let mut hits = Vec::new();
            let receives = |c: &Arc<str>, _: &SubOptions| match &**c {
                "eve" => None,
                _ => Some(!eve_connected),
            };
            subs.for_each_match("job/1", &receives, &mut |h| hits.push(h.client.to_string()));
            hits
        };
        for _ in 0..4 {
            assert_eq!(pick(&subs, false), ["bob"]);
            // Bob away: he still takes it (his session queues it), never eve.
            assert_eq!(pick(&subs, true), ["bob"]);
        }
        let mut only_eve = Subscriptions::default();
        only_eve.insert(
            Some("g"),
            "job/+",
            &Arc::from("eve"),
            opts(QoS::AtLeastOnce),
        );
        assert!(pick(&only_eve, false).is_empty());
    }

    /// With the level cap raised far beyond its default, a filter of 100,000 levels is
    /// inserted, matched, removed and dropped without recursion (which overflowed the stack).
    #[test]
    fn deep_filters_need_no_recursion() {
        let depth = 100_000;
        let filter = vec!["+"; depth].join("/");
        let topic = vec!["a"; depth].join("/");
        let mut subs = Subscriptions::default();
        let c: Arc<str> = "c".into();
        subs.insert(None, &filter, &c, opts(QoS::AtMostOnce));
        subs.insert(None, &format!("{filter}/#"), &c, opts(QoS::AtMostOnce));
        assert_eq!(matches(&mut subs, &topic), ["c", "c"]);
        assert!(subs.remove(None, &filter, "c"));
        assert_eq!(matches(&mut subs, &topic), ["c"]);
        assert!(subs.remove(None, &format!("{filter}/#"), "c"));
        assert!(subs.root.is_empty());
        subs.insert(None, &filter, &c, opts(QoS::AtMostOnce));
        drop(subs);
    }
}
