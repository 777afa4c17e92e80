//! What a refused PUBLISH tells the client: the `u/{user}/errors` event, and the
//! acknowledgement's reason code where the protocol version has one. The one place that turns
//! a refusal into what the client sees.

use bytes::Bytes;
use rumqttc::v5::mqttbytes::v5::{
    DisconnectReasonCode, Packet, PubAck, PubAckReason, PubRec, PubRecReason,
};
use rumqttc::v5::mqttbytes::QoS;

use super::connection::{Close, Connection};
use crate::codec::Version;
use crate::refusal::{Refusal, V311};
use crate::router::{Event, Message};
use crate::topics;

impl Connection {
    /// Tells a logged-in user why a message was refused, on `u/{user}/errors`: the only way a
    /// 3.1.1 client can learn it, and a readable reason for 5.0 clients too.
    pub(super) fn report_refusal(&mut self, topic: &str, code: &str, message: &str) {
        let Some(user) = &self.identity.user else {
            return;
        };
        let body = serde_json::json!({
            "error": code,
            "message": message,
            "topic": topic,
            "client": &*self.identity.client_id,
        });
        self.events.push_back(Event::ServerPublish(Message::server(
            topics::user_errors(user),
            body.to_string(),
        )));
    }

    /// Forgets an accepted PUBLISH that is refused after all (its QoS 2 id is no longer
    /// held) and reports why (`report_refusal`); `refuse_publish` answers it.
    pub(super) fn forget_refused(&mut self, topic: &Bytes, pkid: u16, code: &str, message: &str) {
        self.inflight.release_qos2(pkid);
        let topic = String::from_utf8_lossy(topic).into_owned();
        self.report_refusal(&topic, code, message);
    }

    /// Refuses an accepted PUBLISH after all (see `forget_refused`), as the refusal table says:
    /// its code and text on `u/{user}/errors`, its reason code for 5.0, and for 3.1.1 either a
    /// normal acknowledgement or, when the message could not be stored, a disconnect.
    pub(super) fn refuse(
        &mut self,
        topic: &Bytes,
        qos: QoS,
        pkid: u16,
        refusal: &Refusal,
    ) -> Option<Close> {
        self.forget_refused(topic, pkid, refusal.code(), &refusal.to_string());
        match refusal.mqtt() {
            (_, V311::Disconnect) if self.version == Version::V4 => {
                Some(Close::Server(DisconnectReasonCode::UnspecifiedError))
            }
            (reason, _) => self.refuse_publish(qos, pkid, reason),
        }
    }

    /// Refuses one PUBLISH: 5.0 learns why from the acknowledgement's reason code; 3.1.1 has no
    /// negative acknowledgement, so it gets a normal one and the message is dropped (as mosquitto
    /// does), rather than a disconnect it would answer by reconnecting in a loop.
    pub(super) fn refuse_publish(
        &mut self,
        qos: QoS,
        pkid: u16,
        reason: PubAckReason,
    ) -> Option<Close> {
        let v5 = self.version == Version::V5;
        match qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => {
                let mut ack = PubAck::new(pkid, None);
                if v5 {
                    ack.reason = reason;
                }
                self.ack_in_order(Packet::PubAck(ack));
            }
            QoS::ExactlyOnce => {
                let mut rec = PubRec::new(pkid, None);
                if v5 {
                    rec.reason = pubrec_reason(reason);
                }
                self.ack_in_order(Packet::PubRec(rec));
            }
        }
        None
    }
}

/// The PUBREC reason code for a PUBACK one.
fn pubrec_reason(reason: PubAckReason) -> PubRecReason {
    match reason {
        PubAckReason::NotAuthorized => PubRecReason::NotAuthorized,
        PubAckReason::TopicNameInvalid => PubRecReason::TopicNameInvalid,
        PubAckReason::PayloadFormatInvalid => PubRecReason::PayloadFormatInvalid,
        PubAckReason::QuotaExceeded => PubRecReason::QuotaExceeded,
        PubAckReason::ImplementationSpecificError => PubRecReason::ImplementationSpecificError,
        _ => PubRecReason::UnspecifiedError,
    }
}
