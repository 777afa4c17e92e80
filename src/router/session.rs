//! One client's session: its subscriptions, the QoS 1/2 messages in flight towards it, the queue
//! behind them, and the QoS 2 packet ids it has sent us and not yet released.
//!
//! A session outlives its connection when the client asked for that (3.1.1 clean session = 0,
//! 5.0 session expiry > 0); while it has no connection, messages queue here up to the configured
//! bounds, and on reconnect what was in flight is resent with DUP before the queue drains.
//!
//! What a session holds is bounded in bytes as well as in messages, so a client that stops
//! reading (or reconnecting) pins at most that much however much is published to it: the queue
//! by `mqtt.max_queued_bytes`, and the in-flight window by the same budget (its connection's
//! [`Mailbox::bounds`]), each but for one message larger than the budget, which goes alone.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use rumqttc::v5::mqttbytes::v5::{Packet, PubRel};
use rumqttc::v5::mqttbytes::QoS;

use super::mailbox::{Mailbox, Outbound, QueueBounds};
use super::{Delivery, Will};
use crate::access::Identity;
use crate::config::QueueOverflow;

/// The live connection attached to a session.
#[derive(Debug)]
pub struct Link {
    pub conn_id: u64,
    pub mailbox: Arc<Mailbox>,
    /// In-flight window: min(client's Receive Maximum, server's max_inflight).
    pub window: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// QoS 1 sent, waiting for PUBACK; or QoS 2 sent, waiting for PUBREC.
    Sent,
    /// QoS 2: PUBREL sent, waiting for PUBCOMP.
    Released,
}

#[derive(Debug)]
struct InFlight {
    pkid: u16,
    delivery: Delivery,
    stage: Stage,
}

/// A subscription as the session remembers it (to rebuild or drop its index entries).
#[derive(Debug, Clone)]
pub struct Subscribed {
    pub group: Option<Arc<str>>,
    pub filter: Arc<str>,
}

/// A session's subscriptions, keyed by the raw SUBSCRIBE filter (with any `$share/{group}/`
/// prefix). A vector, not a map: a session holds a few (at most
/// `limits.max_subscriptions_per_connection`), and a hash table's smallest allocation would
/// cost every idle connection some 200 bytes.
#[derive(Debug, Default)]
pub struct Remembered(Vec<(Arc<str>, Subscribed)>);

impl Remembered {
    /// Remembers `sub` under `raw`, replacing what was there.
    pub fn insert(&mut self, raw: Arc<str>, sub: Subscribed) {
        if let Some((_, old)) = self.0.iter_mut().find(|(r, _)| *r == raw) {
            *old = sub;
            return;
        }
        if self.0.len() < 4 {
            // Exact room while small: most sessions hold one or two.
            self.0.reserve_exact(1);
        }
        self.0.push((raw, sub));
    }

    pub fn remove(&mut self, raw: &str) -> Option<Subscribed> {
        let i = self.0.iter().position(|(r, _)| &**r == raw)?;
        Some(self.0.swap_remove(i).1)
    }

    pub fn contains(&self, raw: &str) -> bool {
        self.0.iter().any(|(r, _)| &**r == raw)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn values(&self) -> impl Iterator<Item = &Subscribed> {
        self.0.iter().map(|(_, s)| s)
    }
}

#[derive(Debug)]
pub struct Session {
    pub identity: Identity,
    pub link: Option<Link>,
    pub subscriptions: Remembered,
    inflight: VecDeque<InFlight>,
    /// The bytes of the messages in flight and queued ([`super::Message::size`]).
    inflight_bytes: usize,
    queue: VecDeque<Delivery>,
    queued_bytes: usize,
    next_pkid: u16,
    /// QoS 2 packet ids received and not yet released by PUBREL (exactly-once dedup).
    pub incoming_qos2: HashSet<u16>,
    /// Seconds the session lives after its connection ends.
    pub expiry_secs: u32,
    /// When an unconnected session ends.
    pub expires_at: Option<Instant>,
    /// Boxed: most sessions have no will, and a will is as large as the rest of the session.
    pub will: Option<Box<Will>>,
    /// When a delayed will is due.
    pub will_at: Option<Instant>,
}

impl Session {
    pub fn new(identity: Identity, expiry_secs: u32) -> Session {
        Session {
            identity,
            link: None,
            subscriptions: Remembered::default(),
            inflight: VecDeque::new(),
            inflight_bytes: 0,
            queue: VecDeque::new(),
            queued_bytes: 0,
            next_pkid: 0,
            incoming_qos2: HashSet::new(),
            expiry_secs,
            expires_at: None,
            will: None,
            will_at: None,
        }
    }

    pub fn is_connected(&self) -> bool {
        self.link.is_some()
    }

    /// The link, if it belongs to connection `conn_id` (events from a connection that was taken
    /// over must not touch its successor's session).
    pub fn link_for(&self, conn_id: u64) -> Option<&Link> {
        self.link.as_ref().filter(|l| l.conn_id == conn_id)
    }

    /// Hands a message to the session: sent now if connected and the window allows, else queued
    /// (QoS 1/2; QoS 0 waits in the mailbox alone), dropping what `bounds` cannot hold under
    /// the overflow policy. Returns how many messages were dropped: this one, or older ones.
    pub fn deliver(&mut self, d: Delivery, bounds: &QueueBounds) -> usize {
        if d.qos == QoS::AtMostOnce {
            return match &self.link {
                Some(link) => link.mailbox.push(Outbound::Publish(d)),
                None => 1,
            };
        }
        let size = d.message.size();
        if self.queue.is_empty() && self.has_room(size) {
            self.send(d);
            return 0;
        }
        let mut dropped = 0;
        while !bounds.fits(self.queue.len(), self.queued_bytes, size) {
            if bounds.overflow == QueueOverflow::DropNewest {
                return 1;
            }
            let Some(oldest) = self.queue.pop_front() else {
                // A queue of no messages (`max_queued_messages = 0`) takes none.
                return 1;
            };
            self.queued_bytes -= oldest.message.size();
            dropped += 1;
        }
        self.queued_bytes += size;
        self.queue.push_back(d);
        dropped
    }

    /// Whether a message of `size` bytes may enter the window: fewer than `window` messages in
    /// flight and, unless none is, no more than the mailbox's byte budget with it.
    fn has_room(&self, size: usize) -> bool {
        let Some(link) = &self.link else {
            return false;
        };
        self.inflight.len() < link.window
            && (self.inflight.is_empty()
                || self.inflight_bytes + size <= link.mailbox.bounds().bytes)
    }

    /// Assigns a packet id and writes the message to the connection.
    fn send(&mut self, mut d: Delivery) {
        let pkid = self.take_pkid();
        d.pkid = pkid;
        if let Some(link) = &self.link {
            link.mailbox.push(Outbound::Publish(d.clone()));
        }
        self.inflight_bytes += d.message.size();
        self.inflight.push_back(InFlight {
            pkid,
            delivery: d,
            stage: Stage::Sent,
        });
    }

    /// Takes the message at `idx` out of the window.
    fn leave_window(&mut self, idx: usize) -> Option<Delivery> {
        let f = self.inflight.remove(idx)?;
        self.inflight_bytes -= f.delivery.message.size();
        Some(f.delivery)
    }

    fn take_pkid(&mut self) -> u16 {
        loop {
            self.next_pkid = self.next_pkid.checked_add(1).unwrap_or(1);
            let candidate = self.next_pkid;
            if !self.inflight.iter().any(|f| f.pkid == candidate) {
                return candidate;
            }
        }
    }

    /// Moves queued messages into the window; expired ones are dropped. Returns how many were
    /// dropped for expiry.
    pub fn pump(&mut self, now: Instant) -> usize {
        let mut expired = 0;
        while let Some(size) = self.queue.front().map(|d| d.message.size()) {
            if !self.has_room(size) {
                break;
            }
            let Some(d) = self.queue.pop_front() else {
                break;
            };
            self.queued_bytes -= size;
            if d.message.is_expired(now) {
                expired += 1;
                continue;
            }
            self.send(d);
        }
        expired
    }

    /// PUBACK (QoS 1) from the client: the message it carried, if the id was in flight.
    pub fn on_puback(&mut self, pkid: u16) -> Option<Delivery> {
        self.complete(pkid, Stage::Sent, QoS::AtLeastOnce)
    }

    /// PUBREC (QoS 2): answer with PUBREL and wait for PUBCOMP.
    pub fn on_pubrec(&mut self, pkid: u16, accepted: bool) -> Option<Delivery> {
        let idx = self
            .inflight
            .iter()
            .position(|f| f.pkid == pkid && f.delivery.qos == QoS::ExactlyOnce)?;
        if !accepted {
            // A PUBREC with an error reason ends the exchange (MQTT 5.0 §4.3.3).
            return self.leave_window(idx);
        }
        self.inflight[idx].stage = Stage::Released;
        if let Some(link) = &self.link {
            link.mailbox
                .push(Outbound::Packet(Box::new(Packet::PubRel(PubRel::new(
                    pkid, None,
                )))));
        }
        None
    }

    /// A message the connection could not send: forget it.
    pub fn discard(&mut self, pkid: u16) {
        if let Some(idx) = self.inflight.iter().position(|f| f.pkid == pkid) {
            self.leave_window(idx);
        }
    }

    /// PUBCOMP (QoS 2): the exchange is over.
    pub fn on_pubcomp(&mut self, pkid: u16) -> Option<Delivery> {
        self.complete(pkid, Stage::Released, QoS::ExactlyOnce)
    }

    fn complete(&mut self, pkid: u16, stage: Stage, qos: QoS) -> Option<Delivery> {
        let idx = self
            .inflight
            .iter()
            .position(|f| f.pkid == pkid && f.stage == stage && f.delivery.qos == qos)?;
        self.leave_window(idx)
    }

    /// After a reconnect: resends what was in flight (PUBLISH with DUP, or PUBREL), in order.
    pub fn resend_inflight(&mut self) {
        let Some(link) = &self.link else {
            return;
        };
        for f in &self.inflight {
            let item = match f.stage {
                Stage::Sent => {
                    let mut d = f.delivery.clone();
                    d.dup = true;
                    Outbound::Publish(d)
                }
                Stage::Released => {
                    Outbound::Packet(Box::new(Packet::PubRel(PubRel::new(f.pkid, None))))
                }
            };
            link.mailbox.push(item);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::router::Message;

    /// A QoS 1 delivery of 100 bytes (`Message::size`: a one-byte topic, 99 bytes of payload).
    fn hundred(tag: u8) -> Delivery {
        Delivery {
            message: Arc::new(Message::server("t".into(), vec![tag; 99])),
            qos: QoS::AtLeastOnce,
            retain: false,
            dup: false,
            pkid: 0,
            subscription_ids: Vec::new(),
        }
    }

    fn bounds(bytes: usize, overflow: QueueOverflow) -> QueueBounds {
        QueueBounds {
            messages: 1000,
            bytes,
            overflow,
        }
    }

    /// A connected session with a window of `window` messages and `bytes` of budget.
    fn session(window: usize, bytes: usize) -> Session {
        let identity = Identity {
            user: None,
            client_id: "c".into(),
        };
        let mut s = Session::new(identity, 0);
        s.link = Some(Link {
            conn_id: 1,
            mailbox: Arc::new(Mailbox::new(bounds(bytes, QueueOverflow::DropOldest))),
            window,
        });
        s
    }

    /// The tags of the messages written to the connection since the last call.
    fn written(s: &Session) -> Vec<u8> {
        crate::router::mailbox::tests::tags(&s.link.as_ref().unwrap().mailbox)
    }

    #[test]
    fn the_queue_is_bounded_in_bytes_under_either_policy() {
        for (overflow, kept) in [
            (QueueOverflow::DropOldest, [4, 5]),
            (QueueOverflow::DropNewest, [2, 3]),
        ] {
            let mut s = session(1, 10_000);
            let b = bounds(250, overflow);
            let dropped: Vec<usize> = (1..=5).map(|tag| s.deliver(hundred(tag), &b)).collect();
            assert_eq!(dropped, [0, 0, 0, 1, 1], "{overflow:?}");
            assert_eq!(written(&s), [1]);
            for pkid in 1..=3 {
                s.on_puback(pkid);
                s.pump(Instant::now());
            }
            assert_eq!(written(&s), kept, "{overflow:?}");
        }
    }

    #[test]
    fn the_window_is_bounded_by_the_mailbox_budget_too() {
        let mut s = session(10, 250);
        let b = bounds(10_000, QueueOverflow::DropOldest);
        for tag in 1..=4 {
            assert_eq!(s.deliver(hundred(tag), &b), 0);
        }
        assert_eq!(written(&s), [1, 2], "a third would put 300 bytes in flight");
        s.on_puback(1);
        s.pump(Instant::now());
        assert_eq!(written(&s), [3]);
        s.discard(2);
        s.pump(Instant::now());
        assert_eq!(written(&s), [4]);
    }

    #[test]
    fn a_message_larger_than_the_budget_goes_alone() {
        let mut s = session(10, 50);
        let b = bounds(50, QueueOverflow::DropOldest);
        assert_eq!(s.deliver(hundred(1), &b), 0, "an empty window takes it");
        assert_eq!(s.deliver(hundred(2), &b), 0, "an empty queue takes it");
        assert_eq!(s.deliver(hundred(3), &b), 1, "it takes the place of 2");
        assert_eq!(written(&s), [1]);
        s.on_puback(1);
        s.pump(Instant::now());
        assert_eq!(written(&s), [3]);
    }

    #[test]
    fn an_offline_session_drops_qos0_and_queues_the_rest_within_bytes() {
        let mut s = session(1, 10_000);
        s.link = None;
        let qos0 = Delivery {
            qos: QoS::AtMostOnce,
            ..hundred(0)
        };
        let b = bounds(150, QueueOverflow::DropOldest);
        assert_eq!(s.deliver(qos0, &b), 1);
        assert_eq!(s.deliver(hundred(1), &b), 0);
        assert_eq!(s.deliver(hundred(2), &b), 1);
        assert_eq!(s.queue.len(), 1);
        assert_eq!(s.queued_bytes, 100);
    }

    #[test]
    fn remembered_subscriptions_replace_and_remove_by_raw_filter() {
        let sub = |filter: &str, group: Option<&str>| Subscribed {
            group: group.map(Arc::from),
            filter: filter.into(),
        };
        let mut r = Remembered::default();
        r.insert("a/#".into(), sub("a/#", None));
        r.insert("$share/g/b".into(), sub("b", Some("g")));
        r.insert("a/#".into(), sub("a/#", None));
        assert_eq!(r.len(), 2, "the same raw filter is replaced, not added");
        assert!(r.contains("$share/g/b") && !r.contains("b"));
        let shared = r.remove("$share/g/b").unwrap();
        assert_eq!((shared.group.as_deref(), &*shared.filter), (Some("g"), "b"));
        assert!(r.remove("$share/g/b").is_none());
        assert_eq!(r.values().map(|s| &*s.filter).collect::<Vec<_>>(), ["a/#"]);
    }
}
