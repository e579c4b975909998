//! Connection-level limits around the HTTP apps, and the choice of data path per connection.
//!
//! - **Max connections**: at most `max_connections` downstream connections are served at once. One more gets
//!   a canned `503` (HTTP/1.x) or is closed (HTTP/2 by ALPN) at once: never queued.
//! - **Header-read timeout** (slowloris): a request header must be complete within `header_read_timeout_ms`
//!   of the accept, and later requests on a keep-alive connection within `idle_timeout_ms` of the previous
//!   response; otherwise the connection is closed. Pingora's own timeouts apply per `read()` call, so a client
//!   sending a byte now and then would never trip them; the HTTP/1 path ([`crate::h1`]) keeps one deadline for
//!   the whole header.
//! - **Data path**: HTTP/2 connections (ALPN `h2`, or the h2c preface on a plain listener) go to pingora's
//!   `HttpProxy`, whose h2 layer owns their timeouts. HTTP/1 connections go to [`H1`], which hands single
//!   requests it does not serve itself to pingora and takes the connection back afterwards.

use crate::h1::{self, H1};
use crate::Shared;
use async_trait::async_trait;
use pingora::apps::{HttpServerApp, ServerApp};
use pingora::protocols::http::ServerSession;
use pingora::protocols::{Stream, ALPN};
use pingora::server::ShutdownWatch;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What a plain listener must see first to speak HTTP/2 with prior knowledge (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Sent on a connection beyond `max_connections`.
const BUSY: &[u8] =
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\nretry-after: 1\r\n\r\n";

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
    pub(crate) h1: H1,
}

impl<A> Guarded<A> {
    /// Whether this connection speaks HTTP/2. `None`: the client sent nothing usable within `wait`, or went
    /// away.
    async fn is_h2(&self, stream: &mut Stream, wait: Duration) -> Option<bool> {
        if stream.get_ssl_digest().is_some() {
            return Some(stream.selected_alpn_proto() == Some(ALPN::H2));
        }
        if !self.shared.config.h2c {
            return Some(false);
        }
        // The same peek pingora makes to detect h2c; bytes read are rewound.
        let mut buf = [0u8; H2_PREFACE.len()];
        match tokio::time::timeout(wait, stream.try_peek(&mut buf)).await {
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
impl<A: HttpServerApp + Send + Sync + 'static> ServerApp for Guarded<A> {
    async fn process_new(self: &Arc<Self>, mut stream: Stream, shutdown: &ShutdownWatch) -> Option<Stream> {
        let accepted = tokio::time::Instant::now();
        let Some(_slot) = Slot::acquire(&self.shared) else {
            self.shared.metrics.connections_rejected.fetch_add(1, Relaxed);
            refuse(stream).await;
            return None;
        };
        let cfg = &self.shared.config;
        let header_timeout =
            (cfg.header_read_timeout_ms > 0).then(|| Duration::from_millis(cfg.header_read_timeout_ms));
        let wait = header_timeout.unwrap_or(Duration::from_millis(cfg.idle_timeout_ms.max(1)));
        if self.is_h2(&mut stream, wait).await? {
            return ServerApp::process_new(&self.inner, stream, shutdown).await;
        }
        let mut deadline = header_timeout.map(|t| accepted + t);
        let mut reused = false;
        let mut read = Vec::new();
        loop {
            let handed = self.h1.serve(stream, read, reused, deadline, shutdown).await?;
            // One request through pingora's path, then the connection comes back.
            let mut session = ServerSession::new_http1(handed);
            session.set_keepalive(if *shutdown.borrow() {
                None
            } else {
                Some((self.shared.config.idle_timeout_ms / 1000).max(1))
            });
            let (back, _) = self.inner.process_new_http(session, shutdown).await?.consume();
            (stream, read) = h1::take_back(back);
            reused = true;
            deadline = None;
        }
    }

    async fn cleanup(&self) {
        self.inner.http_cleanup().await
    }
}
