//! The router's limits, read once from the configuration.

use std::time::Duration;

use super::mailbox::QueueBounds;
use crate::config::{ChatConfig, LimitsConfig, MqttConfig};
use crate::topics::TopicLimits;

/// The router's limits, from `[mqtt]`.
#[derive(Debug, Clone)]
pub struct Settings {
    pub max_inflight: u16,
    /// A session's queue beyond its in-flight window.
    pub queue: QueueBounds,
    /// The retained store: most messages, and most bytes ([`super::Message::size`]).
    pub max_retained: usize,
    pub max_retained_bytes: usize,
    pub max_session_expiry: u32,
    pub sys_interval: Option<Duration>,
    /// Live connections one user may have (0: no limit).
    pub max_connections_per_user: usize,
    /// Subscriptions one session may hold (0: no limit).
    pub max_subscriptions: usize,
    /// Whether recipients' acknowledgements become delivered receipts (`chat.delivery_receipts`).
    pub delivery_receipts: bool,
    /// How long a CONNECT may take (`mqtt.handshake_timeout_secs`), and so how long a kick is
    /// remembered for the CONNECTs whose credentials were checked before it.
    pub handshake_timeout: Duration,
    /// Caps on topic filters (`mqtt.max_topic_len`, `mqtt.max_topic_levels`).
    pub topics: TopicLimits,
}

impl Settings {
    pub fn from_config(m: &MqttConfig, limits: &LimitsConfig, chat: &ChatConfig) -> Settings {
        Settings {
            delivery_receipts: chat.delivery_receipts,
            max_connections_per_user: limits.max_connections_per_user,
            max_subscriptions: limits.max_subscriptions_per_connection,
            max_inflight: m.max_inflight,
            queue: QueueBounds::from_config(m),
            max_retained: m.max_retained,
            max_retained_bytes: m.max_retained_bytes,
            max_session_expiry: m.max_session_expiry_secs,
            sys_interval: (m.sys_interval_secs > 0)
                .then(|| Duration::from_secs(m.sys_interval_secs)),
            handshake_timeout: Duration::from_secs(m.handshake_timeout_secs),
            topics: TopicLimits {
                max_len: m.max_topic_len,
                max_levels: m.max_topic_levels,
            },
        }
    }
}
