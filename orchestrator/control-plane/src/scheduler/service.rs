//! The scheduler service: rounds of observe → place → bind over a [`Store`], woken by store watch events on
//! pods and nodes.
//!
//! A round ([`Scheduler::round`]) schedules every pending pod (no `spec.nodeName`, not terminating, not
//! finished) in one batch through [`Runner::run_once`], then records `PodScheduled=False` / `Unschedulable`
//! with the verdict on each pod that fits nowhere (only when the message changes, so rounds converge).
//! [`Scheduler::serve`] runs a round, then waits for the next pod or node change (draining every change
//! already queued, so a burst costs one round), and only as a safety net for a lost wake-up after
//! [`Scheduler::with_resync`] (default [`DEFAULT_RESYNC`]). An unschedulable pod is therefore retried as soon
//! as any node or pod changes, never by busy polling.
//!
//! Any number of services may run on one store: the bind protocol of [`StoreCluster`] keeps nodes from being
//! overcommitted. This module does no placement itself and knows nothing of HTTP.

use super::bind::{RunError, RunReport, Runner};
use super::store::StoreCluster;
use super::SchedulingPolicy;
use crate::store::{Prefix, Store, StoreError, WatchStream};
use futures::{FutureExt, StreamExt};
use model;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The safety-net period between rounds when nothing changes.
pub const DEFAULT_RESYNC: Duration = Duration::from_secs(30);

/// Backoff after a failed round or a failed watch before trying again.
const ERROR_BACKOFF: Duration = Duration::from_millis(500);

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("scheduling round: {0}")]
    Round(#[from] RunError),
    #[error("scheduler store access: {0}")]
    Store(#[from] StoreError),
}

impl ServiceError {
    /// Whether the store refused a write because this replica's leadership term is over (see `crate::ha`):
    /// the service then stops instead of retrying.
    pub fn is_fenced(&self) -> bool {
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(self);
        while let Some(e) = source {
            if matches!(e.downcast_ref::<StoreError>(), Some(StoreError::Fenced(_))) {
                return true;
            }
            source = e.source();
        }
        false
    }
}

/// What a [`Scheduler::round`] did: the runner's report and how many `Unschedulable` conditions it wrote.
#[derive(Debug, Default)]
pub struct RoundReport {
    pub run: RunReport,
    pub marked_unschedulable: usize,
}

/// See the module docs.
pub struct Scheduler {
    cluster: Arc<StoreCluster>,
    resync: Duration,
    seed: AtomicU64,
}

impl Scheduler {
    pub fn new(store: Arc<dyn Store>, policy: SchedulingPolicy) -> Self {
        Self { cluster: Arc::new(StoreCluster::new(store, policy)), resync: DEFAULT_RESYNC, seed: AtomicU64::new(0) }
    }

    /// The safety-net period between rounds when no change wakes the service.
    pub fn with_resync(mut self, every: Duration) -> Self {
        self.resync = every.max(Duration::from_millis(10));
        self
    }

    /// The first round's seed; each round uses the next one, so a run replays from its seed.
    pub fn with_seed(self, seed: u64) -> Self {
        self.seed.store(seed, Ordering::Relaxed);
        self
    }

    /// Runs a scheduler on `store` until `shutdown` completes.
    pub async fn run(
        store: Arc<dyn Store>,
        policy: SchedulingPolicy,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), ServiceError> {
        Self::new(store, policy).serve(shutdown).await
    }

    pub fn cluster(&self) -> &Arc<StoreCluster> {
        &self.cluster
    }

    /// One round: schedule every pending pod, then record the verdict of each that fits nowhere.
    pub async fn round(&self) -> Result<RoundReport, ServiceError> {
        let seed = self.seed.fetch_add(1, Ordering::Relaxed);
        let runner = Runner::new(&*self.cluster, &*self.cluster);
        let run = runner.run_once(seed).await?;
        let mut marked = 0;
        for (pod, why) in &run.unschedulable {
            if self.cluster.mark_unschedulable(pod, why).await? {
                tracing::info!(pod = %pod, reason = %why, "pod is unschedulable");
                marked += 1;
            }
        }
        for (pod, node) in &run.bound {
            tracing::debug!(pod = %pod, node = %node, "bound");
        }
        Ok(RoundReport { run, marked_unschedulable: marked })
    }

    /// Rounds until `shutdown` completes (see the module docs). Fails when the watches cannot be opened at
    /// start, and when a write is fenced off ([`ServiceError::is_fenced`]: this replica no longer leads);
    /// other store errors are logged and retried. A round under way when `shutdown` completes is abandoned
    /// between two store calls.
    pub async fn serve(&self, shutdown: impl Future<Output = ()>) -> Result<(), ServiceError> {
        let store = self.cluster.store().clone();
        let mut watches = Watches::open(&store).await?;
        tokio::pin!(shutdown);
        loop {
            let round = tokio::select! {
                _ = &mut shutdown => return Ok(()),
                round = self.round() => round,
            };
            if let Err(e) = round {
                if e.is_fenced() {
                    return Err(e);
                }
                tracing::warn!(error = %e, "scheduling round failed; retrying");
                tokio::select! {
                    _ = &mut shutdown => return Ok(()),
                    _ = tokio::time::sleep(ERROR_BACKOFF) => {}
                }
            }
            tokio::select! {
                _ = &mut shutdown => return Ok(()),
                woke = watches.next_change() => {
                    if !woke {
                        // A watch ended or was compacted: reopen; the next round lists everything anyway.
                        watches = loop {
                            match Watches::open(&store).await {
                                Ok(w) => break w,
                                Err(e) => {
                                    tracing::warn!(error = %e, "reopening scheduler watches");
                                    tokio::select! {
                                        _ = &mut shutdown => return Ok(()),
                                        _ = tokio::time::sleep(ERROR_BACKOFF) => {}
                                    }
                                }
                            }
                        };
                    }
                    watches.drain_ready();
                }
                _ = tokio::time::sleep(self.resync) => {}
            }
        }
    }
}

/// The pod and node watches that wake the service.
struct Watches {
    pods: WatchStream,
    nodes: WatchStream,
}

impl Watches {
    async fn open(store: &Arc<dyn Store>) -> Result<Self, StoreError> {
        let from = store.revision().await?;
        let prefix = |kind: model::Kind| Prefix { kind: kind.plural().into(), namespace: None };
        Ok(Self {
            pods: store.watch(&prefix(model::Kind::Pod), from).await?,
            nodes: store.watch(&prefix(model::Kind::Node), from).await?,
        })
    }

    /// Waits for one change; false when a watch failed or ended.
    async fn next_change(&mut self) -> bool {
        let ev = tokio::select! {
            ev = self.pods.next() => ev,
            ev = self.nodes.next() => ev,
        };
        matches!(ev, Some(Ok(_)))
    }

    /// Consumes the changes already queued, so a burst of them costs one round. Bounded, so a continuous
    /// stream of changes cannot starve the rounds.
    fn drain_ready(&mut self) {
        for _ in 0..10_000 {
            let a = self.pods.next().now_or_never();
            let b = self.nodes.next().now_or_never();
            let more = matches!(a, Some(Some(Ok(_)))) || matches!(b, Some(Some(Ok(_))));
            if !more {
                return;
            }
        }
    }
}
