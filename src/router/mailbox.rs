//! The router's one-way channel to a connection: packets to write, in order.
//!
//! A `VecDeque` behind a mutex plus a `Notify` instead of a tokio channel: an idle connection's
//! mailbox allocates nothing (a bounded channel allocates its first block up front), and the
//! router, which must never wait on a slow client, pushes without awaiting. QoS 1/2 traffic is
//! bounded by the session's in-flight window (in messages and, through [`Mailbox::bounds`], in
//! bytes); QoS 0 traffic is bounded here, in messages and bytes, by dropping under the
//! configured overflow policy. The connection takes a batch at a time ([`Mailbox::take`]), so
//! what it has not encoded yet still counts against those bounds: a client that stops reading
//! makes the server hold at most the bounds, a batch and the socket's buffers.
//!
//! The router wakes connections once per burst of events ([`deferring_wakes`]), not once per
//! push: a connection woken at the first of a burst's messages would write that one alone,
//! and a fan-out would cost a `send` per subscriber per message.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use rumqttc::v5::mqttbytes::v5::{DisconnectReasonCode, Packet};
use rumqttc::v5::mqttbytes::QoS;
use tokio::sync::Notify;

use super::Delivery;
use crate::config::{MqttConfig, QueueOverflow};

/// How much a queue may hold: messages, and bytes as [`Message::size`](super::Message::size)
/// counts them, whichever bound is hit first; and what goes when it is full.
///
/// A message larger than the whole byte budget is still let into an empty queue, alone: it is
/// delivered one at a time rather than never (the edge already bounds its size by
/// `mqtt.max_packet_size`), so a queue holds at most max(`bytes`, one message).
#[derive(Debug, Clone, Copy)]
pub struct QueueBounds {
    pub messages: usize,
    pub bytes: usize,
    pub overflow: QueueOverflow,
}

impl QueueBounds {
    /// `mqtt.max_queued_messages`, `max_queued_bytes` and `queue_overflow`.
    pub fn from_config(m: &MqttConfig) -> QueueBounds {
        QueueBounds {
            messages: m.max_queued_messages,
            bytes: m.max_queued_bytes,
            overflow: m.queue_overflow,
        }
    }

    /// Whether a queue of `len` messages holding `bytes` takes one more of `size` bytes.
    pub fn fits(&self, len: usize, bytes: usize, size: usize) -> bool {
        len < self.messages && (len == 0 || bytes.saturating_add(size) <= self.bytes)
    }
}

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
    /// Pushed to while wakes are deferred, and not woken yet.
    wake_due: AtomicBool,
    /// What QoS 0 messages may wait; more are dropped (a slow subscriber must not grow the
    /// heap).
    bounds: QueueBounds,
}

thread_local! {
    /// The mailboxes to wake when the innermost [`deferring_wakes`] on this thread returns.
    static DEFERRED: RefCell<Option<Vec<Arc<Mailbox>>>> = const { RefCell::new(None) };
}

/// Runs `f`, holding back the wake-ups of the mailboxes it pushes to until it returns; then
/// wakes each of them once. `f` must not await (it is not async), so nothing waits on a wake
/// held back here for longer than `f` runs.
pub fn deferring_wakes<R>(f: impl FnOnce() -> R) -> R {
    /// Wakes on drop, so a panic in `f` neither strands the mailboxes it pushed to nor leaves
    /// this thread deferring.
    struct Flush(Option<Vec<Arc<Mailbox>>>);
    impl Drop for Flush {
        fn drop(&mut self) {
            let due = DEFERRED.with(|d| std::mem::replace(&mut *d.borrow_mut(), self.0.take()));
            for mailbox in due.into_iter().flatten() {
                mailbox.wake_due.store(false, Ordering::Relaxed);
                mailbox.notify.notify_one();
            }
        }
    }
    let _flush = Flush(DEFERRED.with(|d| d.borrow_mut().replace(Vec::new())));
    f()
}

#[derive(Debug, Default)]
struct Inner {
    items: VecDeque<Outbound>,
    /// Bytes of every message waiting, of any QoS.
    bytes: usize,
    /// QoS 0 messages waiting, and their bytes.
    qos0: usize,
    qos0_bytes: usize,
}

/// A message's size, and whether it is QoS 0; `None` for control packets.
fn measure(item: &Outbound) -> Option<(usize, bool)> {
    match item {
        Outbound::Publish(d) => Some((d.message.size(), d.qos == QoS::AtMostOnce)),
        Outbound::Packet(_) | Outbound::Disconnect(_) => None,
    }
}

impl Inner {
    /// Appends `item`, dropping QoS 0 messages to keep within `b`; returns how many were dropped
    /// (`item` itself under drop_newest, older ones under drop_oldest).
    fn add(&mut self, item: Outbound, b: &QueueBounds) -> usize {
        let Some((size, qos0)) = measure(&item) else {
            self.items.push_back(item);
            return 0;
        };
        let mut dropped = 0;
        if qos0 {
            while !b.fits(self.qos0, self.qos0_bytes, size) {
                if b.overflow == QueueOverflow::DropNewest || !self.drop_oldest_qos0() {
                    return dropped + 1;
                }
                dropped += 1;
            }
            self.qos0 += 1;
            self.qos0_bytes += size;
        }
        self.bytes += size;
        self.items.push_back(item);
        dropped
    }

    /// Removes the oldest QoS 0 message; `false` if there is none.
    fn drop_oldest_qos0(&mut self) -> bool {
        let oldest = self
            .items
            .iter()
            .position(|item| matches!(item, Outbound::Publish(d) if d.qos == QoS::AtMostOnce));
        match oldest.and_then(|i| self.items.remove(i)) {
            Some(item) => {
                self.forget(&item);
                true
            }
            None => false,
        }
    }

    /// Takes an item that left the queue off the counts; returns its size.
    fn forget(&mut self, item: &Outbound) -> usize {
        let Some((size, qos0)) = measure(item) else {
            return 0;
        };
        self.bytes -= size;
        if qos0 {
            self.qos0 -= 1;
            self.qos0_bytes -= size;
        }
        size
    }
}

impl Mailbox {
    /// A mailbox holding at most `bounds` of QoS 0 messages (always room for one).
    pub fn new(bounds: QueueBounds) -> Mailbox {
        Mailbox {
            queue: Mutex::new(Inner::default()),
            notify: Notify::new(),
            wake_due: AtomicBool::new(false),
            bounds: QueueBounds {
                messages: bounds.messages.max(1),
                ..bounds
            },
        }
    }

    /// Its bounds; their byte budget also caps the session's in-flight window.
    pub fn bounds(&self) -> &QueueBounds {
        &self.bounds
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding this lock cannot leave the queue half-updated (push/pop and
        // their counts, with nothing that can panic in between), so a poisoned lock is still
        // safe to use.
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues an item; returns how many QoS 0 messages were dropped to make room (this one or
    /// older ones, per the overflow policy). Nothing else is dropped: QoS 1/2 messages are
    /// bounded by the session's window, and packets answer what the connection read.
    pub fn push(self: &Arc<Self>, item: Outbound) -> usize {
        let dropped = self.lock().add(item, &self.bounds);
        if !self.wake_due.load(Ordering::Relaxed) {
            let deferred = DEFERRED.with(|d| match d.borrow_mut().as_mut() {
                Some(due) => {
                    due.push(self.clone());
                    true
                }
                None => false,
            });
            if deferred {
                self.wake_due.store(true, Ordering::Relaxed);
            } else {
                self.notify.notify_one();
            }
        }
        dropped
    }

    /// Moves items from the front to `out` (which should be empty) until they hold `max_bytes`
    /// of messages, at least one item: what the connection has not taken still counts against
    /// the bounds. When everything fits the queues are exchanged instead: no copying, and the
    /// mailbox starts again from `out`'s storage.
    pub fn take(&self, out: &mut VecDeque<Outbound>, max_bytes: usize) {
        let mut inner = self.lock();
        if inner.items.is_empty() {
            // Nothing to take: exchanging would leave `out`'s emptied storage here, held for
            // as long as the connection idles.
            return;
        }
        if inner.bytes <= max_bytes {
            std::mem::swap(&mut inner.items, out);
            (inner.bytes, inner.qos0, inner.qos0_bytes) = (0, 0, 0);
            return;
        }
        let mut taken = 0;
        while let Some(item) = inner.items.pop_front() {
            taken += inner.forget(&item);
            out.push_back(item);
            if taken >= max_bytes {
                break;
            }
        }
        drop(inner);
        // What is left is due too, and the wake that announced it was spent on this call.
        self.notify.notify_one();
    }

    /// Resolves when something was pushed since the last call.
    pub async fn ready(&self) {
        self.notify.notified().await
    }
}

#[cfg(test)]
pub(super) mod tests {
    use futures_util::FutureExt;

    use super::*;
    use crate::router::Message;

    /// A delivery of 100 bytes (`Message::size`: a one-byte topic and 99 bytes of payload).
    fn hundred(qos: QoS, tag: u8) -> Outbound {
        let message = Message {
            qos,
            ..Message::server("t".into(), vec![tag; 99])
        };
        Outbound::Publish(Delivery {
            message: Arc::new(message),
            qos,
            retain: false,
            dup: false,
            pkid: 0,
            subscription_ids: Vec::new(),
        })
    }

    fn mailbox(bytes: usize, overflow: QueueOverflow) -> Arc<Mailbox> {
        Arc::new(Mailbox::new(QueueBounds {
            messages: 1000,
            bytes,
            overflow,
        }))
    }

    /// The tags (first payload byte) of the messages waiting, taken out of the mailbox; the
    /// session's tests read what it wrote with it too.
    pub(in crate::router) fn tags(m: &Mailbox) -> Vec<u8> {
        let mut out = VecDeque::new();
        m.take(&mut out, usize::MAX);
        out.iter()
            .map(|item| match item {
                Outbound::Publish(d) => d.message.payload[0],
                other => panic!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn qos0_messages_are_bounded_in_bytes_under_either_policy() {
        let newest = mailbox(250, QueueOverflow::DropNewest);
        let oldest = mailbox(250, QueueOverflow::DropOldest);
        for m in [&newest, &oldest] {
            assert_eq!(m.push(hundred(QoS::AtMostOnce, 1)), 0);
            assert_eq!(m.push(hundred(QoS::AtMostOnce, 2)), 0);
            assert_eq!(m.push(hundred(QoS::AtMostOnce, 3)), 1, "300 bytes > 250");
        }
        assert_eq!(tags(&newest), [1, 2]);
        assert_eq!(tags(&oldest), [2, 3]);
    }

    #[test]
    fn a_message_larger_than_the_budget_waits_alone() {
        let m = mailbox(50, QueueOverflow::DropOldest);
        assert_eq!(
            m.push(hundred(QoS::AtMostOnce, 1)),
            0,
            "an empty mailbox takes it"
        );
        assert_eq!(m.push(hundred(QoS::AtMostOnce, 2)), 1);
        assert_eq!(tags(&m), [2]);
    }

    #[test]
    fn messages_in_flight_are_never_dropped_nor_counted_against_qos0() {
        let m = mailbox(150, QueueOverflow::DropNewest);
        for tag in 1..=3 {
            assert_eq!(m.push(hundred(QoS::AtLeastOnce, tag)), 0);
        }
        assert_eq!(m.push(hundred(QoS::AtMostOnce, 4)), 0);
        assert_eq!(m.push(hundred(QoS::AtMostOnce, 5)), 1);
        assert_eq!(tags(&m), [1, 2, 3, 4]);
    }

    #[test]
    fn what_a_batch_leaves_behind_still_counts_and_is_announced() {
        let m = mailbox(500, QueueOverflow::DropNewest);
        for tag in 1..=5 {
            assert_eq!(m.push(hundred(QoS::AtMostOnce, tag)), 0);
        }
        assert!(m.ready().now_or_never().is_some());
        let mut batch = VecDeque::new();
        m.take(&mut batch, 250);
        assert_eq!(batch.len(), 3, "taken until 250 bytes are reached");
        assert!(
            m.ready().now_or_never().is_some(),
            "the rest is due without another push"
        );
        // Two left (200 bytes) and 500 allowed: three more fit, a fourth does not.
        for tag in 6..=8 {
            assert_eq!(m.push(hundred(QoS::AtMostOnce, tag)), 0);
        }
        assert_eq!(m.push(hundred(QoS::AtMostOnce, 9)), 1);
        assert_eq!(tags(&m), [4, 5, 6, 7, 8]);
        assert_eq!(
            m.push(hundred(QoS::AtMostOnce, 10)),
            0,
            "all taken: empty again"
        );
    }
}
