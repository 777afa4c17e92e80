//! natter-client: a chat client for natter that never loses a message.
//!
//! natter speaks plain MQTT; this crate is the client half of its protocol (`topics.md`),
//! done once and correctly:
//!
//! - [`Client::send`] writes the message to an outbox in the client's data directory before
//!   anything goes on the wire, with a fresh `cid`. It leaves the outbox only when the server
//!   acknowledged it (which natter does after committing it), and is resent with the same
//!   `cid` after a reconnect, a crash or a restart, so the server stores it exactly once, in
//!   the order sent.
//! - The connection comes back by itself, after a wait with full jitter; refused credentials or
//!   (MQTT 5) a takeover by another process of the same device stop it with an error instead.
//! - After every (re)connect the client `sync`s each conversation from the last `seq` the app
//!   took. [`Events`] yields each entry once, in `seq` order per conversation; a live copy and a
//!   sync copy of one entry are one entry, and a hole is synced, never skipped.
//! - Live messages are acknowledged (making the sender's "delivered" receipt) only when the app
//!   has taken them; an entry past a hole is acknowledged as it is dropped, and comes with the
//!   hole's sync.
//! - A [`Codec`] wraps outgoing and unwraps incoming text per conversation: the plug for
//!   end-to-end encryption.
//!
//! ```no_run
//! use natter_client::{Client, Config, Credentials, Event};
//!
//! # async fn demo() -> Result<(), natter_client::Error> {
//! let config = Config::new("127.0.0.1:1883", "alice", "laptop",
//!     Credentials::Password("alice-secret".into()), "./alice-data");
//! let (client, mut events) = Client::start(config)?;
//! let sent = client.send("d.alice.bob", "hi bob")?;   // in the outbox now
//! println!("stored as seq {}", sent.stored().await?.seq);
//! while let Some(event) = events.next().await {
//!     if let Event::Entry(e) = event {
//!         println!("{} #{} {}: {}", e.conv, e.seq, e.from, e.text.unwrap_or_default());
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! The map: [`client`] (the handle and [`Events`]), `session` (the task behind it: connect,
//! resend, catch up, acknowledge), `link` (one MQTT connection, 3.1.1 or 5.0, through
//! rumqttc), `order` (once and in order per conversation), `local` (the outbox and cursors in
//! SQLite), `backoff` (when to reconnect), `topics` (every topic string it builds or reads), [`codec`] (formats and the per-conversation codec),
//! [`http`] (tokens and media over the HTTP API), [`model`] (what the app sends and gets),
//! [`config`], [`error`].

pub mod backoff;
pub mod client;
pub mod codec;
pub mod config;
pub mod error;
pub mod http;
mod link;
pub mod local;
pub mod model;
mod order;
mod session;
mod topics;

pub use client::{direct, Client, Conversation, Events, Page, Sending, State};
pub use codec::{Codec, Plain};
pub use config::{Backoff, Config, Credentials, Format, Protocol};
pub use error::Error;
pub use model::{Draft, Entry, Event, Kind, Membership, Presence, Receipt, ServerError, Stored};
