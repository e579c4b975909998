//! Service virtual addresses: every non-headless Service gets a stable `spec.clusterIP` from the service range
//! (`--service-cidr`, default [`DEFAULT_SERVICE_CIDR`]), allocated by the API server.
//!
//! The range lies inside 127.0.0.0/8, all of which is loopback on Linux: a node-local proxy can listen on any
//! of these addresses without root, iptables or a kernel module.
//!
//! Allocation is safe with several API replicas on one store: each allocated address is one store record
//! (kind [`CLUSTER_IPS_KIND`], named by the address, naming its Service), claimed with `Store::create`, which
//! only one writer can win. The claim is written before the Service and released when the Service's create
//! fails; a deleted Service's record is freed after the Service is gone. The candidate address is a hash of
//! `namespace/name` into the range followed by a linear probe ([`ServiceCidr::pick`], pure), so addresses are
//! stable per name and spread over the range.

use super::ApiError;
use crate::store::{Key, Prefix, Store, StoreError};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::HashSet;
use std::net::Ipv4Addr;

/// The store kind of the allocation records (cluster-scoped, named by the address).
pub const CLUSTER_IPS_KIND: &str = "clusterips";

/// The default service range: 1M addresses in loopback, clear of 127.0.0.1.
pub const DEFAULT_SERVICE_CIDR: &str = "127.64.0.0/12";

/// The longest accepted prefix: a /28 leaves 14 usable addresses.
const MAX_PREFIX: u8 = 28;

/// An IPv4 range inside 127.0.0.0/8 that does not contain 127.0.0.1. Its first (network) and last
/// (broadcast) addresses are never handed out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServiceCidr {
    network: u32,
    prefix: u8,
}

impl Default for ServiceCidr {
    fn default() -> Self {
        DEFAULT_SERVICE_CIDR.parse().expect("the default service range is valid")
    }
}

impl std::fmt::Display for ServiceCidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", Ipv4Addr::from(self.network), self.prefix)
    }
}

impl std::str::FromStr for ServiceCidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, prefix) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?} is not a CIDR range (expected e.g. {DEFAULT_SERVICE_CIDR})"))?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| format!("{addr:?} is not an IPv4 address"))?;
        let prefix: u8 = prefix.parse().map_err(|_| format!("{prefix:?} is not a prefix length"))?;
        if !(8..=32).contains(&prefix) || addr.octets()[0] != 127 {
            return Err(format!("{s}: the range must lie inside 127.0.0.0/8 (loopback)"));
        }
        if prefix > MAX_PREFIX {
            return Err(format!("{s}: a /{prefix} leaves too few addresses (at most /{MAX_PREFIX})"));
        }
        let mask = u32::MAX << (32 - prefix);
        let network = u32::from(addr) & mask;
        if network != u32::from(addr) {
            return Err(format!("{s}: host bits are set (the range starts at {}/{prefix})", Ipv4Addr::from(network)));
        }
        let cidr = Self { network, prefix };
        if cidr.contains(Ipv4Addr::LOCALHOST) {
            return Err(format!("{s}: the range must not contain 127.0.0.1 (try {DEFAULT_SERVICE_CIDR})"));
        }
        Ok(cidr)
    }
}

/// No free address is left in the range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no free address left in the service range {0} (--service-cidr)")]
pub struct RangeFull(pub ServiceCidr);

impl ServiceCidr {
    /// Whether `ip` is one of the addresses this range hands out.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let ip = u32::from(ip);
        ip > self.network && ip - self.network <= self.usable()
    }

    /// How many addresses are handed out (all but the first and the last).
    pub fn usable(&self) -> u32 {
        (1u32 << (32 - self.prefix)) - 2
    }

    /// The first address for `namespace/name` that is not `taken`: a hash of the name into the range, then
    /// the following addresses in turn, wrapping around, so every usable address is tried once.
    pub fn pick(&self, namespace: &str, name: &str, taken: &HashSet<Ipv4Addr>) -> Result<Ipv4Addr, RangeFull> {
        let usable = self.usable();
        let start = u32::try_from(fnv1a(namespace, name) % u64::from(usable)).unwrap_or(0);
        (0..usable)
            .map(|i| Ipv4Addr::from(self.network + 1 + (start + i) % usable))
            .find(|ip| !taken.contains(ip))
            .ok_or(RangeFull(*self))
    }
}

/// FNV-1a of `namespace/name`: fixed across builds and platforms, unlike std's hasher.
fn fnv1a(namespace: &str, name: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in namespace.bytes().chain(std::iter::once(b'/')).chain(name.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

// ---------------------------------------------------------------------------------------------------------
// The store side

/// What an allocation record says: whose address it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Record {
    namespace: String,
    name: String,
}

/// An address this request holds in the store.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Claim {
    ip: Ipv4Addr,
    /// The record's revision as this request wrote it.
    revision: u64,
    /// Written by this request as a new record (not taken over from an earlier life of the same Service): only
    /// such a claim is released when the Service's create fails.
    fresh: bool,
}

fn record_key(ip: Ipv4Addr) -> Key {
    Key::new(CLUSTER_IPS_KIND, "", ip.to_string())
}

fn invalid(message: String) -> ApiError {
    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "Invalid", message)
}

/// What a Service object asks for in `spec.clusterIP`.
enum Wanted {
    Headless,
    Any,
    Address(Ipv4Addr),
}

fn wanted(object: &Value, cidr: &ServiceCidr) -> Result<Wanted, ApiError> {
    match object.pointer("/spec/clusterIP").and_then(Value::as_str) {
        None | Some("") => Ok(Wanted::Any),
        Some("None") => Ok(Wanted::Headless),
        Some(s) => match s.parse::<Ipv4Addr>() {
            Ok(ip) if cidr.contains(ip) => Ok(Wanted::Address(ip)),
            _ => Err(invalid(format!("spec.clusterIP: {s} is not in the service range {cidr} (--service-cidr)"))),
        },
    }
}

/// For a Service create's dry run: the checks a real create makes before it claims anything.
pub(crate) fn check(object: &Value, cidr: &ServiceCidr) -> Result<(), ApiError> {
    wanted(object, cidr).map(|_| ())
}

/// Claim the address a new Service asks for, or allocate one, and write it into `object`'s `spec.clusterIP`.
/// `None` for a headless Service.
pub(crate) async fn claim(
    store: &dyn Store,
    cidr: &ServiceCidr,
    namespace: &str,
    name: &str,
    object: &mut Value,
) -> Result<Option<Claim>, ApiError> {
    let owner = Record { namespace: namespace.to_string(), name: name.to_string() };
    let claim = match wanted(object, cidr)? {
        Wanted::Headless => return Ok(None),
        Wanted::Address(ip) => claim_address(store, ip, &owner)
            .await?
            .ok_or_else(|| invalid(format!("spec.clusterIP: {ip} is already allocated to another Service")))?,
        Wanted::Any => allocate(store, cidr, &owner).await?,
    };
    object["spec"]["clusterIP"] = Value::String(claim.ip.to_string());
    Ok(Some(claim))
}

/// Claim `ip` for `owner`: a new record, or the record an earlier life of the same Service left behind
/// (rewritten, so that a concurrent create of that name releasing its own claim cannot delete it). `None`
/// when another Service holds it.
async fn claim_address(store: &dyn Store, ip: Ipv4Addr, owner: &Record) -> Result<Option<Claim>, ApiError> {
    let key = record_key(ip);
    let value = serde_json::to_vec(owner).map_err(|e| invalid(e.to_string()))?;
    for _ in 0..8 {
        match store.create(&key, value.clone()).await {
            Ok(revision) => return Ok(Some(Claim { ip, revision, fresh: true })),
            Err(StoreError::AlreadyExists(_)) => {}
            Err(e) => return Err(e.into()),
        }
        let Some(current) = store.get(&key).await? else { continue };
        if serde_json::from_slice::<Record>(&current.value).ok().as_ref() != Some(owner) {
            return Ok(None);
        }
        match store.update(&key, value.clone(), current.revision).await {
            Ok(revision) => return Ok(Some(Claim { ip, revision, fresh: false })),
            Err(StoreError::Conflict { .. } | StoreError::NotFound(_)) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(ApiError::new(StatusCode::CONFLICT, "Conflict", format!("{key}: too many concurrent writers, try again")))
}

/// Allocate an address for `owner`: the one an earlier life of the Service (or a concurrent create of it)
/// holds, else the first free candidate of [`ServiceCidr::pick`]; an address another Service won meanwhile is
/// skipped.
async fn allocate(store: &dyn Store, cidr: &ServiceCidr, owner: &Record) -> Result<Claim, ApiError> {
    let prefix = Prefix { kind: CLUSTER_IPS_KIND.to_string(), namespace: Some(String::new()) };
    let (records, _) = store.list(&prefix, None).await?;
    let mut taken = HashSet::new();
    let mut own = None;
    for r in &records {
        let Ok(ip) = r.key.name.parse::<Ipv4Addr>() else { continue };
        taken.insert(ip);
        if own.is_none() && cidr.contains(ip) && serde_json::from_slice::<Record>(&r.value).ok().as_ref() == Some(owner)
        {
            own = Some(ip);
        }
    }
    if let Some(ip) = own {
        if let Some(claim) = claim_address(store, ip, owner).await? {
            return Ok(claim);
        }
    }
    loop {
        let ip =
            cidr.pick(&owner.namespace, &owner.name, &taken).map_err(|e| invalid(format!("spec.clusterIP: {e}")))?;
        // Another replica may have claimed this address meanwhile, perhaps for this very Service.
        match claim_address(store, ip, owner).await? {
            Some(claim) => return Ok(claim),
            None => {
                taken.insert(ip);
            }
        }
    }
}

/// Undo a claim whose Service was not created. Only a fresh claim, and only if nobody rewrote it since.
pub(crate) async fn release(store: &dyn Store, claim: Option<Claim>) {
    let Some(claim) = claim.filter(|c| c.fresh) else { return };
    match store.delete(&record_key(claim.ip), Some(claim.revision)).await {
        Ok(_) | Err(StoreError::NotFound(_) | StoreError::Conflict { .. }) => {}
        Err(e) => tracing::warn!(ip = %claim.ip, error = %e, "cannot release a service address; it stays allocated"),
    }
}

/// Free the address of a Service that was just deleted (`object` is its last stored value), if its record
/// still names that Service.
pub(crate) async fn free(store: &dyn Store, namespace: &str, name: &str, object: &Value) {
    let Some(ip) = object.pointer("/spec/clusterIP").and_then(Value::as_str).and_then(|s| s.parse::<Ipv4Addr>().ok())
    else {
        return;
    };
    let key = record_key(ip);
    let owner = Record { namespace: namespace.to_string(), name: name.to_string() };
    let result = match store.get(&key).await {
        Ok(Some(r)) if serde_json::from_slice::<Record>(&r.value).ok().as_ref() == Some(&owner) => {
            store.delete(&key, Some(r.revision)).await.map(|_| ())
        }
        Ok(_) => Ok(()),
        Err(e) => Err(e),
    };
    match result {
        Ok(()) | Err(StoreError::NotFound(_) | StoreError::Conflict { .. }) => {}
        Err(e) => tracing::warn!(%ip, error = %e, "cannot free a deleted service's address; it stays allocated"),
    }
}

/// `spec.clusterIP` is immutable: a desired Service that omits it (or leaves it empty) keeps the stored one,
/// so re-applying the manifest it was created from is unchanged; one that names another is refused.
pub fn carry(stored: &Value, desired: &mut Value) -> Result<(), String> {
    let old = stored.pointer("/spec/clusterIP").and_then(Value::as_str).unwrap_or("");
    let new = desired.pointer("/spec/clusterIP").and_then(Value::as_str).unwrap_or("");
    if new.is_empty() {
        if !old.is_empty() {
            if let Some(spec) = desired.get_mut("spec").and_then(Value::as_object_mut) {
                spec.insert("clusterIP".into(), Value::String(old.to_string()));
            }
        }
        return Ok(());
    }
    if new != old {
        return Err(format!(
            "spec.clusterIP: field is immutable (is {:?}, asked {new:?}); delete and re-create the Service",
            if old.is_empty() { "<unset>" } else { old }
        ));
    }
    Ok(())
}

pub(crate) fn carry_api(stored: &Value, desired: &mut Value) -> Result<(), ApiError> {
    carry(stored, desired).map_err(invalid)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cidr(s: &str) -> ServiceCidr {
        s.parse().unwrap()
    }

    #[test]
    fn ranges_are_checked() {
        for (input, error) in [
            ("127.64.0.0", "not a CIDR"),
            ("10.0.0.0/12", "inside 127.0.0.0/8"),
            ("127.64.0.0/7", "inside 127.0.0.0/8"),
            ("127.0.0.0/8", "127.0.0.1"),
            ("127.0.0.0/24", "127.0.0.1"),
            ("127.64.0.0/29", "too few"),
            ("127.64.0.1/12", "host bits"),
            ("127.64.0.0/x", "prefix length"),
            ("::1/128", "IPv4"),
        ] {
            let e = input.parse::<ServiceCidr>().unwrap_err();
            assert!(e.contains(error), "{input}: {e}");
        }
        assert_eq!(cidr("127.64.0.0/12").to_string(), "127.64.0.0/12");
        assert_eq!(ServiceCidr::default(), cidr(DEFAULT_SERVICE_CIDR));
        assert_eq!(cidr("127.128.0.0/9").usable(), (1 << 23) - 2);
    }

    #[test]
    fn the_first_and_last_addresses_are_never_handed_out() {
        let c = cidr("127.1.2.0/28");
        assert!(!c.contains("127.1.2.0".parse().unwrap()));
        assert!(c.contains("127.1.2.1".parse().unwrap()));
        assert!(c.contains("127.1.2.14".parse().unwrap()));
        assert!(!c.contains("127.1.2.15".parse().unwrap()));
        assert!(!c.contains("127.1.2.16".parse().unwrap()));
        assert!(!c.contains("127.1.1.255".parse().unwrap()));
    }

    #[test]
    fn picking_is_stable_spread_and_probes_linearly() {
        let c = cidr(DEFAULT_SERVICE_CIDR);
        let none = HashSet::new();
        let a = c.pick("default", "web", &none).unwrap();
        assert_eq!(a, c.pick("default", "web", &none).unwrap(), "a pure function of the name");
        assert!(c.contains(a));
        let spread: HashSet<Ipv4Addr> = (0..100).map(|i| c.pick("default", &format!("s{i}"), &none).unwrap()).collect();
        assert_eq!(spread.len(), 100, "different names start at different addresses");
        // Taken: the next address, wrapping around at the end of the range.
        let next = c.pick("default", "web", &HashSet::from([a])).unwrap();
        let last = c.network + c.usable();
        let expected = if u32::from(a) == last { c.network + 1 } else { u32::from(a) + 1 };
        assert_eq!(u32::from(next), expected);
    }

    #[test]
    fn every_address_of_a_small_range_is_handed_out_once_then_it_is_full() {
        let c = cidr("127.200.0.0/28");
        let mut taken = HashSet::new();
        for _ in 0..14 {
            let ip = c.pick("ns", "svc", &taken).unwrap();
            assert!(c.contains(ip), "{ip}");
            assert!(taken.insert(ip), "{ip} twice");
        }
        let e = c.pick("ns", "svc", &taken).unwrap_err();
        assert_eq!(e.to_string(), "no free address left in the service range 127.200.0.0/28 (--service-cidr)");
    }

    #[test]
    fn an_omitted_address_is_carried_and_a_changed_one_refused() {
        let stored = json!({"spec": {"clusterIP": "127.64.0.9", "ports": []}});
        let mut d = json!({"spec": {"ports": []}});
        carry(&stored, &mut d).unwrap();
        assert_eq!(d["spec"]["clusterIP"], "127.64.0.9");
        let mut d = json!({"spec": {"clusterIP": "", "ports": []}});
        carry(&stored, &mut d).unwrap();
        assert_eq!(d["spec"]["clusterIP"], "127.64.0.9");
        carry(&stored, &mut json!({"spec": {"clusterIP": "127.64.0.9"}})).unwrap();
        let e = carry(&stored, &mut json!({"spec": {"clusterIP": "127.64.0.10"}})).unwrap_err();
        assert!(e.starts_with("spec.clusterIP: field is immutable"), "{e}");
        let e = carry(&stored, &mut json!({"spec": {"clusterIP": "None"}})).unwrap_err();
        assert!(e.contains("immutable"), "{e}");
        let headless = json!({"spec": {"clusterIP": "None"}});
        let mut d = json!({"spec": {}});
        carry(&headless, &mut d).unwrap();
        assert_eq!(d["spec"]["clusterIP"], "None");
    }
}
