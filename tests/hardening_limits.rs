//! Global bounds that no single client controls: `limits.max_connections`.

mod common;

use common::{RawClient, TestServer};
use rumqttc::v5::mqttbytes::v5::{Connect, ConnectProperties, ConnectReturnCode, Packet};

/// An anonymous MQTT 5.0 CONNECT; `Some(code)` is the CONNACK's, `None` a closed socket.
async fn connect(c: &mut RawClient, client_id: &str) -> Option<ConnectReturnCode> {
    let connect = Connect {
        keep_alive: 30,
        client_id: client_id.into(),
        clean_start: true,
        properties: Some(ConnectProperties::new()),
    };
    c.try_send(Packet::Connect(connect, None, None))
        .await
        .ok()?;
    match c.recv().await {
        Some(Packet::ConnAck(a)) => Some(a.code),
        None => None,
        other => panic!("unexpected answer to CONNECT: {other:?}"),
    }
}

#[tokio::test]
async fn sockets_past_max_connections_are_closed_and_places_come_back() {
    let server = TestServer::start_with(|c| c.limits.max_connections = 2);
    let mut first = RawClient::connect(server.mqtt).await;
    assert_eq!(
        connect(&mut first, "one").await,
        Some(ConnectReturnCode::Success)
    );
    let mut second = RawClient::connect(server.mqtt).await;
    assert_eq!(
        connect(&mut second, "two").await,
        Some(ConnectReturnCode::Success)
    );

    let mut third = RawClient::connect(server.mqtt).await;
    assert_eq!(connect(&mut third, "three").await, None, "closed at accept");

    drop(first);
    // The first socket's task ends when it reads the close; until then its place is taken.
    common::eventually(common::WAIT, "a place frees up", async || {
        let mut again = RawClient::connect(server.mqtt).await;
        (connect(&mut again, "again").await == Some(ConnectReturnCode::Success)).then_some(())
    })
    .await;
}
