//! The controller runners over a real store (memory and redb): a Deployment gets its pods, ready pods become
//! registry endpoints, a restart in the middle of a rollout finishes it without duplicates, and the latency
//! from a readiness write in the store to the registry is measured (p50/p99 over 1,000 flips).
//!
//! The test plays scheduler and agent itself: it binds new pods to a node and writes their Ready status.

use control_plane::controllers::{Controllers, ControllersConfig};
use control_plane::store::{Key, MemoryStore, Prefix, RedbStore, Store};
use discovery::{Registry, WatchEvent};
use model::clock::SystemClock;
use model::well_known::POD_TEMPLATE_HASH_LABEL;
use model::{Kind, Pod};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

const DEADLINE: Duration = Duration::from_secs(20);

fn normalized(kind: Kind, v: Value) -> Value {
    let mut o = model::decode(Some(kind), v).expect("valid").object;
    o["metadata"]["uid"] = json!(format!("uid-{}", o["metadata"]["name"].as_str().unwrap_or("")));
    o["metadata"]["generation"] = json!(1);
    o
}

async fn put(store: &dyn Store, kind: Kind, ns: &str, v: Value) {
    let v = normalized(kind, v);
    let name = v["metadata"]["name"].as_str().unwrap().to_string();
    store.create(&Key::new(kind.plural(), ns, name), serde_json::to_vec(&v).unwrap()).await.expect("create");
}

fn deployment_json(env: &str) -> Value {
    json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web"}},
                 "strategy": {"rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
                 "template": {"metadata": {"labels": {"app": "web"}},
                     "spec": {"containers": [{"name": "app", "command": ["berth", "echo"],
                              "env": [{"name": "V", "value": env}],
                              "ports": [{"name": "http", "containerPort": 8080}]}]}}}})
}

async fn seed_cluster(store: &dyn Store) {
    let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    put(
        store,
        Kind::Node,
        "",
        json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"},
        "status": {"heartbeatTime": now, "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}],
                   "conditions": [{"type": "Ready", "status": "True"}]}}),
    )
    .await;
    put(
        store,
        Kind::Service,
        "default",
        json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": "http"}]}}),
    )
    .await;
}

async fn pods(store: &dyn Store) -> Vec<(Key, u64, Pod)> {
    let (list, _) = store.list(&Prefix { kind: "pods".into(), namespace: None }, None).await.unwrap();
    list.into_iter().map(|v| (v.key.clone(), v.revision, serde_json::from_slice(&v.value).unwrap())).collect()
}

/// Play scheduler and agent: bind every pod without a node and mark it Ready on a distinct port.
async fn run_pods(store: &dyn Store) -> usize {
    let mut n = 0;
    for (key, rev, mut pod) in pods(store).await {
        if pod.spec.node_name.is_some() || pod.is_terminating() {
            continue;
        }
        pod.spec.node_name = Some("n1".into());
        pod.status = Some(
            serde_json::from_value(json!({"phase": "Running", "hostIP": "127.0.0.1",
                "conditions": [{"type": "Ready", "status": "True"}],
                "containerStatuses": [{"name": "app", "ready": true,
                    "ports": [{"name": "http", "containerPort": 8080, "hostPort": 40000 + n}]}]}))
            .unwrap(),
        );
        if store.update(&key, serde_json::to_vec(&pod).unwrap(), rev).await.is_ok() {
            n += 1;
        }
    }
    n
}

fn start(store: Arc<dyn Store>, registry: Arc<Registry>) -> (Controllers, oneshot::Sender<()>) {
    let (tx, rx) = oneshot::channel::<()>();
    let config = ControllersConfig {
        node_grace: Duration::from_secs(300),
        seed: Some(42),
        deployment: control_plane::controllers::deployment::DeploymentConfig { drain: Duration::from_millis(50) },
        ..ControllersConfig::default()
    };
    let c = Controllers::start_with(store, registry, Arc::new(SystemClock), config, async move {
        let _ = rx.await;
    });
    (c, tx)
}

/// Drive the fake agent until `done` holds for the store, with a deadline.
async fn until<F, Fut>(store: &dyn Store, what: &str, mut done: F)
where
    F: FnMut(Vec<(Key, u64, Pod)>) -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        run_pods(store).await;
        if done(pods(store).await).await {
            return;
        }
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn ready_endpoints(registry: &Registry) -> usize {
    registry.snapshot().all_endpoints().filter(|e| e.accepts_new()).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployment_to_endpoints_and_rollout_survives_restart() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let registry = Arc::new(Registry::new());
    seed_cluster(&*store).await;
    put(&*store, Kind::Deployment, "default", deployment_json("1")).await;
    let (controllers, stop) = start(store.clone(), registry.clone());

    until(&*store, "3 ready pods", |p| async move {
        p.iter().filter(|(_, _, p)| p.is_ready()).count() == 3 && p.len() == 3
    })
    .await;
    let t = Instant::now();
    while ready_endpoints(&registry) != 3 {
        assert!(t.elapsed() < DEADLINE, "registry never held 3 ready endpoints");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let ep = registry.snapshot().all_endpoints().next().cloned().unwrap();
    assert!(ep.ports[0].port >= 40000, "endpoint uses the reported hostPort");

    // Start a rollout, stop the controllers after the first surge pod exists, then start them again.
    let key = Key::new("deployments", "default", "web");
    let v = store.get(&key).await.unwrap().unwrap();
    let mut d: Value = serde_json::from_slice(&v.value).unwrap();
    d["spec"]["template"]["spec"]["containers"][0]["env"][0]["value"] = json!("2");
    d["metadata"]["generation"] = json!(2);
    store.update(&key, serde_json::to_vec(&d).unwrap(), v.revision).await.unwrap();
    let t = Instant::now();
    while pods(&*store).await.len() < 4 {
        assert!(t.elapsed() < DEADLINE, "no surge pod");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let _ = stop.send(());
    controllers.join().await;
    let (controllers, stop) = start(store.clone(), registry.clone());

    let mut min_ready = usize::MAX;
    let start_t = Instant::now();
    loop {
        run_pods(&*store).await;
        let p = pods(&*store).await;
        let hashes: std::collections::BTreeSet<String> =
            p.iter().filter_map(|(_, _, p)| p.metadata.labels.get(POD_TEMPLATE_HASH_LABEL).cloned()).collect();
        let active = p.iter().filter(|(_, _, p)| !p.is_terminating()).count();
        assert!(active <= 4, "more than replicas + maxSurge pods: {active}");
        min_ready = min_ready.min(ready_endpoints(&registry));
        if hashes.len() == 1 && p.len() == 3 && p.iter().all(|(_, _, p)| p.is_ready()) {
            break;
        }
        if start_t.elapsed() > DEADLINE {
            for (k, _, p) in &p {
                eprintln!(
                    "{} hash={:?} ready={} terminating={}",
                    k.name,
                    p.metadata.labels.get(POD_TEMPLATE_HASH_LABEL),
                    p.is_ready(),
                    p.is_terminating()
                );
            }
            let v = store.get(&key).await.unwrap().unwrap();
            eprintln!("{}", String::from_utf8_lossy(&v.value));
            panic!("rollout did not finish after restart");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(min_ready >= 3, "maxUnavailable=0: at least 3 ready endpoints at every sample (saw {min_ready})");
    let status = loop {
        let v = store.get(&key).await.unwrap().unwrap();
        let d: Value = serde_json::from_slice(&v.value).unwrap();
        if d["status"]["updatedReplicas"] == json!(3) && d["status"]["availableReplicas"] == json!(3) {
            break d;
        }
        assert!(start_t.elapsed() < DEADLINE, "status never caught up: {}", d["status"]);
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    assert_eq!(status["metadata"]["annotations"]["deployment.kubernetes.io/revision"], json!("2"));
    let _ = stop.send(());
    controllers.join().await;
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

/// Flip one pod's readiness `n` times in the store and time each flip until the registry shows it.
async fn measure(store: Arc<dyn Store>, label: &str, n: usize) -> (Duration, Duration) {
    let registry = Arc::new(Registry::new());
    seed_cluster(&*store).await;
    put(&*store, Kind::Deployment, "default", deployment_json("1")).await;
    let (controllers, stop) = start(store.clone(), registry.clone());
    until(&*store, "3 ready pods", |p| async move { p.iter().filter(|(_, _, p)| p.is_ready()).count() == 3 }).await;
    let (key, _, _) = pods(&*store).await.into_iter().next().unwrap();
    let t = Instant::now();
    while registry.snapshot().endpoint("default", &key.name).is_none() {
        assert!(t.elapsed() < DEADLINE);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut watch = registry.watch(discovery::Selector::default(), registry.revision());
    let mut samples = Vec::with_capacity(n);
    for i in 0..n {
        let want_ready = i % 2 == 1;
        let v = store.get(&key).await.unwrap().unwrap();
        let mut pod: Pod = serde_json::from_slice(&v.value).unwrap();
        pod.status.as_mut().unwrap().conditions[0].status =
            if want_ready { model::ConditionStatus::True } else { model::ConditionStatus::False };
        store.update(&key, serde_json::to_vec(&pod).unwrap(), v.revision).await.unwrap();
        let written = Instant::now();
        loop {
            let ev = tokio::time::timeout(Duration::from_secs(5), watch.next())
                .await
                .unwrap_or_else(|_| panic!("{label}: flip {i} never reached the registry"));
            match ev {
                WatchEvent::Put { object: discovery::Object::Endpoint(e), .. }
                    if e.name == key.name && e.ready == want_ready =>
                {
                    break
                }
                WatchEvent::Relist { .. } => {
                    watch.resync();
                    if registry.snapshot().endpoint("default", &key.name).is_some_and(|e| e.ready == want_ready) {
                        break;
                    }
                }
                _ => {}
            }
        }
        samples.push(written.elapsed());
    }
    samples.sort();
    let (p50, p99) = (percentile(&samples, 0.5), percentile(&samples, 0.99));
    println!(
        "propagation {label}: {n} readiness flips, store write acknowledged -> registry: p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
        p50.as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3,
        samples[n - 1].as_secs_f64() * 1e3
    );
    let _ = stop.send(());
    controllers.join().await;
    (p50, p99)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_reaches_the_registry_in_milliseconds() {
    let (_, p99_mem) = measure(Arc::new(MemoryStore::new()), "memory", 1000).await;
    let dir = tempfile::tempdir().unwrap();
    let redb = RedbStore::open(&dir.path().join("store.redb")).unwrap();
    let (_, p99_redb) = measure(Arc::new(redb), "redb", 1000).await;
    // Generous bound for a shared CI machine in a debug build; the target (p99 < 5 ms) is reported above.
    assert!(p99_mem < Duration::from_millis(100), "memory p99 {p99_mem:?}");
    assert!(p99_redb < Duration::from_millis(100), "redb p99 {p99_redb:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_of_a_silent_node_are_evicted_and_replaced() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let registry = Arc::new(Registry::new());
    // n1's heartbeat is already old; the test binds the first pods there anyway (as if it just died).
    seed_cluster(&*store).await;
    put(&*store, Kind::Deployment, "default", deployment_json("1")).await;
    let (tx, rx) = oneshot::channel::<()>();
    let config =
        ControllersConfig { node_grace: Duration::from_millis(300), seed: Some(1), ..ControllersConfig::default() };
    let controllers =
        Controllers::start_with(store.clone(), registry.clone(), Arc::new(SystemClock), config, async move {
            let _ = rx.await;
        });
    let first: std::collections::BTreeSet<String> = loop {
        let p = pods(&*store).await;
        if p.len() == 3 {
            break p.into_iter().map(|(k, _, _)| k.name).collect();
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    run_pods(&*store).await;
    let key = Key::new("nodes", "", "n1");
    let start = Instant::now();
    loop {
        let node: Value = serde_json::from_slice(&store.get(&key).await.unwrap().unwrap().value).unwrap();
        let p = pods(&*store).await;
        let replaced = p.len() == 3 && p.iter().all(|(k, _, _)| !first.contains(&k.name));
        if node["status"]["conditions"][0]["reason"] == json!("NodeStatusUnknown") && replaced {
            break;
        }
        assert!(start.elapsed() < DEADLINE, "pods of the lost node were not replaced: {node}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let _ = tx.send(());
    controllers.join().await;
}
