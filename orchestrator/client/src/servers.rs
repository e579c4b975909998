//! The API servers a client may use, which one it uses now, and the readiness probe that moves it off a
//! replica that stops being ready.
//!
//! Failover policy. One server is current; every request starts there. A request that cannot connect moves
//! the client to the next server and is tried there, up to once per server (a refused connection costs
//! nothing). A request that times out or gets a 5xx moves the client too but is retried only once: a store
//! without quorum answers 503 from every replica after its own timeout, and trying each in turn would multiply
//! that wait. Moving is a compare-and-swap on the index, so concurrent failures of the same server move the
//! client one step, not one per request. Watches subscribe to the index and end when the client moves away
//! from the server they were opened on, so a watch never outlives the readiness of its replica.

use parking_lot::Mutex;
use std::sync::{Arc, Weak};
use std::time::Duration;

/// How often the readiness probe asks the current server, and how long it waits for an answer.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(1);
/// Consecutive failed probes after which the client moves to another ready server.
pub const PROBE_FAILURES: u32 = 2;

/// The configured servers and the index of the current one.
pub(crate) struct Servers {
    urls: Vec<String>,
    current: tokio::sync::watch::Sender<usize>,
    probe: Mutex<Option<tokio::task::AbortHandle>>,
}

impl Drop for Servers {
    fn drop(&mut self) {
        if let Some(p) = self.probe.lock().take() {
            p.abort();
        }
    }
}

impl Servers {
    pub(crate) fn new(urls: Vec<String>) -> Arc<Self> {
        Arc::new(Self { urls, current: tokio::sync::watch::Sender::new(0), probe: Mutex::new(None) })
    }

    pub(crate) fn urls(&self) -> &[String] {
        &self.urls
    }

    pub(crate) fn current(&self) -> usize {
        *self.current.borrow()
    }

    pub(crate) fn url(&self, index: usize) -> &str {
        &self.urls[index % self.urls.len()]
    }

    pub(crate) fn next(&self, index: usize) -> usize {
        (index + 1) % self.urls.len()
    }

    /// Changes of the current index (for watches).
    pub(crate) fn subscribe(&self) -> tokio::sync::watch::Receiver<usize> {
        self.current.subscribe()
    }

    /// `index` failed: make `to` current unless someone already moved the client off `index`. Returns the
    /// index to use now.
    pub(crate) fn move_from(&self, index: usize, to: usize, why: &str) -> usize {
        let mut now = index;
        let moved = self.current.send_if_modified(|cur| {
            if *cur == index && index != to {
                *cur = to;
                now = to;
                true
            } else {
                now = *cur;
                false
            }
        });
        if moved {
            tracing::warn!(from = %self.url(index), to = %self.url(to), "API server failed ({why}); failing over");
        }
        now
    }

    /// Start the readiness probe once (a no-op with a single server, or when it already runs).
    pub(crate) fn start_probe(self: &Arc<Self>, http: reqwest::Client) {
        if self.urls.len() < 2 {
            return;
        }
        let mut probe = self.probe.lock();
        if probe.is_some() {
            return;
        }
        let task = tokio::spawn(run_probe(Arc::downgrade(self), http));
        *probe = Some(task.abort_handle());
    }
}

/// Whether `base` answers `/readyz` with 200. A 404 counts as ready: a server from before `/readyz` existed
/// can only be judged by its answers to real requests, which fail over on their own.
pub(crate) async fn ready(http: &reqwest::Client, base: &str) -> bool {
    match http.get(format!("{base}/readyz")).timeout(PROBE_INTERVAL).send().await {
        Ok(r) => r.status().is_success() || r.status() == reqwest::StatusCode::NOT_FOUND,
        Err(_) => false,
    }
}

async fn run_probe(servers: Weak<Servers>, http: reqwest::Client) {
    let mut failures = 0u32;
    let mut probed = usize::MAX;
    let mut tick = tokio::time::interval(PROBE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        // Hold only a weak reference between rounds: the probe ends with the last client.
        let Some(s) = servers.upgrade() else { return };
        let cur = s.current();
        if cur != probed {
            (probed, failures) = (cur, 0);
        }
        if ready(&http, s.url(cur)).await {
            failures = 0;
            continue;
        }
        failures += 1;
        if failures < PROBE_FAILURES {
            continue;
        }
        // Move to the next server that says it is ready; when none does, stay (requests still fail over).
        let mut candidate = s.next(cur);
        while candidate != cur {
            if ready(&http, s.url(candidate)).await {
                s.move_from(cur, candidate, "readiness probe failed twice");
                break;
            }
            candidate = s.next(candidate);
        }
    }
}
