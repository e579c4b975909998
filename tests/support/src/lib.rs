//! Shared by every test binary of the workspace: skip-or-fail for a missing system component (the
//! `BERTH_REQUIRE_ALL` / `BERTH_SKIP_LOG` contract of `make test`), waits on a condition with a deadline, and
//! a throwaway etcd ([`etcd::Etcd`]).
//!
//! Tests never synchronise by sleeping: they wait for what they need to see, with a generous ceiling, and fail
//! with the name of what never happened.

pub mod etcd;
#[cfg(feature = "load")]
pub mod open_loop;

/// A reqwest client builder for tests. reqwest is built with rustls but no crypto provider of its own, so
/// ring is installed as the process-wide provider first.
#[cfg(feature = "http")]
pub fn http() -> reqwest::ClientBuilder {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
}

use std::io::Write;
use std::process::Command;
use std::time::{Duration, Instant};

/// Whether the run requires every component (`BERTH_REQUIRE_ALL=1`, as CI sets it): then a missing one fails
/// the test instead of skipping it.
pub fn require_all() -> bool {
    std::env::var("BERTH_REQUIRE_ALL").as_deref() == Ok("1")
}

/// Skip the calling test for `reason`: print it and record it in `$BERTH_SKIP_LOG` for `make test`'s closing
/// summary. Under `BERTH_REQUIRE_ALL=1` this panics instead, so CI cannot pass by skipping.
pub fn skip(reason: &str) {
    assert!(!require_all(), "BERTH_REQUIRE_ALL=1 but {reason}");
    eprintln!("SKIP {reason}");
    if let Some(log) = std::env::var_os("BERTH_SKIP_LOG") {
        if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(log) {
            let _ = writeln!(f, "{reason}");
        }
    }
}

/// Whether the system tool `tool` is installed (on `PATH`, or in `/usr/sbin` where Debian puts daemons). When
/// it is not, `test` is skipped with the package to install (see [`skip`]).
pub fn require_tool(tool: &str, test: &str) -> bool {
    if has_tool(tool) {
        return true;
    }
    let hint = debian_package(tool).map(|p| format!(" (apt-get install -y {p})")).unwrap_or_default();
    skip(&format!("{test}: `{tool}` is not installed{hint}"));
    false
}

/// Whether `tool` is installed, without skipping anything.
pub fn has_tool(tool: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool} || test -x /usr/sbin/{tool}"))
        .output()
        .is_ok_and(|o| o.status.success())
}

/// The Debian package of a tool the tests use (the same map as `scripts/prereqs.sh`).
fn debian_package(tool: &str) -> Option<&'static str> {
    Some(match tool {
        "etcd" => "etcd-server",
        "dig" => "bind9-dnsutils",
        "curl" => "curl",
        "nginx" => "nginx",
        "haproxy" => "haproxy",
        "docker" => "docker.io",
        "kubectl" => "kubectl",
        "testssl" => "testssl.sh",
        _ => return None,
    })
}

/// Block until `cond` holds, polling every 20 ms; panics naming `what` after `timeout`.
pub fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Wait until the async `cond` holds, on the tokio clock (so it also works under a paused clock); panics naming
/// `what` after `timeout`. Polls every millisecond at first, backing off to every 20 ms.
pub async fn wait_until(what: &str, timeout: Duration, mut cond: impl AsyncFnMut() -> bool) {
    eventually(what, timeout, async || cond().await.then_some(())).await
}

/// Wait until `f` gives a value and return it, on the tokio clock; panics naming `what` after `timeout`. Polls
/// every millisecond at first, backing off to every 20 ms.
pub async fn eventually<T>(what: &str, timeout: Duration, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut pause = Duration::from_millis(1);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(20));
    }
}
