//! The message envelope: what clients send on `c/{conv}/m` and `c/{conv}/e`, and what the server
//! stores and delivers. Pure encoding and validation; `topics.md` documents the fields.
//!
//! Clients send MessagePack (a map with named fields), JSON, or plain UTF-8 text (taken as a text
//! message, so `mosquitto_pub -m 'hi'` works). The server adds the fields a client cannot forge —
//! id, conversation, sequence number, sender, device, time — and delivers JSON by default
//! (readable in `mosquitto_sub`) or MessagePack to devices that ask for it.

use serde::{Deserialize, Serialize};

use super::seq;

/// Longest client message id.
pub const MAX_CID_LEN: usize = 64;

/// Why a client payload is not a valid envelope.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    #[error("empty message")]
    Empty,
    #[error("invalid JSON: {0}")]
    Json(String),
    #[error("invalid MessagePack: {0}")]
    MsgPack(String),
    #[error("the payload is neither UTF-8 text, JSON nor MessagePack")]
    Unreadable,
    #[error("{0}")]
    Invalid(#[from] Invalid),
}

/// A readable draft that breaks a rule of its topic (a message on `c/{conv}/m`, an event on
/// `c/{conv}/e`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Invalid {
    #[error("cid must be 1 to 64 bytes")]
    CidLength,
    #[error("text too long")]
    TextTooLong,
    #[error("op, target and emoji belong on c/{{conv}}/e")]
    EventFieldsOnMessage,
    #[error("at most 16 media ids")]
    TooManyMedia,
    #[error("a message needs text (t) or media")]
    NothingToShow,
    #[error("op must be edit, delete, react or unreact")]
    UnknownOp,
    #[error("target (a sequence number) is required")]
    NoTarget,
    #[error("an edit needs text (t)")]
    EmptyEdit,
    #[error("a reaction needs an emoji of 1 to 32 bytes")]
    BadEmoji,
    #[error("media belong on messages")]
    MediaOnEvent,
}

/// An encoding of the envelope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    MsgPack,
}

/// What a client may send. Unknown fields — a forged `seq` or `from` among them — are refused,
/// and so are sequence numbers the store cannot hold ([`seq::MAX`]).
#[derive(Debug, Default, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Draft {
    /// Client message id: resending the same `cid` yields the original message.
    #[serde(default)]
    pub cid: Option<String>,
    /// Text.
    #[serde(default)]
    pub t: Option<String>,
    /// Reply to this sequence number.
    #[serde(default, deserialize_with = "seq::optional")]
    pub re: Option<u64>,
    /// Thread root sequence number.
    #[serde(default, deserialize_with = "seq::optional")]
    pub th: Option<u64>,
    /// On `c/{conv}/e`: `edit`, `delete`, `react` or `unreact`.
    #[serde(default)]
    pub op: Option<String>,
    /// On `c/{conv}/e`: the sequence number of the message acted on.
    #[serde(default, deserialize_with = "seq::optional")]
    pub target: Option<u64>,
    /// For `react`/`unreact`.
    #[serde(default)]
    pub emoji: Option<String>,
    /// Media ids (uploaded over HTTP) this message carries.
    #[serde(default)]
    pub media: Option<Vec<String>>,
}

/// Most media ids on one message.
pub const MAX_MEDIA: usize = 16;

/// What a stored entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Msg,
    Edit,
    Delete,
    React,
    Unreact,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Msg => "msg",
            Kind::Edit => "edit",
            Kind::Delete => "delete",
            Kind::React => "react",
            Kind::Unreact => "unreact",
        }
    }

    pub fn parse(s: &str) -> Option<Kind> {
        Some(match s {
            "msg" => Kind::Msg,
            "edit" => Kind::Edit,
            "delete" => Kind::Delete,
            "react" => Kind::React,
            "unreact" => Kind::Unreact,
            _ => return None,
        })
    }
}

/// A validated draft, ready to store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Content {
    pub kind: Kind,
    pub cid: Option<String>,
    pub text: Option<String>,
    pub reply_to: Option<u64>,
    pub thread: Option<u64>,
    pub target: Option<u64>,
    pub emoji: Option<String>,
    pub media: Vec<String>,
}

/// A stored message or event as delivered and returned by history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// Server message id, increasing across all conversations (also the stream position).
    pub id: i64,
    pub conv: String,
    /// Dense per-conversation sequence number: 1, 2, 3…
    pub seq: u64,
    pub from: String,
    pub dev: String,
    /// Server time, milliseconds since the Unix epoch.
    pub ts: i64,
    pub k: Kind,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub cid: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub t: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub re: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub th: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub target: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub emoji: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub media: Vec<String>,
}

impl Envelope {
    pub fn encode(&self, format: Format) -> Vec<u8> {
        match format {
            // Serialising plain data with string keys cannot fail.
            Format::Json => serde_json::to_vec(self).unwrap_or_default(),
            Format::MsgPack => rmp_serde::to_vec_named(self).unwrap_or_default(),
        }
    }
}

/// The format named by an MQTT 5 content type, if any.
pub fn format_of(content_type: &str) -> Option<Format> {
    match content_type.split(';').next().unwrap_or("").trim() {
        "application/json" => Some(Format::Json),
        "application/msgpack" | "application/x-msgpack" | "application/vnd.msgpack" => {
            Some(Format::MsgPack)
        }
        _ => None,
    }
}

/// Reads a client payload; `message` tells whether it came on `c/{conv}/m` (a message) or
/// `c/{conv}/e` (an edit, delete or reaction).
pub fn parse(
    payload: &[u8],
    content_type: Option<&str>,
    message: bool,
    max_text: usize,
) -> Result<Content, EnvelopeError> {
    let first = payload.iter().find(|b| !b.is_ascii_whitespace());
    let Some(&first) = first else {
        return Err(EnvelopeError::Empty);
    };
    let declared = content_type.map(|ct| (ct, format_of(ct)));
    let draft = match declared {
        Some((_, Some(Format::Json))) => json(payload)?,
        Some((_, Some(Format::MsgPack))) => msgpack(payload)?,
        Some((ct, None)) if ct.starts_with("text/") => text(payload)?,
        _ if first == b'{' => json(payload)?,
        _ if matches!(first, 0x80..=0x8f | 0xde | 0xdf) => msgpack(payload)?,
        _ => text(payload)?,
    };
    validate(draft, message, max_text)
}

fn json(payload: &[u8]) -> Result<Draft, EnvelopeError> {
    serde_json::from_slice(payload).map_err(|e| EnvelopeError::Json(e.to_string()))
}

fn msgpack(payload: &[u8]) -> Result<Draft, EnvelopeError> {
    rmp_serde::from_slice(payload).map_err(|e| EnvelopeError::MsgPack(e.to_string()))
}

fn text(payload: &[u8]) -> Result<Draft, EnvelopeError> {
    let t = std::str::from_utf8(payload).map_err(|_| EnvelopeError::Unreadable)?;
    Ok(Draft {
        t: Some(t.to_string()),
        ..Draft::default()
    })
}

/// Applies the rules of the draft's topic and turns it into content to store.
fn validate(d: Draft, message: bool, max_text: usize) -> Result<Content, EnvelopeError> {
    check_common(&d, max_text)?;
    let kind = if message {
        check_message(&d)?
    } else {
        check_event(&d)?
    };
    Ok(Content {
        kind,
        cid: d.cid,
        text: d.t,
        reply_to: d.re,
        thread: d.th,
        target: d.target,
        emoji: d.emoji,
        media: d.media.unwrap_or_default(),
    })
}

/// The rules for every draft: the client message id's length and the text's.
fn check_common(d: &Draft, max_text: usize) -> Result<(), Invalid> {
    if d.cid
        .as_ref()
        .is_some_and(|c| c.is_empty() || c.len() > MAX_CID_LEN)
    {
        return Err(Invalid::CidLength);
    }
    if d.t.as_ref().is_some_and(|t| t.len() > max_text) {
        return Err(Invalid::TextTooLong);
    }
    Ok(())
}

/// The rules for a message on `c/{conv}/m`: no event fields, a few media ids, something to show.
fn check_message(d: &Draft) -> Result<Kind, Invalid> {
    if d.op.is_some() || d.target.is_some() || d.emoji.is_some() {
        return Err(Invalid::EventFieldsOnMessage);
    }
    let media = d.media.as_deref().unwrap_or_default();
    if media.len() > MAX_MEDIA || media.iter().any(|m| m.is_empty() || m.len() > 64) {
        return Err(Invalid::TooManyMedia);
    }
    if media.is_empty() && d.t.as_deref().is_none_or(|t| t.trim().is_empty()) {
        return Err(Invalid::NothingToShow);
    }
    Ok(Kind::Msg)
}

/// The rules for an event on `c/{conv}/e`: a known op, a target, what the op needs, no media.
fn check_event(d: &Draft) -> Result<Kind, Invalid> {
    let kind = event_kind(d.op.as_deref())?;
    if d.target.is_none() {
        return Err(Invalid::NoTarget);
    }
    check_event_fields(kind, d)?;
    if d.media.is_some() {
        return Err(Invalid::MediaOnEvent);
    }
    Ok(kind)
}

/// The kind an event's `op` names.
fn event_kind(op: Option<&str>) -> Result<Kind, Invalid> {
    match op {
        Some("edit") => Ok(Kind::Edit),
        Some("delete") => Ok(Kind::Delete),
        Some("react") => Ok(Kind::React),
        Some("unreact") => Ok(Kind::Unreact),
        _ => Err(Invalid::UnknownOp),
    }
}

/// What each op needs: an edit some text, a reaction an emoji of 1 to 32 bytes.
fn check_event_fields(kind: Kind, d: &Draft) -> Result<(), Invalid> {
    match kind {
        Kind::Edit if d.t.as_deref().is_none_or(|t| t.trim().is_empty()) => Err(Invalid::EmptyEdit),
        Kind::React | Kind::Unreact
            if d.emoji
                .as_deref()
                .is_none_or(|e| e.is_empty() || e.len() > 32) =>
        {
            Err(Invalid::BadEmoji)
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::refusal::Refusal;

    #[test]
    fn formats_are_recognised() {
        let text = parse(b"hi there", None, true, 100).unwrap();
        assert_eq!(text.text.as_deref(), Some("hi there"));
        let json = parse(br#"{"cid":"c1","t":"hey","re":3}"#, None, true, 100).unwrap();
        assert_eq!((json.cid.as_deref(), json.reply_to), (Some("c1"), Some(3)));
        #[derive(Serialize)]
        struct M<'a> {
            cid: &'a str,
            t: &'a str,
        }
        let packed = rmp_serde::to_vec_named(&M {
            cid: "c2",
            t: "packed",
        })
        .unwrap();
        let mp = parse(&packed, None, true, 100).unwrap();
        assert_eq!(mp.text.as_deref(), Some("packed"));
        let declared = parse(b"{not json", Some("text/plain"), true, 100).unwrap();
        assert_eq!(declared.text.as_deref(), Some("{not json"));
    }

    #[test]
    fn bad_input_is_refused_with_a_reason() {
        let cases: &[(&[u8], bool, &str)] = &[
            (b"", true, "invalid_message"),
            (b"   ", true, "invalid_message"),
            (b"{\"t\":\"x\",\"seq\":5}", true, "bad_payload"),
            (b"{\"t\":\"x\",\"from\":\"bob\"}", true, "bad_payload"),
            (b"{broken", true, "bad_payload"),
            (b"\xff\xfe\xfd", true, "bad_payload"),
            (b"{\"cid\":\"c\"}", true, "invalid_message"),
            (
                b"{\"t\":\"x\",\"op\":\"edit\",\"target\":1}",
                true,
                "invalid_message",
            ),
            (b"{\"op\":\"edit\",\"target\":1}", false, "invalid_message"),
            (b"{\"op\":\"react\",\"target\":1}", false, "invalid_message"),
            (b"{\"op\":\"zap\",\"target\":1}", false, "invalid_message"),
            (b"{\"op\":\"delete\"}", false, "invalid_message"),
            (
                b"{\"t\":\"x\",\"re\":9223372036854775808}",
                true,
                "bad_payload",
            ),
            (
                b"{\"t\":\"x\",\"th\":18446744073709551615}",
                true,
                "bad_payload",
            ),
            (
                b"{\"op\":\"delete\",\"target\":9223372036854775808}",
                false,
                "bad_payload",
            ),
        ];
        for (payload, message, code) in cases {
            let err = parse(payload, None, *message, 100).unwrap_err();
            assert_eq!(
                Refusal::from(err.clone()).code(),
                *code,
                "{:?}: {err}",
                String::from_utf8_lossy(payload)
            );
        }
        assert!(parse(&[b'x'; 101], None, true, 100).is_err());
    }

    /// The store holds signed 64-bit integers: a larger number is refused in every format.
    #[test]
    fn sequence_numbers_above_the_store_range_are_refused() {
        #[derive(Serialize)]
        struct M {
            t: &'static str,
            re: u64,
        }
        let packed = |re| rmp_serde::to_vec_named(&M { t: "x", re }).unwrap();
        let max = parse(&packed(seq::MAX), None, true, 100).unwrap();
        assert_eq!(max.reply_to, Some(seq::MAX));
        let err = parse(&packed(seq::MAX + 1), None, true, 100).unwrap_err();
        assert_eq!(Refusal::from(err).code(), "bad_payload");
        let json = br#"{"op":"react","target":9223372036854775807,"emoji":"+1"}"#;
        assert_eq!(
            parse(json, None, false, 100).unwrap().target,
            Some(seq::MAX)
        );
    }

    #[test]
    fn rule_breaks_keep_their_messages() {
        let cases: &[(&[u8], bool, &str)] = &[
            (
                b"{\"cid\":\"\",\"t\":\"x\"}",
                true,
                "cid must be 1 to 64 bytes",
            ),
            (&[b'x'; 101], true, "text too long"),
            (
                b"{\"t\":\"x\",\"target\":1}",
                true,
                "op, target and emoji belong on c/{conv}/e",
            ),
            (b"{\"media\":[\"\"]}", true, "at most 16 media ids"),
            (b"{\"t\":\" \"}", true, "a message needs text (t) or media"),
            (
                b"{\"op\":\"zap\",\"target\":1}",
                false,
                "op must be edit, delete, react or unreact",
            ),
            (
                b"{\"op\":\"delete\"}",
                false,
                "target (a sequence number) is required",
            ),
            (
                b"{\"op\":\"edit\",\"target\":1}",
                false,
                "an edit needs text (t)",
            ),
            (
                b"{\"op\":\"unreact\",\"target\":1,\"emoji\":\"\"}",
                false,
                "a reaction needs an emoji of 1 to 32 bytes",
            ),
            (
                b"{\"op\":\"delete\",\"target\":1,\"media\":[]}",
                false,
                "media belong on messages",
            ),
        ];
        for (payload, message, text) in cases {
            let err = parse(payload, None, *message, 100).unwrap_err();
            assert!(matches!(err, EnvelopeError::Invalid(_)), "{err:?}");
            assert_eq!(err.to_string(), *text);
        }
    }

    #[test]
    fn events_parse() {
        let e = parse(
            br#"{"op":"react","target":4,"emoji":"+1"}"#,
            None,
            false,
            100,
        )
        .unwrap();
        assert_eq!(
            (e.kind, e.target, e.emoji.as_deref()),
            (Kind::React, Some(4), Some("+1"))
        );
        let d = parse(br#"{"op":"delete","target":2}"#, None, false, 100).unwrap();
        assert_eq!(d.kind, Kind::Delete);
    }

    #[test]
    fn envelopes_round_trip_in_both_formats() {
        let e = Envelope {
            id: 7,
            conv: "g.t".into(),
            seq: 3,
            from: "alice".into(),
            dev: "alice.phone".into(),
            ts: 1,
            k: Kind::Msg,
            cid: Some("c".into()),
            t: Some("hi".into()),
            re: None,
            th: None,
            target: None,
            emoji: None,
            media: Vec::new(),
        };
        let json = e.encode(Format::Json);
        assert_eq!(
            std::str::from_utf8(&json).unwrap(),
            r#"{"id":7,"conv":"g.t","seq":3,"from":"alice","dev":"alice.phone","ts":1,"k":"msg","cid":"c","t":"hi"}"#
        );
        let back: Envelope = rmp_serde::from_slice(&e.encode(Format::MsgPack)).unwrap();
        assert_eq!(back, e);
    }
}
