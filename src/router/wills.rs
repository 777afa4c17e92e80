//! Last wills: a [`Will`] rides on CONNECT, waits in the session, and is published when the
//! connection ends without a clean DISCONNECT (after its delay), when a new session replaces
//! the old one, or when an unconnected session expires.

use std::time::{Duration, Instant};

use super::Message;

/// A last will: published when the connection ends without a clean DISCONNECT, after its delay.
#[derive(Debug, Clone)]
pub struct Will {
    pub message: Message,
    pub delay_secs: u32,
    /// Message expiry, counted from when the will is published.
    pub expiry_secs: Option<u32>,
}

impl Will {
    /// The message to publish now.
    pub(super) fn into_message(self, now: Instant) -> Message {
        let Will {
            mut message,
            expiry_secs,
            ..
        } = self;
        message.expires_at = expiry_secs.map(|secs| now + Duration::from_secs(u64::from(secs)));
        message
    }
}
