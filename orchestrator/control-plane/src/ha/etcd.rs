//! Leader election on etcd (cargo feature `etcd`): one lease per candidacy, kept alive by our own loop, a
//! campaign in etcd's election API, and the leader set run over a store fenced by the won leader key.
//!
//! One candidacy ([`Elector::term`]):
//! 1. grant a lease (TTL = lease duration) and start keep-alives every retry period; announce the replica
//!    under [`MEMBERS_PREFIX`] with the lease;
//! 2. campaign on [`ELECTION`] with the replica's name; etcd answers once every older candidate is gone.
//!    Keep-alives run meanwhile (etcd does not keep a campaigning lease alive);
//! 3. as leader: run the [`LeaderWork`] over [`EtcdStore::fenced`] and, every retry period, send a keep-alive
//!    and read the leader key;
//! 4. step down on any [`StepDown`] reason: stop the work and wait for it (no write in flight), revoke the
//!    lease (best effort: it deletes the leader key, so another replica takes over at once) and start again.
//!    On shutdown: stop the work, resign, revoke, return.
//!
//! Every request has a deadline, so a replica cut off from etcd notices through the renew deadline
//! ([`LeaseClock`]) even when etcd never answers.

use super::policy::{judge_leader_key, LeaseClock, StepDown, Timing};
use super::{Election, LeaderWork, Member, Members, Opened, Replica, Status, ELECTION, MEMBERS_PREFIX};
use crate::store::etcd::{EtcdStore, Fence, REQUEST_TIMEOUT};
use crate::store::{Store, StoreError};
use etcd_client::{Client, GetOptions, LeaderKey, LeaseKeepAliveStream, LeaseKeeper, PutOptions, ResignOptions};
use futures::FutureExt;
use serde::{Deserialize, Serialize};
use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::time::{Instant, MissedTickBehavior};

/// How long a leaving replica waits for each of its resign and revoke requests.
const LEAVE_TIMEOUT: Duration = Duration::from_secs(2);

/// Open an `etcd://` store for `replica`, with an election that campaigns with `timing`.
pub async fn open(url: &str, replica: Replica, timing: Timing) -> Result<Opened, StoreError> {
    let hosts = url.strip_prefix("etcd://").unwrap_or(url);
    let store = EtcdStore::connect(&crate::store::etcd_endpoints(url, hosts)?).await?;
    let status = Status::new(replica.clone(), Members::Etcd(Box::new(store.client().clone())));
    let elector = Elector { store: store.clone(), replica, timing, status: status.clone() };
    Ok(Opened { store: Arc::new(store), election: Election::Etcd(Box::new(elector)), status })
}

/// Runs this replica's candidacies. See the module docs.
pub struct Elector {
    store: EtcdStore,
    replica: Replica,
    timing: Timing,
    status: Arc<Status>,
}

/// How a candidacy ended.
enum Ended {
    Shutdown,
    /// Start a new candidacy after a retry period.
    Again(String),
}

/// The member record at `/berth-members/<name>`.
#[derive(Serialize, Deserialize)]
struct MemberRecord {
    name: String,
    url: String,
    since: String,
    /// The lease in hex, which is also the suffix of the replica's key in the election.
    lease: String,
}

impl Elector {
    pub fn status(&self) -> &Arc<Status> {
        &self.status
    }

    /// Campaign, lead and step down again until `shutdown` resolves. See the module docs.
    pub async fn run(self, work: LeaderWork, shutdown: impl Future<Output = ()> + Send + 'static) {
        let mut shutdown = pin!(shutdown.fuse());
        loop {
            match self.term(&work, &mut shutdown).await {
                Ended::Shutdown => return,
                Ended::Again(why) => {
                    tracing::warn!(replica = %self.replica.name, reason = %why, "campaigning again");
                }
            }
            tokio::select! {
                _ = &mut shutdown => return,
                _ = tokio::time::sleep(self.timing.retry_period) => {}
            }
        }
    }

    async fn term<S: Future<Output = ()> + Unpin>(&self, work: &LeaderWork, shutdown: &mut S) -> Ended {
        let client = self.store.client();
        let mut leases = client.lease_client();
        let granted_at = Instant::now();
        let lease = match timed(leases.grant(self.timing.lease_ttl_secs(), None)).await {
            Ok(l) => l.id(),
            Err(e) => return Ended::Again(format!("cannot grant a lease: {e}")),
        };
        let clock = LeaseClock::new(granted_at.into_std(), self.timing.renew_deadline);
        let mut alive = KeepAlive { client: client.clone(), lease, stream: None, clock };
        if let Err(e) = alive.open(REQUEST_TIMEOUT).await {
            return self.abandon(lease, e.to_string()).await;
        }
        if let Err(e) = self.announce(lease).await {
            tracing::warn!(error = %e, "cannot announce this replica under {MEMBERS_PREFIX}");
        }
        let mut ticker = tokio::time::interval(self.timing.retry_period);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);

        // Candidate: campaign while keeping the lease alive.
        let mut election = client.election_client();
        let mut campaign = pin!(election.campaign(ELECTION, self.replica.name.clone(), lease));
        let leader = loop {
            tokio::select! {
                _ = &mut *shutdown => {
                    self.leave(None, lease).await;
                    return Ended::Shutdown;
                }
                won = &mut campaign => match won {
                    Ok(resp) => match resp.leader() {
                        Some(leader) => break leader.clone(),
                        None => return self.abandon(lease, "etcd answered the campaign without a leader key".into()).await,
                    },
                    Err(e) => return self.abandon(lease, format!("campaign failed: {e}")).await,
                },
                _ = ticker.tick() => {
                    if let Err(why) = alive.tick(self.timing.retry_period).await {
                        return self.abandon(lease, why.to_string()).await;
                    }
                }
                _ = tokio::time::sleep_until(alive.deadline()) => {
                    return self.abandon(lease, StepDown::RenewDeadline.to_string()).await;
                }
                ack = alive.next_ack() => {
                    if let Err(why) = ack {
                        return self.abandon(lease, why.to_string()).await;
                    }
                }
            }
        };

        // Leader: run the work over the fenced store until a step-down reason or the shutdown.
        let (fence, mut fenced) =
            Fence::new(leader.key().to_vec(), leader.rev(), leader.lease(), self.status.fenced_rejected.clone());
        // Held until the term ends, so the `fenced` receiver never sees its sender dropped.
        let store: Arc<dyn Store> = Arc::new(self.store.fenced(fence.clone()));
        self.status.set_leader(true);
        tracing::info!(replica = %self.replica.name, revision = leader.rev(), "leading");
        if let Err(e) = self.announce(lease).await {
            tracing::warn!(error = %e, "cannot update this replica's member record");
        }
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let mut loops = tokio::spawn(work(
            store,
            async move {
                let _ = stopped.await;
            }
            .boxed(),
        ));
        let mut kv = client.kv_client();
        let why = loop {
            tokio::select! {
                _ = &mut *shutdown => break None,
                true = async { fenced.wait_for(|lost| *lost).await.is_ok() } => break Some(StepDown::Fenced),
                _ = &mut loops => break Some(StepDown::LoopsEnded),
                _ = tokio::time::sleep_until(alive.deadline()) => break Some(StepDown::RenewDeadline),
                ack = alive.next_ack() => {
                    if let Err(why) = ack {
                        break Some(why);
                    }
                }
                _ = ticker.tick() => {
                    // The tick's requests must not hold the loop past the renew deadline: the select cannot
                    // see the deadline while this arm runs (it made a cut-off leader stop 1-2 s late).
                    let deadline = alive.deadline();
                    let retry_period = self.timing.retry_period;
                    let checked = tokio::time::timeout_at(deadline, async {
                        alive.tick(retry_period).await?;
                        // A bounded read: a slow answer is no verdict (the renew deadline covers an unreachable
                        // etcd), a missing or foreign key is.
                        if let Ok(Ok(resp)) = tokio::time::timeout(retry_period, kv.get(leader.key(), None)).await {
                            judge_leader_key(leader.rev(), resp.kvs().first().map(|kv| kv.create_revision()))?;
                        }
                        Ok(())
                    })
                    .await;
                    match checked {
                        Err(_) => break Some(StepDown::RenewDeadline),
                        Ok(Err(why)) => break Some(why),
                        Ok(Ok(())) => {}
                    }
                }
            }
        };
        // Stop every loop of the term and wait for them: after this no write of the term is in flight.
        // Ending the fence first cuts short the store requests they wait on (up to the 5 s request timeout
        // when etcd is out of reach), so a cut-off leader stops within its renew deadline, not after it.
        fence.end();
        let _ = stop.send(());
        if why != Some(StepDown::LoopsEnded) {
            let _ = loops.await;
        }
        self.status.set_leader(false);
        match why {
            None => {
                tracing::info!(replica = %self.replica.name, "resigning");
                self.leave(Some(leader), lease).await;
                Ended::Shutdown
            }
            Some(why) => {
                drop(fence);
                tracing::warn!(replica = %self.replica.name, reason = %why, "stepped down");
                revoke(client, lease).await;
                Ended::Again(why.to_string())
            }
        }
    }

    /// Write this replica's member record under `lease`.
    async fn announce(&self, lease: i64) -> Result<(), StoreError> {
        let record = MemberRecord {
            name: self.replica.name.clone(),
            url: self.replica.url.clone(),
            since: model::Time::from(SystemTime::now()).to_string(),
            lease: format!("{lease:x}"),
        };
        let value = serde_json::to_vec(&record).map_err(|e| StoreError::Backend(e.to_string()))?;
        let key = format!("{MEMBERS_PREFIX}{}", self.replica.name);
        let mut kv = self.store.client().kv_client();
        timed(kv.put(key, value, Some(PutOptions::new().with_lease(lease))))
            .await
            .map(|_| ())
            .map_err(StoreError::Backend)
    }

    /// End a candidacy that did not lead: revoke its lease, then start again.
    async fn abandon(&self, lease: i64, why: String) -> Ended {
        revoke(self.store.client(), lease).await;
        Ended::Again(why)
    }

    /// Leave for good: resign (another replica leads at once), then revoke the lease (the member record
    /// goes with it).
    async fn leave(&self, leader: Option<LeaderKey>, lease: i64) {
        let client = self.store.client();
        if let Some(leader) = leader {
            let mut election = client.election_client();
            let resigned = election.resign(Some(ResignOptions::new().with_leader(leader)));
            if let Err(e) = within(LEAVE_TIMEOUT, resigned).await {
                tracing::warn!(error = %e, "cannot resign; the lease will expire instead");
            }
        }
        revoke(client, lease).await;
    }
}

/// Why a keep-alive stream could not be opened.
#[derive(Debug, thiserror::Error)]
enum OpenError {
    #[error("{}", StepDown::LeaseExpired)]
    LeaseGone,
    #[error("cannot keep the lease alive: {0}")]
    Unreachable(String),
}

/// The keep-alives of one lease: our own loop (etcd-client's keeper sends one request per call), a stream
/// that is opened again when it breaks (e.g. its etcd member went away) while the lease lives, and the
/// [`LeaseClock`] that decides when the term is over.
struct KeepAlive {
    client: Client,
    lease: i64,
    stream: Option<(LeaseKeeper, LeaseKeepAliveStream)>,
    clock: LeaseClock,
}

impl KeepAlive {
    /// Open the stream; opening it sends one keep-alive and waits for its answer.
    async fn open(&mut self, limit: Duration) -> Result<(), OpenError> {
        let sent = Instant::now().into_std();
        let mut leases = self.client.lease_client();
        match tokio::time::timeout(limit, leases.keep_alive(self.lease)).await {
            Ok(Ok(stream)) => {
                self.stream = Some(stream);
                self.clock.sent(sent);
                self.clock.answered(1).map_err(|_| OpenError::LeaseGone)
            }
            // etcd-client's name for an answer with no TTL: the lease does not exist.
            Ok(Err(etcd_client::Error::LeaseKeepAliveError(_))) => Err(OpenError::LeaseGone),
            Ok(Err(e)) => Err(OpenError::Unreachable(e.to_string())),
            Err(_) => Err(OpenError::Unreachable(format!("no answer within {} ms", limit.as_millis()))),
        }
    }

    /// Every retry period: one keep-alive, or a new stream when the last one broke. Only a lease etcd says
    /// is gone ends the term here; an unreachable etcd ends it at the renew deadline.
    async fn tick(&mut self, retry_period: Duration) -> Result<(), StepDown> {
        match &mut self.stream {
            Some((keeper, _)) => {
                if !self.clock.should_send() {
                    return Ok(());
                }
                let at = Instant::now().into_std();
                if keeper.keep_alive().await.is_ok() {
                    self.clock.sent(at);
                } else {
                    self.stream = None;
                }
                Ok(())
            }
            None => match self.open(retry_period).await {
                Err(OpenError::LeaseGone) => Err(StepDown::LeaseExpired),
                Err(e) => {
                    tracing::debug!(error = %e, "keep-alive stream not reopened yet");
                    Ok(())
                }
                Ok(()) => Ok(()),
            },
        }
    }

    /// The next answer; a broken stream is dropped (to be reopened by [`KeepAlive::tick`]).
    async fn next_ack(&mut self) -> Result<(), StepDown> {
        let Some((_, acks)) = &mut self.stream else {
            return std::future::pending().await;
        };
        match acks.message().await {
            Ok(Some(resp)) => self.clock.answered(resp.ttl()),
            Ok(None) | Err(_) => {
                self.stream = None;
                // A new stream starts with no request in flight.
                self.clock = LeaseClock::new(self.clock.renewed_at(), self.clock.renew_deadline());
                Ok(())
            }
        }
    }

    fn deadline(&self) -> Instant {
        Instant::from_std(self.clock.deadline())
    }
}

/// Revoke `lease`, best effort: the keys under it go at once instead of when it expires.
async fn revoke(client: &Client, lease: i64) {
    let mut leases = client.lease_client();
    if let Err(e) = within(LEAVE_TIMEOUT, leases.revoke(lease)).await {
        tracing::debug!(error = %e, lease = format!("{lease:x}"), "cannot revoke the lease; it will expire");
    }
}

async fn timed<T>(request: impl Future<Output = Result<T, etcd_client::Error>>) -> Result<T, String> {
    within(REQUEST_TIMEOUT, request).await
}

async fn within<T>(limit: Duration, request: impl Future<Output = Result<T, etcd_client::Error>>) -> Result<T, String> {
    match tokio::time::timeout(limit, request).await {
        Ok(result) => result.map_err(|e| e.to_string()),
        Err(_) => Err(format!("no answer from etcd within {} ms", limit.as_millis())),
    }
}

/// Every replica under [`MEMBERS_PREFIX`], the one whose lease holds the election's leader key marked.
pub(super) async fn members(client: &Client) -> Result<Vec<Member>, StoreError> {
    let backend = |e: String| StoreError::Backend(format!("etcd: {e}"));
    let mut kv = client.kv_client();
    let listed = timed(kv.get(MEMBERS_PREFIX, Some(GetOptions::new().with_prefix()))).await.map_err(backend)?;
    let mut election = client.election_client();
    let leader_lease = match timed(election.leader(ELECTION)).await {
        Ok(resp) => resp.kv().map(|kv| kv.lease()),
        // etcd answers "election: no leader" as an error.
        Err(e) if e.contains("no leader") => None,
        Err(e) => return Err(backend(e)),
    };
    let mut members: Vec<Member> = listed
        .kvs()
        .iter()
        .filter_map(|kv| serde_json::from_slice::<MemberRecord>(kv.value()).ok().map(|r| (kv.lease(), r)))
        .map(|(lease, r)| Member { name: r.name, url: r.url, leader: Some(lease) == leader_lease, since: r.since })
        .collect();
    members.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(members)
}
