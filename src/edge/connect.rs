//! The CONNECT handshake: the protocol level, the CONNECT packet, authentication, client id
//! and will checks, registration with the router, and the CONNACK (or the refusal). Each step
//! of `admit` is a function below, in the order they run.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use rumqttc::v5::mqttbytes::v5::{
    ConnAck, ConnAckProperties, Connect, ConnectProperties, ConnectReturnCode, LastWill, Login,
    Packet,
};
use tokio::sync::{mpsc, oneshot};

use super::connection::Connection;
use super::transport::Transport;
use super::will::will_message;
use super::{Limits, Shared};
use crate::access::{Authenticated, Identity, Refusal};
use crate::chat::envelope::Format;
use crate::codec::{self, CodecError, Version};
use crate::router::{ConnectRefused, ConnectRequest, Event, Mailbox};

fn protocol_error(reason: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, reason.into())
}

/// Reads the CONNECT and registers the connection with the router; the connection then sends
/// the CONNACK it is handed with. `Ok(None)`: refused or gone, already answered.
pub(super) async fn accept(
    mut io: Transport,
    peer: SocketAddr,
    shared: &Arc<Shared>,
) -> io::Result<Option<(Box<Connection>, ConnAck)>> {
    let mut buf = BytesMut::new();
    let Some(version) = read_version(&mut io, &mut buf, peer).await? else {
        return Ok(None);
    };
    let max_packet_size = shared.limits.max_packet_size;
    let Some(packet) = read_packet(&mut io, &mut buf, version, max_packet_size).await? else {
        return Ok(None);
    };
    let Packet::Connect(connect, will, login) = packet else {
        return Err(protocol_error("first packet is not CONNECT"));
    };
    match admit(shared, version, peer, connect, will, login).await {
        Ok(admitted) => {
            // Client ids are the client's own text: Debug-formatted, so a newline or an escape
            // sequence in one cannot forge log lines.
            tracing::debug!(%peer, client = ?admitted.identity.client_id, ?version, "connected");
            let connack = admitted.connack.clone();
            Ok(Some((
                Connection::new(shared, io, version, peer, buf, admitted),
                connack,
            )))
        }
        Err(code) => {
            tracing::info!(%peer, ?version, ?code, "connection refused");
            refuse(&mut io, version, code).await;
            Ok(None)
        }
    }
}

/// Reads until the protocol level of the CONNECT is known; `None` when the peer left or its
/// level is refused (and told so).
async fn read_version(
    io: &mut Transport,
    buf: &mut BytesMut,
    peer: SocketAddr,
) -> io::Result<Option<Version>> {
    loop {
        match codec::connect_version(buf) {
            Ok(Some(v)) => return Ok(Some(v)),
            Ok(None) => {}
            Err(CodecError::UnsupportedLevel(level)) => {
                tracing::info!(%peer, level, "unsupported protocol level");
                refuse(
                    io,
                    Version::V4,
                    ConnectReturnCode::UnsupportedProtocolVersion,
                )
                .await;
                return Ok(None);
            }
            Err(e) => return Err(protocol_error(e.to_string())),
        }
        if io.read(buf).await? == 0 {
            return Ok(None);
        }
    }
}

/// Reads the first whole packet; `None` when the peer left first.
async fn read_packet(
    io: &mut Transport,
    buf: &mut BytesMut,
    version: Version,
    max_packet_size: u32,
) -> io::Result<Option<Packet>> {
    loop {
        match codec::read(version, buf, max_packet_size) {
            Ok(Some(p)) => return Ok(Some(p)),
            Ok(None) => {
                if io.read(buf).await? == 0 {
                    return Ok(None);
                }
            }
            Err(e) => return Err(protocol_error(e.to_string())),
        }
    }
}

/// Answers a refused CONNECT with its return code and closes.
async fn refuse(io: &mut Transport, version: Version, code: ConnectReturnCode) {
    let mut buf = BytesMut::new();
    let connack = Packet::ConnAck(ConnAck {
        session_present: false,
        code,
        properties: None,
    });
    if codec::write(version, &connack, &mut buf).is_ok() {
        let _ = io.write(buf.freeze()).await;
    }
    io.shutdown().await;
}

/// What a CONNECT settled for the connection.
pub(super) struct Admitted {
    pub(super) identity: Identity,
    pub(super) conn_id: u64,
    pub(super) mailbox: Arc<Mailbox>,
    pub(super) keepalive: Option<Duration>,
    pub(super) client_max_packet: Option<u32>,
    pub(super) client_alias_max: u16,
    pub(super) expiry_was_zero: bool,
    pub(super) format: Format,
    pub(super) connack: ConnAck,
}

/// Validates, authenticates and registers a CONNECT with the router.
async fn admit(
    shared: &Arc<Shared>,
    version: Version,
    peer: SocketAddr,
    connect: Connect,
    will: Option<LastWill>,
    login: Option<Login>,
) -> Result<Admitted, ConnectReturnCode> {
    let limits = &shared.limits;
    let Connect {
        keep_alive,
        client_id,
        clean_start,
        properties,
    } = connect;
    let props = properties.unwrap_or_else(empty_connect_properties);
    check_properties(&props)?;
    let authenticated_at = Instant::now();
    let who = authenticate(shared, peer, login.as_ref()).await?;
    let (identity, assigned) = identify(shared, version, client_id, clean_start, who)?;
    let elsewhere = connections_elsewhere(shared, &identity).await;
    let will = match will {
        Some(w) => Some(Box::new(will_message(shared, &identity, w)?)),
        None => None,
    };
    let (keepalive, server_keep_alive) = keep_alive_in_force(version, limits, keep_alive);
    let (requested_expiry, expiry) = session_expiry(version, limits, clean_start, &props);
    let conn_id = shared.next_conn_id.fetch_add(1, Ordering::Relaxed);
    let mailbox = Arc::new(Mailbox::new(limits.mailbox));
    let request = ConnectRequest {
        identity: identity.clone(),
        conn_id,
        mailbox: mailbox.clone(),
        clean_start,
        expiry_secs: expiry,
        receive_maximum: props.receive_maximum.unwrap_or(u16::MAX),
        will,
        authenticated_at,
        elsewhere,
    };
    let session_present = attach(shared, request).await?;
    let changed_expiry = (expiry != requested_expiry).then_some(expiry);
    let properties = (version == Version::V5)
        .then(|| connack_properties(limits, assigned, server_keep_alive, changed_expiry));
    Ok(Admitted {
        identity,
        conn_id,
        mailbox,
        keepalive,
        client_max_packet: props.max_packet_size,
        client_alias_max: props.topic_alias_max.unwrap_or(0),
        expiry_was_zero: expiry == 0,
        format: device_format(&props),
        connack: ConnAck {
            session_present,
            code: ConnectReturnCode::Success,
            properties,
        },
    })
}

/// In a cluster: the user's connections on the other nodes, as their rosters say, which the
/// router adds to this node's own when it checks `limits.max_connections_per_user`. This node's
/// are counted by its router, exactly; the other nodes' as the roster has them, so two nodes
/// admitting the user's last allowed connection at the same instant may both let it in.
async fn connections_elsewhere(shared: &Shared, identity: &Identity) -> usize {
    let (Some(roster), Some(user)) = (&shared.roster, &identity.user) else {
        return 0;
    };
    if shared.limits.max_connections_per_user == 0 {
        return 0;
    }
    let (store, node) = (roster.store.clone(), roster.node.clone());
    let (u, c) = (user.clone(), identity.client_id.clone());
    match tokio::task::spawn_blocking(move || store.user_connections(&u, &c, Some(&node))).await {
        Ok(Ok(n)) => n as usize,
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "cannot count the user's connections in the cluster");
            0
        }
        Err(_) => 0,
    }
}

/// Refuses CONNECT properties we do not support or that break the protocol.
fn check_properties(props: &ConnectProperties) -> Result<(), ConnectReturnCode> {
    if props.authentication_method.is_some() {
        return Err(ConnectReturnCode::BadAuthenticationMethod);
    }
    if props.receive_maximum == Some(0) || props.max_packet_size == Some(0) {
        return Err(ConnectReturnCode::ProtocolError);
    }
    Ok(())
}

/// Checks the CONNECT's user name and password (or token). Too many failed passwords answer
/// 0x9F connection rate exceeded (3.1.1: 0x03 server unavailable, its nearest).
async fn authenticate(
    shared: &Shared,
    peer: SocketAddr,
    login: Option<&Login>,
) -> Result<Authenticated, ConnectReturnCode> {
    let credentials = login.map(|l| (l.username.as_str(), l.password.as_str()));
    shared
        .access
        .authenticate(credentials, peer.ip())
        .await
        .map_err(|r| match r {
            Refusal::BadCredentials => ConnectReturnCode::BadUserNamePassword,
            Refusal::NotAuthorized => ConnectReturnCode::NotAuthorized,
            Refusal::Unavailable => ConnectReturnCode::ServerUnavailable,
            Refusal::RateLimited => ConnectReturnCode::ConnectionRateExceeded,
        })
}

/// Whether a client id may be used at all: MQTT strings may not carry U+0000, and control
/// characters (newlines, escape sequences) in an id have no use but to forge log lines or
/// terminal output.
fn printable_client_id(client_id: &str) -> bool {
    !client_id.chars().any(char::is_control)
}

/// Who the connection is: the user, and the client id it sent or one assigned to it (then
/// also returned, for the CONNACK).
fn identify(
    shared: &Shared,
    version: Version,
    client_id: String,
    clean_start: bool,
    who: Authenticated,
) -> Result<(Identity, Option<String>), ConnectReturnCode> {
    let mut assigned = None;
    let client_id: Arc<str> = if client_id.is_empty() {
        // 3.1.1 allows an empty id only with a clean session (§3.1.3-8).
        if version == Version::V4 && !clean_start {
            return Err(ConnectReturnCode::ClientIdentifierNotValid);
        }
        // A user's device gets an id in the user's namespace.
        let id = shared.access.assign_client_id(&who);
        assigned = Some(id.clone());
        id.into()
    } else if client_id.len() > shared.limits.max_client_id_len
        || !printable_client_id(&client_id)
        || !shared.access.client_id_allowed(&who, &client_id)
    {
        return Err(ConnectReturnCode::ClientIdentifierNotValid);
    } else {
        client_id.into()
    };
    let identity = Identity {
        user: who.user,
        client_id,
    };
    Ok((identity, assigned))
}

/// The keep alive in force, as 1.5 × itself (`None` for 0), and the Server Keep Alive to
/// announce when it differs from the client's.
fn keep_alive_in_force(
    version: Version,
    limits: &Limits,
    requested: u16,
) -> (Option<Duration>, Option<u16>) {
    // Keep alive: 5.0 clients are told the server's cap; 3.1.1 clients cannot be, so theirs is
    // honoured as sent.
    let mut server_keep_alive = None;
    let mut keep_alive = requested;
    if version == Version::V5
        && limits.max_keepalive > 0
        && (keep_alive == 0 || keep_alive > limits.max_keepalive)
    {
        keep_alive = limits.max_keepalive;
        server_keep_alive = Some(keep_alive);
    }
    let keepalive = (keep_alive > 0).then(|| Duration::from_millis(u64::from(keep_alive) * 1500));
    (keepalive, server_keep_alive)
}

/// The session expiry the client asked for and the one granted (capped by the limit).
fn session_expiry(
    version: Version,
    limits: &Limits,
    clean_start: bool,
    props: &ConnectProperties,
) -> (u32, u32) {
    let requested_expiry = match version {
        Version::V5 => props.session_expiry_interval.unwrap_or(0),
        Version::V4 if clean_start => 0,
        Version::V4 => limits.max_session_expiry,
    };
    (
        requested_expiry,
        requested_expiry.min(limits.max_session_expiry),
    )
}

/// Registers the connection with the router and waits for its answer: whether a session was
/// present, or why the router refused.
async fn attach(shared: &Shared, request: ConnectRequest) -> Result<bool, ConnectReturnCode> {
    let (tx, rx) = oneshot::channel();
    let mut attached = Attached {
        router: &shared.router,
        client: request.identity.client_id.clone(),
        conn_id: request.conn_id,
        armed: true,
    };
    if shared
        .router
        .send(Event::Connect(request, tx))
        .await
        .is_err()
    {
        return Err(ConnectReturnCode::ServerUnavailable);
    }
    let reply = rx.await;
    // Answered: from here to the connection's run loop nothing awaits, so nothing can drop it.
    attached.armed = false;
    reply
        .map_err(|_| ConnectReturnCode::ServerUnavailable)?
        .map_err(|refused| {
            tracing::info!(client = ?attached.client, %refused, "connection refused");
            match refused {
                ConnectRefused::TooManyConnections => ConnectReturnCode::QuotaExceeded,
                ConnectRefused::Revoked => ConnectReturnCode::NotAuthorized,
                ConnectRefused::TooLate => ConnectReturnCode::ServerUnavailable,
            }
        })
}

/// The CONNACK properties a 5.0 client is told: our limits, its assigned id, the Server Keep
/// Alive, and the session expiry when it is not the one asked for.
fn connack_properties(
    limits: &Limits,
    assigned: Option<String>,
    server_keep_alive: Option<u16>,
    changed_expiry: Option<u32>,
) -> ConnAckProperties {
    let mut p = empty_connack_properties();
    p.assigned_client_identifier = assigned;
    p.receive_max = Some(limits.receive_maximum);
    p.max_packet_size = Some(limits.max_packet_size);
    p.topic_alias_max = Some(limits.topic_alias_maximum);
    p.server_keep_alive = server_keep_alive;
    p.session_expiry_interval = changed_expiry;
    p
}

/// How chat envelopes go to the device. A 5.0 device may ask for MessagePack envelopes with
/// the user property format=msgpack.
fn device_format(props: &ConnectProperties) -> Format {
    if props
        .user_properties
        .iter()
        .any(|(k, v)| k == "format" && v == "msgpack")
    {
        Format::MsgPack
    } else {
        Format::Json
    }
}

/// While armed, dropping it tells the router that the connection it may have attached is gone:
/// a handshake that times out after its CONNECT reached the router must not leave the session
/// attached to a mailbox nobody reads (presence online for good, a connection slot taken).
/// The router ignores it for a connection it did not attach.
struct Attached<'a> {
    router: &'a mpsc::Sender<Event>,
    client: Arc<str>,
    conn_id: u64,
    armed: bool,
}

impl Drop for Attached<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let event = Event::Closed {
            client: self.client.clone(),
            conn_id: self.conn_id,
            // The client never had a CONNACK: nothing of this connection was in use.
            publish_will: false,
            expiry_secs: None,
        };
        if let Err(mpsc::error::TrySendError::Full(event)) = self.router.try_send(event) {
            let router = self.router.clone();
            tokio::spawn(async move {
                let _ = router.send(event).await;
            });
        }
    }
}

/// CONNECT properties with nothing set, for a CONNECT that has none.
fn empty_connect_properties() -> ConnectProperties {
    ConnectProperties {
        session_expiry_interval: None,
        receive_maximum: None,
        max_packet_size: None,
        topic_alias_max: None,
        request_response_info: None,
        request_problem_info: None,
        user_properties: Vec::new(),
        authentication_method: None,
        authentication_data: None,
    }
}

/// CONNACK properties with nothing set.
fn empty_connack_properties() -> ConnAckProperties {
    ConnAckProperties {
        session_expiry_interval: None,
        receive_max: None,
        max_qos: None,
        retain_available: None,
        max_packet_size: None,
        assigned_client_identifier: None,
        topic_alias_max: None,
        reason_string: None,
        user_properties: Vec::new(),
        wildcard_subscription_available: None,
        subscription_identifiers_available: None,
        shared_subscription_available: None,
        server_keep_alive: None,
        response_information: None,
        server_reference: None,
        authentication_method: None,
        authentication_data: None,
    }
}
