//! Services' virtual addresses (`spec.clusterIP`) as API clients see them, over real HTTP on loopback: allocated
//! in range, distinct, honoured when asked for, immutable, freed on delete, never handed out twice by
//! concurrent creates on several replicas of one store (memory, etcd), and the same after a restart (redb).

use control_plane::api::cluster_ip::CLUSTER_IPS_KIND;
use control_plane::api::{self, ApiState, ServiceCidr};
use control_plane::store::{MemoryStore, Prefix, RedbStore, Store};
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::sync::Arc;
use tokio::sync::oneshot;

struct Api {
    base: String,
    http: reqwest::Client,
    stop: oneshot::Sender<()>,
    serving: tokio::task::JoinHandle<std::io::Result<()>>,
}

async fn start(store: Arc<dyn Store>, cidr: &str) -> Api {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let state = ApiState::new(store, None, None).with_service_cidr(cidr.parse().unwrap());
    let (stop, stopped) = oneshot::channel::<()>();
    let serving = tokio::spawn(api::serve(listener, state, async move {
        let _ = stopped.await;
    }));
    Api { base, http: test_support::http().build().unwrap(), stop, serving }
}

fn service(name: &str, cluster_ip: Option<&str>) -> Value {
    let mut s = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "default"},
                       "spec": {"selector": {"app": name}, "ports": [{"port": 80}]}});
    if let Some(ip) = cluster_ip {
        s["spec"]["clusterIP"] = json!(ip);
    }
    s
}

impl Api {
    async fn create(&self, body: &Value) -> (StatusCode, Value) {
        let r = self.http.post(format!("{}/api/v1/namespaces/default/services", self.base)).json(body).send();
        let r = r.await.unwrap();
        (r.status(), r.json().await.unwrap())
    }
    async fn apply(&self, body: &Value) -> (StatusCode, Value) {
        let r = self.http.post(format!("{}/api/v1/apply", self.base)).json(body).send().await.unwrap();
        (r.status(), r.json().await.unwrap())
    }
    async fn put(&self, body: &Value) -> (StatusCode, Value) {
        let name = body["metadata"]["name"].as_str().unwrap();
        let url = format!("{}/api/v1/namespaces/default/services/{name}", self.base);
        let r = self.http.put(url).json(body).send().await.unwrap();
        (r.status(), r.json().await.unwrap())
    }
    async fn delete(&self, name: &str) -> StatusCode {
        let url = format!("{}/api/v1/namespaces/default/services/{name}", self.base);
        self.http.delete(url).send().await.unwrap().status()
    }
    async fn stop(self) {
        drop(self.http);
        let _ = self.stop.send(());
        self.serving.await.unwrap().unwrap();
    }
}

fn ip_of(object: &Value) -> Ipv4Addr {
    object.pointer("/spec/clusterIP").and_then(Value::as_str).unwrap_or_default().parse().expect("an IPv4 clusterIP")
}

async fn records(store: &dyn Store) -> Vec<String> {
    let prefix = Prefix { kind: CLUSTER_IPS_KIND.into(), namespace: Some(String::new()) };
    store.list(&prefix, None).await.unwrap().0.into_iter().map(|v| v.key.name).collect()
}

#[tokio::test]
async fn services_get_distinct_addresses_in_range_and_keep_them() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let api = start(store.clone(), "127.64.0.0/12").await;
    let range: ServiceCidr = "127.64.0.0/12".parse().unwrap();

    let (code, web) = api.create(&service("web", None)).await;
    assert_eq!(code, StatusCode::CREATED, "{web}");
    let (code, db) = api.apply(&service("db", None)).await;
    assert_eq!((code, db["result"].as_str()), (StatusCode::OK, Some("created")), "{db}");
    let (web_ip, db_ip) = (ip_of(&web), ip_of(&db["object"]));
    assert!(range.contains(web_ip) && range.contains(db_ip), "{web_ip} {db_ip}");
    assert_ne!(web_ip, db_ip);
    let mut held = records(store.as_ref()).await;
    held.sort();
    let mut expected = vec![web_ip.to_string(), db_ip.to_string()];
    expected.sort();
    assert_eq!(held, expected);

    // Headless stays headless and holds no address.
    let (code, headless) = api.create(&service("peers", Some("None"))).await;
    assert_eq!((code, headless["spec"]["clusterIP"].as_str()), (StatusCode::CREATED, Some("None")));
    assert_eq!(records(store.as_ref()).await.len(), 2);

    // Re-applying the manifest (which has no clusterIP) is unchanged and keeps the address; so does a PUT.
    let (_, again) = api.apply(&service("web", None)).await;
    assert_eq!(again["result"], "unchanged", "{again}");
    assert_eq!(ip_of(&again["object"]), web_ip);
    let (_, again) = api.apply(&service("web", Some(&web_ip.to_string()))).await;
    assert_eq!(again["result"], "unchanged", "{again}");
    let mut changed = service("web", None);
    changed["spec"]["ports"][0]["port"] = json!(81);
    let (_, configured) = api.apply(&changed).await;
    assert_eq!((configured["result"].as_str(), ip_of(&configured["object"])), (Some("configured"), web_ip));
    let (code, put) = api.put(&service("web", None)).await;
    assert_eq!((code, ip_of(&put)), (StatusCode::OK, web_ip), "{put}");

    // Changing it is refused, naming the field, by apply and by PUT; so is making it headless.
    let other = Ipv4Addr::from(u32::from(web_ip) ^ 1).to_string();
    for body in [service("web", Some(&other)), service("web", Some("None"))] {
        let (code, status) = api.apply(&body).await;
        assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{status}");
        assert!(status["message"].as_str().unwrap().starts_with("spec.clusterIP: field is immutable"), "{status}");
        let (code, status) = api.put(&body).await;
        assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{status}");
    }
    api.stop().await;
}

#[tokio::test]
async fn an_address_asked_for_is_honoured_when_in_range_and_free() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let api = start(store.clone(), "127.64.0.0/12").await;
    let (code, a) = api.create(&service("a", Some("127.64.1.2"))).await;
    assert_eq!((code, ip_of(&a)), (StatusCode::CREATED, "127.64.1.2".parse().unwrap()), "{a}");

    for (ip, error) in [
        ("127.64.1.2", "spec.clusterIP: 127.64.1.2 is already allocated to another Service"),
        ("10.0.0.10", "spec.clusterIP: 10.0.0.10 is not in the service range 127.64.0.0/12 (--service-cidr)"),
        ("127.64.0.0", "not in the service range"),
        ("::1", "not in the service range"),
    ] {
        let (code, status) = api.create(&service("b", Some(ip))).await;
        assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{ip}: {status}");
        assert!(status["message"].as_str().unwrap().contains(error), "{ip}: {status}");
        let (code, _) = api.apply(&service("b", Some(ip))).await;
        assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{ip}");
    }
    // A malformed one is still the model's format error.
    let (code, status) = api.create(&service("b", Some("not-an-ip"))).await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "{status}");
    assert!(status["message"].as_str().unwrap().contains("spec.clusterIP"), "{status}");
    // Nothing was left claimed by the refusals, and a failed create (the name exists) releases its claim.
    assert_eq!(records(store.as_ref()).await, vec!["127.64.1.2".to_string()]);
    let (code, _) = api.create(&service("a", Some("127.64.1.3"))).await;
    assert_eq!(code, StatusCode::CONFLICT);
    assert_eq!(records(store.as_ref()).await, vec!["127.64.1.2".to_string()]);
    api.stop().await;
}

#[tokio::test]
async fn a_full_range_is_a_clear_error_and_a_delete_frees_an_address() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let api = start(store.clone(), "127.200.0.0/28").await;
    let mut ips = HashSet::new();
    for i in 0..14 {
        let (code, s) = api.create(&service(&format!("s{i}"), None)).await;
        assert_eq!(code, StatusCode::CREATED, "{s}");
        assert!(ips.insert(ip_of(&s)));
    }
    let (code, status) = api.create(&service("one-too-many", None)).await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{status}");
    assert_eq!(
        status["message"],
        "spec.clusterIP: no free address left in the service range 127.200.0.0/28 (--service-cidr)"
    );
    let (_, s3) = api.apply(&service("s3", None)).await;
    let freed = ip_of(&s3["object"]);
    assert_eq!(api.delete("s3").await, StatusCode::OK);
    assert_eq!(records(store.as_ref()).await.len(), 13);
    let (code, s) = api.create(&service("newcomer", None)).await;
    assert_eq!((code, ip_of(&s)), (StatusCode::CREATED, freed), "{s}");
    api.stop().await;
}

/// `replicas` API servers on `store`; `tasks` clients create `per_task` Services each, spread over them.
async fn concurrent_creates_never_collide(stores: Vec<Arc<dyn Store>>, tasks: usize, per_task: usize) {
    let mut apis = Vec::new();
    for store in &stores {
        apis.push(Arc::new(start(store.clone(), "127.64.0.0/24").await));
    }
    let mut handles = Vec::new();
    for t in 0..tasks {
        let api = apis[t % apis.len()].clone();
        handles.push(tokio::spawn(async move {
            let mut got = Vec::new();
            for i in 0..per_task {
                // Every task also races the others on the same names, through apply.
                let (code, s) = api.apply(&service(&format!("svc-{}", (t + i) % (tasks * per_task / 2)), None)).await;
                assert_eq!(code, StatusCode::OK, "{s}");
                got.push((s["object"]["metadata"]["name"].as_str().unwrap().to_string(), ip_of(&s["object"])));
                let (code, s) = api.create(&service(&format!("own-{t}-{i}"), None)).await;
                assert_eq!(code, StatusCode::CREATED, "{s}");
                got.push((format!("own-{t}-{i}"), ip_of(&s)));
            }
            got
        }));
    }
    let mut by_name = std::collections::HashMap::new();
    for h in handles {
        for (name, ip) in h.await.unwrap() {
            let seen = by_name.entry(name.clone()).or_insert(ip);
            assert_eq!(*seen, ip, "{name} answered with two addresses");
        }
    }
    let ips: HashSet<Ipv4Addr> = by_name.values().copied().collect();
    assert_eq!(ips.len(), by_name.len(), "an address was handed out twice: {by_name:?}");
    let held: HashSet<String> = records(stores[0].as_ref()).await.into_iter().collect();
    assert_eq!(held, ips.iter().map(Ipv4Addr::to_string).collect(), "one record per Service, no leftovers");
    for api in apis {
        Arc::into_inner(api).expect("tasks are done").stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_creates_on_two_replicas_of_a_memory_store_never_collide() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    concurrent_creates_never_collide(vec![store.clone(), store], 8, 10).await;
}

#[cfg(feature = "etcd")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_creates_on_two_replicas_of_one_etcd_never_collide() {
    if !test_support::require_tool("etcd", "clusterIP allocation against etcd") {
        return;
    }
    let (etcd, first) = crate::etcd_process::start_etcd().await;
    let second = control_plane::store::etcd::EtcdStore::connect(std::slice::from_ref(&etcd.endpoint)).await.unwrap();
    concurrent_creates_never_collide(vec![Arc::new(first), Arc::new(second)], 8, 10).await;
}

#[tokio::test]
async fn an_address_survives_a_restart_on_redb() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    let store: Arc<dyn Store> = Arc::new(RedbStore::open(&path).unwrap());
    let api = start(store.clone(), "127.64.0.0/12").await;
    let (_, created) = api.apply(&service("web", None)).await;
    let ip = ip_of(&created["object"]);
    api.stop().await;
    drop(store);

    let store: Arc<dyn Store> = Arc::new(RedbStore::open(&path).unwrap());
    let api = start(store.clone(), "127.64.0.0/12").await;
    let (_, again) = api.apply(&service("web", None)).await;
    assert_eq!((again["result"].as_str(), ip_of(&again["object"])), (Some("unchanged"), ip));
    // The record survived too: nobody else can get the address.
    let (code, _) = api.create(&service("other", Some(&ip.to_string()))).await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY);
    api.stop().await;
}
