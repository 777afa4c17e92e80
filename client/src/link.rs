//! One MQTT connection through rumqttc, 3.1.1 or 5.0 behind one face: the session above sees
//! the same events and calls whichever version runs. A link lives for one connection; a
//! reconnect makes a new one, so nothing rumqttc kept from before is sent again behind the
//! session's back (the outbox does the resending, with its `cid`s).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rumqttc::v5::mqttbytes::v5 as v5b;
use rumqttc::v5::mqttbytes::QoS as Qos5;
use rumqttc::{v5, QoS};

use tokio::sync::mpsc;

use crate::config::{Format, Protocol};

/// The biggest packet either side may send: a page of history is many entries (a page of
/// `Config::sync_page` entries of natter's largest text, JSON-escaped, stays under it).
const MAX_PACKET: usize = 16 << 20;
/// Topic aliases the server may use towards this client: a user's streams, one per
/// conversation and kind, and a few more.
const ALIASES_IN: u16 = 256;
/// Events buffered from the event loop's task.
const EVENTS: usize = 1024;
/// Requests queued towards rumqttc; the session never has more than its send window, acks
/// and a few subscriptions outstanding.
const CHANNEL: usize = 4096;

/// How to open a link.
pub struct Dial<'a> {
    pub host: &'a str,
    pub port: u16,
    pub client_id: String,
    pub user: &'a str,
    pub password: &'a str,
    pub protocol: Protocol,
    pub format: Format,
    pub keep_alive: Duration,
    /// MQTT 5 topic aliases towards this client too (the server then sends each stream topic
    /// once per connection, and a two-byte alias after).
    pub topic_aliases: bool,
}

/// A received PUBLISH whose acknowledgement waits until the app has taken it.
pub enum Held {
    V4(rumqttc::Publish),
    V5(v5b::Publish),
}

/// What happened on the connection.
pub enum Happened {
    /// CONNACK success.
    Connected,
    Message {
        topic: String,
        payload: Bytes,
        /// The acknowledgement to send when the app has the message (QoS 1 and 2).
        held: Option<Box<Held>>,
        /// MQTT 5 correlation data (replies to requests).
        correlation: Option<Bytes>,
    },
    /// A PUBLISH left, with this packet id (0 for QoS 0); in the order they were asked for.
    Sent(u16),
    /// The server acknowledged packet `pkid`; `refused` is its reason code when negative.
    Acked { pkid: u16, refused: Option<u8> },
    /// Nothing the session needs (pings, SUBACKs, …).
    Nothing,
}

/// Why a link ended.
#[derive(Debug)]
pub enum Ended {
    /// CONNACK refused the login (bad credentials, not authorized, bad client id).
    Auth(String),
    /// CONNACK or DISCONNECT said the server is busy or this user is over a limit.
    Busy(String),
    /// DISCONNECT 0x8E: another connection with this client id took the session.
    TakenOver,
    /// Anything else: the network, a timeout, another reason code.
    Failed(String),
}

/// The sending half of the connection (rumqttc's client), by version.
enum Sender {
    V4(rumqttc::AsyncClient),
    V5(v5::AsyncClient),
}

/// One connection: rumqttc's event loop runs in a task of its own and reports here, because
/// its `poll` is not safe to cancel while connecting (a `select!` that drops it sends a second
/// CONNECT with the same client id, and the server ends one of the two as taken over).
pub struct Link {
    sender: Sender,
    events: mpsc::Receiver<Result<Happened, Ended>>,
    alias_max: Arc<AtomicU16>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Link {
    fn drop(&mut self) {
        // Dropping the event loop closes the socket.
        self.task.abort();
    }
}

impl Link {
    /// Starts connecting.
    pub fn new(dial: Dial<'_>) -> Link {
        let (tx, events) = mpsc::channel(EVENTS);
        let alias_max = Arc::new(AtomicU16::new(0));
        let aliases = alias_max.clone();
        let (sender, task) = match dial.protocol {
            Protocol::V311 => {
                let mut o = rumqttc::MqttOptions::new(dial.client_id, dial.host, dial.port);
                o.set_credentials(dial.user, dial.password)
                    .set_keep_alive(dial.keep_alive)
                    .set_clean_session(true)
                    .set_manual_acks(true)
                    .set_max_packet_size(MAX_PACKET, MAX_PACKET)
                    .set_request_channel_capacity(CHANNEL);
                let (client, mut events) = rumqttc::AsyncClient::new(o, CHANNEL);
                let task = tokio::spawn(async move {
                    loop {
                        let happened = v4_event(events.poll().await);
                        let end = happened.is_err();
                        if tx.send(happened).await.is_err() || end {
                            return;
                        }
                    }
                });
                (Sender::V4(client), task)
            }
            Protocol::V5 => {
                let mut o = v5::MqttOptions::new(dial.client_id, dial.host, dial.port);
                o.set_credentials(dial.user, dial.password)
                    .set_keep_alive(dial.keep_alive)
                    .set_clean_start(true)
                    .set_manual_acks(true)
                    .set_max_packet_size(Some(MAX_PACKET as u32))
                    .set_request_channel_capacity(CHANNEL);
                if dial.topic_aliases {
                    o.set_topic_alias_max(Some(ALIASES_IN));
                }
                if dial.format == Format::MsgPack {
                    o.set_user_properties(vec![("format".into(), "msgpack".into())]);
                }
                let (client, mut events) = v5::AsyncClient::new(o, CHANNEL);
                let task = tokio::spawn(async move {
                    // Topics behind the server's aliases: rumqttc reports a PUBLISH before it
                    // resolves its alias, so an aliased one would arrive without its topic.
                    let mut incoming: HashMap<u16, Bytes> = HashMap::new();
                    loop {
                        let mut polled = events.poll().await;
                        match &mut polled {
                            Ok(v5::Event::Incoming(v5::Incoming::ConnAck(ack))) => {
                                let max = ack.properties.as_ref().and_then(|p| p.topic_alias_max);
                                aliases.store(max.unwrap_or(0), Ordering::Relaxed);
                            }
                            Ok(v5::Event::Incoming(v5::Incoming::Publish(p))) => {
                                let alias = p.properties.as_ref().and_then(|pr| pr.topic_alias);
                                if let Some(alias) = alias {
                                    if p.topic.is_empty() {
                                        p.topic = incoming.get(&alias).cloned().unwrap_or_default();
                                    } else {
                                        incoming.insert(alias, p.topic.clone());
                                    }
                                }
                            }
                            _ => {}
                        }
                        let happened = v5_event(polled);
                        let end = happened.is_err();
                        if tx.send(happened).await.is_err() || end {
                            return;
                        }
                    }
                });
                (Sender::V5(client), task)
            }
        };
        Link {
            sender,
            events,
            alias_max,
            task,
        }
    }

    /// The next thing that happened; an error ends the link. Safe to cancel.
    pub async fn next(&mut self) -> Result<Happened, Ended> {
        self.events
            .recv()
            .await
            .unwrap_or_else(|| Err(Ended::Failed("the connection's task ended".into())))
    }

    /// Queues a PUBLISH. `alias` is an MQTT 5 topic alias: `(alias, true)` sends the topic and
    /// sets the alias, `(alias, false)` sends the alias alone. `reply` is an MQTT 5 response
    /// topic and correlation data. 3.1.1 ignores both.
    pub fn publish(
        &self,
        topic: &str,
        qos: u8,
        payload: Vec<u8>,
        alias: Option<(u16, bool)>,
        reply: Option<(String, Bytes)>,
    ) -> Result<(), Ended> {
        let gone = |e: String| Ended::Failed(format!("the connection's queue: {e}"));
        match &self.sender {
            Sender::V4(client) => client
                .try_publish(topic, qos_of(qos), false, payload)
                .map_err(|e| gone(e.to_string())),
            Sender::V5(client) => {
                let mut props = v5b::PublishProperties::default();
                let mut topic = topic.to_string();
                if let Some((alias, first)) = alias {
                    props.topic_alias = Some(alias);
                    if !first {
                        topic.clear();
                    }
                }
                if let Some((response, correlation)) = reply {
                    props.response_topic = Some(response);
                    props.correlation_data = Some(correlation);
                }
                client
                    .try_publish_with_properties(topic, qos5_of(qos), false, payload, props)
                    .map_err(|e| gone(e.to_string()))
            }
        }
    }

    pub fn subscribe(&self, filter: &str) -> Result<(), Ended> {
        let gone = |e: String| Ended::Failed(format!("the connection's queue: {e}"));
        match &self.sender {
            Sender::V4(client) => client
                .try_subscribe(filter, QoS::AtLeastOnce)
                .map_err(|e| gone(e.to_string())),
            Sender::V5(client) => client
                .try_subscribe(filter, Qos5::AtLeastOnce)
                .map_err(|e| gone(e.to_string())),
        }
    }

    /// Acknowledges a message the app has taken.
    pub fn ack(&self, held: &Held) -> Result<(), Ended> {
        let gone = |e: String| Ended::Failed(format!("the connection's queue: {e}"));
        match (&self.sender, held) {
            (Sender::V4(client), Held::V4(p)) => client.try_ack(p).map_err(|e| gone(e.to_string())),
            (Sender::V5(client), Held::V5(p)) => client.try_ack(p).map_err(|e| gone(e.to_string())),
            // A message of an older link: its connection is gone, and the server resends it.
            _ => Ok(()),
        }
    }

    /// Whether MQTT 5 features (aliases, response topics) are there.
    pub fn is_v5(&self) -> bool {
        matches!(self.sender, Sender::V5(_))
    }

    /// The largest topic alias the server accepts (0: none). Known once connected.
    pub fn alias_max(&self) -> u16 {
        self.alias_max.load(Ordering::Relaxed)
    }

    /// Sends DISCONNECT and lets the link flush it.
    pub async fn close(mut self) {
        let asked = match &self.sender {
            Sender::V4(client) => client.try_disconnect().is_ok(),
            Sender::V5(client) => client.try_disconnect().is_ok(),
        };
        if asked {
            let _ = tokio::time::timeout(Duration::from_secs(2), async {
                while self.next().await.is_ok() {}
            })
            .await;
        }
    }
}

/// What a 3.1.1 event loop reported, as the session sees it.
fn v4_event(polled: Result<rumqttc::Event, rumqttc::ConnectionError>) -> Result<Happened, Ended> {
    use rumqttc::{Event, Incoming, Outgoing};
    match polled {
        Ok(Event::Incoming(Incoming::ConnAck(_))) => Ok(Happened::Connected),
        Ok(Event::Incoming(Incoming::Publish(p))) => Ok(Happened::Message {
            topic: p.topic.clone(),
            payload: p.payload.clone(),
            held: (p.qos != QoS::AtMostOnce).then(|| Box::new(Held::V4(p))),
            correlation: None,
        }),
        Ok(Event::Incoming(Incoming::PubAck(a))) => Ok(Happened::Acked {
            pkid: a.pkid,
            refused: None,
        }),
        Ok(Event::Outgoing(Outgoing::Publish(pkid))) => Ok(Happened::Sent(pkid)),
        Ok(_) => Ok(Happened::Nothing),
        Err(rumqttc::ConnectionError::ConnectionRefused(code)) => {
            use rumqttc::ConnectReturnCode as C;
            let name = format!("{code:?}");
            Err(match code {
                C::BadUserNamePassword | C::NotAuthorized | C::BadClientId => Ended::Auth(name),
                // natter says 0x03 for quotas and login rate limits on 3.1.1.
                C::ServiceUnavailable => Ended::Busy(name),
                _ => Ended::Failed(name),
            })
        }
        Err(e) => Err(Ended::Failed(e.to_string())),
    }
}

/// What a 5.0 event loop reported, as the session sees it.
fn v5_event(polled: Result<v5::Event, v5::ConnectionError>) -> Result<Happened, Ended> {
    use v5::{Event, Incoming};
    match polled {
        Ok(Event::Incoming(Incoming::ConnAck(_))) => Ok(Happened::Connected),
        Ok(Event::Incoming(Incoming::Publish(p))) => Ok(Happened::Message {
            topic: String::from_utf8_lossy(&p.topic).into_owned(),
            payload: p.payload.clone(),
            correlation: p
                .properties
                .as_ref()
                .and_then(|pr| pr.correlation_data.clone()),
            held: (p.qos != Qos5::AtMostOnce).then(|| Box::new(Held::V5(p))),
        }),
        Ok(Event::Incoming(Incoming::PubAck(a))) => Ok(Happened::Acked {
            pkid: a.pkid,
            refused: puback_refusal(a.reason),
        }),
        Ok(Event::Outgoing(rumqttc::Outgoing::Publish(pkid))) => Ok(Happened::Sent(pkid)),
        Ok(_) => Ok(Happened::Nothing),
        Err(v5::ConnectionError::ConnectionRefused(code)) => {
            use v5b::ConnectReturnCode as C;
            let name = format!("{code:?}");
            Err(match code {
                C::BadUserNamePassword
                | C::NotAuthorized
                | C::ClientIdentifierNotValid
                | C::Banned
                | C::BadAuthenticationMethod => Ended::Auth(name),
                C::ServerBusy
                | C::ServerUnavailable
                | C::QuotaExceeded
                | C::ConnectionRateExceeded => Ended::Busy(name),
                _ => Ended::Failed(name),
            })
        }
        Err(v5::ConnectionError::MqttState(v5::StateError::ServerDisconnect {
            reason_code,
            ..
        })) => {
            use v5b::DisconnectReasonCode as D;
            let name = format!("DISCONNECT {reason_code:?}");
            Err(match reason_code {
                D::SessionTakenOver => Ended::TakenOver,
                D::ServerBusy | D::QuotaExceeded | D::MessageRateTooHigh => Ended::Busy(name),
                _ => Ended::Failed(name),
            })
        }
        Err(e) => Err(Ended::Failed(e.to_string())),
    }
}

/// A negative PUBACK's reason code; success and "no matching subscribers" are not.
fn puback_refusal(reason: v5b::PubAckReason) -> Option<u8> {
    use v5b::PubAckReason as R;
    Some(match reason {
        R::Success | R::NoMatchingSubscribers => return None,
        R::UnspecifiedError => 0x80,
        R::ImplementationSpecificError => 0x83,
        R::NotAuthorized => 0x87,
        R::TopicNameInvalid => 0x90,
        R::PacketIdentifierInUse => 0x91,
        R::QuotaExceeded => 0x97,
        R::PayloadFormatInvalid => 0x99,
    })
}

fn qos_of(qos: u8) -> QoS {
    if qos == 0 {
        QoS::AtMostOnce
    } else {
        QoS::AtLeastOnce
    }
}

fn qos5_of(qos: u8) -> Qos5 {
    if qos == 0 {
        Qos5::AtMostOnce
    } else {
        Qos5::AtLeastOnce
    }
}
