//! Conversations over HTTP: the same operations, rules and code as the MQTT requests on
//! `q/{user}/{op}` (see `topics.md`): each route builds a typed [`Request`] from its path, query
//! and body, and hands it to [`crate::service::ChatService::dispatch`].

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

use super::{ApiError, AppState, AuthUser, Body};
use crate::chat::requests::Request;
use crate::chat::seq;
use crate::service::ServiceError;

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
        .route("/api/v1/groups/{conv}/owner", post(transfer_ownership))
        .route("/api/v1/search", get(search))
}

/// Serves `request` for `me`, as the MQTT request would.
async fn dispatch(state: &AppState, me: &AuthUser, request: Request) -> Result<Value, ApiError> {
    Ok(state.chat.dispatch(&me.user, &request).await?)
}

/// Reads the query parameter `key` as a number, if present.
fn number(q: &HashMap<String, String>, key: &str) -> Result<Option<u64>, ApiError> {
    q.get(key)
        .map(|v| {
            v.parse::<u64>()
                .map_err(|_| ApiError::bad_request(format!("{key} must be a number")))
        })
        .transpose()
}

/// Reads the query parameter `key` as a sequence number (at most [`seq::MAX`]: the store
/// cannot compare a larger one), if present.
fn seq_number(q: &HashMap<String, String>, key: &str) -> Result<Option<u64>, ApiError> {
    q.get(key)
        .map(|v| {
            seq::parse(v).ok_or_else(|| {
                ApiError::bad_request(format!(
                    "{key} must be a sequence number from 0 to {}",
                    seq::MAX
                ))
            })
        })
        .transpose()
}

/// A `limit` as a page size to ask for (page sizes are bounded far below either type's range).
fn page(limit: Option<u64>) -> Option<usize> {
    limit.map(|l| usize::try_from(l).unwrap_or(usize::MAX))
}

/// GET /api/v1/conversations — my conversations with unread counts.
async fn list(State(state): State<Arc<AppState>>, me: AuthUser) -> Result<Json<Value>, ApiError> {
    Ok(Json(dispatch(&state, &me, Request::Conversations).await?))
}

/// GET /api/v1/conversations/{conv}/messages?after=SEQ | ?before=SEQ, &limit=N —
/// `after` (default) pages forward like `sync`, `before` pages back like `history`.
async fn messages(
    State(state): State<Arc<AppState>>,
    me: AuthUser,
    Path(conv): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let limit = page(number(&q, "limit")?);
    let request = match seq_number(&q, "before")? {
        Some(before) => Request::history(conv, Some(before), limit),
        None => Request::sync_conversation(conv, seq_number(&q, "after")?.unwrap_or(0), limit),
    };
    Ok(Json(dispatch(&state, &me, request).await?))
}

/// GET /api/v1/conversations/{conv}/members
async fn members(
    State(state): State<Arc<AppState>>,
    me: AuthUser,
    Path(conv): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(
        dispatch(&state, &me, Request::Members { conv }).await?,
    ))
}

/// POST /api/v1/groups — `{"id"?, "name"?, "members"?}`.
async fn create_group(
    State(state): State<Arc<AppState>>,
    me: AuthUser,
    Body(body): Body<Value>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let request = Request::from_json("group.create", body).map_err(ServiceError::from)?;
    let reply = dispatch(&state, &me, request).await?;
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
    // The path names the group, whatever the body says.
    body["conv"] = json!(conv);
    let request = Request::from_json("group.add", body).map_err(ServiceError::from)?;
    Ok(Json(dispatch(&state, &me, request).await?))
}

/// DELETE /api/v1/groups/{conv}/members/{user} — remove a member (or leave, for oneself).
async fn remove_member(
    State(state): State<Arc<AppState>>,
    me: AuthUser,
    Path((conv, user)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    dispatch(&state, &me, Request::RemoveMember { conv, user }).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// POST /api/v1/groups/{conv}/owner — `{"user"}`: hand the group to another member (the
/// owner stays on as an admin).
async fn transfer_ownership(
    State(state): State<Arc<AppState>>,
    me: AuthUser,
    Path(conv): Path<String>,
    Body(mut body): Body<Value>,
) -> Result<StatusCode, ApiError> {
    if !body.is_object() {
        return Err(ApiError::bad_request("expected a JSON object"));
    }
    // The path names the group, whatever the body says.
    body["conv"] = json!(conv);
    let request = Request::from_json("group.transfer", body).map_err(ServiceError::from)?;
    dispatch(&state, &me, request).await?;
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
    let limit = number(&q, "limit")?;
    let request = Request::search(text.clone(), page(limit)).map_err(ServiceError::from)?;
    Ok(Json(dispatch(&state, &me, request).await?))
}
