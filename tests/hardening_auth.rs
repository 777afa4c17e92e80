//! Hardening of logins and tokens, on a real server: the login limiter shared by MQTT and HTTP
//! (per user and per address), token generations (revoked devices and changed passwords stay
//! shut out), registration (no hash for a taken name, limited per address), and client ids that
//! could forge log lines.
//!
//! All of 127.0.0.0/8 is loopback, so tests connect *from* 127.0.0.2, 127.0.0.3… to play
//! different client addresses.

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use common::http::Api;
use common::{TestServer, WAIT};
use reqwest::StatusCode;
use rumqttc::mqttbytes::v4;
use rumqttc::v5::mqttbytes::v5::{Connect, ConnectProperties, Login, Packet};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

const PASSWORD: &str = "correct horse";

/// CONNACK return codes on the wire.
const V5_SUCCESS: u8 = 0x00;
const V5_BAD_CREDENTIALS: u8 = 0x86;
const V5_RATE_EXCEEDED: u8 = 0x9F;
const V5_BAD_CLIENT_ID: u8 = 0x85;
const V4_UNAVAILABLE: u8 = 0x03;
const V4_BAD_CLIENT_ID: u8 = 0x02;

fn addr(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

async fn tcp_from(from: IpAddr, to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    socket.bind(SocketAddr::new(from, 0)).expect("bind");
    socket.connect(to).await.expect("connect")
}

/// A CONNECT (5.0, or 3.1.1 when `v5` is false) from `from`; the CONNACK's return code.
async fn connack(
    server: &TestServer,
    from: IpAddr,
    v5: bool,
    client_id: &str,
    login: Option<(&str, &str)>,
) -> u8 {
    connect(server, from, v5, client_id, login).await.0
}

/// [`connack`], also returning the connection.
async fn connect(
    server: &TestServer,
    from: IpAddr,
    v5: bool,
    client_id: &str,
    login: Option<(&str, &str)>,
) -> (u8, TcpStream) {
    let mut out = BytesMut::new();
    if v5 {
        let connect = Connect {
            keep_alive: 30,
            client_id: client_id.into(),
            clean_start: true,
            properties: Some(ConnectProperties::new()),
        };
        let login = login.map(|(u, p)| Login::new(u, p));
        Packet::Connect(connect, None, login)
            .write(&mut out, None)
            .expect("encode");
    } else {
        let mut connect = v4::Connect::new(client_id);
        connect.login = login.map(|(u, p)| v4::Login::new(u, p));
        v4::Packet::Connect(connect)
            .write(&mut out, usize::MAX)
            .expect("encode");
    }
    let mut stream = tcp_from(from, server.mqtt).await;
    stream.write_all(&out).await.expect("write");
    // Both versions: 0x20, remaining length, flags, return code.
    let mut head = [0u8; 4];
    tokio::time::timeout(WAIT, stream.read_exact(&mut head))
        .await
        .expect("a CONNACK in time")
        .expect("a CONNACK, not a closed connection");
    assert_eq!(head[0], 0x20, "{head:?}");
    (head[3], stream)
}

/// The HTTP API as seen from `from`.
fn api_from(server: &TestServer, from: IpAddr) -> Api {
    Api {
        base: format!("http://{}", server.http),
        client: reqwest::Client::builder()
            .local_address(from)
            .build()
            .expect("client"),
    }
}

async fn login(api: &Api, user: &str, password: &str, device: &str) -> (StatusCode, Value) {
    api.post(
        "/api/v1/login",
        None,
        json!({"user": user, "password": password, "device": device}),
    )
    .await
}

#[tokio::test]
async fn wrong_password_connects_are_limited_per_user_and_per_address() {
    let users = [("alice", PASSWORD), ("bob", PASSWORD), ("carol", PASSWORD)];
    let server = TestServer::start_with_users(&users, |c| c.http.login_attempts_per_minute = 3);
    let (attacker, elsewhere) = (addr(2), addr(3));
    for _ in 0..3 {
        let code = connack(&server, attacker, true, "", Some(("alice", "guess"))).await;
        assert_eq!(code, V5_BAD_CREDENTIALS);
    }
    let guess = Some(("alice", "guess"));
    assert_eq!(
        connack(&server, attacker, true, "", guess).await,
        V5_RATE_EXCEEDED,
        "the fourth wrong password in a minute is not even checked"
    );
    let bob = Some(("bob", PASSWORD));
    assert_eq!(
        connack(&server, attacker, true, "", bob).await,
        V5_RATE_EXCEEDED,
        "per address: the attacker's address is held for every user"
    );
    assert_eq!(
        connack(&server, attacker, false, "", bob).await,
        V4_UNAVAILABLE,
        "3.1.1 gets server unavailable"
    );
    let alice = Some(("alice", PASSWORD));
    assert_eq!(
        connack(&server, elsewhere, true, "", alice).await,
        V5_RATE_EXCEEDED,
        "per user: alice is held from an address she never used"
    );
    assert_eq!(
        connack(&server, elsewhere, true, "", Some(("carol", PASSWORD))).await,
        V5_SUCCESS,
        "another user from another address is not affected"
    );
    let (s, body) = login(&api_from(&server, elsewhere), "alice", PASSWORD, "web").await;
    assert_eq!(
        (s, body["error"].as_str()),
        (StatusCode::TOO_MANY_REQUESTS, Some("rate_limited")),
        "HTTP shares the counts of MQTT"
    );
}

#[tokio::test]
async fn an_attacker_cannot_lock_a_user_out_of_her_usual_address() {
    let server = TestServer::start_with_users(&[("alice", PASSWORD)], |c| {
        c.http.login_attempts_per_minute = 3
    });
    let (home, attacker) = (addr(4), addr(5));
    let alice = Some(("alice", PASSWORD));
    assert_eq!(connack(&server, home, true, "", alice).await, V5_SUCCESS);
    for _ in 0..3 {
        let (s, _) = login(&api_from(&server, attacker), "alice", "guess", "x").await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);
    }
    assert_eq!(
        connack(&server, attacker, true, "", alice).await,
        V5_RATE_EXCEEDED,
        "alice is held everywhere else, even with her password"
    );
    assert_eq!(
        connack(&server, home, true, "", alice).await,
        V5_SUCCESS,
        "alice still gets in from home"
    );
}

/// A token used as an MQTT password for `alice.{device}`: the CONNACK code.
async fn mqtt_with(server: &TestServer, device: &str, token: &str) -> u8 {
    let client_id = format!("alice.{device}");
    connack(server, addr(1), true, &client_id, Some(("alice", token))).await
}

/// What a login reply's tokens still open: (HTTP status with the access token, MQTT CONNACK
/// code with it, HTTP status of a refresh with the refresh token).
async fn still_open(server: &TestServer, api: &Api, reply: &Value) -> (StatusCode, u8, StatusCode) {
    let access = reply["access_token"].as_str().unwrap();
    let device = reply["device"].as_str().unwrap();
    let (http, _) = api.get("/api/v1/devices", access).await;
    let mqtt = mqtt_with(server, device, access).await;
    let body = json!({"refresh_token": reply["refresh_token"]});
    let (refresh, _) = api.post("/api/v1/refresh", None, body).await;
    (http, mqtt, refresh)
}

const DEAD: (StatusCode, u8, StatusCode) = (
    StatusCode::UNAUTHORIZED,
    V5_BAD_CREDENTIALS,
    StatusCode::UNAUTHORIZED,
);

#[tokio::test]
async fn a_revoked_device_logging_in_again_does_not_revive_its_old_tokens() {
    let server = TestServer::start();
    let api = Api::new(&server);
    let old_phone = api.account("alice", "phone").await;
    let tablet = api.login("alice", "tablet").await;
    api.revoke(&tablet, "phone").await;
    let new_phone = api.login("alice", "phone").await;
    assert_eq!(still_open(&server, &api, &old_phone).await, DEAD);
    let (http, mqtt, _) = still_open(&server, &api, &new_phone).await;
    assert_eq!(
        (http, mqtt),
        (StatusCode::OK, V5_SUCCESS),
        "the new login works"
    );
}

#[tokio::test]
async fn a_password_change_ends_every_token_and_connection_of_the_user() {
    let server = TestServer::start();
    let api = Api::new(&server);
    let phone = api.account("alice", "phone").await;
    let tablet = api.login("alice", "tablet").await;
    let token = tablet["access_token"].as_str().unwrap();
    let creds = Some(("alice", token));
    let (code, mut live) = connect(&server, addr(1), true, "alice.tablet", creds).await;
    assert_eq!(code, V5_SUCCESS);
    // A client that logged in with the password itself, as mosquitto_sub users do.
    let with_password = Some(("alice", PASSWORD));
    let (code, mut laptop) = connect(&server, addr(1), false, "alice.laptop", with_password).await;
    assert_eq!(code, 0, "3.1.1 CONNACK accepted");
    let (s, _) = api
        .post(
            "/api/v1/password",
            phone["access_token"].as_str(),
            json!({"old": PASSWORD, "new": "battery staple"}),
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let mut rest = Vec::new();
    tokio::time::timeout(WAIT, live.read_to_end(&mut rest))
        .await
        .expect("the tablet's live connection is closed")
        .expect("read");
    tokio::time::timeout(WAIT, laptop.read_to_end(&mut rest))
        .await
        .expect("the connection made with the old password is closed")
        .expect("read");
    assert_eq!(still_open(&server, &api, &phone).await, DEAD);
    assert_eq!(still_open(&server, &api, &tablet).await, DEAD);
    let (s, _) = login(&api, "alice", "battery staple", "phone").await;
    assert_eq!(s, StatusCode::OK, "the new password works");
}

#[tokio::test]
async fn registering_a_taken_name_hashes_nothing() {
    // New hashes would take minutes at this count; the accounts below were hashed cheaply.
    let server = TestServer::start_with_users(&[("alice", PASSWORD)], |c| {
        c.auth.pbkdf2_iterations = 200_000_000
    });
    let api = Api::new(&server);
    let started = Instant::now();
    let body = json!({"user": "alice", "password": "another password"});
    let answer = tokio::time::timeout(
        Duration::from_secs(5),
        api.post("/api/v1/register", None, body),
    )
    .await;
    let Ok((status, error)) = answer else {
        // Stopping the server would wait for the hash in flight: leave it, and fail now.
        std::mem::forget(server);
        panic!("a taken name was not refused within 5 s: its password was being hashed");
    };
    assert_eq!(
        (status, error["error"].as_str()),
        (StatusCode::CONFLICT, Some("conflict"))
    );
    println!("taken name refused in {:?}", started.elapsed());
}

async fn register(api: &Api, user: &str) -> StatusCode {
    let body = json!({"user": user, "password": PASSWORD});
    api.post("/api/v1/register", None, body).await.0
}

#[tokio::test]
async fn registrations_are_limited_per_address() {
    let server = TestServer::start_with(|c| c.http.login_attempts_per_minute = 3);
    let (one, other) = (api_from(&server, addr(6)), api_from(&server, addr(7)));
    assert_eq!(register(&one, "u1").await, StatusCode::CREATED);
    assert_eq!(register(&one, "u2").await, StatusCode::CREATED);
    assert_eq!(register(&one, "u1").await, StatusCode::CONFLICT);
    assert_eq!(register(&one, "u3").await, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(register(&other, "u3").await, StatusCode::CREATED);
}

#[tokio::test]
async fn client_ids_with_control_characters_are_refused() {
    let server = TestServer::start();
    let local = addr(1);
    for id in [
        "forged\nINFO admin logged in",
        "nul\u{0}id",
        "esc\u{1b}[2J",
        "tab\tid",
    ] {
        assert_eq!(
            connack(&server, local, true, id, None).await,
            V5_BAD_CLIENT_ID,
            "5.0 {id:?}"
        );
        assert_eq!(
            connack(&server, local, false, id, None).await,
            V4_BAD_CLIENT_ID,
            "3.1.1 {id:?}"
        );
    }
    assert_eq!(
        connack(&server, local, true, "plain-id", None).await,
        V5_SUCCESS
    );
}
