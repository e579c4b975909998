//! Where every controller starts and stops: [`Controllers::start_with_load`] spawns one driver per
//! controller, all stopped by one shutdown future.
//!
//! Leader election (`crate::ha`) runs two units: [`Controllers::start_endpoints`] on every replica, and
//! [`Controllers::start_leader_set`] while this replica leads, its shutdown future resolving when it stops. Once the shutdown future has resolved and
//! [`Controllers::join`] has returned, no controller task runs and no write of theirs is in flight (a
//! reconcile under way when the stop comes finishes first; no other starts). Nothing is carried over to the
//! next start: each controller begins from a full list of the store.

use super::autoscaler::{AutoscalerConfig, LoadSource};
use super::deployment::DeploymentConfig;
use super::driver::{self, Reconciler};
use super::node;
use super::reconcilers::{Autoscalers, Deployments, Endpoints, NodeLifecycle};
use crate::store::Store;
use discovery::Registry;
use model::clock::Clock;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Settings for all controllers.
#[derive(Debug, Clone)]
pub struct ControllersConfig {
    /// A node whose heartbeat is older than this becomes NotReady and its pods are evicted.
    pub node_grace: Duration,
    pub deployment: DeploymentConfig,
    /// Full registry resync period (a safety net; changes flow as events).
    pub resync: Duration,
    /// Seed of the pod-name generator (random when `None`).
    pub seed: Option<u64>,
    pub autoscaler: AutoscalerConfig,
}

impl Default for ControllersConfig {
    fn default() -> Self {
        ControllersConfig {
            node_grace: node::DEFAULT_GRACE,
            deployment: DeploymentConfig::default(),
            resync: Duration::from_secs(60),
            seed: None,
            autoscaler: AutoscalerConfig::default(),
        }
    }
}

/// The running controllers. Dropping this does not stop them: resolve the shutdown future, then
/// [`Controllers::join`].
pub struct Controllers {
    tasks: Vec<JoinHandle<()>>,
}

impl Controllers {
    /// Start the deployment, node-lifecycle, autoscaler (with no load source) and endpoints controllers over
    /// `store`, publishing into `registry`, until `shutdown` resolves. Must be called inside a tokio runtime.
    pub fn start(
        store: Arc<dyn Store>,
        registry: Arc<Registry>,
        clock: Arc<dyn Clock>,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Controllers {
        Self::start_with(store, registry, clock, ControllersConfig::default(), shutdown)
    }

    pub fn start_with(
        store: Arc<dyn Store>,
        registry: Arc<Registry>,
        clock: Arc<dyn Clock>,
        config: ControllersConfig,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Controllers {
        Self::start_with_load(store, registry, clock, config, None, shutdown)
    }

    /// As [`Controllers::start_with`], with the autoscaler reading request load from `load` (without one,
    /// every Autoscaler reports its metrics missing and holds its target's replicas).
    pub fn start_with_load(
        store: Arc<dyn Store>,
        registry: Arc<Registry>,
        clock: Arc<dyn Clock>,
        config: ControllersConfig,
        load: Option<Arc<dyn LoadSource>>,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Controllers {
        let (mut controllers, stop) = Self::stopped_by(shutdown);
        controllers.spawn_leader_set(&store, &clock, config.clone(), load, &stop);
        controllers.spawn(Endpoints::new(registry, config.resync), &store, &clock, &stop);
        controllers
    }

    /// The controllers only the leader runs: Deployment, NodeLifecycle and Autoscaler (see `crate::ha`).
    pub fn start_leader_set(
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        config: ControllersConfig,
        load: Option<Arc<dyn LoadSource>>,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Controllers {
        let (mut controllers, stop) = Self::stopped_by(shutdown);
        controllers.spawn_leader_set(&store, &clock, config, load, &stop);
        controllers
    }

    /// The Endpoints controller alone, which every replica runs: it writes only `registry`, never the store.
    pub fn start_endpoints(
        store: Arc<dyn Store>,
        registry: Arc<Registry>,
        clock: Arc<dyn Clock>,
        config: &ControllersConfig,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Controllers {
        let (mut controllers, stop) = Self::stopped_by(shutdown);
        controllers.spawn(Endpoints::new(registry, config.resync), &store, &clock, &stop);
        controllers
    }

    /// No controllers yet, and the stop flag `shutdown` sets.
    fn stopped_by(shutdown: impl Future<Output = ()> + Send + 'static) -> (Controllers, watch::Receiver<bool>) {
        let (stop_tx, stop) = watch::channel(false);
        let stopper = tokio::spawn(async move {
            shutdown.await;
            let _ = stop_tx.send(true);
        });
        (Controllers { tasks: vec![stopper] }, stop)
    }

    fn spawn_leader_set(
        &mut self,
        store: &Arc<dyn Store>,
        clock: &Arc<dyn Clock>,
        config: ControllersConfig,
        load: Option<Arc<dyn LoadSource>>,
        stop: &watch::Receiver<bool>,
    ) {
        let seed = config.seed.unwrap_or_else(|| {
            let mut b = [0u8; 8];
            // Only pod-name suffixes depend on it; a fixed fallback is harmless.
            let _ = getrandom::fill(&mut b);
            u64::from_le_bytes(b)
        });
        self.spawn(Deployments::new(config.deployment, seed), store, clock, stop);
        self.spawn(NodeLifecycle::new(config.node_grace, clock.now()), store, clock, stop);
        self.spawn(Autoscalers::new(config.autoscaler, load), store, clock, stop);
    }

    fn spawn<R: Reconciler>(
        &mut self,
        reconciler: R,
        store: &Arc<dyn Store>,
        clock: &Arc<dyn Clock>,
        stop: &watch::Receiver<bool>,
    ) {
        self.tasks.push(tokio::spawn(driver::run(reconciler, store.clone(), clock.clone(), stop.clone())));
    }

    /// Wait until every controller has stopped (after the shutdown future resolved).
    pub async fn join(self) {
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;
    use model::clock::SystemClock;

    #[tokio::test(start_paused = true)]
    async fn every_controller_stops_with_the_shutdown_future() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let registry = Arc::new(Registry::new());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let controllers = Controllers::start(store.clone(), registry.clone(), Arc::new(SystemClock), async move {
            let _ = stopped.await;
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(registry.is_synced(), "the endpoints controller published a complete view");
        assert!(Arc::strong_count(&store) > 1);

        stop.send(()).unwrap();
        controllers.join().await;
        assert_eq!(Arc::strong_count(&store), 1, "no controller or informer task holds the store any more");
    }
}
