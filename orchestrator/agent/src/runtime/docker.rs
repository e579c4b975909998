//! The `docker` runtime: a container is a Docker container, driven through the Engine API (bollard).
//!
//! Containers carry labels that mark them as Berth's (`berth.dev/pod=NS/NAME`, `berth.dev/pod-uid`,
//! `berth.dev/container`, `berth.dev/attempt`, `berth.dev/node`), which is all an agent needs to find and
//! adopt them after a restart. The container port is published on an ephemeral host port of the node address (127.0.0.1 by default); memory
//! and CPU limits map to `HostConfig.memory` and `nano_cpus`. Images are never pulled (Berth assumes no
//! registry): a missing image is the `ErrImageNeverPull` reason. [`build_image_from_binary`] builds a
//! `FROM scratch` image from a binary of this workspace, in memory.

use super::{Adopted, ExitInfo, LogOptions, LogStream, Runtime, RuntimeError, StartSpec, Started};
use bollard::models::{ContainerCreateBody, HostConfig, PortBinding};
use bollard::query_parameters::{
    BuildImageOptionsBuilder, CreateContainerOptionsBuilder, InspectContainerOptions, ListContainersOptionsBuilder,
    LogsOptionsBuilder, RemoveContainerOptionsBuilder, StopContainerOptionsBuilder,
};
use bollard::Docker;
use futures::StreamExt;
use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, SystemTime};

pub const LABEL_POD: &str = "berth.dev/pod";
pub const LABEL_POD_UID: &str = "berth.dev/pod-uid";
pub const LABEL_CONTAINER: &str = "berth.dev/container";
pub const LABEL_ATTEMPT: &str = "berth.dev/attempt";
pub const LABEL_NODE: &str = "berth.dev/node";
pub const LABEL_HOST_PORT: &str = "berth.dev/host-port";

/// The port a workload listens on inside its container when it declares none.
const DEFAULT_CONTAINER_PORT: u16 = 8080;

pub struct DockerRuntime {
    docker: Docker,
    node: String,
    /// Where ConfigMap/Secret/emptyDir volume contents are written on the host, to be bind-mounted.
    volumes_dir: std::path::PathBuf,
}

fn derr(e: bollard::errors::Error) -> RuntimeError {
    RuntimeError::Docker(e.to_string())
}

fn is_not_found(e: &bollard::errors::Error) -> bool {
    matches!(e, bollard::errors::Error::DockerResponseServerError { status_code: 404, .. })
}

impl DockerRuntime {
    /// Connect to the local Docker socket and agree on an API version; volume contents go below `volumes_dir`
    /// (one directory per pod). Fails when Docker is not reachable.
    pub async fn connect(node: &str, volumes_dir: impl Into<std::path::PathBuf>) -> Result<Self, RuntimeError> {
        let docker = Docker::connect_with_local_defaults().map_err(derr)?;
        let docker = docker.negotiate_version().await.map_err(derr)?;
        docker.ping().await.map_err(derr)?;
        Ok(Self { docker, node: node.to_string(), volumes_dir: volumes_dir.into() })
    }

    fn pod_volumes(&self, namespace: &str, pod: &str, uid: &str) -> std::path::PathBuf {
        self.volumes_dir.join(super::pod_slug(namespace, pod, uid))
    }

    /// Write the container's volumes on the host and return their bind specs (`host:container[:ro]`).
    async fn bind_volumes(&self, spec: &StartSpec) -> Result<Vec<String>, RuntimeError> {
        let base = self.pod_volumes(&spec.namespace, &spec.pod, &spec.pod_uid);
        let mut binds = Vec::new();
        for m in &spec.mounts {
            // emptyDirs are shared by the pod's containers; ConfigMap/Secret contents are per container, as
            // each start reads them afresh.
            let host =
                if m.scratch { base.join("empty").join(&m.volume) } else { base.join(&spec.container).join(&m.volume) };
            let (mount, dest) = (m.clone(), host.clone());
            tokio::task::spawn_blocking(move || super::write_volume(&mount, &dest))
                .await
                .map_err(|e| RuntimeError::io("write volume", std::io::Error::other(e)))?
                .map_err(|e| RuntimeError::CannotRun {
                    reason: "CreateContainerConfigError",
                    message: format!("volume {:?} at {}: {e}", m.volume, host.display()),
                })?;
            let ro = if m.read_only { ":ro" } else { "" };
            binds.push(format!("{}:{}{ro}", host.display(), m.mount_path));
        }
        Ok(binds)
    }

    pub fn client(&self) -> &Docker {
        &self.docker
    }

    async fn inspect(&self, id: &str) -> Result<bollard::models::ContainerInspectResponse, RuntimeError> {
        self.docker.inspect_container(id, None::<InspectContainerOptions>).await.map_err(|e| {
            if is_not_found(&e) {
                RuntimeError::NotFound(id.to_string())
            } else {
                derr(e)
            }
        })
    }

    async fn exit_info(&self, id: &str) -> Result<Option<ExitInfo>, RuntimeError> {
        let info = self.inspect(id).await?;
        let Some(state) = info.state else {
            return Ok(None);
        };
        if state.running == Some(true) || state.restarting == Some(true) {
            return Ok(None);
        }
        let code = state.exit_code.map(|c| c as i32);
        let finished_at = state
            .finished_at
            .as_deref()
            .and_then(|t| humantime::parse_rfc3339_weak(t.trim_end_matches('Z')).ok())
            .unwrap_or_else(SystemTime::now);
        Ok(Some(ExitInfo {
            code,
            signal: None,
            oom_killed: state.oom_killed == Some(true),
            finished_at,
            unknown: false,
        }))
    }
}

#[async_trait::async_trait]
impl Runtime for DockerRuntime {
    fn kind(&self) -> &'static str {
        "docker"
    }

    async fn start(&self, spec: &StartSpec) -> Result<Started, RuntimeError> {
        let Some(image) = spec.image.clone().filter(|i| !i.is_empty()) else {
            return Err(RuntimeError::CannotRun {
                reason: "InvalidImageName",
                message: "the container has no image".into(),
            });
        };
        match self.docker.inspect_image(&image).await {
            Ok(_) => {}
            Err(e) if is_not_found(&e) => {
                return Err(RuntimeError::CannotRun {
                    reason: "ErrImageNeverPull",
                    message: format!("image {image:?} is not present on this node and Berth never pulls images"),
                })
            }
            Err(e) => return Err(derr(e)),
        }
        let port = spec.container_port.unwrap_or(DEFAULT_CONTAINER_PORT);
        let port_key = format!("{port}/tcp");
        let mut env: Vec<String> = spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        env.push(format!("PORT={port}"));
        env.push(format!("CONTAINER_PORT={port}"));
        let labels: HashMap<String, String> = [
            (LABEL_POD, format!("{}/{}", spec.namespace, spec.pod)),
            (LABEL_POD_UID, spec.pod_uid.clone()),
            (LABEL_CONTAINER, spec.container.clone()),
            (LABEL_ATTEMPT, spec.attempt.to_string()),
            (LABEL_NODE, self.node.clone()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let binds = self.bind_volumes(spec).await?;
        let host_config = HostConfig {
            binds: (!binds.is_empty()).then_some(binds),
            memory: spec.limits.memory_bytes.map(|m| m as i64),
            nano_cpus: spec.limits.cpu_millis.map(|c| (c as i64) * 1_000_000),
            port_bindings: Some(HashMap::from([(
                port_key.clone(),
                Some(vec![PortBinding { host_ip: Some(spec.host_ip().to_string()), host_port: Some(String::new()) }]),
            )])),
            ..Default::default()
        };
        let body = ContainerCreateBody {
            image: Some(image.clone()),
            entrypoint: (!spec.command.is_empty()).then(|| spec.command.clone()),
            cmd: (!spec.args.is_empty()).then(|| spec.args.clone()),
            env: Some(env),
            working_dir: spec.working_dir.clone(),
            labels: Some(labels),
            exposed_ports: Some(vec![port_key.clone()]),
            host_config: Some(host_config),
            ..Default::default()
        };
        let name = format!(
            "berth_{}_{}_{}",
            super::pod_slug(&spec.namespace, &spec.pod, &spec.pod_uid),
            spec.container,
            spec.attempt
        );
        // A leftover of the same name (an earlier agent died between create and record) would block us.
        let _ =
            self.docker.remove_container(&name, Some(RemoveContainerOptionsBuilder::new().force(true).build())).await;
        let created = self
            .docker
            .create_container(Some(CreateContainerOptionsBuilder::new().name(&name).build()), body)
            .await
            .map_err(|e| RuntimeError::CannotRun { reason: "CreateContainerError", message: e.to_string() })?;
        let id = created.id;
        if let Err(e) = self.docker.start_container(&id, None).await {
            let _ =
                self.docker.remove_container(&id, Some(RemoveContainerOptionsBuilder::new().force(true).build())).await;
            return Err(RuntimeError::CannotRun { reason: "ContainerCannotRun", message: e.to_string() });
        }
        let info = self.inspect(&id).await?;
        let host_port = published_port(&info, &port_key)
            .ok_or_else(|| RuntimeError::Docker(format!("container {id} has no published host port for {port_key}")))?;
        Ok(Started { id, host_port, started_at: SystemTime::now(), warnings: Vec::new() })
    }

    async fn wait(&self, id: &str) -> Result<ExitInfo, RuntimeError> {
        loop {
            if let Some(info) = self.exit_info(id).await? {
                return Ok(info);
            }
            // The wait stream ends (Ok or Err, bollard reports a non-zero exit as an error) when it exits;
            // inspect tells the details either way.
            let mut s = self.docker.wait_container(id, None);
            let _ = s.next().await;
        }
    }

    async fn stop(&self, id: &str, grace: Duration) -> Result<(), RuntimeError> {
        let t = grace.as_secs().min(i32::MAX as u64) as i32;
        match self.docker.stop_container(id, Some(StopContainerOptionsBuilder::new().t(t).build())).await {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            // 304: already stopped.
            Err(bollard::errors::Error::DockerResponseServerError { status_code: 304, .. }) => Ok(()),
            Err(e) => Err(derr(e)),
        }
    }

    async fn remove(&self, id: &str) -> Result<(), RuntimeError> {
        match self.docker.remove_container(id, Some(RemoveContainerOptionsBuilder::new().force(true).build())).await {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(derr(e)),
        }
    }

    async fn list(&self) -> Result<Vec<Adopted>, RuntimeError> {
        let filters = HashMap::from([("label", vec![format!("{LABEL_NODE}={}", self.node)])]);
        let list = self
            .docker
            .list_containers(Some(ListContainersOptionsBuilder::new().all(true).filters(&filters).build()))
            .await
            .map_err(derr)?;
        let mut out = Vec::new();
        for c in list {
            let Some(id) = c.id else { continue };
            let labels = c.labels.unwrap_or_default();
            let Some((ns, pod)) = labels.get(LABEL_POD).and_then(|p| p.split_once('/')) else {
                continue;
            };
            let info = self.inspect(&id).await?;
            let running = info.state.as_ref().and_then(|s| s.running).unwrap_or(false);
            let port_key = info
                .config
                .as_ref()
                .and_then(|c| c.exposed_ports.as_ref())
                .and_then(|p| p.first().cloned())
                .unwrap_or_default();
            let started_at = info
                .state
                .as_ref()
                .and_then(|s| s.started_at.as_deref())
                .and_then(|t| humantime::parse_rfc3339_weak(t.trim_end_matches('Z')).ok())
                .unwrap_or_else(SystemTime::now);
            out.push(Adopted {
                namespace: ns.to_string(),
                pod: pod.to_string(),
                pod_uid: labels.get(LABEL_POD_UID).cloned().unwrap_or_default(),
                container: labels.get(LABEL_CONTAINER).cloned().unwrap_or_default(),
                attempt: labels.get(LABEL_ATTEMPT).and_then(|a| a.parse().ok()).unwrap_or(0),
                started: Started {
                    id: id.clone(),
                    host_port: published_port(&info, &port_key).unwrap_or(0),
                    started_at,
                    warnings: Vec::new(),
                },
                running,
            });
        }
        Ok(out)
    }

    async fn exec(&self, id: &str, command: &[String], timeout: Duration) -> Result<i32, RuntimeError> {
        let run = async {
            let exec = self
                .docker
                .create_exec(
                    id,
                    bollard::exec::CreateExecOptions::<String> {
                        cmd: Some(command.to_vec()),
                        attach_stdout: Some(true),
                        attach_stderr: Some(true),
                        ..Default::default()
                    },
                )
                .await
                .map_err(derr)?;
            if let bollard::exec::StartExecResults::Attached { mut output, .. } =
                self.docker.start_exec(&exec.id, None).await.map_err(derr)?
            {
                while let Some(chunk) = output.next().await {
                    if chunk.is_err() {
                        break;
                    }
                }
            }
            let inspected = self.docker.inspect_exec(&exec.id).await.map_err(derr)?;
            Ok::<i32, RuntimeError>(inspected.exit_code.unwrap_or(1) as i32)
        };
        tokio::time::timeout(timeout, run).await.map_err(|_| {
            RuntimeError::io(
                format!("exec in {id}"),
                std::io::Error::new(std::io::ErrorKind::TimedOut, format!("timed out after {timeout:?}")),
            )
        })?
    }

    async fn logs(&self, id: &str, opts: LogOptions) -> Result<LogStream, RuntimeError> {
        self.inspect(id).await?;
        let tail = opts.tail.map(|n| n.to_string()).unwrap_or_else(|| "all".to_string());
        let options = LogsOptionsBuilder::new().follow(opts.follow).stdout(true).stderr(true).tail(&tail).build();
        let stream = self.docker.logs(id, Some(options)).map(|r| r.map(|o| o.into_bytes()).map_err(derr));
        Ok(Box::pin(stream))
    }

    async fn cleanup_pod(&self, namespace: &str, pod: &str, pod_uid: &str) -> Result<(), RuntimeError> {
        let dir = self.pod_volumes(namespace, pod, pod_uid);
        match tokio::fs::remove_dir_all(&dir).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(RuntimeError::io(format!("remove {}", dir.display()), e)),
        }
    }
}

fn published_port(info: &bollard::models::ContainerInspectResponse, port_key: &str) -> Option<u16> {
    info.network_settings
        .as_ref()?
        .ports
        .as_ref()?
        .get(port_key)?
        .as_ref()?
        .iter()
        .find_map(|b| b.host_port.as_deref().and_then(|p| p.parse().ok()))
}

/// Build an image `tag` that is `FROM scratch` plus `binary` at `/usr/local/bin/berth` (so a manifest can
/// say `command: ["berth", "echo"]`), listening on all interfaces inside the container. The build context
/// is an in-memory tar; nothing is pulled.
/// Build the image `tag` from scratch, in memory: `binary` as `/usr/local/bin/berth` (its entry point, `berth
/// echo` by default) plus, when it is dynamically linked, the shared libraries and loader `ldd` names, so an
/// ordinary build of the workspace runs in a container with no registry and no static rebuild.
pub async fn build_image_from_binary(docker: &Docker, binary: &Path, tag: &str) -> Result<(), RuntimeError> {
    let bin = tokio::fs::read(binary).await.map_err(|e| RuntimeError::io(format!("read {}", binary.display()), e))?;
    let mut files = vec![("usr/local/bin/berth".to_string(), bin, 0o755)];
    for lib in shared_libraries(binary).await? {
        let data = tokio::fs::read(&lib).await.map_err(|e| RuntimeError::io(format!("read {}", lib.display()), e))?;
        files.push((lib.to_string_lossy().trim_start_matches('/').to_string(), data, 0o755));
    }
    let dockerfile = "FROM scratch\nCOPY root/ /\nENV HOST=0.0.0.0 PATH=/usr/local/bin\nENTRYPOINT [\"/usr/local/bin/berth\"]\nCMD [\"echo\"]\n";
    let tar = {
        let mut b = tar::Builder::new(Vec::new());
        let mut add = |name: &str, data: &[u8], mode: u32| -> std::io::Result<()> {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(mode);
            h.set_cksum();
            b.append_data(&mut h, name, data)
        };
        add("Dockerfile", dockerfile.as_bytes(), 0o644).map_err(|e| RuntimeError::io("build context", e))?;
        for (path, data, mode) in &files {
            add(&format!("root/{path}"), data, *mode).map_err(|e| RuntimeError::io("build context", e))?;
        }
        b.into_inner().map_err(|e| RuntimeError::io("build context", e))?
    };
    let options = BuildImageOptionsBuilder::new().dockerfile("Dockerfile").t(tag).rm(true).build();
    let mut s = docker.build_image(options, None, Some(bollard::body_full(tar.into())));
    while let Some(item) = s.next().await {
        let info = item.map_err(derr)?;
        if let Some(err) = info.error_detail.and_then(|d| d.message) {
            return Err(RuntimeError::Docker(format!("building {tag}: {err}")));
        }
    }
    Ok(())
}

/// The shared objects a dynamically linked `binary` loads (libraries and the loader), as `ldd` lists them; none
/// for a static binary.
async fn shared_libraries(binary: &Path) -> Result<Vec<std::path::PathBuf>, RuntimeError> {
    let out = tokio::process::Command::new("ldd")
        .arg(binary)
        .output()
        .await
        .map_err(|e| RuntimeError::io("run ldd (to find the binary's shared libraries)", e))?;
    // ldd exits non-zero for a static binary ("not a dynamic executable").
    if !out.status.success() {
        return Ok(Vec::new());
    }
    Ok(parse_ldd(&String::from_utf8_lossy(&out.stdout)))
}

/// Paths in `ldd` output: `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x..)` and the loader's
/// `/lib64/ld-linux-x86-64.so.2 (0x..)`; the kernel's vDSO has no file.
fn parse_ldd(text: &str) -> Vec<std::path::PathBuf> {
    text.lines()
        .filter_map(|line| {
            let line = line.trim();
            let path = line.split_once("=>").map_or(line, |(_, p)| p.trim());
            let path = path.split_whitespace().next()?;
            path.starts_with('/').then(|| std::path::PathBuf::from(path))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::parse_ldd;
    use std::path::PathBuf;

    #[test]
    fn ldd_output_names_libraries_and_the_loader() {
        let text = "\tlinux-vdso.so.1 (0x00007ffd)\n\
                    \tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007fb8)\n\
                    \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007fb8)\n\
                    \t/lib64/ld-linux-x86-64.so.2 (0x00007fb8)\n\
                    \tlibmissing.so => not found\n";
        let want: Vec<PathBuf> =
            ["/lib/x86_64-linux-gnu/libgcc_s.so.1", "/lib/x86_64-linux-gnu/libc.so.6", "/lib64/ld-linux-x86-64.so.2"]
                .iter()
                .map(PathBuf::from)
                .collect();
        assert_eq!(parse_ldd(text), want);
        assert!(parse_ldd("\tstatically linked\n").is_empty());
    }
}
