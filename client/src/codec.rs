//! The payload path. A [`Codec`] wraps each text the app sends and unwraps each text it
//! receives, per conversation: the plug for end-to-end encryption, which then changes nothing
//! else in the client. Below it, `encode` and `decode` turn drafts and envelopes into JSON
//! or MessagePack bytes.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::config::Format;
use crate::Error;

/// Wraps and unwraps message text per conversation (edits included). Media ids, reactions and
/// sequence numbers stay readable: the server routes and checks them.
pub trait Codec: Send + Sync + 'static {
    /// What is sent for `text` in `conv`.
    fn seal(&self, conv: &str, text: String) -> Result<String, Error>;
    /// What the app sees for a received `text` in `conv`. An error drops the text (the entry
    /// is still delivered, without it) and is logged.
    fn open(&self, conv: &str, text: String) -> Result<String, Error>;
}

/// Text as it is: the default.
pub struct Plain;

impl Codec for Plain {
    fn seal(&self, _conv: &str, text: String) -> Result<String, Error> {
        Ok(text)
    }
    fn open(&self, _conv: &str, text: String) -> Result<String, Error> {
        Ok(text)
    }
}

/// What is published on `c/{conv}/m`, `c/{conv}/e` or `c/{conv}/r`, as kept in the outbox
/// (JSON there, whatever the wire format).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Outgoing {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub t: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub re: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub th: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub op: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub emoji: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub media: Vec<String>,
    /// Read markers only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read: Option<u64>,
}

/// Bytes on the wire for a value (named fields in MessagePack, so the server reads it as a map).
pub(crate) fn encode<T: Serialize>(format: Format, value: &T) -> Vec<u8> {
    match format {
        // Plain data with string keys always serialises.
        Format::Json => serde_json::to_vec(value).unwrap_or_default(),
        Format::MsgPack => rmp_serde::to_vec_named(value).unwrap_or_default(),
    }
}

/// Reads what the server sent: JSON when it starts with `{`, MessagePack otherwise (the
/// server encodes for this device's format; its own JSON events stay JSON).
pub(crate) fn decode<T: DeserializeOwned>(payload: &[u8]) -> Result<T, Error> {
    if payload.first() == Some(&b'{') {
        serde_json::from_slice(payload).map_err(|e| Error::Protocol(e.to_string()))
    } else {
        rmp_serde::from_slice(payload).map_err(|e| Error::Protocol(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Entry;

    #[test]
    fn both_formats_round_trip_an_envelope() {
        let json = br#"{"id":7,"conv":"g.t","seq":3,"from":"alice","dev":"alice.phone","ts":1,"k":"msg","cid":"c","t":"hi"}"#;
        let entry: Entry = decode(json).unwrap();
        assert_eq!((entry.seq, entry.text.as_deref()), (3, Some("hi")));
        let packed = encode(Format::MsgPack, &entry);
        assert_ne!(packed.first(), Some(&b'{'));
        assert_eq!(decode::<Entry>(&packed).unwrap(), entry);
    }

    #[test]
    fn garbage_is_a_protocol_error_not_a_panic() {
        assert!(matches!(
            decode::<Entry>(b"\xff\x00"),
            Err(Error::Protocol(_))
        ));
        assert!(matches!(decode::<Entry>(b"{nope"), Err(Error::Protocol(_))));
    }
}
