//! Scheduling end to end on `berth up --agents 3` (zones a, b, c): topology spread lands 2/2/2, and a
//! replica that required anti-affinity cannot place stays Pending with the scheduler's reason.

use crate::common::{wait_for, BERTH};
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

struct Up(Child);
impl Drop for Up {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-INT", &self.0.id().to_string()]).status();
        let _ = self.0.wait();
    }
}

fn up(dir: &Path, agents: &str) -> Up {
    let mut child = Command::new(BERTH)
        .args(["up", "--agents", agents, "--api-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"])
        .args(["--dns-listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn berth up");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            println!("{line}");
            if line.contains("ready") {
                let _ = tx.send(());
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(60)).expect("berth up became ready");
    Up(child)
}

fn berth(dir: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new(BERTH).args(args).arg("--data-dir").arg(dir).output().unwrap();
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

fn deployment(name: &str, replicas: u32, placement: &str) -> String {
    format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: {name}
spec:
  replicas: {replicas}
  selector:
    matchLabels: {{app: {name}}}
  template:
    metadata:
      labels: {{app: {name}}}
    spec:
      containers:
        - name: echo
          command: ["berth", "echo"]
          ports: [{{name: http, containerPort: 8080}}]
          resources:
            requests: {{cpu: 10m, memory: 8Mi}}
          readinessProbe:
            httpGet: {{path: /healthz, port: http}}
            periodSeconds: 1
{placement}"#
    )
}

/// Pods of `app` by phase and node.
fn pods(dir: &Path, app: &str) -> Vec<Value> {
    let (ok, out) = berth(dir, &["get", "pods", "-l", &format!("app={app}"), "-o", "json"]);
    assert!(ok, "{out}");
    serde_json::from_str::<Value>(&out).unwrap()["items"].as_array().cloned().unwrap_or_default()
}

fn running_per_node(pods: &[Value]) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for p in pods.iter().filter(|p| p["status"]["phase"] == "Running") {
        *out.entry(p["spec"]["nodeName"].as_str().unwrap_or("").to_string()).or_default() += 1;
    }
    out
}

#[test]
fn spread_lands_evenly_and_anti_affinity_leaves_a_reasoned_pending_pod() {
    let dir = tempfile::tempdir().unwrap();
    let _up = up(dir.path(), "3");
    let d = dir.path();
    wait_for("3 ready nodes", Duration::from_secs(60), || {
        berth(d, &["get", "nodes"]).1.lines().filter(|l| l.contains(" Ready")).count() == 3
    });

    let spread = deployment(
        "spread",
        6,
        r#"      topologySpreadConstraints:
        - maxSkew: 1
          topologyKey: topology.kubernetes.io/zone
          whenUnsatisfiable: DoNotSchedule
          labelSelector:
            matchLabels: {app: spread}
"#,
    );
    let file = d.join("spread.yaml");
    std::fs::write(&file, spread).unwrap();
    let (ok, out) = berth(d, &["apply", "-f", file.to_str().unwrap()]);
    assert!(ok, "{out}");
    wait_for("6 running spread pods", Duration::from_secs(90), || {
        running_per_node(&pods(d, "spread")).values().sum::<usize>() == 6
    });
    let per_node = running_per_node(&pods(d, "spread"));
    assert_eq!(per_node.values().copied().collect::<Vec<_>>(), vec![2, 2, 2], "{per_node:?}");

    let anti = deployment(
        "anti",
        4,
        r#"      affinity:
        podAntiAffinity:
          requiredDuringSchedulingIgnoredDuringExecution:
            - topologyKey: kubernetes.io/hostname
              labelSelector:
                matchLabels: {app: anti}
"#,
    );
    let file = d.join("anti.yaml");
    std::fs::write(&file, anti).unwrap();
    let (ok, out) = berth(d, &["apply", "-f", file.to_str().unwrap()]);
    assert!(ok, "{out}");
    wait_for("3 running anti pods and 1 unschedulable", Duration::from_secs(90), || {
        let all = pods(d, "anti");
        let pending = all.iter().filter(|p| p["spec"]["nodeName"].as_str().unwrap_or("").is_empty()).count();
        running_per_node(&all).values().sum::<usize>() == 3 && pending == 1
    });
    let all = pods(d, "anti");
    assert_eq!(running_per_node(&all).len(), 3, "one per node");
    let pending = all.iter().find(|p| p["spec"]["nodeName"].as_str().unwrap_or("").is_empty()).unwrap();
    let name = pending["metadata"]["name"].as_str().unwrap();
    wait_for("the pending pod's reason", Duration::from_secs(30), || {
        let (_, described) = berth(d, &["describe", "pod", name]);
        described.contains("0/3 nodes available") && described.contains("anti-affinity")
    });
    let (_, listed) = berth(d, &["get", "pods"]);
    assert!(listed.lines().any(|l| l.starts_with(name) && l.contains("Pending")), "{listed}");
}
