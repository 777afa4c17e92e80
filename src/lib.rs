//! natter: a chat server that is an MQTT broker.
//!
//! # Layout
//!
//! - [`config`]: the one typed configuration (embedded `config/natter.toml`, env, flags).
//! - [`server`]: binds the listeners and runs everything until shutdown.
//! - [`edge`]: listeners (TCP, TLS, WebSocket, WSS), handshakes, and one task per connection
//!   that speaks MQTT 3.1.1 or 5.0 through [`codec`].
//! - [`codec`]: rumqttc's `mqttbytes` for both versions behind one (5.0) packet type.
//! - [`access`]: who may connect, publish, subscribe and receive — the chat rules of [`chat`]
//!   for the chat namespaces, the mosquitto-style ACL file of [`acl`] for plain topics;
//!   [`password`] hashes and checks passwords.
//! - [`chat`]: the domain rules (no I/O): the directory of users and memberships, the message
//!   [`chat::envelope`]; [`chat::service`] applies requests (`q/{user}/{op}`) and picks up other
//!   processes' changes; [`chat::signals`] turns acknowledgements and connections into
//!   receipts and presence.
//! - [`store`]: all SQL — accounts and conversations ([`store::Store`]), and the history with
//!   its group-commit writer thread ([`store::messages`]).
//! - [`router`]: sessions, subscriptions ([`topics`] filters in a trie), retained messages,
//!   wills, QoS 1/2 flows, `$SYS` statistics ([`stats`]).
//! - [`topics`]: the only code that parses or builds topic strings (see `topics.md`).
//! - [`tokens`]: access tokens (JWT HS256) and refresh tokens, for the HTTP API and CONNECT.
//! - [`http`]: the HTTP sidecar (axum): accounts and tokens, conversations, admin, health,
//!   metrics.
//! - [`media`]: uploaded files, content-addressed on disk, and their thumbnails.
//! - [`ids`]: random identifiers.
//!
//! # The flow of one chat message
//!
//! ```text
//! socket ─► edge::connection: decode, topic alias, validate, authorize (access), parse the
//!           envelope (chat::envelope)
//!        ─► store::messages writer thread: next seq, INSERT, COMMIT (a batch at a time)
//!        ─► edge: PUBACK to the sender ("sent" = on disk), then the stamped envelope to …
//!        ─► router (one task): match subscriptions on c/{conv}/m and each member's
//!           u/{member}/c/{conv}/m, per-session in-flight window and queue
//!        ─► each subscriber's mailbox ─► its connection encodes (JSON or MessagePack, 3.1.1 or
//!           5.0) ─► socket
//! recipient PUBACK ─► router frees the slot and reports it ─► chat::signals: batched
//!           "delivered" receipt, stored, published on c/{conv}/r
//! ```
//!
//! Plain MQTT topics skip the store: the publisher's PUBACK follows the hand-off to the router.
//! Data flows one way: connections send events to the router, the router writes into mailboxes
//! and reports to the signals task, never the reverse, and the router never waits on a socket.

pub mod access;
pub mod acl;
pub mod chat;
pub mod codec;
pub mod config;
pub mod edge;
pub mod http;
pub mod ids;
pub mod media;
pub mod password;
pub mod refusal;
pub mod router;
pub mod server;
pub mod service;
pub mod stats;
pub mod store;
pub mod tokens;
pub mod topics;
