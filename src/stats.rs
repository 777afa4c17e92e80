//! Broker-wide counters, shared by the edge (bytes, packets) and the router (messages, drops);
//! published under `$SYS/broker/…`, on `/metrics` and by the admin API, all from one
//! [`Snapshot`].

use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Default)]
pub struct Stats {
    pub clients_connected: AtomicU64,
    pub messages_received: AtomicU64,
    pub messages_sent: AtomicU64,
    pub messages_dropped: AtomicU64,
    pub bytes_received: AtomicU64,
    pub bytes_sent: AtomicU64,
}

impl Stats {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn sub(counter: &AtomicU64, n: u64) {
        counter.fetch_sub(n, Ordering::Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            clients_connected: Stats::get(&self.clients_connected),
            messages_received: Stats::get(&self.messages_received),
            messages_sent: Stats::get(&self.messages_sent),
            messages_dropped: Stats::get(&self.messages_dropped),
            bytes_received: Stats::get(&self.bytes_received),
            bytes_sent: Stats::get(&self.bytes_sent),
        }
    }
}

/// The counters at one moment.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Snapshot {
    pub clients_connected: u64,
    pub messages_received: u64,
    pub messages_sent: u64,
    pub messages_dropped: u64,
    pub bytes_received: u64,
    pub bytes_sent: u64,
}

impl Snapshot {
    /// Each counter with its Prometheus name, type and help text.
    pub fn metrics(&self) -> [(&'static str, &'static str, &'static str, u64); 6] {
        [
            (
                "clients_connected",
                "gauge",
                "Connected MQTT clients.",
                self.clients_connected,
            ),
            (
                "messages_received_total",
                "counter",
                "PUBLISH packets received.",
                self.messages_received,
            ),
            (
                "messages_sent_total",
                "counter",
                "PUBLISH packets sent.",
                self.messages_sent,
            ),
            (
                "messages_dropped_total",
                "counter",
                "Messages dropped (queues, expiry, size).",
                self.messages_dropped,
            ),
            (
                "bytes_received_total",
                "counter",
                "Bytes received on MQTT connections.",
                self.bytes_received,
            ),
            (
                "bytes_sent_total",
                "counter",
                "Bytes sent on MQTT connections.",
                self.bytes_sent,
            ),
        ]
    }
}
