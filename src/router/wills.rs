//! Last wills: a [`Will`] rides on CONNECT, waits in the session, and is published when the
//! connection ends without a clean DISCONNECT (after its delay), when a new session replaces
//! the old one, or when an unconnected session expires.

use std::time::{Duration, Instant};

use super::session::Session;
use super::{Message, Router};

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
    fn into_message(self, now: Instant) -> Message {
        let Will {
            mut message,
            expiry_secs,
            ..
        } = self;
        message.expires_at = expiry_secs.map(|secs| now + Duration::from_secs(u64::from(secs)));
        message
    }
}

impl Session {
    /// The old connection's will when a CONNECT takes the session over: a resumed session
    /// cancels a delayed will (the client is back in time); otherwise the old session ends and
    /// its will goes out now (returned, to publish).
    pub(super) fn will_on_takeover(&mut self, resume: bool, now: Instant) -> Option<Message> {
        let will = self.will.take()?;
        if !resume || (will.delay_secs == 0 && self.will_at.is_none()) {
            return Some((*will).into_message(now));
        }
        None
    }

    /// The will when the connection ends: returned to publish now, kept until its delay (at
    /// most the session's expiry) is over, or dropped (a clean DISCONNECT).
    pub(super) fn will_on_close(&mut self, publish_will: bool, now: Instant) -> Option<Message> {
        let expiry_secs = self.expiry_secs;
        match self.will.take() {
            Some(will) if publish_will => {
                if will.delay_secs == 0 || expiry_secs == 0 {
                    return Some((*will).into_message(now));
                }
                let delay = will.delay_secs.min(expiry_secs);
                self.will_at = Some(now + Duration::from_secs(u64::from(delay)));
                self.will = Some(will);
                None
            }
            _ => None,
        }
    }
}

impl Router {
    /// Publishes the delayed wills that are due and ends the unconnected sessions whose expiry
    /// has passed (their wills go out too).
    pub(super) fn expire_sessions(&mut self, now: Instant) {
        let mut wills = Vec::new();
        let mut ended = Vec::new();
        for (client, s) in &mut self.sessions {
            if s.link.is_some() {
                continue;
            }
            let session_over = s.expires_at.is_some_and(|at| now >= at);
            if s.will_at.is_some_and(|at| now >= at) || session_over {
                if let Some(will) = s.will.take() {
                    wills.push((*will).into_message(now));
                }
                s.will_at = None;
            }
            if session_over {
                ended.push(client.clone());
            }
        }
        for client in ended {
            self.end_session(&client);
        }
        for message in wills {
            self.publish(message, now);
        }
    }
}
