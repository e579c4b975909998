//! Create throughput and latency of the store backends, 1 and 8 concurrent writers, measured in one run
//! against the in-memory store as the no-IO baseline.
//!
//! ```text
//! cargo run --release -p control-plane --example store_bench -- [OBJECTS] [STORE_URL...]
//! cargo run --release -p control-plane --features etcd --example store_bench -- 4000 etcd://127.0.0.1:2379
//! ```
//! With no URL it measures `memory:` and a redb file in a temporary directory. Each run writes OBJECTS
//! creates (default 4000) of ~1 KiB JSON objects under a fresh kind. The last line is
//! `RESULT store <label> ...` per backend.

use control_plane::store::{open_store, Key, Store};
use std::sync::Arc;
use std::time::{Duration, Instant};

struct Run {
    objects: usize,
    elapsed: Duration,
    latencies: Vec<Duration>,
}

impl Run {
    fn per_sec(&self) -> f64 {
        self.objects as f64 / self.elapsed.as_secs_f64()
    }
    fn pct(&self, p: f64) -> Duration {
        let mut l = self.latencies.clone();
        l.sort();
        l.get(((l.len() as f64 * p) as usize).min(l.len().saturating_sub(1))).copied().unwrap_or_default()
    }
}

fn value(i: usize) -> Vec<u8> {
    let payload = "x".repeat(900);
    format!(r#"{{"metadata":{{"name":"o{i}","labels":{{"app":"bench"}}}},"spec":{{"payload":"{payload}"}}}}"#)
        .into_bytes()
}

async fn run(store: Arc<dyn Store>, kind: &str, objects: usize, writers: usize) -> Result<Run, String> {
    let per = objects / writers;
    let started = Instant::now();
    let tasks: Vec<_> = (0..writers)
        .map(|w| {
            let store = store.clone();
            let kind = kind.to_string();
            tokio::spawn(async move {
                let mut lat = Vec::with_capacity(per);
                for i in 0..per {
                    let t = Instant::now();
                    store
                        .create(&Key::new(&kind, "bench", format!("w{w}-{i}")), value(i))
                        .await
                        .map_err(|e| e.to_string())?;
                    lat.push(t.elapsed());
                }
                Ok::<_, String>(lat)
            })
        })
        .collect();
    let mut latencies = Vec::with_capacity(objects);
    for t in tasks {
        latencies.extend(t.await.map_err(|e| e.to_string())??);
    }
    Ok(Run { objects: per * writers, elapsed: started.elapsed(), latencies })
}

/// The floor for any durable write here: one 4 KiB write plus `fdatasync` to a file in `dir`.
fn fsync_baseline(dir: &std::path::Path, n: usize) -> Result<Run, String> {
    use std::io::Write;
    let mut f = std::fs::File::create(dir.join("fsync.probe")).map_err(|e| e.to_string())?;
    let block = vec![7u8; 4096];
    let started = Instant::now();
    let mut latencies = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        f.write_all(&block).map_err(|e| e.to_string())?;
        f.sync_data().map_err(|e| e.to_string())?;
        latencies.push(t.elapsed());
    }
    Ok(Run { objects: n, elapsed: started.elapsed(), latencies })
}

#[tokio::main]
async fn main() -> Result<(), String> {
    let mut args = std::env::args().skip(1);
    let objects: usize =
        args.next().map(|a| a.parse().map_err(|_| format!("bad OBJECTS {a:?}"))).transpose()?.unwrap_or(4000);
    let mut urls: Vec<String> = args.collect();
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    if urls.is_empty() {
        urls = vec!["memory:".into(), format!("redb:{}", dir.path().join("bench.redb").display())];
    }
    let mut results = Vec::new();
    let base = fsync_baseline(dir.path(), 500)?;
    println!(
        " fsync baseline: {:>8.0} syncs/s  p50={:?} p99={:?} (4 KiB write + fdatasync, same disk as redb)",
        base.per_sec(),
        base.pct(0.5),
        base.pct(0.99)
    );
    results.push(format!("RESULT store fsync per_s={:.0} p50_us={}", base.per_sec(), base.pct(0.5).as_micros()));
    for url in &urls {
        let store = open_store(url).await.map_err(|e| e.to_string())?;
        let label = url.split(':').next().unwrap_or("store").to_string();
        let mut line = format!("RESULT store {label}");
        for writers in [1, 8] {
            let kind = format!("bench{writers}-{}", std::process::id());
            let r = run(store.clone(), &kind, objects, writers).await?;
            println!(
                "{label:>6} writers={writers}: {:>8.0} creates/s  p50={:?} p99={:?} max={:?} ({} objects in {:?})",
                r.per_sec(),
                r.pct(0.50),
                r.pct(0.99),
                r.pct(1.0),
                r.objects,
                r.elapsed
            );
            line += &format!(
                " w{writers}_per_s={:.0} w{writers}_p50_us={} w{writers}_p99_us={}",
                r.per_sec(),
                r.pct(0.5).as_micros(),
                r.pct(0.99).as_micros()
            );
        }
        results.push(line);
    }
    for line in results {
        println!("{line}");
    }
    Ok(())
}
