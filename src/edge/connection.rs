//! One MQTT connection after its CONNECT (see `connect`): a loop that reads packets, authorizes
//! them and hands them to the router (chat messages through the store first), and writes what
//! the router puts in the connection's mailbox.
//!
//! Everything version-specific stays here and in `codec`: the router sees 5.0 packets and
//! [`Message`]s; a 3.1.1 client simply never sends properties and never sees any.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use rumqttc::v5::mqttbytes::v5::{
    ConnAck, Disconnect, DisconnectReasonCode, Packet, PubAck, PubAckReason, PubComp, PubRec,
    PubRecReason, Publish, PublishProperties,
};
use rumqttc::v5::mqttbytes::QoS;
use tokio::sync::oneshot;

use super::connect::Admitted;
use super::rate::RateLimit;
use super::transport::Transport;
use super::Shared;
use crate::access::{Identity, Route};
use crate::chat::envelope::{self, Envelope, Format, Kind};
use crate::codec::{self, CodecError, Version};
use crate::config::RateAction;
use crate::router::{Ack, ChatRef, Delivery, Event, Mailbox, Message, Outbound};
use crate::service::requests::Request;
use crate::service::signals::Signal;
use crate::stats::Stats;
use crate::store::messages::{AppendError, Appended, NewMessage};
use crate::topics;
use crate::topics::ConvKind;

/// Bytes gathered from the mailbox before a write.
const WRITE_BATCH: usize = 64 * 1024;

/// How long a closing connection may take to write its last packets.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// An inbound PUBLISH waiting for the store (or an acknowledgement queued behind one).
enum Pending {
    Ready(Box<Packet>),
    Persist(Box<Persist>),
}

impl Pending {
    /// A QoS 1 PUBLISH not yet acknowledged (it counts against the Receive Maximum).
    fn is_qos1(&self) -> bool {
        match self {
            Pending::Persist(p) => p.qos == QoS::AtLeastOnce,
            Pending::Ready(ack) => matches!(**ack, Packet::PubAck(_)),
        }
    }
}

struct Persist {
    /// Taken when handed to the writer.
    new: Option<NewMessage>,
    reply: Option<oneshot::Receiver<Result<Appended, AppendError>>>,
    topic: Bytes,
    qos: QoS,
    pkid: u16,
    copies: Vec<Bytes>,
    ack: Option<Packet>,
    arrived: Instant,
}

/// Why a connection ended.
#[derive(Debug)]
enum Close {
    /// The client sent DISCONNECT.
    Client { will: bool, expiry: Option<u32> },
    /// The peer vanished or the socket failed.
    Lost,
    /// We end it, telling a 5.0 client why.
    Server(DisconnectReasonCode),
}

pub(super) struct Connection {
    shared: Arc<Shared>,
    io: Transport,
    version: Version,
    peer: SocketAddr,
    rbuf: BytesMut,
    wbuf: BytesMut,
    identity: Identity,
    conn_id: u64,
    mailbox: Arc<Mailbox>,
    /// 1.5 × the keep alive in force; `None` when keep alive is 0.
    keepalive: Option<Duration>,
    /// The client's Maximum Packet Size (5.0).
    client_max_packet: Option<u32>,
    /// Topic aliases the client set towards us.
    alias_in: HashMap<u16, Bytes>,
    /// Topic aliases we set towards the client, up to its Topic Alias Maximum.
    alias_out: HashMap<Bytes, u16>,
    client_alias_max: u16,
    /// QoS 2 packet ids received and not yet released (Receive Maximum accounting).
    pending_qos2: HashSet<u16>,
    /// A session that expires at disconnect cannot be given an expiry by DISCONNECT (§3.14.2.2.2).
    expiry_was_zero: bool,
    /// Events for the router, sent in order before the connection reads again.
    events: VecDeque<Event>,
    /// Requests (`q/{user}/{op}`) for the chat service, answered in order.
    requests: VecDeque<Request>,
    /// Inbound messages waiting for the store, and acknowledgements queued behind them.
    pending: VecDeque<Pending>,
    /// How many of them are QoS 1 (kept with `pending` by `push_pending` and `settle`).
    pending_qos1: usize,
    /// How chat envelopes are delivered to this device.
    format: Format,
    publish_rate: RateLimit,
    /// Set while over the publish rate: reading resumes then.
    throttled: Option<Instant>,
}

impl Connection {
    /// A connection whose CONNECT was accepted. Boxed: it lives as long as its task, whose
    /// future then holds only a pointer to it instead of a second copy.
    pub(super) fn new(
        shared: &Arc<Shared>,
        io: Transport,
        version: Version,
        peer: SocketAddr,
        rbuf: BytesMut,
        admitted: Admitted,
    ) -> Box<Connection> {
        Box::new(Connection {
            shared: shared.clone(),
            io,
            version,
            peer,
            rbuf,
            wbuf: BytesMut::new(),
            identity: admitted.identity,
            conn_id: admitted.conn_id,
            mailbox: admitted.mailbox,
            keepalive: admitted.keepalive,
            client_max_packet: admitted.client_max_packet,
            alias_in: HashMap::new(),
            alias_out: HashMap::new(),
            client_alias_max: admitted.client_alias_max,
            pending_qos2: HashSet::new(),
            expiry_was_zero: admitted.expiry_was_zero,
            events: VecDeque::new(),
            requests: VecDeque::new(),
            pending: VecDeque::new(),
            pending_qos1: 0,
            format: admitted.format,
            throttled: None,
            publish_rate: RateLimit::new(
                shared.limits.publish_rate,
                shared.limits.publish_burst,
                Instant::now(),
            ),
        })
    }

    /// Sends the CONNACK, then serves the connection until it ends. The router has already
    /// attached it (and may have queued resends: the CONNACK goes first, so the mailbox is
    /// drained only once it is written), so every way out, a failed CONNACK write too, goes
    /// through `finish`, which tells the router.
    pub(super) async fn run(mut self: Box<Self>, connack: ConnAck) {
        self.queue(&Packet::ConnAck(connack));
        let close = match self.flush().await {
            Ok(()) => self.serve().await,
            Err(_) => Close::Lost,
        };
        self.finish(close).await;
    }

    // Packet handling below is synchronous on purpose: the connection awaits in only a few
    // places (sending events, writing, the select), which keeps this task's future, allocated
    // once per connection for its whole life, small.
    async fn serve(&mut self) -> Close {
        let shutdown = self.shared.shutdown.clone();
        let mailbox = self.mailbox.clone();
        let mut outbox = VecDeque::new();
        let mut last_read = Instant::now();
        loop {
            let closing = self.handle_buffered();
            if !self.send_events().await {
                return Close::Server(DisconnectReasonCode::ServerShuttingDown);
            }
            while let Some(request) = self.requests.pop_front() {
                // Boxed: a request's state must not enlarge every connection's task.
                Box::pin(self.shared.chat.handle(request)).await;
            }
            if !self.pending.is_empty() {
                if let Some(close) = Box::pin(self.settle()).await {
                    return close;
                }
                if !self.send_events().await {
                    return Close::Server(DisconnectReasonCode::ServerShuttingDown);
                }
            }
            if let Some(close) = closing {
                return close;
            }
            if self.flush().await.is_err() {
                return Close::Lost;
            }
            if self.rbuf.is_empty() {
                // Hand the read buffer back while idle; the next read takes a fresh one.
                self.rbuf = BytesMut::new();
            }
            let deadline = self.keepalive.map(|k| last_read + k);
            tokio::select! {
                _ = shutdown.cancelled() => return Close::Server(DisconnectReasonCode::ServerShuttingDown),
                _ = mailbox.ready() => {
                    // Let the router (and the other woken connections) run once first, so that
                    // more of a burst is in the mailbox: one write then carries it.
                    tokio::task::yield_now().await;
                    // Drain until the mailbox stays empty (the router keeps pushing meanwhile),
                    // so one write carries many messages; bounded so a firehose still flushes.
                    loop {
                        mailbox.swap(&mut outbox);
                        if outbox.is_empty() {
                            break;
                        }
                        while let Some(item) = outbox.pop_front() {
                            if let Some(close) = self.on_outbound(item) {
                                return close;
                            }
                        }
                        if self.wbuf.len() >= WRITE_BATCH {
                            break;
                        }
                    }
                    // Give the (now empty) queue's memory back while idle.
                    outbox = VecDeque::new();
                }
                _ = sleep_until(self.throttled), if self.throttled.is_some() => {
                    // The bucket has a token again: the waiting PUBLISH goes next.
                    self.throttled = None;
                }
                read = self.io.read(&mut self.rbuf), if self.throttled.is_none() => match read {
                    Ok(0) | Err(_) => return Close::Lost,
                    Ok(n) => {
                        last_read = Instant::now();
                        Stats::add(&self.shared.stats.bytes_received, n as u64);
                    }
                },
                _ = sleep_until(deadline) => {
                    tracing::debug!(client = %self.identity.client_id, "keep alive timeout");
                    return Close::Server(DisconnectReasonCode::KeepAliveTimeout);
                }
            }
        }
    }

    /// Sends queued events to the router, in order; `false` if the router is gone.
    async fn send_events(&mut self) -> bool {
        // Reserve a slot first and take the event only then: an event held across the await
        // would be stored in this task's future for the connection's whole life.
        while !self.events.is_empty() {
            let Ok(permit) = self.shared.router.reserve().await else {
                return false;
            };
            if let Some(event) = self.events.pop_front() {
                permit.send(event);
            }
        }
        // Events are large; an idle connection should not keep room for them.
        self.events = VecDeque::new();
        true
    }

    /// Handles every complete packet in the read buffer.
    fn handle_buffered(&mut self) -> Option<Close> {
        loop {
            // Over the publish rate, the next PUBLISH waits in the buffer and the connection
            // stops reading (TCP pushes back on the client) until the bucket refills: nothing
            // is refused or dropped. Or, if so configured, a 5.0 client is disconnected. The
            // token is spent only on a whole PUBLISH: a large one arriving over many reads is
            // still one message.
            if self.publish_rate.enabled()
                && self.rbuf.first().is_some_and(|b| b >> 4 == 3)
                && codec::starts_with_complete_packet(&self.rbuf)
            {
                let now = Instant::now();
                if let Err(wait) = self.publish_rate.take(now) {
                    if self.shared.limits.publish_rate_action == RateAction::Disconnect
                        && self.version == Version::V5
                    {
                        tracing::info!(client = %self.identity.client_id, "publish rate exceeded");
                        return Some(Close::Server(DisconnectReasonCode::MessageRateTooHigh));
                    }
                    self.throttled = Some(now + wait);
                    return None;
                }
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
            Packet::PubRel(r) => {
                // A packet id received on this connection is answered here; one from an earlier
                // connection of the session only the router knows, and it answers (with 0x92,
                // Packet Identifier not found, when nobody does).
                let known = self.pending_qos2.remove(&r.pkid);
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
            Packet::Subscribe(s) => {
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
            }
            Packet::Unsubscribe(u) => {
                self.events.push_back(Event::Unsubscribe {
                    client: self.identity.client_id.clone(),
                    conn_id: self.conn_id,
                    packet: u,
                });
            }
            Packet::PingReq(_) => {
                self.queue(&Packet::PingResp(rumqttc::v5::mqttbytes::v5::PingResp))
            }
            Packet::Disconnect(d) => {
                let expiry = d.properties.and_then(|p| p.session_expiry_interval);
                if self.expiry_was_zero && expiry.is_some_and(|e| e > 0) {
                    return Some(Close::Server(DisconnectReasonCode::ProtocolError));
                }
                return Some(Close::Client {
                    will: d.reason_code == DisconnectReasonCode::DisconnectWithWillMessage,
                    expiry,
                });
            }
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

    /// Acks that follow one another join one event: a read of many PUBACKs costs the router
    /// one event, not one each.
    fn ack(&mut self, ack: Ack) {
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

    fn on_publish(&mut self, p: Publish) -> Option<Close> {
        let (qos, pkid) = (p.qos, p.pkid);
        let mut properties = p.properties;
        let topic = match self.resolve_alias(p.topic, properties.as_mut()) {
            Ok(topic) => topic,
            Err(reason) => return Some(Close::Server(reason)),
        };
        let Ok(topic_str) = std::str::from_utf8(&topic) else {
            return Some(Close::Server(DisconnectReasonCode::MalformedPacket));
        };
        if let Err(e) = topics::validate_name(topic_str) {
            tracing::info!(client = %self.identity.client_id, topic = topic_str, error = %e, "invalid topic name");
            // 3.1.1 has no way to refuse one message: a wildcard in a topic name is a protocol
            // violation there, and the connection ends.
            if self.version == Version::V4 || qos == QoS::AtMostOnce {
                return Some(Close::Server(DisconnectReasonCode::TopicNameInvalid));
            }
            return self.refuse_publish(qos, pkid, PubAckReason::TopicNameInvalid);
        }
        let utf8_promised = properties.as_ref().and_then(|p| p.payload_format_indicator) == Some(1);
        if utf8_promised && std::str::from_utf8(&p.payload).is_err() {
            return self.refuse_publish(qos, pkid, PubAckReason::PayloadFormatInvalid);
        }
        let route = match self
            .shared
            .access
            .authorize_publish(&self.identity, topic_str)
        {
            Ok(route) => route,
            Err(refused) => {
                tracing::info!(client = %self.identity.client_id, topic = topic_str, %refused, "publish refused");
                self.report_refusal(topic_str, refused.code(), &refused.to_string());
                return self.refuse_publish(qos, pkid, PubAckReason::NotAuthorized);
            }
        };
        if self.over_receive_maximum(qos, pkid) {
            return Some(Close::Server(DisconnectReasonCode::ReceiveMaximumExceeded));
        }
        let expires_at = properties
            .as_ref()
            .and_then(|p| p.message_expiry_interval)
            .map(|secs| Instant::now() + Duration::from_secs(u64::from(secs)));
        if let Some(p) = properties.as_mut() {
            // Subscription identifiers are the server's to set (§3.3.4).
            p.subscription_identifiers.clear();
            p.message_expiry_interval = None;
        }
        let message = Message {
            topic,
            payload: p.payload,
            qos,
            retain: p.retain,
            properties: properties.map(Box::new),
            expires_at,
            origin: Some(self.identity.client_id.clone()),
            msgpack: None,
            chat: None,
        };
        Stats::add(&self.shared.stats.messages_received, 1);
        let ack = match qos {
            QoS::AtMostOnce => None,
            QoS::AtLeastOnce => Some(Packet::PubAck(PubAck::new(pkid, None))),
            QoS::ExactlyOnce => {
                self.pending_qos2.insert(pkid);
                Some(Packet::PubRec(PubRec::new(pkid, None)))
            }
        };
        match route {
            Route::Request { op } => {
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
            Route::Conversation {
                conv,
                kind: kind @ (ConvKind::Messages | ConvKind::Events),
                copies,
                moderator,
            } => {
                // History: stamped, stored, and only then routed and acknowledged (`settle`).
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
                        self.pending_qos2.remove(&pkid);
                        let topic = String::from_utf8_lossy(&message.topic).into_owned();
                        self.report_refusal(&topic, e.code(), &e.to_string());
                        return self.refuse_publish(qos, pkid, PubAckReason::PayloadFormatInvalid);
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
                    dup: p.dup,
                    moderator,
                    content,
                };
                self.push_pending(Pending::Persist(Box::new(Persist {
                    new: Some(new),
                    reply: None,
                    topic: message.topic,
                    qos,
                    pkid,
                    copies,
                    ack,
                    arrived: Instant::now(),
                })));
                return None;
            }
            Route::Conversation {
                conv,
                kind: ConvKind::Receipts,
                ..
            } => {
                // A read marker; delivered receipts are the server's to derive.
                #[derive(serde::Deserialize)]
                #[serde(deny_unknown_fields)]
                struct ReadMarker {
                    read: u64,
                    #[serde(default)]
                    private: bool,
                }
                match serde_json::from_slice::<ReadMarker>(&message.payload) {
                    Ok(marker) => {
                        if let Some(user) = self.identity.user.clone() {
                            let _ = self.shared.signals.send(Signal::Read {
                                user,
                                conv,
                                seq: marker.read,
                                private: marker.private,
                            });
                        }
                    }
                    Err(e) => {
                        self.pending_qos2.remove(&pkid);
                        let topic = String::from_utf8_lossy(&message.topic).into_owned();
                        self.report_refusal(
                            &topic,
                            "bad_payload",
                            &format!("expected {{\"read\": SEQ}}: {e}"),
                        );
                        return self.refuse_publish(qos, pkid, PubAckReason::PayloadFormatInvalid);
                    }
                }
            }
            Route::Conversation {
                conv,
                kind: ConvKind::Typing,
                copies,
                ..
            } => {
                // At most one per user and conversation per interval, QoS 0, expiring, and
                // saying who. Only users reach chat topics.
                let now = Instant::now();
                let interval = self.shared.limits.typing_interval;
                let user = self.identity.user.clone().unwrap_or_default();
                if self.shared.typing.allow(&user, &conv, interval, now) {
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
            Route::Plain => {
                self.events.push_back(Event::Publish {
                    client: self.identity.client_id.clone(),
                    message,
                    qos2_pkid: (qos == QoS::ExactlyOnce).then_some(pkid),
                    copies: Vec::new(),
                });
            }
        }
        if let Some(ack) = ack {
            self.ack_in_order(ack);
        }
        None
    }

    /// Whether a new QoS 1/2 PUBLISH would exceed the Receive Maximum we advertised. 5.0 counts
    /// every QoS 1 and 2 PUBLISH not yet answered by PUBACK or PUBCOMP (§3.3.4): QoS 2 until its
    /// PUBREL, QoS 1 while its PUBACK waits (behind a store commit). 3.1.1 has no Receive
    /// Maximum: only its unreleased QoS 2 ids are bounded, and QoS 1 messages simply wait.
    fn over_receive_maximum(&self, qos: QoS, pkid: u16) -> bool {
        let max = usize::from(self.shared.limits.receive_maximum);
        match qos {
            QoS::AtMostOnce => false,
            // A resent QoS 2 message is still the same one.
            QoS::ExactlyOnce if self.pending_qos2.contains(&pkid) => false,
            QoS::ExactlyOnce if self.version == Version::V4 => self.pending_qos2.len() >= max,
            QoS::AtLeastOnce if self.version == Version::V4 => false,
            _ => self.pending_qos2.len() + self.pending_qos1 >= max,
        }
    }

    /// Acknowledges an inbound PUBLISH behind any that still wait for the store: MQTT requires
    /// acknowledgements in the order the messages came.
    fn ack_in_order(&mut self, ack: Packet) {
        if self.pending.is_empty() {
            self.queue(&ack);
        } else {
            self.push_pending(Pending::Ready(Box::new(ack)));
        }
    }

    fn push_pending(&mut self, p: Pending) {
        self.pending_qos1 += usize::from(p.is_qos1());
        self.pending.push_back(p);
    }

    /// Hands pending chat messages to the history writer, then, in arrival order, routes each
    /// committed one and acknowledges it. Nothing is acknowledged before its commit. A 3.1.1
    /// client whose message could not be stored is then disconnected (see below).
    async fn settle(&mut self) -> Option<Close> {
        let mut close = None;
        for p in self.pending.iter_mut() {
            if let Pending::Persist(p) = p {
                if let Some(new) = p.new.take() {
                    p.reply = Some(self.shared.history.submit(new).await);
                }
            }
        }
        while let Some(p) = self.pending.pop_front() {
            self.pending_qos1 -= usize::from(p.is_qos1());
            let p = match p {
                Pending::Ready(ack) => {
                    self.queue(&ack);
                    continue;
                }
                Pending::Persist(p) => p,
            };
            let result = match p.reply {
                Some(rx) => rx.await.unwrap_or(Err(AppendError::Stopped)),
                None => Err(AppendError::Stopped),
            };
            match result {
                Ok(appended) => {
                    let waited = p.arrived.elapsed().as_secs_f64() * 1000.0;
                    self.shared.stats.puback_ms.observe(waited);
                    if !appended.duplicate {
                        self.route_stored(&appended.envelope, p.topic, p.qos, p.pkid, p.copies);
                    }
                    if let Some(ack) = p.ack {
                        self.queue(&ack);
                    }
                }
                Err(AppendError::Refused(reason)) => {
                    self.pending_qos2.remove(&p.pkid);
                    let topic = String::from_utf8_lossy(&p.topic).into_owned();
                    self.report_refusal(&topic, "refused", &reason.to_string());
                    self.refuse_publish(p.qos, p.pkid, PubAckReason::ImplementationSpecificError);
                }
                Err(e) => {
                    // Not stored (the writer retried up to its bound): the sender must not think
                    // it was. 5.0 learns it from the reason code and resends; 3.1.1 has no
                    // negative acknowledgement, so it is disconnected and resends the message,
                    // still unacknowledged, after reconnecting.
                    tracing::error!(client = %self.identity.client_id, error = %e, "message not stored");
                    self.pending_qos2.remove(&p.pkid);
                    let topic = String::from_utf8_lossy(&p.topic).into_owned();
                    self.report_refusal(
                        &topic,
                        "storage_failed",
                        "the message was not stored; send it again",
                    );
                    if self.version == Version::V5 {
                        self.refuse_publish(p.qos, p.pkid, PubAckReason::UnspecifiedError);
                    } else {
                        close = Some(Close::Server(DisconnectReasonCode::UnspecifiedError));
                    }
                }
            }
        }
        close
    }

    /// Publishes a stored message: the envelope replaces what the client sent.
    fn route_stored(
        &mut self,
        envelope: &Envelope,
        topic: Bytes,
        qos: QoS,
        pkid: u16,
        copies: Vec<Bytes>,
    ) {
        let message = Message {
            topic,
            payload: Bytes::from(envelope.encode(Format::Json)),
            qos,
            retain: false,
            properties: None,
            expires_at: None,
            origin: Some(self.identity.client_id.clone()),
            msgpack: Some(Bytes::from(envelope.encode(Format::MsgPack))),
            chat: (envelope.k == Kind::Msg).then(|| {
                Arc::new(ChatRef {
                    conv: envelope.conv.clone(),
                    seq: envelope.seq,
                    from: envelope.from.clone(),
                })
            }),
        };
        if envelope.k == Kind::Msg {
            let _ = self.shared.signals.send(Signal::Stored {
                conv: envelope.conv.clone(),
                from: envelope.from.clone(),
            });
        }
        self.events.push_back(Event::Publish {
            client: self.identity.client_id.clone(),
            message,
            // A QoS 2 resend is caught by the store; the router holds the id only so that a
            // PUBREL after a reconnect finds it.
            qos2_pkid: (qos == QoS::ExactlyOnce).then_some(pkid),
            copies,
        });
    }

    /// Applies an inbound topic alias (5.0 §3.3.2.3.4): sets it when a topic comes with it,
    /// looks it up when the topic is empty.
    fn resolve_alias(
        &mut self,
        topic: Bytes,
        properties: Option<&mut PublishProperties>,
    ) -> Result<Bytes, DisconnectReasonCode> {
        let alias = properties.and_then(|p| p.topic_alias.take());
        match alias {
            None if topic.is_empty() => Err(DisconnectReasonCode::ProtocolError),
            None => Ok(topic),
            Some(a) if a == 0 || a > self.shared.limits.topic_alias_maximum => {
                Err(DisconnectReasonCode::TopicAliasInvalid)
            }
            Some(a) if topic.is_empty() => self
                .alias_in
                .get(&a)
                .cloned()
                .ok_or(DisconnectReasonCode::ProtocolError),
            Some(a) => {
                self.alias_in.insert(a, topic.clone());
                Ok(topic)
            }
        }
    }

    /// Tells a logged-in user why a message was refused, on `u/{user}/errors`: the only way a
    /// 3.1.1 client can learn it, and a readable reason for 5.0 clients too.
    fn report_refusal(&mut self, topic: &str, code: &str, message: &str) {
        let Some(user) = &self.identity.user else {
            return;
        };
        let body = serde_json::json!({
            "error": code,
            "message": message,
            "topic": topic,
            "client": &*self.identity.client_id,
        });
        self.events.push_back(Event::ServerPublish(Message::server(
            topics::user_errors(user),
            body.to_string(),
        )));
    }

    /// Refuses one PUBLISH: 5.0 learns why from the acknowledgement's reason code; 3.1.1 has no
    /// negative acknowledgement, so it gets a normal one and the message is dropped (as mosquitto
    /// does), rather than a disconnect it would answer by reconnecting in a loop.
    fn refuse_publish(&mut self, qos: QoS, pkid: u16, reason: PubAckReason) -> Option<Close> {
        let v5 = self.version == Version::V5;
        match qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => {
                let mut ack = PubAck::new(pkid, None);
                if v5 {
                    ack.reason = reason;
                }
                self.ack_in_order(Packet::PubAck(ack));
            }
            QoS::ExactlyOnce => {
                let mut rec = PubRec::new(pkid, None);
                if v5 {
                    rec.reason = pubrec_reason(reason);
                }
                self.ack_in_order(Packet::PubRec(rec));
            }
        }
        None
    }

    fn on_outbound(&mut self, item: Outbound) -> Option<Close> {
        match item {
            Outbound::Publish(d) => {
                if let Some(ack) = self.write_delivery(d) {
                    self.ack(ack);
                }
            }
            Outbound::Packet(p) => self.queue(&p),
            Outbound::Disconnect(reason) => return Some(Close::Server(reason)),
        }
        None
    }

    /// Encodes a delivery. When it cannot be sent (expired, or larger than the client accepts)
    /// the specification says to treat it as delivered: the returned ack tells the router so.
    fn write_delivery(&mut self, d: Delivery) -> Option<Ack> {
        let m = &d.message;
        let dropped = (d.qos != QoS::AtMostOnce).then_some(Ack::Discarded(d.pkid));
        // Chat envelopes go out in the device's chosen format.
        let (payload, content_type) = match (&m.msgpack, self.format) {
            (Some(packed), Format::MsgPack) => (packed.clone(), Some("application/msgpack")),
            (Some(_), Format::Json) => (m.payload.clone(), Some("application/json")),
            (None, _) => (m.payload.clone(), None),
        };
        let mut properties = None;
        if self.version == Version::V5 {
            let expiry = match m.expires_at {
                None => None,
                // The clock is read only for messages that expire: most do not.
                Some(at) => {
                    let now = Instant::now();
                    if at <= now {
                        Stats::add(&self.shared.stats.messages_dropped, 1);
                        return dropped;
                    }
                    Some(remaining_secs(at - now))
                }
            };
            if m.properties.is_some()
                || expiry.is_some()
                || !d.subscription_ids.is_empty()
                || content_type.is_some()
            {
                let mut p = m.properties.as_deref().cloned().unwrap_or_default();
                p.message_expiry_interval = expiry;
                p.subscription_identifiers = d.subscription_ids.clone();
                if let Some(ct) = content_type {
                    p.content_type = Some(ct.to_string());
                }
                properties = Some(p);
            }
        }
        let mut publish = Publish {
            dup: d.dup,
            qos: d.qos,
            retain: d.retain,
            topic: m.topic.clone(),
            pkid: d.pkid,
            payload,
            properties,
        };
        if let Some(max) = self.client_max_packet {
            if publish.size() > max as usize {
                tracing::debug!(client = %self.identity.client_id, "message larger than the client's maximum packet size dropped");
                Stats::add(&self.shared.stats.messages_dropped, 1);
                return dropped;
            }
        }
        if self.version == Version::V5 && self.client_alias_max > 0 {
            self.apply_alias_out(&mut publish);
        }
        self.queue(&Packet::Publish(publish));
        Stats::add(&self.shared.stats.messages_sent, 1);
        None
    }

    /// Outbound topic aliases: the first time a topic is sent it gets the next free alias; later
    /// messages on it carry only the alias. Once the client's maximum is used up, new topics go
    /// out in full.
    fn apply_alias_out(&mut self, publish: &mut Publish) {
        let alias = match self.alias_out.get(&publish.topic) {
            Some(&a) => {
                publish.topic = Bytes::new();
                a
            }
            None if self.alias_out.len() < usize::from(self.client_alias_max) => {
                let a = self.alias_out.len() as u16 + 1;
                self.alias_out.insert(publish.topic.clone(), a);
                a
            }
            None => return,
        };
        publish
            .properties
            .get_or_insert_with(PublishProperties::default)
            .topic_alias = Some(alias);
    }

    /// Encodes a packet into the write buffer.
    fn queue(&mut self, packet: &Packet) {
        if let Err(e) = codec::write(self.version, packet, &mut self.wbuf) {
            tracing::warn!(client = %self.identity.client_id, error = %e, "cannot encode packet");
        }
    }

    /// Writes the write buffer out.
    async fn flush(&mut self) -> io::Result<()> {
        if self.wbuf.is_empty() {
            return Ok(());
        }
        let data = std::mem::take(&mut self.wbuf).freeze();
        Stats::add(&self.shared.stats.bytes_sent, data.len() as u64);
        self.io.write(data).await
    }

    async fn finish(&mut self, close: Close) {
        let (publish_will, expiry) = match &close {
            Close::Client { will, expiry } => (*will, *expiry),
            Close::Lost | Close::Server(_) => (true, None),
        };
        if let Close::Server(reason) = close {
            tracing::debug!(client = %self.identity.client_id, ?reason, "closing connection");
            if self.version == Version::V5 {
                self.queue(&Packet::Disconnect(Disconnect::new(reason)));
            }
        }
        // The router hears of the close before the peer sees its socket end: a client that
        // disconnects and at once has another client publish to it finds those messages queued
        // for its offline session, not handed to this closing connection.
        self.events.push_back(Event::Closed {
            client: self.identity.client_id.clone(),
            conn_id: self.conn_id,
            publish_will,
            expiry_secs: expiry,
        });
        self.send_events().await;
        let _ = tokio::time::timeout(CLOSE_GRACE, async {
            let _ = self.flush().await;
            self.io.shutdown().await;
        })
        .await;
        tracing::debug!(client = %self.identity.client_id, peer = %self.peer, "disconnected");
    }
}

fn pubrec_reason(reason: PubAckReason) -> PubRecReason {
    match reason {
        PubAckReason::NotAuthorized => PubRecReason::NotAuthorized,
        PubAckReason::TopicNameInvalid => PubRecReason::TopicNameInvalid,
        PubAckReason::PayloadFormatInvalid => PubRecReason::PayloadFormatInvalid,
        PubAckReason::QuotaExceeded => PubRecReason::QuotaExceeded,
        PubAckReason::ImplementationSpecificError => PubRecReason::ImplementationSpecificError,
        _ => PubRecReason::UnspecifiedError,
    }
}

/// Whole seconds left, rounded up so a message is never reported as already expired.
fn remaining_secs(d: Duration) -> u32 {
    let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    u32::try_from(secs).unwrap_or(u32::MAX)
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}
