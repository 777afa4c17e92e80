//! A cluster of natter nodes: PostgreSQL holds the truth (history, `seq`, accounts,
//! memberships), NATS carries live traffic between the nodes, and this task is one node's link
//! to NATS.
//!
//! The router decides what crosses ([`crate::router::Forward`], and messages on a bounded
//! channel) and this task moves it: out to NATS, and what the other nodes send in to the router
//! as [`Event::Remote`] / [`Event::RemoteControl`]. Subjects (built in [`crate::topics`]):
//!
//! - `natter.c.{conv}.{kind}`: conversation traffic. Every node takes all of it and makes the
//!   members' stream copies from its own directory; stored entries carry their `seq`, and the
//!   router delivers them in order ([`crate::router::Gap`] holes are filled from the store
//!   here, so a message NATS loses is still delivered).
//! - `natter.t.{levels}`: plain topics. A node subscribes only to the subjects of its local
//!   subscriptions, so NATS carries a message only to the nodes with interest; a shared group
//!   subscribes as a NATS queue group, so one node (and there one member) takes each message.
//! - `natter.r`: retained messages, to every node (each keeps its own retained store). The
//!   node that took one also writes it to the store, where a node starting later reads it.
//! - `natter.ctl`: [`Control`]s — kicks, takeovers, directory changes.
//!
//! NATS core is at most once: a frame lost with a NATS server costs a plain message its
//! cross-node delivery, while a stored entry is found again in the store.

mod wire;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use rumqttc::v5::mqttbytes::QoS;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::ClusterConfig;
use crate::router::{Control, Event, Forward, Gap, Message, Outgoing};
use crate::service::requests::ChatService;
use crate::stats::Stats;
use crate::store::{RetainedRecord, Store};
use crate::token_cache::TokenCache;
use crate::topics::{self, ChatTopic, ConvKind};
use wire::{Body, Frame, Wired};

/// How long a hole waits for the late entry (from NATS, or from another connection of this
/// node) before the store is read for it.
const GAP_WAIT: Duration = Duration::from_millis(50);
/// How far back a node that begins to follow a conversation looks for entries still on their
/// way to it (NATS delivers within milliseconds; this leaves room for a busy node).
const RECENT: Duration = Duration::from_secs(2);
/// Most entries read from the store per page of a backfill.
const BACKFILL_PAGE: usize = 500;
/// Longest subject sent: NATS refuses a control line beyond 4 KiB (and drops the connection).
const MAX_SUBJECT: usize = 3072;

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cluster.nats_url: {0}")]
    Url(String),
    #[error("NATS: {0}")]
    Nats(String),
    #[error("cannot connect to NATS ({urls}): {source}")]
    Connect {
        urls: String,
        source: async_nats::ConnectError,
    },
}

/// One node's connection to the cluster's NATS servers.
pub struct Cluster {
    client: async_nats::Client,
    node: Arc<str>,
    /// The subjects every node takes, subscribed before the node serves anyone.
    fixed: Vec<async_nats::Subscriber>,
    stats: Arc<Stats>,
    /// The second (since `started`) a refused frame was last logged: once a second at most,
    /// so an outage does not log once per message.
    refused_logged: AtomicU64,
    started: Instant,
}

/// A retained message to store: its topic, and its record (`None` clears the topic).
type RetainedWrite = (String, Option<RetainedRecord>);

/// A local subscription's (shared group, filter): what the node follows NATS subjects for.
type Interest = (Option<Arc<str>>, Arc<str>);

/// Where inbound frames go.
#[derive(Clone)]
struct Sinks {
    node: Arc<str>,
    router: mpsc::Sender<Event>,
    chat: Arc<ChatService>,
    /// Forgotten when another node revokes a device or changes a password (its kick).
    tokens: Arc<TokenCache>,
    stats: Arc<Stats>,
}

impl Cluster {
    /// Connects to NATS (any of the configured servers; the client reconnects by itself later);
    /// what crosses is counted in `stats`.
    pub async fn connect(
        config: &ClusterConfig,
        stats: Arc<Stats>,
    ) -> Result<Cluster, ClusterError> {
        let mut addrs = Vec::new();
        for url in config.nats_urls() {
            let addr: async_nats::ServerAddr = url
                .parse()
                .map_err(|e| ClusterError::Url(format!("{url}: {e}")))?;
            addrs.push(addr);
        }
        let node: Arc<str> = config.node_id.as_str().into();
        let client = async_nats::ConnectOptions::new()
            .name(format!("natter-{node}"))
            .connection_timeout(Duration::from_secs(5))
            .max_reconnects(None)
            .event_callback(|event| async move {
                match event {
                    async_nats::Event::Connected => tracing::info!("NATS connected"),
                    async_nats::Event::Disconnected => tracing::warn!("NATS disconnected"),
                    other => tracing::warn!(event = %other, "NATS"),
                }
            })
            .connect(addrs)
            .await
            .map_err(|source| ClusterError::Connect {
                urls: config.nats_url.clone(),
                source,
            })?;
        let mut fixed = Vec::new();
        for subject in [
            topics::nats_all_convs(),
            topics::nats_retained(),
            topics::nats_control(),
        ] {
            fixed.push(
                client
                    .subscribe(subject)
                    .await
                    .map_err(|e| ClusterError::Nats(e.to_string()))?,
            );
        }
        // The server has the subscriptions once it has answered a ping sent after them.
        client
            .flush()
            .await
            .map_err(|e| ClusterError::Nats(e.to_string()))?;
        tracing::info!(node = %node, "joined the cluster");
        Ok(Cluster {
            client,
            node,
            fixed,
            stats,
            refused_logged: AtomicU64::new(0),
            started: Instant::now(),
        })
    }

    /// The retained messages in the store, for the router before the node serves anyone.
    pub async fn retained(&self, store: &Arc<dyn Store>) -> Vec<Message> {
        let s = store.clone();
        let records = match tokio::task::spawn_blocking(move || s.retained()).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "cannot read the retained messages");
                return Vec::new();
            }
            Err(_) => return Vec::new(),
        };
        let now = Instant::now();
        records
            .iter()
            .filter_map(|(record, expires_at_ms)| {
                wire::from_retained_record(record, *expires_at_ms, now)
            })
            .collect()
    }

    /// Runs this node's side of the cluster until shutdown: what the router forwards goes out,
    /// what the other nodes send comes in.
    pub fn start(
        self,
        outgoing: mpsc::Receiver<Outgoing>,
        control: mpsc::UnboundedReceiver<Forward>,
        (router, chat, tokens): (mpsc::Sender<Event>, Arc<ChatService>, Arc<TokenCache>),
        store: Arc<dyn Store>,
        shutdown: CancellationToken,
    ) -> JoinHandle<()> {
        let sinks = Sinks {
            node: self.node.clone(),
            router,
            chat,
            tokens,
            stats: self.stats.clone(),
        };
        tokio::spawn(self.run(outgoing, control, sinks, store, shutdown))
    }

    async fn run(
        mut self,
        mut outgoing: mpsc::Receiver<Outgoing>,
        mut control: mpsc::UnboundedReceiver<Forward>,
        sinks: Sinks,
        store: Arc<dyn Store>,
        shutdown: CancellationToken,
    ) {
        let retained = self.spawn_retained_writer(store.clone());
        let mut followed: Vec<JoinHandle<()>> = std::mem::take(&mut self.fixed)
            .into_iter()
            .map(|s| forward_frames(s, None, sinks.clone()))
            .collect();
        let mut interest: HashMap<Interest, Vec<JoinHandle<()>>> = HashMap::new();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                Some(message) = outgoing.recv() => {
                    if message.retain {
                        // An empty retained message clears the topic.
                        let record = (!message.payload.is_empty())
                            .then(|| wire::retained_record(&message, Instant::now()));
                        let _ = retained.send((message.topic_str().to_string(), record));
                    }
                    self.send_message(&message).await
                }
                Some(forward) = control.recv() => match forward {
                    Forward::Interest { group, filter, on } => {
                        let key = (group.clone(), filter.clone());
                        for task in interest.remove(&key).unwrap_or_default() {
                            task.abort();
                        }
                        if on {
                            interest.insert(key, self.follow_filter(group, filter, &sinks));
                        }
                    }
                    Forward::Gap(gap) => {
                        // Most holes are entries merely late: the router looks again first.
                        let router = sinks.router.clone();
                        tokio::spawn(async move {
                            tokio::time::sleep(GAP_WAIT).await;
                            let _ = router.send(Event::GapStill(gap)).await;
                        });
                    }
                    Forward::Read(gap) => {
                        let (store, sinks) = (store.clone(), sinks.clone());
                        tokio::spawn(backfill(gap, store, sinks));
                    }
                    Forward::Control(c) => self.send(topics::nats_control(), Body::Control(c)).await,
                },
                else => break,
            }
        }
        followed.extend(interest.into_values().flatten());
        for task in followed {
            task.abort();
        }
        let _ = self.client.flush().await;
    }

    /// Sends a message published here on its subject.
    async fn send_message(&self, message: &Message) {
        let subject = match topics::classify(message.topic_str()) {
            Some(ChatTopic::Conv { conv, kind }) => topics::nats_conv_subject(conv, kind),
            _ if message.retain => topics::nats_retained(),
            _ => topics::nats_topic_subject(message.topic_str()),
        };
        let body = Body::Message(Box::new(Wired::from_message(message, Instant::now())));
        self.send(subject, body).await;
    }

    async fn send(&self, subject: String, body: Body) {
        if subject.len() > MAX_SUBJECT {
            tracing::warn!(
                len = subject.len(),
                "topic too long to cross nodes; not forwarded"
            );
            return;
        }
        let frame = Frame {
            node: self.node.clone(),
            body,
        };
        let bytes = match frame.encode() {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, "cannot encode a frame for NATS");
                return;
            }
        };
        match self.client.publish(subject, bytes.into()).await {
            Ok(()) => Stats::add(&self.stats.cluster_sent, 1),
            Err(e) => self.refused(&e),
        }
    }

    /// Counts a frame NATS refused; logs the count at most once a second.
    fn refused(&self, e: &dyn std::fmt::Display) {
        Stats::add(&self.stats.cluster_refused, 1);
        let refused = Stats::get(&self.stats.cluster_refused);
        let now = self.started.elapsed().as_secs() + 1;
        if self.refused_logged.swap(now, Ordering::Relaxed) != now {
            tracing::warn!(error = %e, refused, "cannot publish to NATS (frames refused so far)");
        }
    }

    /// Subscribes to the subjects of a local filter (a queue group for a shared one).
    fn follow_filter(
        &self,
        group: Option<Arc<str>>,
        filter: Arc<str>,
        sinks: &Sinks,
    ) -> Vec<JoinHandle<()>> {
        let share = group.map(|g| (g, filter.clone()));
        topics::nats_filter_subjects(&filter)
            .into_iter()
            .map(|subject| self.follow(subject, share.clone(), sinks.clone()))
            .collect()
    }

    /// A task that takes one subject's frames to their sinks until aborted; dropping its NATS
    /// subscription unsubscribes.
    fn follow(
        &self,
        subject: String,
        share: Option<(Arc<str>, Arc<str>)>,
        sinks: Sinks,
    ) -> JoinHandle<()> {
        let client = self.client.clone();
        tokio::spawn(async move {
            let subscribed = match &share {
                Some((group, filter)) => {
                    client
                        .queue_subscribe(subject.clone(), queue_group(group, filter))
                        .await
                }
                None => client.subscribe(subject.clone()).await,
            };
            match subscribed {
                Ok(s) => forward(s, share, sinks).await,
                Err(e) => tracing::error!(subject, error = %e, "cannot subscribe on NATS"),
            }
        })
    }
}

/// A task that takes a subscription's frames to their sinks until aborted.
fn forward_frames(
    subscriber: async_nats::Subscriber,
    share: Option<(Arc<str>, Arc<str>)>,
    sinks: Sinks,
) -> JoinHandle<()> {
    tokio::spawn(forward(subscriber, share, sinks))
}

/// Takes a subscription's frames to their sinks until the router is gone; dropping the
/// subscription unsubscribes.
async fn forward(
    mut subscriber: async_nats::Subscriber,
    share: Option<(Arc<str>, Arc<str>)>,
    sinks: Sinks,
) {
    while let Some(m) = subscriber.next().await {
        if !sinks.take(&m.payload, share.clone()).await {
            return;
        }
    }
}

impl Sinks {
    /// Hands one frame on; `false` once the router is gone.
    async fn take(&self, bytes: &[u8], share: Option<(Arc<str>, Arc<str>)>) -> bool {
        let frame = match Frame::decode(bytes) {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(error = %e, "undecodable frame on NATS; dropped");
                return true;
            }
        };
        // A node's own frames come back to it; it has routed them already, but for a shared
        // group, where NATS picks the node, this one included.
        if frame.node == self.node && share.is_none() {
            return true;
        }
        Stats::add(&self.stats.cluster_received, 1);
        let event = match frame.body {
            Body::Message(w) => match w.into_message(Instant::now()) {
                Some(message) => Event::Remote { message, share },
                None => {
                    tracing::warn!(node = %frame.node, "malformed message on NATS; dropped");
                    return true;
                }
            },
            Body::Control(Control::Directory) => {
                self.chat.reload_soon();
                return true;
            }
            Body::Control(c) => {
                if matches!(c, Control::KickUser(_) | Control::KickClient(_)) {
                    // Tokens confirmed here may have died with it.
                    self.tokens.forget_all();
                }
                Event::RemoteControl(c)
            }
        };
        self.router.send(event).await.is_ok()
    }
}

impl Cluster {
    /// A task that writes the retained messages published here to the store, one after the
    /// other (so the last one set on a topic here is the one kept).
    fn spawn_retained_writer(&self, store: Arc<dyn Store>) -> mpsc::UnboundedSender<RetainedWrite> {
        let (tx, mut rx) = mpsc::unbounded_channel::<RetainedWrite>();
        tokio::spawn(async move {
            while let Some((topic, record)) = rx.recv().await {
                let store = store.clone();
                let written = tokio::task::spawn_blocking(move || match &record {
                    Some((bytes, expires_at_ms)) => {
                        store.set_retained(&topic, Some(bytes), *expires_at_ms)
                    }
                    None => store.set_retained(&topic, None, None),
                })
                .await;
                if let Ok(Err(e)) = written {
                    tracing::warn!(error = %e, "cannot store a retained message");
                }
            }
        });
        tx
    }
}

/// Reads a conversation's missing entries from the store and hands them to the router, which
/// delivers those still missing and closes the hole.
async fn backfill(gap: Gap, store: Arc<dyn Store>, sinks: Sinks) {
    let (conv, before) = (gap.conv.clone(), gap.before);
    let read = tokio::task::spawn_blocking(move || {
        if gap.first {
            return recent_before(store.as_ref(), &gap.conv, gap.before);
        }
        let mut items = Vec::new();
        let mut after = gap.after;
        while after + 1 < gap.before {
            let page = store.after(&gap.conv, after, BACKFILL_PAGE)?;
            let Some(last) = page.items.last() else { break };
            after = last.envelope.seq;
            let more = page.more;
            items.extend(
                page.items
                    .into_iter()
                    .filter(|i| i.envelope.seq < gap.before),
            );
            if !more {
                break;
            }
        }
        Ok::<_, crate::store::StoreError>(items)
    })
    .await;
    let items = match read {
        Ok(Ok(items)) => items,
        Ok(Err(e)) => {
            // The router asks again.
            tracing::warn!(conv, error = %e, "cannot read missing entries");
            return;
        }
        Err(_) => return,
    };
    let messages = items
        .iter()
        .map(|i| {
            let e = &i.envelope;
            let kind = match e.k {
                crate::chat::envelope::Kind::Msg => ConvKind::Messages,
                _ => ConvKind::Events,
            };
            let topic = topics::conv_topic(&e.conv, kind);
            Message::stored(e, topic.into(), QoS::AtLeastOnce, None)
        })
        .collect();
    Stats::add(&sinks.stats.cluster_backfilled, items.len() as u64);
    let _ = sinks
        .router
        .send(Event::Backfill {
            conv,
            before,
            messages,
        })
        .await;
}

/// The entries of `conv` before `before` committed in the last [`RECENT`], oldest first:
/// those that may still be on their way to a node that has just begun to follow `conv`.
fn recent_before(
    store: &dyn Store,
    conv: &str,
    before: u64,
) -> Result<Vec<crate::store::messages::Item>, crate::store::StoreError> {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
        - RECENT.as_millis() as i64;
    let page = store.before(conv, before, BACKFILL_PAGE)?;
    let mut items: Vec<_> = page
        .items
        .into_iter()
        .take_while(|i| i.envelope.ts >= since)
        .collect();
    items.reverse();
    Ok(items)
}

/// A shared group's NATS queue group: one name per (group, filter), of characters NATS takes.
fn queue_group(group: &str, filter: &str) -> String {
    let digest = ring::digest::digest(
        &ring::digest::SHA256,
        format!("{group}\u{0}{filter}").as_bytes(),
    );
    let hex: String = digest.as_ref()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("share-{hex}")
}
