//! `$SYS` statistics: every `sys_interval`, one retained QoS 0 message per [`SysTopic`].

use std::time::Instant;

use bytes::Bytes;
use rumqttc::v5::mqttbytes::QoS;

use super::{Message, Router};
use crate::topics::SysTopic;

impl Router {
    /// Publishes the `$SYS` statistics when they are due.
    pub(super) fn publish_sys_if_due(&mut self, now: Instant) {
        if let (Some(interval), Some(due)) = (self.settings.sys_interval, self.next_sys) {
            if now >= due {
                self.next_sys = Some(now + interval);
                self.publish_sys(now);
            }
        }
    }

    /// Publishes every `$SYS` topic, retained, at QoS 0.
    fn publish_sys(&mut self, now: Instant) {
        // The retained count must not include messages nobody will receive again.
        self.drop_expired_retained(now);
        let s = self.stats.snapshot();
        for topic in SysTopic::ALL {
            let value = match topic {
                SysTopic::Version => concat!("natter ", env!("CARGO_PKG_VERSION")).to_string(),
                SysTopic::Uptime => {
                    format!("{} seconds", now.duration_since(self.started).as_secs())
                }
                SysTopic::ClientsConnected => s.clients_connected.to_string(),
                SysTopic::ClientsTotal => self.sessions.len().to_string(),
                SysTopic::MessagesReceived => s.messages_received.to_string(),
                SysTopic::MessagesSent => s.messages_sent.to_string(),
                SysTopic::MessagesDropped => s.messages_dropped.to_string(),
                SysTopic::BytesReceived => s.bytes_received.to_string(),
                SysTopic::BytesSent => s.bytes_sent.to_string(),
                SysTopic::RetainedCount => self.retained.len().to_string(),
                SysTopic::SubscriptionsCount => self.subscriptions.len().to_string(),
            };
            self.publish(
                Message {
                    topic: Bytes::from_static(topic.as_str().as_bytes()),
                    payload: Bytes::from(value),
                    qos: QoS::AtMostOnce,
                    retain: true,
                    properties: None,
                    expires_at: None,
                    origin: None,
                    msgpack: None,
                    chat: None,
                },
                now,
            );
        }
    }
}
