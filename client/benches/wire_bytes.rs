//! Bytes on the wire per chat message of 100 bytes of text, sent by alice to bob in their
//! direct conversation, for each protocol (MQTT 3.1.1, 5.0), payload format (JSON,
//! MessagePack) and, on 5.0, with and without topic aliases; plus the idle cost of a
//! connection (keep-alive pings, computed).
//!
//! Run it with `cargo bench -p natter-client --bench wire_bytes`: markdown tables on stdout,
//! progress on stderr, in under a minute.
//!
//! How: per combination, a fresh natter server in-process (the tests' `TestServer`, users
//! alice and bob) with one TCP proxy in front of each client (the tests' `Proxy`, which counts
//! the bytes it forwards each way). Both clients connect through their proxy and sync. A
//! warm-up message pays what happens once per conversation or connection (the topic before
//! its alias, a presence subscription and the presence it brings). Then two measurements, each
//! the difference of the counters from a quiet moment to the next, divided by the messages
//! sent:
//!
//! - a burst of N messages, all stored, every copy taken by bob (and by alice: her own), and
//!   the delivered receipt of the last one in: the steady state of a busy conversation, where
//!   the server's batching (one receipt per conversation per `chat.receipt_interval_ms`) makes
//!   receipts nearly free;
//! - one message alone, in the same way: a quiet conversation, where every message gets a
//!   receipt of its own.
//!
//! What the proxy counts is MQTT bytes over TCP: TCP/IP headers (and TLS records, in
//! production) come on top and are not counted.

#[path = "../../tests/common/mod.rs"]
mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::proxy::Proxy;
use common::{poll_until, TestServer};
use natter_client::{Client, Config, Credentials, Event, Format, Protocol};

/// Messages in the burst: enough that its per-message figures are exact to a fraction of a
/// byte, few enough that six combinations run in well under a minute.
const N: u64 = 1000;
/// The text of every message, in bytes (ASCII, so it goes into JSON unescaped).
const PAYLOAD: usize = 100;
const CONV: &str = "d.alice.bob";
const USERS: &[(&str, &str)] = &[("alice", "alice-secret"), ("bob", "bob-secret")];
/// Generous: a busy 2-core machine runs the server, both clients and both proxies.
const LONG: Duration = Duration::from_secs(60);
/// Traffic has settled when neither proxy forwarded a byte for this long. What is waited for
/// explicitly (copies taken, the last receipt in) leaves only the PUBACKs the apps send as
/// they take the last events, a moment later.
const QUIET: Duration = Duration::from_millis(300);

/// One row of the tables.
struct Case {
    protocol: Protocol,
    format: Format,
    /// MQTT 5 topic aliases on the client's PUBLISHes (3.1.1 has none).
    aliases: bool,
}

const CASES: &[Case] = &[
    Case {
        protocol: Protocol::V311,
        format: Format::Json,
        aliases: false,
    },
    // 3.1.1 cannot tell the server the device wants MessagePack (that is a 5.0 CONNECT user
    // property), so this row sends MessagePack and receives JSON.
    Case {
        protocol: Protocol::V311,
        format: Format::MsgPack,
        aliases: false,
    },
    Case {
        protocol: Protocol::V5,
        format: Format::Json,
        aliases: false,
    },
    Case {
        protocol: Protocol::V5,
        format: Format::Json,
        aliases: true,
    },
    Case {
        protocol: Protocol::V5,
        format: Format::MsgPack,
        aliases: false,
    },
    Case {
        protocol: Protocol::V5,
        format: Format::MsgPack,
        aliases: true,
    },
];

impl Case {
    fn protocol(&self) -> &'static str {
        match self.protocol {
            Protocol::V311 => "3.1.1",
            Protocol::V5 => "5.0",
        }
    }

    fn format(&self) -> &'static str {
        match (self.protocol, self.format) {
            (_, Format::Json) => "JSON",
            (Protocol::V311, Format::MsgPack) => "MsgPack up, JSON down",
            (Protocol::V5, Format::MsgPack) => "MsgPack",
        }
    }

    fn aliases(&self) -> &'static str {
        match (self.protocol, self.aliases) {
            (Protocol::V311, _) => "n/a",
            (Protocol::V5, true) => "yes",
            (Protocol::V5, false) => "no",
        }
    }

    fn name(&self) -> String {
        format!(
            "{} {} aliases {}",
            self.protocol(),
            self.format(),
            self.aliases()
        )
    }
}

/// Bytes per message, each way, for each client.
struct Row {
    sender_up: f64,
    sender_down: f64,
    receiver_down: f64,
    receiver_up: f64,
    /// Delivered receipts each app got, per message (alice, bob): the server sends them to
    /// every member of the conversation, so both down columns carry them.
    receipts: (f64, f64),
}

impl Row {
    fn total(&self) -> f64 {
        self.sender_up + self.sender_down + self.receiver_down + self.receiver_up
    }
}

/// A combination's two measurements.
struct Measured {
    burst: Row,
    single: Row,
}

/// What a client's app took, counted by the task that takes every event as it comes (an
/// untaken message is never acknowledged, so without it nothing would flow).
#[derive(Default)]
struct Taken {
    entries: AtomicU64,
    delivered: AtomicU64,
    /// The highest `seq` a delivered receipt of the conversation said.
    delivered_up_to: AtomicU64,
    /// Connection losses: any one would put reconnect traffic into the figures.
    disconnects: AtomicU64,
}

impl Taken {
    fn entries(&self) -> u64 {
        self.entries.load(Ordering::SeqCst)
    }

    fn delivered(&self) -> u64 {
        self.delivered.load(Ordering::SeqCst)
    }

    fn delivered_up_to(&self) -> u64 {
        self.delivered_up_to.load(Ordering::SeqCst)
    }
}

/// Both proxies' counters: (client to server, server to client).
#[derive(Clone, Copy, PartialEq, Eq)]
struct Counters {
    alice: (u64, u64),
    bob: (u64, u64),
    /// Delivered receipts taken so far by alice's and bob's apps.
    receipts: (u64, u64),
}

impl Counters {
    /// Per message from `self` to `later`, over `n` messages.
    fn per_message(&self, later: &Counters, n: u64) -> Row {
        let per = |a: u64, b: u64| b.saturating_sub(a) as f64 / n as f64;
        Row {
            sender_up: per(self.alice.0, later.alice.0),
            sender_down: per(self.alice.1, later.alice.1),
            receiver_down: per(self.bob.1, later.bob.1),
            receiver_up: per(self.bob.0, later.bob.0),
            receipts: (
                per(self.receipts.0, later.receipts.0),
                per(self.receipts.1, later.receipts.1),
            ),
        }
    }
}

/// Two clients, each through its own proxy, and what their apps took.
struct Pair {
    alice: Client,
    bob: Client,
    alice_took: Arc<Taken>,
    bob_took: Arc<Taken>,
    alice_proxy: Proxy,
    bob_proxy: Proxy,
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime for the clients");
    let started = Instant::now();
    let mut rows = Vec::new();
    let mut failed = false;
    for case in CASES {
        eprintln!("wire_bytes: {} ...", case.name());
        match runtime.block_on(measure(case)) {
            Ok(measured) => rows.push((case, measured)),
            Err(why) => {
                eprintln!("wire_bytes: {}: {why}", case.name());
                failed = true;
            }
        }
    }
    eprintln!("wire_bytes: done in {:.1?}", started.elapsed());
    print_report(&rows);
    if failed {
        std::process::exit(1);
    }
}

/// One combination on a fresh server, so every combination starts from `seq` 1 and the same
/// connection state.
async fn measure(case: &Case) -> Result<Measured, String> {
    let phase = Instant::now();
    // No publish rate limit: the default (100/s, bursts of 200) throttles by not reading, which
    // delays bytes without changing them, and would make the burst take 8 s per combination.
    // The one thing that depends on time, receipt batching, is what the single message shows.
    let server = TestServer::start_with_users(USERS, |c| c.limits.publish_rate = 0);
    let dir = tempfile::tempdir().expect("a temporary directory for the clients' data");
    let alice_proxy = Proxy::start(server.mqtt);
    let bob_proxy = Proxy::start(server.mqtt);
    let config = |proxy: &Proxy, user: &str| {
        let mut c = Config::new(
            proxy.addr().to_string(),
            user,
            "phone",
            Credentials::Password(format!("{user}-secret")),
            dir.path().join(user),
        );
        c.protocol = case.protocol;
        c.format = case.format;
        c.topic_aliases = case.aliases;
        c
    };
    let (alice, alice_took) = start(config(&alice_proxy, "alice"));
    let (bob, bob_took) = start(config(&bob_proxy, "bob"));
    let pair = Pair {
        alice,
        bob,
        alice_took,
        bob_took,
        alice_proxy,
        bob_proxy,
    };
    pair.alice
        .synced(LONG)
        .await
        .map_err(|e| format!("alice never synced: {e}"))?;
    pair.bob
        .synced(LONG)
        .await
        .map_err(|e| format!("bob never synced: {e}"))?;

    // Message numbers are the `seq`s the server gives them: the conversation is new.
    let warm_up = pair.exchange(1, 1).await?;
    let single = pair.exchange(2, 1).await?;
    let setup = phase.elapsed();
    let phase = Instant::now();
    let burst = pair.exchange(3, N).await?;
    eprintln!(
        "wire_bytes:   set up and single message {setup:.1?}, {N} messages {:.1?}",
        phase.elapsed()
    );

    let disconnects = pair.alice_took.disconnects.load(Ordering::SeqCst)
        + pair.bob_took.disconnects.load(Ordering::SeqCst);
    if disconnects > 0 {
        return Err(format!(
            "{disconnects} disconnect(s): reconnect traffic would be in the figures"
        ));
    }
    pair.alice.close().await;
    pair.bob.close().await;
    Ok(Measured {
        burst: single.per_message(&burst, N),
        single: warm_up.per_message(&single, 1),
    })
}

impl Pair {
    /// Sends messages `first..first + count` (their `seq`s), all into the outbox at once (the
    /// client keeps its own window of unacknowledged PUBLISHes, as with an app's burst); waits
    /// until each is stored, both apps took every copy (taking one is what acknowledges it),
    /// and both have the delivered receipt of the last; returns the counters once quiet.
    async fn exchange(&self, first: u64, count: u64) -> Result<Counters, String> {
        let last = first + count - 1;
        let mut sending = Vec::new();
        for seq in first..=last {
            let s = self
                .alice
                .send(CONV, text(seq))
                .map_err(|e| format!("send {seq}: {e}"))?;
            sending.push(s);
        }
        let stored = async {
            for s in sending {
                s.stored().await?;
            }
            Ok::<_, natter_client::Error>(())
        };
        tokio::time::timeout(LONG, stored)
            .await
            .map_err(|_| format!("messages up to {last} not all stored within {LONG:?}"))?
            .map_err(|e| format!("a message was not stored: {e}"))?;
        wait_for(&format!("bob to take message {last}"), || {
            self.bob_took.entries() >= last
        })
        .await?;
        wait_for(&format!("alice to take her copy of {last}"), || {
            self.alice_took.entries() >= last
        })
        .await?;
        wait_for(&format!("the delivered receipts of {last}"), || {
            self.alice_took.delivered_up_to() >= last && self.bob_took.delivered_up_to() >= last
        })
        .await?;
        Ok(self.settle().await)
    }

    /// The counters once neither proxy has forwarded anything for [`QUIET`] (or, should
    /// traffic never stop, after [`LONG`]: a figure then shows the noise rather than hiding
    /// it).
    async fn settle(&self) -> Counters {
        let read = || Counters {
            alice: self.alice_proxy.bytes(),
            bob: self.bob_proxy.bytes(),
            receipts: (self.alice_took.delivered(), self.bob_took.delivered()),
        };
        let deadline = Instant::now() + LONG;
        let mut last = read();
        let mut since = Instant::now();
        loop {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let now = read();
            if now != last {
                (last, since) = (now, Instant::now());
            } else if since.elapsed() >= QUIET || Instant::now() >= deadline {
                return last;
            }
        }
    }
}

/// Message `seq`: its number, then filler to exactly [`PAYLOAD`] bytes.
fn text(seq: u64) -> String {
    let mut t = format!("message {seq:05} ");
    t.extend(std::iter::repeat_n('x', PAYLOAD - t.len()));
    t
}

/// Starts a client whose events a task takes as they come, counting what matters here.
fn start(config: Config) -> (Client, Arc<Taken>) {
    let (client, mut events) = Client::start(config).expect("start a client");
    let taken = Arc::new(Taken::default());
    let counts = taken.clone();
    tokio::spawn(async move {
        while let Some(event) = events.next().await {
            match event {
                Event::Entry(e) if e.conv == CONV => {
                    counts.entries.fetch_add(1, Ordering::SeqCst);
                }
                Event::Receipt(r) if r.kind == "delivered" && r.conv == CONV => {
                    counts.delivered.fetch_add(1, Ordering::SeqCst);
                    counts.delivered_up_to.fetch_max(r.seq, Ordering::SeqCst);
                }
                Event::Disconnected { .. } => {
                    counts.disconnects.fetch_add(1, Ordering::SeqCst);
                }
                _ => {}
            }
        }
    });
    (client, taken)
}

async fn wait_for(what: &str, done: impl Fn() -> bool) -> Result<(), String> {
    poll_until(LONG, async || done().then_some(()))
        .await
        .ok_or_else(|| format!("waited {LONG:?} for {what}"))
}

fn print_table(rows: &[(&Case, &Row)]) {
    println!(
        "| protocol | format | aliases | sender up | sender down | receiver down | receiver up \
         | total | × payload |"
    );
    println!("|---|---|---|---:|---:|---:|---:|---:|---:|");
    for (case, row) in rows {
        println!(
            "| {} | {} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.2} |",
            case.protocol(),
            case.format(),
            case.aliases(),
            row.sender_up,
            row.sender_down,
            row.receiver_down,
            row.receiver_up,
            row.total(),
            row.total() / PAYLOAD as f64,
        );
    }
}

fn print_report(rows: &[(&Case, Measured)]) {
    println!(
        "## Bytes on the wire per {PAYLOAD}-byte chat message, alice → bob in a direct \
         conversation\n"
    );
    println!("A burst of {N} messages (receipts batched):\n");
    let burst: Vec<_> = rows.iter().map(|(c, m)| (*c, &m.burst)).collect();
    print_table(&burst);
    let receipts: Vec<String> = rows
        .iter()
        .map(|(_, m)| format!("{:.3}/{:.3}", m.burst.receipts.0, m.burst.receipts.1))
        .collect();
    println!(
        "\nDelivered receipts per message in the burst, alice/bob, in row order: {}.",
        receipts.join(", ")
    );
    println!("\nOne message alone (a receipt of its own, to each member):\n");
    let single: Vec<_> = rows.iter().map(|(c, m)| (*c, &m.single)).collect();
    print_table(&single);
    println!(
        "\nLegend: bytes per message, MQTT bytes over TCP as a proxy in front of each client \
         counts them (TCP/IP headers and TLS records not counted).\n\
         - sender up: alice's QoS 1 PUBLISH on `c/{CONV}/m` (the topic, or on 5.0 with aliases \
         a 2-byte alias after the first), and her PUBACKs of what the server sends her.\n\
         - sender down: the server's PUBACK of her PUBLISH; her own stored copy on \
         `u/alice/c/{CONV}/m` (she subscribes to her whole stream, so a second device of hers \
         stays in sync; the copy is also how the client learns the message's `seq`); the \
         delivered receipts on `u/alice/c/{CONV}/r`.\n\
         - receiver down: bob's copy (the stored envelope: id, conv, seq, from, dev, ts, kind, \
         cid, text), and the same delivered receipts (sent to every member, bob included).\n\
         - receiver up: bob's PUBACK of his copy (which makes the delivered receipt), and of \
         each receipt.\n\
         - × payload: total bytes over the {PAYLOAD} bytes of text.\n\
         - 3.1.1 with MessagePack: sends are MessagePack, but everything received is JSON (the \
         server learns the format from a 5.0 CONNECT user property, which 3.1.1 lacks)."
    );
    let keep_alive = Config::new(
        "127.0.0.1:1883",
        "u",
        "d",
        Credentials::Password(String::new()),
        ".",
    )
    .keep_alive;
    // Computed, not measured: waiting out minutes of idle links would make this bench slow,
    // and the sizes are fixed by the protocol. PINGREQ is 0xC0 0x00 and PINGRESP 0xD0 0x00 in
    // both 3.1.1 and 5.0, one pair per keep-alive interval (rumqttc pings on a fixed timer).
    let (ping_req, ping_resp) = (2.0, 2.0);
    let per_minute = 60.0 / keep_alive.as_secs_f64();
    println!(
        "\nIdle cost per connected device at the default keep alive of {}s, computed from the \
         packet sizes (PINGREQ {ping_req} bytes up, PINGRESP {ping_resp} bytes down per \
         interval), not measured: {:.0} bytes/minute up, {:.0} down, {:.0} in all, on 3.1.1 \
         and 5.0 alike. Each ping and its response is also a TCP segment with 40+ bytes of \
         TCP/IP headers (and TLS framing), not counted here.",
        keep_alive.as_secs(),
        ping_req * per_minute,
        ping_resp * per_minute,
        (ping_req + ping_resp) * per_minute,
    );
}
