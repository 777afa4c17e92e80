//! One client's session: its subscriptions, the QoS 1/2 messages in flight towards it, the queue
//! behind them, and the QoS 2 packet ids it has sent us and not yet released.
//!
//! A session outlives its connection when the client asked for that (3.1.1 clean session = 0,
//! 5.0 session expiry > 0); while it has no connection, messages queue here up to the configured
//! bound, and on reconnect what was in flight is resent with DUP before the queue drains.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use rumqttc::v5::mqttbytes::v5::{Packet, PubRel};
use rumqttc::v5::mqttbytes::QoS;

use super::mailbox::{Mailbox, Outbound};
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

#[derive(Debug)]
pub struct Session {
    pub identity: Identity,
    pub link: Option<Link>,
    /// Keyed by the raw SUBSCRIBE filter (with any `$share/{group}/` prefix).
    pub subscriptions: HashMap<Arc<str>, Subscribed>,
    inflight: VecDeque<InFlight>,
    queue: VecDeque<Delivery>,
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

/// What happened to a message handed to a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Sent,
    Queued,
    Dropped,
}

impl Session {
    pub fn new(identity: Identity, expiry_secs: u32) -> Session {
        Session {
            identity,
            link: None,
            subscriptions: HashMap::new(),
            inflight: VecDeque::new(),
            queue: VecDeque::new(),
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
    /// (QoS 1/2 only; QoS 0 is never queued), else dropped under the overflow policy.
    pub fn deliver(&mut self, d: Delivery, max_queue: usize, overflow: QueueOverflow) -> Outcome {
        if d.qos == QoS::AtMostOnce {
            return match &self.link {
                Some(link) if link.mailbox.push(Outbound::Publish(d)) => Outcome::Sent,
                _ => Outcome::Dropped,
            };
        }
        if self.queue.is_empty() && self.has_room() {
            self.send(d);
            return Outcome::Sent;
        }
        if self.queue.len() >= max_queue {
            match overflow {
                QueueOverflow::DropNewest => return Outcome::Dropped,
                QueueOverflow::DropOldest => {
                    self.queue.pop_front();
                    self.queue.push_back(d);
                    return Outcome::Dropped;
                }
            }
        }
        self.queue.push_back(d);
        Outcome::Queued
    }

    fn has_room(&self) -> bool {
        matches!(&self.link, Some(link) if self.inflight.len() < link.window)
    }

    /// Assigns a packet id and writes the message to the connection.
    fn send(&mut self, mut d: Delivery) {
        let pkid = self.take_pkid();
        d.pkid = pkid;
        if let Some(link) = &self.link {
            link.mailbox.push(Outbound::Publish(d.clone()));
        }
        self.inflight.push_back(InFlight {
            pkid,
            delivery: d,
            stage: Stage::Sent,
        });
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
        while self.has_room() {
            let Some(d) = self.queue.pop_front() else {
                break;
            };
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
            return self.inflight.remove(idx).map(|f| f.delivery);
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
            self.inflight.remove(idx);
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
        self.inflight.remove(idx).map(|f| f.delivery)
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
