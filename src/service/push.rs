//! Push notifications for users with no connected device: a content-free POST (which
//! conversations have how many new messages — never the text) to each endpoint the user's
//! devices registered (UnifiedPush/ntfy-style URLs or any webhook), signed with HMAC-SHA256.
//!
//! Bursts are coalesced by the caller; here each notification is delivered with retries
//! (exponential backoff with jitter, `Retry-After` honoured on 429), endpoints answering 404 or
//! 410 are unregistered, and targets on loopback or private networks are refused unless the
//! configuration allows them — checked on the address actually connected to, so a DNS answer
//! cannot redirect a push into the server's own network.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use ring::hmac;
use ring::rand::SecureRandom;

use crate::store::Store;

/// Why an endpoint is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EndpointError {
    #[error("not an http(s) URL with a host")]
    BadUrl,
    #[error("the host does not resolve")]
    Unresolvable,
    #[error("the host is on a loopback, private or link-local network")]
    Private,
}

#[derive(Debug, Clone)]
pub struct PushSettings {
    pub secret: Vec<u8>,
    pub allow_private: bool,
    pub max_attempts: u32,
    pub base_delay: Duration,
    pub timeout: Duration,
}

pub struct Pusher {
    settings: PushSettings,
    key: hmac::Key,
    store: Arc<dyn Store>,
}

/// The signature header: `sha256=` and the hex HMAC of the body.
pub const SIGNATURE_HEADER: &str = "x-natter-signature";

impl Pusher {
    pub fn new(settings: PushSettings, store: Arc<dyn Store>) -> Pusher {
        let key = hmac::Key::new(hmac::HMAC_SHA256, &settings.secret);
        Pusher {
            settings,
            key,
            store,
        }
    }

    pub fn sign(&self, body: &[u8]) -> String {
        let tag = hmac::sign(&self.key, body);
        let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        format!("sha256={hex}")
    }

    /// Checks a URL and resolves it to an address push may connect to.
    pub async fn check(&self, url: &str) -> Result<(reqwest::Url, SocketAddr), EndpointError> {
        let parsed = reqwest::Url::parse(url).map_err(|_| EndpointError::BadUrl)?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(EndpointError::BadUrl);
        }
        let host = parsed.host_str().ok_or(EndpointError::BadUrl)?.to_string();
        let port = parsed
            .port_or_known_default()
            .ok_or(EndpointError::BadUrl)?;
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), port))
            .await
            .map_err(|_| EndpointError::Unresolvable)?
            .collect();
        let addr = *addrs.first().ok_or(EndpointError::Unresolvable)?;
        if !self.settings.allow_private && addrs.iter().any(|a| !is_public(a.ip())) {
            return Err(EndpointError::Private);
        }
        Ok((parsed, addr))
    }

    /// Delivers one notification to one endpoint, retrying as configured.
    pub async fn deliver(&self, user: &str, url: &str, body: Vec<u8>) {
        let (parsed, addr) = match self.check(url).await {
            Ok(target) => target,
            Err(e) => {
                tracing::info!(%user, url, error = %e, "push endpoint refused");
                return;
            }
        };
        let host = parsed.host_str().unwrap_or_default().to_string();
        // Connect to the address that was checked, whatever DNS says next.
        let client = match reqwest::Client::builder()
            .resolve(&host, addr)
            .timeout(self.settings.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
        {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "cannot build the push client");
                return;
            }
        };
        let signature = self.sign(&body);
        for attempt in 0..self.settings.max_attempts {
            let sent = client
                .post(parsed.clone())
                .header("content-type", "application/json")
                .header(SIGNATURE_HEADER, &signature)
                .body(body.clone())
                .send()
                .await;
            let wait = match sent {
                Ok(r) if r.status().is_success() => return,
                Ok(r) if matches!(r.status().as_u16(), 404 | 410) => {
                    tracing::info!(%user, url, status = %r.status(), "push endpoint gone; unregistered");
                    let (store, u, e) = (self.store.clone(), user.to_string(), url.to_string());
                    let _ = tokio::task::spawn_blocking(move || store.remove_push_endpoint(&u, &e))
                        .await;
                    return;
                }
                Ok(r) if r.status().as_u16() == 429 => {
                    retry_after(&r).unwrap_or_else(|| self.backoff(attempt))
                }
                Ok(r) if r.status().is_client_error() => {
                    tracing::info!(%user, url, status = %r.status(), "push refused by endpoint");
                    return;
                }
                Ok(_) | Err(_) => self.backoff(attempt),
            };
            tokio::time::sleep(wait).await;
        }
        tracing::info!(%user, url, "push given up after {} attempts", self.settings.max_attempts);
    }

    /// base × 2^attempt, ±50 % jitter.
    fn backoff(&self, attempt: u32) -> Duration {
        let base = self.settings.base_delay * 2u32.saturating_pow(attempt.min(16));
        let mut byte = [0u8; 1];
        let _ = ring::rand::SystemRandom::new().fill(&mut byte);
        base.mul_f64(0.5 + f64::from(byte[0]) / 255.0)
    }
}

/// `Retry-After` in seconds, capped at a minute.
fn retry_after(r: &reqwest::Response) -> Option<Duration> {
    let secs: u64 = r
        .headers()
        .get("retry-after")?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_secs(secs.min(60)))
}

fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_documentation()
                || v4.octets()[0] == 100 && (64..128).contains(&v4.octets()[1]))
        }
        IpAddr::V6(v6) => {
            let first = v6.segments()[0];
            !(v6.is_loopback()
                || v6.is_unspecified()
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80
                || v6
                    .to_ipv4_mapped()
                    .is_some_and(|v4| !is_public(IpAddr::V4(v4))))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_and_private_addresses() {
        for (ip, public) in [
            ("8.8.8.8", true),
            ("127.0.0.1", false),
            ("10.1.2.3", false),
            ("192.168.1.1", false),
            ("172.16.0.1", false),
            ("169.254.1.1", false),
            ("100.64.0.1", false),
            ("0.0.0.0", false),
            ("2001:4860::8888", true),
            ("::1", false),
            ("fd00::1", false),
            ("fe80::1", false),
            ("::ffff:127.0.0.1", false),
        ] {
            assert_eq!(is_public(ip.parse().unwrap()), public, "{ip}");
        }
    }
}
