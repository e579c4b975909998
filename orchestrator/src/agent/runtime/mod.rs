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
pub mod process;

pub use crate::agent::spec::Limits;

/// Everything needed to start one container (environment already resolved).
#[derive(Debug, Clone, Default)]
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
}

/// A container that runs (or ran) now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Started {
    pub id: String,
    /// The port on 127.0.0.1 where the container's port answers.
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
