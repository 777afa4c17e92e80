//! The `natter serve` binary as a child process, for tests about signals and restarts.

use std::net::SocketAddr;
use std::time::Duration;

use natter::config::StorageConfig;

use super::{TEST_ITERATIONS, WAIT};

/// The real `natter serve` process, for tests that must kill it (`kill -9`) and start it again
/// on the same data directory. Listens on ephemeral ports; the address comes from its log.
pub struct ServerProcess {
    child: std::process::Child,
    pub mqtt: SocketAddr,
}

impl ServerProcess {
    /// Starts on `storage` (see [`super::storage`]).
    pub fn start(storage: &StorageConfig) -> ServerProcess {
        Self::start_with_env(storage, &[])
    }

    /// Starts on `storage` with more configuration from the environment.
    pub fn start_with_env(storage: &StorageConfig, env: &[(&str, String)]) -> ServerProcess {
        use std::io::BufRead;
        let mut child = std::process::Command::new(super::natter_bin())
            .args(["serve", "--mqtt", "127.0.0.1:0", "--ws", "", "--http", ""])
            .arg("--data-dir")
            .arg(&storage.data_dir)
            .envs(super::storage_env(storage))
            .env("NATTER_LOG_FORMAT", "json")
            .env("NATTER_LOG_LEVEL", "info")
            .env("NATTER_AUTH_PBKDF2_ITERATIONS", TEST_ITERATIONS.to_string())
            .env("NATTER_LIMITS_PUBLISH_RATE", "0")
            .envs(env.iter().map(|(k, v)| (k, v)))
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
