//! The same broker over WebSocket, TLS and secure WebSocket, and mixed-version traffic across
//! transports (the rumqttd bug where a 5.0 PUBLISH with properties poisoned 3.1.1 and WebSocket
//! listeners must not exist here).

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::clients::{v4, v5};
use common::TestServer;
use rumqttc::{TlsConfiguration, Transport};

fn tls_config(ca_pem: &str) -> TlsConfiguration {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut ca_pem.as_bytes()) {
        roots.add(cert.expect("CA PEM")).expect("add CA");
    }
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    TlsConfiguration::Rustls(Arc::new(config))
}

fn v4_over(id: &str, host: String, port: u16, transport: Transport) -> v4::MqttOptions {
    let mut o = v4::MqttOptions::new(id, host, port);
    o.set_keep_alive(Duration::from_secs(5));
    o.set_transport(transport);
    o
}

fn v5_over(id: &str, host: String, port: u16, transport: Transport) -> v5::MqttOptions {
    let mut o = v5::MqttOptions::new(id, host, port);
    o.set_keep_alive(Duration::from_secs(5));
    o.set_transport(transport);
    o
}

/// Subscribes `sub` to `topic`, publishes from `publisher`, and checks the message arrives.
async fn round_trip_v4(sub: v4::MqttOptions, publisher: v4::MqttOptions, topic: &str) {
    let (mut s, _) = v4::Client::connect(sub).await;
    s.client
        .subscribe(topic, rumqttc::QoS::AtLeastOnce)
        .await
        .unwrap();
    s.suback().await;
    let (p, _) = v4::Client::connect(publisher).await;
    p.client
        .publish(topic, rumqttc::QoS::AtLeastOnce, false, "over the wire")
        .await
        .unwrap();
    let got = s.publish().await;
    assert_eq!(got.topic, topic);
    assert_eq!(&got.payload[..], b"over the wire");
}

#[tokio::test]
async fn websocket_carries_both_versions() {
    let server = TestServer::start();
    let ws = server.ws.expect("ws listener");
    let url = format!("ws://127.0.0.1:{}/mqtt", ws.port());
    round_trip_v4(
        v4_over("ws-sub", url.clone(), ws.port(), Transport::Ws),
        v4_over("tcp-pub", "127.0.0.1".into(), server.port(), Transport::Tcp),
        "ws/v4",
    )
    .await;

    let (mut s, _) =
        v5::Client::connect(v5_over("ws5", url.clone(), ws.port(), Transport::Ws)).await;
    s.client
        .subscribe("ws/v5", rumqttc::v5::mqttbytes::QoS::AtLeastOnce)
        .await
        .unwrap();
    s.suback().await;
    let (p, _) = v5::Client::connect(v5_over("ws5p", url, ws.port(), Transport::Ws)).await;
    p.client
        .publish(
            "ws/v5",
            rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
            false,
            "five",
        )
        .await
        .unwrap();
    assert_eq!(&s.publish().await.payload[..], b"five");
}

#[tokio::test]
async fn tls_and_secure_websocket_work_with_a_generated_certificate() {
    let server = TestServer::start_tls();
    let ca = server.ca_pem.clone().expect("CA");
    let tls = server.tls.expect("tls listener");
    let wss = server.wss.expect("wss listener");
    round_trip_v4(
        v4_over(
            "tls-sub",
            "localhost".into(),
            tls.port(),
            Transport::tls_with_config(tls_config(&ca)),
        ),
        v4_over(
            "wss-pub",
            format!("wss://localhost:{}/mqtt", wss.port()),
            wss.port(),
            Transport::wss_with_config(tls_config(&ca)),
        ),
        "secure/1",
    )
    .await;
}

#[tokio::test]
async fn a_slow_handshake_does_not_delay_other_clients() {
    let server = TestServer::start_tls();
    // Open TLS and WebSocket connections that never say anything.
    let _idle_tls = tokio::net::TcpStream::connect(server.tls.unwrap())
        .await
        .unwrap();
    let _idle_ws = tokio::net::TcpStream::connect(server.ws.unwrap())
        .await
        .unwrap();
    let _idle_tcp = tokio::net::TcpStream::connect(server.mqtt).await.unwrap();
    let ca = server.ca_pem.clone().unwrap();
    let started = std::time::Instant::now();
    let (_c, _) = v4::Client::connect(v4_over(
        "prompt",
        "localhost".into(),
        server.tls.unwrap().port(),
        Transport::tls_with_config(tls_config(&ca)),
    ))
    .await;
    // Well under the 10 s handshake timeout that idle connections holding things up would cost.
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn v5_properties_never_reach_v4_or_websocket_subscribers_and_the_server_stays_up() {
    let server = TestServer::start();
    let ws = server.ws.unwrap();
    let url = format!("ws://127.0.0.1:{}/mqtt", ws.port());
    let mut subs = Vec::new();
    for (id, options) in [
        (
            "tcp4",
            v4_over("tcp4", "127.0.0.1".into(), server.port(), Transport::Tcp),
        ),
        ("ws4", v4_over("ws4", url.clone(), ws.port(), Transport::Ws)),
    ] {
        let (mut c, _) = v4::Client::connect(options).await;
        c.client
            .subscribe("mixed/#", rumqttc::QoS::AtLeastOnce)
            .await
            .unwrap();
        c.suback().await;
        subs.push((id, c));
    }
    let (mut ws5, _) = v5::Client::connect(v5_over("ws5", url, ws.port(), Transport::Ws)).await;
    ws5.client
        .subscribe("mixed/#", rumqttc::v5::mqttbytes::QoS::AtLeastOnce)
        .await
        .unwrap();
    ws5.suback().await;

    let (p, _) = v5::Client::connect(v5_over(
        "p5",
        "127.0.0.1".into(),
        server.port(),
        Transport::Tcp,
    ))
    .await;
    let props = rumqttc::v5::mqttbytes::v5::PublishProperties {
        user_properties: vec![("lang".into(), "en".into())],
        content_type: Some("text/plain".into()),
        message_expiry_interval: Some(60),
        response_topic: Some("mixed/reply".into()),
        correlation_data: Some(Bytes::from_static(b"c1")),
        ..Default::default()
    };
    p.client
        .publish_with_properties(
            "mixed/1",
            rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
            false,
            "hello",
            props,
        )
        .await
        .unwrap();
    for (id, c) in &mut subs {
        let got = c.publish().await;
        assert_eq!(&got.payload[..], b"hello", "{id}");
    }
    let got = ws5.publish().await;
    let props = got.properties.expect("v5 subscriber sees properties");
    assert_eq!(
        props.user_properties,
        [("lang".to_string(), "en".to_string())]
    );

    // And new clients still get in on every listener.
    for options in [
        v4_over(
            "after-tcp",
            "127.0.0.1".into(),
            server.port(),
            Transport::Tcp,
        ),
        v4_over(
            "after-ws",
            format!("ws://127.0.0.1:{}/mqtt", ws.port()),
            ws.port(),
            Transport::Ws,
        ),
    ] {
        let _ = v4::Client::connect(options).await;
    }
}
