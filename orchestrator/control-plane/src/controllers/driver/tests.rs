//! The driver on a paused tokio clock, over a `MemoryStore`, with a toy reconciler that records every call:
//! which key, when, and in which pass. Times are exact because the clock only moves when every task waits.

use super::*;
use crate::store::{Key, MemoryStore, StoreError};
use model::clock::SystemClock;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Mutex;

/// A toy object: reconciled under its name, and its group under `group/NAME`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Toy {
    group: String,
    /// Ask to be looked at again after this long.
    requeue_ms: Option<u64>,
    /// Written by the reconciler of a toy in group `self-writing`.
    #[serde(default)]
    touches: u32,
}

impl Cached for Toy {
    fn kind() -> &'static str {
        "toys"
    }
}

fn key(name: &str) -> Key {
    Toy::store_key("default", name)
}

#[derive(Default)]
struct Log {
    /// (key, time since the test's start, pass number counted from 1).
    calls: Vec<(String, Duration, usize)>,
    passes: usize,
    resyncs: Vec<(Resync, Duration)>,
    /// Reconciles that ran to their end.
    finished: usize,
}

#[derive(Clone)]
struct Probe {
    log: Arc<Mutex<Log>>,
    /// Failures still to inject, per key.
    failures: Arc<Mutex<HashMap<String, u32>>>,
    start: Instant,
}

impl Probe {
    fn new() -> Self {
        Probe { log: Arc::default(), failures: Arc::default(), start: Instant::now() }
    }

    fn since_start(&self) -> Duration {
        Instant::now() - self.start
    }

    /// When `key` was reconciled, in milliseconds since the start.
    fn times(&self, key: &str) -> Vec<u128> {
        let log = self.log.lock().unwrap();
        log.calls.iter().filter(|(k, _, _)| k == key).map(|(_, t, _)| t.as_millis()).collect()
    }

    fn fail(&self, key: &str, times: u32) {
        self.failures.lock().unwrap().insert(key.to_string(), times);
    }
}

struct Toys {
    probe: Probe,
    /// How long each reconcile takes (a write in flight).
    work: Duration,
}

const WATCHES: &[Watch] = &[Watch::of::<Toy>()];

impl Reconciler for Toys {
    type Key = String;
    const NAME: &'static str = "toys";

    fn watches(&self) -> &[Watch] {
        WATCHES
    }

    fn affected(&self, change: &Changed<'_>, _: &Caches) -> Vec<String> {
        let groups = change.objects::<Toy>().map(|t| format!("group/{}", t.group));
        [change.key.name.clone()].into_iter().chain(groups).collect()
    }

    fn resync(&mut self, why: Resync, caches: &Caches) -> Vec<String> {
        self.probe.log.lock().unwrap().resyncs.push((why, self.probe.since_start()));
        caches.of::<Toy>().keys().map(|k| k.name.clone()).collect()
    }

    async fn reconcile(&mut self, name: &String, ctx: &mut Context<'_>) -> Result<Requeue, StoreError> {
        {
            let mut log = self.probe.log.lock().unwrap();
            let pass = log.passes + 1;
            log.calls.push((name.clone(), self.probe.since_start(), pass));
        }
        if !self.work.is_zero() {
            tokio::time::sleep(self.work).await;
        }
        self.probe.log.lock().unwrap().finished += 1;
        if let Some(left) = self.probe.failures.lock().unwrap().get_mut(name).filter(|n| **n > 0) {
            *left -= 1;
            return Err(StoreError::Backend("injected".into()));
        }
        if ctx.cache::<Toy>().get(&key(name)).is_some_and(|t| t.group == "self-writing") {
            ctx.update(&key(name), |t: &mut Toy| {
                t.touches += 1;
                t.touches == 1
            })
            .await?;
        }
        let requeue = ctx.cache::<Toy>().get(&key(name)).and_then(|t| t.requeue_ms);
        Ok(requeue.map_or(Requeue::OnChange, |ms| Requeue::After(Duration::from_millis(ms))))
    }

    fn after_pass(&mut self) {
        self.probe.log.lock().unwrap().passes += 1;
    }
}

struct Running {
    store: Arc<dyn Store>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

fn start(store: Arc<dyn Store>, probe: &Probe, work: Duration) -> Running {
    let (stop, stopped) = watch::channel(false);
    let toys = Toys { probe: probe.clone(), work };
    let task = tokio::spawn(run(toys, store.clone(), Arc::new(SystemClock), stopped));
    Running { store, stop, task }
}

/// Let every task run until all of them wait (the paused clock then moves 1 ms).
async fn settle() {
    tokio::time::sleep(Duration::from_millis(1)).await;
}

fn toy(group: &str, requeue_ms: Option<u64>) -> Vec<u8> {
    serde_json::to_vec(&Toy { group: group.into(), requeue_ms, touches: 0 }).unwrap()
}

async fn put(store: &dyn Store, name: &str, group: &str, requeue_ms: Option<u64>) {
    let k = key(name);
    match store.get(&k).await.unwrap() {
        Some(v) => store.update(&k, toy(group, requeue_ms), v.revision).await.map(drop).unwrap(),
        None => store.create(&k, toy(group, requeue_ms)).await.map(drop).unwrap(),
    }
}

#[tokio::test(start_paused = true)]
async fn a_burst_is_one_pass_reconciling_each_affected_key_once() {
    let probe = Probe::new();
    let r = start(Arc::new(MemoryStore::new()), &probe, Duration::ZERO);
    settle().await;
    {
        let log = probe.log.lock().unwrap();
        assert_eq!(log.resyncs.len(), 1, "one resync after the first list");
        assert_eq!((log.passes, log.calls.len()), (1, 0), "one pass over an empty store");
    }

    // Ten toys in two groups, the first one written three times, all before the driver runs.
    for i in 0..10 {
        put(&*r.store, &format!("t{i}"), if i % 2 == 0 { "even" } else { "odd" }, None).await;
    }
    put(&*r.store, "t0", "even", None).await;
    put(&*r.store, "t0", "even", None).await;
    settle().await;

    let log = probe.log.lock().unwrap();
    assert_eq!(log.passes, 2, "the burst is one pass");
    let mut keys: Vec<&str> = log.calls.iter().map(|(k, _, _)| k.as_str()).collect();
    keys.sort_unstable();
    let mut want: Vec<String> = (0..10).map(|i| format!("t{i}")).collect();
    want.extend(["group/even".to_string(), "group/odd".to_string()]);
    want.sort_unstable();
    assert_eq!(keys, want, "each affected key once, however many changes affect it");
    assert!(log.calls.iter().all(|(_, _, pass)| *pass == 2));
}

#[tokio::test(start_paused = true)]
async fn a_delete_maps_through_the_object_before_it() {
    let probe = Probe::new();
    let r = start(Arc::new(MemoryStore::new()), &probe, Duration::ZERO);
    settle().await;
    put(&*r.store, "t", "g", None).await;
    settle().await;
    r.store.delete(&key("t"), None).await.unwrap();
    settle().await;
    assert_eq!(probe.times("group/g").len(), 2, "the group of the deleted toy is reconciled again");
}

#[tokio::test(start_paused = true)]
async fn requeue_after_looks_again_on_time() {
    let probe = Probe::new();
    let r = start(Arc::new(MemoryStore::new()), &probe, Duration::ZERO);
    settle().await;
    put(&*r.store, "t", "g", Some(1000)).await;
    let written = probe.since_start().as_millis();
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let after: Vec<u128> = probe.times("t").iter().map(|t| t - written).collect();
    assert_eq!(after, [0, 1000, 2000, 3000]);
    assert_eq!(probe.times("group/g").len(), 1, "only the key that asked is requeued");
}

#[tokio::test(start_paused = true)]
async fn failures_back_off_exponentially_and_a_success_resets_it() {
    let probe = Probe::new();
    let r = start(Arc::new(MemoryStore::new()), &probe, Duration::ZERO);
    settle().await;
    probe.fail("t", 8);
    put(&*r.store, "t", "g", None).await;
    let written = probe.since_start().as_millis();
    tokio::time::sleep(Duration::from_secs(200)).await;
    let after: Vec<u128> = probe.times("t").iter().map(|t| t - written).collect();
    // Waits of 0.5, 1, 2, 4, 8, 16, then 30 s (the cap) twice; the ninth attempt succeeds and nothing follows.
    assert_eq!(after, [0, 500, 1500, 3500, 7500, 15500, 31500, 61500, 91500]);
    assert_eq!(probe.times("group/g").len(), 1, "another key's back-off is its own");

    // The success reset the back-off: a new failure waits 500 ms again.
    probe.fail("t", 1);
    put(&*r.store, "t", "g", None).await;
    let touched = probe.since_start().as_millis();
    tokio::time::sleep(Duration::from_secs(60)).await;
    let again: Vec<u128> = probe.times("t").iter().skip(after.len()).map(|t| t - touched).collect();
    assert_eq!(again, [0, 500]);
}

#[tokio::test(start_paused = true)]
async fn a_change_reconciles_at_once_during_a_back_off() {
    let probe = Probe::new();
    let r = start(Arc::new(MemoryStore::new()), &probe, Duration::ZERO);
    settle().await;
    probe.fail("t", 3);
    put(&*r.store, "t", "g", None).await;
    let written = probe.since_start().as_millis();
    tokio::time::sleep(Duration::from_millis(1000)).await; // failed at 0 and 500 ms; next retry at 1500 ms
    put(&*r.store, "t", "g", None).await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    let after: Vec<u128> = probe.times("t").iter().map(|t| t - written).collect();
    // The change at 1000 ms is reconciled at once (third failure, the timer replaced: 2 s from then); the
    // fourth attempt succeeds.
    assert_eq!(after, [0, 500, 1000, 3000]);
}

#[tokio::test(start_paused = true)]
async fn a_failed_watch_is_replaced_by_a_relist() {
    let probe = Probe::new();
    let r = start(Arc::new(MemoryStore::new()), &probe, Duration::ZERO);
    settle().await;
    // Three toys, and their events compacted away before the informer reads them: its watch fails.
    let failed_at = probe.since_start();
    for name in ["a", "b", "c"] {
        put(&*r.store, name, "g", None).await;
    }
    r.store.compact(r.store.revision().await.unwrap()).await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;

    let log = probe.log.lock().unwrap();
    let whys: Vec<Resync> = log.resyncs.iter().map(|(why, _)| *why).collect();
    assert_eq!(whys, [Resync::Listed, Resync::Listed], "listed at start and once more");
    assert_eq!((log.resyncs[1].1 - failed_at).as_millis(), 200, "listed again 200 ms after the failure");
    let mut relisted: Vec<(&str, u128)> =
        log.calls.iter().map(|(k, t, _)| (k.as_str(), (*t - failed_at).as_millis())).collect();
    relisted.sort_unstable();
    assert_eq!(relisted, [("a", 200), ("b", 200), ("c", 200)], "the relist found what the watch missed");
}

#[tokio::test(start_paused = true)]
async fn stop_lets_the_write_in_flight_finish_and_starts_nothing_more() {
    let probe = Probe::new();
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let r = start(store.clone(), &probe, Duration::from_secs(1));
    settle().await;
    put(&*store, "a", "g", None).await;
    put(&*store, "b", "g", None).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(probe.log.lock().unwrap().calls.len(), 1, "the first reconcile is under way");

    r.stop.send(true).unwrap();
    let stopped_at = probe.since_start();
    r.task.await.unwrap();
    let log = probe.log.lock().unwrap();
    assert_eq!((log.calls.len(), log.finished), (1, 1), "the reconcile in flight finished; none started after");
    assert_eq!((probe.since_start() - stopped_at).as_millis(), 900, "run returned when that reconcile ended");
    drop(r.store);
    assert_eq!(Arc::strong_count(&store), 1, "no informer outlives the driver");
}

#[tokio::test(start_paused = true)]
async fn the_controllers_own_writes_are_not_changes() {
    let probe = Probe::new();
    let r = start(Arc::new(MemoryStore::new()), &probe, Duration::ZERO);
    settle().await;
    put(&*r.store, "t", "self-writing", None).await;
    settle().await;
    let stored: Toy = serde_json::from_slice(&r.store.get(&key("t")).await.unwrap().unwrap().value).unwrap();
    assert_eq!(stored.touches, 1);
    assert_eq!(probe.times("t").len(), 1, "the event of its own write is ignored by revision");
    assert_eq!(probe.log.lock().unwrap().passes, 2, "and makes no pass");
}

/// A context over a cache that holds `t` at `cached` while the store may hold something newer.
async fn stale_context(store: &dyn Store) -> (Caches, u64) {
    store.create(&key("t"), toy("old", None)).await.unwrap();
    let (objects, _) =
        store.list(&crate::store::Prefix { kind: Toy::kind().into(), namespace: None }, None).await.unwrap();
    let mut caches = Caches::new(WATCHES);
    caches.of_mut::<Toy>().relist(objects);
    let rev = store.get(&key("t")).await.unwrap().unwrap().revision;
    store.update(&key("t"), toy("new", None), rev).await.unwrap();
    (caches, rev)
}

#[tokio::test]
async fn an_update_on_a_stale_cache_reads_again_and_retries() {
    let store = MemoryStore::new();
    let (mut caches, stale) = stale_context(&store).await;
    let mut ctx = Context { store: &store, clock: &SystemClock, caches: &mut caches };
    let mut seen = Vec::new();
    ctx.update(&key("t"), |t: &mut Toy| {
        seen.push(t.group.clone());
        t.touches = 7;
        true
    })
    .await
    .unwrap();
    assert_eq!(seen, ["old", "new"], "the change is applied again to the fresh object");
    let stored = store.get(&key("t")).await.unwrap().unwrap();
    let t: Toy = serde_json::from_slice(&stored.value).unwrap();
    assert_eq!((t.group.as_str(), t.touches), ("new", 7));
    assert_eq!(ctx.cache::<Toy>().revision(&key("t")), Some(stored.revision), "written through");
    assert!(stored.revision > stale);
}

#[tokio::test]
async fn a_replace_on_a_stale_cache_takes_the_stored_object() {
    let store = MemoryStore::new();
    let (mut caches, _) = stale_context(&store).await;
    let mut ctx = Context { store: &store, clock: &SystemClock, caches: &mut caches };
    let written = ctx.replace(&key("t"), Toy { group: "mine".into(), ..Toy::default() }).await.unwrap();
    assert!(!written, "someone else wrote first");
    assert_eq!(ctx.cache::<Toy>().get(&key("t")).map(|t| t.group.as_str()), Some("new"));
}

#[tokio::test]
async fn a_delete_leaves_a_tombstone_that_stale_events_cannot_pass() {
    let store = MemoryStore::new();
    let (mut caches, stale) = stale_context(&store).await;
    let mut ctx = Context { store: &store, clock: &SystemClock, caches: &mut caches };
    ctx.delete(&key("t")).await.unwrap();
    assert!(!ctx.cache::<Toy>().contains(&key("t")));
    // The watch event of the update before the delete arrives late.
    let late = crate::store::Versioned { key: key("t"), value: toy("new", None), revision: stale + 1 };
    let cache = caches.of_mut::<Toy>();
    assert!(cache.apply(StoreEvent::Put { object: late, created: false }).is_none());
    assert!(!cache.contains(&key("t")), "a put older than our delete does not bring the object back");
}
