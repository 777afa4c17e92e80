//! The one way tests start natter: a real server on ephemeral ports with a temporary data
//! directory, running on its own runtime thread, stopped when the guard drops. Plus small
//! helpers shared by the integration tests: a raw MQTT client for exact packet-level checks,
//! and TLS material generated per test.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::BytesMut;
use natter::config::Config;
use natter::edge::Kind;
use natter::server::{self, Listeners};
use natter::store::Store;
use rumqttc::v5::mqttbytes::v5::{
    Connect, ConnectProperties, ConnectReturnCode, Login, Packet, Publish,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

/// How long a test waits for something that should happen promptly.
pub const WAIT: Duration = Duration::from_secs(5);

/// The longest pause between two polls of [`eventually`].
const MAX_POLL_PAUSE: Duration = Duration::from_millis(200);

/// Polls `check` with a short, growing pause until it gives `Some`, and returns that value;
/// panics naming `what` once `within` has passed.
pub async fn eventually<T>(
    within: Duration,
    what: &str,
    check: impl AsyncFnMut() -> Option<T>,
) -> T {
    match poll_until(within, check).await {
        Some(value) => value,
        None => panic!("never within {within:?}: {what}"),
    }
}

/// Polls `check` like [`eventually`], but gives `None` past the deadline instead of failing
/// (for waits whose deadline only bounds how long to try).
pub async fn poll_until<T>(
    within: Duration,
    mut check: impl AsyncFnMut() -> Option<T>,
) -> Option<T> {
    let deadline = tokio::time::Instant::now() + within;
    let mut pause = Duration::from_millis(10);
    loop {
        if let Some(value) = check().await {
            return Some(value);
        }
        let now = tokio::time::Instant::now();
        if now >= deadline {
            return None;
        }
        tokio::time::sleep(pause.min(deadline - now)).await;
        pause = (pause * 2).min(MAX_POLL_PAUSE);
    }
}

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
    shutdown: CancellationToken,
    thread: Option<JoinHandle<()>>,
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
    pub fn store(&self) -> Store {
        Store::open(&self.dir.path().join("data")).expect("open store")
    }

    /// Adds an account while the server runs (as `natter user add` would).
    pub fn add_user(&self, name: &str, password: &str) {
        self.store()
            .add_user(
                name,
                &natter::password::hash(password, TEST_ITERATIONS).unwrap(),
            )
            .expect("add user");
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
        config.storage.data_dir = dir.path().join("data");
        {
            let store = Store::open(&config.storage.data_dir).expect("store");
            for (name, password) in users {
                let hash = natter::password::hash(password, TEST_ITERATIONS).unwrap();
                store.add_user(name, &hash).expect("add user");
            }
        }
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
        TestServer {
            mqtt: find(Kind::Tcp).expect("mqtt listener"),
            ws: find(Kind::Ws),
            tls: find(Kind::Tls),
            wss: find(Kind::Wss),
            http: http.expect("http listener"),
            ca_pem,
            dir,
            shutdown,
            thread: Some(thread),
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
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_natter"))
            .args(args)
            .arg("--data-dir")
            .arg(self.dir.path().join("data"))
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

/// An HTTP answer's status and its JSON body (`null` when the body is not JSON).
pub async fn status_and_json(resp: reqwest::Response) -> (reqwest::StatusCode, serde_json::Value) {
    let status = resp.status();
    let text = resp.text().await.expect("read the response body");
    (
        status,
        serde_json::from_str(&text).unwrap_or(serde_json::Value::Null),
    )
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

/// A bare MQTT 5.0 client over TCP for packet-exact tests: it sends what it is told and returns
/// what arrives, with no automatic acknowledgements, retries or reconnects.
pub struct RawClient {
    stream: TcpStream,
    buf: BytesMut,
}

impl RawClient {
    pub async fn connect(addr: SocketAddr) -> RawClient {
        let stream = TcpStream::connect(addr).await.expect("tcp connect");
        RawClient {
            stream,
            buf: BytesMut::new(),
        }
    }

    /// Connects and logs in (clean start, no CONNECT properties beyond the defaults); asserts
    /// the CONNACK says Success.
    pub async fn login(
        addr: SocketAddr,
        user: &str,
        password: &str,
        client_id: &str,
        keep_alive: u16,
    ) -> RawClient {
        let mut c = RawClient::connect(addr).await;
        c.send(Packet::Connect(
            Connect {
                keep_alive,
                client_id: client_id.into(),
                clean_start: true,
                properties: Some(ConnectProperties::new()),
            },
            None,
            Some(Login::new(user, password)),
        ))
        .await;
        match c.recv().await {
            Some(Packet::ConnAck(a)) => assert_eq!(
                a.code,
                ConnectReturnCode::Success,
                "login of {client_id} as {user}: {a:?}"
            ),
            other => panic!("no CONNACK for {client_id}: {other:?}"),
        }
        c
    }

    pub async fn send(&mut self, packet: Packet) {
        self.try_send(packet).await.expect("write");
    }

    /// Sends `packet`, reporting a write error (the server went away) instead of panicking.
    pub async fn try_send(&mut self, packet: Packet) -> std::io::Result<()> {
        let mut out = BytesMut::new();
        packet.write(&mut out, None).expect("encode");
        self.stream.write_all(&out).await
    }

    pub async fn send_bytes(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("write");
    }

    /// The next packet, or `None` if the server closed the connection.
    pub async fn recv(&mut self) -> Option<Packet> {
        self.recv_within(WAIT)
            .await
            .expect("timed out waiting for a packet")
    }

    /// The next packet, `None` if the server closed the connection, or `Err` if nothing came
    /// within `wait` (for callers to whom silence is an answer, not a failure).
    pub async fn recv_within(
        &mut self,
        wait: Duration,
    ) -> Result<Option<Packet>, tokio::time::error::Elapsed> {
        tokio::time::timeout(wait, async {
            loop {
                match Packet::read(&mut self.buf, None) {
                    Ok(p) => return Some(p),
                    Err(rumqttc::v5::mqttbytes::Error::InsufficientBytes(_)) => {}
                    Err(e) => panic!("undecodable packet from server: {e}"),
                }
                let n = self.stream.read_buf(&mut self.buf).await.ok()?;
                if n == 0 {
                    return None;
                }
            }
        })
        .await
    }

    /// The next PUBLISH, skipping other packets and acknowledging nothing; panics if the
    /// connection closes first.
    pub async fn publish(&mut self) -> Publish {
        loop {
            match self.recv().await {
                Some(Packet::Publish(p)) => return p,
                Some(_) => continue,
                None => panic!("the connection closed while waiting for a PUBLISH"),
            }
        }
    }

    /// Waits for the server to close the connection, skipping packets; returns the last one.
    pub async fn closed(&mut self) -> Option<Packet> {
        let mut last = None;
        while let Some(p) = self.recv().await {
            last = Some(p);
        }
        last
    }

    /// Drops the socket without DISCONNECT (an abrupt loss, as after `kill -9`).
    pub fn vanish(self) {
        drop(self.stream);
    }
}

pub mod chat;
pub mod clients;
pub mod http;
pub mod mosquitto;

/// The real `natter serve` process, for tests that must kill it (`kill -9`) and start it again
/// on the same data directory. Listens on ephemeral ports; the address comes from its log.
pub struct ServerProcess {
    child: std::process::Child,
    pub mqtt: SocketAddr,
}

impl ServerProcess {
    pub fn start(data_dir: &std::path::Path) -> ServerProcess {
        use std::io::BufRead;
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_natter"))
            .args(["serve", "--mqtt", "127.0.0.1:0", "--ws", "", "--http", ""])
            .arg("--data-dir")
            .arg(data_dir)
            .env("NATTER_LOG_FORMAT", "json")
            .env("NATTER_LOG_LEVEL", "info")
            .env("NATTER_AUTH_PBKDF2_ITERATIONS", TEST_ITERATIONS.to_string())
            .env("NATTER_LIMITS_PUBLISH_RATE", "0")
            .env_remove("RUST_LOG")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start natter");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = std::io::BufReader::new(stdout).lines();
        let mqtt = loop {
            let line = lines
                .next()
                .expect("natter exited before listening")
                .expect("read log");
            let Ok(entry) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            let fields = &entry["fields"];
            if fields["message"] == "listening" && fields["kind"] == "Tcp" {
                break fields["addr"]
                    .as_str()
                    .and_then(|a| a.parse().ok())
                    .expect("listen address");
            }
        };
        // Keep draining the log so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        ServerProcess { child, mqtt }
    }

    /// SIGTERM, as an operator or a service manager stops it.
    pub fn terminate(&self) {
        let status = std::process::Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM failed");
    }

    /// Waits (up to twice `WAIT`) for the process to exit on its own.
    pub fn wait(mut self) -> std::process::ExitStatus {
        let deadline = std::time::Instant::now() + 2 * WAIT;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for natter") {
                return status;
            }
            assert!(std::time::Instant::now() < deadline, "natter did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL: no shutdown, no flush, nothing.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
