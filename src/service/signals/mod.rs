//! Receipts and presence: what the server derives from acknowledgements and connections.
//!
//! - *Delivered*: the router reports each recipient device's PUBACK (PUBCOMP) for a stored
//!   message; receipts are batched per conversation and user (one event per
//!   `receipt_interval`), monotonic, stored, and published on `c/{conv}/r` (so on every member's
//!   `u/{member}/c/{conv}/r`).
//! - *Read*: a client publishes `{"read": SEQ}` (optionally `"private": true`) on `c/{conv}/r`;
//!   public markers go to all members, private ones only to the reader's own devices.
//! - *Presence*: the router reports devices connecting and leaving; `p/{user}` (retained) says
//!   `online` while any device is connected, the user's chosen `away`, or `offline` with
//!   `last_seen` once the last device has been gone for the grace period (so a phone's quick
//!   reconnect does not flap). Hidden users' presence is cleared.
//! - *Push*: members with no connected device when a message is stored get one content-free
//!   notification per `push_coalesce` (see [`super::push`]).
//!
//! One task owns all this state ([`Signals::run`]); its parts live in `receipts`, `presence`
//! and `pushes`, timed by `clock`.

mod clock;
mod presence;
mod pushes;
mod receipts;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// How often a cluster node says it is alive and looks for nodes that are not.
const ROSTER_INTERVAL: Duration = Duration::from_secs(1);

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use self::clock::Clock;
use self::presence::Presence;
use self::pushes::PendingPush;
use super::push::Pusher;
use crate::chat::Directory;
use crate::router::{Event, Message, Report};
use crate::store::Store;

/// What the edge and the request service report (the router's own reports are [`Report`]s).
#[derive(Debug)]
pub enum Signal {
    /// A read marker from a client.
    Read {
        user: Arc<str>,
        conv: String,
        seq: u64,
        private: bool,
    },
    /// A message was stored: members with no connected device get a push notification.
    Stored { conv: String, from: String },
    /// A user sets their status (`online` or `away`) and whether presence is hidden.
    Status {
        user: Arc<str>,
        away: bool,
        hidden: bool,
    },
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub grace: Duration,
    pub receipt_interval: Duration,
    /// How long new messages for an offline user gather before one push goes out.
    pub push_coalesce: Duration,
    /// In a cluster: this node's name and how long a silent node lives (presence then counts
    /// every node's devices through the store's roster).
    pub cluster: Option<(Arc<str>, Duration)>,
}

pub struct Signals {
    settings: Settings,
    store: Arc<dyn Store>,
    directory: Arc<RwLock<Directory>>,
    router: mpsc::Sender<Event>,
    /// (conv, user) → highest delivered seq not yet announced.
    delivered: HashMap<(String, Arc<str>), u64>,
    presence: HashMap<Arc<str>, Presence>,
    pusher: Arc<Pusher>,
    pushes: HashMap<String, PendingPush>,
    clock: Clock,
}

impl Signals {
    pub fn new(
        settings: Settings,
        store: Arc<dyn Store>,
        directory: Arc<RwLock<Directory>>,
        router: mpsc::Sender<Event>,
        pusher: Arc<Pusher>,
    ) -> Signals {
        Signals {
            settings,
            store,
            directory,
            router,
            delivered: HashMap::new(),
            presence: HashMap::new(),
            pusher,
            pushes: HashMap::new(),
            clock: Clock::System,
        }
    }

    /// Runs until shutdown, or until the router and every other sender are gone.
    pub async fn run(
        mut self,
        mut reports: mpsc::UnboundedReceiver<Report>,
        mut rx: mpsc::UnboundedReceiver<Signal>,
        shutdown: CancellationToken,
    ) {
        let mut receipts = tokio::time::interval(self.settings.receipt_interval);
        let mut presence = tokio::time::interval(Duration::from_millis(250));
        let mut roster = tokio::time::interval(ROSTER_INTERVAL);
        self.join_roster().await;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                report = reports.recv() => match report {
                    Some(r) => self.on_report(r).await,
                    None => break,
                },
                Some(signal) = rx.recv() => self.handle(signal).await,
                _ = receipts.tick() => self.flush_receipts().await,
                _ = presence.tick() => {
                    self.expire_presence().await;
                    self.flush_pushes().await;
                }
                _ = roster.tick() => self.keep_roster().await,
            }
        }
        self.flush_receipts().await;
    }

    /// Takes in one of the router's reports.
    async fn on_report(&mut self, report: Report) {
        match report {
            Report::Delivered { user, conv, seq } => self.delivered(conv, user, seq),
            Report::Online { user, client } => self.device_online(user, client).await,
            Report::Offline { user, client } => self.device_offline(&user, &client).await,
        }
    }

    /// Takes in one signal from the edge or the request service.
    async fn handle(&mut self, signal: Signal) {
        match signal {
            Signal::Read {
                user,
                conv,
                seq,
                private,
            } => self.read(user, conv, seq, private).await,
            Signal::Stored { conv, from } => self.stored(&conv, &from),
            Signal::Status { user, away, hidden } => self.status(user, away, hidden).await,
        }
    }

    /// The members of `conv`, from the shared directory.
    fn members(&self, conv: &str) -> Vec<String> {
        self.directory
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .members(conv)
            .iter()
            .map(|m| m.to_string())
            .collect()
    }

    /// Publishes a server message through the router.
    pub(super) async fn send(&self, message: Message) {
        let _ = self.router.send(Event::ServerPublish(message)).await;
    }
}
