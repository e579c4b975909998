//! The HTTP/1 fast path against a scripted backend that answers with every framing a server may use, and
//! the requests it hands to pingora (bodies, HTTP/1.0) on the same keep-alive connection.

use crate::common::*;
use discovery::Object;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Requests the scripted backends received on `/vanish` (read, then the connection closed unanswered).
static VANISHED: AtomicUsize = AtomicUsize::new(0);
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A backend speaking raw HTTP/1.1 on loopback; the path picks the answer (see `answer`).
struct Scripted {
    addr: SocketAddr,
    /// Connections accepted so far.
    accepted: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Scripted {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The answer to `path`, and whether the backend closes the connection after it.
fn answer(path: &str, body: &[u8]) -> (Vec<u8>, bool) {
    let fixed = |s: &str| s.as_bytes().to_vec();
    match path {
        "/chunked" => (fixed("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n6;x=y\r\n world\r\n0\r\nx-trailer: 1\r\n\r\n"), false),
        "/until-close" => (fixed("HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\nuntil close"), true),
        "/no-content" => (fixed("HTTP/1.1 204 No Content\r\nx-a: 1\r\n\r\n"), false),
        "/early-hints" => (fixed("HTTP/1.1 103 Early Hints\r\nlink: </s.css>\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"), false),
        "/close" => (fixed("HTTP/1.1 200 OK\r\ncontent-length: 3\r\nconnection: close\r\n\r\nbye"), true),
        // Closes without saying so, as a server whose keep-alive timeout is shorter than the proxy's.
        "/silent-close" => (fixed("HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nsilent"), true),
        "/big" => {
            let body = "x".repeat(300_000);
            (format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}", body.len()).into_bytes(), false)
        }
        _ => {
            let text = format!("path={path} body={}", String::from_utf8_lossy(body));
            (format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{text}", text.len()).into_bytes(), false)
        }
    }
}

async fn serve_conn(mut s: TcpStream) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        // Read one request: head, then a content-length body.
        let (head_len, path, length) = loop {
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let mut req = httparse::Request::new(&mut headers);
            if let Ok(httparse::Status::Complete(n)) = req.parse(&buf) {
                let length = req
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                    .and_then(|h| std::str::from_utf8(h.value).ok()?.parse::<usize>().ok())
                    .unwrap_or(0);
                break (n, req.path.unwrap_or("").to_string(), length);
            }
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        while buf.len() < head_len + length {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        if path == "/vanish" {
            VANISHED.fetch_add(1, Ordering::SeqCst);
            return;
        }
        let (out, close) = answer(&path, &buf[head_len..head_len + length]);
        buf.drain(..head_len + length);
        if s.write_all(&out).await.is_err() {
            return;
        }
        if close {
            return;
        }
    }
}

impl Scripted {
    async fn start() -> Scripted {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        let task = tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                count.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(serve_conn(s));
            }
        });
        Scripted { addr, accepted, task }
    }
}

async fn proxy_to(backend: &Scripted) -> proxy::Proxy {
    let reg = Arc::new(discovery::Registry::new());
    reg.put(service("web"));
    reg.put(Object::Endpoint(Arc::new(endpoint("web", "s", backend.addr))));
    reg.put(route("all", &[], vec![rule("/", "web")]));
    tokio::task::spawn_blocking(move || start(&reg, config())).await.unwrap()
}

/// Send raw bytes on one connection and read until the proxy closes it (bounded).
async fn raw_exchange(addr: SocketAddr, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_response_framing_is_relayed_intact() {
    let backend = Scripted::start().await;
    let proxy = proxy_to(&backend).await;
    let base = format!("http://{}", proxy.http_addr().unwrap());
    // One connection for everything, so each answer also proves the connection stayed in step.
    let c = test_support::http().pool_max_idle_per_host(1).timeout(Duration::from_secs(10)).build().unwrap();
    for _ in 0..3 {
        let r = c.get(format!("{base}/chunked")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.text().await.unwrap(), "hello world");

        let r = c.get(format!("{base}/no-content")).send().await.unwrap();
        assert_eq!(r.status(), 204);
        assert_eq!(r.headers()["x-a"], "1");

        let r = c.get(format!("{base}/early-hints")).send().await.unwrap();
        assert_eq!((r.status().as_u16(), r.text().await.unwrap()), (200, "ok".to_string()));

        let r = c.head(format!("{base}/big")).send().await.unwrap();
        assert_eq!(r.headers()["content-length"], "300000");
        assert_eq!(r.bytes().await.unwrap().len(), 0);

        let r = c.get(format!("{base}/big")).send().await.unwrap();
        let body = r.bytes().await.unwrap();
        assert!(body.len() == 300_000 && body.iter().all(|&b| b == b'x'), "big body relayed whole");

        let r = c.get(format!("{base}/until-close")).send().await.unwrap();
        assert_eq!(r.headers()["connection"], "close", "a close-delimited body closes the client connection");
        assert_eq!(r.text().await.unwrap(), "until close");

        let r = c.get(format!("{base}/close")).send().await.unwrap();
        assert_eq!(r.text().await.unwrap(), "bye");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_and_handed_over_ones_share_a_connection() {
    let backend = Scripted::start().await;
    let proxy = proxy_to(&backend).await;
    let addr = proxy.http_addr().unwrap();
    // Two GETs in one write (pipelined), a POST with a small body (read whole by the fast path), a POST with a
    // body above 64 KiB (streamed by pingora's path), a GET again (back on the fast path), and a last GET that
    // closes.
    let big = "y".repeat(70_000);
    let request = format!(
        "GET /a HTTP/1.1\r\nhost: x\r\n\r\nGET /b HTTP/1.1\r\nhost: x\r\n\r\n\
POST /c HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\n\r\nhello\
POST /large HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\n\r\n{big}\
GET /d HTTP/1.1\r\nhost: x\r\n\r\nGET /e HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
        big.len()
    );
    let out = raw_exchange(addr, request.as_bytes()).await;
    let bodies: Vec<&str> =
        out.split("\r\n\r\n").filter(|p| p.starts_with("path=")).map(|p| p.split("HTTP/1.1").next().unwrap()).collect();
    let big_answer = format!("path=/large body={big}");
    let expected =
        ["path=/a body=", "path=/b body=", "path=/c body=hello", &big_answer, "path=/d body=", "path=/e body="];
    // (Compared without the 70,000 y's, which would drown a failure message.)
    let short = |v: &[&str]| v.iter().map(|b| b.trim_end_matches('y').to_string()).collect::<Vec<_>>();
    assert_eq!(short(&bodies), short(&expected), "all six answered in order on one connection");
    assert_eq!(bodies[3].len(), big_answer.len());
    assert_eq!(out.matches("HTTP/1.1 200").count(), 6, "{out}");

    // HTTP/1.0 goes to pingora's path and is answered in kind.
    let out = raw_exchange(addr, b"GET /old HTTP/1.0\r\nhost: x\r\n\r\n").await;
    assert!(out.starts_with("HTTP/1.") && out.ends_with("path=/old body="), "{out}");

    // Garbage is a 400 and a close, never a hang.
    let out = raw_exchange(addr, b"GET /x HTTP/1.1\r\nbad header line\r\n\r\n").await;
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_connection_closed_while_idle_costs_no_request() {
    let backend = Scripted::start().await;
    let proxy = proxy_to(&backend).await;
    let base = format!("http://{}", proxy.http_addr().unwrap());
    let c = client();
    // Keep-alive upstream connections are reused between plain requests...
    for _ in 0..20 {
        assert_eq!(c.get(format!("{base}/k")).send().await.unwrap().status(), 200);
    }
    let reused = backend.accepted.load(Ordering::Relaxed);
    assert!(reused <= 2, "20 sequential requests used {reused} upstream connections");
    // ...and a connection the endpoint closed after answering (without saying so) is never used for the next
    // request, whether the close was seen before it or only when sending.
    for i in 0..40 {
        let r = c.get(format!("{base}/silent-close")).send().await.unwrap();
        assert_eq!((r.status().as_u16(), r.text().await.unwrap()), (200, "silent".to_string()), "request {i}");
        if i % 2 == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let stats = proxy.service_stats(NS, "web").expect("stats of web");
    assert_eq!(stats.errors_total, 0, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_the_endpoint_may_have_acted_on_is_not_repeated_unless_its_method_allows() {
    let backend = Scripted::start().await;
    let reg = Arc::new(discovery::Registry::new());
    reg.put(service("web"));
    reg.put(Object::Endpoint(Arc::new(endpoint("web", "s", backend.addr))));
    reg.put(route("all", &[], vec![rule("/", "web")]));
    // One worker thread: the client connection's task cannot move away from the thread whose pool holds the
    // idle upstream connection.
    let cfg = proxy::ProxyConfig { threads: 1, ..config() };
    let proxy = tokio::task::spawn_blocking(move || start(&reg, cfg)).await.unwrap();
    let addr = proxy.http_addr().unwrap();
    // Each time, on one client connection: a GET leaves an idle upstream connection in the pool, then a request
    // goes out on it and the endpoint reads it and closes without an answer.
    let mut seen = 0;
    for (method, sends) in [("POST", 1), ("DELETE", 2), ("PATCH", 1), ("GET", 2)] {
        let request = format!(
            "GET /k HTTP/1.1\r\nhost: a\r\n\r\n{method} /vanish HTTP/1.1\r\nhost: a\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
        );
        let out = raw_exchange(addr, request.as_bytes()).await;
        // (The first body does not end in a newline: the statuses are found by their prefix.)
        let statuses: Vec<&str> = out.split("HTTP/1.1 ").skip(1).map(|r| &r[..3]).collect();
        assert_eq!(statuses, ["200", "502"], "{method}: {out}");
        // A POST or PATCH reached the endpoint once: maybe acted on, so not sent again. An idempotent method
        // went again on a new connection (the usual case: the endpoint had closed the idle one).
        let now = VANISHED.load(Ordering::SeqCst);
        assert_eq!(now - seen, sends, "{method} reached the endpoint {} times", now - seen);
        seen = now;
    }
}

/// A proxy on one worker thread in front of `endpoints` (round robin), with `idle_timeout_ms`.
async fn proxy_round_robin(endpoints: &[SocketAddr], idle_timeout_ms: u64) -> proxy::Proxy {
    let reg = Arc::new(discovery::Registry::new());
    let Object::Service(svc) = service("web") else { unreachable!() };
    let mut svc = (*svc).clone();
    svc.balance = discovery::BalancePolicy::RoundRobin;
    reg.put(Object::Service(Arc::new(svc)));
    for (i, addr) in endpoints.iter().enumerate() {
        reg.put(Object::Endpoint(Arc::new(endpoint("web", &format!("e{i}"), *addr))));
    }
    reg.put(route("all", &[], vec![rule("/", "web")]));
    let cfg = proxy::ProxyConfig { threads: 1, idle_timeout_ms, ..config() };
    tokio::task::spawn_blocking(move || start(&reg, cfg)).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_body_is_read_whole_and_goes_again_after_a_connect_failure() {
    let backend = Scripted::start().await;
    // An endpoint that refuses connections: a port that was just free.
    let dead = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead_addr = dead.local_addr().unwrap();
    drop(dead);
    let proxy = proxy_round_robin(&[dead_addr, backend.addr], 60_000).await;
    let base = format!("http://{}", proxy.http_addr().unwrap());
    let c = client();
    // Round robin sends every other first attempt to the dead endpoint (until ejection takes it out); the body
    // goes again, whole, to the live one.
    let body = "z".repeat(40_000);
    for i in 0..6 {
        let r = c.post(format!("{base}/p{i}")).body(body.clone()).send().await.unwrap();
        assert_eq!(r.status(), 200, "POST {i}");
        assert_eq!(r.text().await.unwrap(), format!("path=/p{i} body={body}"), "POST {i}");
    }
    let retries =
        proxy.metrics_text().lines().find_map(|l| l.strip_prefix("berth_proxy_retries_total ")?.parse::<u64>().ok());
    assert!(retries.is_some_and(|n| n >= 1), "no POST went to the dead endpoint first: {retries:?}");

    // A body sent in pieces, with pauses, arrives whole.
    let mut s = TcpStream::connect(proxy.http_addr().unwrap()).await.unwrap();
    s.write_all(b"PUT /slow HTTP/1.1\r\nhost: x\r\ncontent-length: 10\r\nconnection: close\r\n\r\n").await.unwrap();
    for piece in [&b"01234"[..], b"5678", b"9"] {
        tokio::time::sleep(Duration::from_millis(30)).await;
        s.write_all(piece).await.unwrap();
    }
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    let out = String::from_utf8_lossy(&out);
    assert!(out.starts_with("HTTP/1.1 200") && out.ends_with("path=/slow body=0123456789"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_sending_its_body_gets_408() {
    let backend = Scripted::start().await;
    let proxy = proxy_round_robin(&[backend.addr], 300).await;
    let mut s = TcpStream::connect(proxy.http_addr().unwrap()).await.unwrap();
    s.write_all(b"POST /stalled HTTP/1.1\r\nhost: x\r\ncontent-length: 10\r\n\r\nabc").await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    let out = String::from_utf8_lossy(&out);
    assert!(out.starts_with("HTTP/1.1 408"), "{out}");
    assert_eq!(backend.accepted.load(Ordering::Relaxed), 0, "nothing of the request went upstream");
}
