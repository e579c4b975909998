//! Active health checks, for services that ask for them (`Service.healthCheck`): a TCP connect, or an HTTP
//! GET whose status must be 2xx/3xx. After `unhealthyThreshold` consecutive failures an endpoint is marked
//! down (no new requests); after `healthyThreshold` consecutive successes it is up again. Results live in the
//! endpoint's shared state, so they survive pool rebuilds. Passive ejection (in [`crate::balance`]) is
//! separate and usually faster.

use crate::Shared;
use async_trait::async_trait;
use discovery::HealthCheck;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub(crate) struct HealthChecker {
    shared: Arc<Shared>,
}

impl HealthChecker {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        HealthChecker { shared }
    }
}

#[derive(Default)]
struct Track {
    next_due: Option<Instant>,
    successes: u32,
    failures: u32,
}

/// One probe; `true` when healthy.
pub async fn probe(addr: SocketAddr, check: &HealthCheck) -> bool {
    let timeout = Duration::from_millis(check.timeout_ms.max(1));
    tokio::time::timeout(timeout, probe_inner(addr, check)).await.unwrap_or(false)
}

async fn probe_inner(addr: SocketAddr, check: &HealthCheck) -> bool {
    let Ok(mut stream) = tokio::net::TcpStream::connect(addr).await else {
        return false;
    };
    let Some(path) = &check.http_path else {
        return true;
    };
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: berth-health\r\nConnection: close\r\n\r\n");
    if stream.write_all(req.as_bytes()).await.is_err() {
        return false;
    }
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut resp = httparse::Response::new(&mut headers);
        match resp.parse(&buf) {
            Ok(_) if resp.code.is_some() => return resp.code.is_some_and(|c| (200..400).contains(&c)),
            Ok(_) if buf.len() < 16 * 1024 => continue,
            // Too many headers still yields a status code on a partial parse; anything else is unhealthy.
            Err(httparse::Error::TooManyHeaders) => return resp.code.is_some_and(|c| (200..400).contains(&c)),
            _ => return false,
        }
    }
}

#[async_trait]
impl BackgroundService for HealthChecker {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut tracks: HashMap<Arc<str>, Track> = HashMap::new();
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut applied = self.shared.applied.subscribe();
        let mut seen_revision = None;
        loop {
            // Without any health check configured, sleep until the table changes rather than tick: an idle
            // proxy (and a busy one's worker thread) is not woken 20 times a second for nothing.
            let any_checks = self.shared.table.load().pools.iter().any(|p| p.health_check().is_some());
            tokio::select! {
                _ = tick.tick(), if any_checks => {}
                changed = applied.changed(), if !any_checks => {
                    if changed.is_err() {
                        return;
                    }
                }
                _ = shutdown.changed() => return,
            }
            let table = self.shared.table.load_full();
            if seen_revision != Some(table.revision) {
                seen_revision = Some(table.revision);
                // "Down" is the verdict of a check: a service whose check was removed serves all its endpoints.
                for pool in table.pools.iter().filter(|p| p.health_check().is_none()) {
                    for entry in pool.pool.entries().iter().filter(|e| e.state.is_down()) {
                        entry.state.set_down(false);
                        tracks.remove(&entry.id);
                    }
                }
            }
            let now = Instant::now();
            let mut probes = Vec::new();
            for pool in &table.pools {
                let Some(check) = pool.health_check() else {
                    continue;
                };
                for entry in pool.pool.entries() {
                    let t = tracks.entry(entry.id.clone()).or_default();
                    if t.next_due.is_some_and(|d| d > now) {
                        continue;
                    }
                    t.next_due = Some(now + Duration::from_millis(check.interval_ms.max(50)));
                    probes.push((entry.id.clone(), entry.addr, entry.state.clone(), check.clone()));
                }
            }
            if probes.is_empty() {
                continue;
            }
            let results = futures::future::join_all(probes.into_iter().map(|(id, addr, state, check)| async move {
                let ok = probe(addr, &check).await;
                (id, state, check, ok)
            }))
            .await;
            for (id, state, check, ok) in results {
                let t = tracks.entry(id).or_default();
                if ok {
                    t.successes += 1;
                    t.failures = 0;
                    if state.is_down() && t.successes >= check.healthy_threshold.max(1) {
                        state.set_down(false);
                    }
                } else {
                    t.failures += 1;
                    t.successes = 0;
                    if !state.is_down() && t.failures >= check.unhealthy_threshold.max(1) {
                        state.set_down(true);
                    }
                }
            }
            // Forget endpoints that left every pool.
            if tracks.len() > 2 * table.pools.iter().map(|p| p.pool.len()).sum::<usize>() + 64 {
                let live: std::collections::HashSet<&str> =
                    table.pools.iter().flat_map(|p| p.pool.entries().iter().map(|e| &*e.id)).collect();
                tracks.retain(|k, _| live.contains(&**k));
            }
        }
    }
}
