//! Traffic kinds: the `v1` [`Service`] (with Berth's balancing and health-check extensions), Berth's own
//! [`Route`] (`berth.dev/v1`), and the `networking.k8s.io/v1` [`Ingress`], which is converted to a Route when a
//! manifest is read and never stored as such.
//!
//! The conversions to the data plane's types ([`Service::to_discovery`], [`Route::to_discovery`]) live here too:
//! the endpoints controller and the registry publisher call them; the proxy never sees these types.

use super::meta::*;
use discovery::Protocol;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

// ---------------------------------------------------------------------------------------------------------
// Service

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Service {
    #[serde(default)]
    pub api_version: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: ServiceSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Ignored>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSpec {
    /// Pods whose labels include all of these are the service's endpoints. Empty: no endpoints are published.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub selector: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<ServicePort>,
    #[serde(rename = "type", default)]
    pub type_: ServiceType,
    /// `"None"` makes the service headless. Otherwise the service's stable virtual address: allocated by the
    /// API server from its service range when absent or empty, honoured when given (inside the range, free),
    /// immutable afterwards. Not yet announced by DNS nor served by a proxy (issue #23): until the node-local
    /// proxy listens on it, DNS keeps answering with endpoint addresses.
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "clusterIP")]
    pub cluster_ip: Option<String>,
    /// Berth extension: how the proxy balances requests over the endpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_balancing: Option<LoadBalancing>,
    /// Berth extension: active health checks by the proxy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<ServiceHealthCheck>,
    /// Berth extension: upstream statuses after which the proxy retries idempotent requests elsewhere.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<ServiceRetry>,
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "clusterIPs")]
    pub cluster_ips: Option<Ignored>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_affinity: Option<Ignored>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_affinity_config: Option<Ignored>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_traffic_policy: Option<Ignored>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub internal_traffic_policy: Option<Ignored>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_families: Option<Ignored>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_family_policy: Option<Ignored>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub publish_not_ready_addresses: Option<Ignored>,
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "loadBalancerIP")]
    pub load_balancer_ip: Option<Ignored>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_balancer_source_ranges: Option<Ignored>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_balancer_class: Option<Ignored>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allocate_load_balancer_node_ports: Option<Ignored>,
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "externalIPs")]
    pub external_ips: Option<Ignored>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check_node_port: Option<Ignored>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_name: Option<Ignored>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ServiceType {
    #[default]
    ClusterIP,
    /// Accepted; served like ClusterIP (the Berth proxy is the way in).
    NodePort,
    /// Accepted; served like ClusterIP (the Berth proxy is the load balancer).
    LoadBalancer,
    /// Not supported (rejected by validation).
    ExternalName,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServicePort {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub port: i32,
    /// A number or a container port name; defaults to `port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_port: Option<IntOrString>,
    #[serde(default)]
    pub protocol: Protocol,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_port: Option<Ignored>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_protocol: Option<Ignored>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LoadBalancing {
    #[serde(default)]
    pub policy: BalancePolicyName,
    /// Required for `consistentHash`: exactly one source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash_on: Option<HashOnSpec>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum BalancePolicyName {
    /// Power of two choices over peak-EWMA latency.
    #[default]
    P2c,
    RoundRobin,
    WeightedRoundRobin,
    LeastRequest,
    ConsistentHash,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HashOnSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cookie: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "clientIP")]
    pub client_ip: Option<bool>,
}

fn default_interval_ms() -> u64 {
    5000
}
fn default_timeout_ms() -> u64 {
    1000
}
fn default_healthy() -> u32 {
    2
}
fn default_unhealthy() -> u32 {
    3
}

/// Active health checking by the proxy: an HTTP GET of `path`, or a TCP connect when `path` is absent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceHealthCheck {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default = "default_interval_ms")]
    pub interval_ms: u64,
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    #[serde(default = "default_healthy")]
    pub healthy_threshold: u32,
    #[serde(default = "default_unhealthy")]
    pub unhealthy_threshold: u32,
}

/// Retries by the proxy on upstream statuses: an idempotent request (GET, HEAD, OPTIONS, PUT, DELETE) whose
/// answer has one of `onStatuses` is sent again to a different endpoint, within the proxy's retry budget; the
/// client gets the last attempt's answer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceRetry {
    #[serde(default)]
    pub on_statuses: Vec<u16>,
}

impl Service {
    /// Headless: `clusterIP: None`.
    pub fn is_headless(&self) -> bool {
        self.spec.cluster_ip.as_deref() == Some("None")
    }

    /// The data plane's view of this service. A service without a selector gets a selector that matches no
    /// endpoint (Kubernetes publishes no endpoints for it either; the empty discovery selector would match
    /// everything).
    pub fn to_discovery(&self) -> discovery::Service {
        use discovery::{BalancePolicy, HashOn, Operator, Requirement, Selector, TargetPort};
        let selector = if self.spec.selector.is_empty() {
            const KEY: &str = "berth.dev/no-selector";
            Selector {
                requirements: vec![
                    Requirement { key: KEY.into(), op: Operator::Exists, values: vec![] },
                    Requirement { key: KEY.into(), op: Operator::DoesNotExist, values: vec![] },
                ],
            }
        } else {
            Selector::from_labels(&self.spec.selector)
        };
        let ports = self
            .spec
            .ports
            .iter()
            .map(|p| discovery::ServicePort {
                name: p.name.clone(),
                port: clamp_port(p.port),
                target_port: match &p.target_port {
                    None => TargetPort::Number(clamp_port(p.port)),
                    Some(IntOrString::Int(n)) => TargetPort::Number(clamp_port(*n)),
                    Some(IntOrString::String(s)) => TargetPort::Name(s.clone()),
                },
                protocol: p.protocol,
            })
            .collect();
        let balance = match &self.spec.load_balancing {
            None => BalancePolicy::default(),
            Some(lb) => match lb.policy {
                BalancePolicyName::P2c => BalancePolicy::P2cPeakEwma,
                BalancePolicyName::RoundRobin => BalancePolicy::RoundRobin,
                BalancePolicyName::WeightedRoundRobin => BalancePolicy::WeightedRoundRobin,
                BalancePolicyName::LeastRequest => BalancePolicy::LeastRequest,
                BalancePolicyName::ConsistentHash => {
                    let h = lb.hash_on.clone().unwrap_or_default();
                    let hash_on = match (h.header, h.cookie) {
                        (Some(name), _) => HashOn::Header(name),
                        (None, Some(name)) => HashOn::Cookie(name),
                        (None, None) => HashOn::ClientIp,
                    };
                    BalancePolicy::ConsistentHash { hash_on }
                }
            },
        };
        // The clusterIP is not published as the discovery `virtual_ip` yet: nothing listens on it until the
        // node-local service proxy exists, and DNS would send clients to a dead address.
        let virtual_ip = None;
        let health_check = self.spec.health_check.as_ref().map(|h| discovery::HealthCheck {
            http_path: h.path.clone(),
            interval_ms: h.interval_ms,
            timeout_ms: h.timeout_ms,
            healthy_threshold: h.healthy_threshold,
            unhealthy_threshold: h.unhealthy_threshold,
        });
        discovery::Service {
            namespace: self.metadata.namespace.clone(),
            name: self.metadata.name.clone(),
            labels: self.metadata.labels.clone(),
            selector,
            ports,
            balance,
            virtual_ip,
            health_check,
            retry_on_statuses: self.spec.retry.as_ref().map(|r| r.on_statuses.clone()).unwrap_or_default(),
        }
    }

    pub(crate) fn check(&self, cx: &mut Check) -> CheckResult {
        let p = "spec";
        let s = &self.spec;
        check_label_map(&join(p, "selector"), &s.selector)?;
        if s.selector.is_empty() {
            cx.warn(&join(p, "selector"), "empty: Berth publishes no endpoints for a service without a selector");
        }
        match s.type_ {
            ServiceType::ClusterIP => {}
            ServiceType::NodePort | ServiceType::LoadBalancer => {
                cx.warn(&join(p, "type"), format!("{:?} is served like ClusterIP (through the Berth proxy)", s.type_))
            }
            ServiceType::ExternalName => return Err(field_err(join(p, "type"), "ExternalName is not supported")),
        }
        if let Some(ip) = &s.cluster_ip {
            if !ip.is_empty() && ip != "None" && ip.parse::<std::net::IpAddr>().is_err() {
                return Err(field_err(
                    join(p, "clusterIP"),
                    format!("{ip:?} must be an IP address, \"None\" or empty"),
                ));
            }
        }
        if s.ports.is_empty() && !self.is_headless() {
            return Err(field_err(join(p, "ports"), "at least one port is required (unless clusterIP is None)"));
        }
        let mut names = std::collections::BTreeSet::new();
        let mut numbers = std::collections::HashSet::new();
        for (i, port) in s.ports.iter().enumerate() {
            let pp = index(p, "ports", i);
            check_port(&join(&pp, "port"), port.port)?;
            match &port.name {
                Some(n) => {
                    validate_dns_label(n).map_err(|m| field_err(join(&pp, "name"), m))?;
                    if !names.insert(n.as_str()) {
                        return Err(field_err(join(&pp, "name"), format!("duplicate port name {n:?}")));
                    }
                }
                None if s.ports.len() > 1 => {
                    return Err(field_err(join(&pp, "name"), "required when the service has several ports"));
                }
                None => {}
            }
            if !numbers.insert((port.port, port.protocol)) {
                return Err(field_err(join(&pp, "port"), format!("duplicate port {}/{:?}", port.port, port.protocol)));
            }
            match &port.target_port {
                Some(IntOrString::Int(n)) => check_port(&join(&pp, "targetPort"), *n)?,
                Some(IntOrString::String(n)) => {
                    validate_port_name(n).map_err(|m| field_err(join(&pp, "targetPort"), m))?
                }
                None => {}
            }
            cx.ignored(&pp, "nodePort", &port.node_port);
            cx.ignored(&pp, "appProtocol", &port.app_protocol);
        }
        if let Some(lb) = &s.load_balancing {
            let lp = join(p, "loadBalancing");
            match (&lb.policy, &lb.hash_on) {
                (BalancePolicyName::ConsistentHash, None) => {
                    return Err(field_err(join(&lp, "hashOn"), "required when policy is consistentHash"));
                }
                (BalancePolicyName::ConsistentHash, Some(h)) => {
                    let n = usize::from(h.header.is_some())
                        + usize::from(h.cookie.is_some())
                        + usize::from(h.client_ip == Some(true));
                    if n != 1 || h.client_ip == Some(false) {
                        return Err(field_err(join(&lp, "hashOn"), "exactly one of header, cookie, clientIP: true"));
                    }
                    if let Some(hd) = &h.header {
                        if !is_http_token(hd) {
                            return Err(field_err(join(&lp, "hashOn.header"), "invalid header name"));
                        }
                    }
                }
                (_, Some(_)) => {
                    return Err(field_err(join(&lp, "hashOn"), "only valid when policy is consistentHash"));
                }
                _ => {}
            }
        }
        if let Some(h) = &s.health_check {
            let hp = join(p, "healthCheck");
            if h.path.as_deref().is_some_and(|x| !x.starts_with('/')) {
                return Err(field_err(join(&hp, "path"), "must start with '/'"));
            }
            if h.interval_ms == 0 || h.timeout_ms == 0 {
                return Err(field_err(hp, "intervalMs and timeoutMs must be > 0"));
            }
            if h.healthy_threshold == 0 || h.unhealthy_threshold == 0 {
                return Err(field_err(join(p, "healthCheck"), "thresholds must be >= 1"));
            }
        }
        if let Some(r) = &s.retry {
            for (i, code) in r.on_statuses.iter().enumerate() {
                if !(400..=599).contains(code) {
                    return Err(field_err(
                        index(&join(p, "retry"), "onStatuses", i),
                        format!("{code} is not an error status (400-599)"),
                    ));
                }
            }
        }
        for (name, v) in [
            ("clusterIPs", &s.cluster_ips),
            ("sessionAffinity", &s.session_affinity),
            ("sessionAffinityConfig", &s.session_affinity_config),
            ("externalTrafficPolicy", &s.external_traffic_policy),
            ("internalTrafficPolicy", &s.internal_traffic_policy),
            ("ipFamilies", &s.ip_families),
            ("ipFamilyPolicy", &s.ip_family_policy),
            ("publishNotReadyAddresses", &s.publish_not_ready_addresses),
            ("loadBalancerIP", &s.load_balancer_ip),
            ("loadBalancerSourceRanges", &s.load_balancer_source_ranges),
            ("loadBalancerClass", &s.load_balancer_class),
            ("allocateLoadBalancerNodePorts", &s.allocate_load_balancer_node_ports),
            ("externalIPs", &s.external_ips),
            ("healthCheckNodePort", &s.health_check_node_port),
            ("externalName", &s.external_name),
        ] {
            cx.ignored(p, name, v);
        }
        Ok(())
    }
}

/// Validation guarantees 1..=65535; this only keeps the conversion total.
fn clamp_port(p: i32) -> u16 {
    u16::try_from(p).unwrap_or(0)
}

// ---------------------------------------------------------------------------------------------------------
// Route (berth.dev/v1)

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Route {
    #[serde(default)]
    pub api_version: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    pub spec: RouteSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Ignored>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteSpec {
    /// Exact names or `*.suffix` wildcards; empty matches any host.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<RouteRule>,
    /// Where requests that match a host but no rule go.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_backend: Option<RouteBackend>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tls: Vec<RouteTls>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteRule {
    /// Overrides `spec.hosts` for this rule (an Ingress with several hosts converts to rules with hosts).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    /// Absent matches every path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathMatchSpec>,
    /// Empty matches every method.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<HeaderMatchSpec>,
    pub backend: RouteBackend,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rewrite: Option<Rewrite>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_headers: Option<HeaderModifier>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
}

impl RouteRule {
    /// A rule that only matches hosts and a path.
    pub fn to(hosts: Vec<String>, path: Option<PathMatchSpec>, backend: RouteBackend) -> RouteRule {
        RouteRule {
            hosts,
            path,
            methods: Vec::new(),
            headers: Vec::new(),
            backend,
            rewrite: None,
            request_headers: None,
            rate_limit: None,
        }
    }
}

/// Exactly one of `exact` and `prefix` (element-wise, as Kubernetes `Prefix`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PathMatchSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HeaderMatchSpec {
    pub name: String,
    /// Exact value; absent means the header must be present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteBackend {
    pub service: String,
    /// Service port by number or name; absent uses the service's first port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<IntOrString>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Rewrite {
    /// Replaces the matched path prefix.
    pub prefix: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HeaderModifier {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub add: Vec<HeaderValue>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HeaderValue {
    pub name: String,
    pub value: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RateLimit {
    /// Per proxy.
    pub requests_per_second: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteTls {
    pub hosts: Vec<String>,
    /// A `kubernetes.io/tls` Secret in the route's namespace.
    pub secret_name: String,
}

impl RouteBackend {
    fn to_discovery(&self) -> discovery::BackendRef {
        discovery::BackendRef {
            service: self.service.clone(),
            port: self.port.as_ref().map(|p| match p {
                IntOrString::Int(n) => discovery::TargetPort::Number(clamp_port(*n)),
                IntOrString::String(s) => discovery::TargetPort::Name(s.clone()),
            }),
        }
    }

    fn check(&self, p: &str) -> CheckResult {
        validate_dns1035_label(&self.service).map_err(|m| field_err(join(p, "service"), m))?;
        match &self.port {
            Some(IntOrString::Int(n)) => check_port(&join(p, "port"), *n),
            Some(IntOrString::String(n)) => validate_dns_label(n).map_err(|m| field_err(join(p, "port"), m)),
            None => Ok(()),
        }
    }
}

fn check_host(path: &str, host: &str) -> CheckResult {
    let name = host.strip_prefix("*.").unwrap_or(host);
    validate_dns_subdomain(name)
        .map_err(|_| field_err(path, format!("{host:?} must be a lowercase DNS name, optionally starting with \"*.\"")))
}

fn check_path(path: &str, value: &str) -> CheckResult {
    if !value.starts_with('/') || value.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(field_err(path, format!("{value:?} must start with '/' and contain no whitespace")));
    }
    Ok(())
}

impl Route {
    /// The data plane's routes. Rules with the same effective host list (rule hosts, else `spec.hosts`)
    /// share one route; when there are several host lists, the routes are named `NAME#0`, `NAME#1`, ...
    /// (`#` cannot appear in an object name, so these never collide with another route).
    pub fn to_discovery(&self) -> Vec<discovery::Route> {
        let mut groups: Vec<(Vec<String>, Vec<discovery::RouteRule>)> = Vec::new();
        for r in &self.spec.rules {
            let hosts = if r.hosts.is_empty() { self.spec.hosts.clone() } else { r.hosts.clone() };
            let rule = discovery::RouteRule {
                path: r.path.as_ref().and_then(|p| match (&p.exact, &p.prefix) {
                    (Some(e), _) => Some(discovery::PathMatch::Exact(e.clone())),
                    (None, Some(pr)) => Some(discovery::PathMatch::Prefix(pr.clone())),
                    (None, None) => None,
                }),
                methods: r.methods.clone(),
                headers: r
                    .headers
                    .iter()
                    .map(|h| discovery::HeaderMatch { name: h.name.clone(), value: h.value.clone() })
                    .collect(),
                backend: r.backend.to_discovery(),
                rewrite_prefix: r.rewrite.as_ref().map(|w| w.prefix.clone()),
                add_request_headers: r
                    .request_headers
                    .as_ref()
                    .map(|m| m.add.iter().map(|h| (h.name.clone(), h.value.clone())).collect())
                    .unwrap_or_default(),
                remove_request_headers: r.request_headers.as_ref().map(|m| m.remove.clone()).unwrap_or_default(),
                rate_limit_rps: r.rate_limit.as_ref().map(|l| l.requests_per_second),
            };
            match groups.iter_mut().find(|(h, _)| *h == hosts) {
                Some((_, rules)) => rules.push(rule),
                None => groups.push((hosts, vec![rule])),
            }
        }
        if groups.is_empty() {
            groups.push((self.spec.hosts.clone(), Vec::new()));
        }
        let several = groups.len() > 1;
        groups
            .into_iter()
            .enumerate()
            .map(|(i, (hosts, rules))| {
                let tls = self
                    .spec
                    .tls
                    .iter()
                    .filter(|t| hosts.is_empty() || t.hosts.iter().any(|h| hosts.contains(h)))
                    .map(|t| discovery::RouteTls { hosts: t.hosts.clone(), secret_name: t.secret_name.clone() })
                    .collect();
                discovery::Route {
                    namespace: self.metadata.namespace.clone(),
                    name: if several { format!("{}#{i}", self.metadata.name) } else { self.metadata.name.clone() },
                    labels: self.metadata.labels.clone(),
                    hosts,
                    rules,
                    default_backend: self.spec.default_backend.as_ref().map(RouteBackend::to_discovery),
                    tls,
                }
            })
            .collect()
    }

    pub(crate) fn check(&self, _cx: &mut Check) -> CheckResult {
        let s = &self.spec;
        for (i, h) in s.hosts.iter().enumerate() {
            check_host(&index("spec", "hosts", i), h)?;
        }
        if s.rules.is_empty() && s.default_backend.is_none() {
            return Err(field_err("spec", "needs at least one rule or a defaultBackend"));
        }
        if let Some(b) = &s.default_backend {
            b.check("spec.defaultBackend")?;
        }
        for (i, r) in s.rules.iter().enumerate() {
            let rp = index("spec", "rules", i);
            for (j, h) in r.hosts.iter().enumerate() {
                check_host(&index(&rp, "hosts", j), h)?;
            }
            if let Some(pm) = &r.path {
                let pp = join(&rp, "path");
                match (&pm.exact, &pm.prefix) {
                    (Some(e), None) => check_path(&join(&pp, "exact"), e)?,
                    (None, Some(pr)) => check_path(&join(&pp, "prefix"), pr)?,
                    _ => return Err(field_err(pp, "exactly one of exact, prefix must be set")),
                }
            }
            for (j, m) in r.methods.iter().enumerate() {
                if !is_http_token(m) || m.bytes().any(|b| b.is_ascii_lowercase()) {
                    return Err(field_err(index(&rp, "methods", j), format!("{m:?} is not an upper-case HTTP method")));
                }
            }
            for (j, h) in r.headers.iter().enumerate() {
                if !is_http_token(&h.name) {
                    return Err(field_err(join(&index(&rp, "headers", j), "name"), "invalid header name"));
                }
            }
            r.backend.check(&join(&rp, "backend"))?;
            if let Some(w) = &r.rewrite {
                if r.path.as_ref().is_none_or(|p| p.prefix.is_none()) {
                    return Err(field_err(join(&rp, "rewrite"), "needs a path prefix match to rewrite"));
                }
                check_path(&join(&rp, "rewrite.prefix"), &w.prefix)?;
            }
            if let Some(m) = &r.request_headers {
                for (j, h) in m.add.iter().enumerate() {
                    if !is_http_token(&h.name) || h.value.contains(['\r', '\n']) {
                        return Err(field_err(index(&rp, "requestHeaders.add", j), "invalid header"));
                    }
                }
                for (j, h) in m.remove.iter().enumerate() {
                    if !is_http_token(h) {
                        return Err(field_err(index(&rp, "requestHeaders.remove", j), "invalid header name"));
                    }
                }
            }
            if let Some(l) = &r.rate_limit {
                if l.requests_per_second == 0 {
                    return Err(field_err(join(&rp, "rateLimit.requestsPerSecond"), "must be >= 1"));
                }
            }
        }
        for (i, t) in s.tls.iter().enumerate() {
            let tp = index("spec", "tls", i);
            if t.hosts.is_empty() {
                return Err(field_err(join(&tp, "hosts"), "must not be empty"));
            }
            for (j, h) in t.hosts.iter().enumerate() {
                check_host(&index(&tp, "hosts", j), h)?;
            }
            validate_dns_subdomain(&t.secret_name).map_err(|m| field_err(join(&tp, "secretName"), m))?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------------------
// Ingress (networking.k8s.io/v1), read as a Route

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Ingress {
    #[serde(default)]
    pub api_version: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: IngressSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Ignored>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IngressSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress_class_name: Option<Ignored>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_backend: Option<IngressBackend>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tls: Vec<IngressTls>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<IngressRule>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IngressBackend {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<IngressServiceBackend>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<Ignored>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IngressServiceBackend {
    pub name: String,
    pub port: ServiceBackendPort,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceBackendPort {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub number: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IngressTls {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_name: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IngressRule {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpIngressRuleValue>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpIngressRuleValue {
    pub paths: Vec<HttpIngressPath>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpIngressPath {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    pub path_type: PathType,
    pub backend: IngressBackend,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum PathType {
    Exact,
    Prefix,
    /// Read as `Prefix` (with a warning).
    ImplementationSpecific,
}

impl IngressBackend {
    fn to_route_backend(&self, p: &str, cx: &mut Check) -> Result<RouteBackend, FieldError> {
        cx.unsupported(p, "resource", &self.resource)?;
        let s = self.service.as_ref().ok_or_else(|| field_err(join(p, "service"), "required"))?;
        let sp = join(p, "service");
        validate_dns1035_label(&s.name).map_err(|m| field_err(join(&sp, "name"), m))?;
        let port = match (&s.port.number, &s.port.name) {
            (Some(n), None) => {
                check_port(&join(&sp, "port.number"), *n)?;
                IntOrString::Int(*n)
            }
            (None, Some(name)) => {
                validate_dns_label(name).map_err(|m| field_err(join(&sp, "port.name"), m))?;
                IntOrString::String(name.clone())
            }
            _ => return Err(field_err(join(&sp, "port"), "exactly one of number, name must be set")),
        };
        Ok(RouteBackend { service: s.name.clone(), port: Some(port) })
    }
}

impl Ingress {
    /// The equivalent Route (same metadata). Every rule carries its Ingress host, unless all rules share
    /// one host list, which then becomes `spec.hosts`.
    pub(crate) fn into_route(self, cx: &mut Check) -> Result<Route, FieldError> {
        let s = &self.spec;
        cx.ignored("spec", "ingressClassName", &s.ingress_class_name);
        let default_backend = match &s.default_backend {
            Some(b) => Some(b.to_route_backend("spec.defaultBackend", cx)?),
            None => None,
        };
        let mut rules = Vec::new();
        for (i, r) in s.rules.iter().enumerate() {
            let rp = index("spec", "rules", i);
            let hosts: Vec<String> = r.host.iter().cloned().collect();
            for h in &hosts {
                check_host(&join(&rp, "host"), h)?;
            }
            let Some(http) = &r.http else {
                if let Some(b) = &default_backend {
                    // A host without paths sends everything to the default backend.
                    rules.push(RouteRule::to(hosts.clone(), None, b.clone()));
                }
                continue;
            };
            for (j, path) in http.paths.iter().enumerate() {
                let pp = index(&join(&rp, "http"), "paths", j);
                let value = path.path.clone().unwrap_or_else(|| "/".into());
                check_path(&join(&pp, "path"), &value)?;
                let matcher = match path.path_type {
                    PathType::Exact => PathMatchSpec { exact: Some(value), prefix: None },
                    PathType::Prefix => PathMatchSpec { exact: None, prefix: Some(value) },
                    PathType::ImplementationSpecific => {
                        cx.warn(&join(&pp, "pathType"), "ImplementationSpecific is read as Prefix");
                        PathMatchSpec { exact: None, prefix: Some(value) }
                    }
                };
                let backend = path.backend.to_route_backend(&join(&pp, "backend"), cx)?;
                rules.push(RouteRule::to(hosts.clone(), Some(matcher), backend));
            }
        }
        // Lift a shared host list to spec.hosts so the common one-host Ingress becomes the plain Route shape.
        let mut spec_hosts = Vec::new();
        if let Some(first) = rules.first().map(|r| r.hosts.clone()) {
            if rules.iter().all(|r| r.hosts == first) {
                spec_hosts = first;
                for r in &mut rules {
                    r.hosts.clear();
                }
            }
        }
        let mut tls = Vec::new();
        for (i, t) in s.tls.iter().enumerate() {
            let tp = index("spec", "tls", i);
            match &t.secret_name {
                Some(name) => tls.push(RouteTls { hosts: t.hosts.clone(), secret_name: name.clone() }),
                None => cx.warn(&tp, "no secretName: Berth has no default certificate, TLS for these hosts is off"),
            }
        }
        if rules.is_empty() && default_backend.is_none() {
            return Err(field_err("spec", "needs at least one rule with paths or a defaultBackend"));
        }
        let metadata = self.metadata;
        Ok(Route {
            api_version: super::Kind::Route.api_version().into(),
            kind: super::Kind::Route.kind_name().into(),
            metadata,
            spec: RouteSpec { hosts: spec_hosts, rules, default_backend, tls },
            status: None,
        })
    }
}
