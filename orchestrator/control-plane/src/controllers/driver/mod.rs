//! The controller driver: the one loop every controller runs in, around a [`Reconciler`] that says what to
//! watch, which keys a change affects and how to reconcile one key. In the shape of kube-runtime's
//! `Controller` and client-go's informer and work queue:
//!
//! 1. An informer per watched kind lists it, watches from the list's revision and lists again when the watch
//!    fails or ends; objects land in typed [`Caches`] with their store revisions.
//! 2. The events that arrived together form one batch. Each change that reaches a cache (events older than
//!    the cached object are ignored by revision) is mapped to the keys it affects, given the object before
//!    and after ([`Reconciler::affected`]).
//! 3. A pass reconciles every affected key once ([`Reconciler::reconcile`]), then calls
//!    [`Reconciler::after_pass`]. No pass runs before every kind has been listed once, nor for a batch
//!    that affects nothing.
//! 4. A key asks to be looked at again with [`Requeue::After`]; a key whose reconcile failed is retried with
//!    exponential back-off ([`BackOff`]: 500 ms doubling to 30 s, reset by a success). Reconciling a key
//!    replaces its pending timer. A watched change reconciles a key at once, whatever its back-off.
//! 5. After a kind is listed again (events may have been missed) and every
//!    [`resync_period`](Reconciler::resync_period), [`Reconciler::resync`] names the keys to look at.
//!
//! Writes go through the [`Context`], which keeps the caches current ("write-through"): the next batch never
//! acts twice on a stale view, and the watch events of the controller's own writes are ignored by revision.
//!
//! Nothing is remembered across restarts: the driver starts from a full list, so a controller decides from
//! what is stored, never from what it did before.
//!
//! Stopping: once `stop` is set, no new reconcile starts; the one in flight finishes (its writes complete),
//! the informers are stopped and [`run`] returns. A reconcile that fails with [`StoreError::Fenced`] stops
//! the driver the same way (the leadership term is over; nothing is retried).

mod cache;
mod context;
mod informer;
mod queue;

pub use cache::{Cache, Cached, Caches, Changed, Watch};
pub use context::Context;
pub use queue::BackOff;

use crate::store::{Store, StoreError, StoreEvent};
use informer::Feed;
use model::clock::Clock;
use queue::WorkQueue;
use std::fmt;
use std::future::Future;
use std::hash::Hash;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::{Instant, Interval, MissedTickBehavior};

/// What to do with a key after a successful reconcile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Requeue {
    /// Nothing is due in time: look again when a watched change affects the key.
    OnChange,
    /// Look again after this long even if nothing changes (a time-based transition is pending).
    /// `Duration::ZERO` means right after this pass.
    After(Duration),
}

/// Why [`Reconciler::resync`] is called.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resync {
    /// A kind was listed (at start, or again after its watch failed): changes may have been missed, so the
    /// caches may differ from the last pass in any way. A relist also stands for a periodic resync due at
    /// the same pass.
    Listed,
    /// [`Reconciler::resync_period`] elapsed.
    Periodic,
}

/// One controller, as the driver runs it. The decisions belong in pure functions; an implementation maps
/// changes to keys and executes decisions through the [`Context`].
pub trait Reconciler: Send + 'static {
    /// What one reconcile is about: usually the store key of the object reconciled.
    type Key: Clone + Eq + Hash + fmt::Display + Send + Sync + 'static;

    /// The controller's name in logs (as Kubernetes names its own: `deployment-controller`).
    const NAME: &'static str;

    /// The kinds to list, watch and cache ([`Watch::of`]).
    fn watches(&self) -> &[Watch];

    /// The keys a change of one cached object affects. Called for each change as it is applied, so `caches`
    /// hold everything up to and including it.
    fn affected(&self, change: &Changed<'_>, caches: &Caches) -> Vec<Self::Key>;

    /// Reconcile one key: read the caches, decide, write through `ctx`. An error is retried with back-off.
    fn reconcile(
        &mut self,
        key: &Self::Key,
        ctx: &mut Context<'_>,
    ) -> impl Future<Output = Result<Requeue, StoreError>> + Send;

    /// The keys to reconcile after a relist or a periodic resync, before the pass's other keys. Work over
    /// the whole view that is not per key (a full publication) goes here too. By default: none.
    fn resync(&mut self, why: Resync, caches: &Caches) -> Vec<Self::Key> {
        let _ = (why, caches);
        Vec::new()
    }

    /// How often [`Reconciler::resync`] runs besides relists. By default: only on relists.
    fn resync_period(&self) -> Option<Duration> {
        None
    }

    /// Called after every pass, once each of its keys is reconciled (e.g. to publish what the pass
    /// computed in one batch).
    fn after_pass(&mut self) {}
}

/// Run `reconciler` over `store` until `stop` turns true (or its sender is dropped). See the module docs.
pub async fn run<R: Reconciler>(
    mut reconciler: R,
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    mut stop: watch::Receiver<bool>,
) {
    let watches = reconciler.watches().to_vec();
    let mut caches = Caches::new(&watches);
    let (mut feed, mut informers) = informer::spawn(&store, &watches);
    let mut queue = WorkQueue::new(BackOff::default());
    let mut resync_timer = reconciler.resync_period().map(|period| {
        let mut timer = tokio::time::interval_at(Instant::now() + period, period);
        timer.set_missed_tick_behavior(MissedTickBehavior::Delay);
        timer
    });
    let (mut relisted, mut periodic) = (false, false);
    'run: loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => break,
            batch = informer::next_batch(&mut feed) => {
                let Some(batch) = batch else { break };
                relisted |= take(batch, &reconciler, &mut caches, &mut queue);
            }
            _ = sleep_until(queue.next_timer()) => queue.fire(Instant::now()),
            _ = tick(&mut resync_timer) => periodic = true,
        }
        if !caches.all_listed() {
            continue;
        }
        if relisted || periodic {
            let why = if relisted { Resync::Listed } else { Resync::Periodic };
            queue.extend(reconciler.resync(why, &caches));
            (relisted, periodic) = (false, false);
        } else if !queue.has_pending() {
            // Events that changed nothing (e.g. of our own writes): no pass.
            continue;
        }
        loop {
            // Checked before each key: the select above may have taken a batch although the stop was ready too.
            if *stop.borrow() {
                break 'run;
            }
            let Some(key) = queue.pop() else { break };
            let mut ctx = Context { store: &*store, clock: &*clock, caches: &mut caches };
            match reconciler.reconcile(&key, &mut ctx).await {
                Ok(requeue) => queue.succeeded(key, requeue, Instant::now()),
                // The store says this replica's leadership term is over: no retry can succeed, and
                // every further write would be refused too.
                Err(e @ StoreError::Fenced(_)) => {
                    tracing::warn!(controller = R::NAME, %key, error = %e, "leadership lost; controller stopping");
                    break 'run;
                }
                Err(e) => {
                    let wait = queue.failed(key.clone(), Instant::now());
                    let retry_ms = wait.as_millis() as u64;
                    tracing::warn!(controller = R::NAME, %key, error = %e, retry_ms, "reconcile failed; retrying");
                }
            }
        }
        reconciler.after_pass();
    }
    drop(feed);
    informers.shutdown().await;
}

/// Apply a batch to the caches and queue the keys its changes affect; returns whether it held a relist.
fn take<R: Reconciler>(batch: Vec<Feed>, r: &R, caches: &mut Caches, queue: &mut WorkQueue<R::Key>) -> bool {
    let mut relisted = false;
    for item in batch {
        match item {
            Feed::Listed { kind, objects } => {
                if let Some(cache) = caches.find_mut(kind) {
                    cache.relist(objects);
                }
                relisted = true;
            }
            Feed::Event { kind, event } => queue.extend(affected(r, caches, kind, event)),
        }
    }
    relisted
}

/// Apply one event to its cache and map the change, if any, to the keys it affects.
fn affected<R: Reconciler>(reconciler: &R, caches: &mut Caches, kind: &str, event: StoreEvent) -> Vec<R::Key> {
    let Some((key, before)) = caches.find_mut(kind).and_then(|c| c.apply(event)) else {
        return Vec::new();
    };
    let caches = &*caches;
    let after = caches.find(kind).and_then(|c| c.get(&key));
    reconciler.affected(&Changed { key: &key, before: before.as_deref(), after }, caches)
}

/// Sleep until `at`, or forever when `None`.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

async fn tick(timer: &mut Option<Interval>) {
    match timer {
        Some(t) => {
            t.tick().await;
        }
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests;
