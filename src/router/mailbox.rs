//! The router's one-way channel to a connection: packets to write, in order.
//!
//! A `VecDeque` behind a mutex plus a `Notify` instead of a tokio channel: an idle connection's
//! mailbox allocates nothing (a bounded channel allocates its first block up front), and the
//! router, which must never wait on a slow client, pushes without awaiting. QoS 1/2 traffic is
//! bounded by the session's in-flight window; QoS 0 traffic is bounded here, by dropping.
//!
//! The router wakes connections once per burst of events ([`deferring_wakes`]), not once per
//! push: a connection woken at the first of a burst's messages would write that one alone,
//! and a fan-out would cost a `send` per subscriber per message.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

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
    /// Pushed to while wakes are deferred, and not woken yet.
    wake_due: AtomicBool,
    /// Most QoS 0 messages waiting; more are dropped (a slow subscriber must not grow the heap).
    qos0_cap: usize,
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
    qos0: usize,
}

impl Mailbox {
    pub fn new(qos0_cap: usize) -> Mailbox {
        Mailbox {
            queue: Mutex::new(Inner::default()),
            notify: Notify::new(),
            wake_due: AtomicBool::new(false),
            qos0_cap,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding this lock cannot leave the queue half-updated (push/pop only),
        // so a poisoned lock is still safe to use.
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues an item; returns `false` if it was a QoS 0 message dropped for lack of room.
    pub fn push(self: &Arc<Self>, item: Outbound) -> bool {
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
