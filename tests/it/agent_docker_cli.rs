//! `berth server` + `berth agent --runtime docker` as real processes, used through the CLI as a user would:
//! the echo image is built locally (no registry), a pod runs in a container whose memory limit shows in
//! `docker inspect`, its logs are readable with `berth logs` (relayed by the API server from the agent, also
//! with `-f`), and deleting the pod removes the container. Skipped with a printed reason where Docker is
//! unavailable, unless `BERTH_REQUIRE_ALL=1`.
//!
//! The image holds the agent crate's `berth-echo` and the shared libraries it links.

use crate::common;
use crate::common::{require_tool, wait_for, Server, BERTH};
use agent::runtime::docker::{build_image_from_binary, DockerRuntime};
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const IMAGE: &str = "berth-echo:test";
const NODE: &str = "docker-cli-node";

/// Kills the child on drop, so a failed assertion leaks no agent into later tests.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The agent crate's `berth-echo` (a small binary; `berth` itself is hundreds of MB in a debug build), built
/// beside this test's `berth` by `cargo test --workspace`, else built here.
fn echo_binary() -> PathBuf {
    let built = Path::new(BERTH).with_file_name("berth-echo");
    if built.exists() {
        return built;
    }
    let root = common::repo();
    // A target dir of its own: the outer cargo may still hold the workspace's.
    let target = root.join("target").join("echo-build");
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .current_dir(&root)
        .env("CARGO_TARGET_DIR", &target)
        .args(["build", "-p", "agent", "--bin", "berth-echo"])
        .status()
        .expect("run cargo");
    assert!(status.success(), "build of berth-echo failed");
    target.join("debug").join("berth-echo")
}

/// Connects to the Docker Engine and builds the echo image; `None` (skip recorded) when Docker is absent.
fn docker_with_echo_image() -> Option<()> {
    if !require_tool("docker", "berth logs on the Docker runtime") {
        return None;
    }
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
    rt.block_on(async {
        let volumes = std::env::temp_dir().join(format!("berth-docker-cli-volumes-{}", std::process::id()));
        let docker = match DockerRuntime::connect(NODE, volumes).await {
            Ok(d) => d,
            Err(e) => {
                test_support::skip(&format!("berth logs on the Docker runtime: docker is unavailable: {e}"));
                return None;
            }
        };
        build_image_from_binary(docker.client(), &echo_binary(), IMAGE).await.expect("build the echo image");
        Some(())
    })
}

fn docker_cli(args: &[&str]) -> String {
    let out = Command::new("docker").args(args).output().expect("docker CLI");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
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

#[test]
fn docker_pod_logs_through_the_api_and_removal() {
    if docker_with_echo_image().is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--store", "memory:"]);
    let _agent = Guard(
        Command::new(BERTH)
            .args(["agent", "--runtime", "docker", "--name", NODE, "--claim-unbound", "--data-dir"])
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn berth agent"),
    );
    let manifest = dir.path().join("pod.yaml");
    std::fs::write(
        &manifest,
        format!(
            r#"apiVersion: v1
kind: Pod
metadata: {{name: dweb}}
spec:
  terminationGracePeriodSeconds: 5
  containers:
  - name: app
    image: {IMAGE}
    command: ["berth", "echo"]
    ports: [{{containerPort: 8080}}]
    resources: {{limits: {{memory: 48Mi}}}}
    readinessProbe: {{httpGet: {{path: /healthz, port: 8080}}, periodSeconds: 1}}
"#
        ),
    )
    .unwrap();
    server.ok(&["apply", "-f", manifest.to_str().unwrap()]);
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    let pod = loop {
        let p = pod_json(&server, "dweb");
        match p {
            Some(p) if ready(&p) => break p,
            p if std::time::Instant::now() > deadline => panic!("docker pod not Running and Ready in 90 s: {p:#?}"),
            _ => std::thread::sleep(Duration::from_millis(100)),
        }
    };
    let id = pod["status"]["containerStatuses"][0]["containerID"]
        .as_str()
        .expect("containerID")
        .trim_start_matches("docker://")
        .to_string();
    assert_eq!(docker_cli(&["inspect", "-f", "{{.HostConfig.Memory}}", &id]), (48u64 << 20).to_string());

    // `berth logs` reads the container's output through the API server.
    let logs = server.ok(&["logs", "dweb"]);
    assert!(logs.contains("listening on"), "{logs}");

    // `-f` streams: the first line arrives while the container keeps running and the command stays open.
    let mut follow = Guard(
        Command::new(BERTH)
            .args(["logs", "dweb", "-f", "--data-dir"])
            .arg(dir.path())
            .env_remove("BERTH_SERVER")
            .env_remove("BERTH_TOKEN")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn berth logs -f"),
    );
    let stdout = follow.0.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let first = rx.recv_timeout(Duration::from_secs(30)).expect("berth logs -f printed a line within 30 s");
    assert!(first.contains("listening on"), "{first}");
    std::thread::sleep(Duration::from_millis(500));
    assert!(follow.0.try_wait().expect("poll berth logs -f").is_none(), "berth logs -f ended while the pod runs");
    drop(follow);

    server.ok(&["delete", "pod", "dweb"]);
    wait_for("container removed", Duration::from_secs(60), || {
        docker_cli(&["ps", "-aq", "--filter", &format!("id={id}")]).is_empty()
    });
}
