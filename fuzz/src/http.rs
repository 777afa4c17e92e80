//! The HTTP API (`http::app`) called in-process with any method, path, query and body.
//!
//! Input: byte 0 picks the method (bits 0..=2), whether to send a valid access token (bit 3)
//! and the content type (bits 4..=5); then the path and query up to the first newline, then
//! the body. One [`Harness`] (a store in a temporary directory, a registered user with a token
//! and a group) serves every input of a run.
//!
//! Properties: no input makes the server fail (a 5xx); every refusal is JSON
//! `{"error": <code>, "message": <text>}` with a JSON content type.

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::body::Body;
use axum::extract::connect_info::MockConnectInfo;
use axum::http::{header, Request, StatusCode};
use natter::chat::Directory;
use natter::http::{app, AppState, HttpSettings};
use natter::media::MediaStore;
use natter::service::push::{PushSettings, Pusher};
use natter::service::requests::ChatService;
use natter::stats::Stats;
use natter::store::sqlite::Sqlite;
use natter::store::Store;
use natter::tokens::Signer;
use serde_json::Value;
use tower::ServiceExt;

const METHODS: [&str; 8] = [
    "GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "GET",
];
const CONTENT_TYPES: [Option<&str>; 4] = [
    Some("application/json"),
    None,
    Some("application/octet-stream"),
    Some("multipart/form-data; boundary=b"),
];
const USER: &str = r#"{"user": "fuzz", "password": "correct horse"}"#;

/// The app and what it needs kept alive, on a single-threaded runtime.
pub struct Harness {
    runtime: tokio::runtime::Runtime,
    router: axum::Router,
    token: String,
    _dir: tempfile::TempDir,
}

/// One request as the fuzzer describes it.
struct Call<'a> {
    method: &'a str,
    uri: String,
    token: bool,
    content_type: Option<&'a str>,
    body: Vec<u8>,
}

impl Harness {
    pub fn new() -> Harness {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        let dir = tempfile::tempdir().expect("a temporary directory");
        let router = runtime.block_on(async { build(&dir) });
        let mut harness = Harness {
            runtime,
            router,
            token: String::new(),
            _dir: dir,
        };
        harness.call(&Call::json("POST", "/api/v1/register", USER, false));
        assert!(harness.log_in(), "the harness's user logs in");
        let group = r#"{"id": "fuzz", "name": "Fuzz"}"#;
        harness.call(&Call::json("POST", "/api/v1/groups", group, true));
        harness
    }

    /// Logs in (again: an input may have revoked the device); whether it worked.
    fn log_in(&mut self) -> bool {
        let (_, reply) = self.call(&Call::json("POST", "/api/v1/login", USER, false));
        let Some(token) = reply["access_token"].as_str() else {
            return false;
        };
        self.token = token.to_string();
        true
    }

    pub fn check(&mut self, data: &[u8]) {
        let Some(call) = Call::from_input(data) else {
            return;
        };
        let (status, _) = self.call(&call);
        assert!(
            !status.is_server_error(),
            "{status} for {} {}",
            call.method,
            call.uri
        );
        if call.token && status == StatusCode::UNAUTHORIZED {
            self.log_in();
        }
    }

    /// Sends one request; checks the shape of a refusal; the status and the JSON reply.
    fn call(&self, call: &Call<'_>) -> (StatusCode, Value) {
        let mut req = Request::builder().method(call.method).uri(&call.uri);
        if call.token {
            req = req.header(header::AUTHORIZATION, format!("Bearer {}", self.token));
        }
        if let Some(ct) = call.content_type {
            req = req.header(header::CONTENT_TYPE, ct);
        }
        let req = req
            .body(Body::from(call.body.clone()))
            .expect("from_input checked the method and URI");
        self.runtime.block_on(async {
            let resp = self.router.clone().oneshot(req).await.expect("infallible");
            let status = resp.status();
            let json_type = resp
                .headers()
                .get(header::CONTENT_TYPE)
                .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
            let bytes = axum::body::to_bytes(resp.into_body(), 64 << 20)
                .await
                .expect("a readable body");
            let reply = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            if status.is_client_error() || status.is_server_error() {
                assert!(json_type, "{status} without a JSON content type");
            }
            // A reply to HEAD has no body (axum drops it), only the headers of a GET.
            if (status.is_client_error() || status.is_server_error()) && call.method != "HEAD" {
                assert!(reply["error"].is_string(), "{status}: {reply}");
                assert!(reply["message"].is_string(), "{status}: {reply}");
            }
            (status, reply)
        })
    }
}

impl Default for Harness {
    fn default() -> Harness {
        Harness::new()
    }
}

impl<'a> Call<'a> {
    fn json(method: &'a str, uri: &str, body: &str, token: bool) -> Call<'a> {
        Call {
            method,
            uri: uri.to_string(),
            token,
            content_type: Some("application/json"),
            body: body.as_bytes().to_vec(),
        }
    }

    /// The request an input describes, if its path and query make a URI.
    fn from_input(data: &'a [u8]) -> Option<Call<'a>> {
        let (&ctl, rest) = data.split_first()?;
        let end = rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len());
        let target = std::str::from_utf8(&rest[..end]).ok()?;
        let uri = if target.starts_with('/') {
            target.to_string()
        } else {
            format!("/{target}")
        };
        uri.parse::<axum::http::Uri>().ok()?;
        Some(Call {
            method: METHODS[usize::from(ctl & 0b111)],
            uri,
            token: ctl & 0b1000 != 0,
            content_type: CONTENT_TYPES[usize::from((ctl >> 4) & 0b11)],
            body: rest.get(end + 1..).unwrap_or_default().to_vec(),
        })
    }
}

/// The app over a fresh store, as `tests/http_inprocess.rs` builds it; events to the router
/// are drained and dropped so the channel never fills.
fn build(dir: &tempfile::TempDir) -> axum::Router {
    let store: Arc<dyn Store> = Arc::new(Sqlite::open(dir.path()).expect("a store"));
    let snapshot = store.snapshot().expect("a snapshot");
    let directory = Arc::new(RwLock::new(Directory::from_snapshot(snapshot)));
    let (router_tx, mut events) = tokio::sync::mpsc::channel(1024);
    tokio::spawn(async move { while events.recv().await.is_some() {} });
    let (signals_tx, _) = tokio::sync::mpsc::unbounded_channel();
    let push = PushSettings {
        secret: b"s".to_vec(),
        allow_private: false,
        max_attempts: 1,
        base_delay: Duration::from_millis(10),
        timeout: Duration::from_secs(1),
    };
    let pusher = Arc::new(Pusher::new(push, store.clone()));
    let chat = Arc::new(ChatService::new(
        store.clone(),
        directory.clone(),
        router_tx.clone(),
        signals_tx,
        pusher,
    ));
    let media = MediaStore::new(&dir.path().join("media")).expect("a media store");
    let state = AppState::new(
        settings(),
        store,
        directory,
        chat,
        Arc::new(Signer::new(b"fuzz")),
        router_tx,
        Arc::new(Stats::default()),
        Arc::new(media),
    );
    app(Arc::new(state)).layer(MockConnectInfo(SocketAddr::from(([127, 0, 0, 1], 9))))
}

/// Small limits so uploads and thumbnails stay cheap; tokens that outlast a long run.
fn settings() -> HttpSettings {
    HttpSettings {
        allow_registration: true,
        access_token: Duration::from_secs(7 * 24 * 3600),
        refresh_token: Duration::from_secs(7 * 24 * 3600),
        login_attempts_per_minute: u32::MAX,
        max_concurrent_logins: 2,
        pbkdf2_iterations: 1000,
        max_upload: 4096,
        media_quota: 1 << 20,
        media_link_ttl: 60,
        thumbnail_px: 32,
        max_image_pixels: 1_000_000,
        max_body_bytes: 65_536,
        max_concurrent_decodes: 2,
    }
}
