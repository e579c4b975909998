//! Registry benchmark: label-selector queries over 10k and 100k endpoints carrying 20 label keys (the
//! inverted index against a linear scan of the same snapshot), and the fan-out of one change to 1,000
//! watchers. Criterion measures each case; afterwards a plain timed loop measures the two headline numbers
//! so the table and the last line `RESULT registry query_100k_us=N fanout_1k_us=N` are always printed.
//!
//! Run: `cargo bench -p berth-benches --bench registry` (about a minute).

use criterion::{BenchmarkId, Criterion};
use discovery::{Change, Endpoint, Labels, Object, Registry, Selector, Watch};
use std::hint::black_box;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

const NAMESPACE: &str = "default";
const SUBSCRIBERS: usize = 1000;
/// Cardinalities of label keys k5..k19 (k0..k4 are named below).
const CARDINALITIES: [usize; 15] = [2, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47, 100];

/// 20 label keys. `app` has n/100 values, so `app=app-42` selects exactly 100 endpoints at every size.
fn labels_for(i: usize, n: usize) -> Labels {
    let mut l = Labels::new();
    l.insert("app".into(), format!("app-{}", i % (n / 100)));
    l.insert("zone".into(), format!("zone-{}", i % 4));
    l.insert("tier".into(), ["front", "middle", "back"][i % 3].to_string());
    l.insert("version".into(), format!("v{}", i % 10));
    l.insert("team".into(), format!("team-{}", i % 50));
    for (k, card) in CARDINALITIES.iter().enumerate() {
        l.insert(format!("k{}", k + 5), format!("v{}", (i * 7919 + k) % card));
    }
    l
}

fn endpoint(i: usize, n: usize) -> Object {
    Object::Endpoint(Arc::new(Endpoint {
        namespace: NAMESPACE.into(),
        name: format!("ep-{i:06}"),
        address: [127, 0, 0, 1].into(),
        ports: vec![],
        labels: labels_for(i, n),
        ready: true,
        serving: true,
        terminating: false,
        node: None,
        zone: None,
        weight: 100,
    }))
}

fn registry_of(n: usize) -> Registry {
    let r = Registry::new();
    for chunk in (0..n).collect::<Vec<_>>().chunks(1000) {
        r.apply(chunk.iter().map(|&i| Change::Put(endpoint(i, n))));
    }
    r
}

fn selector(s: &str) -> Selector {
    match Selector::parse(s) {
        Ok(s) => s,
        Err(e) => panic!("benchmark selector {s:?}: {e}"),
    }
}

/// The direct path the index is compared against: test every endpoint of the snapshot.
fn linear_scan(snapshot: &discovery::Snapshot, s: &Selector) -> Vec<Arc<Endpoint>> {
    snapshot.all_endpoints().filter(|e| s.matches(&e.labels)).cloned().collect()
}

const QUERIES: [(&str, &str); 4] = [
    ("eq_100", "app=app-42"),
    ("eq_and_neq", "app=app-42,zone!=zone-1"),
    ("in_200", "app in (app-7,app-42)"),
    ("eq_eq_broad", "tier=front,zone=zone-1"),
];

fn bench_queries(c: &mut Criterion, registries: &[(usize, Registry)]) {
    let mut group = c.benchmark_group("registry_query");
    for (n, r) in registries {
        let snapshot = r.snapshot();
        for (name, text) in QUERIES {
            let s = selector(text);
            group.bench_with_input(BenchmarkId::new(name, n), &s, |b, s| {
                b.iter(|| black_box(snapshot.endpoints(Some(NAMESPACE), s)))
            });
        }
    }
    group.finish();
    // Whole-namespace walks take milliseconds per call: fewer samples keep the run short.
    let mut group = c.benchmark_group("registry_scan");
    group.sample_size(10).warm_up_time(Duration::from_millis(200)).measurement_time(Duration::from_secs(1));
    for (n, r) in registries {
        let snapshot = r.snapshot();
        let s = selector(QUERIES[0].1);
        group.bench_with_input(BenchmarkId::new("eq_100_linear_scan", n), &s, |b, s| {
            b.iter(|| black_box(linear_scan(&snapshot, s)))
        });
        let s = selector("!missing,zone!=zone-1");
        group.bench_with_input(BenchmarkId::new("negative_only_index_scan", n), &s, |b, s| {
            b.iter(|| black_box(snapshot.endpoints(Some(NAMESPACE), s)))
        });
    }
    group.finish();
}

/// 1,000 watcher tasks on a 2-worker runtime; `round` puts one change and waits until all have received it.
struct FanOut {
    registry: Arc<Registry>,
    done: mpsc::Receiver<()>,
    runtime: tokio::runtime::Runtime,
    next: usize,
}

impl FanOut {
    fn new() -> Self {
        let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
            Ok(rt) => rt,
            Err(e) => panic!("tokio runtime: {e}"),
        };
        let registry = Arc::new(Registry::new());
        let received = Arc::new(AtomicUsize::new(0));
        let (tx, done) = mpsc::channel();
        for _ in 0..SUBSCRIBERS {
            let mut watch: Watch = registry.watch(Selector::everything(), 0);
            let received = received.clone();
            let tx = tx.clone();
            runtime.spawn(async move {
                loop {
                    black_box(watch.next().await);
                    // The subscriber that completes a round of 1,000 deliveries reports it.
                    if (received.fetch_add(1, Ordering::AcqRel) + 1).is_multiple_of(SUBSCRIBERS) && tx.send(()).is_err()
                    {
                        return;
                    }
                }
            });
        }
        let mut f = FanOut { registry, done, runtime, next: 0 };
        f.round(); // every task is now parked on its watch
        f
    }

    fn round(&mut self) -> Duration {
        self.next += 1;
        let object = endpoint(self.next, 100);
        let start = Instant::now();
        self.registry.put(object);
        if self.done.recv_timeout(Duration::from_secs(30)).is_err() {
            panic!("fan-out round {} did not complete within 30 s", self.next);
        }
        start.elapsed()
    }
}

fn bench_fanout(c: &mut Criterion, fanout: &mut FanOut) {
    let mut group = c.benchmark_group("registry_watch");
    group.bench_function(BenchmarkId::new("fanout_one_change", SUBSCRIBERS), |b| {
        b.iter_custom(|iters| (0..iters).map(|_| fanout.round()).sum())
    });
    group.finish();
}

fn median_us(mut samples: Vec<Duration>) -> f64 {
    samples.sort();
    samples[samples.len() / 2].as_secs_f64() * 1e6
}

/// Median time of one call of `f`, in µs: rounds of about 2 ms each, at most 31 rounds or about 250 ms in
/// all, so that slow cases (scans of 100k endpoints) stay bounded.
fn time_us(mut f: impl FnMut()) -> f64 {
    let probe = Instant::now();
    f();
    let one = probe.elapsed().max(Duration::from_nanos(50));
    let per_round = (Duration::from_millis(2).as_nanos() / one.as_nanos()).clamp(1, 100_000) as u32;
    let rounds = (Duration::from_millis(250).as_nanos() / (one.as_nanos() * per_round as u128)).clamp(3, 31);
    let samples = (0..rounds)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..per_round {
                f();
            }
            start.elapsed() / per_round
        })
        .collect();
    median_us(samples)
}

fn main() {
    let build_start = Instant::now();
    let registries: Vec<(usize, Registry)> = [10_000, 100_000].into_iter().map(|n| (n, registry_of(n))).collect();
    let build = build_start.elapsed();
    let mut fanout = FanOut::new();

    let mut c = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .configure_from_args();
    bench_queries(&mut c, &registries);
    bench_fanout(&mut c, &mut fanout);
    c.final_summary();

    println!();
    println!("registry benchmark: index vs linear scan, measured in this run (median)");
    println!("  built 110k endpoints with 20 label keys in {:.2} s (batches of 1,000)", build.as_secs_f64());
    println!(
        "  {:<34} {:>9} {:>8} {:>12} {:>12} {:>8}",
        "query", "endpoints", "matches", "index_us", "scan_us", "speedup"
    );
    let mut query_100k = 0.0;
    for (n, r) in &registries {
        let snapshot = r.snapshot();
        for (name, text) in QUERIES {
            let s = selector(text);
            let matches = snapshot.endpoints(Some(NAMESPACE), &s).len();
            assert_eq!(matches, linear_scan(&snapshot, &s).len(), "index and scan agree on {text}");
            let index = time_us(|| {
                black_box(snapshot.endpoints(Some(NAMESPACE), &s));
            });
            let scan = time_us(|| {
                black_box(linear_scan(&snapshot, &s));
            });
            if *n == 100_000 && name == "eq_100" {
                query_100k = index;
            }
            println!(
                "  {:<34} {:>9} {:>8} {:>12.2} {:>12.1} {:>7.0}x",
                format!("{name} [{text}]"),
                n,
                matches,
                index,
                scan,
                scan / index
            );
        }
    }
    if let Some((n, r)) = registries.last() {
        let (mut flip, template) = (false, endpoint(42, *n));
        let put = time_us(|| {
            flip = !flip;
            if let Object::Endpoint(e) = &template {
                let mut e = Endpoint::clone(e);
                e.ready = flip;
                black_box(r.put(Object::Endpoint(Arc::new(e))));
            }
        });
        println!("  put replacing one endpoint (20 labels, re-indexed) in a registry of {n}: {put:.1} us");
    }
    let fan_samples: Vec<Duration> = (0..51).map(|_| fanout.round()).collect();
    let fanout_1k = median_us(fan_samples);
    println!("  watch fan-out of one change to {SUBSCRIBERS} subscribers (2 worker threads): {fanout_1k:.1} us");
    println!(
        "  target: query returning 100 of 100k endpoints < 20 us: {}",
        if query_100k < 20.0 { "met" } else { "NOT met" }
    );
    drop(fanout.runtime);
    println!("RESULT registry query_100k_us={query_100k:.2} fanout_1k_us={fanout_1k:.1}");
}
