//! What the API shows of high availability, over real HTTP on loopback: `/readyz`, the replicas behind
//! `GET /api/v1/controlplane`, `berth_leader` on `/metrics`, and BOOKMARK events on idle watches.

use control_plane::api::{self, ApiState};
use control_plane::ha::{self, Replica, Timing};
use control_plane::store::{Key, Store};
use discovery::Registry;
use futures::StreamExt;
use reqwest::StatusCode;
use serde_json::Value;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

const TOKEN: &str = "a11ce5a11ce5a11ce5a11ce5a11ce5a11ce5a11ce5a11ce5a11ce5a11ce5a11c";

struct Api {
    base: String,
    http: reqwest::Client,
    registry: Arc<Registry>,
    store: Arc<dyn Store>,
    _stop: oneshot::Sender<()>,
}

async fn start() -> Api {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let replica = Replica { name: "cp-1".into(), url: base.clone() };
    let opened = ha::open("memory:", replica, Timing::default()).await.unwrap();
    let registry = Arc::new(Registry::new());
    let state = ApiState::new(opened.store.clone(), Some(TOKEN.into()), Some(registry.clone()))
        .with_control_plane(opened.status.clone());
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(api::serve(listener, state, async move {
        let _ = stopped.await;
    }));
    Api { base, http: test_support::http().build().unwrap(), registry, store: opened.store, _stop: stop }
}

#[tokio::test]
async fn readyz_waits_for_the_registry_and_needs_no_credentials() {
    let api = start().await;
    let r = api.http.get(format!("{}/readyz", api.base)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    let reason = r.text().await.unwrap();
    assert!(reason.starts_with("registry: ") && reason.ends_with('\n') && reason.lines().count() == 1, "{reason:?}");
    api.registry.mark_synced();
    let r = api.http.get(format!("{}/readyz", api.base)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.text().await.unwrap(), "ok\n");
}

#[tokio::test]
async fn the_control_plane_lists_this_replica_as_leader_for_admins_only() {
    let api = start().await;
    let url = format!("{}/api/v1/controlplane", api.base);
    let r = api.http.get(&url).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let list: Value = api.http.get(&url).bearer_auth(TOKEN).send().await.unwrap().json().await.unwrap();
    assert_eq!(list["kind"], "ControlPlaneList");
    let items = list["items"].as_array().unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!((items[0]["name"].as_str(), items[0]["leader"].as_bool()), (Some("cp-1"), Some(true)));
    assert_eq!(items[0]["url"], api.base.as_str());
    assert!(humantime::parse_rfc3339_weak(items[0]["since"].as_str().unwrap()).is_ok(), "{items:?}");
    let metrics = api.http.get(format!("{}/metrics", api.base)).send().await.unwrap().text().await.unwrap();
    for line in ["berth_leader 1\n", "berth_leader_changes_total 1\n", "berth_fenced_writes_rejected_total 0\n"] {
        assert!(metrics.contains(line), "{line:?} missing from:\n{metrics}");
    }
}

/// The next NDJSON line of a streaming response.
async fn next_line(
    body: &mut (impl futures::Stream<Item = reqwest::Result<bytes::Bytes>> + Unpin),
    buf: &mut Vec<u8>,
) -> Value {
    loop {
        if let Some(at) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=at).collect();
            return serde_json::from_slice(&line).unwrap();
        }
        let chunk = tokio::time::timeout(Duration::from_secs(5), body.next()).await.expect("a line").unwrap().unwrap();
        buf.extend_from_slice(&chunk);
    }
}

#[tokio::test]
async fn an_idle_watch_sends_bookmarks_with_the_revision_seen_only_when_asked() {
    let api = start().await;
    let pod = |name: &str, app: &str| {
        serde_json::to_vec(&serde_json::json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "default", "labels": {"app": app}},
            "spec": {"containers": [{"name": "c", "image": "x"}]}}))
        .unwrap()
    };
    let first = api.store.create(&Key::new("pods", "default", "a"), pod("a", "web")).await.unwrap();
    let url = format!(
        "{}/api/v1/namespaces/default/pods?watch=true&resourceVersion={first}&labelSelector=app%3Dweb&allowWatchBookmarks=true",
        api.base
    );
    let r = api.http.get(&url).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let mut body = r.bytes_stream();
    let mut buf = Vec::new();
    let opened = Instant::now();
    let bookmark = next_line(&mut body, &mut buf).await;
    let waited = opened.elapsed();
    assert!(waited >= Duration::from_millis(900) && waited < Duration::from_secs(3), "{waited:?}");
    assert_eq!(bookmark["type"], "BOOKMARK");
    assert_eq!(bookmark["object"]["kind"], "Pod");
    assert_eq!(bookmark["object"]["apiVersion"], "v1");
    assert_eq!(bookmark["object"]["metadata"]["resourceVersion"], first.to_string());

    // A change outside the selector is not sent, but the next bookmark has seen it.
    let other = api.store.create(&Key::new("pods", "default", "b"), pod("b", "db")).await.unwrap();
    let next = next_line(&mut body, &mut buf).await;
    assert_eq!(next["type"], "BOOKMARK");
    assert_eq!(next["object"]["metadata"]["resourceVersion"], other.to_string());
    let added = api.store.create(&Key::new("pods", "default", "c"), pod("c", "web")).await.unwrap();
    let event = next_line(&mut body, &mut buf).await;
    assert_eq!((event["type"].as_str(), event["object"]["metadata"]["name"].as_str()), (Some("ADDED"), Some("c")));
    assert_eq!(event["object"]["metadata"]["resourceVersion"], added.to_string());

    // Without the parameter: no bookmark, the stream stays silent.
    let plain = url.replace("&allowWatchBookmarks=true", "");
    let r = api.http.get(&plain).bearer_auth(TOKEN).send().await.unwrap();
    let mut body = r.bytes_stream();
    let mut buf = Vec::new();
    assert_eq!(next_line(&mut body, &mut buf).await["object"]["metadata"]["name"], "c");
    assert!(tokio::time::timeout(Duration::from_millis(1500), body.next()).await.is_err(), "silent without bookmarks");
}
