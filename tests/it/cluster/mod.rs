//! Issue #17's acceptance: Berth on several hosts, each its own Docker container with its own address on two
//! networks, under faults, with a checker reading etcd's history (see `topology.rs` for the shape and
//! `checker.rs` for the invariants). `make test-cluster` runs these tests alone and one at a time; `make test`
//! leaves them out (`cluster::` filter). They skip, saying why, without Docker, root or `/usr/bin/etcd`
//! (under `BERTH_REQUIRE_ALL=1` that is a failure instead).
//!
//! `make bench-failover` runs [`bench::failover`] (ignored by default) on the same harness.

mod api;
mod bench;
mod checker;
mod docker;
mod image;
mod scenarios;
mod topology;
mod traffic;

use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Time since the first cluster call of this process, for log lines.
pub fn since_start() -> Duration {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed()
}

/// Whether this machine can run the cluster tests; when not, the test is skipped (or fails under
/// `BERTH_REQUIRE_ALL=1`) with the reason.
pub fn prerequisites(test: &str) -> bool {
    if !test_support::require_tool("docker", test) || !test_support::require_tool("etcd", test) {
        return false;
    }
    if let Err(e) = docker::available() {
        test_support::skip(&format!("{test}: the Docker Engine does not answer ({e})"));
        return false;
    }
    if !nix_is_root() {
        test_support::skip(&format!("{test}: needs root (iptables in containers' network namespaces via nsenter)"));
        return false;
    }
    if !test_support::require_tool("nsenter", test) || !test_support::require_tool("iptables", test) {
        return false;
    }
    if !image::has_etcd(std::path::Path::new(crate::common::BERTH)) {
        test_support::skip(&format!("{test}: berth was built without --features etcd"));
        return false;
    }
    true
}

fn nix_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("Uid:")).map(|l| l.split_whitespace().nth(1) == Some("0")))
        .unwrap_or(false)
}
