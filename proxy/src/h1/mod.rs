//! The HTTP/1.1 fast path: the common request (HTTP/1.1, no body or a content-length one up to 64 KiB, no
//! upgrade) proxied on the downstream connection's own task, without pingora's per-request machinery.
//!
//! Why: on these machines pingora's `HttpProxy` spends most of a request in per-request setup (session and
//! context futures, header map copies, its pool's peer check), and measured 0.4x nginx in `make bench-proxy`.
//! This path parses with `httparse`, routes and balances with the same [`Shared`](crate::Shared) code as
//! pingora's phases, keeps its own keep-alive pool of upstream connections, and relays the response bytes as
//! they come.
//!
//! Everything else is handed to pingora's `HttpProxy` on the same connection, the bytes read so far replayed
//! ([`handoff`]): HTTP/1.0, request bodies above 64 KiB or chunked (streamed there, not buffered), `Expect`,
//! `Upgrade` (WebSocket) and absolute-form targets. The connection comes back here for its next request.
//!
//! Semantics kept from pingora's path: admission, routing, balancing, retries (connect failures and, for
//! idempotent methods, upstream failures before a response and the service's `retryOnStatuses`, within the
//! budget), passive ejection, metrics and the access log; the forwarding rules (forwarding fields, rule header
//! edits and rewrites) are not kept alike but shared: both paths apply `crate::forward`.
//! A request on a reused upstream connection that the endpoint closed meanwhile goes again on a new one (only
//! if nothing reached the endpoint, or its method may be repeated).
//!
//! Modules, one capability each:
//! - [`connection`]: the downstream connection loop ([`H1::serve`]): reading request heads and bodies under
//!   the header-read and idle deadlines, keep-alive, close, or hand-over.
//! - [`exchange`]: one request: admission, the upstream attempts and retries, relaying the response.
//! - [`codec`]: bytes to heads and framing, heads to bytes. Pure functions, no IO; this is the code that
//!   meets hostile bytes, and its tests say so.
//! - [`pool`]: the upstream keep-alive connections, one pool per worker thread.
//! - [`handoff`]: the stream pingora reads a handed-over request from, replaying the bytes already read,
//!   and [`take_back`] of the connection afterwards.

mod codec;
mod connection;
mod exchange;
mod handoff;
mod pool;

pub(crate) use connection::H1;
pub(crate) use handoff::take_back;
pub(crate) use pool::Upstreams;
