//! DNS server tests: with the real `dig` (skipped with a reason when it is absent, unless
//! `BERTH_REQUIRE_ALL=1`), in-process with hickory-proto as the client, and a fuzz run whose length is
//! `BERTH_FUZZ_SECS` (default: 2 s).

use discovery::dns::{bind_udp, DnsConfig, DnsServer};
use discovery::{
    Endpoint, EndpointPort, Labels, Object, ObjectKey, ObjectKind, Protocol, Registry, Selector, Service, ServicePort,
    TargetPort,
};
use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{DNSClass, Name, RData, RecordType};
use proptest::prelude::*;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

// ---------- fixtures ----------

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn endpoint(ns: &str, name: &str, ip: &str, port: u16, l: &[(&str, &str)]) -> Endpoint {
    Endpoint {
        namespace: ns.into(),
        name: name.into(),
        address: ip.parse().unwrap(),
        ports: vec![EndpointPort { name: Some("http".into()), port, protocol: Protocol::Tcp }],
        labels: labels(l),
        ready: true,
        serving: true,
        terminating: false,
        node: None,
        zone: None,
        weight: 100,
    }
}

fn service(ns: &str, name: &str, selector: &[(&str, &str)], vip: Option<&str>) -> Service {
    Service {
        namespace: ns.into(),
        name: name.into(),
        labels: Labels::new(),
        selector: Selector::from_labels(&labels(selector)),
        ports: vec![ServicePort {
            name: Some("http".into()),
            port: 80,
            target_port: TargetPort::Name("http".into()),
            protocol: Protocol::Tcp,
        }],
        balance: Default::default(),
        virtual_ip: vip.map(|v| v.parse().unwrap()),
        health_check: None,
        retry_on_statuses: Vec::new(),
    }
}

fn put_ep(r: &Registry, e: Endpoint) {
    r.put(Object::Endpoint(Arc::new(e)));
}

/// web (3 endpoints, one IPv6), vip (virtual IP), big (200 endpoints), labels on web's endpoints.
fn fixture() -> Arc<Registry> {
    let r = Arc::new(Registry::new());
    r.put(Object::Service(Arc::new(service("default", "web", &[("app", "web")], None))));
    r.put(Object::Service(Arc::new(service("default", "vip", &[("app", "web")], Some("10.96.0.10")))));
    r.put(Object::Service(Arc::new(service("default", "big", &[("app", "big")], None))));
    let web_labels = [("app", "web"), ("tier", "frontend"), ("app.kubernetes.io/name", "web")];
    put_ep(&r, endpoint("default", "web-0", "10.0.0.1", 8080, &web_labels));
    put_ep(&r, endpoint("default", "web-1", "10.0.0.2", 8081, &web_labels));
    put_ep(&r, endpoint("default", "web-2", "fd00::3", 8082, &web_labels));
    for i in 0..200u16 {
        let ip = format!("10.1.{}.{}", i / 250, i % 250 + 1);
        put_ep(&r, endpoint("default", &format!("big-{i}"), &ip, 9000, &[("app", "big")]));
    }
    // Same label in another namespace: must not leak into default's label lookup.
    put_ep(&r, endpoint("other", "web-x", "10.9.9.9", 8080, &[("tier", "frontend")]));
    r
}

struct Running {
    addr: SocketAddr,
    server: DnsServer,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Running {
    async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(10), t).await.expect("server stops").expect("server task");
        }
    }
}

/// Start a server with UDP and TCP on the same loopback port (dig uses one `-p` for both).
async fn start(registry: Arc<Registry>, config: DnsConfig) -> Running {
    let (udp, tcp) = discovery::dns::bind("127.0.0.1:0".parse().unwrap(), 1).await.expect("bind UDP and TCP");
    let addr = udp[0].local_addr().unwrap();
    let server = DnsServer::new(config, registry).expect("server");
    let (tx, rx) = oneshot::channel();
    let s = server.clone();
    let task = tokio::spawn(async move {
        s.serve(udp, tcp, async {
            let _ = rx.await;
        })
        .await
        .expect("serve");
    });
    Running { addr, server, stop: Some(tx), task: Some(task) }
}

// ---------- a hickory-proto client ----------

fn query_bytes(name: &str, rtype: RecordType, edns: Option<u16>) -> Vec<u8> {
    let mut m = Message::new(0x4242, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), rtype));
    if let Some(size) = edns {
        let mut e = Edns::new();
        e.set_max_payload(size);
        m.set_edns(e);
    }
    m.to_vec().unwrap()
}

fn udp_exchange(addr: SocketAddr, packet: &[u8]) -> Option<Vec<u8>> {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    s.send_to(packet, addr).unwrap();
    let mut buf = vec![0u8; 65535];
    let n = s.recv(&mut buf).ok()?;
    buf.truncate(n);
    Some(buf)
}

fn udp_query(addr: SocketAddr, name: &str, rtype: RecordType, edns: Option<u16>) -> Message {
    let reply = udp_exchange(addr, &query_bytes(name, rtype, edns)).expect("an answer");
    Message::from_vec(&reply).expect("a decodable answer")
}

fn tcp_query(addr: SocketAddr, name: &str, rtype: RecordType) -> Message {
    use std::io::{Read, Write};
    let q = query_bytes(name, rtype, None);
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let mut frame = (q.len() as u16).to_be_bytes().to_vec();
    frame.extend_from_slice(&q);
    s.write_all(&frame).unwrap();
    let mut len = [0u8; 2];
    s.read_exact(&mut len).unwrap();
    let mut buf = vec![0u8; u16::from_be_bytes(len) as usize];
    s.read_exact(&mut buf).unwrap();
    Message::from_vec(&buf).unwrap()
}

fn addresses(m: &Message) -> Vec<IpAddr> {
    let mut v: Vec<IpAddr> = m
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            RData::AAAA(a) => Some(IpAddr::V6(a.0)),
            _ => None,
        })
        .collect();
    v.sort();
    v
}

fn ips(list: &[&str]) -> Vec<IpAddr> {
    let mut v: Vec<IpAddr> = list.iter().map(|s| s.parse().unwrap()).collect();
    v.sort();
    v
}

// ---------- dig ----------

#[derive(Debug, Default)]
struct Dig {
    status: String,
    flags: Vec<String>,
    answer: Vec<Vec<String>>,
    authority: Vec<Vec<String>>,
    additional: Vec<Vec<String>>,
}

impl Dig {
    fn rdata(&self, rtype: &str) -> Vec<String> {
        let mut v: Vec<String> = self
            .answer
            .iter()
            .filter(|r| r.get(3).map(String::as_str) == Some(rtype))
            .map(|r| r[4..].join(" "))
            .collect();
        v.sort();
        v
    }
}

async fn dig(addr: SocketAddr, args: &[&str]) -> Dig {
    let out = tokio::process::Command::new("dig")
        .arg(format!("@{}", addr.ip()))
        .arg("-p")
        .arg(addr.port().to_string())
        .args(["+time=3", "+tries=1", "+norecurse"])
        .args(args)
        .output()
        .await
        .expect("dig runs");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let mut d = Dig::default();
    let mut section = "";
    for line in text.lines() {
        if let Some(rest) = line.split("status: ").nth(1) {
            d.status = rest.split(',').next().unwrap_or("").trim().to_string();
        } else if let Some(rest) = line.strip_prefix(";; flags: ") {
            d.flags = rest.split(';').next().unwrap_or("").split_whitespace().map(String::from).collect();
        } else if line.starts_with(";; ANSWER SECTION") {
            section = "answer";
        } else if line.starts_with(";; AUTHORITY SECTION") {
            section = "authority";
        } else if line.starts_with(";; ADDITIONAL SECTION") {
            section = "additional";
        } else if line.trim().is_empty() || line.starts_with(';') {
            if line.trim().is_empty() {
                section = "";
            }
        } else {
            let fields: Vec<String> = line.split_whitespace().map(String::from).collect();
            match section {
                "answer" => d.answer.push(fields),
                "authority" => d.authority.push(fields),
                "additional" => d.additional.push(fields),
                _ => {}
            }
        }
    }
    assert!(!d.status.is_empty(), "dig printed no status:\n{text}\n{}", String::from_utf8_lossy(&out.stderr));
    d
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dig_answers_every_name_form() {
    if !test_support::require_tool("dig", "DNS tests with a real client") {
        return;
    }
    let r = fixture();
    let srv = start(r.clone(), DnsConfig::default()).await;
    let a = srv.addr;

    // A and AAAA of a service.
    let d = dig(a, &["web.default.svc.cluster.local", "A"]).await;
    assert_eq!(d.status, "NOERROR");
    assert!(d.flags.contains(&"aa".to_string()), "{d:?}");
    assert_eq!(d.rdata("A"), vec!["10.0.0.1", "10.0.0.2"]);
    assert_eq!(d.answer[0][1], "5", "default TTL is 5 s");
    let d = dig(a, &["web.default.svc.cluster.local", "AAAA"]).await;
    assert_eq!(d.rdata("AAAA"), vec!["fd00::3"]);

    // Virtual IP.
    let d = dig(a, &["vip.default.svc.cluster.local", "A"]).await;
    assert_eq!(d.rdata("A"), vec!["10.96.0.10"]);

    // SRV with targets and glue.
    let d = dig(a, &["_http._tcp.web.default.svc.cluster.local", "SRV"]).await;
    assert_eq!(d.status, "NOERROR");
    assert_eq!(
        d.rdata("SRV"),
        vec![
            "0 100 8080 web-0.web.default.svc.cluster.local.",
            "0 100 8081 web-1.web.default.svc.cluster.local.",
            "0 100 8082 web-2.web.default.svc.cluster.local.",
        ]
    );
    let mut glue: Vec<String> =
        d.additional.iter().filter(|r| r[3] == "A" || r[3] == "AAAA").map(|r| format!("{} {}", r[0], r[4])).collect();
    glue.sort();
    assert_eq!(
        glue,
        vec![
            "web-0.web.default.svc.cluster.local. 10.0.0.1",
            "web-1.web.default.svc.cluster.local. 10.0.0.2",
            "web-2.web.default.svc.cluster.local. fd00::3",
        ]
    );

    // Headless per-endpoint name.
    let d = dig(a, &["web-1.web.default.svc.cluster.local", "A"]).await;
    assert_eq!(d.rdata("A"), vec!["10.0.0.2"]);

    // Label lookups: a plain key, and a key with dots and a slash (escaped dots in presentation form).
    let d = dig(a, &["frontend.tier.default.label.cluster.local", "A"]).await;
    assert_eq!(d.rdata("A"), vec!["10.0.0.1", "10.0.0.2"]);
    let d = dig(a, &["web.app\\.kubernetes\\.io/name.default.label.cluster.local", "A"]).await;
    assert_eq!(d.status, "NOERROR");
    assert_eq!(d.rdata("A"), vec!["10.0.0.1", "10.0.0.2"]);
    let d = dig(a, &["frontend.tier.other.label.cluster.local", "A"]).await;
    assert_eq!(d.rdata("A"), vec!["10.9.9.9"]);

    // NXDOMAIN with the SOA in authority.
    let d = dig(a, &["nope.default.svc.cluster.local", "A"]).await;
    assert_eq!(d.status, "NXDOMAIN");
    assert!(d.answer.is_empty());
    assert_eq!(d.authority.len(), 1);
    assert_eq!(d.authority[0][3], "SOA");
    assert_eq!(d.authority[0][0], "cluster.local.");

    // NODATA: the name exists, the type does not.
    let d = dig(a, &["web.default.svc.cluster.local", "TXT"]).await;
    assert_eq!(d.status, "NOERROR");
    assert!(d.answer.is_empty());
    assert_eq!(d.authority[0][3], "SOA");
    // Empty non-terminal: NODATA, not NXDOMAIN.
    let d = dig(a, &["default.svc.cluster.local", "A"]).await;
    assert_eq!(d.status, "NOERROR");

    // Apex SOA and NS.
    let d = dig(a, &["cluster.local", "SOA"]).await;
    assert_eq!(d.rdata("SOA").len(), 1);
    let d = dig(a, &["cluster.local", "NS"]).await;
    assert_eq!(d.rdata("NS"), vec!["ns.dns.cluster.local."]);

    // REFUSED outside the zone without an upstream.
    let d = dig(a, &["example.com", "A"]).await;
    assert_eq!(d.status, "REFUSED");

    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dig_truncates_over_udp_and_gets_the_full_answer_over_tcp() {
    if !test_support::require_tool("dig", "DNS tests with a real client") {
        return;
    }
    let srv = start(fixture(), DnsConfig::default()).await;
    let d = dig(srv.addr, &["+ignore", "+bufsize=1232", "big.default.svc.cluster.local", "A"]).await;
    assert!(d.flags.contains(&"tc".to_string()), "expected TC over UDP: {d:?}");
    let d = dig(srv.addr, &["+ignore", "+noedns", "big.default.svc.cluster.local", "A"]).await;
    assert!(d.flags.contains(&"tc".to_string()), "expected TC within 512 bytes: {d:?}");
    let d = dig(srv.addr, &["+tcp", "big.default.svc.cluster.local", "A"]).await;
    assert!(!d.flags.contains(&"tc".to_string()));
    assert_eq!(d.rdata("A").len(), 200);
    // Plain dig retries over TCP by itself after TC.
    let d = dig(srv.addr, &["big.default.svc.cluster.local", "A"]).await;
    assert_eq!(d.rdata("A").len(), 200);
    let d = dig(srv.addr, &["+tcp", "_http._tcp.big.default.svc.cluster.local", "SRV"]).await;
    assert_eq!(d.rdata("SRV").len(), 200);
    assert_eq!(d.additional.iter().filter(|r| r[3] == "A").count(), 200);
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dig_sees_an_unready_endpoint_disappear_at_once() {
    if !test_support::require_tool("dig", "DNS tests with a real client") {
        return;
    }
    let r = fixture();
    let srv = start(r.clone(), DnsConfig::default()).await;
    let name = "web.default.svc.cluster.local";
    assert_eq!(dig(srv.addr, &[name, "A"]).await.rdata("A"), vec!["10.0.0.1", "10.0.0.2"]);

    let mut e = endpoint("default", "web-0", "10.0.0.1", 8080, &[("app", "web"), ("tier", "frontend")]);
    e.ready = false;
    put_ep(&r, e);
    // No sleep: the next query must already reflect the change.
    assert_eq!(dig(srv.addr, &[name, "A"]).await.rdata("A"), vec!["10.0.0.2"]);
    let d = dig(srv.addr, &["web-0.web.default.svc.cluster.local", "A"]).await;
    assert_eq!(d.status, "NXDOMAIN");
    let d = dig(srv.addr, &["_http._tcp.web.default.svc.cluster.local", "SRV"]).await;
    assert_eq!(d.rdata("SRV").len(), 2);

    // Deleting and re-adding works the same way.
    r.delete(&ObjectKey { kind: ObjectKind::Endpoint, namespace: "default".into(), name: "web-1".into() });
    assert_eq!(dig(srv.addr, &[name, "A"]).await.rdata("A"), Vec::<String>::new());
    put_ep(&r, endpoint("default", "web-9", "10.0.0.99", 8080, &[("app", "web")]));
    assert_eq!(dig(srv.addr, &[name, "A"]).await.rdata("A"), vec!["10.0.0.99"]);
    srv.stop().await;
}

/// A tiny upstream: answers any A query with 192.0.2.1.
async fn upstream() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let s = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = s.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        for _ in 0..1000 {
            let Ok((n, from)) = s.recv_from(&mut buf).await else {
                return;
            };
            let Ok(q) = Message::from_vec(&buf[..n]) else {
                continue;
            };
            let mut m = Message::response(q.metadata.id, OpCode::Query);
            m.metadata.recursion_available = true;
            m.add_queries(q.queries.clone());
            if let Some(query) = q.queries.first() {
                m.add_answer(hickory_proto::rr::Record::from_rdata(
                    query.name().clone(),
                    60,
                    RData::A(hickory_proto::rr::rdata::A(Ipv4Addr::new(192, 0, 2, 1))),
                ));
            }
            let _ = s.send_to(&m.to_vec().unwrap(), from).await;
        }
    });
    (addr, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dig_forwards_outside_names_to_the_upstream() {
    if !test_support::require_tool("dig", "DNS tests with a real client") {
        return;
    }
    let (up, up_task) = upstream().await;
    let config = DnsConfig { upstream: Some(up), ..DnsConfig::default() };
    let srv = start(fixture(), config).await;
    let d = dig(srv.addr, &["www.example.com", "A"]).await;
    assert_eq!(d.status, "NOERROR");
    assert_eq!(d.rdata("A"), vec!["192.0.2.1"]);
    let d = dig(srv.addr, &["+tcp", "www.example.com", "A"]).await;
    assert_eq!(d.rdata("A"), vec!["192.0.2.1"]);
    // The zone is still answered locally.
    let d = dig(srv.addr, &["web.default.svc.cluster.local", "A"]).await;
    assert_eq!(d.rdata("A"), vec!["10.0.0.1", "10.0.0.2"]);
    let metrics = srv.server.metrics();
    assert!(metrics.contains("berth_dns_queries_total{qtype=\"A\",rcode=\"NOERROR\"}"), "{metrics}");
    srv.stop().await;
    up_task.abort();
}

// ---------- in-process (no dig) ----------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_and_tcp_answers_decode() {
    let r = fixture();
    let srv = start(r.clone(), DnsConfig { ttl: Duration::ZERO, ..DnsConfig::default() }).await;
    let a = srv.addr;
    let m = udp_query(a, "web.default.svc.cluster.local.", RecordType::A, None);
    assert_eq!(m.metadata.id, 0x4242);
    assert!(m.metadata.recursion_desired && m.metadata.authoritative);
    assert!(m.edns.is_none());
    assert_eq!(addresses(&m), ips(&["10.0.0.1", "10.0.0.2"]));
    assert_eq!(m.answers[0].ttl, 0, "TTL 0 is allowed");

    // EDNS is echoed.
    let m = udp_query(a, "web.default.svc.cluster.local.", RecordType::A, Some(4096));
    assert_eq!(m.edns.as_ref().map(|e| e.max_payload()), Some(1232));

    // The question's letter case is echoed.
    let m = udp_query(a, "WeB.DeFault.SVC.cluster.LOCAL.", RecordType::A, None);
    assert_eq!(m.queries[0].name().to_ascii(), "WeB.DeFault.SVC.cluster.LOCAL.");
    assert_eq!(addresses(&m).len(), 2);

    // Large answers: TC over UDP within the advertised size; full over TCP.
    let m = udp_query(a, "big.default.svc.cluster.local.", RecordType::A, Some(1232));
    assert!(m.metadata.truncation && m.answers.is_empty());
    // hickory compresses at most 120 names per message, so 200 records need more than 4 KiB.
    let m = udp_query(a, "big.default.svc.cluster.local.", RecordType::A, Some(65000));
    assert!(!m.metadata.truncation);
    assert_eq!(m.answers.len(), 200);
    let m = tcp_query(a, "big.default.svc.cluster.local.", RecordType::A);
    assert_eq!(m.answers.len(), 200);
    let m = tcp_query(a, "_http._tcp.big.default.svc.cluster.local.", RecordType::SRV);
    assert_eq!(m.answers.len(), 200);
    assert_eq!(m.additionals.len(), 200);

    // NXDOMAIN / NODATA / REFUSED / NOTIMP.
    let m = udp_query(a, "missing.default.svc.cluster.local.", RecordType::A, None);
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    assert!(matches!(m.authorities[0].data, RData::SOA(_)));
    let m = udp_query(a, "web.default.svc.cluster.local.", RecordType::MX, Some(1232));
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert!(m.answers.is_empty() && m.edns.is_some());
    let m = udp_query(a, "example.org.", RecordType::A, None);
    assert_eq!(m.metadata.response_code, ResponseCode::Refused);
    let mut notify = Message::new(7, MessageType::Query, OpCode::Notify);
    notify.add_query(Query::query(Name::from_str("cluster.local.").unwrap(), RecordType::SOA));
    let reply = Message::from_vec(&udp_exchange(a, &notify.to_vec().unwrap()).unwrap()).unwrap();
    assert_eq!(reply.metadata.response_code, ResponseCode::NotImp);

    // Changes are visible to the very next query (no sleep).
    let mut e = endpoint("default", "web-1", "10.0.0.2", 8081, &[("app", "web")]);
    e.terminating = true;
    put_ep(&r, e);
    let m = udp_query(a, "web.default.svc.cluster.local.", RecordType::A, None);
    assert_eq!(addresses(&m), ips(&["10.0.0.1"]));
    let m = udp_query(a, "frontend.tier.default.label.cluster.local.", RecordType::A, None);
    assert_eq!(addresses(&m), ips(&["10.0.0.1"]));
    // A new service appears with its names.
    r.put(Object::Service(Arc::new(service("prod", "api", &[("app", "api")], None))));
    put_ep(&r, endpoint("prod", "api-0", "10.2.0.1", 7000, &[("app", "api")]));
    let m = udp_query(a, "api.prod.svc.cluster.local.", RecordType::A, None);
    assert_eq!(addresses(&m), ips(&["10.2.0.1"]));
    // And disappears with them.
    r.delete(&ObjectKey { kind: ObjectKind::Service, namespace: "prod".into(), name: "api".into() });
    let m = udp_query(a, "api.prod.svc.cluster.local.", RecordType::A, None);
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    let m = udp_query(a, "prod.svc.cluster.local.", RecordType::A, None);
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain, "no empty non-terminal is left behind");

    let metrics = srv.server.metrics();
    assert!(metrics.contains("berth_dns_queries_total{qtype=\"A\",rcode=\"NXDOMAIN\"}"), "{metrics}");
    assert!(metrics.contains("berth_dns_answer_latency_seconds{quantile=\"0.99\"}"), "{metrics}");
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_reuseport_sockets_and_workers_answer() {
    let udp = bind_udp("127.0.0.1:0".parse().unwrap(), 2).unwrap();
    let addr = udp[0].local_addr().unwrap();
    assert_eq!(udp[1].local_addr().unwrap(), addr);
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server = DnsServer::new(DnsConfig { udp_workers: 2, ..DnsConfig::default() }, fixture()).unwrap();
    let (tx, rx) = oneshot::channel::<()>();
    let s = server.clone();
    let task = tokio::spawn(async move {
        s.serve(udp, tcp, async {
            let _ = rx.await;
        })
        .await
    });
    for _ in 0..50 {
        let m = udp_query(addr, "web.default.svc.cluster.local.", RecordType::A, None);
        assert_eq!(addresses(&m).len(), 2);
    }
    let _ = tx.send(());
    tokio::time::timeout(Duration::from_secs(10), task).await.unwrap().unwrap().unwrap();
}

#[test]
fn bad_config_is_an_error() {
    let r = Arc::new(Registry::new());
    assert!(DnsServer::new(DnsConfig { zone: ".".into(), ..DnsConfig::default() }, r.clone()).is_err());
    assert!(DnsServer::new(DnsConfig { zone: "a..b".into(), ..DnsConfig::default() }, r).is_err());
}

#[test]
fn malformed_packets_get_formerr_or_nothing() {
    let server = DnsServer::new(DnsConfig::default(), fixture()).unwrap();
    // Too short for a header: dropped.
    assert!(server.handle_packet(&[], false).is_none());
    assert!(server.handle_packet(&[1, 2, 3], false).is_none());
    // A header claiming a question that is not there: FORMERR with the same ID.
    let reply = server.handle_packet(&[0xab, 0xcd, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0], false).unwrap();
    let m = Message::from_vec(&reply).unwrap();
    assert_eq!((m.metadata.id, m.metadata.response_code), (0xabcd, ResponseCode::FormErr));
    // A response is never answered.
    let mut resp = Message::response(1, OpCode::Query);
    resp.add_query(Query::query(Name::from_str("web.default.svc.cluster.local.").unwrap(), RecordType::A));
    assert!(server.handle_packet(&resp.to_vec().unwrap(), false).is_none());
    // Two questions: FORMERR.
    let mut two = Message::new(5, MessageType::Query, OpCode::Query);
    two.add_query(Query::query(Name::from_str("a.cluster.local.").unwrap(), RecordType::A));
    two.add_query(Query::query(Name::from_str("b.cluster.local.").unwrap(), RecordType::A));
    let m = Message::from_vec(&server.handle_packet(&two.to_vec().unwrap(), false).unwrap()).unwrap();
    assert_eq!(m.metadata.response_code, ResponseCode::FormErr);
    // EDNS version 1: BADVERS.
    let mut v1 = Message::new(6, MessageType::Query, OpCode::Query);
    v1.add_query(Query::query(Name::from_str("web.default.svc.cluster.local.").unwrap(), RecordType::A));
    let mut e = Edns::new();
    e.set_version(1);
    v1.set_edns(e);
    let m = Message::from_vec(&server.handle_packet(&v1.to_vec().unwrap(), false).unwrap()).unwrap();
    // 16 is both BADVERS and BADSIG; hickory decodes it as the latter.
    assert_eq!(u16::from(m.metadata.response_code), 16);
    // Class CH: REFUSED.
    let mut ch = Query::query(Name::from_str("version.bind.").unwrap(), RecordType::TXT);
    ch.set_query_class(DNSClass::CH);
    let mut chm = Message::new(8, MessageType::Query, OpCode::Query);
    chm.add_query(ch);
    let m = Message::from_vec(&server.handle_packet(&chm.to_vec().unwrap(), false).unwrap()).unwrap();
    assert_eq!(m.metadata.response_code, ResponseCode::Refused);
}

// ---------- fuzzing ----------

fn corpus() -> Vec<Vec<u8>> {
    vec![
        query_bytes("web.default.svc.cluster.local.", RecordType::A, None),
        query_bytes("web.default.svc.cluster.local.", RecordType::AAAA, Some(1232)),
        query_bytes("_http._tcp.big.default.svc.cluster.local.", RecordType::SRV, Some(4096)),
        query_bytes("frontend.tier.default.label.cluster.local.", RecordType::ANY, None),
        query_bytes("nope.cluster.local.", RecordType::A, Some(512)),
        query_bytes("cluster.local.", RecordType::SOA, None),
        query_bytes("example.com.", RecordType::A, None),
    ]
}

/// xorshift64*: deterministic, seedable, no dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn mutate(rng: &mut Rng, corpus: &[Vec<u8>]) -> Vec<u8> {
    let mut p = corpus[rng.below(corpus.len())].clone();
    for _ in 0..=rng.below(4) {
        match rng.below(7) {
            0 => {
                let i = rng.below(p.len());
                p[i] ^= 1 << rng.below(8);
            }
            1 => {
                let i = rng.below(p.len());
                p[i] = rng.next() as u8;
            }
            2 => p.truncate(rng.below(p.len() + 1)),
            3 => {
                for _ in 0..rng.below(16) {
                    p.push(rng.next() as u8);
                }
            }
            4 => {
                // Header counts are the most interesting bytes.
                let i = 4 + rng.below(8);
                if i < p.len() {
                    p[i] = [0, 1, 2, 0xff][rng.below(4)];
                }
            }
            5 => {
                // A compression pointer somewhere.
                let i = rng.below(p.len());
                if i + 1 < p.len() {
                    p[i] = 0xc0;
                    p[i + 1] = rng.next() as u8;
                }
            }
            _ => p = (0..rng.below(64)).map(|_| rng.next() as u8).collect(),
        }
        if p.is_empty() {
            break;
        }
    }
    p
}

fn check_reply(query: &[u8], reply: Option<Vec<u8>>) {
    if let Some(reply) = reply {
        assert!(reply.len() >= 12, "a reply has a header");
        assert_eq!(&reply[..2], &query[..2], "a reply carries the query's ID");
        assert!(reply.len() <= 65535);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let server = fuzz_server();
        check_reply(&bytes, server.handle_packet(&bytes, false));
        check_reply(&bytes, server.handle_packet(&bytes, true));
    }

    #[test]
    fn mutated_queries_never_panic(seed in any::<u64>()) {
        let server = fuzz_server();
        let mut rng = Rng(seed | 1);
        let p = mutate(&mut rng, &corpus());
        check_reply(&p, server.handle_packet(&p, false));
    }
}

fn fuzz_server() -> &'static DnsServer {
    static SERVER: std::sync::OnceLock<DnsServer> = std::sync::OnceLock::new();
    SERVER.get_or_init(|| DnsServer::new(DnsConfig::default(), fixture()).expect("server"))
}

/// Runs for `BERTH_FUZZ_SECS` seconds (default 2), through the handler and then over real UDP, and checks
/// that a well-formed query is still answered correctly afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fuzz_for_a_duration() {
    let secs: u64 = std::env::var("BERTH_FUZZ_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(2);
    let srv = start(fixture(), DnsConfig::default()).await;
    let corpus = corpus();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let deadline = Instant::now() + Duration::from_secs(secs);
    let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut runs: u64 = 0;
    while Instant::now() < deadline && runs < 200_000_000 {
        let p = mutate(&mut rng, &corpus);
        check_reply(&p, srv.server.handle_packet(&p, rng.below(2) == 0));
        if runs.is_multiple_of(64) && !p.is_empty() {
            // Fire-and-forget over the real socket: the UDP loop must survive it too.
            let _ = sender.send_to(&p, srv.addr);
        }
        if runs.is_multiple_of(100_000) {
            let m = udp_query(srv.addr, "web.default.svc.cluster.local.", RecordType::A, None);
            assert_eq!(addresses(&m).len(), 2);
        }
        runs += 1;
    }
    let m = udp_query(srv.addr, "web.default.svc.cluster.local.", RecordType::A, None);
    assert_eq!(addresses(&m).len(), 2, "still answering after {runs} fuzz inputs");
    let m = tcp_query(srv.addr, "web.default.svc.cluster.local.", RecordType::A);
    assert_eq!(addresses(&m).len(), 2);
    eprintln!("fuzz: {runs} inputs in {secs} s");
    srv.stop().await;
}

// ---------- incremental = full rebuild ----------

#[derive(Debug, Clone)]
enum Op {
    PutService { ns: usize, name: usize, app: usize, vip: bool },
    DeleteService { ns: usize, name: usize },
    PutEndpoint { ns: usize, name: usize, app: usize, tier: usize, ip: u8, ready: bool, terminating: bool },
    DeleteEndpoint { ns: usize, name: usize },
}

const NSS: [&str; 2] = ["default", "Other"];
const SVCS: [&str; 3] = ["web", "api", "Web"];
const EPS: [&str; 4] = ["e0", "e1", "E1", "e2"];
const APPS: [&str; 2] = ["web", "api"];
const TIERS: [&str; 2] = ["front", "Front"];

fn op_strategy() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0..2usize, 0..3usize, 0..2usize, any::<bool>()).prop_map(|(ns, name, app, vip)| Op::PutService {
            ns,
            name,
            app,
            vip
        }),
        (0..2usize, 0..3usize).prop_map(|(ns, name)| Op::DeleteService { ns, name }),
        (0..2usize, 0..4usize, 0..2usize, 0..2usize, 1..4u8, any::<bool>(), any::<bool>()).prop_map(
            |(ns, name, app, tier, ip, ready, terminating)| Op::PutEndpoint {
                ns,
                name,
                app,
                tier,
                ip,
                ready,
                terminating
            }
        ),
        (0..2usize, 0..4usize).prop_map(|(ns, name)| Op::DeleteEndpoint { ns, name }),
    ]
}

fn apply(r: &Registry, op: &Op) {
    match *op {
        Op::PutService { ns, name, app, vip } => {
            let v = vip.then_some("10.96.0.1");
            r.put(Object::Service(Arc::new(service(NSS[ns], SVCS[name], &[("app", APPS[app])], v))));
        }
        Op::DeleteService { ns, name } => {
            r.delete(&ObjectKey { kind: ObjectKind::Service, namespace: NSS[ns].into(), name: SVCS[name].into() });
        }
        Op::PutEndpoint { ns, name, app, tier, ip, ready, terminating } => {
            let mut e = endpoint(
                NSS[ns],
                EPS[name],
                &format!("10.0.0.{ip}"),
                8000 + ip as u16,
                &[("app", APPS[app]), ("tier", TIERS[tier])],
            );
            e.ready = ready;
            e.terminating = terminating;
            put_ep(r, e);
        }
        Op::DeleteEndpoint { ns, name } => {
            r.delete(&ObjectKey { kind: ObjectKind::Endpoint, namespace: NSS[ns].into(), name: EPS[name].into() });
        }
    }
}

fn probe_names() -> Vec<(String, RecordType)> {
    let mut v = vec![("cluster.local.".to_string(), RecordType::SOA), ("svc.cluster.local.".into(), RecordType::A)];
    for ns in ["default", "other"] {
        v.push((format!("{ns}.svc.cluster.local."), RecordType::A));
        v.push((format!("{ns}.label.cluster.local."), RecordType::A));
        v.push((format!("tier.{ns}.label.cluster.local."), RecordType::A));
        v.push((format!("front.tier.{ns}.label.cluster.local."), RecordType::A));
        for app in APPS {
            v.push((format!("{app}.app.{ns}.label.cluster.local."), RecordType::A));
        }
        for svc in ["web", "api"] {
            let base = format!("{svc}.{ns}.svc.cluster.local.");
            v.push((base.clone(), RecordType::A));
            v.push((base.clone(), RecordType::ANY));
            v.push((format!("_tcp.{base}"), RecordType::A));
            v.push((format!("_http._tcp.{base}"), RecordType::SRV));
            for ep in ["e0", "e1", "e2"] {
                v.push((format!("{ep}.{base}"), RecordType::A));
            }
        }
    }
    v
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Following the registry change by change gives byte-identical answers to building from scratch.
    #[test]
    fn incremental_tables_equal_a_full_rebuild(ops in proptest::collection::vec(op_strategy(), 1..40)) {
        let r = Arc::new(Registry::new());
        let following = DnsServer::new(DnsConfig::default(), r.clone()).unwrap();
        for (i, op) in ops.iter().enumerate() {
            apply(&r, op);
            // Query the follower now and then, so it refreshes at several points of the sequence.
            if i % 3 == 0 {
                let _ = following.handle_packet(&query_bytes("web.default.svc.cluster.local.", RecordType::A, None), false);
            }
        }
        let fresh = DnsServer::new(DnsConfig::default(), r.clone()).unwrap();
        for (name, rtype) in probe_names() {
            let q = query_bytes(&name, rtype, None);
            let a = following.handle_packet(&q, true);
            let b = fresh.handle_packet(&q, true);
            prop_assert_eq!(a, b, "{} {:?} after {:?}", name, rtype, ops);
        }
    }
}
