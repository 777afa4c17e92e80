//! Random identifiers (assigned client ids, group ids).

use ring::rand::{SecureRandom, SystemRandom};

/// `n` random bytes as lowercase hex. If the system RNG fails (it does not, in practice), the
/// clock stands in: the ids only need to be unique, not secret.
pub fn random_hex(n: usize) -> String {
    let mut bytes = vec![0u8; n];
    if SystemRandom::new().fill(&mut bytes).is_err() {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        for (b, n) in bytes.iter_mut().zip(nanos.to_le_bytes().iter().cycle()) {
            *b = *n;
        }
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
