//! End to end under load (issue #9): a steady client sends requests through the proxy's front door
//! (`Host: demo.localhost`) while a replica is `kill -9`ed, a node is lost, or the Deployment rolls out, and
//! no request may fail. Also: stopping and starting `berth up` restores the cluster and orphans nothing.
//!
//! Each test starts its own `berth up` on loopback port 0. They run one at a time (a lock), because the
//! zero-failure and time targets are about Berth, not about four clusters competing for two cores.

mod common;

use common::load::{failures, get_once, Load, Sample};
use common::{alive, repo, wait_for, Up, BERTH};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::process::Command;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

/// 20 requests/s for 20 s.
const LOAD_COUNT: usize = 400;
const LOAD_INTERVAL: Duration = Duration::from_millis(50);
const HOST: &str = "demo.localhost";

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn demo() -> String {
    repo().join("config/demo").display().to_string()
}

/// Pods of the demo that are Running, Ready and not terminating.
fn ready_demo_pods(up: &Up) -> Vec<Value> {
    up.items("pods")
        .into_iter()
        .filter(|p| p["metadata"]["labels"]["app"] == "demo")
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .filter(|p| p["status"]["phase"] == "Running" && ready_since(p).is_some())
        .collect()
}

/// When the pod's `Ready` condition last became True, if it is True.
fn ready_since(pod: &Value) -> Option<SystemTime> {
    let c = pod["status"]["conditions"].as_array()?.iter().find(|c| c["type"] == "Ready" && c["status"] == "True")?;
    humantime::parse_rfc3339_weak(c["lastTransitionTime"].as_str()?).ok()
}

/// The demo's ready endpoints the registry publishes (from `berth get endpoints`).
fn demo_endpoints(up: &Up) -> usize {
    let out = up.berth(&["get", "endpoints"]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find(|l| l.starts_with("demo "))
        .map_or(0, |l| l.matches("127.0.0.1:").count())
}

/// Wait for 3 ready demo pods, 3 registry endpoints, and answers from all 3 through the proxy; returns
/// pod name → PID of its process.
fn settle(up: &Up, what: &str) -> BTreeMap<String, u64> {
    wait_for(&format!("{what}: 3 ready demo pods"), Duration::from_secs(90), || ready_demo_pods(up).len() == 3);
    wait_for(&format!("{what}: 3 demo endpoints in the registry"), Duration::from_secs(60), || demo_endpoints(up) == 3);
    let mut seen = BTreeMap::new();
    wait_for(&format!("{what}: answers from 3 pods through the proxy"), Duration::from_secs(30), || {
        if let Ok(a) = get_once(&up.proxy, HOST) {
            seen.insert(a.pod, a.pid);
        }
        seen.len() == 3
    });
    seen
}

fn kill9(pids: &[u64]) {
    let mut cmd = Command::new("kill");
    cmd.arg("-9");
    for p in pids {
        cmd.arg(p.to_string());
    }
    assert!(cmd.status().expect("run kill").success(), "kill -9 {pids:?}");
}

/// Requests that were in flight at `at`: sent before it, ended after it.
fn in_flight_at(samples: &[Sample], at: Instant) -> usize {
    samples.iter().filter(|s| s.sent <= at && s.done >= at).count()
}

fn fail_report(samples: &[Sample]) -> String {
    let f = failures(samples);
    format!("{} of {} requests failed: {:?}", f.len(), samples.len(), f.iter().take(10).collect::<Vec<_>>())
}

#[test]
fn kill_9_of_a_replica_under_load_fails_no_request() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let up = Up::start(dir.path(), &["-f", &demo()]);
    let before = settle(&up, "before the crash");
    let (victim, &victim_pid) = before.iter().next().unwrap();
    let known: BTreeSet<(String, u64)> = before.iter().map(|(p, pid)| (p.clone(), *pid)).collect();

    let load = Load::start(&up.proxy, HOST, LOAD_COUNT, LOAD_INTERVAL);
    std::thread::sleep(Duration::from_secs(5));
    let killed_at = Instant::now();
    kill9(&[victim_pid]);

    // The replacement (a restarted container, or a new pod) is ready once the proxy routes to it.
    let mut replaced: Option<Duration> = None;
    wait_for("an answer from the replacement of the killed replica", Duration::from_secs(14), || {
        replaced = load
            .snapshot()
            .iter()
            .filter_map(|s| s.result.as_ref().ok().map(|a| (s, a)))
            .filter(|(_, a)| !known.contains(&(a.pod.clone(), a.pid)))
            .map(|(s, _)| s.done.saturating_duration_since(killed_at))
            .min();
        replaced.is_some()
    });
    let replaced = replaced.unwrap();
    println!(
        "MEASURED crash: replacement of {victim} (pid {victim_pid}) answered {} ms after kill -9",
        replaced.as_millis()
    );

    let samples = load.finish();
    assert_eq!(samples.len(), LOAD_COUNT);
    println!("MEASURED crash: {} failed of {} requests", failures(&samples).len(), samples.len());
    assert!(failures(&samples).is_empty(), "{}", fail_report(&samples));
    assert!(!alive(victim_pid as u32), "the killed process {victim_pid} is gone");
    assert!(replaced < Duration::from_secs(5), "replacement answered after {replaced:?} (target < 5 s)");
    let after: BTreeSet<String> =
        samples.iter().rev().take(30).filter_map(|s| s.result.as_ref().ok()).map(|a| a.pod.clone()).collect();
    assert_eq!(after.len(), 3, "the last 30 answers come from 3 replicas again: {after:?}");
}
