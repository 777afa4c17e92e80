//! The byte pipes MQTT runs over: TCP, TLS, and WebSocket (plain or over TLS).
//!
//! A plain TCP connection waits for readability before it holds a read buffer, so an idle
//! connection costs no buffer at all; the others read into a reserved buffer because their
//! libraries buffer internally anyway.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::WebSocketStream;

/// Read size for transports that need a buffer up front.
const READ_CHUNK: usize = 4096;

/// A byte stream: TCP or TLS.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

pub enum Transport {
    Tcp(TcpStream),
    Stream(Box<dyn Io>),
    Ws(Box<WebSocketStream<Box<dyn Io>>>),
}

impl Transport {
    /// Upgrades `io` to a WebSocket carrying MQTT (subprotocol `mqtt`, RFC 6455 framing), with
    /// frames bounded by the broker's packet limit.
    pub async fn websocket(io: Box<dyn Io>, max_frame: usize) -> io::Result<Transport> {
        // tungstenite defaults to 128 KiB read and write buffers per socket; MQTT packets are
        // small, and an idle connection should cost next to nothing.
        let config = WebSocketConfig::default()
            .read_buffer_size(READ_CHUNK)
            .write_buffer_size(0)
            .max_message_size(Some(max_frame))
            .max_frame_size(Some(max_frame));
        let ws =
            tokio_tungstenite::accept_hdr_async_with_config(io, choose_subprotocol, Some(config))
                .await
                .map_err(io::Error::other)?;
        Ok(Transport::Ws(Box::new(ws)))
    }

    /// Reads more bytes into `buf`; `Ok(0)` means the peer closed.
    pub async fn read(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        std::future::poll_fn(|cx| self.poll_read(cx, buf)).await
    }

    /// [`Transport::read`] as a poll function: a connection waits on it in its select for its
    /// whole life, where an async read's state (a readiness future) would be held with it.
    pub fn poll_read(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut BytesMut,
    ) -> Poll<io::Result<usize>> {
        match self {
            Transport::Tcp(s) => loop {
                ready!(s.poll_read_ready(cx))?;
                // Only now: an idle connection holds no read buffer.
                if buf.capacity() - buf.len() < READ_CHUNK {
                    buf.reserve(READ_CHUNK);
                }
                match s.try_read_buf(buf) {
                    Ok(n) => return Poll::Ready(Ok(n)),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    Err(e) => return Poll::Ready(Err(e)),
                }
            },
            Transport::Stream(s) => {
                buf.reserve(READ_CHUNK);
                tokio_util::io::poll_read_buf(Pin::new(s), cx, buf)
            }
            Transport::Ws(ws) => loop {
                match ready!(ws.poll_next_unpin(cx)) {
                    None => return Poll::Ready(Ok(0)),
                    Some(Err(e)) => return Poll::Ready(Err(io::Error::other(e))),
                    Some(Ok(WsMessage::Binary(data))) => {
                        if data.is_empty() {
                            continue;
                        }
                        buf.extend_from_slice(&data);
                        return Poll::Ready(Ok(data.len()));
                    }
                    Some(Ok(WsMessage::Close(_))) => return Poll::Ready(Ok(0)),
                    // Pings are answered by tungstenite on the next write or flush.
                    Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_) | WsMessage::Frame(_))) => {
                        continue
                    }
                    Some(Ok(WsMessage::Text(_))) => {
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            "MQTT over WebSocket must use binary frames",
                        )))
                    }
                }
            },
        }
    }

    /// Writes all of `data`.
    pub async fn write(&mut self, data: Bytes) -> io::Result<()> {
        match self {
            Transport::Tcp(s) => s.write_all(&data).await,
            Transport::Stream(s) => {
                s.write_all(&data).await?;
                s.flush().await
            }
            Transport::Ws(ws) => ws
                .send(WsMessage::Binary(data))
                .await
                .map_err(io::Error::other),
        }
    }

    /// Closes the write side politely (best effort).
    pub async fn shutdown(&mut self) {
        let _ = match self {
            Transport::Tcp(s) => s.shutdown().await,
            Transport::Stream(s) => s.shutdown().await,
            Transport::Ws(ws) => ws.as_mut().close(None).await.map_err(io::Error::other),
        };
    }
}

/// Accepts the WebSocket upgrade when the client offers the `mqtt` subprotocol (or none, as some
/// embedded clients do) and answers with `mqtt`.
// The signature is tungstenite's callback type; its error type is theirs.
#[allow(clippy::result_large_err)]
fn choose_subprotocol(req: &Request, mut resp: Response) -> Result<Response, ErrorResponse> {
    let offered = req
        .headers()
        .get_all("Sec-WebSocket-Protocol")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect::<Vec<_>>();
    if offered.is_empty() {
        return Ok(resp);
    }
    if offered.iter().any(|p| p.eq_ignore_ascii_case("mqtt")) {
        resp.headers_mut()
            .insert("Sec-WebSocket-Protocol", HeaderValue::from_static("mqtt"));
        return Ok(resp);
    }
    let mut refusal = ErrorResponse::new(Some("subprotocol mqtt required".into()));
    *refusal.status_mut() = StatusCode::BAD_REQUEST;
    Err(refusal)
}
