//! The hand-over of one request to pingora's `HttpProxy`: a stream that replays the bytes the fast path
//! already read, up to the end of that request and no further, and [`take_back`] of the connection after.

use super::codec::handoff_end;
use async_trait::async_trait;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::tls::TlsRef;
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream, TimingDigest,
    UniqueID, UniqueIDType, ALPN,
};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A downstream stream whose first bytes the fast path already read; pingora reads them again, up to
/// `boundary` (the end of the request it serves, or of `data`), then `unread` more bytes from the socket
/// (`usize::MAX`: no limit).
#[derive(Debug)]
struct Replay {
    data: Vec<u8>,
    pos: usize,
    boundary: usize,
    unread: usize,
    inner: Stream,
}

/// The stream pingora reads a handed-over request from: `data` is what was read of the connection so far
/// (the request's head, `head_len` bytes long, then whatever followed), `inner` the rest of it.
pub(super) fn hand_over(data: Vec<u8>, head_len: usize, inner: Stream) -> Stream {
    let (boundary, unread) = match handoff_end(&data, head_len) {
        Some(end) => (end.min(data.len()), end.saturating_sub(data.len())),
        None => (data.len(), usize::MAX),
    };
    Box::new(Replay { data, pos: 0, boundary, unread, inner })
}

/// The stream pingora hands back after serving a request, and the bytes it left unread (requests pipelined
/// behind it).
pub(crate) fn take_back(stream: Stream) -> (Stream, Vec<u8>) {
    if !stream.as_any().is::<Replay>() {
        return (stream, Vec::new());
    }
    match stream.into_any().downcast::<Replay>() {
        Ok(r) => {
            let rest = r.data[r.pos..].to_vec();
            (r.inner, rest)
        }
        Err(_) => unreachable!("checked to be a Replay just above"),
    }
}

impl AsyncRead for Replay {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        if this.pos < this.boundary {
            let n = (this.boundary - this.pos).min(buf.remaining());
            buf.put_slice(&this.data[this.pos..this.pos + n]);
            this.pos += n;
            return Poll::Ready(Ok(()));
        }
        if this.unread == usize::MAX {
            return Pin::new(&mut *this.inner).poll_read(cx, buf);
        }
        if this.unread == 0 {
            // The request is all read. What follows is the next request, which this path reads once pingora is
            // done. Pingora reads past a complete request only to watch for a disconnect (and would take these
            // bytes for an oversized body), so it sees nothing.
            return Poll::Pending;
        }
        // The rest of the body, and not a byte more: the read is limited to it, straight into `buf`.
        let n = this.unread.min(buf.remaining());
        let mut part = ReadBuf::new(buf.initialize_unfilled_to(n));
        std::task::ready!(Pin::new(&mut *this.inner).poll_read(cx, &mut part))?;
        let got = part.filled().len();
        buf.advance(got);
        this.unread -= got;
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Replay {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut *self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut *self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[async_trait]
impl Shutdown for Replay {
    async fn shutdown(&mut self) {
        Shutdown::shutdown(&mut *self.inner).await
    }
}

impl UniqueID for Replay {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for Replay {
    fn get_ssl(&self) -> Option<&TlsRef> {
        self.inner.get_ssl()
    }
    fn get_ssl_digest(&self) -> Option<Arc<pingora::protocols::tls::SslDigest>> {
        self.inner.get_ssl_digest()
    }
    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for Replay {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }
    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }
    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for Replay {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }
    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        self.inner.set_proxy_digest(digest)
    }
}

impl GetSocketDigest for Replay {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }
    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.inner.set_socket_digest(digest)
    }
}

#[async_trait]
impl Peek for Replay {
    async fn try_peek(&mut self, buf: &mut [u8]) -> std::io::Result<bool> {
        if self.pos < self.boundary {
            let n = (self.boundary - self.pos).min(buf.len());
            buf[..n].copy_from_slice(&self.data[self.pos..self.pos + n]);
            return Ok(true);
        }
        self.inner.try_peek(buf).await
    }
}
