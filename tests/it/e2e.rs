//! End to end under load (issue #9): a steady client sends requests through the proxy's front door
//! (`Host: demo.localhost`) while a replica is `kill -9`ed, a node is lost, or the Deployment rolls out, and
//! no request may fail. Also: stopping and starting `berth up` restores the cluster and orphans nothing.
//!
//! Each test starts its own `berth up` on loopback port 0. They run one at a time (a lock), because the
//! zero-failure and time targets are about Berth, not about four clusters competing for two cores.

use crate::common::load::{failures, get_once, Load, Sample};
use crate::common::{alive, repo, wait_for, Up, BERTH};
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

/// Wait until the load has been answered by `replicas` different pods: it runs and reaches every replica.
fn reaches_every_replica(load: &Load, replicas: usize) {
    wait_for("the load to reach every replica", Duration::from_secs(20), || {
        let pods: BTreeSet<String> =
            load.snapshot().iter().filter_map(|s| s.result.as_ref().ok()).map(|a| a.pod.clone()).collect();
        pods.len() >= replicas
    });
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
    reaches_every_replica(&load, before.len());
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

/// Whether `berth rollout` exists in this build (it is being added separately).
fn rollout_verb_exists() -> bool {
    Command::new(BERTH).args(["rollout", "--help"]).output().is_ok_and(|o| o.status.success())
}

/// Polls the pods every ~100 ms and keeps the last version seen of each (also after it is deleted).
struct PodObserver {
    seen: Arc<Mutex<HashMap<String, Value>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl PodObserver {
    fn start(up: &Up) -> PodObserver {
        let seen = Arc::new(Mutex::new(HashMap::new()));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (dir, out, halt) = (up.dir.clone(), seen.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(180);
            while !halt.load(std::sync::atomic::Ordering::Relaxed) && Instant::now() < deadline {
                let o = Command::new(BERTH).args(["get", "pods", "-o", "json", "--data-dir"]).arg(&dir).output();
                if let Some(o) = o.ok().filter(|o| o.status.success()) {
                    let v: Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
                    let mut seen = out.lock().unwrap();
                    for p in v["items"].as_array().into_iter().flatten() {
                        seen.insert(p["metadata"]["name"].as_str().unwrap_or_default().to_string(), p.clone());
                    }
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        PodObserver { seen, stop, thread: Some(thread) }
    }

    fn finish(mut self) -> HashMap<String, Value> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.seen.lock().unwrap().clone()
    }
}

fn time_of(v: &Value) -> Option<SystemTime> {
    humantime::parse_rfc3339_weak(v.as_str()?).ok()
}

#[test]
fn rollout_under_load_fails_no_request_and_only_ready_pods_answer() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let up = Up::start(dir.path(), &["-f", &demo()]);
    settle(&up, "before the rollout");
    let old_pods: BTreeSet<String> =
        ready_demo_pods(&up).iter().map(|p| p["metadata"]["name"].as_str().unwrap().to_string()).collect();

    // The same demo with one more env var: a new pod template, rolled with the default strategy.
    let manifest = std::fs::read_to_string(repo().join("config/demo/demo.yaml")).unwrap();
    let marker = "            - name: POD_NAME\n";
    assert!(manifest.contains(marker), "config/demo/demo.yaml sets POD_NAME; the test inserts its env var there");
    let changed =
        manifest.replacen(marker, &format!("            - name: ROLLOUT\n              value: \"2\"\n{marker}"), 1);
    let changed_file = dir.path().join("demo-v2.yaml");
    std::fs::write(&changed_file, changed).unwrap();

    let observer = PodObserver::start(&up);
    // 20 req/s for 30 s: the rollout (3 pods, each started, probed and drained) happens inside it.
    let load = Load::start(&up.proxy, HOST, 600, LOAD_INTERVAL);
    reaches_every_replica(&load, 3);
    let applied_at = Instant::now();
    up.ok(&["apply", "-f", changed_file.to_str().unwrap()]);
    let mut generation = 0;
    wait_for("the rollout completes: 3 updated, ready replicas and no old ones", Duration::from_secs(26), || {
        let Some(d) = up.items("deployments").into_iter().find(|d| d["metadata"]["name"] == "demo") else {
            return false;
        };
        generation = d["metadata"]["generation"].as_i64().unwrap_or(0);
        let s = &d["status"];
        s["observedGeneration"].as_i64() == Some(generation)
            && s["updatedReplicas"] == 3
            && s["readyReplicas"] == 3
            && s["replicas"] == 3
            && up.items("pods").iter().all(|p| !old_pods.contains(p["metadata"]["name"].as_str().unwrap_or("")))
    });
    let rolled = applied_at.elapsed();
    println!("MEASURED rollout: 3 replicas rolled in {} ms under load", rolled.as_millis());
    // ROLLOUT-STATUS-CLI (the lead switches this line to the plain call once `berth rollout` is merged):
    if rollout_verb_exists() {
        up.ok(&["rollout", "status", "deployment", "demo"]);
    }

    let samples = load.finish();
    let pods = observer.finish();
    println!("MEASURED rollout: {} failed of {} requests", failures(&samples).len(), samples.len());
    assert!(failures(&samples).is_empty(), "{}", fail_report(&samples));
    assert!(
        samples.iter().any(|s| s.sent >= applied_at + rolled),
        "the load outlasted the rollout (rolled in {rolled:?})"
    );

    // Every answer came from a pod that was Ready when it answered, and that was not yet terminating when
    // the request was sent (plus a generous allowance for the in-process propagation, measured in ms).
    let mut new_pods = BTreeSet::new();
    for s in &samples {
        let a = s.result.as_ref().unwrap();
        let pod = pods.get(&a.pod).unwrap_or_else(|| panic!("{} answered but was never seen as a pod", a.pod));
        let since = ready_since(pod).unwrap_or_else(|| panic!("{} answered but was never seen Ready: {pod:#}", a.pod));
        assert!(since <= s.done_wall, "{} answered before it was Ready ({since:?} > {:?})", a.pod, s.done_wall);
        if let Some(deleted) = time_of(&pod["metadata"]["deletionTimestamp"]) {
            assert!(
                s.sent_wall <= deleted + Duration::from_millis(500),
                "{} was sent a request {:?} after it started terminating",
                a.pod,
                s.sent_wall.duration_since(deleted).unwrap_or_default()
            );
        }
        if !old_pods.contains(&a.pod) {
            new_pods.insert(a.pod.clone());
        }
    }
    assert_eq!(new_pods.len(), 3, "all 3 new replicas served: {new_pods:?}");
    let last: BTreeSet<&str> = samples.iter().rev().take(20).map(|s| s.result.as_ref().unwrap().pod.as_str()).collect();
    assert!(last.iter().all(|p| !old_pods.contains(*p)), "only new pods answer at the end: {last:?}");
}

#[test]
fn restart_restores_the_cluster_and_orphans_no_process() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let mut first = Up::start(dir.path(), &["-f", &demo()]);
    let pids1 = settle(&first, "first run");
    let objects = |up: &Up| -> BTreeSet<(String, String, String)> {
        ["deployments", "services", "routes", "autoscalers"]
            .iter()
            .flat_map(|k| up.items(k).into_iter().map(move |o| (k.to_string(), o)))
            .map(|(k, o)| {
                (
                    k,
                    o["metadata"]["name"].as_str().unwrap_or("").into(),
                    o["metadata"]["uid"].as_str().unwrap_or("").into(),
                )
            })
            .collect()
    };
    let before = objects(&first);
    assert_eq!(before.len(), 4, "the demo's Deployment, Service, Route and Autoscaler: {before:?}");
    let pods_before: BTreeSet<String> = up_pod_names(&first);

    let status = first.interrupt();
    assert!(status.success(), "berth up exits cleanly on Ctrl-C: {status}");
    for pid in pids1.values() {
        assert!(!alive(*pid as u32), "pod process {pid} of the first run still runs after Ctrl-C");
    }

    // The same data dir, no manifests: everything comes back from the store.
    let second = Up::start(dir.path(), &[]);
    assert_eq!(objects(&second), before, "the same objects (same uids) after the restart");
    let pids2 = settle(&second, "after the restart");
    assert_eq!(up_pod_names(&second), pods_before, "the same 3 pods, none duplicated");
    for pid in pids1.values() {
        assert!(!alive(*pid as u32), "pod process {pid} of the first run is orphaned");
    }
    assert!(pids2.values().all(|p| !pids1.values().any(|q| q == p)), "new processes: {pids1:?} vs {pids2:?}");
    let mut second = second;
    assert!(second.interrupt().success());
    for pid in pids2.values() {
        assert!(!alive(*pid as u32), "pod process {pid} of the second run still runs after Ctrl-C");
    }
}

fn up_pod_names(up: &Up) -> BTreeSet<String> {
    up.items("pods").iter().map(|p| p["metadata"]["name"].as_str().unwrap_or("").to_string()).collect()
}

/// A `berth agent` process next to a `berth up` (a second node); stopped cleanly (SIGTERM, pods stopped) on
/// drop unless the test killed it.
struct ExternalAgent(std::process::Child);

impl ExternalAgent {
    fn start(up: &Up, name: &str, zone: &str) -> ExternalAgent {
        let child = Command::new(BERTH)
            .args(["agent", "--server", &up.api, "--name", name, "--stop-pods-on-exit", "--data-dir"])
            .arg(&up.dir)
            .arg("--labels")
            .arg(format!("topology.kubernetes.io/zone={zone},kubernetes.io/hostname={name}"))
            .spawn()
            .expect("spawn berth agent");
        ExternalAgent(child)
    }
}

impl Drop for ExternalAgent {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = Command::new("kill").args(["-TERM", &self.0.id().to_string()]).status();
        }
        let _ = self.0.wait();
    }
}

fn node_of(pod: &Value) -> String {
    pod["spec"]["nodeName"].as_str().unwrap_or_default().to_string()
}

/// `berth up --agents 1` plus a second node from a separate `berth agent` process: killing that process and
/// its pods with `kill -9` is a node lost at once, with no goodbye.
#[test]
fn node_loss_under_load_fails_no_request_and_replicas_recover() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let up = Up::start(dir.path(), &["--agents", "1"]);
    let mut agent = ExternalAgent::start(&up, "node-2", "zone-b");
    wait_for("2 Ready nodes", Duration::from_secs(60), || {
        up.items("nodes")
            .iter()
            .filter(|n| {
                n["status"]["conditions"]
                    .as_array()
                    .is_some_and(|c| c.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
            })
            .count()
            == 2
    });
    up.ok(&["apply", "-f", &demo()]);
    let pids = settle(&up, "before the node loss");
    let placement: Vec<(String, String)> = ready_demo_pods(&up)
        .iter()
        .map(|p| (p["metadata"]["name"].as_str().unwrap().to_string(), node_of(p)))
        .collect();
    let lost: Vec<u64> = placement.iter().filter(|(_, n)| n == "node-2").map(|(p, _)| pids[p]).collect();
    assert!(!lost.is_empty() && lost.len() < 3, "the scheduler spreads the demo over both nodes: {placement:?}");

    let load = Load::start(&up.proxy, HOST, LOAD_COUNT, LOAD_INTERVAL);
    reaches_every_replica(&load, pids.len());
    let killed_at = Instant::now();
    let mut victims = vec![u64::from(agent.0.id())];
    victims.extend(&lost);
    kill9(&victims);
    let _ = agent.0.wait();

    wait_for("3 ready demo pods on the surviving node", Duration::from_secs(60), || {
        ready_demo_pods(&up).iter().filter(|p| node_of(p) == "node-1").count() == 3 && demo_endpoints(&up) == 3
    });
    let recovered = killed_at.elapsed();
    let samples = load.finish();
    let (failed, in_flight) = (failures(&samples).len(), in_flight_at(&samples, killed_at));
    println!(
        "MEASURED node loss: {} of {} pods lost; back at 3 ready replicas {} ms after the kill; {failed} failed of {} requests ({in_flight} in flight at the kill)",
        lost.len(),
        placement.len(),
        recovered.as_millis(),
        samples.len()
    );
    assert!(failed <= in_flight, "failures beyond those in flight at the kill: {}", fail_report(&samples));
    assert!(recovered < Duration::from_secs(15), "replicas back at 3 ready after {recovered:?} (target < 15 s)");
    for pid in lost {
        assert!(!alive(pid as u32));
    }
}
