//! Table-driven tests per filter and score, the acceptance scenarios, property tests against a naive
//! reference, and the bind runner with injected conflicts.

use super::bind::{BindError, Binder, Observe, Runner};
use super::memory::MemoryCluster;
use super::*;
use discovery::{Labels, Operator, Requirement, Selector};
use model::{
    NodeSelector, NodeSelectorOperator, NodeSelectorRequirement, NodeSelectorTerm, PreferredSchedulingTerm, Taint,
    TaintEffect, Toleration, TolerationOperator, WhenUnsatisfiable,
};
use proptest::prelude::*;

const GI: u64 = 1 << 30;
const MI: u64 = 1 << 20;
const HOST: &str = "kubernetes.io/hostname";
const ZONE: &str = "topology.kubernetes.io/zone";

fn labels(kv: &[(&str, &str)]) -> Labels {
    kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn node(name: &str, zone: &str) -> NodeInfo {
    NodeInfo {
        name: name.into(),
        labels: labels(&[(HOST, name), (ZONE, zone)]),
        allocatable: Allocatable { cpu_millis: 4000, memory_bytes: 8 * GI, pods: 110 },
        ..NodeInfo::default()
    }
}

fn pod(name: &str, app: &str) -> PodInfo {
    PodInfo {
        namespace: "default".into(),
        name: name.into(),
        labels: labels(&[("app", app)]),
        requests: Requests { cpu_millis: 100, memory_bytes: 128 * MI },
        ..PodInfo::default()
    }
}

fn eq(key: &str, value: &str) -> Selector {
    Selector { requirements: vec![Requirement { key: key.into(), op: Operator::Equals, values: vec![value.into()] }] }
}

fn term(app: &str, topology_key: &str) -> AffinityTerm {
    AffinityTerm { selector: Some(eq("app", app)), namespaces: vec![], topology_key: topology_key.into() }
}

fn bound(p: PodInfo, node: &str) -> BoundPod {
    BoundPod { pod: p, node: node.into() }
}

fn nreq(key: &str, op: NodeSelectorOperator, values: &[&str]) -> NodeSelectorRequirement {
    NodeSelectorRequirement { key: key.into(), operator: op, values: values.iter().map(|v| v.to_string()).collect() }
}

fn spread(key: &str, app: &str, max_skew: u32, when: WhenUnsatisfiable) -> SpreadConstraint {
    SpreadConstraint { max_skew, topology_key: key.into(), when_unsatisfiable: when, selector: Some(eq("app", app)) }
}

fn node_taint(key: &str, value: &str, effect: TaintEffect) -> Taint {
    Taint { key: key.into(), value: Some(value.into()), effect, time_added: None }
}

/// A node selector term of expressions only.
fn expressions(match_expressions: Vec<NodeSelectorRequirement>) -> NodeSelectorTerm {
    NodeSelectorTerm { match_expressions, ..NodeSelectorTerm::default() }
}

fn three_zones() -> Vec<NodeInfo> {
    vec![node("n1", "a"), node("n2", "b"), node("n3", "c")]
}

/// One filter case: the cluster, the pod, and each node's expected verdict in snapshot order.
struct FilterCase {
    name: &'static str,
    nodes: Vec<NodeInfo>,
    pods: Vec<BoundPod>,
    pod: PodInfo,
    expect: Vec<Result<(), RejectReason>>,
}

fn run_filter_cases(cases: Vec<FilterCase>) {
    for c in cases {
        let snapshot = ClusterSnapshot { nodes: c.nodes, pods: c.pods, policy: SchedulingPolicy::default() };
        let mut cycle = Cycle::new(&snapshot, 1);
        let got: Vec<_> = cycle.explain(&c.pod).into_iter().map(|(_, v)| v).collect();
        assert_eq!(got, c.expect, "case {}", c.name);
        // The placement agrees with the verdicts.
        let placed = schedule_batch(&snapshot, std::slice::from_ref(&c.pod), 7).remove(0).1;
        match placed {
            Ok(n) => {
                let i = snapshot.nodes.iter().position(|x| *x.name == *n).unwrap();
                assert_eq!(c.expect[i], Ok(()), "case {}: placed on a rejected node", c.name);
            }
            Err(u) => {
                assert!(c.expect.iter().all(|v| v.is_err()), "case {}: unschedulable but {:?}", c.name, c.expect);
                assert_eq!(u.total_nodes, snapshot.nodes.len());
            }
        }
    }
}

use RejectReason::*;
const OK: Result<(), RejectReason> = Ok(());

#[test]
fn resource_filters() {
    let mut small = node("n2", "a");
    small.allocatable = Allocatable { cpu_millis: 150, memory_bytes: 8 * GI, pods: 110 };
    let mut tiny_mem = node("n3", "a");
    tiny_mem.allocatable.memory_bytes = 100 * MI;
    let mut one_pod = node("n4", "a");
    one_pod.allocatable.pods = 1;
    let mut zero = pod("p", "x");
    zero.requests = Requests::default();
    run_filter_cases(vec![
        FilterCase {
            name: "cpu, memory, pod count",
            nodes: vec![node("n1", "a"), small.clone(), tiny_mem.clone(), one_pod.clone()],
            pods: vec![bound(pod("old", "y"), "n2"), bound(pod("old2", "y"), "n4")],
            pod: pod("p", "x"),
            expect: vec![OK, Err(InsufficientCpu), Err(InsufficientMemory), Err(TooManyPods)],
        },
        FilterCase {
            name: "a zero request never fails on that resource, the pod count still counts",
            nodes: vec![small, tiny_mem, one_pod],
            pods: vec![bound(pod("old", "y"), "n2"), bound(pod("old2", "y"), "n4")],
            pod: zero,
            expect: vec![OK, OK, Err(TooManyPods)],
        },
    ]);
}

#[test]
fn node_selector_and_affinity_filters() {
    let mut gpu = node("n2", "b");
    gpu.labels.insert("gpu".into(), "true".into());
    gpu.labels.insert("cores".into(), "16".into());
    let mut n1 = node("n1", "a");
    n1.labels.insert("cores".into(), "4".into());
    let nodes = vec![n1, gpu, node("n3", "c")];
    let with_required = |terms: Vec<Vec<NodeSelectorRequirement>>| {
        let mut p = pod("p", "x");
        p.node_affinity.required_during_scheduling_ignored_during_execution =
            Some(NodeSelector { node_selector_terms: terms.into_iter().map(expressions).collect() });
        p
    };
    use NodeSelectorOperator as O;
    let mut by_selector = pod("p", "x");
    by_selector.node_selector = labels(&[("gpu", "true")]);
    run_filter_cases(vec![
        FilterCase {
            name: "nodeSelector",
            nodes: nodes.clone(),
            pods: vec![],
            pod: by_selector,
            expect: vec![Err(NodeAffinity), OK, Err(NodeAffinity)],
        },
        FilterCase {
            name: "In",
            nodes: nodes.clone(),
            pods: vec![],
            pod: with_required(vec![vec![nreq(ZONE, O::In, &["a", "c"])]]),
            expect: vec![OK, Err(NodeAffinity), OK],
        },
        FilterCase {
            name: "NotIn",
            nodes: nodes.clone(),
            pods: vec![],
            pod: with_required(vec![vec![nreq(ZONE, O::NotIn, &["a"])]]),
            expect: vec![Err(NodeAffinity), OK, OK],
        },
        FilterCase {
            name: "Exists",
            nodes: nodes.clone(),
            pods: vec![],
            pod: with_required(vec![vec![nreq("gpu", O::Exists, &[])]]),
            expect: vec![Err(NodeAffinity), OK, Err(NodeAffinity)],
        },
        FilterCase {
            name: "DoesNotExist",
            nodes: nodes.clone(),
            pods: vec![],
            pod: with_required(vec![vec![nreq("gpu", O::DoesNotExist, &[])]]),
            expect: vec![OK, Err(NodeAffinity), OK],
        },
        FilterCase {
            name: "Gt (a missing or non-numeric label never matches)",
            nodes: nodes.clone(),
            pods: vec![],
            pod: with_required(vec![vec![nreq("cores", O::Gt, &["8"])]]),
            expect: vec![Err(NodeAffinity), OK, Err(NodeAffinity)],
        },
        FilterCase {
            name: "Lt",
            nodes: nodes.clone(),
            pods: vec![],
            pod: with_required(vec![vec![nreq("cores", O::Lt, &["8"])]]),
            expect: vec![OK, Err(NodeAffinity), Err(NodeAffinity)],
        },
        FilterCase {
            name: "Gt with a non-integer value matches nothing",
            nodes: nodes.clone(),
            pods: vec![],
            pod: with_required(vec![vec![nreq("cores", O::Gt, &["many"])]]),
            expect: vec![Err(NodeAffinity), Err(NodeAffinity), Err(NodeAffinity)],
        },
        FilterCase {
            name: "terms are ORed, expressions ANDed",
            nodes: nodes.clone(),
            pods: vec![],
            pod: with_required(vec![
                vec![nreq(ZONE, O::In, &["a"]), nreq("gpu", O::Exists, &[])],
                vec![nreq(ZONE, O::In, &["c"])],
            ]),
            expect: vec![Err(NodeAffinity), Err(NodeAffinity), OK],
        },
        FilterCase {
            name: "an empty term matches no node",
            nodes: nodes.clone(),
            pods: vec![],
            pod: with_required(vec![vec![]]),
            expect: vec![Err(NodeAffinity), Err(NodeAffinity), Err(NodeAffinity)],
        },
    ]);
}

#[test]
fn taint_and_unschedulable_filters() {
    let mut ns = node("n1", "a");
    ns.taints = vec![node_taint("dedicated", "db", TaintEffect::NoSchedule)];
    let mut ne = node("n2", "a");
    ne.taints = vec![node_taint("dedicated", "db", TaintEffect::NoExecute)];
    let mut pref = node("n3", "a");
    pref.taints = vec![node_taint("dedicated", "db", TaintEffect::PreferNoSchedule)];
    let mut cordoned = node("n4", "a");
    cordoned.unschedulable = true;
    let nodes = vec![ns, ne, pref, cordoned];
    let tolerating = |tols: Vec<Toleration>| {
        let mut p = pod("p", "x");
        p.tolerations = tols;
        p
    };
    let equal_db = |effect| Toleration {
        key: Some("dedicated".into()),
        operator: TolerationOperator::Equal,
        value: Some("db".into()),
        effect,
        toleration_seconds: None,
    };
    run_filter_cases(vec![
        FilterCase {
            name: "no tolerations",
            nodes: nodes.clone(),
            pods: vec![],
            pod: pod("p", "x"),
            expect: vec![Err(UntoleratedTaint), Err(UntoleratedTaint), OK, Err(NodeUnschedulable)],
        },
        FilterCase {
            name: "Equal with any effect",
            nodes: nodes.clone(),
            pods: vec![],
            pod: tolerating(vec![equal_db(None)]),
            expect: vec![OK, OK, OK, Err(NodeUnschedulable)],
        },
        FilterCase {
            name: "Equal for NoSchedule only",
            nodes: nodes.clone(),
            pods: vec![],
            pod: tolerating(vec![equal_db(Some(TaintEffect::NoSchedule))]),
            expect: vec![OK, Err(UntoleratedTaint), OK, Err(NodeUnschedulable)],
        },
        FilterCase {
            name: "wrong value",
            nodes: nodes.clone(),
            pods: vec![],
            pod: tolerating(vec![Toleration { value: Some("web".into()), ..equal_db(None) }]),
            expect: vec![Err(UntoleratedTaint), Err(UntoleratedTaint), OK, Err(NodeUnschedulable)],
        },
        FilterCase {
            name: "Exists without a key tolerates everything, including the cordon",
            nodes: nodes.clone(),
            pods: vec![],
            pod: tolerating(vec![Toleration { operator: TolerationOperator::Exists, ..Toleration::default() }]),
            expect: vec![OK, OK, OK, OK],
        },
        FilterCase {
            name: "tolerating the unschedulable taint",
            nodes: nodes.clone(),
            pods: vec![],
            pod: tolerating(vec![Toleration {
                key: Some(UNSCHEDULABLE_TAINT_KEY.into()),
                operator: TolerationOperator::Exists,
                value: Some(String::new()),
                effect: Some(TaintEffect::NoSchedule),
                toleration_seconds: None,
            }]),
            expect: vec![Err(UntoleratedTaint), Err(UntoleratedTaint), OK, OK],
        },
    ]);
}

#[test]
fn inter_pod_affinity_filters() {
    let mut nokey = node("n4", "a");
    nokey.labels.remove(ZONE);
    let nodes = vec![node("n1", "a"), node("n2", "a"), node("n3", "b"), nokey];
    let anti = |key: &str| {
        let mut p = pod("p", "web");
        p.pod_anti_affinity.required = vec![term("db", key)];
        p
    };
    let affine = |key: &str, app: &str| {
        let mut p = pod("p", app);
        p.pod_affinity.required = vec![term("db", key)];
        p
    };
    let mut other_ns_db = pod("db0", "db");
    other_ns_db.namespace = "other".into();
    let mut carrier = pod("c", "cache");
    carrier.pod_anti_affinity.required = vec![term("web", ZONE)];
    let mut two_terms = pod("p", "web");
    two_terms.pod_affinity.required = vec![
        term("db", ZONE),
        AffinityTerm { selector: Some(eq("tier", "cache")), namespaces: vec![], topology_key: HOST.into() },
    ];
    let mut both = pod("both", "db");
    both.labels.insert("tier".into(), "cache".into());
    let mut c0 = pod("c0", "cache");
    c0.labels.insert("tier".into(), "cache".into());
    let mut anti_other_ns = anti(HOST);
    anti_other_ns.pod_anti_affinity.required[0].namespaces = vec!["other".into()];
    run_filter_cases(vec![
        FilterCase {
            name: "anti-affinity on hostname",
            nodes: nodes.clone(),
            pods: vec![bound(pod("db0", "db"), "n1")],
            pod: anti(HOST),
            expect: vec![Err(PodAntiAffinity), OK, OK, OK],
        },
        FilterCase {
            name: "anti-affinity on zone; a node without the key is not in any zone",
            nodes: nodes.clone(),
            pods: vec![bound(pod("db0", "db"), "n1")],
            pod: anti(ZONE),
            expect: vec![Err(PodAntiAffinity), Err(PodAntiAffinity), OK, OK],
        },
        FilterCase {
            name: "anti-affinity only sees the term's namespaces",
            nodes: nodes.clone(),
            pods: vec![bound(other_ns_db.clone(), "n1")],
            pod: anti(HOST),
            expect: vec![OK, OK, OK, OK],
        },
        FilterCase {
            name: "anti-affinity with explicit namespaces",
            nodes: nodes.clone(),
            pods: vec![bound(other_ns_db, "n1")],
            pod: anti_other_ns,
            expect: vec![Err(PodAntiAffinity), OK, OK, OK],
        },
        FilterCase {
            name: "existing pods' anti-affinity is symmetric",
            nodes: nodes.clone(),
            pods: vec![bound(carrier, "n3")],
            pod: pod("p", "web"),
            expect: vec![OK, OK, Err(ExistingPodsAntiAffinity), OK],
        },
        FilterCase {
            name: "affinity on zone; a node without the key fails",
            nodes: nodes.clone(),
            pods: vec![bound(pod("db0", "db"), "n2")],
            pod: affine(ZONE, "web"),
            expect: vec![OK, OK, Err(PodAffinity), Err(PodAffinity)],
        },
        FilterCase {
            name: "affinity with no matching pod anywhere fails everywhere",
            nodes: nodes.clone(),
            pods: vec![],
            pod: affine(HOST, "web"),
            expect: vec![Err(PodAffinity), Err(PodAffinity), Err(PodAffinity), Err(PodAffinity)],
        },
        FilterCase {
            name: "several terms need one pod matching all of them, not one pod per term",
            nodes: nodes.clone(),
            pods: vec![bound(pod("db0", "db"), "n1"), bound(c0, "n2")],
            pod: two_terms.clone(),
            expect: vec![Err(PodAffinity), Err(PodAffinity), Err(PodAffinity), Err(PodAffinity)],
        },
        FilterCase {
            name: "several terms, each in its own topology",
            nodes: nodes.clone(),
            pods: vec![bound(pod("db0", "db"), "n1"), bound(both, "n3")],
            pod: two_terms,
            expect: vec![Err(PodAffinity), Err(PodAffinity), OK, Err(PodAffinity)],
        },
        FilterCase {
            name: "the first pod of a self-affine group may go anywhere with the key",
            nodes: nodes.clone(),
            pods: vec![],
            pod: affine(ZONE, "db"),
            expect: vec![OK, OK, OK, Err(PodAffinity)],
        },
    ]);
}

#[test]
fn topology_spread_filters() {
    let mut nokey = node("n4", "x");
    nokey.labels.remove(ZONE);
    let nodes = vec![node("n1", "a"), node("n2", "b"), node("n3", "c"), nokey];
    let spreading = |app: &str, skew| {
        let mut p = pod("p", app);
        p.topology_spread_constraints = vec![spread(ZONE, "web", skew, WhenUnsatisfiable::DoNotSchedule)];
        p
    };
    let existing = vec![bound(pod("w1", "web"), "n1"), bound(pod("w2", "web"), "n1"), bound(pod("w3", "web"), "n2")];
    let mut zone_ab = spreading("web", 1);
    zone_ab.node_selector = labels(&[(ZONE, "a")]);
    let ssd = |mut n: NodeInfo| {
        n.labels.insert("disk".into(), "ssd".into());
        n
    };
    let ssd_nodes = vec![ssd(node("n1", "a")), node("n2", "a"), ssd(node("n3", "b"))];
    let mut ssd_pod = spreading("web", 1);
    ssd_pod.node_selector = labels(&[("disk", "ssd")]);
    let mut soft = pod("p", "web");
    soft.topology_spread_constraints = vec![spread(ZONE, "web", 1, WhenUnsatisfiable::ScheduleAnyway)];
    run_filter_cases(vec![
        FilterCase {
            name: "maxSkew 1: counts a=2 b=1 c=0",
            nodes: nodes.clone(),
            pods: existing.clone(),
            pod: spreading("web", 1),
            expect: vec![Err(TopologySpreadSkew), Err(TopologySpreadSkew), OK, Err(TopologySpreadMissingLabel)],
        },
        FilterCase {
            name: "maxSkew 2",
            nodes: nodes.clone(),
            pods: existing.clone(),
            pod: spreading("web", 2),
            expect: vec![Err(TopologySpreadSkew), OK, OK, Err(TopologySpreadMissingLabel)],
        },
        FilterCase {
            name: "a pod not matching its own selector does not add itself",
            nodes: nodes.clone(),
            pods: existing.clone(),
            pod: spreading("api", 1),
            expect: vec![Err(TopologySpreadSkew), OK, OK, Err(TopologySpreadMissingLabel)],
        },
        FilterCase {
            name: "the minimum is over the domains the pod may use",
            nodes: nodes.clone(),
            pods: existing.clone(),
            pod: zone_ab,
            expect: vec![OK, Err(NodeAffinity), Err(NodeAffinity), Err(NodeAffinity)],
        },
        FilterCase {
            name: "only pods on nodes the pod may use are counted",
            nodes: ssd_nodes,
            pods: vec![bound(pod("w1", "web"), "n2"), bound(pod("w2", "web"), "n2")],
            pod: ssd_pod,
            expect: vec![OK, Err(NodeAffinity), OK],
        },
        FilterCase {
            name: "ScheduleAnyway never filters",
            nodes: nodes.clone(),
            pods: existing,
            pod: soft,
            expect: vec![OK, OK, OK, OK],
        },
    ]);
}

/// One score case: the pod must land on `expect` (a clear winner, so no tie-breaking is involved).
struct ScoreCase {
    name: &'static str,
    strategy: ScoringStrategy,
    nodes: Vec<NodeInfo>,
    pods: Vec<BoundPod>,
    pod: PodInfo,
    expect: &'static str,
}

#[test]
fn scores() {
    let mut big = node("big", "a");
    big.allocatable.cpu_millis = 16000;
    big.allocatable.memory_bytes = 32 * GI;
    let mut cpu_heavy = node("cpu-heavy", "a");
    cpu_heavy.allocatable.memory_bytes = 64 * GI;
    let mut preferred = pod("p", "x");
    preferred.node_affinity.preferred_during_scheduling_ignored_during_execution = vec![PreferredSchedulingTerm {
        weight: 50,
        preference: expressions(vec![nreq(ZONE, NodeSelectorOperator::In, &["b"])]),
    }];
    let mut likes_db = pod("p", "web");
    likes_db.pod_affinity.preferred = vec![WeightedAffinityTerm { weight: 100, term: term("db", HOST) }];
    let mut avoids_db = pod("p", "web");
    avoids_db.pod_anti_affinity.preferred = vec![WeightedAffinityTerm { weight: 100, term: term("db", ZONE) }];
    let mut attracts_web = pod("db", "db");
    attracts_web.pod_affinity.preferred = vec![WeightedAffinityTerm { weight: 100, term: term("web", ZONE) }];
    let mut repels_web = pod("db", "db");
    repels_web.pod_anti_affinity.preferred = vec![WeightedAffinityTerm { weight: 100, term: term("web", ZONE) }];
    let mut soft_spread = pod("p", "web");
    soft_spread.topology_spread_constraints = vec![spread(ZONE, "web", 1, WhenUnsatisfiable::ScheduleAnyway)];
    let mut tainted = node("n1", "a");
    tainted.taints = vec![node_taint("k", "v", TaintEffect::PreferNoSchedule)];
    let cases = vec![
        ScoreCase {
            name: "LeastAllocated prefers the emptiest node",
            strategy: ScoringStrategy::LeastAllocated,
            nodes: vec![node("n1", "a"), big.clone()],
            pods: vec![],
            pod: pod("p", "x"),
            expect: "big",
        },
        ScoreCase {
            name: "MostAllocated packs",
            strategy: ScoringStrategy::MostAllocated,
            nodes: vec![node("n1", "a"), big.clone()],
            pods: vec![],
            pod: pod("p", "x"),
            expect: "n1",
        },
        ScoreCase {
            name: "Balanced keeps cpu and memory shares close",
            strategy: ScoringStrategy::Balanced,
            nodes: vec![cpu_heavy, node("n1", "a")],
            pods: vec![],
            pod: PodInfo { requests: Requests { cpu_millis: 2000, memory_bytes: 4 * GI }, ..pod("p", "x") },
            expect: "n1",
        },
        ScoreCase {
            name: "preferred node affinity",
            strategy: ScoringStrategy::LeastAllocated,
            nodes: three_zones(),
            pods: vec![],
            pod: preferred,
            expect: "n2",
        },
        ScoreCase {
            name: "preferred pod affinity",
            strategy: ScoringStrategy::LeastAllocated,
            nodes: three_zones(),
            pods: vec![bound(pod("db", "db"), "n3")],
            pod: likes_db,
            expect: "n3",
        },
        ScoreCase {
            name: "preferred pod anti-affinity",
            strategy: ScoringStrategy::MostAllocated,
            nodes: vec![node("n1", "a"), node("n2", "a"), node("n3", "b")],
            pods: vec![bound(pod("db", "db"), "n1"), bound(pod("filler", "x"), "n2")],
            pod: avoids_db,
            expect: "n3",
        },
        ScoreCase {
            name: "an existing pod's preferred affinity attracts pods it matches",
            strategy: ScoringStrategy::LeastAllocated,
            nodes: three_zones(),
            pods: vec![bound(attracts_web, "n1")],
            pod: pod("p", "web"),
            expect: "n1",
        },
        ScoreCase {
            name: "an existing pod's preferred anti-affinity repels pods it matches",
            strategy: ScoringStrategy::MostAllocated,
            nodes: vec![node("n1", "a"), node("n2", "b")],
            pods: vec![bound(repels_web, "n1")],
            pod: pod("p", "web"),
            expect: "n2",
        },
        ScoreCase {
            name: "ScheduleAnyway spread prefers the emptiest domain",
            strategy: ScoringStrategy::MostAllocated,
            nodes: three_zones(),
            pods: vec![bound(pod("w1", "web"), "n1"), bound(pod("w2", "web"), "n2"), bound(pod("f", "x"), "n1")],
            pod: soft_spread,
            expect: "n3",
        },
        ScoreCase {
            name: "PreferNoSchedule taints are avoided",
            strategy: ScoringStrategy::LeastAllocated,
            nodes: vec![tainted, node("n2", "a")],
            pods: vec![],
            pod: pod("p", "x"),
            expect: "n2",
        },
    ];
    for c in cases {
        let policy = SchedulingPolicy { strategy: c.strategy, ..SchedulingPolicy::default() };
        let snapshot = ClusterSnapshot { nodes: c.nodes, pods: c.pods, policy };
        for seed in 0..8 {
            let got = schedule_batch(&snapshot, std::slice::from_ref(&c.pod), seed).remove(0).1;
            assert_eq!(got.as_deref().ok(), Some(c.expect), "case {} seed {seed}", c.name);
        }
    }
}

#[test]
fn unschedulable_summary_is_typed_and_readable() {
    let mut nodes = Vec::new();
    let mut pods = Vec::new();
    for i in 0..5 {
        let mut n = node(&format!("n{i}"), "a");
        if i < 3 {
            n.allocatable.memory_bytes = 64 * MI;
        } else {
            pods.push(bound(pod(&format!("db{i}"), "db"), &n.name));
        }
        nodes.push(n);
    }
    let mut p = pod("p", "web");
    p.pod_anti_affinity.required = vec![term("db", HOST)];
    let snapshot = ClusterSnapshot { nodes, pods, policy: SchedulingPolicy::default() };
    let err = schedule_batch(&snapshot, &[p], 3).remove(0).1.unwrap_err();
    assert_eq!(err.count(InsufficientMemory), 3);
    assert_eq!(err.count(PodAntiAffinity), 2);
    assert_eq!(err.to_string(), "0/5 nodes available: 3 insufficient memory, 2 node(s) didn't match pod anti-affinity");
    assert_eq!(err.per_node.len(), 5);
    let empty = ClusterSnapshot::default();
    let err = schedule_batch(&empty, &[pod("p", "x")], 3).remove(0).1.unwrap_err();
    assert_eq!(err.to_string(), "0/0 nodes available");
}

#[test]
fn six_replicas_spread_two_per_zone_and_fourth_anti_affine_replica_stays_pending() {
    let snapshot = ClusterSnapshot { nodes: three_zones(), ..ClusterSnapshot::default() };
    for seed in 0..20 {
        let replicas: Vec<PodInfo> = (0..6)
            .map(|i| {
                let mut p = pod(&format!("web-{i}"), "web");
                p.topology_spread_constraints = vec![spread(ZONE, "web", 1, WhenUnsatisfiable::DoNotSchedule)];
                p
            })
            .collect();
        let placed = schedule_batch(&snapshot, &replicas, seed);
        let mut per_node = std::collections::BTreeMap::new();
        for (_, r) in placed {
            *per_node.entry(r.unwrap().to_string()).or_insert(0) += 1;
        }
        assert_eq!(per_node.values().copied().collect::<Vec<_>>(), vec![2, 2, 2], "seed {seed}");

        let replicas: Vec<PodInfo> = (0..4)
            .map(|i| {
                let mut p = pod(&format!("db-{i}"), "db");
                p.pod_anti_affinity.required = vec![term("db", HOST)];
                p
            })
            .collect();
        let placed = schedule_batch(&snapshot, &replicas, seed);
        let nodes: std::collections::BTreeSet<_> =
            placed[..3].iter().map(|(_, r)| r.as_ref().unwrap().to_string()).collect();
        assert_eq!(nodes.len(), 3);
        let err = placed[3].1.as_ref().unwrap_err();
        assert_eq!(err.to_string(), "0/3 nodes available: 3 node(s) didn't match pod anti-affinity");
    }
}

#[test]
fn bounded_sample_still_finds_the_only_feasible_node() {
    let nodes: Vec<NodeInfo> = (0..1000).map(|i| node(&format!("n{i}"), ["a", "b", "c"][i % 3])).collect();
    let snapshot = ClusterSnapshot { nodes, ..ClusterSnapshot::default() };
    let cycle = Cycle::new(&snapshot, 0);
    assert_eq!(cycle.num_feasible_nodes_to_find(), 420);
    let mut p = pod("p", "x");
    p.node_selector = labels(&[(HOST, "n777")]);
    for seed in 0..5 {
        let placed = schedule_batch(&snapshot, std::slice::from_ref(&p), seed).remove(0).1;
        assert_eq!(placed.as_deref().ok(), Some("n777"));
    }
    let small = ClusterSnapshot { nodes: three_zones(), ..ClusterSnapshot::default() };
    assert_eq!(Cycle::new(&small, 0).num_feasible_nodes_to_find(), 3);
    let big: Vec<NodeInfo> = (0..10_000).map(|i| node(&format!("n{i}"), "a")).collect();
    let big = ClusterSnapshot { nodes: big, ..ClusterSnapshot::default() };
    assert_eq!(Cycle::new(&big, 0).num_feasible_nodes_to_find(), 500);
}

#[test]
fn the_rotating_start_spreads_equal_pods() {
    let nodes: Vec<NodeInfo> = (0..300).map(|i| node(&format!("n{i}"), "a")).collect();
    let policy = SchedulingPolicy { strategy: ScoringStrategy::MostAllocated, ..SchedulingPolicy::default() };
    let snapshot = ClusterSnapshot { nodes, pods: vec![], policy };
    let mut cycle = Cycle::new(&snapshot, 9);
    // Bin-packing with no scoring differences would pile onto one node; capacity 110 pods bounds it.
    for i in 0..200 {
        cycle.schedule(&pod(&format!("p{i}"), "x")).unwrap();
    }
}

// ---- property tests against a naive reference ----------------------------------------------------------

#[derive(Debug, Clone)]
struct Scenario {
    nodes: Vec<NodeInfo>,
    first: Vec<PodInfo>,
    second: Vec<PodInfo>,
    strategy: ScoringStrategy,
}

fn arb_node(i: usize) -> impl Strategy<Value = NodeInfo> {
    (0..4u8, 500..4000u64, 1..8u64, 1..6u32, prop::bool::weighted(0.1), prop::option::weighted(0.15, 0..3u8)).prop_map(
        move |(zone, cpu, mem_gi, pods, cordoned, taint)| {
            let name = format!("n{i}");
            let mut labels = labels(&[(HOST, &name)]);
            if zone < 3 {
                labels.insert(ZONE.into(), ["a", "b", "c"][zone as usize].into());
            }
            let taints = taint
                .map(|e| {
                    let effect =
                        [TaintEffect::NoSchedule, TaintEffect::NoExecute, TaintEffect::PreferNoSchedule][e as usize];
                    vec![node_taint("dedicated", "x", effect)]
                })
                .unwrap_or_default();
            NodeInfo {
                name,
                labels,
                allocatable: Allocatable { cpu_millis: cpu, memory_bytes: mem_gi * GI, pods },
                taints,
                unschedulable: cordoned,
            }
        },
    )
}

fn arb_pod(prefix: &'static str, i: usize) -> impl Strategy<Value = PodInfo> {
    (
        0..3u8,
        0..1500u64,
        0..3u64,
        prop::option::weighted(0.3, (0..3u8, prop::bool::ANY)),
        prop::option::weighted(0.3, (0..3u8, prop::bool::ANY, 1..3u32)),
        prop::option::weighted(0.15, 0..3u8),
        prop::bool::weighted(0.3),
        prop::bool::weighted(0.2),
    )
        .prop_map(move |(app, cpu, mem_gi, anti, spr, zone_sel, tolerate, other_ns)| {
            let apps = ["a", "b", "c"];
            let mut p = pod(&format!("{prefix}{i}"), apps[app as usize]);
            if other_ns {
                p.namespace = "other".into();
            }
            p.requests = Requests { cpu_millis: cpu, memory_bytes: mem_gi * GI / 2 };
            if let Some((target, by_zone)) = anti {
                p.pod_anti_affinity.required = vec![term(apps[target as usize], if by_zone { ZONE } else { HOST })];
            }
            if let Some((target, by_zone, skew)) = spr {
                p.topology_spread_constraints = vec![spread(
                    if by_zone { ZONE } else { HOST },
                    apps[target as usize],
                    skew,
                    WhenUnsatisfiable::DoNotSchedule,
                )];
            }
            if let Some(z) = zone_sel {
                p.node_selector = labels(&[(ZONE, ["a", "b", "c"][z as usize])]);
            }
            if tolerate {
                p.tolerations = vec![Toleration {
                    key: Some("dedicated".into()),
                    operator: TolerationOperator::Exists,
                    ..Toleration::default()
                }];
            }
            p
        })
}

fn arb_scenario() -> impl Strategy<Value = Scenario> {
    (1..10usize, 0..15usize, 1..25usize, 0..3u8).prop_flat_map(|(n, f, s, strat)| {
        let nodes: Vec<_> = (0..n).map(arb_node).collect();
        let first: Vec<_> = (0..f).map(|i| arb_pod("f", i)).collect();
        let second: Vec<_> = (0..s).map(|i| arb_pod("s", i)).collect();
        let strategy = [ScoringStrategy::LeastAllocated, ScoringStrategy::MostAllocated, ScoringStrategy::Balanced]
            [strat as usize];
        (nodes, first, second).prop_map(move |(nodes, first, second)| Scenario { nodes, first, second, strategy })
    })
}

fn term_matches_naive(t: &AffinityTerm, owner_ns: &str, p: &PodInfo) -> bool {
    let in_ns = if t.namespaces.is_empty() { p.namespace == owner_ns } else { t.namespaces.contains(&p.namespace) };
    in_ns && t.selector.as_ref().is_some_and(|s| s.matches(&p.labels))
}

/// A deliberately simple, string-based reimplementation of the filters the generators exercise.
fn naive_feasible(nodes: &[NodeInfo], placed: &[(PodInfo, usize)], p: &PodInfo, n: usize) -> bool {
    let node = &nodes[n];
    let domain = |i: usize, key: &str| nodes[i].labels.get(key).cloned();
    let key = |t: &Toleration| t.key.clone().unwrap_or_default();
    if node.unschedulable && !p.tolerations.iter().any(|t| key(t).is_empty() || key(t) == UNSCHEDULABLE_TAINT_KEY) {
        return false;
    }
    if !p.node_selector.iter().all(|(k, v)| node.labels.get(k) == Some(v)) {
        return false;
    }
    if node
        .taints
        .iter()
        .filter(|t| t.effect != TaintEffect::PreferNoSchedule)
        .any(|t| !p.tolerations.iter().any(|tol| tol.tolerates(t)))
    {
        return false;
    }
    let on: Vec<&PodInfo> = placed.iter().filter(|(_, m)| *m == n).map(|(q, _)| q).collect();
    let cpu: u64 = on.iter().map(|q| q.requests.cpu_millis).sum();
    let mem: u64 = on.iter().map(|q| q.requests.memory_bytes).sum();
    if on.len() as u32 + 1 > node.allocatable.pods
        || (p.requests.cpu_millis > 0 && cpu + p.requests.cpu_millis > node.allocatable.cpu_millis)
        || (p.requests.memory_bytes > 0 && mem + p.requests.memory_bytes > node.allocatable.memory_bytes)
    {
        return false;
    }
    for (q, m) in placed {
        for t in &q.pod_anti_affinity.required {
            if term_matches_naive(t, &q.namespace, p)
                && domain(*m, &t.topology_key).is_some()
                && domain(*m, &t.topology_key) == domain(n, &t.topology_key)
            {
                return false;
            }
        }
        for t in &p.pod_anti_affinity.required {
            if term_matches_naive(t, &p.namespace, q)
                && domain(n, &t.topology_key).is_some()
                && domain(*m, &t.topology_key) == domain(n, &t.topology_key)
            {
                return false;
            }
        }
    }
    for c in &p.topology_spread_constraints {
        let Some(d) = domain(n, &c.topology_key) else {
            return false;
        };
        let sel = c.selector.as_ref().expect("generated with a selector");
        let eligible_node = |i: usize| {
            p.node_selector.iter().all(|(k, v)| nodes[i].labels.get(k) == Some(v))
                && p.topology_spread_constraints.iter().all(|c| domain(i, &c.topology_key).is_some())
        };
        let count = |dom: &str| {
            placed
                .iter()
                .filter(|(q, m)| {
                    eligible_node(*m)
                        && q.namespace == p.namespace
                        && sel.matches(&q.labels)
                        && domain(*m, &c.topology_key).as_deref() == Some(dom)
                })
                .count() as i64
        };
        let eligible = (0..nodes.len()).filter(|&i| {
            p.node_selector.iter().all(|(k, v)| nodes[i].labels.get(k) == Some(v))
                && p.topology_spread_constraints.iter().all(|c| domain(i, &c.topology_key).is_some())
        });
        let min = eligible.filter_map(|i| domain(i, &c.topology_key)).map(|d| count(&d)).min().unwrap_or(0);
        let self_match = sel.matches(&p.labels) as i64;
        if count(&d) + self_match - min > c.max_skew as i64 {
            return false;
        }
    }
    true
}

fn check_batch(
    nodes: &[NodeInfo],
    placed: &mut Vec<(PodInfo, usize)>,
    pods: &[PodInfo],
    results: &[(PodKey, Result<NodeName, Unschedulable>)],
) {
    for (p, (key, r)) in pods.iter().zip(results) {
        assert_eq!(key, &p.key());
        match r {
            Ok(name) => {
                let n = nodes.iter().position(|x| *x.name == **name).expect("placed on a known node");
                assert!(naive_feasible(nodes, placed, p, n), "{key} placed on infeasible {name}");
                placed.push((p.clone(), n));
            }
            Err(u) => {
                let any = (0..nodes.len()).find(|&n| naive_feasible(nodes, placed, p, n));
                assert_eq!(any, None, "{key} declared unschedulable ({u}) but node {any:?} fits");
                assert_eq!(u.total_nodes, nodes.len());
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn placements_respect_every_required_constraint(
        sc in arb_scenario(),
        seed in any::<u64>(),
        sample in prop::option::of((1..50u32, 1..4usize)),
    ) {
        // With `sample`, bounded sampling is active even on these small clusters.
        let mut policy = SchedulingPolicy { strategy: sc.strategy, ..SchedulingPolicy::default() };
        if let Some((pct, min)) = sample {
            policy.percentage_of_nodes_to_score = Some(pct);
            policy.min_feasible_nodes_to_find = min;
        }
        let mut snapshot = ClusterSnapshot { nodes: sc.nodes.clone(), pods: vec![], policy };
        let mut placed = Vec::new();
        let first = schedule_batch(&snapshot, &sc.first, seed);
        check_batch(&sc.nodes, &mut placed, &sc.first, &first);
        // The second batch starts from a snapshot holding the first batch as bound pods.
        snapshot.pods = placed.iter().map(|(p, n)| bound(p.clone(), &sc.nodes[*n].name)).collect();
        let second = schedule_batch(&snapshot, &sc.second, seed ^ 0x5555);
        check_batch(&sc.nodes, &mut placed, &sc.second, &second);

        // No node is overcommitted.
        for (i, node) in sc.nodes.iter().enumerate() {
            let on: Vec<_> = placed.iter().filter(|(_, m)| *m == i).collect();
            prop_assert!(on.len() as u32 <= node.allocatable.pods);
            prop_assert!(on.iter().map(|(p, _)| p.requests.cpu_millis).sum::<u64>() <= node.allocatable.cpu_millis);
            prop_assert!(on.iter().map(|(p, _)| p.requests.memory_bytes).sum::<u64>() <= node.allocatable.memory_bytes);
        }
        // No required anti-affinity holds between any two placed pods, in either direction.
        for (a, (p, m)) in placed.iter().enumerate() {
            for t in &p.pod_anti_affinity.required {
                let Some(d) = sc.nodes[*m].labels.get(&t.topology_key) else { continue };
                for (b, (q, k)) in placed.iter().enumerate() {
                    prop_assert!(
                        a == b || !term_matches_naive(t, &p.namespace, q)
                            || sc.nodes[*k].labels.get(&t.topology_key) != Some(d),
                        "{} and {} share {}={}", p.name, q.name, t.topology_key, d
                    );
                }
            }
        }
    }

    #[test]
    fn the_same_seed_gives_the_same_placements(sc in arb_scenario(), seed in any::<u64>()) {
        let policy = SchedulingPolicy { strategy: sc.strategy, ..SchedulingPolicy::default() };
        let snapshot = ClusterSnapshot { nodes: sc.nodes.clone(), pods: vec![], policy };
        let pods: Vec<PodInfo> = sc.first.iter().chain(&sc.second).cloned().collect();
        prop_assert_eq!(schedule_batch(&snapshot, &pods, seed), schedule_batch(&snapshot, &pods, seed));
    }
}

// ---- optimistic binding -----------------------------------------------------------------------------------

fn small_cluster(pods_per_node: u32) -> MemoryCluster {
    let nodes = three_zones()
        .into_iter()
        .map(|mut n| {
            n.allocatable.pods = pods_per_node;
            n
        })
        .collect();
    MemoryCluster::new(nodes, SchedulingPolicy::default())
}

fn assert_not_overcommitted(c: &MemoryCluster) {
    let usage = c.usage();
    for n in c.nodes() {
        let u = usage[&n.name];
        assert!(u.pods <= n.allocatable.pods && u.cpu_millis <= n.allocatable.cpu_millis, "{}: {u:?}", n.name);
        assert!(u.memory_bytes <= n.allocatable.memory_bytes);
    }
}

#[tokio::test]
async fn runner_retries_injected_conflicts_on_a_fresh_snapshot() {
    let cluster = small_cluster(110);
    for i in 0..10 {
        cluster.submit(pod(&format!("p{i}"), "x"));
    }
    cluster.inject_pod_conflicts(3);
    let runner = Runner::new(&cluster, &cluster);
    let report = runner.run_once(42).await.unwrap();
    assert_eq!(report.conflicts, 3);
    assert_eq!(report.bound.len(), 10);
    assert!(report.rounds >= 2);
    assert!(report.gave_up.is_empty() && report.unschedulable.is_empty());
    assert!(cluster.bindings().values().all(Option::is_some));
    // Nothing is left to do.
    let again = runner.run_once(43).await.unwrap();
    assert_eq!(again.rounds, 0);
}

#[tokio::test]
async fn runner_gives_up_after_its_round_limit() {
    let cluster = small_cluster(110);
    cluster.submit(pod("p", "x"));
    cluster.inject_pod_conflicts(100);
    let mut runner = Runner::new(&cluster, &cluster);
    runner.max_rounds = 3;
    let report = runner.run_once(1).await.unwrap();
    assert_eq!(report.conflicts, 3);
    assert_eq!(report.gave_up, vec![pod("p", "x").key()]);
}

#[tokio::test]
async fn concurrent_schedulers_never_overcommit() {
    // Two schedulers place disjoint pods against the same stale snapshot; 2 pods fit per node.
    let cluster = small_cluster(2);
    let pods: Vec<PodInfo> = (0..6).map(|i| pod(&format!("p{i}"), "x")).collect();
    for p in &pods {
        cluster.submit(p.clone());
    }
    let observed = cluster.observe().await.unwrap();
    let revision = |k: &PodKey| observed.pending.iter().find(|p| p.pod.key() == *k).unwrap().revision;
    let mut snapshot = observed.snapshot.clone();
    snapshot.policy.strategy = ScoringStrategy::MostAllocated;
    let a = schedule_batch(&snapshot, &pods[..3], 1);
    let b = schedule_batch(&snapshot, &pods[3..], 1);
    let mut full = 0;
    for (key, node) in a.into_iter().chain(b) {
        match cluster.bind(&key, &node.unwrap(), revision(&key)).await {
            Ok(()) => {}
            Err(BindError::NodeFull { reason, .. }) => {
                assert_eq!(reason, TooManyPods);
                full += 1;
            }
            Err(e) => panic!("unexpected {e}"),
        }
        assert_not_overcommitted(&cluster);
    }
    assert!(full > 0, "the same stale snapshot and seed must collide");
    // A later round places the refused pods on what is really free.
    let report = Runner::new(&cluster, &cluster).run_once(5).await.unwrap();
    assert_eq!(report.bound.len(), full);
    assert_not_overcommitted(&cluster);
    assert!(cluster.bindings().values().all(Option::is_some));
    // A bind with a stale revision, or of an already bound pod, is refused.
    let key = pods[0].key();
    assert!(matches!(cluster.bind(&key, "n1", 0).await, Err(BindError::PodChanged { .. })));
}

#[tokio::test]
async fn a_pod_that_fits_nowhere_stays_pending_with_its_reason() {
    let cluster = small_cluster(1);
    for i in 0..4 {
        cluster.submit(pod(&format!("p{i}"), "x"));
    }
    let report = Runner::new(&cluster, &cluster).run_once(3).await.unwrap();
    assert_eq!(report.bound.len(), 3);
    assert_eq!(report.unschedulable.len(), 1);
    assert_eq!(report.unschedulable[0].1.to_string(), "0/3 nodes available: 3 too many pods");
    assert_eq!(cluster.bindings().values().filter(|n| n.is_none()).count(), 1);
    assert_not_overcommitted(&cluster);
}
