//! Interoperability with the real Eclipse Mosquitto command-line clients (`mosquitto_pub`,
//! `mosquitto_sub`, `mosquitto_rr` from Debian's `mosquitto-clients` package) against a real
//! server: what a user typing these commands sees is what these tests assert, exit codes and
//! printed lines included.
//!
//! How the clients are driven (command lines, waiting for the SUBACK line, deadlines) is in
//! `common/mosquitto.rs`.

mod common;

use std::time::Duration;

use common::clients::v5;
use common::mosquitto::{publish_ok, run, Sub, TIMED_OUT};
use common::TestServer;
use rumqttc::v5::mqttbytes::v5::PublishProperties;
use rumqttc::v5::mqttbytes::QoS;

#[test]
fn qos1_publish_reaches_3_1_1_and_5_0_subscribers_at_qos1() {
    let server = TestServer::start();
    let port = server.port();
    let sub4 = Sub::subscribed(port, "-q 1 -C 1 -v -t chat/room", "1");
    let sub5 = Sub::subscribed(port, "-V mqttv5 -q 1 -C 1 -v -t chat/+", "1");

    let publisher = publish_ok(port, "-t chat/room -m 'hello there'");
    assert!(
        publisher.has_line_ending("sending PUBLISH (d0, q1, r0, m1, 'chat/room', ... (11 bytes))"),
        "{publisher:#?}"
    );

    for (version, sub) in [("3.1.1", sub4), ("5.0", sub5)] {
        let out = sub.finish();
        assert_eq!(out.code, 0, "{version}: {out:#?}");
        assert_eq!(out.messages(), ["chat/room hello there"], "{version}");
        assert!(
            out.has_line_ending("received PUBLISH (d0, q1, r0, m1, 'chat/room', ... (11 bytes))"),
            "{version} gets it at QoS 1, not retained: {out:#?}"
        );
        assert!(
            out.has_line_ending("sending PUBACK (m1, rc0)"),
            "{version}: {out:#?}"
        );
        assert_eq!(out.stderr, "", "{version}");
    }
}

#[test]
fn retained_message_is_kept_for_later_subscribers_and_cleared_by_an_empty_one() {
    let server = TestServer::start();
    let port = server.port();
    publish_ok(port, "-r -t status/alice -m online");
    publish_ok(port, "-r -t status/alice -m away");

    // `%r`: the retain flag as delivered.
    for version in ["mqttv311", "mqttv5"] {
        let later = run(
            "mosquitto_sub",
            port,
            &format!("-V {version} -C 1 -W 5 -F '%t %r %p' -t status/#"),
        );
        assert_eq!(later.code, 0, "{version}: {later:#?}");
        assert_eq!(later.stdout, "status/alice 1 away\n", "{version}");
    }

    // `-n`: a zero-length retained message removes the retained one.
    publish_ok(port, "-r -n -t status/alice");
    let after = run("mosquitto_sub", port, "-d -W 1 -v -t status/#");
    assert_eq!(after.code, TIMED_OUT, "nothing retained: {after:#?}");
    assert_eq!(after.stderr, "Timed out\n");
    assert_eq!(after.messages(), Vec::<&str>::new(), "{after:#?}");
    assert!(!after.stdout.contains("received PUBLISH"), "{after:#?}");
}

#[test]
fn will_goes_out_when_a_client_is_killed_but_not_after_a_clean_exit() {
    let server = TestServer::start();
    let port = server.port();
    let will = "--will-qos 1 --will-payload gone --will-topic";

    let watcher = Sub::subscribed(port, "-q 1 -C 1 -v -t will/#", "1");
    let doomed = Sub::subscribed(port, &format!("-k 5 -t doomed/in {will} will/doomed"), "0");
    doomed.kill();
    let out = watcher.finish();
    assert_eq!(out.code, 0, "{out:#?}");
    assert_eq!(out.messages(), ["will/doomed gone"]);

    // A client that exits by itself (-C 1) sends DISCONNECT first: its will is discarded.
    let watcher = Sub::subscribed(port, "-q 1 -C 1 -v -t will/#", "1");
    let polite = Sub::subscribed(
        port,
        &format!("-k 5 -C 1 -t polite/in {will} will/polite"),
        "0",
    );
    publish_ok(port, "-t polite/in -m bye");
    let out = polite.finish();
    assert_eq!(out.code, 0, "{out:#?}");
    assert_eq!(out.messages(), ["bye"]);
    assert!(out.has_line_ending("sending DISCONNECT"), "{out:#?}");
    // A wrongly published will would follow the server's handling of that DISCONNECT, which
    // has no observable completion: give it a moment, then send a marker. The watcher's one
    // message must be the marker.
    std::thread::sleep(Duration::from_millis(500));
    publish_ok(port, "-t will/marker -m end");
    let out = watcher.finish();
    assert_eq!(out.code, 0, "{out:#?}");
    assert_eq!(out.messages(), ["will/marker end"]);
}

#[test]
fn persistent_session_queues_qos1_while_the_client_is_away() {
    let server = TestServer::start();
    let port = server.port();
    let session = "-c -i phone -q 1 -t inbox/#";

    // 3.1.1, leaving cleanly: -E exits (with DISCONNECT) once subscribed.
    let first = run("mosquitto_sub", port, &format!("{session} -d -E"));
    assert_eq!(first.code, 0, "{first:#?}");
    assert!(
        first.stdout.contains("Subscribed (mid: 1): 1\n"),
        "{first:#?}"
    );
    assert!(
        first.stdout.ends_with("Client phone sending DISCONNECT\n"),
        "{first:#?}"
    );
    away_then_back(port, session, &["m0", "m1", "m2"]);

    // 5.0, killed while connected: the session (expiry "never", capped by the server) stays.
    let session = format!("{session} -V 5");
    Sub::subscribed(port, &session, "1").kill();
    away_then_back(port, &session, &["n0", "n1"]);
}

/// While the `phone` session is away: a QoS 0 message (not kept for absent clients), then QoS 1
/// messages; reconnecting with the same session arguments gets exactly the QoS 1 ones, in order.
fn away_then_back(port: u16, session: &str, payloads: &[&str]) {
    let lost = run("mosquitto_pub", port, "-q 0 -t inbox/1 -m qos0-lost");
    assert_eq!(lost.code, 0, "{lost:#?}");
    for p in payloads {
        publish_ok(port, &format!("-t inbox/1 -m {p}"));
    }
    let count = payloads.len();
    let back = run(
        "mosquitto_sub",
        port,
        &format!("{session} -d -v -C {count} -W 5"),
    );
    assert_eq!(back.code, 0, "{back:#?}");
    let want: Vec<String> = payloads.iter().map(|p| format!("inbox/1 {p}")).collect();
    assert_eq!(back.messages(), want, "{back:#?}");
    assert!(!back.stdout.contains(", q0, "), "all at QoS 1: {back:#?}");
}

#[tokio::test]
async fn mosquitto_rr_gets_the_reply_of_a_5_0_responder() {
    let server = TestServer::start();
    let port = server.port();
    let mut o = v5::MqttOptions::new("responder", "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(5));
    let (mut responder, _) = v5::Client::connect(o).await;
    responder
        .client
        .subscribe("req/x", QoS::AtLeastOnce)
        .await
        .unwrap();
    responder.suback().await;

    let plain = "-V 5 -t req/x -e resp/x -m ping -W 5";
    let cases = [
        // As a user would type it; mosquitto_rr 2.0 sends no correlation data of its own.
        (plain.to_string(), None, "pong\n"),
        (
            format!("{plain} -D publish correlation-data c0rr -F '%t|%D|%p'"),
            Some(&b"c0rr"[..]),
            "resp/x|c0rr|pong\n",
        ),
    ];
    for (args, correlation, printed) in cases {
        // mosquitto_rr subscribes to the response topic before it sends the request.
        let rr = tokio::task::spawn_blocking(move || run("mosquitto_rr", port, &args));

        let request = responder.publish().await;
        assert_eq!(request.topic, "req/x");
        assert_eq!(&request.payload[..], b"ping");
        let props = request.properties.expect("a request carries properties");
        assert_eq!(props.response_topic.as_deref(), Some("resp/x"));
        assert_eq!(props.correlation_data.as_deref(), correlation);
        let reply = PublishProperties {
            correlation_data: props.correlation_data.clone(),
            ..Default::default()
        };
        responder
            .client
            .publish_with_properties("resp/x", QoS::AtLeastOnce, false, "pong", reply)
            .await
            .unwrap();

        let out = rr.await.unwrap();
        assert_eq!(out.code, 0, "{out:#?}");
        assert_eq!(out.stdout, printed, "{out:#?}");
        assert_eq!(out.stderr, "");
    }
}

#[test]
fn user_properties_reach_5_0_subscribers_and_3_1_1_gets_the_payload() {
    let server = TestServer::start();
    let port = server.port();
    let sub5 = Sub::subscribed(port, "-V 5 -q 1 -C 1 -F '%t|%P|%p' -t props/#", "1");
    let sub4 = Sub::subscribed(port, "-q 1 -C 1 -v -t props/#", "1");
    publish_ok(
        port,
        "-V 5 -t props/x -m body \
         -D publish user-property k v -D publish user-property room 'the lobby'",
    );

    let out = sub5.finish();
    assert_eq!(out.code, 0, "{out:#?}");
    assert_eq!(out.messages(), ["props/x|k:v room:the lobby|body"]);
    let out = sub4.finish();
    assert_eq!(out.code, 0, "{out:#?}");
    assert_eq!(out.messages(), ["props/x body"]);
    assert!(
        out.has_line_ending("received PUBLISH (d0, q1, r0, m1, 'props/x', ... (4 bytes))"),
        "3.1.1 gets the payload and nothing else: {out:#?}"
    );

    // The server still serves both versions.
    publish_ok(port, "-t props/after -m 'still here'");
    publish_ok(port, "-V 5 -t props/after -m 'still here'");
}

#[test]
fn acl_refusals_as_the_mosquitto_clients_report_them() {
    let acl_dir = tempfile::tempdir().unwrap();
    let acl = acl_dir.path().join("acl");
    std::fs::write(&acl, "topic read open/#\ntopic readwrite rw/#\n").unwrap();
    let server = TestServer::start_with(|c| c.auth.acl_file = acl.display().to_string());
    let port = server.port();

    // 5.0: SUBACK 0x87; with every filter refused, mosquitto_sub says so and quits.
    let denied = run("mosquitto_sub", port, "-d -V 5 -W 5 -t secret/#");
    assert_eq!(denied.code, 0, "{denied:#?}");
    assert!(
        denied.stdout.contains("Subscribed (mid: 1): 135\n"),
        "{denied:#?}"
    );
    assert_eq!(denied.stderr, "All subscription requests were denied.\n");
    assert_eq!(denied.messages(), Vec::<&str>::new());
    // 3.1.1: 0x80.
    let denied = run("mosquitto_sub", port, "-d -W 5 -t secret/#");
    assert!(
        denied.stdout.contains("Subscribed (mid: 1): 128\n"),
        "{denied:#?}"
    );
    assert_eq!(denied.stderr, "All subscription requests were denied.\n");

    // 3.1.1 with one filter refused and two granted stays, and gets only what it may read.
    let sub4 = Sub::subscribed(
        port,
        "-q 1 -C 1 -v -t secret/# -t open/# -t rw/#",
        "128, 1, 1",
    );
    // open/# is read-only: a 5.0 publisher gets PUBACK 0x87 (Not authorized).
    let refused = run("mosquitto_pub", port, "-d -V 5 -q 1 -t open/x -m denied");
    assert_eq!(refused.code, 0, "{refused:#?}");
    assert!(
        refused.has_line_ending("received PUBACK (Mid: 1, RC:135)"),
        "{refused:#?}"
    );
    assert_eq!(
        refused.stderr,
        "Warning: Publish 1 failed: Not authorized.\n"
    );
    // 3.1.1 has no negative PUBACK: acknowledged, and dropped.
    publish_ok(port, "-t secret/x -m leak");
    publish_ok(port, "-t open/x -m 'denied too'");
    // rw/# may be written and read.
    publish_ok(port, "-V 5 -t rw/x -m fine");

    let out = sub4.finish();
    assert_eq!(out.code, 0, "{out:#?}");
    assert_eq!(out.messages(), ["rw/x fine"], "{out:#?}");
}

#[test]
fn wrong_credentials_and_anonymous_refusal() {
    let server = TestServer::start();
    let port = server.port();
    let bob = "-d -u bob -P wrong -W 5 -t a/b";

    let v4 = run("mosquitto_sub", port, bob);
    assert_eq!(v4.code, 5, "{v4:#?}");
    assert!(v4.has_line_ending("received CONNACK (5)"), "{v4:#?}");
    assert_eq!(
        v4.stderr,
        "Connection error: Connection Refused: not authorised.\n"
    );
    let v5 = run("mosquitto_sub", port, &format!("{bob} -V 5"));
    assert_eq!(v5.code, 0x86, "{v5:#?}");
    assert!(v5.has_line_ending("received CONNACK (134)"), "{v5:#?}");
    assert_eq!(v5.stderr, "Connection error: Bad User Name or Password\n");
    // The same server lets anonymous clients in.
    publish_ok(port, "-t a/b -m anonymous");

    let closed = TestServer::start_with(|c| c.auth.allow_anonymous = false);
    let port = closed.port();
    let anonymous = "-d -W 5 -t a/b";
    let v4 = run("mosquitto_sub", port, anonymous);
    assert_eq!(v4.code, 5, "{v4:#?}");
    assert!(v4.has_line_ending("received CONNACK (5)"), "{v4:#?}");
    assert_eq!(
        v4.stderr,
        "Connection error: Connection Refused: not authorised.\n"
    );
    let v5 = run("mosquitto_sub", port, &format!("{anonymous} -V 5"));
    assert_eq!(v5.code, 0x87, "{v5:#?}");
    assert!(v5.has_line_ending("received CONNACK (135)"), "{v5:#?}");
    assert_eq!(v5.stderr, "Connection error: Not authorized\n");
    // Credentials do not help: there is no account store to check them against.
    let v5 = run("mosquitto_sub", port, &format!("{bob} -V 5"));
    assert_eq!(v5.code, 0x86, "{v5:#?}");
    assert_eq!(v5.stderr, "Connection error: Bad User Name or Password\n");
}
