//! What connections (and the chat service) tell the router: [`Event`], and what rides on it.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use rumqttc::v5::mqttbytes::v5::{Subscribe, Unsubscribe};
use tokio::sync::oneshot;

use super::{Control, Mailbox, Message, Will};
use crate::access::Identity;

/// A CONNECT the edge has authenticated and authorized.
#[derive(Debug)]
pub struct ConnectRequest {
    pub identity: Identity,
    pub conn_id: u64,
    pub mailbox: Arc<Mailbox>,
    pub clean_start: bool,
    pub expiry_secs: u32,
    pub receive_maximum: u16,
    pub will: Option<Box<Will>>,
    /// When the credentials were checked (taken before the check began): a device revoked or
    /// a user removed after this instant may have been missed by it.
    pub authenticated_at: Instant,
    /// In a cluster: the user's connections on the other nodes, counted against
    /// `max_connections_per_user` with this node's.
    pub elsewhere: usize,
}

/// A client's acknowledgement of a message we sent it.
#[derive(Debug, Clone, Copy)]
pub enum Ack {
    PubAck(u16),
    /// PUBREC, and whether its reason code accepted the message.
    PubRec(u16, bool),
    PubComp(u16),
    /// The connection could not send the message (expired, too large for the client): it
    /// counts as handled (MQTT 5.0 §3.1.2.25), but not as delivered.
    Discarded(u16),
}

/// A session, as the admin API lists it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ClientInfo {
    pub client: Arc<str>,
    pub user: Option<Arc<str>>,
    pub connected: bool,
}

/// Why the router refused a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ConnectRefused {
    #[error("too many connections for this user")]
    TooManyConnections,
    #[error("the device was revoked or the user removed while its credentials were checked")]
    Revoked,
    #[error("the handshake had timed out")]
    TooLate,
}

/// What connections (and the chat service) tell the router.
#[derive(Debug)]
pub enum Event {
    /// Replies whether a session was present.
    Connect(
        ConnectRequest,
        oneshot::Sender<Result<bool, ConnectRefused>>,
    ),
    /// An authorized PUBLISH; `qos2_pkid` is set for QoS 2 so a resent packet is routed once.
    /// The message is also published, unchanged but for the topic, on each of `copies` (a
    /// conversation's traffic on its members' `u/{user}/…` streams).
    Publish {
        client: Arc<str>,
        message: Message,
        qos2_pkid: Option<u16>,
        copies: Vec<Bytes>,
    },
    /// A message the server itself publishes (events, replies, wills are separate).
    ServerPublish(Message),
    /// The same, also on each of `copies` (receipts on every member's stream).
    ServerPublishTo {
        message: Message,
        copies: Vec<Bytes>,
    },
    /// A message another node of the cluster published; with `share` (group, filter), it came
    /// through that shared group's NATS queue group and goes to one local member.
    Remote {
        message: Message,
        share: Option<(Arc<str>, Arc<str>)>,
    },
    /// What another node told every node.
    RemoteControl(Control),
    /// A hole reported a moment ago ([`super::Forward::Gap`]): read the store if still open.
    GapStill(super::Gap),
    /// The entries the store had for the hole before `before` in `conv` (oldest first), as
    /// messages.
    Backfill {
        conv: String,
        before: u64,
        messages: Vec<Message>,
    },
    /// Ends every session of a user (removed account): DISCONNECT 0x98 to live connections.
    Kick { user: Arc<str> },
    /// Ends one client's session (a revoked device, an admin's kick): DISCONNECT 0x98.
    KickClient { client: Arc<str> },
    /// Lists sessions for the admin API.
    ListClients(oneshot::Sender<Vec<ClientInfo>>),
    /// PUBREL for a QoS 2 message we received. With `answer`, the connection did not know the
    /// packet id (it came on an earlier connection of the session) and the router sends the
    /// PUBCOMP: success if the session holds the id, else 0x92 (Packet Identifier not found).
    Release {
        client: Arc<str>,
        conn_id: u64,
        pkid: u16,
        answer: bool,
    },
    Subscribe {
        client: Arc<str>,
        conn_id: u64,
        packet: Subscribe,
    },
    Unsubscribe {
        client: Arc<str>,
        conn_id: u64,
        packet: Unsubscribe,
    },
    /// Acknowledgements, in the order the client sent them: one event for all those a read
    /// brought (a subscriber acks a whole batch of deliveries at once).
    Acks {
        client: Arc<str>,
        conn_id: u64,
        acks: Vec<Ack>,
    },
    /// The connection ended. `publish_will` unless it was a clean DISCONNECT; `expiry_secs` if
    /// the DISCONNECT changed the session expiry.
    Closed {
        client: Arc<str>,
        conn_id: u64,
        publish_will: bool,
        expiry_secs: Option<u32>,
    },
}
