//! The scenarios: message flows (1:1 pairs, fan-out), idle connections, and a reconnect storm.
//!
//! Every scenario talks to one broker (or the raw forwarder) at `Target::addr` and watches its
//! process (`Target::broker`) for CPU and memory. Timestamps travel in the payload (see
//! [`Stamp`]), so end-to-end latency is measured by the subscriber that receives the message.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::BytesMut;
use hdrhistogram::Histogram;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

use crate::procstat::{CpuMark, Proc, TreeMark};
use crate::results::{histogram, Better, Results};
use crate::wire::{
    self, decode, encode_ack, encode_publish, instant_at, now_ns, Conn, ConnectOptions, Incoming,
    Proto, Stamp,
};

/// The broker under test.
#[derive(Debug, Clone, Copy)]
pub struct Target {
    pub proto: Proto,
    pub addr: SocketAddr,
    /// natter's HTTP API, where the chat scheme makes its accounts.
    pub http: Option<SocketAddr>,
    pub broker: Proc,
    /// Every process serving the scenario (the broker, and its database, NATS servers, proxy),
    /// each with its descendants: the "all server processes" CPU figures of a flow. Empty:
    /// no such figures.
    pub servers: &'static [u32],
    /// Chat: how long to wait after making the accounts, before anything else (a cluster's
    /// other nodes learn of new accounts shortly after they are made).
    pub settle: Duration,
}

/// How scenario clients and topics are named.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TopicScheme {
    /// `bench/{run}/{scenario}/{n}`: ordinary topics every broker accepts; anonymous clients.
    Plain,
    /// natter's chat: every client is a device (`{user}.lg`) of an account of its own; a 1:1
    /// flow is a direct conversation, a fan-out a group, the storm's messages direct messages
    /// from one sender; subscribers listen to their stream `u/{user}/#` as apps do. natter
    /// stores every message before its PUBACK. Needs natter's HTTP API (`--http`).
    Chat,
}

/// A client of a scenario.
#[derive(Debug, Clone, Copy)]
pub enum Role {
    /// The publisher of flow `p`.
    Publisher(usize),
    /// Subscriber `j` of flow `p`.
    Subscriber(usize, usize),
    /// Client `i` of the idle or storm scenario.
    Own(usize),
    /// The storm's one publisher.
    Feeder,
}

/// Names of one scenario run: who connects as what, and which topics they use.
#[derive(Debug, Clone)]
pub struct Names {
    pub scheme: TopicScheme,
    pub run: String,
    pub scenario: String,
    /// Chat: each account's access token (its MQTT password), from [`Names::prepare`].
    tokens: Arc<HashMap<String, String>>,
}

impl Names {
    pub fn new(scheme: TopicScheme, run: &str, scenario: &str) -> Names {
        Names {
            scheme,
            run: run.to_string(),
            scenario: scenario.to_string(),
            tokens: Arc::default(),
        }
    }

    fn user(&self, role: Role) -> String {
        let tag = match self.scenario.as_str() {
            "p2p-max" => "m",
            "p2p-rate" => "r",
            "fanout" => "f",
            "idle" => "i",
            _ => "s",
        };
        let (run, who) = (&self.run, self.who(role));
        format!("b{run}{tag}{who}")
    }

    fn who(&self, role: Role) -> String {
        match role {
            Role::Publisher(p) => format!("p{p}"),
            Role::Subscriber(p, j) => format!("s{p}x{j}"),
            Role::Own(i) => format!("c{i}"),
            Role::Feeder => "f".to_string(),
        }
    }

    pub fn client_id(&self, role: Role) -> String {
        match self.scheme {
            TopicScheme::Plain => format!("lg-{}-{}-{}", self.run, self.scenario, self.who(role)),
            TopicScheme::Chat => format!("{}.{}", self.user(role), crate::chat::DEVICE),
        }
    }

    /// The user name and password (access token) a client logs in with (chat), or `None`
    /// (anonymous).
    pub fn login(&self, role: Role) -> Option<(String, String)> {
        if self.scheme != TopicScheme::Chat {
            return None;
        }
        let user = self.user(role);
        let token = self.tokens.get(&user).cloned().unwrap_or_default();
        Some((user, token))
    }

    /// The direct conversation of `a` and `b` (chat scheme).
    pub(crate) fn direct(&self, a: Role, b: Role) -> String {
        let (a, b) = (self.user(a), self.user(b));
        let (a, b) = if a <= b { (a, b) } else { (b, a) };
        format!("c/d.{a}.{b}/m")
    }

    /// The group of flow `p` in a fan-out: `g.{id}`.
    fn group_id(&self, p: usize) -> String {
        self.user(Role::Publisher(p))
    }

    /// The topic the publisher of flow `p` writes to (it has `subs` subscribers).
    pub fn flow(&self, p: usize, subs: usize) -> String {
        match self.scheme {
            TopicScheme::Plain => format!("bench/{}/{}/{p}", self.run, self.scenario),
            TopicScheme::Chat if subs == 1 => {
                self.direct(Role::Publisher(p), Role::Subscriber(p, 0))
            }
            TopicScheme::Chat => format!("c/g.{}/m", self.group_id(p)),
        }
    }

    /// What subscriber `j` of flow `p` subscribes to.
    pub fn flow_filter(&self, p: usize, j: usize, subs: usize) -> String {
        match self.scheme {
            TopicScheme::Plain => self.flow(p, subs),
            TopicScheme::Chat => format!("u/{}/#", self.user(Role::Subscriber(p, j))),
        }
    }

    /// What client `i` of the idle or storm scenario subscribes to.
    pub fn own_filter(&self, i: usize) -> String {
        match self.scheme {
            TopicScheme::Plain => format!("bench/{}/{}/{i}", self.run, self.scenario),
            TopicScheme::Chat => format!("u/{}/#", self.user(Role::Own(i))),
        }
    }

    /// Where the storm's publisher writes for client `i` to receive it.
    pub fn to_own(&self, i: usize) -> String {
        match self.scheme {
            TopicScheme::Plain => self.own_filter(i),
            TopicScheme::Chat => self.direct(Role::Feeder, Role::Own(i)),
        }
    }

    /// Makes the accounts `roles` need and, for a fan-out, each flow's group (chat only).
    pub async fn prepare(
        &mut self,
        t: &Target,
        roles: &[Role],
        groups: &[(usize, usize)],
    ) -> anyhow::Result<()> {
        if self.scheme != TopicScheme::Chat {
            return Ok(());
        }
        let http = t
            .http
            .context("the chat scheme needs natter's HTTP API address (--http)")?;
        let started = Instant::now();
        let tokens = crate::chat::register(http, roles.iter().map(|r| self.user(*r)).collect())
            .await
            .context("creating the benchmark's accounts")?;
        self.tokens = Arc::new(tokens);
        if !t.settle.is_zero() {
            tokio::time::sleep(t.settle).await;
        }
        for &(p, subs) in groups {
            let members: Vec<String> = (0..subs)
                .map(|j| self.user(Role::Subscriber(p, j)))
                .collect();
            let owner = self.user(Role::Publisher(p));
            crate::chat::create_group(t.addr, &owner, &self.group_id(p), &members).await?;
        }
        eprintln!(
            "chat: {} accounts and {} groups made in {:.1} s",
            roles.len(),
            groups.len(),
            started.elapsed().as_secs_f64()
        );
        Ok(())
    }
}

/// Connects a client: MQTT (clean session) or the forwarder's side of a pair.
async fn open(t: &Target, names: &Names, role: Role) -> anyhow::Result<Conn> {
    match t.proto {
        Proto::Mqtt => {
            let (id, login) = (names.client_id(role), names.login(role));
            wire::mqtt_connect(
                t.addr,
                &ConnectOptions {
                    client_id: &id,
                    clean_session: true,
                    keep_alive: 120,
                    login: login.as_ref().map(|(u, p)| (u.as_str(), p.as_str())),
                },
            )
            .await
        }
        Proto::Raw => {
            let (publisher, pair) = match role {
                Role::Publisher(p) => (true, p),
                Role::Subscriber(p, _) | Role::Own(p) => (false, p),
                Role::Feeder => (true, 0),
            };
            wire::raw_connect(t.addr, publisher, pair as u32).await
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Flows: publishers → subscribers, closed loop or at a fixed rate.

/// A message flow: `publishers` publishers, each with `subs_per_pub` subscribers of its topic.
#[derive(Debug, Clone)]
pub struct FlowSpec {
    pub publishers: usize,
    pub subs_per_pub: usize,
    /// Closed loop: a publisher may be at most this many messages ahead of each of its
    /// subscribers. `None`: open loop (fixed rate).
    pub window: Option<usize>,
    /// QoS 1 messages a publisher may have waiting for PUBACK.
    pub ack_window: usize,
    /// Fixed rate, messages per second over all publishers; `None`: as fast as the windows allow.
    pub rate: Option<f64>,
    pub warmup: Duration,
    pub duration: Duration,
    /// Upper bound on messages published (all publishers together).
    pub max_msgs: u64,
    /// How long to wait after publishing stops for what is still on its way.
    pub drain: Duration,
    pub payload: usize,
}

/// What a flow measured.
pub struct FlowOutcome {
    pub published: u64,
    pub acked: u64,
    pub expected: u64,
    pub delivered: u64,
    /// Deliveries between the end of the warm-up and the end of publishing.
    pub delivered_in_window: u64,
    pub window_secs: f64,
    pub out_of_order: u64,
    pub e2e: Histogram<u64>,
    pub puback: Histogram<u64>,
    pub broker_cpu: (f64, f64),
    pub self_cpu: (f64, f64),
    /// CPU of all server processes (`Target::servers`), if any were named.
    pub servers_cpu: Option<(f64, f64)>,
}

struct FlowShared {
    warm_ns: u64,
    deadline_ns: u64,
    /// When publishing stopped (`u64::MAX` until then).
    end_ns: AtomicU64,
    delivered: AtomicU64,
    delivered_window: AtomicU64,
    acked: AtomicU64,
}

struct SubOut {
    hist: Histogram<u64>,
    out_of_order: u64,
}

async fn flow_subscriber(
    mut conn: Conn,
    chat: bool,
    window: Option<Arc<Semaphore>>,
    shared: Arc<FlowShared>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<SubOut> {
    let proto = conn.proto;
    let mut hist = histogram();
    let mut acks = BytesMut::with_capacity(1024);
    let (mut next_seq, mut out_of_order) = (0u64, 0u64);
    loop {
        let now = now_ns();
        let mut n = 0u64;
        while let Some(frame) = decode(proto, &mut conn.rbuf)? {
            match frame {
                Incoming::Publish {
                    pkid,
                    qos1,
                    payload,
                } => {
                    if qos1 {
                        encode_ack(proto, &mut acks, pkid);
                    }
                    let Some(stamp) = Stamp::read(&payload) else {
                        // Chat streams carry receipt events too.
                        if chat {
                            continue;
                        }
                        bail!("payload without a timestamp");
                    };
                    if stamp.ts_ns >= shared.warm_ns {
                        hist.saturating_record(now.saturating_sub(stamp.ts_ns).max(1));
                    }
                    if stamp.seq != next_seq {
                        out_of_order += 1;
                    }
                    next_seq = stamp.seq + 1;
                    n += 1;
                }
                Incoming::Ack { .. } => bail!("a subscriber got an acknowledgement"),
                Incoming::Other(_) => {}
            }
        }
        if n > 0 {
            if let Some(w) = &window {
                w.add_permits(n as usize);
            }
            shared.delivered.fetch_add(n, Relaxed);
            if now >= shared.warm_ns && now <= shared.end_ns.load(Relaxed) {
                shared.delivered_window.fetch_add(n, Relaxed);
            }
        }
        if !acks.is_empty() {
            conn.stream.write_all(&acks).await?;
            acks.clear();
        }
        tokio::select! {
            read = conn.stream.read_buf(&mut conn.rbuf) => {
                if read? == 0 {
                    // The forwarder closes a subscriber once its publisher has left; a broker
                    // never should.
                    if proto == Proto::Raw {
                        break;
                    }
                    bail!("the broker closed a subscriber's connection");
                }
            }
            _ = stop.changed() => break,
        }
    }
    conn.disconnect().await;
    Ok(SubOut { hist, out_of_order })
}

/// Takes the permits of `sems[*k..]` that are free now; true when it has them all.
fn try_take(sems: &[Arc<Semaphore>], k: &mut usize) -> bool {
    while *k < sems.len() {
        match sems[*k].try_acquire() {
            Ok(p) => {
                p.forget();
                *k += 1;
            }
            Err(_) => return false,
        }
    }
    true
}

async fn take(sems: &[Arc<Semaphore>], k: &mut usize) -> anyhow::Result<()> {
    while *k < sems.len() {
        sems[*k].acquire().await?.forget();
        *k += 1;
    }
    Ok(())
}

struct PubOut {
    sent: u64,
    puback: Histogram<u64>,
    acked: u64,
}

#[allow(clippy::too_many_arguments)]
async fn flow_publisher(
    conn: Conn,
    index: u32,
    topic: String,
    sub_windows: Vec<Arc<Semaphore>>,
    spec: Arc<FlowSpec>,
    start_ns: u64,
    shared: Arc<FlowShared>,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<PubOut> {
    let proto = conn.proto;
    let (mut rd, mut wr) = conn.stream.into_split();
    let mut rbuf = conn.rbuf;
    let ack_window = Arc::new(Semaphore::new(spec.ack_window));
    let sent_at: Arc<Vec<AtomicU64>> =
        Arc::new((0..=u16::MAX).map(|_| AtomicU64::new(0)).collect());
    let final_sent = Arc::new(AtomicU64::new(u64::MAX));
    let finished = Arc::new(tokio::sync::Notify::new());

    let reader = {
        let (ack_window, sent_at, final_sent, finished, shared) = (
            ack_window.clone(),
            sent_at.clone(),
            final_sent.clone(),
            finished.clone(),
            shared.clone(),
        );
        let mut stop = stop.clone();
        tokio::spawn(async move {
            let mut hist = histogram();
            let mut acked = 0u64;
            loop {
                let now = now_ns();
                let mut n = 0;
                while let Some(frame) = decode(proto, &mut rbuf)? {
                    match frame {
                        Incoming::Ack { pkid } => {
                            let t = sent_at[usize::from(pkid)].load(Relaxed);
                            if t >= shared.warm_ns {
                                hist.saturating_record(now.saturating_sub(t).max(1));
                            }
                            n += 1;
                        }
                        Incoming::Publish { .. } => bail!("a publisher got a message"),
                        Incoming::Other(_) => {}
                    }
                }
                if n > 0 {
                    acked += n;
                    ack_window.add_permits(n as usize);
                    shared.acked.fetch_add(n, Relaxed);
                }
                if acked >= final_sent.load(Relaxed) {
                    break;
                }
                tokio::select! {
                    read = rd.read_buf(&mut rbuf) => {
                        if read? == 0 {
                            bail!("the broker closed a publisher's connection");
                        }
                    }
                    _ = finished.notified() => {}
                    _ = stop.changed() => break,
                }
            }
            Ok::<_, anyhow::Error>((hist, acked, rd))
        })
    };

    let mut sems = vec![ack_window];
    sems.extend(sub_windows);
    let per_pub_max = (spec.max_msgs / spec.publishers as u64).max(1);
    let rate = spec.rate.map(|r| r / spec.publishers as f64);
    let deadline = instant_at(shared.deadline_ns);
    let topic = topic.into_bytes();
    let mut wbuf = BytesMut::with_capacity(64 * 1024);
    let (mut seq, mut pkid, mut held) = (0u64, 0u16, 0usize);
    const BATCH: u64 = 64;
    'run: loop {
        let now = now_ns();
        if now >= shared.deadline_ns || seq >= per_pub_max {
            break;
        }
        let allowed = match rate {
            Some(r) => {
                let due =
                    ((now.saturating_sub(start_ns) as f64 * r / 1e9) as u64 + 1).min(per_pub_max);
                if due <= seq {
                    let next = start_ns + (seq as f64 * 1e9 / r) as u64;
                    tokio::time::sleep_until(instant_at(next).min(deadline)).await;
                    continue;
                }
                (due - seq).min(BATCH)
            }
            None => BATCH,
        };
        let mut n = 0;
        while n < allowed {
            if !try_take(&sems, &mut held) {
                if n > 0 {
                    break;
                }
                match tokio::time::timeout_at(deadline, take(&sems, &mut held)).await {
                    Ok(r) => r?,
                    Err(_) => break 'run,
                }
            }
            held = 0;
            pkid = pkid.checked_add(1).unwrap_or(1);
            let ts = now_ns();
            sent_at[usize::from(pkid)].store(ts, Relaxed);
            let stamp = Stamp {
                ts_ns: ts,
                seq,
                publisher: index,
            };
            encode_publish(proto, &mut wbuf, &topic, pkid, &stamp, spec.payload);
            seq += 1;
            n += 1;
        }
        if n > 0 {
            wr.write_all(&wbuf).await?;
            wbuf.clear();
        }
    }
    final_sent.store(seq, Relaxed);
    finished.notify_one();
    let (puback, acked, rd) = reader.await??;
    if proto == Proto::Mqtt {
        let _ = wr.write_all(&[0xe0, 0x00]).await;
    }
    drop((rd, wr));
    Ok(PubOut {
        sent: seq,
        puback,
        acked,
    })
}

/// Runs a flow and collects what it measured.
pub async fn run_flow(t: &Target, spec: FlowSpec, mut names: Names) -> anyhow::Result<FlowOutcome> {
    let spec = Arc::new(spec);
    let n = spec.subs_per_pub;
    let mut roles: Vec<Role> = (0..spec.publishers).map(Role::Publisher).collect();
    roles.extend((0..spec.publishers).flat_map(|p| (0..n).map(move |j| Role::Subscriber(p, j))));
    let groups: Vec<(usize, usize)> = if n > 1 {
        (0..spec.publishers).map(|p| (p, n)).collect()
    } else {
        Vec::new()
    };
    names.prepare(t, &roles, &groups).await?;
    // Subscribers first, so nothing published is missed.
    let mut connecting = JoinSet::new();
    let limit = Arc::new(Semaphore::new(50));
    for p in 0..spec.publishers {
        for j in 0..n {
            let (t, limit, names) = (*t, limit.clone(), names.clone());
            connecting.spawn(async move {
                let _permit = limit.acquire().await?;
                let mut conn = open(&t, &names, Role::Subscriber(p, j)).await?;
                if t.proto == Proto::Mqtt {
                    conn.subscribe(&[names.flow_filter(p, j, n)]).await?;
                }
                Ok::<_, anyhow::Error>((p, conn))
            });
        }
    }
    let mut subs: Vec<(usize, Conn)> = Vec::new();
    while let Some(r) = connecting.join_next().await {
        subs.push(r??);
    }
    let mut pubs = Vec::new();
    for p in 0..spec.publishers {
        pubs.push(open(t, &names, Role::Publisher(p)).await?);
    }

    let start_ns = now_ns() + 50_000_000;
    let warm_ns = start_ns + spec.warmup.as_nanos() as u64;
    let shared = Arc::new(FlowShared {
        warm_ns,
        deadline_ns: warm_ns + spec.duration.as_nanos() as u64,
        end_ns: AtomicU64::new(u64::MAX),
        delivered: AtomicU64::new(0),
        delivered_window: AtomicU64::new(0),
        acked: AtomicU64::new(0),
    });
    let (stop_tx, stop_rx) = watch::channel(false);

    let mut windows: Vec<Vec<Arc<Semaphore>>> = vec![Vec::new(); spec.publishers];
    let mut sub_tasks = JoinSet::new();
    for (p, conn) in subs {
        let window = spec.window.map(|w| Arc::new(Semaphore::new(w)));
        if let Some(w) = &window {
            windows[p].push(w.clone());
        }
        sub_tasks.spawn(flow_subscriber(
            conn,
            names.scheme == TopicScheme::Chat,
            window,
            shared.clone(),
            stop_rx.clone(),
        ));
    }
    tokio::time::sleep_until(instant_at(start_ns)).await;
    let mut pub_tasks = JoinSet::new();
    for (p, conn) in pubs.into_iter().enumerate() {
        pub_tasks.spawn(flow_publisher(
            conn,
            p as u32,
            names.flow(p, n),
            std::mem::take(&mut windows[p]),
            spec.clone(),
            start_ns,
            shared.clone(),
            stop_rx.clone(),
        ));
    }

    tokio::time::sleep_until(instant_at(warm_ns)).await;
    let broker_mark = CpuMark::take(t.broker)?;
    let self_mark = CpuMark::take(Proc { pid: 0 })?;
    let servers_mark = TreeMark::take(t.servers);

    // Publishers stop at the deadline (or the message bound); their tasks end once their last
    // PUBACK is in, so wait for the deadline itself to mark the end of the window.
    let mut publishing_ends = tokio::spawn({
        let shared = shared.clone();
        async move {
            let mut sent = 0;
            let mut results = Vec::new();
            while let Some(r) = pub_tasks.join_next().await {
                let r = r??;
                sent += r.sent;
                results.push(r);
            }
            let _ = shared;
            Ok::<_, anyhow::Error>((sent, results))
        }
    });
    // The window ends at the deadline, or earlier if every publisher reached its bound.
    let published_total = spec.publishers as u64 * (spec.max_msgs / spec.publishers as u64).max(1);
    let expected_max = published_total * spec.subs_per_pub as u64;
    let window_end = loop {
        let now = now_ns();
        if now >= shared.deadline_ns || shared.delivered.load(Relaxed) >= expected_max {
            break now.min(shared.deadline_ns).max(warm_ns);
        }
        if publishing_ends.is_finished() {
            break now.max(warm_ns);
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    shared.end_ns.store(window_end, Relaxed);
    let broker_cpu = broker_mark.since(t.broker)?;
    let self_cpu = self_mark.since(Proc { pid: 0 })?;
    let servers_cpu = (!t.servers.is_empty()).then(|| servers_mark.since(t.servers));

    // Drain: wait for what is still in flight (publishers end with their last PUBACK).
    let drain_until = Instant::now() + spec.drain + spec.duration;
    let (published, pub_results) = tokio::select! {
        r = &mut publishing_ends => r??,
        _ = tokio::time::sleep_until(drain_until.into()) => {
            let _ = stop_tx.send(true);
            publishing_ends.await??
        }
    };
    let expected = published * spec.subs_per_pub as u64;
    let drain_until = Instant::now() + spec.drain;
    while shared.delivered.load(Relaxed) < expected && Instant::now() < drain_until {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let _ = stop_tx.send(true);

    let mut e2e = histogram();
    let mut out_of_order = 0;
    while let Some(r) = sub_tasks.join_next().await {
        let s = r??;
        e2e.add(&s.hist)?;
        out_of_order += s.out_of_order;
    }
    let mut puback = histogram();
    let mut acked = 0;
    for r in &pub_results {
        puback.add(&r.puback)?;
        acked += r.acked;
    }
    let delivered = shared.delivered.load(Relaxed);
    if delivered == 0 {
        bail!("nothing was delivered ({published} messages published)");
    }
    Ok(FlowOutcome {
        published,
        acked,
        expected,
        delivered,
        delivered_in_window: shared.delivered_window.load(Relaxed),
        window_secs: (window_end - warm_ns) as f64 / 1e9,
        out_of_order,
        e2e,
        puback,
        broker_cpu,
        self_cpu,
        servers_cpu,
    })
}

/// `what` (CPU seconds over wall seconds) as a share of a core, and per delivery.
fn cpu_figures(
    r: &mut Results,
    what: &str,
    (cpu, wall): (f64, f64),
    delivered: u64,
    fixed_rate: bool,
) {
    let better = if fixed_rate {
        Better::Lower
    } else {
        Better::Info
    };
    r.add(what, "% of a core", better, 100.0 * cpu / wall.max(1e-9));
    if delivered > 0 {
        let per = format!("{what} per delivery");
        r.add(&per, "µs", Better::Lower, cpu * 1e6 / delivered as f64);
    }
}

/// The figures of a flow. `fixed_rate`: CPU use is comparable (same load on every broker).
pub fn flow_figures(
    r: &mut Results,
    o: &FlowOutcome,
    broker: Proc,
    fixed_rate: bool,
) -> anyhow::Result<()> {
    let rate = o.delivered_in_window as f64 / o.window_secs.max(1e-9);
    let what = if fixed_rate {
        "delivered (achieved)"
    } else {
        "delivered"
    };
    r.add(
        what,
        "msg/s",
        if fixed_rate {
            Better::Info
        } else {
            Better::Higher
        },
        rate,
    );
    r.latency("end-to-end", &o.e2e, fixed_rate)?;
    r.latency("PUBACK", &o.puback, false)?;
    cpu_figures(
        r,
        "broker CPU",
        o.broker_cpu,
        o.delivered_in_window,
        fixed_rate,
    );
    if let Some(servers) = o.servers_cpu {
        let what = "all server processes CPU";
        cpu_figures(r, what, servers, o.delivered_in_window, fixed_rate);
    }
    r.add(
        "broker peak RSS",
        "MiB",
        Better::Lower,
        broker.peak_rss_kib()? as f64 / 1024.0,
    );
    r.add(
        "loadgen CPU",
        "% of a core",
        Better::Info,
        100.0 * o.self_cpu.0 / o.self_cpu.1.max(1e-9),
    );
    r.add("published", "msgs", Better::Info, o.published as f64);
    r.add(
        "not delivered",
        "msgs",
        Better::Info,
        o.expected.saturating_sub(o.delivered) as f64,
    );
    if o.out_of_order > 0 {
        r.add(
            "out of order or repeated",
            "msgs",
            Better::Info,
            o.out_of_order as f64,
        );
    }
    if o.acked < o.published {
        r.add(
            "PUBACK missing",
            "msgs",
            Better::Info,
            (o.published - o.acked) as f64,
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Idle connections.

#[derive(Debug, Clone)]
pub struct IdleSpec {
    pub clients: usize,
    pub concurrency: usize,
    pub settle: Duration,
}

/// N clients connect (clean session) and subscribe to a topic of their own, then sit idle:
/// connect rate and the broker's memory per connection.
pub async fn run_idle(
    t: &Target,
    spec: IdleSpec,
    mut names: Names,
    r: &mut Results,
) -> anyhow::Result<()> {
    if t.proto != Proto::Mqtt {
        bail!("the idle scenario needs an MQTT broker");
    }
    let roles: Vec<Role> = (0..spec.clients).map(Role::Own).collect();
    names.prepare(t, &roles, &[]).await?;
    tokio::time::sleep(spec.settle).await;
    let before = t.broker.rss_kib()?;
    let drops = crate::procstat::listen_drops();
    let cpu = CpuMark::take(t.broker)?;
    let limit = Arc::new(Semaphore::new(spec.concurrency));
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    for i in 0..spec.clients {
        let (t, limit, names) = (*t, limit.clone(), names.clone());
        tasks.spawn(async move {
            let _permit = limit.acquire().await?;
            let t0 = Instant::now();
            let mut conn = open(&t, &names, Role::Own(i)).await?;
            conn.subscribe(&[names.own_filter(i)]).await?;
            Ok::<_, anyhow::Error>((conn, t0.elapsed()))
        });
    }
    let mut conns = Vec::with_capacity(spec.clients);
    let mut setup = histogram();
    while let Some(res) = tasks.join_next().await {
        let (conn, took) = res?.with_context(|| {
            format!(
                "{} of {} clients connected before this failure",
                conns.len(),
                spec.clients
            )
        })?;
        setup.saturating_record(took.as_nanos() as u64);
        conns.push(conn);
    }
    let elapsed = started.elapsed().as_secs_f64();
    let (cpu_used, _) = cpu.since(t.broker)?;
    let drops = crate::procstat::listen_drops()
        .zip(drops)
        .map(|(a, b)| a - b);
    tokio::time::sleep(spec.settle).await;
    let after = t.broker.rss_kib()?;
    let n = spec.clients as f64;
    r.add("clients", "", Better::Info, n);
    r.add(
        "connect + subscribe rate",
        "conn/s",
        Better::Higher,
        n / elapsed,
    );
    r.add(
        "connect + subscribe p50",
        "ms",
        Better::Lower,
        setup.value_at_quantile(0.5) as f64 / 1e6,
    );
    r.add(
        "connect + subscribe p99",
        "ms",
        Better::Lower,
        setup.value_at_quantile(0.99) as f64 / 1e6,
    );
    r.add(
        "broker CPU per connection",
        "µs",
        Better::Lower,
        cpu_used * 1e6 / n,
    );
    r.add(
        "broker RSS before",
        "MiB",
        Better::Info,
        before as f64 / 1024.0,
    );
    r.add(
        "broker RSS after",
        "MiB",
        Better::Lower,
        after as f64 / 1024.0,
    );
    r.add(
        "broker RSS per connection",
        "KiB",
        Better::Lower,
        after.saturating_sub(before) as f64 / n,
    );
    if let Some(d) = drops {
        r.add(
            "listen queue drops (kernel)",
            "SYNs",
            Better::Info,
            d as f64,
        );
    }
    // Close them all at once (the broker restarts for the next scenario anyway).
    drop(conns);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Reconnect storm.

#[derive(Debug, Clone)]
pub struct StormSpec {
    pub clients: usize,
    /// Messages queued for each client while it is away (at most 64).
    pub per_client: u64,
    pub concurrency: usize,
    /// Give up on the storm after this long.
    pub timeout: Duration,
    pub payload: usize,
}

fn persistent<'a>(client_id: &'a str, login: Option<&'a (String, String)>) -> ConnectOptions<'a> {
    ConnectOptions {
        client_id,
        clean_session: false,
        keep_alive: 120,
        login: login.map(|(u, p)| (u.as_str(), p.as_str())),
    }
}

#[derive(Default)]
struct Reconnected {
    /// When CONNACK came, from the start of the storm.
    connack: Option<Duration>,
    /// When the last queued message came.
    done: Option<Duration>,
    session_present: bool,
    received: u64,
    duplicates: u64,
    error: Option<String>,
}

/// One client of the storm: reconnects to its session and reads until every one of the `want`
/// messages queued for it has arrived.
async fn reconnect(
    addr: SocketAddr,
    (id, login): (&str, Option<&(String, String)>),
    want: u64,
    started: Instant,
    out: &mut Reconnected,
) -> anyhow::Result<Conn> {
    let mut conn = wire::mqtt_connect(addr, &persistent(id, login)).await?;
    out.connack = Some(started.elapsed());
    out.session_present = conn.session_present;
    let full = if want == 64 {
        u64::MAX
    } else {
        (1u64 << want) - 1
    };
    let mut seen = 0u64;
    let mut acks = BytesMut::new();
    loop {
        while let Some(frame) = decode(Proto::Mqtt, &mut conn.rbuf)? {
            if let Incoming::Publish {
                pkid,
                qos1,
                payload,
            } = frame
            {
                if qos1 {
                    encode_ack(Proto::Mqtt, &mut acks, pkid);
                }
                // Chat streams carry receipt events too.
                let Some(s) = Stamp::read(&payload) else {
                    if login.is_some() {
                        continue;
                    }
                    bail!("payload without a stamp");
                };
                let bit = 1u64 << s.seq.min(63);
                if seen & bit != 0 {
                    out.duplicates += 1;
                }
                seen |= bit;
                out.received += 1;
            }
        }
        if !acks.is_empty() {
            conn.stream.write_all(&acks).await?;
            acks.clear();
        }
        if seen == full {
            return Ok(conn);
        }
        if conn.stream.read_buf(&mut conn.rbuf).await? == 0 {
            bail!("the broker closed a reconnected client");
        }
    }
}

/// Clients with persistent sessions subscribe, go away, messages are queued for them, then all
/// reconnect at once: how long until every queued message has arrived.
pub async fn run_storm(
    t: &Target,
    spec: StormSpec,
    mut names: Names,
    r: &mut Results,
) -> anyhow::Result<()> {
    if t.proto != Proto::Mqtt {
        bail!("the storm scenario needs an MQTT broker");
    }
    if spec.per_client == 0 || spec.per_client > 64 {
        bail!("--msgs-per-client must be 1 to 64");
    }
    let mut roles: Vec<Role> = (0..spec.clients).map(Role::Own).collect();
    roles.push(Role::Feeder);
    names.prepare(t, &roles, &[]).await?;
    let id = |i: usize| (names.client_id(Role::Own(i)), names.login(Role::Own(i)));

    // 1. Everyone subscribes with a persistent session, then leaves.
    let limit = Arc::new(Semaphore::new(spec.concurrency));
    let mut tasks = JoinSet::new();
    for i in 0..spec.clients {
        let (addr, limit, (id, login), topic) = (t.addr, limit.clone(), id(i), names.own_filter(i));
        tasks.spawn(async move {
            let _permit = limit.acquire().await?;
            let mut conn = wire::mqtt_connect(addr, &persistent(&id, login.as_ref())).await?;
            conn.subscribe(&[topic]).await?;
            conn.disconnect().await;
            Ok::<_, anyhow::Error>(())
        });
    }
    while let Some(res) = tasks.join_next().await {
        res?.context("storm, first connection (subscribe, then disconnect)")?;
    }
    // Let the broker see every DISCONNECT before messages are published.
    tokio::time::sleep(Duration::from_millis(500)).await;

    // 2. One publisher queues `per_client` messages for each of them (QoS 1, all PUBACKed).
    let published_in = async {
        let started = Instant::now();
        let mut conn = open(t, &names, Role::Feeder).await?;
        let total = spec.clients as u64 * spec.per_client;
        let topics: Vec<Vec<u8>> = (0..spec.clients)
            .map(|i| names.to_own(i).into_bytes())
            .collect();
        let (mut sent, mut acked, mut pkid) = (0u64, 0u64, 0u16);
        let mut wbuf = BytesMut::new();
        const WINDOW: u64 = 100;
        while acked < total {
            while sent < total && sent - acked < WINDOW {
                let (client, seq) = (
                    (sent % spec.clients as u64) as usize,
                    sent / spec.clients as u64,
                );
                pkid = pkid.checked_add(1).unwrap_or(1);
                let stamp = Stamp {
                    ts_ns: now_ns(),
                    seq,
                    publisher: client as u32,
                };
                encode_publish(
                    Proto::Mqtt,
                    &mut wbuf,
                    &topics[client],
                    pkid,
                    &stamp,
                    spec.payload,
                );
                sent += 1;
            }
            if !wbuf.is_empty() {
                conn.stream.write_all(&wbuf).await?;
                wbuf.clear();
            }
            match tokio::time::timeout(spec.timeout, conn.next())
                .await
                .context("no PUBACK in time while queueing messages")??
            {
                Incoming::Ack { .. } => acked += 1,
                other => bail!("publisher got {other:?}"),
            }
        }
        conn.disconnect().await;
        Ok::<_, anyhow::Error>(started.elapsed())
    }
    .await
    .context("storm, queueing messages for the absent clients")?;
    tokio::time::sleep(Duration::from_millis(200)).await;

    // 3. The storm: everyone reconnects at once and collects what was queued. A client that
    // cannot get back in before the storm's timeout is counted, not an error.
    let drops = crate::procstat::listen_drops();
    let cpu = CpuMark::take(t.broker)?;
    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + spec.timeout;
    let mut tasks = JoinSet::new();
    for i in 0..spec.clients {
        let (addr, (id, login), want) = (t.addr, id(i), spec.per_client);
        tasks.spawn(async move {
            let mut out = Reconnected::default();
            let attempt = reconnect(addr, (&id, login.as_ref()), want, started, &mut out);
            let conn = match tokio::time::timeout_at(deadline, attempt).await {
                Ok(Ok(conn)) => {
                    out.done = Some(started.elapsed());
                    Some(conn)
                }
                Ok(Err(e)) => {
                    out.error = Some(format!("{e:#}"));
                    None
                }
                Err(_) => None,
            };
            (out, conn)
        });
    }
    let mut outcomes = Vec::with_capacity(spec.clients);
    let mut conns = Vec::with_capacity(spec.clients);
    while let Some(res) = tasks.join_next().await {
        let (o, conn) = res?;
        outcomes.push(o);
        conns.extend(conn);
    }
    let (cpu_used, _) = cpu.since(t.broker)?;
    let drops = crate::procstat::listen_drops()
        .zip(drops)
        .map(|(a, b)| a - b);
    for conn in conns {
        conn.disconnect().await;
    }

    let n = spec.clients as f64;
    let expected = spec.clients as u64 * spec.per_client;
    let received: u64 = outcomes.iter().map(|o| o.received - o.duplicates).sum();
    let duplicates: u64 = outcomes.iter().map(|o| o.duplicates).sum();
    let complete = outcomes.iter().all(|o| o.done.is_some());
    let resumed = outcomes.iter().filter(|o| o.session_present).count();
    let reconnected = outcomes.iter().filter(|o| o.connack.is_some()).count();
    let mut connack = histogram();
    for o in &outcomes {
        if let Some(c) = o.connack {
            connack.saturating_record(c.as_nanos() as u64);
        }
    }
    let errors: Vec<&String> = outcomes.iter().filter_map(|o| o.error.as_ref()).collect();
    if let Some(first) = errors.first() {
        eprintln!("storm: {} clients failed, the first: {first}", errors.len());
    }
    r.add("clients", "", Better::Info, n);
    r.add("queued messages", "msgs", Better::Info, expected as f64);
    r.add(
        "queueing publish rate",
        "msg/s",
        Better::Info,
        expected as f64 / published_in.as_secs_f64(),
    );
    r.add(
        "all reconnected (last CONNACK)",
        "ms",
        Better::Lower,
        if reconnected == spec.clients {
            connack.max() as f64 / 1e6
        } else {
            f64::NAN
        },
    );
    r.add(
        "CONNACK p50",
        "ms",
        Better::Lower,
        connack.value_at_quantile(0.5) as f64 / 1e6,
    );
    let all_in = outcomes
        .iter()
        .filter_map(|o| o.done)
        .max()
        .unwrap_or_default();
    r.add(
        "all queued messages received",
        "ms",
        Better::Lower,
        if complete {
            all_in.as_secs_f64() * 1e3
        } else {
            f64::NAN
        },
    );
    r.add(
        "reconnected in time",
        "clients",
        Better::Info,
        reconnected as f64,
    );
    r.add("sessions resumed", "clients", Better::Info, resumed as f64);
    r.add("messages received", "msgs", Better::Info, received as f64);
    r.add(
        "messages missing",
        "msgs",
        Better::Info,
        expected.saturating_sub(received) as f64,
    );
    if duplicates > 0 {
        r.add("duplicates", "msgs", Better::Info, duplicates as f64);
    }
    r.add(
        "broker CPU during storm",
        "ms",
        Better::Lower,
        cpu_used * 1e3,
    );
    if let Some(d) = drops {
        r.add(
            "listen queue drops (kernel)",
            "SYNs",
            Better::Info,
            d as f64,
        );
    }
    r.add(
        "broker peak RSS",
        "MiB",
        Better::Lower,
        t.broker.peak_rss_kib()? as f64 / 1024.0,
    );
    if received == 0 {
        bail!("no queued message arrived after the reconnect ({resumed} sessions resumed)");
    }
    if !complete {
        eprintln!(
            "storm: {} of {expected} queued messages arrived within {:?} ({resumed}/{} sessions resumed)",
            received, spec.timeout, spec.clients
        );
    }
    Ok(())
}
