//! 3.1.1 ⇄ 5.0: a 3.1.1 packet converts up to 5.0 without loss; a 5.0 packet converts down by
//! dropping what 3.1.1 cannot say (properties, reason codes beyond its few). PUBLISH, the
//! commonest packet, is written down directly rather than through `v4::Publish`.

use bytes::{BufMut, Bytes, BytesMut};
use rumqttc::mqttbytes::{self as v4wire, v4};
use rumqttc::v5::mqttbytes::{v5, QoS};

use super::CodecError;

/// Writes a PUBLISH in its 3.1.1 form (every property dropped). The commonest packet by far,
/// so written here: through `v4::Publish` each delivery would copy its topic into a `String`.
pub(super) fn write_v4_publish(p: &v5::Publish, buf: &mut BytesMut) -> Result<(), CodecError> {
    /// The largest remaining length four length bytes can say.
    const MAX_REMAINING: usize = 268_435_455;
    let topic_len = u16::try_from(p.topic.len())
        .map_err(|_| CodecError::Malformed("topic longer than 65535 bytes".into()))?;
    let with_pkid = p.qos != QoS::AtMostOnce;
    let remaining = 2 + p.topic.len() + if with_pkid { 2 } else { 0 } + p.payload.len();
    if remaining > MAX_REMAINING {
        return Err(CodecError::TooLarge {
            size: remaining,
            max: MAX_REMAINING as u32,
        });
    }
    let flags = (u8::from(p.dup) << 3) | ((qos_down(p.qos) as u8) << 1) | u8::from(p.retain);
    buf.reserve(5 + remaining);
    buf.put_u8(0x30 | flags);
    let mut left = remaining;
    loop {
        let byte = (left % 128) as u8;
        left /= 128;
        if left == 0 {
            buf.put_u8(byte);
            break;
        }
        buf.put_u8(byte | 0x80);
    }
    buf.put_u16(topic_len);
    buf.extend_from_slice(&p.topic);
    if with_pkid {
        buf.put_u16(p.pkid);
    }
    buf.extend_from_slice(&p.payload);
    Ok(())
}

/// Converts a 3.1.1 packet to its 5.0 equivalent.
pub(super) fn up(packet: v4::Packet) -> v5::Packet {
    use v5::Packet as P;
    match packet {
        v4::Packet::Connect(c) => connect_up(c),
        v4::Packet::Publish(p) => P::Publish(publish_up(p)),
        v4::Packet::PubAck(a) => P::PubAck(v5::PubAck::new(a.pkid, None)),
        v4::Packet::PubRec(a) => P::PubRec(v5::PubRec::new(a.pkid, None)),
        v4::Packet::PubRel(a) => P::PubRel(v5::PubRel::new(a.pkid, None)),
        v4::Packet::PubComp(a) => P::PubComp(v5::PubComp::new(a.pkid, None)),
        v4::Packet::Subscribe(s) => P::Subscribe(subscribe_up(s)),
        v4::Packet::Unsubscribe(u) => P::Unsubscribe(v5::Unsubscribe {
            pkid: u.pkid,
            filters: u.topics,
            properties: None,
        }),
        v4::Packet::PingReq => P::PingReq(v5::PingReq),
        v4::Packet::PingResp => P::PingResp(v5::PingResp),
        v4::Packet::Disconnect => P::Disconnect(v5::Disconnect::new(
            v5::DisconnectReasonCode::NormalDisconnection,
        )),
        v4::Packet::ConnAck(a) => P::ConnAck(v5::ConnAck {
            session_present: a.session_present,
            code: v5::ConnectReturnCode::Success,
            properties: None,
        }),
        v4::Packet::SubAck(a) => P::SubAck(v5::SubAck {
            pkid: a.pkid,
            return_codes: Vec::new(),
            properties: None,
        }),
        v4::Packet::UnsubAck(a) => P::UnsubAck(v5::UnsubAck {
            pkid: a.pkid,
            reasons: Vec::new(),
            properties: None,
        }),
    }
}

/// A 3.1.1 CONNECT as 5.0: the will and login move over, with no properties.
fn connect_up(c: v4::Connect) -> v5::Packet {
    let will = c.last_will.map(|w| v5::LastWill {
        topic: Bytes::from(w.topic),
        message: w.message,
        qos: qos_up(w.qos),
        retain: w.retain,
        properties: None,
    });
    let login = c.login.map(|l| v5::Login {
        username: l.username,
        password: l.password,
    });
    let connect = v5::Connect {
        keep_alive: c.keep_alive,
        client_id: c.client_id,
        clean_start: c.clean_session,
        properties: None,
    };
    v5::Packet::Connect(connect, will, login)
}

/// A 3.1.1 PUBLISH as 5.0 (the topic and payload move over).
fn publish_up(p: v4::Publish) -> v5::Publish {
    v5::Publish {
        dup: p.dup,
        qos: qos_up(p.qos),
        retain: p.retain,
        topic: Bytes::from(p.topic),
        pkid: p.pkid,
        payload: p.payload,
        properties: None,
    }
}

/// A 3.1.1 SUBSCRIBE as 5.0: each filter with the 3.1.1 behaviour (local echo, retained
/// messages on every subscribe).
fn subscribe_up(s: v4::Subscribe) -> v5::Subscribe {
    let filters = s
        .filters
        .into_iter()
        .map(|f| v5::Filter {
            path: f.path,
            qos: qos_up(f.qos),
            nolocal: false,
            preserve_retain: false,
            retain_forward_rule: v5::RetainForwardRule::OnEverySubscribe,
        })
        .collect();
    v5::Subscribe {
        pkid: s.pkid,
        filters,
        properties: None,
    }
}

/// Converts a server packet (but PUBLISH, see `write_v4_publish`) to its 3.1.1 form, dropping
/// every property.
pub(super) fn down(packet: &v5::Packet) -> Option<v4::Packet> {
    use v4::Packet as P;
    Some(match packet {
        v5::Packet::ConnAck(a) => {
            P::ConnAck(v4::ConnAck::new(connack_code(a.code), a.session_present))
        }
        v5::Packet::PubAck(a) => P::PubAck(v4::PubAck::new(a.pkid)),
        v5::Packet::PubRec(a) => P::PubRec(v4::PubRec::new(a.pkid)),
        v5::Packet::PubRel(a) => P::PubRel(v4::PubRel::new(a.pkid)),
        v5::Packet::PubComp(a) => P::PubComp(v4::PubComp::new(a.pkid)),
        v5::Packet::SubAck(a) => P::SubAck(v4::SubAck {
            pkid: a.pkid,
            return_codes: a
                .return_codes
                .iter()
                .map(|c| match c {
                    v5::SubscribeReasonCode::Success(q) => {
                        v4::SubscribeReasonCode::Success(qos_down(*q))
                    }
                    _ => v4::SubscribeReasonCode::Failure,
                })
                .collect(),
        }),
        v5::Packet::UnsubAck(a) => P::UnsubAck(v4::UnsubAck { pkid: a.pkid }),
        v5::Packet::PingResp(_) => P::PingResp,
        _ => return None,
    })
}

/// The 3.1.1 CONNACK return code closest to a 5.0 reason code.
fn connack_code(code: v5::ConnectReturnCode) -> v4::ConnectReturnCode {
    use v5::ConnectReturnCode as C;
    match code {
        C::Success => v4::ConnectReturnCode::Success,
        C::UnsupportedProtocolVersion | C::RefusedProtocolVersion => {
            v4::ConnectReturnCode::RefusedProtocolVersion
        }
        C::ClientIdentifierNotValid | C::BadClientId => v4::ConnectReturnCode::BadClientId,
        // mosquitto answers wrong credentials with 0x05 too; clients treat both as final.
        C::BadUserNamePassword | C::NotAuthorized | C::Banned | C::BadAuthenticationMethod => {
            v4::ConnectReturnCode::NotAuthorized
        }
        _ => v4::ConnectReturnCode::ServiceUnavailable,
    }
}

fn qos_up(q: v4wire::QoS) -> QoS {
    match q {
        v4wire::QoS::AtMostOnce => QoS::AtMostOnce,
        v4wire::QoS::AtLeastOnce => QoS::AtLeastOnce,
        v4wire::QoS::ExactlyOnce => QoS::ExactlyOnce,
    }
}

pub(super) fn qos_down(q: QoS) -> v4wire::QoS {
    match q {
        QoS::AtMostOnce => v4wire::QoS::AtMostOnce,
        QoS::AtLeastOnce => v4wire::QoS::AtLeastOnce,
        QoS::ExactlyOnce => v4wire::QoS::ExactlyOnce,
    }
}
