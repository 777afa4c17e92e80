//! The retained store: the last retained message of each topic, bounded by `max_retained`
//! messages and `max_retained_bytes` (as [`Message::size`] counts them), handed to new
//! subscriptions whose filter matches it.
//!
//! A retained message that would take the store past either bound is not kept (it is still
//! delivered to the subscribers of the moment); replacing a topic's message counts only the
//! difference. When a replacement is refused, the message it would have replaced is forgotten
//! too: it is no longer the topic's latest, and a new subscriber must not take it for that.
//!
//! Expired messages are never delivered again: they give up their slots when a subscription
//! matches them, when the full store is swept, and before `$SYS` counts the store.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rumqttc::v5::mqttbytes::QoS;

use super::{Delivery, Message, Router};
use crate::codec::min_qos;
use crate::stats::Stats;
use crate::topics;

/// The retained messages by topic, and their total size.
#[derive(Debug, Default)]
pub(super) struct Retained {
    /// Ordered, so that a subscription reads only the topics under its filter's literal prefix
    /// (a scan of every retained topic per SUBSCRIBE made connecting quadratic: each connected
    /// user has a retained presence topic).
    by_topic: BTreeMap<String, Arc<Message>>,
    /// The sum of their sizes.
    bytes: usize,
}

impl Retained {
    pub(super) fn len(&self) -> usize {
        self.by_topic.len()
    }

    /// Whether a message of `size` bytes on `topic` keeps the store within `max` messages and
    /// `max_bytes`; one replacing the topic's message counts only the difference.
    fn fits(&self, topic: &str, size: usize, max: usize, max_bytes: usize) -> bool {
        let old = self.by_topic.get(topic).map(|m| m.size());
        let count = self.by_topic.len() + usize::from(old.is_none());
        count <= max && self.bytes - old.unwrap_or(0) + size <= max_bytes
    }

    fn insert(&mut self, topic: &str, message: Arc<Message>) {
        self.bytes += message.size();
        match self.by_topic.get_mut(topic) {
            Some(slot) => {
                self.bytes -= slot.size();
                *slot = message;
            }
            None => {
                self.by_topic.insert(topic.to_string(), message);
            }
        }
    }

    fn remove(&mut self, topic: &str) {
        if let Some(old) = self.by_topic.remove(topic) {
            self.bytes -= old.size();
        }
    }

    fn drop_expired(&mut self, now: Instant) {
        let bytes = &mut self.bytes;
        self.by_topic.retain(|_, m| {
            let expired = m.is_expired(now);
            if expired {
                *bytes -= m.size();
            }
            !expired
        });
    }

    /// The messages on topics that `filter` matches, in topic order: one range of the ordered
    /// store (a single topic for a filter without wildcards).
    fn matching<'a>(
        &'a self,
        filter: &'a str,
    ) -> impl Iterator<Item = (&'a String, &'a Arc<Message>)> + 'a {
        let wild = topics::has_wildcard(filter);
        let start = if wild {
            topics::literal_prefix(filter)
        } else {
            filter
        };
        self.by_topic
            .range::<str, _>((Bound::Included(start), Bound::Unbounded))
            .take_while(move |(t, _)| {
                if wild {
                    t.starts_with(start)
                } else {
                    *t == filter
                }
            })
            .filter(move |(t, _)| !wild || topics::matches(filter, t))
    }
}

impl Router {
    /// Keeps a retained message on `topic` (its own topic), replacing the one there; an empty
    /// payload clears the topic instead. One the bounds have no room for is not kept, and the
    /// topic is cleared.
    pub(super) fn store_retained(&mut self, topic: &str, message: &Arc<Message>, now: Instant) {
        if message.payload.is_empty() {
            self.retained.remove(topic);
            return;
        }
        let (max, max_bytes) = (self.settings.max_retained, self.settings.max_retained_bytes);
        let size = message.size();
        if !self.retained.fits(topic, size, max, max_bytes) && now >= self.next_retained_sweep {
            // Expired messages are never delivered again: they give up their room.
            // At most once a second: with none expired, a sweep frees nothing and each
            // refused message would scan the whole store again.
            self.retained.drop_expired(now);
            self.next_retained_sweep = now + Duration::from_secs(1);
        }
        if self.retained.fits(topic, size, max, max_bytes) {
            self.retained.insert(topic, message.clone());
        } else {
            self.retained.remove(topic);
            Stats::add(&self.stats.retained_refused, 1);
        }
    }

    /// Sends the retained messages matching a new subscription (always with RETAIN set).
    pub(super) fn send_retained(
        &mut self,
        client: &str,
        filter: &str,
        qos: QoS,
        id: Option<usize>,
        now: Instant,
    ) {
        let Some(session) = self.sessions.get(client) else {
            return;
        };
        let check = self.access.needs_read_check(filter);
        // Expired messages are never delivered: the matched ones give up their slots here.
        let mut expired = Vec::new();
        let matching: Vec<Arc<Message>> = self
            .retained
            .matching(filter)
            .filter(|(t, _)| !check || self.access.can_read(&session.identity, t))
            .filter_map(|(t, m)| {
                if m.is_expired(now) {
                    expired.push(t.clone());
                    None
                } else {
                    Some(m.clone())
                }
            })
            .collect();
        for topic in expired {
            self.retained.remove(&topic);
        }
        for message in matching {
            let delivery = Delivery {
                qos: min_qos(message.qos, qos),
                message,
                retain: true,
                dup: false,
                pkid: 0,
                subscription_ids: id.into_iter().collect(),
            };
            self.deliver(client, delivery, now);
        }
    }

    /// Forgets retained messages whose Message Expiry Interval has passed.
    pub(super) fn drop_expired_retained(&mut self, now: Instant) {
        self.retained.drop_expired(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A message of `size` bytes on a one-byte topic.
    fn sized(size: usize) -> Arc<Message> {
        Arc::new(Message::server("t".into(), vec![1; size - 1]))
    }

    #[test]
    fn the_store_counts_bytes_and_replacements_count_the_difference() {
        let mut r = Retained::default();
        r.insert("a", sized(100));
        r.insert("b", sized(100));
        assert_eq!(r.bytes, 200);
        assert!(!r.fits("c", 100, 10, 250), "a new topic beyond the bytes");
        assert!(r.fits("c", 50, 10, 250));
        assert!(!r.fits("c", 50, 2, 250), "a new topic beyond the count");
        assert!(
            r.fits("a", 150, 2, 250),
            "a replacement counts the difference"
        );
        assert!(!r.fits("a", 151, 2, 250));
        r.insert("a", sized(150));
        assert_eq!(r.bytes, 250);
        r.remove("b");
        assert_eq!((r.len(), r.bytes), (1, 150));
    }

    #[test]
    fn expired_messages_give_their_bytes_back() {
        let now = Instant::now();
        let mut r = Retained::default();
        let mut expiring = Message::server("t".into(), vec![1; 99]);
        expiring.expires_at = Some(now);
        r.insert("a", Arc::new(expiring));
        r.insert("b", sized(30));
        r.drop_expired(now);
        assert_eq!((r.len(), r.bytes), (1, 30));
    }

    #[test]
    fn matching_reads_the_filters_range_only() {
        let mut r = Retained::default();
        for topic in ["a/1", "a/2/x", "ab", "b/1"] {
            r.insert(topic, sized(10));
        }
        let topics =
            |filter| -> Vec<String> { r.matching(filter).map(|(t, _)| t.clone()).collect() };
        assert_eq!(topics("a/+"), ["a/1"]);
        assert_eq!(topics("a/#"), ["a/1", "a/2/x"]);
        assert_eq!(topics("ab"), ["ab"]);
        assert!(topics("a").is_empty());
    }
}
