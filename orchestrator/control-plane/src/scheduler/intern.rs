//! Interned labels and compiled selectors: every label key and value the cycle sees becomes a `u32`, so
//! matching is integer comparison and the topology tables are plain vectors.

use discovery::{Labels, Operator, Selector};
use model::{NodeSelectorOperator, NodeSelectorRequirement};
use std::collections::HashMap;

/// A fixed, unseeded fast hasher: the cycle never iterates a map in an order that affects placement, and
/// keys come from the cluster's own objects.
pub(crate) type FastMap<K, V> = HashMap<K, V, foldhash::fast::FixedState>;

pub(crate) type Sym = u32;

#[derive(Default)]
pub(crate) struct Interner {
    map: FastMap<Box<str>, Sym>,
    strs: Vec<Box<str>>,
    /// The value parsed as an integer, for `Gt`/`Lt`.
    ints: Vec<Option<i64>>,
}

impl Interner {
    pub(crate) fn intern(&mut self, s: &str) -> Sym {
        if let Some(&id) = self.map.get(s) {
            return id;
        }
        let id = self.strs.len() as Sym;
        self.strs.push(s.into());
        self.ints.push(s.parse().ok());
        self.map.insert(s.into(), id);
        id
    }

    pub(crate) fn int(&self, sym: Sym) -> Option<i64> {
        self.ints[sym as usize]
    }

    pub(crate) fn labels(&mut self, labels: &Labels) -> ILabels {
        // BTreeMap iteration is key-ordered, but interned ids are not: sort by id for binary search.
        let mut v: Vec<(Sym, Sym)> = labels.iter().map(|(k, v)| (self.intern(k), self.intern(v))).collect();
        v.sort_unstable();
        ILabels(v.into_boxed_slice())
    }
}

/// Labels as `(key, value)` symbols sorted by key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ILabels(pub(crate) Box<[(Sym, Sym)]>);

impl ILabels {
    #[inline]
    pub(crate) fn get(&self, key: Sym) -> Option<Sym> {
        if self.0.len() <= 8 {
            return self.0.iter().find(|(k, _)| *k == key).map(|(_, v)| *v);
        }
        self.0.binary_search_by_key(&key, |(k, _)| *k).ok().map(|i| self.0[i].1)
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (Sym, Sym)> + '_ {
        self.0.iter().copied()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum IOp {
    In,
    NotIn,
    Exists,
    DoesNotExist,
    Gt(i64),
    Lt(i64),
    /// A `Gt`/`Lt` whose value is not one integer: matches nothing (the API would have refused it).
    Never,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct IReq {
    pub(crate) key: Sym,
    pub(crate) op: IOp,
    /// Sorted and deduplicated.
    pub(crate) values: Box<[Sym]>,
}

impl IReq {
    #[inline]
    pub(crate) fn matches(&self, labels: &ILabels, interner: &Interner) -> bool {
        let v = labels.get(self.key);
        match self.op {
            IOp::In => v.is_some_and(|v| self.values.contains(&v)),
            IOp::NotIn => !v.is_some_and(|v| self.values.contains(&v)),
            IOp::Exists => v.is_some(),
            IOp::DoesNotExist => v.is_none(),
            IOp::Gt(n) => v.and_then(|v| interner.int(v)).is_some_and(|x| x > n),
            IOp::Lt(n) => v.and_then(|v| interner.int(v)).is_some_and(|x| x < n),
            IOp::Never => false,
        }
    }
}

pub(crate) fn all_match(reqs: &[IReq], labels: &ILabels, interner: &Interner) -> bool {
    reqs.iter().all(|r| r.matches(labels, interner))
}

fn values(interner: &mut Interner, vs: &[String]) -> Box<[Sym]> {
    let mut v: Vec<Sym> = vs.iter().map(|s| interner.intern(s)).collect();
    v.sort_unstable();
    v.dedup();
    v.into_boxed_slice()
}

/// A label selector as requirements, sorted so that equal selectors compile to equal values.
pub(crate) fn compile_selector(interner: &mut Interner, sel: &Selector) -> Box<[IReq]> {
    let mut reqs: Vec<IReq> = sel
        .requirements
        .iter()
        .map(|r| {
            let op = match r.op {
                Operator::Equals | Operator::In => IOp::In,
                Operator::NotEquals | Operator::NotIn => IOp::NotIn,
                Operator::Exists => IOp::Exists,
                Operator::DoesNotExist => IOp::DoesNotExist,
            };
            let values = match op {
                IOp::In | IOp::NotIn => values(interner, &r.values),
                _ => Box::default(),
            };
            IReq { key: interner.intern(&r.key), op, values }
        })
        .collect();
    reqs.sort_by(|a, b| (a.key, &a.values).cmp(&(b.key, &b.values)).then_with(|| op_rank(a.op).cmp(&op_rank(b.op))));
    reqs.dedup();
    reqs.into_boxed_slice()
}

fn op_rank(op: IOp) -> (u8, i64) {
    match op {
        IOp::In => (0, 0),
        IOp::NotIn => (1, 0),
        IOp::Exists => (2, 0),
        IOp::DoesNotExist => (3, 0),
        IOp::Gt(n) => (4, n),
        IOp::Lt(n) => (5, n),
        IOp::Never => (6, 0),
    }
}

pub(crate) fn compile_node_requirements(interner: &mut Interner, reqs: &[NodeSelectorRequirement]) -> Box<[IReq]> {
    reqs.iter()
        .map(|r| {
            let key = interner.intern(&r.key);
            let int_arg = || match r.values.as_slice() {
                [one] => one.parse::<i64>().ok(),
                _ => None,
            };
            let (op, vals) = match r.operator {
                NodeSelectorOperator::In => (IOp::In, values(interner, &r.values)),
                NodeSelectorOperator::NotIn => (IOp::NotIn, values(interner, &r.values)),
                NodeSelectorOperator::Exists => (IOp::Exists, Box::default()),
                NodeSelectorOperator::DoesNotExist => (IOp::DoesNotExist, Box::default()),
                NodeSelectorOperator::Gt => (int_arg().map_or(IOp::Never, IOp::Gt), Box::default()),
                NodeSelectorOperator::Lt => (int_arg().map_or(IOp::Never, IOp::Lt), Box::default()),
            };
            IReq { key, op, values: vals }
        })
        .collect()
}
