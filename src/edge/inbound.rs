//! Reading packets: the publish rate applied at the head of the read buffer, decoding, and one
//! handler per packet type (acknowledgements, subscriptions and DISCONNECT here; PUBLISH in
//! `publish`). What a packet means for the router becomes an event, sent in order later.

use std::time::Instant;

use rumqttc::v5::mqttbytes::v5::{
    Disconnect, DisconnectReasonCode, Packet, PingResp, PubComp, PubRecReason, PubRel, Subscribe,
};

use super::connection::{Close, Connection};
use crate::codec::{self, CodecError, Version};
use crate::config::RateAction;
use crate::router::{Ack, Event};

impl Connection {
    /// Handles every complete packet in the read buffer.
    pub(super) fn handle_buffered(&mut self) -> Option<Close> {
        loop {
            if let Err(close) = self.take_publish_token() {
                return close;
            }
            match codec::read(
                self.version,
                &mut self.rbuf,
                self.shared.limits.max_packet_size,
            ) {
                Ok(Some(packet)) => {
                    if let Some(close) = self.on_packet(packet) {
                        return Some(close);
                    }
                }
                Ok(None) => return None,
                Err(e) => {
                    tracing::info!(client = %self.identity.client_id, peer = %self.peer, error = %e, "bad packet");
                    return Some(Close::Server(match e {
                        CodecError::TooLarge { .. } => DisconnectReasonCode::PacketTooLarge,
                        _ => DisconnectReasonCode::MalformedPacket,
                    }));
                }
            }
        }
    }

    /// Spends a publish token on a whole PUBLISH at the head of the read buffer. `Err` when
    /// over the rate: with the close for a client disconnected for it, or `None` while reading
    /// pauses.
    fn take_publish_token(&mut self) -> Result<(), Option<Close>> {
        // Over the publish rate, the next PUBLISH waits in the buffer and the connection
        // stops reading (TCP pushes back on the client) until the bucket refills: nothing
        // is refused or dropped. Or, if so configured, a 5.0 client is disconnected. The
        // token is spent only on a whole PUBLISH: a large one arriving over many reads is
        // still one message.
        if !(self.publish_rate.enabled()
            && self.rbuf.first().is_some_and(|b| b >> 4 == 3)
            && codec::starts_with_complete_packet(&self.rbuf))
        {
            return Ok(());
        }
        let now = Instant::now();
        let Err(wait) = self.publish_rate.take(now) else {
            return Ok(());
        };
        if self.shared.limits.publish_rate_action == RateAction::Disconnect
            && self.version == Version::V5
        {
            tracing::info!(client = %self.identity.client_id, "publish rate exceeded");
            return Err(Some(Close::Server(
                DisconnectReasonCode::MessageRateTooHigh,
            )));
        }
        self.throttled = Some(now + wait);
        Err(None)
    }

    /// Handles one packet from the client.
    fn on_packet(&mut self, packet: Packet) -> Option<Close> {
        match packet {
            Packet::Publish(p) => return self.on_publish(p),
            Packet::PubAck(a) => self.ack(Ack::PubAck(a.pkid)),
            Packet::PubRec(r) => {
                let accepted = matches!(
                    r.reason,
                    PubRecReason::Success | PubRecReason::NoMatchingSubscribers
                );
                self.ack(Ack::PubRec(r.pkid, accepted));
            }
            Packet::PubComp(c) => self.ack(Ack::PubComp(c.pkid)),
            Packet::PubRel(r) => self.on_pubrel(r),
            Packet::Subscribe(s) => return self.on_subscribe(s),
            Packet::Unsubscribe(u) => {
                self.events.push_back(Event::Unsubscribe {
                    client: self.identity.client_id.clone(),
                    conn_id: self.conn_id,
                    packet: u,
                });
            }
            Packet::PingReq(_) => self.queue(&Packet::PingResp(PingResp)),
            Packet::Disconnect(d) => return Some(self.on_disconnect(d)),
            Packet::Connect(..)
            | Packet::ConnAck(_)
            | Packet::SubAck(_)
            | Packet::UnsubAck(_)
            | Packet::PingResp(_)
            | Packet::Auth(_) => {
                tracing::info!(client = %self.identity.client_id, "unexpected packet from client");
                return Some(Close::Server(DisconnectReasonCode::ProtocolError));
            }
        }
        None
    }

    /// Releases an inbound QoS 2 message.
    fn on_pubrel(&mut self, r: PubRel) {
        // A packet id received on this connection is answered here; one from an earlier
        // connection of the session only the router knows, and it answers (with 0x92,
        // Packet Identifier not found, when nobody does).
        let known = self.inflight.release_qos2(r.pkid);
        self.events.push_back(Event::Release {
            client: self.identity.client_id.clone(),
            conn_id: self.conn_id,
            pkid: r.pkid,
            answer: !known,
        });
        if known {
            self.queue(&Packet::PubComp(PubComp::new(r.pkid, None)));
        }
    }

    /// Passes a SUBSCRIBE to the router, after the checks that end the connection.
    fn on_subscribe(&mut self, s: Subscribe) -> Option<Close> {
        let shared_no_local = s
            .filters
            .iter()
            .any(|f| f.nolocal && f.path.starts_with("$share/"));
        if shared_no_local || s.properties.as_ref().and_then(|p| p.id) == Some(0) {
            return Some(Close::Server(DisconnectReasonCode::ProtocolError));
        }
        self.events.push_back(Event::Subscribe {
            client: self.identity.client_id.clone(),
            conn_id: self.conn_id,
            packet: s,
        });
        None
    }

    /// How a client's DISCONNECT ends the connection.
    fn on_disconnect(&self, d: Disconnect) -> Close {
        let expiry = d.properties.and_then(|p| p.session_expiry_interval);
        if self.expiry_was_zero && expiry.is_some_and(|e| e > 0) {
            return Close::Server(DisconnectReasonCode::ProtocolError);
        }
        Close::Client {
            will: d.reason_code == DisconnectReasonCode::DisconnectWithWillMessage,
            expiry,
        }
    }

    /// Acks that follow one another join one event: a read of many PUBACKs costs the router
    /// one event, not one each.
    pub(super) fn ack(&mut self, ack: Ack) {
        if let Some(Event::Acks { acks, .. }) = self.events.back_mut() {
            acks.push(ack);
            return;
        }
        self.events.push_back(Event::Acks {
            client: self.identity.client_id.clone(),
            conn_id: self.conn_id,
            acks: vec![ack],
        });
    }
}
