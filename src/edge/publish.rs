//! One inbound PUBLISH: its topic alias, topic name, payload format and authorization, the
//! Receive Maximum, the router's `Message` built from it, then one function per route (the
//! chat routes in `chat_ingress`).

use std::time::{Duration, Instant};

use bytes::Bytes;
use rumqttc::v5::mqttbytes::v5::{
    DisconnectReasonCode, Packet, PubAck, PubAckReason, PubRec, Publish, PublishProperties,
};
use rumqttc::v5::mqttbytes::QoS;

use super::connection::{Close, Connection};
use crate::access::Route;
use crate::codec::Version;
use crate::refusal::Refusal;
use crate::router::{Event, Message};
use crate::stats::Stats;
use crate::topics::{self, ConvKind};

/// What answering one accepted PUBLISH needs.
pub(super) struct Received {
    pub(super) qos: QoS,
    pub(super) pkid: u16,
    pub(super) dup: bool,
    /// The acknowledgement it gets once handled (none for QoS 0).
    pub(super) ack: Option<Packet>,
}

impl Connection {
    /// Handles one PUBLISH from the client.
    pub(super) fn on_publish(&mut self, p: Publish) -> Option<Close> {
        let (qos, pkid) = (p.qos, p.pkid);
        let mut properties = p.properties;
        let (topic, route) =
            match self.check_publish(p.topic, &p.payload, qos, pkid, &mut properties) {
                Ok(checked) => checked,
                Err(answer) => return answer,
            };
        let max = self.shared.limits.receive_maximum;
        if self
            .inflight
            .over_receive_maximum(qos, pkid, self.version, max)
        {
            return Some(Close::Server(DisconnectReasonCode::ReceiveMaximumExceeded));
        }
        let message = self.inbound_message(topic, p.payload, qos, p.retain, properties);
        Stats::add(&self.shared.stats.messages_received, 1);
        let ack = self.first_ack(qos, pkid);
        let received = Received {
            qos,
            pkid,
            dup: p.dup,
            ack,
        };
        self.route_publish(route, message, received)
    }

    /// Resolves the topic alias, then checks the topic name, the payload format and the
    /// publisher's right to the topic. `Err` carries the answer to a PUBLISH that goes no
    /// further.
    fn check_publish(
        &mut self,
        topic: Bytes,
        payload: &Bytes,
        qos: QoS,
        pkid: u16,
        properties: &mut Option<PublishProperties>,
    ) -> Result<(Bytes, Route), Option<Close>> {
        let alias_max = self.shared.limits.topic_alias_maximum;
        let topic = match self.aliases.resolve(topic, properties.as_mut(), alias_max) {
            Ok(topic) => topic,
            Err(reason) => return Err(Some(Close::Server(reason))),
        };
        let Ok(topic_str) = std::str::from_utf8(&topic) else {
            return Err(Some(Close::Server(DisconnectReasonCode::MalformedPacket)));
        };
        if let Err(e) = topics::validate_name(topic_str, &self.shared.limits.topics) {
            tracing::info!(client = %self.identity.client_id, error = %e, "invalid topic name");
            return Err(self.refuse_topic_name(qos, pkid));
        }
        self.check_response_topic(topic_str, qos, pkid, properties.as_ref())?;
        let utf8_promised = properties.as_ref().and_then(|p| p.payload_format_indicator) == Some(1);
        if utf8_promised && std::str::from_utf8(payload).is_err() {
            return Err(self.refuse_publish(qos, pkid, PubAckReason::PayloadFormatInvalid));
        }
        match self
            .shared
            .access
            .authorize_publish(&self.identity, topic_str)
        {
            Ok(route) => Ok((topic, route)),
            Err(refused) => {
                tracing::info!(client = %self.identity.client_id, topic = topic_str, %refused, "publish refused");
                let refusal = Refusal::from(refused);
                self.report_refusal(topic_str, refusal.code(), &refusal.to_string());
                Err(self.refuse_publish(qos, pkid, refusal.mqtt().0))
            }
        }
    }

    /// Refuses a PUBLISH whose topic name is invalid or beyond the caps. 3.1.1 has no way to
    /// refuse one message: a wildcard in a topic name is a protocol violation there, and the
    /// connection ends; so does a 5.0 QoS 0 PUBLISH, which has no acknowledgement to carry it.
    fn refuse_topic_name(&mut self, qos: QoS, pkid: u16) -> Option<Close> {
        if self.version == Version::V4 || qos == QoS::AtMostOnce {
            return Some(Close::Server(DisconnectReasonCode::TopicNameInvalid));
        }
        self.refuse_publish(qos, pkid, PubAckReason::TopicNameInvalid)
    }

    /// A 5.0 Response Topic must be a topic name (no wildcards, MQTT 5.0 §3.3.2.3.5) within the
    /// caps: the server publishes replies to it, and subscribers answer on it. An invalid one
    /// refuses the PUBLISH as an invalid topic name would, with a `bad_request` event on
    /// `u/{user}/errors` saying which topic was wrong.
    fn check_response_topic(
        &mut self,
        topic: &str,
        qos: QoS,
        pkid: u16,
        properties: Option<&PublishProperties>,
    ) -> Result<(), Option<Close>> {
        let Some(response) = properties.and_then(|p| p.response_topic.as_deref()) else {
            return Ok(());
        };
        let Err(e) = topics::validate_name(response, &self.shared.limits.topics) else {
            return Ok(());
        };
        tracing::info!(client = %self.identity.client_id, error = %e, "invalid response topic");
        let message = format!("invalid response topic: {e}");
        self.report_refusal(topic, Refusal::BadRequest.code(), &message);
        Err(self.refuse_topic_name(qos, pkid))
    }

    /// The router's message for an accepted PUBLISH: its Message Expiry Interval becomes a
    /// deadline, and what is the server's to set is cleared.
    fn inbound_message(
        &self,
        topic: Bytes,
        payload: Bytes,
        qos: QoS,
        retain: bool,
        mut properties: Option<PublishProperties>,
    ) -> Message {
        let expires_at = properties
            .as_ref()
            .and_then(|p| p.message_expiry_interval)
            .map(|secs| Instant::now() + Duration::from_secs(u64::from(secs)));
        if let Some(p) = properties.as_mut() {
            // Subscription identifiers are the server's to set (§3.3.4).
            p.subscription_identifiers.clear();
            p.message_expiry_interval = None;
        }
        Message {
            topic,
            payload,
            qos,
            retain,
            properties: properties.map(Box::new),
            expires_at,
            origin: Some(self.identity.client_id.clone()),
            msgpack: None,
            chat: None,
        }
    }

    /// The acknowledgement an accepted PUBLISH gets; a QoS 2 id is held from here to its PUBREL.
    fn first_ack(&mut self, qos: QoS, pkid: u16) -> Option<Packet> {
        match qos {
            QoS::AtMostOnce => None,
            QoS::AtLeastOnce => Some(Packet::PubAck(PubAck::new(pkid, None))),
            QoS::ExactlyOnce => {
                self.inflight.hold_qos2(pkid);
                Some(Packet::PubRec(PubRec::new(pkid, None)))
            }
        }
    }

    /// Hands an accepted PUBLISH to its route, then acknowledges it, unless the route answered
    /// it itself (refused it, or keeps the acknowledgement until the store commits).
    fn route_publish(
        &mut self,
        route: Route,
        message: Message,
        received: Received,
    ) -> Option<Close> {
        let refused = match route {
            Route::Request { op } => {
                self.on_request(op, message);
                false
            }
            Route::Conversation {
                conv,
                kind: kind @ (ConvKind::Messages | ConvKind::Events),
                copies,
                moderator,
            } => {
                // History: stamped, stored, and only then routed and acknowledged (`settle`).
                return self.on_history(conv, kind, moderator, copies, message, received);
            }
            Route::Conversation {
                conv,
                kind: ConvKind::Receipts,
                ..
            } => self.on_read_marker(conv, &message, &received),
            Route::Conversation {
                conv,
                kind: ConvKind::Typing,
                copies,
                ..
            } => {
                self.on_typing(conv, copies, message);
                false
            }
            Route::Plain => {
                self.on_plain(message, &received);
                false
            }
        };
        if let (false, Some(ack)) = (refused, received.ack) {
            self.ack_in_order(ack);
        }
        None
    }

    /// A plain MQTT message: straight to the router.
    fn on_plain(&mut self, message: Message, received: &Received) {
        let qos2_pkid = (received.qos == QoS::ExactlyOnce).then_some(received.pkid);
        self.events.push_back(Event::Publish {
            client: self.identity.client_id.clone(),
            message,
            qos2_pkid,
            copies: Vec::new(),
        });
    }
}
