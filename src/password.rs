//! Password hashing: PBKDF2-HMAC-SHA256 (ring), stored as
//! `pbkdf2-sha256${iterations}${salt hex}${hash hex}` so a change of the iteration count applies
//! to new hashes without breaking old ones.
//!
//! Verification is deliberately slow (600,000 iterations by default, the OWASP figure for this
//! algorithm); callers run it on a blocking thread, a bounded number at a time.

use std::num::NonZeroU32;

use ring::rand::{SecureRandom, SystemRandom};
use ring::{digest, pbkdf2};

const SCHEME: &str = "pbkdf2-sha256";
const SALT_LEN: usize = 16;
const HASH_LEN: usize = digest::SHA256_OUTPUT_LEN;

#[derive(Debug, thiserror::Error)]
pub enum PasswordError {
    #[error("the system random number generator failed")]
    Random,
    #[error("iterations must be at least 1")]
    Iterations,
}

/// Hashes `password` with a fresh random salt.
pub fn hash(password: &str, iterations: u32) -> Result<String, PasswordError> {
    let iterations = NonZeroU32::new(iterations).ok_or(PasswordError::Iterations)?;
    let mut salt = [0u8; SALT_LEN];
    SystemRandom::new()
        .fill(&mut salt)
        .map_err(|_| PasswordError::Random)?;
    let mut out = [0u8; HASH_LEN];
    pbkdf2::derive(
        pbkdf2::PBKDF2_HMAC_SHA256,
        iterations,
        &salt,
        password.as_bytes(),
        &mut out,
    );
    Ok(format!(
        "{SCHEME}${iterations}${}${}",
        hex(&salt),
        hex(&out)
    ))
}

/// Checks `password` against a stored hash; a malformed hash never verifies.
pub fn verify(password: &str, stored: &str) -> bool {
    let mut parts = stored.split('$');
    let (Some(SCHEME), Some(iterations), Some(salt), Some(expected), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return false;
    };
    let (Some(iterations), Some(salt), Some(expected)) = (
        iterations.parse().ok().and_then(NonZeroU32::new),
        unhex(salt),
        unhex(expected),
    ) else {
        return false;
    };
    // ring compares in constant time.
    pbkdf2::verify(
        pbkdf2::PBKDF2_HMAC_SHA256,
        iterations,
        &salt,
        password.as_bytes(),
        &expected,
    )
    .is_ok()
}

/// A random password for `natter user add` without `--password`: 16 characters from an
/// unambiguous alphabet (about 80 bits).
pub fn generate() -> Result<String, PasswordError> {
    const ALPHABET: &[u8] = b"abcdefghjkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let mut bytes = [0u8; 16];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| PasswordError::Random)?;
    Ok(bytes
        .iter()
        .map(|b| ALPHABET[usize::from(*b) % ALPHABET.len()] as char)
        .collect())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_verify_and_differ_by_salt() {
        let a = hash("correct horse", 1000).unwrap();
        let b = hash("correct horse", 1000).unwrap();
        assert_ne!(a, b);
        assert!(a.starts_with("pbkdf2-sha256$1000$"));
        assert!(verify("correct horse", &a));
        assert!(!verify("correct horsE", &a));
        assert!(!verify("", &a));
    }

    #[test]
    fn malformed_hashes_never_verify() {
        for stored in [
            "",
            "x",
            "pbkdf2-sha256$0$00$00",
            "pbkdf2-sha256$10$zz$00",
            "md5$1$00$00",
            "pbkdf2-sha256$10$00$00$00",
        ] {
            assert!(!verify("p", stored), "{stored}");
        }
    }

    #[test]
    fn generated_passwords_are_long_and_distinct() {
        let a = generate().unwrap();
        assert_eq!(a.len(), 16);
        assert_ne!(a, generate().unwrap());
    }
}
