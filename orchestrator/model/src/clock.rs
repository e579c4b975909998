//! Time as an injected dependency: [`Clock`] with the real [`SystemClock`] and a [`ManualClock`] that tests
//! advance by hand, so controller logic that depends on "now" (heartbeat grace, minReadySeconds, progress
//! deadlines) replays deterministically.
//!
//! Only wall-clock time (`SystemTime`) is modelled, because the durations compared are between timestamps
//! stored in objects (`heartbeatTime`, `deletionTimestamp`). Timers in runners still use tokio's clock.

use parking_lot::Mutex;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// A source of the current time.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> SystemTime;
}

/// The real wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// A clock that only moves when told to. Clones share the same time.
#[derive(Debug, Clone)]
pub struct ManualClock {
    now: Arc<Mutex<SystemTime>>,
}

impl ManualClock {
    pub fn new(start: SystemTime) -> Self {
        ManualClock { now: Arc::new(Mutex::new(start)) }
    }

    /// Starts at a fixed, round instant (2026-01-01T00:00:00Z) so printed times are stable.
    pub fn at_epoch_2026() -> Self {
        Self::new(SystemTime::UNIX_EPOCH + Duration::from_secs(1_767_225_600))
    }

    pub fn advance(&self, by: Duration) {
        let mut now = self.now.lock();
        *now += by;
    }

    pub fn set(&self, to: SystemTime) {
        *self.now.lock() = to;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> SystemTime {
        *self.now.lock()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_only_when_told() {
        let c = ManualClock::at_epoch_2026();
        let t0 = c.now();
        assert_eq!(c.now(), t0);
        c.clone().advance(Duration::from_secs(3));
        assert_eq!(c.now(), t0 + Duration::from_secs(3));
    }
}
