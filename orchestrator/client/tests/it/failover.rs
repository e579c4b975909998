//! Failover across several API servers, against fake servers on loopback that can refuse, answer 503, hang,
//! send watch bookmarks or stall a watch.

use axum::extract::{Request, State};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use client::{Client, ClientError};
use futures::StreamExt;
use parking_lot::Mutex;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const BOUND: Duration = Duration::from_secs(20);

#[derive(Debug, Clone, Copy, PartialEq)]
enum Mode {
    Ok,
    /// Every API request answers 503 (as a replica whose store lost quorum).
    Unavailable,
    /// Every API request hangs (as a paused process).
    Hang,
}

struct Fake {
    mode: Mutex<Mode>,
    ready: AtomicBool,
    /// Send a BOOKMARK every 100 ms on watches that ask for them.
    bookmarks: AtomicBool,
    /// Watches stop sending anything (but stay open).
    stall: AtomicBool,
    revision: AtomicU64,
    /// Shared between fakes: whether the object of `POST` exists (a store behind all replicas).
    created: Arc<AtomicBool>,
    /// A `POST` is written, then answered 503 (the answer was lost, the write was not).
    fail_after_create: AtomicBool,
    /// `METHOD path?query` of every API request (not `/readyz`).
    seen: Mutex<Vec<String>>,
}

struct FakeApi {
    url: String,
    state: Arc<Fake>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl FakeApi {
    async fn start(created: Arc<AtomicBool>) -> FakeApi {
        let state = Arc::new(Fake {
            mode: Mutex::new(Mode::Ok),
            ready: AtomicBool::new(true),
            bookmarks: AtomicBool::new(true),
            stall: AtomicBool::new(false),
            revision: AtomicU64::new(5),
            created,
            fail_after_create: AtomicBool::new(false),
            seen: Mutex::new(Vec::new()),
        });
        let app = axum::Router::new().fallback(handle).with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stopped.await;
                })
                .await;
        });
        FakeApi { url: format!("http://{addr}"), state, _stop: stop }
    }

    fn set_mode(&self, mode: Mode) {
        *self.state.mode.lock() = mode;
    }

    fn seen(&self) -> Vec<String> {
        self.state.seen.lock().clone()
    }
}

/// An address nothing listens on.
async fn dead_url() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr: SocketAddr = l.local_addr().unwrap();
    drop(l);
    format!("http://{addr}")
}

fn pod(rev: u64) -> Value {
    json!({"metadata": {"name": "p", "namespace": "default", "resourceVersion": rev.to_string()}, "spec": {"nodeName": "n"}})
}

async fn handle(State(s): State<Arc<Fake>>, request: Request) -> Response {
    let (parts, _body) = request.into_parts();
    let path = parts.uri.path().to_string();
    let query = parts.uri.query().unwrap_or("").to_string();
    if path == "/readyz" {
        return if s.ready.load(Ordering::SeqCst) {
            "ok".into_response()
        } else {
            (StatusCode::SERVICE_UNAVAILABLE, "store unreachable").into_response()
        };
    }
    s.seen.lock().push(format!("{} {path}?{query}", parts.method));
    let mode = *s.mode.lock();
    match mode {
        Mode::Ok => {}
        Mode::Unavailable => {
            return (StatusCode::SERVICE_UNAVAILABLE, axum::Json(json!({"message": "store unavailable"})))
                .into_response()
        }
        Mode::Hang => std::future::pending::<()>().await,
    }
    match (parts.method, path.as_str()) {
        (Method::GET, "/api/v1/pods") if query.contains("watch=true") => watch(s, &query),
        (Method::GET, "/api/v1/namespaces/default/pods/p") => axum::Json(pod(5)).into_response(),
        (Method::POST, "/api/v1/namespaces/default/pods") => {
            if s.created.swap(true, Ordering::SeqCst) {
                let body = json!({"message": "pods \"p\" already exists", "reason": "AlreadyExists"});
                return (StatusCode::CONFLICT, axum::Json(body)).into_response();
            }
            if s.fail_after_create.load(Ordering::SeqCst) {
                return (StatusCode::SERVICE_UNAVAILABLE, "lost").into_response();
            }
            (StatusCode::CREATED, axum::Json(pod(6))).into_response()
        }
        _ => (StatusCode::NOT_FOUND, axum::Json(json!({"message": "not found"}))).into_response(),
    }
}

/// A watch: `ADDED p` (from scratch) or nothing (resumed), then a bookmark every 100 ms while asked for and
/// enabled, nothing at all while stalled.
fn watch(s: Arc<Fake>, query: &str) -> Response {
    let resumed = query.contains("resourceVersion=");
    let wants_bookmarks = query.contains("allowWatchBookmarks=true");
    let first = if resumed {
        Vec::new()
    } else {
        vec![Ok::<_, std::io::Error>(format!("{}\n", json!({"type": "ADDED", "object": pod(5)})))]
    };
    let ticks = futures::stream::unfold(s, move |s| async move {
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if s.stall.load(Ordering::SeqCst) {
                continue;
            }
            if wants_bookmarks && s.bookmarks.load(Ordering::SeqCst) {
                let rev = s.revision.load(Ordering::SeqCst).to_string();
                let line = json!({"type": "BOOKMARK", "object": {"apiVersion": "v1", "kind": "Pod", "metadata": {"resourceVersion": rev}}});
                return Some((Ok(format!("{line}\n")), s));
            }
        }
    });
    axum::body::Body::from_stream(futures::stream::iter(first).chain(ticks)).into_response()
}

fn client_of(urls: &[&str]) -> Client {
    let urls: Vec<String> = urls.iter().map(|u| u.to_string()).collect();
    Client::with_servers(&urls, None, None)
        .unwrap()
        .with_timeouts(Duration::from_millis(500), Duration::from_millis(600))
}

async fn bounded<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(BOUND, f).await.expect("bounded")
}

#[tokio::test]
async fn requests_fail_over_on_refused_connections_and_5xx_and_stay_where_they_succeeded() {
    let store = Arc::new(AtomicBool::new(false));
    let (a, b) = (FakeApi::start(store.clone()).await, FakeApi::start(store.clone()).await);
    let dead = dead_url().await;
    a.set_mode(Mode::Unavailable);
    let client = client_of(&[&dead, &a.url, &b.url]);
    assert_eq!(client.servers().len(), 3);

    // Refused (every server may be tried), then a 503 (one retry), then an answer.
    let got = bounded(client.get(model::Kind::Pod, "default", "p")).await.unwrap();
    assert_eq!(got["metadata"]["name"], "p");
    assert_eq!(client.current_server(), b.url, "the client stays on the server that answered");
    assert_eq!(a.seen().len(), 1);

    // The next request starts there.
    bounded(client.get(model::Kind::Pod, "default", "p")).await.unwrap();
    assert_eq!(a.seen().len(), 1);
    assert_eq!(b.seen().len(), 2);

    // Two 5xx in a row: no third try.
    b.set_mode(Mode::Unavailable);
    let (a_before, b_before) = (a.seen().len(), b.seen().len());
    let err = bounded(client.get(model::Kind::Pod, "default", "p")).await.unwrap_err();
    assert!(matches!(err, ClientError::Api { code: 503, .. }), "{err}");
    assert_eq!(b.seen().len() - b_before + a.seen().len() - a_before, 2, "one attempt and one retry of a 5xx");

    // A 4xx is an answer: not retried.
    b.set_mode(Mode::Ok);
    a.set_mode(Mode::Ok);
    let before: usize = a.seen().len() + b.seen().len();
    let err = bounded(client.get(model::Kind::Pod, "default", "missing")).await.unwrap_err();
    assert!(err.is_not_found(), "{err}");
    assert_eq!(a.seen().len() + b.seen().len(), before + 1);
}

#[tokio::test]
async fn a_create_whose_answer_was_lost_is_retried_and_its_conflict_reported_as_is() {
    let store = Arc::new(AtomicBool::new(false));
    let (a, b) = (FakeApi::start(store.clone()).await, FakeApi::start(store.clone()).await);
    a.state.fail_after_create.store(true, Ordering::SeqCst);
    let client = client_of(&[&a.url, &b.url]);
    let err = bounded(client.create(model::Kind::Pod, "default", &pod(0))).await.unwrap_err();
    assert!(err.is_conflict(), "{err}");
    assert_eq!(b.seen(), ["POST /api/v1/namespaces/default/pods?"]);
}

#[tokio::test]
async fn a_hung_server_times_out_and_the_request_moves_on() {
    let store = Arc::new(AtomicBool::new(false));
    let (a, b) = (FakeApi::start(store.clone()).await, FakeApi::start(store.clone()).await);
    a.set_mode(Mode::Hang);
    let client = client_of(&[&a.url, &b.url]);
    let t = Instant::now();
    bounded(client.get(model::Kind::Pod, "default", "p")).await.unwrap();
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    assert_eq!(client.current_server(), b.url);
}

#[tokio::test]
async fn watches_ask_for_bookmarks_skip_them_and_advance_their_revision_with_them() {
    let a = FakeApi::start(Arc::new(AtomicBool::new(false))).await;
    let client = client_of(&[&a.url]);
    let mut watch = bounded(client.watch_pods_on_node("n", None)).await.unwrap();
    let first = bounded(watch.next()).await.unwrap().unwrap();
    assert_eq!((first.kind.as_str(), first.revision()), ("ADDED", Some(5)));
    assert!(a.seen()[0].contains("allowWatchBookmarks=true"), "{:?}", a.seen());

    a.state.revision.store(9, Ordering::SeqCst);
    // Bookmarks flow every 100 ms but none is an event.
    assert!(tokio::time::timeout(Duration::from_millis(400), watch.next()).await.is_err(), "no event surfaced");
    assert_eq!(watch.revision(), Some(9), "bookmarks advance the resume revision");

    let mut with = bounded(client.watch_pods_on_node("n", Some(9))).await.unwrap().with_bookmarks();
    let bookmark = bounded(with.next()).await.unwrap().unwrap();
    assert_eq!((bookmark.kind.as_str(), bookmark.revision()), ("BOOKMARK", Some(9)));
}

#[tokio::test]
async fn a_silent_watch_ends_and_resumes_on_the_next_server_from_the_same_revision() {
    let store = Arc::new(AtomicBool::new(false));
    let (a, b) = (FakeApi::start(store.clone()).await, FakeApi::start(store.clone()).await);
    let client = client_of(&[&a.url, &b.url]);
    let mut watch = bounded(client.watch_pods_on_node("n", None)).await.unwrap();
    bounded(watch.next()).await.unwrap().unwrap();
    a.state.revision.store(7, Ordering::SeqCst);
    // The revision moves as the watch is read (bookmarks are consumed inside `next`).
    bounded(async {
        while watch.revision() != Some(7) {
            assert!(tokio::time::timeout(Duration::from_millis(50), watch.next()).await.is_err(), "no events");
        }
    })
    .await;

    a.state.stall.store(true, Ordering::SeqCst);
    let t = Instant::now();
    let err = bounded(watch.next()).await.unwrap().unwrap_err();
    assert!(matches!(err, ClientError::WatchSilent { .. }), "{err}");
    assert!(t.elapsed() < Duration::from_secs(2), "ended after the silence bound: {:?}", t.elapsed());
    assert!(bounded(watch.next()).await.is_none(), "the watch is over");
    assert_eq!(client.current_server(), b.url, "the silent server was failed over from");

    let resume = watch.revision();
    let _resumed = bounded(client.watch_pods_on_node("n", resume)).await.unwrap();
    let seen = b.seen();
    assert!(seen[0].contains("resourceVersion=7") && seen[0].contains("fieldSelector=spec.nodeName%3Dn"), "{seen:?}");
}

#[tokio::test]
async fn an_idle_watch_of_a_server_without_bookmarks_does_not_time_out() {
    let a = FakeApi::start(Arc::new(AtomicBool::new(false))).await;
    a.state.bookmarks.store(false, Ordering::SeqCst);
    let client = client_of(&[&a.url]);
    let mut watch = bounded(client.watch_pods_on_node("n", None)).await.unwrap();
    bounded(watch.next()).await.unwrap().unwrap();
    // Three times the silence bound with nothing at all: still open.
    assert!(tokio::time::timeout(Duration::from_millis(1800), watch.next()).await.is_err());
}

#[tokio::test]
async fn the_readiness_probe_moves_off_an_unready_server_and_ends_its_watches() {
    let store = Arc::new(AtomicBool::new(false));
    let (a, b) = (FakeApi::start(store.clone()).await, FakeApi::start(store.clone()).await);
    // A watch of a server without bookmarks: only the probe can tell it is no longer ready.
    a.state.bookmarks.store(false, Ordering::SeqCst);
    let client = client_of(&[&a.url, &b.url]);
    client.probe_readiness();
    let mut watch = bounded(client.watch_pods_on_node("n", None)).await.unwrap();
    bounded(watch.next()).await.unwrap().unwrap();

    a.state.ready.store(false, Ordering::SeqCst);
    let t = Instant::now();
    let err = bounded(watch.next()).await.unwrap().unwrap_err();
    assert!(matches!(err, ClientError::FailedOver { .. }), "{err}");
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    assert_eq!(client.current_server(), b.url);

    // An unready server that is the only candidate left is not moved to.
    b.state.ready.store(false, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(3000)).await;
    assert_eq!(client.current_server(), b.url);
}

#[test]
fn servers_are_given_repeated_or_comma_separated_and_of_one_scheme() {
    assert_eq!(
        client::split_servers(&["http://a:1, http://b:2/", "http://c:3"]),
        ["http://a:1", "http://b:2", "http://c:3"]
    );
    let mixed = Client::with_servers(&["http://a:1".into(), "https://b:2".into()], None, None).err().unwrap();
    assert!(matches!(mixed, ClientError::MixedSchemes { .. }), "{mixed}");
    assert!(matches!(Client::with_servers(&[], None, None).err().unwrap(), ClientError::NoServer));
    assert!(matches!(
        Client::with_servers(&["https://a:1,https://b:2".into()], None, None).err().unwrap(),
        ClientError::NeedsCa { .. }
    ));
}

#[tokio::test]
async fn a_request_hanging_on_a_server_the_probe_leaves_is_retried_where_the_client_went() {
    let store = Arc::new(AtomicBool::new(false));
    let (a, b) = (FakeApi::start(store.clone()).await, FakeApi::start(store.clone()).await);
    a.set_mode(Mode::Hang);
    a.state.ready.store(false, Ordering::SeqCst);
    let urls = [a.url.clone(), b.url.clone()];
    // A request timeout far longer than the probe needs to give up on `a`.
    let client = Client::with_servers(&urls, None, None).unwrap().with_timeouts(BOUND, Duration::from_secs(3));
    client.probe_readiness();
    let t = Instant::now();
    bounded(client.get(model::Kind::Pod, "default", "p")).await.unwrap();
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    assert_eq!((a.seen().len(), b.seen().len()), (1, 1));
}
