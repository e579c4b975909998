//! Registry behaviour: revisions, snapshots, the label index against a brute-force scan, watches (exactly
//! once, in order, Relist, selector enter/leave) under concurrent writers, and fan-out.

use discovery::{Certificate, Change, Endpoint, Labels, Object, ObjectKey, ObjectKind, Registry, Selector, WatchEvent};
use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn endpoint(ns: &str, name: &str, labels: Labels) -> Arc<Endpoint> {
    Arc::new(Endpoint {
        namespace: ns.into(),
        name: name.into(),
        address: [127, 0, 0, 1].into(),
        ports: vec![],
        labels,
        ready: true,
        serving: true,
        terminating: false,
        node: None,
        zone: None,
        weight: 100,
    })
}

fn ep(ns: &str, name: &str, pairs: &[(&str, &str)]) -> Object {
    Object::Endpoint(endpoint(ns, name, labels(pairs)))
}

fn ep_key(ns: &str, name: &str) -> ObjectKey {
    ObjectKey { kind: ObjectKind::Endpoint, namespace: ns.into(), name: name.into() }
}

fn sel(s: &str) -> Selector {
    Selector::parse(s).expect("valid selector in test")
}

fn names(eps: &[Arc<Endpoint>]) -> Vec<String> {
    eps.iter().map(|e| format!("{}/{}", e.namespace, e.name)).collect()
}

/// A short summary of an event for assertions.
fn describe(e: &WatchEvent) -> String {
    match e {
        WatchEvent::Put { revision, object } => format!("put {revision} {}", object.key().name),
        WatchEvent::Delete { revision, key } => format!("delete {revision} {}", key.name),
        WatchEvent::Relist { revision } => format!("relist {revision}"),
    }
}

fn drain(w: &mut discovery::Watch) -> Vec<String> {
    std::iter::from_fn(|| w.try_next()).map(|e| describe(&e)).collect()
}

#[test]
fn every_effective_write_bumps_the_revision_by_one() {
    let r = Registry::new();
    assert_eq!(r.revision(), 0);
    assert_eq!(r.put(ep("ns", "a", &[("app", "web")])), 1);
    assert_eq!(r.put(ep("ns", "a", &[("app", "web")])), 1, "identical put changes nothing");
    assert_eq!(r.put(ep("ns", "a", &[("app", "db")])), 2);
    assert_eq!(r.delete(&ep_key("ns", "a")), Some(3));
    assert_eq!(r.delete(&ep_key("ns", "a")), None);
    assert_eq!(r.revision(), 3);
    assert_eq!(r.snapshot().endpoint_count(), 0);
}

#[test]
fn apply_is_atomic_and_gives_each_change_a_revision() {
    let r = Arc::new(Registry::new());
    r.put(ep("ns", "a", &[("app", "web")]));
    let mut w = r.watch(Selector::everything(), r.revision());
    let rev = r.apply(vec![
        Change::Put(ep("ns", "b", &[("app", "web")])),
        Change::Put(ep("ns", "a", &[("app", "web")])), // no-op
        Change::Delete(ep_key("ns", "missing")),       // no-op
        Change::Delete(ep_key("ns", "a")),
        Change::Put(ep("ns", "c", &[])),
    ]);
    assert_eq!(rev, 4);
    assert_eq!(drain(&mut w), ["put 2 b", "delete 3 a", "put 4 c"]);
    assert_eq!(r.apply(Vec::new()), 4);
    assert_eq!(r.apply(vec![Change::Delete(ep_key("ns", "a"))]), 4);
}

#[test]
fn snapshots_are_immutable() {
    let r = Registry::new();
    r.put(ep("ns", "a", &[("app", "web")]));
    r.put(ep("ns", "b", &[("app", "web")]));
    let cert =
        Arc::new(Certificate { namespace: "ns".into(), name: "tls".into(), cert_pem: "C".into(), key_pem: "K".into() });
    r.put(Object::Certificate(cert));
    let old = r.snapshot();
    let web = sel("app=web");

    r.put(ep("ns", "a", &[("app", "db")]));
    r.delete(&ep_key("ns", "b"));
    r.put(ep("ns", "c", &[("app", "web")]));
    r.delete(&ObjectKey { kind: ObjectKind::Certificate, namespace: "ns".into(), name: "tls".into() });

    assert_eq!(old.revision(), 3);
    assert_eq!(names(&old.endpoints(Some("ns"), &web)), ["ns/a", "ns/b"]);
    assert_eq!(old.endpoint_count(), 2);
    assert_eq!(old.certificates().count(), 1);
    assert!(old.endpoint("ns", "b").is_some());

    let new = r.snapshot();
    assert_eq!(new.revision(), 7);
    assert_eq!(names(&new.endpoints(Some("ns"), &web)), ["ns/c"]);
    assert_eq!(new.certificates().count(), 0);
    assert!(format!("{new:?}").contains("revision: 7"));
}

#[test]
fn queries_use_namespaces_and_every_operator() {
    let r = Registry::new();
    r.put(ep("a", "1", &[("app", "web"), ("tier", "front")]));
    r.put(ep("a", "2", &[("app", "web"), ("tier", "back")]));
    r.put(ep("a", "3", &[("app", "db")]));
    r.put(ep("b", "1", &[("app", "web")]));
    r.put(ep("b", "2", &[]));
    let s = r.snapshot();
    let cases: &[(Option<&str>, &str, &[&str])] = &[
        (Some("a"), "app=web", &["a/1", "a/2"]),
        (None, "app=web", &["a/1", "a/2", "b/1"]),
        (None, "app in (web,db)", &["a/1", "a/2", "a/3", "b/1"]),
        (None, "app notin (web)", &["a/3", "b/2"]),
        (None, "app!=db", &["a/1", "a/2", "b/1", "b/2"]),
        (None, "tier", &["a/1", "a/2"]),
        (None, "!tier", &["a/3", "b/1", "b/2"]),
        (None, "app=web,tier!=front", &["a/2", "b/1"]),
        (None, "app,tier in (back,front),app!=db", &["a/1", "a/2"]),
        (None, "", &["a/1", "a/2", "a/3", "b/1", "b/2"]),
        (None, "app=nothing", &[]),
        (Some("c"), "", &[]),
    ];
    for (ns, selector, want) in cases {
        assert_eq!(names(&s.endpoints(*ns, &sel(selector))), *want, "{ns:?} {selector:?}");
        assert_eq!(names(&r.endpoints(*ns, &sel(selector))), *want, "{ns:?} {selector:?} via registry");
    }
}

#[test]
fn service_endpoints_and_lookups() {
    let r = Registry::new();
    r.put(ep("a", "1", &[("app", "web")]));
    r.put(ep("b", "1", &[("app", "web")]));
    let svc: discovery::Service = serde_json::from_value(serde_json::json!({
        "namespace": "a", "name": "web", "selector": "app=web"
    }))
    .expect("valid service");
    r.put(Object::Service(Arc::new(svc)));
    let s = r.snapshot();
    let svc = s.service("a", "web").expect("stored");
    assert_eq!(names(&s.service_endpoints(svc)), ["a/1"]);
    assert_eq!(s.services().count(), 1);
    assert!(s.get(&ObjectKey { kind: ObjectKind::Service, namespace: "a".into(), name: "web".into() }).is_some());
    assert_eq!(s.objects(&Selector::everything()).len(), 3);
}

#[test]
fn a_subscriber_behind_the_retained_history_gets_relist() {
    let r = Arc::new(Registry::with_history(4));
    for i in 0..10 {
        r.put(ep("ns", &format!("e{i}"), &[]));
    }
    // Revisions 7..=10 are retained.
    let mut w = r.watch(Selector::everything(), 6);
    assert_eq!(drain(&mut w), ["put 7 e6", "put 8 e7", "put 9 e8", "put 10 e9"]);

    let mut w = r.watch(Selector::everything(), 5);
    assert_eq!(drain(&mut w), ["relist 10"]);
    r.put(ep("ns", "late", &[]));
    assert_eq!(drain(&mut w), ["put 11 late"], "the watch continues after the relist revision");

    // A live subscriber that falls behind while watching.
    let mut w = r.watch(Selector::everything(), r.revision());
    for i in 0..5 {
        r.put(ep("ns", &format!("f{i}"), &[]));
    }
    assert_eq!(drain(&mut w), ["relist 16"]);
    r.put(ep("ns", "g", &[]));
    let snapshot = w.resync();
    assert_eq!(snapshot.revision(), 17);
    assert!(drain(&mut w).is_empty(), "resync skips what the snapshot already holds");
    r.delete(&ep_key("ns", "g"));
    assert_eq!(drain(&mut w), ["delete 18 g"]);
}

#[test]
fn a_selector_watch_sees_objects_enter_and_leave() {
    let r = Arc::new(Registry::new());
    let mut w = r.watch(sel("app=web"), 0);
    r.put(ep("ns", "a", &[("app", "web")])); // 1: enters
    r.put(ep("ns", "a", &[("app", "db")])); // 2: leaves
    r.put(ep("ns", "a", &[("app", "db"), ("v", "2")])); // 3: still outside
    r.put(ep("ns", "b", &[("app", "db")])); // 4: outside
    r.put(ep("ns", "b", &[("app", "web")])); // 5: enters
    r.put(ep("ns", "b", &[("app", "web"), ("v", "2")])); // 6: changes inside
    r.delete(&ep_key("ns", "b")); // 7: removed while matching
    r.delete(&ep_key("ns", "a")); // 8: removed while outside
    let cert =
        Arc::new(Certificate { namespace: "ns".into(), name: "tls".into(), cert_pem: "C".into(), key_pem: "K".into() });
    r.put(Object::Certificate(cert)); // 9: certificates pass every selector
    assert_eq!(drain(&mut w), ["put 1 a", "delete 2 a", "put 5 b", "put 6 b", "delete 7 b", "put 9 tls"]);
}

#[tokio::test]
async fn next_waits_for_a_write_and_changed_since_resolves() {
    let r = Arc::new(Registry::new());
    let mut w = r.watch(Selector::everything(), 0);
    let writer = {
        let r = r.clone();
        tokio::spawn(async move {
            tokio::task::yield_now().await;
            r.put(ep("ns", "a", &[]))
        })
    };
    let e = tokio::time::timeout(Duration::from_secs(10), w.next()).await.expect("event within deadline");
    assert_eq!(describe(&e), "put 1 a");
    assert_eq!(writer.await.expect("writer"), 1);
    tokio::time::timeout(Duration::from_secs(10), r.changed_since(0)).await.expect("already past 0");
    let waiter = {
        let r = r.clone();
        tokio::spawn(async move { r.changed_since(1).await })
    };
    r.put(ep("ns", "b", &[]));
    tokio::time::timeout(Duration::from_secs(10), waiter).await.expect("changed_since(1) resolves").expect("task");
}

/// A tiny deterministic generator for the load tests (no shared RNG state between threads).
struct Lcg(u64);
impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

/// Many writer threads and many watchers (everything and a selector): each watcher sees every relevant change
/// exactly once in revision order, each returned revision belongs to exactly that write, and replaying the
/// events reproduces the final snapshot.
#[test]
fn concurrent_writers_and_watchers_see_every_change_exactly_once() {
    const WRITERS: u64 = 4;
    const WRITES: u64 = 400;
    const WATCHERS: usize = 12;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let r = Arc::new(Registry::new());
    let selectors = [Selector::everything(), sel("app=web")];
    let watchers: Vec<_> = (0..WATCHERS)
        .map(|i| {
            let selector = selectors[i % 2].clone();
            let mut w = r.watch(selector.clone(), 0);
            rt.spawn(async move {
                let mut seen = Vec::new();
                loop {
                    let e = tokio::time::timeout(Duration::from_secs(60), w.next()).await.expect("events keep coming");
                    let done = matches!(&e, WatchEvent::Put { object, .. } if object.key().name == "sentinel");
                    seen.push(e);
                    if done {
                        return (selector, seen);
                    }
                }
            })
        })
        .collect();

    let writers: Vec<_> = (0..WRITERS)
        .map(|t| {
            let r = r.clone();
            std::thread::spawn(move || {
                let mut rng = Lcg(t + 1);
                let mut done = Vec::new();
                for i in 0..WRITES {
                    // Overlapping keys across writers, labels that move objects in and out of `app=web`.
                    let name = format!("e{}", rng.below(40));
                    let app = ["web", "db", "cache"][rng.below(3) as usize];
                    if rng.below(5) == 0 {
                        if let Some(rev) = r.delete(&ep_key("ns", &name)) {
                            done.push((rev, None));
                        }
                    } else {
                        let object =
                            ep("ns", &name, &[("app", app), ("writer", &t.to_string()), ("i", &i.to_string())]);
                        let before = r.revision();
                        let rev = r.put(object.clone());
                        assert!(rev > before, "a changed put gets a new revision");
                        done.push((rev, Some(object)));
                    }
                }
                done
            })
        })
        .collect();
    let mut by_revision = BTreeMap::new();
    for w in writers {
        for (rev, object) in w.join().expect("writer thread") {
            assert!(by_revision.insert(rev, object).is_none(), "revision {rev} returned twice");
        }
    }
    let final_rev = r.put(ep("ns", "sentinel", &[("app", "web")]));
    assert_eq!(final_rev as usize, by_revision.len() + 1, "revisions are dense");

    let snapshot = r.snapshot();
    for handle in watchers {
        let (selector, seen) = rt.block_on(handle).expect("watcher task");
        let revisions: Vec<u64> = seen
            .iter()
            .map(|e| match e {
                WatchEvent::Put { revision, .. } | WatchEvent::Delete { revision, .. } => *revision,
                WatchEvent::Relist { .. } => panic!("no relist with the default history"),
            })
            .collect();
        assert!(revisions.windows(2).all(|p| p[0] < p[1]), "strictly increasing: no duplicate, no reorder");
        if selector.is_empty() {
            assert_eq!(revisions, (1..=final_rev).collect::<Vec<_>>(), "no skip");
        }
        let mut mirror: BTreeMap<String, Object> = BTreeMap::new();
        for e in seen {
            match e {
                WatchEvent::Put { revision, object } => {
                    if let Some(Some(written)) = by_revision.get(&revision) {
                        assert_eq!(&object, written, "revision {revision} carries the write that returned it");
                    }
                    mirror.insert(object.key().name, object);
                }
                WatchEvent::Delete { key, .. } => {
                    assert!(mirror.remove(&key.name).is_some(), "delete of {} it had seen", key.name);
                }
                WatchEvent::Relist { .. } => unreachable!(),
            }
        }
        let expected: BTreeMap<String, Object> =
            snapshot.endpoints(None, &selector).into_iter().map(|e| (e.name.clone(), Object::Endpoint(e))).collect();
        assert_eq!(mirror, expected, "replay of {selector} equals the snapshot");
    }
}

#[test]
fn one_change_fans_out_to_a_thousand_watchers() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let r = Arc::new(Registry::new());
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<()>(1000);
    let tasks: Vec<_> = (0..1000)
        .map(|i| {
            let mut w = r.watch(if i % 2 == 0 { Selector::everything() } else { sel("app=web") }, 0);
            let ready = ready_tx.clone();
            rt.spawn(async move {
                let _ = ready.send(()).await;
                tokio::time::timeout(Duration::from_secs(60), w.next()).await.expect("event arrives")
            })
        })
        .collect();
    rt.block_on(async {
        for _ in 0..1000 {
            ready_rx.recv().await.expect("watcher started");
        }
    });
    r.put(ep("ns", "a", &[("app", "web")]));
    for t in tasks {
        let e = rt.block_on(t).expect("task");
        assert_eq!(describe(&e), "put 1 a");
    }
}

/// Namespace, name, and labels to put (`None` deletes).
type BatchItem = (u8, u8, Option<Vec<(u8, u8)>>);

#[derive(Debug, Clone)]
enum Op {
    Put { ns: u8, name: u8, labels: Vec<(u8, u8)> },
    Delete { ns: u8, name: u8 },
    Batch(Vec<BatchItem>),
}

const KEYS: [&str; 4] = ["app", "tier", "zone", "ver"];
const VALUES: [&str; 3] = ["a", "b", ""];

fn op() -> impl Strategy<Value = Op> {
    let labels = || proptest::collection::vec((0u8..4, 0u8..3), 0..4);
    prop_oneof![
        4 => (0u8..2, 0u8..12, labels()).prop_map(|(ns, name, labels)| Op::Put { ns, name, labels }),
        1 => (0u8..2, 0u8..12).prop_map(|(ns, name)| Op::Delete { ns, name }),
        1 => proptest::collection::vec((0u8..2, 0u8..12, proptest::option::of(labels())), 0..5).prop_map(Op::Batch),
    ]
}

fn requirement_text() -> impl Strategy<Value = String> {
    let key = (0usize..4).prop_map(|k| KEYS[k].to_string());
    let value = (0usize..3).prop_map(|v| VALUES[v].to_string());
    let values = proptest::collection::vec(0usize..2, 1..3)
        .prop_map(|v| v.into_iter().map(|i| VALUES[i]).collect::<Vec<_>>().join(","));
    prop_oneof![
        (key.clone(), value.clone()).prop_map(|(k, v)| format!("{k}={v}")),
        (key.clone(), value).prop_map(|(k, v)| format!("{k}!={v}")),
        (key.clone(), values.clone()).prop_map(|(k, v)| format!("{k} in ({v})")),
        (key.clone(), values).prop_map(|(k, v)| format!("{k} notin ({v})")),
        key.clone(),
        key.prop_map(|k| format!("!{k}")),
    ]
}

fn make(ns: u8, name: u8, pairs: &[(u8, u8)]) -> Object {
    let labels = pairs.iter().map(|(k, v)| (KEYS[*k as usize].to_string(), VALUES[*v as usize].to_string())).collect();
    Object::Endpoint(endpoint(&format!("ns{ns}"), &format!("e{name:02}"), labels))
}

fn brute_force(model: &BTreeMap<(String, String), Arc<Endpoint>>, ns: Option<&str>, s: &Selector) -> Vec<String> {
    model
        .values()
        .filter(|e| ns.is_none_or(|n| e.namespace == n) && s.matches(&e.labels))
        .map(|e| format!("{}/{}", e.namespace, e.name))
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// The index answers exactly what a scan of every endpoint answers, for every snapshot taken on the way.
    #[test]
    fn index_matches_a_brute_force_scan(
        ops in proptest::collection::vec(op(), 1..40),
        selectors in proptest::collection::vec(proptest::collection::vec(requirement_text(), 0..3), 1..8),
    ) {
        let r = Registry::new();
        let mut model: BTreeMap<(String, String), Arc<Endpoint>> = BTreeMap::new();
        let mut checkpoints = Vec::new();
        let apply_model = |model: &mut BTreeMap<_, _>, object: Option<Object>, ns: u8, name: u8| {
            let key = (format!("ns{ns}"), format!("e{name:02}"));
            match object {
                Some(Object::Endpoint(e)) => { model.insert(key, e); }
                _ => { model.remove(&key); }
            }
        };
        for op in ops {
            match op {
                Op::Put { ns, name, labels } => {
                    let o = make(ns, name, &labels);
                    r.put(o.clone());
                    apply_model(&mut model, Some(o), ns, name);
                }
                Op::Delete { ns, name } => {
                    r.delete(&ep_key(&format!("ns{ns}"), &format!("e{name:02}")));
                    apply_model(&mut model, None, ns, name);
                }
                Op::Batch(items) => {
                    let mut changes = Vec::new();
                    for (ns, name, labels) in items {
                        let o = labels.map(|l| make(ns, name, &l));
                        changes.push(match &o {
                            Some(o) => Change::Put(o.clone()),
                            None => Change::Delete(ep_key(&format!("ns{ns}"), &format!("e{name:02}"))),
                        });
                        apply_model(&mut model, o, ns, name);
                    }
                    r.apply(changes);
                }
            }
            checkpoints.push((r.snapshot(), model.clone()));
        }
        let unique: BTreeSet<Vec<String>> = selectors.into_iter().collect();
        for terms in unique {
            let s = sel(&terms.join(","));
            for (snapshot, model) in &checkpoints {
                prop_assert_eq!(snapshot.endpoint_count(), model.len());
                for ns in [None, Some("ns0"), Some("ns1")] {
                    prop_assert_eq!(names(&snapshot.endpoints(ns, &s)), brute_force(model, ns, &s), "{:?} {}", ns, s);
                }
            }
        }
    }
}
