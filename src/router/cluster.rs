//! The router's side of a cluster: what it hands to the other nodes ([`Forward`]), and what
//! it does with theirs.
//!
//! The router still does no I/O: it sends [`Forward`]s over channels to the cluster task
//! (`cluster`), which talks to NATS and the store and answers with [`Event::Remote`] and
//! [`Event::Backfill`]. What crosses:
//!
//! - every message published here but a member's stream copy (each node makes those from its own
//!   directory) and `$SYS` (each node's own), on the bounded [`Outgoing`] channel, never waited
//!   for: with the channel full it is dropped and counted, as NATS core would drop it;
//! - this node's interest: the first local subscription to a filter, and the last one gone,
//!   so the cluster task subscribes to the NATS subjects that carry it ([`Forward::Interest`]);
//! - holes in a conversation's `seq` ([`Forward::Gap`], see [`super::order`]).
//!
//! Shared groups take each message once cluster-wide: NATS queue groups pick the node, and
//! local matching leaves the groups out ([`super::Subscriptions::share_through_cluster`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use tokio::sync::mpsc;

use super::order::{Gap, Orders};
use super::{Delivery, Message, Router};
use crate::codec::min_qos;
use crate::stats::Stats;
use crate::topics;

/// What the router tells the cluster task.
#[derive(Debug)]
pub enum Forward {
    /// The first local subscription to `filter` (in shared `group`), or (`on: false`) the last
    /// one gone.
    Interest {
        group: Option<Arc<str>>,
        filter: Arc<str>,
        on: bool,
    },
    /// Entries of a conversation are missing here: ask again in a moment
    /// ([`Event::GapStill`]), and read them from the store if they still are.
    Gap(Gap),
    /// They still are: read them from the store now.
    Read(Gap),
    /// For every other node.
    Control(Control),
}

/// What one node tells all the others, beside messages.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Control {
    /// End every session of a user (removed, password changed).
    KickUser(Arc<str>),
    /// End one client's session (a revoked device, an admin's kick).
    KickClient(Arc<str>),
    /// The client connected to another node: its session here ends (DISCONNECT 0x8E).
    TakenOver(Arc<str>),
    /// Accounts or memberships changed: reload the directory now.
    Directory,
}

/// A message for the other nodes.
pub type Outgoing = Message;

/// How many outgoing messages may wait for the cluster task.
pub const OUTGOING_QUEUE: usize = 65_536;

/// A message's stream copies wait with it while its conversation has a hole before it.
type Entry = (Message, Vec<Bytes>);

/// The router's cluster state; `None` on a single node.
#[derive(Debug)]
pub(super) struct Link {
    outgoing: mpsc::Sender<Outgoing>,
    control: mpsc::UnboundedSender<Forward>,
    /// Local subscriptions per (group, filter): NATS interest follows the first and the last.
    interest: HashMap<(Option<Arc<str>>, Arc<str>), usize>,
    orders: Orders<Entry>,
}

impl Router {
    /// Makes this router one node of a cluster: published messages, interest and holes go to
    /// the cluster task over these channels.
    pub fn join_cluster(
        &mut self,
        outgoing: mpsc::Sender<Outgoing>,
        control: mpsc::UnboundedSender<Forward>,
    ) {
        self.subscriptions.share_through_cluster();
        self.cluster = Some(Link {
            outgoing,
            control,
            interest: HashMap::new(),
            orders: Orders::default(),
        });
    }

    /// Hands a message published here to the other nodes.
    pub(super) fn forward(&mut self, message: &Message) {
        let Some(link) = &self.cluster else {
            return;
        };
        if topics::is_sys(message.topic_str()) {
            return;
        }
        if link.outgoing.try_send(message.clone()).is_err() {
            Stats::add(&self.stats.messages_dropped, 1);
        }
    }

    /// Tells every other node (a kick, a takeover).
    pub(super) fn tell_cluster(&self, control: Control) {
        if let Some(link) = &self.cluster {
            let _ = link.control.send(Forward::Control(control));
        }
    }

    /// What another node told every node.
    pub(super) fn remote_control(&mut self, control: Control, now: Instant) {
        match control {
            Control::KickUser(user) => self.kick_user(user, now),
            Control::KickClient(client) => self.kick_client(client, now),
            Control::TakenOver(client) => self.taken_over_elsewhere(&client),
            // The cluster task reloads the directory itself.
            Control::Directory => {}
        }
    }

    /// A subscription entered (`on`) or left the index: the first and the last for a filter
    /// change what this node asks NATS for.
    pub(super) fn interest(&mut self, group: Option<&str>, filter: &str, on: bool) {
        let Some(link) = &mut self.cluster else {
            return;
        };
        let key = (group.map(Arc::from), Arc::from(filter));
        let count = link.interest.entry(key.clone()).or_default();
        let changed = if on {
            *count += 1;
            *count == 1
        } else {
            *count = count.saturating_sub(1);
            *count == 0
        };
        if *count == 0 {
            link.interest.remove(&key);
        }
        if changed {
            let (group, filter) = key;
            let _ = link.control.send(Forward::Interest { group, filter, on });
        }
    }

    /// A stored entry, from this node or another: delivered in its conversation's `seq` order.
    pub(super) fn ordered(&mut self, message: Message, copies: Vec<Bytes>, now: Instant) {
        let (Some(link), Some(chat)) = (&mut self.cluster, &message.chat) else {
            return self.route_with_copies(message, copies, now);
        };
        let chat = chat.clone();
        let mut ready = Vec::new();
        let gap = link
            .orders
            .admit(&chat.conv, chat.seq, (message, copies), now, &mut ready);
        if let Some(gap) = gap {
            let _ = link.control.send(Forward::Gap(gap));
        }
        for (message, copies) in ready {
            self.route_with_copies(message, copies, now);
        }
    }

    /// A message another node published. `share`: it came through shared group `share.0` on
    /// filter `share.1`, and goes to one local member of that group.
    pub(super) fn remote(
        &mut self,
        message: Message,
        share: Option<(Arc<str>, Arc<str>)>,
        now: Instant,
    ) {
        if let Some((group, filter)) = share {
            return self.deliver_shared(message, &group, &filter, now);
        }
        // Conversation traffic: each member's stream copy, from this node's directory.
        let copies = self.access.stream_copies_of(message.topic_str());
        self.ordered(message, copies, now);
    }

    /// Entries the store had for the hole before `before` in `conv`, oldest first: delivered
    /// where still missing, then the hole is closed.
    pub(super) fn backfill(
        &mut self,
        conv: &str,
        before: u64,
        messages: Vec<Message>,
        now: Instant,
    ) {
        for message in messages {
            let copies = self.access.stream_copies_of(message.topic_str());
            self.ordered(message, copies, now);
        }
        let Some(link) = &mut self.cluster else {
            return;
        };
        let mut ready = Vec::new();
        if let Some(gap) = link.orders.answered(conv, before, now, &mut ready) {
            let _ = link.control.send(Forward::Gap(gap));
        }
        for (message, copies) in ready {
            self.route_with_copies(message, copies, now);
        }
    }

    /// A moment after a hole was reported: the store is read if it is still open; else it is
    /// closed as if the store had answered (which reports a newer hole behind it, if any).
    pub(super) fn gap_still(&mut self, gap: Gap, now: Instant) {
        let Some(link) = &mut self.cluster else {
            return;
        };
        if link.orders.still_missing(&gap) {
            let _ = link.control.send(Forward::Read(gap));
            return;
        }
        self.backfill(&gap.conv, gap.before, Vec::new(), now);
    }

    /// Asks again about holes the store has not answered for.
    pub(super) fn cluster_tick(&mut self, now: Instant) {
        let Some(link) = &mut self.cluster else {
            return;
        };
        for gap in link.orders.tick(now) {
            let _ = link.control.send(Forward::Gap(gap));
        }
    }

    /// Delivers a message to the member of a shared group the group's turn picks.
    fn deliver_shared(&mut self, message: Message, group: &str, filter: &str, now: Instant) {
        let topic = message.topic_str();
        let receives = |client: &Arc<str>, o: &super::SubOptions| {
            let session = self.sessions.get(client)?;
            let refused = o.check_read && !self.access.can_read(&session.identity, topic);
            (!refused).then(|| session.is_connected())
        };
        let Some((client, options)) = self.subscriptions.pick_shared(group, filter, &receives)
        else {
            // The group's last member here left while the message was on its way.
            Stats::add(&self.stats.messages_dropped, 1);
            return;
        };
        let delivery = Delivery {
            qos: min_qos(message.qos, options.qos),
            message: Arc::new(message),
            retain: false,
            dup: false,
            pkid: 0,
            subscription_ids: options.id.into_iter().collect(),
        };
        self.deliver(&client, delivery, now);
    }
}
