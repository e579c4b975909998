//! Static mode: proxy settings, services with fixed endpoints, routes and certificates from one YAML or JSON
//! file (`berth proxy -c FILE`). The file is turned into registry objects; a reload writes only what changed
//! and deletes what disappeared, so the proxy applies it like any other registry change, without dropping
//! connections. Listener addresses are read once at start (a change needs a restart; a reload warns).
//! See `config/proxy/static.yaml` for an example.

use crate::config::ProxyConfig;
use discovery::{
    BalancePolicy, Certificate, Change, Endpoint, EndpointPort, HealthCheck, Labels, Object, ObjectKey, Protocol,
    Registry, Route, Selector, Service, ServicePort, TargetPort,
};
use parking_lot::Mutex;
use serde::Deserialize;
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

const STATIC_LABEL: &str = "berth.dev/static-service";
const PORT_NAME: &str = "main";

#[derive(Debug, thiserror::Error)]
pub enum StaticConfigError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error(transparent)]
    Proxy(#[from] crate::ProxyError),
    #[error("{path}: certificate {name}: reading {file}: {source}")]
    CertFile {
        path: PathBuf,
        name: String,
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn default_ns() -> String {
    "default".into()
}
fn default_weight() -> u32 {
    100
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum StaticEndpoint {
    Addr(SocketAddr),
    Full {
        address: SocketAddr,
        #[serde(default = "default_weight")]
        weight: u32,
    },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StaticService {
    #[serde(default = "default_ns")]
    pub namespace: String,
    pub name: String,
    /// The port routes refer to (default 80).
    #[serde(default)]
    pub port: Option<u16>,
    #[serde(default)]
    pub balance: BalancePolicy,
    #[serde(default)]
    pub health_check: Option<HealthCheck>,
    /// Statuses retried on another endpoint for idempotent requests (e.g. `[502, 503, 504]`).
    #[serde(default)]
    pub retry_on_statuses: Vec<u16>,
    pub endpoints: Vec<StaticEndpoint>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StaticCertificate {
    #[serde(default = "default_ns")]
    pub namespace: String,
    pub name: String,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

/// The whole file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StaticConfig {
    #[serde(default)]
    pub proxy: ProxyConfig,
    #[serde(default)]
    pub services: Vec<StaticService>,
    #[serde(default)]
    pub routes: Vec<Route>,
    #[serde(default)]
    pub certificates: Vec<StaticCertificate>,
}

impl StaticConfig {
    /// Parse YAML (a superset of JSON); errors name the field path. The document goes through a JSON value
    /// so that enums read as plain maps (`path: {prefix: /api}`) rather than YAML tags.
    pub fn parse(text: &str, path: &Path) -> Result<Self, StaticConfigError> {
        let err = |message: String| StaticConfigError::Parse { path: path.to_path_buf(), message };
        let value: serde_json::Value = serde_yaml_ng::from_str(text).map_err(|e| err(e.to_string()))?;
        let value = if value.is_null() { serde_json::Value::Object(Default::default()) } else { value };
        serde_path_to_error::deserialize(value).map_err(|e| err(e.to_string()))
    }

    pub fn load(path: &Path) -> Result<Self, StaticConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| StaticConfigError::Read { path: path.to_path_buf(), source })?;
        Self::parse(&text, path)
    }

    /// The registry objects this file describes (certificate files are read here, relative to `base`).
    pub fn objects(&self, path: &Path) -> Result<Vec<Object>, StaticConfigError> {
        let base = path.parent().unwrap_or(Path::new("."));
        let mut out = Vec::new();
        for (i, s) in self.services.iter().enumerate() {
            if let Some(code) = s.retry_on_statuses.iter().find(|c| !(400..=599).contains(*c)) {
                return Err(StaticConfigError::Parse {
                    path: path.to_path_buf(),
                    message: format!("services[{i}].retryOnStatuses: {code} is not an error status (400-599)"),
                });
            }
            let port = s.port.unwrap_or(80);
            let labels: Labels = [(STATIC_LABEL.to_string(), s.name.clone())].into_iter().collect();
            out.push(Object::Service(Arc::new(Service {
                namespace: s.namespace.clone(),
                name: s.name.clone(),
                labels: Labels::new(),
                selector: Selector::from_labels(&labels),
                ports: vec![ServicePort {
                    name: Some(PORT_NAME.into()),
                    port,
                    target_port: TargetPort::Name(PORT_NAME.into()),
                    protocol: Protocol::Tcp,
                }],
                balance: s.balance.clone(),
                virtual_ip: None,
                health_check: s.health_check.clone(),
                retry_on_statuses: s.retry_on_statuses.clone(),
            })));
            for (i, ep) in s.endpoints.iter().enumerate() {
                let (addr, weight) = match ep {
                    StaticEndpoint::Addr(a) => (*a, 100),
                    StaticEndpoint::Full { address, weight } => (*address, *weight),
                };
                out.push(Object::Endpoint(Arc::new(Endpoint {
                    namespace: s.namespace.clone(),
                    name: format!("{}-{i}", s.name),
                    address: addr.ip(),
                    ports: vec![EndpointPort {
                        name: Some(PORT_NAME.into()),
                        port: addr.port(),
                        protocol: Protocol::Tcp,
                    }],
                    labels: labels.clone(),
                    ready: true,
                    serving: true,
                    terminating: false,
                    node: None,
                    zone: None,
                    weight,
                })));
            }
        }
        for r in &self.routes {
            out.push(Object::Route(Arc::new(r.clone())));
        }
        for c in &self.certificates {
            let read = |f: &PathBuf| {
                std::fs::read_to_string(base.join(f)).map_err(|source| StaticConfigError::CertFile {
                    path: path.to_path_buf(),
                    name: c.name.clone(),
                    file: f.clone(),
                    source,
                })
            };
            out.push(Object::Certificate(Arc::new(Certificate {
                namespace: c.namespace.clone(),
                name: c.name.clone(),
                cert_pem: read(&c.cert_file)?,
                key_pem: read(&c.key_file)?,
            })));
        }
        Ok(out)
    }
}

/// Everything `berth proxy -c FILE` needs: load the file, fill a registry, start the proxy with the file's
/// settings, and keep re-applying the file when it changes (polled every second). Drop both to stop.
pub fn start(path: &Path) -> Result<(crate::Proxy, Reloader), StaticConfigError> {
    start_with(path, |_| {})
}

/// As [`start`], with `adjust` applied to the file's proxy settings first (command-line listener flags).
pub fn start_with(
    path: &Path,
    adjust: impl FnOnce(&mut ProxyConfig),
) -> Result<(crate::Proxy, Reloader), StaticConfigError> {
    let cfg = StaticConfig::load(path)?;
    let registry = Arc::new(Registry::new());
    let keys = apply(&registry, cfg.objects(path)?, &BTreeSet::new());
    let mut settings = cfg.proxy.clone();
    adjust(&mut settings);
    let proxy = crate::Proxy::start(registry.clone(), settings)?;
    let reloader = Reloader::spawn_with(path.to_path_buf(), registry, keys, cfg.proxy, Duration::from_secs(1));
    Ok((proxy, reloader))
}

/// Write `objects` into the registry in one batch (the proxy swaps its table once, so no request sees half a
/// reload), deleting keys of `previous` that are gone. Returns the new key set.
pub fn apply(registry: &Registry, objects: Vec<Object>, previous: &BTreeSet<ObjectKey>) -> BTreeSet<ObjectKey> {
    let keys: BTreeSet<ObjectKey> = objects.iter().map(Object::key).collect();
    let mut changes: Vec<Change> = previous.difference(&keys).cloned().map(Change::Delete).collect();
    // An unchanged object is a no-op in the registry (no revision bump).
    changes.extend(objects.into_iter().map(Change::Put));
    registry.apply(changes);
    keys
}

/// Counters of a [`Reloader`].
#[derive(Debug, Default)]
struct ReloadStatus {
    reloads: AtomicU64,
    failures: AtomicU64,
    /// The last attempt failed: the configuration before it is still in force.
    failing: AtomicBool,
    last_error: Mutex<Option<String>>,
}

/// Polls a static file's content and re-applies it on change. A file that does not load (bad
/// syntax, a wrong field, an unreadable certificate, or an empty file, typical of an editor's truncating
/// save) is reported and ignored: the previous configuration stays in force. Stops on drop.
pub struct Reloader {
    stop: Arc<AtomicBool>,
    status: Arc<ReloadStatus>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Reloader {
    pub fn spawn(path: PathBuf, registry: Arc<Registry>, initial: BTreeSet<ObjectKey>, every: Duration) -> Self {
        Self::spawn_with(path, registry, initial, ProxyConfig::default(), every)
    }

    /// `settings` are the proxy settings in force; a reload that changes them warns that a restart is needed.
    pub fn spawn_with(
        path: PathBuf,
        registry: Arc<Registry>,
        initial: BTreeSet<ObjectKey>,
        settings: ProxyConfig,
        every: Duration,
    ) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let status = Arc::new(ReloadStatus::default());
        let (flag, st) = (stop.clone(), status.clone());
        let thread = std::thread::Builder::new()
            .name("berth-static-reload".into())
            .spawn(move || {
                let mut last = fingerprint(&path);
                let mut keys = initial;
                while !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(every);
                    let now = fingerprint(&path);
                    if now == last {
                        continue;
                    }
                    last = now;
                    st.reloads.fetch_add(1, Ordering::Relaxed);
                    let loaded = load_for_reload(&path).and_then(|c| Ok((c.objects(&path)?, c.proxy)));
                    match loaded {
                        Ok((objects, proxy)) => {
                            keys = apply(&registry, objects, &keys);
                            st.failing.store(false, Ordering::Relaxed);
                            *st.last_error.lock() = None;
                            if proxy != settings {
                                tracing::warn!(path = %path.display(), "static proxy configuration reloaded, but its `proxy` settings changed: they take effect on restart");
                            } else {
                                tracing::info!(path = %path.display(), "static proxy configuration reloaded");
                            }
                        }
                        Err(e) => {
                            st.failures.fetch_add(1, Ordering::Relaxed);
                            st.failing.store(true, Ordering::Relaxed);
                            tracing::error!(error = %e, "static proxy configuration not reloaded; the previous one stays in force");
                            *st.last_error.lock() = Some(e.to_string());
                        }
                    }
                }
            })
            .ok();
        Reloader { stop, status, thread }
    }

    /// The error of the last reload attempt, if it failed (the previous configuration is in force).
    pub fn last_error(&self) -> Option<String> {
        self.status.last_error.lock().clone()
    }

    /// Prometheus text: reload attempts, failures, and whether the file on disk is the one in force.
    pub fn metrics_text(&self) -> String {
        let s = &self.status;
        format!(
            "# HELP berth_static_config_reloads_total Reloads attempted after the file changed.\n\
             # TYPE berth_static_config_reloads_total counter\n\
             berth_static_config_reloads_total {}\n\
             # HELP berth_static_config_reload_failures_total Reloads refused (the previous configuration stayed).\n\
             # TYPE berth_static_config_reload_failures_total counter\n\
             berth_static_config_reload_failures_total {}\n\
             # HELP berth_static_config_stale 1 when the file on disk failed to load and an older one is in force.\n\
             # TYPE berth_static_config_stale gauge\n\
             berth_static_config_stale {}\n",
            s.reloads.load(Ordering::Relaxed),
            s.failures.load(Ordering::Relaxed),
            u8::from(s.failing.load(Ordering::Relaxed)),
        )
    }
}

/// What tells one version of the file from another: a hash of its bytes. The modification time does not: a
/// save that truncates and rewrites within one timestamp tick would leave the half-written file (read by a
/// poll in between) in force for good.
fn fingerprint(path: &Path) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let bytes = std::fs::read(path).ok()?;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut h);
    Some(h.finish())
}

/// Load for a reload: as [`StaticConfig::load`], but an empty file is an error rather than "no routes".
fn load_for_reload(path: &Path) -> Result<StaticConfig, StaticConfigError> {
    let text =
        std::fs::read_to_string(path).map_err(|source| StaticConfigError::Read { path: path.to_path_buf(), source })?;
    if text.trim().is_empty() {
        return Err(StaticConfigError::Parse {
            path: path.to_path_buf(),
            message: "the file is empty (an interrupted save?)".into(),
        });
    }
    StaticConfig::parse(&text, path)
}

impl Drop for Reloader {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_errors_name_the_field() {
        let cases = [
            ("services: [{name: a, endpoints: [nope]}]", "services[0].endpoints[0]"),
            ("proxy: {httpListen: [x]}", "proxy.httpListen[0]"),
            ("proxy: {bogus: 1}", "proxy"),
        ];
        for (text, want) in cases {
            let err = StaticConfig::parse(text, Path::new("f.yaml")).unwrap_err().to_string();
            assert!(err.contains(want), "{text}: {err}");
        }
    }

    #[test]
    fn retry_statuses_are_checked() {
        let path = Path::new("f.yaml");
        let ok = StaticConfig::parse("services: [{name: a, retryOnStatuses: [503], endpoints: []}]", path).unwrap();
        let objects = ok.objects(path).unwrap();
        assert!(objects.iter().any(|o| matches!(o, Object::Service(s) if s.retry_on_statuses == [503])));
        let bad = StaticConfig::parse("services: [{name: a, retryOnStatuses: [503, 200], endpoints: []}]", path);
        let err = bad.unwrap().objects(path).unwrap_err().to_string();
        assert!(err.contains("services[0].retryOnStatuses") && err.contains("200"), "{err}");
    }

    #[test]
    fn example_file_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/proxy/static.yaml");
        let cfg = StaticConfig::load(&path).unwrap();
        assert!(!cfg.services.is_empty());
        let objects = cfg.objects(&path).unwrap();
        assert!(objects.iter().any(|o| matches!(o, Object::Route(_))));
    }
}
