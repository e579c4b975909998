//! The registry mirror against a real API server on loopback: it waits for a synced registry, follows
//! batches in order, re-reads a snapshot when its revision was compacted away or the server restarted with a
//! new registry, and keeps its last state while the server is down or not yet synced.

use client::mirror::{Mirror, MirrorConfig};
use control_plane::api::{self, ApiState};
use control_plane::store::MemoryStore;
use discovery::{Change, Endpoint, Labels, Object, ObjectKey, ObjectKind, Registry, Selector};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use test_support::wait_until;

const TOKEN: &str = "t0ken";

fn endpoint(name: &str, port: u16) -> Object {
    let labels: Labels = [("app".to_string(), "web".to_string())].into_iter().collect();
    Object::Endpoint(Arc::new(Endpoint {
        namespace: "default".into(),
        name: name.into(),
        address: "127.0.0.1".parse().unwrap(),
        ports: vec![discovery::EndpointPort { name: Some("http".into()), port, protocol: Default::default() }],
        labels,
        ready: true,
        serving: true,
        terminating: false,
        node: None,
        zone: None,
        weight: 100,
    }))
}

fn key(name: &str) -> ObjectKey {
    ObjectKey { kind: ObjectKind::Endpoint, namespace: "default".into(), name: name.into() }
}

fn names(r: &Registry) -> Vec<String> {
    r.snapshot().objects(&Selector::everything()).iter().map(|o| o.key().name).collect()
}

/// An API server over `registry` on its own runtime, so that dropping it closes every connection at once
/// (as a killed process would).
struct ApiServer {
    runtime: Option<tokio::runtime::Runtime>,
}

impl ApiServer {
    fn start(registry: Arc<Registry>, addr: SocketAddr) -> (ApiServer, SocketAddr) {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let _guard = runtime.enter();
        // SO_REUSEADDR, and a bounded retry while the previous runtime's listener is still being dropped.
        let deadline = Instant::now() + Duration::from_secs(10);
        let listener = loop {
            let socket = tokio::net::TcpSocket::new_v4().unwrap();
            socket.set_reuseaddr(true).unwrap();
            match socket.bind(addr).and_then(|()| socket.listen(128)) {
                Ok(l) => break l,
                Err(e) if Instant::now() < deadline => {
                    eprintln!("bind {addr}: {e}; retrying");
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => panic!("bind the API address {addr}: {e}"),
            }
        };
        let bound = listener.local_addr().unwrap();
        let state = ApiState::new(Arc::new(MemoryStore::new()), Some(TOKEN.into()), Some(registry));
        runtime.spawn(api::serve(listener, state, std::future::pending()));
        drop(_guard);
        (ApiServer { runtime: Some(runtime) }, bound)
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_follows_relists_and_restarts_and_keeps_its_state_meanwhile() {
    // A short history, so a mirror that misses a few changes must relist.
    let server = Arc::new(Registry::with_history(4));
    let (api, addr) = ApiServer::start(server.clone(), "127.0.0.1:0".parse().unwrap());
    let mut config = MirrorConfig::new(&format!("http://{addr}"), Some(TOKEN.into()));
    config.backoff_max = Duration::from_millis(200);
    let local = Arc::new(Registry::new());
    let mirror = Mirror::start(config, local.clone()).unwrap();

    // Not synced on the server: no snapshot is adopted.
    server.put(endpoint("half-built", 1));
    assert!(!mirror.wait_synced(Duration::from_millis(500)).await);
    assert!(mirror.status().last_error.is_some_and(|e| e.contains("503")), "{:?}", mirror.status());
    assert!(names(&local).is_empty());

    server.apply([Change::Delete(key("half-built")), Change::Put(endpoint("a", 1))]);
    server.mark_synced();
    assert!(mirror.wait_synced(Duration::from_secs(20)).await, "{:?}", mirror.status());
    assert_eq!(names(&local), ["a"]);

    // Batches arrive in order; the local registry equals the server's.
    server.apply([Change::Put(endpoint("b", 2)), Change::Put(endpoint("c", 3)), Change::Delete(key("a"))]);
    server.put(endpoint("b", 20));
    wait_until("the mirror follows the batch", Duration::from_secs(20), async || {
        mirror.status().server_revision == server.revision()
    })
    .await;
    assert_eq!(names(&local), ["b", "c"]);
    assert_eq!(local.snapshot().endpoint("default", "b").unwrap().ports[0].port, 20);
    assert!(mirror.status().connected);

    // The server goes away; while it is gone, more changes than its history keeps are made.
    drop(api);
    wait_until("the mirror notices", Duration::from_secs(20), async || !mirror.status().connected).await;
    for i in 0..10 {
        server.put(endpoint(&format!("d{i}"), 100 + i));
    }
    server.delete(&key("c"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(names(&local), ["b", "c"], "the last known state is kept while the server is down");
    assert!(mirror.status().stale_for > Duration::ZERO);
    assert!(mirror.metrics_text().contains("berth_mirror_connected{"), "{}", mirror.metrics_text());

    // Back with the same registry: the mirror's revision was compacted away, so it relists.
    let snapshots = mirror.status().snapshots;
    let (api, _) = ApiServer::start(server.clone(), addr);
    wait_until("the mirror relists after compaction", Duration::from_secs(20), async || {
        mirror.status().server_revision == server.revision()
    })
    .await;
    assert!(mirror.status().snapshots > snapshots);
    let want = names(&server);
    assert_eq!(names(&local), want);

    // A restart with a new, not yet synced registry whose revisions start again: nothing is adopted until
    // it is synced, then it replaces the old state even though its revision is lower.
    drop(api);
    let restarted = Arc::new(Registry::new());
    let (_api, _) = ApiServer::start(restarted.clone(), addr);
    restarted.put(endpoint("z", 9));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(names(&local), want, "an unsynced server's registry is not adopted");
    restarted.mark_synced();
    wait_until("the mirror adopts the restarted server", Duration::from_secs(20), async || names(&local) == ["z"])
        .await;
    restarted.put(endpoint("y", 8));
    wait_until("the mirror follows the restarted server", Duration::from_secs(20), async || {
        names(&local) == ["y", "z"]
    })
    .await;
    assert_eq!(mirror.status().server_revision, restarted.revision());
}

#[test]
fn replace_all_writes_only_differences() {
    let local = Registry::new();
    local.apply([Change::Put(endpoint("keep", 1)), Change::Put(endpoint("gone", 2)), Change::Put(endpoint("edit", 3))]);
    let changes =
        client::mirror::replace_all(&local, vec![endpoint("keep", 1), endpoint("edit", 30), endpoint("new", 4)]);
    assert_eq!(
        changes,
        vec![Change::Put(endpoint("edit", 30)), Change::Delete(key("gone")), Change::Put(endpoint("new", 4))]
    );
}

/// Registry write on the server to the same change applied in the mirror, over loopback HTTP: printed for
/// the record (debug build, shared machine), bounded generously so only a broken mirror fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_propagation_latency() {
    let server = Arc::new(Registry::new());
    server.mark_synced();
    let (_api, addr) = ApiServer::start(server.clone(), "127.0.0.1:0".parse().unwrap());
    let local = Arc::new(Registry::new());
    let mirror =
        Mirror::start(MirrorConfig::new(&format!("http://{addr}"), Some(TOKEN.into())), local.clone()).unwrap();
    assert!(mirror.wait_synced(Duration::from_secs(20)).await);
    let mut samples = Vec::new();
    for i in 0..200u16 {
        let before = local.revision();
        let start = Instant::now();
        server.put(endpoint("e", 1000 + i));
        tokio::time::timeout(Duration::from_secs(10), local.changed_since(before)).await.expect("change mirrored");
        samples.push(start.elapsed());
    }
    samples.sort();
    let (p50, p99) = (samples[samples.len() / 2], samples[samples.len() * 99 / 100]);
    println!("mirror propagation over loopback: p50 {p50:?} p99 {p99:?} (200 writes)");
    assert!(p99 < Duration::from_secs(2), "p99 {p99:?}");
    assert_eq!(local.snapshot().endpoint("default", "e").unwrap().ports[0].port, 1199);
}
