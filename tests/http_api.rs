//! The HTTP sidecar on a real port: register → login → MQTT with the token → chat; refresh
//! rotation, revocation, rate limits, admin, health, metrics, OpenAPI, and clean JSON errors.

mod common;

use natter::store::sqlite::Sqlite;
use natter::store::Store;
use std::sync::Arc;
use std::time::Duration;

use common::clients::v5;
use common::http::Api;
use common::{eventually, TestServer};
use reqwest::StatusCode;
use rumqttc::v5::mqttbytes::QoS;
use serde_json::{json, Value};

fn mqtt_with_token(server: &TestServer, login: &Value) -> v5::MqttOptions {
    let mut o = v5::MqttOptions::new(
        login["client_id"].as_str().unwrap(),
        "127.0.0.1",
        server.port(),
    );
    o.set_keep_alive(Duration::from_secs(5));
    o.set_credentials(
        login["user"].as_str().unwrap(),
        login["access_token"].as_str().unwrap(),
    );
    o
}

#[tokio::test]
async fn register_login_and_chat_over_mqtt_with_the_token() {
    let server = TestServer::start();
    let api = Api::new(&server);
    let alice = api.account("alice", "phone").await;
    let bob = api.account("bob", "laptop").await;
    assert_eq!(alice["client_id"], "alice.phone");

    let (mut bob_mqtt, _) = v5::Client::connect(mqtt_with_token(&server, &bob)).await;
    bob_mqtt
        .client
        .subscribe("u/bob/#", QoS::AtLeastOnce)
        .await
        .unwrap();
    bob_mqtt.suback().await;
    let (alice_mqtt, _) = v5::Client::connect(mqtt_with_token(&server, &alice)).await;
    alice_mqtt
        .client
        .publish("c/d.alice.bob/m", QoS::AtLeastOnce, false, "hi via token")
        .await
        .unwrap();
    let got = bob_mqtt.publish().await;
    let envelope: Value = serde_json::from_slice(&got.payload).unwrap();
    assert_eq!(envelope["t"], "hi via token");

    // The same conversation over HTTP: the same rules and code as the MQTT requests.
    let token = bob["access_token"].as_str().unwrap();
    let (s, convs) = api.get("/api/v1/conversations", token).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(convs["conversations"][0]["conv"], "d.alice.bob");
    assert_eq!(convs["conversations"][0]["last"]["t"], "hi via token");
    assert_eq!(convs["conversations"][0]["unread"], 1);
    let (s, page) = api
        .get("/api/v1/conversations/d.alice.bob/messages?after=0", token)
        .await;
    assert_eq!(s, StatusCode::OK, "{page}");
    assert_eq!(page["messages"][0]["t"], "hi via token");
    let (s, created) = api
        .post(
            "/api/v1/groups",
            Some(token),
            json!({"id": "web", "members": ["alice"]}),
        )
        .await;
    assert_eq!(
        (s, created["conv"].as_str()),
        (StatusCode::CREATED, Some("g.web"))
    );

    // Outsiders get 403 with a JSON error, never the messages.
    let eve = api.account("eve", "x").await;
    let (s, err) = api
        .get(
            "/api/v1/conversations/d.alice.bob/messages",
            eve["access_token"].as_str().unwrap(),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    assert_eq!(err["error"], "not_member");
}

#[tokio::test]
async fn bad_tokens_are_refused_on_http_and_at_connect() {
    const SECRET: &str = "the server's own key";
    let server = TestServer::start_with(|c| c.http.token_secret = SECRET.into());
    let api = Api::new(&server);
    let alice = api.account("alice", "phone").await;
    let good = alice["access_token"].as_str().unwrap().to_string();
    let real_key = natter::tokens::Signer::new(SECRET.as_bytes());
    // The device's token generation, as the server put it in the token.
    let gen = real_key.verify(&good, 0).unwrap().gen;
    let claims = |exp| natter::tokens::Claims {
        sub: "alice".into(),
        dev: "phone".into(),
        gen: gen.clone(),
        iat: 0,
        exp,
    };
    let forged = natter::tokens::Signer::new(b"another key").issue(&claims(i64::MAX / 2));
    // Signed with the server's real key, so only the expiry can refuse it: the same key with
    // a future `exp` is accepted.
    let (s, _) = api
        .get("/api/v1/devices", &real_key.issue(&claims(i64::MAX / 2)))
        .await;
    assert_eq!(s, StatusCode::OK, "the test signs with the server's key");
    let expired = real_key.issue(&claims(1));
    let (_c, r) = v5::Client::try_connect({
        let mut o = mqtt_with_token(&server, &alice);
        o.set_credentials("alice", expired.as_str());
        o
    })
    .await;
    let e = r.unwrap_err().0;
    assert!(
        e.contains("BadUserNamePassword"),
        "5.0 expired: 0x86, got {e}"
    );
    let mut o4 = common::clients::v4::MqttOptions::new("alice.phone", "127.0.0.1", server.port());
    o4.set_credentials("alice", expired.as_str());
    let (_c, r) = common::clients::v4::Client::try_connect(o4).await;
    let e = r.unwrap_err().0;
    assert!(e.contains("NotAuthorized"), "3.1.1 expired: 0x05, got {e}");
    let mut tampered = good.clone();
    tampered.insert(good.len() - 3, 'x');
    for token in [&forged, &expired, &tampered, &"nonsense".to_string()] {
        let (s, err) = api.get("/api/v1/devices", token).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{token}");
        assert_eq!(err["error"], "unauthorized");
        let mut o = mqtt_with_token(&server, &alice);
        o.set_credentials("alice", token.as_str());
        let (_c, r) = v5::Client::try_connect(o).await;
        assert!(r.unwrap_err().0.contains("BadUserNamePassword"), "{token}");
    }
    // A token is only good for its own user.
    let mut o = mqtt_with_token(&server, &alice);
    o.set_credentials("bob", good.as_str());
    let (_c, r) = v5::Client::try_connect(o).await;
    assert!(r.is_err());
}

#[test]
fn refresh_tokens_expire_at_their_second_with_an_injected_clock() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(Sqlite::open(dir.path()).unwrap());
    let hash = natter::password::hash("pw", 1000).unwrap();
    store.add_user("alice", &hash).unwrap();
    store.upsert_device("alice", "phone").unwrap();
    for (what, now, valid) in [
        ("long before", 0, true),
        ("one second before", 99, true),
        ("at exactly its expiry", 100, false),
        ("after", 101, false),
    ] {
        let token = natter::tokens::new_refresh_token();
        let hash = natter::tokens::hash_refresh_token(&token);
        store
            .add_refresh_token(&hash, "alice", "phone", 100)
            .unwrap();
        let taken = store.take_refresh_token(&hash, now).unwrap();
        let want = valid.then(|| ("alice".to_string(), "phone".to_string()));
        assert_eq!(taken, want, "{what}");
        let again = store.take_refresh_token(&hash, 0).unwrap();
        assert_eq!(again, None, "{what}: gone once presented");
    }
}

#[tokio::test]
async fn refresh_tokens_rotate_and_revoked_devices_are_cut_off() {
    let server = TestServer::start();
    let api = Api::new(&server);
    let login = api.account("alice", "phone").await;
    let refresh = login["refresh_token"].as_str().unwrap();
    let (s, renewed) = api
        .post("/api/v1/refresh", None, json!({"refresh_token": refresh}))
        .await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = api
        .post("/api/v1/refresh", None, json!({"refresh_token": refresh}))
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "a refresh token works once");

    // A second device revokes the first: its MQTT connection goes, its token stops working.
    let other = api.login("alice", "tablet").await;
    let (mut phone, _) = v5::Client::connect(mqtt_with_token(&server, &renewed)).await;
    let (s, list) = api
        .get("/api/v1/devices", other["access_token"].as_str().unwrap())
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(list["devices"].as_array().unwrap().len(), 2);
    api.revoke(&other, "phone").await;
    let e = phone.ended().await;
    assert!(e.0.contains("AdministrativeAction"), "{e:?}");
    let (s, _) = api
        .get("/api/v1/devices", renewed["access_token"].as_str().unwrap())
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (_c, r) = v5::Client::try_connect(mqtt_with_token(&server, &renewed)).await;
    assert!(r.is_err());
}

#[tokio::test]
async fn a_token_login_uses_its_devices_client_id_so_revocation_reaches_it() {
    let server = TestServer::start();
    let api = Api::new(&server);
    let phone = api.account("alice", "phone").await;
    let token = phone["access_token"].as_str().unwrap();
    // Any other id would escape `DELETE /api/v1/devices/phone`: refused, 0x85 / 0x02.
    for id in [
        "alice",
        "alice.x",
        "alice.phone.x",
        "alicephone",
        "bob.phone",
    ] {
        let mut o = mqtt_with_token(&server, &phone);
        o.set_client_id(id.to_string());
        let (_c, r) = v5::Client::try_connect(o).await;
        let e = r.unwrap_err().0;
        assert!(e.contains("ClientIdentifierNotValid"), "{id}: {e}");
        let mut o4 = common::clients::v4::MqttOptions::new(id, "127.0.0.1", server.port());
        o4.set_credentials("alice", token);
        let (_c, r) = common::clients::v4::Client::try_connect(o4).await;
        let e = r.unwrap_err().0;
        assert!(e.contains("BadClientId"), "3.1.1 {id}: {e}");
    }
    // An empty client id is given the device's own.
    let mut o = mqtt_with_token(&server, &phone);
    o.set_client_id(String::new());
    let (mut assigned, ack) = v5::Client::connect(o).await;
    match ack {
        v5::Incoming::ConnAck(a) => assert_eq!(
            a.properties.unwrap().assigned_client_identifier.as_deref(),
            Some("alice.phone")
        ),
        other => panic!("{other:?}"),
    }
    // Revoking the phone from another device closes that connection.
    let tablet = api.login("alice", "tablet").await;
    api.revoke(&tablet, "phone").await;
    let e = assigned.ended().await;
    assert!(e.0.contains("AdministrativeAction"), "{e:?}");
}

#[tokio::test]
async fn logins_are_rate_limited_and_errors_are_clean_json() {
    let server = TestServer::start_with(|c| c.http.login_attempts_per_minute = 3);
    let api = Api::new(&server);
    api.account("alice", "phone").await;
    let mut statuses = Vec::new();
    for _ in 0..4 {
        let (s, body) = api
            .post(
                "/api/v1/login",
                None,
                json!({"user": "alice", "password": "wrong"}),
            )
            .await;
        assert!(
            body["error"].is_string() && body["message"].is_string(),
            "{body}"
        );
        statuses.push(s);
    }
    assert_eq!(statuses.last(), Some(&StatusCode::TOO_MANY_REQUESTS));
    assert!(
        statuses[..2].iter().all(|s| *s == StatusCode::UNAUTHORIZED),
        "{statuses:?}"
    );

    for body in [
        json!({"user": "x'; DROP TABLE users; --", "password": "correct horse"}),
        json!({"user": "ok", "password": "short"}),
        json!({"user": "ok", "password": "correct horse", "admin": true}),
        json!("not an object"),
    ] {
        let (s, err) = api.post("/api/v1/register", None, body.clone()).await;
        assert!(s.is_client_error(), "{body}: {s}");
        assert!(err["error"].is_string(), "{body}: {err}");
    }
    let (s, err) = api
        .post(
            "/api/v1/register",
            None,
            json!({"user": "alice", "password": "correct horse"}),
        )
        .await;
    assert_eq!(
        (s, err["error"].as_str()),
        (StatusCode::CONFLICT, Some("conflict"))
    );
    let (s, _) = api.get("/api/v1/nowhere", "x").await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn admin_health_metrics_and_openapi() {
    let server = TestServer::start_with(|c| c.http.allow_registration = false);
    let api = Api::new(&server);
    let (s, err) = api
        .post(
            "/api/v1/register",
            None,
            json!({"user": "x", "password": "correct horse"}),
        )
        .await;
    assert_eq!(
        (s, err["error"].as_str()),
        (StatusCode::FORBIDDEN, Some("registration_closed"))
    );

    server.add_user("root", "correct horse");
    server.add_user("joe", "correct horse");
    server.with_store(|s| s.set_admin("root", true).unwrap());
    let login = |user: &'static str| {
        let api = &api;
        async move {
            let (s, l) = api
                .post(
                    "/api/v1/login",
                    None,
                    json!({"user": user, "password": "correct horse"}),
                )
                .await;
            assert_eq!(s, StatusCode::OK);
            l["access_token"].as_str().unwrap().to_string()
        }
    };
    let root = login("root").await;
    let joe = login("joe").await;
    let (s, _) = api.get("/api/v1/admin/users", &joe).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    // The admin flag reaches the running server within a second.
    let users = eventually(Duration::from_secs(5), "admin recognised", async || {
        let (s, users) = api.get("/api/v1/admin/users", &root).await;
        (s == StatusCode::OK).then_some(users)
    })
    .await;
    assert_eq!(users["users"].as_array().unwrap().len(), 2);
    let (s, clients) = api.get("/api/v1/admin/clients", &root).await;
    assert_eq!(s, StatusCode::OK);
    assert!(clients["clients"].is_array());
    let (s, convs) = api.get("/api/v1/admin/conversations", &root).await;
    assert_eq!(
        (s, convs["conversations"].is_array()),
        (StatusCode::OK, true)
    );

    let health = reqwest::get(format!("http://{}/healthz", server.http))
        .await
        .unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    let metrics = reqwest::get(format!("http://{}/metrics", server.http))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("# TYPE natter_clients_connected gauge"),
        "{metrics}"
    );
    let spec = reqwest::get(format!("http://{}/api/v1/openapi.json", server.http))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let spec: Value = serde_json::from_str(&spec).unwrap();
    assert_eq!(spec["openapi"], "3.0.3");
    assert!(spec["paths"]["/api/v1/login"].is_object());
}
