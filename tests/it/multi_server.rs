//! Several `--server`s and `--node-ip`, with real processes: the CLI and an agent given a dead server first
//! (repeated and comma-separated flags) work through the live one; the agent's pod listens on the node
//! address, reports it as hostIP, its endpoint in the discovery API is that address, and `berth logs` reaches
//! the agent there.

use crate::agent_cli::own_echo_pids;
use crate::common::{wait_for, Server, BERTH};
use serde_json::Value;
use std::process::{Command, Stdio};
use std::time::Duration;

/// A URL nothing listens on (the port was free a moment ago).
fn dead_url() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    format!("https://127.0.0.1:{}", l.local_addr().unwrap().port())
}

#[test]
fn cli_and_agent_take_several_servers_and_the_agent_serves_pods_at_its_node_ip() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--store", "memory:"]);
    let dead = dead_url();
    let servers = format!("{dead},{}", server.url);

    // The CLI: comma-separated, repeated, and through BERTH_SERVER.
    server.ok(&["get", "nodes", "--server", &servers]);
    server.ok(&["get", "nodes", "--server", &dead, "--server", &server.url]);
    let out = Command::new(BERTH)
        .args(["get", "nodes", "--data-dir"])
        .arg(dir.path())
        .env("BERTH_SERVER", &servers)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // 127.0.0.3 is this host's loopback too: an address of its own, as a second host would have.
    let agent = Command::new(BERTH)
        .args(["agent", "--name", "far", "--node-ip", "127.0.0.3", "--claim-unbound", "--server", &servers])
        .arg("--data-dir")
        .arg(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let _agent = Cleanup(agent, dir.path().to_path_buf());
    let manifest = dir.path().join("pod.yaml");
    std::fs::write(
        &manifest,
        r#"apiVersion: v1
kind: Pod
metadata: {name: web, labels: {app: far-web}}
spec:
  terminationGracePeriodSeconds: 2
  containers:
  - name: app
    command: ["berth", "echo"]
    ports: [{containerPort: 8080}]
    readinessProbe: {httpGet: {path: /healthz, port: 8080}, periodSeconds: 1}
---
apiVersion: v1
kind: Service
metadata: {name: far-web}
spec:
  selector: {app: far-web}
  ports: [{port: 80, targetPort: 8080}]
"#,
    )
    .unwrap();
    server.ok(&["apply", "-f", manifest.to_str().unwrap()]);
    let mut pod = Value::Null;
    wait_for("web ready at the node address", Duration::from_secs(60), || {
        let out = server.berth(&["get", "pod", "web", "-o", "json"]);
        pod = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        pod.pointer("/status/conditions")
            .and_then(Value::as_array)
            .is_some_and(|c| c.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
    });
    assert_eq!(pod["status"]["hostIP"], "127.0.0.3", "{pod:#}");
    let port = pod["status"]["containerStatuses"][0]["ports"][0]["hostPort"].as_u64().unwrap() as u16;
    assert!(std::net::TcpStream::connect(("127.0.0.3", port)).is_ok(), "the workload listens on the node address");
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err(), "and only there");

    // The registry's endpoint is node-ip:hostPort, so a proxy on another host can reach it.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let client = server.client();
    let mut endpoints = Value::Null;
    wait_for("the endpoint is published", Duration::from_secs(30), || {
        endpoints = rt.block_on(client.discovery_endpoints(&["app=far-web".into()], None)).unwrap_or(Value::Null);
        endpoints["items"].as_array().is_some_and(|i| !i.is_empty())
    });
    let ep = &endpoints["items"][0];
    assert_eq!(
        (ep["address"].as_str(), ep["ports"][0]["port"].as_u64()),
        (Some("127.0.0.3"), Some(port.into())),
        "{ep}"
    );

    // The API server reaches the agent's logs endpoint at the node's InternalIP.
    let logs = server.ok(&["logs", "web"]);
    assert!(logs.contains("listening on http://127.0.0.3:"), "{logs}");

    server.ok(&["delete", "pod", "web"]);
    wait_for("the pod's process stopped", Duration::from_secs(30), || own_echo_pids(dir.path()).is_empty());
}

/// Kills the agent and its echo processes however the test ends.
struct Cleanup(std::process::Child, std::path::PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
        for pid in own_echo_pids(&self.1) {
            let _ = Command::new("kill").args(["-9", &pid]).status();
        }
    }
}
