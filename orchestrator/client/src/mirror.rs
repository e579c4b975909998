//! A local [`Registry`] that mirrors the control plane's registry over `/discovery/v1`, for a proxy or a DNS
//! server running apart from the control plane (`berth proxy --server`, `berth dns --server`).
//!
//! Protocol. The mirror reads `GET /discovery/v1/snapshot` (every object at one revision, with the server
//! registry's epoch), makes the local registry equal to it in one atomic [`Registry::apply`] batch, then follows
//! `GET /discovery/v1/endpoints?watch=true&revision=R&epoch=E`. Each chunk of received events becomes one
//! `apply` batch, in the server's revision order; the watch of an everything-selector has one event per server
//! revision, so a gap means a lost event and forces a new snapshot.
//!
//! Failure handling. On a broken or silent connection (no line, not even a heartbeat, for `idle_timeout`) the
//! mirror reconnects with exponential back-off and resumes from the last applied revision. With several
//! servers (replicas of one control plane) every failed round moves it to the next one; each replica has its
//! own registry, with its own epoch and revisions, so resuming there is answered with a `Relist` and the
//! mirror re-reads a snapshot, applied as one diff batch like any other. A `Relist` (history
//! compacted, or the server restarted: its epoch changed) makes it re-read a snapshot. The local registry is
//! never cleared for want of a server: until a new snapshot is read it keeps the last known state, and
//! [`MirrorStatus`] says how stale that is. A restarted server answers 503 to snapshots until its endpoints
//! controller has published a complete view, so the mirror never adopts a half-built registry.
//!
//! Only discovery types cross this boundary; it lives in the client module because it speaks the API's HTTP.

use discovery::{Change, Object, ObjectKey, Registry, Selector, WatchEvent};
use futures::{FutureExt, StreamExt};
use model::wire::DiscoverySnapshot;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Why one round of the mirror failed (the mirror itself keeps retrying; these appear in the log and in
/// [`MirrorStatus::last_error`]).
#[derive(Debug, thiserror::Error)]
pub enum MirrorError {
    #[error("invalid mirror server URL {url:?}: {reason}")]
    Url { url: String, reason: String },
    #[error("cannot build the HTTP client: {0}")]
    Client(#[source] reqwest::Error),
    #[error("TLS configuration for {url}: {source}")]
    Tls {
        url: String,
        #[source]
        source: pki::PkiError,
    },
    #[error("cannot reach {url}: {source}")]
    Connect {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{url} answered {code}: {message}")]
    Status { url: String, code: u16, message: String },
    #[error("bad answer from {url}: {message}")]
    Protocol { url: String, message: String },
    #[error("watch stream from {url} broke: {source}")]
    Stream {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("watch stream from {url} ended")]
    Ended { url: String },
    #[error("no data from {url} for {idle:?} (heartbeats missed)")]
    Idle { url: String, idle: Duration },
    #[error("revision gap from {url}: expected {expected}, got {got}")]
    Gap { url: String, expected: u64, got: u64 },
    /// The server keeps the watch open but says it is not ready (e.g. cut off from its store, so its
    /// registry no longer moves) while another one is.
    #[error("{url} is not ready (/readyz); {ready} is")]
    NotReady { url: String, ready: String, index: usize },
}

impl MirrorError {
    /// The server, not the data, is at fault: another replica may do better.
    fn server_failed(&self) -> bool {
        matches!(
            self,
            MirrorError::Connect { .. }
                | MirrorError::Status { .. }
                | MirrorError::Stream { .. }
                | MirrorError::Ended { .. }
                | MirrorError::Idle { .. }
                | MirrorError::NotReady { .. }
        )
    }
}

/// Where and how to mirror. `Debug` omits the token.
#[derive(Clone)]
pub struct MirrorConfig {
    /// The API servers, e.g. `https://127.0.0.1:7070`, tried in turn (all https or all http).
    pub servers: Vec<String>,
    pub token: Option<String>,
    /// The cluster CA, the only trust an `https://` server is checked against (required for https).
    pub ca: Option<pki::CaCert>,
    /// First reconnect delay; doubles per failure up to `backoff_max`.
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// A watch that delivers nothing (not even a heartbeat) for this long is treated as dead.
    pub idle_timeout: Duration,
}

impl MirrorConfig {
    /// Mirror `server` (which may list several, separated by commas).
    pub fn new(server: &str, token: Option<String>) -> Self {
        Self::with_servers(&[server], token)
    }

    /// Mirror any of `servers`, failing over between them.
    pub fn with_servers<S: AsRef<str>>(servers: &[S], token: Option<String>) -> Self {
        Self {
            servers: crate::split_servers(servers),
            token,
            ca: None,
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(2),
            idle_timeout: model::wire::DISCOVERY_HEARTBEAT * 3,
        }
    }
}

impl std::fmt::Debug for MirrorConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MirrorConfig")
            .field("servers", &self.servers)
            .field("token", &self.token.as_ref().map(|_| "****"))
            .field("ca", &self.ca)
            .field("backoff_min", &self.backoff_min)
            .field("backoff_max", &self.backoff_max)
            .field("idle_timeout", &self.idle_timeout)
            .finish()
    }
}

/// Live figures of a mirror, shared with its task.
#[derive(Debug)]
struct Status {
    synced: AtomicBool,
    connected: AtomicBool,
    server_revision: AtomicU64,
    snapshots: AtomicU64,
    reconnects: AtomicU64,
    batches: AtomicU64,
    /// When the mirror last lost the server (None while connected or before the first attempt).
    disconnected_since: Mutex<Option<Instant>>,
    last_error: Mutex<Option<String>>,
    synced_notify: tokio::sync::Notify,
    /// The server the mirror reads now.
    server: Mutex<String>,
}

/// A point-in-time view of a mirror's state.
#[derive(Debug, Clone, PartialEq)]
pub struct MirrorStatus {
    /// A complete snapshot has been applied at least once.
    pub synced: bool,
    /// A watch stream is open.
    pub connected: bool,
    /// The last server revision applied locally.
    pub server_revision: u64,
    /// The server the mirror reads now (or tries next).
    pub server: String,
    pub snapshots: u64,
    pub reconnects: u64,
    /// How long the local state may lag the server: zero while connected, else the time since the connection
    /// was lost.
    pub stale_for: Duration,
    pub last_error: Option<String>,
}

/// A running mirror; stops on drop.
pub struct Mirror {
    registry: Arc<Registry>,
    status: Arc<Status>,
    task: tokio::task::JoinHandle<()>,
}

impl Mirror {
    /// Start mirroring `config.server` into `registry` (which should be otherwise unwritten). Returns at once;
    /// use [`Mirror::wait_synced`] to wait for the first snapshot. Must be called inside a tokio runtime.
    pub fn start(config: MirrorConfig, registry: Arc<Registry>) -> Result<Mirror, MirrorError> {
        let first = config
            .servers
            .first()
            .cloned()
            .ok_or_else(|| MirrorError::Url { url: String::new(), reason: "no server given".into() })?;
        let mut schemes = Vec::new();
        for server in &config.servers {
            let url = reqwest::Url::parse(server)
                .map_err(|e| MirrorError::Url { url: server.clone(), reason: e.to_string() })?;
            if !matches!(url.scheme(), "http" | "https") {
                return Err(MirrorError::Url { url: server.clone(), reason: "expected http:// or https://".into() });
            }
            schemes.push(url.scheme().to_string());
        }
        if schemes.iter().any(|s| *s != schemes[0]) {
            return Err(MirrorError::Url {
                url: config.servers.join(","),
                reason: "give all servers https:// or all http://".into(),
            });
        }
        let builder = crate::http_builder();
        let builder = match (&config.ca, schemes[0].as_str()) {
            (Some(ca), _) => builder.tls_backend_preconfigured(
                pki::client_config(ca, None).map_err(|e| MirrorError::Tls { url: first.clone(), source: e })?,
            ),
            (None, "https") => {
                return Err(MirrorError::Url {
                    url: first,
                    reason: "https:// needs the cluster CA (MirrorConfig::ca)".into(),
                })
            }
            (None, _) => builder,
        };
        let http = builder.build().map_err(MirrorError::Client)?;
        let status = Arc::new(Status {
            synced: AtomicBool::new(false),
            connected: AtomicBool::new(false),
            server_revision: AtomicU64::new(0),
            snapshots: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
            batches: AtomicU64::new(0),
            disconnected_since: Mutex::new(None),
            last_error: Mutex::new(None),
            synced_notify: tokio::sync::Notify::new(),
            server: Mutex::new(first),
        });
        let runner = Runner { config, http, registry: registry.clone(), status: status.clone(), current: 0 };
        let task = tokio::spawn(runner.run());
        Ok(Mirror { registry, status, task })
    }

    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// Wait until the first snapshot is applied (false on timeout).
    pub async fn wait_synced(&self, timeout: Duration) -> bool {
        let wait = async {
            loop {
                let notified = self.status.synced_notify.notified();
                if self.status.synced.load(Ordering::Acquire) {
                    return;
                }
                notified.await;
            }
        };
        tokio::time::timeout(timeout, wait).await.is_ok()
    }

    pub fn status(&self) -> MirrorStatus {
        let s = &self.status;
        let connected = s.connected.load(Ordering::Acquire);
        let since = *s.disconnected_since.lock();
        MirrorStatus {
            synced: s.synced.load(Ordering::Acquire),
            connected,
            server_revision: s.server_revision.load(Ordering::Acquire),
            server: s.server.lock().clone(),
            snapshots: s.snapshots.load(Ordering::Relaxed),
            reconnects: s.reconnects.load(Ordering::Relaxed),
            stale_for: if connected { Duration::ZERO } else { since.map_or(Duration::ZERO, |t| t.elapsed()) },
            last_error: s.last_error.lock().clone(),
        }
    }

    /// Prometheus text: `berth_mirror_*` gauges and counters.
    pub fn metrics_text(&self) -> String {
        let st = self.status();
        let server = st.server.replace('\\', "\\\\").replace('"', "\\\"");
        let mut out = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, value: String| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name}{{server=\"{server}\"}} {value}");
        };
        metric("berth_mirror_synced", "gauge", "1 once a complete registry snapshot has been applied.", b(st.synced));
        metric("berth_mirror_connected", "gauge", "1 while the watch stream to the server is open.", b(st.connected));
        metric(
            "berth_mirror_stale_seconds",
            "gauge",
            "Seconds since the mirror lost the server (0 while connected); the last known state is served meanwhile.",
            format!("{:.3}", st.stale_for.as_secs_f64()),
        );
        metric(
            "berth_mirror_server_revision",
            "gauge",
            "Last server registry revision applied locally.",
            st.server_revision.to_string(),
        );
        metric(
            "berth_mirror_local_revision",
            "gauge",
            "Revision of the local registry.",
            self.registry.revision().to_string(),
        );
        metric("berth_mirror_snapshots_total", "counter", "Snapshots read and applied.", st.snapshots.to_string());
        metric(
            "berth_mirror_reconnects_total",
            "counter",
            "Failed rounds followed by a reconnect.",
            st.reconnects.to_string(),
        );
        metric(
            "berth_mirror_batches_total",
            "counter",
            "Watch batches applied.",
            self.status.batches.load(Ordering::Relaxed).to_string(),
        );
        out
    }
}

fn b(v: bool) -> String {
    u8::from(v).to_string()
}

impl Drop for Mirror {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What the next round starts from.
enum Position {
    /// Read a snapshot first.
    Snapshot,
    /// Resume the watch after this revision of the registry with this epoch.
    Resume { epoch: String, revision: u64 },
}

struct Runner {
    config: MirrorConfig,
    http: reqwest::Client,
    registry: Arc<Registry>,
    status: Arc<Status>,
    /// Index of the server in use.
    current: usize,
}

impl Runner {
    async fn run(mut self) {
        let mut position = Position::Snapshot;
        let mut backoff = self.config.backoff_min;
        loop {
            let round = match &position {
                Position::Snapshot => {
                    self.snapshot().await.map(|(epoch, revision)| Position::Resume { epoch, revision })
                }
                Position::Resume { epoch, revision } => self.follow(epoch, *revision).await,
            };
            match round {
                Ok(next) => {
                    // A completed step (snapshot applied, or a Relist) is progress: retry at once.
                    backoff = self.config.backoff_min;
                    position = next;
                }
                Err((err, progress)) => {
                    self.lost(&err);
                    if let MirrorError::NotReady { index, .. } = err {
                        self.fail_over_to(index);
                    } else if err.server_failed() {
                        self.fail_over_to((self.current + 1) % self.config.servers.len());
                    }
                    if let Some(next) = progress {
                        position = next;
                        backoff = self.config.backoff_min;
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(self.config.backoff_max);
                }
            }
        }
    }

    fn lost(&self, err: &MirrorError) {
        let was_connected = self.status.connected.swap(false, Ordering::AcqRel);
        self.status.reconnects.fetch_add(1, Ordering::Relaxed);
        {
            let mut since = self.status.disconnected_since.lock();
            if since.is_none() {
                *since = Some(Instant::now());
            }
        }
        let message = err.to_string();
        let repeated = self.status.last_error.lock().as_deref() == Some(message.as_str());
        if was_connected || !repeated {
            let rev = self.status.server_revision.load(Ordering::Relaxed);
            tracing::warn!(error = %message, server_revision = rev, "registry mirror lost the server; serving the last known state");
        }
        *self.status.last_error.lock() = Some(message);
    }

    /// The round failed: the next one goes to server `index` (and resumes there; see the module doc).
    fn fail_over_to(&mut self, index: usize) {
        if index == self.current {
            return;
        }
        self.current = index;
        let next = self.config.servers[self.current].clone();
        tracing::info!(server = %next, "registry mirror: trying the next server");
        *self.status.server.lock() = next;
    }

    fn connected(&self) {
        self.status.connected.store(true, Ordering::Release);
        if let Some(since) = self.status.disconnected_since.lock().take() {
            tracing::info!(stale_for = ?since.elapsed(), "registry mirror reconnected");
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.config.servers[self.current])
    }

    fn get(&self, url: &str) -> reqwest::RequestBuilder {
        let r = self.http.get(url);
        match &self.config.token {
            Some(t) => r.bearer_auth(t),
            None => r,
        }
    }

    async fn send(&self, url: &str, r: reqwest::RequestBuilder) -> Result<reqwest::Response, MirrorError> {
        let response = r.send().await.map_err(|source| MirrorError::Connect { url: url.to_string(), source })?;
        let code = response.status();
        if code.is_success() {
            return Ok(response);
        }
        let body = response.bytes().await.unwrap_or_default();
        let message = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v.get("message").and_then(|m| m.as_str()).map(str::to_string))
            .unwrap_or_else(|| String::from_utf8_lossy(&body).trim().to_string());
        Err(MirrorError::Status { url: url.to_string(), code: code.as_u16(), message })
    }

    /// Read a snapshot and make the local registry equal to it in one batch.
    async fn snapshot(&self) -> Result<(String, u64), (MirrorError, Option<Position>)> {
        let url = self.url("/discovery/v1/snapshot");
        let response = self.send(&url, self.get(&url)).await.map_err(|e| (e, None))?;
        let bytes =
            response.bytes().await.map_err(|source| (MirrorError::Stream { url: url.clone(), source }, None))?;
        let snap: DiscoverySnapshot = serde_json::from_slice(&bytes)
            .map_err(|e| (MirrorError::Protocol { url: url.clone(), message: e.to_string() }, None))?;
        let changes = replace_all(&self.registry, snap.objects);
        let n = changes.len();
        self.registry.apply(changes);
        self.registry.mark_synced();
        self.status.server_revision.store(snap.revision, Ordering::Release);
        self.status.snapshots.fetch_add(1, Ordering::Relaxed);
        self.connected();
        if !self.status.synced.swap(true, Ordering::AcqRel) {
            self.status.synced_notify.notify_waiters();
        }
        tracing::info!(revision = snap.revision, changes = n, "registry mirror applied a snapshot");
        Ok((snap.epoch, snap.revision))
    }

    /// Follow the watch from `revision` until it breaks (error, with the position reached) or relists (Ok).
    async fn follow(&self, epoch: &str, revision: u64) -> Result<Position, (MirrorError, Option<Position>)> {
        let url = self.url("/discovery/v1/endpoints");
        let request = self.get(&url).query(&[
            ("watch", "true".to_string()),
            ("revision", revision.to_string()),
            ("epoch", epoch.to_string()),
        ]);
        let response = self.send(&url, request).await.map_err(|e| (e, None))?;
        self.connected();
        let mut body = response.bytes_stream();
        let mut buf: Vec<u8> = Vec::new();
        let mut at = revision;
        let resume = |at: u64| Some(Position::Resume { epoch: epoch.to_string(), revision: at });
        // With other servers to go to, ask this one's /readyz meanwhile: a replica cut off from its store keeps
        // its watch open (heartbeats flow) while its registry stands still.
        let mut probe = tokio::time::interval(crate::servers::PROBE_INTERVAL);
        probe.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        probe.reset();
        let mut unready = 0u32;
        let mut last_data = tokio::time::Instant::now();
        loop {
            let idle_at = last_data + self.config.idle_timeout;
            let next = tokio::select! {
                next = tokio::time::timeout_at(idle_at, body.next()) => next,
                _ = probe.tick(), if self.config.servers.len() > 1 => {
                    if crate::servers::ready(&self.http, &self.config.servers[self.current]).await {
                        unready = 0;
                    } else {
                        unready += 1;
                        if unready >= crate::servers::PROBE_FAILURES {
                            if let Some(index) = self.ready_elsewhere().await {
                                let ready = self.config.servers[index].clone();
                                let url = self.config.servers[self.current].clone();
                                return Err((MirrorError::NotReady { url, ready, index }, resume(at)));
                            }
                        }
                    }
                    continue;
                }
            };
            let first = match next {
                Err(_) => return Err((MirrorError::Idle { url, idle: self.config.idle_timeout }, resume(at))),
                Ok(None) => return Err((MirrorError::Ended { url }, resume(at))),
                Ok(Some(Err(source))) => return Err((MirrorError::Stream { url, source }, resume(at))),
                Ok(Some(Ok(chunk))) => chunk,
            };
            last_data = tokio::time::Instant::now();
            buf.extend_from_slice(&first);
            // Whatever else has already arrived joins this batch.
            while let Some(Some(Ok(chunk))) = body.next().now_or_never() {
                buf.extend_from_slice(&chunk);
            }
            let Some(end) = buf.iter().rposition(|b| *b == b'\n') else { continue };
            let mut changes = Vec::new();
            let mut relist = false;
            for line in buf[..end].split(|b| *b == b'\n').filter(|l| !l.trim_ascii().is_empty()) {
                let event: WatchEvent = serde_json::from_slice(line).map_err(|e| {
                    (MirrorError::Protocol { url: url.clone(), message: e.to_string() }, Some(Position::Snapshot))
                })?;
                let (rev, change) = match event {
                    WatchEvent::Relist { .. } => {
                        relist = true;
                        break;
                    }
                    WatchEvent::Put { revision, object } => (revision, Change::Put(object)),
                    WatchEvent::Delete { revision, key } => (revision, Change::Delete(key)),
                };
                let expected = at + changes.len() as u64 + 1;
                if rev != expected {
                    self.commit(&mut at, changes);
                    let err = MirrorError::Gap { url, expected, got: rev };
                    return Err((err, Some(Position::Snapshot)));
                }
                changes.push(change);
            }
            buf.drain(..=end);
            self.commit(&mut at, changes);
            if relist {
                tracing::info!(revision = at, "registry mirror: server asked for a relist; re-reading a snapshot");
                return Ok(Position::Snapshot);
            }
        }
    }

    /// The first other server, in order after the current one, whose /readyz says ready.
    async fn ready_elsewhere(&self) -> Option<usize> {
        let n = self.config.servers.len();
        for step in 1..n {
            let index = (self.current + step) % n;
            if crate::servers::ready(&self.http, &self.config.servers[index]).await {
                return Some(index);
            }
        }
        None
    }

    /// Apply one batch of consecutive server changes after server revision `at`.
    fn commit(&self, at: &mut u64, changes: Vec<Change>) {
        if changes.is_empty() {
            return;
        }
        *at += changes.len() as u64;
        self.registry.apply(changes);
        self.status.server_revision.store(*at, Ordering::Release);
        self.status.batches.fetch_add(1, Ordering::Relaxed);
    }
}

/// The changes that turn `registry` into exactly `objects`: deletes of what is gone, puts of what is new or
/// different (unchanged objects are left alone, so followers of the local registry see only real changes).
pub fn replace_all(registry: &Registry, objects: Vec<Object>) -> Vec<Change> {
    let current = registry.snapshot();
    let mut wanted: HashMap<ObjectKey, Object> = objects.into_iter().map(|o| (o.key(), o)).collect();
    let mut changes: Vec<Change> = current
        .objects(&Selector::everything())
        .into_iter()
        .filter_map(|o| {
            let key = o.key();
            match wanted.remove(&key) {
                None => Some(Change::Delete(key)),
                Some(w) if w != o => Some(Change::Put(w)),
                Some(_) => None,
            }
        })
        .collect();
    let mut added: Vec<Object> = wanted.into_values().collect();
    added.sort_by_key(Object::key);
    changes.extend(added.into_iter().map(Change::Put));
    changes
}
