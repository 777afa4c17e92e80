//! From the mailbox to the socket: deliveries and packets the router queued for this
//! connection are encoded (in the client's version, format and aliases) into the write buffer,
//! which is then written out.

use std::collections::VecDeque;
use std::io;
use std::time::{Duration, Instant};

use rumqttc::v5::mqttbytes::v5::{Packet, Publish, PublishProperties};
use rumqttc::v5::mqttbytes::QoS;

use super::connection::{Close, Connection};
use crate::chat::envelope::Format;
use crate::codec::{self, Version};
use crate::router::{Ack, Delivery, Mailbox, Outbound};
use crate::stats::Stats;

/// Bytes gathered from the mailbox before a write.
const WRITE_BATCH: usize = 64 * 1024;

impl Connection {
    /// Encodes what the mailbox holds. Drains until the mailbox stays empty (the router keeps
    /// pushing meanwhile), so one write carries many messages; bounded so a firehose still
    /// flushes, and so the write buffer holds about a batch: what waits beyond it stays in the
    /// mailbox, where it counts against the mailbox's bounds (a client that stops reading
    /// leaves this connection blocked in a write, with one batch encoded).
    pub(super) fn drain_mailbox(
        &mut self,
        mailbox: &Mailbox,
        outbox: &mut VecDeque<Outbound>,
    ) -> Option<Close> {
        loop {
            mailbox.take(outbox, WRITE_BATCH.saturating_sub(self.wbuf.len()));
            if outbox.is_empty() {
                break;
            }
            while let Some(item) = outbox.pop_front() {
                if let Some(close) = self.on_outbound(item) {
                    return Some(close);
                }
            }
            if self.wbuf.len() >= WRITE_BATCH {
                break;
            }
        }
        None
    }

    /// Encodes one mailbox item (or ends the connection the router says to end).
    fn on_outbound(&mut self, item: Outbound) -> Option<Close> {
        match item {
            Outbound::Publish(d) => {
                if let Some(ack) = self.write_delivery(d) {
                    self.ack(ack);
                }
            }
            Outbound::Packet(p) => self.queue(&p),
            Outbound::Disconnect(reason) => return Some(Close::Server(reason)),
        }
        None
    }

    /// Encodes a delivery. When it cannot be sent (expired, or larger than the client accepts)
    /// the specification says to treat it as delivered: the returned ack tells the router so.
    fn write_delivery(&mut self, d: Delivery) -> Option<Ack> {
        let Some(mut publish) = self.delivery_publish(&d) else {
            Stats::add(&self.shared.stats.messages_dropped, 1);
            return (d.qos != QoS::AtMostOnce).then_some(Ack::Discarded(d.pkid));
        };
        if self.version == Version::V5 && self.aliases.outbound_enabled() {
            self.aliases.apply_out(&mut publish);
        }
        self.queue(&Packet::Publish(publish));
        Stats::add(&self.shared.stats.messages_sent, 1);
        None
    }

    /// The PUBLISH for a delivery; `None` when it cannot be sent: expired, or larger than the
    /// client's Maximum Packet Size.
    fn delivery_publish(&self, d: &Delivery) -> Option<Publish> {
        let m = &d.message;
        // Chat envelopes go out in the device's chosen format.
        let (payload, content_type) = match (&m.msgpack, self.format) {
            (Some(packed), Format::MsgPack) => (packed.clone(), Some("application/msgpack")),
            (Some(_), Format::Json) => (m.payload.clone(), Some("application/json")),
            (None, _) => (m.payload.clone(), None),
        };
        let properties = match self.version {
            Version::V5 => delivery_properties(d, content_type)?,
            Version::V4 => None,
        };
        let publish = Publish {
            dup: d.dup,
            qos: d.qos,
            retain: d.retain,
            topic: m.topic.clone(),
            pkid: d.pkid,
            payload,
            properties,
        };
        if let Some(max) = self.client_max_packet {
            if publish.size() > max as usize {
                tracing::debug!(client = %self.identity.client_id, "message larger than the client's maximum packet size dropped");
                return None;
            }
        }
        Some(publish)
    }

    /// Encodes a packet into the write buffer.
    pub(super) fn queue(&mut self, packet: &Packet) {
        if let Err(e) = codec::write(self.version, packet, &mut self.wbuf) {
            tracing::warn!(client = %self.identity.client_id, error = %e, "cannot encode packet");
        }
    }

    /// Writes the write buffer out.
    pub(super) async fn flush(&mut self) -> io::Result<()> {
        if self.wbuf.is_empty() {
            return Ok(());
        }
        let data = std::mem::take(&mut self.wbuf).freeze();
        Stats::add(&self.shared.stats.bytes_sent, data.len() as u64);
        self.io.write(data).await
    }
}

/// A 5.0 delivery's properties: the message's own, with the remaining expiry, the matching
/// subscription identifiers and the envelope's content type. `None` when it has expired.
fn delivery_properties(
    d: &Delivery,
    content_type: Option<&str>,
) -> Option<Option<PublishProperties>> {
    let m = &d.message;
    let expiry = match m.expires_at {
        None => None,
        // The clock is read only for messages that expire: most do not.
        Some(at) => {
            let now = Instant::now();
            if at <= now {
                return None;
            }
            Some(remaining_secs(at - now))
        }
    };
    if m.properties.is_none()
        && expiry.is_none()
        && d.subscription_ids.is_empty()
        && content_type.is_none()
    {
        return Some(None);
    }
    let mut p = m.properties.as_deref().cloned().unwrap_or_default();
    p.message_expiry_interval = expiry;
    p.subscription_identifiers = d.subscription_ids.clone();
    if let Some(ct) = content_type {
        p.content_type = Some(ct.to_string());
    }
    Some(Some(p))
}

/// Whole seconds left, rounded up so a message is never reported as already expired.
fn remaining_secs(d: Duration) -> u32 {
    let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    u32::try_from(secs).unwrap_or(u32::MAX)
}
