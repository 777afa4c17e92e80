//! The configuration loader (`config::Config::load`) on any TOML file and environment.
//!
//! Input (lossy UTF-8): the config file's text, then after the first NUL byte, environment
//! lines `NAME=value` (`NATTER_` is prepended to names without it).
//!
//! Properties: every error is one line (the loader promises one line on stderr); a syntax error
//! points inside the file; an accepted config has a usable MQTT listen address and the limits
//! `validate` promises.

use std::io::Write;

use natter::config::{self, Config, ConfigError, Overrides, ENV_PREFIX};

pub fn check(data: &[u8]) {
    let split = data.iter().position(|&b| b == 0).unwrap_or(data.len());
    let text = String::from_utf8_lossy(&data[..split]);
    let env_text = String::from_utf8_lossy(data.get(split + 1..).unwrap_or_default());
    let env: Vec<(String, String)> = env_text
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (prefixed(k), v.to_string()))
        .collect();
    let mut file = tempfile::NamedTempFile::new().expect("a temporary file");
    file.write_all(text.as_bytes()).expect("write the config");
    match Config::load(Some(file.path()), env, &Overrides::default()) {
        Ok(c) => check_config(&c),
        Err(e) => check_error(&e, &text),
    }
}

fn prefixed(name: &str) -> String {
    if name.starts_with(ENV_PREFIX) {
        name.to_string()
    } else {
        format!("{ENV_PREFIX}{name}")
    }
}

fn check_config(c: &Config) {
    assert!(
        config::listen_addr(&c.mqtt.listen).is_some(),
        "{}",
        c.mqtt.listen
    );
    assert!((16..=268_435_460).contains(&c.mqtt.max_packet_size));
    assert!((1..=65_535).contains(&c.mqtt.max_topic_len) && c.mqtt.max_topic_levels >= 1);
    let _ = (c.media_dir(), c.handshake_timeout(), c.tls_enabled());
}

fn check_error(e: &ConfigError, text: &str) {
    let shown = e.to_string();
    assert!(!shown.contains(['\n', '\r']), "not one line: {shown:?}");
    if let ConfigError::Syntax { line, column, .. } = e {
        assert!(
            *line >= 1 && *line <= text.lines().count() + 1,
            "line {line}"
        );
        assert!(*column >= 1, "column {column}");
    }
}
