//! Bench helper for `benches/proxy/bench.sh`, which serves the traffic with the shipped `berth proxy -c`:
//! measures resident memory with many endpoints in the registry (`berth-proxy-bench rss N`) and registry ->
//! routing-table propagation (`propagation N`); `serve FILE` runs the proxy library alone for profiling.
//! mimalloc is the global allocator, as in `berth`.

use discovery::{Endpoint, EndpointPort, Object, Protocol, Registry, Selector, Service, ServicePort, TargetPort};
use proxy::static_config::StaticConfig;
use proxy::{Proxy, ProxyConfig};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

fn serve(path: PathBuf) -> Result<(), String> {
    let cfg = StaticConfig::load(&path).map_err(|e| e.to_string())?;
    let registry = Arc::new(Registry::new());
    let objects = cfg.objects(&path).map_err(|e| e.to_string())?;
    proxy::static_config::apply(&registry, objects, &Default::default());
    let proxy = Proxy::start(registry, cfg.proxy.clone()).map_err(|e| e.to_string())?;
    println!("listening http={:?} https={:?}", proxy.addrs().http, proxy.addrs().https);
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

fn rss(n: usize) -> Result<(), String> {
    let base = rss_kib();
    let registry = Arc::new(Registry::new());
    let services = (n / 100).max(1);
    for s in 0..services {
        let name = format!("svc-{s}");
        registry.put(Object::Service(Arc::new(Service {
            namespace: "default".into(),
            name: name.clone(),
            labels: Default::default(),
            selector: Selector::from_labels(&[("app".to_string(), name.clone())].into_iter().collect()),
            ports: vec![ServicePort {
                name: None,
                port: 80,
                target_port: TargetPort::Number(8080),
                protocol: Protocol::Tcp,
            }],
            balance: Default::default(),
            virtual_ip: None,
            health_check: None,
            retry_on_statuses: Vec::new(),
        })));
    }
    for i in 0..n {
        let svc = format!("svc-{}", i % services);
        registry.put(Object::Endpoint(Arc::new(Endpoint {
            namespace: "default".into(),
            name: format!("ep-{i}"),
            address: std::net::IpAddr::from([10, (i >> 16) as u8, (i >> 8) as u8, i as u8]),
            ports: vec![EndpointPort { name: None, port: 8080, protocol: Protocol::Tcp }],
            labels: [("app".to_string(), svc)].into_iter().collect(),
            ready: true,
            serving: true,
            terminating: false,
            node: None,
            zone: None,
            weight: 100,
        })));
    }
    let with_registry = rss_kib();
    let cfg =
        ProxyConfig { http_listen: vec!["127.0.0.1:0".parse().map_err(|e| format!("{e}"))?], ..Default::default() };
    let t = Instant::now();
    let proxy = Proxy::start(registry.clone(), cfg).map_err(|e| e.to_string())?;
    let started = t.elapsed();
    let total = rss_kib();
    println!(
        "RSS endpoints={n} services={services} baseline_kib={base} registry_kib={with_registry} total_kib={total} proxy_start_ms={}",
        started.as_millis()
    );
    proxy.stop();
    Ok(())
}

/// Registry write (an endpoint added) -> routing table applied, `n` times; the next request reads that table.
fn propagation(n: usize) -> Result<(), String> {
    let registry = Arc::new(Registry::new());
    let selector = Selector::from_labels(&[("app".to_string(), "web".to_string())].into_iter().collect());
    registry.put(Object::Service(Arc::new(Service {
        namespace: "default".into(),
        name: "web".into(),
        labels: Default::default(),
        selector,
        ports: vec![ServicePort {
            name: None,
            port: 80,
            target_port: TargetPort::Number(8080),
            protocol: Protocol::Tcp,
        }],
        balance: Default::default(),
        virtual_ip: None,
        health_check: None,
        retry_on_statuses: Vec::new(),
    })));
    let cfg =
        ProxyConfig { http_listen: vec!["127.0.0.1:0".parse().map_err(|e| format!("{e}"))?], ..Default::default() };
    let proxy = Proxy::start(registry.clone(), cfg).map_err(|e| e.to_string())?;
    let mut samples = Vec::with_capacity(n);
    for i in 0..n {
        let ep = Endpoint {
            namespace: "default".into(),
            name: format!("ep-{i}"),
            address: std::net::IpAddr::from([127, 0, 0, 1]),
            ports: vec![EndpointPort { name: None, port: 8080, protocol: Protocol::Tcp }],
            labels: [("app".to_string(), "web".to_string())].into_iter().collect(),
            ready: true,
            serving: true,
            terminating: false,
            node: None,
            zone: None,
            weight: 100,
        };
        let t = Instant::now();
        let rev = registry.put(Object::Endpoint(Arc::new(ep)));
        let deadline = t + Duration::from_secs(5);
        while proxy.applied_revision() < rev {
            if Instant::now() > deadline {
                return Err(format!("revision {rev} not applied within 5 s"));
            }
            std::hint::spin_loop();
        }
        samples.push(t.elapsed().as_micros() as u64);
    }
    samples.sort_unstable();
    let q = |f: f64| samples[((samples.len() as f64 * f) as usize).min(samples.len() - 1)];
    println!("PROPAGATION samples={n} p50_us={} p99_us={} max_us={}", q(0.5), q(0.99), q(1.0));
    proxy.stop();
    Ok(())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let result = match args.get(1).map(String::as_str) {
        Some("serve") if args.len() == 3 => serve(PathBuf::from(&args[2])),
        Some("rss") if args.len() == 3 => args[2].parse().map_err(|e| format!("bad count: {e}")).and_then(rss),
        Some("propagation") if args.len() == 3 => {
            args[2].parse().map_err(|e| format!("bad count: {e}")).and_then(propagation)
        }
        _ => Err("usage: berth-proxy-bench serve FILE | rss N | propagation N".into()),
    };
    if let Err(e) = result {
        eprintln!("berth-proxy-bench: {e}");
        std::process::exit(1);
    }
}
