//! The scheduler service over real stores (memory and redb): pods get bound, concurrent schedulers never
//! overcommit a node, an unschedulable pod carries its reason until a new node resolves it, cordoned nodes
//! get nothing. Every wait is for a condition with a generous deadline.

use control_plane::scheduler::store::{allocation_key, pod_key, Allocation, POD_SCHEDULED};
use control_plane::scheduler::{PodKey, Scheduler, SchedulingPolicy};
use control_plane::store::{Key, MemoryStore, Prefix, RedbStore, Store};
use model::{self, ConditionStatus};
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use test_support::wait_until;
use tokio::sync::oneshot;

const DEADLINE: Duration = Duration::from_secs(30);

fn node_json(name: &str, cpu: &str, memory: &str, zone: &str, cordoned: bool) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": {"zone": zone, "kubernetes.io/hostname": name}},
        "spec": {"unschedulable": cordoned},
        "status": {
            "capacity": {"cpu": cpu, "memory": memory, "pods": "110"},
            "conditions": [{"type": "Ready", "status": "True"}]
        }
    }))
    .expect("json")
}

fn pod_json(name: &str, cpu: &str, memory: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}"), "labels": {"app": "web"}},
        "spec": {"containers": [{"name": "c", "image": "x",
            "resources": {"requests": {"cpu": cpu, "memory": memory}}}]}
    }))
    .expect("json")
}

async fn add_node(store: &Arc<dyn Store>, name: &str, cpu: &str, memory: &str, cordoned: bool) {
    store.create(&Key::new("nodes", "", name), node_json(name, cpu, memory, "a", cordoned)).await.expect("create node");
}

async fn add_pod(store: &Arc<dyn Store>, name: &str, cpu: &str, memory: &str) {
    store.create(&Key::new("pods", "default", name), pod_json(name, cpu, memory)).await.expect("create pod");
}

async fn pods(store: &Arc<dyn Store>) -> Vec<model::Pod> {
    let (list, _) = store.list(&Prefix { kind: "pods".into(), namespace: None }, None).await.expect("list pods");
    list.iter().map(|v| serde_json::from_slice(&v.value).expect("stored pod")).collect()
}

async fn nodes(store: &Arc<dyn Store>) -> BTreeMap<String, model::Node> {
    let (list, _) = store.list(&Prefix { kind: "nodes".into(), namespace: None }, None).await.expect("list nodes");
    list.iter()
        .map(|v| {
            let n: model::Node = serde_json::from_slice(&v.value).expect("stored node");
            (n.metadata.name.clone(), n)
        })
        .collect()
}

fn scheduled_condition(p: &model::Pod) -> Option<&model::Condition> {
    p.status.as_ref().and_then(|s| model::find_condition(&s.conditions, POD_SCHEDULED))
}

fn unschedulable_message(p: &model::Pod) -> Option<String> {
    scheduled_condition(p).filter(|c| c.status == ConditionStatus::False).and_then(|c| c.message.clone())
}

/// A running scheduler service; stops when dropped or `stop`ped.
struct Running {
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    fn start(store: &Arc<dyn Store>, seed: u64) -> Self {
        let (tx, rx) = oneshot::channel::<()>();
        let scheduler = Scheduler::new(store.clone(), SchedulingPolicy::default()).with_seed(seed);
        let task = tokio::spawn(async move {
            scheduler
                .serve(async {
                    let _ = rx.await;
                })
                .await
                .expect("scheduler service");
        });
        Self { stop: Some(tx), task }
    }

    async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        (&mut self.task).await.expect("scheduler task");
    }
}

fn memory() -> Arc<dyn Store> {
    Arc::new(MemoryStore::new())
}

fn redb() -> (Arc<dyn Store>, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = RedbStore::open(&dir.path().join("berth.redb")).expect("open redb");
    (Arc::new(store), dir)
}

/// Requested cpu and pod count per node, from the stored pods.
fn usage(pods: &[model::Pod]) -> BTreeMap<String, (u64, u64)> {
    let mut out: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for p in pods {
        if let Some(n) = &p.spec.node_name {
            let e = out.entry(n.clone()).or_default();
            e.0 += p.spec.total_requests().cpu_millis;
            e.1 += 1;
        }
    }
    out
}

async fn pods_get_bound(store: Arc<dyn Store>) {
    for n in ["n1", "n2", "n3"] {
        add_node(&store, n, "2", "4Gi", false).await;
    }
    let running = Running::start(&store, 1);
    for i in 0..9 {
        add_pod(&store, &format!("web-{i}"), "100m", "64Mi").await;
    }
    wait_until("all pods bound", DEADLINE, async || pods(&store).await.iter().all(|p| p.spec.node_name.is_some()))
        .await;
    for p in pods(&store).await {
        let c = scheduled_condition(&p).expect("PodScheduled");
        assert_eq!(c.status, ConditionStatus::True, "{}", p.metadata.name);
    }
    // LeastAllocated spreads equal pods evenly.
    let u = usage(&pods(&store).await);
    assert_eq!(u.values().map(|v| v.1).collect::<Vec<_>>(), vec![3, 3, 3]);
    // Each node's allocation record holds exactly its bound pods.
    for n in ["n1", "n2", "n3"] {
        let v = store.get(&allocation_key(n)).await.expect("get").expect("record");
        let record: Allocation = serde_json::from_slice(&v.value).expect("record json");
        assert_eq!(record.claims.len(), 3, "{n}");
    }
    running.stop().await;
}

#[tokio::test]
async fn pods_get_bound_memory() {
    pods_get_bound(memory()).await;
}

#[tokio::test]
async fn pods_get_bound_redb() {
    let (store, _dir) = redb();
    pods_get_bound(store).await;
}

/// 4 nodes with 1 cpu each, 60 pods of 100m each: exactly 40 fit. Two services race for them (and two more
/// direct rounds per burst, to widen the window); no node may ever hold more than 10.
async fn two_schedulers_never_overcommit(store: Arc<dyn Store>) {
    for n in ["n1", "n2", "n3", "n4"] {
        add_node(&store, n, "1", "64Gi", false).await;
    }
    let a = Running::start(&store, 7);
    let b = Running::start(&store, 8);
    let extra1 = Scheduler::new(store.clone(), SchedulingPolicy::default()).with_seed(100);
    let extra2 = Scheduler::new(store.clone(), SchedulingPolicy::default()).with_seed(200);
    for burst in 0..3 {
        for i in 0..20 {
            add_pod(&store, &format!("p-{burst}-{i}"), "100m", "1Mi").await;
        }
        let (r1, r2) = tokio::join!(extra1.round(), extra2.round());
        r1.expect("round");
        r2.expect("round");
    }
    wait_until("40 bound and 20 marked unschedulable", DEADLINE, async || {
        let all = pods(&store).await;
        let bound = all.iter().filter(|p| p.spec.node_name.is_some()).count();
        let marked = all.iter().filter(|p| p.spec.node_name.is_none() && unschedulable_message(p).is_some()).count();
        eprintln!("bound {bound}, marked {marked}, usage {:?}", usage(&all));
        bound == 40 && marked == 20
    })
    .await;
    let all = pods(&store).await;
    for (node, (cpu, count)) in usage(&all) {
        assert!(cpu <= 1000, "{node} overcommitted: {cpu}m");
        assert!(count <= 10, "{node} holds {count} pods");
    }
    let msg = all.iter().find_map(unschedulable_message).expect("a message");
    assert_eq!(msg, "0/4 nodes available: 4 insufficient cpu");
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_schedulers_never_overcommit_memory() {
    two_schedulers_never_overcommit(memory()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_schedulers_never_overcommit_redb() {
    let (store, _dir) = redb();
    two_schedulers_never_overcommit(store).await;
}

async fn read_big(store: &Arc<dyn Store>) -> (model::Pod, u64) {
    let key = PodKey { namespace: "default".into(), name: "big".into() };
    let v = store.get(&pod_key(&key)).await.expect("get").expect("pod");
    (serde_json::from_slice::<model::Pod>(&v.value).expect("pod json"), v.revision)
}

#[tokio::test]
async fn unschedulable_reason_is_written_then_resolved_by_a_new_node() {
    let store = memory();
    add_node(&store, "small", "4", "1Gi", false).await;
    add_node(&store, "cordoned", "4", "64Gi", true).await;
    let running = Running::start(&store, 3);
    add_pod(&store, "big", "100m", "8Gi").await;
    wait_until("unschedulable reason", DEADLINE, async || unschedulable_message(&read_big(&store).await.0).is_some())
        .await;
    let (pod, revision) = read_big(&store).await;
    let c = scheduled_condition(&pod).expect("condition");
    assert_eq!(c.reason.as_deref(), Some("Unschedulable"));
    assert_eq!(c.message.as_deref(), Some("0/2 nodes available: 1 node(s) were unschedulable, 1 insufficient memory"));
    // The condition is written once: an unrelated change wakes the service, which must not rewrite it.
    add_pod(&store, "tiny", "10m", "1Mi").await;
    wait_until("tiny bound", DEADLINE, async || {
        pods(&store).await.iter().any(|p| p.metadata.name == "tiny" && p.spec.node_name.is_some())
    })
    .await;
    assert_eq!(read_big(&store).await.1, revision, "condition rewritten");

    add_node(&store, "large", "4", "16Gi", false).await;
    wait_until("big bound to the new node", DEADLINE, async || {
        read_big(&store).await.0.spec.node_name.as_deref() == Some("large")
    })
    .await;
    let (pod, _) = read_big(&store).await;
    assert_eq!(scheduled_condition(&pod).map(|c| c.status), Some(ConditionStatus::True));
    running.stop().await;
}

#[tokio::test]
async fn cordoned_node_gets_no_pods() {
    let (store, _dir) = redb();
    add_node(&store, "open", "8", "8Gi", false).await;
    add_node(&store, "closed", "8", "8Gi", true).await;
    let running = Running::start(&store, 5);
    for i in 0..8 {
        add_pod(&store, &format!("w-{i}"), "100m", "1Mi").await;
    }
    wait_until("all bound", DEADLINE, async || pods(&store).await.iter().all(|p| p.spec.node_name.is_some())).await;
    assert!(pods(&store).await.iter().all(|p| p.spec.node_name.as_deref() == Some("open")));
    assert!(nodes(&store).await["closed"].spec.unschedulable);
    running.stop().await;
}

/// A claim left by a deleted pod is collected when the node looks full, so its capacity is not lost.
#[tokio::test]
async fn dead_claims_are_collected() {
    let store = memory();
    add_node(&store, "n1", "1", "1Gi", false).await;
    let scheduler = Scheduler::new(store.clone(), SchedulingPolicy::default());
    for i in 0..10 {
        add_pod(&store, &format!("a-{i}"), "100m", "1Mi").await;
    }
    let r = scheduler.round().await.expect("round");
    assert_eq!(r.run.bound.len(), 10);
    // Delete every pod behind the scheduler's back: the record still claims the whole node.
    for i in 0..10 {
        store.delete(&Key::new("pods", "default", format!("a-{i}")), None).await.expect("delete");
    }
    for i in 0..10 {
        add_pod(&store, &format!("b-{i}"), "100m", "1Mi").await;
    }
    let r = scheduler.round().await.expect("round");
    assert_eq!(r.run.bound.len(), 10, "{r:?}");
    let v = store.get(&allocation_key("n1")).await.expect("get").expect("record");
    let record: Allocation = serde_json::from_slice(&v.value).expect("record");
    assert!(record.claims.values().all(|c| c.pod.starts_with("default/b-")));
    assert_eq!(record.claims.len(), 10);
}
