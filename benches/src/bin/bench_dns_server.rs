//! Berth's DNS server over a fixed record set, for `benches/dns/bench.sh`.
//!
//! `bench_dns_server records DIR` writes the same record set as an NSD zone file (`DIR/cluster.local.zone`)
//! and a dnsperf query file (`DIR/queries`); `bench_dns_server serve PORT [THREADS]` fills a registry with
//! it and serves it on 127.0.0.1:PORT (UDP on THREADS `SO_REUSEPORT` sockets, and TCP) until SIGTERM or
//! SIGINT, then prints `p99_us=N`, the server-side answer latency.

use discovery::dns::{bind, DnsConfig, DnsServer};
use discovery::{
    Endpoint, EndpointPort, Labels, Object, Protocol, Registry, Selector, Service, ServicePort, TargetPort,
};
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

const SERVICES: u32 = 20;
const ENDPOINTS: u32 = 3;
const NAMESPACE: &str = "bench";

fn address(s: u32, e: u32) -> Ipv4Addr {
    Ipv4Addr::new(10, 10, s as u8, e as u8 + 1)
}

fn registry() -> Arc<Registry> {
    let r = Arc::new(Registry::new());
    for s in 0..SERVICES {
        let labels: Labels = [("app".to_string(), format!("svc{s}"))].into_iter().collect();
        r.put(Object::Service(Arc::new(Service {
            namespace: NAMESPACE.into(),
            name: format!("svc{s}"),
            labels: Labels::new(),
            selector: Selector::from_labels(&labels),
            ports: vec![ServicePort {
                name: Some("http".into()),
                port: 80,
                target_port: TargetPort::Number(8080),
                protocol: Protocol::Tcp,
            }],
            balance: Default::default(),
            virtual_ip: None,
            health_check: None,
            retry_on_statuses: Vec::new(),
        })));
        for e in 0..ENDPOINTS {
            r.put(Object::Endpoint(Arc::new(Endpoint {
                namespace: NAMESPACE.into(),
                name: format!("ep-{s}-{e}"),
                address: IpAddr::V4(address(s, e)),
                ports: vec![EndpointPort { name: Some("http".into()), port: 8080, protocol: Protocol::Tcp }],
                labels: labels.clone(),
                ready: true,
                serving: true,
                terminating: false,
                node: None,
                zone: None,
                weight: 100,
            })));
        }
    }
    r
}

fn zone_file() -> String {
    let mut z = String::new();
    z.push_str("$ORIGIN cluster.local.\n$TTL 5\n");
    z.push_str("@ IN SOA ns.dns.cluster.local. hostmaster.cluster.local. 1 3600 600 86400 5\n");
    z.push_str("@ IN NS ns.dns.cluster.local.\nns.dns IN A 127.0.0.1\n");
    for s in 0..SERVICES {
        let svc = format!("svc{s}.{NAMESPACE}.svc");
        for e in 0..ENDPOINTS {
            let _ = writeln!(z, "{svc} IN A {}", address(s, e));
            let _ = writeln!(z, "ep-{s}-{e}.{svc} IN A {}", address(s, e));
            let _ = writeln!(z, "_http._tcp.{svc} IN SRV 0 100 8080 ep-{s}-{e}.{svc}.cluster.local.");
        }
    }
    z
}

fn queries() -> String {
    let mut q = String::new();
    for s in 0..SERVICES {
        let svc = format!("svc{s}.{NAMESPACE}.svc.cluster.local");
        let _ = writeln!(q, "{svc} A");
        let _ = writeln!(q, "{svc} A");
        let _ = writeln!(q, "ep-{s}-{}.{svc} A", s % ENDPOINTS);
        let _ = writeln!(q, "_http._tcp.{svc} SRV");
    }
    q
}

fn usage() -> ! {
    eprintln!("usage: bench_dns_server records DIR | serve PORT [THREADS]");
    std::process::exit(2);
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("records") => {
            let Some(dir) = args.get(2) else { usage() };
            let dir = std::path::Path::new(dir);
            if let Err(e) = std::fs::write(dir.join("cluster.local.zone"), zone_file())
                .and_then(|_| std::fs::write(dir.join("queries"), queries()))
            {
                eprintln!("writing records into {}: {e}", dir.display());
                std::process::exit(1);
            }
        }
        Some("serve") => {
            let Some(port) = args.get(2).and_then(|p| p.parse::<u16>().ok()) else { usage() };
            let threads = args.get(3).and_then(|t| t.parse::<usize>().ok()).unwrap_or(1).max(1);
            if let Err(e) = serve(port, threads) {
                eprintln!("bench_dns_server: {e}");
                std::process::exit(1);
            }
        }
        Some("micro") => micro(),
        _ => usage(),
    }
}

/// Time the answer path alone (no sockets) over the query mix: user-space cost per query.
fn micro() {
    use hickory_proto::op::{Message, MessageType, OpCode, Query};
    use hickory_proto::rr::{Name, RecordType};
    let server = match DnsServer::new(DnsConfig::default(), registry()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("bench_dns_server: {e}");
            std::process::exit(1);
        }
    };
    let packets: Vec<Vec<u8>> = queries()
        .lines()
        .filter_map(|line| {
            let (name, rtype) = line.split_once(' ')?;
            let rtype = if rtype == "SRV" { RecordType::SRV } else { RecordType::A };
            let mut m = Message::new(7, MessageType::Query, OpCode::Query);
            m.add_query(Query::query(Name::from_ascii(name).ok()?, rtype));
            m.to_vec().ok()
        })
        .collect();
    let rounds = 20_000;
    let started = std::time::Instant::now();
    let mut bytes = 0usize;
    for _ in 0..rounds {
        for p in &packets {
            bytes += server.handle_packet(p, false).map_or(0, |r| r.len());
        }
    }
    let n = rounds * packets.len();
    let ns = started.elapsed().as_nanos() as f64 / n as f64;
    println!("{n} answers, {ns:.0} ns each (user space only), {} bytes on average", bytes / n);
}

fn serve(port: u16, threads: usize) -> Result<(), Box<dyn std::error::Error>> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async move {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let (udp, tcp) = bind(addr, threads).await?;
        let server = DnsServer::new(DnsConfig::default(), registry())?;
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        println!("ready on {addr} with {threads} UDP thread(s)");
        server
            .serve(udp, tcp, async move {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            })
            .await?;
        println!("p99_us={}", server.answer_latency_p99().as_micros());
        Ok(())
    })
}
