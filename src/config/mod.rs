//! The one typed configuration: the embedded `config/natter.toml`, or a file given with `--config`,
//! then `NATTER_<SECTION>_<KEY>` environment overrides (`NATTER_TEST_*` belongs to the test
//! suite), then command-line flags; validated before anything starts.
//!
//! Environment variables are passed in as an iterator (not read here) so tests can inject them.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

mod validate;

/// The default configuration, compiled in.
pub const DEFAULT_TOML: &str = include_str!("../../config/natter.toml");

/// Prefix of environment overrides.
pub const ENV_PREFIX: &str = "NATTER_";
/// Variables for natter's own test suite (`NATTER_TEST_POSTGRES_URL`…), not configuration: a
/// developer's shell may well have them set while running a server.
const TEST_ENV_PREFIX: &str = "NATTER_TEST_";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config: {0}")]
    Parse(String),
    #[error("config: {path}: line {line}, column {column}: {message}")]
    Syntax {
        path: String,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("config: {key}: {reason}")]
    Invalid { key: String, reason: String },
}

fn invalid(key: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: printable(key),
        reason: printable(&reason.into()),
    }
}

/// Control characters escaped: keys and values echoed from a file or the environment must not
/// break a config error's one line (or forge lines in a log).
fn printable(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub mqtt: MqttConfig,
    pub tls: TlsConfig,
    pub http: HttpConfig,
    pub auth: AuthConfig,
    pub limits: LimitsConfig,
    pub chat: ChatConfig,
    pub media: MediaConfig,
    pub push: PushConfig,
    pub storage: StorageConfig,
    pub cluster: ClusterConfig,
    pub log: LogConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttConfig {
    pub listen: String,
    pub ws_listen: String,
    pub tls_listen: String,
    pub wss_listen: String,
    pub handshake_timeout_secs: u64,
    pub max_packet_size: u32,
    pub max_keepalive_secs: u16,
    pub receive_maximum: u16,
    pub max_inflight: u16,
    pub max_queued_messages: usize,
    pub max_queued_bytes: usize,
    pub queue_overflow: QueueOverflow,
    pub topic_alias_maximum: u16,
    pub max_session_expiry_secs: u32,
    pub max_retained: usize,
    pub max_retained_bytes: usize,
    pub max_topic_len: usize,
    pub max_topic_levels: usize,
    pub max_client_id_len: usize,
    pub sys_interval_secs: u64,
}

/// What a full session queue does with one more message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QueueOverflow {
    DropOldest,
    DropNewest,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub cert: String,
    pub key: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    pub listen: String,
    pub allow_registration: bool,
    pub token_secret: String,
    pub access_token_secs: u64,
    pub refresh_token_days: u64,
    pub login_attempts_per_minute: u32,
    pub max_body_bytes: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    pub allow_anonymous: bool,
    pub acl_file: String,
    pub pbkdf2_iterations: u32,
    pub max_concurrent_logins: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    pub max_connections: usize,
    pub max_connections_per_user: usize,
    pub max_subscriptions_per_connection: usize,
    pub publish_rate: u32,
    pub publish_burst: u32,
    pub publish_rate_action: RateAction,
}

/// What happens to a connection publishing faster than `limits.publish_rate`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RateAction {
    /// Stop reading from it until the bucket refills (TCP pushes back); nothing is lost.
    Throttle,
    /// 5.0 clients get DISCONNECT 0x96 (message rate too high); 3.1.1 clients, which have no
    /// such reason code and would only reconnect, are throttled.
    Disconnect,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChatConfig {
    pub presence_grace_secs: u64,
    pub delivery_receipts: bool,
    pub receipt_interval_ms: u64,
    pub typing_interval_ms: u64,
    pub typing_expiry_secs: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MediaConfig {
    pub dir: String,
    pub max_upload_bytes: u64,
    pub quota_bytes_per_user: u64,
    pub link_ttl_secs: u64,
    pub thumbnail_px: u32,
    pub max_image_pixels: u64,
    pub max_concurrent_decodes: usize,
    pub unreferenced_grace_secs: u64,
}

impl Config {
    /// Where media files live.
    pub fn media_dir(&self) -> PathBuf {
        if self.media.dir.is_empty() {
            self.storage.data_dir.join("media")
        } else {
            PathBuf::from(&self.media.dir)
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PushConfig {
    pub secret: String,
    pub allow_private_targets: bool,
    pub coalesce_ms: u64,
    pub max_attempts: u32,
    pub retry_base_ms: u64,
    pub timeout_secs: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    pub backend: Backend,
    /// The PostgreSQL database (`backend = "postgres"`).
    pub postgres_url: String,
    pub data_dir: PathBuf,
    pub synchronous: Synchronous,
    pub group_commit: bool,
    pub max_text_bytes: usize,
    pub retention_days: u64,
    pub retention_per_conversation: u64,
    pub retention_interval_secs: u64,
    /// How long the writer retries a commit that failed (database busy, disk full) before the
    /// waiting senders are told the message was not stored.
    pub commit_retry_secs: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// This node's name; empty: a single node.
    pub node_id: String,
    /// NATS server URLs, comma-separated.
    pub nats_url: String,
    pub node_timeout_secs: u64,
}

impl ClusterConfig {
    pub fn enabled(&self) -> bool {
        !self.node_id.is_empty()
    }

    /// The NATS server URLs, one per comma-separated entry.
    pub fn nats_urls(&self) -> Vec<&str> {
        self.nats_url
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .collect()
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    pub level: String,
    pub format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    Text,
    Json,
}

/// Overrides given on the command line (they win over file and environment).
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub mqtt: Option<String>,
    pub ws: Option<String>,
    pub http: Option<String>,
    pub data_dir: Option<PathBuf>,
}

impl Config {
    /// Loads the file (or the embedded default), applies environment overrides and flags, and
    /// validates the result.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        overrides: &Overrides,
    ) -> Result<Config, ConfigError> {
        // A file given with --config may set only some keys: start from the defaults.
        let mut table: toml::Table = DEFAULT_TOML
            .parse()
            .map_err(|e: toml::de::Error| ConfigError::Parse(e.to_string()))?;
        if let Some(path) = file {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.to_path_buf(),
                source,
            })?;
            let file_table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
                syntax_error(&path.display().to_string(), &text, &e)
            })?;
            merge(&mut table, file_table)?;
        }
        for (name, value) in env {
            if name.starts_with(TEST_ENV_PREFIX) {
                continue;
            }
            if let Some(key) = name.strip_prefix(ENV_PREFIX) {
                apply_env(&mut table, &name, key, &value)?;
            }
        }
        // The path tracker names the key a bad value sits at (`storage.synchronous`), which
        // toml's own value deserializer leaves out.
        let mut config: Config = serde_path_to_error::deserialize(toml::Value::Table(table))
            .map_err(|e: serde_path_to_error::Error<toml::de::Error>| {
                invalid(&e.path().to_string(), one_line(e.inner().message()))
            })?;
        config.apply(overrides);
        config.validate()?;
        Ok(config)
    }

    /// The embedded defaults, validated (what tests start from).
    pub fn default_config() -> Config {
        Config::load(None, std::iter::empty(), &Overrides::default())
            .expect("the embedded default config is valid")
    }

    fn apply(&mut self, o: &Overrides) {
        if let Some(v) = &o.mqtt {
            self.mqtt.listen = v.clone();
        }
        if let Some(v) = &o.ws {
            self.mqtt.ws_listen = v.clone();
        }
        if let Some(v) = &o.http {
            self.http.listen = v.clone();
        }
        if let Some(v) = &o.data_dir {
            self.storage.data_dir = v.clone();
        }
    }

    pub fn tls_enabled(&self) -> bool {
        !self.tls.cert.is_empty()
    }

    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_secs(self.mqtt.handshake_timeout_secs)
    }
}

/// A TOML syntax error as one line that keeps where it is (toml's own rendering spans several
/// lines with a snippet of the file).
fn syntax_error(path: &str, text: &str, e: &toml::de::Error) -> ConfigError {
    let at = e.span().map_or(0, |s| s.start).min(text.len());
    let before = text.get(..at).unwrap_or_default();
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    ConfigError::Syntax {
        path: path.to_string(),
        line,
        column,
        message: one_line(e.message()),
    }
}

/// Joins a multi-line message into one line: a config error is one line on stderr.
fn one_line(message: &str) -> String {
    message
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

/// Parses an already validated listen address (`None` when disabled).
pub fn listen_addr(value: &str) -> Option<SocketAddr> {
    value.parse().ok()
}

/// Copies `from` over `into`, section by section.
fn merge(into: &mut toml::Table, from: toml::Table) -> Result<(), ConfigError> {
    for (section, value) in from {
        match (into.get_mut(&section), value) {
            (Some(toml::Value::Table(dst)), toml::Value::Table(src)) => {
                for (key, v) in src {
                    if !dst.contains_key(&key) {
                        return Err(invalid(&format!("{section}.{key}"), "unknown key"));
                    }
                    dst.insert(key, v);
                }
            }
            _ => return Err(invalid(&section, "unknown section")),
        }
    }
    Ok(())
}

/// Applies `NATTER_SECTION_KEY=value`. The value is read as TOML (numbers, booleans) and falls
/// back to a plain string, so `NATTER_MQTT_LISTEN=0.0.0.0:1884` needs no quoting.
fn apply_env(
    table: &mut toml::Table,
    name: &str,
    key: &str,
    value: &str,
) -> Result<(), ConfigError> {
    let lower = key.to_ascii_lowercase();
    let (section, field) = lower
        .split_once('_')
        .ok_or_else(|| invalid(name, "expected NATTER_<SECTION>_<KEY>"))?;
    let Some(toml::Value::Table(dst)) = table.get_mut(section) else {
        return Err(invalid(name, format!("unknown section `{section}`")));
    };
    let Some(current) = dst.get(field) else {
        return Err(invalid(name, format!("unknown key `{section}.{field}`")));
    };
    let parsed = match current {
        toml::Value::String(_) => toml::Value::String(value.to_string()),
        _ => format!("v = {value}")
            .parse::<toml::Table>()
            .ok()
            .and_then(|mut t| t.remove("v"))
            .ok_or_else(|| invalid(name, format!("`{value}` is not a valid value")))?,
    };
    dst.insert(field.to_string(), parsed);
    Ok(())
}

/// Where accounts, conversations and history are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Backend {
    /// `{data_dir}/natter.db`, embedded.
    Sqlite,
    /// A PostgreSQL database at `postgres_url`, which several natter processes may share.
    Postgres,
}

/// How commits reach the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Synchronous {
    /// fsync at every commit: nothing acknowledged is lost even on power loss.
    Full,
    /// WAL without fsync at commit: safe against a process crash (`kill -9`), not power loss.
    Normal,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn embedded_default_is_valid() {
        let c = Config::default_config();
        assert_eq!(c.mqtt.listen, "0.0.0.0:1883");
        assert!(!c.auth.allow_anonymous);
        assert!(!c.tls_enabled());
    }

    #[test]
    fn env_overrides_and_flags() {
        let o = Overrides {
            ws: Some("127.0.0.1:0".into()),
            ..Overrides::default()
        };
        let c = Config::load(
            None,
            env(&[
                ("NATTER_MQTT_LISTEN", "127.0.0.1:1999"),
                ("NATTER_AUTH_ALLOW_ANONYMOUS", "true"),
                ("NATTER_MQTT_MAX_INFLIGHT", "5"),
                ("NATTER_MQTT_WS_LISTEN", "1.2.3.4:5"),
                ("UNRELATED", "x"),
            ]),
            &o,
        )
        .unwrap();
        assert_eq!(c.mqtt.listen, "127.0.0.1:1999");
        assert!(c.auth.allow_anonymous);
        assert_eq!(c.mqtt.max_inflight, 5);
        assert_eq!(c.mqtt.ws_listen, "127.0.0.1:0");
    }

    #[test]
    fn bad_values_name_the_key() {
        let cases: &[(&str, &str, &str)] = &[
            (
                "NATTER_MQTT_LISTEN",
                "nowhere",
                "config: mqtt.listen: `nowhere` is not an address like 0.0.0.0:1883",
            ),
            (
                "NATTER_MQTT_FROB",
                "1",
                "config: NATTER_MQTT_FROB: unknown key `mqtt.frob`",
            ),
            (
                "NATTER_NOPE_X",
                "1",
                "config: NATTER_NOPE_X: unknown section `nope`",
            ),
            (
                "NATTER_MQTT_RECEIVE_MAXIMUM",
                "0",
                "config: mqtt.receive_maximum: must be at least 1",
            ),
            (
                "NATTER_STORAGE_COMMIT_RETRY_SECS",
                "0",
                "config: storage.commit_retry_secs: must be between 1 and 3600",
            ),
            (
                "NATTER_MQTT_QUEUE_OVERFLOW",
                "explode",
                "config: mqtt.queue_overflow: unknown variant `explode`, expected `drop_oldest` or `drop_newest`",
            ),
            (
                "NATTER_TLS_CERT",
                "/nonexistent.pem",
                "config: tls: set both cert and key, or neither",
            ),
        ];
        for (k, v, want) in cases {
            let err = Config::load(None, env(&[(k, v)]), &Overrides::default()).unwrap_err();
            assert_eq!(err.to_string(), *want);
        }
    }

    #[test]
    fn a_cluster_node_needs_a_name_nats_and_postgres() {
        let pg = [
            ("NATTER_STORAGE_BACKEND", "postgres"),
            ("NATTER_STORAGE_POSTGRES_URL", "postgres://n@db/n"),
        ];
        let nats = ("NATTER_CLUSTER_NATS_URL", "nats://a:4222, nats://b:4222");
        let cases: &[(&[(&str, &str)], &str)] = &[
            (
                &[nats],
                "config: cluster.node_id: must be set when cluster.nats_url is (a unique name for this node)",
            ),
            (
                &[("NATTER_CLUSTER_NODE_ID", "Node 1"), nats, pg[0], pg[1]],
                "config: cluster.node_id: must be 1 to 32 lowercase letters, digits, '-' or '_'",
            ),
            (
                &[("NATTER_CLUSTER_NODE_ID", "n1"), pg[0], pg[1]],
                "config: cluster.nats_url: must name at least one NATS server when cluster.node_id is set",
            ),
            (
                &[("NATTER_CLUSTER_NODE_ID", "n1"), nats],
                "config: storage.backend: must be \"postgres\" in a cluster (every node shares the one database)",
            ),
        ];
        for (vars, want) in cases {
            let err = Config::load(None, env(vars), &Overrides::default()).unwrap_err();
            assert_eq!(err.to_string(), *want);
        }
        let c = Config::load(
            None,
            env(&[("NATTER_CLUSTER_NODE_ID", "n1"), nats, pg[0], pg[1]]),
            &Overrides::default(),
        )
        .unwrap();
        assert!(c.cluster.enabled());
        assert_eq!(c.cluster.nats_urls(), ["nats://a:4222", "nats://b:4222"]);
        assert!(!Config::default_config().cluster.enabled());
    }

    #[test]
    fn file_sets_some_keys_and_rejects_unknown_ones() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("n.toml");
        std::fs::write(&path, "[mqtt]\nlisten = \"127.0.0.1:2000\"\n").unwrap();
        let c = Config::load(Some(&path), env(&[]), &Overrides::default()).unwrap();
        assert_eq!(c.mqtt.listen, "127.0.0.1:2000");
        assert_eq!(c.mqtt.max_inflight, 64);
        std::fs::write(&path, "[mqtt]\nlistne = \"x\"\n").unwrap();
        let err = Config::load(Some(&path), env(&[]), &Overrides::default()).unwrap_err();
        assert_eq!(err.to_string(), "config: mqtt.listne: unknown key");
        std::fs::write(&path, "[mqtt]\nmax_inflight = \"many\"\n").unwrap();
        let err = Config::load(Some(&path), env(&[]), &Overrides::default()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "config: mqtt.max_inflight: invalid type: string \"many\", expected u16"
        );
        std::fs::write(&path, "[mqtt]\nlisten = \"x\"\nmax_inflight = = 3\n").unwrap();
        let err = Config::load(Some(&path), env(&[]), &Overrides::default()).unwrap_err();
        let shown = err.to_string();
        assert!(
            shown.starts_with(&format!("config: {}: line 3, column ", path.display())),
            "{shown}"
        );
        assert!(!shown.contains('\n'), "{shown}");
    }
}
