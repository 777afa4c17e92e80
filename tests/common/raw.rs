//! A raw MQTT 5.0 client: exact packets in, exact packets out.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use rumqttc::v5::mqttbytes::v5::{
    Connect, ConnectProperties, ConnectReturnCode, Login, Packet, Publish,
};
use rumqttc::v5::mqttbytes::QoS;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::WAIT;

/// A bare MQTT 5.0 client over TCP for packet-exact tests: it sends what it is told and returns
/// what arrives, with no automatic acknowledgements, retries or reconnects.
pub struct RawClient {
    stream: TcpStream,
    buf: BytesMut,
}

impl RawClient {
    pub async fn connect(addr: SocketAddr) -> RawClient {
        let stream = TcpStream::connect(addr).await.expect("tcp connect");
        RawClient {
            stream,
            buf: BytesMut::new(),
        }
    }

    /// Connects and logs in (clean start, no CONNECT properties beyond the defaults); asserts
    /// the CONNACK says Success.
    pub async fn login(
        addr: SocketAddr,
        user: &str,
        password: &str,
        client_id: &str,
        keep_alive: u16,
    ) -> RawClient {
        let mut c = RawClient::connect(addr).await;
        c.send(Packet::Connect(
            Connect {
                keep_alive,
                client_id: client_id.into(),
                clean_start: true,
                properties: Some(ConnectProperties::new()),
            },
            None,
            Some(Login::new(user, password)),
        ))
        .await;
        match c.recv().await {
            Some(Packet::ConnAck(a)) => assert_eq!(
                a.code,
                ConnectReturnCode::Success,
                "login of {client_id} as {user}: {a:?}"
            ),
            other => panic!("no CONNACK for {client_id}: {other:?}"),
        }
        c
    }

    pub async fn send(&mut self, packet: Packet) {
        self.try_send(packet).await.expect("write");
    }

    /// Sends `packet`, reporting a write error (the server went away) instead of panicking.
    pub async fn try_send(&mut self, packet: Packet) -> std::io::Result<()> {
        let mut out = BytesMut::new();
        packet.write(&mut out, None).expect("encode");
        self.stream.write_all(&out).await
    }

    pub async fn send_bytes(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("write");
    }

    /// The next packet, or `None` if the server closed the connection.
    pub async fn recv(&mut self) -> Option<Packet> {
        self.recv_within(WAIT)
            .await
            .expect("timed out waiting for a packet")
    }

    /// The next packet, `None` if the server closed the connection, or `Err` if nothing came
    /// within `wait` (for callers to whom silence is an answer, not a failure).
    pub async fn recv_within(
        &mut self,
        wait: Duration,
    ) -> Result<Option<Packet>, tokio::time::error::Elapsed> {
        tokio::time::timeout(wait, async {
            loop {
                match Packet::read(&mut self.buf, None) {
                    Ok(p) => return Some(p),
                    Err(rumqttc::v5::mqttbytes::Error::InsufficientBytes(_)) => {}
                    Err(e) => panic!("undecodable packet from server: {e}"),
                }
                let n = self.stream.read_buf(&mut self.buf).await.ok()?;
                if n == 0 {
                    return None;
                }
            }
        })
        .await
    }

    /// The next PUBLISH, skipping other packets and acknowledging nothing; panics if the
    /// connection closes first.
    pub async fn publish(&mut self) -> Publish {
        loop {
            match self.recv().await {
                Some(Packet::Publish(p)) => return p,
                Some(_) => continue,
                None => panic!("the connection closed while waiting for a PUBLISH"),
            }
        }
    }

    /// Waits for the server to close the connection, skipping packets; returns the last one.
    pub async fn closed(&mut self) -> Option<Packet> {
        let mut last = None;
        while let Some(p) = self.recv().await {
            last = Some(p);
        }
        last
    }

    /// Drops the socket without DISCONNECT (an abrupt loss, as after `kill -9`).
    pub fn vanish(self) {
        drop(self.stream);
    }
}

/// A conversation's whole history as `user` reads it back through `q/{user}/sync` on a
/// connection of its own (client id `{user}.check`): each entry's (seq, cid), in order.
pub async fn history_cids(
    addr: SocketAddr,
    user: &str,
    password: &str,
    conv: &str,
) -> Vec<(u64, String)> {
    use rumqttc::v5::mqttbytes::v5::{Filter, Subscribe};
    let mut c = RawClient::login(addr, user, password, &format!("{user}.check"), 30).await;
    let reply_filter = format!("u/{user}/reply/#");
    c.send(Packet::Subscribe(Subscribe::new(
        Filter::new(reply_filter, QoS::AtMostOnce),
        None,
    )))
    .await;
    assert!(matches!(c.recv().await, Some(Packet::SubAck(_))));
    let mut stored = Vec::new();
    let mut after = 0;
    loop {
        let body = serde_json::json!({"conv": conv, "after": after, "limit": 200}).to_string();
        let topic = format!("q/{user}/sync");
        c.send(Packet::Publish(Publish::new(
            topic,
            QoS::AtMostOnce,
            body,
            None,
        )))
        .await;
        let reply: serde_json::Value = serde_json::from_slice(&c.publish().await.payload).unwrap();
        for m in reply["messages"].as_array().unwrap() {
            stored.push((
                m["seq"].as_u64().unwrap(),
                m["cid"].as_str().unwrap().to_string(),
            ));
        }
        after = reply["next"].as_u64().unwrap();
        if reply["more"] == false {
            break;
        }
    }
    stored
}
