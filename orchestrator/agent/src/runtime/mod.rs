//! Container runtimes: how the agent starts, watches, stops and reads the logs of one container.
//!
//! A runtime knows nothing about the API, probes or restart policy; the agent's pod workers decide *when* to
//! start or stop, a runtime only does it. Each started container gets an opaque id (a process record for
//! [`process::ProcessRuntime`], a Docker container id for [`docker::DockerRuntime`]); `list` returns every
//! container the runtime started earlier, also in a previous life of the agent, so it can adopt them.

use futures::stream::BoxStream;
use serde::{Deserialize, Serialize};
use std::time::{Duration, SystemTime};

pub mod docker;
pub mod log_keeper;
pub mod process;

pub use crate::spec::{Mount, MountFile};
pub use model::Limits;

/// Everything needed to start one container (environment and volume contents already resolved). `Debug`
/// prints environment names and mount paths only: values may be secrets.
#[derive(Clone, Default)]
pub struct StartSpec {
    pub namespace: String,
    pub pod: String,
    pub pod_uid: String,
    pub container: String,
    pub image: Option<String>,
    pub command: Vec<String>,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub working_dir: Option<String>,
    /// The port the workload is told to listen on inside its container (Docker) or that it declared.
    pub container_port: Option<u16>,
    pub limits: Limits,
    /// 0 for the first run; the restart count for later ones (names log files and containers).
    pub attempt: u32,
    /// Volumes to place at their mount paths (see [`write_volume`]).
    pub mounts: Vec<Mount>,
    /// The node address the workload must be reachable at, from other hosts too (`None`: 127.0.0.1). The
    /// process runtime tells the workload (`HOST`, `BERTH_POD_IP`); Docker publishes the port there.
    pub host_ip: Option<std::net::IpAddr>,
}

impl StartSpec {
    /// Where the workload is reached: [`StartSpec::host_ip`] or loopback.
    pub fn host_ip(&self) -> std::net::IpAddr {
        self.host_ip.unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST))
    }
}

impl std::fmt::Debug for StartSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StartSpec")
            .field("namespace", &self.namespace)
            .field("pod", &self.pod)
            .field("pod_uid", &self.pod_uid)
            .field("container", &self.container)
            .field("image", &self.image)
            .field("command", &self.command)
            .field("args", &self.args)
            .field("env", &self.env.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>())
            .field("working_dir", &self.working_dir)
            .field("container_port", &self.container_port)
            .field("limits", &self.limits)
            .field("attempt", &self.attempt)
            .field("mounts", &self.mounts)
            .field("host_ip", &self.host_ip)
            .finish()
    }
}

/// Write a ConfigMap/Secret volume's files at `target` (a directory, or a file when the mount is one file),
/// replacing what an earlier start left there; an `emptyDir` is only created. Files get their mode exactly
/// (not masked by the umask); directories are owner-only, since the files may be secrets.
pub fn write_volume(mount: &Mount, target: &std::path::Path) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
    let mkdir = |d: &std::path::Path| std::fs::DirBuilder::new().recursive(true).mode(0o700).create(d);
    if mount.scratch {
        return mkdir(target);
    }
    let write_file = |path: &std::path::Path, f: &MountFile| -> std::io::Result<()> {
        if let Some(parent) = path.parent() {
            mkdir(parent)?;
        }
        // Written under a temporary name and renamed, so a reader never sees half a file.
        let tmp = path
            .with_file_name(format!(".{}.berth-tmp", path.file_name().and_then(|n| n.to_str()).unwrap_or("volume")));
        let _ = std::fs::remove_file(&tmp);
        let mut out = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
        out.write_all(&f.data)?;
        out.set_permissions(std::fs::Permissions::from_mode(f.mode))?;
        drop(out);
        std::fs::rename(&tmp, path)
    };
    if let [f] = mount.files.as_slice() {
        if f.path.is_empty() {
            if target.is_dir() {
                std::fs::remove_dir_all(target)?;
            }
            return write_file(target, f);
        }
    }
    match std::fs::symlink_metadata(target) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(target)?,
        Ok(_) => std::fs::remove_file(target)?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    mkdir(target)?;
    for f in &mount.files {
        if f.path.is_empty() || f.path.starts_with('/') || f.path.split('/').any(|s| s == "..") {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("volume {}: invalid file path {:?}", mount.volume, f.path),
            ));
        }
        write_file(&target.join(&f.path), f)?;
    }
    Ok(())
}

/// The environment variable that tells a process-runtime container where a volume is mounted:
/// `BERTH_MOUNT_` and the volume name upper-cased with `-`/`.` as `_`.
pub fn mount_env_name(volume: &str) -> String {
    let up: String =
        volume.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_uppercase() } else { '_' }).collect();
    format!("BERTH_MOUNT_{up}")
}

/// A container that runs (or ran) now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Started {
    pub id: String,
    /// The port on the node address ([`StartSpec::host_ip`]) where the container's port answers.
    pub host_port: u16,
    pub started_at: SystemTime,
    /// Limits that could not be enforced, and why (shown in the pod's status).
    pub warnings: Vec<String>,
}

/// A container found by [`Runtime::list`], possibly started by an earlier agent process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Adopted {
    pub namespace: String,
    pub pod: String,
    pub pod_uid: String,
    pub container: String,
    pub attempt: u32,
    pub started: Started,
    /// False when it has already exited.
    pub running: bool,
}

/// How a container ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitInfo {
    pub code: Option<i32>,
    pub signal: Option<i32>,
    pub oom_killed: bool,
    pub finished_at: SystemTime,
    /// Set when the runtime could not learn the exit status (e.g. an adopted process that was not our child).
    pub unknown: bool,
}

impl ExitInfo {
    /// The exit code Kubernetes shows: the code, or 128 + signal.
    pub fn exit_code(&self) -> i32 {
        match (self.code, self.signal) {
            (Some(c), _) => c,
            (None, Some(s)) => 128 + s,
            (None, None) => {
                if self.unknown {
                    0
                } else {
                    1
                }
            }
        }
    }

    pub fn succeeded(&self) -> bool {
        !self.oom_killed && self.signal.is_none() && self.code == Some(0)
    }

    /// `Completed`, `Error`, `OOMKilled` or `Unknown`.
    pub fn reason(&self) -> &'static str {
        if self.oom_killed {
            "OOMKilled"
        } else if self.unknown {
            "Unknown"
        } else if self.succeeded() {
            "Completed"
        } else {
            "Error"
        }
    }
}

/// Which logs to read and how.
#[derive(Debug, Clone, Copy, Default)]
pub struct LogOptions {
    pub follow: bool,
    pub tail: Option<usize>,
}

pub type LogStream = BoxStream<'static, Result<bytes::Bytes, RuntimeError>>;

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The container cannot start; `reason` is what the pod status shows (`ContainerCannotRun`,
    /// `ErrImageNeverPull`, ...).
    #[error("{reason}: {message}")]
    CannotRun { reason: &'static str, message: String },
    #[error("unknown container {0}")]
    NotFound(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("docker: {0}")]
    Docker(String),
}

impl RuntimeError {
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        RuntimeError::Io { context: context.into(), source }
    }
}

/// Runs containers for the agent.
#[async_trait::async_trait]
pub trait Runtime: Send + Sync + 'static {
    /// `process` or `docker` (prefix of container ids in pod status).
    fn kind(&self) -> &'static str;
    async fn start(&self, spec: &StartSpec) -> Result<Started, RuntimeError>;
    /// Resolves when the container has exited.
    async fn wait(&self, id: &str) -> Result<ExitInfo, RuntimeError>;
    /// SIGTERM (Docker: stop), then SIGKILL after `grace`. Returns when it has exited. Idempotent.
    async fn stop(&self, id: &str, grace: Duration) -> Result<(), RuntimeError>;
    /// Forget a stopped container: its record, its logs, the container itself. Idempotent.
    async fn remove(&self, id: &str) -> Result<(), RuntimeError>;
    /// Every container this runtime started and has not removed, running or not.
    async fn list(&self) -> Result<Vec<Adopted>, RuntimeError>;
    /// Run `command` in the container's context (exec probes); returns its exit code.
    async fn exec(&self, id: &str, command: &[String], timeout: Duration) -> Result<i32, RuntimeError>;
    async fn logs(&self, id: &str, opts: LogOptions) -> Result<LogStream, RuntimeError>;
    /// Remove what is left of a pod after its containers are gone (working directory).
    async fn cleanup_pod(&self, namespace: &str, pod: &str, pod_uid: &str) -> Result<(), RuntimeError>;
}

/// Runtime-independent naming of a pod's directory or container: `ns_name_uid8`.
pub fn pod_slug(namespace: &str, pod: &str, uid: &str) -> String {
    let short: String = uid.chars().filter(|c| c.is_ascii_alphanumeric()).take(8).collect();
    format!("{namespace}_{pod}_{short}")
}
