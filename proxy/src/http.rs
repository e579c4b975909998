//! The HTTP data path: the request accounting both paths share (on `Shared`: admission, attempts, the
//! retry budget, metrics and the access log), and pingora's `ProxyHttp` phases over the current [`Table`],
//! which serve HTTP/2 and the HTTP/1 requests the fast path ([`crate::h1`]) hands over.
//!
//! Phases, in the order pingora runs them for one request:
//! - `request_filter`: admission (overload 503, header size 431), route lookup (404 when nothing matches),
//!   per-rule rate limit (429). The rule and pool `Arc`s are kept in the context for the whole request, so a
//!   table swap mid-request changes nothing for it.
//! - `upstream_peer`: pick an endpoint (never one already tried while another exists), count it in flight.
//!   When the service has no endpoint and holding is on (`hold_max_requests`), the request first waits for
//!   one (scale from zero), bounded per service in count and in time (`hold_timeout_ms`), else 503.
//! - `fail_to_connect` / `error_while_proxy`: count the failure against the endpoint (passive ejection) and
//!   allow a retry on another endpoint while the retry budget and the total timeout allow.
//! - `upstream_response_filter`: a status the Service lists in `retry_on_statuses`, for an idempotent method
//!   (GET, HEAD, OPTIONS, PUT, DELETE), becomes a retry on another endpoint when the budget allows; the
//!   response is dropped unread. Otherwise the response goes to the client, so the client always gets the
//!   last attempt's answer.
//! - `upstream_request_filter`: the forwarding rules of `crate::forward` (forwarding fields, request id, the
//!   rule's field edits and prefix rewrite), the same the fast path applies.
//! - `logging`: close the endpoint attempt (latency sample, success/failure), record metrics.
//!
//! The hot path takes no lock and does not allocate beyond what pingora's API requires (the peer box, the
//! `X-Forwarded-For` and `X-Request-Id` values).

use crate::balance::{now_ns, Pick, Rng};
use crate::forward::{Added, ClientField, Downstream, Facts, Forwarding, IpText, RequestId, NO_EDITS};
use crate::metrics::status_class;
use crate::table::{CompiledRule, Headers, ServicePool};
use crate::Shared;
use ::http::HeaderValue;
use async_trait::async_trait;
use discovery::HashOn;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::proxy::{ProxyHttp, Session};
use std::cell::RefCell;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

thread_local! {
    static RNG: RefCell<Rng> = RefCell::new(Rng::new(seed()));
}

fn seed() -> u64 {
    let t =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(1);
    let local = 0u8;
    t ^ (&local as *const u8 as u64).rotate_left(32)
}

fn with_rng<T>(f: impl FnOnce(&mut Rng) -> T) -> T {
    RNG.with(|r| f(&mut r.borrow_mut()))
}

/// The pingora application.
pub struct HttpApp {
    pub(crate) shared: Arc<Shared>,
    /// Whether this app serves a TLS listener (for `X-Forwarded-Proto`).
    pub(crate) tls: bool,
}

/// Per-request state, shared by pingora's phases and the HTTP/1 fast path ([`crate::h1`]).
#[derive(Default)]
pub struct Ctx {
    pub(crate) start: u64,
    admitted: bool,
    pub(crate) rule: Option<Arc<CompiledRule>>,
    pub(crate) pool: Option<Arc<ServicePool>>,
    pub(crate) hash: Option<u64>,
    /// Entry index and start time of the attempt in progress.
    pub(crate) current: Option<(usize, u64)>,
    pub(crate) tried: Vec<u32>,
    pub(crate) upstream_status: u16,
    /// Set when `upstream_response_filter` turned this status into a retry (read by `error_while_proxy`).
    status_retry: Option<u16>,
    /// The id made for this request when the client sent none (pingora's path; the fast path keeps its own).
    request_id: Option<RequestId>,
}

/// What admission reads from a request, whichever parser produced it.
pub(crate) struct ReqInfo<'a, H: Headers + ?Sized> {
    pub(crate) host: &'a str,
    /// The path without the query.
    pub(crate) path: &'a str,
    pub(crate) method: &'a http::Method,
    pub(crate) headers: &'a H,
    /// Size of the header section as counted against `max_header_bytes`: names, values and 4 bytes each.
    pub(crate) header_bytes: usize,
    pub(crate) client_ip: Option<IpAddr>,
}

/// What the access log line says about the request.
pub(crate) struct LogReq<'a> {
    pub(crate) method: &'a str,
    pub(crate) host: Option<&'a str>,
    pub(crate) path: &'a str,
    pub(crate) request_id: Option<&'a str>,
}

pub(crate) enum Admission {
    Pass,
    Reject(u16),
}

impl Ctx {
    /// The state of a request whose header was just read.
    pub(crate) fn starting_now() -> Ctx {
        Ctx { start: now_ns(), ..Ctx::default() }
    }
}

/// Request accounting and decisions common to both data paths.
impl Shared {
    /// Count the request and admit it: overload (503), header size (431), route (404), rate limit (429),
    /// service (503). On `Pass` the rule and pool are in `ctx`. Every request that reaches here must end
    /// with [`Shared::finish`].
    pub(crate) fn admit<H: Headers + ?Sized>(&self, req: &ReqInfo<'_, H>, ctx: &mut Ctx) -> Admission {
        self.metrics.requests.fetch_add(1, Relaxed);
        if self.in_flight.fetch_add(1, Relaxed) >= self.config.max_in_flight {
            self.in_flight.fetch_sub(1, Relaxed);
            self.metrics.overloaded.fetch_add(1, Relaxed);
            return Admission::Reject(503);
        }
        ctx.admitted = true;
        if self.config.max_header_bytes > 0 && req.header_bytes > self.config.max_header_bytes {
            return Admission::Reject(431);
        }
        let table = self.table.load();
        let Some(rule) = table.routes.find(req.host, req.path, req.method, req.headers) else {
            self.metrics.no_route.fetch_add(1, Relaxed);
            return Admission::Reject(404);
        };
        if let Some(rl) = &rule.rate_limit {
            if !rl.admit(ctx.start) {
                self.metrics.rate_limited.fetch_add(1, Relaxed);
                return Admission::Reject(429);
            }
        }
        let Some(pool) = rule.backend.and_then(|i| table.pools.get(i)) else {
            return Admission::Reject(503);
        };
        ctx.hash = pool.hash_on.as_ref().map(|h| hash_key(h, req));
        rule.metrics.start();
        pool.metrics.start();
        ctx.rule = Some(rule.clone());
        ctx.pool = Some(pool.clone());
        Admission::Pass
    }

    /// Before the first attempt on a service with no endpoint, while holding is on (`hold_max_requests`):
    /// wait for an endpoint (scale from zero), and put the service's new pool in `ctx`. False when none came.
    pub(crate) async fn await_endpoint(&self, ctx: &mut Ctx) -> bool {
        let Some(pool) = ctx.pool.clone() else {
            return false;
        };
        if !(pool.pool.is_empty() && ctx.tried.is_empty() && self.config.hold_max_requests > 0) {
            return true;
        }
        match self.hold_for_endpoint(&pool).await {
            Some(p) => {
                ctx.pool = Some(p);
                true
            }
            None => false,
        }
    }

    /// Wait (bounded in count per service and in time) until the service of an empty pool has an endpoint;
    /// returns its new pool. The wait is counted in the service's `waiting` figure, which the autoscaler reads
    /// as demand to scale from zero. Nothing here writes control-plane state.
    async fn hold_for_endpoint(&self, pool: &Arc<ServicePool>) -> Option<Arc<ServicePool>> {
        let waiting = &pool.metrics.waiting;
        if waiting.fetch_add(1, Relaxed) >= self.config.hold_max_requests as i64 {
            waiting.fetch_sub(1, Relaxed);
            return None;
        }
        // Subscribe before looking, so a table published in between still wakes us.
        let mut applied = self.applied.subscribe();
        let deadline = tokio::time::Instant::now() + self.config.hold_timeout();
        let found = loop {
            let table = self.table.load();
            if let Some(p) = table.pool_index.get(&pool.key).map(|&i| &table.pools[i]) {
                if !p.pool.is_empty() {
                    break Some(p.clone());
                }
            }
            match tokio::time::timeout_at(deadline, applied.changed()).await {
                Ok(Ok(())) => {}
                _ => break None,
            }
        };
        waiting.fetch_sub(1, Relaxed);
        found
    }

    /// Pick an endpoint of `ctx.pool` not tried yet (while another exists) and open an attempt on it.
    pub(crate) fn start_attempt(&self, ctx: &mut Ctx) -> Option<SocketAddr> {
        let pool = ctx.pool.as_ref()?;
        let now = now_ns();
        let pick = Pick { hash: ctx.hash, tried: &ctx.tried, now };
        let idx = with_rng(|rng| pool.pool.select(pick, rng))?;
        let entry = &pool.pool.entries()[idx];
        entry.state.start_request();
        ctx.current = Some((idx, now));
        ctx.tried.push(idx as u32);
        Some(entry.addr)
    }

    /// Close the attempt in progress; `failed` counts against the endpoint for ejection.
    pub(crate) fn end_attempt(&self, ctx: &mut Ctx, failed: bool) {
        self.end_attempt_at(ctx, failed, failed, now_ns())
    }

    /// As [`Self::end_attempt`] at time `now`; `no_response` counts the attempt in the endpoint's "error" class.
    fn end_attempt_at(&self, ctx: &mut Ctx, failed: bool, no_response: bool, now: u64) {
        let (Some((idx, started)), Some(pool)) = (ctx.current.take(), ctx.pool.as_ref()) else {
            return;
        };
        let Some(entry) = pool.pool.entries().get(idx) else {
            return;
        };
        entry.state.end_request();
        if no_response {
            entry.state.record_status_class(5);
        }
        if failed {
            pool.pool.record_failure(idx, &self.ejection, now);
        } else {
            entry.state.record_success();
            entry.state.observe_latency(now.saturating_sub(started), now);
        }
    }

    /// The attempt in progress got `status`, which its service retries on: count the answer (5xx toward
    /// ejection) and close the attempt.
    pub(crate) fn end_attempt_retried_status(&self, ctx: &mut Ctx, status: u16) {
        if let (Some((idx, _)), Some(pool)) = (ctx.current, ctx.pool.as_ref()) {
            if let Some(entry) = pool.pool.entries().get(idx) {
                entry.state.record_status_class(status_class(status));
            }
        }
        self.end_attempt_at(ctx, status >= 500, false, now_ns());
        ctx.upstream_status = 0;
    }

    /// Whether another endpoint than those tried is left.
    pub(crate) fn others_left(ctx: &Ctx) -> bool {
        ctx.pool.as_ref().is_some_and(|p| p.pool.len() > ctx.tried.len())
    }

    /// Whether `status` may be retried on another endpoint for this request (the budget is charged if so).
    pub(crate) fn retry_status(&self, ctx: &Ctx, method: &http::Method, status: u16) -> bool {
        ctx.pool.as_ref().is_some_and(|p| p.retries_on(status))
            && retryable_method(method)
            && Self::others_left(ctx)
            && self.may_retry(ctx)
    }

    /// Whether one more try fits in the retry budget and the total timeout (the budget is charged if so).
    pub(crate) fn may_retry(&self, ctx: &Ctx) -> bool {
        let cfg = &self.config;
        if ctx.tried.len() > cfg.max_retries as usize {
            return false;
        }
        if now_ns().saturating_sub(ctx.start) > cfg.total_timeout().as_nanos() as u64 {
            return false;
        }
        let requests = self.metrics.requests.load(Relaxed) as f64;
        let retries = self.metrics.retries.load(Relaxed) as f64;
        if retries >= requests * cfg.retry_budget + f64::from(cfg.retry_min) {
            return false;
        }
        self.metrics.retries.fetch_add(1, Relaxed);
        true
    }

    /// The request is over: `status` went to the client (0: none), `error` ended it early. Closes the last
    /// attempt, records metrics and the access log line.
    pub(crate) fn finish(&self, ctx: &mut Ctx, status: u16, error: Option<&dyn std::fmt::Display>, log: LogReq<'_>) {
        if !ctx.admitted {
            return;
        }
        self.in_flight.fetch_sub(1, Relaxed);
        let upstream_failed = ctx.upstream_status >= 500 || (ctx.upstream_status == 0 && error.is_some());
        if let (Some((idx, _)), Some(pool), true) = (ctx.current, ctx.pool.as_ref(), ctx.upstream_status != 0) {
            if let Some(entry) = pool.pool.entries().get(idx) {
                entry.state.record_status_class(status_class(ctx.upstream_status));
            }
        }
        let now = now_ns();
        self.end_attempt_at(ctx, upstream_failed, ctx.upstream_status == 0 && error.is_some(), now);
        let class = status_class(status);
        let latency_us = now.saturating_sub(ctx.start) / 1000;
        if let Some(rule) = &ctx.rule {
            rule.metrics.finish(class, latency_us);
        }
        if let Some(pool) = &ctx.pool {
            pool.metrics.finish(class, latency_us);
        }
        if self.config.access_log {
            let line = serde_json::json!({
                "method": log.method,
                "host": log.host,
                "path": log.path,
                "status": status,
                "latency_us": latency_us,
                "route": ctx.rule.as_ref().map(|r| format!("{}/{}", r.route_namespace, r.route_name)),
                "upstream": ctx.pool.as_ref().zip(ctx.tried.last()).and_then(|(p, &i)| p.pool.entries().get(i as usize)).map(|e| e.addr.to_string()),
                "tries": ctx.tried.len(),
                "request_id": log.request_id,
                "error": error.map(|e| e.to_string()),
            });
            tracing::info!(target: "berth::access", "{line}");
        }
    }
}

/// Methods whose requests may be sent twice: the idempotent ones users expect to be retried (RFC 9110
/// §9.2.2 also lists TRACE, which a proxy has no reason to retry).
pub(crate) fn retryable_method(m: &http::Method) -> bool {
    matches!(
        *m,
        http::Method::GET | http::Method::HEAD | http::Method::OPTIONS | http::Method::PUT | http::Method::DELETE
    )
}

fn hash_key<H: Headers + ?Sized>(on: &HashOn, req: &ReqInfo<'_, H>) -> u64 {
    match on {
        HashOn::Header(name) => req.headers.first(name.as_str()).map_or(0, |v| crate::balance::hash_bytes(1, v)),
        HashOn::Cookie(name) => req
            .headers
            .values("cookie")
            .filter_map(|v| std::str::from_utf8(v).ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|kv| kv.trim().split_once('='))
            .find(|(k, _)| *k == name.as_str())
            .map_or(0, |(_, v)| crate::balance::hash_bytes(1, v.as_bytes())),
        HashOn::ClientIp => match req.client_ip {
            Some(std::net::IpAddr::V4(ip)) => crate::balance::hash_bytes(1, &ip.octets()),
            Some(std::net::IpAddr::V6(ip)) => crate::balance::hash_bytes(1, &ip.octets()),
            None => 0,
        },
    }
}

#[async_trait]
impl ProxyHttp for HttpApp {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx::starting_now()
    }

    fn init_downstream_modules(&self, _modules: &mut pingora::modules::http::HttpModules) {
        // No compression module: it would run on every response for nothing.
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        let req = session.req_header();
        let host =
            req.uri.host().or_else(|| req.headers.get(http::header::HOST).and_then(|h| h.to_str().ok())).unwrap_or("");
        let info = ReqInfo {
            host,
            path: req.uri.path(),
            method: &req.method,
            headers: &req.headers,
            header_bytes: req.headers.iter().map(|(k, v)| k.as_str().len() + v.len() + 4).sum(),
            client_ip: session.client_addr().and_then(|a| a.as_inet()).map(|a| a.ip()),
        };
        match self.shared.admit(&info, ctx) {
            Admission::Pass => Ok(false),
            Admission::Reject(code) => {
                session.respond_error(code).await?;
                Ok(true)
            }
        }
    }

    async fn upstream_peer(&self, _session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        // An attempt still open here failed after connecting (error_while_proxy already counted it).
        self.shared.end_attempt(ctx, false);
        if !self.shared.await_endpoint(ctx).await {
            return Err(Error::new(HTTPStatus(503)));
        }
        let Some(addr) = self.shared.start_attempt(ctx) else {
            return Err(Error::new(HTTPStatus(503)));
        };
        let cfg = &self.shared.config;
        let mut peer = HttpPeer::new(addr, false, String::new());
        peer.options.connection_timeout = Some(cfg.connect_timeout());
        peer.options.read_timeout = Some(cfg.per_try_timeout());
        peer.options.write_timeout = Some(cfg.per_try_timeout());
        peer.options.idle_timeout = Some(std::time::Duration::from_millis(cfg.upstream_idle_timeout_ms));
        Ok(Box::new(peer))
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Ctx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        self.shared.end_attempt(ctx, true);
        e.set_retry(Shared::others_left(ctx) && self.shared.may_retry(ctx));
        e
    }

    fn error_while_proxy(
        &self,
        _peer: &HttpPeer,
        session: &mut Session,
        mut e: Box<Error>,
        ctx: &mut Ctx,
        _client_reused: bool,
    ) -> Box<Error> {
        if let Some(status) = ctx.status_retry.take() {
            // The endpoint answered with a status we retry on; the retry was already charged to the budget.
            self.shared.end_attempt_retried_status(ctx, status);
            e.set_retry(true);
            return e;
        }
        let upstream_fault = matches!(e.esource(), ErrorSource::Upstream);
        self.shared.end_attempt(ctx, upstream_fault);
        // Retry an idempotent request on another endpoint only while nothing was sent downstream yet (a second
        // response would corrupt the stream) and its body is still fully buffered.
        let safe = session.req_header().method.is_idempotent()
            && !session.as_ref().retry_buffer_truncated()
            && session.response_written().is_none()
            && upstream_fault;
        e.set_retry(safe && self.shared.may_retry(ctx));
        e
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        req: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        let client = session.client_addr().and_then(|a| a.as_inet()).map(|a| IpText::new(a.ip()));
        let from = Downstream { client: client.as_ref().map(IpText::as_str), tls: self.tls };
        let Ctx { rule, request_id, .. } = ctx;
        forward_request(rule.as_deref().map_or(&NO_EDITS, |r| &r.forward), req, &from, request_id)
    }

    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        let status = resp.status.as_u16();
        ctx.upstream_status = status;
        if !session.as_ref().retry_buffer_truncated()
            && session.response_written().is_none()
            && self.shared.retry_status(ctx, &session.req_header().method, status)
        {
            ctx.status_retry = Some(status);
            return Error::e_explain(HTTPStatus(status), "upstream status is retried on another endpoint");
        }
        Ok(())
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Ctx) {
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        let made_id = ctx.request_id;
        let req = session.req_header();
        let log = LogReq {
            method: req.method.as_str(),
            host: req.headers.get(http::header::HOST).and_then(|h| h.to_str().ok()),
            path: req.uri.path(),
            request_id: match &made_id {
                Some(id) => Some(id.as_str()),
                None => req.headers.get("x-request-id").and_then(|h| h.to_str().ok()),
            },
        };
        self.shared.finish(ctx, status, e.map(|e| e as &dyn std::fmt::Display), log);
    }
}

/// Apply the forwarding rules ([`crate::forward`]) to the request head pingora sends upstream; the rule's
/// path rewrite too. Pingora calls this again for each attempt on a fresh copy of the client's head: the id
/// made for the request (`request_id`) is made once and kept for the others and the access log.
pub(crate) fn forward_request(
    forward: &Forwarding,
    req: &mut RequestHeader,
    from: &Downstream<'_>,
    request_id: &mut Option<RequestId>,
) -> Result<()> {
    let mut client_id = false;
    let mut forwarded_for = false;
    // Rarely any: few clients send the proxy's own fields.
    let mut dropped = Vec::new();
    for name in req.headers.keys() {
        match forward.client_field(name.as_str()) {
            // Pingora's upstream request policy strips these, but for a WebSocket upgrade's own.
            ClientField::Forward | ClientField::HopByHop => {}
            ClientField::Drop => dropped.push(name.clone()),
            ClientField::ForwardedFor => forwarded_for = true,
            ClientField::RequestId { forward } => {
                client_id = true;
                if !forward {
                    dropped.push(name.clone());
                }
            }
        }
    }
    let prev = if forwarded_for { req.headers.get_all("x-forwarded-for").iter().next_back().cloned() } else { None };
    // The host the client addressed: its `Host`, else (HTTP/2) the target's authority.
    let host = match req.headers.get(http::header::HOST) {
        Some(h) => std::str::from_utf8(h.as_bytes()).is_ok().then(|| h.clone()),
        None => req.uri.authority().and_then(|a| HeaderValue::from_str(a.as_str()).ok()),
    };
    if forwarded_for {
        req.remove_header("x-forwarded-for");
    }
    for name in &dropped {
        req.remove_header(name);
    }
    if !client_id && request_id.is_none() {
        *request_id = Some(RequestId::new());
    }
    let facts =
        Facts { from: *from, host: host.as_ref(), forwarded_for: prev.as_ref(), new_request_id: request_id.as_ref() };
    let mut result = Ok(());
    forward.added(&facts, |field| {
        let appended = match field {
            Added::ForwardedFor { prev, client } => {
                let len = prev.map_or(0, |p| p.len() + 2) + client.map_or(0, str::len);
                let mut value = Vec::with_capacity(len);
                if let Some(prev) = prev {
                    value.extend_from_slice(prev.as_bytes());
                }
                if let (Some(_), Some(_)) = (prev, client) {
                    value.extend_from_slice(b", ");
                }
                value.extend_from_slice(client.unwrap_or("").as_bytes());
                req.append_header("x-forwarded-for", value)
            }
            Added::ForwardedProto(proto) => req.append_header("x-forwarded-proto", HeaderValue::from_static(proto)),
            Added::ForwardedHost(host) => req.append_header("x-forwarded-host", host.clone()),
            Added::RequestId(id) => req.append_header("x-request-id", id.as_bytes()),
            Added::Rule(name, value) => req.append_header(name.clone(), value.clone()),
        };
        if let Err(e) = appended {
            result = Err(e);
        }
    });
    result?;
    if let Some(parts) = forward.rewrite(req.uri.path_and_query().map_or("/", |p| p.as_str())) {
        let uri = http::Uri::try_from(parts.concat()).map_err(|_| Error::new(InternalError))?;
        req.set_uri(uri);
    }
    Ok(())
}

/// A random number from this thread's generator.
pub(crate) fn random_u64() -> u64 {
    with_rng(|r| r.next_u64())
}
