//! The registry mirror across several servers (fake discovery APIs, each a replica with its own registry
//! epoch): it fails over when its server stalls or stops being ready, relists from the next one as a single
//! batch, and never empties the local registry meanwhile, not even with every server gone.

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use client::mirror::{Mirror, MirrorConfig};
use discovery::{Endpoint, Labels, Object, Registry, Selector, WatchEvent};
use model::wire::DiscoverySnapshot;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

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

fn ports(r: &Registry) -> Vec<(String, u16)> {
    r.snapshot()
        .objects(&Selector::everything())
        .iter()
        .filter_map(|o| match o {
            Object::Endpoint(e) => Some((e.name.clone(), e.ports[0].port)),
            _ => None,
        })
        .collect()
}

struct Replica {
    snapshot: DiscoverySnapshot,
    /// Watches send nothing, not even heartbeats (a paused process).
    stall: AtomicBool,
    /// Snapshots answer 503.
    down: AtomicBool,
    /// `/readyz` answers 200 (else 503).
    ready: AtomicBool,
}

async fn handle(State(r): State<Arc<Replica>>, request: Request) -> Response {
    let query = request.uri().query().unwrap_or("").to_string();
    if r.down.load(Ordering::SeqCst) {
        return (StatusCode::SERVICE_UNAVAILABLE, "down").into_response();
    }
    match request.uri().path() {
        "/readyz" if r.ready.load(Ordering::SeqCst) => "ok".into_response(),
        "/readyz" => (StatusCode::SERVICE_UNAVAILABLE, "store unreachable").into_response(),
        "/discovery/v1/snapshot" => axum::Json(r.snapshot.clone()).into_response(),
        "/discovery/v1/endpoints" => {
            if !query.contains(&format!("epoch={}", r.snapshot.epoch)) {
                let relist = WatchEvent::Relist { revision: r.snapshot.revision };
                return format!("{}\n", serde_json::to_string(&relist).unwrap()).into_response();
            }
            let beats = futures::stream::unfold(r, |r| async move {
                loop {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    if !r.stall.load(Ordering::SeqCst) {
                        return Some((Ok::<_, std::io::Error>("\n"), r));
                    }
                }
            });
            axum::body::Body::from_stream(beats).into_response()
        }
        _ => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn replica(epoch: &str, revision: u64, objects: Vec<Object>) -> (String, Arc<Replica>) {
    let r = Arc::new(Replica {
        snapshot: DiscoverySnapshot { epoch: epoch.into(), revision, objects },
        stall: AtomicBool::new(false),
        down: AtomicBool::new(false),
        ready: AtomicBool::new(true),
    });
    let app = axum::Router::new().fallback(handle).with_state(r.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, r)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mirror_fails_over_relists_in_one_batch_and_never_empties_the_registry() {
    let (a_url, a) = replica("aaaa", 40, vec![endpoint("x", 1), endpoint("y", 1)]).await;
    // Another replica: its own epoch and revisions, and it has seen one more change.
    let (b_url, b) = replica("bbbb", 7, vec![endpoint("x", 1), endpoint("y", 2), endpoint("z", 3)]).await;
    let mut config = MirrorConfig::new(&format!("{a_url},{b_url}"), None);
    config.idle_timeout = Duration::from_millis(500);
    config.backoff_max = Duration::from_millis(200);
    let local = Arc::new(Registry::new());
    let mirror = Mirror::start(config, local.clone()).unwrap();
    assert!(mirror.wait_synced(Duration::from_secs(20)).await, "{:?}", mirror.status());
    assert_eq!(ports(&local), [("x".into(), 1), ("y".into(), 1)]);
    assert_eq!(mirror.status().server, a_url);

    // Watch every local change from here: what the proxy or the DNS server would see.
    let mut changes = local.watch(Selector::everything(), local.revision());
    let before = local.revision();
    a.stall.store(true, Ordering::SeqCst);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while ports(&local) != [("x".into(), 1), ("y".into(), 2), ("z".into(), 3)] {
        assert!(!ports(&local).is_empty(), "the local registry is never emptied");
        assert!(tokio::time::Instant::now() < deadline, "no failover: {:?}", mirror.status());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let st = mirror.status();
    assert_eq!((st.server.as_str(), st.snapshots, st.server_revision), (b_url.as_str(), 2, 7), "{st:?}");
    // Only the two real differences, published together (one registry state, two revisions).
    assert_eq!(local.revision(), before + 2);
    let mut seen = Vec::new();
    while let Ok(e) = tokio::time::timeout(Duration::from_millis(100), changes.next()).await {
        seen.push(e);
    }
    assert_eq!(seen.len(), 2, "{seen:?}");

    // Every server gone: the last known state stays.
    b.down.store(true, Ordering::SeqCst);
    b.stall.store(true, Ordering::SeqCst);
    a.down.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(ports(&local).len(), 3);
    assert!(!mirror.status().connected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mirror_leaves_a_server_that_stops_being_ready_for_one_that_is() {
    let (a_url, a) = replica("aaaa", 3, vec![endpoint("x", 1)]).await;
    let (b_url, b) = replica("bbbb", 5, vec![endpoint("x", 2)]).await;
    let mut config = MirrorConfig::with_servers(&[&a_url, &b_url], None);
    config.backoff_max = Duration::from_millis(200);
    let local = Arc::new(Registry::new());
    let mirror = Mirror::start(config, local.clone()).unwrap();
    assert!(mirror.wait_synced(Duration::from_secs(20)).await, "{:?}", mirror.status());
    assert_eq!(ports(&local), [("x".into(), 1)]);

    // Not ready while the other is not either: stay (heartbeats still flow, nothing better to go to).
    a.ready.store(false, Ordering::SeqCst);
    b.ready.store(false, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(3500)).await;
    assert_eq!(mirror.status().server, a_url);
    // The other becomes ready: move there within a few probe periods.
    b.ready.store(true, Ordering::SeqCst);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while ports(&local) != [("x".into(), 2)] {
        assert!(tokio::time::Instant::now() < deadline, "no failover: {:?}", mirror.status());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(mirror.status().server, b_url);
    assert!(mirror.status().last_error.is_some_and(|e| e.contains("not ready")));
}
