//! Restart policy and crash-loop back-off, as pure functions of an exit and a count.

use super::runtime::ExitInfo;
use model::RestartPolicy;
use std::time::Duration;

/// Exponential back-off between restarts (Kubernetes: the first restart at once, then 10 s doubling to 5 min,
/// reset after 10 min of running).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
    /// A container that ran at least this long before exiting starts again from `initial`.
    pub reset_after: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self { initial: Duration::from_secs(10), max: Duration::from_secs(300), reset_after: Duration::from_secs(600) }
    }
}

impl Backoff {
    /// The delay before the restart that follows `previous` back-offs since the last reset.
    pub fn delay(&self, previous: u32) -> Duration {
        let factor = 1u32.checked_shl(previous.min(31)).unwrap_or(u32::MAX);
        self.initial.checked_mul(factor).map_or(self.max, |d| d.min(self.max))
    }

    /// The delay before restarting a container that already restarted `restarts` times since the last reset:
    /// none for the first, as the kubelet does, so one crash of a serving container costs only its start-up
    /// (the `kill -9` acceptance: the replacement serves within 5 s); then [`Self::delay`] from `initial`.
    pub fn restart_delay(&self, restarts: u32) -> Duration {
        match restarts {
            0 => Duration::ZERO,
            n => self.delay(n - 1),
        }
    }
}

/// Whether the policy restarts a container that ended with `exit` (`killed_by_probe`: a failed liveness or
/// startup probe stopped it, which counts as a failure whatever the exit code).
pub fn should_restart(policy: RestartPolicy, exit: &ExitInfo, killed_by_probe: bool) -> bool {
    match policy {
        RestartPolicy::Always => true,
        RestartPolicy::OnFailure => killed_by_probe || !exit.succeeded(),
        RestartPolicy::Never => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::SystemTime;

    fn exit(code: Option<i32>, signal: Option<i32>) -> ExitInfo {
        ExitInfo { code, signal, oom_killed: false, finished_at: SystemTime::UNIX_EPOCH, unknown: false }
    }

    #[test]
    fn backoff_doubles_to_cap() {
        let b = Backoff::default();
        let got: Vec<u64> = (0..8).map(|n| b.delay(n).as_secs()).collect();
        assert_eq!(got, vec![10, 20, 40, 80, 160, 300, 300, 300]);
        assert_eq!(b.delay(1000), Duration::from_secs(300));
        let fast = Backoff { initial: Duration::from_millis(100), max: Duration::from_millis(250), ..b };
        assert_eq!(fast.delay(0), Duration::from_millis(100));
        assert_eq!(fast.delay(2), Duration::from_millis(250));
        let restarts: Vec<u64> = (0..4).map(|n| b.restart_delay(n).as_secs()).collect();
        assert_eq!(restarts, vec![0, 10, 20, 40], "the first restart is immediate");
    }

    #[test]
    fn policy_table() {
        use RestartPolicy::*;
        let cases = [
            (Always, exit(Some(0), None), false, true),
            (Always, exit(Some(1), None), false, true),
            (OnFailure, exit(Some(0), None), false, false),
            (OnFailure, exit(Some(2), None), false, true),
            (OnFailure, exit(None, Some(9)), false, true),
            (OnFailure, exit(Some(0), None), true, true),
            (Never, exit(Some(1), None), false, false),
            (Never, exit(Some(1), None), true, false),
        ];
        for (i, (p, e, probe, want)) in cases.iter().enumerate() {
            assert_eq!(should_restart(*p, e, *probe), *want, "case {i}");
        }
        let oom = ExitInfo { oom_killed: true, ..exit(Some(137), None) };
        assert_eq!(oom.reason(), "OOMKilled");
        assert_eq!(exit(None, Some(15)).exit_code(), 143);
    }
}
