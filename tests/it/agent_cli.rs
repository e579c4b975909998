//! `berth server` + `berth agent` as real processes: an echo pod with probes runs and answers, `berth logs`
//! reads it, a `kill -9` of the agent and a restart keep the same process (no duplicate), a pod whose
//! command does not exist shows the reason in `describe`, and deleting a pod stops it.

use crate::common::{wait_for, Server, BERTH};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A `berth agent` child, killed (`SIGKILL`) on drop together with the echo processes it started, so a
/// failed assertion leaks nothing into later tests.
struct AgentProc(Child, PathBuf);

impl AgentProc {
    fn kill9(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        self.kill9();
        for pid in own_echo_pids(&self.1) {
            let _ = Command::new("kill").args(["-9", &pid]).status();
        }
    }
}

fn start_agent(server: &Server) -> AgentProc {
    AgentProc(
        Command::new(BERTH)
            .args(["agent", "--name", "cli-node", "--claim-unbound", "--data-dir"])
            .arg(&server.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn berth agent"),
        server.dir.clone(),
    )
}

fn pod_json(server: &Server, name: &str) -> Option<Value> {
    let out = server.berth(&["get", "pod", name, "-o", "json"]);
    out.status.success().then(|| serde_json::from_slice(&out.stdout).ok()).flatten()
}

fn ready(p: &Value) -> bool {
    p.pointer("/status/conditions")
        .and_then(Value::as_array)
        .is_some_and(|c| c.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
}

fn http_get(port: u64, path: &str) -> Option<Value> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port as u16)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    serde_json::from_str(buf.split("\r\n\r\n").nth(1)?).ok()
}

/// `berth echo` processes started by this test's agent: those whose working directory (the pod's, which
/// the process runtime creates under the agent's data dir) is inside `data_dir`. Other tests running at the
/// same time have their own data dirs, so their echo processes are not counted.
pub(crate) fn own_echo_pids(data_dir: &Path) -> Vec<String> {
    let root = std::fs::canonicalize(data_dir).unwrap_or_else(|_| data_dir.to_path_buf());
    let Ok(procs) = std::fs::read_dir("/proc") else { return Vec::new() };
    procs
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().bytes().all(|b| b.is_ascii_digit()))
        .filter(|e| {
            let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).filter(|a| !a.is_empty()).collect();
            args == [BERTH.as_bytes(), b"echo"]
                && std::fs::read_link(e.path().join("cwd")).is_ok_and(|cwd| cwd.starts_with(&root))
        })
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

fn own_echo_processes(data_dir: &Path) -> usize {
    own_echo_pids(data_dir).len()
}

#[test]
fn agent_runs_pods_survives_kill9_and_reports_reasons() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--store", "memory:"]);
    let mut agent = start_agent(&server);
    let manifest = dir.path().join("pods.yaml");
    std::fs::write(
        &manifest,
        r#"apiVersion: v1
kind: Pod
metadata: {name: web}
spec:
  terminationGracePeriodSeconds: 5
  containers:
  - name: app
    command: ["berth", "echo"]
    ports: [{containerPort: 8080}]
    readinessProbe: {httpGet: {path: /healthz, port: 8080}, periodSeconds: 1}
    livenessProbe: {httpGet: {path: /healthz, port: 8080}, periodSeconds: 1, failureThreshold: 2}
---
apiVersion: v1
kind: Pod
metadata: {name: broken}
spec:
  containers:
  - name: app
    command: ["berth-no-such-command-xyz"]
"#,
    )
    .unwrap();
    server.ok(&["apply", "-f", manifest.to_str().unwrap()]);
    let mut pod = None;
    wait_for("web Running and Ready", Duration::from_secs(60), || {
        pod = pod_json(&server, "web").filter(ready);
        pod.is_some()
    });
    let pod = pod.unwrap();
    let port = pod["status"]["containerStatuses"][0]["ports"][0]["hostPort"].as_u64().expect("hostPort");
    let table = server.ok(&["get", "pods"]);
    assert!(table.lines().any(|l| l.starts_with("web") && l.contains("Running") && l.contains("1/1")), "{table}");
    let first = http_get(port, "/").expect("echo answers");
    assert_eq!(first["pod"], "web");
    // Logs come through the API server, which relays them from the agent.
    let logs = server.ok(&["logs", "web"]);
    assert!(logs.contains("listening on"), "{logs}");
    let tail = server.ok(&["logs", "web", "--tail", "1"]);
    assert_eq!(tail.lines().count(), 1, "{tail}");
    let fails_with = |args: &[&str], want: &str| {
        let out = server.berth(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(want), "berth {args:?}: {err}");
    };
    fails_with(&["logs", "no-such-pod"], "not found");
    fails_with(&["logs", "web", "-c", "nope"], "node cli-node");

    // kill -9 the agent and start another: the same process keeps serving, nothing is duplicated.
    agent.kill9();
    let mut agent = start_agent(&server);
    wait_for("pod still served by the same pid", Duration::from_secs(30), || {
        http_get(port, "/").is_some_and(|v| v["pid"] == first["pid"])
    });
    assert_eq!(own_echo_processes(dir.path()), 1, "exactly one echo process of this test");

    // A failing liveness probe restarts the container, visibly.
    let _ = http_get(port, "/control/fail-health");
    let mut restarted = None;
    wait_for("liveness restart", Duration::from_secs(60), || {
        restarted = pod_json(&server, "web")
            .filter(|p| p["status"]["containerStatuses"][0]["restartCount"].as_u64() >= Some(1));
        restarted.is_some()
    });
    let msg = restarted.unwrap()["status"]["containerStatuses"][0]["lastState"]["terminated"]["message"].to_string();
    assert!(msg.contains("liveness"), "{msg}");

    // The broken pod says why; the agent keeps serving the others.
    wait_for("broken pod reason", Duration::from_secs(30), || {
        String::from_utf8_lossy(&server.berth(&["describe", "pod", "broken"]).stdout).contains("ExecNotFound")
    });
    wait_for("web ready again", Duration::from_secs(60), || pod_json(&server, "web").is_some_and(|p| ready(&p)));

    server.ok(&["delete", "pod", "web"]);
    wait_for("echo process gone", Duration::from_secs(30), || own_echo_processes(dir.path()) == 0);
    agent.kill9();
}
