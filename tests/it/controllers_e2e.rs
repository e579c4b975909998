//! The controllers end to end through the real binary: `berth server` plus two separate `berth agent`
//! processes (process runtime) running `berth echo`. Covered: self-healing after `kill -9` of a pod process
//! and of an agent, a rolling update sampled at the discovery API (never fewer than `replicas` ready
//! endpoints with maxUnavailable=0), `rollout status|history|undo`, `scale`, and a control-plane restart in
//! the middle of a rollout.
//!
//! The tests take a lock and run one at a time: each starts a cluster of its own, and recovery times on a
//! shared two-core machine mean little when three clusters compete. Every wait is bounded.

use crate::common::{Server, BERTH};
use client::Client;
use model::Kind;
use serde_json::Value;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use test_support::{eventually, wait_until};

static SERIAL: Mutex<()> = Mutex::new(());

/// The readiness probe period of the test Deployment.
const PROBE_PERIOD: Duration = Duration::from_secs(1);

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

/// A separate `berth agent` process; stopped with SIGINT (its pods too) on drop unless already killed.
struct Agent {
    child: Child,
    name: String,
    exited: bool,
}

impl Agent {
    fn start(server: &Server, name: &str) -> Agent {
        let child = Command::new(BERTH)
            .args(["agent", "--server", &server.url, "--name", name, "--stop-pods-on-exit", "--data-dir"])
            .arg(&server.dir)
            .args(["--labels", &format!("topology.kubernetes.io/zone=zone-{name}")])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn berth agent");
        Agent { child, name: name.to_string(), exited: false }
    }

    fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.exited = true;
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if !self.exited {
            let _ = Command::new("kill").args(["-INT", &self.child.id().to_string()]).status();
            let _ = self.child.wait();
        }
    }
}

/// Server and agents; dropped agents first (their pods stop), then the server, then the data dir.
struct Cluster {
    agents: Vec<Agent>,
    server: Server,
    client: Client,
    dir: tempfile::TempDir,
}

impl Cluster {
    async fn start(nodes: &[&str]) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let server = Server::start(dir.path(), &[]);
        let client = server.client();
        let agents = nodes.iter().map(|n| Agent::start(&server, n)).collect();
        let c = Cluster { agents, server, client, dir };
        let want = nodes.len();
        eventually("every node Ready", Duration::from_secs(60), async || {
            let nodes = c.client.list(Kind::Node, None, None).await.ok()?;
            let ready = nodes
                .iter()
                .filter(|n| {
                    n["status"]["conditions"]
                        .as_array()
                        .is_some_and(|cs| cs.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
                })
                .count();
            (ready == want).then_some(())
        })
        .await;
        c
    }

    fn apply(&self, name: &str, manifest: &str) {
        let file = self.dir.path().join(format!("{name}.yaml"));
        std::fs::write(&file, manifest).unwrap();
        self.server.ok(&["apply", "-f", file.to_str().unwrap()]);
    }

    /// Ready endpoints of `app` from the discovery API.
    async fn ready(&self, app: &str) -> Result<Vec<Value>, String> {
        let v = self
            .client
            .discovery_endpoints(&[format!("app={app}")], Some("default"))
            .await
            .map_err(|e| e.to_string())?;
        Ok(v["items"].as_array().cloned().unwrap_or_default())
    }

    /// The Deployment's pods in the store (terminating ones included).
    async fn pods(&self, app: &str) -> Result<Vec<Value>, String> {
        self.client.list(Kind::Pod, Some("default"), Some(&format!("app={app}"))).await.map_err(|e| e.to_string())
    }

    /// Run a client command; returns (success, stdout, stderr).
    async fn berth(&self, args: &[&str]) -> (bool, String, String) {
        let out = tokio::process::Command::new(BERTH)
            .args(args)
            .arg("--data-dir")
            .arg(self.dir.path())
            .env_remove("BERTH_SERVER")
            .env_remove("BERTH_TOKEN")
            .output()
            .await
            .expect("run berth");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

/// A Deployment of `berth echo` (spread over the nodes) and its Service.
fn manifest(name: &str, replicas: u32, version: &str, extra_spec: &str) -> String {
    format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: {name}
  annotations:
    kubernetes.io/change-cause: "version {version}"
spec:
  replicas: {replicas}
{extra_spec}  strategy:
    type: RollingUpdate
    rollingUpdate: {{maxSurge: 1, maxUnavailable: 0}}
  selector:
    matchLabels: {{app: {name}}}
  template:
    metadata:
      labels: {{app: {name}}}
    spec:
      terminationGracePeriodSeconds: 2
      topologySpreadConstraints:
        - maxSkew: 1
          topologyKey: kubernetes.io/hostname
          whenUnsatisfiable: ScheduleAnyway
          labelSelector:
            matchLabels: {{app: {name}}}
      containers:
        - name: echo
          command: ["berth", "echo"]
          env:
            - {{name: VERSION, value: "{version}"}}
          ports: [{{name: http, containerPort: 8080}}]
          resources:
            requests: {{cpu: 10m, memory: 8Mi}}
          readinessProbe:
            httpGet: {{path: /healthz, port: http}}
            periodSeconds: 1
---
apiVersion: v1
kind: Service
metadata:
  name: {name}
spec:
  selector: {{app: {name}}}
  ports:
    - {{name: http, port: 80, targetPort: http}}
"#
    )
}

fn is_terminating(pod: &Value) -> bool {
    !pod["metadata"]["deletionTimestamp"].is_null()
}

fn hash(pod: &Value) -> String {
    pod["metadata"]["labels"]["pod-template-hash"].as_str().unwrap_or_default().to_string()
}

fn env_version(pod: &Value) -> String {
    pod["spec"]["containers"][0]["env"]
        .as_array()
        .and_then(|e| e.iter().find(|v| v["name"] == "VERSION"))
        .and_then(|v| v["value"].as_str())
        .unwrap_or_default()
        .to_string()
}

/// `berth echo`'s answer at an endpoint (its pid, pod and node).
async fn echo(endpoint: &Value) -> Option<Value> {
    let port = endpoint["ports"][0]["port"].as_u64()?;
    let url = format!("http://{}:{port}/", endpoint["address"].as_str()?);
    let http = test_support::http().timeout(Duration::from_secs(5)).build().ok()?;
    http.get(url).send().await.ok()?.json().await.ok()
}

fn alive(pid: u64) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.contains(") Z "))
}

/// Waits until exactly `n` pods exist, none terminating, all of one template, with `n` ready endpoints.
async fn settled(c: &Cluster, app: &str, n: usize, timeout: Duration) -> Vec<Value> {
    eventually(&format!("{n} settled pods of {app}"), timeout, async || {
        let pods = c.pods(app).await.ok()?;
        let ready = c.ready(app).await.ok()?;
        let one_template = pods.iter().map(hash).collect::<std::collections::BTreeSet<_>>().len() <= 1;
        (pods.len() == n && ready.len() == n && one_template && !pods.iter().any(is_terminating)).then_some(pods)
    })
    .await
}

#[test]
fn killed_pods_and_lost_nodes_are_replaced() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    runtime().block_on(async {
        let mut c = Cluster::start(&["node-a", "node-b"]).await;
        c.apply("web", &manifest("web", 4, "1", ""));
        let endpoints = eventually("4 ready endpoints in the registry", Duration::from_secs(120), async || {
            let e = c.ready("web").await.ok()?;
            (e.len() == 4).then_some(e)
        })
        .await;

        // kill -9 one pod's process: the registry drops it within one probe period, and a replacement
        // (restarted in place or a new pod) serves again.
        let victim = endpoints[0].clone();
        let victim_name = victim["name"].as_str().unwrap().to_string();
        let old_pid = echo(&victim).await.expect("the victim answers")["pid"].as_u64().unwrap();
        assert!(Command::new("kill").args(["-9", &old_pid.to_string()]).status().unwrap().success());
        let killed = Instant::now();
        let mut gone_after = None;
        let mut samples = 0u32;
        let recovered_after = loop {
            assert!(killed.elapsed() < Duration::from_secs(60), "no replacement within 60 s of kill -9");
            let eps = c.ready("web").await.expect("discovery API answers");
            samples += 1;
            let listed = eps.iter().any(|e| e["name"] == victim_name.as_str());
            if gone_after.is_none() && !listed {
                gone_after = Some(killed.elapsed());
            }
            if gone_after.is_some() && eps.len() == 4 {
                break killed.elapsed();
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        let gone_after = gone_after.unwrap();
        println!(
            "MEASURE kill9_pod: unlisted after {} ms, 4 ready again after {} ms ({samples} samples)",
            gone_after.as_millis(),
            recovered_after.as_millis()
        );
        assert!(gone_after <= PROBE_PERIOD, "the dead endpoint stayed ready for {gone_after:?}");
        let eps = c.ready("web").await.unwrap();
        for e in &eps {
            let answer = echo(e).await.expect("every ready endpoint answers");
            assert_ne!(answer["pid"].as_u64(), Some(old_pid), "the killed process is listed as ready: {e}");
        }

        // Stop one agent (kill -9): its pods are recreated on the other node within 15 s.
        let pods = c.pods("web").await.unwrap();
        let on_b: Vec<String> = pods
            .iter()
            .filter(|p| p["spec"]["nodeName"] == "node-b")
            .map(|p| p["metadata"]["name"].as_str().unwrap().to_string())
            .collect();
        assert!(!on_b.is_empty(), "the spread put pods on node-b: {pods:?}");
        let mut orphan_pids = Vec::new();
        for e in eps.iter().filter(|e| e["node"] == "node-b") {
            orphan_pids.push(echo(e).await.expect("node-b pod answers")["pid"].as_u64().unwrap());
        }
        c.agents[1].kill9();
        let killed = Instant::now();
        let mut min_ready = usize::MAX;
        let moved_after = loop {
            assert!(killed.elapsed() < Duration::from_secs(60), "node-b's pods were not recreated within 60 s");
            let eps = c.ready("web").await.expect("discovery API answers");
            let on_a = eps.iter().filter(|e| e["node"] == "node-a").count();
            min_ready = min_ready.min(eps.len());
            if on_a == 4 && eps.len() == 4 {
                break killed.elapsed();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        println!(
            "MEASURE agent_kill: {} pods of node-b ready again on node-a after {} ms (fewest ready meanwhile: {min_ready})",
            on_b.len(),
            moved_after.as_millis()
        );
        assert!(moved_after <= Duration::from_secs(15), "recreated after {moved_after:?}, more than 15 s");
        let pods = settled(&c, "web", 4, Duration::from_secs(30)).await;
        assert!(pods.iter().all(|p| p["spec"]["nodeName"] == "node-a"), "{pods:?}");

        // The agent comes back: it stops the pods that were replaced meanwhile.
        let restarted = Agent::start(&c.server, "node-b");
        let _ = std::mem::replace(&mut c.agents[1], restarted);
        eventually("the returning agent to stop its replaced pods", Duration::from_secs(60), async || {
            (!orphan_pids.iter().any(|p| alive(*p))).then_some(())
        })
        .await;
        settled(&c, "web", 4, Duration::from_secs(30)).await;
        assert_eq!(c.agents[1].name, "node-b");
    });
}

/// Samples the ready endpoints of `app` every 10 ms until stopped; returns (fewest seen, samples).
fn sample_ready(c: &Cluster, app: &str, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<(usize, u32, u32)> {
    let client = c.client.clone();
    let selector = format!("app={app}");
    tokio::spawn(async move {
        let (mut fewest, mut samples, mut errors) = (usize::MAX, 0u32, 0u32);
        let started = Instant::now();
        while !stop.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(300) {
            match client.discovery_endpoints(std::slice::from_ref(&selector), Some("default")).await {
                Ok(v) => {
                    fewest = fewest.min(v["items"].as_array().map_or(0, Vec::len));
                    samples += 1;
                }
                Err(_) => errors += 1,
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        (fewest, samples, errors)
    })
}

#[test]
fn rolling_update_keeps_every_replica_ready_and_undo_returns() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    runtime().block_on(async {
        let c = Cluster::start(&["node-a", "node-b"]).await;
        c.apply("web", &manifest("web", 4, "1", ""));
        let before = settled(&c, "web", 4, Duration::from_secs(120)).await;
        let h1 = hash(&before[0]);
        let (ok, out, err) = c.berth(&["rollout", "status", "deployment", "web", "--timeout", "60s"]).await;
        assert!(ok, "{out}{err}");

        // Change the env: a rolling update with maxUnavailable=0, sampled at the registry.
        let stop = Arc::new(AtomicBool::new(false));
        let sampler = sample_ready(&c, "web", stop.clone());
        c.apply("web", &manifest("web", 4, "2", ""));
        let started = Instant::now();
        let (ok, out, err) = c.berth(&["rollout", "status", "deploy", "web", "--timeout", "180s"]).await;
        let took = started.elapsed();
        assert!(ok, "rollout status failed:\n{out}{err}");
        assert!(out.contains("Waiting for deployment \"web\" rollout to finish"), "progress lines: {out}");
        assert!(out.trim_end().ends_with("deployment \"web\" successfully rolled out"), "{out}");
        let after = settled(&c, "web", 4, Duration::from_secs(60)).await;
        stop.store(true, Ordering::Relaxed);
        let (fewest, samples, errors) = sampler.await.unwrap();
        println!("MEASURE rollout: {} ms; fewest ready endpoints {fewest} over {samples} samples", took.as_millis());
        assert!(samples >= 20 && errors == 0, "{samples} samples, {errors} errors");
        assert!(fewest >= 4, "only {fewest} ready endpoints at one sampled moment during the rollout");
        let h2 = hash(&after[0]);
        assert_ne!(h1, h2);
        assert!(after.iter().all(|p| env_version(p) == "2"), "{after:?}");

        let (ok, history, err) = c.berth(&["rollout", "history", "deployment/web"]).await;
        assert!(ok, "{err}");
        let rows: Vec<&str> = history.lines().skip(2).collect();
        assert_eq!(rows.len(), 2, "{history}");
        assert!(
            rows[0].starts_with("1 ") && rows[0].contains("version 1") && rows[0].contains("VERSION=1"),
            "{history}"
        );
        assert!(
            rows[1].starts_with("2 ") && rows[1].contains("version 2") && rows[1].contains("berth echo"),
            "{history}"
        );

        // Undo: back to revision 1's template, again without losing a ready endpoint.
        let stop = Arc::new(AtomicBool::new(false));
        let sampler = sample_ready(&c, "web", stop.clone());
        let (ok, out, err) = c.berth(&["rollout", "undo", "deployments", "web"]).await;
        assert!(ok && out.contains("rolled back to revision 1"), "{out}{err}");
        let (ok, out, err) = c.berth(&["rollout", "status", "deployment/web", "--timeout", "180s"]).await;
        assert!(ok, "{out}{err}");
        let undone = settled(&c, "web", 4, Duration::from_secs(60)).await;
        stop.store(true, Ordering::Relaxed);
        let (fewest, samples, errors) = sampler.await.unwrap();
        assert!(samples >= 20 && errors == 0 && fewest >= 4, "undo: fewest {fewest} of {samples} samples");
        assert!(undone.iter().all(|p| hash(p) == h1 && env_version(p) == "1"), "{undone:?}");
        let (_, history, _) = c.berth(&["rollout", "history", "deploy", "web"]).await;
        let revisions: Vec<&str> = history.lines().skip(2).filter_map(|l| l.split_whitespace().next()).collect();
        assert_eq!(revisions, vec!["2", "3"], "revision 1 became revision 3:\n{history}");

        let (ok, _, err) = c.berth(&["rollout", "undo", "deployment", "web", "--to-revision", "9"]).await;
        assert!(!ok && err.contains("revision 9 not found"), "{err}");

        // Scale, both spellings.
        let (ok, out, err) = c.berth(&["scale", "deployment/web", "--replicas", "2"]).await;
        assert!(ok && out.contains("scaled"), "{out}{err}");
        settled(&c, "web", 2, Duration::from_secs(60)).await;
        let (ok, out, err) = c.berth(&["scale", "deploy", "web", "--replicas", "3"]).await;
        assert!(ok && out.contains("scaled"), "{out}{err}");
        settled(&c, "web", 3, Duration::from_secs(60)).await;
        let (ok, _, err) = c.berth(&["scale", "deployment", "nope", "--replicas", "3"]).await;
        assert!(!ok && err.contains("nope"), "{err}");

        // A revision that never becomes ready: `rollout status` times out, then reports the deadline.
        let never_ready =
            manifest("stuck", 1, "1", "  progressDeadlineSeconds: 4\n").replace("path: /healthz", "path: /never-ready");
        c.apply("stuck", &never_ready);
        let (ok, _, err) = c.berth(&["rollout", "status", "deployment", "stuck", "--timeout", "1s"]).await;
        assert!(!ok && err.contains("did not finish within 1s"), "{err}");
        let (ok, _, err) = c.berth(&["rollout", "status", "deployment", "stuck", "--timeout", "60s"]).await;
        assert!(!ok && err.contains("exceeded its progress deadline"), "{err}");
    });
}

#[test]
fn a_rollout_survives_a_control_plane_restart() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    runtime().block_on(async {
        let mut c = Cluster::start(&["node-a", "node-b"]).await;
        // minReadySeconds slows each step, so the restart lands in the middle of the rollout.
        let slow = "  minReadySeconds: 2\n";
        c.apply("web", &manifest("web", 4, "1", slow));
        let before = settled(&c, "web", 4, Duration::from_secs(120)).await;
        let h1 = hash(&before[0]);
        c.apply("web", &manifest("web", 4, "2", slow));
        let ready_new =
            eventually("the rollout half-way (old pods and a ready new one)", Duration::from_secs(120), async || {
                let pods = c.pods("web").await.ok()?;
                let ready = c.ready("web").await.ok()?;
                let ready_new: Vec<String> = pods
                    .iter()
                    .filter(|p| !is_terminating(p) && hash(p) != h1)
                    .map(|p| p["metadata"]["name"].as_str().unwrap_or_default().to_string())
                    .filter(|n| ready.iter().any(|e| e["name"] == n.as_str()))
                    .collect();
                let old = pods.iter().filter(|p| !is_terminating(p) && hash(p) == h1).count();
                (!ready_new.is_empty() && old >= 1).then_some(ready_new)
            })
            .await;

        // kill -9 the control plane, keep it down until every node's last heartbeat is older than the node
        // grace period (no agent can report meanwhile), and start it again on the same data dir and port.
        let nodes = c.client.list(Kind::Node, None, None).await.expect("list nodes");
        let last_heartbeat = nodes
            .iter()
            .filter_map(|n| humantime::parse_rfc3339_weak(n["status"]["heartbeatTime"].as_str()?).ok())
            .max()
            .expect("nodes report heartbeats");
        let listen = c.server.url.trim_start_matches("https://").to_string();
        c.server.kill9();
        let grace = control_plane::controllers::node::DEFAULT_GRACE;
        wait_until("every heartbeat older than the node grace period", grace * 2, async || {
            SystemTime::now() > last_heartbeat + grace + Duration::from_secs(1)
        })
        .await;
        c.server = Server::start_on(c.dir.path(), &listen, &[]);

        // From now on the Deployment never has more than replicas + maxSurge active pods.
        let stop = Arc::new(AtomicBool::new(false));
        let counter = {
            let client = c.client.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                let (mut most, mut samples) = (0usize, 0u32);
                let started = Instant::now();
                while !stop.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(300) {
                    if let Ok(pods) = client.list(Kind::Pod, Some("default"), Some("app=web")).await {
                        most = most.max(pods.iter().filter(|p| !is_terminating(p)).count());
                        samples += 1;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                (most, samples)
            })
        };
        let (ok, out, err) = c.berth(&["rollout", "status", "deployment", "web", "--timeout", "180s"]).await;
        assert!(ok, "the rollout did not complete after the restart:\n{out}{err}");
        let after = settled(&c, "web", 4, Duration::from_secs(60)).await;
        stop.store(true, Ordering::Relaxed);
        let (most, samples) = counter.await.unwrap();
        println!("MEASURE restart: at most {most} active pods over {samples} samples");
        assert!(samples >= 10, "{samples}");
        assert!(most <= 5, "{most} active pods after the restart (replicas 4 + maxSurge 1)");
        assert!(after.iter().all(|p| hash(p) != h1 && env_version(p) == "2"), "{after:?}");
        // The pods that were ready before the restart kept running: nothing was evicted for the silence
        // the control plane's own absence caused.
        let names: Vec<&str> = after.iter().filter_map(|p| p["metadata"]["name"].as_str()).collect();
        for name in &ready_new {
            assert!(names.contains(&name.as_str()), "{name} was replaced after the restart; pods now: {names:?}");
        }
        // No duplicate process either: each ready endpoint is a distinct live process.
        let eps = c.ready("web").await.unwrap();
        let mut pids = std::collections::BTreeSet::new();
        for e in &eps {
            pids.insert(echo(e).await.expect("endpoint answers")["pid"].as_u64().unwrap());
        }
        assert_eq!(pids.len(), 4, "{eps:?}");
    });
}
