//! The HTTP sidecar under abuse: JSON bodies over `http.max_body_bytes` (declared or chunked)
//! refused with 413 before they are read, parallel uploads held to the media quota, thumbnail
//! decodes bounded in number and refused from the image header before decoding.

mod common;

use std::io::Cursor;
use std::time::Instant;

use common::chat::*;
use common::http::{status_and_json, Api};
use common::{TestServer, WAIT};
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Ten megabytes of valid JSON for `/api/v1/register`.
fn huge_registration() -> Vec<u8> {
    let mut body = br#"{"user": "mallory", "password": ""#.to_vec();
    body.resize(10 * 1024 * 1024, b'a');
    body.extend_from_slice(br#""}"#);
    body
}

#[tokio::test]
async fn a_json_body_declared_over_the_limit_is_refused_at_once() {
    let server = TestServer::start();
    let http = Api::new(&server);
    let started = Instant::now();
    let resp = http
        .client
        .post(format!("{}/api/v1/register", http.base))
        .header("content-type", "application/json")
        .body(huge_registration())
        .send()
        .await
        .expect("the 413 arrives, not a reset");
    let (status, body) = status_and_json(resp).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, Some("too_large")),
        "{body}"
    );
    assert!(started.elapsed() < WAIT, "took {:?}", started.elapsed());
    // Under the limit, the same route works.
    let (status, body) = http
        .post(
            "/api/v1/register",
            None,
            json!({"user": "mallory", "password": "a".repeat(60_000)}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
}

/// Sends `POST path` with a chunked body of `total` bytes of JSON (no `Content-Length`) on a
/// raw socket; returns the status line and the body of the answer.
async fn post_chunked(server: &TestServer, path: &str, total: usize) -> (String, Value) {
    let sock = tokio::net::TcpStream::connect(server.http).await.unwrap();
    let (mut rd, mut wr) = sock.into_split();
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: natter\r\ncontent-type: application/json\r\n\
         transfer-encoding: chunked\r\n\r\n"
    );
    let writer = tokio::spawn(async move {
        wr.write_all(head.as_bytes()).await?;
        wr.write_all(b"5\r\n{\"a\":\r\n").await?;
        let chunk = [b' '; 65_536];
        for _ in 0..total / chunk.len() {
            wr.write_all(b"10000\r\n").await?;
            wr.write_all(&chunk).await?;
            wr.write_all(b"\r\n").await?;
        }
        wr.write_all(b"1\r\n1\r\n1\r\n}\r\n0\r\n\r\n").await?;
        // Kept open until the answer is read: hyper drops a connection half-closed early.
        std::future::pending::<()>().await;
        Ok::<_, std::io::Error>(wr)
    });
    let answer = tokio::time::timeout(WAIT, read_answer(&mut rd))
        .await
        .expect("an answer while the body is still being sent");
    writer.abort();
    answer
}

/// Reads one HTTP/1.1 answer with a `content-length`: its status line and JSON body.
async fn read_answer(rd: &mut (impl AsyncReadExt + Unpin)) -> (String, Value) {
    let mut buf = Vec::new();
    loop {
        let mut part = [0u8; 4096];
        let n = rd.read(&mut part).await.expect("read the answer");
        assert!(n > 0, "closed before a whole answer: {buf:?}");
        buf.extend_from_slice(&part[..n]);
        let text = String::from_utf8_lossy(&buf).to_string();
        let Some((head, body)) = text.split_once("\r\n\r\n") else {
            continue;
        };
        let len: usize = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length:")
                    .map(|v| v.trim().parse().unwrap())
            })
            .expect("content-length");
        if body.len() >= len {
            let status = head.lines().next().unwrap_or_default().to_string();
            return (
                status,
                serde_json::from_str(&body[..len]).unwrap_or(Value::Null),
            );
        }
    }
}

#[tokio::test]
async fn a_chunked_json_body_is_cut_at_the_limit() {
    let server = TestServer::start();
    let (status, body) = post_chunked(&server, "/api/v1/register", 10 * 1024 * 1024).await;
    assert!(status.starts_with("HTTP/1.1 413"), "{status} {body}");
    assert_eq!(body["error"], "too_large", "{body}");
    // A small chunked body is read whole (and refused for what it says, not its size).
    let (status, body) = post_chunked(&server, "/api/v1/register", 0).await;
    assert!(status.starts_with("HTTP/1.1 422"), "{status} {body}");
}

#[tokio::test]
async fn an_upload_declared_over_the_size_limit_is_refused_before_it_is_stored() {
    let server = TestServer::start_with_users(USERS, |c| c.media.max_upload_bytes = 100_000);
    let http = Api::new(&server);
    let alice = http.token("alice", password("alice")).await;
    let (status, body) = http.upload(&alice, vec![7u8; 10 * 1024 * 1024]).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, Some("too_large")),
        "{body}"
    );
    let (status, body) = http.upload(&alice, vec![7u8; 100_000]).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
}

#[tokio::test]
async fn parallel_uploads_cannot_pass_the_quota_together() {
    let server = TestServer::start_with_users(USERS, |c| c.media.quota_bytes_per_user = 1_000_000);
    let http = Api::new(&server);
    let alice = http.token("alice", password("alice")).await;
    let uploads = (0..10u8).map(|i| http.upload(&alice, vec![i; 800_000]));
    let answers = futures_util::future::join_all(uploads).await;
    let mut accepted = 0u64;
    for (status, body) in &answers {
        match *status {
            StatusCode::CREATED => accepted += 1,
            StatusCode::PAYLOAD_TOO_LARGE => assert_eq!(body["error"], "quota_exceeded"),
            other => panic!("{other}: {body}"),
        }
    }
    assert!(accepted <= 1, "{accepted} of 10 accepted: {answers:?}");
    assert_eq!(
        server.with_store(|s| s.media_usage("alice").unwrap()),
        800_000 * accepted
    );
    // The refused uploads hold nothing any more: what is left of the quota can be used.
    let left = (1_000_000 - 800_000 * accepted) as usize;
    let (status, body) = http.upload(&alice, vec![42; left]).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, body) = http.upload(&alice, vec![43; 1]).await;
    assert_eq!(body["error"], "quota_exceeded", "{status} {body}");
}

/// Uploads a form with an 8 MiB file part; returns the answer's status and error code.
async fn upload_big_form(http: &Api, token: &str) -> (StatusCode, Option<String>) {
    let mut form =
        b"--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a\"\r\n\r\n".to_vec();
    form.extend(vec![2u8; 8 * 1024 * 1024]);
    form.extend_from_slice(b"\r\n--XyZ--\r\n");
    let resp = http
        .client
        .post(format!("{}/api/v1/media", http.base))
        .bearer_auth(token)
        .header("content-type", "multipart/form-data; boundary=XyZ")
        .body(form)
        .send()
        .await
        .expect("the 413 arrives, not a reset");
    let (status, body) = status_and_json(resp).await;
    (status, body["error"].as_str().map(String::from))
}

#[tokio::test]
async fn form_uploads_over_the_quota_or_the_size_limit_get_their_413_not_a_reset() {
    let server = TestServer::start_with_users(USERS, |c| {
        c.media.quota_bytes_per_user = 200_000;
        c.media.max_upload_bytes = 100_000;
    });
    let http = Api::new(&server);
    let alice = http.token("alice", password("alice")).await;
    // Refused mid-stream, past the size limit.
    let too_large = (StatusCode::PAYLOAD_TOO_LARGE, Some("too_large".to_string()));
    assert_eq!(upload_big_form(&http, &alice).await, too_large);
    for fill in [1, 2] {
        let (status, body) = http.upload(&alice, vec![fill; 100_000]).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    // Refused before the form is read: nothing is left of the quota.
    let over_quota = (
        StatusCode::PAYLOAD_TOO_LARGE,
        Some("quota_exceeded".to_string()),
    );
    assert_eq!(upload_big_form(&http, &alice).await, over_quota);
}

fn png(w: u32, h: u32, seed: u8) -> Vec<u8> {
    let img = image::RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([(x % 256) as u8, (y % 256) as u8, seed])
    });
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

/// Uploads `bytes` as alice and returns the thumbnail URL of its link.
async fn thumbnail_url(http: &Api, token: &str, bytes: Vec<u8>) -> String {
    let (status, up) = http.upload(token, bytes).await;
    assert_eq!(status, StatusCode::CREATED, "{up}");
    let (_, link) = http.link(token, up["id"].as_str().unwrap()).await;
    link["thumbnail_url"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn parallel_thumbnails_with_one_decode_at_a_time_all_succeed() {
    let server = TestServer::start_with_users(USERS, |c| c.media.max_concurrent_decodes = 1);
    let http = Api::new(&server);
    let alice = http.token("alice", password("alice")).await;
    let mut urls = Vec::new();
    for seed in 0..4 {
        let url = thumbnail_url(&http, &alice, png(900, 700, seed)).await;
        // Each image asked for twice at once: the second waits and finds the first's file.
        urls.extend([url.clone(), url]);
    }
    let fetches = urls.iter().map(|u| http.fetch(u, None));
    for resp in futures_util::future::join_all(fetches).await {
        assert_eq!(resp.status(), StatusCode::OK);
        let thumb = image::load_from_memory(&resp.bytes().await.unwrap()).unwrap();
        assert_eq!((thumb.width(), thumb.height()), (320, 249));
    }
}

#[tokio::test]
async fn an_image_claiming_more_pixels_than_allowed_is_refused_from_its_header() {
    let server = TestServer::start_with_users(USERS, |c| c.media.max_image_pixels = 10_000);
    let http = Api::new(&server);
    let alice = http.token("alice", password("alice")).await;
    // One pixel row over the limit: small enough that the decoder's own memory limit would let
    // a decode start (and fail on the empty stream as "not an image"); the header check says
    // why it is refused.
    let url = thumbnail_url(&http, &alice, common::http::png_header_only(100, 101)).await;
    let (status, body) = status_and_json(http.fetch(&url, None).await).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("image_too_large")),
        "{body}"
    );
    // At the limit, it is decoded (and this one has no pixels to decode).
    let url = thumbnail_url(&http, &alice, common::http::png_header_only(100, 100)).await;
    let (status, body) = status_and_json(http.fetch(&url, None).await).await;
    assert_eq!(body["error"], "not_an_image", "{status} {body}");
}
