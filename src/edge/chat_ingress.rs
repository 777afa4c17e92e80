//! The chat routes of an inbound PUBLISH: a message or event is parsed as an envelope and waits
//! for the store; a read marker goes to the receipts service; a typing indicator passes the
//! typing gate; a request goes to the chat service.

use std::time::{Duration, Instant};

use bytes::Bytes;
use rumqttc::v5::mqttbytes::QoS;

use super::connection::{Close, Connection};
use super::inflight::{Pending, Persist};
use super::publish::Received;
use crate::chat::envelope;
use crate::refusal::Refusal;
use crate::router::{Event, Message};
use crate::service::requests::Request;
use crate::service::signals::Signal;
use crate::store::messages::NewMessage;
use crate::topics::ConvKind;

/// A read marker: the last sequence number read (one the store can hold), and whether to keep
/// it from the others.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ReadMarker {
    #[serde(deserialize_with = "crate::chat::seq::required")]
    read: u64,
    #[serde(default)]
    private: bool,
}

impl Connection {
    /// A request (`q/{user}/{op}`) for the chat service.
    pub(super) fn on_request(&mut self, op: String, message: Message) {
        // A request is for the server alone; it is answered, not routed.
        if let Some(user) = self.identity.user.clone() {
            let props = message.properties.unwrap_or_default();
            self.requests.push_back(Request {
                user,
                op,
                payload: message.payload,
                response_topic: props.response_topic,
                correlation: props.correlation_data,
            });
        }
    }

    /// A chat message or event: its envelope is parsed and it waits for the store (`settle`),
    /// which it reaches with its acknowledgement.
    pub(super) fn on_history(
        &mut self,
        conv: String,
        kind: ConvKind,
        moderator: bool,
        copies: Vec<Bytes>,
        message: Message,
        received: Received,
    ) -> Option<Close> {
        let Received {
            qos,
            pkid,
            dup,
            ack,
        } = received;
        let content_type = message
            .properties
            .as_ref()
            .and_then(|p| p.content_type.as_deref());
        let content = match envelope::parse(
            &message.payload,
            content_type,
            kind == ConvKind::Messages,
            self.shared.limits.max_text_bytes,
        ) {
            Ok(content) => content,
            Err(e) => {
                return self.refuse(&message.topic, qos, pkid, &Refusal::from(e));
            }
        };
        let new = NewMessage {
            conv,
            sender: self
                .identity
                .user
                .as_deref()
                .unwrap_or_default()
                .to_string(),
            device: self.identity.client_id.to_string(),
            pkid: (qos != QoS::AtMostOnce).then_some(pkid),
            dup,
            moderator,
            content,
        };
        self.inflight.push(Pending::Persist(Box::new(Persist {
            new: Some(new),
            reply: None,
            answer: None,
            topic: message.topic,
            qos,
            pkid,
            copies,
            ack,
            arrived: Instant::now(),
        })));
        None
    }

    /// A read marker for the receipts service; delivered receipts are the server's to derive.
    /// `true` when it is refused (and so already answered).
    pub(super) fn on_read_marker(
        &mut self,
        conv: String,
        message: &Message,
        received: &Received,
    ) -> bool {
        // JSON, or a MessagePack map from a device that speaks it (as for messages).
        let marker = match message.payload.first() {
            Some(0x80..=0x8f | 0xde | 0xdf) => {
                rmp_serde::from_slice::<ReadMarker>(&message.payload).map_err(|e| e.to_string())
            }
            _ => serde_json::from_slice::<ReadMarker>(&message.payload).map_err(|e| e.to_string()),
        };
        match marker {
            Ok(marker) => {
                if let Some(user) = self.identity.user.clone() {
                    let _ = self.shared.signals.send(Signal::Read {
                        user,
                        conv,
                        seq: marker.read,
                        private: marker.private,
                    });
                }
                false
            }
            Err(e) => {
                let refusal = Refusal::BadPayload(e);
                self.refuse(&message.topic, received.qos, received.pkid, &refusal);
                true
            }
        }
    }

    /// A typing indicator: at most one per user and conversation per interval, QoS 0,
    /// expiring, and saying who. Only users reach chat topics.
    pub(super) fn on_typing(&mut self, conv: String, copies: Vec<Bytes>, message: Message) {
        let now = Instant::now();
        let interval = self.shared.limits.typing_interval;
        let user = self.identity.user.clone().unwrap_or_default();
        if !self.shared.typing.allow(&user, &conv, interval, now) {
            return;
        }
        let body = serde_json::json!({"type": "typing", "conv": conv, "user": &*user});
        let expiry = self.shared.limits.typing_expiry;
        let typing = Message {
            topic: message.topic,
            payload: Bytes::from(body.to_string()),
            qos: QoS::AtMostOnce,
            retain: false,
            properties: None,
            expires_at: Some(now + Duration::from_secs(u64::from(expiry))),
            origin: message.origin,
            msgpack: None,
            chat: None,
        };
        self.events.push_back(Event::Publish {
            client: self.identity.client_id.clone(),
            message: typing,
            qos2_pkid: None,
            copies,
        });
    }
}
