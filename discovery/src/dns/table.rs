//! Pre-encoded answers, kept in step with the registry.
//!
//! [`Table`] maps a name key to its encoded answers per record type (whole DNS responses with ID 0 and the
//! question in lowercase, encoded once by hickory-proto). [`Follower`] owns a private model of the
//! registry, applies watch events to it and rebuilds only the *sources* those events touch: one service
//! (all its names), one label pair in a namespace, or the zone apex (whose SOA serial follows the
//! revision). A source's names never overlap another's, except for the empty non-terminals above them,
//! which are reference counted so NXDOMAIN and NODATA stay exact.
//!
//! This is not the transport and does not read packets; `answer` does that against a `Table`.

use super::key::{ancestors, NameKey};
use crate::object::{Object, ObjectKey, ObjectKind, WatchEvent};
use crate::registry::{Registry, Watch};
use crate::selector::Selector;
use crate::types::{Endpoint, Protocol, Service};
use futures::FutureExt;
use hickory_proto::op::{Header, HeaderCounts, Message, OpCode, Query};
use hickory_proto::rr::rdata::{A, AAAA, NS, SOA, SRV};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use hickory_proto::serialize::binary::{BinDecodable, BinEncodable, BinEncoder, NameEncoding};
use parking_lot::RwLock;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

/// One complete response, encoded with ID 0, no EDNS, and the question name in lowercase.
#[derive(Debug)]
pub(crate) struct Encoded {
    pub(crate) bytes: Box<[u8]>,
    pub(crate) counts: HeaderCounts,
}

#[derive(Debug, Default)]
struct Entry {
    rrsets: Vec<(RecordType, Arc<Encoded>)>,
    any: Option<Arc<Encoded>>,
    /// Names owned by sources below this one: while non-zero the name exists (NODATA, not NXDOMAIN).
    children: u32,
}

impl Entry {
    fn is_empty(&self) -> bool {
        self.rrsets.is_empty() && self.any.is_none() && self.children == 0
    }
}

/// What the table says about a (name, type).
pub(crate) enum Lookup<'a> {
    Answer(&'a Encoded),
    NoData,
    NxDomain,
    OutOfZone,
}

/// The zone: its name, key and label count.
#[derive(Debug, Clone)]
pub(crate) struct Zone {
    pub(crate) name: Name,
    pub(crate) key: Box<[u8]>,
    pub(crate) labels: usize,
}

impl Zone {
    pub(crate) fn new(name: Name) -> Option<Self> {
        let key = NameKey::of(&name)?;
        if key.num_labels() == 0 {
            return None;
        }
        Some(Self { key: key.as_bytes().into(), labels: key.num_labels(), name: key.to_name()? })
    }

    fn child(&self, labels: &[&[u8]]) -> Option<(Box<[u8]>, Name)> {
        let zone_labels = self.name.iter();
        let key = NameKey::from_labels(labels.iter().copied().chain(zone_labels))?;
        Some((key.as_bytes().into(), key.to_name()?))
    }
}

/// The published answers at one registry revision.
pub(crate) struct Table {
    /// The last registry revision whose effect is included.
    pub(crate) revision: u64,
    /// foldhash: keys are short and the lookup is on the hot path; SipHash cost 5% of an answer.
    names: HashMap<Box<[u8]>, Entry, foldhash::fast::RandomState>,
    /// The apex SOA as an authority record, encoded without compression so it can follow any question.
    pub(crate) soa_tail: Vec<u8>,
    zone: Zone,
}

impl Table {
    fn new(zone: Zone) -> Self {
        Self { revision: 0, names: HashMap::default(), soa_tail: Vec::new(), zone }
    }

    pub(crate) fn lookup(&self, key: &NameKey, qtype: RecordType) -> Lookup<'_> {
        let n = key.num_labels();
        if n < self.zone.labels || key.suffix(n - self.zone.labels) != &*self.zone.key {
            return Lookup::OutOfZone;
        }
        let Some(entry) = self.names.get(key.as_bytes()) else {
            return Lookup::NxDomain;
        };
        let found = if qtype == RecordType::ANY {
            entry.any.as_deref()
        } else {
            entry.rrsets.iter().find(|(t, _)| *t == qtype).map(|(_, e)| &**e)
        };
        found.map_or(Lookup::NoData, Lookup::Answer)
    }

    /// Number of names (with records or as empty non-terminals); for tests and metrics.
    pub(crate) fn len(&self) -> usize {
        self.names.len()
    }

    fn in_zone_ancestors<'k>(&self, key: &'k [u8]) -> impl Iterator<Item = &'k [u8]> + use<'k> {
        let zone_len = self.zone.key.len();
        ancestors(key).take_while(move |a| a.len() > zone_len)
    }

    /// Swap one source's names: remove `old`, insert `new`; returns the keys now owned.
    fn replace(&mut self, old: &[Box<[u8]>], new: Vec<BuiltName>) -> Vec<Box<[u8]>> {
        for key in old {
            if let Some(e) = self.names.get_mut(key) {
                e.rrsets.clear();
                e.any = None;
            }
            self.prune(key);
            let parents: Vec<&[u8]> = self.in_zone_ancestors(key).collect();
            for parent in parents {
                if let Some(e) = self.names.get_mut(parent) {
                    e.children = e.children.saturating_sub(1);
                }
                self.prune(parent);
            }
        }
        let mut owned = Vec::with_capacity(new.len());
        for built in new {
            let parents: Vec<Box<[u8]>> = self.in_zone_ancestors(&built.key).map(Box::from).collect();
            for parent in parents {
                self.names.entry(parent).or_default().children += 1;
            }
            let e = self.names.entry(built.key.clone()).or_default();
            e.rrsets = built.rrsets;
            e.any = built.any;
            owned.push(built.key);
        }
        owned
    }

    fn prune(&mut self, key: &[u8]) {
        if self.names.get(key).is_some_and(Entry::is_empty) {
            self.names.remove(key);
        }
    }
}

/// A group of names rebuilt together. Keys are lowercase.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Source {
    Apex,
    Service { namespace: String, name: String },
    Label { namespace: String, key: String, value: String },
}

struct BuiltName {
    key: Box<[u8]>,
    rrsets: Vec<(RecordType, Arc<Encoded>)>,
    any: Option<Arc<Encoded>>,
}

/// Records for one name while a source is being built.
struct NameRecords {
    name: Name,
    records: Vec<Record>,
    glue: Vec<Record>,
}

#[derive(Default)]
struct Builder {
    names: BTreeMap<Box<[u8]>, NameRecords>,
}

impl Builder {
    fn add(&mut self, key: &[u8], name: &Name, record: Record) {
        let e = self.names.entry(key.into()).or_insert_with(|| NameRecords {
            name: name.clone(),
            records: Vec::new(),
            glue: Vec::new(),
        });
        if !e.records.contains(&record) {
            e.records.push(record);
        }
    }

    fn glue(&mut self, key: &[u8], record: Record) {
        if let Some(e) = self.names.get_mut(key) {
            if !e.glue.contains(&record) {
                e.glue.push(record);
            }
        }
    }

    fn finish(self) -> Vec<BuiltName> {
        self.names
            .into_iter()
            .filter_map(|(key, nr)| {
                let mut types: Vec<RecordType> = Vec::new();
                for r in &nr.records {
                    if !types.contains(&r.record_type()) {
                        types.push(r.record_type());
                    }
                }
                let mut rrsets = Vec::with_capacity(types.len());
                for t in types {
                    let answers: Vec<&Record> = nr.records.iter().filter(|r| r.record_type() == t).collect();
                    let glue: &[Record] = if matches!(t, RecordType::SRV | RecordType::NS) { &nr.glue } else { &[] };
                    match encode(&nr.name, t, answers.into_iter(), glue) {
                        Some(e) => rrsets.push((t, Arc::new(e))),
                        None => tracing::warn!(name = %nr.name, rtype = %t, "dns: answer does not encode; skipped"),
                    }
                }
                if rrsets.is_empty() {
                    return None;
                }
                let any = encode(&nr.name, RecordType::ANY, nr.records.iter(), &nr.glue).map(Arc::new);
                Some(BuiltName { key, rrsets, any })
            })
            .collect()
    }
}

fn encode<'a>(
    name: &Name,
    qtype: RecordType,
    answers: impl Iterator<Item = &'a Record>,
    glue: &[Record],
) -> Option<Encoded> {
    let mut msg = Message::response(0, OpCode::Query);
    msg.metadata.authoritative = true;
    msg.add_query(Query::query(name.clone(), qtype));
    msg.add_answers(answers.cloned());
    msg.add_additionals(glue.iter().cloned());
    let bytes = msg.to_vec().ok()?;
    let header = Header::read(&mut hickory_proto::serialize::binary::BinDecoder::new(&bytes)).ok()?;
    Some(Encoded { bytes: bytes.into_boxed_slice(), counts: header.counts })
}

fn address_record(name: &Name, ttl: u32, ip: IpAddr) -> Record {
    let rdata = match ip {
        IpAddr::V4(v4) => RData::A(A(v4)),
        IpAddr::V6(v6) => RData::AAAA(AAAA(v6)),
    };
    Record::from_rdata(name.clone(), ttl, rdata)
}

fn lc(s: &str) -> String {
    s.to_ascii_lowercase()
}

/// Settings the follower needs to build names.
#[derive(Debug, Clone)]
pub(crate) struct BuildSettings {
    pub(crate) zone: Zone,
    pub(crate) ttl: u32,
    pub(crate) nameserver: IpAddr,
}

/// Applies registry changes to a private model and rebuilds the affected sources.
pub(crate) struct Follower {
    registry: Arc<Registry>,
    watch: Watch,
    settings: BuildSettings,
    services: BTreeMap<(String, String), Arc<Service>>,
    endpoints: BTreeMap<(String, String), Arc<Endpoint>>,
    owned: HashMap<Source, Vec<Box<[u8]>>>,
}

impl Follower {
    /// Build the full table from a snapshot and start watching after its revision.
    pub(crate) fn start(registry: Arc<Registry>, settings: BuildSettings) -> (Self, RwLock<Table>) {
        let snapshot = registry.snapshot();
        let watch = registry.watch(Selector::everything(), snapshot.revision());
        let mut follower = Self {
            registry,
            watch,
            settings: settings.clone(),
            services: BTreeMap::new(),
            endpoints: BTreeMap::new(),
            owned: HashMap::new(),
        };
        let table = RwLock::new(Table::new(settings.zone));
        let mut affected = BTreeSet::new();
        let revision = follower.reload(&mut affected);
        follower.publish(&table, affected, revision);
        (follower, table)
    }

    /// Apply every pending change; returns whether the table changed.
    pub(crate) fn refresh(&mut self, table: &RwLock<Table>) -> bool {
        let mut affected = BTreeSet::new();
        let mut last = None;
        let mut relist = false;
        // The watch is drained without waiting: the registry has already published these revisions.
        while let Some(event) = self.watch.next().now_or_never() {
            match event {
                WatchEvent::Put { revision, object } => {
                    self.apply(object_key(&object), Some(object), &mut affected);
                    last = Some(revision);
                }
                WatchEvent::Delete { revision, key } => {
                    self.apply(key, None, &mut affected);
                    last = Some(revision);
                }
                WatchEvent::Relist { revision } => {
                    relist = true;
                    last = Some(revision);
                }
            }
        }
        let published = table.read().revision;
        let behind = last.is_none() && self.registry.revision() > published;
        if relist || behind {
            // Re-read everything: either history was lost, or the watch has nothing while the registry
            // moved on (never expected, but correctness must not depend on it).
            let revision = self.reload(&mut affected);
            last = Some(last.map_or(revision, |l| l.max(revision)));
        }
        match last {
            Some(revision) => {
                self.publish(table, affected, revision);
                true
            }
            None => false,
        }
    }

    fn reload(&mut self, affected: &mut BTreeSet<Source>) -> u64 {
        let snapshot = self.registry.snapshot();
        affected.extend(self.owned.keys().cloned());
        self.services = snapshot.services().map(|s| ((s.namespace.clone(), s.name.clone()), s.clone())).collect();
        self.endpoints = snapshot
            .endpoints(None, &Selector::everything())
            .into_iter()
            .map(|e| ((e.namespace.clone(), e.name.clone()), e))
            .collect();
        for s in self.services.values() {
            affected.insert(Source::Service { namespace: lc(&s.namespace), name: lc(&s.name) });
        }
        for e in self.endpoints.values() {
            for (k, v) in &e.labels {
                affected.insert(Source::Label { namespace: lc(&e.namespace), key: lc(k), value: lc(v) });
            }
        }
        snapshot.revision()
    }

    fn apply(&mut self, key: ObjectKey, object: Option<Object>, affected: &mut BTreeSet<Source>) {
        let id = (key.namespace.clone(), key.name.clone());
        match key.kind {
            ObjectKind::Service => {
                match object {
                    Some(Object::Service(s)) => self.services.insert(id, s),
                    _ => self.services.remove(&id),
                };
                affected.insert(Source::Service { namespace: lc(&key.namespace), name: lc(&key.name) });
            }
            ObjectKind::Endpoint => {
                let old = match object {
                    Some(Object::Endpoint(e)) => {
                        self.endpoint_sources(&e, affected);
                        self.endpoints.insert(id, e)
                    }
                    _ => self.endpoints.remove(&id),
                };
                if let Some(old) = old {
                    self.endpoint_sources(&old, affected);
                }
            }
            ObjectKind::Route | ObjectKind::Certificate => {}
        }
    }

    /// The sources an endpoint contributes to: services selecting it and each of its labels.
    fn endpoint_sources(&self, e: &Endpoint, affected: &mut BTreeSet<Source>) {
        for s in self.services_in(&e.namespace) {
            if s.selector.matches(&e.labels) {
                affected.insert(Source::Service { namespace: lc(&s.namespace), name: lc(&s.name) });
            }
        }
        for (k, v) in &e.labels {
            affected.insert(Source::Label { namespace: lc(&e.namespace), key: lc(k), value: lc(v) });
        }
    }

    fn services_in<'a>(&'a self, namespace: &'a str) -> impl Iterator<Item = &'a Arc<Service>> + 'a {
        self.services
            .range((namespace.to_string(), String::new())..)
            .take_while(move |((ns, _), _)| ns == namespace)
            .map(|(_, s)| s)
    }

    fn endpoints_in<'a>(&'a self, namespace: &'a str) -> impl Iterator<Item = &'a Arc<Endpoint>> + 'a {
        self.endpoints
            .range((namespace.to_string(), String::new())..)
            .take_while(move |((ns, _), _)| ns == namespace)
            .map(|(_, e)| e)
    }

    fn publish(&mut self, table: &RwLock<Table>, mut affected: BTreeSet<Source>, revision: u64) {
        affected.insert(Source::Apex);
        let labels: BTreeSet<&Source> = affected.iter().filter(|s| matches!(s, Source::Label { .. })).collect();
        let mut label_builds = self.build_labels(&labels);
        let built: Vec<(Source, Vec<BuiltName>)> = affected
            .iter()
            .map(|source| {
                let names = match source {
                    Source::Apex => self.build_apex(revision),
                    Source::Service { namespace, name } => self.build_service(namespace, name),
                    Source::Label { .. } => label_builds.remove(source).map(Builder::finish).unwrap_or_default(),
                };
                (source.clone(), names)
            })
            .collect();
        let soa_tail = self.soa_tail(revision);
        let mut t = table.write();
        for (source, names) in built {
            let old = self.owned.remove(&source).unwrap_or_default();
            let now = t.replace(&old, names);
            if !now.is_empty() {
                self.owned.insert(source, now);
            }
        }
        if let Some(tail) = soa_tail {
            t.soa_tail = tail;
        }
        t.revision = t.revision.max(revision);
    }

    fn soa_record(&self, revision: u64) -> Option<Record> {
        let zone = &self.settings.zone;
        let (_, mname) = zone.child(&[b"ns", b"dns"])?;
        let (_, rname) = zone.child(&[b"hostmaster"])?;
        // The serial is the low 32 bits of the revision: serial arithmetic (RFC 1982) tolerates the wrap.
        let soa = SOA::new(mname, rname, revision as u32, 3600, 600, 86400, self.settings.ttl);
        Some(Record::from_rdata(zone.name.clone(), self.settings.ttl, RData::SOA(soa)))
    }

    fn soa_tail(&self, revision: u64) -> Option<Vec<u8>> {
        let record = self.soa_record(revision)?;
        let mut buf = Vec::with_capacity(96);
        let mut encoder = BinEncoder::new(&mut buf);
        encoder.set_name_encoding(NameEncoding::Uncompressed);
        record.emit(&mut encoder).ok()?;
        Some(buf)
    }

    fn build_apex(&self, revision: u64) -> Vec<BuiltName> {
        let zone = &self.settings.zone;
        let ttl = self.settings.ttl;
        let mut b = Builder::default();
        let Some((ns_key, ns_name)) = zone.child(&[b"ns", b"dns"]) else {
            return Vec::new();
        };
        if let Some(soa) = self.soa_record(revision) {
            b.add(&zone.key, &zone.name, soa);
        }
        b.add(&zone.key, &zone.name, Record::from_rdata(zone.name.clone(), ttl, RData::NS(NS(ns_name.clone()))));
        let glue = address_record(&ns_name, ttl, self.settings.nameserver);
        b.add(&ns_key, &ns_name, glue.clone());
        b.glue(&zone.key, glue);
        b.finish()
    }

    fn build_service(&self, namespace: &str, name: &str) -> Vec<BuiltName> {
        let ttl = self.settings.ttl;
        let zone = &self.settings.zone;
        let Some((base_key, base)) = zone.child(&[name.as_bytes(), namespace.as_bytes(), b"svc"]) else {
            return Vec::new();
        };
        let mut b = Builder::default();
        let services = self.services.values().filter(|s| lc(&s.namespace) == namespace && lc(&s.name) == name);
        for svc in services {
            let members: Vec<&Arc<Endpoint>> = self
                .endpoints_in(&svc.namespace)
                .filter(|e| e.accepts_new() && svc.selector.matches(&e.labels))
                .collect();
            let member_names: Vec<Option<(Box<[u8]>, Name)>> = members
                .iter()
                .map(|e| zone.child(&[lc(&e.name).as_bytes(), name.as_bytes(), namespace.as_bytes(), b"svc"]))
                .collect();
            match svc.virtual_ip {
                Some(vip) => b.add(&base_key, &base, address_record(&base, ttl, vip)),
                None => {
                    for e in &members {
                        b.add(&base_key, &base, address_record(&base, ttl, e.address));
                    }
                }
            }
            for (e, en) in members.iter().zip(&member_names) {
                if let Some((key, ename)) = en {
                    b.add(key, ename, address_record(ename, ttl, e.address));
                }
            }
            for port in &svc.ports {
                let Some(port_name) = &port.name else {
                    continue;
                };
                let proto: &[u8] = match port.protocol {
                    Protocol::Tcp => b"_tcp",
                    Protocol::Udp => b"_udp",
                };
                let label = format!("_{}", lc(port_name));
                let Some((srv_key, srv_name)) =
                    zone.child(&[label.as_bytes(), proto, name.as_bytes(), namespace.as_bytes(), b"svc"])
                else {
                    continue;
                };
                let mut glue = Vec::new();
                if let Some(vip) = svc.virtual_ip {
                    let srv = SRV::new(0, 100, port.port, base.clone());
                    b.add(&srv_key, &srv_name, Record::from_rdata(srv_name.clone(), ttl, RData::SRV(srv)));
                    glue.push(address_record(&base, ttl, vip));
                } else {
                    for (e, en) in members.iter().zip(&member_names) {
                        let (Some(target_port), Some((_, target))) = (e.resolve_port(&port.target_port), en) else {
                            continue;
                        };
                        let weight = u16::try_from(e.weight).unwrap_or(u16::MAX);
                        let srv = SRV::new(0, weight, target_port, target.clone());
                        b.add(&srv_key, &srv_name, Record::from_rdata(srv_name.clone(), ttl, RData::SRV(srv)));
                        glue.push(address_record(target, ttl, e.address));
                    }
                }
                for g in glue {
                    b.glue(&srv_key, g);
                }
            }
        }
        b.finish()
    }

    /// Build every requested label source in one pass over the endpoints.
    fn build_labels(&self, sources: &BTreeSet<&Source>) -> BTreeMap<Source, Builder> {
        let mut out: BTreeMap<Source, Builder> = BTreeMap::new();
        if sources.is_empty() {
            return out;
        }
        let ttl = self.settings.ttl;
        for e in self.endpoints.values().filter(|e| e.accepts_new()) {
            let namespace = lc(&e.namespace);
            for (k, v) in &e.labels {
                let source = Source::Label { namespace: namespace.clone(), key: lc(k), value: lc(v) };
                if !sources.contains(&source) {
                    continue;
                }
                let Source::Label { namespace, key, value } = &source else {
                    continue;
                };
                let Some((nkey, name)) =
                    self.settings.zone.child(&[value.as_bytes(), key.as_bytes(), namespace.as_bytes(), b"label"])
                else {
                    continue;
                };
                let builder = out.entry(source.clone()).or_default();
                builder.add(&nkey, &name, address_record(&name, ttl, e.address));
            }
        }
        out
    }
}

fn object_key(object: &Object) -> ObjectKey {
    object.key()
}
