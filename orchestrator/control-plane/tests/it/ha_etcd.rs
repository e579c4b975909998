//! Leader election and fencing against a real etcd: candidates, resignation, a lost leader key, fenced writes.
//! Each test starts its own etcd (skipped with a reason when `etcd` is not installed).

use crate::etcd_process::start_etcd;
use control_plane::ha::{self, LeaderWork, Opened, Replica, Status, Timing};
use control_plane::store::etcd::{audit_key, EtcdStore};
use control_plane::store::{Key, Store, StoreError};
use etcd_client::GetOptions;
use futures::FutureExt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use test_support::eventually;
use tokio::sync::{mpsc, oneshot};

/// Short enough that the tests take seconds, ordered as the rules require.
fn timing() -> Timing {
    Timing {
        lease_duration: Duration::from_secs(2),
        renew_deadline: Duration::from_millis(1500),
        retry_period: Duration::from_millis(200),
    }
}

/// What a probe's leader work reports.
enum Term {
    /// A term started with this (fenced) store.
    Started(Arc<dyn Store>),
    /// The term's work saw its stop and returned.
    Stopped,
}

/// A replica in a test: its status, the reports of its leader work, and its stop.
struct Candidate {
    status: Arc<Status>,
    terms: mpsc::UnboundedReceiver<Term>,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Candidate {
    /// Start campaigning as `name`; `active` counts the replicas whose leader work runs.
    async fn start(url: &str, name: &str, active: Arc<AtomicUsize>, max_active: Arc<AtomicUsize>) -> Candidate {
        let replica = Replica { name: name.into(), url: format!("https://{name}.test:7070") };
        let Opened { election, status, .. } = ha::open(url, replica, timing()).await.expect("open");
        let (tx, terms) = mpsc::unbounded_channel();
        let work: LeaderWork = Arc::new(move |store, stop| {
            let (tx, active, max_active) = (tx.clone(), active.clone(), max_active.clone());
            async move {
                let now = active.fetch_add(1, Ordering::SeqCst) + 1;
                max_active.fetch_max(now, Ordering::SeqCst);
                let _ = tx.send(Term::Started(store));
                stop.await;
                active.fetch_sub(1, Ordering::SeqCst);
                let _ = tx.send(Term::Stopped);
            }
            .boxed()
        });
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(election.run(work, async move {
            let _ = stopped.await;
        }));
        Candidate { status, terms, stop: Some(stop), task }
    }

    async fn next_term(&mut self, within: Duration) -> Term {
        tokio::time::timeout(within, self.terms.recv()).await.expect("a term report in time").expect("reports")
    }

    async fn started(&mut self, within: Duration) -> Arc<dyn Store> {
        match self.next_term(within).await {
            Term::Started(store) => store,
            Term::Stopped => panic!("expected a term to start, got a stop"),
        }
    }

    /// Stop (resign) and wait until the election returned.
    async fn shut_down(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(Duration::from_secs(10), self.task).await.expect("election ends").expect("no panic");
    }
}

fn counters() -> (Arc<AtomicUsize>, Arc<AtomicUsize>) {
    (Arc::default(), Arc::default())
}

/// The leader key and lease the election currently shows.
async fn current_leader(etcd: &EtcdStore) -> Option<(String, i64)> {
    let mut election = etcd.client().election_client();
    let resp = election.leader(ha::ELECTION).await.ok()?;
    let kv = resp.kv()?;
    Some((String::from_utf8_lossy(kv.key()).into_owned(), kv.lease()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_two_candidates_exactly_one_leads_and_the_other_takes_over_within_2s_of_a_resignation() {
    if !test_support::require_tool("etcd", "leader election against etcd") {
        return;
    }
    let (etcd, _) = start_etcd().await;
    let (active, max_active) = counters();
    let a = Candidate::start(&etcd.url(), "a", active.clone(), max_active.clone()).await;
    let b = Candidate::start(&etcd.url(), "b", active.clone(), max_active.clone()).await;

    let first =
        eventually("a leader", Duration::from_secs(10), async || match (a.status.is_leader(), b.status.is_leader()) {
            (true, false) => Some("a"),
            (false, true) => Some("b"),
            _ => None,
        })
        .await;
    // Stay a while: still exactly one, and never two leader works at once.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(u8::from(a.status.is_leader()) + u8::from(b.status.is_leader()), 1);
    assert_eq!(active.load(Ordering::SeqCst), 1);
    assert_eq!(max_active.load(Ordering::SeqCst), 1);
    let members = a.status.members().await.expect("members");
    let shown: Vec<(&str, bool)> = members.iter().map(|m| (m.name.as_str(), m.leader)).collect();
    assert_eq!(shown, vec![("a", first == "a"), ("b", first == "b")], "{members:?}");
    assert_eq!(members[0].url, "https://a.test:7070");
    assert!(a.status.metrics_text().contains(&format!("berth_leader {}", u8::from(first == "a"))));

    let (leader, mut follower) = if first == "a" { (a, b) } else { (b, a) };
    leader.started_then_resign().await;
    let resigned = Instant::now();
    follower.started(Duration::from_secs(2)).await;
    let took = resigned.elapsed();
    assert!(took < Duration::from_secs(2), "the follower took {took:?} to lead after the resignation");
    assert!(follower.status.is_leader());
    assert_eq!(max_active.load(Ordering::SeqCst), 1, "never two leaders' work at once");
    let members = follower.status.members().await.expect("members");
    assert_eq!(members.len(), 1, "the resigned replica's member record went with its lease: {members:?}");
    assert!(members[0].leader);
    follower.shut_down().await;
}

impl Candidate {
    /// For the leader: check its work started, then resign and check the work stopped first.
    async fn started_then_resign(mut self) {
        self.started(Duration::from_secs(1)).await;
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        assert!(matches!(self.next_term(Duration::from_secs(5)).await, Term::Stopped));
        tokio::time::timeout(Duration::from_secs(10), self.task).await.expect("election ends").expect("no panic");
        assert!(!self.status.is_leader());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_lease_fences_the_leaders_writes_off_and_it_steps_down_and_campaigns_again() {
    if !test_support::require_tool("etcd", "leader election against etcd") {
        return;
    }
    let (etcd, admin) = start_etcd().await;
    let (active, max_active) = counters();
    let mut a = Candidate::start(&etcd.url(), "a", active.clone(), max_active).await;
    let store = a.started(Duration::from_secs(10)).await;
    let (leader_key, lease) = current_leader(&admin).await.expect("a leader key");

    // A fenced write lands with the term's audit key in the same revision.
    let k = Key::new("pods", "default", "p1");
    let rev = store.create(&k, b"{}".to_vec()).await.expect("a fenced create under a valid fence");
    let mut kv = admin.client().kv_client();
    let audit = kv.get(audit_key(lease), None).await.expect("read audit key");
    let audit = audit.kvs().first().expect("the audit key exists").clone();
    assert_eq!(audit.mod_revision() as u64, rev, "the audit put is in the write's revision");
    let leader = kv.get(leader_key.clone(), None).await.expect("read leader key");
    let leader_rev = leader.kvs().first().expect("leader key").create_revision();
    assert_eq!(audit.value_str().expect("utf-8"), leader_rev.to_string());

    // Under a valid fence a stale compare-and-swap is still an ordinary conflict, and so on.
    match store.update(&k, b"{\"a\":1}".to_vec(), rev + 100).await {
        Err(StoreError::Conflict { expected, actual, .. }) => assert_eq!((expected, actual), (rev + 100, rev)),
        other => panic!("expected a conflict, got {other:?}"),
    }
    assert!(matches!(store.create(&k, b"{}".to_vec()).await, Err(StoreError::AlreadyExists(_))));
    let gone = Key::new("pods", "default", "nope");
    assert!(matches!(store.delete(&gone, None).await, Err(StoreError::NotFound(_))));
    assert_eq!(a.status.fenced_writes_rejected(), 0);

    // The lease goes (as when etcd expires it): the leader key with it.
    admin.client().lease_client().revoke(lease).await.expect("revoke");
    let before = admin.revision().await.expect("revision");
    let late = Key::new("pods", "default", "late");
    match store.create(&late, b"{}".to_vec()).await {
        Err(StoreError::Fenced(msg)) => assert!(msg.contains(&leader_key), "{msg}"),
        other => panic!("expected the write to be fenced off, got {other:?}"),
    }
    match store.update(&k, b"{\"b\":2}".to_vec(), rev).await {
        Err(StoreError::Fenced(_)) => {}
        other => panic!("expected the update to be fenced off, got {other:?}"),
    }
    assert!(admin.get(&late).await.expect("get").is_none(), "nothing of a fenced write lands");
    assert_eq!(admin.get(&k).await.expect("get").map(|v| v.revision), Some(rev));
    assert_eq!(admin.revision().await.expect("revision"), before, "a fenced write changes nothing");
    // The first refusal ends the term's fence, so the second write is refused without reaching etcd; both count.
    assert!(a.status.fenced_writes_rejected() >= 2);

    // It steps down (its work stopped) and, being the only candidate, leads again with a new term.
    assert!(matches!(a.next_term(Duration::from_secs(5)).await, Term::Stopped));
    assert_eq!(active.load(Ordering::SeqCst), 0);
    let again = a.started(Duration::from_secs(10)).await;
    let (new_key, _) = current_leader(&admin).await.expect("a new leader key");
    assert_ne!(new_key, leader_key);
    again.create(&late, b"{}".to_vec()).await.expect("the new term writes");
    assert!(matches!(store.delete(&late, None).await, Err(StoreError::Fenced(_))), "the old term stays fenced");
    assert!(a.status.leader_changes() >= 3, "leader, follower, leader again: {}", a.status.leader_changes());
    a.shut_down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_leader_key_stops_the_leaders_work_without_any_write() {
    if !test_support::require_tool("etcd", "leader election against etcd") {
        return;
    }
    let (etcd, admin) = start_etcd().await;
    let (active, max_active) = counters();
    let mut a = Candidate::start(&etcd.url(), "a", active.clone(), max_active).await;
    let _store = a.started(Duration::from_secs(10)).await;
    let (leader_key, _) = current_leader(&admin).await.expect("a leader key");
    let deleted = Instant::now();
    admin.client().kv_client().delete(leader_key.clone(), None).await.expect("delete the leader key");
    // The periodic read of the leader key notices (no write needed); the work stops.
    assert!(matches!(a.next_term(Duration::from_secs(3)).await, Term::Stopped));
    assert!(deleted.elapsed() < Duration::from_secs(2), "stepped down after {:?}", deleted.elapsed());
    assert_eq!(active.load(Ordering::SeqCst), 0);
    a.started(Duration::from_secs(10)).await;
    let leaders = admin
        .client()
        .kv_client()
        .get(format!("{}/", ha::ELECTION), Some(GetOptions::new().with_prefix()))
        .await
        .expect("list candidates");
    assert_eq!(leaders.kvs().len(), 1, "the old candidacy's lease was revoked");
    a.shut_down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ended_fence_cuts_short_the_requests_a_stalled_store_holds() {
    if !test_support::require_tool("etcd", "fencing against etcd") {
        return;
    }
    let (etcd, admin) = start_etcd().await;
    let (fence, _lost) = control_plane::store::etcd::Fence::new(b"/no-leader".to_vec(), 1, 1, Arc::default());
    let store = admin.fenced(fence.clone());
    // A stalled etcd (SIGSTOP, as `docker pause` does): requests hang until the 5 s request timeout.
    let stop = |signal: &str| {
        let status = std::process::Command::new("kill").args([signal, &etcd.pid().to_string()]).status();
        assert!(status.is_ok_and(|s| s.success()), "kill {signal}");
    };
    stop("-STOP");
    let read = tokio::spawn({
        let store = store.clone();
        async move {
            let started = Instant::now();
            (store.get(&Key::new("pods", "default", "p")).await, started.elapsed())
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    fence.end();
    let (answer, took) = read.await.expect("the read task");
    stop("-CONT");
    assert!(matches!(answer, Err(StoreError::Fenced(_))), "{answer:?}");
    assert!(took < Duration::from_secs(2), "the read ended {took:?} after it started, not at the fence's end");
    // Once ended, nothing is even sent.
    assert!(matches!(
        store.create(&Key::new("pods", "default", "q"), b"{}".to_vec()).await,
        Err(StoreError::Fenced(_))
    ));
    assert!(admin.get(&Key::new("pods", "default", "q")).await.expect("get").is_none());
}
