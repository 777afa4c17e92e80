//! The one way tests start natter: a real server on ephemeral ports with a temporary data
//! directory, running on its own runtime thread, stopped when the guard drops, with TLS
//! material generated per test. The other helpers shared by the integration tests live in
//! the submodules: waiting for events (`wait`), a raw MQTT client for exact packet-level checks
//! (`raw`), rumqttc clients (`clients`), chat requests (`chat`), the HTTP API (`http`), the
//! mosquitto command-line clients (`mosquitto`), the `natter` binary as a process
//! (`process`) and a TCP proxy that cuts, delays and refuses traffic (`proxy`).
//!
//! Other packages' tests (the client's) include this module by path; what only the natter
//! package's own tests have (its binary) is looked up when used, not when compiled.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::mpsc;
use std::thread::JoinHandle;

use natter::config::{Backend, Config, StorageConfig};
use natter::edge::Kind;
use natter::server::{self, Listeners};
use natter::store::{self, Store};
use tokio_util::sync::CancellationToken;

pub mod chat;
pub mod clients;
pub mod cluster;
pub mod http;
pub mod mosquitto;
pub mod process;
pub mod proxy;
pub mod raw;
pub mod wait;

// Each test binary uses some of these, none uses all.
#[allow(unused_imports)]
pub use process::ServerProcess;
#[allow(unused_imports)]
pub use proxy::Proxy;
#[allow(unused_imports)]
pub use raw::{history_cids, RawClient};
#[allow(unused_imports)]
pub use wait::{eventually, poll_until, WAIT};

/// Password hashing in tests: cheap (production uses 600,000 iterations).
const TEST_ITERATIONS: u32 = 1000;

pub struct TestServer {
    pub mqtt: SocketAddr,
    pub ws: Option<SocketAddr>,
    pub tls: Option<SocketAddr>,
    pub wss: Option<SocketAddr>,
    /// The HTTP API.
    pub http: SocketAddr,
    /// PEM of the CA that signed the server certificate (TLS servers only).
    pub ca_pem: Option<String>,
    pub dir: tempfile::TempDir,
    /// Where the server keeps its data.
    pub storage: StorageConfig,
    /// What it runs on, kept so that [`TestServer::restart`] starts it the same way.
    config: Config,
    shutdown: CancellationToken,
    thread: Option<JoinHandle<()>>,
}

/// One run of the server: its addresses, and how to stop it.
struct Running {
    mqtt: SocketAddr,
    ws: Option<SocketAddr>,
    tls: Option<SocketAddr>,
    wss: Option<SocketAddr>,
    http: SocketAddr,
    shutdown: CancellationToken,
    thread: JoinHandle<()>,
}

impl TestServer {
    /// Anonymous clients allowed, no ACL: a plain broker.
    pub fn start() -> TestServer {
        Self::start_with(|_| {})
    }

    /// Starts with the defaults changed by `edit` (listen addresses are already ephemeral).
    pub fn start_with(edit: impl FnOnce(&mut Config)) -> TestServer {
        Self::launch(false, &[], edit)
    }

    /// Starts with these accounts (user id, password) already in the store.
    pub fn start_with_users(users: &[(&str, &str)], edit: impl FnOnce(&mut Config)) -> TestServer {
        Self::launch(false, users, edit)
    }

    /// Also serves TLS and WSS with a certificate for `localhost` made for this test.
    pub fn start_tls() -> TestServer {
        Self::launch(true, &[], |_| {})
    }

    /// Opens the server's store from outside, as the `natter user …` commands do.
    /// Runs `f` on a thread of its own, outside any async runtime (PostgreSQL's synchronous
    /// client refuses to run inside one).
    pub fn with_store<T: Send>(&self, f: impl FnOnce(&dyn Store) -> T + Send) -> T {
        outside_runtime(|| f(store::open(&self.storage).expect("open store").as_ref()))
    }

    /// Holds the history's write lock from another connection until dropped, as another
    /// process could: SQLite's database lock, or PostgreSQL's lock on the messages table
    /// (reads go on in both).
    pub fn lock_history(&self) -> HistoryLock {
        let (locked, release) = (mpsc::channel(), mpsc::channel::<()>());
        let storage = self.storage.clone();
        let thread = std::thread::spawn(move || match storage.backend {
            Backend::Sqlite => {
                let conn = rusqlite::Connection::open(storage.data_dir.join("natter.db"))
                    .expect("open the database");
                conn.execute_batch("BEGIN EXCLUSIVE").expect("lock");
                locked.0.send(()).expect("report the lock");
                let _ = release.1.recv();
                conn.execute_batch("COMMIT").expect("unlock");
            }
            Backend::Postgres => {
                let mut client = postgres::Client::connect(&storage.postgres_url, postgres::NoTls)
                    .expect("connect");
                let mut tx = client.transaction().expect("begin");
                tx.batch_execute("LOCK TABLE messages IN EXCLUSIVE MODE")
                    .expect("lock");
                locked.0.send(()).expect("report the lock");
                let _ = release.1.recv();
                tx.commit().expect("unlock");
            }
        });
        locked.1.recv().expect("the lock is held");
        HistoryLock {
            release: Some(release.0),
            thread: Some(thread),
        }
    }

    /// Adds an account while the server runs (as `natter user add` would).
    pub fn add_user(&self, name: &str, password: &str) {
        let hash = natter::password::hash(password, TEST_ITERATIONS).unwrap();
        self.with_store(|s| s.add_user(name, &hash).expect("add user"));
    }

    fn launch(tls: bool, users: &[(&str, &str)], edit: impl FnOnce(&mut Config)) -> TestServer {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut config = Config::default_config();
        config.mqtt.listen = "127.0.0.1:0".into();
        config.mqtt.ws_listen = "127.0.0.1:0".into();
        config.mqtt.tls_listen = "127.0.0.1:0".into();
        config.mqtt.wss_listen = "127.0.0.1:0".into();
        config.http.listen = "127.0.0.1:0".into();
        config.mqtt.sys_interval_secs = 1;
        config.auth.allow_anonymous = true;
        config.auth.pbkdf2_iterations = TEST_ITERATIONS;
        config.storage = storage(config.storage, dir.path().join("data"));
        let mut ca_pem = None;
        if tls {
            let (ca, cert, key) = make_certificates();
            let cert_path = dir.path().join("cert.pem");
            let key_path = dir.path().join("key.pem");
            std::fs::write(&cert_path, cert).expect("write cert");
            std::fs::write(&key_path, key).expect("write key");
            config.tls.cert = cert_path.display().to_string();
            config.tls.key = key_path.display().to_string();
            ca_pem = Some(ca);
        }
        edit(&mut config);
        let storage = config.storage.clone();
        outside_runtime(|| {
            let store = store::open(&storage).expect("store");
            for (name, password) in users {
                let hash = natter::password::hash(password, TEST_ITERATIONS).unwrap();
                store.add_user(name, &hash).expect("add user");
            }
        });

        let running = Self::spawn(config.clone());
        TestServer {
            mqtt: running.mqtt,
            ws: running.ws,
            tls: running.tls,
            wss: running.wss,
            http: running.http,
            ca_pem,
            dir,
            storage,
            config,
            shutdown: running.shutdown,
            thread: Some(running.thread),
        }
    }

    /// Stops the server (as [`TestServer::stop`] does) and starts it again on the same
    /// configuration, data and TLS material, as an operator's restart would. It listens on new
    /// ephemeral ports: `mqtt`, `ws`, `tls`, `wss` and `http` change.
    pub fn restart(&mut self) {
        self.stop();
        let running = Self::spawn(self.config.clone());
        self.mqtt = running.mqtt;
        self.ws = running.ws;
        self.tls = running.tls;
        self.wss = running.wss;
        self.http = running.http;
        self.shutdown = running.shutdown;
        self.thread = Some(running.thread);
    }

    /// Runs the server on `config` on a runtime thread of its own; returns once it listens.
    fn spawn(config: Config) -> Running {
        // The server installs the process-wide TLS provider when it runs; installing it here too
        // means an HTTP client built right after start never races the server thread for it.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let shutdown = CancellationToken::new();
        let token = shutdown.clone();
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                let listeners = Listeners::bind(&config).await.expect("bind");
                tx.send((listeners.addrs(), listeners.http_addr()))
                    .expect("report addresses");
                server::run(config, listeners, token)
                    .await
                    .expect("server run");
            });
        });
        let (addrs, http) = rx.recv_timeout(WAIT).expect("server started");
        let find = |kind| addrs.iter().find(|(k, _)| *k == kind).map(|(_, a)| *a);
        Running {
            mqtt: find(Kind::Tcp).expect("mqtt listener"),
            ws: find(Kind::Ws),
            tls: find(Kind::Tls),
            wss: find(Kind::Wss),
            http: http.expect("http listener"),
            shutdown,
            thread,
        }
    }

    pub fn port(&self) -> u16 {
        self.mqtt.port()
    }

    /// Stops the server and waits for it (as SIGTERM would).
    pub fn stop(&mut self) {
        self.shutdown.cancel();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Runs the `natter` command line on this server's data directory (as an operator would
    /// while it runs); asserts it succeeds and returns its stdout.
    pub fn natter(&self, args: &[&str]) -> String {
        let out = std::process::Command::new(natter_bin())
            .args(args)
            .arg("--data-dir")
            .arg(self.dir.path().join("data"))
            .envs(storage_env(&self.storage))
            .env("NATTER_AUTH_PBKDF2_ITERATIONS", TEST_ITERATIONS.to_string())
            .output()
            .expect("run natter");
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The `natter` binary cargo built for these tests. Only the natter package's own tests know
/// it (other packages that include this module compile, and fail here if they use it).
pub fn natter_bin() -> &'static str {
    // Not `env!`: that would stop other packages' tests from compiling this module at all.
    let Some(bin) = option_env!("CARGO_BIN_EXE_natter") else {
        panic!("the natter binary is known to the natter package's own tests only");
    };
    bin
}

/// A CA, and a server certificate for `localhost` and 127.0.0.1 signed by it (PEM).
fn make_certificates() -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair, SanType};
    let ca_key = KeyPair::generate().expect("ca key");
    let mut ca_params = CertificateParams::new(Vec::new()).expect("ca params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).expect("ca cert");
    let key = KeyPair::generate().expect("server key");
    let mut params = CertificateParams::new(vec!["localhost".to_string()]).expect("params");
    params
        .subject_alt_names
        .push(SanType::IpAddress([127, 0, 0, 1].into()));
    let cert = params.signed_by(&key, &ca, &ca_key).expect("server cert");
    (ca.pem(), cert.pem(), key.serialize_pem())
}

/// `storage` with its data in `data_dir`, on the backend the tests run on: SQLite, or with
/// `NATTER_TEST_BACKEND=postgres` a fresh database on the server `NATTER_TEST_POSTGRES_URL`
/// names (`.ci/run` runs the storage tests both ways).
pub fn storage(mut storage: StorageConfig, data_dir: PathBuf) -> StorageConfig {
    storage.data_dir = data_dir;
    if std::env::var("NATTER_TEST_BACKEND").as_deref() == Ok("postgres") {
        storage.backend = Backend::Postgres;
        storage.postgres_url = natter::store::postgres::test_database()
            .expect("NATTER_TEST_BACKEND=postgres needs NATTER_TEST_POSTGRES_URL");
    }
    storage
}

/// The environment that puts a `natter` process on `storage`'s backend.
pub fn storage_env(storage: &StorageConfig) -> [(&'static str, String); 2] {
    let backend = match storage.backend {
        Backend::Sqlite => "sqlite",
        Backend::Postgres => "postgres",
    };
    [
        ("NATTER_STORAGE_BACKEND", backend.to_string()),
        ("NATTER_STORAGE_POSTGRES_URL", storage.postgres_url.clone()),
    ]
}

/// Runs `.ci/postgres ACTION DIR` (a PostgreSQL cluster of a test's own, which it may stop);
/// its output (the URL, for `start`).
pub fn postgres_ctl(action: &str, dir: &std::path::Path) -> String {
    // The natter package's directory, or the workspace member's that includes this module.
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .map(|dir| dir.join(".ci/postgres"))
        .find(|script| script.exists())
        .expect(".ci/postgres in the package's directory or above");
    let out = std::process::Command::new(script)
        .arg(action)
        .arg(dir)
        .output()
        .expect("run .ci/postgres");
    assert!(
        out.status.success(),
        ".ci/postgres {action}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// Runs `f` on a thread of its own and waits for it: store calls from async tests go there.
pub fn outside_runtime<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| s.spawn(f).join().expect("store thread panicked"))
}

/// The history's write lock held by another connection (see [`TestServer::lock_history`]);
/// dropping it releases the lock.
pub struct HistoryLock {
    release: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for HistoryLock {
    fn drop(&mut self) {
        drop(self.release.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
