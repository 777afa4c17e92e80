//! Accounts and tokens: register, login (access + refresh token), refresh (rotating), logout,
//! change password, list and revoke devices.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Path, State};
use axum::http::StatusCode;
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{blocking, now_secs, ApiError, AppState, AuthUser, Body};
use crate::refusal::Refusal;
use crate::router::Event;
use crate::tokens::{self, Claims};
use crate::{password, topics};

pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/api/v1/register", post(register))
        .route("/api/v1/login", post(login))
        .route("/api/v1/refresh", post(refresh))
        .route("/api/v1/logout", post(logout))
        .route("/api/v1/password", post(change_password))
        .route("/api/v1/devices", get(devices))
        .route("/api/v1/devices/{device}", delete(revoke_device))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Credentials {
    user: String,
    password: String,
    /// The device this login is for (its MQTT client id is then `{user}.{device}`).
    #[serde(default)]
    device: Option<String>,
}

/// A password that could not be hashed: logged, and the same internal error as any failure
/// of the server's own.
fn hash_failed(e: password::PasswordError) -> ApiError {
    tracing::error!(error = %e, "password hashing failed in an HTTP request");
    ApiError::from(Refusal::Internal)
}

/// POST /api/v1/register — create an account (when registration is open).
async fn register(
    State(state): State<Arc<AppState>>,
    Body(c): Body<Credentials>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    if !state.settings.allow_registration {
        return Err(ApiError::from(Refusal::RegistrationClosed));
    }
    if !topics::valid_id(&c.user) {
        return Err(ApiError::bad_request(
            "user ids are 1-32 of a-z, 0-9, _ and -",
        ));
    }
    if c.password.len() < 8 {
        return Err(ApiError::bad_request(
            "passwords have at least 8 characters",
        ));
    }
    let iterations = state.settings.pbkdf2_iterations;
    let user = c.user.clone();
    let hash = blocking(&state, move |_| Ok(password::hash(&c.password, iterations)))
        .await?
        .map_err(hash_failed)?;
    state
        .chat
        .serialised(async {
            let u = user.clone();
            blocking(&state, move |s| s.add_user(&u, &hash)).await?;
            // Usable at once (the periodic reload would bring it within a second).
            state
                .directory
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .set_user(&user, false);
            Ok::<_, ApiError>(())
        })
        .await?;
    Ok((StatusCode::CREATED, Json(json!({"user": user}))))
}

/// POST /api/v1/login — password → access token (also an MQTT password) + refresh token.
async fn login(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Body(c): Body<Credentials>,
) -> Result<Json<Value>, ApiError> {
    if !state.allow_login(&[format!("user:{}", c.user), format!("addr:{}", peer.ip())]) {
        return Err(ApiError::from(Refusal::RateLimited)
            .with_message("too many login attempts; wait a minute"));
    }
    let device = c
        .device
        .clone()
        .unwrap_or_else(|| crate::ids::random_hex(4));
    if !topics::valid_id(&device) {
        return Err(ApiError::bad_request(
            "device ids are 1-32 of a-z, 0-9, _ and -",
        ));
    }
    let (user, pw) = (c.user.clone(), c.password.clone());
    let ok = blocking(&state, move |s| {
        Ok(s.login_info(&user)?
            .is_some_and(|(hash, _)| password::verify(&pw, &hash)))
    })
    .await?;
    if !ok {
        return Err(ApiError::from(Refusal::BadCredentials));
    }
    let (u, d) = (c.user.clone(), device.clone());
    blocking(&state, move |s| s.upsert_device(&u, &d)).await?;
    issue(&state, &c.user, &device).await.map(Json)
}

/// Issues an access token and a new refresh token for a device.
async fn issue(state: &Arc<AppState>, user: &str, device: &str) -> Result<Value, ApiError> {
    let now = now_secs();
    let access = state.signer.issue(&Claims {
        sub: user.to_string(),
        dev: device.to_string(),
        iat: now,
        exp: now + state.settings.access_token.as_secs() as i64,
    });
    let refresh = tokens::new_refresh_token();
    let hash = tokens::hash_refresh_token(&refresh);
    let expires = now + state.settings.refresh_token.as_secs() as i64;
    let (u, d) = (user.to_string(), device.to_string());
    blocking(state, move |s| s.add_refresh_token(&hash, &u, &d, expires)).await?;
    Ok(json!({
        "access_token": access,
        "token_type": "Bearer",
        "expires_in": state.settings.access_token.as_secs(),
        "refresh_token": refresh,
        "user": user,
        "device": device,
        "client_id": topics::device_client_id(user, device),
    }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RefreshBody {
    refresh_token: String,
}

/// POST /api/v1/refresh — a refresh token (used once) → a new pair.
async fn refresh(
    State(state): State<Arc<AppState>>,
    Body(b): Body<RefreshBody>,
) -> Result<Json<Value>, ApiError> {
    let hash = tokens::hash_refresh_token(&b.refresh_token);
    let now = now_secs();
    let found = blocking(&state, move |s| s.take_refresh_token(&hash, now)).await?;
    let Some((user, device)) = found else {
        return Err(ApiError::from(Refusal::BadRefreshToken));
    };
    issue(&state, &user, &device).await.map(Json)
}

/// POST /api/v1/logout — revokes the given refresh token.
async fn logout(
    State(state): State<Arc<AppState>>,
    Body(b): Body<RefreshBody>,
) -> Result<StatusCode, ApiError> {
    let hash = tokens::hash_refresh_token(&b.refresh_token);
    let now = now_secs();
    blocking(&state, move |s| s.take_refresh_token(&hash, now)).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PasswordBody {
    old: String,
    new: String,
}

/// POST /api/v1/password — change one's password.
async fn change_password(
    State(state): State<Arc<AppState>>,
    me: AuthUser,
    Body(b): Body<PasswordBody>,
) -> Result<StatusCode, ApiError> {
    if b.new.len() < 8 {
        return Err(ApiError::bad_request(
            "passwords have at least 8 characters",
        ));
    }
    let iterations = state.settings.pbkdf2_iterations;
    let user = me.user.clone();
    let changed = blocking(&state, move |s| {
        let ok = s
            .login_info(&user)?
            .is_some_and(|(hash, _)| password::verify(&b.old, &hash));
        if !ok {
            return Ok(Ok(false));
        }
        let hash = match password::hash(&b.new, iterations) {
            Ok(hash) => hash,
            Err(e) => return Ok(Err(e)),
        };
        s.set_password(&user, &hash).map(Ok)
    })
    .await?
    .map_err(hash_failed)?;
    if !changed {
        return Err(ApiError::from(Refusal::WrongPassword));
    }
    Ok(StatusCode::NO_CONTENT)
}

/// GET /api/v1/devices — the caller's devices.
async fn devices(
    State(state): State<Arc<AppState>>,
    me: AuthUser,
) -> Result<Json<Value>, ApiError> {
    let user = me.user.clone();
    let list = blocking(&state, move |s| s.devices(&user)).await?;
    let devices: Vec<Value> = list
        .into_iter()
        .map(|(device, created_at, revoked)| {
            json!({"device": device, "created_at": created_at, "revoked": revoked, "current": device == me.device})
        })
        .collect();
    Ok(Json(json!({"devices": devices})))
}

/// DELETE /api/v1/devices/{device} — revokes a device: its tokens stop working and its live
/// MQTT connection (client id `{user}.{device}`) is closed.
async fn revoke_device(
    State(state): State<Arc<AppState>>,
    me: AuthUser,
    Path(device): Path<String>,
) -> Result<StatusCode, ApiError> {
    let (u, d) = (me.user.clone(), device.clone());
    if !blocking(&state, move |s| s.revoke_device(&u, &d)).await? {
        return Err(ApiError::from(Refusal::NotFound).with_message("no such device"));
    }
    let client = topics::device_client_id(&me.user, &device);
    let _ = state
        .router
        .send(Event::KickClient {
            client: client.into(),
        })
        .await;
    Ok(StatusCode::NO_CONTENT)
}
