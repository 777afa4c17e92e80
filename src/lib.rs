//! natter: a chat server that is an MQTT broker.
//!
//! # Layout
//!
//! - [`config`]: the one typed configuration (embedded `config/natter.toml`, env, flags).
//! - [`server`]: binds the listeners and runs everything until shutdown.
//! - [`edge`]: listeners (TCP, TLS, WebSocket, WSS), handshakes, and one task per connection
//!   that speaks MQTT 3.1.1 or 5.0 through [`codec`].
//! - [`codec`]: rumqttc's `mqttbytes` for both versions behind one (5.0) packet type.
//! - [`access`] and [`acl`]: who may connect, publish, subscribe and receive.
//! - [`router`]: sessions, subscriptions ([`topics`] filters in a trie), retained messages,
//!   wills, QoS 1/2 flows, `$SYS` statistics ([`stats`]).
//! - [`topics`]: the only code that parses or builds topic strings (see `topics.md`).
//!
//! # The flow of one PUBLISH
//!
//! ```text
//! socket ─► edge::connection (decode, topic alias, validate, authorize)
//!        ─► router (one task): retained store, match subscriptions, per-session window/queue
//!        ─► mailbox of each subscriber's connection ─► encode for its version ─► socket
//! ```
//!
//! The publisher's PUBACK is written by its connection once the router has the message; a
//! subscriber's PUBACK goes back to the router, which frees its in-flight slot. Data flows one
//! way: connections send events to the router, the router writes into mailboxes, never the
//! reverse, and the router never waits on a socket.

pub mod access;
pub mod acl;
pub mod chat;
pub mod codec;
pub mod config;
pub mod edge;
pub mod ids;
pub mod password;
pub mod router;
pub mod server;
pub mod stats;
pub mod store;
pub mod topics;
