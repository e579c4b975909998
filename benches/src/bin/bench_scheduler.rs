//! Scheduler throughput and per-pod latency on synthetic clusters (`make bench-scheduler`).
//!
//! Single thread. Clusters of 1,000, 5,000 and 10,000 nodes in 3 zones; three pod mixes: plain requests,
//! 10% of pods with required hostname anti-affinity (groups of 20 replicas), 50% of pods with a zone spread
//! constraint (maxSkew 1, DoNotSchedule; groups of 30). Each (size, mix) run places its pods one by one
//! through `Cycle::schedule` and times every decision. The per-cycle setup (`Cycle::new`) is included in
//! pods/s. An ablation run with bounded sampling switched off is measured in the same process, and the
//! peers' published figures are printed for scale (not measured here).

use control_plane::scheduler::{
    AffinityTerm, Allocatable, ClusterSnapshot, Cycle, NodeInfo, PodInfo, Requests, SchedulingPolicy, SeededRng,
    SpreadConstraint,
};
use model::WhenUnsatisfiable;
use std::time::Instant;

const HOST: &str = "kubernetes.io/hostname";
const ZONE: &str = "topology.kubernetes.io/zone";
const MI: u64 = 1 << 20;
const GI: u64 = 1 << 30;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mix {
    Plain,
    Anti,
    Spread,
}

impl Mix {
    fn name(self) -> &'static str {
        match self {
            Mix::Plain => "plain",
            Mix::Anti => "anti10%",
            Mix::Spread => "spread50%",
        }
    }
}

fn eq_selector(key: &str, value: &str) -> discovery::Selector {
    discovery::Selector {
        requirements: vec![discovery::Requirement {
            key: key.into(),
            op: discovery::Operator::Equals,
            values: vec![value.into()],
        }],
    }
}

fn cluster(nodes: usize) -> ClusterSnapshot {
    let zones = ["zone-a", "zone-b", "zone-c"];
    let types = ["m5.4xlarge", "c5.4xlarge", "r5.4xlarge"];
    let nodes = (0..nodes)
        .map(|i| {
            let name = format!("node-{i:05}");
            let labels = [
                (HOST, name.as_str()),
                (ZONE, zones[i % zones.len()]),
                ("node.kubernetes.io/instance-type", types[(i / 3) % types.len()]),
                ("rack", &format!("rack-{}", i / 40)),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
            NodeInfo {
                name,
                labels,
                allocatable: Allocatable { cpu_millis: 16_000, memory_bytes: 64 * GI, pods: 110 },
                ..NodeInfo::default()
            }
        })
        .collect();
    ClusterSnapshot { nodes, pods: vec![], policy: SchedulingPolicy::default() }
}

fn pods(count: usize, mix: Mix, seed: u64) -> Vec<PodInfo> {
    let mut rng = SeededRng::new(seed);
    (0..count)
        .map(|i| {
            let mut p = PodInfo {
                namespace: "default".into(),
                name: format!("pod-{i}"),
                requests: Requests { cpu_millis: 50 + 50 * rng.below(5), memory_bytes: (64 + 64 * rng.below(4)) * MI },
                ..PodInfo::default()
            };
            let app = match mix {
                Mix::Anti if i % 10 == 0 => {
                    let app = format!("anti-{}", i / 10 / 20);
                    p.pod_anti_affinity.required = vec![AffinityTerm {
                        selector: Some(eq_selector("app", &app)),
                        namespaces: vec![],
                        topology_key: HOST.into(),
                    }];
                    app
                }
                Mix::Spread if i % 2 == 0 => {
                    let app = format!("spread-{}", i / 2 / 30);
                    p.topology_spread_constraints = vec![SpreadConstraint {
                        max_skew: 1,
                        topology_key: ZONE.into(),
                        when_unsatisfiable: WhenUnsatisfiable::DoNotSchedule,
                        selector: Some(eq_selector("app", &app)),
                    }];
                    app
                }
                _ => format!("svc-{}", i / 50),
            };
            p.labels.insert("app".into(), app);
            p.labels.insert("tier".into(), ["web", "api", "worker"][i % 3].into());
            p
        })
        .collect()
}

struct Run {
    nodes: usize,
    pods: usize,
    mix: Mix,
    pods_per_s: f64,
    /// Pods per second of CPU time actually given to this thread (the machine may be shared).
    cpu_pods_per_s: Option<f64>,
    p50_us: f64,
    p99_us: f64,
    unschedulable: usize,
}

fn run(snapshot: &ClusterSnapshot, pods: &[PodInfo], mix: Mix, seed: u64) -> Run {
    let mut lat_ns: Vec<u64> = Vec::with_capacity(pods.len());
    let cpu_start = thread_cpu_ns();
    let start = Instant::now();
    let mut cycle = Cycle::new(snapshot, seed);
    let mut unschedulable = 0;
    for p in pods {
        let t = Instant::now();
        let placed = cycle.schedule(p);
        lat_ns.push(t.elapsed().as_nanos() as u64);
        unschedulable += placed.is_err() as usize;
    }
    let total = start.elapsed().as_secs_f64();
    let cpu = cpu_start.zip(thread_cpu_ns()).map(|(a, b)| b.saturating_sub(a) as f64 / 1e9);
    lat_ns.sort_unstable();
    let pct = |q: f64| lat_ns[((lat_ns.len() as f64 * q) as usize).min(lat_ns.len() - 1)] as f64 / 1000.0;
    Run {
        nodes: snapshot.nodes.len(),
        pods: pods.len(),
        mix,
        pods_per_s: pods.len() as f64 / total,
        cpu_pods_per_s: cpu.filter(|c| *c > 0.0).map(|c| pods.len() as f64 / c),
        p50_us: pct(0.50),
        p99_us: pct(0.99),
        unschedulable,
    }
}

/// Nanoseconds this thread has run on a CPU (`/proc/thread-self/schedstat`, first field).
fn thread_cpu_ns() -> Option<u64> {
    std::fs::read_to_string("/proc/thread-self/schedstat").ok()?.split_whitespace().next()?.parse().ok()
}

fn vm_hwm_mib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024)
}

fn main() {
    let seed = 0x5eed;
    let sizes = [(1_000usize, 50_000usize), (5_000, 100_000), (10_000, 100_000)];
    let mixes = [Mix::Plain, Mix::Anti, Mix::Spread];
    println!("Berth scheduler benchmark: single thread, one Cycle per (size, mix), every pod timed.");
    println!("1,000-node runs place 50,000 pods (100,000 would exceed the small cluster's cpu); others 100,000.");
    println!();
    println!("pods/s is wall clock (what RESULT reports); cpu pods/s divides by the CPU time this thread got.");
    println!();
    println!(
        "{:>7} {:>8} {:>10} {:>11} {:>13} {:>9} {:>9} {:>13}",
        "nodes", "pods", "mix", "pods/s", "cpu pods/s", "p50 us", "p99 us", "unschedulable"
    );
    let mut runs = Vec::new();
    let mut peak_after_10k = None;
    for (nodes, count) in sizes {
        let snapshot = cluster(nodes);
        for mix in mixes {
            let pods = pods(count, mix, seed);
            let r = run(&snapshot, &pods, mix, seed);
            println!(
                "{:>7} {:>8} {:>10} {:>11.0} {:>13} {:>9.1} {:>9.1} {:>13}",
                r.nodes,
                r.pods,
                r.mix.name(),
                r.pods_per_s,
                r.cpu_pods_per_s.map_or("n/a".to_string(), |c| format!("{c:.0}")),
                r.p50_us,
                r.p99_us,
                r.unschedulable
            );
            runs.push(r);
        }
        if nodes == 10_000 {
            peak_after_10k = vm_hwm_mib();
        }
    }

    // Ablation, same process: what bounded sampling buys (every feasible node scored).
    let snapshot = cluster(10_000);
    let mut full = snapshot.clone();
    full.policy.percentage_of_nodes_to_score = Some(100);
    let few = pods(5_000, Mix::Plain, seed);
    let sampled = run(&snapshot, &few, Mix::Plain, seed);
    let exhaustive = run(&full, &few, Mix::Plain, seed);
    println!();
    println!("Ablation at 10,000 nodes, 5,000 plain pods (measured in this run):");
    println!("  adaptive sample (500 nodes): {:>9.0} pods/s, p99 {:>7.1} us", sampled.pods_per_s, sampled.p99_us);
    println!(
        "  all feasible nodes scored:   {:>9.0} pods/s, p99 {:>7.1} us  ({:.1}x slower)",
        exhaustive.pods_per_s,
        exhaustive.p99_us,
        sampled.pods_per_s / exhaustive.pods_per_s
    );

    let at = |nodes: usize, mix: Mix| runs.iter().find(|r| r.nodes == nodes && r.mix == mix);
    let pps = |nodes, mix| at(nodes, mix).map_or(0.0, |r| r.pods_per_s);
    let plain5k = pps(5_000, Mix::Plain);
    println!();
    println!("Peers, published figures (not measured here):");
    println!(
        "  kube-scheduler, 5,000 nodes: ~100-400 pods/s   -> Berth plain at 5,000 nodes: {:.0} pods/s = {:.0}x-{:.0}x",
        plain5k,
        plain5k / 400.0,
        plain5k / 100.0
    );
    println!("  Nomad C1M, 5,000 hosts, 5 servers: ~3,750/s    -> Berth on one core: {:.1}x", plain5k / 3_750.0);
    let p99 = [Mix::Plain, Mix::Anti, Mix::Spread]
        .iter()
        .filter_map(|&m| at(10_000, m))
        .map(|r| r.p99_us)
        .fold(0.0f64, f64::max);
    let rss = peak_after_10k.or_else(vm_hwm_mib).unwrap_or(0);
    println!();
    println!("Peak RSS (VmHWM) after the 10,000-node / 100,000-pod runs: {rss} MiB (whole process, pods included)");
    println!("Targets: plain >= 10,000 pods/s and mixes >= 3,000 pods/s at 10,000 nodes; peak < 1024 MiB.");
    println!(
        "RESULT scheduler plain_10k_pods_per_s={:.0} anti_10k_pods_per_s={:.0} spread_10k_pods_per_s={:.0} p99_us={:.0} peak_rss_mib={}",
        pps(10_000, Mix::Plain),
        pps(10_000, Mix::Anti),
        pps(10_000, Mix::Spread),
        p99,
        rss
    );
}
