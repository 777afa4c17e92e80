//! Media end to end: upload → a message carrying it → the recipient's signed link, range
//! requests and thumbnail; and everyone else, tampered or expired links, oversized uploads,
//! HTML and decompression bombs refused cleanly. One test runs the whole chain from
//! registration over HTTP and an MQTT login with the access token to the recipient's download.

mod common;

use std::io::Cursor;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::chat::*;
use common::http::Api;
use common::{eventually, TestServer, WAIT};
use reqwest::StatusCode;
use rumqttc::v5::mqttbytes::v5::PubAckReason;
use rumqttc::v5::mqttbytes::QoS;
use serde_json::{json, Value};

fn png(w: u32, h: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([(x % 256) as u8, (y % 256) as u8, 7])
    });
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

/// The link's thumbnail is an image of `size`.
async fn assert_thumbnail(http: &Api, link: &Value, size: (u32, u32)) {
    let thumb = http
        .fetch(link["thumbnail_url"].as_str().unwrap(), None)
        .await;
    assert_eq!(thumb.status(), StatusCode::OK);
    let thumb = image::load_from_memory(&thumb.bytes().await.unwrap()).unwrap();
    assert_eq!((thumb.width(), thumb.height()), size);
}

async fn send(c: &mut common::clients::v5::Client, body: Value) -> PubAckReason {
    c.client
        .publish("c/d.alice.bob/m", QoS::AtLeastOnce, false, body.to_string())
        .await
        .unwrap();
    loop {
        if let common::clients::v5::Incoming::PubAck(a) = c.next().await.unwrap() {
            return a.reason;
        }
    }
}

#[tokio::test]
async fn shared_media_reaches_members_through_signed_links_only() {
    let server = TestServer::start_with_users(USERS, |_| {});
    let http = Api::new(&server);
    let (alice_t, bob_t, eve_t) = (
        http.token("alice", password("alice")).await,
        http.token("bob", password("bob")).await,
        http.token("eve", password("eve")).await,
    );
    let image = png(800, 600);
    let (s, up) = http.upload(&alice_t, image.clone()).await;
    assert_eq!(s, StatusCode::CREATED, "{up}");
    assert_eq!(up["type"], "image/png");
    let id = up["id"].as_str().unwrap().to_string();

    // Not shared yet: Bob cannot get a link.
    assert_eq!(http.link(&bob_t, &id).await.0, StatusCode::NOT_FOUND);
    let mut alice = login(&server, "alice").await;
    assert_eq!(
        send(&mut alice, json!({"t": "look", "media": [id]})).await,
        PubAckReason::Success
    );
    assert_eq!(
        send(
            &mut alice,
            json!({"t": "forged", "media": ["0123456789abcdef"]})
        )
        .await,
        PubAckReason::ImplementationSpecificError
    );

    let (s, link) = http.link(&bob_t, &id).await;
    assert_eq!(s, StatusCode::OK, "{link}");
    let url = link["url"].as_str().unwrap().to_string();
    let full = http.fetch(&url, None).await;
    assert_eq!(full.status(), StatusCode::OK);
    assert_eq!(full.headers()["content-type"], "image/png");
    assert_eq!(full.headers()["x-content-type-options"], "nosniff");
    assert_eq!(full.bytes().await.unwrap().to_vec(), image);

    let part = http.fetch(&url, Some("bytes=0-9")).await;
    assert_eq!(part.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        part.headers()["content-range"],
        format!("bytes 0-9/{}", image.len())
    );
    assert_eq!(part.bytes().await.unwrap().to_vec(), image[..10]);
    let beyond = http.fetch(&url, Some("bytes=99999999-")).await;
    assert_eq!(beyond.status(), StatusCode::RANGE_NOT_SATISFIABLE);

    assert_thumbnail(&http, &link, (320, 240)).await;

    // Eve is in no conversation with it; a link doctored for her fails its signature.
    assert_eq!(http.link(&eve_t, &id).await.0, StatusCode::NOT_FOUND);
    let doctored = url.replace("u=bob", "u=eve");
    assert_eq!(
        http.fetch(&doctored, None).await.status(),
        StatusCode::FORBIDDEN
    );
    let tampered = format!("{}x", url);
    assert_eq!(
        http.fetch(&tampered, None).await.status(),
        StatusCode::FORBIDDEN
    );
    // The history shows the media id on the message.
    let reply = request(&mut alice, "alice", "sync", json!({"conv": "d.alice.bob"})).await;
    assert_eq!(reply["messages"][0]["media"], json!([id]));
}

#[tokio::test]
async fn dangerous_large_and_expired_are_refused_cleanly() {
    let server = TestServer::start_with_users(USERS, |c| {
        c.media.max_upload_bytes = 100_000;
        c.media.max_image_pixels = 10_000;
        // The server signs `exp = now + ttl` in whole seconds, so a link is good for at least
        // ttl - 1 seconds: 3 leaves the fetches right after making it two.
        c.media.link_ttl_secs = 3;
    });
    let http = Api::new(&server);
    let alice_t = http.token("alice", password("alice")).await;

    // HTML is stored, but never served as HTML.
    let (s, up) = http
        .upload(&alice_t, b"<html><script>alert(1)</script></html>".to_vec())
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let (_, first_link) = http.link(&alice_t, up["id"].as_str().unwrap()).await;
    let resp = http.fetch(first_link["url"].as_str().unwrap(), None).await;
    assert_eq!(resp.headers()["content-type"], "application/octet-stream");
    assert_eq!(resp.headers()["content-disposition"], "attachment");
    assert!(first_link["thumbnail_url"].is_null());

    // Too large: 413, and no partial file left behind.
    let (s, err) = http.upload(&alice_t, vec![0u8; 200_000]).await;
    assert_eq!(
        (s, err["error"].as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, Some("too_large"))
    );
    let tmp = server.path("data/media/tmp");
    assert_eq!(std::fs::read_dir(tmp).unwrap().count(), 0);

    // An image with more pixels than allowed: no thumbnail, a clean 422.
    let (s, up) = http.upload(&alice_t, png(200, 200)).await;
    assert_eq!(s, StatusCode::CREATED);
    let (_, link) = http.link(&alice_t, up["id"].as_str().unwrap()).await;
    let resp = http
        .fetch(link["thumbnail_url"].as_str().unwrap(), None)
        .await;
    assert_eq!(resp.status(), StatusCode::UNPROCESSABLE_ENTITY);

    // multipart/form-data works too (the part named `file`).
    let mut body = b"--XyZ\r\nContent-Disposition: form-data; name=\"note\"\r\n\r\nhi\r\n--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.png\"\r\nContent-Type: text/html\r\n\r\n".to_vec();
    body.extend(png(10, 10));
    body.extend_from_slice(b"\r\n--XyZ--\r\n");
    let resp = http
        .client
        .post(format!("{}/api/v1/media", http.base))
        .bearer_auth(&alice_t)
        .header("content-type", "multipart/form-data; boundary=XyZ")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    let up: Value = serde_json::from_str(&resp.text().await.unwrap()).unwrap();
    assert_eq!(
        up["type"], "image/png",
        "sniffed, not the declared text/html"
    );

    // No token, no upload.
    let resp = http
        .client
        .put(format!("{}/api/v1/media", http.base))
        .body(vec![1u8; 10])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);

    // Links expire: refused once the clock has reached the `expires` they carry. The rule
    // itself is unit-tested with an injected clock (`http::media`); this end-to-end check
    // uses the oldest link, so it waits only for what is left of its few seconds.
    let expires = first_link["expires"].as_u64().expect("expires");
    let expired = UNIX_EPOCH + Duration::from_secs(expires) + Duration::from_millis(100);
    if let Ok(left) = expired.duration_since(SystemTime::now()) {
        tokio::time::sleep(left).await;
    }
    let resp = http.fetch(first_link["url"].as_str().unwrap(), None).await;
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
}

/// The whole chain the HTTP sidecar exists for, on real ports: accounts over HTTP, MQTT with the
/// access token, a message carrying an uploaded image, and the recipient's signed links.
#[tokio::test]
async fn register_login_mqtt_with_token_image_message_and_signed_links() {
    const SECRET: &str = "e2e link and token key";
    let server = TestServer::start_with(|c| c.http.token_secret = SECRET.into());
    let http = Api::new(&server);
    let alice = http.account("alice", "phone").await;
    let bob = http.account("bob", "laptop").await;
    let eve = http.account("eve", "tablet").await;
    let token = |login: &Value| login["access_token"].as_str().unwrap().to_string();
    let mqtt = |login: &Value| {
        let user = login["user"].as_str().unwrap();
        let mut o = opts(&server, user, login["client_id"].as_str().unwrap());
        o.set_credentials(user, token(login));
        o
    };

    let (mut bob_mqtt, _) = common::clients::v5::Client::connect(mqtt(&bob)).await;
    assert_eq!(
        subscribe(&mut bob_mqtt, "u/bob/#").await,
        rumqttc::v5::mqttbytes::v5::SubscribeReasonCode::Success(QoS::AtLeastOnce)
    );
    let (mut alice_mqtt, _) = common::clients::v5::Client::connect(mqtt(&alice)).await;
    let image = png(800, 600);
    let (s, up) = http.upload(&token(&alice), image.clone()).await;
    assert_eq!(s, StatusCode::CREATED, "{up}");
    let id = up["id"].as_str().unwrap().to_string();
    assert_eq!(
        send(&mut alice_mqtt, json!({"t": "holiday", "media": [id]})).await,
        PubAckReason::Success
    );

    // Bob learns the media id from the message itself.
    let got = publish_on(&mut bob_mqtt, "u/bob/c/d.alice.bob/m").await;
    let envelope: Value = serde_json::from_slice(&got.payload).unwrap();
    assert_eq!(envelope["t"], "holiday");
    assert_eq!(envelope["media"], json!([id]));
    let bob_t = token(&bob);
    let (s, link) = http
        .link(&bob_t, envelope["media"][0].as_str().unwrap())
        .await;
    assert_eq!(s, StatusCode::OK, "{link}");
    let url = link["url"].as_str().unwrap().to_string();
    let full = http.fetch(&url, None).await;
    assert_eq!(full.status(), StatusCode::OK);
    assert_eq!(full.bytes().await.unwrap().to_vec(), image);
    let part = http.fetch(&url, Some("bytes=100-199")).await;
    assert_eq!(part.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(part.bytes().await.unwrap().to_vec(), image[100..200]);
    assert_thumbnail(&http, &link, (320, 240)).await;

    // Eve, in no conversation with it, is told nothing exists; Bob's link rewritten for her
    // fails its signature.
    assert_eq!(http.link(&token(&eve), &id).await.0, StatusCode::NOT_FOUND);
    let for_eve = url.replace("u=bob", "u=eve");
    assert_ne!(for_eve, url);
    assert_eq!(
        http.fetch(&for_eve, None).await.status(),
        StatusCode::FORBIDDEN
    );
    let mut tampered = url.clone();
    let last = tampered.pop().unwrap();
    tampered.push(if last == 'A' { 'B' } else { 'A' });
    assert_eq!(
        http.fetch(&tampered, None).await.status(),
        StatusCode::FORBIDDEN
    );
    // Links are signed with the server's key, so one signed with it for the past is refused by
    // its expiry alone; the same signature scheme for the future is accepted.
    let signer = natter::tokens::Signer::new(SECRET.as_bytes());
    let signed = |exp: i64| {
        let sig = signer.mac(&format!("media|{id}|bob|{exp}"));
        format!("/media/{id}?u=bob&exp={exp}&sig={sig}")
    };
    let future = i64::MAX / 2;
    assert_eq!(
        http.fetch(&signed(future), None).await.status(),
        StatusCode::OK
    );
    assert_eq!(
        http.fetch(&signed(1), None).await.status(),
        StatusCode::FORBIDDEN
    );

    // A decompression bomb is stored as the PNG it claims to be, but never decoded: a quick
    // 4xx for its thumbnail, and the server goes on serving.
    let bomb = common::http::png_header_only(100_000, 100_000);
    assert!(image::ImageReader::new(Cursor::new(&bomb))
        .with_guessed_format()
        .unwrap()
        .into_dimensions()
        .is_ok_and(|d| d == (100_000, 100_000)));
    let (s, up) = http.upload(&token(&alice), bomb).await;
    assert_eq!(
        (s, up["type"].as_str()),
        (StatusCode::CREATED, Some("image/png"))
    );
    let (_, bomb_link) = http.link(&token(&alice), up["id"].as_str().unwrap()).await;
    let started = std::time::Instant::now();
    let resp = http
        .fetch(bomb_link["thumbnail_url"].as_str().unwrap(), None)
        .await;
    assert!(resp.status().is_client_error(), "{}", resp.status());
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let err: Value = serde_json::from_str(&resp.text().await.unwrap()).unwrap();
    assert_eq!(err["error"], "image_too_large");
    assert_eq!(http.fetch(&url, None).await.status(), StatusCode::OK);
    assert_eq!(http.fetch("/healthz", None).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_truncated_upload_leaves_nothing_on_disk() {
    use tokio::io::AsyncWriteExt;
    let server = TestServer::start_with_users(USERS, |_| {});
    let http = Api::new(&server);
    let alice_t = http.token("alice", password("alice")).await;
    let tmp = server.path("data/media/tmp");
    let files = || std::fs::read_dir(&tmp).map(|d| d.count()).unwrap_or(0);

    let mut socket = tokio::net::TcpStream::connect(server.http).await.unwrap();
    let head = format!(
        "PUT /api/v1/media HTTP/1.1\r\nhost: natter\r\nauthorization: Bearer {alice_t}\r\n\
         content-length: 100000\r\n\r\n"
    );
    socket.write_all(head.as_bytes()).await.unwrap();
    socket.write_all(&[9u8; 1000]).await.unwrap();
    // The upload is under way (its temporary file exists) before the client vanishes.
    let appeared = async || (files() == 1).then_some(());
    eventually(WAIT, "the upload's temporary file appears", appeared).await;
    drop(socket);
    let removed = async || (files() == 0).then_some(());
    eventually(WAIT, "the temporary file is removed", removed).await;

    // Still serving, uploads included.
    let (s, up) = http.upload(&alice_t, png(10, 10)).await;
    assert_eq!(s, StatusCode::CREATED, "{up}");
    assert_eq!(files(), 0);
    let blobs = walk(&server.path("data/media/blobs"));
    assert_eq!(
        blobs.len(),
        1,
        "only the finished upload is stored: {blobs:?}"
    );
}

/// Every file under `dir`.
fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}
