//! Measures the agent's resident memory with 100 running process pods (`berth echo` with HTTP readiness and
//! TCP liveness probes). Ignored by default (it starts 100 processes); run it alone, so no other test shares the process whose
//! memory it reads: `cargo test -p agent --test it rss:: -- --ignored --nocapture`. The agent runs in this
//! test process, so the figure includes the test harness (a little more than a bare `berth agent`).

use agent::{Agent, AgentConfig, ControlPlane, MemoryControlPlane, RuntimeKind};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn rss_kib() -> u64 {
    kib_field("/proc/self/status", "VmRSS:")
}

fn kib_field(file: &str, field: &str) -> u64 {
    std::fs::read_to_string(file)
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with(field)).and_then(|l| l.split_whitespace().nth(1)?.parse().ok()))
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "starts 100 processes; run explicitly to measure"]
async fn agent_rss_with_100_process_pods() {
    const PODS: usize = 100;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = AgentConfig::new("rss-node", dir.path());
    cfg.runtime = RuntimeKind::Process;
    cfg.self_exe = Some(env!("CARGO_BIN_EXE_berth-echo").into());
    cfg.port_range = 33000..=33299;
    cfg.stop_pods_on_shutdown = true;
    let cp = MemoryControlPlane::new();
    for i in 0..PODS {
        cp.put_pod(json!({
            "metadata": {"name": format!("p{i}"), "namespace": "default"},
            "spec": {"nodeName": "rss-node", "containers": [{
                "name": "app", "command": ["berth", "echo"], "ports": [{"containerPort": 8080}],
                "readinessProbe": {"httpGet": {"path": "/healthz", "port": 8080}, "periodSeconds": 2},
                "livenessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 2}
            }]}
        }));
    }
    let before = rss_kib();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let cp2: Arc<dyn ControlPlane> = Arc::new(cp.clone());
    let task = tokio::spawn(async move {
        Agent::run(cfg, cp2, async move {
            let _ = rx.await;
        })
        .await
        .expect("agent runs")
    });
    let ready = |p: &Value| {
        p.pointer("/status/conditions")
            .and_then(Value::as_array)
            .is_some_and(|c| c.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let n = (0..PODS).filter(|i| cp.pod("default", &format!("p{i}")).is_some_and(|p| ready(&p))).count();
        if n == PODS {
            break;
        }
        assert!(Instant::now() < deadline, "only {n}/{PODS} pods ready");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Sample once memory is steady: within 2% over three probe periods (the probes run every 2 s).
    let mut recent: std::collections::VecDeque<u64> = std::collections::VecDeque::new();
    let rss = test_support::eventually("a steady RSS", Duration::from_secs(60), async || {
        tokio::time::sleep(Duration::from_millis(500)).await;
        recent.push_back(rss_kib());
        if recent.len() > 12 {
            recent.pop_front();
        }
        let (lo, hi) = (*recent.iter().min()?, *recent.iter().max()?);
        (recent.len() == 12 && hi - lo <= hi / 50).then_some(hi)
    })
    .await;
    // Each container's log keeper is a process of its own (see `runtime::log_keeper`): count them apart, by
    // proportional set size (RSS would count the executable's shared pages once per keeper).
    let keepers: Vec<u64> = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| {
            let pid = e.ok()?.file_name().into_string().ok()?;
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let cmdline = String::from_utf8_lossy(&cmdline);
            (cmdline.contains("log-keeper") && cmdline.contains(&*dir.path().to_string_lossy()))
                .then(|| kib_field(&format!("/proc/{pid}/smaps_rollup"), "Pss:"))
        })
        .collect();
    let keepers_kib: u64 = keepers.iter().sum();
    println!(
        "RESULT agent_rss pods={PODS} rss_mib={:.1} before_agent_mib={:.1} log_keepers={} keepers_pss_mib={:.1}",
        rss as f64 / 1024.0,
        before as f64 / 1024.0,
        keepers.len(),
        keepers_kib as f64 / 1024.0,
    );
    assert_eq!(keepers.len(), PODS, "one log keeper per container");
    assert!(keepers_kib < PODS as u64 * 1024, "log keepers take {keepers_kib} KiB, over 1 MiB each");
    let _ = tx.send(());
    task.await.unwrap();
    assert!(rss < 50 * 1024, "agent RSS {rss} KiB with {PODS} pods is over 50 MiB");
}
