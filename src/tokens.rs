//! Access tokens: JWT with HS256 (so other MQTT tooling understands them), signed with ring's
//! HMAC-SHA256, carrying the user (`sub`), the device (`dev`), the device's token generation
//! (`gen`, see `store::devices`: a token whose generation is no longer the device's is dead)
//! and an expiry (`exp`). A token
//! works as the MQTT CONNECT password with the user id as user name. Refresh tokens are random
//! strings stored only as SHA-256 hashes (see `store`).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ring::{digest, hmac};
use serde::{Deserialize, Serialize};

/// What an access token says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub dev: String,
    /// The device's token generation when the token was issued. Tokens issued before
    /// generations existed have none: read as '', the generation those devices start with.
    #[serde(default)]
    pub gen: String,
    pub iat: i64,
    pub exp: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("malformed token")]
    Malformed,
    #[error("bad signature")]
    Signature,
    #[error("expired token")]
    Expired,
}

const HEADER: &str = r#"{"alg":"HS256","typ":"JWT"}"#;

pub struct Signer {
    key: hmac::Key,
}

impl Signer {
    pub fn new(secret: &[u8]) -> Signer {
        Signer {
            key: hmac::Key::new(hmac::HMAC_SHA256, secret),
        }
    }

    pub fn issue(&self, claims: &Claims) -> String {
        let header = URL_SAFE_NO_PAD.encode(HEADER);
        // Serialising five plain fields cannot fail.
        let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).unwrap_or_default());
        let signing_input = format!("{header}.{payload}");
        let tag = hmac::sign(&self.key, signing_input.as_bytes());
        format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(tag.as_ref()))
    }

    /// An HMAC of `data` (signed media links), base64url.
    pub fn mac(&self, data: &str) -> String {
        URL_SAFE_NO_PAD.encode(hmac::sign(&self.key, data.as_bytes()).as_ref())
    }

    /// Checks a [`Signer::mac`] in constant time.
    pub fn verify_mac(&self, data: &str, mac: &str) -> bool {
        URL_SAFE_NO_PAD
            .decode(mac)
            .is_ok_and(|tag| hmac::verify(&self.key, data.as_bytes(), &tag).is_ok())
    }

    /// Verifies signature, algorithm and expiry (at `now`, seconds since the epoch).
    pub fn verify(&self, token: &str, now: i64) -> Result<Claims, TokenError> {
        let mut parts = token.split('.');
        let (Some(h), Some(p), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed);
        };
        let header: serde_json::Value = URL_SAFE_NO_PAD
            .decode(h)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or(TokenError::Malformed)?;
        // Only HS256: "none" and every other algorithm are refused outright.
        if header.get("alg").and_then(|a| a.as_str()) != Some("HS256") {
            return Err(TokenError::Malformed);
        }
        let signature = URL_SAFE_NO_PAD
            .decode(s)
            .map_err(|_| TokenError::Malformed)?;
        hmac::verify(&self.key, format!("{h}.{p}").as_bytes(), &signature)
            .map_err(|_| TokenError::Signature)?;
        let claims: Claims = URL_SAFE_NO_PAD
            .decode(p)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or(TokenError::Malformed)?;
        if claims.exp <= now {
            return Err(TokenError::Expired);
        }
        Ok(claims)
    }
}

/// Whether a CONNECT password is shaped like a JWT (rather than a password).
pub fn looks_like_jwt(password: &str) -> bool {
    password.starts_with("eyJ") && password.matches('.').count() == 2
}

/// A new refresh token: 32 random bytes, URL-safe.
pub fn new_refresh_token() -> String {
    let hex = crate::ids::random_hex(32);
    URL_SAFE_NO_PAD.encode(hex.as_bytes())
}

/// How refresh tokens are stored: SHA-256, hex.
pub fn hash_refresh_token(token: &str) -> String {
    digest::digest(&digest::SHA256, token.as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(exp: i64) -> Claims {
        Claims {
            sub: "alice".into(),
            dev: "phone".into(),
            gen: "g1".into(),
            iat: 0,
            exp,
        }
    }

    #[test]
    fn issue_and_verify() {
        let s = Signer::new(b"k1");
        let t = s.issue(&claims(100));
        assert!(looks_like_jwt(&t));
        assert_eq!(s.verify(&t, 50), Ok(claims(100)));
        assert_eq!(s.verify(&t, 100), Err(TokenError::Expired));
        assert_eq!(
            Signer::new(b"k2").verify(&t, 50),
            Err(TokenError::Signature)
        );
    }

    #[test]
    fn tampering_and_other_algorithms_are_refused() {
        let s = Signer::new(b"k1");
        let t = s.issue(&claims(100));
        let mut parts: Vec<&str> = t.split('.').collect();
        let forged = URL_SAFE_NO_PAD.encode(r#"{"sub":"root","dev":"x","iat":0,"exp":100}"#);
        parts[1] = &forged;
        assert_eq!(s.verify(&parts.join("."), 50), Err(TokenError::Signature));
        let none = format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(r#"{"alg":"none"}"#),
            URL_SAFE_NO_PAD.encode(r#"{"sub":"root","dev":"x","iat":0,"exp":100}"#)
        );
        assert_eq!(s.verify(&none, 50), Err(TokenError::Malformed));
        assert_eq!(s.verify("a.b", 50), Err(TokenError::Malformed));
        assert!(!looks_like_jwt("hunter2"));
    }

    #[test]
    fn tokens_from_before_generations_read_as_the_empty_generation() {
        let s = Signer::new(b"k1");
        let header = URL_SAFE_NO_PAD.encode(HEADER);
        let payload = URL_SAFE_NO_PAD.encode(r#"{"sub":"alice","dev":"phone","iat":0,"exp":100}"#);
        let signed = format!("{header}.{payload}");
        let token = format!("{signed}.{}", s.mac(&signed));
        assert_eq!(s.verify(&token, 50).map(|c| c.gen), Ok(String::new()));
    }

    /// `token` with the first character of its signature changed (still base64url).
    fn with_other_signature(token: &str) -> String {
        let (signed, sig) = token.rsplit_once('.').expect("three parts");
        let first = if sig.starts_with('A') { 'B' } else { 'A' };
        format!("{signed}.{first}{}", &sig[1..])
    }

    #[test]
    fn access_token_table() {
        use TokenError::{Expired, Malformed, Signature};
        let s = Signer::new(b"k1");
        let t = s.issue(&claims(100));
        let (signed, _) = t.rsplit_once('.').expect("three parts");
        let other_key = Signer::new(b"k2").issue(&claims(100));
        let tampered = with_other_signature(&t);
        let not_base64 = format!("{signed}.!!");
        let four_parts = format!("{t}.x");
        let ok = Ok(claims(100));
        let cases: &[(&str, &str, i64, Result<Claims, TokenError>)] = &[
            ("valid", &t, 50, ok.clone()),
            ("one second before exp", &t, 99, ok),
            ("expired at exactly exp", &t, 100, Err(Expired)),
            ("after exp", &t, 101, Err(Expired)),
            ("another key", &other_key, 50, Err(Signature)),
            ("tampered signature", &tampered, 50, Err(Signature)),
            ("expired and tampered", &tampered, 100, Err(Signature)),
            ("signature not base64", &not_base64, 50, Err(Malformed)),
            ("four parts", &four_parts, 50, Err(Malformed)),
            ("empty", "", 50, Err(Malformed)),
        ];
        for (what, token, now, want) in cases {
            assert_eq!(&s.verify(token, *now), want, "{what}");
        }
    }

    #[test]
    fn refresh_tokens_are_random_and_hashed() {
        let a = new_refresh_token();
        assert_ne!(a, new_refresh_token());
        assert_eq!(hash_refresh_token(&a).len(), 64);
        assert_ne!(hash_refresh_token(&a), a);
    }
}
