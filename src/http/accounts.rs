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

/// POST /api/v1/register — create an account (when registration is open). Counted per
/// address by the login limiter; a taken name is refused before its password is hashed.
async fn register(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Body(c): Body<Credentials>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    if !state.settings.allow_registration {
        return Err(ApiError::from(Refusal::RegistrationClosed));
    }
    check_new_account(&c)?;
    if !state.limiter.allow_registration(peer.ip()) {
        tracing::info!(addr = %peer.ip(), "registration refused: too many from this address");
        return Err(ApiError::from(Refusal::RateLimited)
            .with_message("too many registrations; wait a minute"));
    }
    let u = c.user.clone();
    if blocking(&state, move |s| s.user_exists(&u)).await? {
        return Err(taken(&c.user));
    }
    let iterations = state.settings.pbkdf2_iterations;
    let user = c.user.clone();
    let _turn = password_turn(&state).await?;
    let hash = blocking(&state, move |_| Ok(password::hash(&c.password, iterations)))
        .await?
        .map_err(hash_failed)?;
    add_account(&state, &user, hash).await?;
    Ok((StatusCode::CREATED, Json(json!({"user": user}))))
}

/// A new account's id and password, checked before anything is counted or hashed.
fn check_new_account(c: &Credentials) -> Result<(), ApiError> {
    if !topics::valid_id(&c.user) {
        return Err(ApiError::bad_request(
            "user ids are 1-32 of a-z, 0-9, _ and -",
        ));
    }
    check_new_password(&c.password)
}

/// A password to be set: long enough, and usable as an MQTT password (no U+0000, which MQTT
/// strings may not carry).
fn check_new_password(password: &str) -> Result<(), ApiError> {
    if password.len() < 8 {
        return Err(ApiError::bad_request(
            "passwords have at least 8 characters",
        ));
    }
    if password.contains('\0') {
        return Err(ApiError::bad_request("passwords may not contain U+0000"));
    }
    Ok(())
}

/// The refusal of a user id that is already taken (the same the store gives in a race).
fn taken(user: &str) -> ApiError {
    ApiError::from(crate::store::StoreError::Exists(format!("user {user}")))
}

/// Stores a new account and makes it usable at once.
async fn add_account(state: &Arc<AppState>, user: &str, hash: String) -> Result<(), ApiError> {
    state
        .chat
        .serialised(async {
            let u = user.to_string();
            blocking(state, move |s| s.add_user(&u, &hash)).await?;
            // Usable at once (the periodic reload would bring it within a second), and on the
            // other nodes of a cluster as soon as they hear of it.
            state
                .directory
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .set_user(user, false);
            state.chat.announce_change();
            Ok::<_, ApiError>(())
        })
        .await
}

/// POST /api/v1/login — password → access token (also an MQTT password) + refresh token.
/// Failed passwords count in the login limiter, per user and per address; over its limit the
/// password is not even checked.
async fn login(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Body(c): Body<Credentials>,
) -> Result<Json<Value>, ApiError> {
    let device = c
        .device
        .clone()
        .unwrap_or_else(|| crate::ids::random_hex(4));
    if !topics::valid_id(&device) {
        return Err(ApiError::bad_request(
            "device ids are 1-32 of a-z, 0-9, _ and -",
        ));
    }
    if !state.limiter.allow_login(&c.user, peer.ip()) {
        tracing::info!(user = ?c.user, addr = %peer.ip(), "HTTP login refused: too many failures");
        return Err(ApiError::from(Refusal::RateLimited)
            .with_message("too many failed logins; wait a minute"));
    }
    let (user, pw) = (c.user.clone(), c.password.clone());
    let turn = password_turn(&state).await?;
    let ok = blocking(&state, move |s| {
        Ok(s.login_info(&user)?
            .is_some_and(|(hash, _)| password::verify(&pw, &hash)))
    })
    .await?;
    drop(turn);
    if !ok {
        state.limiter.failed(&c.user, peer.ip());
        return Err(ApiError::from(Refusal::BadCredentials));
    }
    state.limiter.succeeded(&c.user, peer.ip());
    let (u, d) = (c.user.clone(), device.clone());
    blocking(&state, move |s| s.upsert_device(&u, &d)).await?;
    issue(&state, &c.user, &device).await.map(Json)
}

/// Issues a new refresh token and an access token for a device, both of its current token
/// generation; refused if the device was revoked meanwhile.
async fn issue(state: &Arc<AppState>, user: &str, device: &str) -> Result<Value, ApiError> {
    let now = now_secs();
    let refresh = tokens::new_refresh_token();
    let hash = tokens::hash_refresh_token(&refresh);
    let expires = now + state.settings.refresh_token.as_secs() as i64;
    let (u, d) = (user.to_string(), device.to_string());
    let asked = std::time::Instant::now();
    let Some(gen) = blocking(state, move |s| s.add_refresh_token(&hash, &u, &d, expires)).await?
    else {
        return Err(ApiError::unauthorized());
    };
    // Just read: the device's current generation (its first CONNECT need not ask again).
    state.tokens.confirm(user, device, &gen, asked);
    let access = state.signer.issue(&Claims {
        sub: user.to_string(),
        dev: device.to_string(),
        gen,
        iat: now,
        exp: now + state.settings.access_token.as_secs() as i64,
    });
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

/// POST /api/v1/password — change one's password. Every token of the user, this one too,
/// stops working, and every MQTT connection of the user is closed (those made with a token or
/// with the old password alike): clients log in again with the new password. A wrong old password counts
/// as a failed login (a stolen access token must not buy unlimited guesses).
async fn change_password(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    me: AuthUser,
    Body(b): Body<PasswordBody>,
) -> Result<StatusCode, ApiError> {
    check_new_password(&b.new)?;
    if !state.limiter.allow_login(&me.user, peer.ip()) {
        return Err(ApiError::from(Refusal::RateLimited)
            .with_message("too many failed logins; wait a minute"));
    }
    let iterations = state.settings.pbkdf2_iterations;
    let user = me.user.clone();
    let turn = password_turn(&state).await?;
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
    drop(turn);
    if !changed {
        state.limiter.failed(&me.user, peer.ip());
        return Err(ApiError::from(Refusal::WrongPassword));
    }
    // The user's tokens carried the old generation.
    state.tokens.forget_all();
    // Every live connection of the user goes, not only those of devices that logged in over
    // HTTP: one made with the old password (an MQTT client that sent it as its password)
    // would otherwise stay open.
    let _ = state
        .router
        .send(Event::Kick {
            user: me.user.as_str().into(),
        })
        .await;
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
    state.tokens.forget_all();
    kick(&state, &me.user, &device).await;
    Ok(StatusCode::NO_CONTENT)
}

/// Closes the MQTT connection of a device whose tokens just died (client id
/// `{user}.{device}`); the router also refuses a CONNECT authenticated before this.
/// A turn to hash or check a password: PBKDF2 is slow on purpose, and a burst of logins must
/// not take every blocking thread (MQTT logins wait in the same line).
async fn password_turn(
    state: &Arc<AppState>,
) -> Result<tokio::sync::SemaphorePermit<'_>, ApiError> {
    state
        .limiter
        .password_check()
        .await
        .ok_or_else(|| ApiError::from(Refusal::Internal))
}

async fn kick(state: &Arc<AppState>, user: &str, device: &str) {
    let client = topics::device_client_id(user, device);
    let _ = state
        .router
        .send(Event::KickClient {
            client: client.into(),
        })
        .await;
}
