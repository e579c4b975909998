//! The Docker runtime against the local Docker Engine: builds the `FROM scratch` echo image from this crate's
//! `berth-echo` (with the shared libraries it links), runs a pod in a container with a memory limit (checked
//! with `docker inspect`), reads its logs and removes it on delete. Skipped with a printed reason where Docker
//! is unavailable, unless `BERTH_REQUIRE_ALL=1`.

use agent::runtime::docker::{build_image_from_binary, DockerRuntime};
use agent::runtime::{LogOptions, Runtime, RuntimeError, StartSpec};
use agent::spec::Limits;
use agent::{Agent, AgentConfig, Backoff, ControlPlane, MemoryControlPlane, RuntimeKind};
use futures::StreamExt;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use test_support::eventually;

const IMAGE: &str = "berth-echo:test";

async fn docker_or_skip(node: &str) -> Option<DockerRuntime> {
    let volumes = std::env::temp_dir().join(format!("berth-test-volumes-{}-{node}", std::process::id()));
    match DockerRuntime::connect(node, volumes).await {
        Ok(d) => Some(d),
        Err(e) => {
            test_support::skip(&format!("Docker runtime tests: docker is unavailable: {e}"));
            None
        }
    }
}

fn echo_binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_berth-echo"))
}

fn docker_cli(args: &[&str]) -> String {
    let out = std::process::Command::new("docker").args(args).output().expect("docker CLI");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_runtime_runs_echo_with_limits_logs_and_removal() {
    let Some(rt) = docker_or_skip("docker-test-node").await else {
        return;
    };
    build_image_from_binary(rt.client(), &echo_binary(), IMAGE).await.expect("build echo image");

    // A missing image is a clear reason, never a pull.
    let missing = StartSpec {
        namespace: "default".into(),
        pod: "ghost".into(),
        pod_uid: "uid-ghost".into(),
        container: "app".into(),
        image: Some("berth-no-such-image:never".into()),
        ..Default::default()
    };
    match rt.start(&missing).await {
        Err(RuntimeError::CannotRun { reason, .. }) => assert_eq!(reason, "ErrImageNeverPull"),
        other => panic!("expected ErrImageNeverPull, got {other:?}"),
    }

    let spec = StartSpec {
        namespace: "default".into(),
        pod: "dweb".into(),
        pod_uid: "uid-dweb".into(),
        container: "app".into(),
        image: Some(IMAGE.into()),
        command: vec!["berth".into(), "echo".into()],
        env: vec![("POD_NAME".into(), "dweb".into())],
        container_port: Some(8080),
        limits: Limits { memory_bytes: Some(64 << 20), cpu_millis: Some(500) },
        ..Default::default()
    };
    let s = rt.start(&spec).await.expect("start container");
    let url = format!("http://127.0.0.1:{}/", s.host_port);
    let body: Value = eventually("echo in docker answers", Duration::from_secs(30), async || {
        test_support::http().build().unwrap().get(&url).send().await.ok()?.json().await.ok()
    })
    .await;
    assert_eq!(body["pod"], "dweb");
    assert_eq!(docker_cli(&["inspect", "-f", "{{.HostConfig.Memory}}", &s.id]), (64u64 << 20).to_string());
    assert_eq!(docker_cli(&["inspect", "-f", "{{.HostConfig.NanoCpus}}", &s.id]), "500000000");
    assert_eq!(docker_cli(&["inspect", "-f", "{{index .Config.Labels \"berth.dev/pod\"}}", &s.id]), "default/dweb");
    let logs: Vec<u8> =
        rt.logs(&s.id, LogOptions::default()).await.unwrap().map(|b| b.unwrap().to_vec()).concat().await;
    assert!(String::from_utf8_lossy(&logs).contains("listening on"));
    let listed = rt.list().await.unwrap();
    assert!(listed.iter().any(|a| a.started.id == s.id && a.pod == "dweb" && a.running));
    rt.stop(&s.id, Duration::from_secs(5)).await.unwrap();
    let exit = rt.wait(&s.id).await.unwrap();
    assert_eq!(exit.code, Some(0), "echo exits 0 on SIGTERM: {exit:?}");
    rt.remove(&s.id).await.unwrap();
    assert_eq!(docker_cli(&["ps", "-aq", "--filter", &format!("id={}", s.id)]), "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_with_docker_runtime_runs_and_deletes_a_pod() {
    let Some(rt) = docker_or_skip("docker-agent-node").await else {
        return;
    };
    build_image_from_binary(rt.client(), &echo_binary(), IMAGE).await.expect("build echo image");
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = AgentConfig::new("docker-agent-node", dir.path());
    cfg.runtime = RuntimeKind::Docker;
    cfg.backoff = Backoff { initial: Duration::from_millis(200), ..Backoff::default() };
    let cp = MemoryControlPlane::new();
    cp.put_config_map("default", "dcfg", [("greeting".to_string(), "hello-docker".to_string())].into());
    cp.put_secret("default", "dsec", [("token".to_string(), "t0ken".to_string())].into());
    cp.put_pod(json!({
        "metadata": {"name": "dpod", "namespace": "default", "uid": "uid-dpod"},
        "spec": {"nodeName": "docker-agent-node", "terminationGracePeriodSeconds": 5,
            "volumes": [{"name": "cfg", "configMap": {"name": "dcfg"}}, {"name": "sec", "secret": {"secretName": "dsec"}}],
            "containers": [{
            "name": "app", "image": IMAGE, "command": ["berth", "echo"],
            "ports": [{"containerPort": 8080}],
            "resources": {"limits": {"memory": "32Mi"}},
            "volumeMounts": [{"name": "cfg", "mountPath": "/etc/cfg"}, {"name": "sec", "mountPath": "/run/sec"}],
            "readinessProbe": {"httpGet": {"path": "/healthz", "port": 8080}, "periodSeconds": 1}
        }]}
    }));
    cp.put_pod(json!({
        "metadata": {"name": "noimage", "namespace": "default", "uid": "uid-noimage"},
        "spec": {"nodeName": "docker-agent-node", "containers": [{"name": "app", "image": "berth-absent:1"}]}
    }));
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let cp2: Arc<dyn ControlPlane> = Arc::new(cp.clone());
    let task = tokio::spawn(async move {
        Agent::run(cfg, cp2, async move {
            let _ = rx.await;
        })
        .await
        .expect("agent runs")
    });
    let p = eventually("docker pod ready", Duration::from_secs(60), async || {
        cp.pod("default", "dpod").filter(|p| {
            p.pointer("/status/conditions")
                .and_then(Value::as_array)
                .is_some_and(|c| c.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
        })
    })
    .await;
    let id = p["status"]["containerStatuses"][0]["containerID"]
        .as_str()
        .unwrap()
        .trim_start_matches("docker://")
        .to_string();
    assert_eq!(docker_cli(&["inspect", "-f", "{{.HostConfig.Memory}}", &id]), (32u64 << 20).to_string());
    // ConfigMap and Secret volumes are read-only bind mounts at their mount paths.
    let mounts = docker_cli(&["inspect", "-f", "{{range .Mounts}}{{.Destination}}:{{.RW}} {{end}}", &id]);
    assert!(mounts.contains("/etc/cfg:false") && mounts.contains("/run/sec:false"), "{mounts}");
    let port = p["status"]["containerStatuses"][0]["ports"][0]["hostPort"].as_u64().expect("host port");
    let read = async |path: &str| -> String {
        let url = format!("http://127.0.0.1:{port}/file?path={path}");
        test_support::http().build().unwrap().get(&url).send().await.expect("echo answers").text().await.expect("body")
    };
    assert_eq!(read("/etc/cfg/greeting").await, "hello-docker");
    assert_eq!(read("/run/sec/token").await, "t0ken");
    let bad = eventually("missing image reason", Duration::from_secs(30), async || {
        cp.pod("default", "noimage").filter(|p| p.to_string().contains("ErrImageNeverPull"))
    })
    .await;
    assert!(bad.to_string().contains("never pulls"), "{bad:#}");
    cp.delete_pod("default", "dpod");
    eventually("container removed", Duration::from_secs(60), async || {
        docker_cli(&["ps", "-aq", "--filter", &format!("id={id}")]).is_empty().then_some(())
    })
    .await;
    cp.delete_pod("default", "noimage");
    let _ = tx.send(());
    task.await.unwrap();
}
