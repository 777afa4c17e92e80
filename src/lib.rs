//! natter: a chat server that is an MQTT broker.
//!
//! # Layout
//!
//! Modules form layers; each uses only those above it in this list (data flows one way).
//!
//! - [`topics`]: the only code that parses or builds topic strings (see `topics.md`).
//! - [`codec`]: rumqttc's `mqttbytes` for both versions behind one (5.0) packet type
//!   ([`codec::convert`] turns 3.1.1 packets into 5.0 ones and back).
//! - [`ids`], [`password`], [`tokens`], [`token_cache`], [`stats`]: random ids, password hashes,
//!   access tokens (JWT HS256) and refresh tokens, tokens the store confirmed a moment ago,
//!   counters.
//! - [`limiter`]: failed logins and registrations per user and per address, shared by HTTP
//!   and MQTT, checked before a password is hashed.
//! - [`config`]: the one typed configuration (embedded `config/natter.toml`, env, flags),
//!   checked section by section in [`config::validate`] before anything starts.
//! - [`chat`]: the domain rules, no I/O: the [`chat::Directory`] of users and memberships and
//!   who may publish or subscribe where, the message [`chat::envelope`], who may edit or delete
//!   an entry ([`chat::edits`]), the typed requests of `q/{user}/{op}`
//!   ([`chat::requests`]), and the one bound on sequence numbers a client may send
//!   ([`chat::seq`]).
//! - [`refusal`]: every reason a client's action is refused, and the three tables that turn one
//!   into a JSON code, MQTT reason codes and an HTTP status.
//! - [`store`]: everything persisted, behind one interface ([`store::Store`], narrow traits
//!   per kind of record) with two backends, [`store::sqlite`] (the embedded default) and
//!   [`store::postgres`]: accounts, devices, conversations, media, push endpoints, and the
//!   history — its group-commit writer thread ([`store::Writer`]), appends, paging, search,
//!   receipts and retention. All SQL lives there.
//! - [`access`], [`acl`]: who may connect, publish, subscribe and receive — the chat rules for
//!   the chat namespaces, the mosquitto-style ACL file for plain topics.
//! - [`router`]: one task with no I/O — sessions ([`router::Router`]'s lifecycle, kicks,
//!   wills), the subscription trie, fan-out, retained messages, acks, `$SYS`. It reports
//!   deliveries and connections as [`router::Report`]s and never calls the layers below.
//! - [`service`]: the chat rules applied with I/O — requests and the reload watcher
//!   ([`service::requests`], `groups`, `queries`, `account`, `watch`), receipts and presence
//!   ([`service::signals`]), push ([`service::push`]).
//! - [`cluster`]: a node's link to the other nodes of a cluster (NATS): what the router
//!   forwards goes out, what the others send comes in, holes in a conversation are read from
//!   the store.
//! - [`edge`]: listeners, the global connection bound (`admission`), handshakes (`connect`),
//!   and one task per connection:
//!   `inbound` (read, decode), `publish` (check, authorize), `chat_ingress` (chat routes),
//!   `persist` (store before ack), `outbound` (mailbox to socket), `refusals`.
//! - [`http`]: the HTTP sidecar (axum): accounts and tokens, conversations, media, admin,
//!   health, metrics, with body limits per route and upload quota reservations (`quota`);
//!   [`media`] keeps uploaded files, content-addressed, and thumbnails.
//! - [`server`]: binds the listeners and runs everything until shutdown.
//!
//! # The flow of one chat message
//!
//! ```text
//! socket ─► edge::inbound: decode ─► edge::publish: topic alias, validate, authorize (access)
//!        ─► edge::chat_ingress: parse the envelope (chat::envelope)
//!        ─► edge::persist ─► store::Writer thread: next seq, INSERT, COMMIT (a batch
//!           at a time; chat::edits decides edits and deletes)
//!        ─► edge::persist: PUBACK to the sender ("sent" = on disk), then the stamped envelope …
//!        ─► router (one task, router::fanout): match subscriptions on c/{conv}/m and each
//!           member's u/{member}/c/{conv}/m, per-session in-flight window and queue
//!        ─► each subscriber's mailbox ─► edge::outbound encodes (JSON or MessagePack, 3.1.1 or
//!           5.0) ─► socket
//! recipient PUBACK ─► router::acks frees the slot and reports it ─► service::signals: batched
//!           "delivered" receipt, stored, published on c/{conv}/r
//! ```
//!
//! Plain MQTT topics skip the store: the publisher's PUBACK follows the hand-off to the router.
//! Data flows one way: connections send events to the router, the router writes into mailboxes
//! and reports to the signals task, never the reverse, and the router never waits on a socket.

pub mod access;
pub mod acl;
pub mod chat;
pub mod cluster;
pub mod codec;
pub mod config;
pub mod edge;
pub mod http;
pub mod ids;
pub mod limiter;
pub mod media;
pub mod password;
pub mod refusal;
pub mod router;
pub mod server;
pub mod service;
pub mod stats;
pub mod store;
pub mod token_cache;
pub mod tokens;
pub mod topics;
