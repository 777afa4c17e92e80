//! The router's task: one loop that takes [`Event`]s in bursts and ticks once a second.

use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::{mailbox, Event, Router};

/// How many events may wait for the router before publishers feel back-pressure.
const EVENT_QUEUE: usize = 4096;

/// Most events routed, and longest spent, before the connections they pushed to are woken.
const BURST: usize = 64;
const BURST_TIME: Duration = Duration::from_millis(5);

/// Starts the router task; it ends when every sender is dropped.
pub fn spawn(router: Router) -> mpsc::Sender<Event> {
    let (tx, rx) = mpsc::channel(EVENT_QUEUE);
    tokio::spawn(run(router, rx));
    tx
}

async fn run(mut router: Router, mut events: mpsc::Receiver<Event>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            event = events.recv() => match event {
                Some(event) => mailbox::deferring_wakes(|| {
                    let first = Instant::now();
                    router.handle(event, first);
                    // Events already waiting (a publisher's burst, a batch of acks) are routed
                    // before any connection wakes, so each wakes to a batch it writes at once.
                    // Bounded in count and time, so the burst's first messages are not held
                    // back for long (a fan-out to thousands costs far more per event).
                    for _ in 1..BURST {
                        let Ok(event) = events.try_recv() else { break };
                        let now = Instant::now();
                        router.handle(event, now);
                        if now - first >= BURST_TIME {
                            break;
                        }
                    }
                }),
                None => break,
            },
            _ = tick.tick() => router.tick(Instant::now()),
        }
    }
}
