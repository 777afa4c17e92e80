//! `loadgen`: the load generator behind `benches/compare.sh`. See `benches/README.md`.
//!
//! - `loadgen run --scenario S --broker NAME --addr ADDR --pid PID ...`: runs one scenario against
//!   one broker and appends its figures to a CSV file.
//! - `loadgen soak --addr ADDR --http ADDR --pid PID --csv FILE ...`: holds many chat
//!   connections to natter with a trickle of messages and samples its memory and descriptors
//!   (`benches/soak.sh`).
//! - `loadgen forward --listen ADDR`: the raw TCP forwarder (the machine's baseline).
//! - `loadgen report --dir DIR`: turns a run's CSV files into Markdown, a CSV table and a PNG.
//! - `loadgen free-port`, `loadgen wait-port ADDR`: helpers for the script.

mod chat;
mod commits;
mod forward;
mod procstat;
mod report;
mod results;
mod rumqttc_client;
mod scenarios;
mod soak;
mod wire;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};

use procstat::Proc;
use results::Results;
use scenarios::{FlowSpec, IdleSpec, Names, StormSpec, Target, TopicScheme};
use wire::Proto;

#[derive(Parser)]
#[command(
    name = "loadgen",
    about = "Load generator for natter's broker benchmarks"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run one scenario against one broker.
    Run(Box<RunArgs>),
    /// Hold many chat connections to natter for a long time and sample its RSS and fds.
    Soak(Box<SoakArgs>),
    /// Serve the raw TCP forwarder (the baseline "broker").
    Forward {
        #[arg(long)]
        listen: SocketAddr,
    },
    /// Write Markdown, CSV and PNG summaries of the results in a directory.
    Report {
        /// The directory holding results.csv and the latency-*.csv files.
        #[arg(long)]
        dir: PathBuf,
        /// Markdown to put above the tables (machine, date, command).
        #[arg(long)]
        header: Option<PathBuf>,
    },
    /// Print COUNT distinct free TCP ports on 127.0.0.1, one per line.
    FreePort {
        #[arg(default_value_t = 1)]
        count: usize,
    },
    /// Wait until ADDR accepts TCP connections.
    WaitPort {
        addr: SocketAddr,
        #[arg(long, default_value_t = 15.0)]
        timeout: f64,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Scenario {
    /// 1:1 pairs, QoS 1, closed loop: maximum delivered throughput.
    P2pMax,
    /// 1:1 pairs, QoS 1, at a fixed total rate: latency.
    P2pRate,
    /// One publisher, many subscribers of one topic, QoS 1, closed loop.
    Fanout,
    /// Many idle clients, each subscribed to its own topic: memory per connection.
    Idle,
    /// Persistent sessions reconnecting at once to collect queued messages.
    Storm,
}

impl Scenario {
    fn name(self) -> &'static str {
        match self {
            Scenario::P2pMax => "p2p-max",
            Scenario::P2pRate => "p2p-rate",
            Scenario::Fanout => "fanout",
            Scenario::Idle => "idle",
            Scenario::Storm => "storm",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ClientKind {
    /// The lean client over rumqttc's mqttbytes (default).
    Lean,
    /// rumqttc's AsyncClient and event loop (flows over MQTT only).
    Rumqttc,
}

#[derive(clap::Args)]
struct RunArgs {
    #[arg(long, value_enum)]
    scenario: Scenario,
    /// Name of the broker in the results (natter, mosquitto, rumqttd, raw).
    #[arg(long)]
    broker: String,
    #[arg(long)]
    addr: SocketAddr,
    /// PID of the broker process (CPU and memory are read from /proc/PID).
    #[arg(long)]
    pid: u32,
    /// Every process that serves the scenario, comma-separated (the broker or brokers, and a
    /// database, NATS servers, a proxy...), each counted with its descendants: flows then also
    /// report "all server processes CPU" and its CPU per delivery.
    #[arg(long, value_delimiter = ',')]
    server_pids: Vec<u32>,
    /// Chat: seconds to wait once the accounts are made, before groups are made and clients
    /// connect (a cluster's nodes learn of accounts made on another node a moment later).
    #[arg(long, default_value_t = 0.0)]
    settle: f64,
    /// `raw` talks to `loadgen forward` instead of an MQTT broker.
    #[arg(long, value_enum, default_value_t = ProtoArg::Mqtt)]
    proto: ProtoArg,
    #[arg(long, value_enum, default_value_t = ClientKind::Lean)]
    client: ClientKind,
    /// Small, short runs (CI smoke test): seconds per scenario.
    #[arg(long)]
    quick: bool,
    /// CSV file the figures are appended to.
    #[arg(long)]
    results: PathBuf,
    /// Directory for latency distributions (for the plot).
    #[arg(long)]
    latency_dir: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t = TopicScheme::Plain)]
    topic_scheme: TopicScheme,
    /// natter's HTTP API (the chat scheme registers its accounts there).
    #[arg(long)]
    http: Option<SocketAddr>,
    /// Flows: report the history commits of the single natter node whose HTTP API this is
    /// (commits per second, messages per commit, each part's p50/p99, from its `/metrics`).
    #[arg(long)]
    commit_metrics: Option<SocketAddr>,
    /// Publisher/subscriber pairs (p2p-*).
    #[arg(long)]
    pairs: Option<usize>,
    /// Subscribers of the one topic (fanout).
    #[arg(long)]
    subs: Option<usize>,
    /// Closed loop: messages a publisher may be ahead of each subscriber.
    #[arg(long, default_value_t = 100)]
    window: usize,
    /// Total publish rate for p2p-rate, msg/s.
    #[arg(long)]
    rate: Option<f64>,
    /// The scenario's name in the results (default: the scenario's own), e.g. `p2p-rate-5k`
    /// for one point of a sweep of rates.
    #[arg(long)]
    label: Option<String>,
    /// Measured seconds (after the warm-up).
    #[arg(long)]
    duration: Option<f64>,
    #[arg(long)]
    warmup: Option<f64>,
    /// Upper bound on messages published per flow scenario.
    #[arg(long)]
    max_msgs: Option<u64>,
    /// Payload size in bytes (at least 42: timestamp, sequence, publisher in hex).
    #[arg(long, default_value_t = 200)]
    payload: usize,
    /// Clients (idle, storm).
    #[arg(long)]
    clients: Option<usize>,
    /// Messages queued per client while away (storm, 1-64).
    #[arg(long)]
    msgs_per_client: Option<u64>,
    /// Connections set up at the same time (idle, and the storm's first phase).
    #[arg(long, default_value_t = 100)]
    connect_concurrency: usize,
    /// Seconds the storm may take before it is reported incomplete.
    #[arg(long)]
    storm_timeout: Option<f64>,
}

#[derive(clap::Args)]
struct SoakArgs {
    /// natter's MQTT listener.
    #[arg(long)]
    addr: SocketAddr,
    /// natter's HTTP API, where the accounts are registered.
    #[arg(long)]
    http: SocketAddr,
    /// PID of the natter process (memory and descriptors are read from /proc/PID).
    #[arg(long)]
    pid: u32,
    /// The CSV file the samples are written to.
    #[arg(long)]
    csv: PathBuf,
    #[arg(long, default_value_t = 10_000)]
    clients: usize,
    /// Seconds the connections are held once all are up.
    #[arg(long, default_value_t = 1800.0)]
    duration: f64,
    /// Seconds between two samples.
    #[arg(long, default_value_t = 60.0)]
    sample_every: f64,
    /// Messages per second, all clients together.
    #[arg(long, default_value_t = 3.0)]
    rate: f64,
    /// Connections set up at the same time.
    #[arg(long, default_value_t = 100)]
    connect_concurrency: usize,
    /// Keep alive each client asks for (seconds); it pings at half of it.
    #[arg(long, default_value_t = 60)]
    keep_alive: u16,
    #[arg(long, default_value_t = 200)]
    payload: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ProtoArg {
    Mqtt,
    Raw,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => run(*args),
        Command::Soak(args) => run_soak(*args),
        Command::Forward { listen } => forward::serve(listen),
        Command::Report { dir, header } => report::write(&dir, header.as_deref()),
        Command::FreePort { count } => free_ports(count),
        Command::WaitPort { addr, timeout } => wait_port(addr, timeout),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("loadgen: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The listeners are held until all are bound, so the ports differ.
fn free_ports(count: usize) -> anyhow::Result<()> {
    let listeners = (0..count)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<Vec<_>, _>>()?;
    for l in &listeners {
        println!("{}", l.local_addr()?.port());
    }
    Ok(())
}

fn wait_port(addr: SocketAddr, timeout: f64) -> anyhow::Result<()> {
    let until = Instant::now() + Duration::from_secs_f64(timeout);
    loop {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        if Instant::now() > until {
            anyhow::bail!("nothing accepts connections on {addr} after {timeout} s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn run_soak(a: SoakArgs) -> anyhow::Result<()> {
    let target = Target {
        proto: Proto::Mqtt,
        addr: a.addr,
        http: Some(a.http),
        broker: Proc { pid: a.pid },
        servers: &[],
        settle: Duration::ZERO,
    };
    anyhow::ensure!(target.broker.alive(), "no process {} (natter)", a.pid);
    let spec = soak::SoakSpec {
        clients: a.clients,
        concurrency: a.connect_concurrency,
        duration: Duration::from_secs_f64(a.duration),
        sample_every: Duration::from_secs_f64(a.sample_every),
        rate: a.rate,
        keep_alive: a.keep_alive,
        payload: a.payload.max(wire::STAMP_LEN),
    };
    let run_id = format!("{:x}", std::process::id());
    let names = Names::new(TopicScheme::Chat, &run_id, "soak");
    tokio::runtime::Runtime::new()?.block_on(soak::run(&target, spec, names, &a.csv))
}

fn secs(v: Option<f64>, quick: f64, full: f64, is_quick: bool) -> Duration {
    Duration::from_secs_f64(v.unwrap_or(if is_quick { quick } else { full }))
}

fn run(a: RunArgs) -> anyhow::Result<()> {
    let q = a.quick;
    let pick =
        |v: Option<usize>, quick: usize, full: usize| v.unwrap_or(if q { quick } else { full });
    let target = Target {
        proto: match a.proto {
            ProtoArg::Mqtt => Proto::Mqtt,
            ProtoArg::Raw => Proto::Raw,
        },
        addr: a.addr,
        http: a.http,
        broker: Proc { pid: a.pid },
        servers: a.server_pids.leak(),
        settle: Duration::from_secs_f64(a.settle),
    };
    anyhow::ensure!(target.broker.alive(), "no process {} (the broker)", a.pid);
    anyhow::ensure!(
        a.payload >= wire::STAMP_LEN,
        "--payload must be at least {}",
        wire::STAMP_LEN
    );
    let scenario = a.scenario.name();
    // A short tag keeps client ids and topics of separate runs apart.
    let run_id = format!("{:x}", std::process::id());
    let names = Names::new(a.topic_scheme, &run_id, scenario);
    let label = a.label.as_deref().unwrap_or(scenario);
    let mut results = Results::new(label, &a.broker, a.latency_dir.clone());
    let rt = tokio::runtime::Runtime::new()?;
    eprintln!("== {label} on {} ({})", a.broker, a.addr);
    rt.block_on(async {
        match a.scenario {
            Scenario::P2pMax | Scenario::P2pRate | Scenario::Fanout => {
                let fixed = a.scenario == Scenario::P2pRate;
                let fanout = a.scenario == Scenario::Fanout;
                let spec = FlowSpec {
                    publishers: if fanout { 1 } else { pick(a.pairs, 10, 10) },
                    subs_per_pub: if fanout { pick(a.subs, 20, 100) } else { 1 },
                    window: (!fixed).then_some(a.window),
                    ack_window: if fixed { 1000 } else { a.window },
                    rate: fixed.then(|| a.rate.unwrap_or(if q { 2_000.0 } else { 10_000.0 })),
                    warmup: secs(a.warmup, 0.2, 1.0, q),
                    duration: secs(a.duration, 1.0, 10.0, q),
                    max_msgs: a.max_msgs.unwrap_or(20_000_000),
                    drain: Duration::from_secs(if q { 2 } else { 5 }),
                    payload: a.payload,
                };
                let before = match a.commit_metrics {
                    Some(http) => Some(commits::read(http).await?),
                    None => None,
                };
                let outcome = match a.client {
                    ClientKind::Lean => scenarios::run_flow(&target, spec, names).await?,
                    ClientKind::Rumqttc => {
                        anyhow::ensure!(
                            target.proto == Proto::Mqtt,
                            "--client rumqttc speaks MQTT only"
                        );
                        rumqttc_client::run_flow(&target, spec, names).await?
                    }
                };
                scenarios::flow_figures(&mut results, &outcome, target.broker, fixed)?;
                if let (Some(http), Some(before)) = (a.commit_metrics, before) {
                    commits::read(http).await?.figures(&before, &mut results);
                }
            }
            Scenario::Idle => {
                let spec = IdleSpec {
                    clients: pick(a.clients, 200, 10_000),
                    concurrency: a.connect_concurrency,
                    settle: Duration::from_millis(if q { 300 } else { 2000 }),
                };
                scenarios::run_idle(&target, spec, names, &mut results).await?;
            }
            Scenario::Storm => {
                let spec = StormSpec {
                    clients: pick(a.clients, 100, 2_000),
                    per_client: a.msgs_per_client.unwrap_or(if q { 3 } else { 5 }),
                    concurrency: a.connect_concurrency,
                    timeout: secs(a.storm_timeout, 20.0, 60.0, q),
                    payload: a.payload,
                };
                scenarios::run_storm(&target, spec, names, &mut results).await?;
            }
        }
        Ok::<_, anyhow::Error>(())
    })
    .with_context(|| format!("{label} on {}", a.broker))?;
    results.print();
    if let Some(dir) = a.results.parent() {
        std::fs::create_dir_all(dir).ok();
    }
    results.append_csv(&a.results)?;
    Ok(())
}
