//! The server's HTTP API, for what MQTT does not carry: access tokens (login and rotating
//! refresh) and media (upload, signed links, download).

use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::{json, Value};

use crate::Error;

/// Tokens from `login` or `refresh`.
#[derive(Debug, Clone, Deserialize)]
pub struct Tokens {
    pub access_token: String,
    pub refresh_token: String,
    /// Seconds the access token is valid.
    pub expires_in: u64,
}

/// An uploaded file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Media {
    pub id: String,
    pub size: u64,
    #[serde(rename = "type")]
    pub mime: String,
}

/// A signed, expiring download link (and a thumbnail's, for images).
#[derive(Debug, Clone, Deserialize)]
pub struct Link {
    pub url: String,
    #[serde(default)]
    pub thumbnail_url: Option<String>,
    pub expires: i64,
}

pub struct Api {
    base: String,
    http: reqwest::Client,
}

impl Api {
    pub fn new(base: &str) -> Result<Api, Error> {
        // reqwest is built without a bundled crypto provider; ring is the one this workspace
        // uses everywhere. Installing twice is harmless.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| Error::Http(e.to_string()))?;
        Ok(Api {
            base: base.trim_end_matches('/').to_string(),
            http,
        })
    }

    pub async fn login(&self, user: &str, password: &str, device: &str) -> Result<Tokens, Error> {
        let body = json!({"user": user, "password": password, "device": device});
        self.json(self.http.post(self.url("/api/v1/login")).json_body(&body))
            .await
            .and_then(parse)
    }

    /// A new pair for a refresh token (which is then used up).
    pub async fn refresh(&self, refresh_token: &str) -> Result<Tokens, Error> {
        let body = json!({"refresh_token": refresh_token});
        self.json(self.http.post(self.url("/api/v1/refresh")).json_body(&body))
            .await
            .and_then(parse)
    }

    pub async fn upload(&self, token: &str, bytes: Vec<u8>) -> Result<Media, Error> {
        let req = self
            .http
            .put(self.url("/api/v1/media"))
            .bearer_auth(token)
            .body(bytes);
        self.json(req).await.and_then(parse)
    }

    pub async fn link(&self, token: &str, media: &str) -> Result<Link, Error> {
        let req = self
            .http
            .get(self.url(&format!("/api/v1/media/{media}/link")))
            .bearer_auth(token);
        self.json(req).await.and_then(parse)
    }

    /// Fetches a signed link's bytes (`url` as the link reply gave it: a path on this server).
    pub async fn download(&self, url: &str) -> Result<Vec<u8>, Error> {
        let resp = self
            .http
            .get(self.url(url))
            .send()
            .await
            .map_err(|e| Error::Http(e.to_string()))?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(|e| Error::Http(e.to_string()))?;
        if !status.is_success() {
            return Err(refusal(status.as_u16(), &bytes));
        }
        Ok(bytes.to_vec())
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn json(&self, req: reqwest::RequestBuilder) -> Result<Value, Error> {
        let resp = req.send().await.map_err(|e| Error::Http(e.to_string()))?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(|e| Error::Http(e.to_string()))?;
        if !status.is_success() {
            return Err(refusal(status.as_u16(), &bytes));
        }
        serde_json::from_slice(&bytes).map_err(|e| Error::Http(format!("reply: {e}")))
    }
}

/// A JSON body without reqwest's `json` feature (serde_json is here anyway).
trait JsonBody {
    fn json_body(self, body: &Value) -> Self;
}

impl JsonBody for reqwest::RequestBuilder {
    fn json_body(self, body: &Value) -> Self {
        self.header("content-type", "application/json")
            .body(body.to_string())
    }
}

fn parse<T: serde::de::DeserializeOwned>(v: Value) -> Result<T, Error> {
    serde_json::from_value(v).map_err(|e| Error::Http(format!("reply: {e}")))
}

/// An error reply: 401/403 are refusals of the credentials, the rest carry the server's code.
fn refusal(status: u16, body: &[u8]) -> Error {
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let code = v["error"].as_str().unwrap_or("http").to_string();
    let message = v["message"].as_str().unwrap_or("").to_string();
    match status {
        401 | 403 => Error::Auth(format!("{status} {code}: {message}")),
        _ => Error::Refused {
            code,
            message: format!("HTTP {status}: {message}"),
        },
    }
}

/// An access token and when to stop trusting it.
pub struct Access {
    pub token: String,
    pub until: Instant,
}

impl Access {
    pub fn from(tokens: &Tokens) -> Access {
        // Refresh a little early: a token that expires in flight is refused at CONNECT.
        let life = Duration::from_secs(tokens.expires_in).mul_f64(0.9);
        Access {
            token: tokens.access_token.clone(),
            until: Instant::now() + life,
        }
    }

    pub fn fresh(&self) -> bool {
        Instant::now() < self.until
    }
}
