//! A TCP proxy between a client and the server, for tests of what a client does when the
//! network misbehaves: connections cut, traffic delayed, the server unreachable.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use ring::rand::{SecureRandom, SystemRandom};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Chunks read ahead of a slow writer, per direction, before the proxy stops reading (so a
/// stalled peer pushes back on the sender as a real network would).
const QUEUE: usize = 256;

/// A proxy on 127.0.0.1 to one target, on a thread and runtime of its own (so sync and async
/// tests can use it alike); stopped, with every connection closed, when dropped.
pub struct Proxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

/// What the test controls and observes, shared with the proxy's tasks.
struct Shared {
    target: Mutex<SocketAddr>,
    /// Nanoseconds each chunk waits before it is forwarded.
    delay_nanos: AtomicU64,
    refusing: AtomicBool,
    /// The range of a connection's lifetime, while random cuts are on.
    random_cuts: watch::Sender<Option<(Duration, Duration)>>,
    /// Cancelled when the proxy stops; the parent of every connection's token.
    stop: CancellationToken,
    /// The token of the connections live now: `cut` cancels it and puts a fresh one here.
    live: Mutex<CancellationToken>,
    connections: AtomicUsize,
    up: AtomicU64,
    down: AtomicU64,
    rng: SystemRandom,
}

impl Proxy {
    /// Listens on 127.0.0.1 on an ephemeral port and forwards each connection to `target`.
    pub fn start(target: SocketAddr) -> Proxy {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        let addr = listener.local_addr().expect("proxy address");
        let stop = CancellationToken::new();
        let shared = Arc::new(Shared {
            target: Mutex::new(target),
            delay_nanos: AtomicU64::new(0),
            refusing: AtomicBool::new(false),
            random_cuts: watch::Sender::new(None),
            live: Mutex::new(stop.child_token()),
            stop,
            connections: AtomicUsize::new(0),
            up: AtomicU64::new(0),
            down: AtomicU64::new(0),
            rng: SystemRandom::new(),
        });
        let accepting = shared.clone();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("proxy runtime");
            runtime.block_on(async move {
                let listener = TcpListener::from_std(listener).expect("proxy listener");
                accept(listener, accepting).await;
            });
            // Dropping the runtime drops the connections' tasks, closing their sockets.
        });
        Proxy {
            addr,
            shared,
            thread: Some(thread),
        }
    }

    /// Where clients connect instead of the server.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Sends new connections to `target` (a restarted server listens on new ports); live ones
    /// stay where they are.
    pub fn set_target(&self, target: SocketAddr) {
        *lock(&self.shared.target) = target;
    }

    /// Closes every live connection now, both sides, as a dropped network would.
    pub fn cut(&self) {
        self.shared.cut();
    }

    /// Forwards each chunk `delay` after it arrived, in order, both ways (a slow link); zero
    /// forwards at once. Chunks already on their way keep the delay they had.
    pub fn set_delay(&self, delay: Duration) {
        let nanos = u64::try_from(delay.as_nanos()).unwrap_or(u64::MAX);
        self.shared.delay_nanos.store(nanos, Ordering::SeqCst);
    }

    /// While on, closes each new connection as soon as it is accepted (the server down, as the
    /// client sees it); turning it on cuts the live connections too.
    pub fn set_refusing(&self, refusing: bool) {
        self.shared.refusing.store(refusing, Ordering::SeqCst);
        if refusing {
            self.shared.cut();
        }
    }

    /// While `Some((min, max))`, cuts each connection after a lifetime drawn uniformly from
    /// `min..=max` (an unreliable network); a connection already live when it is set draws its
    /// lifetime from then. `None` lets connections live again.
    pub fn set_random_cuts(&self, range: Option<(Duration, Duration)>) {
        self.shared.random_cuts.send_replace(range);
    }

    /// The connections accepted so far, refused ones included (to assert a client reconnected).
    pub fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::SeqCst)
    }

    /// The bytes forwarded so far: (client to server, server to client).
    pub fn bytes(&self) -> (u64, u64) {
        (
            self.shared.up.load(Ordering::SeqCst),
            self.shared.down.load(Ordering::SeqCst),
        )
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.stop.cancel();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Shared {
    fn cut(&self) {
        let mut live = lock(&self.live);
        live.cancel();
        *live = self.stop.child_token();
    }

    fn delay(&self) -> Duration {
        Duration::from_nanos(self.delay_nanos.load(Ordering::SeqCst))
    }

    /// A lifetime drawn uniformly from `min..=max` (either order).
    fn lifetime(&self, (a, b): (Duration, Duration)) -> Duration {
        let (min, max) = (a.min(b), a.max(b));
        let span = u64::try_from((max - min).as_nanos()).unwrap_or(u64::MAX);
        let mut bytes = [0; 8];
        self.rng.fill(&mut bytes).expect("system randomness");
        let draw = u64::from_le_bytes(bytes);
        min + Duration::from_nanos(span.checked_add(1).map_or(draw, |n| draw % n))
    }
}

/// Accepts until the proxy stops; each connection is forwarded on a task of its own.
async fn accept(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let client = tokio::select! {
            _ = shared.stop.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let client = match client {
            Ok((client, _)) => client,
            Err(_) => {
                // Out of descriptors or the like: try again shortly rather than spin.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        shared.connections.fetch_add(1, Ordering::SeqCst);
        // Taken before looking at `refusing`: `set_refusing` sets it before it cuts, so a
        // connection either sees it or is cut.
        let token = lock(&shared.live).child_token();
        if shared.refusing.load(Ordering::SeqCst) {
            drop(client);
            continue;
        }
        tokio::spawn(forward(client, shared.clone(), token));
    }
}

/// Forwards one connection both ways until both sides have closed, one breaks, or it is cut.
async fn forward(client: TcpStream, shared: Arc<Shared>, cut: CancellationToken) {
    let target = *lock(&shared.target);
    let server = tokio::select! {
        _ = cut.cancelled() => return,
        connected = TcpStream::connect(target) => match connected {
            Ok(server) => server,
            // Nothing listens there: the client sees its connection closed.
            Err(_) => return,
        },
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let both = async {
        tokio::try_join!(
            pump(client_read, server_write, &shared, &shared.up),
            pump(server_read, client_write, &shared, &shared.down),
        )
    };
    tokio::pin!(both);
    let mut cuts = shared.random_cuts.subscribe();
    loop {
        let range = *cuts.borrow_and_update();
        let deadline = range.map(|range| Instant::now() + shared.lifetime(range));
        tokio::select! {
            _ = &mut both => return,
            _ = cut.cancelled() => return,
            _ = sleep_until(deadline) => return,
            changed = cuts.changed() => {
                if changed.is_err() {
                    return;
                }
            }
        }
    }
    // Returning drops both sockets: each side sees its connection closed.
}

/// Copies `from` to `to`, each chunk after the delay, in order; on end of input, shuts down
/// `to` once all is written. Fails when either side breaks.
async fn pump(
    mut from: impl AsyncRead + Unpin,
    mut to: impl AsyncWrite + Unpin,
    shared: &Shared,
    forwarded: &AtomicU64,
) -> std::io::Result<()> {
    let (tx, mut rx) = mpsc::channel::<(Instant, Vec<u8>)>(QUEUE);
    let read = async move {
        let mut buf = vec![0; 16 * 1024];
        loop {
            let n = from.read(&mut buf).await?;
            if n == 0 {
                // Dropping `tx` tells the writer the input has ended.
                return Ok(());
            }
            let due = Instant::now() + shared.delay();
            if tx.send((due, buf[..n].to_vec())).await.is_err() {
                return Ok(());
            }
        }
    };
    let write = async move {
        while let Some((due, chunk)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            to.write_all(&chunk).await?;
            forwarded.fetch_add(chunk.len() as u64, Ordering::SeqCst);
        }
        to.shutdown().await
    };
    tokio::try_join!(read, write).map(|_| ())
}

/// Sleeps until `deadline`, or forever without one.
async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// The state behind `mutex`, even if a panicking test poisoned it (it is always consistent).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
