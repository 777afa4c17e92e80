//! Topic names and filters (`topics`) and the subscription trie (`router::Subscriptions`).
//!
//! Input: lines (read as lossy UTF-8). `s{c}{filter}` subscribes client `{c}` (its byte picks
//! one of four) to a raw SUBSCRIBE filter (`$share/{group}/…` included), `u{c}{filter}`
//! unsubscribes it, any other line publishes on the topic after its first character.
//!
//! Properties: the filter and name checks agree with each other and with `literal_prefix`; the
//! trie agrees with a plain list of subscriptions matched one by one with `topics::matches`
//! (the same hits, one member per shared group, an eligible member whenever a group has one),
//! and its count and insert/remove answers agree with the list's.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use natter::router::{SubOptions, Subscriptions};
use natter::topics::{self, TopicLimits};
use rumqttc::v5::mqttbytes::QoS;

/// The server's default caps (`mqtt.max_topic_len`, `mqtt.max_topic_levels`).
const LIMITS: TopicLimits = TopicLimits {
    max_len: 4096,
    max_levels: 128,
};

const CLIENTS: [&str; 4] = ["a", "b", "c", "d"];

/// A subscription: shared group (if any), filter, client.
type Key = (Option<String>, String, &'static str);

/// The trie and the list it must agree with: each subscription's key and its tag (carried in
/// the options' subscription id, so a hit names the subscription it came through).
#[derive(Default)]
struct Model {
    trie: Subscriptions,
    list: BTreeMap<Key, usize>,
    next_tag: usize,
}

pub fn check(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut model = Model::default();
    for line in text.split('\n') {
        let mut chars = line.chars();
        let (Some(op), Some(c)) = (chars.next(), chars.next()) else {
            continue;
        };
        let client = CLIENTS[c as usize % CLIENTS.len()];
        match op {
            's' => model.subscribe(chars.as_str(), client),
            'u' => model.unsubscribe(chars.as_str(), client),
            _ => model.publish(&line[op.len_utf8()..]),
        }
        assert_eq!(model.trie.len(), model.list.len());
        assert_eq!(model.trie.is_empty(), model.list.is_empty());
    }
}

/// What the pure checks promise about one raw filter.
fn check_filter(raw: &str) {
    if let Ok(sub) = topics::parse_subscription(raw, &LIMITS) {
        assert!(topics::validate_filter(sub.filter, &LIMITS).is_ok());
        assert_eq!(sub.group.is_some(), raw.starts_with("$share/"));
    }
    if topics::validate_filter(raw, &LIMITS).is_ok() {
        let prefix = topics::literal_prefix(raw);
        assert!(raw.starts_with(prefix) && !topics::has_wildcard(prefix));
        assert_eq!(
            prefix.len() < raw.len(),
            topics::has_wildcard(raw),
            "{raw:?}"
        );
    }
    if topics::validate_name(raw, &LIMITS).is_ok() {
        assert!(topics::validate_filter(raw, &LIMITS).is_ok() && !topics::has_wildcard(raw));
        assert!(topics::matches(raw, raw));
    }
}

impl Model {
    fn subscribe(&mut self, raw: &str, client: &'static str) {
        check_filter(raw);
        let Ok(sub) = topics::parse_subscription(raw, &LIMITS) else {
            return;
        };
        let key = (
            sub.group.map(str::to_string),
            sub.filter.to_string(),
            client,
        );
        self.next_tag += 1;
        let options = SubOptions {
            qos: QoS::AtMostOnce,
            no_local: false,
            retain_as_published: false,
            id: Some(self.next_tag),
            check_read: false,
        };
        let existed = self
            .trie
            .insert(sub.group, sub.filter, &Arc::from(client), options);
        assert_eq!(existed, self.list.insert(key, self.next_tag).is_some());
    }

    fn unsubscribe(&mut self, raw: &str, client: &'static str) {
        let Ok(sub) = topics::parse_subscription(raw, &LIMITS) else {
            return;
        };
        let key = (
            sub.group.map(str::to_string),
            sub.filter.to_string(),
            client,
        );
        let removed = self.trie.remove(sub.group, sub.filter, client);
        assert_eq!(removed, self.list.remove(&key).is_some(), "{raw:?}");
    }

    fn publish(&mut self, topic: &str) {
        check_filter(topic);
        if topics::validate_name(topic, &LIMITS).is_err() {
            return;
        }
        // Everyone may receive; "d" stands for a disconnected member, picked only when its
        // group has no connected one.
        let eligible = |c: &Arc<str>, _: &SubOptions| Some(&**c != "d");
        let mut hits = Vec::new();
        self.trie.for_each_match(topic, &eligible, &mut |hit| {
            hits.push(hit.options.id.expect("every subscription is tagged"));
        });
        let by_tag: BTreeMap<usize, &Key> = self.list.iter().map(|(k, &t)| (t, k)).collect();
        let mut plain = BTreeSet::new();
        let mut groups = BTreeSet::new();
        for tag in &hits {
            let (group, filter, client) = by_tag.get(tag).expect("a hit is a live subscription");
            assert!(topics::matches(filter, topic), "{filter:?} vs {topic:?}");
            assert!(topic.starts_with(topics::literal_prefix(filter)));
            match group {
                None => assert!(plain.insert(*tag), "two hits through one subscription"),
                Some(g) => {
                    assert!(groups.insert((g, filter)), "two hits for one shared group");
                    assert!(
                        *client != "d" || !self.has_eligible(g, filter),
                        "skipped eligible"
                    );
                }
            }
        }
        for ((group, filter, _), tag) in &self.list {
            if topics::matches(filter, topic) {
                match group {
                    None => assert!(plain.contains(tag), "{filter:?} missed {topic:?}"),
                    Some(g) => assert!(groups.contains(&(g, filter)), "group {g} missed"),
                }
            }
        }
    }

    fn has_eligible(&self, group: &str, filter: &str) -> bool {
        self.list
            .keys()
            .any(|(g, f, c)| g.as_deref() == Some(group) && f == filter && *c != "d")
    }
}
