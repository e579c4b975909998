//! The process runtime with real processes: the echo workload (the `berth-echo` binary stands in for
//! `berth`), stop with grace, process-group kill, missing commands, log rotation, re-adoption from the state
//! file, and the agent end to end over the in-memory control plane.

use agent::runtime::process::{ProcessConfig, ProcessRuntime};
use agent::runtime::{LogOptions, Runtime, RuntimeError, StartSpec};
use agent::{Agent, AgentConfig, Backoff, ControlPlane, MemoryControlPlane, RuntimeKind};
use futures::StreamExt;
use serde_json::{json, Value};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use test_support::eventually;

const ECHO: &str = env!("CARGO_BIN_EXE_berth-echo");

fn config(dir: &Path) -> ProcessConfig {
    let mut c = ProcessConfig::new(dir);
    c.self_exe = ECHO.into();
    // A range of its own per test binary run keeps parallel tests apart.
    let base = 20000 + (std::process::id() % 200) as u16 * 50;
    c.port_range = base..=base + 49;
    c
}

fn spec(pod: &str, command: &[&str]) -> StartSpec {
    StartSpec {
        namespace: "default".into(),
        pod: pod.into(),
        pod_uid: format!("uid-{pod}"),
        container: "app".into(),
        command: command.iter().map(|s| s.to_string()).collect(),
        env: vec![("POD_NAME".into(), pod.into())],
        ..Default::default()
    }
}

async fn get_json(url: &str) -> Option<Value> {
    let r = test_support::http().build().unwrap().get(url).send().await.ok()?;
    r.json().await.ok()
}

fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| s.rsplit(')').next().and_then(|r| r.split_whitespace().next()).is_some_and(|st| st != "Z"))
        .unwrap_or(false)
}

#[tokio::test]
async fn echo_runs_and_answers_on_its_port() {
    let dir = tempfile::tempdir().unwrap();
    let rt = ProcessRuntime::open(config(dir.path())).await.unwrap();
    let s = rt.start(&spec("echo1", &["berth", "echo"])).await.unwrap();
    let url = format!("http://127.0.0.1:{}/", s.host_port);
    let body = eventually("echo answers", Duration::from_secs(20), async || get_json(&url).await).await;
    assert_eq!(body["pod"], "echo1");
    assert_eq!(body["counter"], 1);
    // SIGTERM: echo drains and exits 0 well within the grace period.
    let t = Instant::now();
    rt.stop(&s.id, Duration::from_secs(10)).await.unwrap();
    let exit = rt.wait(&s.id).await.unwrap();
    assert_eq!(exit.code, Some(0), "{exit:?}");
    assert!(t.elapsed() < Duration::from_secs(5));
    let logs: Vec<u8> =
        rt.logs(&s.id, LogOptions::default()).await.unwrap().map(|b| b.unwrap().to_vec()).concat().await;
    let logs = String::from_utf8_lossy(&logs);
    assert!(logs.contains("listening on"), "{logs}");
    rt.remove(&s.id).await.unwrap();
    rt.cleanup_pod("default", "echo1", "uid-echo1").await.unwrap();
    assert!(rt.list().await.unwrap().is_empty());
}

#[tokio::test]
async fn stop_escalates_to_sigkill_and_kills_the_whole_group() {
    let dir = tempfile::tempdir().unwrap();
    let rt = ProcessRuntime::open(config(dir.path())).await.unwrap();
    // Ignores SIGTERM and has a child of its own.
    let s = rt
        .start(&spec("stubborn", &["sh", "-c", "trap '' TERM; sleep 1000 & echo $! > child.pid; wait"]))
        .await
        .unwrap();
    let pidfile = dir.path().join("pods").join("default_stubborn_uidstubb").join("work").join("child.pid");
    let child: i32 = eventually("child pid", Duration::from_secs(20), async || {
        std::fs::read_to_string(&pidfile).ok().and_then(|s| s.trim().parse().ok())
    })
    .await;
    assert!(alive(child));
    let t = Instant::now();
    rt.stop(&s.id, Duration::from_millis(500)).await.unwrap();
    assert!(t.elapsed() >= Duration::from_millis(450), "grace period must be honoured");
    let exit = rt.wait(&s.id).await.unwrap();
    assert_eq!(exit.signal, Some(9), "{exit:?}");
    assert_eq!(exit.exit_code(), 137);
    eventually("child killed with its group", Duration::from_secs(10), async || (!alive(child)).then_some(())).await;
}

#[tokio::test]
async fn missing_command_has_a_clear_reason() {
    let dir = tempfile::tempdir().unwrap();
    let rt = ProcessRuntime::open(config(dir.path())).await.unwrap();
    match rt.start(&spec("nope", &["berth-no-such-command-xyz"])).await {
        Err(RuntimeError::CannotRun { reason, message }) => {
            assert_eq!(reason, "ContainerCannotRun");
            assert!(message.contains("ExecNotFound"), "{message}");
        }
        other => panic!("expected CannotRun, got {other:?}"),
    }
    // The runtime still works for others.
    let s = rt.start(&spec("fine", &["sh", "-c", "exit 7"])).await.unwrap();
    assert_eq!(rt.wait(&s.id).await.unwrap().code, Some(7));
}

#[tokio::test]
async fn logs_rotate_by_size_and_tail() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.log_max_bytes = 2048;
    cfg.log_files = 3;
    let rt = ProcessRuntime::open(cfg).await.unwrap();
    let s = rt
        .start(&spec("chatty", &["sh", "-c", "i=0; while [ $i -lt 3000 ]; do echo line $i; i=$((i+1)); if [ $((i % 100)) -eq 0 ]; then sleep 0.02; fi; done; echo done; sleep 1000"]))
        .await
        .unwrap();
    let logdir = dir.path().join("pods").join("default_chatty_uidchatt").join("logs");
    let read_all = async |tail: Option<usize>| {
        let b: Vec<u8> = rt
            .logs(&s.id, LogOptions { follow: false, tail })
            .await
            .ok()?
            .map(|b| b.map(|b| b.to_vec()).unwrap_or_default())
            .concat()
            .await;
        Some(String::from_utf8_lossy(&b).into_owned())
    };
    let tail = eventually("last line written", Duration::from_secs(60), async || {
        read_all(Some(2)).await.filter(|t| t.contains("done"))
    })
    .await;
    assert_eq!(tail, "line 2999\ndone\n");
    // Rotation loses nothing: what is kept is an unbroken run of the last lines.
    let all = read_all(None).await.unwrap();
    let lines: Vec<&str> = all.lines().collect();
    assert_eq!(lines.last(), Some(&"done"));
    let first: usize = lines[0].strip_prefix("line ").and_then(|n| n.parse().ok()).expect("whole first line");
    for (i, l) in lines[..lines.len() - 1].iter().enumerate() {
        assert_eq!(*l, format!("line {}", first + i), "a line lost or broken in {} kept bytes", all.len());
    }
    assert!(all.len() > 2 * 2048, "rotated files are kept: {} bytes", all.len());
    assert!(!logdir.join("app-0.log.3").exists(), "keeps 3 files in all");
    for e in std::fs::read_dir(&logdir).unwrap() {
        let e = e.unwrap();
        assert!(e.metadata().unwrap().len() <= 2048, "{:?} is over the size", e.file_name());
    }
    let keeper_of_this_log = || {
        std::fs::read_dir("/proc").unwrap().filter_map(|e| std::fs::read(e.ok()?.path().join("cmdline")).ok()).any(
            |c| {
                let c = String::from_utf8_lossy(&c);
                c.contains("log-keeper") && c.contains(&*logdir.to_string_lossy())
            },
        )
    };
    assert!(keeper_of_this_log(), "the log is written by a keeper process");
    rt.remove(&s.id).await.unwrap();
    eventually("the log keeper to exit", Duration::from_secs(20), async || (!keeper_of_this_log()).then_some(())).await;
}

/// A follower sees every line once, in order, across many rotations (about 40 here, 60 ms apart; it may fall
/// behind by up to 4 without a loss).
#[tokio::test]
async fn following_a_log_across_rotations_misses_and_repeats_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.log_max_bytes = 1024;
    cfg.log_files = 5;
    let rt = ProcessRuntime::open(cfg).await.unwrap();
    let s = rt
        .start(&spec("follow", &["sh", "-c", "sleep 0.5; i=0; while [ $i -lt 2000 ]; do echo line $i; i=$((i+1)); if [ $((i % 20)) -eq 0 ]; then sleep 0.01; fi; done"]))
        .await
        .unwrap();
    let followed = tokio::time::timeout(Duration::from_secs(60), async {
        rt.logs(&s.id, LogOptions { follow: true, tail: None })
            .await
            .unwrap()
            .map(|b| b.unwrap().to_vec())
            .concat()
            .await
    })
    .await
    .expect("the follow ends when the process exits");
    let want: String = (0..2000).map(|i| format!("line {i}\n")).collect();
    let followed = String::from_utf8_lossy(&followed);
    if let Some((got, want)) = followed.lines().zip(want.lines()).find(|(g, w)| g != w) {
        panic!("followed {got:?} where {want:?} was due");
    }
    assert_eq!(followed.len(), want.len(), "followed all lines, once");
    assert_eq!(rt.wait(&s.id).await.unwrap().code, Some(0));
    rt.remove(&s.id).await.unwrap();
}

#[tokio::test]
async fn a_new_runtime_readopts_from_the_state_file() {
    let dir = tempfile::tempdir().unwrap();
    let rt1 = ProcessRuntime::open(config(dir.path())).await.unwrap();
    let s = rt1.start(&spec("keep", &["berth", "echo"])).await.unwrap();
    let url = format!("http://127.0.0.1:{}/", s.host_port);
    let first = eventually("echo answers", Duration::from_secs(20), async || get_json(&url).await).await;
    // Another runtime on the same data dir (what an agent restarted after kill -9 does).
    let rt2 = ProcessRuntime::open(config(dir.path())).await.unwrap();
    let list = rt2.list().await.unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].started.id, s.id);
    assert_eq!(list[0].started.host_port, s.host_port);
    assert!(list[0].running);
    let again = get_json(&url).await.expect("still answers");
    assert_eq!(again["pid"], first["pid"], "same process");
    rt2.stop(&s.id, Duration::from_secs(5)).await.unwrap();
    let exit = rt2.wait(&s.id).await.unwrap();
    assert!(exit.unknown, "an adopted process's status is not ours to read: {exit:?}");
    drop(rt1);
}

fn echo_pod(name: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}")},
        "spec": {"nodeName": "node-p", "terminationGracePeriodSeconds": 5, "containers": [{
            "name": "app", "command": ["berth", "echo"],
            "ports": [{"containerPort": 8080}],
            "resources": {"limits": {"memory": "64Mi"}},
            "readinessProbe": {"httpGet": {"path": "/healthz", "port": 8080}, "periodSeconds": 1},
            "livenessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 1}
        }]},
    })
}

fn agent_config(dir: &Path) -> AgentConfig {
    let mut cfg = AgentConfig::new("node-p", dir);
    cfg.runtime = RuntimeKind::Process;
    cfg.self_exe = Some(ECHO.into());
    let base = 24000 + (std::process::id() % 200) as u16 * 20;
    cfg.port_range = base..=base + 19;
    cfg.heartbeat = Duration::from_millis(200);
    cfg.backoff = Backoff { initial: Duration::from_millis(200), max: Duration::from_secs(2), ..Backoff::default() };
    cfg
}

fn spawn_agent(
    cfg: AgentConfig,
    cp: &MemoryControlPlane,
) -> (tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let cp: Arc<dyn ControlPlane> = Arc::new(cp.clone());
    let task = tokio::spawn(async move {
        Agent::run(cfg, cp, async move {
            let _ = rx.await;
        })
        .await
        .expect("agent runs");
    });
    (tx, task)
}

fn ready(p: &Value) -> bool {
    p.pointer("/status/conditions")
        .and_then(Value::as_array)
        .is_some_and(|c| c.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_runs_echo_readopts_after_restart_and_restarts_on_exit() {
    let dir = tempfile::tempdir().unwrap();
    let cp = MemoryControlPlane::new();
    cp.put_pod(echo_pod("web"));
    let (stop, task) = spawn_agent(agent_config(dir.path()), &cp);
    let p = eventually("web ready", Duration::from_secs(30), async || cp.pod("default", "web").filter(ready)).await;
    let st = &p["status"]["containerStatuses"][0];
    let port = st["ports"][0]["hostPort"].as_u64().expect("host port") as u16;
    assert_eq!(st["ports"][0]["containerPort"], 8080);
    // No cgroup v2 here (or no delegation): the limit is reported as not enforced, visibly.
    if !Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        assert!(p["status"]["message"].as_str().unwrap_or("").contains("not enforced"), "{p:#}");
    }
    let url = format!("http://127.0.0.1:{port}/");
    let first = eventually("echo answers", Duration::from_secs(10), async || get_json(&url).await).await;
    assert_eq!(first["pod"], "web");

    // Agent dies (its tasks end without touching the pods) and a new one starts on the same data dir.
    let _ = stop.send(());
    task.await.unwrap();
    let (stop, task) = spawn_agent(agent_config(dir.path()), &cp);
    eventually("same process still answers after agent restart", Duration::from_secs(10), async || {
        get_json(&url).await.filter(|v| v["pid"] == first["pid"])
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let again = get_json(&url).await.unwrap();
    assert_eq!(again["pid"], first["pid"], "no duplicate: the adopted process keeps serving");

    // A failing /healthz makes it un-ready (the TCP liveness probe keeps passing).
    test_support::http()
        .build()
        .unwrap()
        .post(format!("http://127.0.0.1:{port}/control/fail-health"))
        .send()
        .await
        .unwrap();
    eventually("un-ready", Duration::from_secs(20), async || cp.pod("default", "web").filter(|p| !ready(p))).await;
    // Exit with a code: restarted with the exit code in lastState.
    let _ =
        test_support::http().build().unwrap().post(format!("http://127.0.0.1:{port}/control/exit?code=3")).send().await;
    let p = eventually("restarted", Duration::from_secs(30), async || {
        cp.pod("default", "web").filter(|p| p["status"]["containerStatuses"][0]["restartCount"].as_u64() >= Some(1))
    })
    .await;
    let last = &p["status"]["containerStatuses"][0]["lastState"]["terminated"];
    // The adopted process was not our child: its exit code is unknown to this agent.
    assert!(last["reason"] == "Unknown" || last["exitCode"] == 3, "{last}");
    let p = eventually("ready again", Duration::from_secs(30), async || cp.pod("default", "web").filter(ready)).await;
    let new_port = p["status"]["containerStatuses"][0]["ports"][0]["hostPort"].as_u64().unwrap();
    let v = eventually("new echo answers", Duration::from_secs(10), async || {
        get_json(&format!("http://127.0.0.1:{new_port}/")).await
    })
    .await;
    assert_ne!(v["pid"], first["pid"]);
    let _ = test_support::http()
        .build()
        .unwrap()
        .post(format!("http://127.0.0.1:{new_port}/control/exit?code=4"))
        .send()
        .await;
    let p = eventually("restarted twice", Duration::from_secs(30), async || {
        cp.pod("default", "web").filter(|p| p["status"]["containerStatuses"][0]["restartCount"].as_u64() >= Some(2))
    })
    .await;
    assert_eq!(p["status"]["containerStatuses"][0]["lastState"]["terminated"]["exitCode"], 4, "{p:#}");

    // Delete: the process stops and the pod's directory goes.
    let pid = v["pid"].as_i64().unwrap() as i32;
    cp.delete_pod("default", "web");
    let workdir = dir.path().join("process").join("pods").join("default_web_uidweb");
    eventually("workdir removed", Duration::from_secs(30), async || (!workdir.exists()).then_some(())).await;
    assert!(!alive(pid));
    let _ = stop.send(());
    task.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_with_a_node_ip_runs_its_workloads_there_and_reports_that_address() {
    // Any 127/8 address is this host's loopback: a second address without a second host.
    let ip: std::net::IpAddr = "127.0.0.2".parse().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cp = MemoryControlPlane::new();
    cp.put_pod(echo_pod("far"));
    let mut cfg = agent_config(dir.path());
    cfg.node_ip = ip;
    cfg.logs_listen = "127.0.0.2:0".into();
    let (stop, task) = spawn_agent(cfg, &cp);
    // Ready means the probes (default host: the node's address) reached it there.
    let p = eventually("far ready", Duration::from_secs(30), async || cp.pod("default", "far").filter(ready)).await;
    assert_eq!((p["status"]["hostIP"].as_str(), p["status"]["podIP"].as_str()), (Some("127.0.0.2"), Some("127.0.0.2")));
    let port = p["status"]["containerStatuses"][0]["ports"][0]["hostPort"].as_u64().unwrap();
    let body = eventually("echo answers at the node address", Duration::from_secs(10), async || {
        get_json(&format!("http://127.0.0.2:{port}/")).await
    })
    .await;
    assert_eq!(body["pod"], "far");
    assert!(get_json(&format!("http://127.0.0.1:{port}/")).await.is_none(), "bound to the node address only");
    let node = cp.node("node-p").unwrap();
    let internal = node["status"]["addresses"].as_array().unwrap().iter().find(|a| a["type"] == "InternalIP").cloned();
    assert_eq!(internal.unwrap()["address"], "127.0.0.2");
    cp.delete_pod("default", "far");
    let _ = stop.send(());
    task.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_keep_running_through_a_control_plane_outage_and_only_what_changed_meanwhile_is_touched() {
    let dir = tempfile::tempdir().unwrap();
    let cp = MemoryControlPlane::new();
    cp.put_pod(echo_pod("stay"));
    cp.put_pod(echo_pod("leave"));
    let (stop, task) = spawn_agent(agent_config(dir.path()), &cp);
    let mut pids = std::collections::HashMap::new();
    for name in ["stay", "leave"] {
        let p = eventually("ready", Duration::from_secs(30), async || cp.pod("default", name).filter(ready)).await;
        let port = p["status"]["containerStatuses"][0]["ports"][0]["hostPort"].as_u64().unwrap();
        let url = format!("http://127.0.0.1:{port}/");
        let body = eventually("echo answers", Duration::from_secs(10), async || get_json(&url).await).await;
        pids.insert(name, (url, body["pid"].clone()));
    }
    let writes_before = cp.status_writes();

    // Every server gone; meanwhile one pod is deleted and another created (the agent cannot know yet).
    cp.set_available(false);
    cp.delete_pod("default", "leave");
    cp.put_pod(echo_pod("arrive"));
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        for (url, pid) in pids.values() {
            let body = get_json(url).await.expect("pods keep serving while the control plane is down");
            assert_eq!(&body["pid"], pid, "not restarted");
        }
    }

    // Back: the agent lists again, stops the deleted pod, starts the new one and leaves the other alone.
    cp.set_available(true);
    eventually("the new pod runs", Duration::from_secs(30), async || cp.pod("default", "arrive").filter(ready)).await;
    let (leave_url, _) = &pids["leave"];
    eventually("the deleted pod stopped", Duration::from_secs(30), async || {
        get_json(leave_url).await.is_none().then_some(())
    })
    .await;
    let (stay_url, stay_pid) = &pids["stay"];
    assert_eq!(&get_json(stay_url).await.expect("still serving")["pid"], stay_pid, "never restarted");
    let stay = cp.pod("default", "stay").unwrap();
    assert_eq!(stay["status"]["containerStatuses"][0]["restartCount"], 0, "{stay:#}");
    assert!(cp.status_writes() > writes_before, "status writes resumed");
    cp.delete_pod("default", "stay");
    cp.delete_pod("default", "arrive");
    let _ = stop.send(());
    task.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_started_while_no_server_answers_waits_for_one_and_then_runs_its_pods() {
    let dir = tempfile::tempdir().unwrap();
    let cp = MemoryControlPlane::new();
    cp.put_pod(echo_pod("later"));
    cp.set_available(false);
    let (stop, task) = spawn_agent(agent_config(dir.path()), &cp);
    // Several registration attempts fail (back-off from 200 ms); the agent neither exits nor registers.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!task.is_finished(), "the agent gave up while the control plane was down");
    assert!(cp.node("node-p").is_none());
    cp.set_available(true);
    eventually("the pod runs once a server answers", Duration::from_secs(30), async || {
        cp.pod("default", "later").filter(ready)
    })
    .await;
    assert!(cp.node("node-p").is_some(), "the node registered");
    cp.delete_pod("default", "later");
    let _ = stop.send(());
    task.await.unwrap();
}
