//! natter's chat scheme (`--topic-scheme chat`): the accounts and groups a scenario needs, made
//! through natter's own interfaces — `POST /api/v1/register`, `POST /api/v1/login` and the
//! `group.create` request — before anything is measured. Clients then connect as apps do, with
//! the access token as their MQTT password.

use std::collections::HashMap;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{bail, Context};
use bytes::BytesMut;
use rumqttc::mqttbytes::v4::{Packet, Publish};
use rumqttc::mqttbytes::QoS;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Mutex;
use tokio::task::JoinSet;

use crate::wire::{self, ConnectOptions, Incoming, SETUP_TIMEOUT};

/// Every benchmark account's password.
pub const PASSWORD: &str = "loadgen-password";

/// The device every benchmark client is (its client id is `{user}.lg`).
pub const DEVICE: &str = "lg";

/// HTTP connections registering accounts at the same time.
const REGISTER_CONCURRENCY: usize = 8;

/// Creates the accounts `users` (an account that exists already is fine) and logs each in as
/// device [`DEVICE`]: user → access token.
pub async fn register(
    http: SocketAddr,
    users: Vec<String>,
) -> anyhow::Result<HashMap<String, String>> {
    let queue = Arc::new(Mutex::new(users));
    let mut tasks = JoinSet::new();
    for _ in 0..REGISTER_CONCURRENCY {
        let queue = queue.clone();
        tasks.spawn(async move {
            let mut stream = TcpStream::connect(http)
                .await
                .with_context(|| format!("cannot connect to natter's HTTP API at {http}"))?;
            let mut buf = Vec::new();
            let mut tokens = Vec::new();
            loop {
                let Some(user) = queue.lock().await.pop() else {
                    return Ok::<_, anyhow::Error>(tokens);
                };
                let body = format!(r#"{{"user":"{user}","password":"{PASSWORD}"}}"#);
                let (status, reply) = post(&mut stream, &mut buf, "/api/v1/register", &body)
                    .await
                    .with_context(|| format!("registering {user}"))?;
                if status != 201 && status != 409 {
                    bail!("registering {user}: HTTP {status}: {reply}");
                }
                let body =
                    format!(r#"{{"user":"{user}","password":"{PASSWORD}","device":"{DEVICE}"}}"#);
                let (status, reply) = post(&mut stream, &mut buf, "/api/v1/login", &body)
                    .await
                    .with_context(|| format!("logging {user} in"))?;
                let token = (status == 200)
                    .then(|| json_str(&reply, "access_token"))
                    .flatten()
                    .with_context(|| format!("logging {user} in: HTTP {status}: {reply}"))?;
                tokens.push((user, token));
            }
        });
    }
    let mut tokens = HashMap::new();
    while let Some(r) = tasks.join_next().await {
        tokens.extend(r??);
    }
    Ok(tokens)
}

/// The string value of `key` in a flat JSON object (tokens hold no escapes).
fn json_str(json: &str, key: &str) -> Option<String> {
    let start = json.find(&format!(r#""{key}":""#))? + key.len() + 4;
    let len = json[start..].find('"')?;
    Some(json[start..start + len].to_string())
}

/// One HTTP/1.1 POST of a JSON body on a kept-alive connection: (status, body).
async fn post(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    path: &str,
    body: &str,
) -> anyhow::Result<(u16, String)> {
    exchange(stream, buf, "POST", path, body).await
}

/// GET `path` from natter's HTTP API on a connection of its own: (status, body).
pub async fn get(http: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    let mut stream = TcpStream::connect(http)
        .await
        .with_context(|| format!("cannot connect to natter's HTTP API at {http}"))?;
    exchange(&mut stream, &mut Vec::new(), "GET", path, "").await
}

/// One HTTP/1.1 request and its response, which must carry a content-length.
async fn exchange(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    method: &str,
    path: &str,
    body: &str,
) -> anyhow::Result<(u16, String)> {
    let request = format!(
        "{method} {path} HTTP/1.1\r\nhost: natter\r\ncontent-type: application/json\r\n\
         content-length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await?;
    buf.clear();
    let head_end = loop {
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        if stream.read_buf(buf).await? == 0 {
            bail!("the HTTP connection closed before the response headers");
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("malformed HTTP status line")?;
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .context("HTTP response without content-length")?;
    while buf.len() < head_end + length {
        if stream.read_buf(buf).await? == 0 {
            bail!("the HTTP connection closed inside a response body");
        }
    }
    let reply = String::from_utf8_lossy(&buf[head_end..head_end + length]).into_owned();
    Ok((status, reply))
}

/// `owner` creates the group `g.{id}` with `members`, and waits for the server's reply.
pub async fn create_group(
    mqtt: SocketAddr,
    owner: &str,
    id: &str,
    members: &[String],
) -> anyhow::Result<()> {
    let client_id = format!("{owner}.setup");
    let mut conn = wire::mqtt_connect(
        mqtt,
        &ConnectOptions {
            client_id: &client_id,
            clean_session: true,
            keep_alive: 120,
            login: Some((owner, PASSWORD)),
        },
    )
    .await?;
    conn.subscribe(&[format!("u/{owner}/reply/#")]).await?;
    let members: Vec<String> = members.iter().map(|m| format!(r#""{m}""#)).collect();
    let request = format!(r#"{{"id":"{id}","members":[{}]}}"#, members.join(","));
    let mut publish = Publish::new(format!("q/{owner}/group.create"), QoS::AtLeastOnce, request);
    publish.pkid = 1;
    let mut buf = BytesMut::new();
    Packet::Publish(publish)
        .write(&mut buf, 1 << 20)
        .map_err(|e| anyhow::anyhow!("encode PUBLISH: {e:?}"))?;
    conn.stream.write_all(&buf).await?;
    let reply = async {
        loop {
            if let Incoming::Publish { payload, .. } = conn.next().await? {
                return Ok::<_, anyhow::Error>(String::from_utf8_lossy(&payload).into_owned());
            }
        }
    };
    let reply = tokio::time::timeout(SETUP_TIMEOUT, reply)
        .await
        .context("no reply to group.create")??;
    if !reply.contains(r#""ok":true"#) {
        bail!("group.create g.{id} refused: {reply}");
    }
    conn.disconnect().await;
    Ok(())
}
