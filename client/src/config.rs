//! What a client needs to know: where the server is, who logs in, where local state lives,
//! and how it speaks (protocol version, payload format, keep alive, backoff).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::codec::{Codec, Plain};
use crate::Error;

/// MQTT protocol version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// MQTT 3.1.1: every client speaks it; no reason codes, no topic aliases.
    V311,
    /// MQTT 5.0 (the default): reason codes, topic aliases, MessagePack envelopes.
    V5,
}

/// How payloads travel. MessagePack envelopes are received only over MQTT 5 (the server
/// learns the choice from a CONNECT user property, which 3.1.1 lacks); sends use it either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    MsgPack,
}

/// How the client proves who it is.
#[derive(Debug, Clone)]
pub enum Credentials {
    /// The account password, sent in CONNECT (use TLS beyond loopback).
    Password(String),
    /// Log in over the HTTP API with the password once, then connect with the access token,
    /// refreshed (rotating refresh token) when it expires; the password is not kept on the wire.
    Token { password: String },
}

/// Reconnect timing: full jitter (a uniformly random wait up to an exponentially growing
/// cap), so a thousand clients dropped at once by a restart do not come back at once.
#[derive(Debug, Clone)]
pub struct Backoff {
    /// The cap of the first wait.
    pub base: Duration,
    /// The largest cap.
    pub max: Duration,
    /// The smallest wait after the server refused for load or quota (CONNACK 0x97, 0x9F,
    /// 0x89, 0x88, DISCONNECT 0x96/0x97): coming back at once would only be refused again.
    pub busy: Duration,
    /// A connection that lasted this long resets the backoff.
    pub stable: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            base: Duration::from_millis(500),
            max: Duration::from_secs(60),
            busy: Duration::from_secs(30),
            stable: Duration::from_secs(30),
        }
    }
}

/// A client's configuration. [`Config::new`] fills in the defaults.
#[derive(Clone)]
pub struct Config {
    /// MQTT server, `host:port` (TCP).
    pub mqtt: String,
    /// HTTP API base URL (`http://host:8080`): tokens and media. Optional with passwords.
    pub http: Option<String>,
    pub user: String,
    /// The device name: the client id is `{user}.{device}`.
    pub device: String,
    pub credentials: Credentials,
    /// Where the outbox and the cursors are kept (created if missing).
    pub data_dir: PathBuf,
    pub protocol: Protocol,
    pub format: Format,
    pub keep_alive: Duration,
    /// MQTT 5 topic aliases, both ways (a topic is sent once per connection, then a two-byte
    /// alias).
    pub topic_aliases: bool,
    pub backoff: Backoff,
    /// Entries per `sync` page when catching up.
    pub sync_page: usize,
    /// Wraps what is sent and unwraps what is received, per conversation (end-to-end
    /// encryption plugs in here).
    pub codec: Arc<dyn Codec>,
}

impl Config {
    pub fn new(
        mqtt: impl Into<String>,
        user: impl Into<String>,
        device: impl Into<String>,
        credentials: Credentials,
        data_dir: impl Into<PathBuf>,
    ) -> Config {
        Config {
            mqtt: mqtt.into(),
            http: None,
            user: user.into(),
            device: device.into(),
            credentials,
            data_dir: data_dir.into(),
            protocol: Protocol::V5,
            format: Format::Json,
            keep_alive: Duration::from_secs(30),
            topic_aliases: true,
            backoff: Backoff::default(),
            sync_page: 100,
            codec: Arc::new(Plain),
        }
    }

    /// The MQTT client id: `{user}.{device}`.
    pub fn client_id(&self) -> String {
        format!("{}.{}", self.user, self.device)
    }

    /// Refuses what cannot work before anything connects.
    pub(crate) fn validate(&self) -> Result<(), Error> {
        let id_ok = |s: &str| {
            (1..=32).contains(&s.len())
                && s.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
        };
        if !id_ok(&self.user) {
            return Err(Error::Config(format!(
                "user {:?}: 1-32 of a-z 0-9 _ -",
                self.user
            )));
        }
        if self.device.is_empty() || self.device.len() > 64 || self.device.contains(['/', '+', '#'])
        {
            return Err(Error::Config(format!(
                "device {:?}: 1-64 bytes, no / + #",
                self.device
            )));
        }
        if self
            .mqtt
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse::<u16>().ok())
            .is_none()
        {
            return Err(Error::Config(format!(
                "mqtt address {:?}: expected host:port",
                self.mqtt
            )));
        }
        if matches!(self.credentials, Credentials::Token { .. }) && self.http.is_none() {
            return Err(Error::Config("token login needs the HTTP API's URL".into()));
        }
        if self.keep_alive < Duration::from_secs(5) {
            return Err(Error::Config("keep alive under 5 s".into()));
        }
        if self.sync_page == 0 {
            return Err(Error::Config("sync page of 0 entries".into()));
        }
        Ok(())
    }
}
