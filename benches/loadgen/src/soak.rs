//! `loadgen soak`: holds many chat connections to natter for a long time, with a trickle of
//! direct messages among them, and samples the broker's resident memory and open file
//! descriptors into a CSV file (at the start, once all are connected, then at a fixed interval).
//! What it looks for is growth: memory or descriptors that climb while the load stays the same.
//!
//! Every client is a device of an account of its own (the chat scheme, as in the idle scenario),
//! subscribed to its stream `u/{user}/#`. Each connection has a task that reads (acknowledging
//! every QoS 1 delivery, as apps do), sends PINGREQ at half its keep alive, and publishes the
//! messages the trickle hands it.

use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::{BufMut, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;

use crate::procstat::Proc;
use crate::scenarios::{Names, Role, Target};
use crate::wire::{self, decode, encode_publish, now_ns, Conn, ConnectOptions, Incoming, Stamp};

/// What one soak run does.
#[derive(Debug, Clone)]
pub struct SoakSpec {
    pub clients: usize,
    /// Connections set up at the same time.
    pub concurrency: usize,
    /// How long the connections are held once all are up.
    pub duration: Duration,
    /// Time between two samples of the broker.
    pub sample_every: Duration,
    /// Messages per second, all clients together.
    pub rate: f64,
    /// The keep alive each client asks for (it pings at half of it).
    pub keep_alive: u16,
    pub payload: usize,
}

/// Counters every connection task updates.
#[derive(Default)]
struct Counters {
    sent: AtomicU64,
    acked: AtomicU64,
    /// PUBLISH packets received: messages and the receipts of what a client sent.
    received: AtomicU64,
    /// Connections that ended before the soak did.
    lost: AtomicU64,
}

/// Runs the soak and writes its samples to `csv`. Fails if any connection was lost.
pub async fn run(t: &Target, spec: SoakSpec, mut names: Names, csv: &Path) -> anyhow::Result<()> {
    let roles: Vec<Role> = (0..spec.clients).map(Role::Own).collect();
    names.prepare(t, &roles, &[]).await?;
    let mut out = Samples::create(csv, t.broker)?;
    let counters = Arc::new(Counters::default());
    out.sample("start", 0, &counters)?;
    let started = Instant::now();
    let outboxes = connect_all(t, &spec, &names, &counters).await?;
    eprintln!(
        "soak: {} connections up in {:.1} s",
        outboxes.len(),
        started.elapsed().as_secs_f64()
    );
    out.sample("connected", outboxes.len(), &counters)?;
    trickle(&spec, &names, &outboxes, &counters, &mut out).await?;
    let lost = counters.lost.load(Relaxed);
    out.sample("end", outboxes.len() - lost as usize, &counters)?;
    drop(outboxes);
    if lost > 0 {
        bail!(
            "{lost} of {} connections were lost during the soak",
            spec.clients
        );
    }
    Ok(())
}

/// Connects and subscribes every client; each gets a task holding its connection, fed through
/// the returned outboxes (the topic to publish to).
async fn connect_all(
    t: &Target,
    spec: &SoakSpec,
    names: &Names,
    counters: &Arc<Counters>,
) -> anyhow::Result<Vec<mpsc::Sender<String>>> {
    let limit = Arc::new(Semaphore::new(spec.concurrency));
    let mut setup = JoinSet::new();
    for i in 0..spec.clients {
        let (t, limit, names, keep_alive) = (*t, limit.clone(), names.clone(), spec.keep_alive);
        setup.spawn(async move {
            let _permit = limit.acquire().await?;
            let (id, login) = (names.client_id(Role::Own(i)), names.login(Role::Own(i)));
            let options = ConnectOptions {
                client_id: &id,
                clean_session: true,
                keep_alive,
                login: login.as_ref().map(|(u, p)| (u.as_str(), p.as_str())),
            };
            let mut conn = wire::mqtt_connect(t.addr, &options).await?;
            conn.subscribe(&[names.own_filter(i)]).await?;
            Ok::<_, anyhow::Error>((i, conn))
        });
    }
    let mut outboxes: Vec<Option<mpsc::Sender<String>>> = vec![None; spec.clients];
    while let Some(res) = setup.join_next().await {
        let (i, conn) = res?.with_context(|| {
            let up = outboxes.iter().flatten().count();
            format!(
                "{up} of {} clients connected before this failure",
                spec.clients
            )
        })?;
        let (tx, rx) = mpsc::channel(16);
        outboxes[i] = Some(tx);
        let link = Link {
            index: i as u32,
            payload: spec.payload,
            ping: Duration::from_secs(u64::from(spec.keep_alive.max(2) / 2)),
            counters: counters.clone(),
        };
        tokio::spawn(async move {
            if let Err(e) = link.hold(conn, rx).await {
                link.counters.lost.fetch_add(1, Relaxed);
                eprintln!("soak: client {}: {e:#}", link.index);
            }
        });
    }
    Ok(outboxes.into_iter().flatten().collect())
}

/// Sends `spec.rate` messages a second from random clients to random others, sampling the
/// broker every `spec.sample_every`, for `spec.duration`.
async fn trickle(
    spec: &SoakSpec,
    names: &Names,
    outboxes: &[mpsc::Sender<String>],
    counters: &Counters,
    out: &mut Samples,
) -> anyhow::Result<()> {
    let start = tokio::time::Instant::now();
    let end = start + spec.duration;
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / spec.rate.max(0.001)));
    let mut next_sample = start + spec.sample_every;
    let mut rng = XorShift(now_ns() | 1);
    let n = outboxes.len();
    while tokio::time::Instant::now() < end {
        tick.tick().await;
        if n >= 2 && spec.rate > 0.0 {
            let from = rng.below(n);
            let to = (from + 1 + rng.below(n - 1)) % n;
            let topic = names.direct(Role::Own(from), Role::Own(to));
            // A full outbox means that client is stuck; the sample shows it as unacked.
            let _ = outboxes[from].try_send(topic);
        }
        if tokio::time::Instant::now() >= next_sample {
            next_sample += spec.sample_every;
            let up = n - counters.lost.load(Relaxed) as usize;
            out.sample("soak", up, counters)?;
        }
    }
    Ok(())
}

/// A held connection's settings and the shared counters.
struct Link {
    index: u32,
    payload: usize,
    ping: Duration,
    counters: Arc<Counters>,
}

impl Link {
    /// Reads and acknowledges deliveries, pings, and publishes what the outbox brings, until
    /// the outbox closes (the end of the soak) or the connection fails.
    async fn hold(&self, mut conn: Conn, mut outbox: mpsc::Receiver<String>) -> anyhow::Result<()> {
        let mut ping = tokio::time::interval(self.ping);
        ping.tick().await;
        let (mut wbuf, mut pkid, mut seq) = (BytesMut::with_capacity(512), 0u16, 0u64);
        loop {
            tokio::select! {
                read = conn.stream.read_buf(&mut conn.rbuf) => {
                    if read? == 0 {
                        bail!("the broker closed the connection");
                    }
                    self.take_frames(&mut conn, &mut wbuf)?;
                }
                topic = outbox.recv() => {
                    let Some(topic) = topic else { return Ok(()) };
                    pkid = pkid % u16::MAX + 1;
                    seq += 1;
                    let stamp = Stamp { ts_ns: now_ns(), seq, publisher: self.index };
                    encode_publish(conn.proto, &mut wbuf, topic.as_bytes(), pkid, &stamp, self.payload);
                    self.counters.sent.fetch_add(1, Relaxed);
                }
                _ = ping.tick() => wbuf.put_slice(&[0xc0, 0x00]),
            }
            if !wbuf.is_empty() {
                conn.stream.write_all(&wbuf).await?;
                wbuf.clear();
            }
        }
    }

    /// Counts what arrived and queues a PUBACK for every QoS 1 delivery.
    fn take_frames(&self, conn: &mut Conn, wbuf: &mut BytesMut) -> anyhow::Result<()> {
        while let Some(frame) = decode(conn.proto, &mut conn.rbuf)? {
            match frame {
                Incoming::Publish { pkid, qos1, .. } => {
                    self.counters.received.fetch_add(1, Relaxed);
                    if qos1 {
                        wire::encode_ack(conn.proto, wbuf, pkid);
                    }
                }
                Incoming::Ack { .. } => {
                    self.counters.acked.fetch_add(1, Relaxed);
                }
                Incoming::Other(_) => {}
            }
        }
        Ok(())
    }
}

/// The CSV of samples: one line per sample, also echoed to stderr.
struct Samples {
    file: std::fs::File,
    broker: Proc,
    started: Instant,
}

impl Samples {
    fn create(path: &Path, broker: Proc) -> anyhow::Result<Samples> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).ok();
        }
        let mut file = std::fs::File::create(path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        writeln!(
            file,
            "elapsed_s,phase,connections,rss_kib,fds,sent,acked,received,lost"
        )?;
        Ok(Samples {
            file,
            broker,
            started: Instant::now(),
        })
    }

    fn sample(&mut self, phase: &str, connections: usize, c: &Counters) -> anyhow::Result<()> {
        let rss = self.broker.rss_kib()?;
        let fds = open_fds(self.broker)?;
        let line = format!(
            "{:.0},{phase},{connections},{rss},{fds},{},{},{},{}",
            self.started.elapsed().as_secs_f64(),
            c.sent.load(Relaxed),
            c.acked.load(Relaxed),
            c.received.load(Relaxed),
            c.lost.load(Relaxed),
        );
        eprintln!("soak: {line}");
        writeln!(self.file, "{line}")?;
        self.file.flush()?;
        Ok(())
    }
}

/// The broker's open file descriptors: the entries of `/proc/PID/fd`.
fn open_fds(p: Proc) -> anyhow::Result<usize> {
    let dir = format!("/proc/{}/fd", p.pid);
    Ok(std::fs::read_dir(&dir)
        .with_context(|| format!("cannot read {dir}"))?
        .count())
}

/// A small PRNG for picking senders and recipients (no dependency for this).
struct XorShift(u64);

impl XorShift {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}
