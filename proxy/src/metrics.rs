//! Request metrics: counters by status class, in-flight gauges and latency histograms per route and service,
//! rendered as Prometheus text and readable in-process (the autoscaler's input).
//!
//! The request path only does relaxed atomic adds: latencies go into fixed log-linear buckets of atomics
//! (about 6% precision). Readers fold those buckets into an `hdrhistogram::Histogram` to compute quantiles.
//! Metric objects are keyed by name and outlive table rebuilds, so counts survive registry changes.

use hdrhistogram::Histogram;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

const SUB_BITS: u32 = 4;
const SUB: usize = 1 << SUB_BITS;
/// Buckets cover 1 µs .. ~2^40 µs.
const BUCKETS: usize = 41 * SUB;

/// A lock-free latency histogram in microseconds.
pub struct AtomicHistogram {
    buckets: Box<[AtomicU64]>,
}

impl Default for AtomicHistogram {
    fn default() -> Self {
        AtomicHistogram { buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect() }
    }
}

impl std::fmt::Debug for AtomicHistogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AtomicHistogram").finish_non_exhaustive()
    }
}

fn bucket_of(us: u64) -> usize {
    let v = us.max(1);
    let exp = 63 - v.leading_zeros();
    let idx = if exp < SUB_BITS {
        v as usize
    } else {
        let mantissa = (v >> (exp - SUB_BITS)) as usize & (SUB - 1);
        ((exp - SUB_BITS + 1) as usize) * SUB + mantissa
    };
    idx.min(BUCKETS - 1)
}

/// The upper bound (µs) of a bucket.
fn bucket_high(idx: usize) -> u64 {
    if idx < SUB {
        return idx as u64;
    }
    let exp = (idx / SUB) as u32 + SUB_BITS - 1;
    let mantissa = (idx % SUB) as u64;
    ((SUB as u64 + mantissa + 1) << (exp - SUB_BITS)) - 1
}

impl AtomicHistogram {
    pub fn record_us(&self, us: u64) {
        self.buckets[bucket_of(us)].fetch_add(1, Relaxed);
    }

    /// Fold into an hdrhistogram (values are bucket upper bounds).
    /// The bucket counts now, to compute quantiles over an interval later ([`LatencySnapshot::quantile_since`]).
    pub fn snapshot(&self) -> LatencySnapshot {
        LatencySnapshot(self.buckets.iter().map(|b| b.load(Relaxed)).collect())
    }

    pub fn to_hdr(&self) -> Option<Histogram<u64>> {
        let mut h = Histogram::<u64>::new_with_bounds(1, 1 << 42, 3).ok()?;
        for (i, b) in self.buckets.iter().enumerate() {
            let n = b.load(Relaxed);
            if n > 0 {
                h.saturating_record_n(bucket_high(i).max(1), n);
            }
        }
        Some(h)
    }
}

/// A copy of a latency histogram's bucket counts at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LatencySnapshot(Box<[u64]>);

impl LatencySnapshot {
    /// The `q` quantile (ms, bucket upper bound) of the requests recorded after `earlier` (all of them when
    /// `None`); `None` when none were.
    pub fn quantile_since(&self, earlier: Option<&LatencySnapshot>, q: f64) -> Option<f64> {
        let delta: Vec<u64> = match earlier {
            Some(e) if e.0.len() == self.0.len() => {
                self.0.iter().zip(e.0.iter()).map(|(a, b)| a.saturating_sub(*b)).collect()
            }
            _ => self.0.to_vec(),
        };
        let total: u64 = delta.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = ((total as f64) * q.clamp(0.0, 1.0)).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, n) in delta.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return Some(bucket_high(i).max(1) as f64 / 1000.0);
            }
        }
        None
    }
}

/// Counters shared by routes and services.
#[derive(Debug, Default)]
pub struct RequestMetrics {
    /// By status class 1xx..5xx, then "no response" (connect/proxy failure).
    pub by_class: [AtomicU64; 6],
    pub in_flight: AtomicI64,
    /// Requests held because the service had no endpoint (scale from zero); part of `in_flight`.
    pub waiting: AtomicI64,
    pub latency: AtomicHistogram,
}

impl RequestMetrics {
    pub fn start(&self) {
        self.in_flight.fetch_add(1, Relaxed);
    }
    pub fn finish(&self, class: usize, latency_us: u64) {
        self.in_flight.fetch_sub(1, Relaxed);
        if let Some(c) = self.by_class.get(class) {
            c.fetch_add(1, Relaxed);
        }
        self.latency.record_us(latency_us);
    }
    pub fn total(&self) -> u64 {
        self.by_class.iter().map(|c| c.load(Relaxed)).sum()
    }
}

/// Status code to class index (0..=4 for 1xx..5xx; 5 for "no status").
pub fn status_class(status: u16) -> usize {
    match status {
        100..=599 => usize::from(status / 100 - 1),
        _ => 5,
    }
}

const CLASS_LABELS: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "error"];

/// What the autoscaler reads for one service.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ServiceStats {
    pub requests_total: u64,
    pub errors_total: u64,
    pub in_flight: i64,
    /// Requests held now because the service has no endpoint (demand for a scale from zero).
    pub waiting: u64,
    pub latency_p50_ms: f64,
    pub latency_p99_ms: f64,
}

impl RequestMetrics {
    pub fn stats(&self) -> ServiceStats {
        let (p50, p99) = self
            .latency
            .to_hdr()
            .filter(|h| !h.is_empty())
            .map(|h| (h.value_at_quantile(0.5) as f64 / 1000.0, h.value_at_quantile(0.99) as f64 / 1000.0))
            .unwrap_or((0.0, 0.0));
        ServiceStats {
            requests_total: self.total(),
            errors_total: self.by_class[4].load(Relaxed) + self.by_class[5].load(Relaxed),
            in_flight: self.in_flight.load(Relaxed).max(0),
            waiting: self.waiting.load(Relaxed).max(0) as u64,
            latency_p50_ms: p50,
            latency_p99_ms: p99,
        }
    }
}

/// Everything the proxy counts, keyed by `(namespace, name)`.
#[derive(Debug, Default)]
pub struct MetricsRegistry {
    pub services: dashmap_like::Map<RequestMetrics>,
    pub routes: dashmap_like::Map<RequestMetrics>,
    pub retries: AtomicU64,
    pub requests: AtomicU64,
    pub no_route: AtomicU64,
    pub rate_limited: AtomicU64,
    pub overloaded: AtomicU64,
    /// Downstream connections refused because `max_connections` were open.
    pub connections_rejected: AtomicU64,
    /// Downstream connections closed because a request header was not complete in time.
    pub header_timeouts: AtomicU64,
    /// Downstream connections open now.
    pub connections_open: AtomicU64,
}

/// A tiny get-or-insert map over a mutex: used only when tables are rebuilt and when metrics are read, never
/// on the request path (requests hold the `Arc` their table entry carries).
pub mod dashmap_like {
    use parking_lot::Mutex;
    use std::collections::BTreeMap;
    use std::sync::Arc;

    #[derive(Debug)]
    pub struct Map<T>(Mutex<BTreeMap<(String, String), Arc<T>>>);

    impl<T> Default for Map<T> {
        fn default() -> Self {
            Map(Mutex::new(BTreeMap::new()))
        }
    }

    impl<T: Default> Map<T> {
        pub fn get_or_insert(&self, ns: &str, name: &str) -> Arc<T> {
            let mut m = self.0.lock();
            if let Some(v) = m.get(&(ns.to_string(), name.to_string())) {
                return v.clone();
            }
            let v = Arc::new(T::default());
            m.insert((ns.to_string(), name.to_string()), v.clone());
            v
        }
        pub fn get(&self, ns: &str, name: &str) -> Option<Arc<T>> {
            self.0.lock().get(&(ns.to_string(), name.to_string())).cloned()
        }
        pub fn snapshot(&self) -> BTreeMap<(String, String), Arc<T>> {
            self.0.lock().clone()
        }
    }
}

/// Per-endpoint figures rendered with the rest.
pub struct EndpointLine<'a> {
    pub namespace: &'a str,
    pub service: &'a str,
    pub endpoint: &'a str,
    pub in_flight: u32,
    pub by_class: [u64; 6],
    pub ejected: bool,
}

impl MetricsRegistry {
    /// Prometheus text exposition.
    pub fn render(&self, endpoints: &[EndpointLine<'_>]) -> String {
        let mut out = String::with_capacity(4096);
        let _ = writeln!(out, "# TYPE berth_proxy_requests_total counter");
        let _ = writeln!(out, "berth_proxy_requests_total {}", self.requests.load(Relaxed));
        let _ = writeln!(out, "# TYPE berth_proxy_retries_total counter");
        let _ = writeln!(out, "berth_proxy_retries_total {}", self.retries.load(Relaxed));
        let _ = writeln!(out, "# TYPE berth_proxy_no_route_total counter");
        let _ = writeln!(out, "berth_proxy_no_route_total {}", self.no_route.load(Relaxed));
        let _ = writeln!(out, "# TYPE berth_proxy_rate_limited_total counter");
        let _ = writeln!(out, "berth_proxy_rate_limited_total {}", self.rate_limited.load(Relaxed));
        let _ = writeln!(out, "# TYPE berth_proxy_overloaded_total counter");
        let _ = writeln!(out, "berth_proxy_overloaded_total {}", self.overloaded.load(Relaxed));
        let _ = writeln!(out, "# TYPE berth_proxy_connections_rejected_total counter");
        let _ = writeln!(out, "berth_proxy_connections_rejected_total {}", self.connections_rejected.load(Relaxed));
        let _ = writeln!(out, "# TYPE berth_proxy_header_timeouts_total counter");
        let _ = writeln!(out, "berth_proxy_header_timeouts_total {}", self.header_timeouts.load(Relaxed));
        let _ = writeln!(out, "# TYPE berth_proxy_connections gauge");
        let _ = writeln!(out, "berth_proxy_connections {}", self.connections_open.load(Relaxed));
        render_family(&mut out, "service", &self.services.snapshot());
        render_family(&mut out, "route", &self.routes.snapshot());
        let _ = writeln!(out, "# TYPE berth_proxy_endpoint_responses_total counter");
        for e in endpoints {
            for (i, label) in CLASS_LABELS.iter().enumerate() {
                if e.by_class[i] > 0 {
                    let _ = writeln!(
                        out,
                        "berth_proxy_endpoint_responses_total{{namespace=\"{}\",service=\"{}\",endpoint=\"{}\",class=\"{label}\"}} {}",
                        e.namespace, e.service, e.endpoint, e.by_class[i]
                    );
                }
            }
        }
        let _ = writeln!(out, "# TYPE berth_proxy_endpoint_in_flight gauge");
        for e in endpoints {
            let _ = writeln!(
                out,
                "berth_proxy_endpoint_in_flight{{namespace=\"{}\",service=\"{}\",endpoint=\"{}\"}} {}",
                e.namespace, e.service, e.endpoint, e.in_flight
            );
        }
        let _ = writeln!(out, "# TYPE berth_proxy_endpoint_ejected gauge");
        for e in endpoints {
            let _ = writeln!(
                out,
                "berth_proxy_endpoint_ejected{{namespace=\"{}\",service=\"{}\",endpoint=\"{}\"}} {}",
                e.namespace,
                e.service,
                e.endpoint,
                u8::from(e.ejected)
            );
        }
        out
    }
}

const LATENCY_BOUNDS_MS: [f64; 12] = [0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 5000.0];

fn render_family(out: &mut String, kind: &str, map: &BTreeMap<(String, String), Arc<RequestMetrics>>) {
    let _ = writeln!(out, "# TYPE berth_proxy_{kind}_responses_total counter");
    for ((ns, name), m) in map {
        for (i, label) in CLASS_LABELS.iter().enumerate() {
            let _ = writeln!(
                out,
                "berth_proxy_{kind}_responses_total{{namespace=\"{ns}\",{kind}=\"{name}\",class=\"{label}\"}} {}",
                m.by_class[i].load(Relaxed)
            );
        }
    }
    let _ = writeln!(out, "# TYPE berth_proxy_{kind}_in_flight gauge");
    for ((ns, name), m) in map {
        let _ = writeln!(
            out,
            "berth_proxy_{kind}_in_flight{{namespace=\"{ns}\",{kind}=\"{name}\"}} {}",
            m.in_flight.load(Relaxed).max(0)
        );
    }
    let _ = writeln!(out, "# TYPE berth_proxy_{kind}_latency_seconds histogram");
    for ((ns, name), m) in map {
        let Some(h) = m.latency.to_hdr() else {
            continue;
        };
        let labels = format!("namespace=\"{ns}\",{kind}=\"{name}\"");
        for bound in LATENCY_BOUNDS_MS {
            let count = h.count_between(0, (bound * 1000.0) as u64);
            let _ = writeln!(
                out,
                "berth_proxy_{kind}_latency_seconds_bucket{{{labels},le=\"{}\"}} {count}",
                bound / 1000.0
            );
        }
        let _ = writeln!(out, "berth_proxy_{kind}_latency_seconds_bucket{{{labels},le=\"+Inf\"}} {}", h.len());
        let sum_s =
            h.iter_recorded().map(|v| v.value_iterated_to() as f64 * v.count_at_value() as f64).sum::<f64>() / 1e6;
        let _ = writeln!(out, "berth_proxy_{kind}_latency_seconds_sum{{{labels}}} {sum_s}");
        let _ = writeln!(out, "berth_proxy_{kind}_latency_seconds_count{{{labels}}} {}", h.len());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_bound_their_values() {
        for v in [1u64, 2, 15, 16, 17, 100, 1_000, 12_345, 1_000_000, 77_777_777] {
            let b = bucket_of(v);
            assert!(bucket_high(b) >= v, "{v} -> {b} high {}", bucket_high(b));
            assert!((bucket_high(b) as f64) <= v as f64 * 1.07 + 1.0, "{v} -> {}", bucket_high(b));
        }
    }

    #[test]
    fn quantiles_come_out_of_the_histogram() {
        let m = RequestMetrics::default();
        for i in 1..=1000u64 {
            m.start();
            m.finish(1, i * 10);
        }
        let s = m.stats();
        assert_eq!(s.requests_total, 1000);
        assert!((s.latency_p99_ms - 9.9).abs() < 0.7, "{}", s.latency_p99_ms);
        assert_eq!(s.in_flight, 0);
    }

    #[test]
    fn interval_quantiles_count_only_new_requests() {
        let m = RequestMetrics::default();
        for _ in 0..1000 {
            m.finish(1, 1_000);
        }
        let before = m.latency.snapshot();
        assert!((before.quantile_since(None, 0.99).unwrap() - 1.0).abs() < 0.07);
        assert_eq!(m.latency.snapshot().quantile_since(Some(&before), 0.99), None, "nothing new");
        for _ in 0..100 {
            m.finish(1, 200_000);
        }
        let p99 = m.latency.snapshot().quantile_since(Some(&before), 0.99).unwrap();
        assert!((p99 - 200.0).abs() < 14.0, "only the slow requests since the snapshot: {p99}");
    }
}
