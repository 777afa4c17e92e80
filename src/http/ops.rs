//! Operations: `/healthz`, Prometheus `/metrics`, and the OpenAPI document.

use std::fmt::Write;
use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};

use super::AppState;
use crate::stats::Stats;

/// The OpenAPI 3 description of this API.
const OPENAPI: &str = include_str!("openapi.json");

pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/api/v1/openapi.json", get(openapi))
}

/// GET /healthz
async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// GET /metrics — Prometheus text format.
async fn metrics(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    let s = &state.stats;
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, value: u64| {
        let _ = writeln!(out, "# HELP natter_{name} {help}");
        let _ = writeln!(out, "# TYPE natter_{name} {kind}");
        let _ = writeln!(out, "natter_{name} {value}");
    };
    metric(
        "uptime_seconds",
        "gauge",
        "Seconds since start.",
        state.started.elapsed().as_secs(),
    );
    metric(
        "clients_connected",
        "gauge",
        "Connected MQTT clients.",
        Stats::get(&s.clients_connected),
    );
    metric(
        "messages_received_total",
        "counter",
        "PUBLISH packets received.",
        Stats::get(&s.messages_received),
    );
    metric(
        "messages_sent_total",
        "counter",
        "PUBLISH packets sent.",
        Stats::get(&s.messages_sent),
    );
    metric(
        "messages_dropped_total",
        "counter",
        "Messages dropped (queues, expiry, size).",
        Stats::get(&s.messages_dropped),
    );
    metric(
        "bytes_received_total",
        "counter",
        "Bytes received on MQTT connections.",
        Stats::get(&s.bytes_received),
    );
    metric(
        "bytes_sent_total",
        "counter",
        "Bytes sent on MQTT connections.",
        Stats::get(&s.bytes_sent),
    );
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out)
}

/// GET /api/v1/openapi.json
async fn openapi() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI)
}
