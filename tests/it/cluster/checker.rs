//! The checker: etcd's own history, recorded from the host by a watch on the whole keyspace from revision 1
//! (resumed on another member from the next revision when one goes away), and the invariants of issue #17
//! computed from it afterwards by pure functions:
//! - no pod bound twice: a pod (by uid) once bound never gets another `spec.nodeName`;
//! - no node over its allocatable: at every revision, the requests of the non-terminal pods bound to a node fit
//!   in what the node reports (cpu, memory, pod count);
//! - no fenced write committed without its leader: each audit put `/berth-fence/<lease hex>` happened at a
//!   revision where the election key of that lease existed and was the leader (lowest create revision);
//! - no acknowledged write lost: every write the test saw acknowledged is in the history at the revision it was
//!   acknowledged with, and its key still exists at the end (the tests never delete them).
//!
//! It also yields the leader terms (who led from which revision, when the watch saw it) for the timing checks.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const ELECTION_PREFIX: &str = "/berth-election/";
pub const FENCE_PREFIX: &str = "/berth-fence/";
pub const POD_PREFIX: &str = "/berth/pods/";
pub const NODE_PREFIX: &str = "/berth/nodes/";

#[derive(Debug, Clone, PartialEq)]
pub struct Ev {
    pub rev: i64,
    pub key: String,
    /// `None` for a delete.
    pub value: Option<Vec<u8>>,
    pub create_rev: i64,
    pub lease: i64,
    /// When the watch delivered it (the history's revisions carry no time).
    pub seen: Instant,
}

/// The recorded history, shared with the watch task.
#[derive(Clone, Default)]
pub struct History {
    inner: Arc<Mutex<Recorded>>,
}

#[derive(Default)]
struct Recorded {
    events: Vec<Ev>,
    /// The highest revision the watch has reported (events or progress).
    seen_rev: i64,
    errors: Vec<String>,
}

impl History {
    pub fn events(&self) -> Vec<Ev> {
        self.inner.lock().unwrap().events.clone()
    }

    pub fn seen_revision(&self) -> i64 {
        self.inner.lock().unwrap().seen_rev
    }

    /// Watch problems that lose history (a compacted start revision): the checks cannot be trusted then.
    pub fn errors(&self) -> Vec<String> {
        self.inner.lock().unwrap().errors.clone()
    }

    fn push(&self, evs: Vec<Ev>, rev: i64) {
        let mut r = self.inner.lock().unwrap();
        r.events.extend(evs);
        r.seen_rev = r.seen_rev.max(rev);
    }

    /// Follow etcd at `endpoints` from revision 1 until the returned task is aborted.
    pub fn follow(&self, endpoints: Vec<String>) -> impl std::future::Future<Output = ()> + Send + 'static {
        let history = self.clone();
        async move {
            let mut next = 1i64;
            loop {
                if let Err(e) = history.watch_from(&endpoints, &mut next).await {
                    // A member went away or the connection broke: resume from the next revision.
                    let _ = e;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }

    async fn watch_from(&self, endpoints: &[String], next: &mut i64) -> Result<(), etcd_client::Error> {
        let options = etcd_client::ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(1))
            .with_keep_alive(Duration::from_secs(1), Duration::from_secs(1))
            // A member without a leader (cut off, or the last of a lost quorum) ends the watch: resume elsewhere.
            .with_require_leader(true);
        let mut client = etcd_client::Client::connect(endpoints, Some(options)).await?;
        let watch = etcd_client::WatchOptions::new().with_all_keys().with_start_revision(*next).with_progress_notify();
        let mut stream = client.watch("", Some(watch)).await?;
        loop {
            // A silent member (paused, cut off) must not hold the checker: etcd sends progress notifications
            // every few seconds on an idle watch.
            let msg = match tokio::time::timeout(Duration::from_secs(15), stream.message()).await {
                Ok(m) => m?,
                Err(_) => return Ok(()),
            };
            let Some(resp) = msg else { return Ok(()) };
            if resp.compact_revision() > 0 {
                self.inner.lock().unwrap().errors.push(format!(
                    "watch from revision {next} was compacted (compact revision {}): history lost",
                    resp.compact_revision()
                ));
                *next = resp.compact_revision();
                return Ok(());
            }
            let now = Instant::now();
            let mut evs = Vec::new();
            for e in resp.events() {
                let Some(kv) = e.kv() else { continue };
                let put = matches!(e.event_type(), etcd_client::EventType::Put);
                evs.push(Ev {
                    rev: kv.mod_revision(),
                    key: String::from_utf8_lossy(kv.key()).into_owned(),
                    value: put.then(|| kv.value().to_vec()),
                    create_rev: kv.create_revision(),
                    lease: kv.lease(),
                    seen: now,
                });
            }
            let header = resp.header().map(|h| h.revision()).unwrap_or(0);
            let last = evs.last().map(|e| e.rev).unwrap_or(0).max(header);
            if let Some(e) = evs.last() {
                *next = e.rev + 1;
            }
            self.push(evs, last);
        }
    }
}

/// What the harness saw acknowledged: `key` (etcd key) written at `rev`.
#[derive(Debug, Clone)]
pub struct Ack {
    pub key: String,
    pub rev: i64,
}

/// One leader term as etcd recorded it.
#[derive(Debug, Clone)]
pub struct Term {
    /// The election key's value: the replica's name.
    pub name: String,
    pub lease: i64,
    /// The revision from which it was the leader (its key was the oldest alive).
    pub from_rev: i64,
    pub from_seen: Instant,
    /// The revision at which it stopped being the leader (its key was deleted), if it did.
    pub until_rev: Option<i64>,
    pub until_seen: Option<Instant>,
}

/// The invariants' verdicts over a history.
#[derive(Debug, Default)]
pub struct Report {
    pub violations: Vec<String>,
    pub terms: Vec<Term>,
    /// Revision and time of every fenced-write audit put, with the lease it names.
    pub fences: Vec<(i64, i64, Instant)>,
    pub bindings: usize,
    pub pods_seen: usize,
}

impl Report {
    /// The first fenced write of a term other than `not_lease`, at or after `after`.
    pub fn first_fence_after(&self, after: Instant, not_lease: i64) -> Option<Instant> {
        self.fences.iter().filter(|(_, l, t)| *l != not_lease && *t >= after).map(|(_, _, t)| *t).min()
    }

    /// Leader changes (a new term starting) seen at or after `after`.
    pub fn leader_changes_after(&self, after: Instant) -> usize {
        self.terms.iter().filter(|t| t.from_seen >= after).count()
    }

    pub fn leader_at_end(&self) -> Option<&Term> {
        self.terms.last().filter(|t| t.until_rev.is_none())
    }
}

fn parse_hex_lease(s: &str) -> Option<i64> {
    u64::from_str_radix(s, 16).ok().map(|v| v as i64)
}

/// The lease a fence audit key names (`/berth-fence/<lease hex>`).
pub fn fence_lease(key: &str) -> Option<i64> {
    key.strip_prefix(FENCE_PREFIX).and_then(parse_hex_lease)
}

/// Compute every invariant over `events` (revision order) and the acknowledged writes `acks`.
pub fn analyse(events: &[Ev], acks: &[Ack]) -> Report {
    let mut report = Report::default();
    // Election keys alive: key -> (create_rev, lease, name).
    let mut election: BTreeMap<String, (i64, i64, String)> = BTreeMap::new();
    let mut current: Option<String> = None;
    // Pods: etcd key -> (uid, node, requests, terminal); bound uid -> node.
    let mut pods: HashMap<String, PodState> = HashMap::new();
    let mut bound: HashMap<String, String> = HashMap::new();
    let mut nodes: HashMap<String, model::Resources> = HashMap::new();
    let mut live: HashMap<String, i64> = HashMap::new();
    let mut puts: HashMap<(String, i64), ()> = HashMap::new();
    let mut overcommitted: HashMap<String, bool> = HashMap::new();
    for e in events {
        match &e.value {
            Some(_) => {
                live.insert(e.key.clone(), e.rev);
                puts.insert((e.key.clone(), e.rev), ());
            }
            None => {
                live.remove(&e.key);
            }
        }
        if e.key.starts_with(ELECTION_PREFIX) {
            match &e.value {
                Some(v) => {
                    election.entry(e.key.clone()).or_insert((
                        e.create_rev,
                        e.lease,
                        String::from_utf8_lossy(v).into_owned(),
                    ));
                }
                None => {
                    election.remove(&e.key);
                }
            }
            let leader = election.iter().min_by_key(|(_, (c, _, _))| *c).map(|(k, _)| k.clone());
            if leader != current {
                if let Some(t) = report.terms.last_mut().filter(|t| t.until_rev.is_none()) {
                    t.until_rev = Some(e.rev);
                    t.until_seen = Some(e.seen);
                }
                if let Some(k) = &leader {
                    let (_, lease, name) = election[k].clone();
                    report.terms.push(Term {
                        name,
                        lease,
                        from_rev: e.rev,
                        from_seen: e.seen,
                        until_rev: None,
                        until_seen: None,
                    });
                }
                current = leader;
            }
        } else if let Some(hex) = e.key.strip_prefix(FENCE_PREFIX) {
            if e.value.is_none() {
                continue;
            }
            let Some(lease) = parse_hex_lease(hex) else {
                report.violations.push(format!("rev {}: fence key {} does not name a lease in hex", e.rev, e.key));
                continue;
            };
            report.fences.push((e.rev, lease, e.seen));
            let holder = election.iter().find(|(_, (_, l, _))| *l == lease);
            let leader = current.as_ref().and_then(|k| election.get(k));
            match holder {
                None => report.violations.push(format!(
                    "rev {}: fenced write of lease {hex} committed while that lease's election key did not exist",
                    e.rev
                )),
                Some((k, (create, _, name))) => {
                    if leader.map(|(c, _, _)| c) != Some(create) {
                        report.violations.push(format!(
                            "rev {}: fenced write of {name} ({k}) committed while it was not the leader",
                            e.rev
                        ));
                    }
                    let value = e.value.as_deref().map(String::from_utf8_lossy).unwrap_or_default();
                    if value.trim().parse::<i64>().ok() != Some(*create) {
                        report.violations.push(format!(
                            "rev {}: fence {} holds {value:?}, not its leader key's create revision {create}",
                            e.rev, e.key
                        ));
                    }
                }
            }
        } else if e.key.starts_with(NODE_PREFIX) {
            let name = e.key.rsplit('/').next().unwrap_or_default().to_string();
            match e.value.as_deref().map(serde_json::from_slice::<model::Node>) {
                Some(Ok(n)) => {
                    nodes.insert(name, n.allocatable());
                }
                Some(Err(_)) => {}
                None => {
                    nodes.remove(&name);
                }
            }
        } else if e.key.starts_with(POD_PREFIX) {
            let before = pods.get(&e.key).and_then(|p| p.node.clone());
            match e.value.as_deref().map(serde_json::from_slice::<model::Pod>) {
                Some(Ok(p)) => {
                    let uid = p.metadata.uid.clone().unwrap_or_default();
                    let node = p.spec.node_name.clone();
                    let terminal = matches!(
                        p.status.as_ref().map(|s| s.phase),
                        Some(model::PodPhase::Succeeded | model::PodPhase::Failed)
                    );
                    if !pods.contains_key(&e.key) {
                        report.pods_seen += 1;
                    }
                    if let Some(n) = &node {
                        match bound.get(&uid) {
                            Some(old) if old != n => report.violations.push(format!(
                                "rev {}: pod {} (uid {uid}) bound to {n} after being bound to {old}",
                                e.rev, e.key
                            )),
                            Some(_) => {}
                            None => {
                                bound.insert(uid.clone(), n.clone());
                                report.bindings += 1;
                            }
                        }
                    } else if let Some(old) = bound.get(&uid) {
                        report.violations.push(format!("rev {}: pod {} (uid {uid}) unbound from {old}", e.rev, e.key));
                    }
                    let requests = p.spec.total_requests();
                    pods.insert(e.key.clone(), PodState { node, requests, terminal });
                }
                Some(Err(err)) => report.violations.push(format!("rev {}: pod {} unreadable: {err}", e.rev, e.key)),
                None => {
                    pods.remove(&e.key);
                }
            }
            let after = pods.get(&e.key).and_then(|p| p.node.clone());
            for node in [before, after].into_iter().flatten() {
                let Some(alloc) = nodes.get(&node) else { continue };
                let mut sum = model::Resources::default();
                for p in pods.values().filter(|p| p.node.as_deref() == Some(node.as_str()) && !p.terminal) {
                    sum.cpu_millis += p.requests.cpu_millis;
                    sum.memory_bytes += p.requests.memory_bytes;
                    sum.pods += 1;
                }
                let over = (alloc.cpu_millis > 0 && sum.cpu_millis > alloc.cpu_millis)
                    || (alloc.memory_bytes > 0 && sum.memory_bytes > alloc.memory_bytes)
                    || (alloc.pods > 0 && sum.pods > alloc.pods);
                // Report the first revision of each over-commit, not every event while it lasts.
                let was = overcommitted.insert(node.clone(), over).unwrap_or(false);
                if over && !was {
                    report.violations.push(format!(
                        "rev {}: node {node} over its allocatable: bound {sum:?} > allocatable {alloc:?}",
                        e.rev
                    ));
                }
            }
        }
    }
    for a in acks {
        if !puts.contains_key(&(a.key.clone(), a.rev)) {
            report.violations.push(format!("acknowledged write {} at rev {} is not in etcd's history", a.key, a.rev));
        } else if !live.contains_key(&a.key) {
            report.violations.push(format!("acknowledged write {} (rev {}) is gone at the end", a.key, a.rev));
        }
    }
    report
}

struct PodState {
    node: Option<String>,
    requests: model::Resources,
    terminal: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(rev: i64, key: &str, value: Option<&str>, create_rev: i64, lease: i64) -> Ev {
        Ev {
            rev,
            key: key.into(),
            value: value.map(|v| v.as_bytes().to_vec()),
            create_rev,
            lease,
            seen: Instant::now(),
        }
    }

    fn pod(uid: &str, node: Option<&str>, cpu: &str) -> String {
        let mut p = serde_json::json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "p", "namespace": "default", "uid": uid},
            "spec": {"containers": [{"name": "c", "command": ["x"], "resources": {"requests": {"cpu": cpu}}}]}});
        if let Some(n) = node {
            p["spec"]["nodeName"] = n.into();
        }
        p.to_string()
    }

    fn node(cpu: &str) -> String {
        serde_json::json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"},
            "status": {"capacity": {"cpu": cpu, "pods": "10"}, "allocatable": {"cpu": cpu, "pods": "10"}}})
        .to_string()
    }

    #[test]
    fn a_fence_of_the_live_leader_passes_and_a_stale_one_is_reported() {
        let events = vec![
            ev(2, "/berth-election/leader/a1", Some("s1"), 2, 0xa1),
            ev(3, "/berth-fence/a1", Some("2"), 3, 0),
            ev(4, "/berth-election/leader/b2", Some("s2"), 4, 0xb2),
            ev(5, "/berth-election/leader/a1", None, 2, 0xa1),
            ev(6, "/berth-fence/b2", Some("4"), 3, 0),
            ev(7, "/berth-fence/a1", Some("2"), 3, 0),
        ];
        let r = analyse(&events, &[]);
        assert_eq!(r.terms.len(), 2, "{:?}", r.terms);
        assert_eq!((r.terms[0].name.as_str(), r.terms[0].until_rev), ("s1", Some(5)));
        assert_eq!((r.terms[1].name.as_str(), r.terms[1].from_rev), ("s2", 5));
        assert_eq!(r.violations.len(), 1, "{:?}", r.violations);
        assert!(r.violations[0].starts_with("rev 7:"), "{:?}", r.violations);
    }

    #[test]
    fn a_follower_fence_is_reported() {
        let events = vec![
            ev(2, "/berth-election/leader/a1", Some("s1"), 2, 0xa1),
            ev(3, "/berth-election/leader/b2", Some("s2"), 3, 0xb2),
            ev(4, "/berth-fence/b2", Some("3"), 4, 0),
        ];
        let r = analyse(&events, &[]);
        assert!(r.violations.iter().any(|v| v.contains("not the leader")), "{:?}", r.violations);
    }

    #[test]
    fn rebinding_and_overcommit_are_reported() {
        let events = vec![
            ev(2, "/berth/nodes//n1", Some(&node("1")), 2, 0),
            ev(3, "/berth/pods/default/a", Some(&pod("u1", None, "600m")), 3, 0),
            ev(4, "/berth/pods/default/a", Some(&pod("u1", Some("n1"), "600m")), 3, 0),
            ev(5, "/berth/pods/default/b", Some(&pod("u2", Some("n1"), "600m")), 5, 0),
            ev(6, "/berth/pods/default/a", Some(&pod("u1", Some("n2"), "600m")), 3, 0),
        ];
        let r = analyse(&events, &[]);
        assert_eq!(r.bindings, 2);
        assert!(r.violations.iter().any(|v| v.starts_with("rev 5:") && v.contains("over")), "{:?}", r.violations);
        assert!(
            r.violations.iter().any(|v| v.starts_with("rev 6:") && v.contains("after being")),
            "{:?}",
            r.violations
        );
    }

    #[test]
    fn a_lost_acknowledged_write_is_reported() {
        let events = vec![
            ev(2, "/berth/configmaps/default/a", Some("{}"), 2, 0),
            ev(3, "/berth/configmaps/default/b", Some("{}"), 3, 0),
        ];
        let acks = vec![
            Ack { key: "/berth/configmaps/default/a".into(), rev: 2 },
            Ack { key: "/berth/configmaps/default/b".into(), rev: 4 },
        ];
        let r = analyse(&events, &acks);
        assert_eq!(r.violations.len(), 1, "{:?}", r.violations);
        assert!(r.violations[0].contains("rev 4"));
    }
}
