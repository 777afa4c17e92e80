//! The same message flows with rumqttc's `AsyncClient` and `EventLoop` instead of the lean
//! client (`loadgen run --client rumqttc`). It exists to check whether rumqttc's event loop,
//! rather than the broker, limits a run: compare `loadgen CPU` and `delivered` of both clients.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::BytesMut;
use hdrhistogram::Histogram;
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Outgoing, Packet, QoS};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

use crate::procstat::{CpuMark, Proc};
use crate::results::histogram;
use crate::scenarios::{FlowOutcome, FlowSpec, Names, Target, TopicScheme};
use crate::wire::{instant_at, now_ns, Stamp};

async fn connect(t: &Target, id: &str, inflight: u16) -> anyhow::Result<(AsyncClient, EventLoop)> {
    let mut o = MqttOptions::new(id, t.addr.ip().to_string(), t.addr.port());
    o.set_keep_alive(Duration::from_secs(120));
    o.set_inflight(inflight);
    o.set_clean_session(true);
    let (client, mut el) = AsyncClient::new(o, 1024);
    loop {
        match tokio::time::timeout(Duration::from_secs(30), el.poll())
            .await
            .context("no CONNACK in time")??
        {
            Event::Incoming(Packet::ConnAck(_)) => return Ok((client, el)),
            _ => continue,
        }
    }
}

struct Shared {
    warm_ns: u64,
    end_ns: AtomicU64,
    delivered: AtomicU64,
    delivered_window: AtomicU64,
}

/// Runs a flow with rumqttc clients (see [`crate::scenarios::run_flow`]).
pub async fn run_flow(t: &Target, spec: FlowSpec, names: Names) -> anyhow::Result<FlowOutcome> {
    anyhow::ensure!(
        names.scheme == TopicScheme::Plain,
        "--client rumqttc runs the plain topic scheme only"
    );
    let (run, scenario, n) = (&names.run, &names.scenario, spec.subs_per_pub);
    let inflight = u16::try_from(spec.ack_window).unwrap_or(u16::MAX);
    let mut subs = Vec::new();
    for p in 0..spec.publishers {
        for j in 0..spec.subs_per_pub {
            let (client, mut el) =
                connect(t, &format!("lg-{run}-{scenario}-rs{p}-{j}"), 100).await?;
            client.subscribe(names.flow(p, n), QoS::AtLeastOnce).await?;
            loop {
                if let Event::Incoming(Packet::SubAck(_)) = el.poll().await? {
                    break;
                }
            }
            subs.push((p, client, el));
        }
    }
    let mut pubs = Vec::new();
    for p in 0..spec.publishers {
        pubs.push(connect(t, &format!("lg-{run}-{scenario}-rp{p}"), inflight).await?);
    }

    let start_ns = now_ns() + 50_000_000;
    let warm_ns = start_ns + spec.warmup.as_nanos() as u64;
    let deadline_ns = warm_ns + spec.duration.as_nanos() as u64;
    let shared = Arc::new(Shared {
        warm_ns,
        end_ns: AtomicU64::new(u64::MAX),
        delivered: AtomicU64::new(0),
        delivered_window: AtomicU64::new(0),
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut windows: Vec<Vec<Arc<Semaphore>>> = vec![Vec::new(); spec.publishers];

    let mut sub_tasks = JoinSet::new();
    for (p, client, mut el) in subs {
        let window = spec.window.map(|w| Arc::new(Semaphore::new(w)));
        if let Some(w) = &window {
            windows[p].push(w.clone());
        }
        let (shared, mut stop) = (shared.clone(), stop_rx.clone());
        sub_tasks.spawn(async move {
            let mut hist = histogram();
            loop {
                tokio::select! {
                    ev = el.poll() => {
                        if let Event::Incoming(Packet::Publish(p)) = ev? {
                            let now = now_ns();
                            let s = Stamp::read(&p.payload).context("no stamp")?;
                            if s.ts_ns >= shared.warm_ns {
                                hist.saturating_record(now.saturating_sub(s.ts_ns).max(1));
                            }
                            if let Some(w) = &window {
                                w.add_permits(1);
                            }
                            shared.delivered.fetch_add(1, Relaxed);
                            if now >= shared.warm_ns && now <= shared.end_ns.load(Relaxed) {
                                shared.delivered_window.fetch_add(1, Relaxed);
                            }
                        }
                    }
                    _ = stop.changed() => break,
                }
            }
            let _ = client.try_disconnect();
            Ok::<_, anyhow::Error>(hist)
        });
    }

    tokio::time::sleep_until(instant_at(start_ns)).await;
    let mut pub_tasks = JoinSet::new();
    for (p, ((client, mut el), sub_windows)) in pubs.into_iter().zip(windows).enumerate() {
        let topic = names.flow(p, n);
        let spec = spec.clone();
        let mut stop = stop_rx.clone();
        // The event loop: writes what the client queued, records PUBACK latency.
        let acks = tokio::spawn(async move {
            let mut hist = histogram();
            let mut sent_at = vec![0u64; usize::from(u16::MAX) + 1];
            let mut acked = 0u64;
            loop {
                tokio::select! {
                    ev = el.poll() => match ev? {
                        Event::Outgoing(Outgoing::Publish(pkid)) => sent_at[usize::from(pkid)] = now_ns(),
                        Event::Incoming(Packet::PubAck(a)) => {
                            let t = sent_at[usize::from(a.pkid)];
                            if t >= warm_ns {
                                hist.saturating_record(now_ns().saturating_sub(t).max(1));
                            }
                            acked += 1;
                        }
                        _ => {}
                    },
                    _ = stop.changed() => break,
                }
            }
            Ok::<_, anyhow::Error>((hist, acked))
        });
        pub_tasks.spawn(async move {
            let per_pub_max = (spec.max_msgs / spec.publishers as u64).max(1);
            let rate = spec.rate.map(|r| r / spec.publishers as f64);
            let deadline = instant_at(deadline_ns);
            let mut seq = 0u64;
            let mut buf = BytesMut::new();
            'run: while now_ns() < deadline_ns && seq < per_pub_max {
                if let Some(r) = rate {
                    let next = start_ns + (seq as f64 * 1e9 / r) as u64;
                    if next > now_ns() {
                        tokio::time::sleep_until(instant_at(next).min(deadline)).await;
                        continue;
                    }
                }
                for w in &sub_windows {
                    match tokio::time::timeout_at(deadline, w.acquire()).await {
                        Ok(p) => p?.forget(),
                        Err(_) => break 'run,
                    }
                }
                let stamp = Stamp {
                    ts_ns: now_ns(),
                    seq,
                    publisher: p as u32,
                };
                stamp.write(&mut buf, spec.payload);
                let payload = buf.split().freeze();
                if tokio::time::timeout_at(
                    deadline,
                    client.publish_bytes(topic.clone(), QoS::AtLeastOnce, false, payload),
                )
                .await
                .is_err()
                {
                    break;
                }
                seq += 1;
            }
            Ok::<_, anyhow::Error>((seq, client, acks))
        });
    }

    tokio::time::sleep_until(instant_at(warm_ns)).await;
    let broker_mark = CpuMark::take(t.broker)?;
    let self_mark = CpuMark::take(Proc { pid: 0 })?;
    let mut published = 0;
    let mut clients = Vec::new();
    while let Some(r) = pub_tasks.join_next().await {
        let (sent, client, acks) = r??;
        published += sent;
        clients.push((client, acks));
    }
    let window_end = now_ns().min(deadline_ns).max(warm_ns);
    shared.end_ns.store(window_end, Relaxed);
    let broker_cpu = broker_mark.since(t.broker)?;
    let self_cpu = self_mark.since(Proc { pid: 0 })?;

    let expected = published * spec.subs_per_pub as u64;
    let drain_until = Instant::now() + spec.drain;
    while shared.delivered.load(Relaxed) < expected && Instant::now() < drain_until {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let _ = stop_tx.send(true);
    let mut e2e = histogram();
    while let Some(r) = sub_tasks.join_next().await {
        e2e.add(&r??)?;
    }
    let mut puback: Histogram<u64> = histogram();
    let mut acked = 0;
    for (client, acks) in clients {
        let (h, a) = acks.await??;
        puback.add(&h)?;
        acked += a;
        let _ = client.try_disconnect();
    }
    let delivered = shared.delivered.load(Relaxed);
    if delivered == 0 {
        bail!("nothing was delivered ({published} messages published)");
    }
    Ok(FlowOutcome {
        published,
        acked,
        expected,
        delivered,
        delivered_in_window: shared.delivered_window.load(Relaxed),
        window_secs: (window_end - warm_ns) as f64 / 1e9,
        out_of_order: 0,
        e2e,
        puback,
        broker_cpu,
        self_cpu,
        servers_cpu: None,
    })
}
