//! Garbage in, no panic out: the deterministic, in-tree half of `fuzz/` (which needs cargo fuzz).
//!
//! Feeds `natter::codec::read` (both versions, whole and in chunks, the way
//! `edge::inbound` reads: append bytes, read until `Ok(None)` or an error) with
//! (a) every prefix of valid packets of every type, (b) a few thousand seeded pseudo-random and
//! mutated byte strings, (c) the inputs the fuzzer has turned up. Every packet that decodes is
//! written back with `codec::write` for both versions.
//!
//! Besides "never panics", every single `read` call is checked against an independent framing of
//! the buffer: `Ok(Some)` consumes exactly one whole frame; `Ok(None)` consumes nothing and only
//! happens while the frame is incomplete (the fuzzer once found a complete 5.0 frame without its
//! property length coming back as `Ok(None)` after being consumed; `codec::read` now calls it
//! malformed, and `ok_none_never_consumes_a_frame` keeps it that way).
//!
//! `cargo test --test codec_garbage -- --ignored write_fuzz_seeds` writes the valid packets as a
//! seed corpus for the fuzzer into `fuzz/corpus/packet_read/`.

use bytes::{Bytes, BytesMut};
use natter::codec::{self, Version};
use rumqttc::mqttbytes::{self as v4wire, v4};
use rumqttc::v5::mqttbytes::{v5, QoS};

/// The configured default (`config/natter.toml`).
const MAX: u32 = 1_048_576;

// ---------------------------------------------------------------------------------------------
// Valid packets
// ---------------------------------------------------------------------------------------------

fn v4_bytes(p: v4::Packet) -> Vec<u8> {
    let mut b = BytesMut::new();
    p.write(&mut b, usize::MAX).unwrap();
    b.to_vec()
}

/// Through our own writer: mqttbytes writes a property-less 5.0 DISCONNECT one byte short.
fn v5_bytes(p: v5::Packet) -> Vec<u8> {
    let mut b = BytesMut::new();
    assert!(codec::write(Version::V5, &p, &mut b).unwrap());
    b.to_vec()
}

fn user() -> Vec<(String, String)> {
    vec![("k".into(), "v".into()), ("name".into(), "ünï".into())]
}

/// One or more encodings of every 3.1.1 packet type.
fn v4_packets() -> Vec<Vec<u8>> {
    let q0 = v4wire::QoS::AtMostOnce;
    let q1 = v4wire::QoS::AtLeastOnce;
    let q2 = v4wire::QoS::ExactlyOnce;
    let mut connect = v4::Connect::new("client-1");
    connect.keep_alive = 30;
    let mut full = v4::Connect::new("c2");
    full.clean_session = false;
    full.last_will = Some(v4::LastWill::new("will/t", "bye", q1, true));
    full.login = Some(v4::Login::new("user", "pass"));
    let mut qos2 = v4::Publish::new("a/b/c", q2, "payload");
    qos2.pkid = 65535;
    qos2.dup = true;
    qos2.retain = true;
    let mut qos1 = v4::Publish::new("a", q1, vec![7u8; 200]);
    qos1.pkid = 1;
    let mut sub = v4::Subscribe::new("a/+", q1);
    sub.pkid = 9;
    sub.filters.push(v4::SubscribeFilter::new("#".into(), q2));
    let mut unsub = v4::Unsubscribe::new("a/+");
    unsub.pkid = 10;
    unsub.topics.push("b/#".into());
    vec![
        v4_bytes(v4::Packet::Connect(connect)),
        v4_bytes(v4::Packet::Connect(full)),
        v4_bytes(v4::Packet::ConnAck(v4::ConnAck::new(
            v4::ConnectReturnCode::Success,
            true,
        ))),
        v4_bytes(v4::Packet::Publish(v4::Publish::new("t", q0, ""))),
        v4_bytes(v4::Packet::Publish(qos1)),
        v4_bytes(v4::Packet::Publish(qos2)),
        // A remaining length of 3 bytes.
        v4_bytes(v4::Packet::Publish(v4::Publish::new(
            "big",
            q0,
            vec![1u8; 16_400],
        ))),
        v4_bytes(v4::Packet::PubAck(v4::PubAck::new(5))),
        v4_bytes(v4::Packet::PubRec(v4::PubRec::new(6))),
        v4_bytes(v4::Packet::PubRel(v4::PubRel::new(7))),
        v4_bytes(v4::Packet::PubComp(v4::PubComp::new(8))),
        v4_bytes(v4::Packet::Subscribe(sub)),
        v4_bytes(v4::Packet::SubAck(v4::SubAck::new(
            9,
            vec![
                v4::SubscribeReasonCode::Success(q1),
                v4::SubscribeReasonCode::Failure,
            ],
        ))),
        v4_bytes(v4::Packet::Unsubscribe(unsub)),
        v4_bytes(v4::Packet::UnsubAck(v4::UnsubAck::new(10))),
        v4_bytes(v4::Packet::PingReq),
        v4_bytes(v4::Packet::PingResp),
        v4_bytes(v4::Packet::Disconnect),
    ]
}

/// One or more encodings of every 5.0 packet type, with and without properties.
fn v5_packets() -> Vec<Vec<u8>> {
    let connect = v5::Connect {
        keep_alive: 60,
        client_id: "client-5".into(),
        clean_start: true,
        properties: None,
    };
    let connect_props = v5::ConnectProperties {
        session_expiry_interval: Some(3600),
        receive_maximum: Some(10),
        max_packet_size: Some(4096),
        topic_alias_max: Some(5),
        request_response_info: Some(1),
        request_problem_info: Some(0),
        user_properties: user(),
        authentication_method: Some("PLAIN".into()),
        authentication_data: Some(Bytes::from_static(b"\0u\0p")),
    };
    let will = v5::LastWill {
        topic: Bytes::from_static(b"will/t"),
        message: Bytes::from_static(b"bye"),
        qos: QoS::ExactlyOnce,
        retain: true,
        properties: Some(v5::LastWillProperties {
            delay_interval: Some(5),
            payload_format_indicator: Some(1),
            message_expiry_interval: Some(60),
            content_type: Some("text/plain".into()),
            response_topic: Some("resp".into()),
            correlation_data: Some(Bytes::from_static(b"cd")),
            user_properties: user(),
        }),
    };
    let login = v5::Login {
        username: "user".into(),
        password: "pass".into(),
    };
    let publish_props = v5::PublishProperties {
        payload_format_indicator: Some(1),
        message_expiry_interval: Some(10),
        topic_alias: Some(3),
        response_topic: Some("r/t".into()),
        correlation_data: Some(Bytes::from_static(b"id-1")),
        user_properties: user(),
        subscription_identifiers: vec![1, 200, 268_435_455],
        content_type: Some("application/json".into()),
    };
    let publish = |qos, pkid, props, payload: &'static [u8]| {
        v5::Packet::Publish(v5::Publish {
            dup: qos == QoS::ExactlyOnce,
            qos,
            retain: qos != QoS::AtMostOnce,
            topic: Bytes::from_static(b"a/b"),
            pkid,
            payload: Bytes::from_static(payload),
            properties: props,
        })
    };
    let reason = Some("because".to_string());
    let mut subscribe = v5::Subscribe::new_many(
        [
            v5::Filter::new("a/+", QoS::AtMostOnce),
            v5::Filter {
                path: "$share/g/b/#".into(),
                qos: QoS::ExactlyOnce,
                nolocal: true,
                preserve_retain: true,
                retain_forward_rule: v5::RetainForwardRule::Never,
            },
        ],
        Some(v5::SubscribeProperties {
            id: Some(42),
            user_properties: user(),
        }),
    );
    subscribe.pkid = 11;
    let big: &'static [u8] = Box::leak(vec![2u8; 16_400].into_boxed_slice());
    vec![
        v5_bytes(v5::Packet::Connect(connect.clone(), None, None)),
        v5_bytes(v5::Packet::Connect(
            v5::Connect {
                properties: Some(connect_props),
                clean_start: false,
                ..connect
            },
            Some(will),
            Some(login),
        )),
        v5_bytes(v5::Packet::ConnAck(v5::ConnAck {
            session_present: false,
            code: v5::ConnectReturnCode::Success,
            properties: None,
        })),
        v5_bytes(v5::Packet::ConnAck(v5::ConnAck {
            session_present: true,
            code: v5::ConnectReturnCode::NotAuthorized,
            properties: Some(v5::ConnAckProperties {
                session_expiry_interval: Some(1),
                receive_max: Some(2),
                max_qos: Some(1),
                retain_available: Some(1),
                max_packet_size: Some(1024),
                assigned_client_identifier: Some("auto-1".into()),
                topic_alias_max: Some(4),
                reason_string: reason.clone(),
                user_properties: user(),
                wildcard_subscription_available: Some(1),
                subscription_identifiers_available: Some(1),
                shared_subscription_available: Some(0),
                server_keep_alive: Some(30),
                response_information: Some("info".into()),
                server_reference: Some("other".into()),
                authentication_method: Some("PLAIN".into()),
                authentication_data: Some(Bytes::from_static(b"x")),
            }),
        })),
        v5_bytes(publish(QoS::AtMostOnce, 0, None, b"")),
        v5_bytes(publish(QoS::AtLeastOnce, 1, Some(publish_props), b"{}")),
        v5_bytes(publish(QoS::ExactlyOnce, 65535, None, b"payload")),
        v5_bytes(publish(QoS::AtMostOnce, 0, None, big)),
        v5_bytes(v5::Packet::PubAck(v5::PubAck::new(5, None))),
        v5_bytes(v5::Packet::PubAck(v5::PubAck {
            pkid: 5,
            reason: v5::PubAckReason::NoMatchingSubscribers,
            properties: Some(v5::PubAckProperties {
                reason_string: reason.clone(),
                user_properties: user(),
            }),
        })),
        v5_bytes(v5::Packet::PubRec(v5::PubRec::new(6, None))),
        v5_bytes(v5::Packet::PubRec(v5::PubRec {
            pkid: 6,
            reason: v5::PubRecReason::QuotaExceeded,
            properties: Some(v5::PubRecProperties {
                reason_string: reason.clone(),
                user_properties: user(),
            }),
        })),
        v5_bytes(v5::Packet::PubRel(v5::PubRel::new(7, None))),
        v5_bytes(v5::Packet::PubRel(v5::PubRel {
            pkid: 7,
            reason: v5::PubRelReason::PacketIdentifierNotFound,
            properties: Some(v5::PubRelProperties {
                reason_string: reason.clone(),
                user_properties: user(),
            }),
        })),
        v5_bytes(v5::Packet::PubComp(v5::PubComp::new(8, None))),
        v5_bytes(v5::Packet::PubComp(v5::PubComp {
            pkid: 8,
            reason: v5::PubCompReason::PacketIdentifierNotFound,
            properties: Some(v5::PubCompProperties {
                reason_string: reason.clone(),
                user_properties: user(),
            }),
        })),
        v5_bytes(v5::Packet::Subscribe(subscribe)),
        v5_bytes(v5::Packet::SubAck(v5::SubAck {
            pkid: 11,
            return_codes: vec![
                v5::SubscribeReasonCode::Success(QoS::AtLeastOnce),
                v5::SubscribeReasonCode::NotAuthorized,
            ],
            properties: Some(v5::SubAckProperties {
                reason_string: reason.clone(),
                user_properties: user(),
            }),
        })),
        v5_bytes(v5::Packet::Unsubscribe(v5::Unsubscribe {
            pkid: 12,
            filters: vec!["a/+".into(), "b/#".into()],
            properties: Some(v5::UnsubscribeProperties {
                user_properties: user(),
            }),
        })),
        v5_bytes(v5::Packet::Unsubscribe(v5::Unsubscribe {
            pkid: 13,
            filters: vec!["c".into()],
            properties: None,
        })),
        v5_bytes(v5::Packet::UnsubAck(v5::UnsubAck {
            pkid: 12,
            reasons: vec![
                v5::UnsubAckReason::Success,
                v5::UnsubAckReason::NoSubscriptionExisted,
            ],
            properties: None,
        })),
        v5_bytes(v5::Packet::PingReq(v5::PingReq)),
        v5_bytes(v5::Packet::PingResp(v5::PingResp)),
        // The three DISCONNECT forms (§3.14.2.2.1) and one with properties.
        vec![0xE0, 0x00],
        vec![0xE0, 0x01, 0x04],
        v5_bytes(v5::Packet::Disconnect(v5::Disconnect::new(
            v5::DisconnectReasonCode::KeepAliveTimeout,
        ))),
        v5_bytes(v5::Packet::Disconnect(v5::Disconnect {
            reason_code: v5::DisconnectReasonCode::DisconnectWithWillMessage,
            properties: Some(v5::DisconnectProperties {
                session_expiry_interval: Some(0),
                reason_string: reason,
                user_properties: user(),
                server_reference: None,
            }),
        })),
    ]
}

/// A 5.0 AUTH (reason 0x18 Continue, no properties): well framed, but mqttbytes has no decoder
/// for it, so a whole one is an error, never a packet.
const V5_AUTH: [u8; 4] = [0xF0, 0x02, 0x18, 0x00];

fn packets(version: Version) -> Vec<Vec<u8>> {
    match version {
        Version::V4 => v4_packets(),
        Version::V5 => v5_packets(),
    }
}

// ---------------------------------------------------------------------------------------------
// The checked reader
// ---------------------------------------------------------------------------------------------

/// The frame at the front of a buffer, found independently of the codec.
#[derive(Debug, PartialEq)]
enum Frame {
    /// More bytes could complete it.
    Incomplete,
    /// The whole frame, this many bytes, is there.
    Complete(usize),
    /// A remaining length of more than four bytes: nothing can complete it.
    BadLength,
}

fn frame(buf: &[u8]) -> Frame {
    let mut remaining = 0usize;
    for i in 0..4 {
        let Some(&b) = buf.get(1 + i) else {
            return Frame::Incomplete;
        };
        remaining |= usize::from(b & 0x7F) << (7 * i);
        if b & 0x80 == 0 {
            let total = 2 + i + remaining;
            return if buf.len() >= total {
                Frame::Complete(total)
            } else {
                Frame::Incomplete
            };
        }
    }
    Frame::BadLength
}

/// What feeding one stream did.
#[derive(Debug, PartialEq)]
struct Outcome {
    packets: Vec<v5::Packet>,
    error: bool,
    left: usize,
}

struct Reader {
    version: Version,
    max: u32,
}

impl Reader {
    fn new(version: Version, max: u32) -> Self {
        Reader { version, max }
    }

    /// One `codec::read`, checked against `frame`.
    fn read_one(&mut self, buf: &mut BytesMut) -> Result<Option<v5::Packet>, ()> {
        let framed = frame(buf);
        let len = buf.len();
        // What the error messages show: the whole frame when there is one, else the start.
        let shown = match framed {
            Frame::Complete(total) => buf[..total].to_vec(),
            _ => buf[..len.min(8)].to_vec(),
        };
        let result = codec::read(self.version, buf, self.max);
        let consumed = len - buf.len();
        match &result {
            Ok(Some(packet)) => {
                assert_eq!(
                    framed,
                    Frame::Complete(consumed),
                    "{:?} decoded {packet:?} from {consumed} bytes of {shown:02x?}",
                    self.version
                );
                reencode(packet);
            }
            Ok(None) => {
                assert_eq!(
                    consumed, 0,
                    "{:?}: Ok(None) consumed {consumed} of {len} bytes ({framed:?}) {shown:02x?}",
                    self.version
                );
                assert_eq!(
                    framed,
                    Frame::Incomplete,
                    "{:?}: Ok(None) for a complete frame {shown:02x?}",
                    self.version
                );
            }
            Err(_) => {}
        }
        result.map_err(|_| ())
    }

    /// Appends `stream` in chunks of the given sizes (the rest in one), reading until
    /// `Ok(None)` or an error after each, as `Connection::handle_buffered` does.
    fn feed(&mut self, stream: &[u8], chunks: &mut dyn Iterator<Item = usize>) -> Outcome {
        let mut buf = BytesMut::new();
        let mut packets = Vec::new();
        let mut rest = stream;
        loop {
            let n = chunks
                .next()
                .unwrap_or(rest.len())
                .clamp(1, rest.len().max(1));
            let n = n.min(rest.len());
            buf.extend_from_slice(&rest[..n]);
            rest = &rest[n..];
            loop {
                match self.read_one(&mut buf) {
                    Ok(Some(p)) => packets.push(p),
                    Ok(None) => break,
                    Err(()) => {
                        return Outcome {
                            packets,
                            error: true,
                            left: 0,
                        }
                    }
                }
            }
            if rest.is_empty() {
                return Outcome {
                    packets,
                    error: false,
                    left: buf.len(),
                };
            }
        }
    }

    /// Whole, byte by byte and in seeded random chunks; all three must agree.
    fn feed_all_ways(&mut self, stream: &[u8], rng: &mut XorShift) -> Outcome {
        let whole = self.feed(stream, &mut std::iter::empty());
        let bytewise = self.feed(stream, &mut std::iter::repeat(1));
        let mut chunk_rng = XorShift(rng.next() | 1);
        let chunked = self.feed(
            stream,
            &mut std::iter::from_fn(|| Some(1 + chunk_rng.below(17))),
        );
        assert_eq!(
            whole, bytewise,
            "{:?} bytewise: {stream:02x?}",
            self.version
        );
        assert_eq!(whole, chunked, "{:?} chunked: {stream:02x?}", self.version);
        whole
    }
}

fn reencode(packet: &v5::Packet) {
    for version in [Version::V4, Version::V5] {
        let mut out = BytesMut::new();
        let _ = codec::write(version, packet, &mut out);
    }
}

/// xorshift64: deterministic, no dependency.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn byte(&mut self) -> u8 {
        self.next() as u8
    }
}

const VERSIONS: [Version; 2] = [Version::V4, Version::V5];

// ---------------------------------------------------------------------------------------------
// (a) valid packets and every prefix
// ---------------------------------------------------------------------------------------------

#[test]
fn every_strict_prefix_of_a_valid_packet_needs_more_bytes() {
    for version in VERSIONS {
        let mut reader = Reader::new(version, MAX);
        let mut all = packets(version);
        if version == Version::V5 {
            all.push(V5_AUTH.to_vec());
        }
        for bytes in &all {
            for n in 0..bytes.len() {
                let mut part = BytesMut::from(&bytes[..n]);
                let result = reader.read_one(&mut part);
                assert!(
                    matches!(result, Ok(None)) && part.len() == n,
                    "{version:?}: prefix {n} of {bytes:02x?} gave {result:?}"
                );
            }
        }
    }
}

#[test]
fn every_valid_packet_decodes_whole_and_reencodes() {
    for version in VERSIONS {
        let mut reader = Reader::new(version, MAX);
        let mut v5_reader = Reader::new(Version::V5, MAX);
        for bytes in packets(version) {
            let mut buf = BytesMut::from(&bytes[..]);
            let packet = reader
                .read_one(&mut buf)
                .unwrap_or_else(|()| panic!("{version:?}: {bytes:02x?} is malformed"))
                .unwrap_or_else(|| panic!("{version:?}: {bytes:02x?} needs more"));
            assert!(buf.is_empty(), "{version:?}: {bytes:02x?}");
            // What we write for a 5.0 client reads back as the same kind of packet. (Not the
            // acks only a server sends: the 3.1.1 → 5.0 conversion drops their codes.)
            let server_ack = matches!(packet, v5::Packet::SubAck(_) | v5::Packet::UnsubAck(_));
            let mut out = BytesMut::new();
            if !server_ack && codec::write(Version::V5, &packet, &mut out).is_ok() {
                let written = out.to_vec();
                let again = v5_reader
                    .read_one(&mut out)
                    .unwrap_or_else(|()| panic!("{version:?}: {packet:?} wrote {written:02x?}"))
                    .unwrap();
                assert_eq!(
                    std::mem::discriminant(&again),
                    std::mem::discriminant(&packet)
                );
            }
        }
        if version == Version::V5 {
            let mut auth = BytesMut::from(&V5_AUTH[..]);
            assert!(reader.read_one(&mut auth).is_err());
        }
    }
}

#[test]
fn a_stream_of_all_packets_reads_the_same_in_any_chunking() {
    let mut rng = XorShift(0x5eed_0001);
    for version in VERSIONS {
        let all = packets(version);
        let stream: Vec<u8> = all.concat();
        let mut reader = Reader::new(version, MAX);
        let whole = reader.feed_all_ways(&stream, &mut rng);
        assert_eq!(whole.packets.len(), all.len(), "{version:?}");
        assert!(!whole.error && whole.left == 0, "{version:?}: {whole:?}");
        for _ in 0..20 {
            reader.feed_all_ways(&stream, &mut rng);
        }
    }
}

#[test]
fn connect_version_on_every_prefix() {
    for (version, bytes) in [
        (Version::V4, v4_packets()[0].clone()),
        (Version::V4, v4_packets()[1].clone()),
        (Version::V5, v5_packets()[0].clone()),
        (Version::V5, v5_packets()[1].clone()),
    ] {
        // The level follows the fixed header, the name length (2) and "MQTT" (4).
        let level_at = 1 + bytes[1..].iter().position(|b| b & 0x80 == 0).unwrap() + 1 + 6;
        assert_eq!(bytes[level_at - 4..level_at], *b"MQTT");
        for n in 0..=level_at {
            assert_eq!(codec::connect_version(&bytes[..n]).unwrap(), None, "{n}");
        }
        for n in level_at + 1..=bytes.len() {
            assert_eq!(codec::connect_version(&bytes[..n]).unwrap(), Some(version));
        }
    }
}

#[test]
fn oversize_is_an_error_before_the_body_arrives() {
    for version in VERSIONS {
        for bytes in packets(version) {
            let max = 16u32;
            let mut reader = Reader::new(version, max);
            // The header alone (up to 5 bytes) must be enough to refuse a packet over the limit.
            let head = &bytes[..bytes.len().min(5)];
            let mut buf = BytesMut::from(head);
            let result = reader.read_one(&mut buf);
            if bytes.len() > max as usize {
                assert!(result.is_err(), "{version:?}: {bytes:02x?} gave {result:?}");
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// (b) seeded garbage
// ---------------------------------------------------------------------------------------------

/// Every fixed-header byte the codec accepts, and a few it must refuse.
fn header_bytes() -> Vec<u8> {
    let mut v: Vec<u8> = (1..=15u8).map(|t| t << 4).collect();
    v.extend([
        0x32, 0x34, 0x3B, 0x3D, 0x62, 0x82, 0xA2, 0x36, 0x61, 0x01, 0xE1,
    ]);
    v
}

/// Random bytes, random bytes behind a plausible header, and mutated valid packets.
fn garbage(rng: &mut XorShift, valid: &[Vec<u8>], headers: &[u8]) -> Vec<u8> {
    match rng.below(4) {
        0 => (0..rng.below(40)).map(|_| rng.byte()).collect(),
        1 => {
            let body: Vec<u8> = (0..rng.below(40)).map(|_| rng.byte() % 8).collect();
            let mut v = vec![headers[rng.below(headers.len())], body.len() as u8];
            v.extend(body);
            v
        }
        _ => {
            let base = &valid[rng.below(valid.len())];
            let mut v = base[..base.len().min(300)].to_vec();
            if v.len() == 300 {
                v[1] = 0x7F; // keep the frame consistent with the truncation
                v.truncate(129);
            }
            for _ in 0..1 + rng.below(3) {
                if v.is_empty() {
                    break;
                }
                let i = rng.below(v.len());
                match rng.below(5) {
                    0 => v[i] = rng.byte(),
                    1 => v[i] ^= 1 << rng.below(8),
                    2 => v[i] = [0x00, 0x01, 0x7F, 0x80, 0xFF][rng.below(5)],
                    3 => {
                        v.remove(i);
                        // Keep the remaining length honest half of the time.
                        if rng.below(2) == 0 && v.len() >= 2 && v.len() < 130 {
                            v[1] = (v.len() - 2) as u8;
                        }
                    }
                    _ => v.insert(i, rng.byte()),
                }
            }
            v
        }
    }
}

#[test]
fn seeded_garbage_never_panics_and_keeps_the_framing_contract() {
    let headers = header_bytes();
    for version in VERSIONS {
        let valid = packets(version);
        let mut rng = XorShift(match version {
            Version::V4 => 0x0123_4567_89ab_cdef,
            Version::V5 => 0xfedc_ba98_7654_3210,
        });
        for max in [16, MAX] {
            let mut reader = Reader::new(version, max);
            for _ in 0..2000 {
                let mut stream = garbage(&mut rng, &valid, &headers);
                // Often behind a valid packet, so the reader is mid-stream.
                if rng.below(2) == 0 {
                    let mut s = valid[rng.below(valid.len())].clone();
                    s.truncate(200);
                    if s.len() < 200 {
                        s.extend(stream);
                        stream = s;
                    }
                }
                reader.feed_all_ways(&stream, &mut rng);
                let _ = codec::connect_version(&stream);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// (c) what the fuzzer found
// ---------------------------------------------------------------------------------------------

/// Inputs that once broke the framing contract, all complete 5.0 frames that end where a property
/// length (or the rest of one) should be: `codec::read` gave `Ok(None)` with the frame consumed.
/// Nothing the fuzzer or this file tried made `natter::codec` or mqttbytes panic.
const FOUND_V5: &[&[u8]] = &[
    // The fuzzer (`--features strict`), minimised: fuzz input `0a e0 81 00 89`, i.e. both
    // versions, 1 MiB limit, then DISCONNECT with a two-byte (non-minimal) remaining length of
    // 1 that `short_disconnect` does not catch: reason 0x89, no property length.
    &[0xE0, 0x81, 0x00, 0x89],
    // The seeded garbage above: SUBACK and UNSUBACK with a packet id and nothing after it.
    &[0x90, 0x02, 0x05, 0x00],
    &[0xB0, 0x02, 0x02, 0x03],
    // The same class, one per remaining packet type that reads properties:
    // PUBLISH topic "t", no property length;
    &[0x30, 0x03, 0x00, 0x01, 0x74],
    // CONNECT "MQTT" level 5, flags, keep-alive, no property length;
    &[
        0x10, 0x0A, 0x00, 0x04, 0x4D, 0x51, 0x54, 0x54, 0x05, 0x02, 0x00, 0x0A,
    ],
    // SUBSCRIBE and UNSUBSCRIBE with a packet id only;
    &[0x82, 0x02, 0x00, 0x01],
    &[0xA2, 0x02, 0x00, 0x01],
    // CONNACK flags and code only;
    &[0x20, 0x02, 0x00, 0x00],
    // DISCONNECT whose property length has its continuation bit set and nothing after it.
    &[0xE0, 0x02, 0x00, 0x80],
];

#[test]
fn fuzzer_findings_do_not_panic() {
    let mut rng = XorShift(0xf00d);
    for version in VERSIONS {
        let mut reader = Reader::new(version, MAX);
        for bytes in FOUND_V5 {
            reader.feed_all_ways(bytes, &mut rng);
            let _ = codec::connect_version(bytes);
        }
    }
}

/// A complete frame that ends inside its variable header is malformed, not incomplete.
#[test]
fn ok_none_never_consumes_a_frame() {
    for bytes in FOUND_V5 {
        let mut buf = BytesMut::from(*bytes);
        let result = codec::read(Version::V5, &mut buf, MAX);
        // All of them are malformed (MQTT 5.0 §4.13: the server closes the connection).
        assert!(result.is_err(), "{bytes:02x?} gave {result:?}");
    }
    let headers = header_bytes();
    let valid = packets(Version::V5);
    let mut rng = XorShift(0xfedc_ba98_7654_3210);
    let mut reader = Reader::new(Version::V5, MAX);
    for _ in 0..4000 {
        let stream = garbage(&mut rng, &valid, &headers);
        reader.feed_all_ways(&stream, &mut rng);
    }
}

// ---------------------------------------------------------------------------------------------
// Seeds for the fuzzer
// ---------------------------------------------------------------------------------------------

/// Writes every valid packet (and each version's whole stream) as a seed for
/// `cargo fuzz run packet_read`, behind the control byte for its version and the 1 MiB limit.
#[test]
#[ignore = "writes fuzz/corpus/packet_read; run on demand"]
fn write_fuzz_seeds() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/packet_read");
    std::fs::create_dir_all(&dir).unwrap();
    for (version, ctl) in [(Version::V4, 0x08u8), (Version::V5, 0x09)] {
        let all = packets(version);
        let mut seeds: Vec<Vec<u8>> = all.clone();
        seeds.push(all.concat());
        if version == Version::V5 {
            seeds.push(V5_AUTH.to_vec());
        }
        for (i, seed) in seeds.iter().enumerate() {
            let mut data = vec![ctl];
            data.extend(seed);
            std::fs::write(dir.join(format!("seed-{version:?}-{i:02}")), data).unwrap();
        }
    }
}
