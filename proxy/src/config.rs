//! Proxy settings: listeners, limits, timeouts, retries and ejection. Plain data with defaults; also the
//! `proxy:` section of a static configuration file (see [`crate::static_config`]).

use discovery::TargetPort;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::time::Duration;

/// A plain TCP (L4) listener that balances connections over a service's endpoints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TcpListenerConfig {
    pub listen: SocketAddr,
    pub namespace: String,
    pub service: String,
    /// Service port by number or name; `None` uses the service's first port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<TargetPort>,
}

/// Everything the proxy needs besides the registry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct ProxyConfig {
    /// Plain HTTP listeners (HTTP/1.1; HTTP/2 with prior knowledge when `h2c`).
    pub http_listen: Vec<SocketAddr>,
    /// TLS listeners (HTTP/1.1 and HTTP/2 by ALPN); certificates come from the registry, chosen by SNI.
    pub https_listen: Vec<SocketAddr>,
    pub tcp_listeners: Vec<TcpListenerConfig>,
    /// Accept HTTP/2 without TLS on the plain listeners.
    pub h2c: bool,
    /// Worker threads of the HTTP service.
    pub threads: usize,
    /// Reject requests whose header section (names and values) exceeds this many bytes with 431.
    pub max_header_bytes: usize,
    /// Requests in flight across the proxy above which new ones get 503 at once.
    pub max_in_flight: usize,
    /// Downstream connections served at once (HTTP and HTTPS listeners together); one more gets a `503` and
    /// is closed at once. 0: no limit.
    pub max_connections: usize,
    /// A request header must be complete this long after the connection was accepted, or the connection is
    /// closed (slowloris). 0: no deadline beyond pingora's per-read timeouts.
    pub header_read_timeout_ms: u64,
    /// Downstream keep-alive idle timeout: the next request's header must be complete this long after the
    /// previous response.
    pub idle_timeout_ms: u64,
    pub connect_timeout_ms: u64,
    /// Timeout of one upstream read or write (per try).
    pub per_try_timeout_ms: u64,
    /// Overall time budget of a request including retries (checked before each retry).
    pub total_timeout_ms: u64,
    /// Share of requests that may be retries (0.2 = 20%), plus `retry_min` per second of burst.
    pub retry_budget: f64,
    pub retry_min: u32,
    pub max_retries: u32,
    /// Consecutive 5xx/connect failures that eject an endpoint.
    pub eject_after_failures: u32,
    pub eject_base_ms: u64,
    /// Upstream idle keep-alive connection lifetime.
    pub upstream_idle_timeout_ms: u64,
    /// Emit one JSON access log line per request (costs throughput).
    pub access_log: bool,
    /// Grace period for in-flight requests when the proxy stops.
    pub shutdown_grace_ms: u64,
    /// Requests per service held while it has no endpoint (scale from zero), waiting for one to appear;
    /// beyond this they get 503 at once. 0 disables holding: an empty service answers 503 immediately.
    pub hold_max_requests: usize,
    /// How long a held request waits for an endpoint before it gets 503.
    pub hold_timeout_ms: u64,
    /// One work-stealing runtime for the HTTP threads (true), or a single-threaded runtime per thread
    /// (false: about 5% more requests/s and a tighter latency tail in `make bench-proxy`). Only one proxy per
    /// process may use `false`: pingora keeps each no-steal runtime's handle in a thread-local that a later
    /// runtime's threads can inherit (thread ids are recycled), and a second server then never starts. The
    /// `berth` binary, one proxy per process, sets `false`; in-process users and tests keep the default.
    #[serde(skip)]
    pub work_stealing: bool,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            http_listen: vec![SocketAddr::from(([127, 0, 0, 1], 8080))],
            https_listen: Vec::new(),
            tcp_listeners: Vec::new(),
            h2c: true,
            threads: 1,
            max_header_bytes: 64 * 1024,
            max_in_flight: 10_000,
            max_connections: 10_000,
            header_read_timeout_ms: 10_000,
            idle_timeout_ms: 60_000,
            connect_timeout_ms: 1_000,
            per_try_timeout_ms: 30_000,
            total_timeout_ms: 60_000,
            retry_budget: 0.2,
            retry_min: 10,
            max_retries: 3,
            eject_after_failures: 5,
            eject_base_ms: 5_000,
            upstream_idle_timeout_ms: 60_000,
            access_log: false,
            shutdown_grace_ms: 1_000,
            hold_max_requests: 0,
            hold_timeout_ms: 30_000,
            work_stealing: true,
        }
    }
}

impl ProxyConfig {
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }
    pub fn per_try_timeout(&self) -> Duration {
        Duration::from_millis(self.per_try_timeout_ms)
    }
    pub fn hold_timeout(&self) -> Duration {
        Duration::from_millis(self.hold_timeout_ms)
    }
    pub fn total_timeout(&self) -> Duration {
        Duration::from_millis(self.total_timeout_ms)
    }
}
