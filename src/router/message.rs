//! What the router carries: an application [`Message`], shared by every delivery of it, and a
//! [`Delivery`] of it to one client.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use rumqttc::v5::mqttbytes::v5::PublishProperties;
use rumqttc::v5::mqttbytes::QoS;

use crate::chat::envelope::{Envelope, Format, Kind};

/// An application message as the router carries it; shared by every delivery.
#[derive(Debug, Clone)]
pub struct Message {
    /// A valid topic name (UTF-8, checked by the edge).
    pub topic: Bytes,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    /// 5.0 properties passed on to subscribers (never the topic alias or subscription ids).
    pub properties: Option<Box<PublishProperties>>,
    pub expires_at: Option<Instant>,
    /// The publishing client, for No Local; `None` for messages the server makes.
    pub origin: Option<Arc<str>>,
    /// For chat messages: the same envelope in MessagePack, for devices that asked for it (the
    /// payload is JSON).
    pub msgpack: Option<Bytes>,
    /// For stored chat messages: which one, so a recipient's acknowledgement becomes a receipt.
    pub chat: Option<Arc<ChatRef>>,
}

/// A stored history entry: which one, so a recipient's acknowledgement becomes a receipt and a
/// cluster's nodes deliver each conversation in `seq` order.
#[derive(Debug)]
pub struct ChatRef {
    pub conv: String,
    pub seq: u64,
    pub from: String,
    /// A message (not an edit, delete or reaction): its acknowledgement is a delivered receipt.
    pub receipt: bool,
}

impl Message {
    /// A QoS 1 message from the server itself (events, replies, receipts, presence).
    pub fn server(topic: String, body: impl Into<Bytes>) -> Message {
        Message {
            // Exact: `Bytes` takes a string with spare room only with an allocation of its own
            // beside it, and retained messages (presence: one per online user) live long.
            topic: Bytes::from(topic.into_bytes().into_boxed_slice()),
            payload: body.into(),
            qos: QoS::AtLeastOnce,
            retain: false,
            properties: None,
            expires_at: None,
            origin: None,
            msgpack: None,
            chat: None,
        }
    }

    /// A stored entry as it is routed: the envelope replaces what the client sent (JSON, and
    /// MessagePack for devices that asked for it).
    pub fn stored(
        envelope: &Envelope,
        topic: Bytes,
        qos: QoS,
        origin: Option<Arc<str>>,
    ) -> Message {
        Message {
            topic,
            payload: Bytes::from(envelope.encode(Format::Json)),
            qos,
            retain: false,
            properties: None,
            expires_at: None,
            origin,
            msgpack: Some(Bytes::from(envelope.encode(Format::MsgPack))),
            chat: Some(Arc::new(ChatRef {
                conv: envelope.conv.clone(),
                seq: envelope.seq,
                from: envelope.from.clone(),
                receipt: envelope.k == Kind::Msg,
            })),
        }
    }

    pub fn topic_str(&self) -> &str {
        std::str::from_utf8(&self.topic).unwrap_or_default()
    }

    /// Whether its Message Expiry Interval has passed (then it is never delivered).
    pub fn is_expired(&self, now: Instant) -> bool {
        matches!(self.expires_at, Some(at) if now >= at)
    }

    /// The bytes it holds that a sender chooses (topic, payloads, properties), the measure of
    /// the queues' and the retained store's byte budgets; its fixed-size fields are left out.
    pub fn size(&self) -> usize {
        let properties = self.properties.as_deref().map_or(0, |p| {
            let text = |s: &Option<String>| s.as_ref().map_or(0, String::len);
            let users: usize = p
                .user_properties
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum();
            text(&p.response_topic)
                + text(&p.content_type)
                + p.correlation_data.as_ref().map_or(0, Bytes::len)
                + users
        });
        let packed = self.msgpack.as_ref().map_or(0, Bytes::len);
        self.topic.len() + self.payload.len() + packed + properties
    }
}

/// One message on its way to one client.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub message: Arc<Message>,
    pub qos: QoS,
    pub retain: bool,
    pub dup: bool,
    /// Assigned by the session when the message enters the in-flight window (0 for QoS 0).
    pub pkid: u16,
    pub subscription_ids: Vec<usize>,
}
