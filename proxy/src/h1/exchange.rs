//! One request on the fast path: admission, the request head sent upstream, attempts on endpoints (a pooled
//! connection first, retries within the budget), and the response relayed to the client as it comes.

use super::codec::{
    client_request, response_head, write_upstream_head, BadChunk, BadResponse, ChunkedEnd, Framing, ResponseHead,
    SentId, MAX_HEADERS,
};
use super::connection::{before, write_flush, Handoff, Io, Next, Request, BODY_BUF, H1};
use crate::balance::now_ns;
use crate::forward::{Downstream, NO_EDITS};
use crate::http::{retryable_method, Admission, Ctx, LogReq, ReqInfo};
use crate::Shared;
use pingora::server::ShutdownWatch;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{timeout, Instant};

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

impl From<BadResponse> for UpErr {
    fn from(e: BadResponse) -> Self {
        UpErr::BadResponse(e.0)
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

impl H1 {
    /// Serve one request.
    pub(super) async fn one(
        &self,
        io: &mut Io,
        request: Request<'_>,
        shutdown: &ShutdownWatch,
    ) -> Result<Next, Handoff> {
        let shared = &self.shared;
        // A body this path does not read whole goes to pingora's, which streams it.
        let Some(body) = request.body else {
            return Err(Handoff);
        };
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        // The same bytes parsed completely in read_head.
        let Some(req) = client_request(request.head, &mut headers) else {
            return Err(Handoff);
        };
        let path = req.path();
        let info = ReqInfo {
            host: req.host.unwrap_or(""),
            path,
            method: &req.method,
            headers: req.headers,
            header_bytes: req.headers.iter().map(|h| h.name.len() + h.value.len() + 4).sum(),
            client_ip: request.client_ip,
        };

        let mut ctx = Ctx::starting_now();
        let close = req.close || *shutdown.borrow();
        let mut request_id = None;
        let (status, error, next) = match shared.admit(&info, &mut ctx) {
            Admission::Reject(code) => {
                let close = close || code == 431;
                let ok = self.respond(io, code, close).await.is_ok();
                (code, None, if close || !ok { Next::Close } else { Next::KeepAlive })
            }
            Admission::Pass => {
                let rules = ctx.rule.as_deref().map_or(&NO_EDITS, |r| &r.forward);
                let from = Downstream { client: request.client_ip_text, tls: self.tls };
                request_id = Some(write_upstream_head(&mut io.out, &req, rules, &from));
                io.out.extend_from_slice(body);
                match self.exchange(io, &mut ctx, &req.method).await {
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
        let request_id = request_id.as_ref().filter(|_| shared.config.access_log).map(SentId::as_str);
        let log = LogReq { method: req.method.as_str(), host: req.host, path, request_id };
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
            // `response_head` refuses a head before it outgrows the buffer's largest size.
            if filled == rbuf.len() {
                rbuf.resize(rbuf.len() * 2, 0);
            }
            let n = match before(&mut io.up_timer, conn.read(&mut rbuf[filled..])).await {
                Some(Ok(0)) => return Err(UpErr::Closed { answered: filled > 0 }),
                Some(Ok(n)) => n,
                Some(Err(error)) => return Err(UpErr::Io { answered: filled > 0, error }),
                None => return Err(UpErr::Timeout),
            };
            filled += n;
            if let Some(head) = response_head(rbuf, &mut filled, method, &mut io.head)? {
                let ResponseHead { len: head_len, status, framing, keep_alive } = head;
                return Ok(Upstream { conn, addr, started, filled, head_len, status, framing, keep_alive });
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
                Err(BadChunk(why)) => return cut_short(status, UpErr::BadResponse(why)),
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
                    Err(BadChunk(why)) => return cut_short(status, UpErr::BadResponse(why)),
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

/// The upstream failed mid-body: the client's response is cut short (the connection closes, so the client
/// sees the truncation).
fn cut_short(status: u16, e: UpErr) -> (u16, Option<RequestError>, Next) {
    (status, Some(RequestError::Upstream(e)), Next::Close)
}
