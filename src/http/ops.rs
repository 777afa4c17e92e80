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
    let uptime = state.started.elapsed().as_secs();
    let counters = state.stats.snapshot().metrics();
    let mut out = String::new();
    let uptime_metric = ("uptime_seconds", "gauge", "Seconds since start.", uptime);
    for (name, kind, help, value) in std::iter::once(uptime_metric).chain(counters) {
        let _ = writeln!(out, "# HELP natter_{name} {help}");
        let _ = writeln!(out, "# TYPE natter_{name} {kind}");
        let _ = writeln!(out, "natter_{name} {value}");
    }
    state.stats.puback_ms.render(
        "chat_puback_milliseconds",
        "Time from a chat message's arrival to its PUBACK (stored and committed).",
        &mut out,
    );
    state.stats.batch_size.render(
        "history_commit_batch_size",
        "Messages per history commit.",
        &mut out,
    );
    let parts = [
        (
            &state.stats.commit_wait_ms,
            "history_commit_wait_milliseconds",
            "How long the oldest message of a history commit waited in the writer's queue.",
        ),
        (
            &state.stats.commit_sql_ms,
            "history_commit_sql_milliseconds",
            "A history commit's statements before COMMIT.",
        ),
        (
            &state.stats.commit_sync_ms,
            "history_commit_sync_milliseconds",
            "A history commit's COMMIT: the durable write (WAL append and fsync).",
        ),
    ];
    for (histogram, name, help) in parts {
        histogram.render(name, help, &mut out);
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out)
}

/// GET /api/v1/openapi.json
async fn openapi() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI)
}
