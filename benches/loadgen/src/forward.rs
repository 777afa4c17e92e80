//! The raw baseline: a trivial TCP forwarder with no MQTT in it. Each subscriber connection
//! registers under a pair number; the publisher of that pair has every data frame copied to it
//! and gets an ack frame back per data frame, so the packet pattern is that of QoS 1 through a
//! broker (PUBLISH in, PUBACK out, PUBLISH forwarded, PUBACK back) without any broker work. It
//! shows what this machine's loopback and a tokio process can do at best.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use bytes::{BufMut, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpStream};

use crate::wire::raw;

type Waiting = Arc<Mutex<HashMap<u32, OwnedWriteHalf>>>;

pub fn serve(listen: SocketAddr) -> anyhow::Result<()> {
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async move {
        let listener = TcpListener::bind(listen)
            .await
            .with_context(|| format!("cannot listen on {listen}"))?;
        eprintln!("forwarder listening on {listen}");
        let waiting: Waiting = Arc::default();
        loop {
            let (stream, _) = listener.accept().await?;
            let waiting = waiting.clone();
            tokio::spawn(async move {
                if let Err(e) = handle(stream, waiting).await {
                    eprintln!("forwarder: connection ended: {e:#}");
                }
            });
        }
    })
}

async fn handle(mut stream: TcpStream, waiting: Waiting) -> anyhow::Result<()> {
    stream.set_nodelay(true)?;
    let mut hello = [0u8; 6];
    stream.read_exact(&mut hello).await?;
    anyhow::ensure!(hello[0] == raw::HELLO, "first frame is not HELLO");
    let publisher = hello[1] == 1;
    let pair = u32::from_be_bytes([hello[2], hello[3], hello[4], hello[5]]);
    let (mut rd, mut wr) = stream.into_split();
    if !publisher {
        wr.write_all(&[raw::HELLO_OK]).await?;
        waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(pair, wr);
        // The subscriber only sends acks back: read and drop them.
        let mut buf = vec![0u8; 16 * 1024];
        while rd.read(&mut buf).await? > 0 {}
        return Ok(());
    }
    let Some(mut to_sub) = waiting
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&pair)
    else {
        anyhow::bail!("publisher for pair {pair} came before its subscriber");
    };
    wr.write_all(&[raw::HELLO_OK]).await?;
    let mut rbuf = BytesMut::with_capacity(64 * 1024);
    let mut acks = BytesMut::with_capacity(4 * 1024);
    loop {
        if rd.read_buf(&mut rbuf).await? == 0 {
            return Ok(());
        }
        // Forward every complete frame in one write, ack each one in another.
        let mut end = 0;
        while let Some(len) = raw::frame_len(&rbuf[end..])? {
            if rbuf[end] == raw::DATA {
                acks.put_u8(raw::ACK);
                acks.put_slice(&rbuf[end + 1..end + 3]);
            }
            end += len;
        }
        if end > 0 {
            let frames = rbuf.split_to(end);
            to_sub.write_all(&frames).await?;
            wr.write_all(&acks).await?;
            acks.clear();
        }
        if rbuf.capacity() - rbuf.len() < 4096 {
            rbuf.reserve(64 * 1024);
        }
    }
}
