//! The `process` runtime: a container is a process group started by fork/exec on this host.
//!
//! Each container runs in its own process group (so a stop signals every process it forked) with a cleared
//! environment plus the pod's, in a working directory under the agent's data dir, listening on a port taken
//! from a range and passed in `PORT`. Its stdout and stderr go through a pipe to a [`log_keeper`] process
//! that writes size-rotated files and, like the workload, does not depend on the agent being alive.
//! Memory/CPU limits use a cgroup v2 child group when the host delegates one, and otherwise become a
//! warning. Every record is kept in a JSON state file, replaced atomically on each change,
//! so an agent restarted even after `kill -9` finds its processes again (checked by pid *and* start time, so a
//! recycled pid is never mistaken for ours). It is not a sandbox: no namespaces, no image, no isolation.

use super::log_keeper;
use super::{Adopted, ExitInfo, LogOptions, LogStream, Runtime, RuntimeError, StartSpec, Started};
use model::Limits;
use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::ops::RangeInclusive;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::sync::watch;

/// How the process runtime is set up.
#[derive(Debug, Clone)]
pub struct ProcessConfig {
    /// Pods' working dirs, logs and the state file live under here.
    pub data_dir: PathBuf,
    /// What a command of `berth` runs (the running binary by default).
    pub self_exe: PathBuf,
    pub port_range: RangeInclusive<u16>,
    /// A container's log file never grows past this size: it is rotated first...
    pub log_max_bytes: u64,
    /// ...keeping this many files in all (current plus rotated).
    pub log_files: usize,
    /// Where child cgroups (v2) are created when the host allows it.
    pub cgroup_root: PathBuf,
}

impl ProcessConfig {
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            self_exe: std::env::current_exe().unwrap_or_else(|_| PathBuf::from("berth")),
            port_range: 30000..=32767,
            log_max_bytes: 10 << 20,
            log_files: 3,
            cgroup_root: PathBuf::from("/sys/fs/cgroup/berth"),
        }
    }
}

/// What the state file remembers of one container. Never holds its environment (it may carry secrets).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct ProcRecord {
    id: String,
    namespace: String,
    pod: String,
    pod_uid: String,
    container: String,
    attempt: u32,
    pid: i32,
    /// `/proc/PID/stat` start time (clock ticks since boot): tells our process from a recycled pid.
    proc_start: u64,
    host_port: u16,
    started_at: SystemTime,
    log_path: PathBuf,
    workdir: PathBuf,
    cgroup: Option<PathBuf>,
    warnings: Vec<String>,
    exit: Option<ExitInfo>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct StateFile {
    containers: Vec<ProcRecord>,
}

struct Proc {
    rec: ProcRecord,
    exit: watch::Receiver<Option<ExitInfo>>,
}

#[derive(Default)]
struct Inner {
    procs: HashMap<String, Proc>,
    /// Host ports of live containers, each with its host-wide claim (see [`claim_host_port`]).
    ports: HashMap<u16, Option<std::fs::File>>,
    next_port: u16,
}

pub struct ProcessRuntime {
    cfg: ProcessConfig,
    inner: Arc<Mutex<Inner>>,
    /// Serialises state-file writes so an older snapshot never replaces a newer one.
    persist_lock: Arc<tokio::sync::Mutex<()>>,
}

/// Claim `port` for this process among every agent on the host (several run side by side under
/// `berth up --agents N` and in tests), with a lock file in the temp dir held for as long as the port is
/// in use: a bind probe alone cannot see a port another agent has handed to a pod that has not started
/// listening yet. `Err` means another agent holds it; `Ok(None)` that no lock could be taken here (an
/// unwritable temp dir), leaving the bind probe as the only check.
fn claim_host_port(port: u16) -> Result<Option<std::fs::File>, ()> {
    let dir = std::env::temp_dir().join("berth-ports");
    if std::fs::create_dir_all(&dir).is_err() {
        return Ok(None);
    }
    let Ok(file) =
        std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(dir.join(format!("{port}.lock")))
    else {
        return Ok(None);
    };
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(std::fs::TryLockError::WouldBlock) => Err(()),
        Err(std::fs::TryLockError::Error(_)) => Ok(None),
    }
}

impl ProcessRuntime {
    /// Open the runtime: read the state file and re-adopt the processes that still run. Must be called
    /// inside a tokio runtime (it spawns the log rotation and exit watchers).
    pub async fn open(cfg: ProcessConfig) -> Result<Arc<Self>, RuntimeError> {
        tokio::fs::create_dir_all(&cfg.data_dir)
            .await
            .map_err(|e| RuntimeError::io(format!("create {}", cfg.data_dir.display()), e))?;
        let state_path = cfg.data_dir.join("process-runtime.json");
        let state: StateFile = match tokio::fs::read(&state_path).await {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                tracing::warn!("ignoring unreadable state file {}: {e}", state_path.display());
                StateFile::default()
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => StateFile::default(),
            Err(e) => return Err(RuntimeError::io(format!("read {}", state_path.display()), e)),
        };
        let rt = Arc::new(Self {
            inner: Arc::new(Mutex::new(Inner { next_port: *cfg.port_range.start(), ..Default::default() })),
            persist_lock: Arc::new(tokio::sync::Mutex::new(())),
            cfg,
        });
        for mut rec in state.containers {
            let (tx, rx) = watch::channel(rec.exit.clone());
            if rec.exit.is_none() {
                if proc_alive(rec.pid, rec.proc_start) {
                    tracing::info!(id = %rec.id, pid = rec.pid, "re-adopted running process");
                    spawn_liveness_watch(Arc::downgrade(&rt), rec.id.clone(), rec.pid, rec.proc_start, tx);
                } else {
                    let info = ExitInfo {
                        code: None,
                        signal: None,
                        oom_killed: oom_killed(rec.cgroup.as_deref()),
                        finished_at: SystemTime::now(),
                        unknown: true,
                    };
                    rec.exit = Some(info.clone());
                    tx.send_replace(Some(info));
                }
            }
            let mut inner = rt.inner.lock();
            if rec.exit.is_none() {
                inner.ports.insert(rec.host_port, claim_host_port(rec.host_port).ok().flatten());
            }
            inner.procs.insert(rec.id.clone(), Proc { rec, exit: rx });
        }
        rt.persist().await?;
        Ok(rt)
    }

    fn state_path(&self) -> PathBuf {
        self.cfg.data_dir.join("process-runtime.json")
    }

    fn pod_dir(&self, namespace: &str, pod: &str, uid: &str) -> PathBuf {
        self.cfg.data_dir.join("pods").join(super::pod_slug(namespace, pod, uid))
    }

    /// Write every record to the state file atomically (write a temporary file, fsync, rename).
    async fn persist(&self) -> Result<(), RuntimeError> {
        persist_snapshot(&self.inner, &self.state_path(), &self.persist_lock)
            .await
            .map_err(|e| RuntimeError::io(format!("write {}", self.state_path().display()), e))
    }

    fn allocate_port(&self, ip: std::net::IpAddr) -> Result<u16, RuntimeError> {
        let mut inner = self.inner.lock();
        let (lo, hi) = (*self.cfg.port_range.start(), *self.cfg.port_range.end());
        let span = u32::from(hi - lo) + 1;
        for _ in 0..span {
            let p = inner.next_port.clamp(lo, hi);
            inner.next_port = if p >= hi { lo } else { p + 1 };
            if inner.ports.contains_key(&p) {
                continue;
            }
            // Another agent on this host may have handed out the port to a pod that has not bound it yet.
            let Ok(claim) = claim_host_port(p) else { continue };
            // A port someone else holds would make the workload fail at bind; skip it now.
            if std::net::TcpListener::bind((ip, p)).is_ok() {
                inner.ports.insert(p, claim);
                return Ok(p);
            }
        }
        Err(RuntimeError::CannotRun { reason: "PortsExhausted", message: format!("no free port in {lo}-{hi}") })
    }

    fn resolve_exe(&self, name: &str, workdir: &Path) -> Result<PathBuf, RuntimeError> {
        if name == "berth" {
            return Ok(self.cfg.self_exe.clone());
        }
        if name.contains('/') {
            let p = PathBuf::from(name);
            let p = if p.is_absolute() { p } else { workdir.join(p) };
            return if p.is_file() {
                Ok(p)
            } else {
                Err(RuntimeError::CannotRun {
                    reason: "ContainerCannotRun",
                    message: format!("ExecNotFound: {name:?}: no such file"),
                })
            };
        }
        let path = std::env::var_os("PATH").unwrap_or_default();
        for dir in std::env::split_paths(&path) {
            let p = dir.join(name);
            if p.is_file() {
                return Ok(p);
            }
        }
        Err(RuntimeError::CannotRun {
            reason: "ContainerCannotRun",
            message: format!("ExecNotFound: executable file {name:?} not found in $PATH"),
        })
    }

    fn base_command(&self, exe: &Path, workdir: &Path) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(exe);
        cmd.current_dir(workdir).env_clear();
        if let Some(path) = std::env::var_os("PATH") {
            cmd.env("PATH", path);
        }
        cmd.env("HOME", workdir);
        cmd.stdin(std::process::Stdio::null());
        cmd
    }

    fn setup_cgroup(&self, id: &str, pid: i32, limits: &Limits) -> Result<Option<PathBuf>, String> {
        if limits.memory_bytes.is_none() && limits.cpu_millis.is_none() {
            return Ok(None);
        }
        let unified = Path::new("/sys/fs/cgroup/cgroup.controllers");
        let controllers = std::fs::read_to_string(unified).map_err(|_| {
            "cgroup v2 is not mounted at /sys/fs/cgroup: memory/CPU limits are not enforced".to_string()
        })?;
        let need: Vec<&str> =
            [limits.memory_bytes.map(|_| "memory"), limits.cpu_millis.map(|_| "cpu")].into_iter().flatten().collect();
        for c in &need {
            if !controllers.split_whitespace().any(|x| x == *c) {
                return Err(format!("cgroup v2 controller {c} is not available: limits are not enforced"));
            }
        }
        let root = &self.cfg.cgroup_root;
        let fail = |what: &str, e: std::io::Error| format!("cannot {what} ({e}): memory/CPU limits are not enforced");
        std::fs::create_dir_all(root).map_err(|e| fail(&format!("create cgroup {}", root.display()), e))?;
        let enable = need.iter().map(|c| format!("+{c}")).collect::<Vec<_>>().join(" ");
        if let Some(parent) = root.parent() {
            let _ = std::fs::write(parent.join("cgroup.subtree_control"), &enable);
        }
        std::fs::write(root.join("cgroup.subtree_control"), &enable)
            .map_err(|e| fail(&format!("enable controllers in {}", root.display()), e))?;
        let cg = root.join(id);
        std::fs::create_dir_all(&cg).map_err(|e| fail(&format!("create cgroup {}", cg.display()), e))?;
        if let Some(m) = limits.memory_bytes {
            std::fs::write(cg.join("memory.max"), m.to_string()).map_err(|e| fail("set memory.max", e))?;
        }
        if let Some(c) = limits.cpu_millis {
            let quota = (c * 100).max(1000);
            std::fs::write(cg.join("cpu.max"), format!("{quota} 100000")).map_err(|e| fail("set cpu.max", e))?;
        }
        std::fs::write(cg.join("cgroup.procs"), pid.to_string()).map_err(|e| fail("move the process", e))?;
        Ok(Some(cg))
    }

    fn exit_receiver(&self, id: &str) -> Result<watch::Receiver<Option<ExitInfo>>, RuntimeError> {
        self.inner.lock().procs.get(id).map(|p| p.exit.clone()).ok_or_else(|| RuntimeError::NotFound(id.to_string()))
    }

    fn record_exit(&self, id: &str, info: &ExitInfo) {
        let mut inner = self.inner.lock();
        let port = inner.procs.get_mut(id).map(|p| {
            p.rec.exit = Some(info.clone());
            p.rec.host_port
        });
        if let Some(port) = port {
            inner.ports.remove(&port);
        }
    }
}

/// An adopted process is not our child: we cannot wait(2) for it, so we look at /proc until it is gone.
fn spawn_liveness_watch(
    rt: Weak<ProcessRuntime>,
    id: String,
    pid: i32,
    start: u64,
    tx: watch::Sender<Option<ExitInfo>>,
) {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let Some(rt) = rt.upgrade() else { return };
            if proc_alive(pid, start) {
                continue;
            }
            let cgroup = rt.inner.lock().procs.get(&id).and_then(|p| p.rec.cgroup.clone());
            let info = ExitInfo {
                code: None,
                signal: None,
                oom_killed: oom_killed(cgroup.as_deref()),
                finished_at: SystemTime::now(),
                unknown: true,
            };
            rt.record_exit(&id, &info);
            let _ = rt.persist().await;
            tx.send_replace(Some(info));
            return;
        }
    });
}

/// `(state, starttime)` from `/proc/PID/stat`.
fn proc_stat(pid: i32) -> Option<(char, u64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let state = fields.first()?.chars().next()?;
    let start = fields.get(19)?.parse().ok()?;
    Some((state, start))
}

fn proc_alive(pid: i32, start: u64) -> bool {
    matches!(proc_stat(pid), Some((state, s)) if s == start && state != 'Z' && state != 'X')
}

fn oom_killed(cgroup: Option<&Path>) -> bool {
    let Some(cg) = cgroup else { return false };
    let Ok(events) = std::fs::read_to_string(cg.join("memory.events")) else {
        return false;
    };
    events.lines().any(|l| l.strip_prefix("oom_kill ").and_then(|n| n.trim().parse::<u64>().ok()).unwrap_or(0) > 0)
}

fn kill_group(pid: i32, sig: Signal) {
    // ESRCH (already gone) is the expected outcome of a race with exit; nothing else can fail for our own pgid.
    let _ = signal::killpg(Pid::from_raw(pid), sig);
}

#[async_trait::async_trait]
impl Runtime for ProcessRuntime {
    fn kind(&self) -> &'static str {
        "process"
    }

    async fn start(&self, spec: &StartSpec) -> Result<Started, RuntimeError> {
        let Some(program) = spec.command.first() else {
            return Err(RuntimeError::CannotRun {
                reason: "ContainerCannotRun",
                message: "the process runtime needs a command (images are not used)".into(),
            });
        };
        let pod_dir = self.pod_dir(&spec.namespace, &spec.pod, &spec.pod_uid);
        let mut workdir = pod_dir.join("work");
        if let Some(wd) = &spec.working_dir {
            let rel = wd.trim_start_matches('/');
            if rel.split('/').any(|seg| seg == "..") {
                return Err(RuntimeError::CannotRun {
                    reason: "ContainerCannotRun",
                    message: format!("workingDir {wd:?} may not contain '..'"),
                });
            }
            workdir = workdir.join(rel);
        }
        let logs = pod_dir.join("logs");
        for d in [&workdir, &logs] {
            tokio::fs::create_dir_all(d).await.map_err(|e| RuntimeError::io(format!("create {}", d.display()), e))?;
        }
        // A process has no mount namespace: the pod's `work` directory stands for the container's root, so
        // mountPath /etc/config is <pod dir>/work/etc/config (as workingDir /app is <pod dir>/work/app).
        let root = pod_dir.join("work");
        let mut mount_env = Vec::new();
        for m in &spec.mounts {
            let target = root.join(m.mount_path.trim_start_matches('/'));
            let (mount, dest) = (m.clone(), target.clone());
            tokio::task::spawn_blocking(move || super::write_volume(&mount, &dest))
                .await
                .map_err(|e| RuntimeError::io("write volume", std::io::Error::other(e)))?
                .map_err(|e| RuntimeError::CannotRun {
                    reason: "CreateContainerConfigError",
                    message: format!("volume {:?} at {}: {e}", m.volume, target.display()),
                })?;
            mount_env.push((super::mount_env_name(&m.volume), target));
        }
        let exe = self.resolve_exe(program, &workdir)?;
        let id = format!(
            "{}_{}_{}",
            super::pod_slug(&spec.namespace, &spec.pod, &spec.pod_uid),
            spec.container,
            spec.attempt
        );
        let log_path = logs.join(format!("{}-{}.log", spec.container, spec.attempt));
        let (log_read, log_write) = std::io::pipe().map_err(|e| RuntimeError::io("create the log pipe", e))?;
        let log_write2 = log_write.try_clone().map_err(|e| RuntimeError::io("duplicate the log pipe", e))?;
        let mut keeper = {
            let mut cmd = tokio::process::Command::new(&self.cfg.self_exe);
            cmd.args(log_keeper::args(&log_path, self.cfg.log_max_bytes, self.cfg.log_files));
            cmd.env_clear().stdin(log_read).stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null());
            // Not in the workload's group: a stop leaves it to drain the pipe; it ends when the pipe closes.
            cmd.process_group(0).kill_on_drop(false);
            cmd.spawn()
                .map_err(|e| RuntimeError::io(format!("start the log keeper {}", self.cfg.self_exe.display()), e))?
        };
        let port = self.allocate_port(spec.host_ip())?;
        let mut cmd = self.base_command(&exe, &workdir);
        cmd.args(spec.command.iter().skip(1)).args(&spec.args);
        cmd.envs(spec.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        cmd.env("BERTH_ROOT", &root);
        cmd.envs(mount_env);
        cmd.env("PORT", port.to_string());
        // Where to listen so that proxies on other hosts reach the workload; a HOST of the pod's own wins.
        let ip = spec.host_ip().to_string();
        if !spec.env.iter().any(|(k, _)| k == "HOST") {
            cmd.env("HOST", &ip);
        }
        cmd.env("BERTH_POD_IP", ip);
        if let Some(cp) = spec.container_port {
            cmd.env("CONTAINER_PORT", cp.to_string());
        }
        cmd.stdout(log_write).stderr(log_write2);
        // Own process group: a stop signals everything the workload forked, and a Ctrl-C aimed at the agent's
        // terminal does not reach the pods.
        cmd.process_group(0);
        cmd.kill_on_drop(false);
        let spawned = cmd.spawn();
        // The command holds our copies of the pipe's write end: the keeper sees the end of its input only
        // once they are closed too.
        drop(cmd);
        let cannot_run = |message: String, mut keeper: tokio::process::Child| {
            self.inner.lock().ports.remove(&port);
            tokio::spawn(async move { keeper.wait().await });
            Err(RuntimeError::CannotRun { reason: "ContainerCannotRun", message })
        };
        let (mut child, pid) = match spawned {
            Ok(c) => match c.id() {
                Some(pid) => (c, pid as i32),
                None => return cannot_run("the process exited before it could be recorded".into(), keeper),
            },
            Err(e) => {
                let message = match e.kind() {
                    std::io::ErrorKind::NotFound => format!("ExecNotFound: {}: {e}", exe.display()),
                    std::io::ErrorKind::PermissionDenied => format!("{}: permission denied", exe.display()),
                    _ => format!("{}: {e}", exe.display()),
                };
                return cannot_run(message, keeper);
            }
        };
        let proc_start = proc_stat(pid).map(|(_, s)| s).unwrap_or(0);
        let (cgroup, warnings) = match self.setup_cgroup(&id, pid, &spec.limits) {
            Ok(cg) => (cg, Vec::new()),
            Err(w) => (None, vec![w]),
        };
        let started_at = SystemTime::now();
        let rec = ProcRecord {
            id: id.clone(),
            namespace: spec.namespace.clone(),
            pod: spec.pod.clone(),
            pod_uid: spec.pod_uid.clone(),
            container: spec.container.clone(),
            attempt: spec.attempt,
            pid,
            proc_start,
            host_port: port,
            started_at,
            log_path,
            workdir,
            cgroup: cgroup.clone(),
            warnings: warnings.clone(),
            exit: None,
        };
        let (tx, rx) = watch::channel(None);
        {
            let mut inner = self.inner.lock();
            if let Some(old) = inner.procs.insert(id.clone(), Proc { rec, exit: rx }) {
                // A stale record of the same attempt (should not happen): release its port.
                if old.rec.exit.is_none() && old.rec.host_port != port {
                    inner.ports.remove(&old.rec.host_port);
                }
            }
        }
        self.persist().await?;
        let inner = Arc::downgrade(&self.inner);
        let persist_id = id.clone();
        let state_path = self.state_path();
        let persist_lock = self.persist_lock.clone();
        tokio::spawn(async move {
            let status = child.wait().await;
            let info = ExitInfo {
                code: status.as_ref().ok().and_then(|s| s.code()),
                signal: status.as_ref().ok().and_then(|s| s.signal()),
                oom_killed: oom_killed(cgroup.as_deref()),
                finished_at: SystemTime::now(),
                unknown: status.is_err(),
            };
            // The main process is gone; anything it left behind in its group goes with it.
            kill_group(pid, Signal::SIGKILL);
            // Its last lines are in the pipe: let the keeper write them before the exit is told, so logs read
            // after an exit are whole. Bounded: a process outside the group may still hold the pipe.
            let _ = tokio::time::timeout(Duration::from_secs(2), keeper.wait()).await;
            if let Some(inner) = inner.upgrade() {
                {
                    let mut g = inner.lock();
                    let port = g.procs.get_mut(&persist_id).map(|p| {
                        p.rec.exit = Some(info.clone());
                        p.rec.host_port
                    });
                    if let Some(port) = port {
                        g.ports.remove(&port);
                    }
                }
                let _ = persist_snapshot(&inner, &state_path, &persist_lock).await;
            }
            tx.send_replace(Some(info));
        });
        Ok(Started { id, host_port: port, started_at, warnings })
    }

    async fn wait(&self, id: &str) -> Result<ExitInfo, RuntimeError> {
        let mut rx = self.exit_receiver(id)?;
        let r = rx.wait_for(|e| e.is_some()).await.map_err(|_| RuntimeError::NotFound(id.to_string()))?;
        r.clone().ok_or_else(|| RuntimeError::NotFound(id.to_string()))
    }

    async fn stop(&self, id: &str, grace: Duration) -> Result<(), RuntimeError> {
        let (pid, mut rx) = {
            let inner = self.inner.lock();
            let p = inner.procs.get(id).ok_or_else(|| RuntimeError::NotFound(id.to_string()))?;
            (p.rec.pid, p.exit.clone())
        };
        if rx.borrow().is_some() {
            return Ok(());
        }
        kill_group(pid, Signal::SIGTERM);
        if tokio::time::timeout(grace, rx.wait_for(|e| e.is_some())).await.is_err() {
            tracing::info!(id, "grace period over, sending SIGKILL");
            kill_group(pid, Signal::SIGKILL);
            if tokio::time::timeout(Duration::from_secs(10), rx.wait_for(|e| e.is_some())).await.is_err() {
                return Err(RuntimeError::io(
                    format!("stop {id}"),
                    std::io::Error::other("process survived SIGKILL for 10 s"),
                ));
            }
        }
        Ok(())
    }

    async fn remove(&self, id: &str) -> Result<(), RuntimeError> {
        let running = match self.inner.lock().procs.get(id) {
            None => return Ok(()),
            Some(p) => p.rec.exit.is_none(),
        };
        if running {
            self.stop(id, Duration::ZERO).await?;
        }
        let rec = {
            let mut inner = self.inner.lock();
            let rec = inner.procs.remove(id).map(|p| p.rec);
            if let Some(r) = &rec {
                inner.ports.remove(&r.host_port);
            }
            rec
        };
        if let Some(rec) = rec {
            for n in 0..=self.cfg.log_files {
                let p = if n == 0 { rec.log_path.clone() } else { log_keeper::numbered(&rec.log_path, n) };
                let _ = tokio::fs::remove_file(p).await;
            }
            if let Some(cg) = rec.cgroup {
                let _ = tokio::fs::remove_dir(cg).await;
            }
        }
        self.persist().await
    }

    async fn list(&self) -> Result<Vec<Adopted>, RuntimeError> {
        let inner = self.inner.lock();
        Ok(inner
            .procs
            .values()
            .map(|p| Adopted {
                namespace: p.rec.namespace.clone(),
                pod: p.rec.pod.clone(),
                pod_uid: p.rec.pod_uid.clone(),
                container: p.rec.container.clone(),
                attempt: p.rec.attempt,
                started: Started {
                    id: p.rec.id.clone(),
                    host_port: p.rec.host_port,
                    started_at: p.rec.started_at,
                    warnings: p.rec.warnings.clone(),
                },
                running: p.exit.borrow().is_none(),
            })
            .collect())
    }

    async fn exec(&self, id: &str, command: &[String], timeout: Duration) -> Result<i32, RuntimeError> {
        let (workdir, port) = {
            let inner = self.inner.lock();
            let p = inner.procs.get(id).ok_or_else(|| RuntimeError::NotFound(id.to_string()))?;
            (p.rec.workdir.clone(), p.rec.host_port)
        };
        let Some(program) = command.first() else {
            return Err(RuntimeError::CannotRun { reason: "ExecProbe", message: "empty exec command".into() });
        };
        let exe = self.resolve_exe(program, &workdir)?;
        let mut cmd = self.base_command(&exe, &workdir);
        cmd.args(&command[1..])
            .env("PORT", port.to_string())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .process_group(0)
            .kill_on_drop(true);
        let mut child = cmd.spawn().map_err(|e| RuntimeError::io(format!("exec {program}"), e))?;
        match tokio::time::timeout(timeout, child.wait()).await {
            Ok(Ok(status)) => Ok(status.code().unwrap_or(128 + status.signal().unwrap_or(0))),
            Ok(Err(e)) => Err(RuntimeError::io(format!("wait for {program}"), e)),
            Err(_) => {
                if let Some(pid) = child.id() {
                    kill_group(pid as i32, Signal::SIGKILL);
                }
                Err(RuntimeError::io(
                    format!("exec {program}"),
                    std::io::Error::new(std::io::ErrorKind::TimedOut, format!("timed out after {timeout:?}")),
                ))
            }
        }
    }

    async fn logs(&self, id: &str, opts: LogOptions) -> Result<LogStream, RuntimeError> {
        let (path, exit) = {
            let inner = self.inner.lock();
            let p = inner.procs.get(id).ok_or_else(|| RuntimeError::NotFound(id.to_string()))?;
            (p.rec.log_path.clone(), p.exit.clone())
        };
        let files = self.cfg.log_files;
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<bytes::Bytes, RuntimeError>>(16);
        tokio::spawn(async move {
            if let Err(e) = stream_file_logs(path, files, opts, exit, &tx).await {
                let _ = tx.send(Err(e)).await;
            }
        });
        Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)))
    }

    async fn cleanup_pod(&self, namespace: &str, pod: &str, pod_uid: &str) -> Result<(), RuntimeError> {
        let dir = self.pod_dir(namespace, pod, pod_uid);
        match tokio::fs::remove_dir_all(&dir).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(RuntimeError::io(format!("remove {}", dir.display()), e)),
        }
    }
}

async fn persist_snapshot(
    inner: &Arc<Mutex<Inner>>,
    path: &Path,
    lock: &tokio::sync::Mutex<()>,
) -> std::io::Result<()> {
    let _guard = lock.lock().await;
    let state = {
        let g = inner.lock();
        let mut containers: Vec<ProcRecord> = g.procs.values().map(|p| p.rec.clone()).collect();
        containers.sort_by(|a, b| a.id.cmp(&b.id));
        StateFile { containers }
    };
    let bytes = serde_json::to_vec_pretty(&state)?;
    let tmp = path.with_extension("json.tmp");
    let mut f = tokio::fs::File::create(&tmp).await?;
    tokio::io::AsyncWriteExt::write_all(&mut f, &bytes).await?;
    f.sync_all().await?;
    tokio::fs::rename(&tmp, path).await
}

/// Send a container's log: rotated files oldest first, then the current one; keep only the last `tail`
/// lines when asked; with `follow`, keep reading until the process has exited, across rotations.
async fn stream_file_logs(
    path: PathBuf,
    files: usize,
    opts: LogOptions,
    mut exit: watch::Receiver<Option<ExitInfo>>,
    tx: &tokio::sync::mpsc::Sender<Result<bytes::Bytes, RuntimeError>>,
) -> Result<(), RuntimeError> {
    let read_err = |e| RuntimeError::io("read log", e);
    let (rotated, mut cur) = open_log_files(&path, files, None).await;
    // The newest file read whole: a follower that loses the current file to a rotation goes on after it.
    let mut done = None;
    let mut content = Vec::new();
    for mut f in rotated {
        f.read_to_end(&mut content).await.map_err(read_err)?;
        done = file_id(f.metadata().await);
    }
    let mut offset = 0u64;
    if let Some(f) = cur.as_mut() {
        offset = f.read_to_end(&mut content).await.map_err(read_err)? as u64;
    }
    let start = match opts.tail {
        Some(n) => tail_start(&content, n),
        None => 0,
    };
    if start < content.len() && tx.send(Ok(bytes::Bytes::copy_from_slice(&content[start..]))).await.is_err() {
        return Ok(());
    }
    if !opts.follow {
        return Ok(());
    }
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let exited = exit.borrow_and_update().is_some();
        let mut got = 0;
        loop {
            if cur.is_none() {
                let (rotated, c) = open_log_files(&path, files, done).await;
                for mut f in rotated {
                    let mut b = Vec::new();
                    f.read_to_end(&mut b).await.map_err(read_err)?;
                    done = file_id(f.metadata().await);
                    got += b.len();
                    if !b.is_empty() && tx.send(Ok(b.into())).await.is_err() {
                        return Ok(());
                    }
                }
                (cur, offset) = (c, 0);
            }
            let Some(file) = cur.as_mut() else { break };
            if files <= 1 && file.metadata().await.is_ok_and(|m| m.len() < offset) {
                // With a single file the keeper truncates it in place.
                offset = 0;
            }
            let Some(n) = send_rest(file, &mut offset, &mut buf, tx).await? else { return Ok(()) };
            got += n;
            // The keeper rotates by renaming the file away after its last write there: once the path names
            // another file (or none yet), the one we hold is complete once read to its end again.
            let ours = file_id(file.metadata().await);
            if ours.is_none() || file_id(tokio::fs::metadata(&path).await) == ours {
                break;
            }
            let Some(n) = send_rest(file, &mut offset, &mut buf, tx).await? else { return Ok(()) };
            got += n;
            (done, cur) = (ours, None);
        }
        if exited && got == 0 {
            return Ok(());
        }
        // Poll again soon while output flows, so a follower stays within the kept files.
        let pause = if got > 0 { Duration::from_millis(20) } else { Duration::from_millis(200) };
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = exit.changed() => {}
            _ = tx.closed() => return Ok(()),
        }
    }
}

/// Sends `file` from `offset` to its end; the number of bytes sent, or `None` when the receiver is gone.
async fn send_rest(
    file: &mut tokio::fs::File,
    offset: &mut u64,
    buf: &mut [u8],
    tx: &tokio::sync::mpsc::Sender<Result<bytes::Bytes, RuntimeError>>,
) -> Result<Option<usize>, RuntimeError> {
    file.seek(std::io::SeekFrom::Start(*offset)).await.map_err(|e| RuntimeError::io("seek log", e))?;
    let mut sent = 0;
    loop {
        let n = file.read(buf).await.map_err(|e| RuntimeError::io("read log", e))?;
        if n == 0 {
            return Ok(Some(sent));
        }
        *offset += n as u64;
        sent += n;
        if tx.send(Ok(bytes::Bytes::copy_from_slice(&buf[..n]))).await.is_err() {
            return Ok(None);
        }
    }
}

/// Opens the rotated log files newer than `after` (all of them when `after` is `None` or has been rotated
/// out), oldest first, and then the current file. Everything is opened before anything is read, and opened
/// again when a rotation moved the files meanwhile, so no file is read twice or skipped.
async fn open_log_files(
    path: &Path,
    files: usize,
    after: Option<(u64, u64)>,
) -> (Vec<tokio::fs::File>, Option<tokio::fs::File>) {
    let mut tries = 0;
    loop {
        let mut newer = Vec::new();
        for n in 1..files.max(1) {
            let Ok(f) = tokio::fs::File::open(log_keeper::numbered(path, n)).await else { break };
            if after.is_some() && file_id(f.metadata().await) == after {
                break;
            }
            newer.push(f);
        }
        newer.reverse();
        let cur = tokio::fs::File::open(path).await.ok();
        let newest_held = match newer.last() {
            Some(f) => file_id(f.metadata().await),
            None => after,
        };
        // A rotation while we opened would have put a file we do not hold at `.1`.
        let first = file_id(tokio::fs::metadata(log_keeper::numbered(path, 1)).await);
        tries += 1;
        if files <= 1 || first.is_none() || first == newest_held || tries == 5 {
            return (newer, cur);
        }
    }
}

fn file_id(meta: std::io::Result<std::fs::Metadata>) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    meta.ok().map(|m| (m.dev(), m.ino()))
}

/// Byte offset where the last `n` lines of `content` begin.
pub(crate) fn tail_start(content: &[u8], n: usize) -> usize {
    if n == 0 {
        return content.len();
    }
    let mut end = content.len();
    if content.last() == Some(&b'\n') {
        end -= 1;
    }
    let mut seen = 0;
    for i in (0..end).rev() {
        if content[i] == b'\n' {
            seen += 1;
            if seen == n {
                return i + 1;
            }
        }
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_offsets() {
        let cases: &[(&str, usize, &str)] = &[
            ("a\nb\nc\n", 2, "b\nc\n"),
            ("a\nb\nc", 2, "b\nc"),
            ("a\nb\n", 5, "a\nb\n"),
            ("a\nb\n", 0, ""),
            ("", 3, ""),
        ];
        for (input, n, want) in cases {
            let s = tail_start(input.as_bytes(), *n);
            assert_eq!(&input[s..], *want, "{input:?} tail {n}");
        }
    }

    #[test]
    fn proc_stat_of_self() {
        let (state, start) = proc_stat(std::process::id() as i32).expect("own stat");
        assert!(state == 'R' || state == 'S', "{state}");
        assert!(proc_alive(std::process::id() as i32, start));
        assert!(!proc_alive(std::process::id() as i32, start + 1));
    }

    #[test]
    fn a_claimed_host_port_is_refused_to_a_second_agent_until_released() {
        // Two runtimes in one process (`berth up --agents 2`) conflict like two agent processes do:
        // each claim is its own open file description.
        let port = 32_700;
        let first = claim_host_port(port).expect("free at first");
        if first.is_none() {
            eprintln!("skipped: no lock dir in {}", std::env::temp_dir().display());
            return;
        }
        assert!(claim_host_port(port).is_err(), "claimed twice");
        drop(first);
        assert!(matches!(claim_host_port(port), Ok(Some(_))), "released with the file");
    }
}
