//! The HTTP API as tests call it: JSON requests with an optional bearer token, answered with
//! the status and the JSON body; accounts, logins and media uploads on top.

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use super::TestServer;

/// The password of accounts made with [`Api::account`].
const ACCOUNT_PASSWORD: &str = "correct horse";

pub struct Api {
    pub base: String,
    pub client: reqwest::Client,
}

impl Api {
    pub fn new(server: &TestServer) -> Api {
        Api {
            base: format!("http://{}", server.http),
            client: reqwest::Client::new(),
        }
    }

    /// `method path`, with `token` as bearer and `body` as JSON when given.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = self.client.request(method, format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req
                .header("content-type", "application/json")
                .body(b.to_string());
        }
        status_and_json(req.send().await.expect("HTTP request")).await
    }

    pub async fn post(&self, path: &str, token: Option<&str>, body: Value) -> (StatusCode, Value) {
        self.call(Method::POST, path, token, Some(body)).await
    }

    pub async fn get(&self, path: &str, token: &str) -> (StatusCode, Value) {
        self.call(Method::GET, path, Some(token), None).await
    }

    /// Logs in with a password; returns the access token.
    pub async fn token(&self, user: &str, password: &str) -> String {
        let body = json!({"user": user, "password": password});
        let (_, v) = self.post("/api/v1/login", None, body).await;
        v["access_token"].as_str().unwrap().to_string()
    }

    /// Registers `user` and logs in as `user.device`; returns the login reply.
    pub async fn account(&self, user: &str, device: &str) -> Value {
        let (s, _) = self
            .post(
                "/api/v1/register",
                None,
                json!({"user": user, "password": ACCOUNT_PASSWORD}),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED);
        self.login(user, device).await
    }

    /// Logs in as `device` of an account made by `account`; returns the login reply.
    pub async fn login(&self, user: &str, device: &str) -> Value {
        let (s, login) = self
            .post(
                "/api/v1/login",
                None,
                json!({"user": user, "password": ACCOUNT_PASSWORD, "device": device}),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{login}");
        login
    }

    /// Revokes `device` with the access token of the login reply `by`.
    pub async fn revoke(&self, by: &Value, device: &str) {
        let path = format!("/api/v1/devices/{device}");
        let (s, body) = self
            .call(Method::DELETE, &path, by["access_token"].as_str(), None)
            .await;
        assert_eq!(s, StatusCode::NO_CONTENT, "revoking {device}: {body}");
    }

    /// Uploads `bytes` with a raw `PUT` (declared `image/png`; the server sniffs the type).
    pub async fn upload(&self, token: &str, bytes: Vec<u8>) -> (StatusCode, Value) {
        let resp = self
            .client
            .put(format!("{}/api/v1/media", self.base))
            .bearer_auth(token)
            .header("content-type", "image/png")
            .body(bytes)
            .send()
            .await
            .unwrap();
        status_and_json(resp).await
    }

    /// Asks for a signed link to media `id`.
    pub async fn link(&self, token: &str, id: &str) -> (StatusCode, Value) {
        let path = format!("/api/v1/media/{id}/link");
        self.call(Method::GET, &path, Some(token), None).await
    }

    /// GETs `path` (a link's URL), with a `Range` header when given.
    pub async fn fetch(&self, path: &str, range: Option<&str>) -> reqwest::Response {
        let mut req = self.client.get(format!("{}{path}", self.base));
        if let Some(r) = range {
            req = req.header("range", r);
        }
        req.send().await.unwrap()
    }
}

/// An HTTP answer's status and its JSON body (`null` when the body is not JSON).
pub async fn status_and_json(resp: reqwest::Response) -> (reqwest::StatusCode, serde_json::Value) {
    let status = resp.status();
    let text = resp.text().await.expect("read the response body");
    (
        status,
        serde_json::from_str(&text).unwrap_or(serde_json::Value::Null),
    )
}

/// A real PNG (signature, IHDR with a correct CRC, a tiny IDAT, IEND) whose header claims
/// `w`×`h` pixels: a few dozen bytes that would decode to gigabytes.
pub fn png_header_only(w: u32, h: u32) -> Vec<u8> {
    fn crc32(bytes: &[u8]) -> u32 {
        let mut crc = !0u32;
        for &b in bytes {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = (crc >> 1) ^ (0xEDB8_8320 & (crc & 1).wrapping_neg());
            }
        }
        !crc
    }
    fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
        out.extend((data.len() as u32).to_be_bytes());
        let start = out.len();
        out.extend(kind);
        out.extend(data);
        let crc = crc32(&out[start..]);
        out.extend(crc.to_be_bytes());
    }
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend(w.to_be_bytes());
    ihdr.extend(h.to_be_bytes());
    // 8-bit RGB, deflate, adaptive filtering, no interlace.
    ihdr.extend([8, 2, 0, 0, 0]);
    chunk(&mut out, b"IHDR", &ihdr);
    // The zlib stream of nothing.
    chunk(
        &mut out,
        b"IDAT",
        &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01],
    );
    chunk(&mut out, b"IEND", &[]);
    out
}
