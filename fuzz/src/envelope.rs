//! The chat envelope (`chat::envelope::parse`) on any payload, content type and topic kind.
//!
//! Input: byte 0 picks the topic kind (bit 0: message or event), the declared content type
//! (bits 1..=3) and the text limit (bits 4..=7); the rest is the payload.
//!
//! Properties: what parses obeys the envelope rules; it survives the client encodings (JSON and
//! MessagePack drafts built from it parse to the same content) and the server ones (an
//! `Envelope` holding it decodes back equal); a plain UTF-8 payload read as text keeps its text.

use natter::chat::envelope::{self, Content, Envelope, Format, Kind, MAX_CID_LEN, MAX_MEDIA};
use serde_json::{json, Map, Value};

const CONTENT_TYPES: [Option<&str>; 8] = [
    None,
    None,
    Some("application/json"),
    Some("application/msgpack"),
    Some("text/plain"),
    Some("application/x-msgpack; charset=x"),
    Some("image/png"),
    Some(" application/json ;v=1"),
];

pub fn check(data: &[u8]) {
    let Some((&ctl, payload)) = data.split_first() else {
        return;
    };
    let message = ctl & 1 == 1;
    let content_type = CONTENT_TYPES[usize::from((ctl >> 1) & 0b111)];
    let max_text = [0, 1, 8, 64, 4096][usize::from(ctl >> 4) % 5];
    let Ok(content) = envelope::parse(payload, content_type, message, max_text) else {
        return;
    };
    check_rules(&content, message, max_text);
    if read_as_text(payload, content_type) {
        assert_eq!(content.text.as_deref().map(str::as_bytes), Some(payload));
    }
    for (ct, bytes) in drafts(&content) {
        let again = envelope::parse(&bytes, Some(ct), message, max_text);
        assert_eq!(again.as_ref(), Ok(&content), "re-encoded as {ct}");
    }
    let stored = stamp(&content);
    for format in [Format::Json, Format::MsgPack] {
        let bytes = stored.encode(format);
        let back: Envelope = match format {
            Format::Json => serde_json::from_slice(&bytes).expect("own JSON decodes"),
            Format::MsgPack => rmp_serde::from_slice(&bytes).expect("own MessagePack decodes"),
        };
        assert_eq!(back, stored, "{format:?}");
    }
}

/// The rules `parse` promises for what it accepts.
fn check_rules(c: &Content, message: bool, max_text: usize) {
    assert!(c
        .cid
        .as_ref()
        .is_none_or(|cid| (1..=MAX_CID_LEN).contains(&cid.len())));
    assert!(c.text.as_ref().is_none_or(|t| t.len() <= max_text));
    if message {
        assert_eq!(c.kind, Kind::Msg);
        assert!(c.target.is_none() && c.emoji.is_none());
        assert!(c.media.len() <= MAX_MEDIA);
        assert!(!c.media.is_empty() || c.text.as_ref().is_some_and(|t| !t.trim().is_empty()));
    } else {
        assert_ne!(c.kind, Kind::Msg);
        assert!(c.target.is_some() && c.media.is_empty());
    }
}

/// Whether `parse` took the payload as plain text (neither declared nor sniffed as JSON or
/// MessagePack).
fn read_as_text(payload: &[u8], content_type: Option<&str>) -> bool {
    match content_type {
        Some(ct) if envelope::format_of(ct).is_some() => false,
        Some(ct) if ct.starts_with("text/") => true,
        _ => {
            let first = payload.iter().find(|b| !b.is_ascii_whitespace());
            !matches!(first, Some(b'{' | 0x80..=0x8f | 0xde | 0xdf))
        }
    }
}

/// The draft a client would send for this content, as JSON and as MessagePack.
fn drafts(c: &Content) -> [(&'static str, Vec<u8>); 2] {
    let op = (c.kind != Kind::Msg).then(|| json!(c.kind.as_str()));
    let media = (!c.media.is_empty()).then(|| json!(c.media));
    let fields = [
        ("op", op),
        ("cid", c.cid.as_ref().map(|v| json!(v))),
        ("t", c.text.as_ref().map(|v| json!(v))),
        ("re", c.reply_to.map(|v| json!(v))),
        ("th", c.thread.map(|v| json!(v))),
        ("target", c.target.map(|v| json!(v))),
        ("emoji", c.emoji.as_ref().map(|v| json!(v))),
        ("media", media),
    ];
    let m: Map<String, Value> = fields
        .into_iter()
        .filter_map(|(k, v)| Some((k.to_string(), v?)))
        .collect();
    let draft = Value::Object(m);
    let packed = rmp_serde::to_vec_named(&draft).expect("a JSON value packs");
    [
        ("application/json", draft.to_string().into_bytes()),
        ("application/msgpack", packed),
    ]
}

/// The envelope the server would store and deliver for this content.
fn stamp(c: &Content) -> Envelope {
    Envelope {
        id: 1,
        conv: "g.fuzz".into(),
        seq: 1,
        from: "alice".into(),
        dev: "alice.phone".into(),
        ts: 0,
        k: c.kind,
        cid: c.cid.clone(),
        t: c.text.clone(),
        re: c.reply_to,
        th: c.thread,
        target: c.target,
        emoji: c.emoji.clone(),
        media: c.media.clone(),
    }
}
