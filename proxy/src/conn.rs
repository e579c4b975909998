//! Connection-level limits around pingora's HTTP app ([`Guarded`] wraps the `HttpProxy` service):
//!
//! - **Max connections**: at most `max_connections` downstream connections are served at once. One more gets
//!   a canned `503` (HTTP/1.x) or is closed (HTTP/2 by ALPN) at once: never queued.
//! - **Header-read timeout** (slowloris): a request header must be complete within `header_read_timeout_ms`
//!   of the accept, and later requests on a keep-alive connection within `idle_timeout_ms` of the previous
//!   response; otherwise the connection is closed. Pingora's own timeouts apply per `read()` call, so a client
//!   sending a byte now and then would never trip them; this is one deadline for the whole header.
//!
//! How the deadline knows the header arrived: the connection's future runs inside a task-local
//! [`ConnState`]; the proxy app marks it in `new_ctx` (which pingora calls right after parsing a request
//! header) and re-arms it in `logging` (end of the request). HTTP/2 connections (ALPN `h2`, or the h2c
//! preface on a plain listener) are left to the h2 layer: their streams run in tasks of their own.

use crate::balance::now_ns;
use crate::Shared;
use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::protocols::{Stream, ALPN};
use pingora::server::ShutdownWatch;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What a plain listener must see first to speak HTTP/2 with prior knowledge (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Sent on a connection beyond `max_connections`.
const BUSY: &[u8] =
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\nretry-after: 1\r\n\r\n";

tokio::task_local! {
    static CONN: Arc<ConnState>;
}

/// Where one HTTP/1 connection is in its request cycle.
#[derive(Debug)]
pub(crate) struct ConnState {
    /// `now_ns()` when the proxy began waiting for the next request header; 0 while a request is served.
    waiting_since: AtomicU64,
    /// A request was served already: the next wait is keep-alive idle time.
    reused: AtomicBool,
}

/// The connection waited too long for a request header; true when it was the first header (a slowloris
/// candidate, counted), false for keep-alive idle time.
struct Expired(bool);

impl ConnState {
    /// How long until the current wait may have expired: the header deadline (or keep-alive idle limit)
    /// while waiting for a header, one period while a request is served (it may take that long or longer).
    fn wake_in(&self, header_timeout: Duration, idle_timeout: Duration) -> Result<Duration, Expired> {
        let reused = self.reused.load(Relaxed);
        let limit = if reused { idle_timeout } else { header_timeout };
        let since = self.waiting_since.load(Relaxed);
        if since == 0 {
            return Ok(limit);
        }
        let due = since.saturating_add(limit.as_nanos() as u64);
        let now = now_ns();
        if now >= due {
            return Err(Expired(!reused));
        }
        Ok(Duration::from_nanos(due - now))
    }
}

/// A request header was read on the current connection (called from `new_ctx`).
pub(crate) fn header_received() {
    let _ = CONN.try_with(|c| c.waiting_since.store(0, Relaxed));
}

/// The current request is done; the connection waits for the next header (called from `logging`).
pub(crate) fn request_finished() {
    let _ = CONN.try_with(|c| {
        c.reused.store(true, Relaxed);
        c.waiting_since.store(now_ns().max(1), Relaxed);
    });
}

/// A counted connection; frees its slot on drop.
struct Slot<'a>(&'a Shared);

impl<'a> Slot<'a> {
    fn acquire(shared: &'a Shared) -> Option<Self> {
        let max = shared.config.max_connections;
        let open = &shared.metrics.connections_open;
        if max == 0 {
            open.fetch_add(1, Relaxed);
            return Some(Slot(shared));
        }
        open.fetch_update(Relaxed, Relaxed, |n| (n < max as u64).then_some(n + 1)).ok().map(|_| Slot(shared))
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.0.metrics.connections_open.fetch_sub(1, Relaxed);
    }
}

/// Answer a connection over the limit and close it.
async fn refuse(mut stream: Stream) {
    let mut buf = [0u8; 2048];
    // Let the request arrive first (clients send it right after connecting): an answer that precedes the
    // request can be taken for a protocol error by the client.
    let _ = tokio::time::timeout(Duration::from_millis(100), stream.read(&mut buf)).await;
    if stream.selected_alpn_proto() != Some(ALPN::H2) {
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            stream.write_all(BUSY).await?;
            stream.flush().await
        })
        .await;
    }
    // Half-close, then read what the client already sent (briefly): closing with unread input makes the
    // kernel send a reset, which can destroy the 503 before the client reads it.
    let _ = tokio::time::timeout(Duration::from_millis(200), async {
        AsyncWriteExt::shutdown(&mut stream).await?;
        while stream.read(&mut buf).await? > 0 {}
        Ok::<_, std::io::Error>(())
    })
    .await;
}

/// The HTTP service's app with the connection limits in front.
pub(crate) struct Guarded<A> {
    pub(crate) inner: Arc<A>,
    pub(crate) shared: Arc<Shared>,
}

impl<A> Guarded<A> {
    /// Whether this connection speaks HTTP/2 (then the h2 layer owns its timeouts). `None`: the client sent
    /// nothing usable before the header deadline, or went away.
    async fn is_h2(&self, stream: &mut Stream, deadline: Duration) -> Option<bool> {
        if stream.get_ssl_digest().is_some() {
            return Some(stream.selected_alpn_proto() == Some(ALPN::H2));
        }
        if !self.shared.config.h2c {
            return Some(false);
        }
        // The same peek pingora makes to detect h2c; bytes read are rewound.
        let mut buf = [0u8; H2_PREFACE.len()];
        match tokio::time::timeout(deadline, stream.try_peek(&mut buf)).await {
            Ok(Ok(true)) => Some(buf == H2_PREFACE),
            Ok(Ok(false)) => Some(false),
            Ok(Err(_)) => None,
            Err(_) => {
                self.shared.metrics.header_timeouts.fetch_add(1, Relaxed);
                None
            }
        }
    }
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for Guarded<A> {
    async fn process_new(self: &Arc<Self>, mut stream: Stream, shutdown: &ShutdownWatch) -> Option<Stream> {
        let accepted = now_ns();
        let Some(_slot) = Slot::acquire(&self.shared) else {
            self.shared.metrics.connections_rejected.fetch_add(1, Relaxed);
            refuse(stream).await;
            return None;
        };
        let cfg = &self.shared.config;
        if cfg.header_read_timeout_ms == 0 {
            return self.inner.process_new(stream, shutdown).await;
        }
        let header_timeout = Duration::from_millis(cfg.header_read_timeout_ms);
        let idle_timeout = Duration::from_millis(cfg.idle_timeout_ms.max(1));
        match self.is_h2(&mut stream, header_timeout).await {
            None => return None,
            Some(true) => return self.inner.process_new(stream, shutdown).await,
            Some(false) => {}
        }
        // The keep-alive loop runs here rather than in pingora's listener, so the connection's state, the h2
        // check and the deadline timer are set up once per connection, not once per request.
        let state =
            Arc::new(ConnState { waiting_since: AtomicU64::new(accepted.max(1)), reused: AtomicBool::new(false) });
        let timer = tokio::time::sleep(header_timeout);
        tokio::pin!(timer);
        loop {
            let serve = CONN.scope(state.clone(), self.inner.process_new(stream, shutdown));
            tokio::pin!(serve);
            let reused = loop {
                let wake_in = match state.wake_in(header_timeout, idle_timeout) {
                    Ok(d) => d,
                    Err(Expired(first)) => {
                        if first {
                            self.shared.metrics.header_timeouts.fetch_add(1, Relaxed);
                        }
                        // Dropping the connection's future closes the socket.
                        return None;
                    }
                };
                timer.as_mut().reset(tokio::time::Instant::now() + wake_in);
                tokio::select! {
                    r = &mut serve => break r,
                    _ = &mut timer => {}
                }
            };
            stream = reused?;
        }
    }

    async fn cleanup(&self) {
        self.inner.cleanup().await
    }
}
