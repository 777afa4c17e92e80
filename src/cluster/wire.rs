//! What crosses between nodes on NATS: a [`Frame`] in MessagePack, with field names so nodes of
//! two versions (a rolling upgrade) still read each other's optional fields.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rumqttc::v5::mqttbytes::v5::PublishProperties;
use serde::{Deserialize, Serialize};

use crate::router::{ChatRef, Control, Message};
use crate::store::RetainedRecord;

/// One NATS message between nodes.
#[derive(Debug, Serialize, Deserialize)]
pub struct Frame {
    /// The node that sent it (a node ignores its own frames, but for shared groups).
    pub node: Arc<str>,
    pub body: Body,
}

#[derive(Debug, Serialize, Deserialize)]
pub enum Body {
    Message(Box<Wired>),
    Control(Control),
}

/// A [`Message`] on the wire.
#[derive(Debug, Serialize, Deserialize)]
pub struct Wired {
    topic: Bytes,
    payload: Bytes,
    qos: u8,
    retain: bool,
    /// What was left of its Message Expiry Interval when it left, in milliseconds.
    #[serde(default)]
    expires_in_ms: Option<u64>,
    #[serde(default)]
    properties: Option<Properties>,
    #[serde(default)]
    msgpack: Option<Bytes>,
    #[serde(default)]
    entry: Option<Entry>,
}

/// The 5.0 properties that pass to subscribers (never an alias or subscription ids, which
/// belong to one connection; the expiry travels as what is left of it).
#[derive(Debug, Serialize, Deserialize)]
struct Properties {
    payload_format_indicator: Option<u8>,
    response_topic: Option<String>,
    correlation_data: Option<Bytes>,
    user_properties: Vec<(String, String)>,
    content_type: Option<String>,
}

/// A stored entry's reference ([`ChatRef`]).
#[derive(Debug, Serialize, Deserialize)]
struct Entry {
    conv: String,
    seq: u64,
    from: String,
    receipt: bool,
}

impl Frame {
    pub fn encode(&self) -> Result<Vec<u8>, rmp_serde::encode::Error> {
        rmp_serde::to_vec_named(self)
    }

    pub fn decode(bytes: &[u8]) -> Result<Frame, rmp_serde::decode::Error> {
        rmp_serde::from_slice(bytes)
    }
}

/// A retained message as the store keeps it: its encoding, and its expiry as a wall-clock
/// time (what is left of it means nothing to a node that reads it later).
pub fn retained_record(m: &Message, now: Instant) -> RetainedRecord {
    let mut wired = Wired::from_message(m, now);
    let expires_at_ms = wired.expires_in_ms.take().map(|ms| wall_ms() + ms as i64);
    (
        rmp_serde::to_vec_named(&wired).unwrap_or_default(),
        expires_at_ms,
    )
}

/// A retained message read back from the store; `None` if it is not one this node can route.
pub fn from_retained_record(
    bytes: &[u8],
    expires_at_ms: Option<i64>,
    now: Instant,
) -> Option<Message> {
    let mut wired: Wired = rmp_serde::from_slice(bytes).ok()?;
    wired.expires_in_ms = expires_at_ms.map(|at| (at - wall_ms()).max(0) as u64);
    wired.into_message(now)
}

fn wall_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

impl Wired {
    pub fn from_message(m: &Message, now: Instant) -> Wired {
        Wired {
            topic: m.topic.clone(),
            payload: m.payload.clone(),
            qos: m.qos as u8,
            retain: m.retain,
            expires_in_ms: m
                .expires_at
                .map(|at| at.saturating_duration_since(now).as_millis() as u64),
            properties: m.properties.as_deref().map(|p| Properties {
                payload_format_indicator: p.payload_format_indicator,
                response_topic: p.response_topic.clone(),
                correlation_data: p.correlation_data.clone(),
                user_properties: p.user_properties.clone(),
                content_type: p.content_type.clone(),
            }),
            msgpack: m.msgpack.clone(),
            entry: m.chat.as_deref().map(|c| Entry {
                conv: c.conv.clone(),
                seq: c.seq,
                from: c.from.clone(),
                receipt: c.receipt,
            }),
        }
    }

    /// The message, as this node routes it; `None` when it is not one an MQTT client could
    /// have sent (a topic that is not UTF-8, an unknown QoS).
    pub fn into_message(self, now: Instant) -> Option<Message> {
        std::str::from_utf8(&self.topic).ok()?;
        let qos = rumqttc::v5::mqttbytes::qos(self.qos)?;
        Some(Message {
            topic: self.topic,
            payload: self.payload,
            qos,
            retain: self.retain,
            properties: self.properties.map(|p| {
                Box::new(PublishProperties {
                    payload_format_indicator: p.payload_format_indicator,
                    message_expiry_interval: None,
                    topic_alias: None,
                    response_topic: p.response_topic,
                    correlation_data: p.correlation_data,
                    user_properties: p.user_properties,
                    subscription_identifiers: Vec::new(),
                    content_type: p.content_type,
                })
            }),
            expires_at: self.expires_in_ms.map(|ms| now + Duration::from_millis(ms)),
            origin: None,
            msgpack: self.msgpack,
            chat: self.entry.map(|e| {
                Arc::new(ChatRef {
                    conv: e.conv,
                    seq: e.seq,
                    from: e.from,
                    receipt: e.receipt,
                })
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_crosses_unchanged() {
        let now = Instant::now();
        let mut m = Message::server("c/g.x/m".into(), "{\"t\":\"hi\"}");
        m.retain = true;
        m.expires_at = Some(now + Duration::from_secs(30));
        m.properties = Some(Box::new(PublishProperties {
            user_properties: vec![("k".into(), "v".into())],
            content_type: Some("application/json".into()),
            ..Default::default()
        }));
        m.chat = Some(Arc::new(ChatRef {
            conv: "g.x".into(),
            seq: 7,
            from: "alice".into(),
            receipt: true,
        }));
        let frame = Frame {
            node: "n1".into(),
            body: Body::Message(Box::new(Wired::from_message(&m, now))),
        };
        let back = Frame::decode(&frame.encode().unwrap()).unwrap();
        assert_eq!(&*back.node, "n1");
        let Body::Message(w) = back.body else {
            panic!("not a message")
        };
        let got = w.into_message(now).unwrap();
        assert_eq!((got.topic, got.payload), (m.topic, m.payload));
        assert_eq!(
            (got.qos, got.retain),
            (rumqttc::v5::mqttbytes::QoS::AtLeastOnce, true)
        );
        assert_eq!(got.expires_at, m.expires_at);
        let p = got.properties.unwrap();
        assert_eq!(p.user_properties, [("k".to_string(), "v".to_string())]);
        let c = got.chat.unwrap();
        assert_eq!((c.conv.as_str(), c.seq, c.receipt), ("g.x", 7, true));
    }

    #[test]
    fn a_retained_record_keeps_its_expiry_as_a_time() {
        let now = Instant::now();
        let mut m = Message::server("status/door".into(), "open");
        m.retain = true;
        m.expires_at = Some(now + Duration::from_secs(60));
        let (bytes, at) = retained_record(&m, now);
        let at = at.unwrap();
        assert!((at - wall_ms() - 60_000).abs() < 1_000);
        let back = from_retained_record(&bytes, Some(at), now).unwrap();
        assert!(back.retain && &back.payload[..] == b"open");
        let left = back.expires_at.unwrap() - now;
        assert!(left > Duration::from_secs(58) && left <= Duration::from_secs(60));
        assert!(from_retained_record(b"junk", None, now).is_none());
    }

    #[test]
    fn controls_cross_and_garbage_is_an_error() {
        let frame = Frame {
            node: "n2".into(),
            body: Body::Control(Control::KickUser("bob".into())),
        };
        let back = Frame::decode(&frame.encode().unwrap()).unwrap();
        assert!(matches!(back.body, Body::Control(Control::KickUser(u)) if &*u == "bob"));
        assert!(Frame::decode(b"\xc1garbage").is_err());
    }
}
