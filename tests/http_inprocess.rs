//! The HTTP API as a function: `natter::http::app(state)` driven with `oneshot`, no socket —
//! status codes and JSON errors for the edge cases, quickly.

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::body::Body;
use axum::extract::connect_info::MockConnectInfo;
use axum::http::{Request, StatusCode};
use natter::chat::Directory;
use natter::http::{app, AppState, HttpSettings};
use natter::media::MediaStore;
use natter::service::push::{PushSettings, Pusher};
use natter::service::requests::ChatService;
use natter::stats::Stats;
use natter::store::sqlite::Sqlite;
use natter::store::Store;
use natter::tokens::Signer;
use serde_json::{json, Value};
use tower::ServiceExt;

struct App {
    router: axum::Router,
    _dir: tempfile::TempDir,
    // The router and signals channels' far ends: events are accepted and dropped.
    _events: tokio::sync::mpsc::Receiver<natter::router::Event>,
}

fn build() -> App {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(Sqlite::open(dir.path()).unwrap());
    let directory = Arc::new(RwLock::new(Directory::from_snapshot(
        store.snapshot().unwrap(),
    )));
    let (router_tx, events) = tokio::sync::mpsc::channel(1024);
    let (signals_tx, _) = tokio::sync::mpsc::unbounded_channel();
    let pusher = Arc::new(Pusher::new(
        PushSettings {
            secret: b"s".to_vec(),
            allow_private: false,
            max_attempts: 1,
            base_delay: Duration::from_millis(10),
            timeout: Duration::from_secs(1),
        },
        store.clone(),
    ));
    let chat = Arc::new(ChatService::new(
        store.clone(),
        directory.clone(),
        router_tx.clone(),
        signals_tx,
        pusher,
    ));
    let state = AppState::new(
        HttpSettings {
            allow_registration: true,
            access_token: Duration::from_secs(60),
            refresh_token: Duration::from_secs(3600),
            login_attempts_per_minute: 100,
            max_concurrent_logins: 2,
            pbkdf2_iterations: 1000,
            max_upload: 1000,
            media_quota: 5000,
            media_link_ttl: 60,
            thumbnail_px: 32,
            max_image_pixels: 1_000_000,
            max_concurrent_decodes: 1,
            max_body_bytes: 65_536,
        },
        store,
        directory,
        chat,
        Arc::new(Signer::new(b"k")),
        router_tx,
        Arc::new(Stats::default()),
        Arc::new(MediaStore::new(&dir.path().join("media")).unwrap()),
    );
    let router = app(Arc::new(state)).layer(MockConnectInfo(SocketAddr::from(([127, 0, 0, 1], 9))));
    App {
        router,
        _dir: dir,
        _events: events,
    }
}

async fn call(
    app: &App,
    method: &str,
    uri: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let body = body.map(|b| ("application/json", b.to_string().into_bytes()));
    call_raw(app, method, uri, token, body).await
}

/// A body and its content type.
type RawBody = (&'static str, Vec<u8>);

/// A request with any body and content type; the reply's status and JSON (`Null` if not JSON).
async fn call_raw(
    app: &App,
    method: &str,
    uri: &str,
    token: Option<&str>,
    body: Option<RawBody>,
) -> (StatusCode, Value) {
    let mut req = Request::builder().method(method).uri(uri);
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let body = match body {
        Some((content_type, bytes)) => {
            req = req.header("content-type", content_type);
            Body::from(bytes)
        }
        None => Body::empty(),
    };
    let resp = app
        .router
        .clone()
        .oneshot(req.body(body).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

async fn token(app: &App, user: &str) -> String {
    let creds = json!({"user": user, "password": "correct horse"});
    assert_eq!(
        call(app, "POST", "/api/v1/register", None, Some(creds.clone()))
            .await
            .0,
        StatusCode::CREATED
    );
    let (s, login) = call(app, "POST", "/api/v1/login", None, Some(creds)).await;
    assert_eq!(s, StatusCode::OK);
    login["access_token"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn accounts_conversations_and_errors_without_a_socket() {
    let app = build();
    let alice = token(&app, "alice").await;
    token(&app, "bob").await;
    let (s, g) = call(
        &app,
        "POST",
        "/api/v1/groups",
        Some(&alice),
        Some(json!({"id": "t", "members": ["bob"]})),
    )
    .await;
    assert_eq!((s, g["conv"].as_str()), (StatusCode::CREATED, Some("g.t")));
    let (s, m) = call(
        &app,
        "GET",
        "/api/v1/conversations/g.t/members",
        Some(&alice),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(m["members"].as_array().unwrap().len(), 2);

    let cases: &[(&str, &str, Option<Value>, StatusCode)] = &[
        (
            "GET",
            "/api/v1/conversations/g.nope/members",
            None,
            StatusCode::FORBIDDEN,
        ),
        (
            "POST",
            "/api/v1/groups/g.t/members",
            Some(json!({"user": "nobody"})),
            StatusCode::NOT_FOUND,
        ),
        (
            "POST",
            "/api/v1/groups",
            Some(json!({"id": "t"})),
            StatusCode::CONFLICT,
        ),
        (
            "POST",
            "/api/v1/groups",
            Some(json!({"id": "../../etc"})),
            StatusCode::BAD_REQUEST,
        ),
        (
            "GET",
            "/api/v1/conversations/g.t/messages?after=x",
            None,
            StatusCode::BAD_REQUEST,
        ),
        (
            "GET",
            "/api/v1/media/..%2F..%2Fetc%2Fpasswd/link",
            None,
            StatusCode::NOT_FOUND,
        ),
        (
            "DELETE",
            "/api/v1/devices/nope",
            None,
            StatusCode::NOT_FOUND,
        ),
        ("GET", "/api/v1/admin/users", None, StatusCode::FORBIDDEN),
    ];
    for (method, uri, body, want) in cases {
        let (s, err) = call(&app, method, uri, Some(&alice), body.clone()).await;
        assert_eq!(s, *want, "{method} {uri}: {err}");
        assert!(
            err["error"].is_string() && err["message"].is_string(),
            "{method} {uri}: {err}"
        );
    }
    // Signed links are the only way in: a made-up signature is refused, whatever the path.
    let (s, _) = call(
        &app,
        "GET",
        "/media/..%2Fsecret?u=alice&exp=9999999999&sig=AAAA",
        None,
        None,
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, err) = call(
        &app,
        "GET",
        "/api/v1/devices",
        Some("eyJhbGciOiJub25lIn0.e30."),
        None,
    )
    .await;
    assert_eq!(
        (s, err["error"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("unauthorized"))
    );
}

#[tokio::test]
async fn quota_is_enforced_per_user() {
    let app = build();
    let alice = token(&app, "alice").await;
    for _ in 0..5 {
        let req = Request::put("/api/v1/media")
            .header("authorization", format!("Bearer {alice}"))
            .body(Body::from(vec![7u8; 1000]))
            .unwrap();
        assert_eq!(
            app.router.clone().oneshot(req).await.unwrap().status(),
            StatusCode::CREATED
        );
    }
    let req = Request::put("/api/v1/media")
        .header("authorization", format!("Bearer {alice}"))
        .body(Body::from(vec![7u8; 10]))
        .unwrap();
    assert_eq!(
        app.router.clone().oneshot(req).await.unwrap().status(),
        StatusCode::PAYLOAD_TOO_LARGE
    );
}

#[tokio::test]
async fn axum_rejections_and_unknown_routes_are_json_errors() {
    let app = build();
    let alice = token(&app, "alice").await;
    let form = |t: &'static str| Some((t, b"{}".to_vec()));
    let cases: &[(&str, &str, Option<RawBody>, StatusCode, &str)] = &[
        // Query: a missing field, a non-numeric one.
        (
            "GET",
            "/media/abc?u=alice&exp=1",
            None,
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            "GET",
            "/media/abc?u=alice&exp=soon&sig=x",
            None,
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            "GET",
            "/media/abc/thumbnail",
            None,
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            "GET",
            "/api/v1/conversations/g.t/messages?limit=-",
            None,
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        // Path: not UTF-8 once decoded.
        (
            "GET",
            "/api/v1/media/%FF/link",
            None,
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        // Multipart without a multipart content type.
        (
            "POST",
            "/api/v1/media",
            form("application/json"),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        ),
        (
            "POST",
            "/api/v1/media",
            None,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        ),
        // JSON: wrong content type, malformed body.
        (
            "POST",
            "/api/v1/groups",
            form("text/plain"),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        ),
        (
            "POST",
            "/api/v1/groups",
            Some(("application/json", b"{".to_vec())),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        // No such route; a route without that method.
        ("GET", "/nowhere", None, StatusCode::NOT_FOUND, "not_found"),
        (
            "GET",
            "/api/v1/nowhere/deeper",
            None,
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            "DELETE",
            "/api/v1/login",
            None,
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
        ),
        (
            "PUT",
            "/healthz",
            None,
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
        ),
    ];
    for (method, uri, body, want, code) in cases {
        let (s, err) = call_raw(&app, method, uri, Some(&alice), body.clone()).await;
        assert_eq!(s, *want, "{method} {uri}: {err}");
        assert_eq!(err["error"], *code, "{method} {uri}: {err}");
        assert!(err["message"].is_string(), "{method} {uri}: {err}");
    }
}
