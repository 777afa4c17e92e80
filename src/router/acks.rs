//! Acknowledgements: a client's PUBACK/PUBREC/PUBCOMP free in-flight slots and become delivered
//! reports (for receipts); a PUBREL releases a QoS 2 packet id the client sent us.

use std::time::Instant;

use rumqttc::v5::mqttbytes::v5::{Packet, PubComp, PubCompReason};

use super::{Ack, Outbound, Report, Router};
use crate::stats::Stats;

impl Router {
    /// A PUBREL: the session forgets the packet id; answered here when the connection could not
    /// (see [`super::Event::Release`]).
    pub(super) fn release(&mut self, client: &str, conn_id: u64, pkid: u16, answer: bool) {
        let Some(session) = self.sessions.get_mut(client) else {
            return;
        };
        let known = session.incoming_qos2.remove(&pkid);
        if !answer {
            return;
        }
        let Some(link) = session.link_for(conn_id) else {
            return;
        };
        let mut comp = PubComp::new(pkid, None);
        if !known {
            comp.reason = PubCompReason::PacketIdentifierNotFound;
        }
        link.mailbox
            .push(Outbound::Packet(Box::new(Packet::PubComp(comp))));
    }

    /// Acknowledgements from connection `conn_id`: frees their slots in the window, reports
    /// deliveries for receipts, and sends what waited once for the batch.
    pub(super) fn acks(&mut self, client: &str, conn_id: u64, acks: &[Ack], now: Instant) {
        let Some(session) = self.sessions.get_mut(client) else {
            return;
        };
        if session.link_for(conn_id).is_none() {
            return;
        }
        let mut freed = false;
        for &ack in acks {
            let done = match ack {
                Ack::PubAck(pkid) => session.on_puback(pkid),
                Ack::PubRec(pkid, accepted) => session.on_pubrec(pkid, accepted),
                Ack::PubComp(pkid) => session.on_pubcomp(pkid),
                Ack::Discarded(pkid) => {
                    session.discard(pkid);
                    None
                }
            };
            if let Some(delivery) = &done {
                // A recipient device has the message: a delivered receipt (not for the sender's own
                // devices, and not when it arrived as a rejected PUBREC).
                if let (true, Some(chat), Some(user), Ack::PubAck(_) | Ack::PubComp(_)) = (
                    self.settings.delivery_receipts,
                    &delivery.message.chat,
                    &session.identity.user,
                    ack,
                ) {
                    if chat.receipt && **user != *chat.from {
                        let _ = self.reports.send(Report::Delivered {
                            user: user.clone(),
                            conv: chat.conv.clone(),
                            seq: chat.seq,
                        });
                    }
                }
            }
            freed |= done.is_some() || matches!(ack, Ack::Discarded(_));
        }
        // The window has room again: what waited in the queue goes out, once for the batch.
        if freed {
            let expired = session.pump(now);
            Stats::add(&self.stats.messages_dropped, expired as u64);
        }
    }
}
