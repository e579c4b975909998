//! The objects the data plane serves: services, their endpoints, and HTTP routes.

use crate::labels::Labels;
use crate::selector::Selector;
use serde::{Deserialize, Serialize};
use std::net::IpAddr;

/// Transport protocol of a port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Protocol {
    #[default]
    Tcp,
    Udp,
}

/// A service port's target on the endpoints: a port number, or the name of an endpoint port.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TargetPort {
    Number(u16),
    Name(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServicePort {
    /// Name used by SRV records (`_name._tcp...`) and by routes that pick a port by name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The port the service is known by (routes and DNS SRV answers use it).
    pub port: u16,
    /// Where traffic goes on each endpoint; defaults to `port`.
    pub target_port: TargetPort,
    #[serde(default)]
    pub protocol: Protocol,
}

/// Where a consistent-hash key comes from.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum HashOn {
    Header(String),
    Cookie(String),
    ClientIp,
}

/// How the proxy picks an endpoint of a service.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "policy")]
pub enum BalancePolicy {
    RoundRobin,
    WeightedRoundRobin,
    LeastRequest,
    /// Power of two choices over peak-EWMA latency (the default).
    #[default]
    P2cPeakEwma,
    /// Maglev-style consistent hashing; a membership change moves about 1/n of the keys.
    ConsistentHash {
        hash_on: HashOn,
    },
}

/// Optional active health checking done by the proxy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HealthCheck {
    /// HTTP path to GET; `None` means a TCP connect check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_path: Option<String>,
    pub interval_ms: u64,
    pub timeout_ms: u64,
    pub healthy_threshold: u32,
    pub unhealthy_threshold: u32,
}

/// A named group of endpoints, defined by a label selector over endpoint labels.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Service {
    pub namespace: String,
    pub name: String,
    #[serde(default)]
    pub labels: Labels,
    /// Endpoints in the same namespace whose labels match are members.
    pub selector: Selector,
    #[serde(default)]
    pub ports: Vec<ServicePort>,
    #[serde(default)]
    pub balance: BalancePolicy,
    /// A virtual address answered by DNS instead of the endpoint addresses, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub virtual_ip: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheck>,
    /// Upstream response statuses (e.g. 502, 503, 504) after which the proxy retries an idempotent request on
    /// another endpoint, within its retry budget. Empty: retry only on connect failures and broken responses.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retry_on_statuses: Vec<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointPort {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub port: u16,
    #[serde(default)]
    pub protocol: Protocol,
}

/// One instance that can receive traffic: an address with ports, carrying the labels of what runs there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Endpoint {
    pub namespace: String,
    /// Unique within the namespace (the pod name when the orchestrator publishes it).
    pub name: String,
    pub address: IpAddr,
    #[serde(default)]
    pub ports: Vec<EndpointPort>,
    #[serde(default)]
    pub labels: Labels,
    /// Passes readiness: may receive new requests (unless terminating).
    pub ready: bool,
    /// Still able to serve in-flight work (true while terminating until the process exits).
    pub serving: bool,
    /// Being removed: receives no new requests; in-flight requests finish.
    pub terminating: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    /// Relative weight for weighted policies; 0 takes no new traffic.
    #[serde(default = "default_weight")]
    pub weight: u32,
}

fn default_weight() -> u32 {
    100
}

impl Endpoint {
    /// Whether new requests may be sent here.
    pub fn accepts_new(&self) -> bool {
        self.ready && !self.terminating && self.weight > 0
    }

    /// The port a service port resolves to on this endpoint, if any.
    pub fn resolve_port(&self, target: &TargetPort) -> Option<u16> {
        match target {
            TargetPort::Number(n) => Some(*n),
            TargetPort::Name(name) => {
                self.ports.iter().find(|p| p.name.as_deref() == Some(name.as_str())).map(|p| p.port)
            }
        }
    }
}

/// How a rule matches the request path.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum PathMatch {
    Exact(String),
    /// Element-wise prefix, as Kubernetes `Prefix` (`/a` matches `/a` and `/a/b`, not `/ab`).
    Prefix(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HeaderMatch {
    pub name: String,
    /// Exact value; `None` means the header must be present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

/// A service (in the route's namespace) and the service port to use.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BackendRef {
    pub service: String,
    /// Service port by number or name; `None` uses the service's first port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<TargetPort>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteRule {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathMatch>,
    /// Empty means any method.
    #[serde(default)]
    pub methods: Vec<String>,
    #[serde(default)]
    pub headers: Vec<HeaderMatch>,
    pub backend: BackendRef,
    /// Replace the matched path prefix with this before forwarding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rewrite_prefix: Option<String>,
    #[serde(default)]
    pub add_request_headers: Vec<(String, String)>,
    #[serde(default)]
    pub remove_request_headers: Vec<String>,
    /// Requests per second allowed on this rule (per proxy); `None` is unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit_rps: Option<u32>,
}

/// TLS for some hosts of a route, with the certificate taken from a Secret (PEM `tls.crt` / `tls.key`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteTls {
    pub hosts: Vec<String>,
    pub secret_name: String,
}

/// HTTP routing: hosts (exact or `*.suffix`), then rules; the longest matching path wins.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Route {
    pub namespace: String,
    pub name: String,
    #[serde(default)]
    pub labels: Labels,
    /// Empty means any host.
    #[serde(default)]
    pub hosts: Vec<String>,
    #[serde(default)]
    pub rules: Vec<RouteRule>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_backend: Option<BackendRef>,
    #[serde(default)]
    pub tls: Vec<RouteTls>,
}

/// PEM certificate material for TLS, published by the orchestrator from a `kubernetes.io/tls` Secret.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Certificate {
    pub namespace: String,
    pub name: String,
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for Certificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.debug_struct("Certificate").field("namespace", &self.namespace).field("name", &self.name).finish()
    }
}
