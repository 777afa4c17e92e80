//! The HTTP sidecar (axum): accounts and tokens, conversations for apps that prefer HTTP (the
//! same operations as the MQTT requests, through [`ChatService::dispatch`]), media, admin, `/healthz`,
//! Prometheus `/metrics` and the OpenAPI document at `/api/v1/openapi.json`.
//!
//! [`app`] builds the router from its state, so tests drive it in-process; [`run`] serves it on
//! a bound listener until shutdown. Every error is JSON `{"error", "message"}` with the right
//! status; internal details go to the log, never to the client.
//!
//! Request bodies are bounded per route: JSON routes by `http.max_body_bytes` (a declared
//! `Content-Length` over it is refused before anything is read, a chunked body is cut where it
//! passes it); uploads stream to disk under the size limit and the quota (`quota` reserves
//! the bytes of uploads in progress).

mod accounts;
mod admin;
mod conversations;
mod media;
mod ops;
mod quota;

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use axum::body::BodyDataStream;
use axum::extract::{DefaultBodyLimit, FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::StreamExt;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::chat::Directory;
use crate::limiter::LoginLimiter;
use crate::media::{MediaStore, Thumbnails};
use crate::refusal::Refusal;
use crate::router::Event;
use crate::service::requests::{ChatService, ServiceError};
use crate::stats::Stats;
use crate::store::{Store, StoreError};
use crate::token_cache::TokenCache;
use crate::tokens::Signer;

/// Token lifetimes and login limits, from `[http]` and `[auth]`.
#[derive(Debug, Clone)]
pub struct HttpSettings {
    pub allow_registration: bool,
    pub access_token: Duration,
    pub refresh_token: Duration,
    pub login_attempts_per_minute: u32,
    /// Password hashes and checks at once (shared with MQTT once the server's limiter is in).
    pub max_concurrent_logins: usize,
    pub pbkdf2_iterations: u32,
    pub max_upload: u64,
    pub media_quota: u64,
    pub media_link_ttl: u64,
    pub thumbnail_px: u32,
    pub max_image_pixels: u64,
    /// Thumbnail decodes running at once; each holds up to 4 bytes per pixel.
    pub max_concurrent_decodes: usize,
    /// The largest JSON request body; uploads have their own limit (`max_upload`).
    pub max_body_bytes: usize,
}

/// What every handler shares.
pub struct AppState {
    pub settings: HttpSettings,
    pub store: Arc<dyn Store>,
    pub directory: Arc<RwLock<Directory>>,
    pub chat: Arc<ChatService>,
    pub signer: Arc<Signer>,
    pub router: mpsc::Sender<Event>,
    pub stats: Arc<Stats>,
    pub media: Arc<MediaStore>,
    /// How thumbnails are made: their size, the pixel limit and the decodes running at once.
    pub thumbnails: Thumbnails,
    /// Quota bytes held by uploads in progress.
    uploads: quota::Reservations,
    pub started: Instant,
    /// Failed logins and registrations, shared with MQTT (see [`AppState::with_limiter`]).
    limiter: Arc<LoginLimiter>,
    /// Tokens the store confirmed a moment ago, shared with MQTT (see [`AppState::with_tokens`]).
    pub tokens: Arc<TokenCache>,
}

impl AppState {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        settings: HttpSettings,
        store: Arc<dyn Store>,
        directory: Arc<RwLock<Directory>>,
        chat: Arc<ChatService>,
        signer: Arc<Signer>,
        router: mpsc::Sender<Event>,
        stats: Arc<Stats>,
        media: Arc<MediaStore>,
    ) -> AppState {
        let thumbnails = Thumbnails::new(
            settings.thumbnail_px,
            settings.max_image_pixels,
            settings.max_concurrent_decodes,
        );
        AppState {
            thumbnails,
            uploads: quota::Reservations::default(),
            store,
            directory,
            chat,
            signer,
            router,
            stats,
            media,
            started: Instant::now(),
            limiter: Arc::new(LoginLimiter::new(
                settings.login_attempts_per_minute,
                settings.max_concurrent_logins,
            )),
            tokens: Arc::default(),
            settings,
        }
    }

    /// The same state counting logins in `limiter`: the server passes the one MQTT uses, so a
    /// guesser cannot double their attempts by switching protocols.
    pub fn with_limiter(self, limiter: Arc<LoginLimiter>) -> AppState {
        AppState { limiter, ..self }
    }

    /// Shares MQTT's confirmed tokens (see [`crate::access::Access::tokens`]).
    pub fn with_tokens(self, tokens: Arc<TokenCache>) -> AppState {
        AppState { tokens, ..self }
    }

    fn is_admin(&self, user: &str) -> bool {
        self.directory
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .is_admin(user)
    }
}

/// The HTTP API as a router (tests call it without a socket).
pub fn app(state: Arc<AppState>) -> axum::Router {
    let max_body = state.settings.max_body_bytes;
    let json = axum::Router::new()
        .merge(ops::routes())
        .merge(accounts::routes())
        .merge(conversations::routes())
        .merge(admin::routes())
        // Caps bodies sent without a length (chunked) as they are read: `Body` (axum's `Json`
        // underneath) stops at the limit and answers 413.
        .layer(DefaultBodyLimit::max(max_body))
        .layer(axum::middleware::from_fn_with_state(
            max_body,
            refuse_long_body,
        ));
    axum::Router::new()
        .merge(json)
        // Uploads stream to disk under their own limit (size and quota), checked as they go.
        .merge(media::routes().layer(DefaultBodyLimit::disable()))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        // Outermost, so it also sees axum's own rejections (Path, Query, Multipart...).
        .layer(axum::middleware::map_response(json_errors))
        .with_state(state)
}

/// Refuses a body that declares a `Content-Length` over `max` before reading any of it.
async fn refuse_long_body(
    State(max): State<usize>,
    request: axum::extract::Request,
    next: Next,
) -> Response {
    match declared_length(request.headers()) {
        Some(len) if len > max as u64 => {
            discard_body(request.into_body().into_data_stream());
            body_too_large(max as u64).into_response()
        }
        _ => next.run(request).await,
    }
}

/// The request's `Content-Length`, when it has a valid one.
fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// The 413 for a request body over `max` bytes.
fn body_too_large(max: u64) -> ApiError {
    ApiError::from(Refusal::TooLarge)
        .with_message(format!("request bodies are limited to {max} bytes"))
}

/// Reads and drops the rest of a refused body in the background, up to [`DISCARD_BYTES`] or
/// [`DISCARD_TIME`], whichever comes first. The refusal goes out at once; without this the
/// server would close the connection on unread bytes and a client still sending would see a
/// reset instead of the answer. Nothing is kept: the cost is bounded bandwidth, not memory.
fn discard_body(mut stream: BodyDataStream) {
    tokio::spawn(async move {
        let mut read = 0u64;
        let drain = async {
            while let Some(Ok(bytes)) = stream.next().await {
                read += bytes.len() as u64;
                if read > DISCARD_BYTES {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout(DISCARD_TIME, drain).await;
    });
}

/// How much of a refused body is read (and dropped) at most, and for how long.
const DISCARD_BYTES: u64 = 32 * 1024 * 1024;
const DISCARD_TIME: Duration = Duration::from_secs(5);

async fn not_found() -> ApiError {
    ApiError::from(Refusal::NotFound).with_message("no such route")
}

async fn method_not_allowed() -> ApiError {
    ApiError::from(Refusal::MethodNotAllowed)
}

/// The longest plain-text error body kept as a JSON message.
const MAX_ERROR_TEXT: usize = 1024;

/// Turns any error response that is not already JSON (axum's extractor rejections answer in
/// plain text) into `{"error", "message"}`, keeping the status and headers such as
/// `Content-Range`. Server errors get a fixed message: their text is never shown to clients.
async fn json_errors(response: Response) -> Response {
    let status = response.status();
    let is_json = response
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, MAX_ERROR_TEXT)
        .await
        .ok()
        .and_then(|b| String::from_utf8(b.to_vec()).ok())
        .filter(|t| !t.trim().is_empty());
    let message = match text {
        Some(t) if status.is_client_error() => t,
        _ => status
            .canonical_reason()
            .unwrap_or("error")
            .to_ascii_lowercase(),
    };
    parts.headers.remove(axum::http::header::CONTENT_LENGTH);
    parts.headers.remove(axum::http::header::CONTENT_TYPE);
    let mut out = ApiError::rejection(status, message).into_response();
    out.headers_mut().extend(parts.headers);
    out
}

/// The stable error code for a status when a rejection carries none of its own: the code of
/// the refusal the status stands for (see [`Refusal::for_status`]), else `error`.
fn status_code_name(status: StatusCode) -> &'static str {
    Refusal::for_status(status).map_or("error", |r| r.code())
}

/// Serves the API on `listener` until `shutdown`.
pub async fn run(listener: TcpListener, state: Arc<AppState>, shutdown: CancellationToken) {
    let app = app(state).into_make_service_with_connect_info::<SocketAddr>();
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
    {
        tracing::error!(error = %e, "HTTP server failed");
    }
}

/// An API error: a status, a stable code and a message fit for clients. Built from a
/// [`Refusal`], whose tables give the status and the code.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl From<Refusal> for ApiError {
    fn from(refusal: Refusal) -> ApiError {
        ApiError {
            status: refusal.http_status(),
            code: refusal.code(),
            message: refusal.to_string(),
        }
    }
}

impl ApiError {
    /// The same error with a more precise message for the client.
    pub fn with_message(self, message: impl Into<String>) -> ApiError {
        ApiError {
            message: message.into(),
            ..self
        }
    }

    /// An error for a bare status (axum's rejections): the status is kept as it is, the code is
    /// looked up through the table.
    fn rejection(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code: status_code_name(status),
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::from(Refusal::BadRequest).with_message(message)
    }

    pub fn unauthorized() -> ApiError {
        ApiError::from(Refusal::Unauthorized)
    }

    pub fn forbidden() -> ApiError {
        ApiError::from(Refusal::Forbidden)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(json!({"error": self.code, "message": self.message})),
        )
            .into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        if let StoreError::Exists(what) = e {
            return ApiError::from(Refusal::Conflict)
                .with_message(format!("{what} already exists"));
        }
        tracing::error!(error = %e, "storage failed in an HTTP request");
        ApiError::from(Refusal::Internal)
    }
}

impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> ApiError {
        let refusal = e.refusal();
        if refusal == Refusal::Internal {
            tracing::error!(error = %e, "chat operation failed in an HTTP request");
            return ApiError::from(refusal);
        }
        ApiError::from(refusal).with_message(e.to_string())
    }
}

/// Runs a store call on a blocking thread.
async fn blocking<T: Send + 'static>(
    state: &Arc<AppState>,
    f: impl FnOnce(&dyn Store) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, ApiError> {
    let store = state.store.clone();
    tokio::task::spawn_blocking(move || f(store.as_ref()))
        .await
        .map_err(|_| ApiError::from(Refusal::Internal))?
        .map_err(ApiError::from)
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

/// The caller, proven by `Authorization: Bearer <access token>`.
pub struct AuthUser {
    pub user: String,
    pub device: String,
}

impl FromRequestParts<Arc<AppState>> for AuthUser {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<AuthUser, ApiError> {
        let token = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(ApiError::unauthorized)?;
        let claims = state
            .signer
            .verify(token.trim(), now_secs())
            .map_err(|_| ApiError::unauthorized())?;
        let now = Instant::now();
        if !state
            .tokens
            .is_current(&claims.sub, &claims.dev, &claims.gen, now)
        {
            let (u, d, g) = (claims.sub.clone(), claims.dev.clone(), claims.gen.clone());
            if !blocking(state, move |s| s.token_current(&u, &d, &g)).await? {
                return Err(ApiError::unauthorized());
            }
            state
                .tokens
                .confirm(&claims.sub, &claims.dev, &claims.gen, now);
        }
        Ok(AuthUser {
            user: claims.sub,
            device: claims.dev,
        })
    }
}

/// An authenticated admin.
pub struct AdminUser(pub AuthUser);

impl FromRequestParts<Arc<AppState>> for AdminUser {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<AdminUser, ApiError> {
        let user = AuthUser::from_request_parts(parts, state).await?;
        if !state.is_admin(&user.user) {
            return Err(ApiError::forbidden());
        }
        Ok(AdminUser(user))
    }
}

/// JSON bodies with our error shape on malformed input.
pub struct Body<T>(pub T);

impl<T, S> axum::extract::FromRequest<S> for Body<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, ApiError> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(Body(v)),
            Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                Err(ApiError::from(Refusal::TooLarge).with_message("the request body is too large"))
            }
            Err(e) => Err(ApiError::rejection(e.status(), e.body_text())),
        }
    }
}

pub type AppStateRef = State<Arc<AppState>>;
