//! The router: sessions, the subscription index, retained messages, wills and `$SYS` statistics.
//!
//! It is plain data behind one task. Connections send it [`Event`]s over one channel (so events
//! from one connection keep their order) and it answers through each connection's [`Mailbox`]
//! without ever waiting on a client. All decisions are made by [`Router`]'s methods, which take
//! the current time as an argument so tests drive them directly.
//!
//! Delivery is at min(publication QoS, subscription QoS); a session receiving through several
//! overlapping filters gets the message once, at the highest of those QoS, with every matching
//! subscription identifier. Each QoS 1/2 message sent towards a client is remembered with its
//! packet id until the client acknowledges it, which is where delivery receipts attach.
//!
//! The router does no I/O of its own: it never touches a socket or a file. What it decides
//! leaves through two one-way channels: the [`Mailbox`] of each connection (packets to write)
//! and the [`Report`] channel (deliveries and connections, for receipts and presence).
//!
//! # Flow
//!
//! ```text
//! connection ─► Event ─► task (a burst of events, then the wakes) ─► Router::handle
//!            ─► the method of the event's concept ─► session (in-flight window, queue)
//!            ─► Mailbox ─► connection
//! ```
//!
//! # Layout
//!
//! - `event`: [`Event`] and what rides on it; `message`: [`Message`] and [`Delivery`];
//!   `settings`: [`Settings`]; `report`: [`Report`]; `mailbox`: [`Mailbox`].
//! - `task`: [`spawn`] and the loop that feeds [`Router::handle`] and [`Router::tick`].
//! - `lifecycle`: CONNECT (new, resumed, taken over), connection end, session end;
//!   `kicks`: administrative disconnects and their memory.
//! - `fanout`: [`Router::publish`], from topic to each subscriber's session;
//!   `retained`: the retained store; `subscribe`: SUBSCRIBE and UNSUBSCRIBE.
//! - `acks`: acknowledgements and PUBREL; `wills`: [`Will`] and session expiry; `sys`: `$SYS`.
//! - `cluster`: what crosses to the other nodes of a cluster ([`Forward`]) and what comes
//!   from them; `order`: each conversation delivered in `seq` order there.
//! - `session`: one client's session; `subscriptions`: the subscription index (a trie).

mod acks;
mod cluster;
mod event;
mod fanout;
mod kicks;
mod lifecycle;
mod mailbox;
mod message;
mod order;
mod report;
mod retained;
mod session;
mod settings;
mod subscribe;
mod subscriptions;
mod sys;
mod task;
mod wills;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc;

pub use cluster::{Control, Forward, Outgoing, OUTGOING_QUEUE};
pub use event::{Ack, ClientInfo, ConnectRefused, ConnectRequest, Event};
pub use mailbox::{Mailbox, Outbound, QueueBounds};
pub use message::{ChatRef, Delivery, Message};
pub use order::Gap;
pub use report::Report;
pub use settings::Settings;
// Public for the fuzz target that checks the trie against `topics::matches` (fuzz/src/topics.rs).
pub use subscriptions::{SubOptions, Subscriptions};
pub use task::spawn;
pub use wills::Will;

use session::Session;

use crate::access::Access;
use crate::stats::Stats;

/// The router's state; its methods live in the files of their concepts (see the module doc).
pub struct Router {
    settings: Settings,
    access: Arc<Access>,
    stats: Arc<Stats>,
    /// Boxed: a session is some 280 bytes, and a table holding them inline keeps that much
    /// again in room for the sessions it may hold next.
    sessions: HashMap<Arc<str>, Box<Session>>,
    /// The client ids of each user's sessions, so a CONNECT counts the user's connections
    /// without a scan of every session.
    by_user: HashMap<Arc<str>, Vec<Arc<str>>>,
    /// When a full retained store may next be swept for expired messages.
    next_retained_sweep: Instant,
    subscriptions: Subscriptions,
    retained: retained::Retained,
    started: Instant,
    next_sys: Option<Instant>,
    /// Recent kicks (revoked devices, removed users), for `handshake_timeout`: a CONNECT that
    /// checked its credentials before a kick reaches the router only after it, and must not
    /// outlive the kick.
    kicked_users: HashMap<Arc<str>, Instant>,
    kicked_clients: HashMap<Arc<str>, Instant>,
    /// Deliveries and connections, for receipts and presence (see [`Report`]).
    reports: mpsc::UnboundedSender<Report>,
    /// What crosses to the other nodes of a cluster (see `cluster`); `None` on a single node.
    cluster: Option<cluster::Link>,
}

impl Router {
    /// A router with no sessions; `reports` receives its [`Report`]s.
    pub fn new(
        settings: Settings,
        access: Arc<Access>,
        stats: Arc<Stats>,
        reports: mpsc::UnboundedSender<Report>,
    ) -> Router {
        let now = Instant::now();
        Router {
            reports,
            next_sys: settings.sys_interval.map(|_| now),
            settings,
            access,
            stats,
            sessions: HashMap::new(),
            by_user: HashMap::new(),
            next_retained_sweep: Instant::now(),
            subscriptions: Subscriptions::default(),
            retained: retained::Retained::default(),
            started: now,
            kicked_users: HashMap::new(),
            kicked_clients: HashMap::new(),
            cluster: None,
        }
    }

    /// Applies one event.
    pub fn handle(&mut self, event: Event, now: Instant) {
        match event {
            Event::Connect(req, reply) => {
                // A connection that gave up waiting sends Closed (`edge::connect::Attached`).
                let _ = reply.send(self.connect(req, now));
            }
            Event::Publish {
                client,
                message,
                qos2_pkid,
                copies,
            } => self.client_publish(&client, message, qos2_pkid, copies, now),
            Event::ServerPublish(message) => self.publish(message, now),
            Event::ServerPublishTo { message, copies } => {
                self.publish_with_copies(message, copies, now)
            }
            Event::Remote { message, share } => self.remote(message, share, now),
            Event::GapStill(gap) => self.gap_still(gap, now),
            Event::Backfill {
                conv,
                before,
                messages,
            } => self.backfill(&conv, before, messages, now),
            Event::RemoteControl(control) => self.remote_control(control, now),
            Event::Kick { user } => {
                self.tell_cluster(Control::KickUser(user.clone()));
                self.kick_user(user, now)
            }
            Event::KickClient { client } => {
                self.tell_cluster(Control::KickClient(client.clone()));
                self.kick_client(client, now)
            }
            Event::ListClients(reply) => {
                let _ = reply.send(self.list_clients());
            }
            Event::Release {
                client,
                conn_id,
                pkid,
                answer,
            } => self.release(&client, conn_id, pkid, answer),
            Event::Subscribe {
                client,
                conn_id,
                packet,
            } => self.subscribe(&client, conn_id, packet, now),
            Event::Unsubscribe {
                client,
                conn_id,
                packet,
            } => self.unsubscribe(&client, conn_id, packet),
            Event::Acks {
                client,
                conn_id,
                acks,
            } => self.acks(&client, conn_id, &acks, now),
            Event::Closed {
                client,
                conn_id,
                publish_will,
                expiry_secs,
            } => self.closed(&client, conn_id, publish_will, expiry_secs, now),
        }
    }

    /// Time-driven work: delayed wills, expired sessions, `$SYS` statistics.
    pub fn tick(&mut self, now: Instant) {
        self.forget_old_kicks(now);
        self.expire_sessions(now);
        self.publish_sys_if_due(now);
        self.cluster_tick(now);
    }
}
