//! The network edge: listeners, handshakes, and one task per connection speaking MQTT.
//!
//! Each accepted socket gets its own task at once; the TLS handshake, the WebSocket upgrade and
//! the CONNECT all happen inside that task under `handshake_timeout_secs`, so a slow or silent
//! peer never delays anyone else's accept.
//!
//! # Layout
//!
//! - `transport`, `tls`: the byte streams (TCP, TLS, WebSocket) a connection speaks over.
//! - `connect`, `will`: the CONNECT handshake, up to the CONNACK or the refusal.
//! - `connection`: one connection's state and its socket loop; the rest of its work is in
//!   `impl Connection` blocks, one file per job:
//!   - `inbound`: reading, the publish rate, and one handler per packet type;
//!   - `publish`: one PUBLISH — checks, the router's message, its route;
//!   - `chat_ingress`: the chat routes (messages and events, read markers, typing, requests);
//!   - `persist`: store before acknowledge, over the queue in `inflight`;
//!   - `outbound`: from the mailbox to the socket;
//!   - `refusals`: what a refused PUBLISH tells the client.
//! - `admission`: the global connection bound, checked at accept.
//! - `aliases`: topic aliases both ways; `rate`: the publish token bucket; `typing`: the
//!   typing indicators' gate.

mod admission;
mod aliases;
mod chat_ingress;
mod connect;
mod connection;
mod inbound;
mod inflight;
mod outbound;
mod persist;
mod publish;
mod rate;
mod refusals;
mod tls;
mod transport;
mod typing;
mod will;

use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use admission::Admission;
use admission::Ticket;
pub use tls::{acceptor as tls_acceptor, TlsError};
use transport::{Io, Transport};

use crate::access::Access;
use crate::config::{Config, LimitsConfig, MqttConfig, RateAction};
use crate::router::{Event, QueueBounds};
use crate::service::requests::ChatService;
use crate::service::signals::Signal;
use crate::stats::Stats;
use crate::store::{Store, Writer};
use crate::topics::TopicLimits;

/// What kind of listener a socket arrived on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Tcp,
    Tls,
    Ws,
    Wss,
}

/// The connection-level limits, from `[mqtt]`.
#[derive(Debug, Clone)]
pub struct Limits {
    pub handshake_timeout: Duration,
    pub max_packet_size: u32,
    pub max_keepalive: u16,
    pub receive_maximum: u16,
    pub topic_alias_maximum: u16,
    pub max_client_id_len: usize,
    pub max_session_expiry: u32,
    /// What a connection's mailbox may hold (QoS 0 messages) before dropping, and the byte
    /// budget of its in-flight window.
    pub mailbox: QueueBounds,
    /// PUBLISH packets per second per connection (0: unlimited) and the burst allowed.
    pub publish_rate: u32,
    pub publish_burst: u32,
    pub publish_rate_action: RateAction,
    /// Longest chat message text.
    pub max_text_bytes: usize,
    /// Typing indicators: one per conversation per interval, expiring after `typing_expiry`.
    pub typing_interval: Duration,
    pub typing_expiry: u32,
    /// Caps on topic names and filters (`mqtt.max_topic_len`, `mqtt.max_topic_levels`).
    pub topics: TopicLimits,
    /// Live connections one user may have (0: no limit); the router counts this node's, a
    /// cluster's roster every node's.
    pub max_connections_per_user: usize,
}

impl Limits {
    pub fn from_config(m: &MqttConfig, l: &LimitsConfig, config: &Config) -> Limits {
        Limits {
            max_text_bytes: config.storage.max_text_bytes,
            typing_interval: Duration::from_millis(config.chat.typing_interval_ms),
            typing_expiry: config.chat.typing_expiry_secs,
            publish_rate: l.publish_rate,
            publish_burst: l.publish_burst,
            publish_rate_action: l.publish_rate_action,
            handshake_timeout: Duration::from_secs(m.handshake_timeout_secs),
            max_packet_size: m.max_packet_size,
            max_keepalive: m.max_keepalive_secs,
            receive_maximum: m.receive_maximum,
            topic_alias_maximum: m.topic_alias_maximum,
            max_client_id_len: m.max_client_id_len,
            max_session_expiry: m.max_session_expiry_secs,
            mailbox: QueueBounds::from_config(m),
            max_connections_per_user: l.max_connections_per_user,
            topics: TopicLimits {
                max_len: m.max_topic_len,
                max_levels: m.max_topic_levels,
            },
        }
    }
}

/// What every connection task shares.
pub struct Shared {
    pub limits: Limits,
    pub access: Arc<Access>,
    pub chat: Arc<ChatService>,
    /// The history writer: chat messages are acknowledged after it commits them.
    pub history: Writer,
    /// Read markers go to the receipts service.
    pub signals: mpsc::UnboundedSender<Signal>,
    pub router: mpsc::Sender<Event>,
    pub stats: Arc<Stats>,
    pub typing: typing::TypingGate,
    pub shutdown: CancellationToken,
    pub tasks: TaskTracker,
    pub next_conn_id: AtomicU64,
    /// Live sockets against `limits.max_connections`.
    pub admission: Arc<Admission>,
    /// In a cluster: the roster, which counts a user's connections on the other nodes.
    pub roster: Option<Roster>,
}

/// A cluster's roster of connected devices, and this node's name in it.
pub struct Roster {
    pub store: Arc<dyn Store>,
    pub node: Arc<str>,
}

/// Accepts connections on `listener` until shutdown; each runs in its own tracked task.
pub async fn accept_loop(
    listener: TcpListener,
    kind: Kind,
    tls: Option<TlsAcceptor>,
    shared: Arc<Shared>,
) {
    loop {
        let accepted = tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                // Past the bound the socket is dropped (closed) here, before any work.
                let Some(ticket) = shared.admission.admit() else {
                    continue;
                };
                shared.tasks.spawn(handle(Box::new(Accepted {
                    stream,
                    peer,
                    kind,
                    tls: tls.clone(),
                    shared: shared.clone(),
                    ticket,
                })));
            }
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, ?kind, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// An accepted socket and what its connection needs. Boxed into the task and unpacked at once:
/// a task's arguments keep their room in its future for the connection's whole life.
struct Accepted {
    stream: TcpStream,
    peer: SocketAddr,
    kind: Kind,
    tls: Option<TlsAcceptor>,
    shared: Arc<Shared>,
    /// Counts the connection against `limits.max_connections` until the task ends.
    ticket: Ticket,
}

async fn handle(accepted: Box<Accepted>) {
    let Accepted {
        stream,
        peer,
        kind,
        tls,
        shared,
        ticket: _ticket,
    } = *accepted;
    // MQTT is request/response heavy: Nagle's algorithm would add tens of ms to small packets.
    let _ = stream.set_nodelay(true);
    let limits = &shared.limits;
    // Boxed, with its timer: TLS and WebSocket handshake state is large, and an unboxed future
    // would size every connection's task for it for the connection's whole life.
    let handshake = Box::pin(tokio::time::timeout(limits.handshake_timeout, async {
        let transport = open(stream, kind, tls, limits.max_packet_size as usize).await?;
        connect::accept(transport, peer, &shared).await
    }));
    let (conn, connack) = match handshake.await {
        Ok(Ok(Some(admitted))) => admitted,
        Ok(Ok(None)) => return,
        Ok(Err(e)) => {
            tracing::debug!(%peer, ?kind, error = %e, "handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, ?kind, "handshake timed out");
            return;
        }
    };
    // Boxed: allocated for what the connection needs while it runs, not for the largest
    // state this function goes through.
    Box::pin(conn.run(connack)).await;
}

async fn open(
    stream: TcpStream,
    kind: Kind,
    tls: Option<TlsAcceptor>,
    max_frame: usize,
) -> std::io::Result<Transport> {
    let secure = |stream: TcpStream| async {
        let acceptor =
            tls.ok_or_else(|| std::io::Error::other("TLS listener without TLS config"))?;
        let io: Box<dyn Io> = Box::new(acceptor.accept(stream).await?);
        Ok::<_, std::io::Error>(io)
    };
    Ok(match kind {
        Kind::Tcp => Transport::Tcp(stream),
        Kind::Tls => Transport::Stream(secure(stream).await?),
        Kind::Ws => Transport::websocket(Box::new(stream), max_frame).await?,
        Kind::Wss => Transport::websocket(secure(stream).await?, max_frame).await?,
    })
}
