//! Readiness propagation, end to end in one process (`make bench-propagation`): the store, the controllers
//! (endpoints → registry), the registry and the pingora proxy run here as in `berth up`.
//!
//! 1,000 readiness flips of 10 pods behind a Service and a Route. Each flip is the store write an agent does
//! when a pod's `Ready` condition changes; it is timed from the start of that write until the proxy's route
//! table reflects the registry revision that carries the endpoint's new readiness (`Proxy::wait_applied`),
//! i.e. until the proxy routes to the endpoint, or no longer does. Run on the embedded redb store (every write
//! fsync'd, as `berth up`) and on the memory store (the same path without the disk). The last line is the redb
//! figure: `RESULT propagation p50_ms=N p99_ms=N`.

use control_plane::controllers::{Controllers, ControllersConfig};
use control_plane::store::{Key, MemoryStore, RedbStore, Store};
use discovery::Registry;
use model::clock::SystemClock;
use model::{ConditionStatus, Kind, Pod};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};

const PODS: usize = 10;
const FLIPS: usize = 1_000;
const STEP_TIMEOUT: Duration = Duration::from_secs(10);

type BenchResult<T> = Result<T, Box<dyn std::error::Error>>;

fn object(kind: Kind, v: Value) -> BenchResult<Value> {
    let mut o = model::decode(Some(kind), v)?.object;
    o["metadata"]["uid"] = json!(format!("uid-{}", o["metadata"]["name"].as_str().unwrap_or("")));
    Ok(o)
}

async fn create(store: &dyn Store, kind: Kind, ns: &str, v: Value) -> BenchResult<()> {
    let v = object(kind, v)?;
    let name = v["metadata"]["name"].as_str().unwrap_or_default().to_string();
    store.create(&Key::new(kind.plural(), ns, name), serde_json::to_vec(&v)?).await?;
    Ok(())
}

/// A node, a Service, a Route and `PODS` bound, running, ready pods (as the scheduler and agents leave them).
async fn seed(store: &dyn Store) -> BenchResult<()> {
    let now = humantime::format_rfc3339_micros(std::time::SystemTime::now()).to_string();
    create(
        store,
        Kind::Node,
        "",
        json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"},
            "status": {"heartbeatTime": now, "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}],
                       "conditions": [{"type": "Ready", "status": "True"}]}}),
    )
    .await?;
    create(
        store,
        Kind::Service,
        "default",
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "default"},
            "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}}),
    )
    .await?;
    create(
        store,
        Kind::Route,
        "default",
        json!({"apiVersion": "berth.dev/v1", "kind": "Route", "metadata": {"name": "web", "namespace": "default"},
            "spec": {"hosts": ["web.localhost"],
                     "rules": [{"path": {"prefix": "/"}, "backend": {"service": "web", "port": "http"}}]}}),
    )
    .await?;
    for i in 0..PODS {
        create(
            store,
            Kind::Pod,
            "default",
            json!({"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": format!("web-{i}"), "namespace": "default", "labels": {"app": "web"}},
                "spec": {"nodeName": "n1", "containers": [{"name": "app", "command": ["berth", "echo"],
                         "ports": [{"name": "http", "containerPort": 8080}]}]},
                "status": {"phase": "Running", "hostIP": "127.0.0.1",
                           "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": now}],
                           "containerStatuses": [{"name": "app", "ready": true, "restartCount": 0,
                               "ports": [{"containerPort": 8080, "hostPort": 31000 + i, "protocol": "TCP"}]}]}}),
        )
        .await?;
    }
    Ok(())
}

/// Wait until the registry shows pod `name`'s endpoint with readiness `ready`; returns that revision.
async fn registry_shows(registry: &Registry, name: &str, ready: bool) -> BenchResult<u64> {
    let deadline = Instant::now() + STEP_TIMEOUT;
    loop {
        let snap = registry.snapshot();
        if snap.endpoint("default", name).is_some_and(|e| e.ready == ready) {
            return Ok(snap.revision());
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if tokio::time::timeout(left, registry.changed_since(snap.revision())).await.is_err() {
            return Err(format!("endpoint {name} never became ready={ready} in the registry").into());
        }
    }
}

struct Figures {
    p50: Duration,
    p99: Duration,
    max: Duration,
    /// From the write's acknowledgement instead of its start (what the store itself costs is the difference).
    ack_p50: Duration,
    ack_p99: Duration,
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

async fn measure(store: Arc<dyn Store>) -> BenchResult<Figures> {
    seed(&*store).await?;
    let registry = Arc::new(Registry::new());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    // The heartbeat never renews here: a long grace keeps the node controller from evicting the pods.
    let config = ControllersConfig { node_grace: Duration::from_secs(3600), ..ControllersConfig::default() };
    let controllers = Controllers::start_with(store.clone(), registry.clone(), Arc::new(SystemClock), config, async {
        let _ = stop_rx.await;
    });
    let proxy_config = proxy::ProxyConfig { http_listen: vec![([127, 0, 0, 1], 0).into()], ..Default::default() };
    let proxy = proxy::Proxy::start(registry.clone(), proxy_config)?;
    for i in 0..PODS {
        let r = registry_shows(&registry, &format!("web-{i}"), true).await?;
        if !proxy.wait_applied(r, STEP_TIMEOUT).await {
            return Err("the proxy never applied the initial endpoints".into());
        }
    }

    let mut from_write = Vec::with_capacity(FLIPS);
    let mut from_ack = Vec::with_capacity(FLIPS);
    for flip in 0..FLIPS {
        let name = format!("web-{}", flip % PODS);
        // Pods start ready: the first round takes each out, the next puts it back, and so on.
        let ready = (flip / PODS) % 2 == 1;
        let key = Key::new("pods", "default", name.clone());
        let current = store.get(&key).await?.ok_or_else(|| format!("pod {name} vanished"))?;
        let mut pod: Pod = serde_json::from_slice(&current.value)?;
        let status = pod.status.as_mut().ok_or("seeded pods have a status")?;
        let cond = status.conditions.iter_mut().find(|c| c.type_ == "Ready").ok_or("seeded pods have Ready")?;
        cond.status = if ready { ConditionStatus::True } else { ConditionStatus::False };
        let bytes = serde_json::to_vec(&pod)?;

        let start = Instant::now();
        store.update(&key, bytes, current.revision).await?;
        let acked = Instant::now();
        let revision = registry_shows(&registry, &name, ready).await?;
        if !proxy.wait_applied(revision, STEP_TIMEOUT).await {
            return Err(format!("flip {flip}: the proxy never applied registry revision {revision}").into());
        }
        let done = Instant::now();
        from_write.push(done - start);
        from_ack.push(done - acked);
    }
    let _ = stop_tx.send(());
    controllers.join().await;
    proxy.stop();
    from_write.sort();
    from_ack.sort();
    Ok(Figures {
        p50: percentile(&from_write, 0.5),
        p99: percentile(&from_write, 0.99),
        max: from_write[FLIPS - 1],
        ack_p50: percentile(&from_ack, 0.5),
        ack_p99: percentile(&from_ack, 0.99),
    })
}

fn ms(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64() * 1e3)
}

fn main() -> BenchResult<()> {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let dir = tempfile::tempdir()?;
    let redb: Arc<dyn Store> = Arc::new(RedbStore::open(&dir.path().join("store.redb"))?);
    let memory: Arc<dyn Store> = Arc::new(MemoryStore::new());
    println!("{FLIPS} readiness flips of {PODS} pods: pod status write in the store -> proxy route table (ms)");
    println!("{:<8} {:>9} {:>9} {:>9} {:>13} {:>13}", "store", "p50", "p99", "max", "ack->p50", "ack->p99");
    let mut result = None;
    for (label, store) in [("memory", memory), ("redb", redb)] {
        let f = rt.block_on(measure(store))?;
        println!(
            "{label:<8} {:>9} {:>9} {:>9} {:>13} {:>13}",
            ms(f.p50),
            ms(f.p99),
            ms(f.max),
            ms(f.ack_p50),
            ms(f.ack_p99)
        );
        result = Some(f);
    }
    let f = result.ok_or("no run")?;
    println!("target: p99 < 10 ms (Kubernetes endpoint propagation is typically 1 s or more)");
    println!("RESULT propagation p50_ms={} p99_ms={}", ms(f.p50), ms(f.p99));
    Ok(())
}
