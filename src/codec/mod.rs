//! The wire codec: rumqttc's `mqttbytes` for both protocol versions behind one packet type.
//!
//! The rest of the broker speaks MQTT 5.0 packets only (`v5::Packet`): 5.0 is a superset, so a
//! 3.1.1 packet converts up without loss, and on the way out a 5.0 packet converts down by
//! dropping what 3.1.1 cannot say (properties, reason codes beyond its few). That is how v5
//! properties never reach a 3.1.1 client (the rumqttd bug in `rumqttd-notes.md`). The
//! conversions themselves are in `convert`.
//!
//! Checks a server needs that a client library's codec does not make live here too: the protocol
//! level is read before choosing a decoder, and the fixed-header flags of every packet type are
//! verified (MQTT 5.0 §2.1.3).

use bytes::BytesMut;
use rumqttc::mqttbytes::{self as v4wire, v4};
use rumqttc::v5::mqttbytes::{self as v5wire, v5, QoS};

mod convert;

use convert::{down, up, write_v4_publish};

/// The protocol version of a connection, fixed by its CONNECT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V4,
    V5,
}

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("packet of {size} bytes exceeds the maximum of {max}")]
    TooLarge { size: usize, max: u32 },
    #[error("unsupported protocol level {0}")]
    UnsupportedLevel(u8),
    #[error("malformed packet: {0}")]
    Malformed(String),
    #[error("first packet is not CONNECT")]
    NotConnect,
}

impl From<v5wire::Error> for CodecError {
    fn from(e: v5wire::Error) -> Self {
        match e {
            v5wire::Error::PayloadSizeLimitExceeded { pkt_size, max } => CodecError::TooLarge {
                size: pkt_size,
                max,
            },
            other => CodecError::Malformed(other.to_string()),
        }
    }
}

impl From<v4wire::Error> for CodecError {
    fn from(e: v4wire::Error) -> Self {
        CodecError::Malformed(e.to_string())
    }
}

/// Finds the protocol level of a CONNECT at the start of `buf`. `Ok(None)` means more bytes are
/// needed.
pub fn connect_version(buf: &[u8]) -> Result<Option<Version>, CodecError> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    if first != 0x10 {
        return Err(CodecError::NotConnect);
    }
    // Skip the fixed header.
    let Some((i, _)) = fixed_header(buf)? else {
        return Ok(None);
    };
    // Protocol name: a 2-byte length then "MQTT" (or "MQIsdp" for 3.1), then the level.
    let Some(name_len) = buf.get(i..i + 2) else {
        return Ok(None);
    };
    let name_len = u16::from_be_bytes([name_len[0], name_len[1]]) as usize;
    let Some(&level) = buf.get(i + 2 + name_len) else {
        return Ok(None);
    };
    match level {
        4 => Ok(Some(Version::V4)),
        5 => Ok(Some(Version::V5)),
        other => Err(CodecError::UnsupportedLevel(other)),
    }
}

/// Reads one packet from the front of `buf`. `Ok(None)` means more bytes are needed.
pub fn read(
    version: Version,
    buf: &mut BytesMut,
    max_size: u32,
) -> Result<Option<v5::Packet>, CodecError> {
    if buf.len() < 2 {
        return Ok(None);
    }
    check_flags(buf[0])?;
    if version == Version::V5 && buf[0] == 0xE0 {
        if let Some(packet) = short_disconnect(buf)? {
            return Ok(Some(packet));
        }
    }
    // MQTT counts the limit against the whole packet (fixed header included), mqttbytes against
    // the remaining length only: the check is made here, as soon as the header is in, so a
    // packet exactly as large as the advertised maximum passes and an oversized one is refused
    // before its body is read.
    let Some((header, remaining)) = fixed_header(buf)? else {
        return Ok(None);
    };
    let size = header + remaining;
    if size > max_size as usize {
        return Err(CodecError::TooLarge {
            size,
            max: max_size,
        });
    }
    // "Insufficient bytes" means "wait for more" only while nothing was consumed: mqttbytes
    // splits a whole packet off the buffer before parsing it, and a packet that ends where its
    // property length should start reports the same error. That packet is malformed, not
    // incomplete (found by the fuzz target).
    let before = buf.len();
    match version {
        Version::V5 => match v5::Packet::read(buf, None) {
            Ok(packet) => Ok(Some(packet)),
            Err(v5wire::Error::InsufficientBytes(_)) if buf.len() == before => Ok(None),
            Err(e) => Err(e.into()),
        },
        Version::V4 => match v4::Packet::read(buf, usize::MAX) {
            Ok(packet) => Ok(Some(up(packet))),
            Err(v4wire::Error::InsufficientBytes(_)) if buf.len() == before => Ok(None),
            Err(e) => Err(e.into()),
        },
    }
}

/// Whether `buf` starts with a whole packet (bytes the next `read` would consume); a broken
/// header counts as whole, so that `read` gets to report it.
pub fn starts_with_complete_packet(buf: &[u8]) -> bool {
    match fixed_header(buf) {
        Ok(Some((header, remaining))) => buf.len() >= header + remaining,
        Ok(None) => false,
        Err(_) => true,
    }
}

/// The fixed header at the front of `buf`: its own length (type byte and remaining-length
/// varint) and the remaining length. `Ok(None)` while the varint is incomplete.
fn fixed_header(buf: &[u8]) -> Result<Option<(usize, usize)>, CodecError> {
    let mut remaining = 0usize;
    // The remaining length takes 1..=4 bytes of 7 bits each, least significant first (§1.5.5).
    for i in 0..4 {
        let Some(&b) = buf.get(1 + i) else {
            return Ok(None);
        };
        remaining |= usize::from(b & 0x7F) << (7 * i);
        if b & 0x80 == 0 {
            return Ok(Some((2 + i, remaining)));
        }
    }
    Err(CodecError::Malformed("remaining length".into()))
}

/// A 5.0 DISCONNECT may stop after the fixed header (reason 0x00) or after the reason code (no
/// properties, §3.14.2.2.1). mqttbytes rejects the first form and misreads the second, so both
/// are decoded here; longer forms go to the codec.
fn short_disconnect(buf: &mut BytesMut) -> Result<Option<v5::Packet>, CodecError> {
    let reason = match buf[1] {
        0 => 0,
        1 => match buf.get(2) {
            Some(&r) => r,
            None => return Ok(None),
        },
        _ => return Ok(None),
    };
    let reason = v5::DisconnectReasonCode::try_from(reason)
        .map_err(|_| CodecError::Malformed(format!("DISCONNECT reason {reason:#04x}")))?;
    let _ = buf.split_to(2 + usize::from(buf[1]));
    Ok(Some(v5::Packet::Disconnect(v5::Disconnect::new(reason))))
}

/// Rejects fixed-header flags the specification reserves (§2.1.3): PUBREL, SUBSCRIBE and
/// UNSUBSCRIBE carry 0b0010, PUBLISH may not be QoS 3, everything else carries 0.
fn check_flags(byte1: u8) -> Result<(), CodecError> {
    let (kind, flags) = (byte1 >> 4, byte1 & 0x0F);
    let ok = match kind {
        3 => (flags >> 1) & 0b11 != 0b11,
        6 | 8 | 10 => flags == 0b0010,
        1..=15 => flags == 0,
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(CodecError::Malformed(format!(
            "invalid fixed header byte {byte1:#04x}"
        )))
    }
}

/// Writes one packet for a client of `version`. Returns `false` when the packet has no 3.1.1 form
/// (a server DISCONNECT, AUTH): the caller then just closes.
pub fn write(
    version: Version,
    packet: &v5::Packet,
    buf: &mut BytesMut,
) -> Result<bool, CodecError> {
    match version {
        Version::V5 => {
            match packet {
                // mqttbytes writes a DISCONNECT without properties with a remaining length one
                // short (it counts the reason code, not the empty property length it then
                // writes), so that form is written here: reason code, property length 0.
                v5::Packet::Disconnect(d) if d.properties.is_none() => {
                    buf.extend_from_slice(&[0xE0, 2, d.reason_code as u8, 0]);
                }
                _ => {
                    packet.write(buf, None)?;
                }
            }
            Ok(true)
        }
        Version::V4 => {
            if let v5::Packet::Publish(p) = packet {
                write_v4_publish(p, buf)?;
                return Ok(true);
            }
            match down(packet) {
                Some(p) => {
                    p.write(buf, usize::MAX)?;
                    Ok(true)
                }
                None => Ok(false),
            }
        }
    }
}

/// The QoS a subscriber receives: the lower of the publication's and the subscription's.
pub fn min_qos(a: QoS, b: QoS) -> QoS {
    if (a as u8) <= (b as u8) {
        a
    } else {
        b
    }
}

/// The higher of two QoS levels.
pub fn max_qos(a: QoS, b: QoS) -> QoS {
    if (a as u8) >= (b as u8) {
        a
    } else {
        b
    }
}

#[cfg(test)]
mod tests {
    use super::convert::qos_down;
    use super::*;
    use bytes::Bytes;

    fn v4_bytes(p: v4::Packet) -> BytesMut {
        let mut b = BytesMut::new();
        p.write(&mut b, usize::MAX).unwrap();
        b
    }

    #[test]
    fn a_3_1_1_publish_is_written_as_mqttbytes_writes_it() {
        // Payload sizes around each boundary of the remaining length's encoding.
        for size in [0, 100, 121, 122, 16_000, 16_380, 16_390, 2_100_000] {
            for (qos, dup, retain) in [
                (QoS::AtMostOnce, false, false),
                (QoS::AtLeastOnce, true, false),
                (QoS::ExactlyOnce, false, true),
            ] {
                let payload = Bytes::from(vec![b'x'; size]);
                let mut p = v5::Publish::new("a/b/ü", qos, payload.clone(), None);
                p.pkid = if qos == QoS::AtMostOnce { 0 } else { 513 };
                p.dup = dup;
                p.retain = retain;
                p.properties = Some(v5::PublishProperties {
                    content_type: Some("text/plain".into()),
                    ..Default::default()
                });
                let mut ours = BytesMut::new();
                assert!(write(Version::V4, &v5::Packet::Publish(p.clone()), &mut ours).unwrap());
                let mut theirs = v4::Publish::new("a/b/ü", qos_down(qos), payload);
                theirs.pkid = p.pkid;
                theirs.dup = dup;
                theirs.retain = retain;
                assert_eq!(
                    ours,
                    v4_bytes(v4::Packet::Publish(theirs)),
                    "{size} {qos:?}"
                );
            }
        }
    }

    #[test]
    fn detects_version_from_partial_connect() {
        let mut c = v4::Connect::new("c1");
        c.keep_alive = 30;
        let full = v4_bytes(v4::Packet::Connect(c));
        for n in 0..9 {
            assert_eq!(connect_version(&full[..n]).unwrap(), None, "prefix {n}");
        }
        assert_eq!(connect_version(&full).unwrap(), Some(Version::V4));
        let mut v5c = BytesMut::new();
        v5::Packet::Connect(
            v5::Connect {
                keep_alive: 5,
                client_id: "x".into(),
                clean_start: true,
                properties: None,
            },
            None,
            None,
        )
        .write(&mut v5c, None)
        .unwrap();
        assert_eq!(connect_version(&v5c).unwrap(), Some(Version::V5));
        assert!(matches!(
            connect_version(&[0x30, 0]),
            Err(CodecError::NotConnect)
        ));
        assert!(matches!(
            connect_version(&[0x10, 7, 0, 4, b'M', b'Q', b'T', b'T', 3]),
            Err(CodecError::UnsupportedLevel(3))
        ));
    }

    #[test]
    fn v4_publish_round_trips_through_v5() {
        let p = v4::Publish {
            dup: false,
            qos: v4wire::QoS::AtLeastOnce,
            retain: true,
            topic: "a/b".into(),
            pkid: 7,
            payload: Bytes::from_static(b"hi"),
        };
        let mut buf = v4_bytes(v4::Packet::Publish(p.clone()));
        let packet = read(Version::V4, &mut buf, 1024).unwrap().unwrap();
        let mut out = BytesMut::new();
        assert!(write(Version::V4, &packet, &mut out).unwrap());
        assert_eq!(out, v4_bytes(v4::Packet::Publish(p)));
    }

    #[test]
    fn v5_properties_never_reach_v4() {
        let mut props = v5::PublishProperties::default();
        props.user_properties.push(("k".into(), "v".into()));
        props.content_type = Some("text/plain".into());
        let p = v5::Publish {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: false,
            topic: Bytes::from_static(b"t"),
            pkid: 0,
            payload: Bytes::from_static(b"x"),
            properties: Some(props),
        };
        let mut out = BytesMut::new();
        write(Version::V4, &v5::Packet::Publish(p), &mut out).unwrap();
        assert_eq!(&out[..], &[0x30, 4, 0, 1, b't', b'x']);
    }

    #[test]
    fn partial_input_needs_more_and_oversize_is_refused() {
        let p = v4::Packet::Publish(v4::Publish::new(
            "t",
            v4wire::QoS::AtMostOnce,
            vec![0u8; 100],
        ));
        let full = v4_bytes(p);
        for n in 0..full.len() {
            let mut part = BytesMut::from(&full[..n]);
            assert!(
                read(Version::V4, &mut part, 1024).unwrap().is_none(),
                "prefix {n}"
            );
        }
        let mut big = full.clone();
        assert!(matches!(
            read(Version::V4, &mut big, 50),
            Err(CodecError::TooLarge { .. })
        ));
    }

    #[test]
    fn the_limit_counts_the_whole_packet() {
        let p = v4::Packet::Publish(v4::Publish::new(
            "t",
            v4wire::QoS::AtMostOnce,
            vec![0u8; 200],
        ));
        let full = v4_bytes(p);
        let size = full.len() as u32;
        assert!(read(Version::V4, &mut full.clone(), size)
            .unwrap()
            .is_some());
        assert!(matches!(
            read(Version::V4, &mut full.clone(), size - 1),
            Err(CodecError::TooLarge { .. })
        ));
        // Refused from the header alone, before the body has arrived.
        assert!(matches!(
            read(Version::V5, &mut BytesMut::from(&full[..3]), size - 1),
            Err(CodecError::TooLarge { .. })
        ));
    }

    #[test]
    fn complete_packets_are_recognised_from_the_header() {
        let full = v4_bytes(v4::Packet::Publish(v4::Publish::new(
            "t",
            v4wire::QoS::AtMostOnce,
            vec![0u8; 200],
        )));
        for n in 0..full.len() {
            assert!(!starts_with_complete_packet(&full[..n]), "prefix {n}");
        }
        assert!(starts_with_complete_packet(&full));
        assert!(starts_with_complete_packet(&[0x30, 0xFF, 0xFF, 0xFF, 0xFF]));
    }

    #[test]
    fn reserved_flags_are_malformed() {
        for bytes in [
            &[0x60u8, 2, 0, 1][..],
            &[0x36, 2, 0, 1],
            &[0xC1, 0],
            &[0x80, 2, 0, 1],
        ] {
            let mut b = BytesMut::from(bytes);
            assert!(
                matches!(
                    read(Version::V4, &mut b, 1024),
                    Err(CodecError::Malformed(_))
                ),
                "{bytes:?}"
            );
        }
    }

    #[test]
    fn v5_disconnect_encodes_with_a_correct_length_and_reads_back() {
        let mut out = BytesMut::new();
        let d = v5::Packet::Disconnect(v5::Disconnect::new(
            v5::DisconnectReasonCode::KeepAliveTimeout,
        ));
        write(Version::V5, &d, &mut out).unwrap();
        assert_eq!(&out[..], &[0xE0, 2, 0x8D, 0]);
        assert_eq!(read(Version::V5, &mut out, 1024).unwrap(), Some(d));
        let mut reason_only = BytesMut::from(&[0xE0u8, 1, 0x04][..]);
        assert!(matches!(
            read(Version::V5, &mut reason_only, 1024).unwrap(),
            Some(v5::Packet::Disconnect(v5::Disconnect {
                reason_code: v5::DisconnectReasonCode::DisconnectWithWillMessage,
                ..
            }))
        ));
        assert!(reason_only.is_empty());
    }

    #[test]
    fn short_v5_disconnect_is_normal() {
        let mut b = BytesMut::from(&[0xE0u8, 0][..]);
        let p = read(Version::V5, &mut b, 1024).unwrap().unwrap();
        assert!(matches!(
            p,
            v5::Packet::Disconnect(v5::Disconnect {
                reason_code: v5::DisconnectReasonCode::NormalDisconnection,
                ..
            })
        ));
        assert!(b.is_empty());
    }
}
