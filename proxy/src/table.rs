//! The routing snapshot: a compiled route table plus one endpoint pool per service port, built from a
//! registry [`Snapshot`] and published as one immutable [`Table`] (the request path reads it through an
//! `ArcSwap`, without locks).
//!
//! [`TableBuilder`] keeps what must survive rebuilds (endpoint state, metrics, rate limiters) and rebuilds only
//! the pools of services a change touches. Route precedence, in order: host level (exact host, then the longest
//! matching `*.suffix` wildcard, then routes without hosts; a level with no matching rule falls through to the
//! next), then within a level: exact path before prefix, longer prefix first, more header matches first, rules
//! with methods before rules without, then route order (namespace/name) and rule order. A level's default
//! backend applies when none of its rules match.

use crate::balance::{Ejection, EndpointState, Entry, Policy, Pool};
use crate::forward::Forwarding;
use crate::metrics::{MetricsRegistry, RequestMetrics};
use discovery::{
    BackendRef, Endpoint, HashOn, HeaderMatch, Object, ObjectKind, PathMatch, Route, RouteRule, Service, Snapshot,
    TargetPort, WatchEvent,
};
use http::{HeaderName, HeaderValue, Method};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

/// A request's header fields, whichever parser produced them: pingora's map (HTTP/2, handed-over requests) or
/// the HTTP/1 fast path's `httparse` slice. Names compare without regard to case.
pub trait Headers {
    /// Every value of the field `name`, in order.
    fn values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a;
    /// The first value of the field `name`.
    fn first<'a>(&'a self, name: &'a str) -> Option<&'a [u8]> {
        self.values(name).next()
    }
}

impl Headers for pingora::http::HMap {
    fn values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.get_all(name).into_iter().map(|v| v.as_bytes())
    }
}

impl Headers for [httparse::Header<'_>] {
    fn values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.iter().filter(move |h| h.name.eq_ignore_ascii_case(name)).map(|h| h.value)
    }
}

/// Identity of a pool: a service port (0 when the service declares no ports).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PoolKey {
    pub namespace: Arc<str>,
    pub service: Arc<str>,
    pub port: u16,
}

/// The endpoints of one service port and how to pick among them.
#[derive(Debug)]
pub struct ServicePool {
    pub key: PoolKey,
    pub pool: Pool,
    pub hash_on: Option<HashOn>,
    pub metrics: Arc<RequestMetrics>,
    /// Names of all member endpoints, any readiness (to find the pools an endpoint change touches).
    members: HashSet<Arc<str>>,
    /// The service object this pool was built from.
    service: Arc<Service>,
}

impl ServicePool {
    /// The service's active health check settings, if any.
    pub fn health_check(&self) -> Option<&discovery::HealthCheck> {
        self.service.health_check.as_ref()
    }

    /// Whether the service asks for a retry elsewhere when an endpoint answers `status`.
    pub fn retries_on(&self, status: u16) -> bool {
        self.service.retry_on_statuses.contains(&status)
    }
}

/// Fixed-window request rate limiter (one-second windows), lock-free.
#[derive(Debug)]
pub struct RateLimiter {
    rps: u32,
    /// High 32 bits: window (seconds since origin); low 32 bits: count in that window.
    state: AtomicU64,
}

impl RateLimiter {
    pub fn new(rps: u32) -> Self {
        RateLimiter { rps, state: AtomicU64::new(0) }
    }
    /// Whether one more request fits in the current window.
    pub fn admit(&self, now_ns: u64) -> bool {
        let window = now_ns / 1_000_000_000;
        let mut cur = self.state.load(Relaxed);
        loop {
            let (w, n) = (cur >> 32, cur & 0xffff_ffff);
            let next = if w == window {
                if n >= u64::from(self.rps) {
                    return false;
                }
                cur + 1
            } else {
                (window << 32) | 1
            };
            match self.state.compare_exchange_weak(cur, next, Relaxed, Relaxed) {
                Ok(_) => return true,
                Err(actual) => cur = actual,
            }
        }
    }
}

/// How a compiled rule matches the path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathRule {
    Any,
    Exact(Box<str>),
    Prefix(Box<str>),
}

impl PathRule {
    fn matches(&self, path: &str) -> bool {
        match self {
            PathRule::Any => true,
            PathRule::Exact(p) => path == &**p,
            PathRule::Prefix(p) => prefix_matches(p, path),
        }
    }
    fn rank(&self) -> (u8, usize) {
        match self {
            PathRule::Exact(p) => (2, p.len()),
            PathRule::Prefix(p) => (1, p.len()),
            PathRule::Any => (0, 0),
        }
    }
}

/// Element-wise prefix: `/a` matches `/a`, `/a/` and `/a/b`, not `/ab`.
pub fn prefix_matches(prefix: &str, path: &str) -> bool {
    let p = prefix.trim_end_matches('/');
    if p.is_empty() {
        return true;
    }
    path.starts_with(p) && matches!(path.as_bytes().get(p.len()), None | Some(b'/'))
}

/// One rule, ready to match and to apply.
#[derive(Debug)]
pub struct CompiledRule {
    pub route_namespace: Arc<str>,
    pub route_name: Arc<str>,
    pub path: PathRule,
    pub methods: Vec<Method>,
    pub headers: Vec<(HeaderName, Option<HeaderValue>)>,
    /// Index into [`Table::pools`]; `None` when the backend service does not exist (answered 503).
    pub backend: Option<usize>,
    /// What the rule changes in the requests it forwards (its field edits and prefix rewrite), with the
    /// forwarding fields of the proxy: computed here once, applied per request by both HTTP/1 paths.
    pub(crate) forward: Forwarding,
    pub rate_limit: Option<Arc<RateLimiter>>,
    pub metrics: Arc<RequestMetrics>,
    order: (usize, usize),
}

impl CompiledRule {
    fn matches(&self, path: &str, method: &Method, headers: &(impl Headers + ?Sized)) -> bool {
        self.path.matches(path)
            && (self.methods.is_empty() || self.methods.contains(method))
            && self.headers.iter().all(|(name, value)| match (headers.first(name.as_str()), value) {
                (Some(_), None) => true,
                (Some(v), Some(want)) => v == want.as_bytes(),
                (None, _) => false,
            })
    }
}

/// Rules of one host level, sorted by precedence.
#[derive(Debug, Default)]
pub struct HostRules {
    rules: Vec<Arc<CompiledRule>>,
    default: Option<Arc<CompiledRule>>,
}

impl HostRules {
    fn find(&self, path: &str, method: &Method, headers: &(impl Headers + ?Sized)) -> Option<&Arc<CompiledRule>> {
        self.rules.iter().find(|r| r.matches(path, method, headers)).or(self.default.as_ref())
    }
    fn sort(&mut self) {
        self.rules.sort_by(|a, b| {
            let ka = (a.path.rank(), a.headers.len(), !a.methods.is_empty());
            let kb = (b.path.rank(), b.headers.len(), !b.methods.is_empty());
            kb.cmp(&ka).then(a.order.cmp(&b.order))
        });
    }
}

/// The route table.
#[derive(Debug, Default)]
pub struct RouteTable {
    exact: HashMap<Box<str>, HostRules>,
    /// `(".example.com", rules)`, longest suffix first.
    wildcard: Vec<(Box<str>, HostRules)>,
    any: HostRules,
}

/// Lower-case the host and drop a port; borrows when it can.
pub fn normalize_host(host: &str) -> std::borrow::Cow<'_, str> {
    let h = if host.starts_with('[') {
        // IPv6 literal: keep the brackets' content.
        host.split(']').next().map(|s| &s[1..]).unwrap_or(host)
    } else {
        host.rsplit_once(':').filter(|(_, p)| p.bytes().all(|b| b.is_ascii_digit())).map_or(host, |(h, _)| h)
    };
    let h = h.trim_end_matches('.');
    if h.bytes().any(|b| b.is_ascii_uppercase()) {
        std::borrow::Cow::Owned(h.to_ascii_lowercase())
    } else {
        std::borrow::Cow::Borrowed(h)
    }
}

impl RouteTable {
    /// The rule for a request, by precedence (see the module doc).
    pub fn find(
        &self,
        host: &str,
        path: &str,
        method: &Method,
        headers: &(impl Headers + ?Sized),
    ) -> Option<&Arc<CompiledRule>> {
        let host = normalize_host(host);
        if let Some(r) = self.exact.get(&*host).and_then(|h| h.find(path, method, headers)) {
            return Some(r);
        }
        for (suffix, rules) in &self.wildcard {
            if host.len() > suffix.len() && host.ends_with(&**suffix) {
                if let Some(r) = rules.find(path, method, headers) {
                    return Some(r);
                }
            }
        }
        self.any.find(path, method, headers)
    }
}

/// The one immutable snapshot the request path reads.
#[derive(Debug, Default)]
pub struct Table {
    pub revision: u64,
    pub routes: Arc<RouteTable>,
    pub pools: Vec<Arc<ServicePool>>,
    pub pool_index: HashMap<PoolKey, usize>,
}

impl Table {
    pub fn pool(&self, namespace: &str, service: &str, port: Option<&TargetPort>) -> Option<&Arc<ServicePool>> {
        let svc = self.pools.iter().find(|p| &*p.key.namespace == namespace && &*p.key.service == service)?;
        let port = resolve_service_port(&svc.service, port)?;
        let key = PoolKey { namespace: namespace.into(), service: service.into(), port };
        self.pool_index.get(&key).map(|&i| &self.pools[i])
    }
}

/// A service port number for a backend reference (0 when the service has no ports and none was asked).
fn resolve_service_port(service: &Service, port: Option<&TargetPort>) -> Option<u16> {
    match port {
        None => Some(service.ports.first().map_or(0, |p| p.port)),
        Some(TargetPort::Number(n)) => service.ports.iter().any(|p| p.port == *n).then_some(*n),
        Some(TargetPort::Name(name)) => {
            service.ports.iter().find(|p| p.name.as_deref() == Some(name.as_str())).map(|p| p.port)
        }
    }
}

/// Builds tables and keeps what survives rebuilds.
#[derive(Debug)]
pub struct TableBuilder {
    metrics: Arc<MetricsRegistry>,
    limiters: HashMap<(String, String, usize, u32), Arc<RateLimiter>>,
    ejection: Ejection,
}

fn header_name(name: &str) -> Option<HeaderName> {
    HeaderName::from_bytes(name.as_bytes()).ok()
}

impl TableBuilder {
    pub fn new(metrics: Arc<MetricsRegistry>, ejection: Ejection) -> Self {
        TableBuilder { metrics, limiters: HashMap::new(), ejection }
    }

    pub fn ejection(&self) -> &Ejection {
        &self.ejection
    }

    /// A table built from scratch (endpoint state carried over from `prev` where endpoints remain).
    pub fn full(&mut self, snap: &Snapshot, prev: Option<&Table>) -> Table {
        let mut pools = Vec::new();
        for svc in snap.services() {
            let eps = snap.service_endpoints(svc);
            for port in service_pool_ports(svc) {
                let key = PoolKey { namespace: svc.namespace.as_str().into(), service: svc.name.as_str().into(), port };
                let old = prev.and_then(|t| t.pool_index.get(&key).map(|&i| &t.pools[i]));
                pools.push(Arc::new(self.build_pool(key, svc, &eps, old.map(|p| &p.pool))));
            }
        }
        pools.sort_by(|a, b| a.key.cmp(&b.key));
        let pool_index: HashMap<PoolKey, usize> = pools.iter().enumerate().map(|(i, p)| (p.key.clone(), i)).collect();
        let routes = Arc::new(self.build_routes(snap, &pools, &pool_index));
        Table { revision: snap.revision(), routes, pools, pool_index }
    }

    /// Apply watch events: rebuild only the pools whose members or service changed; rebuild everything when a
    /// route or the set of services changed.
    pub fn apply(&mut self, snap: &Snapshot, prev: &Table, events: &[WatchEvent]) -> Table {
        let mut structural = false;
        let mut touched: BTreeSet<usize> = BTreeSet::new();
        for ev in events {
            match ev {
                WatchEvent::Relist { .. } => structural = true,
                WatchEvent::Put { object: Object::Endpoint(ep), .. } => {
                    self.touch_endpoint(prev, &ep.namespace, &ep.name, Some(ep), &mut touched)
                }
                WatchEvent::Delete { key, .. } if key.kind == ObjectKind::Endpoint => {
                    self.touch_endpoint(prev, &key.namespace, &key.name, None, &mut touched)
                }
                WatchEvent::Put { object: Object::Certificate(_), .. } => {}
                WatchEvent::Delete { key, .. } if key.kind == ObjectKind::Certificate => {}
                _ => structural = true,
            }
        }
        if structural {
            return self.full(snap, Some(prev));
        }
        let mut pools = prev.pools.clone();
        for i in touched {
            let old = &prev.pools[i];
            let Some(svc) = snap.service(&old.key.namespace, &old.key.service) else {
                return self.full(snap, Some(prev));
            };
            let eps = snap.service_endpoints(svc);
            pools[i] = Arc::new(self.build_pool(old.key.clone(), svc, &eps, Some(&old.pool)));
        }
        Table { revision: snap.revision(), routes: prev.routes.clone(), pools, pool_index: prev.pool_index.clone() }
    }

    fn touch_endpoint(
        &self,
        prev: &Table,
        namespace: &str,
        name: &str,
        new: Option<&Arc<Endpoint>>,
        touched: &mut BTreeSet<usize>,
    ) {
        for (i, p) in prev.pools.iter().enumerate() {
            if &*p.key.namespace != namespace {
                continue;
            }
            if p.members.contains(name) || new.is_some_and(|e| p.service.selector.matches(&e.labels)) {
                touched.insert(i);
            }
        }
    }

    fn build_pool(&self, key: PoolKey, svc: &Arc<Service>, eps: &[Arc<Endpoint>], old: Option<&Pool>) -> ServicePool {
        let target = svc.ports.iter().find(|p| p.port == key.port).map(|p| p.target_port.clone());
        let old_states: HashMap<&str, &Arc<EndpointState>> =
            old.map(|p| p.entries().iter().map(|e| (&*e.id, &e.state)).collect()).unwrap_or_default();
        let mut entries = Vec::with_capacity(eps.len());
        let mut members = HashSet::with_capacity(eps.len());
        for ep in eps {
            members.insert(Arc::<str>::from(ep.name.as_str()));
            if !ep.accepts_new() {
                continue;
            }
            let port = match &target {
                Some(t) => ep.resolve_port(t),
                None => ep.ports.first().map(|p| p.port),
            };
            let Some(port) = port else { continue };
            let id = format!("{}/{}:{}", ep.namespace, ep.name, port);
            let state = old_states.get(id.as_str()).map(|s| Arc::clone(s)).unwrap_or_default();
            entries.push(Entry { id: id.into(), addr: SocketAddr::new(ep.address, port), weight: ep.weight, state });
        }
        // Deterministic order keeps round robin and Maglev stable across rebuilds.
        entries.sort_by(|a, b| a.id.cmp(&b.id));
        let hash_on = match &svc.balance {
            discovery::BalancePolicy::ConsistentHash { hash_on } => Some(hash_on.clone()),
            _ => None,
        };
        ServicePool {
            metrics: self.metrics.services.get_or_insert(&svc.namespace, &svc.name),
            pool: Pool::new(entries, Policy::from(&svc.balance)),
            key,
            hash_on,
            members,
            service: svc.clone(),
        }
    }

    fn build_routes(
        &mut self,
        snap: &Snapshot,
        pools: &[Arc<ServicePool>],
        index: &HashMap<PoolKey, usize>,
    ) -> RouteTable {
        let mut table = RouteTable::default();
        let mut wildcard: HashMap<Box<str>, HostRules> = HashMap::new();
        let resolve = |ns: &str, b: &BackendRef| -> Option<usize> {
            let svc = pools.iter().find(|p| &*p.key.namespace == ns && &*p.key.service == b.service.as_str())?;
            let port = resolve_service_port(&svc.service, b.port.as_ref())?;
            index.get(&PoolKey { namespace: ns.into(), service: b.service.as_str().into(), port }).copied()
        };
        for (route_idx, route) in snap.routes().enumerate() {
            let metrics = self.metrics.routes.get_or_insert(&route.namespace, &route.name);
            let compiled: Vec<Arc<CompiledRule>> = route
                .rules
                .iter()
                .enumerate()
                .map(|(i, rule)| {
                    Arc::new(self.compile_rule(
                        route,
                        i,
                        rule,
                        resolve(&route.namespace, &rule.backend),
                        &metrics,
                        route_idx,
                    ))
                })
                .collect();
            let default = route.default_backend.as_ref().map(|b| {
                Arc::new(CompiledRule {
                    route_namespace: route.namespace.as_str().into(),
                    route_name: route.name.as_str().into(),
                    path: PathRule::Any,
                    methods: Vec::new(),
                    headers: Vec::new(),
                    backend: resolve(&route.namespace, b),
                    forward: Forwarding::new(&PathRule::Any, None, Vec::new(), Vec::new()),
                    rate_limit: None,
                    metrics: metrics.clone(),
                    order: (route_idx, usize::MAX),
                })
            });
            let add = |rules: &mut HostRules| {
                rules.rules.extend(compiled.iter().cloned());
                if rules.default.is_none() {
                    rules.default = default.clone();
                }
            };
            if route.hosts.is_empty() {
                add(&mut table.any);
            }
            for host in &route.hosts {
                let host = host.to_ascii_lowercase();
                if let Some(suffix) = host.strip_prefix('*') {
                    add(wildcard.entry(suffix.into()).or_default());
                } else {
                    add(table.exact.entry(host.into()).or_default());
                }
            }
        }
        table.any.sort();
        table.exact.values_mut().for_each(HostRules::sort);
        table.wildcard = wildcard.into_iter().collect();
        table.wildcard.iter_mut().for_each(|(_, r)| r.sort());
        table.wildcard.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.0.cmp(&b.0)));
        table
    }

    fn compile_rule(
        &mut self,
        route: &Route,
        idx: usize,
        rule: &RouteRule,
        backend: Option<usize>,
        metrics: &Arc<RequestMetrics>,
        route_idx: usize,
    ) -> CompiledRule {
        let path = match &rule.path {
            None => PathRule::Any,
            Some(PathMatch::Exact(p)) => PathRule::Exact(p.as_str().into()),
            Some(PathMatch::Prefix(p)) if p.trim_end_matches('/').is_empty() => PathRule::Prefix("/".into()),
            Some(PathMatch::Prefix(p)) => PathRule::Prefix(p.as_str().into()),
        };
        let headers = rule
            .headers
            .iter()
            .filter_map(|HeaderMatch { name, value }| {
                let v = match value {
                    Some(v) => Some(HeaderValue::from_str(v).ok()?),
                    None => None,
                };
                Some((header_name(name)?, v))
            })
            .collect();
        let rate_limit = rule.rate_limit_rps.map(|rps| {
            self.limiters
                .entry((route.namespace.clone(), route.name.clone(), idx, rps))
                .or_insert_with(|| Arc::new(RateLimiter::new(rps)))
                .clone()
        });
        CompiledRule {
            route_namespace: route.namespace.as_str().into(),
            route_name: route.name.as_str().into(),
            methods: rule
                .methods
                .iter()
                .filter_map(|m| Method::from_bytes(m.to_ascii_uppercase().as_bytes()).ok())
                .collect(),
            headers,
            backend,
            forward: Forwarding::new(
                &path,
                rule.rewrite_prefix.as_deref(),
                rule.add_request_headers
                    .iter()
                    .filter_map(|(k, v)| Some((header_name(k)?, HeaderValue::from_str(v).ok()?)))
                    .collect(),
                rule.remove_request_headers.iter().filter_map(|k| header_name(k)).collect(),
            ),
            path,
            rate_limit,
            metrics: metrics.clone(),
            order: (route_idx, idx),
        }
    }
}

/// The service ports a service gets pools for (one pool with port 0 when it declares none).
fn service_pool_ports(svc: &Service) -> Vec<u16> {
    if svc.ports.is_empty() {
        vec![0]
    } else {
        svc.ports.iter().map(|p| p.port).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use discovery::{Registry, ServicePort};

    fn svc(name: &str) -> Object {
        Object::Service(Arc::new(Service {
            namespace: "ns".into(),
            name: name.into(),
            labels: Default::default(),
            selector: Selector::from_labels(&[("app".to_string(), name.to_string())].into_iter().collect()),
            ports: vec![ServicePort {
                name: None,
                port: 80,
                target_port: TargetPort::Number(80),
                protocol: Default::default(),
            }],
            balance: Default::default(),
            virtual_ip: None,
            health_check: None,
            retry_on_statuses: Vec::new(),
        }))
    }

    fn rule(path: Option<PathMatch>, methods: &[&str], headers: &[(&str, Option<&str>)], backend: &str) -> RouteRule {
        RouteRule {
            path,
            methods: methods.iter().map(|m| m.to_string()).collect(),
            headers: headers
                .iter()
                .map(|(n, v)| HeaderMatch { name: n.to_string(), value: v.map(str::to_string) })
                .collect(),
            backend: BackendRef { service: backend.into(), port: None },
            rewrite_prefix: None,
            add_request_headers: vec![],
            remove_request_headers: vec![],
            rate_limit_rps: None,
        }
    }

    fn route(name: &str, hosts: &[&str], rules: Vec<RouteRule>, default: Option<&str>) -> Object {
        Object::Route(Arc::new(Route {
            namespace: "ns".into(),
            name: name.into(),
            labels: Default::default(),
            hosts: hosts.iter().map(|h| h.to_string()).collect(),
            rules,
            default_backend: default.map(|s| BackendRef { service: s.into(), port: None }),
            tls: vec![],
        }))
    }

    use discovery::Selector;

    #[test]
    fn routing_precedence() {
        let reg = Registry::new();
        for s in ["exact", "prefix-a", "prefix-ab", "hdr", "post", "wild", "deep-wild", "any", "dflt", "root"] {
            reg.put(svc(s));
        }
        use PathMatch::{Exact, Prefix};
        reg.put(route(
            "main",
            &["example.com"],
            vec![
                rule(Some(Prefix("/a".into())), &[], &[], "prefix-a"),
                rule(Some(Prefix("/a/b".into())), &[], &[], "prefix-ab"),
                rule(Some(Exact("/a/b/c".into())), &[], &[], "exact"),
                rule(Some(Prefix("/a".into())), &[], &[("x-canary", Some("1"))], "hdr"),
                rule(Some(Prefix("/a".into())), &["POST"], &[], "post"),
            ],
            Some("dflt"),
        ));
        reg.put(route("wild", &["*.example.com"], vec![rule(Some(Prefix("/".into())), &[], &[], "wild")], None));
        reg.put(route(
            "deep",
            &["*.deep.example.com"],
            vec![rule(Some(Prefix("/x".into())), &[], &[], "deep-wild")],
            None,
        ));
        reg.put(route("any", &[], vec![rule(Some(Prefix("/any".into())), &[], &[], "any")], None));
        let mut b = TableBuilder::new(Default::default(), Ejection::default());
        let table = b.full(&reg.snapshot(), None);
        let name = |r: Option<&Arc<CompiledRule>>| -> String {
            match r.and_then(|r| r.backend) {
                Some(i) => table.pools[i].key.service.to_string(),
                None => "-".into(),
            }
        };
        let get = http::Method::GET;
        let post = http::Method::POST;
        let none = http::HeaderMap::new();
        let mut canary = http::HeaderMap::new();
        canary.insert("x-canary", "1".parse().unwrap());
        let cases: Vec<(&str, &str, &http::Method, &http::HeaderMap, &str)> = vec![
            ("example.com", "/a/b/c", &get, &none, "exact"),
            ("example.com", "/a/b/c/d", &get, &none, "prefix-ab"),
            ("example.com", "/a/b", &get, &none, "prefix-ab"),
            ("example.com", "/a/bc", &get, &none, "prefix-a"),
            ("example.com", "/a", &get, &none, "prefix-a"),
            ("example.com", "/a/x", &get, &canary, "hdr"),
            ("example.com", "/a/x", &post, &none, "post"),
            ("example.com", "/a/b/x", &get, &canary, "prefix-ab"),
            ("EXAMPLE.com:8080", "/a", &get, &none, "prefix-a"),
            ("example.com", "/zzz", &get, &none, "dflt"),
            ("www.example.com", "/zzz", &get, &none, "wild"),
            ("a.deep.example.com", "/x/1", &get, &none, "deep-wild"),
            ("a.deep.example.com", "/y", &get, &none, "wild"),
            ("other.org", "/any/1", &get, &none, "any"),
            ("other.org", "/anyway", &get, &none, "-"),
            ("example.org", "/", &get, &none, "-"),
        ];
        for (host, path, method, headers, want) in cases {
            assert_eq!(name(table.routes.find(host, path, method, headers)), want, "{host}{path} {method}");
        }
    }

    #[test]
    fn rate_limiter_admits_rps_per_window() {
        let rl = RateLimiter::new(3);
        let admitted = (0..10).filter(|_| rl.admit(5_000_000_000)).count();
        assert_eq!(admitted, 3);
        assert!(rl.admit(6_000_000_000));
    }
}
