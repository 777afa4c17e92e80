//! The router's one-way channel to a connection: packets to write, in order.
//!
//! A `VecDeque` behind a mutex plus a `Notify` instead of a tokio channel: an idle connection's
//! mailbox allocates nothing (a bounded channel allocates its first block up front), and the
//! router, which must never wait on a slow client, pushes without awaiting. QoS 1/2 traffic is
//! bounded by the session's in-flight window; QoS 0 traffic is bounded here, by dropping.

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard};

use rumqttc::v5::mqttbytes::v5::{DisconnectReasonCode, Packet};
use tokio::sync::Notify;

use super::Delivery;

/// What the router asks a connection to send.
#[derive(Debug)]
pub enum Outbound {
    /// A message for the client (the connection applies topic aliases and size limits).
    Publish(Delivery),
    /// A control packet (SUBACK, UNSUBACK, PUBREL…), written as is. Boxed: a 5.0 packet is
    /// several hundred bytes and publishes, the common case, should not pay for it.
    Packet(Box<Packet>),
    /// Send DISCONNECT with this reason (5.0) and close.
    Disconnect(DisconnectReasonCode),
}

#[derive(Debug)]
pub struct Mailbox {
    queue: Mutex<Inner>,
    notify: Notify,
    /// Most QoS 0 messages waiting; more are dropped (a slow subscriber must not grow the heap).
    qos0_cap: usize,
}

#[derive(Debug, Default)]
struct Inner {
    items: VecDeque<Outbound>,
    qos0: usize,
}

impl Mailbox {
    pub fn new(qos0_cap: usize) -> Mailbox {
        Mailbox {
            queue: Mutex::new(Inner::default()),
            notify: Notify::new(),
            qos0_cap,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding this lock cannot leave the queue half-updated (push/pop only),
        // so a poisoned lock is still safe to use.
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues an item; returns `false` if it was a QoS 0 message dropped for lack of room.
    pub fn push(&self, item: Outbound) -> bool {
        {
            let mut inner = self.lock();
            if let Outbound::Publish(d) = &item {
                if d.qos == rumqttc::v5::mqttbytes::QoS::AtMostOnce {
                    if inner.qos0 >= self.qos0_cap {
                        return false;
                    }
                    inner.qos0 += 1;
                }
            }
            inner.items.push_back(item);
        }
        self.notify.notify_one();
        true
    }

    /// Exchanges the queue with `out` (which should be empty): the connection takes the whole
    /// batch without copying, and the mailbox starts again from `out`'s storage.
    pub fn swap(&self, out: &mut VecDeque<Outbound>) {
        let mut inner = self.lock();
        inner.qos0 = 0;
        std::mem::swap(&mut inner.items, out);
    }

    /// Resolves when something was pushed since the last call.
    pub async fn ready(&self) {
        self.notify.notified().await
    }
}
