//! The agent against a fake runtime and the in-memory control plane, on tokio's paused clock: probes,
//! restarts with back-off, reasons in status, deletion, adoption. No processes, no network beyond the agent's
//! own loopback logs listener.

use agent::runtime::{Adopted, ExitInfo, LogOptions, LogStream, Runtime, RuntimeError, StartSpec, Started};
use agent::{Agent, AgentConfig, Backoff, ControlPlane, MemoryControlPlane};
use futures::stream;
use parking_lot::Mutex;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::watch;
use tokio::time::Instant;

struct FakeContainer {
    spec: StartSpec,
    exit: watch::Sender<Option<ExitInfo>>,
    removed: bool,
}

/// A runtime whose containers run until the test (or a stop) ends them. Exec probes answer with the code
/// stored for the container's pod in `exec_codes` (0 when unset).
#[derive(Default)]
pub(crate) struct FakeRuntime {
    containers: Mutex<HashMap<String, FakeContainer>>,
    starts: Mutex<Vec<(String, Instant)>>,
    exec_codes: Mutex<HashMap<String, i32>>,
    /// Pods whose containers exit with this code right after starting.
    crash_codes: Mutex<HashMap<String, i32>>,
    preexisting: Mutex<Vec<Adopted>>,
    next: Mutex<u32>,
}

impl FakeRuntime {
    fn exit_now(&self, id: &str, code: Option<i32>, signal: Option<i32>) {
        if let Some(c) = self.containers.lock().get(id) {
            if c.exit.borrow().is_none() {
                c.exit.send_replace(Some(ExitInfo {
                    code,
                    signal,
                    oom_killed: false,
                    finished_at: SystemTime::now(),
                    unknown: false,
                }));
            }
        }
    }

    fn starts_of(&self, pod: &str) -> Vec<Instant> {
        self.starts.lock().iter().filter(|(p, _)| p == pod).map(|(_, t)| *t).collect()
    }

    fn live(&self) -> Vec<String> {
        self.containers
            .lock()
            .iter()
            .filter(|(_, c)| !c.removed && c.exit.borrow().is_none())
            .map(|(_, c)| c.spec.pod.clone())
            .collect()
    }
}

#[async_trait::async_trait]
impl Runtime for FakeRuntime {
    fn kind(&self) -> &'static str {
        "fake"
    }

    async fn start(&self, spec: &StartSpec) -> Result<Started, RuntimeError> {
        if spec.command.first().map(String::as_str) == Some("does-not-exist") {
            return Err(RuntimeError::CannotRun {
                reason: "ContainerCannotRun",
                message: "ExecNotFound: executable file \"does-not-exist\" not found in $PATH".into(),
            });
        }
        let id = {
            let mut n = self.next.lock();
            *n += 1;
            format!("c{n}")
        };
        let (tx, _) = watch::channel(None);
        self.containers.lock().insert(id.clone(), FakeContainer { spec: spec.clone(), exit: tx, removed: false });
        self.starts.lock().push((spec.pod.clone(), Instant::now()));
        let crash = self.crash_codes.lock().get(&spec.pod).copied();
        if let Some(code) = crash {
            self.exit_now(&id, Some(code), None);
        }
        Ok(Started { id, host_port: 31000, started_at: SystemTime::now(), warnings: Vec::new() })
    }

    async fn wait(&self, id: &str) -> Result<ExitInfo, RuntimeError> {
        let mut rx = self
            .containers
            .lock()
            .get(id)
            .map(|c| c.exit.subscribe())
            .ok_or_else(|| RuntimeError::NotFound(id.into()))?;
        let v = rx.wait_for(|e| e.is_some()).await.map_err(|_| RuntimeError::NotFound(id.into()))?;
        v.clone().ok_or_else(|| RuntimeError::NotFound(id.into()))
    }

    async fn stop(&self, id: &str, _grace: Duration) -> Result<(), RuntimeError> {
        self.exit_now(id, None, Some(15));
        Ok(())
    }

    async fn remove(&self, id: &str) -> Result<(), RuntimeError> {
        self.exit_now(id, None, Some(9));
        if let Some(c) = self.containers.lock().get_mut(id) {
            c.removed = true;
        }
        Ok(())
    }

    async fn list(&self) -> Result<Vec<Adopted>, RuntimeError> {
        let pre = self.preexisting.lock().clone();
        for a in &pre {
            let (tx, _) = watch::channel(None);
            let spec = StartSpec {
                namespace: a.namespace.clone(),
                pod: a.pod.clone(),
                pod_uid: a.pod_uid.clone(),
                container: a.container.clone(),
                ..Default::default()
            };
            self.containers.lock().insert(a.started.id.clone(), FakeContainer { spec, exit: tx, removed: false });
        }
        Ok(pre)
    }

    async fn exec(&self, id: &str, _command: &[String], _timeout: Duration) -> Result<i32, RuntimeError> {
        let pod = self
            .containers
            .lock()
            .get(id)
            .map(|c| c.spec.pod.clone())
            .ok_or_else(|| RuntimeError::NotFound(id.into()))?;
        Ok(self.exec_codes.lock().get(&pod).copied().unwrap_or(0))
    }

    async fn logs(&self, id: &str, _opts: LogOptions) -> Result<LogStream, RuntimeError> {
        let line = format!("log of {id}\n");
        Ok(Box::pin(stream::iter(vec![Ok(bytes::Bytes::from(line))])))
    }

    async fn cleanup_pod(&self, _ns: &str, _pod: &str, _uid: &str) -> Result<(), RuntimeError> {
        Ok(())
    }
}

pub(crate) struct Harness {
    pub(crate) cp: MemoryControlPlane,
    rt: Arc<FakeRuntime>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
    pub(crate) logs: tokio::sync::oneshot::Receiver<std::net::SocketAddr>,
}

fn start_agent(cp: MemoryControlPlane, rt: Arc<FakeRuntime>, claim: bool) -> Harness {
    let mut cfg = AgentConfig::new("node-a", "/nonexistent-fake-runtime-needs-no-dir");
    cfg.backoff = Backoff {
        initial: Duration::from_secs(10),
        max: Duration::from_secs(300),
        reset_after: Duration::from_secs(600),
    };
    cfg.claim_unbound = claim;
    start_agent_with(cfg, cp, rt)
}

/// Run an agent with `cfg` on the fake runtime; `Harness::logs` yields its logs address once it is ready.
pub(crate) fn start_agent_with(cfg: AgentConfig, cp: MemoryControlPlane, rt: Arc<FakeRuntime>) -> Harness {
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let cp2: Arc<dyn ControlPlane> = Arc::new(cp.clone());
    let rt2: Arc<dyn Runtime> = rt.clone();
    let task = tokio::spawn(async move {
        let r = Agent::run_with_runtime(
            cfg,
            cp2,
            rt2,
            async move {
                let _ = stop_rx.await;
            },
            move |addr| {
                let _ = ready_tx.send(addr);
            },
        )
        .await;
        if let Err(e) = r {
            panic!("agent failed: {e}");
        }
    });
    Harness { cp, rt, stop: Some(stop_tx), task, logs: ready_rx }
}

impl Harness {
    pub(crate) async fn shutdown(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        let _ = self.task.await;
    }

    /// Wait (virtual time) until `f` holds for the pod's object.
    pub(crate) async fn until(&self, pod: &str, what: &str, f: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(3600);
        loop {
            if let Some(p) = self.cp.pod("default", pod) {
                if f(&p) {
                    return p;
                }
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {pod}: {what}; last: {:#}",
                self.cp.pod("default", pod).unwrap_or(Value::Null)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

pub(crate) fn pod(name: &str, container: Value) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"nodeName": "node-a", "containers": [container]},
    })
}

fn cstatus(p: &Value) -> Value {
    p.pointer("/status/containerStatuses/0").cloned().unwrap_or(Value::Null)
}

pub(crate) fn ready(p: &Value) -> bool {
    p.pointer("/status/conditions")
        .and_then(Value::as_array)
        .is_some_and(|c| c.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
}

#[tokio::test(start_paused = true)]
async fn readiness_gates_ready_and_liveness_restarts() {
    let h = start_agent(MemoryControlPlane::new(), Arc::new(FakeRuntime::default()), false);
    h.rt.exec_codes.lock().insert("web".into(), 1);
    h.cp.put_pod(pod(
        "web",
        json!({"name": "app", "command": ["berth", "echo"],
               "readinessProbe": {"exec": {"command": ["check"]}, "periodSeconds": 1, "failureThreshold": 1},
               "livenessProbe": {"exec": {"command": ["check"]}, "periodSeconds": 2, "failureThreshold": 3, "initialDelaySeconds": 30}}),
    ));
    let p = h.until("web", "Running", |p| p.pointer("/status/phase") == Some(&json!("Running"))).await;
    assert!(!ready(&p), "failing readiness must keep it un-ready");
    // Stays un-ready for a while (exec probe keeps failing)...
    tokio::time::sleep(Duration::from_secs(20)).await;
    assert!(!ready(&h.cp.pod("default", "web").unwrap()));
    // ...and becomes Ready once the probe passes.
    h.rt.exec_codes.lock().insert("web".into(), 0);
    h.until("web", "Ready", ready).await;
    // Liveness fails three times in a row: the container is restarted with a visible reason.
    h.rt.exec_codes.lock().insert("web".into(), 1);
    let p = h.until("web", "restarted", |p| cstatus(p)["restartCount"] == 1).await;
    let last = &cstatus(&p)["lastState"]["terminated"];
    assert!(last["message"].as_str().unwrap_or("").contains("failed liveness probe"), "{last}");
    assert!(!ready(&p));
    h.rt.exec_codes.lock().insert("web".into(), 0);
    let p = h.until("web", "running again", |p| cstatus(p)["state"]["running"].is_object() && ready(p)).await;
    assert_eq!(cstatus(&p)["restartCount"], 1);
    assert_eq!(h.rt.starts_of("web").len(), 2);
    h.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn crash_loop_backs_off_exponentially() {
    let h = start_agent(MemoryControlPlane::new(), Arc::new(FakeRuntime::default()), false);
    h.rt.crash_codes.lock().insert("crash".into(), 3);
    h.cp.put_pod(pod("crash", json!({"name": "app", "command": ["berth", "echo"]})));
    let p = h.until("crash", "5 restarts", |p| cstatus(p)["restartCount"].as_u64() >= Some(5)).await;
    let st = cstatus(&p);
    assert_eq!(st["lastState"]["terminated"]["exitCode"], 3);
    assert_eq!(st["lastState"]["terminated"]["reason"], "Error");
    let waiting = &st["state"]["waiting"];
    if !waiting.is_null() {
        assert_eq!(waiting["reason"], "CrashLoopBackOff");
    }
    let starts = h.rt.starts_of("crash");
    let gaps: Vec<u64> = starts.windows(2).map(|w| (w[1] - w[0]).as_secs()).collect();
    assert!(gaps.len() >= 4, "{gaps:?}");
    // As the kubelet: the first crash restarts at once, then the back-off starts at 10 s and doubles.
    assert_eq!(&gaps[..4], &[0, 10, 20, 40], "back-off must double after an immediate first restart");
    h.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn missing_command_is_reported_and_others_run() {
    let h = start_agent(MemoryControlPlane::new(), Arc::new(FakeRuntime::default()), false);
    h.cp.put_pod(pod("bad", json!({"name": "app", "command": ["does-not-exist"]})));
    h.cp.put_pod(pod("good", json!({"name": "app", "command": ["berth", "echo"]})));
    let p = h
        .until("bad", "reason", |p| {
            cstatus(p)["lastState"]["terminated"]["reason"] == "ContainerCannotRun"
                || cstatus(p)["state"]["waiting"]["reason"] == "ContainerCannotRun"
        })
        .await;
    assert!(p.to_string().contains("ExecNotFound"), "{p:#}");
    h.until("good", "ready", ready).await;
    h.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn never_policy_fails_and_deletion_stops() {
    let h = start_agent(MemoryControlPlane::new(), Arc::new(FakeRuntime::default()), false);
    h.rt.crash_codes.lock().insert("once".into(), 1);
    let mut p = pod("once", json!({"name": "app", "command": ["x"]}));
    p["spec"]["restartPolicy"] = json!("Never");
    h.cp.put_pod(p);
    let p = h.until("once", "Failed", |p| p.pointer("/status/phase") == Some(&json!("Failed"))).await;
    assert_eq!(cstatus(&p)["state"]["terminated"]["exitCode"], 1);
    assert_eq!(h.rt.starts_of("once").len(), 1);

    h.cp.put_pod(pod("del", json!({"name": "app", "command": ["x"]})));
    h.until("del", "ready", ready).await;
    assert!(h.rt.live().contains(&"del".to_string()));
    h.cp.delete_pod("default", "del");
    let deadline = Instant::now() + Duration::from_secs(60);
    while h.rt.live().contains(&"del".to_string()) {
        assert!(Instant::now() < deadline, "deleted pod still runs");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    h.shutdown().await;
}

/// A newer server may store a pod this agent cannot fully read (a new enum value, say). The agent keeps
/// running what it runs, and a deletion still stops it: stopping reads only the metadata.
#[tokio::test(start_paused = true)]
async fn a_deleted_pod_is_stopped_even_when_its_last_version_does_not_decode() {
    let h = start_agent(MemoryControlPlane::new(), Arc::new(FakeRuntime::default()), false);
    h.cp.put_pod(pod("skew", json!({"name": "app", "command": ["x"]})));
    h.until("skew", "ready", ready).await;
    let mut newer = h.cp.pod("default", "skew").unwrap();
    newer["spec"]["restartPolicy"] = json!("SomeFutureValue");
    h.cp.put_pod(newer);
    h.cp.delete_pod("default", "skew");
    let deadline = Instant::now() + Duration::from_secs(60);
    while h.rt.live().contains(&"skew".to_string()) {
        assert!(Instant::now() < deadline, "deleted pod still runs");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    h.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn adopts_running_containers_and_removes_orphans() {
    let rt = Arc::new(FakeRuntime::default());
    let adopted = |pod: &str, uid: &str, id: &str| Adopted {
        namespace: "default".into(),
        pod: pod.into(),
        pod_uid: uid.into(),
        container: "app".into(),
        attempt: 0,
        started: Started { id: id.into(), host_port: 31001, started_at: SystemTime::now(), warnings: vec![] },
        running: true,
    };
    rt.preexisting.lock().push(adopted("kept", "uid-default-kept", "old-1"));
    rt.preexisting.lock().push(adopted("gone", "uid-gone", "old-2"));
    let cp = MemoryControlPlane::new();
    cp.put_pod(pod("kept", json!({"name": "app", "command": ["x"]})));
    let h = start_agent(cp, rt, false);
    let p = h.until("kept", "ready", ready).await;
    assert_eq!(cstatus(&p)["containerID"], "fake://old-1");
    assert_eq!(cstatus(&p)["ports"][0]["hostPort"], 31001);
    assert!(h.rt.starts_of("kept").is_empty(), "an adopted container must not be started again");
    let deadline = Instant::now() + Duration::from_secs(60);
    while h.rt.containers.lock().get("old-2").is_some_and(|c| !c.removed) {
        assert!(Instant::now() < deadline, "orphan not removed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Node registration and heartbeat.
    let node = h.cp.node("node-a").expect("node registered");
    assert_eq!(node.pointer("/status/capacity/pods"), Some(&json!("110")));
    assert!(node.pointer("/status/heartbeatTime").is_some());
    assert!(node.pointer("/status/daemonEndpoints/agentEndpoint/Port").and_then(Value::as_u64).is_some_and(|p| p > 0));
    h.shutdown().await;
}

/// The agent watches only its node's pods: a pod moved away comes as a deletion, one moved here as an addition.
#[tokio::test(start_paused = true)]
async fn a_pod_that_leaves_the_node_is_stopped_and_one_that_arrives_runs() {
    let h = start_agent(MemoryControlPlane::new(), Arc::new(FakeRuntime::default()), false);
    h.cp.put_pod(pod("leaver", json!({"name": "app", "command": ["x"]})));
    let mut elsewhere = pod("arriver", json!({"name": "app", "command": ["x"]}));
    elsewhere["spec"]["nodeName"] = json!("node-b");
    h.cp.put_pod(elsewhere.clone());
    let mut leaving = h.until("leaver", "ready", ready).await;
    assert!(!h.rt.live().contains(&"arriver".to_string()), "another node's pod does not run here");

    leaving["spec"]["nodeName"] = json!("node-b");
    h.cp.put_pod(leaving);
    let mut arriving = h.cp.pod("default", "arriver").unwrap();
    arriving["spec"]["nodeName"] = json!("node-a");
    h.cp.put_pod(arriving);
    h.until("arriver", "ready", ready).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while h.rt.live().contains(&"leaver".to_string()) {
        assert!(Instant::now() < deadline, "a pod that left the node still runs");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    h.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn claims_unbound_pods_when_asked() {
    let h = start_agent(MemoryControlPlane::new(), Arc::new(FakeRuntime::default()), true);
    let mut p = pod("free", json!({"name": "app", "command": ["x"]}));
    p["spec"].as_object_mut().unwrap().remove("nodeName");
    h.cp.put_pod(p);
    let p = h.until("free", "ready", ready).await;
    assert_eq!(p.pointer("/spec/nodeName"), Some(&json!("node-a")));
    h.shutdown().await;
}

#[tokio::test]
async fn logs_endpoint_serves_current_container() {
    let mut h = start_agent(MemoryControlPlane::new(), Arc::new(FakeRuntime::default()), false);
    let addr = (&mut h.logs).await.expect("agent ready");
    h.cp.put_pod(pod("logme", json!({"name": "app", "command": ["x"]})));
    h.until("logme", "ready", ready).await;
    let client = test_support::http().build().unwrap();
    let body = client.get(format!("http://{addr}/logs/default/logme")).send().await.unwrap().text().await.unwrap();
    assert!(body.starts_with("log of c"), "{body}");
    let r = client.get(format!("http://{addr}/logs/default/nope")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 404);
    let r = client.get(format!("http://{addr}/logs/default/logme?previous=true")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 404, "no previous run yet");
    h.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn missing_config_map_waits_with_a_reason_and_starts_when_it_appears() {
    let h = start_agent(MemoryControlPlane::new(), Arc::new(FakeRuntime::default()), false);
    let mut p = pod(
        "cfg",
        json!({"name": "app", "command": ["berth", "echo"],
               "env": [{"name": "GREETING", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "greeting"}}}],
               "volumeMounts": [{"name": "creds", "mountPath": "/etc/creds"}]}),
    );
    p["spec"]["volumes"] =
        json!([{"name": "creds", "secret": {"secretName": "db", "items": [{"key": "pw", "path": "password"}]}}]);
    h.cp.put_pod(p);
    h.cp.put_pod(pod("good", json!({"name": "app", "command": ["berth", "echo"]})));
    let p = h
        .until("cfg", "CreateContainerConfigError", |p| {
            cstatus(p)["state"]["waiting"]["reason"] == "CreateContainerConfigError"
        })
        .await;
    assert_eq!(cstatus(&p)["state"]["waiting"]["message"], "configmap \"settings\" not found");
    h.until("good", "ready while the other waits", ready).await;
    h.cp.put_config_map("default", "settings", [("greeting".to_string(), "hello".to_string())].into());
    let p = h
        .until("cfg", "secret not found", |p| cstatus(p)["state"]["waiting"]["message"] == "secret \"db\" not found")
        .await;
    assert_eq!(cstatus(&p)["restartCount"], 0, "a configuration error is not a crash");
    h.cp.put_secret("default", "db", [("pw".to_string(), "hunter2".to_string())].into());
    let appeared = Instant::now();
    h.until("cfg", "running", |p| cstatus(p)["state"]["running"].is_object()).await;
    assert!(appeared.elapsed() <= Duration::from_secs(10), "retried within the initial back-off");
    assert!(!h.cp.pod("default", "cfg").unwrap().to_string().contains("hunter2"), "no secret in status");
    {
        let containers = h.rt.containers.lock();
        let c = containers.values().find(|c| c.spec.pod == "cfg").expect("started");
        assert!(c.spec.env.contains(&("GREETING".to_string(), "hello".to_string())));
        let m = &c.spec.mounts[0];
        assert_eq!((m.mount_path.as_str(), m.read_only), ("/etc/creds", true));
        assert_eq!(m.files.len(), 1);
        assert_eq!(
            (m.files[0].path.as_str(), m.files[0].data.as_slice(), m.files[0].mode),
            ("password", &b"hunter2"[..], 0o600)
        );
        assert!(!format!("{:?}", c.spec).contains("hunter2"), "StartSpec's Debug hides values");
    }
    h.shutdown().await;
}
