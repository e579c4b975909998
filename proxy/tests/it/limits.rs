//! Retries on configured statuses, the downstream connection limit and the header-read (slowloris) timeout,
//! with real HTTP clients (reqwest) and, for the slow client, a raw socket on loopback.

use crate::common::*;
use discovery::{BalancePolicy, Object, Service};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Service `web` over `backends`, round robin (so every backend gets its turn), retrying on `statuses`.
fn registry_retrying(backends: &[&Backend], statuses: &[u16]) -> Arc<discovery::Registry> {
    let reg = registry_with(backends);
    let Object::Service(svc) = service("web") else { unreachable!("service() builds a Service") };
    let svc =
        Service { balance: BalancePolicy::RoundRobin, retry_on_statuses: statuses.to_vec(), ..Service::clone(&*svc) };
    reg.put(Object::Service(Arc::new(svc)));
    reg
}

async fn send(c: &reqwest::Client, method: reqwest::Method, url: &str) -> (u16, String) {
    let r = c.request(method, url).send().await.expect("request");
    let status = r.status().as_u16();
    (status, r.text().await.unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configured_statuses_are_retried_for_idempotent_methods_only() {
    let bad = Backend::start_with_status("bad", 503);
    let good = [Backend::start("good1"), Backend::start("good2")];
    let reg = registry_retrying(&[&bad, &good[0], &good[1]], &[502, 503, 504]);
    let mut cfg = config();
    cfg.retry_budget = 1.0;
    cfg.retry_min = 1000;
    cfg.eject_after_failures = 1_000_000; // keep the 503 endpoint in rotation
    let proxy = start(&reg, cfg);
    let url = format!("http://{}/r", proxy.http_addr().unwrap());
    let c = client();

    // Idempotent methods: the 503 endpoint is tried (round robin) and its answer replaced by another's.
    for method in [reqwest::Method::GET, reqwest::Method::PUT, reqwest::Method::DELETE, reqwest::Method::OPTIONS] {
        for _ in 0..6 {
            let (status, body) = send(&c, method.clone(), &url).await;
            assert_eq!(status, 200, "{method} {body}");
            assert!(id_of(&body).starts_with("good"), "{method} {body}");
        }
    }
    for _ in 0..6 {
        let r = c.head(&url).send().await.unwrap();
        assert_eq!(r.status(), 200);
    }
    let bad_hits = bad.hits();
    assert!(bad_hits >= 5, "the 503 endpoint was tried ({bad_hits} hits)");

    // POST is not idempotent: the 503 goes back to the client as the endpoint sent it.
    let mut posts_503 = 0;
    for _ in 0..9 {
        let (status, body) = send(&c, reqwest::Method::POST, &url).await;
        match status {
            503 => {
                assert_eq!(id_of(&body), "bad", "{body}");
                posts_503 += 1;
            }
            200 => assert!(id_of(&body).starts_with("good"), "{body}"),
            other => panic!("POST got {other}: {body}"),
        }
    }
    assert!(posts_503 >= 1, "round robin sent some POSTs to the 503 endpoint, unretried");
    proxy.stop();

    // Every endpoint answers 503: the client gets the last attempt's answer, not a proxy error page.
    let bad2 = Backend::start_with_status("bad2", 503);
    let reg = registry_retrying(&[&bad, &bad2], &[503]);
    let mut cfg = config();
    cfg.retry_budget = 1.0;
    cfg.retry_min = 1000;
    cfg.eject_after_failures = 1_000_000; // keep the 503 endpoint in rotation
    let proxy = start(&reg, cfg);
    let url = format!("http://{}/r", proxy.http_addr().unwrap());
    let (before1, before2) = (bad.hits(), bad2.hits());
    let (status, body) = send(&c, reqwest::Method::GET, &url).await;
    assert_eq!(status, 503);
    assert!(id_of(&body).starts_with("bad"), "the upstream's own 503 body: {body}");
    assert_eq!(bad.hits() - before1 + bad2.hits() - before2, 2, "one try per endpoint, never the same twice");
    proxy.stop();

    // With no retry budget left, a configured status is not retried.
    let reg = registry_retrying(&[&bad, &good[0]], &[503]);
    let mut cfg = config();
    cfg.retry_budget = 0.0;
    cfg.retry_min = 0;
    cfg.eject_after_failures = 1_000_000;
    let proxy = start(&reg, cfg);
    let url = format!("http://{}/r", proxy.http_addr().unwrap());
    let mut unretried = 0;
    for _ in 0..6 {
        let (status, _) = send(&c, reqwest::Method::GET, &url).await;
        unretried += usize::from(status == 503);
    }
    assert!(unretried >= 1, "without budget, the 503 endpoint's answers reach the client");
    proxy.stop();
}

/// A client with its own connection pool, i.e. its own keep-alive connection.
fn own_connection_client() -> reqwest::Client {
    test_support::http().timeout(Duration::from_secs(20)).pool_max_idle_per_host(1).build().unwrap()
}

fn connections_open(proxy: &proxy::Proxy) -> u64 {
    let text = proxy.metrics_text();
    text.lines()
        .find_map(|l| l.strip_prefix("berth_proxy_connections "))
        .and_then(|v| v.trim().parse().ok())
        .expect("berth_proxy_connections in the metrics")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_limit_get_503_at_once() {
    let backend = Backend::start("b");
    let reg = registry_with(&[&backend]);
    let max = 4;
    let mut cfg = config();
    cfg.max_connections = max;
    let proxy = start(&reg, cfg);
    let url = format!("http://{}/c", proxy.http_addr().unwrap());

    // `max` keep-alive connections, each having served a request and still open.
    let holders: Vec<reqwest::Client> = (0..max).map(|_| own_connection_client()).collect();
    for h in &holders {
        assert_eq!(send(h, reqwest::Method::GET, &url).await.0, 200);
    }
    assert_eq!(connections_open(&proxy), max as u64);

    // Three more connections: each answered 503 quickly, none queued.
    for i in 0..3 {
        let extra = own_connection_client();
        let started = Instant::now();
        let r = extra.get(&url).send().await.unwrap_or_else(|e| panic!("extra connection {i}: {e}"));
        let took = started.elapsed();
        assert_eq!(r.status(), 503, "extra connection {i}");
        eprintln!("extra connection {i}: 503 after {took:?}");
        assert!(took < Duration::from_secs(2), "extra connection {i} answered after {took:?}");
    }
    assert_eq!(backend.hits(), max, "refused connections never reach a backend");
    assert!(proxy.metrics_text().contains("berth_proxy_connections_rejected_total 3"));

    // Closing a held connection frees its slot.
    drop(holders);
    test_support::wait_until("slots freed", Duration::from_secs(10), async || connections_open(&proxy) == 0).await;
    assert_eq!(send(&own_connection_client(), reqwest::Method::GET, &url).await.0, 200);
    proxy.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_header_is_cut_off_while_others_are_served() {
    let backend = Backend::start("b");
    let reg = registry_with(&[&backend]);
    let mut cfg = config();
    cfg.header_read_timeout_ms = 1000;
    let proxy = start(&reg, cfg);
    let addr = proxy.http_addr().unwrap();
    let url = format!("http://{addr}/s");

    // The slow client: a request line, then one header line every 200 ms, never the blank line.
    let slow = tokio::spawn(async move {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let started = Instant::now();
        s.write_all(b"GET /s HTTP/1.1\r\nHost: x\r\n").await.unwrap();
        let mut buf = [0u8; 256];
        for i in 0..100 {
            tokio::select! {
                r = s.read(&mut buf) => {
                    // Closed by the proxy (0 bytes or a reset): that is the point.
                    assert!(!matches!(r, Ok(n) if n > 0), "the proxy answered a header it never got: {r:?}");
                    return started.elapsed();
                }
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
            if s.write_all(format!("X-Slow-{i}: y\r\n").as_bytes()).await.is_err() {
                return started.elapsed();
            }
        }
        panic!("the slow client was never cut off (20 s)");
    });

    // Meanwhile other clients are served, on fresh and on kept-alive connections.
    let c = own_connection_client();
    let mut served = 0;
    let until = Instant::now() + Duration::from_millis(1500);
    while Instant::now() < until {
        assert_eq!(send(&client(), reqwest::Method::GET, &url).await.0, 200);
        assert_eq!(send(&c, reqwest::Method::GET, &url).await.0, 200);
        served += 2;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(served >= 4);
    let cut_after = slow.await.unwrap();
    eprintln!("slow client cut off after {cut_after:?} (timeout 1 s); {served} other requests served meanwhile");
    assert!(cut_after >= Duration::from_millis(900), "cut off before the timeout: {cut_after:?}");
    assert!(cut_after < Duration::from_secs(5), "cut off late: {cut_after:?}");
    assert!(proxy.metrics_text().contains("berth_proxy_header_timeouts_total 1"), "{}", proxy.metrics_text());

    // An idle keep-alive connection is not a slow header: it outlives the header timeout.
    drop(c);
    test_support::wait_until("other connections closed", Duration::from_secs(10), async || {
        connections_open(&proxy) == 0
    })
    .await;
    let idle = own_connection_client();
    assert_eq!(send(&idle, reqwest::Method::GET, &url).await.0, 200);
    assert_eq!(connections_open(&proxy), 1);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(connections_open(&proxy), 1, "the idle keep-alive connection is still open");
    assert_eq!(send(&idle, reqwest::Method::GET, &url).await.0, 200);
    assert_eq!(connections_open(&proxy), 1, "and it was reused");
    proxy.stop();
}
