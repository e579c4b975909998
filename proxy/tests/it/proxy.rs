//! End-to-end tests of the proxy with real clients (curl, reqwest, tungstenite) on loopback.

use crate::common::*;
use discovery::{BalancePolicy, Certificate, HealthCheck, Object, RouteTls, Service, TargetPort};
use futures::{SinkExt, StreamExt};
use proxy::TcpListenerConfig;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

fn curl(args: &[&str]) -> (String, String) {
    let out = Command::new("curl").args(["-sS", "--max-time", "10"]).args(args).output().expect("curl runs");
    (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_routing_headers_and_404() {
    let a = Backend::start("a");
    let b = Backend::start("b");
    let reg = Arc::new(discovery::Registry::new());
    reg.put(service("web"));
    reg.put(service("api"));
    reg.put(Object::Endpoint(Arc::new(endpoint("web", "a", a.addr))));
    reg.put(Object::Endpoint(Arc::new(endpoint("api", "b", b.addr))));
    let mut api = rule("/api", "api");
    api.rewrite_prefix = Some("/v2".into());
    api.add_request_headers = vec![("x-via".into(), "berth".into())];
    api.remove_request_headers = vec!["x-drop".into()];
    reg.put(route("site", &["example.test", "*.wild.test"], vec![rule("/", "web"), api]));
    let proxy = start(&reg, config());
    let base = format!("http://{}", proxy.http_addr().unwrap());

    if require("curl") {
        let (body, err) = curl(&["-H", "Host: example.test", &format!("{base}/hello")]);
        assert!(body.starts_with("id=a path=/hello xff=127.0.0.1 xfp=http xfh=example.test"), "{body} {err}");
        assert!(!body.contains("rid=-"), "a request id is generated: {body}");
        let (body, _) = curl(&[
            "-H",
            "Host: x.wild.test",
            "-H",
            "x-request-id: abc",
            "-H",
            "x-drop: 1",
            &format!("{base}/api/users?q=1"),
        ]);
        assert!(body.starts_with("id=b path=/v2/users?q=1"), "{body}");
        assert!(body.contains("rid=abc") && body.contains("via=berth") && body.contains("drop=-"), "{body}");
        let (code, _) =
            curl(&["-o", "/dev/null", "-w", "%{http_code}", "-H", "Host: nowhere.test", &format!("{base}/")]);
        assert_eq!(code, "404");
    }
    let c = client();
    let r = c
        .get(format!("{base}/x"))
        .header("host", "example.test")
        .header("x-forwarded-for", "10.0.0.1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().contains("xff=10.0.0.1, 127.0.0.1"));

    let stats = proxy.service_stats("default", "web").unwrap();
    assert!(stats.requests_total >= 1, "{stats:?}");
    let text = proxy.metrics_text();
    assert!(
        text.contains("berth_proxy_service_responses_total{namespace=\"default\",service=\"web\",class=\"2xx\"}"),
        "{text}"
    );
    assert!(text.contains("berth_proxy_route_latency_seconds_bucket"), "{text}");
    proxy.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_prior_knowledge() {
    if !require("curl") {
        return;
    }
    let a = Backend::start("a");
    let reg = registry_with(&[&a]);
    let proxy = start(&reg, config());
    let url = format!("http://{}/h2", proxy.http_addr().unwrap());
    let (out, err) = curl(&["--http2-prior-knowledge", "-w", " %{http_version}", &url]);
    assert!(out.starts_with("id=a path=/h2") && out.ends_with(" 2"), "{out} {err}");
    proxy.stop();
}

fn self_signed(host: &str) -> (String, String) {
    let ck = rcgen::generate_simple_self_signed(vec![host.to_string()]).unwrap();
    (ck.cert.pem(), ck.signing_key.serialize_pem())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_sni_picks_certificates_and_speaks_h2() {
    if !require("curl") {
        return;
    }
    let a = Backend::start("a");
    let reg = registry_with(&[&a]);
    let dir = tempfile::tempdir().unwrap();
    let mut routes_tls = Vec::new();
    for host in ["one.test", "two.test"] {
        let (cert, key) = self_signed(host);
        std::fs::write(dir.path().join(format!("{host}.pem")), &cert).unwrap();
        reg.put(Object::Certificate(Arc::new(Certificate {
            namespace: NS.into(),
            name: format!("{host}-tls"),
            cert_pem: cert,
            key_pem: key,
        })));
        routes_tls.push(RouteTls { hosts: vec![host.into()], secret_name: format!("{host}-tls") });
    }
    // A broken certificate must be skipped, not crash the listener.
    reg.put(Object::Certificate(Arc::new(Certificate {
        namespace: NS.into(),
        name: "bad-tls".into(),
        cert_pem: "not a pem".into(),
        key_pem: "nope".into(),
    })));
    routes_tls.push(RouteTls { hosts: vec!["bad.test".into()], secret_name: "bad-tls".into() });
    let Object::Route(r) = route("tls", &[], vec![rule("/", "web")]) else { unreachable!() };
    let mut r = (*r).clone();
    r.tls = routes_tls;
    reg.put(Object::Route(Arc::new(r)));

    let mut cfg = config();
    cfg.https_listen = vec!["127.0.0.1:0".parse().unwrap()];
    let proxy = start(&reg, cfg);
    let port = proxy.addrs().https[0].port();
    let fetch = |host: &str, ca: &str| {
        let resolve = format!("{host}:{port}:127.0.0.1");
        let ca = dir.path().join(format!("{ca}.pem"));
        curl(&[
            "--http2",
            "--cacert",
            ca.to_str().unwrap(),
            "--resolve",
            &resolve,
            "-w",
            " %{http_version}",
            &format!("https://{host}:{port}/tls"),
        ])
    };
    for host in ["one.test", "two.test"] {
        let (out, err) = fetch(host, host);
        assert!(
            out.starts_with("id=a path=/tls") && out.contains("xfp=https") && out.ends_with(" 2"),
            "{host}: {out} {err}"
        );
    }
    // Each host gets its own certificate: one's CA does not validate two's certificate.
    let (out, err) = fetch("two.test", "one.test");
    assert!(!out.starts_with("id=") && !err.is_empty(), "two.test must not present one.test's certificate: {out}");
    // HTTP/1.1 over TLS too.
    let resolve = format!("one.test:{port}:127.0.0.1");
    let ca = dir.path().join("one.test.pem");
    let (out, err) = curl(&[
        "--http1.1",
        "--cacert",
        ca.to_str().unwrap(),
        "--resolve",
        &resolve,
        "-w",
        " %{http_version}",
        &format!("https://one.test:{port}/"),
    ]);
    assert!(out.ends_with(" 1.1"), "{out} {err}");
    proxy.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_echo_passes_through() {
    let a = Backend::start("a");
    let reg = registry_with(&[&a]);
    let proxy = start(&reg, config());
    let url = format!("ws://{}/ws", proxy.http_addr().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.expect("websocket upgrade through the proxy");
    for i in 0..3 {
        ws.send(tokio_tungstenite::tungstenite::Message::text(format!("hi{i}"))).await.unwrap();
        let msg = tokio::time::timeout(Duration::from_secs(5), ws.next()).await.unwrap().unwrap().unwrap();
        assert_eq!(msg.into_text().unwrap().as_str(), format!("echo:hi{i}"));
    }
    drop(ws);
    proxy.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_listener_proxies_a_line_protocol() {
    // A tiny non-HTTP protocol: "PING\n" -> "PONG <id>\n".
    let mut addrs = Vec::new();
    for id in ["t1", "t2"] {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        addrs.push((id, l.local_addr().unwrap()));
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let (r, mut w) = s.into_split();
                    let mut lines = BufReader::new(r).lines();
                    while let Ok(Some(line)) = lines.next_line().await {
                        let reply = if line == "PING" { format!("PONG {id}\n") } else { "ERR\n".into() };
                        if w.write_all(reply.as_bytes()).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
    }
    let reg = Arc::new(discovery::Registry::new());
    reg.put(service("tcp"));
    for (id, addr) in &addrs {
        reg.put(Object::Endpoint(Arc::new(endpoint("tcp", id, *addr))));
    }
    let mut cfg = config();
    cfg.tcp_listeners = vec![TcpListenerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        namespace: NS.into(),
        service: "tcp".into(),
        port: Some(TargetPort::Number(80)),
    }];
    let proxy = start(&reg, cfg);
    let addr = proxy.addrs().tcp[0];
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..20 {
        let s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (r, mut w) = s.into_split();
        w.write_all(b"PING\nPING\n").await.unwrap();
        let mut lines = BufReader::new(r).lines();
        let first = lines.next_line().await.unwrap().unwrap();
        let second = lines.next_line().await.unwrap().unwrap();
        assert!(first.starts_with("PONG t"), "{first}");
        assert_eq!(first, second, "one connection stays on one endpoint");
        seen.insert(first);
    }
    assert_eq!(seen.len(), 2, "connections are balanced over both endpoints: {seen:?}");
    proxy.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_one_of_three_backends_loses_no_request() {
    let mut backends: Vec<Backend> = ["k1", "k2", "k3"].iter().map(|id| Backend::start(id)).collect();
    let reg = registry_with(&backends.iter().collect::<Vec<_>>());
    let mut cfg = config();
    cfg.eject_after_failures = 2;
    let proxy = start(&reg, cfg);
    let url = format!("http://{}/k", proxy.http_addr().unwrap());
    let c = client();
    let total = 2000;
    let concurrency = 8;
    let done = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut failures = Vec::new();
    let mut tasks = Vec::new();
    for w in 0..concurrency {
        let (c, url, done) = (c.clone(), url.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            let mut errors = Vec::new();
            for i in 0..total / concurrency {
                match c.get(&url).send().await {
                    Ok(r) if r.status() == 200 => {
                        let _ = r.text().await;
                    }
                    Ok(r) => errors.push(format!("worker {w} req {i}: status {}", r.status())),
                    Err(e) => errors.push(format!("worker {w} req {i}: {e}")),
                }
                done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            errors
        }));
    }
    test_support::wait_until("500 requests done", Duration::from_secs(60), async || {
        done.load(std::sync::atomic::Ordering::Relaxed) >= 500
    })
    .await;
    backends[1].kill();
    for t in tasks {
        failures.extend(t.await.unwrap());
    }
    assert!(failures.is_empty(), "{} client-visible errors: {:?}", failures.len(), &failures[..failures.len().min(5)]);
    // A request is counted when pingora logs it, just after the client has its response.
    let counted = || proxy.service_stats("default", "web").unwrap().requests_total;
    test_support::wait_until("every request counted", Duration::from_secs(10), async || counted() >= total as u64)
        .await;
    assert_eq!(counted(), total as u64);
    eprintln!("ejected after kill: {:?}", proxy.ejected_endpoints());
    proxy.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_active_health_check_takes_a_failing_endpoint_out_and_back() {
    let good = Backend::start("good");
    let bad = Backend::start_with_status("bad", 503);
    let reg = registry_with(&[&good, &bad]);
    let mut cfg = config();
    cfg.eject_after_failures = 1_000_000; // passive ejection out of the way: this is the active check
    let proxy = start(&reg, cfg);
    let url = format!("http://{}/h", proxy.http_addr().unwrap());
    let c = client();
    let ids = |n: usize| {
        let (c, url) = (c.clone(), url.clone());
        async move {
            let mut ids = Vec::new();
            for _ in 0..n {
                let body = c.get(&url).send().await.unwrap().text().await.unwrap();
                ids.push(id_of(&body).to_string());
            }
            ids
        }
    };
    // Round robin without a check: the 503 endpoint gets its share.
    let Object::Service(svc) = service("web") else { unreachable!("service() builds a Service") };
    let plain = Service { balance: BalancePolicy::RoundRobin, ..Service::clone(&*svc) };
    reg.put(Object::Service(Arc::new(plain.clone())));
    let rev = reg.snapshot().revision();
    assert!(proxy.wait_applied(rev, Duration::from_secs(10)).await);
    assert!(ids(10).await.iter().any(|id| id == "bad"), "no check yet: both endpoints serve");

    // A check added to the running proxy's Service: the failing endpoint goes out after 2 failed probes.
    let check = HealthCheck {
        http_path: Some("/healthz".into()),
        interval_ms: 50,
        timeout_ms: 500,
        healthy_threshold: 1,
        unhealthy_threshold: 2,
    };
    reg.put(Object::Service(Arc::new(Service { health_check: Some(check), ..plain.clone() })));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let seen = ids(10).await;
        if seen.iter().all(|id| id == "good") {
            break;
        }
        assert!(Instant::now() < deadline, "the failing endpoint is still served: {seen:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The check removed: the endpoint's last state stands no longer once the pool is rebuilt without it.
    reg.put(Object::Service(Arc::new(plain)));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ids(10).await.iter().any(|id| id == "bad") {
        assert!(Instant::now() < deadline, "without a check both endpoints serve again");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_an_endpoint_lets_its_in_flight_requests_finish() {
    let old = Backend::start("old");
    let new = Backend::start("new");
    let reg = registry_with(&[&old]);
    let proxy = start(&reg, config());
    let url = format!("http://{}/slow?sleep_ms=1500", proxy.http_addr().unwrap());
    let c = client();
    let slow: Vec<_> = (0..50)
        .map(|_| {
            let (c, url) = (c.clone(), url.clone());
            tokio::spawn(async move {
                let r = c.get(&url).send().await?;
                let status = r.status();
                Ok::<_, reqwest::Error>((status, r.text().await?))
            })
        })
        .collect();
    test_support::wait_until("50 requests in flight", Duration::from_secs(20), async || {
        proxy.service_stats("default", "web").is_some_and(|s| s.in_flight == 50)
    })
    .await;
    // Replace: the new endpoint appears, the old one is first marked terminating, then removed.
    reg.put(Object::Endpoint(Arc::new(endpoint("web", "new", new.addr))));
    let mut terminating = endpoint("web", "old", old.addr);
    terminating.terminating = true;
    terminating.ready = false;
    let rev = reg.put(Object::Endpoint(Arc::new(terminating)));
    assert!(proxy.wait_applied(rev, Duration::from_secs(5)).await);
    let r = c.get(format!("http://{}/after", proxy.http_addr().unwrap())).send().await.unwrap();
    assert!(r.text().await.unwrap().starts_with("id=new"), "new requests avoid the terminating endpoint");
    let rev = reg.delete(&endpoint_key("old")).unwrap();
    assert!(proxy.wait_applied(rev, Duration::from_secs(5)).await);
    for t in slow {
        let (status, body) = t.await.unwrap().expect("in-flight request completes");
        assert_eq!(status, 200);
        assert!(body.starts_with("id=old"), "{body}");
    }
    proxy.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_added_is_used_by_the_next_request() {
    let a = Backend::start("a");
    let reg = Arc::new(discovery::Registry::new());
    reg.put(service("web"));
    reg.put(route("all", &[], vec![rule("/", "web")]));
    let proxy = start(&reg, config());
    let url = format!("http://{}/", proxy.http_addr().unwrap());
    let c = client();
    assert_eq!(c.get(&url).send().await.unwrap().status(), 503, "no endpoint yet");
    let mut apply_us = Vec::new();
    let mut routed_us = Vec::new();
    for i in 0..200 {
        let t0 = Instant::now();
        let rev = reg.put(Object::Endpoint(Arc::new(endpoint("web", "a", a.addr))));
        // Applied: the table swap (what the next request sees).
        while proxy.applied_revision() < rev {
            std::hint::spin_loop();
        }
        apply_us.push(t0.elapsed().as_micros() as u64);
        let r = c.get(&url).send().await.unwrap();
        assert_eq!(r.status(), 200, "iteration {i}: the next request uses the new endpoint");
        routed_us.push(t0.elapsed().as_micros() as u64);
        let rev = reg.delete(&endpoint_key("a")).unwrap();
        assert!(proxy.wait_applied(rev, Duration::from_secs(5)).await);
    }
    apply_us.sort_unstable();
    routed_us.sort_unstable();
    let p = |v: &[u64], q: f64| v[((v.len() as f64 * q) as usize).min(v.len() - 1)];
    eprintln!(
        "registry write -> table applied: p50 {} us, p99 {} us; -> first request answered by it: p50 {} us, p99 {} us",
        p(&apply_us, 0.5),
        p(&apply_us, 0.99),
        p(&routed_us, 0.5),
        p(&routed_us, 0.99)
    );
    // Timing is only printed here (debug build, tests in parallel on shared cores); the release measurement is
    // `berth-proxy-bench propagation`. Correctness (the very next request uses the endpoint) is asserted above.
    proxy.stop();
}

/// A static proxy file: one listener on `port`, every path to `backend`.
fn static_config(port: u16, backend: &Backend) -> String {
    format!(
        "proxy: {{httpListen: [\"127.0.0.1:{port}\"]}}\nservices:\n  - name: web\n    endpoints: [\"{}\"]\nroutes:\n  - {{namespace: default, name: all, rules: [{{path: {{prefix: /}}, backend: {{service: web}}}}]}}\n",
        backend.addr
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_file_is_served_and_reloaded() {
    let a = Backend::start("sa");
    let b = Backend::start("sb");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("proxy.yaml");
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let write = |backend: &Backend| std::fs::write(&path, static_config(port, backend)).unwrap();
    write(&a);
    let (proxy, _reloader) = proxy::static_config::start(&path).expect("static proxy starts");
    let url = format!("http://127.0.0.1:{port}/");
    let c = client();
    let body = c.get(&url).send().await.unwrap().text().await.unwrap();
    assert_eq!(id_of(&body), "sa");
    write(&b);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let body = c.get(&url).send().await.unwrap().text().await.unwrap();
        if id_of(&body) == "sb" {
            break;
        }
        assert!(Instant::now() < deadline, "reload not applied: {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(proxy);
}

/// An edit that keeps the file's modification time (a truncating save and its rewrite within one timestamp
/// tick look like that to a poll in between) is still picked up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_file_rewritten_within_one_mtime_tick_is_reloaded() {
    let a = Backend::start("ta");
    let b = Backend::start("tb");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("proxy.yaml");
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let text = |backend: &Backend| static_config(port, backend);
    std::fs::write(&path, text(&a)).unwrap();
    let mtime = std::fs::metadata(&path).unwrap().modified().unwrap();
    let (proxy, _reloader) = proxy::static_config::start(&path).expect("static proxy starts");
    let url = format!("http://127.0.0.1:{port}/");
    let c = client();
    assert_eq!(id_of(&c.get(&url).send().await.unwrap().text().await.unwrap()), "ta");
    std::fs::write(&path, text(&b)).unwrap();
    std::fs::File::options().write(true).open(&path).unwrap().set_modified(mtime).unwrap();
    assert_eq!(std::fs::metadata(&path).unwrap().modified().unwrap(), mtime);
    test_support::eventually("the rewritten file in force", Duration::from_secs(10), async || {
        let body = c.get(&url).send().await.ok()?.text().await.ok()?;
        (id_of(&body) == "tb").then_some(())
    })
    .await;
    drop(proxy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_to_an_empty_service_are_held_until_an_endpoint_appears() {
    let a = Backend::start("a");
    let reg = Arc::new(discovery::Registry::new());
    reg.put(service("web"));
    reg.put(route("all", &[], vec![rule("/", "web")]));
    let mut cfg = config();
    cfg.hold_max_requests = 3;
    cfg.hold_timeout_ms = 20_000;
    let proxy = Arc::new(start(&reg, cfg));
    let url = format!("http://{}/", proxy.http_addr().unwrap());
    let c = client();
    let held: Vec<_> = (0..3)
        .map(|_| {
            let (c, url) = (c.clone(), url.clone());
            tokio::spawn(async move { c.get(&url).send().await.map(|r| r.status().as_u16()) })
        })
        .collect();
    test_support::wait_until("3 requests held as demand", Duration::from_secs(10), async || {
        proxy.service_stats("default", "web").is_some_and(|s| s.waiting == 3)
    })
    .await;
    // The queue is full: the next one is refused at once.
    assert_eq!(c.get(&url).send().await.unwrap().status(), 503, "beyond the hold bound");
    let t0 = Instant::now();
    reg.put(Object::Endpoint(Arc::new(endpoint("web", "a", a.addr))));
    for h in held {
        assert_eq!(h.await.unwrap().unwrap(), 200, "a held request is served once an endpoint is ready");
    }
    eprintln!("held requests answered {} us after the endpoint appeared", t0.elapsed().as_micros());
    assert_eq!(proxy.service_stats("default", "web").unwrap().waiting, 0);
    if let Ok(p) = Arc::try_unwrap(proxy) {
        p.stop();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_request_gets_503_after_the_hold_timeout() {
    let reg = Arc::new(discovery::Registry::new());
    reg.put(service("web"));
    reg.put(route("all", &[], vec![rule("/", "web")]));
    let mut cfg = config();
    cfg.hold_max_requests = 10;
    cfg.hold_timeout_ms = 300;
    let proxy = start(&reg, cfg);
    let t0 = Instant::now();
    let r = client().get(format!("http://{}/", proxy.http_addr().unwrap())).send().await.unwrap();
    assert_eq!(r.status(), 503);
    assert!(t0.elapsed() >= Duration::from_millis(300), "waited the hold timeout: {:?}", t0.elapsed());
    assert_eq!(proxy.service_stats("default", "web").unwrap().waiting, 0);
    proxy.stop();
}
