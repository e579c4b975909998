//! The HTTP/1.1 fast path: the common request (HTTP/1.1, no body or a content-length one up to 64 KiB, no
//! upgrade) proxied on the downstream connection's own task, without pingora's per-request machinery.
//!
//! Why: on these machines pingora's `HttpProxy` spends most of a request in per-request setup (session and
//! context futures, header map copies, its pool's peer check), and measured 0.4x nginx in `make bench-proxy`.
//! This path parses with `httparse`, routes and balances with the same [`Shared`] code as pingora's phases,
//! keeps its own keep-alive pool of upstream connections, and relays the response bytes as they come.
//!
//! Everything else is handed to pingora's `HttpProxy` on the same connection, the bytes read so far replayed
//! ([`Replay`]): HTTP/1.0, request bodies above 64 KiB or chunked (streamed there, not buffered), `Expect`,
//! `Upgrade` (WebSocket) and absolute-form targets. The connection comes back here for its next request.
//!
//! Semantics kept from pingora's path: admission, routing, balancing, retries (connect failures and, for
//! idempotent methods, upstream failures before a response and the service's `retryOnStatuses`, within the
//! budget), passive ejection, forwarding headers, rule header edits and rewrites, metrics and the access log.
//! A request on a reused upstream connection that the endpoint closed meanwhile goes again on a new one (only
//! if nothing reached the endpoint, or its method may be repeated).

use crate::balance::now_ns;
use crate::http::{random_u64, retryable_method, Admission, Ctx, LogReq, ReqInfo};
use crate::Shared;
use async_trait::async_trait;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::tls::TlsRef;
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream, TimingDigest,
    UniqueID, UniqueIDType, ALPN,
};
use pingora::server::ShutdownWatch;
use std::collections::HashMap;
use std::io::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{sleep_until, timeout, Instant, Sleep};

/// Header fields parsed per request or response; more is answered 431 (request) or 502 (response).
const MAX_HEADERS: usize = 128;
/// Initial size of the downstream read buffer; it grows up to the head limit.
const HEAD_BUF: usize = 4 * 1024;
/// Size of the upstream read buffer; a larger response head grows it up to [`MAX_RESPONSE_HEAD`].
const BODY_BUF: usize = 16 * 1024;
const MAX_RESPONSE_HEAD: usize = 256 * 1024;
/// A request body with a content-length up to this size is read whole and sent with the head, so the request
/// can go again to another endpoint as a bodiless one can (nginx buffers request bodies likewise). Larger
/// bodies, and chunked ones, are streamed by pingora's path.
const MAX_BUFFERED_BODY: usize = 64 * 1024;
/// Idle upstream connections kept per endpoint.
const MAX_IDLE_PER_ENDPOINT: usize = 512;

/// Idle keep-alive connections to upstream endpoints, most recently used last. Each worker thread keeps its
/// own, so the request path takes no lock; a connection goes back to the pool of the thread that finished
/// with it. The pools live as long as the proxy's threads.
pub(crate) struct Upstreams {
    /// Tells this proxy's connections from another's that may share a thread (tests run several proxies).
    id: usize,
}

type IdleMap = HashMap<(usize, SocketAddr), Vec<(TcpStream, u64)>>;

thread_local! {
    static IDLE: std::cell::RefCell<IdleMap> = std::cell::RefCell::new(HashMap::new());
}

impl Default for Upstreams {
    fn default() -> Self {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        Upstreams { id: NEXT.fetch_add(1, Relaxed) }
    }
}

impl Upstreams {
    /// An idle connection to `addr` that is neither older than `max_idle_ns` nor closed by the endpoint.
    fn take(&self, addr: SocketAddr, now: u64, max_idle_ns: u64) -> Option<TcpStream> {
        IDLE.with(|idle| {
            let mut idle = idle.borrow_mut();
            let list = idle.get_mut(&(self.id, addr))?;
            while let Some((conn, since)) = list.pop() {
                if now.saturating_sub(since) < max_idle_ns && quiet(&conn) {
                    return Some(conn);
                }
            }
            None
        })
    }

    fn put(&self, addr: SocketAddr, conn: TcpStream, now: u64) {
        IDLE.with(|idle| {
            let mut idle = idle.borrow_mut();
            let list = idle.entry((self.id, addr)).or_default();
            if list.len() >= MAX_IDLE_PER_ENDPOINT {
                list.remove(0);
            }
            list.push((conn, now));
        })
    }
}

/// Whether an idle connection has nothing to read. Readable while idle means the endpoint closed it (or sent
/// something unasked): unusable either way. Tokio knows from the reactor's last event, without a syscall; a
/// close it has not seen yet is caught by the resend on a new connection.
fn quiet(conn: &TcpStream) -> bool {
    let mut cx = Context::from_waker(std::task::Waker::noop());
    conn.poll_read_ready(&mut cx).is_pending()
}

/// How the connection loop goes on after a request.
enum Next {
    KeepAlive,
    Close,
}

/// How a response body ends.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Framing {
    None,
    Length(u64),
    Chunked,
    UntilClose,
}

/// What went wrong with an upstream attempt.
#[derive(Debug)]
enum UpErr {
    /// The service has no endpoint.
    NoEndpoint,
    Connect(std::io::Error),
    ConnectTimeout,
    /// Writing the request failed: no complete request reached the endpoint.
    Unsent(std::io::Error),
    /// Reading failed; `answered` once response bytes had arrived.
    Io {
        answered: bool,
        error: std::io::Error,
    },
    Timeout,
    /// The endpoint closed before a complete response head.
    Closed {
        answered: bool,
    },
    BadResponse(&'static str),
}

impl std::fmt::Display for UpErr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UpErr::NoEndpoint => f.write_str("the service has no endpoint"),
            UpErr::Connect(e) => write!(f, "upstream connect: {e}"),
            UpErr::ConnectTimeout => f.write_str("upstream connect timed out"),
            UpErr::Unsent(e) => write!(f, "upstream write: {e}"),
            UpErr::Io { error, .. } => write!(f, "upstream i/o: {error}"),
            UpErr::Timeout => f.write_str("upstream timed out"),
            UpErr::Closed { .. } => f.write_str("upstream closed the connection before a response"),
            UpErr::BadResponse(why) => write!(f, "invalid upstream response: {why}"),
        }
    }
}

impl UpErr {
    /// Nothing of a response arrived: the request may go again to another endpoint (when idempotent).
    fn unanswered(&self) -> bool {
        match self {
            UpErr::NoEndpoint | UpErr::Connect(_) | UpErr::ConnectTimeout | UpErr::Unsent(_) | UpErr::Timeout => true,
            UpErr::Io { answered, .. } | UpErr::Closed { answered } => !answered,
            UpErr::BadResponse(_) => false,
        }
    }

    /// The status the client gets when no attempt succeeded.
    fn status(&self) -> u16 {
        match self {
            UpErr::NoEndpoint => 503,
            UpErr::ConnectTimeout | UpErr::Timeout => 504,
            _ => 502,
        }
    }
}

/// A response head received from an endpoint: `rbuf[..filled]` holds it (`head_len` bytes) and the first
/// body bytes.
struct Upstream {
    conn: TcpStream,
    addr: SocketAddr,
    /// `now_ns()` when the attempt started; the connection's idle time counts from here when it is pooled.
    started: u64,
    filled: usize,
    head_len: usize,
    status: u16,
    framing: Framing,
    keep_alive: bool,
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
    client_ip_text: Option<String>,
    /// A request was served on this connection: the next wait is keep-alive idle time.
    reused: bool,
    /// The header-read (then keep-alive idle) deadline. One timer per connection, moved forward per request:
    /// tokio extends a later deadline in place, where a timeout per read would register and cancel a timer.
    head_timer: Pin<Box<Sleep>>,
    /// Completes when the proxy stops.
    stop: Pin<Box<dyn std::future::Future<Output = ()> + Send>>,
}

/// The client stream and the buffers kept across its requests.
struct Io {
    stream: Stream,
    /// Upstream read buffer.
    rbuf: Vec<u8>,
    /// The request head sent upstream.
    out: Vec<u8>,
    /// The response head sent to the client, without its final empty line.
    head: Vec<u8>,
    /// The per-try deadline of upstream reads and writes (one timer per connection, as `head_timer`).
    up_timer: Pin<Box<Sleep>>,
}

/// A deadline far enough away to mean "none".
fn far() -> Instant {
    Instant::now() + Duration::from_secs(86_400 * 365)
}

/// `f`, or `None` once `timer` fires.
async fn before<F: std::future::Future>(timer: &mut Pin<Box<Sleep>>, f: F) -> Option<F::Output> {
    tokio::select! {
        biased;
        r = f => Some(r),
        _ = timer.as_mut() => None,
    }
}

impl H1 {
    /// Serve HTTP/1 requests on `stream` until it closes, or return it (with the bytes read so far replayed)
    /// for pingora to serve the next request. `read`: bytes already read from the client (see
    /// [`take_back`]); `deadline`: when the first request header must be complete.
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
            client_ip_text: client_ip.map(|ip| ip.to_string()),
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
                client_ip_text: conn.client_ip_text.as_deref(),
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
                    let data = conn.buf[..conn.filled].to_vec();
                    let (boundary, unread) = match handoff_end(&data, head_len) {
                        Some(end) => (end.min(data.len()), end.saturating_sub(data.len())),
                        None => (data.len(), usize::MAX),
                    };
                    return Some(Box::new(Replay { data, pos: 0, boundary, unread, inner: conn.io.stream }));
                }
            }
        }
    }

    /// Read until `conn.buf` holds a complete request head; its length, and the length of the body to read
    /// whole ([`buffered_body`]). `Err(Some(status))`: answer that and close; `Err(None)`: close quietly
    /// (client gone, deadline passed, proxy stopping while idle).
    async fn read_head(&self, conn: &mut Conn) -> Result<(usize, Option<usize>), Option<u16>> {
        let cfg = &self.shared.config;
        let max_head = if cfg.max_header_bytes == 0 { 1 << 20 } else { cfg.max_header_bytes + 8 * 1024 };
        loop {
            if conn.filled > 0 {
                let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
                let mut req = httparse::Request::new(&mut headers);
                match req.parse(&conn.buf[..conn.filled]) {
                    Ok(httparse::Status::Complete(len)) => return Ok((len, buffered_body(req.headers))),
                    Ok(httparse::Status::Partial) => {}
                    Err(httparse::Error::TooManyHeaders) => return Err(Some(431)),
                    Err(_) => return Err(Some(400)),
                }
            }
            if conn.filled == conn.buf.len() {
                if conn.buf.len() >= max_head {
                    return Err(Some(431));
                }
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

    /// Serve one request.
    async fn one(&self, io: &mut Io, request: Request<'_>, shutdown: &ShutdownWatch) -> Result<Next, Handoff> {
        let shared = &self.shared;
        // A body this path does not read whole goes to pingora's, which streams it.
        let Some(body) = request.body else {
            return Err(Handoff);
        };
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        // The same bytes parsed completely in read_head.
        if !matches!(req.parse(request.head), Ok(httparse::Status::Complete(_))) {
            return Err(Handoff);
        }
        let (Some(method_str), Some(target), Some(1)) = (req.method, req.path, req.version) else {
            return Err(Handoff);
        };
        let headers: &[httparse::Header<'_>] = req.headers;
        let mut host = None;
        let mut client_close = false;
        for h in headers {
            let name = h.name;
            if name.eq_ignore_ascii_case("host") {
                host = std::str::from_utf8(h.value).ok();
            } else if name.eq_ignore_ascii_case("upgrade") {
                return Err(Handoff);
            } else if name.eq_ignore_ascii_case("connection") {
                client_close |= has_token(h.value, "close");
            }
        }
        if !target.starts_with('/') {
            return Err(Handoff);
        }
        let Ok(method) = http::Method::from_bytes(method_str.as_bytes()) else {
            return Err(Handoff);
        };
        let path = target.split_once('?').map_or(target, |(p, _)| p);
        let info = ReqInfo {
            host: host.unwrap_or(""),
            path,
            method: &method,
            headers,
            header_bytes: headers.iter().map(|h| h.name.len() + h.value.len() + 4).sum(),
            client_ip: request.client_ip,
        };

        let mut ctx = Ctx::starting_now();
        let close = client_close || *shutdown.borrow();
        let mut request_id = None;
        let (status, error, next) = match shared.admit(&info, &mut ctx) {
            Admission::Reject(code) => {
                let close = close || code == 431;
                let ok = self.respond(io, code, close).await.is_ok();
                (code, None, if close || !ok { Next::Close } else { Next::KeepAlive })
            }
            Admission::Pass => {
                let want_id = shared.config.access_log;
                let ip = request.client_ip_text;
                request_id = build_request(&mut io.out, self.tls, &ctx, &method, target, headers, host, ip, want_id);
                io.out.extend_from_slice(body);
                match self.exchange(io, &mut ctx, &method).await {
                    Ok(up) => self.relay(io, up, close).await,
                    Err(e) => {
                        let code = e.status();
                        let ok = self.respond(io, code, close).await.is_ok();
                        let next = if close || !ok { Next::Close } else { Next::KeepAlive };
                        (code, Some(RequestError::Upstream(e)), next)
                    }
                }
            }
        };
        let request_id_str = request_id.as_ref().map(|id| std::str::from_utf8(id).unwrap_or(""));
        let log = LogReq { method: method_str, host, path, request_id: request_id_str };
        shared.finish(&mut ctx, status, error.as_ref().map(|e| e as &dyn std::fmt::Display), log);
        Ok(next)
    }

    /// Send the request head in `io.out` to endpoints until one answers with a head the client should get:
    /// connect failures and (idempotent methods) unanswered attempts and retried statuses go to another
    /// endpoint within the budget. The client's response head is left in `io.head`.
    async fn exchange(&self, io: &mut Io, ctx: &mut Ctx, method: &http::Method) -> Result<Upstream, UpErr> {
        let shared = &self.shared;
        if io.rbuf.len() < BODY_BUF {
            io.rbuf.resize(BODY_BUF, 0);
        }
        if !shared.await_endpoint(ctx).await {
            return Err(UpErr::NoEndpoint);
        }
        loop {
            let Some(addr) = shared.start_attempt(ctx) else {
                return Err(UpErr::NoEndpoint);
            };
            // The attempt's start time is "now" for the pool, too: one clock read fewer per request.
            let now = ctx.current.map_or_else(now_ns, |(_, started)| started);
            match self.attempt(addr, now, io, method).await {
                Ok(up) => {
                    ctx.upstream_status = up.status;
                    if shared.retry_status(ctx, method, up.status) {
                        // The answer is dropped unread with its connection.
                        shared.end_attempt_retried_status(ctx, up.status);
                        continue;
                    }
                    return Ok(up);
                }
                Err(e) => {
                    shared.end_attempt(ctx, true);
                    // Nothing the endpoint could act on reached it: safe to send again whatever the method.
                    let connect = matches!(e, UpErr::Connect(_) | UpErr::ConnectTimeout | UpErr::Unsent(_));
                    let again = (connect || (e.unanswered() && retryable_method(method)))
                        && Shared::others_left(ctx)
                        && shared.may_retry(ctx);
                    if !again {
                        return Err(e);
                    }
                }
            }
        }
    }

    /// One attempt on `addr`: on a pooled connection if there is one (again on a new connection when the
    /// endpoint had closed it unseen, and sending again is safe), else on a new one.
    async fn attempt(&self, addr: SocketAddr, now: u64, io: &mut Io, method: &http::Method) -> Result<Upstream, UpErr> {
        let cfg = &self.shared.config;
        let max_idle = cfg.upstream_idle_timeout_ms.saturating_mul(1_000_000);
        if let Some(pooled) = self.upstreams.take(addr, now, max_idle) {
            match self.send(pooled, addr, now, io, method).await {
                Err(UpErr::Unsent(_)) => {}
                // Most likely the endpoint closed the idle connection as the request arrived. But it may also
                // have acted on the request and then failed: only a method that may be repeated goes again
                // (RFC 9110 §9.2.2), as in Go's HTTP client.
                Err(UpErr::Closed { answered: false } | UpErr::Io { answered: false, .. })
                    if retryable_method(method) => {}
                other => return other,
            }
        }
        let conn = match timeout(cfg.connect_timeout(), TcpStream::connect(addr)).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => return Err(UpErr::Connect(e)),
            Err(_) => return Err(UpErr::ConnectTimeout),
        };
        let _ = conn.set_nodelay(true);
        self.send(conn, addr, now, io, method).await
    }

    /// Write the request and read the response head (interim 1xx responses are dropped).
    async fn send(
        &self,
        mut conn: TcpStream,
        addr: SocketAddr,
        started: u64,
        io: &mut Io,
        method: &http::Method,
    ) -> Result<Upstream, UpErr> {
        io.up_timer.as_mut().reset(Instant::now() + self.shared.config.per_try_timeout());
        match before(&mut io.up_timer, conn.write_all(&io.out)).await {
            Some(Ok(())) => {}
            Some(Err(error)) => return Err(UpErr::Unsent(error)),
            None => return Err(UpErr::Timeout),
        }
        let rbuf = &mut io.rbuf;
        let mut filled = 0;
        loop {
            if filled == rbuf.len() {
                if rbuf.len() >= MAX_RESPONSE_HEAD {
                    return Err(UpErr::BadResponse("response head too large"));
                }
                rbuf.resize(rbuf.len() * 2, 0);
            }
            let n = match before(&mut io.up_timer, conn.read(&mut rbuf[filled..])).await {
                Some(Ok(0)) => return Err(UpErr::Closed { answered: filled > 0 }),
                Some(Ok(n)) => n,
                Some(Err(error)) => return Err(UpErr::Io { answered: filled > 0, error }),
                None => return Err(UpErr::Timeout),
            };
            filled += n;
            // Interim responses are dropped; what follows them may already be here.
            while filled > 0 {
                match parse_response(&rbuf[..filled], method, &mut io.head)? {
                    None => break,
                    Some(Parsed::Interim(len)) => {
                        rbuf.copy_within(len..filled, 0);
                        filled -= len;
                    }
                    Some(Parsed::Final { head_len, status, framing, keep_alive }) => {
                        return Ok(Upstream { conn, addr, started, filled, head_len, status, framing, keep_alive });
                    }
                }
            }
        }
    }

    /// Send the response to the client: its head (built in `io.head`) and body as it comes. Returns the
    /// status sent, an error that cut the response short, and whether the connection stays open.
    async fn relay(&self, io: &mut Io, mut up: Upstream, close: bool) -> (u16, Option<RequestError>, Next) {
        let cfg = &self.shared.config;
        let close = close || up.framing == Framing::UntilClose;
        let out = &mut io.head;
        if close {
            out.extend_from_slice(b"connection: close\r\n");
        }
        out.extend_from_slice(b"\r\n");

        let status = up.status;
        // Body bytes that came with the head, up to the end of the body.
        let mut body = &io.rbuf[up.head_len..up.filled];
        let mut chunked = ChunkedEnd::default();
        let mut left = match up.framing {
            Framing::Length(n) => n,
            _ => 0,
        };
        let mut done = match up.framing {
            Framing::None => {
                body = &[];
                true
            }
            Framing::Length(_) => {
                let take = (body.len() as u64).min(left) as usize;
                body = &body[..take];
                left -= take as u64;
                left == 0
            }
            Framing::Chunked => match chunked.feed(body) {
                Ok(Some(end)) => {
                    body = &body[..end];
                    true
                }
                Ok(None) => false,
                Err(()) => return cut_short(status, UpErr::BadResponse("malformed chunked body")),
            },
            Framing::UntilClose => false,
        };
        // Bytes beyond the response: the connection is out of step, not reusable.
        let mut clean = done && up.head_len + body.len() == up.filled;
        out.extend_from_slice(body);
        let write_timeout = Duration::from_millis(cfg.idle_timeout_ms.max(1));
        if !matches!(timeout(write_timeout, write_flush(&mut io.stream, out)).await, Ok(Ok(()))) {
            return (status, Some(RequestError::Client), Next::Close);
        }
        while !done {
            io.up_timer.as_mut().reset(Instant::now() + cfg.per_try_timeout());
            let n = match before(&mut io.up_timer, up.conn.read(&mut io.rbuf)).await {
                Some(Ok(0)) if up.framing == Framing::UntilClose => {
                    done = true;
                    clean = false;
                    0
                }
                Some(Ok(0)) => return cut_short(status, UpErr::Closed { answered: true }),
                Some(Ok(n)) => n,
                Some(Err(error)) => return cut_short(status, UpErr::Io { answered: true, error }),
                None => return cut_short(status, UpErr::Timeout),
            };
            let mut chunk = &io.rbuf[..n];
            match up.framing {
                Framing::Length(_) => {
                    let take = (n as u64).min(left) as usize;
                    clean = take == n;
                    chunk = &chunk[..take];
                    left -= take as u64;
                    done = left == 0;
                }
                Framing::Chunked => match chunked.feed(chunk) {
                    Ok(Some(end)) => {
                        clean = end == n;
                        chunk = &chunk[..end];
                        done = true;
                    }
                    Ok(None) => {}
                    Err(()) => return cut_short(status, UpErr::BadResponse("malformed chunked body")),
                },
                _ => {}
            }
            if !chunk.is_empty()
                && !matches!(timeout(write_timeout, write_flush(&mut io.stream, chunk)).await, Ok(Ok(())))
            {
                return (status, Some(RequestError::Client), Next::Close);
            }
        }
        if clean && up.keep_alive {
            self.upstreams.put(up.addr, up.conn, up.started);
        }
        (status, None, if close { Next::Close } else { Next::KeepAlive })
    }

    /// Send a bodiless answer of the proxy's own.
    async fn respond(&self, io: &mut Io, status: u16, close: bool) -> std::io::Result<()> {
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

/// Why a proxied request ended without a complete answer.
enum RequestError {
    Upstream(UpErr),
    Client,
}

impl std::fmt::Display for RequestError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RequestError::Upstream(e) => e.fmt(f),
            RequestError::Client => f.write_str("client went away"),
        }
    }
}

/// The request was left to pingora.
struct Handoff;

/// A complete request head read from the client.
struct Request<'a> {
    head: &'a [u8],
    /// The whole body (empty when there is none); `None`: a body for pingora's path, not read yet.
    body: Option<&'a [u8]>,
    client_ip: Option<IpAddr>,
    client_ip_text: Option<&'a str>,
}

/// The upstream failed mid-body: the client's response is cut short (the connection closes, so the client
/// sees the truncation).
fn cut_short(status: u16, e: UpErr) -> (u16, Option<RequestError>, Next) {
    (status, Some(RequestError::Upstream(e)), Next::Close)
}

/// Write to the client and flush: pingora's stream buffers writes.
async fn write_flush(stream: &mut Stream, data: &[u8]) -> std::io::Result<()> {
    stream.write_all(data).await?;
    stream.flush().await
}

/// The length of the request body to read whole before sending the request: `Some(0)` when there is none;
/// `None` when pingora's path takes the request (chunked, `Expect`, a length that is invalid, repeated or above
/// [`MAX_BUFFERED_BODY`]), which also answers the malformed ones.
fn buffered_body(headers: &[httparse::Header<'_>]) -> Option<usize> {
    let mut length = None;
    for h in headers {
        if h.name.eq_ignore_ascii_case("content-length") {
            if length.is_some() || h.value.is_empty() || !h.value.iter().all(u8::is_ascii_digit) {
                return None;
            }
            length = Some(std::str::from_utf8(h.value).ok()?.parse::<usize>().ok()?);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") || h.name.eq_ignore_ascii_case("expect") {
            return None;
        }
    }
    let n = length.unwrap_or(0);
    (n <= MAX_BUFFERED_BODY).then_some(n)
}

/// A response head parsed from the start of a buffer.
enum Parsed {
    /// An interim 1xx response, `len` bytes long.
    Interim(usize),
    Final {
        head_len: usize,
        status: u16,
        framing: Framing,
        keep_alive: bool,
    },
}

/// Parse the response head at the start of `buf`; `None` while incomplete. A final response's head, as the
/// client gets it (hop-by-hop fields dropped, HTTP/1.1, no final empty line), is written to `head`.
fn parse_response(buf: &[u8], method: &http::Method, head: &mut Vec<u8>) -> Result<Option<Parsed>, UpErr> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    let head_len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(UpErr::BadResponse("too many header fields")),
        Err(_) => return Err(UpErr::BadResponse("malformed response head")),
    };
    let status = resp.code.unwrap_or(0);
    if status == 101 {
        // This path never sends `Upgrade` (those requests go to pingora).
        return Err(UpErr::BadResponse("a protocol switch that was not asked for"));
    }
    if (100..200).contains(&status) {
        return Ok(Some(Parsed::Interim(head_len)));
    }
    let (framing, keep_alive) = response_framing(&resp, *method == http::Method::HEAD)?;
    head.clear();
    // The status line as sent, in version 1.1 ("HTTP/1.x" is its first 8 bytes; httparse checked).
    let line_end = buf.iter().position(|&b| b == b'\n').map_or(head_len, |i| i + 1);
    head.extend_from_slice(b"HTTP/1.1");
    head.extend_from_slice(&buf[8..line_end]);
    if !head.ends_with(b"\r\n") {
        head.pop();
        head.extend_from_slice(b"\r\n");
    }
    // The header lines are copied in runs, skipping the lines of dropped fields.
    let base = buf.as_ptr() as usize;
    let line_after =
        |from: usize| buf[from..head_len].iter().position(|&b| b == b'\n').map_or(head_len, |i| from + i + 1);
    let (mut run, mut block_end) = (line_end, line_end);
    for h in resp.headers.iter() {
        let start = h.name.as_ptr() as usize - base;
        block_end = line_after(h.value.as_ptr() as usize - base + h.value.len());
        if hop_by_hop(h.name) || (framing == Framing::Chunked && h.name.eq_ignore_ascii_case("content-length")) {
            head.extend_from_slice(&buf[run..start]);
            run = block_end;
        }
    }
    head.extend_from_slice(&buf[run..block_end.max(run)]);
    if framing == Framing::Chunked {
        head.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    Ok(Some(Parsed::Final { head_len, status, framing, keep_alive }))
}

/// Fields that describe one hop, not the message (RFC 9110 §7.6.1); never forwarded. `Transfer-Encoding` is
/// handled by the framing.
fn hop_by_hop(name: &str) -> bool {
    ["connection", "keep-alive", "proxy-connection", "te", "upgrade", "transfer-encoding"]
        .iter()
        .any(|h| name.eq_ignore_ascii_case(h))
}

/// Whether a comma-separated field value lists `token` (case-insensitive).
fn has_token(value: &[u8], token: &str) -> bool {
    value.split(|&b| b == b',').any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

/// The framing of a response body and whether the endpoint keeps the connection open (RFC 9112 §6.3).
fn response_framing(resp: &httparse::Response<'_, '_>, head_request: bool) -> Result<(Framing, bool), UpErr> {
    let status = resp.code.unwrap_or(0);
    let http11 = resp.version == Some(1);
    let mut keep_alive = http11;
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut transfer_encoding = false;
    for h in resp.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            let n = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
                .ok_or(UpErr::BadResponse("invalid content-length"))?;
            if length.is_some_and(|l| l != n) {
                return Err(UpErr::BadResponse("conflicting content-length"));
            }
            length = Some(n);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            transfer_encoding = true;
            chunked = h
                .value
                .rsplit(|&b| b == b',')
                .next()
                .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        } else if h.name.eq_ignore_ascii_case("connection") {
            if has_token(h.value, "close") {
                keep_alive = false;
            } else if has_token(h.value, "keep-alive") {
                keep_alive = true;
            }
        }
    }
    let framing = if head_request || status == 204 || status == 304 || (100..200).contains(&status) {
        Framing::None
    } else if chunked {
        Framing::Chunked
    } else if transfer_encoding {
        Framing::UntilClose
    } else if let Some(n) = length {
        Framing::Length(n)
    } else {
        Framing::UntilClose
    };
    Ok((framing, keep_alive && framing != Framing::UntilClose))
}

/// Write the upstream request head into `out`: the client's fields minus hop-by-hop ones, the forwarding
/// fields, a request id when the client sent none, the rule's edits and its path rewrite. Returns the
/// request id sent (for the access log).
#[allow(clippy::too_many_arguments)]
fn build_request(
    out: &mut Vec<u8>,
    tls: bool,
    ctx: &Ctx,
    method: &http::Method,
    target: &str,
    headers: &[httparse::Header<'_>],
    host: Option<&str>,
    client_ip: Option<&str>,
    want_id: bool,
) -> Option<Vec<u8>> {
    let rule = ctx.rule.as_deref();
    let removed = |name: &str| {
        rule.is_some_and(|r| {
            r.remove_headers.iter().any(|h| h.as_str().eq_ignore_ascii_case(name))
                || r.add_headers.iter().any(|(h, _)| h.as_str().eq_ignore_ascii_case(name))
        })
    };
    out.clear();
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    match rule.and_then(|r| r.rewrite(target)) {
        Some(new) => out.extend_from_slice(new.as_bytes()),
        None => out.extend_from_slice(target.as_bytes()),
    }
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let mut forwarded_for: Option<&[u8]> = None;
    let mut request_id = None;
    for h in headers {
        let name = h.name;
        if hop_by_hop(name) {
            continue;
        }
        if name.eq_ignore_ascii_case("x-forwarded-for") {
            forwarded_for = Some(h.value);
            continue;
        }
        if name.eq_ignore_ascii_case("x-forwarded-proto") || name.eq_ignore_ascii_case("x-forwarded-host") {
            continue;
        }
        if name.eq_ignore_ascii_case("x-request-id") && request_id.is_none() {
            request_id = Some(if want_id { h.value.to_vec() } else { Vec::new() });
        }
        if removed(name) {
            continue;
        }
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(h.value);
        out.extend_from_slice(b"\r\n");
    }
    if let Some(ip) = client_ip {
        if !removed("x-forwarded-for") {
            out.extend_from_slice(b"x-forwarded-for: ");
            if let Some(prev) = forwarded_for {
                out.extend_from_slice(prev);
                out.extend_from_slice(b", ");
            }
            out.extend_from_slice(ip.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
    } else if let (Some(prev), false) = (forwarded_for, removed("x-forwarded-for")) {
        out.extend_from_slice(b"x-forwarded-for: ");
        out.extend_from_slice(prev);
        out.extend_from_slice(b"\r\n");
    }
    if !removed("x-forwarded-proto") {
        out.extend_from_slice(if tls { b"x-forwarded-proto: https\r\n" } else { b"x-forwarded-proto: http\r\n" });
    }
    if let (Some(host), false) = (host, removed("x-forwarded-host")) {
        out.extend_from_slice(b"x-forwarded-host: ");
        out.extend_from_slice(host.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if request_id.is_none() {
        let id = hex16(random_u64());
        if !removed("x-request-id") {
            out.extend_from_slice(b"x-request-id: ");
            out.extend_from_slice(&id);
            out.extend_from_slice(b"\r\n");
        }
        request_id = want_id.then(|| id.to_vec());
    }
    if let Some(rule) = rule {
        for (name, value) in &rule.add_headers {
            out.extend_from_slice(name.as_str().as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
    }
    out.extend_from_slice(b"\r\n");
    request_id
}

/// `n` as 16 lower-case hex digits.
fn hex16(n: u64) -> [u8; 16] {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    std::array::from_fn(|i| DIGITS[((n >> (60 - 4 * i)) & 0xf) as usize])
}

/// Finds where a chunked body ends in bytes fed piece by piece (RFC 9112 §7.1), so the body can be relayed
/// unchanged. Sizes are parsed by `httparse`; trailer fields are passed through.
#[derive(Default)]
struct ChunkedEnd {
    state: ChunkState,
    /// A size or trailer line split across reads.
    line: Vec<u8>,
}

#[derive(Default, Clone, Copy)]
enum ChunkState {
    #[default]
    Size,
    /// Bytes of chunk data and its CRLF still to come.
    Data(u64),
    Trailer,
}

/// Longest chunk-size or trailer line accepted.
const MAX_CHUNK_LINE: usize = 8 * 1024;

impl ChunkedEnd {
    /// Feed the next bytes; `Some(n)`: the body ends after the first `n` of them.
    fn feed(&mut self, data: &[u8]) -> Result<Option<usize>, ()> {
        let mut i = 0;
        while i < data.len() {
            match self.state {
                ChunkState::Data(left) => {
                    let take = left.min((data.len() - i) as u64);
                    i += take as usize;
                    self.state = if take == left { ChunkState::Size } else { ChunkState::Data(left - take) };
                }
                ChunkState::Size | ChunkState::Trailer => {
                    let Some(nl) = data[i..].iter().position(|&b| b == b'\n') else {
                        self.line.extend_from_slice(&data[i..]);
                        if self.line.len() > MAX_CHUNK_LINE {
                            return Err(());
                        }
                        return Ok(None);
                    };
                    let end = i + nl + 1;
                    let line: &[u8] = if self.line.is_empty() {
                        &data[i..end]
                    } else {
                        self.line.extend_from_slice(&data[i..end]);
                        &self.line
                    };
                    i = end;
                    match self.state {
                        ChunkState::Size => match httparse::parse_chunk_size(line) {
                            Ok(httparse::Status::Complete((_, 0))) => self.state = ChunkState::Trailer,
                            Ok(httparse::Status::Complete((_, size))) => {
                                self.state = ChunkState::Data(size.checked_add(2).ok_or(())?)
                            }
                            _ => return Err(()),
                        },
                        _ => {
                            if line == b"\r\n" || line == b"\n" {
                                self.line.clear();
                                return Ok(Some(i));
                            }
                        }
                    }
                    self.line.clear();
                }
            }
        }
        Ok(None)
    }
}

/// Where the handed-over request ends, counted from the start of `buf` (its head is `head_len` bytes long;
/// the end may lie beyond `buf`, in bytes not read yet): pingora gets no byte beyond it, so requests pipelined
/// after it stay for this path. `None` when the end is not known: an upgrade, or a chunked body not complete
/// in `buf`; pingora reads on from the socket then.
fn handoff_end(buf: &[u8], head_len: usize) -> Option<usize> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    if !matches!(req.parse(&buf[..head_len]), Ok(httparse::Status::Complete(_))) {
        return None;
    }
    let mut end = head_len;
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("upgrade") {
            return None;
        } else if h.name.eq_ignore_ascii_case("content-length") {
            let n = std::str::from_utf8(h.value).ok()?.trim().parse::<usize>().ok()?;
            end = head_len.checked_add(n)?;
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            return match ChunkedEnd::default().feed(&buf[head_len..]) {
                Ok(Some(n)) => Some(head_len + n),
                _ => None,
            };
        }
    }
    Some(end)
}

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

#[cfg(test)]
mod tests {
    use super::*;

    fn ends(parts: &[&[u8]]) -> Result<Option<(usize, usize)>, ()> {
        let mut c = ChunkedEnd::default();
        for (k, p) in parts.iter().enumerate() {
            if let Some(n) = c.feed(p)? {
                return Ok(Some((k, n)));
            }
        }
        Ok(None)
    }

    #[test]
    fn chunked_end_is_found_in_one_piece_and_across_splits() {
        let body = b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\n\r\nNEXT";
        assert_eq!(ends(&[body]), Ok(Some((0, body.len() - 4))));
        // Every split point gives the same end.
        for cut in 1..body.len() - 4 {
            let (a, b) = body.split_at(cut);
            assert_eq!(ends(&[a, b]), Ok(Some((1, body.len() - 4 - cut))), "cut at {cut}");
        }
        // Byte by byte.
        let bytes: Vec<&[u8]> = body[..body.len() - 4].chunks(1).collect();
        assert_eq!(ends(&bytes), Ok(Some((bytes.len() - 1, 1))));
    }

    #[test]
    fn chunked_trailers_are_part_of_the_body() {
        let body = b"3\r\nabc\r\n0\r\nx-sum: 1\r\n\r\n";
        assert_eq!(ends(&[body]), Ok(Some((0, body.len()))));
        assert_eq!(ends(&[b"3\r\nabc\r\n0\r\nx-sum: 1\r\n"]), Ok(None));
    }

    #[test]
    fn a_malformed_chunk_size_is_an_error() {
        assert_eq!(ends(&[b"zz\r\nabc\r\n"]), Err(()));
        assert_eq!(ends(&[&[b'1'; MAX_CHUNK_LINE + 10]]), Err(()));
    }

    fn framing(head: &[u8], head_request: bool) -> Result<(Framing, bool), String> {
        let mut headers = [httparse::EMPTY_HEADER; 16];
        let mut resp = httparse::Response::new(&mut headers);
        resp.parse(head).unwrap();
        response_framing(&resp, head_request).map_err(|e| e.to_string())
    }

    #[test]
    fn response_framing_follows_rfc_9112() {
        assert_eq!(framing(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n", false), Ok((Framing::Length(5), true)));
        assert_eq!(framing(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n", true), Ok((Framing::None, true)));
        assert_eq!(framing(b"HTTP/1.1 204 No Content\r\n\r\n", false), Ok((Framing::None, true)));
        assert_eq!(
            framing(b"HTTP/1.1 304 Not Modified\r\ncontent-length: 9\r\n\r\n", false),
            Ok((Framing::None, true))
        );
        assert_eq!(
            framing(b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\ncontent-length: 5\r\n\r\n", false),
            Ok((Framing::Chunked, true))
        );
        assert_eq!(framing(b"HTTP/1.1 200 OK\r\n\r\n", false), Ok((Framing::UntilClose, false)));
        assert_eq!(
            framing(b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\nconnection: close\r\n\r\n", false),
            Ok((Framing::Length(1), false))
        );
        assert_eq!(framing(b"HTTP/1.0 200 OK\r\ncontent-length: 1\r\n\r\n", false), Ok((Framing::Length(1), false)));
        assert_eq!(
            framing(b"HTTP/1.0 200 OK\r\ncontent-length: 1\r\nconnection: keep-alive\r\n\r\n", false),
            Ok((Framing::Length(1), true))
        );
        assert!(framing(b"HTTP/1.1 200 OK\r\ncontent-length: x\r\n\r\n", false).is_err());
        assert!(framing(b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n", false).is_err());
    }

    #[test]
    fn the_client_gets_the_response_head_without_hop_by_hop_fields() {
        let head = |raw: &[u8]| {
            let mut out = Vec::new();
            match parse_response(raw, &http::Method::GET, &mut out) {
                Ok(Some(Parsed::Final { .. })) => String::from_utf8(out).unwrap(),
                _ => panic!("a final response"),
            }
        };
        assert_eq!(
            head(b"HTTP/1.1 200 OK\r\nServer: x\r\nConnection: keep-alive\r\nContent-Length: 2\r\nKeep-Alive: t=5\r\n\r\nok"),
            "HTTP/1.1 200 OK\r\nServer: x\r\nContent-Length: 2\r\n"
        );
        assert_eq!(
            head(b"HTTP/1.0 404 Not Found\r\ncontent-length: 0\r\n\r\n"),
            "HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n"
        );
        assert_eq!(
            head(b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\ntransfer-encoding: chunked\r\nx-a:\r\n\r\n"),
            "HTTP/1.1 200 OK\r\nx-a:\r\ntransfer-encoding: chunked\r\n"
        );
        assert_eq!(head(b"HTTP/1.1 204 No Content\r\n\r\n"), "HTTP/1.1 204 No Content\r\n");
        assert_eq!(head(b"HTTP/1.1 200 OK\nconnection: close\nx: y\n\n"), "HTTP/1.1 200 OK\r\nx: y\n");
    }

    #[test]
    fn only_one_valid_content_length_up_to_the_limit_is_read_whole() {
        let body = |fields: &[(&str, &str)]| {
            let headers: Vec<httparse::Header<'_>> =
                fields.iter().map(|(name, value)| httparse::Header { name, value: value.as_bytes() }).collect();
            buffered_body(&headers)
        };
        assert_eq!(body(&[("host", "a")]), Some(0));
        assert_eq!(body(&[("Content-Length", "12")]), Some(12));
        assert_eq!(body(&[("content-length", &MAX_BUFFERED_BODY.to_string())]), Some(MAX_BUFFERED_BODY));
        assert_eq!(body(&[("content-length", &(MAX_BUFFERED_BODY + 1).to_string())]), None);
        assert_eq!(body(&[("content-length", "3"), ("content-length", "3")]), None);
        assert_eq!(body(&[("content-length", "+3")]), None);
        assert_eq!(body(&[("content-length", "")]), None);
        assert_eq!(body(&[("content-length", "99999999999999999999999")]), None);
        assert_eq!(body(&[("transfer-encoding", "chunked")]), None);
        assert_eq!(body(&[("content-length", "3"), ("expect", "100-continue")]), None);
    }

    #[test]
    fn request_ids_are_16_hex_digits() {
        assert_eq!(&hex16(0x0123_4567_89ab_cdef), b"0123456789abcdef");
        assert_eq!(&hex16(0), b"0000000000000000");
    }

    #[test]
    fn tokens_are_matched_whole_and_without_case() {
        assert!(has_token(b"keep-alive, Close", "close"));
        assert!(!has_token(b"closed", "close"));
    }
}
