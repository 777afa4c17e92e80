//! Receipts: deliveries batched per conversation and user and announced once per interval, and
//! read markers from clients — both monotonic, stored, and published on `c/{conv}/r`.

use std::sync::Arc;

use bytes::Bytes;
use serde_json::json;

use super::Signals;
use crate::router::{Event, Message};
use crate::topics::{self, ConvKind};

impl Signals {
    /// Records a delivery; only the highest sequence number per conversation and user waits
    /// for the next flush.
    pub(super) fn delivered(&mut self, conv: String, user: Arc<str>, seq: u64) {
        let best = self.delivered.entry((conv, user)).or_insert(0);
        *best = (*best).max(seq);
    }

    /// Stores a read marker and announces it, unless it is not newer than the stored one.
    pub(super) async fn read(&mut self, user: Arc<str>, conv: String, seq: u64, private: bool) {
        let store = self.store.clone();
        let (u, c) = (user.to_string(), conv.clone());
        let stored =
            tokio::task::spawn_blocking(move || store.mark_read(&c, &u, seq, private)).await;
        // The store clamps a marker to the conversation's end: announce what it kept.
        let seq = match stored {
            Ok(Ok(Some(kept))) => kept,
            // Not newer than what is stored: markers never go backwards.
            Ok(Ok(None)) => return,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "cannot store a read marker");
                return;
            }
            Err(_) => return,
        };
        let body = json!({"type": "read", "conv": conv, "user": &*user, "seq": seq});
        if private {
            // Only the reader's own devices, so unread counts agree across them.
            let topic = topics::stream_copy(&user, &conv, ConvKind::Receipts);
            self.send(Message::server(topic, body.to_string())).await;
        } else {
            self.announce(&conv, body.to_string()).await;
        }
    }

    /// Stores the batched deliveries and announces those that moved a receipt forward.
    pub(super) async fn flush_receipts(&mut self) {
        if self.delivered.is_empty() {
            return;
        }
        let batch: Vec<((String, Arc<str>), u64)> = self.delivered.drain().collect();
        let store = self.store.clone();
        let rows: Vec<(String, String, u64)> = batch
            .iter()
            .map(|((c, u), s)| (c.clone(), u.to_string(), *s))
            .collect();
        let advanced = match tokio::task::spawn_blocking(move || store.mark_delivered(&rows)).await
        {
            Ok(Ok(advanced)) => advanced,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "cannot store delivery receipts");
                return;
            }
            Err(_) => return,
        };
        for (((conv, user), seq), went_up) in batch.into_iter().zip(advanced) {
            if !went_up {
                continue;
            }
            let body = json!({"type": "delivered", "conv": conv, "user": &*user, "seq": seq});
            self.announce(&conv, body.to_string()).await;
        }
    }

    /// Publishes on `c/{conv}/r` and each member's copy of it.
    async fn announce(&self, conv: &str, body: String) {
        let members = self.members(conv);
        let copies = members
            .iter()
            .map(|m| Bytes::from(topics::stream_copy(m, conv, ConvKind::Receipts)))
            .collect();
        let message = Message::server(topics::conv_topic(conv, ConvKind::Receipts), body);
        if self
            .router
            .send(Event::ServerPublishTo { message, copies })
            .await
            .is_err()
        {
            tracing::debug!("router gone; receipt not published");
        }
    }
}
