//! Conversations over HTTP: the same operations, rules and code as the MQTT requests on
//! `q/{user}/{op}` (see `topics.md`), through `ChatService::call`.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

use super::{ApiError, AppState, AuthUser, Body};

pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/api/v1/conversations", get(list))
        .route("/api/v1/conversations/{conv}/messages", get(messages))
        .route("/api/v1/conversations/{conv}/members", get(members))
        .route("/api/v1/groups", post(create_group))
        .route("/api/v1/groups/{conv}/members", post(add_member))
        .route(
            "/api/v1/groups/{conv}/members/{user}",
            delete(remove_member),
        )
        .route("/api/v1/search", get(search))
}

/// GET /api/v1/conversations — my conversations with unread counts.
async fn list(State(state): State<Arc<AppState>>, me: AuthUser) -> Result<Json<Value>, ApiError> {
    Ok(Json(
        state
            .chat
            .call(&me.user, "conversations", &json!({}))
            .await?,
    ))
}

/// GET /api/v1/conversations/{conv}/messages?after=SEQ | ?before=SEQ | ?since=ID, &limit=N —
/// `after` (default) pages forward like `sync`, `before` pages back like `history`.
async fn messages(
    State(state): State<Arc<AppState>>,
    me: AuthUser,
    Path(conv): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let number = |key: &str| -> Result<Option<u64>, ApiError> {
        q.get(key)
            .map(|v| {
                v.parse::<u64>()
                    .map_err(|_| ApiError::bad_request(format!("{key} must be a number")))
            })
            .transpose()
    };
    let limit = number("limit")?;
    let (op, mut body) = match number("before")? {
        Some(before) => ("history", json!({"conv": conv, "before": before})),
        None => (
            "sync",
            json!({"conv": conv, "after": number("after")?.unwrap_or(0)}),
        ),
    };
    if let Some(limit) = limit {
        body["limit"] = json!(limit);
    }
    Ok(Json(state.chat.call(&me.user, op, &body).await?))
}

/// GET /api/v1/conversations/{conv}/members
async fn members(
    State(state): State<Arc<AppState>>,
    me: AuthUser,
    Path(conv): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(
        state
            .chat
            .call(&me.user, "members", &json!({"conv": conv}))
            .await?,
    ))
}

/// POST /api/v1/groups — `{"id"?, "name"?, "members"?}`.
async fn create_group(
    State(state): State<Arc<AppState>>,
    me: AuthUser,
    Body(body): Body<Value>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let reply = state.chat.call(&me.user, "group.create", &body).await?;
    Ok((StatusCode::CREATED, Json(reply)))
}

/// POST /api/v1/groups/{conv}/members — `{"user", "role"?}`.
async fn add_member(
    State(state): State<Arc<AppState>>,
    me: AuthUser,
    Path(conv): Path<String>,
    Body(mut body): Body<Value>,
) -> Result<Json<Value>, ApiError> {
    if !body.is_object() {
        return Err(ApiError::bad_request("expected a JSON object"));
    }
    body["conv"] = json!(conv);
    Ok(Json(state.chat.call(&me.user, "group.add", &body).await?))
}

/// DELETE /api/v1/groups/{conv}/members/{user} — remove a member (or leave, for oneself).
async fn remove_member(
    State(state): State<Arc<AppState>>,
    me: AuthUser,
    Path((conv, user)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    state
        .chat
        .call(
            &me.user,
            "group.remove",
            &json!({"conv": conv, "user": user}),
        )
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// GET /api/v1/search?q=TEXT&limit=N — my conversations only.
async fn search(
    State(state): State<Arc<AppState>>,
    me: AuthUser,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let text = q
        .get("q")
        .ok_or_else(|| ApiError::bad_request("q is required"))?;
    let mut body = json!({"q": text});
    if let Some(limit) = q.get("limit") {
        let limit: u64 = limit
            .parse()
            .map_err(|_| ApiError::bad_request("limit must be a number"))?;
        body["limit"] = json!(limit);
    }
    Ok(Json(state.chat.call(&me.user, "search", &body).await?))
}
