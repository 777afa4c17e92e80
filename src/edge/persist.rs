//! Store before acknowledge: chat messages go to the history writer, and only once committed
//! are they routed and acknowledged, in the order they came.

use bytes::Bytes;
use rumqttc::v5::mqttbytes::v5::Packet;
use rumqttc::v5::mqttbytes::QoS;

use super::connection::{Close, Connection};
use super::inflight::{Pending, Persist};
use crate::chat::envelope::{Envelope, Kind};
use crate::refusal::Refusal;
use crate::router::{Event, Message};
use crate::service::signals::Signal;
use crate::store::messages::{AppendError, Appended};

impl Connection {
    /// Acknowledges an inbound PUBLISH behind any that still wait for the store: MQTT requires
    /// acknowledgements in the order the messages came.
    pub(super) fn ack_in_order(&mut self, ack: Packet) {
        if self.inflight.is_empty() {
            self.queue(&ack);
        } else {
            self.inflight.push(Pending::Ready(Box::new(ack)));
        }
    }

    /// Hands new chat messages to the history writer, then, in arrival order, routes and
    /// acknowledges each one committed so far, stopping at the first still waiting: the
    /// connection goes on reading meanwhile (the next messages join the writer's next batch)
    /// and settles the rest when the writer answers (`Inflight::answered`). Nothing is
    /// acknowledged before its commit. A 3.1.1 client whose message could not be stored is
    /// then disconnected (see `settle_one`).
    pub(super) async fn settle(&mut self) -> Option<Close> {
        for p in self.inflight.persisting() {
            if let Some(new) = p.new.take() {
                p.reply = Some(self.shared.history.submit(new).await);
            }
        }
        let mut close = None;
        while let Some(p) = self.inflight.pop_answered() {
            let mut p = match p {
                Pending::Ready(ack) => {
                    self.queue(&ack);
                    continue;
                }
                Pending::Persist(p) => p,
            };
            let result = p.answer.take().unwrap_or(Err(AppendError::Stopped));
            if let Some(c) = self.settle_one(p, result) {
                close = Some(c);
            }
        }
        close
    }

    /// Settles every queued message, waiting for the writer: the connection is closing, and
    /// what it sent is routed (and acknowledged, if the socket still takes it) first.
    pub(super) async fn settle_all(&mut self) -> Option<Close> {
        let mut close = None;
        loop {
            if let Some(c) = self.settle().await {
                close = Some(c);
            }
            if self.inflight.is_empty() {
                return close;
            }
            self.inflight.answered().await;
        }
    }

    /// Routes and acknowledges one message the writer answered for, or refuses it.
    fn settle_one(
        &mut self,
        p: Box<Persist>,
        result: Result<Appended, AppendError>,
    ) -> Option<Close> {
        match result {
            Ok(appended) => {
                // Committed: what the entry grants (presence between two users who now have a
                // direct conversation) holds before the sender hears "sent".
                self.shared.access.entry_committed(&appended.envelope.conv);
                let waited = p.arrived.elapsed().as_secs_f64() * 1000.0;
                self.shared.stats.puback_ms.observe(waited);
                if !appended.duplicate {
                    self.route_stored(&appended.envelope, p.topic, p.qos, p.pkid, p.copies);
                }
                if let Some(ack) = p.ack {
                    self.queue(&ack);
                }
                None
            }
            Err(AppendError::Refused(reason)) => {
                self.refuse(&p.topic, p.qos, p.pkid, &Refusal::Refused(reason))
            }
            Err(e) => {
                // Not stored (the writer retried up to its bound): the sender must not think
                // it was. 5.0 learns it from the reason code and resends; 3.1.1 has no
                // negative acknowledgement, so it is disconnected and resends the message,
                // still unacknowledged, after reconnecting.
                tracing::error!(client = %self.identity.client_id, error = %e, "message not stored");
                self.refuse(&p.topic, p.qos, p.pkid, &Refusal::StorageFailed)
            }
        }
    }

    /// Publishes a stored message: the envelope replaces what the client sent.
    fn route_stored(
        &mut self,
        envelope: &Envelope,
        topic: Bytes,
        qos: QoS,
        pkid: u16,
        copies: Vec<Bytes>,
    ) {
        let origin = Some(self.identity.client_id.clone());
        let message = Message::stored(envelope, topic, qos, origin);
        if envelope.k == Kind::Msg {
            let _ = self.shared.signals.send(Signal::Stored {
                conv: envelope.conv.clone(),
                from: envelope.from.clone(),
            });
        }
        self.events.push_back(Event::Publish {
            client: self.identity.client_id.clone(),
            message,
            // A QoS 2 resend is caught by the store; the router holds the id only so that a
            // PUBREL after a reconnect finds it.
            qos2_pkid: (qos == QoS::ExactlyOnce).then_some(pkid),
            copies,
        });
    }
}
