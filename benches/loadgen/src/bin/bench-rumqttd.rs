//! A standalone rumqttd for the comparison: `bench-rumqttd --listen 127.0.0.1:PORT`.
//!
//! The configuration is rumqttd's own `rumqttd.toml` defaults (router and the first v4
//! listener), minus the v5 listener, the console and Prometheus. `--max-connections` raises
//! the router's connection limit when a scenario needs more than the default 10,010.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::ExitCode;

use rumqttd::{Broker, Config, ConnectionSettings, RouterConfig, ServerSettings};

fn usage() -> ExitCode {
    eprintln!("usage: bench-rumqttd --listen ADDR [--max-connections N]");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let mut listen: Option<SocketAddr> = None;
    let mut max_connections = 10_010;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let value = args.next();
        match (arg.as_str(), value) {
            ("--listen", Some(v)) => match v.parse() {
                Ok(a) => listen = Some(a),
                Err(_) => return usage(),
            },
            ("--max-connections", Some(v)) => match v.parse() {
                Ok(n) => max_connections = n,
                Err(_) => return usage(),
            },
            _ => return usage(),
        }
    }
    let Some(listen) = listen else {
        return usage();
    };

    let mut v4 = HashMap::new();
    v4.insert(
        "1".to_string(),
        ServerSettings {
            name: "v4-1".to_string(),
            listen,
            tls: None,
            next_connection_delay_ms: 1,
            connections: ConnectionSettings {
                connection_timeout_ms: 60_000,
                max_payload_size: 20_480,
                max_inflight_count: 100,
                auth: None,
                external_auth: None,
                dynamic_filters: true,
            },
        },
    );
    let config = Config {
        id: 0,
        router: RouterConfig {
            max_connections,
            max_outgoing_packet_count: 200,
            max_segment_size: 104_857_600,
            max_segment_count: 10,
            custom_segment: None,
            initialized_filters: None,
            shared_subscriptions_strategy: Default::default(),
        },
        v4: Some(v4),
        ..Default::default()
    };
    eprintln!("rumqttd 0.20 listening on {listen}");
    match Broker::new(config).start() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench-rumqttd: {e}");
            ExitCode::FAILURE
        }
    }
}
