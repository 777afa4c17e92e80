//! The CONNECT handshake: the protocol level, the CONNECT packet, authentication, client id
//! and will checks, registration with the router, and the CONNACK (or the refusal).

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use rumqttc::v5::mqttbytes::v5::{
    ConnAck, ConnAckProperties, Connect, ConnectReturnCode, LastWill, Login, Packet,
    PublishProperties,
};
use tokio::sync::{mpsc, oneshot};

use super::connection::Connection;
use super::transport::Transport;
use super::Shared;
use crate::access::{Identity, Refusal, Route};
use crate::chat::envelope::Format;
use crate::codec::{self, CodecError, Version};
use crate::router::{ConnectRefused, ConnectRequest, Event, Mailbox, Message, Will};
use crate::topics;

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
    let limits = &shared.limits;
    let mut buf = BytesMut::new();
    let version = loop {
        match codec::connect_version(&buf) {
            Ok(Some(v)) => break v,
            Ok(None) => {}
            Err(CodecError::UnsupportedLevel(level)) => {
                tracing::info!(%peer, level, "unsupported protocol level");
                refuse(
                    &mut io,
                    Version::V4,
                    ConnectReturnCode::UnsupportedProtocolVersion,
                )
                .await;
                return Ok(None);
            }
            Err(e) => return Err(protocol_error(e.to_string())),
        }
        if io.read(&mut buf).await? == 0 {
            return Ok(None);
        }
    };
    let packet = loop {
        match codec::read(version, &mut buf, limits.max_packet_size) {
            Ok(Some(p)) => break p,
            Ok(None) => {
                if io.read(&mut buf).await? == 0 {
                    return Ok(None);
                }
            }
            Err(e) => return Err(protocol_error(e.to_string())),
        }
    };
    let Packet::Connect(connect, will, login) = packet else {
        return Err(protocol_error("first packet is not CONNECT"));
    };
    match admit(shared, version, connect, will, login).await {
        Ok(admitted) => {
            tracing::debug!(%peer, client = %admitted.identity.client_id, ?version, "connected");
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
    connect: Connect,
    will: Option<LastWill>,
    login: Option<Login>,
) -> Result<Admitted, ConnectReturnCode> {
    let limits = &shared.limits;
    let props = connect.properties.unwrap_or_else(empty_connect_properties);
    if props.authentication_method.is_some() {
        return Err(ConnectReturnCode::BadAuthenticationMethod);
    }
    if props.receive_maximum == Some(0) || props.max_packet_size == Some(0) {
        return Err(ConnectReturnCode::ProtocolError);
    }

    let credentials = login
        .as_ref()
        .map(|l| (l.username.as_str(), l.password.as_str()));
    let authenticated_at = std::time::Instant::now();
    let who = shared
        .access
        .authenticate(credentials)
        .await
        .map_err(|r| match r {
            Refusal::BadCredentials => ConnectReturnCode::BadUserNamePassword,
            Refusal::NotAuthorized => ConnectReturnCode::NotAuthorized,
            Refusal::Unavailable => ConnectReturnCode::ServerUnavailable,
        })?;

    let mut assigned = None;
    let client_id: Arc<str> = if connect.client_id.is_empty() {
        // 3.1.1 allows an empty id only with a clean session (§3.1.3-8).
        if version == Version::V4 && !connect.clean_start {
            return Err(ConnectReturnCode::ClientIdentifierNotValid);
        }
        // A user's device gets an id in the user's namespace.
        let id = shared.access.assign_client_id(&who);
        assigned = Some(id.clone());
        id.into()
    } else if connect.client_id.len() > limits.max_client_id_len
        || !shared.access.client_id_allowed(&who, &connect.client_id)
    {
        return Err(ConnectReturnCode::ClientIdentifierNotValid);
    } else {
        connect.client_id.into()
    };
    let identity = Identity {
        user: who.user,
        client_id,
    };

    let will = match will {
        Some(w) => Some(Box::new(will_message(shared, &identity, w)?)),
        None => None,
    };

    // Keep alive: 5.0 clients are told the server's cap; 3.1.1 clients cannot be, so theirs is
    // honoured as sent.
    let mut server_keep_alive = None;
    let mut keep_alive = connect.keep_alive;
    if version == Version::V5
        && limits.max_keepalive > 0
        && (keep_alive == 0 || keep_alive > limits.max_keepalive)
    {
        keep_alive = limits.max_keepalive;
        server_keep_alive = Some(keep_alive);
    }
    let keepalive = (keep_alive > 0).then(|| Duration::from_millis(u64::from(keep_alive) * 1500));

    let requested_expiry = match version {
        Version::V5 => props.session_expiry_interval.unwrap_or(0),
        Version::V4 if connect.clean_start => 0,
        Version::V4 => limits.max_session_expiry,
    };
    let expiry = requested_expiry.min(limits.max_session_expiry);

    let conn_id = shared.next_conn_id.fetch_add(1, Ordering::Relaxed);
    let mailbox = Arc::new(Mailbox::new(limits.max_queued_qos0));
    let (tx, rx) = oneshot::channel();
    let request = ConnectRequest {
        identity: identity.clone(),
        conn_id,
        mailbox: mailbox.clone(),
        clean_start: connect.clean_start,
        expiry_secs: expiry,
        receive_maximum: props.receive_maximum.unwrap_or(u16::MAX),
        will,
        authenticated_at,
    };
    let mut attached = Attached {
        router: &shared.router,
        client: identity.client_id.clone(),
        conn_id,
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
    let session_present = reply
        .map_err(|_| ConnectReturnCode::ServerUnavailable)?
        .map_err(|refused| {
            tracing::info!(client = %identity.client_id, %refused, "connection refused");
            match refused {
                ConnectRefused::TooManyConnections => ConnectReturnCode::QuotaExceeded,
                ConnectRefused::Revoked => ConnectReturnCode::NotAuthorized,
                ConnectRefused::TooLate => ConnectReturnCode::ServerUnavailable,
            }
        })?;

    let properties = (version == Version::V5).then(|| {
        let mut p = empty_connack_properties();
        p.assigned_client_identifier = assigned;
        p.receive_max = Some(limits.receive_maximum);
        p.max_packet_size = Some(limits.max_packet_size);
        p.topic_alias_max = Some(limits.topic_alias_maximum);
        p.server_keep_alive = server_keep_alive;
        if expiry != requested_expiry {
            p.session_expiry_interval = Some(expiry);
        }
        p
    });
    Ok(Admitted {
        identity,
        conn_id,
        mailbox,
        keepalive,
        client_max_packet: props.max_packet_size,
        client_alias_max: props.topic_alias_max.unwrap_or(0),
        expiry_was_zero: expiry == 0,
        // A 5.0 device may ask for MessagePack envelopes with the user property format=msgpack.
        format: if props
            .user_properties
            .iter()
            .any(|(k, v)| k == "format" && v == "msgpack")
        {
            Format::MsgPack
        } else {
            Format::Json
        },
        connack: ConnAck {
            session_present,
            code: ConnectReturnCode::Success,
            properties,
        },
    })
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

/// Checks a will like a PUBLISH and turns it into a message.
fn will_message(
    shared: &Shared,
    identity: &Identity,
    w: LastWill,
) -> Result<Will, ConnectReturnCode> {
    let topic = std::str::from_utf8(&w.topic).map_err(|_| ConnectReturnCode::TopicNameInvalid)?;
    topics::validate_name(topic).map_err(|_| ConnectReturnCode::TopicNameInvalid)?;
    // Wills go to plain topics only: a chat message is never sent on a client's behalf.
    match shared.access.authorize_publish(identity, topic) {
        Ok(Route::Plain) => {}
        Ok(_) | Err(_) => {
            tracing::info!(client = %identity.client_id, topic, "will refused");
            return Err(ConnectReturnCode::NotAuthorized);
        }
    }
    let p = w.properties;
    let delay_secs = p.as_ref().and_then(|p| p.delay_interval).unwrap_or(0);
    let expiry = p.as_ref().and_then(|p| p.message_expiry_interval);
    if p.as_ref().and_then(|p| p.payload_format_indicator) == Some(1)
        && std::str::from_utf8(&w.message).is_err()
    {
        return Err(ConnectReturnCode::PayloadFormatInvalid);
    }
    let properties = p.map(|p| PublishProperties {
        payload_format_indicator: p.payload_format_indicator,
        message_expiry_interval: None,
        topic_alias: None,
        response_topic: p.response_topic,
        correlation_data: p.correlation_data,
        user_properties: p.user_properties,
        subscription_identifiers: Vec::new(),
        content_type: p.content_type,
    });
    Ok(Will {
        delay_secs,
        message: Message {
            topic: w.topic,
            payload: w.message,
            qos: w.qos,
            retain: w.retain,
            properties: properties.map(Box::new),
            // A will's expiry counts from its publication; the router stamps that moment.
            expires_at: None,
            origin: Some(identity.client_id.clone()),
            msgpack: None,
            chat: None,
        },
        expiry_secs: expiry,
    })
}

fn empty_connect_properties() -> rumqttc::v5::mqttbytes::v5::ConnectProperties {
    rumqttc::v5::mqttbytes::v5::ConnectProperties {
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
