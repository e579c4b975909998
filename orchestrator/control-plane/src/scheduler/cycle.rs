//! One scheduling cycle: the per-cycle state built from a [`ClusterSnapshot`] and the filter → score → select
//! pipeline run for each pod against it.
//!
//! Per-cycle state is computed once and then updated incrementally as pods are placed: node usage, an index of
//! pods by label, and for every distinct pod-affinity / anti-affinity / spread *term* (selector, namespaces,
//! topology key) the number of matching pods per topology domain, plus the number of pods *carrying* each
//! required anti-affinity term per domain (for the symmetric check). A new term is counted once through the
//! label index; placing a pod touches only the terms its labels can match.
//!
//! Not here: IO, binding, preemption, `namespaceSelector`, `matchFields`, `minDomains`, per-term
//! `matchLabelKeys`. Known simplifications are listed in the module docs of `scheduler`.

use super::intern::{
    all_match, compile_node_requirements, compile_selector, FastMap, ILabels, IOp, IReq, Interner, Sym,
};
use super::rng::SeededRng;
use super::types::*;
use super::verdict::{RejectReason, Unschedulable};
use model::{TaintEffect, TolerationOperator, WhenUnsatisfiable};
use std::sync::Arc;

const NONE: u32 = u32::MAX;

/// What an existing pod's *required* affinity term adds to the score of nodes near it for pods it matches
/// (kube-scheduler's `hardPodAffinityWeight` default).
const HARD_POD_AFFINITY_WEIGHT: i64 = 1;

/// The cpu and memory Kubernetes assumes for scoring when a pod requests none (so that zero-request pods
/// still spread): 100 millicores, 200 MiB.
pub const DEFAULT_SCORE_CPU_MILLIS: u64 = 100;
pub const DEFAULT_SCORE_MEMORY_BYTES: u64 = 200 * 1024 * 1024;

/// The taint the unschedulable filter pretends a cordoned node has.
pub const UNSCHEDULABLE_TAINT_KEY: &str = "node.kubernetes.io/unschedulable";

/// What is already requested on a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    pub cpu_millis: u64,
    pub memory_bytes: u64,
    pub pods: u32,
}

/// The resource filter, shared with bind-time re-validation so both sides agree on "fits".
/// As in Kubernetes, a zero request never fails on that resource; the pod count always counts.
pub fn fits(alloc: &Allocatable, used: &Usage, req: &Requests) -> Result<(), RejectReason> {
    if used.pods.saturating_add(1) > alloc.pods {
        return Err(RejectReason::TooManyPods);
    }
    if req.cpu_millis > 0 && used.cpu_millis.saturating_add(req.cpu_millis) > alloc.cpu_millis {
        return Err(RejectReason::InsufficientCpu);
    }
    if req.memory_bytes > 0 && used.memory_bytes.saturating_add(req.memory_bytes) > alloc.memory_bytes {
        return Err(RejectReason::InsufficientMemory);
    }
    Ok(())
}

/// A taint with its key and value interned (an absent value is the empty string).
struct ITaint {
    key: Sym,
    value: Sym,
    effect: TaintEffect,
}

/// A toleration with its key and value interned; `tolerates` is `model::Toleration::tolerates` on symbols.
struct ITol {
    key: Option<Sym>,
    exists: bool,
    value: Sym,
    effect: Option<TaintEffect>,
}

impl ITol {
    fn tolerates(&self, t: &ITaint) -> bool {
        if self.effect.is_some_and(|e| e != t.effect) {
            return false;
        }
        match self.key {
            Some(k) if k != t.key => false,
            Some(_) => self.exists || self.value == t.value,
            None => self.exists,
        }
    }
}

struct NodeRec {
    name: Arc<str>,
    labels: ILabels,
    taints: Box<[ITaint]>,
    has_hard_taints: bool,
    has_soft_taints: bool,
    unschedulable: bool,
    alloc: Allocatable,
    used: Usage,
    /// Usage with Kubernetes' non-zero defaults, for scoring only.
    score_cpu: u64,
    score_mem: u64,
}

struct Topology {
    /// Domain index of every node, `NONE` when the node lacks the key.
    node_domain: Vec<u32>,
    domains: u32,
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct TermKey {
    /// `None`: a nil selector, which matches nothing.
    sel: Option<Box<[IReq]>>,
    /// Sorted; already resolved (an empty list became the owner's namespace).
    ns: Box<[Sym]>,
    topo_key: Sym,
}

struct Term {
    key: TermKey,
    topo: usize,
    /// Matching pods per domain.
    matching: Vec<u32>,
    total: u64,
    /// Pods carrying this term as a required anti-affinity, per domain (empty until the first carrier).
    carriers: Vec<u32>,
    carriers_total: u64,
    /// Score weight carried by pods holding this term, per domain: +1 per required affinity (Kubernetes'
    /// `hardPodAffinityWeight`), +w per preferred affinity, -w per preferred anti-affinity. Empty until used.
    weighted: Vec<i64>,
}

fn term_matches(key: &TermKey, ns: Sym, labels: &ILabels, interner: &Interner) -> bool {
    match &key.sel {
        None => false,
        Some(sel) => key.ns.contains(&ns) && all_match(sel, labels, interner),
    }
}

/// The `(key, value)` pairs a matching pod must carry one of, when the selector has an `In` requirement.
fn anchors(sel: &[IReq]) -> Option<Vec<(Sym, Sym)>> {
    sel.iter()
        .filter(|r| r.op == IOp::In)
        .min_by_key(|r| r.values.len())
        .map(|r| r.values.iter().map(|&v| (r.key, v)).collect())
}

#[derive(Default)]
struct TermIndex {
    anchored: FastMap<(Sym, Sym), Vec<u32>>,
    unanchored: Vec<u32>,
}

impl TermIndex {
    fn insert(&mut self, id: u32, key: &TermKey) {
        let Some(sel) = &key.sel else { return };
        match anchors(sel) {
            Some(pairs) => {
                for p in pairs {
                    self.anchored.entry(p).or_default().push(id);
                }
            }
            None => self.unanchored.push(id),
        }
    }

    /// Every term that may match a pod with these labels (a superset; callers check the term).
    fn candidates<'a>(&'a self, labels: &'a ILabels) -> impl Iterator<Item = u32> + 'a {
        labels
            .iter()
            .filter_map(|kv| self.anchored.get(&kv))
            .flat_map(|v| v.iter().copied())
            .chain(self.unanchored.iter().copied())
    }
}

struct PodRec {
    ns: Sym,
    labels: ILabels,
    node: u32,
}

struct HardSpread {
    term: u32,
    max_skew: u32,
    self_match: u32,
    min: u32,
    /// Per-domain counts restricted to the nodes the pod may use, when that differs from the term's
    /// cluster-wide counts (the pod has a node selector/affinity, or constraints on several keys).
    counts: Option<Vec<u32>>,
}

struct SoftSpread {
    term: u32,
    weight: f64,
}

/// A pod compiled against the cycle: interned, its terms registered, its per-cycle facts precomputed
/// (kube-scheduler's PreFilter).
struct PodCtx {
    ns: Sym,
    labels: ILabels,
    req: Requests,
    score_cpu: u64,
    score_mem: u64,
    node_selector: Box<[(Sym, Sym)]>,
    required_node: Option<Box<[Box<[IReq]>]>>,
    preferred_node: Box<[(i64, Box<[IReq]>)]>,
    has_node_affinity: bool,
    tolerations: Box<[ITol]>,
    tolerates_unschedulable: bool,
    existing_anti: Vec<u32>,
    anti: Vec<u32>,
    affinity: Vec<u32>,
    affinity_bypass: bool,
    /// For several required affinity terms: per term, per domain, the pods matching every term.
    affinity_counts: Option<Vec<Vec<u32>>>,
    spread_hard: Vec<HardSpread>,
    spread_soft: Vec<SoftSpread>,
    preferred_pod: Vec<(u32, i64)>,
    /// Terms carried by placed pods with a score weight that this pod matches (symmetric inter-pod scoring).
    existing_weighted: Vec<u32>,
}

/// The state of one scheduling cycle over a snapshot. [`Cycle::schedule`] places one pod and records it, so
/// later pods in the same cycle see it.
pub struct Cycle {
    interner: Interner,
    policy: SchedulingPolicy,
    nodes: Vec<NodeRec>,
    topologies: Vec<Topology>,
    topo_of: FastMap<Sym, usize>,
    terms: Vec<Term>,
    term_of: FastMap<TermKey, u32>,
    match_index: TermIndex,
    carrier_index: TermIndex,
    weighted_index: TermIndex,
    pods: Vec<PodRec>,
    pods_by_label: FastMap<(Sym, Sym), Vec<u32>>,
    next_start: usize,
    rng: SeededRng,
    /// The taint a cordoned node is treated as having.
    unschedulable_taint: ITaint,
    feasible: Vec<u32>,
    totals: Vec<i64>,
    raw: Vec<f64>,
}

impl Cycle {
    /// Builds the per-cycle state. Bound pods on nodes missing from the snapshot are ignored.
    pub fn new(snapshot: &ClusterSnapshot, seed: u64) -> Self {
        let mut interner = Interner::default();
        let mut name_to_idx: FastMap<&str, u32> = FastMap::default();
        let nodes: Vec<NodeRec> = snapshot
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| {
                name_to_idx.insert(n.name.as_str(), i as u32);
                let taints: Box<[ITaint]> = n
                    .taints
                    .iter()
                    .map(|t| ITaint {
                        key: interner.intern(&t.key),
                        value: interner.intern(t.value.as_deref().unwrap_or("")),
                        effect: t.effect,
                    })
                    .collect();
                NodeRec {
                    name: Arc::from(n.name.as_str()),
                    labels: interner.labels(&n.labels),
                    has_hard_taints: taints.iter().any(|t| t.effect != TaintEffect::PreferNoSchedule),
                    has_soft_taints: taints.iter().any(|t| t.effect == TaintEffect::PreferNoSchedule),
                    taints,
                    unschedulable: n.unschedulable,
                    alloc: n.allocatable,
                    used: Usage::default(),
                    score_cpu: 0,
                    score_mem: 0,
                }
            })
            .collect();
        let unschedulable_taint = ITaint {
            key: interner.intern(UNSCHEDULABLE_TAINT_KEY),
            value: interner.intern(""),
            effect: TaintEffect::NoSchedule,
        };
        let mut rng = SeededRng::new(seed);
        let next_start = if nodes.is_empty() { 0 } else { rng.below(nodes.len() as u64) as usize };
        let mut cycle = Cycle {
            interner,
            policy: snapshot.policy,
            nodes,
            topologies: Vec::new(),
            topo_of: FastMap::default(),
            terms: Vec::new(),
            term_of: FastMap::default(),
            match_index: TermIndex::default(),
            carrier_index: TermIndex::default(),
            weighted_index: TermIndex::default(),
            pods: Vec::new(),
            pods_by_label: FastMap::default(),
            next_start,
            rng,
            unschedulable_taint,
            feasible: Vec::new(),
            totals: Vec::new(),
            raw: Vec::new(),
        };
        // Two passes: every pod's labels first, then the anti-affinity terms they carry, so that each term
        // is counted over all bound pods when it is registered.
        let mut bound = Vec::with_capacity(snapshot.pods.len());
        for bp in &snapshot.pods {
            let Some(&n) = name_to_idx.get(bp.node.as_str()) else {
                continue;
            };
            let p = &bp.pod;
            let ns = cycle.interner.intern(&p.namespace);
            let labels = cycle.interner.labels(&p.labels);
            let node = &mut cycle.nodes[n as usize];
            node.used.cpu_millis += p.requests.cpu_millis;
            node.used.memory_bytes += p.requests.memory_bytes;
            node.used.pods += 1;
            let (c, m) = score_requests(&p.requests);
            node.score_cpu += c;
            node.score_mem += m;
            cycle.add_pod(ns, labels, n);
            bound.push((p, ns, n));
        }
        for (p, ns, n) in bound {
            for t in &p.pod_anti_affinity.required {
                let id = cycle.affinity_term(t, ns);
                cycle.add_carrier(id, n);
            }
            for t in &p.pod_affinity.required {
                let id = cycle.affinity_term(t, ns);
                cycle.add_weighted_carrier(id, n, HARD_POD_AFFINITY_WEIGHT);
            }
            for (sign, list) in [(1i64, &p.pod_affinity.preferred), (-1, &p.pod_anti_affinity.preferred)] {
                for w in list {
                    let id = cycle.affinity_term(&w.term, ns);
                    cycle.add_weighted_carrier(id, n, sign * w.weight as i64);
                }
            }
        }
        cycle
    }

    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// How many feasible nodes are looked for before scoring (kube-scheduler's `numFeasibleNodesToFind`).
    pub fn num_feasible_nodes_to_find(&self) -> usize {
        let n = self.nodes.len();
        let min = self.policy.min_feasible_nodes_to_find.max(1);
        if n <= min {
            return n;
        }
        let pct = match self.policy.percentage_of_nodes_to_score {
            Some(p) => p.clamp(1, 100) as usize,
            None => 50usize.saturating_sub(n / 125).max(5),
        };
        (n * pct / 100).max(min).min(n)
    }

    /// Places one pod: filters nodes from a rotating start until enough are feasible (all nodes when none
    /// is), scores that sample, picks the best (ties by the seeded RNG) and records the placement.
    pub fn schedule(&mut self, pod: &PodInfo) -> Result<Arc<str>, Unschedulable> {
        let ctx = self.prepare(pod);
        let n = self.nodes.len();
        let want = self.num_feasible_nodes_to_find();
        let mut feasible = std::mem::take(&mut self.feasible);
        feasible.clear();
        let start = self.next_start;
        let mut processed = 0;
        for i in 0..n {
            let mut idx = start + i;
            if idx >= n {
                idx -= n;
            }
            processed += 1;
            if self.filter(&ctx, idx).is_ok() {
                feasible.push(idx as u32);
                if feasible.len() >= want {
                    break;
                }
            }
        }
        if n > 0 {
            self.next_start = (start + processed) % n;
        }
        if feasible.is_empty() {
            self.feasible = feasible;
            // Nothing changed since the scan, so every node fails again; this pass records why.
            let per_node = (0..n)
                .map(|i| {
                    let reason = self.filter(&ctx, i).err().unwrap_or(RejectReason::NodeUnschedulable);
                    (self.nodes[i].name.clone(), reason)
                })
                .collect();
            return Err(Unschedulable::from_per_node(per_node));
        }
        let chosen = self.select(&ctx, &feasible);
        self.feasible = feasible;
        self.commit(ctx, chosen);
        Ok(self.nodes[chosen as usize].name.clone())
    }

    /// Every node's verdict for `pod` against the current state, in snapshot order, without placing it
    /// (what `berth describe pod` shows per node).
    pub fn explain(&mut self, pod: &PodInfo) -> Vec<(Arc<str>, Result<(), RejectReason>)> {
        let ctx = self.prepare(pod);
        (0..self.nodes.len()).map(|i| (self.nodes[i].name.clone(), self.filter(&ctx, i))).collect()
    }

    // ---- per-cycle bookkeeping -------------------------------------------------------------------------

    fn topology(&mut self, key: Sym) -> usize {
        if let Some(&t) = self.topo_of.get(&key) {
            return t;
        }
        let mut domain_of: FastMap<Sym, u32> = FastMap::default();
        let node_domain = self
            .nodes
            .iter()
            .map(|n| match n.labels.get(key) {
                Some(v) => {
                    let next = domain_of.len() as u32;
                    *domain_of.entry(v).or_insert(next)
                }
                None => NONE,
            })
            .collect();
        let id = self.topologies.len();
        self.topologies.push(Topology { node_domain, domains: domain_of.len() as u32 });
        self.topo_of.insert(key, id);
        id
    }

    /// Pods matching `key` per domain of topology `topo`, only on `eligible` nodes when given. Goes through
    /// the label index when the selector has an `In` requirement.
    fn count_matching(&self, key: &TermKey, topo: usize, eligible: Option<&[bool]>) -> (Vec<u32>, u64) {
        let nd = &self.topologies[topo].node_domain;
        let mut matching = vec![0u32; self.topologies[topo].domains as usize];
        let mut total = 0;
        let mut count = |p: &PodRec| {
            if eligible.is_some_and(|e| !e[p.node as usize]) {
                return;
            }
            if term_matches(key, p.ns, &p.labels, &self.interner) {
                let d = nd[p.node as usize];
                if d != NONE {
                    matching[d as usize] += 1;
                    total += 1;
                }
            }
        };
        if let Some(sel) = &key.sel {
            match anchors(sel) {
                Some(pairs) => {
                    for kv in pairs {
                        for &p in self.pods_by_label.get(&kv).map(Vec::as_slice).unwrap_or(&[]) {
                            count(&self.pods[p as usize]);
                        }
                    }
                }
                None => self.pods.iter().for_each(&mut count),
            }
        }
        (matching, total)
    }

    /// For each of `terms`, the pods matching *every* one of them per domain; and whether any such pod was
    /// counted at all.
    fn count_matching_all(&self, terms: &[u32]) -> (Vec<Vec<u32>>, bool) {
        let mut counts: Vec<Vec<u32>> =
            terms.iter().map(|&t| vec![0; self.topologies[self.terms[t as usize].topo].domains as usize]).collect();
        let mut any = false;
        let first = &self.terms[terms[0] as usize].key;
        let mut visit = |p: &PodRec| {
            if !terms.iter().all(|&t| term_matches(&self.terms[t as usize].key, p.ns, &p.labels, &self.interner)) {
                return;
            }
            for (i, &t) in terms.iter().enumerate() {
                let d = self.topologies[self.terms[t as usize].topo].node_domain[p.node as usize];
                if d != NONE {
                    counts[i][d as usize] += 1;
                    any = true;
                }
            }
        };
        if let Some(sel) = &first.sel {
            match anchors(sel) {
                Some(pairs) => {
                    for kv in pairs {
                        for &p in self.pods_by_label.get(&kv).map(Vec::as_slice).unwrap_or(&[]) {
                            visit(&self.pods[p as usize]);
                        }
                    }
                }
                None => self.pods.iter().for_each(&mut visit),
            }
        }
        (counts, any)
    }

    fn term(&mut self, key: TermKey) -> u32 {
        if let Some(&t) = self.term_of.get(&key) {
            return t;
        }
        let topo = self.topology(key.topo_key);
        let (matching, total) = self.count_matching(&key, topo, None);
        let id = self.terms.len() as u32;
        self.match_index.insert(id, &key);
        self.term_of.insert(key.clone(), id);
        self.terms.push(Term {
            key,
            topo,
            matching,
            total,
            carriers: Vec::new(),
            carriers_total: 0,
            weighted: Vec::new(),
        });
        id
    }

    fn affinity_term(&mut self, t: &AffinityTerm, owner_ns: Sym) -> u32 {
        let sel = t.selector.as_ref().map(|s| compile_selector(&mut self.interner, s));
        let mut ns: Vec<Sym> = if t.namespaces.is_empty() {
            vec![owner_ns]
        } else {
            t.namespaces.iter().map(|n| self.interner.intern(n)).collect()
        };
        ns.sort_unstable();
        ns.dedup();
        let topo_key = self.interner.intern(&t.topology_key);
        self.term(TermKey { sel, ns: ns.into_boxed_slice(), topo_key })
    }

    fn add_weighted_carrier(&mut self, term: u32, node: u32, weight: i64) {
        let t = &mut self.terms[term as usize];
        let d = self.topologies[t.topo].node_domain[node as usize];
        if t.weighted.is_empty() {
            t.weighted = vec![0; self.topologies[t.topo].domains as usize];
            self.weighted_index.insert(term, &t.key);
        }
        if d != NONE {
            t.weighted[d as usize] += weight;
        }
    }

    fn add_carrier(&mut self, term: u32, node: u32) {
        let t = &mut self.terms[term as usize];
        let d = self.topologies[t.topo].node_domain[node as usize];
        if t.carriers.is_empty() {
            t.carriers = vec![0; self.topologies[t.topo].domains as usize];
            self.carrier_index.insert(term, &t.key);
        }
        if d != NONE {
            t.carriers[d as usize] += 1;
            t.carriers_total += 1;
        }
    }

    fn add_pod(&mut self, ns: Sym, labels: ILabels, node: u32) {
        let p = self.pods.len() as u32;
        for kv in labels.iter() {
            self.pods_by_label.entry(kv).or_default().push(p);
        }
        for id in self.match_index.candidates(&labels) {
            let t = &mut self.terms[id as usize];
            if term_matches(&t.key, ns, &labels, &self.interner) {
                let d = self.topologies[t.topo].node_domain[node as usize];
                if d != NONE {
                    t.matching[d as usize] += 1;
                    t.total += 1;
                }
            }
        }
        self.pods.push(PodRec { ns, labels, node });
    }

    fn commit(&mut self, ctx: PodCtx, n: u32) {
        let node = &mut self.nodes[n as usize];
        node.used.cpu_millis += ctx.req.cpu_millis;
        node.used.memory_bytes += ctx.req.memory_bytes;
        node.used.pods += 1;
        node.score_cpu += ctx.score_cpu;
        node.score_mem += ctx.score_mem;
        for &t in &ctx.anti {
            self.add_carrier(t, n);
        }
        for &t in &ctx.affinity {
            self.add_weighted_carrier(t, n, HARD_POD_AFFINITY_WEIGHT);
        }
        for &(t, w) in &ctx.preferred_pod {
            self.add_weighted_carrier(t, n, w);
        }
        self.add_pod(ctx.ns, ctx.labels, n);
    }

    // ---- PreFilter ---------------------------------------------------------------------------------------

    fn prepare(&mut self, pod: &PodInfo) -> PodCtx {
        let ns = self.interner.intern(&pod.namespace);
        let labels = self.interner.labels(&pod.labels);
        let (score_cpu, score_mem) = score_requests(&pod.requests);
        let node_selector: Box<[(Sym, Sym)]> =
            pod.node_selector.iter().map(|(k, v)| (self.interner.intern(k), self.interner.intern(v))).collect();
        let node_affinity = &pod.node_affinity;
        let required_node = node_affinity.required_during_scheduling_ignored_during_execution.as_ref().map(|r| {
            r.node_selector_terms
                .iter()
                .map(|t| compile_node_requirements(&mut self.interner, &t.match_expressions))
                .collect::<Box<[_]>>()
        });
        let preferred_node = node_affinity
            .preferred_during_scheduling_ignored_during_execution
            .iter()
            .filter(|p| !p.preference.match_expressions.is_empty() && p.weight != 0)
            .map(|p| (p.weight as i64, compile_node_requirements(&mut self.interner, &p.preference.match_expressions)))
            .collect();
        let has_node_affinity = !node_selector.is_empty() || required_node.is_some();
        let tolerations: Box<[ITol]> = pod
            .tolerations
            .iter()
            .map(|t| ITol {
                key: t.key.as_deref().filter(|k| !k.is_empty()).map(|k| self.interner.intern(k)),
                exists: t.operator == TolerationOperator::Exists,
                value: self.interner.intern(t.value.as_deref().unwrap_or("")),
                effect: t.effect,
            })
            .collect();
        let tolerates_unschedulable = tolerations.iter().any(|t: &ITol| t.tolerates(&self.unschedulable_taint));

        let anti: Vec<u32> = pod.pod_anti_affinity.required.iter().map(|t| self.affinity_term(t, ns)).collect();
        let affinity: Vec<u32> = pod.pod_affinity.required.iter().map(|t| self.affinity_term(t, ns)).collect();
        // Kubernetes wants, per term, a pod in the node's domain that matches *all* the terms; with one term
        // the cycle's counts are exactly that, with several they are counted here for this pod.
        let (affinity_counts, any_affine) = if affinity.len() > 1 {
            let (counts, any) = self.count_matching_all(&affinity);
            (Some(counts), any)
        } else {
            (None, affinity.iter().any(|&t| self.terms[t as usize].total > 0))
        };
        let affinity_bypass = !affinity.is_empty()
            && !any_affine
            && affinity.iter().all(|&t| term_matches(&self.terms[t as usize].key, ns, &labels, &self.interner));
        let mut preferred_pod = Vec::new();
        for (sign, list) in [(1i64, &pod.pod_affinity.preferred), (-1, &pod.pod_anti_affinity.preferred)] {
            for w in list {
                let t = self.affinity_term(&w.term, ns);
                preferred_pod.push((t, sign * w.weight as i64));
            }
        }
        let existing_weighted = self
            .weighted_index
            .candidates(&labels)
            .filter(|&t| term_matches(&self.terms[t as usize].key, ns, &labels, &self.interner))
            .collect();
        let existing_anti = self
            .carrier_index
            .candidates(&labels)
            .filter(|&t| {
                let t = &self.terms[t as usize];
                t.carriers_total > 0 && term_matches(&t.key, ns, &labels, &self.interner)
            })
            .collect();

        let mut ctx = PodCtx {
            ns,
            labels,
            req: pod.requests,
            score_cpu,
            score_mem,
            node_selector,
            required_node,
            preferred_node,
            has_node_affinity,
            tolerations,
            tolerates_unschedulable,
            existing_anti,
            anti,
            affinity,
            affinity_bypass,
            affinity_counts,
            spread_hard: Vec::new(),
            spread_soft: Vec::new(),
            preferred_pod,
            existing_weighted,
        };
        self.prepare_spread(pod, &mut ctx);
        ctx
    }

    fn prepare_spread(&mut self, pod: &PodInfo, ctx: &mut PodCtx) {
        if pod.topology_spread_constraints.is_empty() {
            return;
        }
        let mut hard = Vec::new();
        for c in &pod.topology_spread_constraints {
            let sel = c.selector.as_ref().map(|s| compile_selector(&mut self.interner, s));
            let topo_key = self.interner.intern(&c.topology_key);
            let term = self.term(TermKey { sel, ns: Box::new([ctx.ns]), topo_key });
            let t = &self.terms[term as usize];
            let self_match = term_matches(&t.key, ctx.ns, &ctx.labels, &self.interner) as u32;
            match c.when_unsatisfiable {
                WhenUnsatisfiable::DoNotSchedule => hard.push((term, c.max_skew, self_match)),
                WhenUnsatisfiable::ScheduleAnyway => {
                    let domains = self.topologies[t.topo].domains as f64;
                    ctx.spread_soft.push(SoftSpread { term, weight: (domains + 2.0).ln() });
                }
            }
        }
        if hard.is_empty() {
            return;
        }
        // The minimum is taken over the domains of nodes the pod could use: nodes matching its node
        // selector/affinity and carrying every hard constraint's topology key.
        let keys: Vec<usize> = hard.iter().map(|&(t, ..)| self.terms[t as usize].topo).collect();
        let simple = !ctx.has_node_affinity && keys.iter().all(|&k| k == keys[0]);
        let eligible: Option<Vec<bool>> = (!simple).then(|| {
            (0..self.nodes.len())
                .map(|n| {
                    keys.iter().all(|&k| self.topologies[k].node_domain[n] != NONE)
                        && self.node_affinity_ok(ctx, &self.nodes[n])
                })
                .collect()
        });
        for (term, max_skew, self_match) in hard {
            let t = &self.terms[term as usize];
            let (min, counts) = match &eligible {
                None => (t.matching.iter().copied().min().unwrap_or(0), None),
                Some(ok) => {
                    // Kubernetes counts only pods on nodes the incoming pod could use.
                    let (counts, _) = self.count_matching(&t.key, t.topo, Some(ok));
                    let nd = &self.topologies[t.topo].node_domain;
                    let min =
                        (0..self.nodes.len()).filter(|&n| ok[n]).map(|n| counts[nd[n] as usize]).min().unwrap_or(0);
                    (min, Some(counts))
                }
            };
            ctx.spread_hard.push(HardSpread { term, max_skew, self_match, min, counts });
        }
    }

    // ---- Filter --------------------------------------------------------------------------------------------

    fn node_affinity_ok(&self, ctx: &PodCtx, node: &NodeRec) -> bool {
        if !ctx.node_selector.iter().all(|&(k, v)| node.labels.get(k) == Some(v)) {
            return false;
        }
        match &ctx.required_node {
            None => true,
            Some(terms) => terms.iter().any(|t| !t.is_empty() && all_match(t, &node.labels, &self.interner)),
        }
    }

    fn domain(&self, term: &Term, n: usize) -> u32 {
        self.topologies[term.topo].node_domain[n]
    }

    /// The first failing filter, cheapest first (inter-pod rules in kube-scheduler's order: affinity, anti-affinity,
    /// existing pods' anti-affinity); `Ok` when the node can take the pod.
    fn filter(&self, ctx: &PodCtx, n: usize) -> Result<(), RejectReason> {
        let node = &self.nodes[n];
        if node.unschedulable && !ctx.tolerates_unschedulable {
            return Err(RejectReason::NodeUnschedulable);
        }
        if ctx.has_node_affinity && !self.node_affinity_ok(ctx, node) {
            return Err(RejectReason::NodeAffinity);
        }
        if node.has_hard_taints
            && node
                .taints
                .iter()
                .filter(|t| t.effect != TaintEffect::PreferNoSchedule)
                .any(|t| !ctx.tolerations.iter().any(|tol| tol.tolerates(t)))
        {
            return Err(RejectReason::UntoleratedTaint);
        }
        fits(&node.alloc, &node.used, &ctx.req)?;
        if !ctx.affinity.is_empty() {
            let mut all_present = true;
            for (i, &t) in ctx.affinity.iter().enumerate() {
                let t = &self.terms[t as usize];
                let d = self.domain(t, n);
                if d == NONE {
                    return Err(RejectReason::PodAffinity);
                }
                let here = ctx.affinity_counts.as_ref().map_or(t.matching[d as usize], |c| c[i][d as usize]);
                all_present &= here > 0;
            }
            if !all_present && !ctx.affinity_bypass {
                return Err(RejectReason::PodAffinity);
            }
        }
        for &t in &ctx.anti {
            let t = &self.terms[t as usize];
            let d = self.domain(t, n);
            if d != NONE && t.matching[d as usize] > 0 {
                return Err(RejectReason::PodAntiAffinity);
            }
        }
        for &t in &ctx.existing_anti {
            let t = &self.terms[t as usize];
            let d = self.domain(t, n);
            if d != NONE && t.carriers[d as usize] > 0 {
                return Err(RejectReason::ExistingPodsAntiAffinity);
            }
        }
        for s in &ctx.spread_hard {
            let t = &self.terms[s.term as usize];
            let d = self.domain(t, n);
            if d == NONE {
                return Err(RejectReason::TopologySpreadMissingLabel);
            }
            let here = s.counts.as_ref().map_or(t.matching[d as usize], |c| c[d as usize]);
            if (here + s.self_match).saturating_sub(s.min) > s.max_skew {
                return Err(RejectReason::TopologySpreadSkew);
            }
        }
        Ok(())
    }

    // ---- Score and select --------------------------------------------------------------------------------

    fn resource_score(&self, ctx: &PodCtx, node: &NodeRec) -> i64 {
        let cpu = (node.score_cpu + ctx.score_cpu, node.alloc.cpu_millis);
        let mem = (node.score_mem + ctx.score_mem, node.alloc.memory_bytes);
        match self.policy.strategy {
            ScoringStrategy::LeastAllocated => (least(cpu) + least(mem)) / 2,
            ScoringStrategy::MostAllocated => (most(cpu) + most(mem)) / 2,
            ScoringStrategy::Balanced => {
                let f = |(r, a): (u64, u64)| {
                    if a == 0 {
                        1.0
                    } else {
                        (r as f64 / a as f64).min(1.0)
                    }
                };
                let std = (f(cpu) - f(mem)).abs() / 2.0;
                ((1.0 - std) * 100.0) as i64
            }
        }
    }

    fn select(&mut self, ctx: &PodCtx, feasible: &[u32]) -> u32 {
        if feasible.len() == 1 {
            return feasible[0];
        }
        let w = self.policy.weights;
        let mut totals = std::mem::take(&mut self.totals);
        let mut raw = std::mem::take(&mut self.raw);
        totals.clear();
        totals.extend(feasible.iter().map(|&n| w.resources * self.resource_score(ctx, &self.nodes[n as usize])));

        if !ctx.preferred_node.is_empty() {
            raw.clear();
            raw.extend(feasible.iter().map(|&n| {
                let labels = &self.nodes[n as usize].labels;
                ctx.preferred_node
                    .iter()
                    .filter(|(_, t)| all_match(t, labels, &self.interner))
                    .map(|(w, _)| *w)
                    .sum::<i64>() as f64
            }));
            add_normalized(&mut totals, &raw, w.node_affinity, Direction::HigherIsBetter, false);
        }
        if feasible.iter().any(|&n| self.nodes[n as usize].has_soft_taints) {
            raw.clear();
            raw.extend(feasible.iter().map(|&n| {
                self.nodes[n as usize]
                    .taints
                    .iter()
                    .filter(|t| t.effect == TaintEffect::PreferNoSchedule)
                    .filter(|t| !ctx.tolerations.iter().any(|tol| tol.tolerates(t)))
                    .count() as f64
            }));
            add_normalized(&mut totals, &raw, w.taint_toleration, Direction::LowerIsBetter, false);
        }
        if !ctx.preferred_pod.is_empty() || !ctx.existing_weighted.is_empty() {
            raw.clear();
            raw.extend(feasible.iter().map(|&n| {
                let own: i64 = ctx
                    .preferred_pod
                    .iter()
                    .map(|&(t, weight)| {
                        let t = &self.terms[t as usize];
                        let d = self.domain(t, n as usize);
                        if d == NONE {
                            0
                        } else {
                            weight * t.matching[d as usize] as i64
                        }
                    })
                    .sum();
                let theirs: i64 = ctx
                    .existing_weighted
                    .iter()
                    .map(|&t| {
                        let t = &self.terms[t as usize];
                        let d = self.domain(t, n as usize);
                        if d == NONE {
                            0
                        } else {
                            t.weighted[d as usize]
                        }
                    })
                    .sum();
                (own + theirs) as f64
            }));
            add_normalized(&mut totals, &raw, w.pod_affinity, Direction::HigherIsBetter, true);
        }
        if !ctx.spread_soft.is_empty() {
            raw.clear();
            raw.extend(feasible.iter().map(|&n| {
                let mut s = 0.0;
                for c in &ctx.spread_soft {
                    let t = &self.terms[c.term as usize];
                    let d = self.domain(t, n as usize);
                    if d == NONE {
                        // Kubernetes gives nodes without the key the worst score.
                        return f64::INFINITY;
                    }
                    s += t.matching[d as usize] as f64 * c.weight;
                }
                s
            }));
            add_normalized(&mut totals, &raw, w.topology_spread, Direction::LowerIsBetter, false);
        }

        // Highest total wins; ties are broken uniformly by reservoir sampling from the seeded RNG.
        let mut best = feasible[0];
        let mut best_score = i64::MIN;
        let mut ties = 0u64;
        for (i, &n) in feasible.iter().enumerate() {
            let s = totals[i];
            if s > best_score {
                best_score = s;
                best = n;
                ties = 1;
            } else if s == best_score {
                ties += 1;
                if self.rng.below(ties) == 0 {
                    best = n;
                }
            }
        }
        self.totals = totals;
        self.raw = raw;
        best
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Direction {
    HigherIsBetter,
    LowerIsBetter,
}

/// Scales raw plugin scores to 0..=100 over the scored nodes and adds them with a weight. `min_max` scales
/// from the minimum (for scores that can be negative) instead of from zero. Infinite raw values (a node the
/// plugin rejects softly) get 0.
fn add_normalized(totals: &mut [i64], raw: &[f64], weight: i64, dir: Direction, min_max: bool) {
    let finite = raw.iter().copied().filter(|v| v.is_finite());
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for v in finite {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if !lo.is_finite() {
        return;
    }
    let floor = if min_max || dir == Direction::LowerIsBetter { lo } else { 0.0f64.min(lo) };
    let span = hi - floor;
    for (t, &v) in totals.iter_mut().zip(raw) {
        let score = if !v.is_finite() {
            0.0
        } else if span <= 0.0 {
            100.0
        } else {
            match dir {
                Direction::HigherIsBetter => (v - floor) * 100.0 / span,
                Direction::LowerIsBetter => (hi - v) * 100.0 / span,
            }
        };
        *t += weight * score as i64;
    }
}

/// `part * 100 / whole` without a 128-bit division on the hot path (quantities beyond 2^57 take the slow one).
#[inline]
fn percent(part: u64, whole: u64) -> i64 {
    if whole <= u64::MAX / 128 {
        (part * 100 / whole) as i64
    } else {
        (part as u128 * 100 / whole as u128) as i64
    }
}

fn least((requested, alloc): (u64, u64)) -> i64 {
    if alloc == 0 || requested > alloc {
        return 0;
    }
    percent(alloc - requested, alloc)
}

fn most((requested, alloc): (u64, u64)) -> i64 {
    if alloc == 0 {
        return 0;
    }
    percent(requested.min(alloc), alloc)
}

fn score_requests(r: &Requests) -> (u64, u64) {
    (
        if r.cpu_millis == 0 { DEFAULT_SCORE_CPU_MILLIS } else { r.cpu_millis },
        if r.memory_bytes == 0 { DEFAULT_SCORE_MEMORY_BYTES } else { r.memory_bytes },
    )
}
