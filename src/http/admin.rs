//! Admin endpoints (admins only): users, server stats, disconnecting a client.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{delete, get};
use axum::{Json, Router};
use serde_json::{json, Value};

use super::{blocking, AdminUser, ApiError, AppState};
use crate::refusal::Refusal;
use crate::router::Event;

pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/api/v1/admin/users", get(users))
        .route("/api/v1/admin/stats", get(stats))
        .route("/api/v1/admin/clients", get(clients))
        .route("/api/v1/admin/clients/{client}", delete(kick))
        .route("/api/v1/admin/conversations", get(conversations))
}

/// GET /api/v1/admin/users
async fn users(
    State(state): State<Arc<AppState>>,
    _admin: AdminUser,
) -> Result<Json<Value>, ApiError> {
    let users = blocking(&state, |s| s.list_users()).await?;
    let users: Vec<Value> = users
        .into_iter()
        .map(|u| json!({"user": u.id, "admin": u.admin, "created_at": u.created_at}))
        .collect();
    Ok(Json(json!({"users": users})))
}

/// GET /api/v1/admin/stats
async fn stats(State(state): State<Arc<AppState>>, _admin: AdminUser) -> Json<Value> {
    let mut stats = json!(state.stats.snapshot());
    stats["uptime_secs"] = json!(state.started.elapsed().as_secs());
    Json(stats)
}

/// GET /api/v1/admin/clients — every session, connected or not.
async fn clients(
    State(state): State<Arc<AppState>>,
    _admin: AdminUser,
) -> Result<Json<Value>, ApiError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let unavailable = || ApiError::from(Refusal::ShuttingDown);
    state
        .router
        .send(Event::ListClients(tx))
        .await
        .map_err(|_| unavailable())?;
    let list = rx.await.map_err(|_| unavailable())?;
    let clients: Vec<Value> = list
        .into_iter()
        .map(|c| json!({"client": &*c.client, "user": c.user.as_deref(), "connected": c.connected}))
        .collect();
    Ok(Json(json!({"clients": clients})))
}

/// GET /api/v1/admin/conversations — groups and their members.
async fn conversations(
    State(state): State<Arc<AppState>>,
    _admin: AdminUser,
) -> Result<Json<Value>, ApiError> {
    let snap = blocking(&state, |s| s.snapshot()).await?;
    let list: Vec<Value> = snap
        .conversations
        .iter()
        .map(|c| {
            let members: Vec<Value> = snap
                .members
                .iter()
                .filter(|(conv, _, _)| conv == &c.id)
                .map(|(_, user, role)| json!({"user": user, "role": role}))
                .collect();
            json!({"conv": c.id, "name": c.name, "members": members})
        })
        .collect();
    Ok(Json(json!({"conversations": list})))
}

/// DELETE /api/v1/admin/clients/{client} — disconnects a client (DISCONNECT 0x98) and ends its
/// session.
async fn kick(
    State(state): State<Arc<AppState>>,
    _admin: AdminUser,
    Path(client): Path<String>,
) -> Result<StatusCode, ApiError> {
    state
        .router
        .send(Event::KickClient {
            client: client.into(),
        })
        .await
        .map_err(|_| ApiError::from(Refusal::ShuttingDown))?;
    Ok(StatusCode::NO_CONTENT)
}
