//! rumqttc clients (3.1.1 and 5.0) driven for tests: the event loop runs in a task and every
//! incoming packet lands in a channel the test reads with a timeout. No reconnects: a test
//! that wants to reconnect makes a new client.

use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::WAIT;

/// The event loop ended; the error it ended with.
#[derive(Debug)]
pub struct Ended(pub String);

macro_rules! test_client {
    ($name:ident, $($m:ident)::+, $publish:ty) => {
        pub mod $name {
            use super::*;
            use $($m)::+ as m;
            pub use m::{AsyncClient, MqttOptions};

            pub struct Client {
                pub client: AsyncClient,
                events: mpsc::UnboundedReceiver<Result<Incoming, Ended>>,
                task: JoinHandle<()>,
            }

            pub type Incoming = m::Incoming;

            impl Client {
                /// Connects and waits for CONNACK; returns the client and the CONNACK.
                pub async fn connect(options: MqttOptions) -> (Client, Incoming) {
                    let (c, first) = Self::try_connect(options).await;
                    match first {
                        Ok(ack) => (c, ack),
                        Err(e) => {
                            c.task.abort();
                            panic!("connect failed: {e:?}")
                        }
                    }
                }

                /// Connects; returns the CONNACK or the error the event loop stopped with.
                pub async fn try_connect(options: MqttOptions) -> (Client, Result<Incoming, Ended>) {
                    let (client, mut eventloop) = AsyncClient::new(options, 1000);
                    let (tx, rx) = mpsc::unbounded_channel();
                    let task = tokio::spawn(async move {
                        loop {
                            match eventloop.poll().await {
                                Ok(m::Event::Incoming(p)) => {
                                    if tx.send(Ok(p)).is_err() {
                                        return;
                                    }
                                }
                                Ok(m::Event::Outgoing(_)) => {}
                                Err(e) => {
                                    let _ = tx.send(Err(Ended(format!("{e:?}"))));
                                    return;
                                }
                            }
                        }
                    });
                    let mut c = Client {
                        client,
                        events: rx,
                        task,
                    };
                    let first = c.next().await;
                    (c, first)
                }

                /// The next incoming packet (or the end of the connection).
                pub async fn next(&mut self) -> Result<Incoming, Ended> {
                    match tokio::time::timeout(WAIT, self.events.recv()).await {
                        Ok(Some(item)) => item,
                        Ok(None) => Err(Ended("event loop gone".into())),
                        Err(_) => panic!("timed out waiting for a packet"),
                    }
                }

                /// Reads until the connection ends; why it ended.
                pub async fn ended(&mut self) -> Ended {
                    loop {
                        if let Err(e) = self.next().await {
                            return e;
                        }
                    }
                }

                /// The next PUBLISH, skipping acknowledgements and pings.
                pub async fn publish(&mut self) -> $publish {
                    loop {
                        match self.next().await {
                            Ok(Incoming::Publish(p)) => return p,
                            Ok(_) => continue,
                            Err(e) => panic!("connection ended while waiting for a publish: {e:?}"),
                        }
                    }
                }

                /// Waits for `n` PUBACKs, skipping other packets; panics if the connection ends.
                pub async fn pubacks(&mut self, n: usize) {
                    let mut acked = 0;
                    while acked < n {
                        match self.next().await {
                            Ok(Incoming::PubAck(_)) => acked += 1,
                            Ok(_) => {}
                            Err(e) => panic!("connection ended while waiting for PUBACKs: {e:?}"),
                        }
                    }
                }

                /// Waits for the SUBACK of the latest SUBSCRIBE.
                pub async fn suback(&mut self) -> Incoming {
                    loop {
                        match self.next().await {
                            Ok(p @ Incoming::SubAck(_)) => return p,
                            Ok(_) => continue,
                            Err(e) => panic!("connection ended while waiting for SUBACK: {e:?}"),
                        }
                    }
                }

                /// Hands every PUBLISH that arrives within `window` to `each`, which asserts
                /// that it is not one that must stay away.
                pub async fn publishes_within(&mut self, window: Duration, mut each: impl FnMut($publish)) {
                    let deadline = tokio::time::Instant::now() + window;
                    while let Ok(p) = tokio::time::timeout_at(deadline, self.publish()).await {
                        each(p);
                    }
                }

                /// Asserts no PUBLISH arrives within `quiet`.
                pub async fn no_publish(&mut self, quiet: Duration) {
                    let deadline = tokio::time::Instant::now() + quiet;
                    loop {
                        match tokio::time::timeout_at(deadline, self.events.recv()).await {
                            Err(_) => return,
                            Ok(Some(Ok(Incoming::Publish(p)))) => panic!("unexpected publish: {p:?}"),
                            Ok(Some(_)) => continue,
                            Ok(None) => return,
                        }
                    }
                }

                /// Stops the event loop without DISCONNECT: the socket just closes.
                pub fn vanish(self) {
                    self.task.abort();
                }
            }
        }
    };
}

test_client!(v4, rumqttc, rumqttc::Publish);
test_client!(v5, rumqttc::v5, rumqttc::v5::mqttbytes::v5::Publish);
