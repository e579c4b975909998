//! Which keys to reconcile: those pending for the next pass (each once, in arrival order) and the timers of
//! keys to look at later, either asked for ([`Requeue::After`]) or a retry after an error, with exponential
//! back-off per key.

use super::Requeue;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::hash::Hash;
use std::time::Duration;
use tokio::time::Instant;

/// How long a key waits before its next attempt after consecutive failures: `initial`, doubling up to `max`.
/// A success resets it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackOff {
    pub initial: Duration,
    pub max: Duration,
}

impl Default for BackOff {
    fn default() -> Self {
        BackOff { initial: Duration::from_millis(500), max: Duration::from_secs(30) }
    }
}

impl BackOff {
    /// The wait after the `failures`-th consecutive failure (1 for the first).
    pub fn delay(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(31);
        self.initial.saturating_mul(1 << doublings).min(self.max)
    }
}

pub(crate) struct WorkQueue<K> {
    pending: VecDeque<K>,
    queued: HashSet<K>,
    /// One timer per key, the latest decision winning; the sequence number orders equal instants.
    timers: HashMap<K, (Instant, u64)>,
    due: BTreeMap<(Instant, u64), K>,
    seq: u64,
    failures: HashMap<K, u32>,
    back_off: BackOff,
}

impl<K: Clone + Eq + Hash> WorkQueue<K> {
    pub(crate) fn new(back_off: BackOff) -> Self {
        WorkQueue {
            pending: VecDeque::new(),
            queued: HashSet::new(),
            timers: HashMap::new(),
            due: BTreeMap::new(),
            seq: 0,
            failures: HashMap::new(),
            back_off,
        }
    }

    /// Reconcile `key` in the next pass (once, however often it is added).
    pub(crate) fn add(&mut self, key: K) {
        if self.queued.insert(key.clone()) {
            self.pending.push_back(key);
        }
    }

    pub(crate) fn extend(&mut self, keys: impl IntoIterator<Item = K>) {
        for k in keys {
            self.add(k);
        }
    }

    pub(crate) fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// The next key to reconcile. Its timer is cancelled: the outcome of this reconcile decides the next one.
    pub(crate) fn pop(&mut self) -> Option<K> {
        let key = self.pending.pop_front()?;
        self.queued.remove(&key);
        if let Some(at) = self.timers.remove(&key) {
            self.due.remove(&at);
        }
        Some(key)
    }

    /// When the earliest timer fires.
    pub(crate) fn next_timer(&self) -> Option<Instant> {
        self.due.first_key_value().map(|((at, _), _)| *at)
    }

    /// Move every key whose timer fired by `now` to the pending set.
    pub(crate) fn fire(&mut self, now: Instant) {
        while let Some(entry) = self.due.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let key = entry.remove();
            self.timers.remove(&key);
            self.add(key);
        }
    }

    pub(crate) fn succeeded(&mut self, key: K, requeue: Requeue, now: Instant) {
        self.failures.remove(&key);
        if let Requeue::After(d) = requeue {
            self.schedule(key, now + d);
        }
    }

    /// Schedule the retry of a failed key; returns its wait.
    pub(crate) fn failed(&mut self, key: K, now: Instant) -> Duration {
        let failures = self.failures.entry(key.clone()).or_default();
        *failures = failures.saturating_add(1);
        let wait = self.back_off.delay(*failures);
        self.schedule(key, now + wait);
        wait
    }

    fn schedule(&mut self, key: K, at: Instant) {
        self.seq += 1;
        if let Some(old) = self.timers.insert(key.clone(), (at, self.seq)) {
            self.due.remove(&old);
        }
        self.due.insert((at, self.seq), key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn back_off_doubles_to_its_cap() {
        let b = BackOff::default();
        let ms: Vec<u128> = (1..=9).map(|n| b.delay(n).as_millis()).collect();
        assert_eq!(ms, [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000]);
        assert_eq!(b.delay(u32::MAX), b.max);
    }

    #[test]
    fn keys_are_pending_once_and_a_reconcile_replaces_their_timer() {
        let t0 = Instant::now();
        let mut q = WorkQueue::new(BackOff::default());
        q.extend(["a", "b", "a"]);
        q.succeeded("a", Requeue::After(Duration::from_secs(1)), t0);
        assert_eq!((q.pop(), q.pop(), q.pop()), (Some("a"), Some("b"), None));
        assert_eq!(q.next_timer(), None, "popping a key cancels its timer");
        q.succeeded("a", Requeue::After(Duration::from_secs(5)), t0);
        q.succeeded("a", Requeue::After(Duration::from_secs(2)), t0);
        q.succeeded("b", Requeue::After(Duration::from_secs(2)), t0);
        assert_eq!(q.next_timer(), Some(t0 + Duration::from_secs(2)), "the latest decision wins");
        q.fire(t0 + Duration::from_secs(2));
        assert_eq!((q.pop(), q.pop(), q.pop()), (Some("a"), Some("b"), None));
        assert_eq!(q.next_timer(), None);
    }
}
