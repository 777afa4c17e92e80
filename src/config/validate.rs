//! Config validation: each section's rules in one checker, run in the order of the file, so
//! the first broken key is the one the error names.

use std::net::SocketAddr;
use std::path::Path;

use super::{
    invalid, AuthConfig, Backend, ChatConfig, ClusterConfig, Config, ConfigError, HttpConfig,
    LimitsConfig, LogConfig, MediaConfig, MqttConfig, PushConfig, StorageConfig, TlsConfig,
};

impl Config {
    /// Checks every section; the first broken key is the error.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        listeners(self)?;
        mqtt(&self.mqtt)?;
        tls(&self.tls)?;
        auth(&self.auth)?;
        limits(&self.limits)?;
        http(&self.http)?;
        media(&self.media)?;
        push(&self.push)?;
        chat(&self.chat)?;
        storage(&self.storage)?;
        cluster(&self.cluster, &self.storage)?;
        log(&self.log)
    }
}

/// Every listen address parses; only the plain MQTT one is required.
fn listeners(c: &Config) -> Result<(), ConfigError> {
    let m = &c.mqtt;
    addr("mqtt.listen", &m.listen, false)?;
    addr("mqtt.ws_listen", &m.ws_listen, true)?;
    addr("mqtt.tls_listen", &m.tls_listen, true)?;
    addr("mqtt.wss_listen", &m.wss_listen, true)?;
    addr("http.listen", &c.http.listen, true)?;
    Ok(())
}

/// The `[mqtt]` limits.
fn mqtt(m: &MqttConfig) -> Result<(), ConfigError> {
    if m.handshake_timeout_secs == 0 {
        return Err(invalid("mqtt.handshake_timeout_secs", "must be at least 1"));
    }
    // 2 (fixed header) + the largest remaining length MQTT can encode.
    if !(16..=268_435_460).contains(&m.max_packet_size) {
        return Err(invalid(
            "mqtt.max_packet_size",
            "must be between 16 and 268435460 bytes",
        ));
    }
    if m.receive_maximum == 0 {
        return Err(invalid("mqtt.receive_maximum", "must be at least 1"));
    }
    if m.max_inflight == 0 {
        return Err(invalid("mqtt.max_inflight", "must be at least 1"));
    }
    if m.max_queued_bytes == 0 {
        return Err(invalid("mqtt.max_queued_bytes", "must be at least 1"));
    }
    if !(1..=65535).contains(&m.max_topic_len) {
        return Err(invalid("mqtt.max_topic_len", "must be between 1 and 65535"));
    }
    if m.max_topic_levels == 0 {
        return Err(invalid("mqtt.max_topic_levels", "must be at least 1"));
    }
    if m.max_client_id_len == 0 {
        return Err(invalid("mqtt.max_client_id_len", "must be at least 1"));
    }
    Ok(())
}

/// `[tls]`: both files or neither, and those given exist.
fn tls(t: &TlsConfig) -> Result<(), ConfigError> {
    if t.cert.is_empty() != t.key.is_empty() {
        return Err(invalid("tls", "set both cert and key, or neither"));
    }
    for (key, path) in [("tls.cert", &t.cert), ("tls.key", &t.key)] {
        if !path.is_empty() && !Path::new(path).is_file() {
            return Err(invalid(key, format!("{path} is not a readable file")));
        }
    }
    Ok(())
}

/// `[auth]`: the ACL file exists if named, and the counts are positive.
fn auth(a: &AuthConfig) -> Result<(), ConfigError> {
    if !a.acl_file.is_empty() && !Path::new(&a.acl_file).is_file() {
        return Err(invalid(
            "auth.acl_file",
            format!("{} is not a readable file", a.acl_file),
        ));
    }
    if a.pbkdf2_iterations == 0 {
        return Err(invalid("auth.pbkdf2_iterations", "must be at least 1"));
    }
    if a.max_concurrent_logins == 0 {
        return Err(invalid("auth.max_concurrent_logins", "must be at least 1"));
    }
    Ok(())
}

/// `[limits]`: a publish rate needs a burst to spend.
fn limits(l: &LimitsConfig) -> Result<(), ConfigError> {
    if l.publish_rate > 0 && l.publish_burst == 0 {
        return Err(invalid(
            "limits.publish_burst",
            "must be at least 1 when publish_rate is set",
        ));
    }
    Ok(())
}

/// `[http]`: token lifetime and login rate are positive.
fn http(h: &HttpConfig) -> Result<(), ConfigError> {
    if h.access_token_secs == 0 {
        return Err(invalid("http.access_token_secs", "must be at least 1"));
    }
    if h.login_attempts_per_minute == 0 {
        return Err(invalid(
            "http.login_attempts_per_minute",
            "must be at least 1",
        ));
    }
    if h.max_body_bytes < 1024 {
        return Err(invalid("http.max_body_bytes", "must be at least 1024"));
    }
    Ok(())
}

/// `[media]`: uploads and thumbnails have a positive size.
fn media(m: &MediaConfig) -> Result<(), ConfigError> {
    if m.max_upload_bytes == 0 || m.thumbnail_px == 0 {
        return Err(invalid(
            "media",
            "max_upload_bytes and thumbnail_px must be at least 1",
        ));
    }
    if m.max_concurrent_decodes == 0 {
        return Err(invalid(
            "media.max_concurrent_decodes",
            "must be at least 1",
        ));
    }
    Ok(())
}

/// `[push]`: at least one attempt, with a timeout.
fn push(p: &PushConfig) -> Result<(), ConfigError> {
    if p.max_attempts == 0 {
        return Err(invalid("push.max_attempts", "must be at least 1"));
    }
    if p.timeout_secs == 0 {
        return Err(invalid("push.timeout_secs", "must be at least 1"));
    }
    Ok(())
}

/// `[chat]`: receipts are batched over a positive interval.
fn chat(c: &ChatConfig) -> Result<(), ConfigError> {
    if c.receipt_interval_ms == 0 {
        return Err(invalid("chat.receipt_interval_ms", "must be at least 1"));
    }
    Ok(())
}

/// `[storage]`: intervals, text size and the data directory.
fn storage(s: &StorageConfig) -> Result<(), ConfigError> {
    if s.retention_interval_secs == 0 {
        return Err(invalid(
            "storage.retention_interval_secs",
            "must be at least 1",
        ));
    }
    if !(1..=3600).contains(&s.commit_retry_secs) {
        return Err(invalid(
            "storage.commit_retry_secs",
            "must be between 1 and 3600",
        ));
    }
    if s.max_text_bytes == 0 {
        return Err(invalid("storage.max_text_bytes", "must be at least 1"));
    }
    if s.backend == Backend::Postgres {
        if s.postgres_url.is_empty() {
            return Err(invalid(
                "storage.postgres_url",
                "must be set when backend = \"postgres\" (postgres://user:password@host:port/db)",
            ));
        }
        // The reason only: the URL may carry a password.
        if let Err(e) = s.postgres_url.parse::<postgres::Config>() {
            return Err(invalid(
                "storage.postgres_url",
                format!("not a PostgreSQL URL: {e}"),
            ));
        }
    }
    if s.data_dir.as_os_str().is_empty() {
        return Err(invalid("storage.data_dir", "must not be empty"));
    }
    Ok(())
}

/// `[cluster]`: a node has a name NATS subjects can carry, a NATS server, and the shared
/// PostgreSQL storage (each node's SQLite file would be a history of its own).
fn cluster(c: &ClusterConfig, s: &StorageConfig) -> Result<(), ConfigError> {
    if !c.enabled() {
        if !c.nats_url.is_empty() {
            return Err(invalid(
                "cluster.node_id",
                "must be set when cluster.nats_url is (a unique name for this node)",
            ));
        }
        return Ok(());
    }
    if !crate::topics::valid_id(&c.node_id) {
        return Err(invalid(
            "cluster.node_id",
            "must be 1 to 32 lowercase letters, digits, '-' or '_'",
        ));
    }
    if c.nats_urls().is_empty() {
        return Err(invalid(
            "cluster.nats_url",
            "must name at least one NATS server when cluster.node_id is set",
        ));
    }
    if s.backend != Backend::Postgres {
        return Err(invalid(
            "storage.backend",
            "must be \"postgres\" in a cluster (every node shares the one database)",
        ));
    }
    if c.node_timeout_secs == 0 {
        return Err(invalid("cluster.node_timeout_secs", "must be at least 1"));
    }
    Ok(())
}

/// `[log]`: the level is a tracing filter.
fn log(l: &LogConfig) -> Result<(), ConfigError> {
    if tracing_subscriber::EnvFilter::try_new(&l.level).is_err() {
        return Err(invalid("log.level", "not a valid tracing filter"));
    }
    Ok(())
}

/// Parses a listen address; an empty string disables the listener where `optional`.
fn addr(key: &str, value: &str, optional: bool) -> Result<Option<SocketAddr>, ConfigError> {
    if value.is_empty() {
        return if optional {
            Ok(None)
        } else {
            Err(invalid(key, "must be set"))
        };
    }
    value.parse().map(Some).map_err(|_| {
        invalid(
            key,
            format!("`{value}` is not an address like 0.0.0.0:1883"),
        )
    })
}
