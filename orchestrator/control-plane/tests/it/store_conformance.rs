//! One conformance suite for every `Store` backend: memory, redb and (with `--features etcd`) a real etcd
//! started on loopback for the run.
//!
//! The suite is [`run_suite`]: it takes a store and a tag, and gives each case its own kinds (`{tag}-crud`,
//! ...) so that cases never see each other's objects. It assumes nothing about the store's starting
//! revision, so it runs unchanged against a shared etcd.

use control_plane::store::{
    Key, MemoryStore, Prefix, RedbStore, Store, StoreError, StoreEvent, Versioned, WatchStream,
};
use discovery::{Labels, Operator, Requirement, Selector};
use futures::StreamExt;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

const DEADLINE: Duration = Duration::from_secs(60);

fn obj(name: &str, labels: &[(&str, &str)], payload: &str) -> Vec<u8> {
    let labels: serde_json::Map<String, serde_json::Value> =
        labels.iter().map(|(k, v)| (k.to_string(), serde_json::Value::String(v.to_string()))).collect();
    serde_json::to_vec(&serde_json::json!({
        "metadata": { "name": name, "labels": labels },
        "spec": { "payload": payload },
    }))
    .unwrap_or_default()
}

fn prefix(kind: &str, ns: Option<&str>) -> Prefix {
    Prefix { kind: kind.to_string(), namespace: ns.map(str::to_string) }
}

async fn next_event(stream: &mut WatchStream) -> StoreEvent {
    match tokio::time::timeout(DEADLINE, stream.next()).await {
        Ok(Some(Ok(ev))) => ev,
        Ok(Some(Err(e))) => panic!("watch failed: {e}"),
        Ok(None) => panic!("watch ended"),
        Err(_) => panic!("no watch event within {DEADLINE:?}"),
    }
}

pub async fn run_suite(store: Arc<dyn Store>, tag: &str) {
    crud(&*store, tag).await;
    list_and_selectors(&*store, tag).await;
    revisions_increase(&*store, tag).await;
    watch_sees_every_change_once(store.clone(), tag, false).await;
    watch_sees_every_change_once(store.clone(), tag, true).await;
    list_then_watch_has_no_gaps(store.clone(), tag).await;
    compaction(&*store, tag).await;
}

async fn crud(store: &dyn Store, tag: &str) {
    let kind = format!("{tag}-crud");
    let key = Key::new(&kind, "default", "a");
    let before = store.revision().await.expect("revision");
    assert_eq!(store.get(&key).await.expect("get"), None);

    // Bytes are stored as given, even when they are not JSON.
    let v1 = vec![0u8, 159, 146, 150, b'{'];
    let r1 = store.create(&key, v1.clone()).await.expect("create");
    assert!(r1 > before, "create revision {r1} not after {before}");
    assert_eq!(store.get(&key).await.expect("get"), Some(Versioned { key: key.clone(), value: v1, revision: r1 }));
    assert!(matches!(store.create(&key, b"x".to_vec()).await, Err(StoreError::AlreadyExists(k)) if k == key));

    match store.update(&key, b"v2".to_vec(), r1 - 1).await {
        Err(StoreError::Conflict { key: k, expected, actual }) => {
            assert_eq!((k, expected, actual), (key.clone(), r1 - 1, r1));
        }
        other => panic!("stale update: {other:?}"),
    }
    let r2 = store.update(&key, b"v2".to_vec(), r1).await.expect("update");
    assert!(r2 > r1);
    assert_eq!(store.get(&key).await.expect("get").map(|v| (v.value, v.revision)), Some((b"v2".to_vec(), r2)));
    let missing = Key::new(&kind, "default", "missing");
    assert!(matches!(store.update(&missing, b"x".to_vec(), r2).await, Err(StoreError::NotFound(k)) if k == missing));
    assert!(matches!(store.delete(&missing, None).await, Err(StoreError::NotFound(_))));

    assert!(matches!(
        store.delete(&key, Some(r1)).await,
        Err(StoreError::Conflict { expected, actual, .. }) if expected == r1 && actual == r2
    ));
    let r3 = store.delete(&key, Some(r2)).await.expect("delete");
    assert!(r3 > r2);
    assert_eq!(store.get(&key).await.expect("get"), None);
    assert!(matches!(store.delete(&key, None).await, Err(StoreError::NotFound(_))));
    assert!(store.revision().await.expect("revision") >= r3);

    // Unconditional delete, and cluster-scoped keys (empty namespace).
    let node = Key::new(format!("{tag}-crud-nodes"), "", "n1");
    let r4 = store.create(&node, b"{}".to_vec()).await.expect("create node");
    let (nodes, at) = store.list(&prefix(&node.kind, None), None).await.expect("list nodes");
    assert_eq!(nodes, vec![Versioned { key: node.clone(), value: b"{}".to_vec(), revision: r4 }]);
    assert!(at >= r4);
    let r5 = store.delete(&node, None).await.expect("delete node");
    assert!(r5 > r4);

    // Re-creating a deleted key starts it over.
    let r6 = store.create(&key, b"again".to_vec()).await.expect("re-create");
    assert!(r6 > r5);
    assert!(matches!(store.update(&key, b"x".to_vec(), r2).await, Err(StoreError::Conflict { .. })));
}

async fn list_and_selectors(store: &dyn Store, tag: &str) {
    let kind = format!("{tag}-list");
    let objects = [
        ("a", "web-1", vec![("app", "web"), ("tier", "front")]),
        ("a", "web-2", vec![("app", "web")]),
        ("a", "db-1", vec![("app", "db"), ("tier", "back")]),
        ("ab", "web-3", vec![("app", "web"), ("tier", "front")]),
        // Sorts before "a" under etcd's '/' separator, after it by (namespace, name).
        ("a-b", "x", vec![("other", "1")]),
        ("b", "plain", vec![]),
    ];
    let mut last = 0;
    for (ns, name, labels) in &objects {
        last = store.create(&Key::new(&kind, *ns, *name), obj(name, labels, "x")).await.expect("create");
    }
    // Look-alike kinds must not leak into the list.
    store
        .create(&Key::new(format!("{kind}2"), "a", "web-9"), obj("web-9", &[("app", "web")], "x"))
        .await
        .expect("create");

    let names = |items: &[Versioned]| {
        let mut n: Vec<String> = items.iter().map(|v| format!("{}/{}", v.key.namespace, v.key.name)).collect();
        n.sort();
        n
    };
    let (all, at) = store.list(&prefix(&kind, None), None).await.expect("list");
    assert!(at >= last, "list revision {at} before the last write {last}");
    assert_eq!(names(&all), ["a-b/x", "a/db-1", "a/web-1", "a/web-2", "ab/web-3", "b/plain"]);
    let in_order: Vec<&Key> = all.iter().map(|v| &v.key).collect();
    let mut sorted = in_order.clone();
    sorted.sort();
    assert_eq!(in_order, sorted, "list is ordered by (namespace, name)");
    for v in &all {
        let got = store.get(&v.key).await.expect("get").expect("listed object exists");
        assert_eq!(&got, v);
    }
    let (in_a, _) = store.list(&prefix(&kind, Some("a")), None).await.expect("list ns");
    assert_eq!(names(&in_a), ["a/db-1", "a/web-1", "a/web-2"]);
    let (none, _) = store.list(&prefix(&kind, Some("zz")), None).await.expect("list empty ns");
    assert!(none.is_empty());

    let req = |key: &str, op: Operator, values: &[&str]| Requirement {
        key: key.to_string(),
        op,
        values: values.iter().map(|v| v.to_string()).collect(),
    };
    let web: Labels = [("app".to_string(), "web".to_string())].into_iter().collect();
    let cases: Vec<(&str, Selector, Option<&str>, Vec<&str>)> = vec![
        ("app=web", Selector::from_labels(&web), None, vec!["a/web-1", "a/web-2", "ab/web-3"]),
        ("app=web in a", Selector::from_labels(&web), Some("a"), vec!["a/web-1", "a/web-2"]),
        ("empty", Selector::everything(), Some("b"), vec!["b/plain"]),
        (
            "app=web,tier=front",
            Selector {
                requirements: vec![req("app", Operator::Equals, &["web"]), req("tier", Operator::Equals, &["front"])],
            },
            None,
            vec!["a/web-1", "ab/web-3"],
        ),
        (
            "app!=web",
            Selector { requirements: vec![req("app", Operator::NotEquals, &["web"])] },
            None,
            vec!["a-b/x", "a/db-1", "b/plain"],
        ),
        (
            "app in (db,x)",
            Selector { requirements: vec![req("app", Operator::In, &["db", "x"])] },
            None,
            vec!["a/db-1"],
        ),
        (
            "app notin (web)",
            Selector { requirements: vec![req("app", Operator::NotIn, &["web"])] },
            None,
            vec!["a-b/x", "a/db-1", "b/plain"],
        ),
        (
            "tier",
            Selector { requirements: vec![req("tier", Operator::Exists, &[])] },
            None,
            vec!["a/db-1", "a/web-1", "ab/web-3"],
        ),
        (
            "!tier",
            Selector { requirements: vec![req("tier", Operator::DoesNotExist, &[])] },
            None,
            vec!["a-b/x", "a/web-2", "b/plain"],
        ),
        ("app=nothing", Selector { requirements: vec![req("app", Operator::Equals, &["nothing"])] }, None, vec![]),
    ];
    for (name, selector, ns, want) in cases {
        let (items, _) = store.list(&prefix(&kind, ns), Some(&selector)).await.expect("list with selector");
        assert_eq!(names(&items), want, "selector case {name}");
    }
}

async fn revisions_increase(store: &dyn Store, tag: &str) {
    let kinds = [format!("{tag}-rev-a"), format!("{tag}-rev-b")];
    let mut last = store.revision().await.expect("revision");
    for i in 0..20 {
        let key = Key::new(&kinds[i % 2], "ns", format!("o{i}"));
        let r = store.create(&key, b"1".to_vec()).await.expect("create");
        assert!(r > last, "revision {r} after {last}");
        let r2 = store.update(&key, b"2".to_vec(), r).await.expect("update");
        assert!(r2 > r);
        last = r2;
        if i % 3 == 0 {
            let r3 = store.delete(&key, None).await.expect("delete");
            assert!(r3 > last);
            last = r3;
        }
        assert!(store.revision().await.expect("revision") >= last);
    }
}

/// What a writer was told, in the shape a watcher should see it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    Created { name: String, value: Vec<u8> },
    Updated { name: String, value: Vec<u8> },
    Deleted { name: String, prev: Option<Vec<u8>> },
}

fn seen(ev: &StoreEvent) -> (u64, Seen) {
    match ev {
        StoreEvent::Put { object, created: true } => {
            (object.revision, Seen::Created { name: object.key.name.clone(), value: object.value.clone() })
        }
        StoreEvent::Put { object, created: false } => {
            (object.revision, Seen::Updated { name: object.key.name.clone(), value: object.value.clone() })
        }
        StoreEvent::Delete { key, revision, prev } => {
            (*revision, Seen::Deleted { name: key.name.clone(), prev: prev.clone() })
        }
    }
}

/// Writer `w` creates, updates and deletes its own objects under `kind`, and writes noise under
/// `noise_kind`. Returns what it was acknowledged, and reports each acknowledgement on `progress`.
async fn writer(
    store: Arc<dyn Store>,
    kind: String,
    noise_kind: String,
    w: usize,
    rounds: usize,
    progress: tokio::sync::mpsc::UnboundedSender<()>,
) -> Vec<(u64, Seen)> {
    let mut acks = Vec::new();
    for i in 0..rounds {
        let name = format!("w{w}-{i}");
        let key = Key::new(&kind, "ns", &name);
        let value = obj(&name, &[("writer", &w.to_string())], &format!("create {i}"));
        let rev = store.create(&key, value.clone()).await.expect("create");
        acks.push((rev, Seen::Created { name: name.clone(), value: value.clone() }));
        let mut last = (rev, value);
        if i % 2 == 0 {
            let value = obj(&name, &[("writer", &w.to_string())], &format!("update {i}"));
            let rev = store.update(&key, value.clone(), last.0).await.expect("update");
            acks.push((rev, Seen::Updated { name: name.clone(), value: value.clone() }));
            last = (rev, value);
        }
        if i % 3 == 0 {
            let rev = store.delete(&key, Some(last.0)).await.expect("delete");
            acks.push((rev, Seen::Deleted { name: name.clone(), prev: Some(last.1.clone()) }));
        }
        if i % 4 == 0 {
            store.create(&Key::new(&noise_kind, "ns", &name), b"{}".to_vec()).await.expect("noise");
        }
        let _ = progress.send(());
    }
    acks
}

async fn watch_sees_every_change_once(store: Arc<dyn Store>, tag: &str, reconnect: bool) {
    let kind = format!("{tag}-watch{}", if reconnect { "-reconnect" } else { "" });
    let noise = format!("{kind}-noise");
    let from = store.revision().await.expect("revision");
    let mut stream = store.watch(&prefix(&kind, None), from).await.expect("watch");

    let (progress, _rx) = tokio::sync::mpsc::unbounded_channel();
    let writers: Vec<_> = (0..8)
        .map(|w| tokio::spawn(writer(store.clone(), kind.clone(), noise.clone(), w, 30, progress.clone())))
        .collect();
    let mut expected = Vec::new();
    for w in writers {
        expected.extend(w.await.expect("writer task"));
    }
    expected.sort_by_key(|(rev, _)| *rev);

    let mut got = Vec::new();
    let mut last = from;
    while got.len() < expected.len() {
        // Drop the stream now and then and resume from the last revision seen, as a client
        // reconnecting after a network failure would.
        if reconnect && got.len() % 37 == 36 {
            stream = store.watch(&prefix(&kind, None), last).await.expect("re-watch");
        }
        let (rev, s) = seen(&next_event(&mut stream).await);
        assert!(rev > last, "watch went from revision {last} back to {rev}");
        last = rev;
        got.push((rev, s));
    }
    assert_eq!(got, expected);
}

async fn list_then_watch_has_no_gaps(store: Arc<dyn Store>, tag: &str) {
    let kind = format!("{tag}-listwatch");
    let noise = format!("{kind}-noise");
    let (progress, mut acks) = tokio::sync::mpsc::unbounded_channel();
    let writers: Vec<_> = (0..8)
        .map(|w| tokio::spawn(writer(store.clone(), kind.clone(), noise.clone(), w, 20, progress.clone())))
        .collect();
    drop(progress);
    // List while the writers are busy.
    for _ in 0..40 {
        tokio::time::timeout(DEADLINE, acks.recv()).await.expect("writers progress");
    }
    let p = prefix(&kind, None);
    let (items, at) = store.list(&p, None).await.expect("list");
    let mut mirror: BTreeMap<String, (Vec<u8>, u64)> =
        items.into_iter().map(|v| (v.key.name.clone(), (v.value, v.revision))).collect();
    let mut stream = store.watch(&p, at).await.expect("watch from list revision");

    let mut last_write = 0;
    for w in writers {
        last_write = last_write.max(w.await.expect("writer").last().map_or(0, |(rev, _)| *rev));
    }
    let mut seen_rev = at;
    while seen_rev < last_write {
        match next_event(&mut stream).await {
            StoreEvent::Put { object, created } => {
                assert_eq!(created, !mirror.contains_key(&object.key.name), "created flag for {}", object.key);
                seen_rev = object.revision;
                mirror.insert(object.key.name.clone(), (object.value, object.revision));
            }
            StoreEvent::Delete { key, revision, prev } => {
                let old = mirror.remove(&key.name);
                assert_eq!(old.map(|(v, _)| v), prev, "delete of {key} carries the last value");
                seen_rev = revision;
            }
        }
    }
    let (now, _) = store.list(&p, None).await.expect("list");
    let now: BTreeMap<String, (Vec<u8>, u64)> =
        now.into_iter().map(|v| (v.key.name.clone(), (v.value, v.revision))).collect();
    assert_eq!(mirror, now, "list + watch reconstructs the final state");
}

/// `Compacted` may come from `watch` itself or as the stream's first item.
async fn expect_compacted(store: &dyn Store, p: &Prefix, from: u64) {
    match store.watch(p, from).await {
        Err(StoreError::Compacted { requested, .. }) => assert_eq!(requested, from),
        Err(e) => panic!("watch from compacted {from}: unexpected error {e}"),
        Ok(mut stream) => match tokio::time::timeout(DEADLINE, stream.next()).await {
            Ok(Some(Err(StoreError::Compacted { .. }))) => {}
            other => panic!("watch from compacted revision {from} gave {other:?}"),
        },
    }
}

async fn compaction(store: &dyn Store, tag: &str) {
    let kind = format!("{tag}-compact");
    let p = prefix(&kind, None);
    for i in 0..5 {
        store.create(&Key::new(&kind, "ns", format!("old{i}")), b"{}".to_vec()).await.expect("create");
    }
    let c = store.revision().await.expect("revision");
    let mut after = Vec::new();
    for i in 0..3 {
        after.push(store.create(&Key::new(&kind, "ns", format!("new{i}")), b"{}".to_vec()).await.expect("create"));
    }
    store.compact(c).await.expect("compact");
    expect_compacted(store, &p, c - 1).await;
    expect_compacted(store, &p, 0).await;
    // Everything after the compaction point is still there.
    let mut stream = store.watch(&p, c).await.expect("watch at the compaction point");
    for want in after {
        assert_eq!(next_event(&mut stream).await.revision(), want);
    }
    // Compacting again at or below the same point is harmless.
    store.compact(c).await.expect("compact again");
    store.compact(c - 1).await.expect("compact older");
    let (items, _) = store.list(&p, None).await.expect("list after compaction");
    assert_eq!(items.len(), 8, "compaction forgets history, not objects");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_conformance() {
    run_suite(Arc::new(MemoryStore::new()), "mem").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redb_conformance() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = RedbStore::open(&dir.path().join("berth.redb")).expect("open");
    run_suite(Arc::new(store), "redb").await;
}

async fn retention_compacts_old_history(store: Arc<dyn Store>) {
    let p = prefix("pods", None);
    for i in 0..10 {
        store.create(&Key::new("pods", "ns", format!("p{i}")), b"{}".to_vec()).await.expect("create");
    }
    let now = store.revision().await.expect("revision");
    expect_compacted(&*store, &p, 0).await;
    // The last five changes are kept.
    let mut stream = store.watch(&p, now - 5).await.expect("watch within retention");
    assert_eq!(next_event(&mut stream).await.revision(), now - 4);
}

#[tokio::test]
async fn memory_retention_compacts_old_history() {
    retention_compacts_old_history(Arc::new(MemoryStore::with_retention(5))).await;
}

#[tokio::test]
async fn redb_retention_compacts_old_history() {
    let dir = tempfile::tempdir().expect("tempdir");
    let options = control_plane::store::redb::RedbOptions { history_retention: 5 };
    let store = RedbStore::open_with(&dir.path().join("berth.redb"), options).expect("open");
    retention_compacts_old_history(Arc::new(store)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redb_reopen_keeps_objects_revision_and_history() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("berth.redb");
    let p = prefix("pods", None);
    let (revs, last, listed) = {
        let store = RedbStore::open(&path).expect("open");
        let mut revs = Vec::new();
        for i in 0..50 {
            revs.push(
                store
                    .create(&Key::new("pods", "ns", format!("p{i}")), obj("p", &[("i", &i.to_string())], "x"))
                    .await
                    .expect("create"),
            );
        }
        let gone = Key::new("pods", "ns", "p0");
        revs.push(store.delete(&gone, None).await.expect("delete"));
        let last = store.revision().await.expect("revision");
        let listed = store.list(&p, None).await.expect("list").0;
        (revs, last, listed)
    };
    let store = RedbStore::open(&path).expect("reopen");
    assert_eq!(store.revision().await.expect("revision"), last);
    assert_eq!(store.list(&p, None).await.expect("list"), (listed, last));
    // Watching from before the restart replays the persisted history.
    let mut stream = store.watch(&p, 0).await.expect("watch from 0");
    for want in &revs {
        assert_eq!(next_event(&mut stream).await.revision(), *want);
    }
    // New writes continue the revision sequence, and the open watch sees them.
    let r = store.create(&Key::new("pods", "ns", "after"), b"{}".to_vec()).await.expect("create");
    assert_eq!(r, last + 1);
    assert_eq!(next_event(&mut stream).await.revision(), r);
}

#[tokio::test]
async fn open_store_understands_its_urls() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("redb:{}", dir.path().join("s.redb").display());
    let redb = control_plane::store::open_store(&url).await.expect("redb url");
    redb.create(&Key::new("pods", "ns", "a"), b"{}".to_vec()).await.expect("create");
    let mem = control_plane::store::open_store("memory:").await.expect("memory url");
    assert_eq!(mem.revision().await.expect("revision"), 0);
    for bad in ["", "redb:", "postgres://x", "file:/tmp/x"] {
        assert!(control_plane::store::open_store(bad).await.is_err(), "{bad:?} accepted");
    }
}

#[cfg(feature = "etcd")]
mod etcd {
    use super::*;
    use crate::etcd_process::start_etcd;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn etcd_conformance() {
        if !test_support::require_tool("etcd", "store conformance against etcd") {
            return;
        }
        let (_etcd, store) = start_etcd().await;
        run_suite(Arc::new(store), "etcd").await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn etcd_url_opens_the_store() {
        if !test_support::require_tool("etcd", "store conformance against etcd") {
            return;
        }
        let (etcd, _) = start_etcd().await;
        let store = control_plane::store::open_store(&etcd.url()).await.expect("open etcd url");
        let r = store.create(&Key::new("pods", "ns", "a"), b"{}".to_vec()).await.expect("create");
        assert_eq!(store.get(&Key::new("pods", "ns", "a")).await.expect("get").map(|v| v.revision), Some(r));
    }
}

#[cfg(not(feature = "etcd"))]
#[test]
fn etcd_conformance() {
    test_support::skip("store conformance against etcd: this test binary was built without `--features etcd`");
}
