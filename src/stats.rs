//! Broker-wide counters, shared by the edge (bytes, packets) and the router (messages, drops);
//! published under `$SYS/broker/…`, on `/metrics` and by the admin API, all from one
//! [`Snapshot`].

use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Default)]
pub struct Stats {
    /// Time from a chat message's arrival to its PUBACK (the commit in between), milliseconds.
    pub puback_ms: Histogram<12>,
    /// Messages per history commit.
    pub batch_size: Histogram<10>,
    /// One history commit's parts, milliseconds: how long its oldest message waited in the
    /// writer's queue, the statements before COMMIT, and the COMMIT itself (the durable write:
    /// WAL append and fsync). The last two only where the backend tells them apart (SQLite;
    /// PostgreSQL commits its usual batch inside one statement).
    pub commit_wait_ms: Histogram<16>,
    pub commit_sql_ms: Histogram<16>,
    pub commit_sync_ms: Histogram<16>,
    pub media_bytes_uploaded: AtomicU64,
    pub clients_connected: AtomicU64,
    pub messages_received: AtomicU64,
    pub messages_sent: AtomicU64,
    /// Messages dropped: by a full queue or mailbox (in messages or bytes), expired, or too
    /// large for the client.
    pub messages_dropped: AtomicU64,
    /// Retained messages not kept: the retained store had no room for them.
    pub retained_refused: AtomicU64,
    pub bytes_received: AtomicU64,
    pub bytes_sent: AtomicU64,
    /// In a cluster: frames sent to and taken from the other nodes over NATS, frames NATS
    /// refused, and stored entries read back for holes in a conversation.
    pub cluster_sent: AtomicU64,
    pub cluster_received: AtomicU64,
    pub cluster_refused: AtomicU64,
    pub cluster_backfilled: AtomicU64,
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
            retained_refused: Stats::get(&self.retained_refused),
            bytes_received: Stats::get(&self.bytes_received),
            bytes_sent: Stats::get(&self.bytes_sent),
            media_bytes_uploaded: Stats::get(&self.media_bytes_uploaded),
            cluster_sent: Stats::get(&self.cluster_sent),
            cluster_received: Stats::get(&self.cluster_received),
            cluster_refused: Stats::get(&self.cluster_refused),
            cluster_backfilled: Stats::get(&self.cluster_backfilled),
        }
    }
}

/// A Prometheus-style histogram with fixed upper bounds (see [`Histogram::BOUNDS`]).
#[derive(Debug)]
pub struct Histogram<const N: usize> {
    bounds: [f64; N],
    buckets: [AtomicU64; N],
    count: AtomicU64,
    /// The sum, in thousandths of the unit, so it fits an integer.
    sum_milli: AtomicU64,
}

impl Default for Histogram<12> {
    fn default() -> Self {
        Histogram::new([
            0.5, 1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 5000.0,
        ])
    }
}

impl Default for Histogram<10> {
    fn default() -> Self {
        Histogram::new([1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0])
    }
}

/// Milliseconds, fine below one: a commit's parts are fractions of a millisecond.
impl Default for Histogram<16> {
    fn default() -> Self {
        Histogram::new([
            0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0,
            1000.0,
        ])
    }
}

impl<const N: usize> Histogram<N> {
    fn new(bounds: [f64; N]) -> Self {
        Histogram {
            bounds,
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            count: AtomicU64::new(0),
            sum_milli: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, value: f64) {
        if let Some(i) = self.bounds.iter().position(|b| value <= *b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_milli
            .fetch_add((value * 1000.0) as u64, Ordering::Relaxed);
    }

    /// Prometheus text lines for this histogram (cumulative buckets, +Inf, sum, count).
    pub fn render(&self, name: &str, help: &str, out: &mut String) {
        use std::fmt::Write;
        let _ = writeln!(out, "# HELP natter_{name} {help}");
        let _ = writeln!(out, "# TYPE natter_{name} histogram");
        let mut cumulative = 0;
        for (bound, bucket) in self.bounds.iter().zip(&self.buckets) {
            cumulative += bucket.load(Ordering::Relaxed);
            let _ = writeln!(out, "natter_{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "natter_{name}_bucket{{le=\"+Inf\"}} {count}");
        let sum = self.sum_milli.load(Ordering::Relaxed) as f64 / 1000.0;
        let _ = writeln!(out, "natter_{name}_sum {sum}");
        let _ = writeln!(out, "natter_{name}_count {count}");
    }
}

/// The counters at one moment.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Snapshot {
    pub clients_connected: u64,
    pub messages_received: u64,
    pub messages_sent: u64,
    pub messages_dropped: u64,
    pub retained_refused: u64,
    pub bytes_received: u64,
    pub bytes_sent: u64,
    pub media_bytes_uploaded: u64,
    pub cluster_sent: u64,
    pub cluster_received: u64,
    pub cluster_refused: u64,
    pub cluster_backfilled: u64,
}

impl Snapshot {
    /// Each counter with its Prometheus name, type and help text.
    pub fn metrics(&self) -> [(&'static str, &'static str, &'static str, u64); 12] {
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
                "Messages dropped (full queues, by count or bytes; expiry; size).",
                self.messages_dropped,
            ),
            (
                "retained_refused_total",
                "counter",
                "Retained messages not kept: the retained store was full (count or bytes).",
                self.retained_refused,
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
            (
                "media_bytes_uploaded_total",
                "counter",
                "Bytes of media uploaded.",
                self.media_bytes_uploaded,
            ),
            (
                "cluster_frames_sent_total",
                "counter",
                "Frames (messages, controls) sent to the other nodes over NATS.",
                self.cluster_sent,
            ),
            (
                "cluster_frames_received_total",
                "counter",
                "Frames taken from the other nodes over NATS.",
                self.cluster_received,
            ),
            (
                "cluster_frames_refused_total",
                "counter",
                "Frames NATS refused (its servers unreachable).",
                self.cluster_refused,
            ),
            (
                "cluster_backfilled_total",
                "counter",
                "Stored entries read back from the store for holes in a conversation.",
                self.cluster_backfilled,
            ),
        ]
    }
}
