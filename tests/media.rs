//! Media end to end: upload → a message carrying it → the recipient's signed link, range
//! requests and thumbnail; and everyone else, tampered or expired links, oversized uploads,
//! HTML and decompression bombs refused cleanly.

mod common;

use std::io::Cursor;
use std::time::Duration;

use common::chat::*;
use common::TestServer;
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

struct Http {
    base: String,
    client: reqwest::Client,
}

impl Http {
    fn new(server: &TestServer) -> Http {
        Http {
            base: format!("http://{}", server.http),
            client: reqwest::Client::new(),
        }
    }

    async fn token(&self, user: &str) -> String {
        let body = json!({"user": user, "password": password(user)}).to_string();
        let resp = self
            .client
            .post(format!("{}/api/v1/login", self.base))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let v: Value = serde_json::from_str(&resp.text().await.unwrap()).unwrap();
        v["access_token"].as_str().unwrap().to_string()
    }

    async fn upload(&self, token: &str, bytes: Vec<u8>) -> (StatusCode, Value) {
        let resp = self
            .client
            .put(format!("{}/api/v1/media", self.base))
            .bearer_auth(token)
            .header("content-type", "image/png")
            .body(bytes)
            .send()
            .await
            .unwrap();
        let status = resp.status();
        (
            status,
            serde_json::from_str(&resp.text().await.unwrap()).unwrap_or(Value::Null),
        )
    }

    async fn link(&self, token: &str, id: &str) -> (StatusCode, Value) {
        let resp = self
            .client
            .get(format!("{}/api/v1/media/{id}/link", self.base))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        let status = resp.status();
        (
            status,
            serde_json::from_str(&resp.text().await.unwrap()).unwrap_or(Value::Null),
        )
    }

    async fn fetch(&self, path: &str, range: Option<&str>) -> reqwest::Response {
        let mut req = self.client.get(format!("{}{path}", self.base));
        if let Some(r) = range {
            req = req.header("range", r);
        }
        req.send().await.unwrap()
    }
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
    let http = Http::new(&server);
    let (alice_t, bob_t, eve_t) = (
        http.token("alice").await,
        http.token("bob").await,
        http.token("eve").await,
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

    let thumb = http
        .fetch(link["thumbnail_url"].as_str().unwrap(), None)
        .await;
    assert_eq!(thumb.status(), StatusCode::OK);
    let thumb = image::load_from_memory(&thumb.bytes().await.unwrap()).unwrap();
    assert_eq!((thumb.width(), thumb.height()), (320, 240));

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
        c.media.link_ttl_secs = 1;
    });
    let http = Http::new(&server);
    let alice_t = http.token("alice").await;

    // HTML is stored, but never served as HTML.
    let (s, up) = http
        .upload(&alice_t, b"<html><script>alert(1)</script></html>".to_vec())
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let (_, link) = http.link(&alice_t, up["id"].as_str().unwrap()).await;
    let resp = http.fetch(link["url"].as_str().unwrap(), None).await;
    assert_eq!(resp.headers()["content-type"], "application/octet-stream");
    assert_eq!(resp.headers()["content-disposition"], "attachment");
    assert!(link["thumbnail_url"].is_null());

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

    // Links expire.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let resp = http.fetch(link["url"].as_str().unwrap(), None).await;
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);

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
}
