//! Inbound QoS 1 and 2 PUBLISHes not yet answered: the store-before-ack queue (chat messages
//! waiting for the history writer, and the acknowledgements queued behind them) and the QoS 2
//! packet ids not yet released. Together they count against the Receive Maximum.

use std::collections::{HashSet, VecDeque};
use std::time::Instant;

use bytes::Bytes;
use rumqttc::v5::mqttbytes::v5::Packet;
use rumqttc::v5::mqttbytes::QoS;
use tokio::sync::oneshot;

use crate::codec::Version;
use crate::store::messages::{AppendError, Appended, NewMessage};

/// An inbound PUBLISH waiting for the store (or an acknowledgement queued behind one).
pub(super) enum Pending {
    Ready(Box<Packet>),
    Persist(Box<Persist>),
}

impl Pending {
    /// A QoS 1 PUBLISH not yet acknowledged (it counts against the Receive Maximum).
    fn is_qos1(&self) -> bool {
        match self {
            Pending::Persist(p) => p.qos == QoS::AtLeastOnce,
            Pending::Ready(ack) => matches!(**ack, Packet::PubAck(_)),
        }
    }
}

/// A chat message on its way to the store, and what routing and acknowledging it then needs.
pub(super) struct Persist {
    /// Taken when handed to the writer.
    pub(super) new: Option<NewMessage>,
    pub(super) reply: Option<oneshot::Receiver<Result<Appended, AppendError>>>,
    /// The writer's answer, once it came.
    pub(super) answer: Option<Result<Appended, AppendError>>,
    pub(super) topic: Bytes,
    pub(super) qos: QoS,
    pub(super) pkid: u16,
    pub(super) copies: Vec<Bytes>,
    pub(super) ack: Option<Packet>,
    pub(super) arrived: Instant,
}

/// One connection's unanswered inbound PUBLISHes.
#[derive(Default)]
pub(super) struct Inflight {
    /// Inbound messages waiting for the store, and acknowledgements queued behind them.
    pending: VecDeque<Pending>,
    /// How many of them are QoS 1 (kept with `pending` by `push` and `pop`).
    pending_qos1: usize,
    /// QoS 2 packet ids received and not yet released (Receive Maximum accounting).
    pending_qos2: HashSet<u16>,
}

impl Inflight {
    /// Whether nothing waits for the store.
    pub(super) fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Queues a message for the store, or an acknowledgement behind those queued.
    pub(super) fn push(&mut self, p: Pending) {
        self.pending_qos1 += usize::from(p.is_qos1());
        self.pending.push_back(p);
    }

    /// How many inbound PUBLISHes wait (for the store, or for their turn to be acknowledged).
    pub(super) fn len(&self) -> usize {
        self.pending.len()
    }

    /// Takes the oldest queued entry if it can be settled now: an acknowledgement, or a message
    /// the writer has answered for (its answer in `answer`). Messages settle in arrival order.
    pub(super) fn pop_answered(&mut self) -> Option<Pending> {
        if let Some(Pending::Persist(p)) = self.pending.front_mut() {
            if p.answer.is_none() {
                let rx = p.reply.as_mut()?;
                p.answer = Some(match rx.try_recv() {
                    Ok(answer) => answer,
                    Err(oneshot::error::TryRecvError::Empty) => return None,
                    Err(oneshot::error::TryRecvError::Closed) => Err(AppendError::Stopped),
                });
                p.reply = None;
            }
        }
        let p = self.pending.pop_front()?;
        self.pending_qos1 -= usize::from(p.is_qos1());
        Some(p)
    }

    /// Whether the oldest queued message waits for the writer's answer.
    pub(super) fn awaiting(&self) -> bool {
        matches!(self.pending.front(), Some(Pending::Persist(p)) if p.reply.is_some())
    }

    /// Resolves once the writer answered for the oldest queued message (see [`Self::awaiting`]).
    /// Cancel safe: the answer is kept in the entry.
    pub(super) async fn answered(&mut self) {
        let Some(Pending::Persist(p)) = self.pending.front_mut() else {
            return;
        };
        let Some(rx) = p.reply.as_mut() else {
            return;
        };
        p.answer = Some(rx.await.unwrap_or(Err(AppendError::Stopped)));
        p.reply = None;
    }

    /// The queued messages, to hand them to the writer.
    pub(super) fn persisting(&mut self) -> impl Iterator<Item = &mut Persist> {
        self.pending.iter_mut().filter_map(|p| match p {
            Pending::Persist(p) => Some(&mut **p),
            Pending::Ready(_) => None,
        })
    }

    /// Holds a QoS 2 packet id until its PUBREL.
    pub(super) fn hold_qos2(&mut self, pkid: u16) {
        self.pending_qos2.insert(pkid);
    }

    /// Lets a QoS 2 packet id go; `true` if it was held.
    pub(super) fn release_qos2(&mut self, pkid: u16) -> bool {
        self.pending_qos2.remove(&pkid)
    }

    /// Whether a new QoS 1/2 PUBLISH would exceed the Receive Maximum we advertised (`max`).
    /// 5.0 counts every QoS 1 and 2 PUBLISH not yet answered by PUBACK or PUBCOMP (§3.3.4):
    /// QoS 2 until its PUBREL, QoS 1 while its PUBACK waits (behind a store commit). 3.1.1 has
    /// no Receive Maximum: only its unreleased QoS 2 ids are bounded, and QoS 1 messages simply
    /// wait.
    pub(super) fn over_receive_maximum(
        &self,
        qos: QoS,
        pkid: u16,
        version: Version,
        max: u16,
    ) -> bool {
        let max = usize::from(max);
        match qos {
            QoS::AtMostOnce => false,
            // A resent QoS 2 message is still the same one.
            QoS::ExactlyOnce if self.pending_qos2.contains(&pkid) => false,
            QoS::ExactlyOnce if version == Version::V4 => self.pending_qos2.len() >= max,
            QoS::AtLeastOnce if version == Version::V4 => false,
            _ => self.pending_qos2.len() + self.pending_qos1 >= max,
        }
    }
}
