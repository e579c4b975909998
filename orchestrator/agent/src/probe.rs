//! Liveness, readiness and startup probes: their configuration (Kubernetes defaults), the threshold logic
//! that turns single results into a state, and one probe attempt (HTTP GET, TCP connect, exec).
//!
//! [`ProbeTracker`] is pure: the pod worker feeds it results and acts on the transitions it returns, so the
//! threshold rules are tested without any clock or network. Scheduling (initial delay, period) lives in the
//! worker, on tokio time, which tests pause and advance.

use super::runtime::Runtime;
use model::{Container, IntOrString, Probe, Scheme};
use std::time::Duration;

/// What a probe does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeAction {
    Http { scheme: String, host: String, port: u16, path: String },
    Tcp { host: String, port: u16 },
    Exec { command: Vec<String> },
}

/// One probe, with Kubernetes defaults applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeConfig {
    pub action: ProbeAction,
    pub initial_delay: Duration,
    pub period: Duration,
    pub timeout: Duration,
    pub failure_threshold: u32,
    pub success_threshold: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{probe} probe: {message}")]
pub struct ProbeSpecError {
    pub probe: &'static str,
    pub message: String,
}

impl ProbeConfig {
    /// Build from the pod's probe. `host_port_of` maps the probe's container port to where it answers on this
    /// node (the allocated or published host port); the host is `default_host` (the node's address, where
    /// workloads listen) unless the probe names one.
    pub fn from_spec(
        which: &'static str,
        v: &Probe,
        container: &Container,
        default_host: &str,
        host_port_of: impl Fn(u16) -> u16,
    ) -> Result<ProbeConfig, ProbeSpecError> {
        let err = |m: String| ProbeSpecError { probe: which, message: m };
        let port_of = |p: &IntOrString| {
            container.resolve_port(p).map(&host_port_of).ok_or_else(|| {
                // Written as JSON (`"admin"`, `8080`), as the pod's status has always shown it.
                err(format!("cannot resolve port {}", serde_json::to_string(p).unwrap_or_default()))
            })
        };
        let action = if let Some(h) = &v.http_get {
            let scheme = match h.scheme {
                Scheme::Http => "http",
                Scheme::Https => "https",
            };
            ProbeAction::Http {
                scheme: scheme.into(),
                host: h.host.clone().unwrap_or_else(|| default_host.to_string()),
                port: port_of(&h.port)?,
                path: h.path.clone(),
            }
        } else if let Some(t) = &v.tcp_socket {
            ProbeAction::Tcp {
                host: t.host.clone().unwrap_or_else(|| default_host.to_string()),
                port: port_of(&t.port)?,
            }
        } else if let Some(e) = &v.exec {
            if e.command.is_empty() {
                return Err(err("exec.command is empty".into()));
            }
            ProbeAction::Exec { command: e.command.clone() }
        } else {
            return Err(err("needs one of httpGet, tcpSocket, exec".into()));
        };
        // The model fills in Kubernetes' defaults (0 s delay, 10 s period, 1 s timeout, thresholds 3 and 1).
        let at_least = |v: i32, min: u32| u32::try_from(v).unwrap_or(0).max(min);
        let secs = |v: i32, min: u32| Duration::from_secs(u64::from(at_least(v, min)));
        Ok(ProbeConfig {
            action,
            initial_delay: secs(v.initial_delay_seconds, 0),
            period: secs(v.period_seconds, 1),
            timeout: secs(v.timeout_seconds, 1),
            failure_threshold: at_least(v.failure_threshold, 1),
            // Liveness and startup must use 1 in Kubernetes; we simply honour what is given.
            success_threshold: at_least(v.success_threshold, 1),
        })
    }
}

/// Consecutive-result bookkeeping of one probe.
#[derive(Debug, Clone)]
pub struct ProbeTracker {
    failure_threshold: u32,
    success_threshold: u32,
    successes: u32,
    failures: u32,
    state: bool,
    pub last_failure: Option<String>,
}

impl ProbeTracker {
    /// `initial`: readiness and startup start failed (false), liveness starts passed (true).
    pub fn new(cfg: &ProbeConfig, initial: bool) -> Self {
        Self {
            failure_threshold: cfg.failure_threshold,
            success_threshold: cfg.success_threshold,
            successes: 0,
            failures: 0,
            state: initial,
            last_failure: None,
        }
    }

    pub fn state(&self) -> bool {
        self.state
    }

    /// Record one result; returns the new state when it flips.
    pub fn record(&mut self, result: &Result<(), String>) -> Option<bool> {
        match result {
            Ok(()) => {
                self.failures = 0;
                self.successes = self.successes.saturating_add(1);
                if !self.state && self.successes >= self.success_threshold {
                    self.state = true;
                    return Some(true);
                }
            }
            Err(m) => {
                self.successes = 0;
                self.failures = self.failures.saturating_add(1);
                self.last_failure = Some(m.clone());
                if self.state && self.failures >= self.failure_threshold {
                    self.state = false;
                    return Some(false);
                }
                // A startup/readiness probe that has never passed "fails" once the threshold is reached too:
                // report it so startup can kill the container.
                if !self.state && self.failures == self.failure_threshold {
                    return Some(false);
                }
            }
        }
        None
    }
}

/// Run one probe attempt.
pub async fn run_probe(
    action: &ProbeAction,
    timeout: Duration,
    runtime: &dyn Runtime,
    container_id: &str,
    http: &reqwest::Client,
) -> Result<(), String> {
    match action {
        ProbeAction::Http { scheme, host, port, path } => {
            let url = format!("{scheme}://{host}:{port}{path}");
            match tokio::time::timeout(timeout, http.get(&url).send()).await {
                Err(_) => Err(format!("HTTP probe timed out after {timeout:?}")),
                Ok(Err(e)) => Err(format!("HTTP probe failed: {e}")),
                Ok(Ok(r)) if (200..400).contains(&r.status().as_u16()) => Ok(()),
                Ok(Ok(r)) => Err(format!("HTTP probe failed with statuscode: {}", r.status().as_u16())),
            }
        }
        ProbeAction::Tcp { host, port } => {
            match tokio::time::timeout(timeout, tokio::net::TcpStream::connect((host.as_str(), *port))).await {
                Err(_) => Err(format!("TCP probe timed out after {timeout:?}")),
                Ok(Err(e)) => Err(format!("dial tcp {host}:{port}: {e}")),
                Ok(Ok(_)) => Ok(()),
            }
        }
        ProbeAction::Exec { command } => match runtime.exec(container_id, command, timeout).await {
            Ok(0) => Ok(()),
            Ok(code) => Err(format!("exec probe {command:?} exited with {code}")),
            Err(e) => Err(format!("exec probe {command:?}: {e}")),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(f: u32, s: u32) -> ProbeConfig {
        ProbeConfig {
            action: ProbeAction::Tcp { host: "127.0.0.1".into(), port: 1 },
            initial_delay: Duration::ZERO,
            period: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            failure_threshold: f,
            success_threshold: s,
        }
    }

    #[test]
    fn thresholds_table() {
        // (failure_threshold, success_threshold, initial, results, expected transitions)
        let ok = || Ok(());
        let bad = || Err("x".to_string());
        type Case = (u32, u32, bool, Vec<Result<(), String>>, Vec<Option<bool>>);
        let cases: Vec<Case> = vec![
            (3, 1, true, vec![bad(), bad(), bad()], vec![None, None, Some(false)]),
            (3, 1, true, vec![bad(), bad(), ok(), bad(), bad()], vec![None, None, None, None, None]),
            (1, 1, false, vec![ok()], vec![Some(true)]),
            (1, 2, false, vec![ok(), bad(), ok(), ok()], vec![None, Some(false), None, Some(true)]),
            (2, 1, false, vec![bad(), bad(), bad()], vec![None, Some(false), None]),
        ];
        for (i, (f, s, initial, results, want)) in cases.into_iter().enumerate() {
            let mut t = ProbeTracker::new(&cfg(f, s), initial);
            let got: Vec<Option<bool>> = results.iter().map(|r| t.record(r)).collect();
            assert_eq!(got, want, "case {i}");
        }
    }

    #[test]
    fn defaults_and_ports() {
        let c: Container = serde_json::from_value(serde_json::json!({
            "name": "c", "ports": [{"containerPort": 8080, "name": "http"}]
        }))
        .unwrap();
        let v: Probe =
            serde_json::from_value(serde_json::json!({"httpGet": {"path": "/healthz", "port": "http"}})).unwrap();
        let p =
            ProbeConfig::from_spec("readiness", &v, &c, "127.0.0.1", |p| if p == 8080 { 31000 } else { p }).unwrap();
        assert_eq!(p.period, Duration::from_secs(10));
        assert_eq!(p.timeout, Duration::from_secs(1));
        assert_eq!(p.failure_threshold, 3);
        assert_eq!(
            p.action,
            ProbeAction::Http { scheme: "http".into(), host: "127.0.0.1".into(), port: 31000, path: "/healthz".into() }
        );
        let bad: Probe = serde_json::from_value(serde_json::json!({"tcpSocket": {"port": "nope"}})).unwrap();
        let err = ProbeConfig::from_spec("liveness", &bad, &c, "127.0.0.1", |p| p).unwrap_err();
        assert_eq!(err.to_string(), "liveness probe: cannot resolve port \"nope\"");
        let none: Probe = serde_json::from_value(serde_json::json!({})).unwrap();
        assert!(ProbeConfig::from_spec("liveness", &none, &c, "127.0.0.1", |p| p).is_err());
    }
}
