//! The downstream side of the fast path: one HTTP/1 connection's loop. It reads each request head (and a
//! small body whole) under one deadline per request, has [`exchange`](super::exchange) serve it, and keeps
//! the connection alive, closes it, or hands it to pingora for one request.

use super::codec::request_head;
use super::handoff::hand_over;
use super::pool::Upstreams;
use crate::forward::IpText;
use crate::Shared;
use pingora::protocols::Stream;
use pingora::server::ShutdownWatch;
use std::io::Write as _;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::{sleep_until, timeout, Instant, Sleep};

/// Initial size of the downstream read buffer; it grows up to the head limit.
const HEAD_BUF: usize = 4 * 1024;
/// Size of the upstream read buffer (a larger response head grows it); also the size above which a buffer a
/// request grew is not kept on an idle connection.
pub(super) const BODY_BUF: usize = 16 * 1024;

/// How the connection loop goes on after a request.
pub(super) enum Next {
    KeepAlive,
    Close,
}

/// The HTTP/1 server of one listener.
pub(crate) struct H1 {
    pub(crate) shared: Arc<Shared>,
    pub(crate) tls: bool,
    pub(crate) upstreams: Arc<Upstreams>,
}

/// Per-connection state.
struct Conn {
    io: Io,
    /// Bytes read from the client: `buf[..filled]`.
    buf: Vec<u8>,
    filled: usize,
    client_ip: Option<IpAddr>,
    /// `client_ip` as text, for `X-Forwarded-For`.
    client_ip_text: Option<IpText>,
    /// A request was served on this connection: the next wait is keep-alive idle time.
    reused: bool,
    /// The header-read (then keep-alive idle) deadline. One timer per connection, moved forward per request:
    /// tokio extends a later deadline in place, where a timeout per read would register and cancel a timer.
    head_timer: Pin<Box<Sleep>>,
    /// Completes when the proxy stops.
    stop: Pin<Box<dyn std::future::Future<Output = ()> + Send>>,
}

/// The client stream and the buffers kept across its requests.
pub(super) struct Io {
    pub(super) stream: Stream,
    /// Upstream read buffer.
    pub(super) rbuf: Vec<u8>,
    /// The request head sent upstream.
    pub(super) out: Vec<u8>,
    /// The response head sent to the client, without its final empty line.
    pub(super) head: Vec<u8>,
    /// The per-try deadline of upstream reads and writes (one timer per connection, as `head_timer`).
    pub(super) up_timer: Pin<Box<Sleep>>,
}

/// A deadline far enough away to mean "none".
fn far() -> Instant {
    Instant::now() + Duration::from_secs(86_400 * 365)
}

/// `f`, or `None` once `timer` fires.
pub(super) async fn before<F: std::future::Future>(timer: &mut Pin<Box<Sleep>>, f: F) -> Option<F::Output> {
    tokio::select! {
        biased;
        r = f => Some(r),
        _ = timer.as_mut() => None,
    }
}

impl H1 {
    /// Serve HTTP/1 requests on `stream` until it closes, or return it (with the bytes read so far replayed)
    /// for pingora to serve the next request. `read`: bytes already read from the client (see
    /// [`take_back`](super::take_back)); `deadline`: when the first request header must be complete.
    pub(crate) async fn serve(
        &self,
        stream: Stream,
        read: Vec<u8>,
        reused: bool,
        deadline: Option<Instant>,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let client_ip =
            stream.get_socket_digest().and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).map(|a| a.ip()));
        let up_timer = Box::pin(sleep_until(far()));
        let io = Io { stream, rbuf: Vec::new(), out: Vec::new(), head: Vec::new(), up_timer };
        let filled = read.len();
        let mut buf = read;
        buf.resize(filled.max(HEAD_BUF), 0);
        let mut stopping = shutdown.clone();
        let stop = Box::pin(async move {
            let _ = stopping.wait_for(|stop| *stop).await;
        });
        let mut conn = Conn {
            io,
            buf,
            filled,
            client_ip,
            client_ip_text: client_ip.map(IpText::new),
            reused,
            head_timer: Box::pin(sleep_until(deadline.unwrap_or_else(far))),
            stop,
        };
        let idle = Duration::from_millis(self.shared.config.idle_timeout_ms.max(1));
        loop {
            if conn.reused {
                conn.head_timer.as_mut().reset(Instant::now() + idle);
            }
            let read = match self.read_head(&mut conn).await {
                Ok((head_len, Some(body_len))) => {
                    self.read_body(&mut conn, head_len + body_len).await.map(|()| (head_len, Some(body_len)))
                }
                other => other,
            };
            let (head_len, body_len) = match read {
                Ok(lengths) => lengths,
                Err(Some(status)) => {
                    let _ = self.respond(&mut conn.io, status, true).await;
                    return None;
                }
                Err(None) => return None,
            };
            let end = head_len + body_len.unwrap_or(0);
            let request = Request {
                head: &conn.buf[..head_len],
                body: body_len.map(|_| &conn.buf[head_len..end]),
                client_ip: conn.client_ip,
                client_ip_text: conn.client_ip_text.as_ref().map(IpText::as_str),
            };
            match self.one(&mut conn.io, request, shutdown).await {
                Ok(Next::KeepAlive) => {
                    conn.buf.copy_within(end..conn.filled, 0);
                    conn.filled -= end;
                    conn.reused = true;
                    // Buffers a large body grew are not kept for the connection's life: idle keep-alive
                    // connections are many.
                    if conn.buf.len() > BODY_BUF && conn.filled <= HEAD_BUF {
                        conn.buf.truncate(HEAD_BUF);
                        conn.buf.shrink_to_fit();
                    }
                    if conn.io.out.capacity() > BODY_BUF {
                        conn.io.out = Vec::new();
                    }
                }
                Ok(Next::Close) => {
                    let _ = timeout(Duration::from_secs(1), AsyncWriteExt::shutdown(&mut conn.io.stream)).await;
                    return None;
                }
                Err(Handoff) => {
                    return Some(hand_over(conn.buf[..conn.filled].to_vec(), head_len, conn.io.stream));
                }
            }
        }
    }

    /// Read until `conn.buf` holds a complete request head; its length, and the length of the body to read
    /// whole (see [`RequestHead`](super::codec::RequestHead)). `Err(Some(status))`: answer that and close;
    /// `Err(None)`: close quietly (client gone, deadline passed, proxy stopping while idle).
    async fn read_head(&self, conn: &mut Conn) -> Result<(usize, Option<usize>), Option<u16>> {
        let cfg = &self.shared.config;
        let max_head = if cfg.max_header_bytes == 0 { 1 << 20 } else { cfg.max_header_bytes + 8 * 1024 };
        loop {
            if conn.filled > 0 {
                match request_head(&conn.buf[..conn.filled], max_head) {
                    Ok(Some(head)) => return Ok((head.len, head.body)),
                    Ok(None) => {}
                    Err(e) => return Err(Some(e.status())),
                }
            }
            // `request_head` refuses a head before it outgrows `max_head`.
            if conn.filled == conn.buf.len() {
                let len = (conn.buf.len() * 2).min(max_head);
                conn.buf.resize(len, 0);
            }
            let read = conn.io.stream.read(&mut conn.buf[conn.filled..]);
            let idle = conn.filled == 0;
            let result = tokio::select! {
                biased;
                r = read => Some(r),
                _ = conn.head_timer.as_mut() => None,
                _ = conn.stop.as_mut(), if idle => return Err(None),
            };
            match result {
                Some(Ok(0)) | Some(Err(_)) => return Err(None),
                Some(Ok(n)) => conn.filled += n,
                None => {
                    if !conn.reused || !idle {
                        self.shared.metrics.header_timeouts.fetch_add(1, Relaxed);
                    }
                    return Err(None);
                }
            }
        }
    }

    /// Read until `conn.buf` holds `end` bytes: the head and its whole body. The body must keep coming: the
    /// idle timeout applies to it as a whole (a client that stalls gets a 408). Errors as [`Self::read_head`].
    async fn read_body(&self, conn: &mut Conn, end: usize) -> Result<(), Option<u16>> {
        if conn.filled < end {
            let idle = Duration::from_millis(self.shared.config.idle_timeout_ms.max(1));
            conn.head_timer.as_mut().reset(Instant::now() + idle);
        }
        while conn.filled < end {
            // Grown as the bytes come, not to the announced length at once: memory follows what clients send.
            if conn.filled == conn.buf.len() {
                let len = (conn.buf.len() * 2).min(end);
                conn.buf.resize(len, 0);
            }
            match before(&mut conn.head_timer, conn.io.stream.read(&mut conn.buf[conn.filled..])).await {
                Some(Ok(0)) | Some(Err(_)) => return Err(None),
                Some(Ok(n)) => conn.filled += n,
                None => return Err(Some(408)),
            }
        }
        Ok(())
    }

    /// Send a bodiless answer of the proxy's own.
    pub(super) async fn respond(&self, io: &mut Io, status: u16, close: bool) -> std::io::Result<()> {
        let reason = http::StatusCode::from_u16(status).ok().and_then(|s| s.canonical_reason()).unwrap_or("");
        let out = &mut io.out;
        out.clear();
        let _ = write!(
            out,
            "HTTP/1.1 {status} {reason}\r\nserver: berth\r\ncontent-length: 0\r\ncache-control: private, no-store\r\n{}\r\n",
            if close { "connection: close\r\n" } else { "" }
        );
        let wait = Duration::from_millis(self.shared.config.idle_timeout_ms.max(1));
        match timeout(wait, write_flush(&mut io.stream, out)).await {
            Ok(r) => r,
            Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
        }
    }
}

/// The request was left to pingora.
pub(super) struct Handoff;

/// A complete request head read from the client.
pub(super) struct Request<'a> {
    pub(super) head: &'a [u8],
    /// The whole body (empty when there is none); `None`: a body for pingora's path, not read yet.
    pub(super) body: Option<&'a [u8]>,
    pub(super) client_ip: Option<IpAddr>,
    pub(super) client_ip_text: Option<&'a str>,
}

/// Write to the client and flush: pingora's stream buffers writes.
pub(super) async fn write_flush(stream: &mut Stream, data: &[u8]) -> std::io::Result<()> {
    stream.write_all(data).await?;
    stream.flush().await
}
