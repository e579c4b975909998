//! The agent's HTTP control plane over a fake API server: watch bookmarks become progress the agent resumes
//! from, and a revision the server no longer has is `Expired` (the agent then lists again).

use agent::{ControlPlane, ControlPlaneError, HttpControlPlane, PodEvent};
use axum::extract::Request;
use axum::response::IntoResponse;
use futures::StreamExt;
use serde_json::json;
use std::time::Duration;

async fn handle(request: Request) -> axum::response::Response {
    let query = request.uri().query().unwrap_or("").to_string();
    assert!(query.contains("allowWatchBookmarks=true"), "{query}");
    if query.contains("resourceVersion=3") {
        let gone = json!({"type": "ERROR", "object": {"kind": "Status", "code": 410, "reason": "Expired",
                          "message": "too old resource version: 3 (8)"}});
        return format!("{gone}\n").into_response();
    }
    let added = json!({"type": "ADDED", "object": {"metadata": {"name": "p", "namespace": "default",
                       "resourceVersion": "5"}, "spec": {"nodeName": "n"}}});
    let bookmark = json!({"type": "BOOKMARK", "object": {"apiVersion": "v1", "kind": "Pod", "metadata": {"resourceVersion": "9"}}});
    let lines = futures::stream::iter([Ok::<_, std::io::Error>(format!("{added}\n{bookmark}\n"))])
        .chain(futures::stream::pending());
    axum::body::Body::from_stream(lines).into_response()
}

#[tokio::test]
async fn bookmarks_are_progress_and_an_expired_revision_says_so() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, axum::Router::new().fallback(handle)).await });
    let cp = HttpControlPlane::new(client::Client::new(&url, None).unwrap());

    let mut events = cp.watch_pods(Some("n"), None).await.unwrap();
    let bounded = Duration::from_secs(10);
    let first = tokio::time::timeout(bounded, events.next()).await.unwrap().unwrap().unwrap();
    assert!(matches!(&first, PodEvent::Upsert(_)) && first.revision() == Some(5), "{first:?}");
    let second = tokio::time::timeout(bounded, events.next()).await.unwrap().unwrap().unwrap();
    assert_eq!(second, PodEvent::Progress(9));

    let mut resumed = cp.watch_pods(Some("n"), Some(3)).await.unwrap();
    let err = tokio::time::timeout(bounded, resumed.next()).await.unwrap().unwrap().unwrap_err();
    assert!(matches!(err, ControlPlaneError::Expired(_)), "{err}");
}
