//! The bytes on the wire: a lean MQTT 3.1.1 client (CONNECT/SUBSCRIBE through rumqttc's
//! `mqttbytes`, PUBLISH/PUBACK encoded and decoded by hand on the hot path) and the raw framing
//! the TCP forwarder baseline speaks.
//!
//! Both protocols look the same to the scenarios: a publisher writes "publish" frames carrying a
//! packet id and a payload and gets "ack" frames back; a subscriber receives "publish" frames and
//! answers each with an "ack".

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use rumqttc::mqttbytes::v4::{Connect, ConnectReturnCode, Packet, Subscribe, SubscribeReasonCode};
use rumqttc::mqttbytes::QoS;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Largest packet accepted from a broker.
const MAX_PACKET: usize = 1 << 20;

/// How long a connection setup step (TCP connect, CONNACK, SUBACK) may take.
pub const SETUP_TIMEOUT: Duration = Duration::from_secs(30);

/// The process-wide clock origin: payload timestamps are nanoseconds since this instant, so
/// publishers and subscribers (always in the same process) compare them directly.
pub fn now_ns() -> u64 {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    ORIGIN.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// The instant `ns` (from [`now_ns`]) stands for, for sleeping until it.
pub fn instant_at(ns: u64) -> tokio::time::Instant {
    let now = now_ns();
    let base = tokio::time::Instant::now();
    if ns >= now {
        base + Duration::from_nanos(ns - now)
    } else {
        base - Duration::from_nanos(now - ns)
    }
}

/// Which protocol a connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    /// MQTT 3.1.1 to a broker.
    Mqtt,
    /// The forwarder's raw frames (baseline).
    Raw,
}

/// The payload every published message carries: send timestamp, sequence number and publisher
/// index as hex digits, then words up to the configured size. Text, so that natter's chat
/// topics take it as a plain-text message, and text like a chat message's, so that natter's
/// full-text index does the work real messages cause (a payload of one long unique token would
/// add a term to its dictionary per message). Every broker gets the same bytes.
pub struct Stamp {
    pub ts_ns: u64,
    pub seq: u64,
    pub publisher: u32,
}

/// `{ts:16x} {seq:16x} {publisher:8x}`
pub const STAMP_LEN: usize = 42;

/// What follows the stamp, repeated as far as the payload size asks.
const FILLER: &[u8] = b" lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod \
    tempor incididunt ut labore et dolore magna aliqua ut enim ad minim veniam quis nostrud \
    exercitation ullamco laboris nisi ut aliquip ex ea commodo consequat";

/// Where the text starts in natter's JSON envelope (`{"id":…,"t":"TEXT"}`).
const ENVELOPE_TEXT: &[u8] = b"\"t\":\"";

impl Stamp {
    pub fn write(&self, buf: &mut BytesMut, payload_len: usize) {
        put_hex(buf, self.ts_ns, 16);
        buf.put_u8(b' ');
        put_hex(buf, self.seq, 16);
        buf.put_u8(b' ');
        put_hex(buf, u64::from(self.publisher), 8);
        let mut rest = payload_len.saturating_sub(STAMP_LEN);
        while rest > 0 {
            let n = rest.min(FILLER.len());
            buf.put_slice(&FILLER[..n]);
            rest -= n;
        }
    }

    /// The stamp of a payload as published, or of natter's JSON envelope around one. `None`
    /// for anything else (e.g. a receipt event on a chat stream).
    pub fn read(payload: &[u8]) -> Option<Stamp> {
        let text = if payload.first() == Some(&b'{') {
            let at = payload
                .windows(ENVELOPE_TEXT.len())
                .position(|w| w == ENVELOPE_TEXT)?;
            &payload[at + ENVELOPE_TEXT.len()..]
        } else {
            payload
        };
        let text = text.get(..STAMP_LEN)?;
        Some(Stamp {
            ts_ns: hex(&text[..16])?,
            seq: hex(&text[17..33])?,
            publisher: u32::try_from(hex(&text[34..])?).ok()?,
        })
    }
}

fn put_hex(buf: &mut BytesMut, v: u64, digits: u32) {
    for i in (0..digits).rev() {
        buf.put_u8(b"0123456789abcdef"[((v >> (4 * i)) & 0xf) as usize]);
    }
}

fn hex(digits: &[u8]) -> Option<u64> {
    digits.iter().try_fold(0u64, |v, &d| {
        let n = (d as char).to_digit(16)?;
        Some(v << 4 | u64::from(n))
    })
}

/// What a frame read from the peer means to a scenario.
#[derive(Debug)]
pub enum Incoming {
    /// A message (`pkid` 0 for QoS 0).
    Publish {
        pkid: u16,
        qos1: bool,
        payload: Bytes,
    },
    /// PUBACK (MQTT) or an ack frame (raw).
    Ack { pkid: u16 },
    /// Any other MQTT packet (CONNACK, SUBACK, PINGRESP...).
    Other(Packet),
}

/// Appends a QoS 1 (or QoS 0 when `pkid` is 0) PUBLISH, or a raw data frame.
pub fn encode_publish(
    proto: Proto,
    buf: &mut BytesMut,
    topic: &[u8],
    pkid: u16,
    stamp: &Stamp,
    payload_len: usize,
) {
    let payload_len = payload_len.max(STAMP_LEN);
    match proto {
        Proto::Mqtt => {
            let qos1 = pkid != 0;
            let remaining = 2 + topic.len() + if qos1 { 2 } else { 0 } + payload_len;
            buf.put_u8(if qos1 { 0x32 } else { 0x30 });
            put_varint(buf, remaining);
            buf.put_u16(topic.len() as u16);
            buf.put_slice(topic);
            if qos1 {
                buf.put_u16(pkid);
            }
        }
        Proto::Raw => {
            buf.put_u8(raw::DATA);
            buf.put_u16(pkid);
            buf.put_u16(payload_len as u16);
        }
    }
    stamp.write(buf, payload_len);
}

/// Appends a PUBACK (MQTT) or an ack frame (raw).
pub fn encode_ack(proto: Proto, buf: &mut BytesMut, pkid: u16) {
    match proto {
        Proto::Mqtt => {
            buf.put_u8(0x40);
            buf.put_u8(0x02);
        }
        Proto::Raw => buf.put_u8(raw::ACK),
    }
    buf.put_u16(pkid);
}

fn put_varint(buf: &mut BytesMut, mut n: usize) {
    loop {
        let mut byte = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            byte |= 0x80;
        }
        buf.put_u8(byte);
        if n == 0 {
            break;
        }
    }
}

/// Takes one complete frame off the front of `buf`, if there is one.
pub fn decode(proto: Proto, buf: &mut BytesMut) -> anyhow::Result<Option<Incoming>> {
    match proto {
        Proto::Mqtt => decode_mqtt(buf),
        Proto::Raw => raw::decode(buf),
    }
}

fn decode_mqtt(buf: &mut BytesMut) -> anyhow::Result<Option<Incoming>> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let (mut remaining, mut shift, mut header) = (0usize, 0, 1usize);
    loop {
        let Some(&b) = buf.get(header) else {
            return Ok(None);
        };
        remaining |= usize::from(b & 0x7f) << shift;
        header += 1;
        if b & 0x80 == 0 {
            break;
        }
        shift += 7;
        if shift > 21 {
            bail!("malformed remaining length from broker");
        }
    }
    if remaining > MAX_PACKET {
        bail!("packet of {remaining} bytes from broker");
    }
    let total = header + remaining;
    if buf.len() < total {
        buf.reserve(total - buf.len());
        return Ok(None);
    }
    let byte1 = buf[0];
    match byte1 >> 4 {
        3 => {
            let qos = (byte1 >> 1) & 3;
            let mut frame = buf.split_to(total).freeze();
            frame.advance(header);
            if frame.len() < 2 {
                bail!("short PUBLISH from broker");
            }
            let topic_len = usize::from(frame.get_u16());
            let id_len = if qos > 0 { 2 } else { 0 };
            if frame.len() < topic_len + id_len {
                bail!("short PUBLISH from broker");
            }
            frame.advance(topic_len);
            let pkid = if qos > 0 { frame.get_u16() } else { 0 };
            if qos == 2 {
                bail!("QoS 2 PUBLISH from broker (the load generator asks for QoS 1)");
            }
            Ok(Some(Incoming::Publish {
                pkid,
                qos1: qos == 1,
                payload: frame,
            }))
        }
        4 if remaining >= 2 => {
            let pkid = u16::from_be_bytes([buf[header], buf[header + 1]]);
            buf.advance(total);
            Ok(Some(Incoming::Ack { pkid }))
        }
        _ => {
            let mut frame = buf.split_to(total);
            let packet = Packet::read(&mut frame, MAX_PACKET)
                .map_err(|e| anyhow::anyhow!("bad packet from broker: {e:?}"))?;
            Ok(Some(Incoming::Other(packet)))
        }
    }
}

/// A connection past its handshake, with whatever the peer sent beyond it.
pub struct Conn {
    pub proto: Proto,
    pub stream: TcpStream,
    pub rbuf: BytesMut,
    /// CONNACK's session-present flag (MQTT).
    pub session_present: bool,
}

async fn tcp(addr: SocketAddr) -> anyhow::Result<TcpStream> {
    let stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("cannot connect to {addr}"))?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Options of one MQTT connection.
pub struct ConnectOptions<'a> {
    pub client_id: &'a str,
    pub clean_session: bool,
    pub keep_alive: u16,
    /// User name and password (natter's chat accounts); `None`: anonymous.
    pub login: Option<(&'a str, &'a str)>,
}

/// Opens an MQTT 3.1.1 connection and waits for a successful CONNACK.
pub async fn mqtt_connect(addr: SocketAddr, o: &ConnectOptions<'_>) -> anyhow::Result<Conn> {
    let fut = async {
        let mut stream = tcp(addr).await?;
        let mut connect = Connect::new(o.client_id);
        connect.keep_alive = o.keep_alive;
        connect.clean_session = o.clean_session;
        if let Some((user, password)) = o.login {
            connect.set_login(user, password);
        }
        let mut buf = BytesMut::new();
        Packet::Connect(connect)
            .write(&mut buf, MAX_PACKET)
            .map_err(|e| anyhow::anyhow!("encode CONNECT: {e:?}"))?;
        stream.write_all(&buf).await?;
        let mut conn = Conn {
            proto: Proto::Mqtt,
            stream,
            rbuf: BytesMut::with_capacity(4096),
            session_present: false,
        };
        match conn.next().await? {
            Incoming::Other(Packet::ConnAck(ack)) => {
                if ack.code != ConnectReturnCode::Success {
                    bail!("CONNACK refused: {:?}", ack.code);
                }
                conn.session_present = ack.session_present;
                Ok(conn)
            }
            other => bail!("expected CONNACK, got {other:?}"),
        }
    };
    tokio::time::timeout(SETUP_TIMEOUT, fut)
        .await
        .with_context(|| format!("{}: no CONNACK within {SETUP_TIMEOUT:?}", o.client_id))?
        .with_context(|| format!("client {}", o.client_id))
}

/// Opens a raw connection to the forwarder: `publisher` or subscriber side of pair `pair`.
pub async fn raw_connect(addr: SocketAddr, publisher: bool, pair: u32) -> anyhow::Result<Conn> {
    let fut = async {
        let mut stream = tcp(addr).await?;
        let mut buf = BytesMut::new();
        buf.put_u8(raw::HELLO);
        buf.put_u8(u8::from(publisher));
        buf.put_u32(pair);
        stream.write_all(&buf).await?;
        let mut ok = [0u8; 1];
        stream.read_exact(&mut ok).await?;
        if ok[0] != raw::HELLO_OK {
            bail!("forwarder refused pair {pair}");
        }
        Ok(Conn {
            proto: Proto::Raw,
            stream,
            rbuf: BytesMut::with_capacity(4096),
            session_present: false,
        })
    };
    tokio::time::timeout(SETUP_TIMEOUT, fut)
        .await
        .context("forwarder handshake timed out")?
}

impl Conn {
    /// Reads until one frame is complete.
    pub async fn next(&mut self) -> anyhow::Result<Incoming> {
        loop {
            if let Some(frame) = decode(self.proto, &mut self.rbuf)? {
                return Ok(frame);
            }
            if self.stream.read_buf(&mut self.rbuf).await? == 0 {
                bail!("connection closed by the peer");
            }
        }
    }

    /// Subscribes to `filters` at QoS 1 and waits for a SUBACK granting every one.
    pub async fn subscribe(&mut self, filters: &[String]) -> anyhow::Result<()> {
        let mut sub =
            Subscribe::new_many(filters.iter().map(|f| {
                rumqttc::mqttbytes::v4::SubscribeFilter::new(f.clone(), QoS::AtLeastOnce)
            }));
        sub.pkid = 1;
        let mut buf = BytesMut::new();
        Packet::Subscribe(sub)
            .write(&mut buf, MAX_PACKET)
            .map_err(|e| anyhow::anyhow!("encode SUBSCRIBE: {e:?}"))?;
        let fut = async {
            self.stream.write_all(&buf).await?;
            // Nothing else may come first: the scenarios' topics hold no retained messages.
            match self.next().await? {
                Incoming::Other(Packet::SubAck(ack)) => {
                    if ack
                        .return_codes
                        .iter()
                        .any(|c| matches!(c, SubscribeReasonCode::Failure))
                    {
                        bail!("SUBACK refused a filter");
                    }
                    Ok(())
                }
                other => bail!("expected SUBACK, got {other:?}"),
            }
        };
        tokio::time::timeout(SETUP_TIMEOUT, fut)
            .await
            .context("no SUBACK in time")?
    }

    /// Sends DISCONNECT (MQTT) and closes the socket.
    pub async fn disconnect(mut self) {
        if self.proto == Proto::Mqtt {
            let _ = self.stream.write_all(&[0xe0, 0x00]).await;
        }
        let _ = self.stream.shutdown().await;
    }
}

/// The forwarder's framing.
pub mod raw {
    use super::*;

    /// `[DATA][pkid u16][len u16][payload]`, client → forwarder → other client.
    pub const DATA: u8 = 1;
    /// `[ACK][pkid u16]`, both directions.
    pub const ACK: u8 = 2;
    /// `[HELLO][1 = publisher, 0 = subscriber][pair u32]`, first frame of a connection.
    pub const HELLO: u8 = 3;
    /// One byte answering HELLO.
    pub const HELLO_OK: u8 = 4;

    pub fn decode(buf: &mut BytesMut) -> anyhow::Result<Option<Incoming>> {
        let Some(&kind) = buf.first() else {
            return Ok(None);
        };
        match kind {
            DATA => {
                if buf.len() < 5 {
                    return Ok(None);
                }
                let pkid = u16::from_be_bytes([buf[1], buf[2]]);
                let len = usize::from(u16::from_be_bytes([buf[3], buf[4]]));
                if buf.len() < 5 + len {
                    buf.reserve(5 + len - buf.len());
                    return Ok(None);
                }
                buf.advance(5);
                let payload = buf.split_to(len).freeze();
                Ok(Some(Incoming::Publish {
                    pkid,
                    qos1: true,
                    payload,
                }))
            }
            ACK => {
                if buf.len() < 3 {
                    return Ok(None);
                }
                let pkid = u16::from_be_bytes([buf[1], buf[2]]);
                buf.advance(3);
                Ok(Some(Incoming::Ack { pkid }))
            }
            other => bail!("unexpected raw frame type {other}"),
        }
    }

    /// Length of the complete frame at the front of `buf`, if there is one.
    pub fn frame_len(buf: &[u8]) -> anyhow::Result<Option<usize>> {
        let Some(&kind) = buf.first() else {
            return Ok(None);
        };
        match kind {
            DATA if buf.len() >= 5 => {
                let len = 5 + usize::from(u16::from_be_bytes([buf[3], buf[4]]));
                Ok((buf.len() >= len).then_some(len))
            }
            DATA => Ok(None),
            ACK => Ok((buf.len() >= 3).then_some(3)),
            other => bail!("unexpected raw frame type {other}"),
        }
    }
}
