//! The retained store: the last retained message of each topic, bounded by `max_retained`,
//! handed to new subscriptions whose filter matches it.
//!
//! Expired messages are never delivered again: they give up their slots when a subscription
//! matches them, when the full store is swept, and before `$SYS` counts the store.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rumqttc::v5::mqttbytes::QoS;

use super::{Delivery, Message, Router};
use crate::codec::min_qos;
use crate::topics;

impl Router {
    /// Keeps a retained message on `topic` (its own topic), replacing the one there; an empty
    /// payload clears the topic instead. A new topic finds no room in a full store.
    pub(super) fn store_retained(&mut self, topic: &str, message: &Arc<Message>, now: Instant) {
        if message.payload.is_empty() {
            self.retained.remove(topic);
            return;
        }
        if self.retained.len() >= self.settings.max_retained && now >= self.next_retained_sweep {
            // Expired messages are never delivered again: they give up their slots.
            // At most once a second: with none expired, a sweep frees nothing and each
            // new topic would scan the whole store again.
            self.drop_expired_retained(now);
            self.next_retained_sweep = now + Duration::from_secs(1);
        }
        if self.retained.len() < self.settings.max_retained || self.retained.contains_key(topic) {
            self.retained.insert(topic.to_string(), message.clone());
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
        let mut live = |t: &String, m: &Arc<Message>| {
            if m.is_expired(now) {
                expired.push(t.clone());
                None
            } else {
                Some(m.clone())
            }
        };
        // In topic order: one range of the ordered store, or a single topic.
        let matching: Vec<Arc<Message>> = if topics::has_wildcard(filter) {
            let prefix = topics::literal_prefix(filter);
            self.retained
                .range::<str, _>((
                    std::ops::Bound::Included(prefix),
                    std::ops::Bound::Unbounded,
                ))
                .take_while(|(t, _)| t.starts_with(prefix))
                .filter(|(t, _)| topics::matches(filter, t))
                .filter(|(t, _)| !check || self.access.can_read(&session.identity, t))
                .filter_map(|(t, m)| live(t, m))
                .collect()
        } else {
            self.retained
                .get_key_value(filter)
                .and_then(|(t, m)| live(t, m))
                .into_iter()
                .collect()
        };
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
        self.retained.retain(|_, m| !m.is_expired(now));
    }
}
