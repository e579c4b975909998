//! The step-down rules of a leadership term, as pure functions of what was observed and when: no IO, no
//! clock reads (every instant is passed in), so every rule is tested with made-up instants.
//!
//! The lease rule is client-go's renew deadline made conservative: a keep-alive acknowledged by etcd renewed
//! the lease *no earlier than the moment its request was sent*, so the term is measured from the send time
//! of the last acknowledged request ([`LeaseClock::renewed_at`]), never from when the answer arrived. With a
//! renew deadline shorter than the lease duration, this replica stops acting before etcd can let the lease
//! expire and another replica take over, whatever the network delays (clock rates assumed equal). Safety does
//! not rest on this timing: the fence (`store::etcd::Fence`) refuses a late writer's writes anyway.

use std::collections::VecDeque;
use std::fmt;
use std::time::{Duration, Instant};

/// Why a replica stops leading (or abandons a candidacy).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepDown {
    /// No keep-alive was acknowledged within the renew deadline.
    RenewDeadline,
    /// etcd answered a keep-alive with a TTL of zero or less: the lease is gone.
    LeaseExpired,
    /// The leader key is gone: deleted, expired with its lease, or resigned.
    LeaderKeyGone,
    /// The leader key exists but belongs to another term (another replica leads).
    OtherLeader,
    /// A fenced write was refused: the store says the term is over.
    Fenced,
    /// The leader loops ended on their own.
    LoopsEnded,
}

impl fmt::Display for StepDown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            StepDown::RenewDeadline => "no keep-alive acknowledged within the renew deadline",
            StepDown::LeaseExpired => "the lease expired",
            StepDown::LeaderKeyGone => "the leader key is gone",
            StepDown::OtherLeader => "another replica leads",
            StepDown::Fenced => "a fenced write was refused",
            StepDown::LoopsEnded => "the leader loops ended",
        })
    }
}

/// Keep-alive bookkeeping of one lease.
#[derive(Debug, Clone)]
pub struct LeaseClock {
    renew_deadline: Duration,
    /// The send time of the last acknowledged keep-alive (at first: of the grant request).
    renewed_at: Instant,
    /// Send times of the keep-alives not answered yet, oldest first (etcd answers them in order).
    in_flight: VecDeque<Instant>,
}

/// Keep-alives sent without an answer beyond which [`LeaseClock::should_send`] says no: the stream is stuck
/// and the renew deadline will end the term.
const MAX_IN_FLIGHT: usize = 32;

impl LeaseClock {
    /// A lease whose grant request was sent at `granted_at`.
    pub fn new(granted_at: Instant, renew_deadline: Duration) -> Self {
        Self { renew_deadline, renewed_at: granted_at, in_flight: VecDeque::new() }
    }

    /// A keep-alive request was sent at `at`.
    pub fn sent(&mut self, at: Instant) {
        self.in_flight.push_back(at);
    }

    /// Whether another keep-alive may be sent (the stream is not stuck).
    pub fn should_send(&self) -> bool {
        self.in_flight.len() < MAX_IN_FLIGHT
    }

    /// etcd answered the oldest keep-alive in flight with `ttl` seconds left.
    pub fn answered(&mut self, ttl: i64) -> Result<(), StepDown> {
        let sent = self.in_flight.pop_front();
        if ttl <= 0 {
            return Err(StepDown::LeaseExpired);
        }
        if let Some(sent) = sent {
            self.renewed_at = self.renewed_at.max(sent);
        }
        Ok(())
    }

    /// The send time of the last acknowledged keep-alive.
    pub fn renewed_at(&self) -> Instant {
        self.renewed_at
    }

    pub fn renew_deadline(&self) -> Duration {
        self.renew_deadline
    }

    /// When the term ends unless another keep-alive is acknowledged.
    pub fn deadline(&self) -> Instant {
        self.renewed_at + self.renew_deadline
    }

    /// Whether the term may go on at `now`.
    pub fn check(&self, now: Instant) -> Result<(), StepDown> {
        if now >= self.deadline() {
            Err(StepDown::RenewDeadline)
        } else {
            Ok(())
        }
    }
}

/// What a read of our leader key says about our term: `observed` is the key's create revision, `None`
/// when the key does not exist.
pub fn judge_leader_key(term_revision: i64, observed: Option<i64>) -> Result<(), StepDown> {
    match observed {
        None => Err(StepDown::LeaderKeyGone),
        Some(rev) if rev != term_revision => Err(StepDown::OtherLeader),
        Some(_) => Ok(()),
    }
}

/// The election timing: how long a lease lives without keep-alives, how long a leader goes on without an
/// acknowledged keep-alive, and how often it sends one (and retries a failed campaign).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    pub lease_duration: Duration,
    pub renew_deadline: Duration,
    pub retry_period: Duration,
}

impl Default for Timing {
    /// Kubernetes' defaults (15 s, 10 s, 2 s) scaled down.
    fn default() -> Self {
        Timing {
            lease_duration: Duration::from_secs(10),
            renew_deadline: Duration::from_secs(7),
            retry_period: Duration::from_secs(1),
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TimingError {
    #[error("--lease-duration must be at least 2s (etcd's lease TTL is in whole seconds), not {0:?}")]
    LeaseTooShort(Duration),
    #[error("--renew-deadline ({renew:?}) must be shorter than --lease-duration ({lease:?})")]
    RenewNotBeforeLease { renew: Duration, lease: Duration },
    #[error("--retry-period ({retry:?}) must be positive and shorter than --renew-deadline ({renew:?})")]
    RetryNotBeforeRenew { retry: Duration, renew: Duration },
}

impl Timing {
    /// Check the ordering the rules above rely on: retry < renew deadline < lease.
    pub fn validate(&self) -> Result<(), TimingError> {
        if self.lease_duration < Duration::from_secs(2) {
            return Err(TimingError::LeaseTooShort(self.lease_duration));
        }
        if self.renew_deadline >= self.lease_duration {
            return Err(TimingError::RenewNotBeforeLease { renew: self.renew_deadline, lease: self.lease_duration });
        }
        if self.retry_period.is_zero() || self.retry_period >= self.renew_deadline {
            return Err(TimingError::RetryNotBeforeRenew { retry: self.retry_period, renew: self.renew_deadline });
        }
        Ok(())
    }

    /// The lease TTL to ask etcd for, in whole seconds, never shorter than the lease duration.
    pub fn lease_ttl_secs(&self) -> i64 {
        let d = self.lease_duration;
        let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
        i64::try_from(secs).unwrap_or(i64::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn the_term_is_measured_from_the_send_time_of_the_last_acknowledged_keep_alive() {
        let t0 = Instant::now();
        let mut clock = LeaseClock::new(t0, 7 * S);
        assert_eq!(clock.check(t0 + 6 * S), Ok(()));
        assert_eq!(clock.check(t0 + 7 * S), Err(StepDown::RenewDeadline));

        // Sent at 1 s, answered at 5 s (a slow network): the lease was renewed no earlier than 1 s.
        clock.sent(t0 + S);
        clock.sent(t0 + 2 * S);
        assert_eq!(clock.answered(10), Ok(()));
        assert_eq!(clock.renewed_at(), t0 + S);
        assert_eq!(clock.check(t0 + 7 * S), Ok(()));
        assert_eq!(clock.check(t0 + 8 * S), Err(StepDown::RenewDeadline));
        // The next answer is for the request sent at 2 s.
        assert_eq!(clock.answered(10), Ok(()));
        assert_eq!(clock.deadline(), t0 + 9 * S);
    }

    #[test]
    fn an_answer_with_no_ttl_ends_the_term_at_once() {
        let t0 = Instant::now();
        let mut clock = LeaseClock::new(t0, 7 * S);
        clock.sent(t0 + S);
        assert_eq!(clock.answered(0), Err(StepDown::LeaseExpired));
        clock.sent(t0 + 2 * S);
        assert_eq!(clock.answered(-1), Err(StepDown::LeaseExpired));
    }

    #[test]
    fn unanswered_keep_alives_never_extend_the_term_and_stop_piling_up() {
        let t0 = Instant::now();
        let mut clock = LeaseClock::new(t0, 7 * S);
        let mut sent = 0;
        for i in 1..100u32 {
            if clock.should_send() {
                clock.sent(t0 + i * S / 10);
                sent += 1;
            }
        }
        assert_eq!(sent, MAX_IN_FLIGHT);
        assert_eq!(clock.renewed_at(), t0);
        assert_eq!(clock.check(t0 + 7 * S), Err(StepDown::RenewDeadline));
    }

    #[test]
    fn an_answer_without_a_request_keeps_the_last_renewal() {
        let t0 = Instant::now();
        let mut clock = LeaseClock::new(t0 + 2 * S, 7 * S);
        assert_eq!(clock.answered(10), Ok(()));
        assert_eq!(clock.renewed_at(), t0 + 2 * S);
    }

    #[test]
    fn the_leader_key_decides_the_term() {
        assert_eq!(judge_leader_key(42, Some(42)), Ok(()));
        assert_eq!(judge_leader_key(42, None), Err(StepDown::LeaderKeyGone));
        assert_eq!(judge_leader_key(42, Some(57)), Err(StepDown::OtherLeader));
    }

    #[test]
    fn timing_must_be_ordered_retry_renew_lease() {
        assert_eq!(Timing::default().validate(), Ok(()));
        let t = |l: u64, r: u64, p: u64| Timing {
            lease_duration: Duration::from_millis(l),
            renew_deadline: Duration::from_millis(r),
            retry_period: Duration::from_millis(p),
        };
        assert!(matches!(t(1000, 500, 100).validate(), Err(TimingError::LeaseTooShort(_))));
        assert!(matches!(t(10_000, 10_000, 1000).validate(), Err(TimingError::RenewNotBeforeLease { .. })));
        assert!(matches!(t(10_000, 7000, 7000).validate(), Err(TimingError::RetryNotBeforeRenew { .. })));
        assert!(matches!(t(10_000, 7000, 0).validate(), Err(TimingError::RetryNotBeforeRenew { .. })));
        assert_eq!(t(2500, 2000, 500).lease_ttl_secs(), 3);
        assert_eq!(t(10_000, 7000, 1000).lease_ttl_secs(), 10);
    }
}
