//! Wires the parts together: `Listeners::bind` takes the sockets, `run` serves them until the
//! shutdown token fires, then lets connections say goodbye within a bounded time.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::access::{Access, AccessError};
use crate::chat::Directory;
use crate::cluster::{Cluster, ClusterError};
use crate::config::{listen_addr, Config};
use crate::edge::{self, Admission, Kind, Limits, Roster, Shared, TlsError};
use crate::http::{AppState, HttpSettings};
use crate::limiter::LoginLimiter;
use crate::media::MediaStore;
use crate::router::{self, Event, Router, Settings};
use crate::service::push::{PushSettings, Pusher};
use crate::service::requests::ChatService;
use crate::service::signals::{Settings as SignalSettings, Signal, Signals};
use crate::stats::Stats;
use crate::store::{self, Store, StoreError, Writer};
use crate::tokens::Signer;

/// Pending connections the kernel may queue per listener (capped by `net.core.somaxconn`).
const LISTEN_BACKLOG: u32 = 4096;

/// How long connections get to send DISCONNECT and flush at shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: io::Error,
    },
    #[error("tls: {0}")]
    Tls(#[from] TlsError),
    #[error("auth: {0}")]
    Access(#[from] AccessError),
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("cluster: {0}")]
    Cluster(#[from] ClusterError),
    #[error("cannot write {path}: {source}")]
    Secret {
        path: std::path::PathBuf,
        source: io::Error,
    },
}

/// The bound listening sockets. Binding is separate from serving so that tests (and callers
/// that pass port 0) can learn the real addresses first.
pub struct Listeners {
    pub mqtt: TcpListener,
    pub ws: Option<TcpListener>,
    pub tls: Option<TcpListener>,
    pub wss: Option<TcpListener>,
    pub http: Option<TcpListener>,
}

impl Listeners {
    pub async fn bind(config: &Config) -> Result<Listeners, ServerError> {
        let m = &config.mqtt;
        let tls = config.tls_enabled();
        Ok(Listeners {
            mqtt: bind_one("mqtt.listen", &m.listen)
                .await?
                .ok_or_else(|| io::Error::other("mqtt.listen is not set"))
                .map_err(|source| ServerError::Bind {
                    what: "mqtt.listen",
                    addr: SocketAddr::from(([0, 0, 0, 0], 0)),
                    source,
                })?,
            ws: bind_one("mqtt.ws_listen", &m.ws_listen).await?,
            tls: if tls {
                bind_one("mqtt.tls_listen", &m.tls_listen).await?
            } else {
                None
            },
            wss: if tls {
                bind_one("mqtt.wss_listen", &m.wss_listen).await?
            } else {
                None
            },
            http: bind_one("http.listen", &config.http.listen).await?,
        })
    }

    /// The HTTP API's address, if it listens.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// The MQTT listeners, by kind (`None` where one is not bound).
    fn into_mqtt(self) -> [(Kind, Option<TcpListener>); 4] {
        [
            (Kind::Tcp, Some(self.mqtt)),
            (Kind::Ws, self.ws),
            (Kind::Tls, self.tls),
            (Kind::Wss, self.wss),
        ]
    }

    /// The MQTT addresses actually bound, by kind.
    pub fn addrs(&self) -> Vec<(Kind, SocketAddr)> {
        let mut out = Vec::new();
        for (kind, l) in [
            (Kind::Tcp, Some(&self.mqtt)),
            (Kind::Ws, self.ws.as_ref()),
            (Kind::Tls, self.tls.as_ref()),
            (Kind::Wss, self.wss.as_ref()),
        ] {
            if let Some(addr) = l.and_then(|l| l.local_addr().ok()) {
                out.push((kind, addr));
            }
        }
        out
    }
}

async fn bind_one(what: &'static str, value: &str) -> Result<Option<TcpListener>, ServerError> {
    let Some(addr) = listen_addr(value) else {
        return Ok(None);
    };
    let bind = || -> io::Result<TcpListener> {
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        // A reconnect storm arrives all at once; the default backlog of 128 drops SYNs, which
        // clients retry only after a second (measured in benches/: storm scenario).
        socket.listen(LISTEN_BACKLOG)
    };
    bind()
        .map(Some)
        .map_err(|source| ServerError::Bind { what, addr, source })
}

/// Serves MQTT on `listeners` until `shutdown` is cancelled.
pub async fn run(
    config: Config,
    mut listeners: Listeners,
    shutdown: CancellationToken,
) -> Result<(), ServerError> {
    // One TLS crypto provider for the process (ring); the push client uses the default.
    let _ = tokio_rustls::rustls::crypto::ring::default_provider().install_default();
    let stats = Arc::new(Stats::default());
    // Opening connects to the database and may migrate it: blocking work.
    let (c, s) = (config.clone(), stats.clone());
    let Storage {
        store,
        history,
        directory,
    } = tokio::task::spawn_blocking(move || open_storage(&c, &s))
        .await
        .map_err(|e| ServerError::Store(StoreError::Thread(std::io::Error::other(e))))??;
    let (signer, access) = build_access(&config, &store, &directory)?;
    let cluster = match config.cluster.enabled() {
        true => Some(Cluster::connect(&config.cluster, stats.clone()).await?),
        false => None,
    };
    let retained = match &cluster {
        Some(c) => c.retained(&store).await,
        None => Vec::new(),
    };
    let tls = match config.tls_enabled() {
        true => Some(edge::tls_acceptor(&config.tls.cert, &config.tls.key)?),
        false => None,
    };
    // Moved, not cloned, into `Shared`: `run` keeps no sender of its own to the router or the
    // signals task while it waits for them at shutdown.
    let Services {
        router,
        chat,
        signals,
        media,
        background,
    } = start_services(
        &config, &store, &directory, &access, &stats, cluster, &shutdown,
    )?;
    // The cluster's retained messages are in the router before the first client arrives.
    for message in retained {
        let _ = router
            .send(Event::Remote {
                message,
                share: None,
            })
            .await;
    }
    let tasks = TaskTracker::new();
    let shared = Arc::new(Shared {
        limits: Limits::from_config(&config.mqtt, &config.limits, &config),
        history,
        signals,
        access,
        chat,
        router,
        stats,
        typing: Default::default(),
        shutdown: shutdown.clone(),
        tasks: tasks.clone(),
        next_conn_id: AtomicU64::new(1),
        admission: Admission::new(config.limits.max_connections),
        roster: config.cluster.enabled().then(|| Roster {
            store: store.clone(),
            node: Arc::from(config.cluster.node_id.as_str()),
        }),
    });
    for (kind, addr) in listeners.addrs() {
        tracing::info!(%addr, ?kind, "listening");
    }
    let mut accepting = Vec::new();
    if let Some(listener) = listeners.http.take() {
        let state = http_state(&config, store, directory, &shared, signer, media);
        accepting.push(start_http(listener, state, &shutdown));
    }
    accepting.extend(start_mqtt(listeners.into_mqtt(), tls, shared));
    drain(shutdown, accepting, tasks, background).await;
    Ok(())
}

/// The store, the history writer and the directory: what everything else is built on.
struct Storage {
    store: Arc<dyn Store>,
    history: Writer,
    directory: Arc<RwLock<Directory>>,
}

/// Opens the store and starts the history writer; loads the directory of users and
/// memberships.
fn open_storage(config: &Config, stats: &Arc<Stats>) -> Result<Storage, ServerError> {
    let store = store::open(&config.storage)?;
    let history = Writer::start(
        store.log(config.storage.synchronous)?,
        config.storage.group_commit,
        Duration::from_secs(config.storage.commit_retry_secs),
        stats.clone(),
    )?;
    let directory = Directory::from_snapshot(store.snapshot()?);
    if directory.users().next().is_none() && !config.auth.allow_anonymous {
        tracing::warn!("there are no accounts yet: create one with `natter user add NAME`");
    }
    Ok(Storage {
        store,
        history,
        directory: Arc::new(RwLock::new(directory)),
    })
}

/// The token signer and the access rules (accounts, tokens, chat rules, the ACL file).
fn build_access(
    config: &Config,
    store: &Arc<dyn Store>,
    directory: &Arc<RwLock<Directory>>,
) -> Result<(Arc<Signer>, Arc<Access>), ServerError> {
    let signer = Arc::new(Signer::new(&secret(
        config,
        "token-secret",
        &config.http.token_secret,
    )?));
    let limiter = Arc::new(LoginLimiter::new(
        config.http.login_attempts_per_minute,
        config.auth.max_concurrent_logins,
    ));
    let access = Arc::new(Access::new(
        &config.auth,
        store.clone(),
        directory.clone(),
        signer.clone(),
        limiter,
    )?);
    Ok((signer, access))
}

/// What `start_services` started, for the listeners and for shutdown.
struct Services {
    router: mpsc::Sender<Event>,
    chat: Arc<ChatService>,
    signals: mpsc::UnboundedSender<Signal>,
    media: Arc<MediaStore>,
    /// The chat watcher, retention, cluster and signals tasks, awaited in that order at
    /// shutdown.
    background: Vec<JoinHandle<()>>,
}

/// Starts the router, the signals task (receipts, presence, push), the chat service and its
/// watcher, retention, and in a cluster the link to the other nodes.
fn start_services(
    config: &Config,
    store: &Arc<dyn Store>,
    directory: &Arc<RwLock<Directory>>,
    access: &Arc<Access>,
    stats: &Arc<Stats>,
    cluster: Option<Cluster>,
    shutdown: &CancellationToken,
) -> Result<Services, ServerError> {
    let (signals_tx, signals_rx) = mpsc::unbounded_channel();
    let (reports_tx, reports_rx) = mpsc::unbounded_channel();
    let mut router = Router::new(
        Settings::from_config(&config.mqtt, &config.limits, &config.chat),
        access.clone(),
        stats.clone(),
        reports_tx,
    );
    let (outgoing_tx, outgoing_rx) = mpsc::channel(router::OUTGOING_QUEUE);
    let (control_tx, control_rx) = mpsc::unbounded_channel();
    if cluster.is_some() {
        router.join_cluster(outgoing_tx, control_tx.clone());
    }
    let router = router::spawn(router);
    let pusher = Arc::new(Pusher::new(push_settings(config)?, store.clone()));
    let signals = Signals::new(
        signal_settings(config),
        store.clone(),
        directory.clone(),
        router.clone(),
        pusher.clone(),
    );
    let signals_task = tokio::spawn(signals.run(reports_rx, signals_rx, shutdown.clone()));
    let media =
        Arc::new(
            MediaStore::new(&config.media_dir()).map_err(|source| ServerError::Secret {
                path: config.media_dir(),
                source,
            })?,
        );
    let mut chat = ChatService::new(
        store.clone(),
        directory.clone(),
        router.clone(),
        signals_tx.clone(),
        pusher,
    );
    if cluster.is_some() {
        chat = chat.with_peers(control_tx);
    }
    let chat = Arc::new(chat);
    let watcher = tokio::spawn(chat.clone().watch(shutdown.clone()));
    let mut background = vec![watcher];
    let retention = tokio::spawn(retain(
        store.clone(),
        media.clone(),
        config.clone(),
        shutdown.clone(),
    ));
    background.push(retention);
    if let Some(cluster) = cluster {
        background.push(cluster.start(
            outgoing_rx,
            control_rx,
            (router.clone(), chat.clone(), access.tokens()),
            store.clone(),
            shutdown.clone(),
        ));
    }
    background.push(signals_task);
    Ok(Services {
        router,
        chat,
        signals: signals_tx,
        media,
        background,
    })
}

/// The HTTP API's state: it shares the store, the directory, the chat service, the router and
/// the statistics with MQTT.
fn http_state(
    config: &Config,
    store: Arc<dyn Store>,
    directory: Arc<RwLock<Directory>>,
    shared: &Shared,
    signer: Arc<Signer>,
    media: Arc<MediaStore>,
) -> AppState {
    AppState::new(
        http_settings(config),
        store,
        directory,
        shared.chat.clone(),
        signer,
        shared.router.clone(),
        shared.stats.clone(),
        media,
    )
    .with_limiter(shared.access.limiter())
    .with_tokens(shared.access.tokens())
}

/// Serves the HTTP API on its listener.
fn start_http(
    listener: TcpListener,
    state: AppState,
    shutdown: &CancellationToken,
) -> JoinHandle<()> {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "HTTP API listening");
    }
    tokio::spawn(crate::http::run(
        listener,
        Arc::new(state),
        shutdown.clone(),
    ))
}

/// Accepts MQTT connections on each listener that is bound.
fn start_mqtt(
    listeners: [(Kind, Option<TcpListener>); 4],
    tls: Option<TlsAcceptor>,
    shared: Arc<Shared>,
) -> Vec<JoinHandle<()>> {
    let mut accepting = Vec::new();
    for (kind, listener) in listeners {
        if let Some(listener) = listener {
            accepting.push(tokio::spawn(edge::accept_loop(
                listener,
                kind,
                tls.clone(),
                shared.clone(),
            )));
        }
    }
    accepting
}

/// Waits for shutdown, then for the listeners to stop, the connections to close (within
/// `SHUTDOWN_GRACE`) and the background tasks to end.
async fn drain(
    shutdown: CancellationToken,
    accepting: Vec<JoinHandle<()>>,
    tasks: TaskTracker,
    background: Vec<JoinHandle<()>>,
) {
    shutdown.cancelled().await;
    tracing::info!("shutting down");
    for task in accepting {
        let _ = task.await;
    }
    tasks.close();
    if tokio::time::timeout(SHUTDOWN_GRACE, tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!("some connections did not close in time");
    }
    for task in background {
        let _ = task.await;
    }
}

fn signal_settings(config: &Config) -> SignalSettings {
    SignalSettings {
        grace: Duration::from_secs(config.chat.presence_grace_secs),
        receipt_interval: Duration::from_millis(config.chat.receipt_interval_ms),
        push_coalesce: Duration::from_millis(config.push.coalesce_ms),
        cluster: config.cluster.enabled().then(|| {
            let timeout = Duration::from_secs(config.cluster.node_timeout_secs);
            (Arc::from(config.cluster.node_id.as_str()), timeout)
        }),
    }
}

/// A secret from the config, or else one made once and kept in `{data_dir}/{file}`.
fn secret(config: &Config, file: &str, configured: &str) -> Result<Vec<u8>, ServerError> {
    if !configured.is_empty() {
        return Ok(configured.as_bytes().to_vec());
    }
    let path = config.storage.data_dir.join(file);
    if let Ok(s) = std::fs::read_to_string(&path) {
        if !s.trim().is_empty() {
            return Ok(s.trim().as_bytes().to_vec());
        }
    }
    let s = crate::ids::random_hex(32);
    // With the history in PostgreSQL nothing else may have made the data directory yet.
    std::fs::create_dir_all(&config.storage.data_dir)
        .and_then(|()| std::fs::write(&path, &s))
        .map_err(|source| ServerError::Secret {
            path: path.clone(),
            source,
        })?;
    tracing::info!(path = %path.display(), "made a new secret");
    Ok(s.into_bytes())
}

fn http_settings(config: &Config) -> HttpSettings {
    HttpSettings {
        allow_registration: config.http.allow_registration,
        access_token: Duration::from_secs(config.http.access_token_secs),
        refresh_token: Duration::from_secs(config.http.refresh_token_days * 86_400),
        login_attempts_per_minute: config.http.login_attempts_per_minute,
        max_concurrent_logins: config.auth.max_concurrent_logins,
        pbkdf2_iterations: config.auth.pbkdf2_iterations,
        max_upload: config.media.max_upload_bytes,
        media_quota: config.media.quota_bytes_per_user,
        media_link_ttl: config.media.link_ttl_secs,
        thumbnail_px: config.media.thumbnail_px,
        max_image_pixels: config.media.max_image_pixels,
        max_concurrent_decodes: config.media.max_concurrent_decodes,
        max_body_bytes: config.http.max_body_bytes,
    }
}

/// Push settings.
fn push_settings(config: &Config) -> Result<PushSettings, ServerError> {
    let p = &config.push;
    let secret = secret(config, "push-secret", &p.secret)?;
    Ok(PushSettings {
        secret,
        allow_private: p.allow_private_targets,
        max_attempts: p.max_attempts,
        base_delay: Duration::from_millis(p.retry_base_ms),
        timeout: Duration::from_secs(p.timeout_secs),
    })
}

/// Deletes history beyond the configured retention and media no message references, at start
/// and then periodically.
async fn retain(
    store: Arc<dyn Store>,
    media: Arc<MediaStore>,
    config: Config,
    shutdown: CancellationToken,
) {
    let storage = &config.storage;
    let max_age =
        (storage.retention_days > 0).then(|| Duration::from_secs(storage.retention_days * 86_400));
    let per_conv = storage.retention_per_conversation;
    let grace = config.media.unreferenced_grace_secs as i64;
    let mut tick = tokio::time::interval(Duration::from_secs(storage.retention_interval_secs));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let s = store.clone();
        let result = tokio::task::spawn_blocking(move || {
            let removed = if max_age.is_some() || per_conv > 0 {
                s.enforce_retention(max_age, per_conv)?
            } else {
                0
            };
            Ok::<_, StoreError>((removed, s.release_unreferenced_media(grace)?))
        })
        .await;
        match result {
            Ok(Ok((removed, orphaned))) => {
                if removed > 0 {
                    tracing::info!(removed, "history retention applied");
                }
                for hash in &orphaned {
                    media.remove(hash).await;
                }
                if !orphaned.is_empty() {
                    tracing::info!(files = orphaned.len(), "unreferenced media deleted");
                }
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "retention failed"),
            Err(_) => return,
        }
    }
}
