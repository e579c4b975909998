//! Several `berth server` replicas on one etcd (issue #17): one leader, the operator's copy of `token` and
//! `secret-encryption.key`, a replica with another key refused, `/readyz` on every replica, `berth get
//! controlplane`, and a SIGTERM'd leader handing over within 2 s to a replica whose controllers then act.

use crate::common::{api_http, require_success, require_tool, Server, BERTH};
use serde_json::Value;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};
use test_support::etcd::Etcd;
use test_support::wait_for;

const DEPLOYMENT: &str = r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  replicas: 2
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
        - name: web
          image: x
"#;

fn replica(dir: &Path, etcd: &Etcd, name: &str) -> Server {
    Server::start(
        dir,
        &[
            "--store",
            &etcd.url(),
            "--name",
            name,
            "--lease-duration",
            "3s",
            "--renew-deadline",
            "2s",
            "--retry-period",
            "250ms",
        ],
    )
}

/// `berth get controlplane -o json` through `server`: (name, leader) per replica.
fn members(server: &Server) -> Vec<(String, bool)> {
    let out = server.berth(&["get", "controlplane", "-o", "json"]);
    if !out.status.success() {
        return Vec::new();
    }
    let list: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| (m["name"].as_str().unwrap_or("").to_string(), m["leader"].as_bool().unwrap_or(false)))
        .collect()
}

fn leader_of(server: &Server) -> Option<String> {
    let leaders: Vec<String> = members(server).into_iter().filter(|(_, l)| *l).map(|(n, _)| n).collect();
    (leaders.len() == 1).then(|| leaders[0].clone())
}

fn pods(server: &Server) -> usize {
    let out = server.berth(&["get", "pods", "-o", "json"]);
    serde_json::from_slice::<Value>(&out.stdout).ok().and_then(|v| v["items"].as_array().map(Vec::len)).unwrap_or(0)
}

fn ready(dir: &Path, url: &str) -> bool {
    let http = api_http(dir).timeout(Duration::from_secs(3)).build().expect("http");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    rt.block_on(async { http.get(format!("{url}/readyz")).send().await.is_ok_and(|r| r.status().is_success()) })
}

#[test]
fn replicas_on_one_etcd_elect_one_leader_and_hand_over_within_2s_of_a_sigterm() {
    if !require_tool("etcd", "control-plane replicas on etcd") {
        return;
    }
    let etcd = Etcd::start();
    let root = tempfile::tempdir().expect("tempdir");
    let (d1, d2, d3) = (root.path().join("a"), root.path().join("b"), root.path().join("c"));
    let a = replica(&d1, &etcd, "a");
    // The operator's step: the first replica's token and secret-encryption.key go to the others' data dirs.
    std::fs::create_dir_all(&d2).expect("mkdir");
    for file in ["token", "secret-encryption.key"] {
        std::fs::copy(d1.join(file), d2.join(file)).expect("copy");
    }
    let b = replica(&d2, &etcd, "b");

    wait_for("two replicas, one leader", Duration::from_secs(20), || {
        let m = members(&a);
        m.len() == 2 && m.iter().filter(|(_, l)| *l).count() == 1
    });
    assert_eq!(leader_of(&a), leader_of(&b), "both replicas show the same leader");
    let table = require_success(&["get", "controlplane"], a.berth(&["get", "controlplane"]));
    assert!(table.starts_with("NAME") && table.contains("LEADER") && table.contains(&a.url), "{table}");
    wait_for("/readyz on both replicas", Duration::from_secs(20), || ready(&d1, &a.url) && ready(&d2, &b.url));

    // A replica with a key of its own cannot open the store's data: refused, naming the file.
    std::fs::create_dir_all(&d3).expect("mkdir");
    std::fs::copy(d1.join("token"), d3.join("token")).expect("copy token");
    let refused = Command::new(BERTH)
        .args(["server", "--api-listen", "127.0.0.1:0", "--name", "c", "--store", &etcd.url(), "--data-dir"])
        .arg(&d3)
        .output()
        .expect("run berth server");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success() && stderr.contains("secret-encryption.key"), "{stderr}");

    // The leader's controllers act (a Deployment gets its pods), whichever replica took the manifest.
    let manifest = root.path().join("web.yaml");
    std::fs::write(&manifest, DEPLOYMENT).expect("manifest");
    require_success(&["apply"], b.berth(&["apply", "-f", manifest.to_str().unwrap_or_default()]));
    wait_for("2 pods", Duration::from_secs(20), || pods(&a) == 2);

    // SIGTERM the leader: it stops its loops and resigns; the other leads within 2 s.
    let first = leader_of(&a).expect("a leader");
    let (mut leader, follower) = if first == "a" { (a, b) } else { (b, a) };
    let terminated = Instant::now();
    Command::new("kill").args(["-TERM", &leader.child.id().to_string()]).status().expect("kill -TERM");
    let mut took = None;
    while terminated.elapsed() < Duration::from_secs(10) {
        if members(&follower).iter().any(|(n, l)| *l && *n != first) {
            took = Some(terminated.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let took = took.expect("the other replica leads");
    assert!(took < Duration::from_secs(2), "the follower led {took:?} after the leader's SIGTERM");
    let status = leader.child.wait().expect("the old leader exits");
    assert!(status.success(), "a SIGTERM'd replica exits cleanly: {status}");
    let shown = members(&follower);
    assert_eq!(shown.len(), 1, "the resigned replica's record is gone: {shown:?}");

    // The new leader's controllers act: scale up through the survivor.
    require_success(&["scale"], follower.berth(&["scale", "deployment", "web", "--replicas", "3"]));
    wait_for("3 pods after the failover", Duration::from_secs(20), || pods(&follower) == 3);
}
