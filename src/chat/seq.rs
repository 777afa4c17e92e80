//! Sequence numbers as clients write them (`re`, `th`, `target`, read markers, `after`,
//! `before`). The store keeps them in SQLite integers, which are signed 64-bit: a number above
//! [`MAX`] cannot be stored or compared there, so it is refused where it is read, before it
//! can reach a query (or fail a whole group-commit batch).

use serde::{Deserialize, Deserializer};

/// The largest sequence number a client may name.
pub const MAX: u64 = i64::MAX as u64;

/// Why a number is not a sequence number (serde's message for a field that is too large).
pub const TOO_LARGE: &str = "a sequence number is at most 9223372036854775807";

/// Reads a decimal sequence number, `None` when it is not one (not a number, or above [`MAX`]).
pub fn parse(s: &str) -> Option<u64> {
    s.parse::<u64>().ok().filter(|n| *n <= MAX)
}

/// A serde field holding a sequence number (`#[serde(deserialize_with = "seq::required")]`).
pub fn required<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let n = u64::deserialize(d)?;
    if n > MAX {
        return Err(serde::de::Error::custom(TOO_LARGE));
    }
    Ok(n)
}

/// An optional serde field holding a sequence number (with `#[serde(default)]`).
pub fn optional<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    Option::<u64>::deserialize(d)?
        .map(|n| {
            (n <= MAX)
                .then_some(n)
                .ok_or_else(|| serde::de::Error::custom(TOO_LARGE))
        })
        .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    struct Fields {
        #[serde(deserialize_with = "required")]
        read: u64,
        #[serde(default, deserialize_with = "optional")]
        re: Option<u64>,
    }

    /// (JSON, the fields read, or `None` when refused)
    type Case = (&'static str, Option<(u64, Option<u64>)>);

    #[test]
    fn numbers_above_the_signed_range_are_refused() {
        let cases: &[Case] = &[
            (r#"{"read":0}"#, Some((0, None))),
            (r#"{"read":9223372036854775807}"#, Some((MAX, None))),
            (r#"{"read":1,"re":null}"#, Some((1, None))),
            (
                r#"{"read":1,"re":9223372036854775807}"#,
                Some((1, Some(MAX))),
            ),
            (r#"{"read":9223372036854775808}"#, None),
            (r#"{"read":1,"re":9223372036854775808}"#, None),
            (r#"{"read":1,"re":18446744073709551615}"#, None),
            (r#"{"read":-1}"#, None),
        ];
        for (json, want) in cases {
            let got = serde_json::from_str::<Fields>(json).map(|f| (f.read, f.re));
            assert_eq!(got.as_ref().ok(), want.as_ref(), "{json}: {got:?}");
        }
        let err = serde_json::from_str::<Fields>(r#"{"read":9223372036854775808}"#).unwrap_err();
        assert!(err.to_string().starts_with(TOO_LARGE), "{err}");
    }

    #[test]
    fn parses_decimal_sequence_numbers() {
        let cases = [
            ("0", Some(0)),
            ("42", Some(42)),
            ("9223372036854775807", Some(MAX)),
            ("9223372036854775808", None),
            ("18446744073709551616", None),
            ("-1", None),
            ("x", None),
            ("", None),
        ];
        for (s, want) in cases {
            assert_eq!(parse(s), want, "{s:?}");
        }
    }
}
