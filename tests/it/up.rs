//! `berth up -f config/demo/`: one command to a working single-node cluster. Pods run and become ready,
//! the proxy reaches every replica through the demo Route, DNS resolves the Service, and Ctrl-C stops
//! every pod.

use crate::common::{repo, require_tool, wait_for, BERTH};
use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// Stops `berth up` (and so its pods) even when an assertion fails, so no test leaks processes.
struct Stop(std::process::Child);
impl Drop for Stop {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-INT", &self.0.id().to_string()]).status();
        let _ = self.0.wait();
    }
}

fn field(line: &str, after: &str) -> String {
    line.split(after).nth(1).and_then(|r| r.split([' ', ',']).next()).unwrap_or_default().to_string()
}

#[test]
fn up_runs_the_demo_behind_the_proxy_and_dns() {
    let dir = tempfile::tempdir().unwrap();
    let demo = repo().join("config/demo");
    let child = Command::new(BERTH)
        .args(["up", "--api-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0", "--dns-listen", "127.0.0.1:0"])
        .args(["--admin-listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .arg("-f")
        .arg(&demo)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn berth up");
    let mut child = Stop(child);
    let (tx, rx) = mpsc::channel();
    let stdout = child.0.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            println!("{line}");
            let _ = tx.send(line);
        }
    });
    let (mut proxy, mut dns) = (String::new(), String::new());
    while proxy.is_empty() || dns.is_empty() {
        let line = rx.recv_timeout(Duration::from_secs(60)).expect("berth up prints its addresses");
        if line.contains("proxy on http://") {
            proxy = field(&line, "proxy on http://");
            dns = field(&line, "DNS on ");
        }
    }
    let berth = |args: &[&str]| {
        let out = Command::new(BERTH).args(args).arg("--data-dir").arg(dir.path()).output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    wait_for("3 running and ready demo pods", Duration::from_secs(90), || {
        berth(&["get", "pods"])
            .lines()
            .filter(|l| l.starts_with("demo-") && l.contains("1/1") && l.contains("Running"))
            .count()
            == 3
    });

    wait_for("3 ready endpoints in the registry", Duration::from_secs(60), || {
        berth(&["get", "endpoints"]).lines().any(|l| l.starts_with("demo ") && l.matches("127.0.0.1:").count() == 3)
    });

    // Through the front door: 30 requests reach all 3 replicas.
    let mut pods = BTreeSet::new();
    let mut pids = BTreeSet::new();
    if require_tool("curl", "up_runs_the_demo_behind_the_proxy_and_dns") {
        wait_for("the proxy routes demo.localhost", Duration::from_secs(30), || {
            let out = Command::new("curl")
                .args(["-s", "-H", "Host: demo.localhost", &format!("http://{proxy}/")])
                .output()
                .unwrap();
            out.status.success() && String::from_utf8_lossy(&out.stdout).contains("\"pod\"")
        });
        for _ in 0..30 {
            let out = Command::new("curl")
                .args(["-s", "--fail", "-H", "Host: demo.localhost", &format!("http://{proxy}/")])
                .output()
                .unwrap();
            assert!(out.status.success(), "request through the proxy failed");
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            pods.insert(v["pod"].as_str().unwrap().to_string());
            pids.insert(v["pid"].as_u64().unwrap());
        }
        assert_eq!(pods.len(), 3, "30 requests reach all 3 replicas: {pods:?}");
    }
    if require_tool("dig", "up_runs_the_demo_behind_the_proxy_and_dns") {
        let (host, port) = dns.rsplit_once(':').unwrap();
        let out = Command::new("dig")
            .args([&format!("@{host}"), "-p", port, "demo.default.svc.cluster.local", "A", "+short"])
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim().lines().collect::<Vec<_>>(), vec!["127.0.0.1"]);
    }

    // Ctrl-C stops everything, pods included.
    Command::new("kill").args(["-INT", &child.0.id().to_string()]).status().unwrap();
    let status = child.0.wait().unwrap();
    assert!(status.success(), "berth up exits cleanly on Ctrl-C: {status}");
    for pid in pids {
        assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists(), "pod process {pid} still runs after Ctrl-C");
    }
}
