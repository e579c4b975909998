//! Autoscaling end to end: `berth up` with the process runtime and `berth echo` as the workload, load sent
//! through the proxy on loopback, replicas read back through the CLI.

use crate::common;
use test_support::open_loop as load;

use crate::common::{repo, Up};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Both tests load the machine (and share its 2 cores with other suites): one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

/// Poll `cond` every 250 ms (each poll runs the CLI) until it holds; panics after `timeout`.
fn poll_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if cond() {
            return start.elapsed();
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    panic!("timed out after {timeout:?} waiting for {what}");
}

/// The Deployment's (spec.replicas, status.readyReplicas).
fn replicas(up: &Up, name: &str) -> (i64, i64) {
    let d = up.get_json("deployment", name);
    (d["spec"]["replicas"].as_i64().unwrap_or(-1), d["status"]["readyReplicas"].as_i64().unwrap_or(0))
}

fn pods_of(up: &Up, name: &str) -> usize {
    up.stdout(&["get", "pods"]).lines().filter(|l| l.starts_with(&format!("{name}-"))).count()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("tokio runtime")
}

async fn get(url: &str, host: &str) -> Option<u16> {
    let c = test_support::http().timeout(Duration::from_secs(40)).build().ok()?;
    c.get(url).header("Host", host).send().await.ok().map(|r| r.status().as_u16())
}

#[test]
fn request_load_scales_out_to_six_and_back_to_one() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let up = Up::start(dir.path(), &["-f", &repo().join("config/autoscale/load.yaml").to_string_lossy()]);
    let url = format!("http://{}/", up.proxy);
    let rt = runtime();
    poll_until("1 ready replica", Duration::from_secs(90), || replicas(&up, "load") == (1, 1));
    poll_until("the proxy routes load.localhost", Duration::from_secs(30), || {
        rt.block_on(get(&url, "load.localhost")) == Some(200)
    });

    // Watch the ready replicas while the load runs.
    let done = Arc::new(AtomicBool::new(false));
    let max_ready = Arc::new(AtomicI64::new(0));
    // Ready replicas over the last 10 s of the load, when it has settled.
    let settled: Arc<Mutex<Vec<i64>>> = Arc::new(Mutex::new(Vec::new()));
    let load_start = Instant::now();
    let watcher = {
        let (done, max_ready, settled) = (done.clone(), max_ready.clone(), settled.clone());
        let dir = dir.path().to_path_buf();
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                let out = std::process::Command::new(common::BERTH)
                    .args(["get", "deployment", "load", "-o", "json", "--data-dir"])
                    .arg(&dir)
                    .output();
                if let Some(ready) = out
                    .ok()
                    .and_then(|o| serde_json::from_slice::<serde_json::Value>(&o.stdout).ok())
                    .and_then(|d| d["status"]["readyReplicas"].as_i64())
                {
                    max_ready.fetch_max(ready, Ordering::Relaxed);
                    if load_start.elapsed() > Duration::from_secs(20) {
                        settled.lock().unwrap_or_else(|e| e.into_inner()).push(ready);
                    }
                }
                std::thread::sleep(Duration::from_millis(300));
            }
        })
    };
    let report = rt.block_on(load::run(&url, "load.localhost", 300, Duration::from_secs(30)));
    done.store(true, Ordering::Relaxed);
    watcher.join().unwrap();
    let max_ready = max_ready.load(Ordering::Relaxed);
    let mut settled = settled.lock().unwrap_or_else(|e| e.into_inner()).clone();
    settled.sort_unstable();
    let median = settled.get(settled.len() / 2).copied().unwrap_or(0);
    println!(
        "load: {} sent, {} skipped (late), {} ok, {} failed; ready replicas: max {max_ready}, over the last 10 s {settled:?}",
        report.sent, report.skipped, report.ok, report.failed
    );
    for (i, (at, pod)) in report.first_from.iter().enumerate() {
        println!("  replica {} ({pod}) first served at {:.2} s", i + 1, at.as_secs_f64());
    }
    let sixth = report.first_from.get(5).map(|(at, _)| at.as_secs_f64());
    println!(
        "RESULT autoscale_e2e load_start_to_6th_replica_serving_s={}",
        sixth.map_or("none".into(), |s| format!("{s:.2}"))
    );
    println!("{}", up.stdout(&["describe", "autoscaler", "load"]));
    assert!((5..=7).contains(&median), "300 rps at 50 per replica: 6±1 ready replicas, saw {settled:?}");
    assert!(report.skipped * 10 <= report.sent, "the generator kept its rate: {report:?}");
    assert!(report.first_from.len() >= 5, "the new replicas served traffic: {:?}", report.first_from);
    assert!(report.failed * 100 <= report.sent, "at most 1% failed requests: {report:?}");

    let table = up.stdout(&["get", "autoscalers"]);
    println!("{table}");
    let header: Vec<&str> = table.lines().next().unwrap_or("").split_whitespace().collect();
    assert_eq!(header, ["NAME", "TARGET", "METRIC", "MIN", "MAX", "REPLICAS", "AGE"], "{table}");
    let row: Vec<&str> = table.lines().nth(1).unwrap_or("").split_whitespace().collect();
    assert_eq!(&row[..2], ["load", "Deployment/load"], "{table}");
    assert!(row[2].starts_with("rps ") || row.get(3).is_some_and(|m| m.ends_with("/50")), "{table}");

    let back = poll_until("back to 1 replica after the 10 s scale-down window", Duration::from_secs(120), || {
        replicas(&up, "load") == (1, 1)
    });
    println!("back to 1 replica {:.1} s after the load stopped", back.as_secs_f64());
    let described = up.stdout(&["describe", "autoscaler", "load"]);
    println!("{described}");
    assert!(described.contains("Events (recent scaling decisions"), "{described}");
    assert!(described.contains("1 -> "), "the scale-up is recorded: {described}");
    assert!(described.contains("-> 1 "), "the scale-down is recorded: {described}");
    assert!(described.contains("requestsPerSecond"), "with its reason: {described}");
}

#[test]
fn the_first_request_after_scaling_to_zero_succeeds() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let up = Up::start(dir.path(), &["-f", &repo().join("config/autoscale/zero.yaml").to_string_lossy()]);
    let url = format!("http://{}/", up.proxy);
    let rt = runtime();
    // Idle from the start: minReplicas 0 and a 3 s scale-down window take it to zero.
    poll_until("scaled to zero", Duration::from_secs(90), || replicas(&up, "zero").0 == 0 && pods_of(&up, "zero") == 0);
    let t0 = Instant::now();
    let status = rt.block_on(get(&url, "zero.localhost"));
    let latency = t0.elapsed();
    println!("RESULT scale_from_zero first_request_latency_s={:.2}", latency.as_secs_f64());
    assert_eq!(status, Some(200), "the held request is served once a replica is ready");
    assert!(latency < Duration::from_secs(30), "within the proxy's hold timeout: {latency:?}");
    let described = up.stdout(&["describe", "autoscaler", "zero"]);
    // The held request is both an arrival (the rate metric) and waiting demand; either reason scales 0 -> 1.
    assert!(described.contains("0 -> 1"), "{described}");
}
