//! One MQTT connection after its CONNECT (see `connect`): the `Connection` and its socket loop,
//! which reads packets, hands what they produce to the router (chat messages through the store
//! first), and writes what the router puts in the connection's mailbox.
//!
//! Everything version-specific stays in the edge and in `codec`: the router sees 5.0 packets
//! and [`Message`](crate::router::Message)s; a 3.1.1 client simply never sends properties and
//! never sees any. The connection's work is spread over sibling files, each an `impl
//! Connection` block: `inbound` (reading and dispatching packets), `publish` and
//! `chat_ingress` (one PUBLISH), `persist` (store before acknowledge), `outbound` (writing),
//! `refusals` (what a refused PUBLISH tells the client).

use std::collections::VecDeque;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use rumqttc::v5::mqttbytes::v5::{ConnAck, Disconnect, DisconnectReasonCode, Packet};

use super::aliases::Aliases;
use super::connect::Admitted;
use super::inflight::Inflight;
use super::rate::RateLimit;
use super::transport::Transport;
use super::Shared;
use crate::access::Identity;
use crate::chat::envelope::Format;
use crate::codec::Version;
use crate::router::{Event, Mailbox};
use crate::service::requests::Request;
use crate::stats::Stats;

/// How long a closing connection may take to write its last packets.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// Why a connection ended.
#[derive(Debug)]
pub(super) enum Close {
    /// The client sent DISCONNECT.
    Client { will: bool, expiry: Option<u32> },
    /// The peer vanished or the socket failed.
    Lost,
    /// We end it, telling a 5.0 client why.
    Server(DisconnectReasonCode),
}

pub(super) struct Connection {
    pub(super) shared: Arc<Shared>,
    pub(super) io: Transport,
    pub(super) version: Version,
    pub(super) peer: SocketAddr,
    pub(super) rbuf: BytesMut,
    pub(super) wbuf: BytesMut,
    pub(super) identity: Identity,
    pub(super) conn_id: u64,
    pub(super) mailbox: Arc<Mailbox>,
    /// 1.5 × the keep alive in force; `None` when keep alive is 0.
    pub(super) keepalive: Option<Duration>,
    /// The client's Maximum Packet Size (5.0).
    pub(super) client_max_packet: Option<u32>,
    /// Topic aliases both ways.
    pub(super) aliases: Aliases,
    /// Inbound QoS 1/2 messages not yet answered: the store-before-ack queue and QoS 2 ids.
    pub(super) inflight: Inflight,
    /// A session that expires at disconnect cannot be given an expiry by DISCONNECT (§3.14.2.2.2).
    pub(super) expiry_was_zero: bool,
    /// Events for the router, sent in order before the connection reads again.
    pub(super) events: VecDeque<Event>,
    /// Requests (`q/{user}/{op}`) for the chat service, answered in order.
    pub(super) requests: VecDeque<Request>,
    /// How chat envelopes are delivered to this device.
    pub(super) format: Format,
    pub(super) publish_rate: RateLimit,
    /// Set while over the publish rate: reading resumes then.
    pub(super) throttled: Option<Instant>,
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
            aliases: Aliases::new(admitted.client_alias_max),
            inflight: Inflight::default(),
            expiry_was_zero: admitted.expiry_was_zero,
            events: VecDeque::new(),
            requests: VecDeque::new(),
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
    pub(super) fn run(mut self: Box<Self>, connack: ConnAck) -> impl Future<Output = ()> {
        // Queued before the future is made: an argument of an async fn would be kept in its
        // state, allocated for the connection's whole life.
        self.queue(&Packet::ConnAck(connack));
        async move {
            let close = match self.flush().await {
                Ok(()) => self.serve().await,
                Err(_) => Close::Lost,
            };
            // Boxed: the goodbye's state (a bounded final write) is needed once, at the end,
            // and would otherwise enlarge every connection's task for its whole life.
            Box::pin(self.finish(close)).await;
        }
    }

    // Packet handling below is synchronous on purpose: the connection awaits in only a few
    // places (sending events, writing, the select), which keeps this task's future, allocated
    // once per connection for its whole life, small.
    /// The socket loop: catch up on what was read, then wait for the next thing to do.
    async fn serve(&mut self) -> Close {
        let shutdown = self.shared.shutdown.clone();
        let mailbox = self.mailbox.clone();
        let mut outbox = VecDeque::new();
        let mut last_read = Instant::now();
        loop {
            let working = Instant::now();
            if let Some(close) = self.catch_up().await {
                return close;
            }
            // Time spent on the server's own work (the writer's queue full) is not the
            // client's silence: its packets wait unread meanwhile.
            last_read += working.elapsed();
            // At most a Receive Maximum of messages wait for the store (3.1.1 clients have no
            // such limit of their own): past it, reading pauses until the writer answers.
            let room = self.inflight.len() < usize::from(self.shared.limits.receive_maximum);
            if !room {
                // Nor is the time reading pauses.
                last_read = Instant::now();
            }
            let deadline = self.keepalive.filter(|_| room).map(|k| last_read + k);
            // One timer for both: each costs the future that lives as long as the connection.
            let wake = match (self.throttled, deadline) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            tokio::select! {
                _ = shutdown.cancelled() => return Close::Server(DisconnectReasonCode::ServerShuttingDown),
                _ = mailbox.ready() => {
                    // Let the router (and the other woken connections) run once first, so that
                    // more of a burst is in the mailbox: one write then carries it.
                    tokio::task::yield_now().await;
                    if let Some(close) = self.drain_mailbox(&mailbox, &mut outbox) {
                        return close;
                    }
                    // Give the (now empty) queue's memory back while idle.
                    outbox = VecDeque::new();
                }
                _ = self.inflight.answered(), if self.inflight.awaiting() => {
                    // Settled (routed and acknowledged) by the next catch-up.
                }
                read = std::future::poll_fn(|cx| self.io.poll_read(cx, &mut self.rbuf)), if self.throttled.is_none() && room => match read {
                    Ok(0) | Err(_) => return Close::Lost,
                    Ok(n) => {
                        last_read = Instant::now();
                        Stats::add(&self.shared.stats.bytes_received, n as u64);
                    }
                },
                _ = sleep_until(wake) => {
                    let now = Instant::now();
                    if self.throttled.is_some_and(|t| t <= now) {
                        // The bucket has a token again: the waiting PUBLISH goes next.
                        self.throttled = None;
                    } else if deadline.is_some_and(|d| d <= now) {
                        tracing::debug!(client = %self.identity.client_id, "keep alive timeout");
                        return Close::Server(DisconnectReasonCode::KeepAliveTimeout);
                    }
                }
            }
        }
    }

    /// Handles every complete packet read, then sends the events, answers the requests, stores
    /// and acknowledges the messages that produced, and writes the answers out.
    async fn catch_up(&mut self) -> Option<Close> {
        let closing = self.handle_buffered();
        if !self.send_events().await {
            return Some(Close::Server(DisconnectReasonCode::ServerShuttingDown));
        }
        while let Some(request) = self.requests.pop_front() {
            // Boxed: a request's state must not enlarge every connection's task.
            Box::pin(self.shared.chat.handle(request)).await;
        }
        if !self.inflight.is_empty() {
            if let Some(close) = Box::pin(self.settle()).await {
                return Some(close);
            }
            if !self.send_events().await {
                return Some(Close::Server(DisconnectReasonCode::ServerShuttingDown));
            }
        }
        if closing.is_some() {
            return closing;
        }
        if self.flush().await.is_err() {
            return Some(Close::Lost);
        }
        if self.rbuf.is_empty() {
            // Hand the read buffer back while idle; the next read takes a fresh one.
            self.rbuf = BytesMut::new();
        }
        None
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

    /// Says goodbye: DISCONNECT to a 5.0 client we close, `Closed` to the router, and a last
    /// bounded write.
    async fn finish(&mut self, close: Close) {
        // What the client sent before it left is stored and routed first (and acknowledged,
        // if the socket still takes it); the writer answers within its retry bound.
        Box::pin(self.settle_all()).await;
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

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}
