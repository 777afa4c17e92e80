//! The chat services: the layer that applies the [`crate::chat`] rules with I/O — SQL through
//! the store, messages through the router, HTTP for push.
//!
//! - [`requests`]: requests on `q/{user}/{op}` (and the same operations over HTTP), and the
//!   watcher that picks up other processes' changes to accounts and conversations.
//! - [`signals`]: receipts and presence, from the router's [`crate::router::Report`]s, read
//!   markers and stored messages.
//! - [`push`]: notifications to the push endpoints of users with no connected device.

pub mod push;
pub mod requests;
pub mod signals;
