//! Several control-plane replicas on one store, exactly one of which acts: leader election with fencing.
//!
//! Every replica serves the full API and feeds its own discovery registry (the Endpoints controller runs
//! everywhere: it writes only the local registry). The *leader set* — Deployment, NodeLifecycle and
//! Autoscaler controllers and the Scheduler ([`LeaderSet`]) — runs only on the leader, and only over a
//! store that belongs to its leadership term.
//!
//! [`Election`] says how a replica comes to lead:
//! - [`Election::Sole`] (redb, memory): the only replica; it leads from start to stop, unfenced.
//! - `Election::Etcd` (feature `etcd`, see [`etcd`]): an etcd lease kept alive by our own loop, a campaign on
//!   [`ELECTION`], and on winning the leader set over a *fenced* store: each write also compares the leader
//!   key's create revision, so a deposed or paused leader's late writes fail with
//!   [`StoreError::Fenced`](crate::store::StoreError::Fenced) instead of landing. The rules for stepping down
//!   are pure functions in [`policy`].
//!
//! [`Status`] is what the API shows of it: `berth_leader` and friends on `/metrics`, and the members behind
//! `GET /api/v1/controlplane`.

pub mod policy;

#[cfg(feature = "etcd")]
pub mod etcd;

pub use policy::{StepDown, Timing, TimingError};

use crate::controllers::{Controllers, ControllersConfig, LoadSource};
use crate::scheduler::{Scheduler, SchedulingPolicy};
use crate::store::{Store, StoreError};
use futures::future::BoxFuture;
use futures::FutureExt;
use model::clock::Clock;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

/// The etcd election every replica campaigns in; leader keys are `/berth-election/leader/<lease id in hex>`.
pub const ELECTION: &str = "/berth-election/leader";
/// Where each replica announces itself, under its lease: `/berth-members/<name>`.
pub const MEMBERS_PREFIX: &str = "/berth-members/";

/// Who this replica is to the others.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replica {
    /// Unique among the replicas (default: the host name).
    pub name: String,
    /// The URL the others and the clients reach this replica's API at.
    pub url: String,
}

/// One control-plane replica as `GET /api/v1/controlplane` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub name: String,
    pub url: String,
    pub leader: bool,
    /// When the replica took its current role (joined as a candidate, or became leader), RFC 3339.
    pub since: String,
}

/// The shared view of this replica's role, read by the API. Cheap to share behind an `Arc`.
pub struct Status {
    replica: Replica,
    leader: AtomicBool,
    since: Mutex<SystemTime>,
    changes: AtomicU64,
    fenced_rejected: Arc<AtomicU64>,
    members: Members,
}

enum Members {
    Sole,
    #[cfg(feature = "etcd")]
    Etcd(Box<etcd_client::Client>),
}

impl Status {
    fn new(replica: Replica, members: Members) -> Arc<Status> {
        Arc::new(Status {
            replica,
            leader: AtomicBool::new(false),
            since: Mutex::new(SystemTime::now()),
            changes: AtomicU64::new(0),
            fenced_rejected: Arc::default(),
            members,
        })
    }

    pub fn replica(&self) -> &Replica {
        &self.replica
    }

    pub fn is_leader(&self) -> bool {
        self.leader.load(Ordering::Relaxed)
    }

    /// When this replica took its current role.
    pub fn since(&self) -> SystemTime {
        *self.since.lock()
    }

    /// Record a change of role (counted in `berth_leader_changes_total`).
    fn set_leader(&self, leader: bool) {
        if self.leader.swap(leader, Ordering::Relaxed) != leader {
            *self.since.lock() = SystemTime::now();
            self.changes.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// How many times this replica became leader or stopped leading.
    pub fn leader_changes(&self) -> u64 {
        self.changes.load(Ordering::Relaxed)
    }

    /// How many writes of this replica's leader loops were refused by the fence.
    pub fn fenced_writes_rejected(&self) -> u64 {
        self.fenced_rejected.load(Ordering::Relaxed)
    }

    /// The Prometheus text of the figures above.
    pub fn metrics_text(&self) -> String {
        format!(
            "# HELP berth_leader Whether this replica runs the scheduler and controllers (1) or not (0).\n\
             # TYPE berth_leader gauge\nberth_leader {}\n\
             # HELP berth_leader_changes_total Times this replica became leader or stopped leading.\n\
             # TYPE berth_leader_changes_total counter\nberth_leader_changes_total {}\n\
             # HELP berth_fenced_writes_rejected_total Writes of this replica's leader loops refused because its \
             leadership term was over.\n\
             # TYPE berth_fenced_writes_rejected_total counter\nberth_fenced_writes_rejected_total {}\n",
            u8::from(self.is_leader()),
            self.leader_changes(),
            self.fenced_writes_rejected()
        )
    }

    /// Every replica and which one leads. On etcd: the leased member keys and the election's leader;
    /// otherwise this replica alone.
    pub async fn members(&self) -> Result<Vec<Member>, StoreError> {
        match &self.members {
            Members::Sole => Ok(vec![Member {
                name: self.replica.name.clone(),
                url: self.replica.url.clone(),
                leader: self.is_leader(),
                since: model::Time::from(self.since()).to_string(),
            }]),
            #[cfg(feature = "etcd")]
            Members::Etcd(client) => etcd::members(client).await,
        }
    }
}

/// What the leader runs for one term: given the store to write with (fenced on etcd) and a future that
/// resolves when the term ends, a future that returns once every loop has stopped and no write is in flight.
pub type LeaderWork = Arc<dyn Fn(Arc<dyn Store>, BoxFuture<'static, ()>) -> BoxFuture<'static, ()> + Send + Sync>;

/// How this replica comes to lead. See the module docs.
pub enum Election {
    /// The only replica: leads from start to stop over `store`, unfenced.
    Sole { store: Arc<dyn Store> },
    #[cfg(feature = "etcd")]
    Etcd(Box<etcd::Elector>),
}

impl Election {
    /// Lead when elected, running `work` for each term, until `shutdown` resolves; then stop the loops and
    /// give leadership up (resign) so another replica takes over at once.
    pub async fn run(self, work: LeaderWork, shutdown: impl Future<Output = ()> + Send + 'static) {
        match self {
            // `open` already shows the sole replica as leader: it has no one to wait for.
            Election::Sole { store } => work(store, shutdown.boxed()).await,
            #[cfg(feature = "etcd")]
            Election::Etcd(elector) => elector.run(work, shutdown).await,
        }
    }
}

/// A store opened for a replica: the store every replica-local part uses (API, Endpoints), the election,
/// and the status the API shows.
pub struct Opened {
    pub store: Arc<dyn Store>,
    pub election: Election,
    pub status: Arc<Status>,
}

/// Open the store at `url` (see [`crate::store::open_store`]) for `replica`: an `etcd://` store campaigns
/// with `timing`; any other is the sole replica and leads at once.
pub async fn open(url: &str, replica: Replica, timing: Timing) -> Result<Opened, StoreError> {
    #[cfg(feature = "etcd")]
    if url.starts_with("etcd://") {
        return etcd::open(url, replica, timing).await;
    }
    let _ = timing;
    let store = crate::store::open_store(url).await?;
    let status = Status::new(replica, Members::Sole);
    status.set_leader(true);
    Ok(Opened { store: store.clone(), election: Election::Sole { store }, status })
}

/// The leader set: the Deployment, NodeLifecycle and Autoscaler controllers and the Scheduler, over the
/// store a term hands over (after `wrap`, e.g. the secret encryption layer).
pub struct LeaderSet {
    pub clock: Arc<dyn Clock>,
    pub controllers: ControllersConfig,
    pub load: Option<Arc<dyn LoadSource>>,
    pub policy: SchedulingPolicy,
    pub wrap: StoreWrap,
}

/// A layer put over the store a term hands to the [`LeaderSet`].
pub type StoreWrap = Arc<dyn Fn(Arc<dyn Store>) -> Arc<dyn Store> + Send + Sync>;

impl LeaderSet {
    /// The set as an election's [`LeaderWork`].
    pub fn into_work(self) -> LeaderWork {
        let set = Arc::new(self);
        Arc::new(move |store, stop| {
            let set = set.clone();
            async move { set.run(store, stop).await }.boxed()
        })
    }

    /// Run every loop of the set over `store` until `stop` resolves (or the store fences them off); returns
    /// once all have stopped.
    pub async fn run(&self, store: Arc<dyn Store>, stop: BoxFuture<'static, ()>) {
        let store = (self.wrap)(store);
        let stop = stop.shared();
        let controllers = Controllers::start_leader_set(
            store.clone(),
            self.clock.clone(),
            self.controllers.clone(),
            self.load.clone(),
            stop.clone(),
        );
        loop {
            match Scheduler::run(store.clone(), self.policy, stop.clone()).await {
                Ok(()) => break,
                Err(e) if e.is_fenced() => {
                    tracing::warn!(error = %e, "scheduler stopped: leadership lost");
                    break;
                }
                // It fails only when it cannot open its watches: try again while the term lasts.
                Err(e) => tracing::warn!(error = %e, "scheduler could not start; retrying"),
            }
            tokio::select! {
                _ = stop.clone() => break,
                _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
            }
        }
        controllers.join().await;
    }
}
