//! Fan-out: a published message goes to every session whose subscriptions match it, once per
//! session, at min(publication QoS, subscription QoS).
//!
//! This is the hot path (a chat message to a large conversation is one call here per member
//! stream): one `Arc` of the message shared by every delivery, one vector of hits per publish,
//! and no lookup per subscriber beyond the session it delivers to.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use rumqttc::v5::mqttbytes::QoS;

use super::subscriptions::SubOptions;
use super::{Delivery, Message, Router};
use crate::codec::{max_qos, min_qos};
use crate::stats::Stats;

/// One matching filter: client, QoS, retain-as-published, subscription id.
type Hit = (Arc<str>, QoS, bool, Option<usize>);

impl Router {
    /// A client's PUBLISH: a resent QoS 2 packet id (still unreleased) is routed once.
    pub(super) fn client_publish(
        &mut self,
        client: &str,
        message: Message,
        qos2_pkid: Option<u16>,
        copies: Vec<Bytes>,
        now: Instant,
    ) {
        if let (Some(pkid), Some(s)) = (qos2_pkid, self.sessions.get_mut(client)) {
            if !s.incoming_qos2.insert(pkid) {
                return;
            }
        }
        self.publish_with_copies(message, copies, now);
    }

    /// Publishes the message on each of `copies` (unchanged but for the topic), then on its own;
    /// a stored entry in its conversation's order.
    pub(super) fn publish_with_copies(
        &mut self,
        message: Message,
        copies: Vec<Bytes>,
        now: Instant,
    ) {
        self.forward(&message);
        self.ordered(message, copies, now);
    }

    /// Routes the message on each of `copies`, then on its own, here.
    pub(super) fn route_with_copies(&mut self, message: Message, copies: Vec<Bytes>, now: Instant) {
        for topic in copies {
            let mut copy = message.clone();
            copy.topic = topic;
            self.route(copy, now);
        }
        self.route(message, now);
    }

    /// Publishes a message: here, and to the other nodes of a cluster.
    pub fn publish(&mut self, message: Message, now: Instant) {
        self.forward(&message);
        self.route(message, now);
    }

    /// Routes a message to every matching session here, and keeps it if retained.
    pub(super) fn route(&mut self, message: Message, now: Instant) {
        let message = Arc::new(message);
        let topic = message.topic_str();
        if message.retain {
            self.store_retained(topic, &message, now);
        }
        let hits = self.hits(topic, message.origin.as_deref());
        self.deliver_hits(&message, hits, now);
    }

    /// Collects (client, QoS, retain-as-published, subscription id) per matching filter that
    /// lets the message through (No Local, per-message read checks); they merge per client next.
    /// A shared group's member is chosen among those the read check lets through, so a member
    /// who may not read the topic never takes (and so drops) a message meant for the others.
    fn hits(&self, topic: &str, origin: Option<&str>) -> Vec<Hit> {
        let mut hits: Vec<Hit> = Vec::new();
        let receives = |client: &Arc<str>, o: &SubOptions| {
            let session = self.sessions.get(client)?;
            let no_local = o.no_local && origin == Some(&**client);
            let refused = o.check_read && !self.access.can_read(&session.identity, topic);
            (!no_local && !refused).then(|| session.is_connected())
        };
        self.subscriptions
            .for_each_match(topic, &receives, &mut |hit| {
                let o = hit.options;
                // Most subscriptions need neither check: no session lookup for them; a shared
                // group's pick has had both.
                let unchecked = !hit.received && (o.no_local || o.check_read);
                if unchecked && receives(hit.client, o).is_none() {
                    return;
                }
                hits.push((hit.client.clone(), o.qos, o.retain_as_published, o.id));
            });
        hits
    }

    /// Delivers once per client: at the highest QoS of its hits, retained if any of them keeps
    /// RETAIN as published, with every subscription id.
    fn deliver_hits(&mut self, message: &Arc<Message>, mut hits: Vec<Hit>, now: Instant) {
        if hits.len() > 1 {
            // Unstable: no buffer to allocate, and the order among one client's hits does not
            // matter (they merge).
            hits.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        }
        let mut i = 0;
        while i < hits.len() {
            let client = hits[i].0.clone();
            let (mut qos, mut rap) = (hits[i].1, hits[i].2);
            let mut ids: Vec<usize> = hits[i].3.into_iter().collect();
            let mut j = i + 1;
            while j < hits.len() && hits[j].0 == client {
                qos = max_qos(qos, hits[j].1);
                rap |= hits[j].2;
                ids.extend(hits[j].3);
                j += 1;
            }
            i = j;
            let delivery = Delivery {
                message: message.clone(),
                qos: min_qos(message.qos, qos),
                retain: rap && message.retain,
                dup: false,
                pkid: 0,
                subscription_ids: ids,
            };
            self.deliver(&client, delivery, now);
        }
    }

    /// Hands one delivery to a session; an expired message, or one the session drops, counts
    /// as dropped.
    pub(super) fn deliver(&mut self, client: &str, delivery: Delivery, now: Instant) {
        let Some(session) = self.sessions.get_mut(client) else {
            return;
        };
        if delivery.message.is_expired(now) {
            Stats::add(&self.stats.messages_dropped, 1);
            return;
        }
        let dropped = session.deliver(delivery, &self.settings.queue);
        Stats::add(&self.stats.messages_dropped, dropped as u64);
    }
}
