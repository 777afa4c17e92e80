//! The task behind a [`crate::Client`]: it connects, reconnects with backoff, resends the
//! outbox, catches up by `sync`, orders what arrives, and acknowledges each message once the
//! app has taken it. One link (connection) at a time; everything it holds for that link is
//! dropped with it, and the next link starts from the durable state: the outbox and cursors.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot, watch};

use crate::backoff::{Ending, Retry};
use crate::client::{Shared, State};
use crate::codec::{self, Codec, Outgoing};
use crate::config::Credentials;
use crate::link::{Dial, Ended, Happened, Held, Link};
use crate::local::Pending;
use crate::model::{Entry, Event, Membership, Presence, Receipt, ServerError, Stored};
use crate::order::{Offer, Orders};
use crate::topics::{self, Received};
use crate::Error;

/// Outbox messages published and not yet acknowledged, at most.
const WINDOW: usize = 64;
/// How long a negative acknowledgement waits for the report that says why in words.
const REPORT_WAIT: Duration = Duration::from_millis(500);
/// Refusal reports kept for matching to an acknowledgement.
const REFUSALS_KEPT: usize = 32;
/// How often the session looks for late replies and missing copies.
const TICK: Duration = Duration::from_secs(1);
/// A request unanswered this long is asked again (internal) or fails (the app's).
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);
/// An own message acknowledged this long ago without its copy: sync its conversation.
const UNSEEN: Duration = Duration::from_secs(2);

/// Handles of sent messages, by (conversation, cid), resolved when the stored copy is seen.
pub(crate) type Waiters =
    Arc<Mutex<HashMap<(String, String), oneshot::Sender<Result<Stored, Error>>>>>;

pub(crate) fn wait_for(
    waiters: &Waiters,
    conv: &str,
    cid: &str,
    tx: oneshot::Sender<Result<Stored, Error>>,
) {
    lock(waiters).insert((conv.to_string(), cid.to_string()), tx);
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Where a request's reply (or why there is none) goes.
pub(crate) type Replier = oneshot::Sender<Result<Value, Error>>;

/// What the handle asks of the session.
pub(crate) enum Command {
    /// The outbox has new entries.
    Outbox,
    Request {
        op: String,
        body: Value,
        reply: Replier,
    },
    Typing(String),
    /// The app has taken the event with this id.
    Taken(u64),
    Close(oneshot::Sender<()>),
}

/// Applies the codec to a received entry's text; a text it cannot open is dropped, not fatal.
pub(crate) fn open_entry(codec: &dyn Codec, mut entry: Entry) -> Entry {
    if let Some(t) = entry.text.take() {
        match codec.open(&entry.conv, t) {
            Ok(t) => entry.text = Some(t),
            Err(e) => tracing::warn!(conv = %entry.conv, seq = entry.seq, "cannot open text: {e}"),
        }
    }
    entry
}

pub(crate) fn spawn(
    shared: Arc<Shared>,
    command_rx: mpsc::UnboundedReceiver<Command>,
    events: mpsc::UnboundedSender<(Event, Option<u64>)>,
    state: watch::Sender<State>,
) -> Result<(), Error> {
    let cursors = shared.local.cursors()?;
    let session = Session {
        retry: Retry::new(shared.config.backoff.clone()),
        shared,
        commands: command_rx,
        events,
        state,
        orders: Orders::new(cursors),
        taken: HashMap::new(),
        next_taken: 0,
        generation: 0,
    };
    tokio::spawn(session.run());
    Ok(())
}

/// What an event the app takes settles: the acknowledgement of the link it came on, and the
/// conversation's cursor.
struct Taken {
    ack: Option<(u64, Held)>,
    cursor: Option<(String, u64)>,
}

struct Session {
    shared: Arc<Shared>,
    retry: Retry,
    commands: mpsc::UnboundedReceiver<Command>,
    events: mpsc::UnboundedSender<(Event, Option<u64>)>,
    state: watch::Sender<State>,
    orders: Orders,
    taken: HashMap<u64, Taken>,
    next_taken: u64,
    /// Counts links, so an acknowledgement is never sent on a link it does not belong to.
    generation: u64,
}

/// Why the session loop left a link.
enum Leave {
    Ended(Ended),
    Close(oneshot::Sender<()>),
}

/// Who is waiting for a request's reply.
enum Purpose {
    App(Replier),
    Conversations,
    Sync(String),
}

/// A message whose handle waits for a refusal report; matched by topic, oldest first.
struct Unconfirmed {
    topic: String,
    conv: String,
    cid: String,
    /// 5.0: the negative acknowledgement's reason code, and when it came (the handle settles
    /// with the code alone if no report follows soon).
    negative: Option<(u8, Instant)>,
}

/// What one link holds; dropped with it.
struct Live {
    link: Link,
    /// What each PUBLISH asked of rumqttc was, in order: rumqttc reports the packet id it
    /// gave each one (`Happened::Sent`) in the same order.
    asked: VecDeque<Option<Pending>>,
    /// Outbox entries on the wire, by packet id.
    inflight: HashMap<u16, Pending>,
    /// The last outbox entry published on this link.
    published: i64,
    /// Acknowledged messages whose handle waits for the server's refusal report (on
    /// `u/{me}/errors`, which says why in words): on 3.1.1 every acknowledged message until its
    /// stored copy comes (3.1.1 acknowledges refused messages normally), on 5.0 the negatively
    /// acknowledged ones.
    unconfirmed: VecDeque<Unconfirmed>,
    /// Refusal reports that came before the acknowledgement they belong to.
    refusals: VecDeque<ServerError>,
    aliases: HashMap<String, u16>,
    /// Requests waiting for their reply, with when they were asked.
    requests: HashMap<u64, (Purpose, Instant)>,
    /// Per conversation, when the server last acknowledged a message of this client whose
    /// stored copy has not come back yet. The server may drop copies queued for a client that
    /// falls behind (`mqtt.queue_overflow`); a copy missing at the end of a burst shows no
    /// hole, so the conversation is synced if it is still missing a moment later.
    unseen: HashMap<String, Instant>,
    /// 3.1.1 replies carry no correlation: they are matched per op, in order.
    by_op: HashMap<String, VecDeque<u64>>,
    next_request: u64,
    /// CONNACK came and the subscriptions went out. Before that nothing is published: a
    /// message stored before its sender subscribed would come back to nobody, and a reply to
    /// a request would find no subscription.
    connected: bool,
    /// Requests asked for before then.
    early_requests: Vec<(String, Value, Replier)>,
    catching_up: bool,
    since: Instant,
}

impl Session {
    async fn run(mut self) {
        let mut fresh_login = false;
        loop {
            let password = match self.password().await {
                Ok(p) => p,
                Err(e @ Error::Auth(_)) => return self.stop(e),
                Err(e) => {
                    tracing::warn!("login over HTTP: {e}");
                    match self.wait(Ending::Failed, e.to_string()).await {
                        Some(close) => return self.finish(close),
                        None => continue,
                    }
                }
            };
            let link = self.dial(&password);
            self.generation += 1;
            let leave = self.serve(link).await;
            self.orders.reset_syncs();
            let ended = match leave {
                Leave::Close(done) => return self.finish(done),
                Leave::Ended(ended) => ended,
            };
            let (ending, why) = match ended {
                Ended::TakenOver => {
                    return self.stop(Error::TakenOver);
                }
                Ended::Auth(why) => {
                    // A token login refused: the token may be stale. Log in afresh once.
                    let token = matches!(self.shared.config.credentials, Credentials::Token { .. });
                    if token && !fresh_login {
                        fresh_login = true;
                        let _ = self.shared.forget_tokens().await;
                        continue;
                    }
                    return self.stop(Error::Auth(why));
                }
                Ended::Busy(why) => (Ending::Busy, why),
                Ended::Failed(why) => (Ending::Failed, why),
            };
            fresh_login = false;
            if let Some(close) = self.wait(ending, why).await {
                return self.finish(close);
            }
        }
    }

    /// A link to the configured server (it connects when first polled).
    fn dial(&self, password: &str) -> Link {
        let config = &self.shared.config;
        // `validate` checked the address has a port.
        let (host, port) = config
            .mqtt
            .rsplit_once(':')
            .map(|(h, p)| (h, p.parse().unwrap_or(1883)))
            .unwrap_or((&config.mqtt, 1883));
        Link::new(Dial {
            host,
            port,
            client_id: config.client_id(),
            user: &config.user,
            password,
            protocol: config.protocol,
            format: config.format,
            keep_alive: config.keep_alive,
            topic_aliases: config.topic_aliases,
        })
    }

    /// The MQTT password: the account's, or an access token.
    async fn password(&self) -> Result<String, Error> {
        match &self.shared.config.credentials {
            Credentials::Password(p) => Ok(p.clone()),
            Credentials::Token { .. } => self.shared.access_token().await,
        }
    }

    /// Between links: tells the app, waits the backoff while serving what needs no link.
    async fn wait(&mut self, ending: Ending, why: String) -> Option<oneshot::Sender<()>> {
        let _ = self.state.send(State::Connecting);
        self.emit(
            Event::Disconnected {
                reason: why.clone(),
            },
            None,
        );
        let wait = self.retry.next_wait(ending);
        tracing::info!("disconnected ({why}); reconnecting in {wait:?}");
        let sleep = tokio::time::sleep(wait);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                _ = &mut sleep => return None,
                command = self.commands.recv() => match command {
                    None => return Some(oneshot::channel().0),
                    Some(Command::Close(done)) => return Some(done),
                    Some(Command::Request { reply, .. }) => {
                        let _ = reply.send(Err(Error::Disconnected));
                    }
                    Some(Command::Taken(id)) => self.taken(id, None),
                    // Waits in the outbox; typing while away is dropped.
                    Some(Command::Outbox | Command::Typing(_)) => {}
                },
            }
        }
    }

    /// Stops for good: every send's handle fails with `why` (the messages stay in the outbox
    /// for a later start), and the app hears it last.
    fn stop(self, why: Error) {
        tracing::warn!("stopped: {why}");
        for (_, waiter) in lock(&self.shared.waiters).drain() {
            let _ = waiter.send(Err(why.clone()));
        }
        self.emit(
            Event::Stopped {
                error: why.to_string(),
            },
            None,
        );
        let _ = self.state.send(State::Stopped(why));
    }

    /// Closed by the app: everything is dropped (the local store's file lock with it) before
    /// `close` returns, so a new client can open the data directory at once.
    fn finish(self, done: oneshot::Sender<()>) {
        for (_, waiter) in lock(&self.shared.waiters).drain() {
            let _ = waiter.send(Err(Error::Closed));
        }
        let _ = self.state.send(State::Stopped(Error::Closed));
        drop(self);
        let _ = done.send(());
    }

    fn emit(&self, event: Event, taken: Option<u64>) {
        let _ = self.events.send((event, taken));
    }

    /// Serves one link until it ends or the app closes.
    async fn serve(&mut self, link: Link) -> Leave {
        let mut live = Live {
            link,
            asked: VecDeque::new(),
            inflight: HashMap::new(),
            published: 0,
            unconfirmed: VecDeque::new(),
            refusals: VecDeque::new(),
            aliases: HashMap::new(),
            requests: HashMap::new(),
            unseen: HashMap::new(),
            by_op: HashMap::new(),
            next_request: 0,
            connected: false,
            early_requests: Vec::new(),
            catching_up: true,
            since: Instant::now(),
        };
        let mut tick = tokio::time::interval(TICK);
        let leave = loop {
            let step = tokio::select! {
                _ = tick.tick() => self.tick(&mut live),
                happened = live.link.next() => match happened {
                    Ok(h) => self.happened(&mut live, h),
                    Err(e) => Err(e),
                },
                command = self.commands.recv() => match command {
                    None => break Leave::Close(oneshot::channel().0),
                    Some(Command::Close(done)) => {
                        live.link.close().await;
                        break Leave::Close(done);
                    }
                    Some(c) => self.command(&mut live, c),
                },
            };
            if let Err(e) = step {
                break Leave::Ended(e);
            }
        };
        for (_, (purpose, _)) in live.requests.drain() {
            if let Purpose::App(reply) = purpose {
                let _ = reply.send(Err(Error::Disconnected));
            }
        }
        for (_, _, reply) in live.early_requests.drain(..) {
            let _ = reply.send(Err(Error::Disconnected));
        }
        // Refused messages whose report did not come in time: the code is all there is. (The
        // others wait for their stored copy, which the next link's catch-up finds.)
        for u in live.unconfirmed.drain(..) {
            if let Some((code, _)) = u.negative {
                self.resolve(&u.conv, &u.cid, Err(reason_refusal(code)));
            }
        }
        self.retry.connected_for(live.since.elapsed());
        leave
    }

    fn command(&mut self, live: &mut Live, command: Command) -> Result<(), Ended> {
        match command {
            // The outbox goes out once connected (and again on every acknowledgement).
            Command::Outbox if !live.connected => Ok(()),
            Command::Outbox => self.publish_outbox(live),
            Command::Request { op, body, reply } if !live.connected => {
                live.early_requests.push((op, body, reply));
                Ok(())
            }
            Command::Request { op, body, reply } => {
                self.request(live, &op, body, Purpose::App(reply))
            }
            // Typing before that is stale by then.
            Command::Typing(_) if !live.connected => Ok(()),
            Command::Typing(conv) => {
                let topic = topics::typing(&conv);
                live.asked.push_back(None);
                live.link.publish(&topic, 0, b"1".to_vec(), None, None)
            }
            Command::Taken(id) => {
                self.taken(id, Some(&live.link));
                Ok(())
            }
            Command::Close(_) => Ok(()),
        }
    }

    /// The app has taken event `id`: acknowledge it (on its own link only) and move the cursor.
    fn taken(&mut self, id: u64, link: Option<&Link>) {
        let Some(taken) = self.taken.remove(&id) else {
            return;
        };
        if let (Some((generation, held)), Some(link)) = (&taken.ack, link) {
            if *generation == self.generation {
                let _ = link.ack(held);
            }
        }
        if let Some((conv, seq)) = taken.cursor {
            if let Err(e) = self.shared.local.set_cursor(&conv, seq) {
                tracing::error!("saving the cursor of {conv}: {e}");
            }
        }
    }

    fn happened(&mut self, live: &mut Live, happened: Happened) -> Result<(), Ended> {
        match happened {
            Happened::Connected => {
                tracing::info!("connected");
                let _ = self.state.send(State::Connected);
                self.emit(Event::Connected, None);
                let c = &self.shared.config;
                for f in &topics::filters(&c.user, &c.device, live.link.is_v5()) {
                    live.link.subscribe(f)?;
                }
                // Subscribed first, then asked what was missed: whatever is stored after the
                // subscription arrives live, the rest comes in the sync; overlaps are dropped.
                live.connected = true;
                self.request(live, "conversations", json!({}), Purpose::Conversations)?;
                for (op, body, reply) in std::mem::take(&mut live.early_requests) {
                    self.request(live, &op, body, Purpose::App(reply))?;
                }
                self.publish_outbox(live)
            }
            Happened::Message {
                topic,
                payload,
                held,
                correlation,
            } => {
                let held = held.map(|h| (self.generation, *h));
                self.message(live, &topic, payload, held, correlation)
            }
            Happened::Sent(pkid) => {
                if let Some(Some(pending)) = live.asked.pop_front() {
                    live.inflight.insert(pkid, pending);
                }
                Ok(())
            }
            Happened::Acked { pkid, refused } => {
                let Some(pending) = live.inflight.remove(&pkid) else {
                    return Ok(());
                };
                match refused {
                    // Not stored (the server's writer gave up, or a packet id clash): it stays
                    // in the outbox and goes again, in order, on the next link.
                    Some(0x80 | 0x91) => {
                        return Err(Ended::Failed("the server could not store a message".into()))
                    }
                    Some(code) => {
                        self.remove_from_outbox(&pending);
                        self.await_refusal(live, &pending, Some(code));
                    }
                    None => {
                        self.remove_from_outbox(&pending);
                        if self.waiting(&pending) {
                            live.unseen.insert(pending.conv.clone(), Instant::now());
                            if !live.link.is_v5() {
                                self.await_refusal(live, &pending, None);
                            }
                        }
                    }
                }
                self.publish_outbox(live)
            }
            Happened::Nothing => Ok(()),
        }
    }

    fn remove_from_outbox(&self, pending: &Pending) {
        if let Err(e) = self.shared.local.remove(pending.n) {
            tracing::error!("removing an acknowledged message from the outbox: {e}");
        }
    }

    /// Publishes outbox entries not yet on this link, up to the window.
    fn publish_outbox(&mut self, live: &mut Live) -> Result<(), Ended> {
        if live.published >= self.shared.local.newest() {
            return Ok(());
        }
        let on_wire = live.asked.iter().filter(|a| a.is_some()).count() + live.inflight.len();
        if on_wire >= WINDOW {
            return Ok(());
        }
        let pending = match self.shared.local.pending(live.published, WINDOW - on_wire) {
            Ok(p) => p,
            Err(e) => {
                tracing::error!("reading the outbox: {e}");
                return Ok(());
            }
        };
        for p in pending {
            live.published = p.n;
            let Ok(body) = serde_json::from_slice::<Outgoing>(&p.body) else {
                tracing::error!(n = p.n, "an outbox entry is not readable; dropped");
                self.remove_from_outbox(&p);
                continue;
            };
            let topic = topics::publish(&p.conv, p.topic);
            let payload = codec::encode(self.shared.config.format, &body);
            let alias = self.alias(live, &topic);
            live.asked.push_back(Some(p));
            live.link.publish(&topic, 1, payload, alias, None)?;
        }
        Ok(())
    }

    /// An MQTT 5 topic alias for `topic`, if the server takes aliases and some are left.
    fn alias(&self, live: &mut Live, topic: &str) -> Option<(u16, bool)> {
        if !self.shared.config.topic_aliases || !live.link.is_v5() {
            return None;
        }
        if let Some(a) = live.aliases.get(topic) {
            return Some((*a, false));
        }
        let next = u16::try_from(live.aliases.len() + 1).ok()?;
        if next > live.link.alias_max() {
            return None;
        }
        live.aliases.insert(topic.to_string(), next);
        Some((next, true))
    }

    fn request(
        &mut self,
        live: &mut Live,
        op: &str,
        body: Value,
        purpose: Purpose,
    ) -> Result<(), Ended> {
        let id = live.next_request;
        live.next_request += 1;
        live.requests.insert(id, (purpose, Instant::now()));
        let topic = topics::request(&self.shared.config.user, op);
        let reply = if live.link.is_v5() {
            let c = &self.shared.config;
            let correlation = Bytes::from(id.to_be_bytes().to_vec());
            Some((topics::reply(&c.user, &c.device), correlation))
        } else {
            live.by_op.entry(op.to_string()).or_default().push_back(id);
            None
        };
        live.asked.push_back(None);
        live.link
            .publish(&topic, 1, body.to_string().into_bytes(), None, reply)
    }

    fn sync(&mut self, live: &mut Live, conv: &str) -> Result<(), Ended> {
        self.orders.syncing(conv);
        let after = self.orders.last(conv);
        let limit = self.shared.config.sync_page;
        tracing::debug!(%conv, after, "sync");
        self.request(
            live,
            "sync",
            json!({"conv": conv, "after": after, "limit": limit}),
            Purpose::Sync(conv.to_string()),
        )
    }

    /// A received PUBLISH, by topic.
    fn message(
        &mut self,
        live: &mut Live,
        topic: &str,
        payload: Bytes,
        held: Option<(u64, Held)>,
        correlation: Option<Bytes>,
    ) -> Result<(), Ended> {
        match topics::parse(&self.shared.config.user, topic) {
            Received::Entries => match codec::decode::<Entry>(&payload) {
                Ok(entry) => {
                    let entry = open_entry(&*self.shared.config.codec, entry);
                    self.entry(live, entry, held)?;
                }
                Err(e) => {
                    tracing::warn!(%topic, "unreadable entry: {e}");
                    self.ack_now(live, held);
                }
            },
            Received::Receipts => {
                self.typed::<Receipt>(live, topic, &payload, held, Event::Receipt)
            }
            Received::Typing { conv } => match codec::decode::<Value>(&payload) {
                Ok(v) => {
                    let conv = conv.to_string();
                    let user = v["user"].as_str().unwrap_or_default().to_string();
                    self.deliver(Event::Typing { conv, user }, held, None);
                }
                Err(_) => self.ack_now(live, held),
            },
            Received::Events => {
                self.typed::<Membership>(live, topic, &payload, held, Event::Membership);
                // Whose presence this user may read may have changed: subscribing again makes
                // the server send the retained presence of everyone now visible.
                live.link.subscribe(topics::PRESENCE)?;
            }
            Received::Errors => {
                // Decoded once: it may settle a send's handle, and it goes to the app.
                match codec::decode::<ServerError>(&payload) {
                    Ok(err) => {
                        self.refusal_event(live, &err);
                        self.deliver(Event::Refused(err), held, None);
                    }
                    Err(e) => {
                        tracing::warn!(%topic, "unreadable refusal: {e}");
                        self.ack_now(live, held);
                    }
                }
            }
            Received::Reply { last } => {
                self.ack_now(live, held);
                let id = match correlation {
                    Some(c) => <[u8; 8]>::try_from(&c[..]).ok().map(u64::from_be_bytes),
                    None => self.uncorrelated(live, Some(last), &payload),
                };
                if let Some((purpose, _)) = id.and_then(|id| live.requests.remove(&id)) {
                    self.reply(live, purpose, &payload)?;
                }
            }
            Received::Presence { user } => {
                let presence = if payload.is_empty() {
                    Some(Presence {
                        user: user.to_string(),
                        status: "hidden".into(),
                        last_seen: None,
                    })
                } else {
                    codec::decode::<Presence>(&payload).ok()
                };
                match presence {
                    Some(p) => self.deliver(Event::Presence(p), held, None),
                    None => self.ack_now(live, held),
                }
            }
            Received::Other => self.ack_now(live, held),
        }
        Ok(())
    }

    /// The request a 3.1.1 reply answers: the oldest of its op. Every 3.1.1 device of the user
    /// gets every reply, so a `sync` page of a conversation this request did not ask for is
    /// another device's, and left alone.
    fn uncorrelated(&self, live: &mut Live, op: Option<&str>, payload: &[u8]) -> Option<u64> {
        let queue = live.by_op.get_mut(op?)?;
        let id = *queue.front()?;
        if let Some((Purpose::Sync(conv), _)) = live.requests.get(&id) {
            let page: Value = codec::decode(payload).ok()?;
            if page["conv"].as_str().is_some_and(|c| c != conv) {
                return None;
            }
        }
        queue.pop_front()
    }

    /// Decodes a JSON event into `wrap`, or drops what does not parse (acknowledged, logged).
    fn typed<T: serde::de::DeserializeOwned>(
        &mut self,
        live: &mut Live,
        topic: &str,
        payload: &[u8],
        held: Option<(u64, Held)>,
        wrap: impl FnOnce(T) -> Event,
    ) {
        match codec::decode::<T>(payload) {
            Ok(v) => self.deliver(wrap(v), held, None),
            Err(e) => {
                tracing::warn!(%topic, "unreadable event: {e}");
                self.ack_now(live, held);
            }
        }
    }

    fn ack_now(&self, live: &Live, held: Option<(u64, Held)>) {
        if let Some((_, h)) = held {
            let _ = live.link.ack(&h);
        }
    }

    /// Queues an event for the app; its acknowledgement and cursor wait until it is taken.
    fn deliver(&mut self, event: Event, ack: Option<(u64, Held)>, cursor: Option<(String, u64)>) {
        let id = (ack.is_some() || cursor.is_some()).then(|| {
            self.next_taken += 1;
            self.taken.insert(self.next_taken, Taken { ack, cursor });
            self.next_taken
        });
        self.emit(event, id);
    }

    /// A live entry: in order, a duplicate, or past a hole (dropped and acknowledged: the
    /// hole's sync brings it again, in order).
    fn entry(
        &mut self,
        live: &mut Live,
        entry: Entry,
        held: Option<(u64, Held)>,
    ) -> Result<(), Ended> {
        match self.orders.offer(&entry) {
            Offer::Ready => {
                self.hand_on(live, entry, held);
                Ok(())
            }
            Offer::Duplicate | Offer::Ahead(false) => {
                self.ack_now(live, held);
                Ok(())
            }
            Offer::Ahead(true) => {
                self.ack_now(live, held);
                self.sync(live, &entry.conv)
            }
        }
    }

    /// An entry in order: resolves this client's own message, then goes to the app.
    fn hand_on(&mut self, live: &mut Live, entry: Entry, ack: Option<(u64, Held)>) {
        // A direct conversation's first entry lets its two users see each other's presence.
        if entry.seq == 1 && entry.conv.starts_with("d.") {
            let _ = live.link.subscribe(topics::PRESENCE);
        }
        if entry.from == self.shared.config.user {
            if let Some(cid) = &entry.cid {
                let stored = Stored {
                    id: entry.id,
                    seq: entry.seq,
                };
                if self.resolve(&entry.conv, cid, Ok(stored)) {
                    live.unconfirmed
                        .retain(|u| !(u.conv == entry.conv && &u.cid == cid));
                    self.emit(
                        Event::Sent {
                            conv: entry.conv.clone(),
                            cid: cid.clone(),
                            seq: entry.seq,
                        },
                        None,
                    );
                }
            }
        }
        let cursor = Some((entry.conv.clone(), entry.seq));
        self.deliver(Event::Entry(entry), ack, cursor);
    }

    /// Settles a send's handle; whether there was one.
    fn resolve(&self, conv: &str, cid: &str, result: Result<Stored, Error>) -> bool {
        let waiter = lock(&self.shared.waiters).remove(&(conv.to_string(), cid.to_string()));
        match waiter {
            Some(w) => {
                let _ = w.send(result);
                true
            }
            None => false,
        }
    }

    /// A refusal report on `u/{me}/errors`: it settles the oldest message waiting for one on
    /// its topic, or waits for that message's acknowledgement.
    fn refusal_event(&mut self, live: &mut Live, err: &ServerError) {
        if err.client != self.shared.config.client_id() {
            return;
        }
        if let Some(i) = live.unconfirmed.iter().position(|u| u.topic == err.topic) {
            if let Some(u) = live.unconfirmed.remove(i) {
                self.resolve(&u.conv, &u.cid, Err(refusal(err)));
            }
            return;
        }
        live.refusals.push_back(err.clone());
        if live.refusals.len() > REFUSALS_KEPT {
            live.refusals.pop_front();
        }
    }

    /// Once a second: requests unanswered for too long (a reply the server dropped from a
    /// full queue) are asked again or failed; conversations whose own copies did not come
    /// back are synced.
    fn tick(&mut self, live: &mut Live) -> Result<(), Ended> {
        let now = Instant::now();
        let late: Vec<u64> = live
            .requests
            .iter()
            .filter(|(_, (_, at))| now.duration_since(*at) >= REPLY_TIMEOUT)
            .map(|(id, _)| *id)
            .collect();
        for id in late {
            let Some((purpose, _)) = live.requests.remove(&id) else {
                continue;
            };
            // A 3.1.1 reply is matched to the oldest request of its op: one given up on must
            // leave that queue too, or every later reply would be matched to it.
            for queue in live.by_op.values_mut() {
                queue.retain(|q| *q != id);
            }
            match purpose {
                Purpose::App(reply) => {
                    let _ = reply.send(Err(Error::Timeout));
                }
                Purpose::Conversations => {
                    self.request(live, "conversations", json!({}), Purpose::Conversations)?
                }
                Purpose::Sync(conv) => self.sync(live, &conv)?,
            }
        }
        let (settle, keep): (Vec<_>, Vec<_>) = live.unconfirmed.drain(..).partition(|u| {
            u.negative
                .is_some_and(|(_, at)| now.duration_since(at) >= REPORT_WAIT)
        });
        live.unconfirmed = keep.into();
        for u in settle {
            let code = u.negative.map_or(0, |(code, _)| code);
            self.resolve(&u.conv, &u.cid, Err(reason_refusal(code)));
        }
        let waiting: HashSet<String> = lock(&self.shared.waiters)
            .keys()
            .map(|(conv, _)| conv.clone())
            .collect();
        live.unseen.retain(|conv, _| waiting.contains(conv));
        let stale: Vec<String> = live
            .unseen
            .iter()
            .filter(|(conv, at)| {
                now.duration_since(**at) >= UNSEEN && !self.orders.is_syncing(conv)
            })
            .map(|(conv, _)| conv.clone())
            .collect();
        for conv in stale {
            live.unseen.insert(conv.clone(), now);
            self.sync(live, &conv)?;
        }
        Ok(())
    }

    /// An acknowledged message may have been refused (`negative`: it was): settle its handle
    /// with a report already here, or wait for one.
    fn await_refusal(&mut self, live: &mut Live, p: &Pending, negative: Option<u8>) {
        let topic = topics::publish(&p.conv, p.topic);
        if let Some(i) = live.refusals.iter().position(|r| r.topic == topic) {
            if let Some(r) = live.refusals.remove(i) {
                self.resolve(&p.conv, &p.cid, Err(refusal(&r)));
            }
            return;
        }
        live.unconfirmed.push_back(Unconfirmed {
            topic,
            conv: p.conv.clone(),
            cid: p.cid.clone(),
            negative: negative.map(|code| (code, Instant::now())),
        });
    }

    /// Whether a handle waits for this message's stored copy.
    fn waiting(&self, p: &Pending) -> bool {
        lock(&self.shared.waiters).contains_key(&(p.conv.clone(), p.cid.clone()))
    }

    fn reply(&mut self, live: &mut Live, purpose: Purpose, payload: &[u8]) -> Result<(), Ended> {
        let reply: Result<Value, Error> = codec::decode::<Value>(payload).and_then(|v| {
            if v["ok"] == json!(true) {
                Ok(v)
            } else {
                Err(Error::Refused {
                    code: v["error"].as_str().unwrap_or("error").to_string(),
                    message: v["message"].as_str().unwrap_or("").to_string(),
                })
            }
        });
        match purpose {
            Purpose::App(tx) => {
                let _ = tx.send(reply);
                Ok(())
            }
            Purpose::Conversations => {
                let convs = reply
                    .ok()
                    .and_then(|v| v["conversations"].as_array().cloned())
                    .unwrap_or_default();
                for c in convs {
                    let Some(conv) = c["conv"].as_str() else {
                        continue;
                    };
                    let last = c["last"]["seq"].as_u64().unwrap_or(0);
                    if last > self.orders.last(conv) && !self.orders.is_syncing(conv) {
                        self.sync(live, conv)?;
                    }
                }
                self.check_synced(live);
                Ok(())
            }
            Purpose::Sync(conv) => self.sync_page(live, conv, reply),
        }
    }

    fn sync_page(
        &mut self,
        live: &mut Live,
        conv: String,
        reply: Result<Value, Error>,
    ) -> Result<(), Ended> {
        let page = match reply {
            Ok(v) => v,
            Err(e) => {
                // Not a member any more, say: nothing to catch up there.
                tracing::warn!(%conv, "sync: {e}");
                self.orders.abandon(&conv);
                self.check_synced(live);
                return Ok(());
            }
        };
        let first = page["first"].as_u64().unwrap_or(0);
        if first > 0 && self.orders.starts_at(&conv, first) {
            self.emit(
                Event::HistoryStartsAt {
                    conv: conv.clone(),
                    first,
                },
                None,
            );
        }
        let entries: Vec<Entry> = page["messages"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|m| serde_json::from_value(m.clone()).ok())
                    .collect()
            })
            .unwrap_or_default();
        for e in entries {
            let e = open_entry(&*self.shared.config.codec, e);
            if self.orders.offer(&e) == Offer::Ready {
                self.hand_on(live, e, None);
            }
        }
        if page["more"] == json!(true) {
            return self.sync(live, &conv);
        }
        if self.orders.synced(&conv) {
            return self.sync(live, &conv);
        }
        self.check_synced(live);
        Ok(())
    }

    /// The catch-up after connecting is over once no sync is running.
    fn check_synced(&mut self, live: &mut Live) {
        let conversations_pending = live
            .requests
            .values()
            .any(|(p, _)| matches!(p, Purpose::Conversations));
        if live.catching_up && !self.orders.any_syncing() && !conversations_pending {
            live.catching_up = false;
            let _ = self.state.send(State::Synced);
            self.emit(Event::Synced, None);
        }
    }
}

/// natter's error code for a negative acknowledgement's reason code (`topics.md`).
fn reason_name(code: u8) -> &'static str {
    match code {
        0x87 => "not_authorized",
        0x90 => "malformed_topic",
        0x97 => "quota_exceeded",
        0x99 => "bad_payload",
        _ => "refused",
    }
}

/// A refusal known by its reason code alone.
fn reason_refusal(code: u8) -> Error {
    Error::Refused {
        code: reason_name(code).into(),
        message: format!("refused by the server (reason code 0x{code:02X})"),
    }
}

fn refusal(err: &ServerError) -> Error {
    Error::Refused {
        code: err.error.clone(),
        message: err.message.clone(),
    }
}
