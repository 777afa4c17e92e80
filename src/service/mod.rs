//! The chat services: the layer that applies the [`crate::chat`] rules with I/O — SQL through
//! the store, messages through the router, HTTP for push.
//!
//! - [`requests`]: requests on `q/{user}/{op}` (and the same operations over HTTP), served by
//!   the one [`ChatService`] whose operations are spread over `queries` (the read side),
//!   `groups` (group changes), `account` (a user's own settings) and `watch` (the watcher that
//!   picks up other processes' changes to accounts and conversations).
//! - [`signals`]: receipts and presence, from the router's [`crate::router::Report`]s, read
//!   markers and stored messages.
//! - [`push`]: notifications to the push endpoints of users with no connected device.

mod account;
mod chat_service;
mod error;
mod groups;
pub mod push;
mod queries;
pub mod requests;
pub mod signals;
mod watch;

pub use chat_service::ChatService;
pub use error::ServiceError;
