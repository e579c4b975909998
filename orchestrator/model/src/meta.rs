//! Object metadata and the small shared shapes every kind uses: [`ObjectMeta`], [`LabelSelector`],
//! [`IntOrString`], [`Condition`], [`Time`], and the name rules (DNS-1123/1035).
//!
//! Also the internal validation context ([`Check`]) that collects warnings and reports the first error with its
//! field path. Nothing here knows about manifests as files; see `manifest.rs` for that.

use discovery::Labels;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, SystemTime};

/// Well-known label and annotation keys shared by the controllers, the scheduler and the agent.
pub mod well_known {
    /// Node label with the node's name (anti-affinity "one per node" uses it as `topologyKey`).
    pub const HOSTNAME_LABEL: &str = "kubernetes.io/hostname";
    /// Node label with the node's zone (`berth up --agents N` sets `zone-a`, `zone-b`, ...).
    pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";
    /// Pod label with the hash of the Deployment template that made it (one value per revision).
    pub const POD_TEMPLATE_HASH_LABEL: &str = "pod-template-hash";
    /// Deployment (and pod) annotation with the rollout revision number, as Kubernetes writes it.
    pub const REVISION_ANNOTATION: &str = "deployment.kubernetes.io/revision";
    /// Deployment annotation saying why its template changed; kept per revision for `rollout history`.
    pub const CHANGE_CAUSE_ANNOTATION: &str = "kubernetes.io/change-cause";
    /// Deployment annotation `"true"`: roll out again when a ConfigMap or Secret it references changes.
    pub const ROLLOUT_ON_CONFIG_CHANGE_ANNOTATION: &str = "berth.dev/rollout-on-config-change";
    /// Pod template annotation the Deployment controller sets (when the Deployment has
    /// [`ROLLOUT_ON_CONFIG_CHANGE_ANNOTATION`]) to a hash of the ConfigMaps and Secrets the template references,
    /// so a change to them makes a new revision.
    pub const CONFIG_HASH_ANNOTATION: &str = "berth.dev/config-hash";
}

/// A value Berth accepts because Kubernetes defines it, but does not act on. It is kept (so `get -o yaml`
/// shows what the user wrote) and every occurrence produces a warning naming its path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Ignored(pub serde_json::Value);

/// A validation failure at a field path (relative to the document root, e.g. `spec.replicas`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub path: String,
    pub message: String,
}

pub(crate) type CheckResult = Result<(), FieldError>;

pub(crate) fn field_err(path: impl Into<String>, message: impl Into<String>) -> FieldError {
    FieldError { path: path.into(), message: message.into() }
}

/// Collects warnings while a document is validated.
#[derive(Debug, Default)]
pub(crate) struct Check {
    pub warnings: Vec<String>,
}

impl Check {
    pub fn warn(&mut self, path: &str, message: impl fmt::Display) {
        self.warnings.push(format!("{path}: {message}"));
    }

    /// Warn when a known-but-unimplemented Kubernetes field is present.
    pub fn ignored(&mut self, path: &str, field: &str, value: &Option<Ignored>) {
        if value.is_some() {
            self.warnings.push(format!("{}: accepted but ignored (Berth does not implement it)", join(path, field)));
        }
    }

    /// Reject a Kubernetes field whose absence would change what the workload does.
    pub fn unsupported(&mut self, path: &str, field: &str, value: &Option<Ignored>) -> CheckResult {
        match value {
            Some(_) => Err(field_err(join(path, field), "not supported by Berth")),
            None => Ok(()),
        }
    }
}

/// `a` + `b` -> `a.b` (or `b` at the root).
pub(crate) fn join(path: &str, field: &str) -> String {
    if path.is_empty() {
        field.to_string()
    } else {
        format!("{path}.{field}")
    }
}

pub(crate) fn index(path: &str, field: &str, i: usize) -> String {
    format!("{}[{i}]", join(path, field))
}

// ---------------------------------------------------------------------------------------------------------
// Names

/// DNS-1123 label: at most 63 lowercase alphanumerics or '-', starting and ending alphanumeric.
pub fn validate_dns_label(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("must not be empty".into());
    }
    if name.len() > 63 {
        return Err(format!("{name:?} is longer than 63 characters"));
    }
    let b = name.as_bytes();
    let ok_char = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-';
    if !b.iter().all(ok_char) || b[0] == b'-' || b[b.len() - 1] == b'-' {
        return Err(format!(
            "{name:?} must consist of lowercase alphanumerics or '-', and start and end with an alphanumeric \
             (DNS-1123 label)"
        ));
    }
    Ok(())
}

/// DNS-1123 subdomain: at most 253 characters, dot-separated DNS-1123 labels.
pub fn validate_dns_subdomain(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("must not be empty".into());
    }
    if name.len() > 253 {
        return Err(format!("{name:?} is longer than 253 characters"));
    }
    if name.split('.').any(|part| validate_dns_label(part).is_err()) {
        return Err(format!(
            "{name:?} must consist of lowercase alphanumerics, '-' or '.', and start and end with an alphanumeric \
             (DNS-1123 subdomain)"
        ));
    }
    Ok(())
}

/// DNS-1035 label (Service names): a DNS-1123 label that starts with a letter.
pub fn validate_dns1035_label(name: &str) -> Result<(), String> {
    validate_dns_label(name)?;
    if !name.as_bytes()[0].is_ascii_lowercase() {
        return Err(format!("{name:?} must start with a lowercase letter (DNS-1035 label)"));
    }
    Ok(())
}

/// IANA service name (named ports): at most 15 lowercase alphanumerics or '-', with a letter, no '--'.
pub fn validate_port_name(name: &str) -> Result<(), String> {
    let b = name.as_bytes();
    let valid = !b.is_empty()
        && b.len() <= 15
        && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b.iter().any(|c| c.is_ascii_lowercase())
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
        && !name.contains("--");
    if valid {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a valid port name (1-15 lowercase alphanumerics or '-', with at least one letter)"
        ))
    }
}

pub(crate) fn check_label_map(path: &str, labels: &Labels) -> CheckResult {
    for (k, v) in labels {
        discovery::labels::validate_key(k).map_err(|e| field_err(path, e.to_string()))?;
        discovery::labels::validate_value(v).map_err(|e| field_err(path, e.to_string()))?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------------------
// Time

/// A point in time, written as RFC 3339 in UTC (`2026-01-02T03:04:05Z`, fractional seconds when present).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Time(pub SystemTime);

impl Time {
    pub fn now() -> Self {
        Time(SystemTime::now())
    }

    /// Time elapsed from `self` to `now` (zero if `now` is earlier).
    pub fn age(&self, now: SystemTime) -> Duration {
        now.duration_since(self.0).unwrap_or_default()
    }
}

impl From<SystemTime> for Time {
    fn from(t: SystemTime) -> Self {
        Time(t)
    }
}

impl fmt::Display for Time {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let nanos = self.0.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
        if nanos == 0 {
            write!(f, "{}", humantime::format_rfc3339_seconds(self.0))
        } else if (nanos / 1_000_000) * 1_000_000 == nanos {
            write!(f, "{}", humantime::format_rfc3339_millis(self.0))
        } else {
            write!(f, "{}", humantime::format_rfc3339_micros(self.0))
        }
    }
}

impl Serialize for Time {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Time {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let t = humantime::parse_rfc3339_weak(&s)
            .map_err(|e| serde::de::Error::custom(format!("invalid RFC 3339 time {s:?}: {e}")))?;
        // Round to microseconds so that printing and reading back gives the same value.
        let since = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
        let micros = Duration::from_micros(since.as_micros() as u64);
        Ok(Time(SystemTime::UNIX_EPOCH + micros))
    }
}

// ---------------------------------------------------------------------------------------------------------
// ObjectMeta

/// Kubernetes `metadata`. `resourceVersion` is the store revision as a decimal string, as in Kubernetes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectMeta {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// Filled with the default namespace for namespaced kinds; empty for cluster-scoped ones.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: Labels,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creation_timestamp: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deletion_timestamp: Option<Time>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub owner_references: Vec<OwnerReference>,
    // Known to Kubernetes, ignored by Berth (a warning names each).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generate_name: Option<Ignored>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finalizers: Option<Ignored>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub managed_fields: Option<Ignored>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub self_link: Option<Ignored>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deletion_grace_period_seconds: Option<Ignored>,
}

impl ObjectMeta {
    /// The store revision parsed from `resourceVersion`, if present and numeric.
    pub fn revision(&self) -> Option<u64> {
        self.resource_version.as_deref().and_then(|s| s.parse().ok())
    }

    pub(crate) fn check(&self, path: &str, cx: &mut Check) -> CheckResult {
        check_label_map(&join(path, "labels"), &self.labels)?;
        for k in self.annotations.keys() {
            discovery::labels::validate_key(k).map_err(|e| field_err(join(path, "annotations"), e.to_string()))?;
        }
        if let Some(rv) = &self.resource_version {
            if !rv.is_empty() && rv.parse::<u64>().is_err() {
                return Err(field_err(join(path, "resourceVersion"), format!("{rv:?} is not a revision number")));
            }
        }
        for (i, o) in self.owner_references.iter().enumerate() {
            if o.name.is_empty() || o.kind.is_empty() {
                return Err(field_err(index(path, "ownerReferences", i), "kind and name are required"));
            }
        }
        cx.ignored(path, "generateName", &self.generate_name);
        cx.ignored(path, "finalizers", &self.finalizers);
        cx.ignored(path, "managedFields", &self.managed_fields);
        cx.ignored(path, "selfLink", &self.self_link);
        cx.ignored(path, "deletionGracePeriodSeconds", &self.deletion_grace_period_seconds);
        Ok(())
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OwnerReference {
    pub api_version: String,
    pub kind: String,
    pub name: String,
    #[serde(default)]
    pub uid: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub controller: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block_owner_deletion: Option<bool>,
}

// ---------------------------------------------------------------------------------------------------------
// Label selectors

/// Kubernetes `LabelSelector`: `matchLabels` AND every `matchExpressions` term.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LabelSelector {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub match_labels: Labels,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub match_expressions: Vec<LabelSelectorRequirement>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LabelSelectorRequirement {
    pub key: String,
    pub operator: SelectorOperator,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SelectorOperator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

impl LabelSelector {
    /// True when it has no terms (and so selects everything).
    pub fn is_empty(&self) -> bool {
        self.match_labels.is_empty() && self.match_expressions.is_empty()
    }

    /// The same selector as a discovery [`discovery::Selector`] (built from requirements, not parsed).
    pub fn to_selector(&self) -> discovery::Selector {
        use discovery::{Operator, Requirement};
        let mut requirements: Vec<Requirement> = self
            .match_labels
            .iter()
            .map(|(k, v)| Requirement { key: k.clone(), op: Operator::Equals, values: vec![v.clone()] })
            .collect();
        for e in &self.match_expressions {
            let mut values = e.values.clone();
            values.sort();
            values.dedup();
            let op = match e.operator {
                SelectorOperator::In => Operator::In,
                SelectorOperator::NotIn => Operator::NotIn,
                SelectorOperator::Exists => Operator::Exists,
                SelectorOperator::DoesNotExist => Operator::DoesNotExist,
            };
            if matches!(op, Operator::Exists | Operator::DoesNotExist) {
                values.clear();
            }
            requirements.push(Requirement { key: e.key.clone(), op, values });
        }
        discovery::Selector { requirements }
    }

    pub fn matches(&self, labels: &Labels) -> bool {
        self.to_selector().matches(labels)
    }

    pub(crate) fn check(&self, path: &str) -> CheckResult {
        check_label_map(&join(path, "matchLabels"), &self.match_labels)?;
        for (i, e) in self.match_expressions.iter().enumerate() {
            let p = index(path, "matchExpressions", i);
            discovery::labels::validate_key(&e.key).map_err(|err| field_err(join(&p, "key"), err.to_string()))?;
            match e.operator {
                SelectorOperator::In | SelectorOperator::NotIn if e.values.is_empty() => {
                    return Err(field_err(
                        join(&p, "values"),
                        format!("must be non-empty when operator is {:?}", e.operator),
                    ));
                }
                SelectorOperator::Exists | SelectorOperator::DoesNotExist if !e.values.is_empty() => {
                    return Err(field_err(
                        join(&p, "values"),
                        format!("must be empty when operator is {:?}", e.operator),
                    ));
                }
                _ => {}
            }
            for (j, v) in e.values.iter().enumerate() {
                discovery::labels::validate_value(v)
                    .map_err(|err| field_err(index(&p, "values", j), err.to_string()))?;
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------------------
// IntOrString

/// Kubernetes `IntOrString`: a port number or name, or a count or percentage (`"25%"`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum IntOrString {
    Int(i32),
    String(String),
}

impl IntOrString {
    /// Resolve a count-or-percentage against `total`: percentages round up (`maxSurge`) or down
    /// (`maxUnavailable`), as Kubernetes does.
    pub fn scaled_value(&self, total: i32, round_up: bool) -> Result<i32, String> {
        match self {
            IntOrString::Int(n) => Ok(*n),
            IntOrString::String(s) => {
                let pct = parse_percent(s)?;
                let v = i64::from(pct) * i64::from(total);
                let r = if round_up { (v + 99) / 100 } else { v / 100 };
                Ok(r as i32)
            }
        }
    }
}

pub(crate) fn parse_percent(s: &str) -> Result<i32, String> {
    s.strip_suffix('%')
        .and_then(|n| n.parse::<i32>().ok())
        .filter(|n| *n >= 0)
        .ok_or_else(|| format!("{s:?} must be an integer or a percentage like \"25%\""))
}

impl fmt::Display for IntOrString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IntOrString::Int(n) => write!(f, "{n}"),
            IntOrString::String(s) => f.write_str(s),
        }
    }
}

impl Serialize for IntOrString {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            IntOrString::Int(n) => s.serialize_i32(*n),
            IntOrString::String(v) => s.serialize_str(v),
        }
    }
}

impl<'de> Deserialize<'de> for IntOrString {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = IntOrString;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an integer or a string")
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<IntOrString, E> {
                i32::try_from(v).map(IntOrString::Int).map_err(|_| E::custom(format!("{v} is out of range")))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<IntOrString, E> {
                i32::try_from(v).map(IntOrString::Int).map_err(|_| E::custom(format!("{v} is out of range")))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<IntOrString, E> {
                Ok(IntOrString::String(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

// ---------------------------------------------------------------------------------------------------------
// Conditions

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum ConditionStatus {
    True,
    False,
    #[default]
    Unknown,
}

/// A status condition (`Ready`, `PodScheduled`, `Available`, `Progressing`, ...). One shape for every kind;
/// the timestamps a kind does not use stay empty.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    #[serde(rename = "type")]
    pub type_: String,
    pub status: ConditionStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_update_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_probe_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_heartbeat_time: Option<Time>,
}

/// The condition of type `type_` in a list, if any.
pub fn find_condition<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// Whether the condition of type `type_` is present and `True`.
pub fn condition_is_true(conditions: &[Condition], type_: &str) -> bool {
    find_condition(conditions, type_).is_some_and(|c| c.status == ConditionStatus::True)
}

// ---------------------------------------------------------------------------------------------------------
// Small rules and serde defaults the kinds share

pub(crate) fn is_false(b: &bool) -> bool {
    !*b
}

pub(crate) fn default_one() -> i32 {
    1
}

pub(crate) fn non_negative(path: &str, v: i32) -> CheckResult {
    if v < 0 {
        Err(field_err(path, format!("must be >= 0 (got {v})")))
    } else {
        Ok(())
    }
}

pub(crate) fn at_least_one(path: &str, v: i32) -> CheckResult {
    if v < 1 {
        Err(field_err(path, format!("must be >= 1 (got {v})")))
    } else {
        Ok(())
    }
}

pub(crate) fn check_port(path: &str, port: i32) -> CheckResult {
    if !(1..=65535).contains(&port) {
        return Err(field_err(path, format!("must be between 1 and 65535 (got {port})")));
    }
    Ok(())
}

pub(crate) fn is_http_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["a", "web", "web-1", "0abc"] {
            assert!(validate_dns_label(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-a", "a-", "Web", "a_b", "a.b", &"x".repeat(64)] {
            assert!(validate_dns_label(bad).is_err(), "{bad}");
        }
        assert!(validate_dns_subdomain("a.b-c.d").is_ok());
        assert!(validate_dns_subdomain("a..b").is_err());
        assert!(validate_dns1035_label("1abc").is_err());
        assert!(validate_port_name("http").is_ok());
        assert!(validate_port_name("80").is_err());
        assert!(validate_port_name("a--b").is_err());
        assert!(validate_port_name("abcdefghijklmnop").is_err());
    }

    #[test]
    fn int_or_string_percent() {
        let p = IntOrString::String("25%".into());
        assert_eq!(p.scaled_value(10, true), Ok(3));
        assert_eq!(p.scaled_value(10, false), Ok(2));
        assert_eq!(IntOrString::Int(2).scaled_value(10, true), Ok(2));
        assert!(IntOrString::String("x".into()).scaled_value(10, true).is_err());
    }

    #[test]
    fn time_round_trip() {
        let t: Time = serde_json::from_str("\"2026-01-02T03:04:05Z\"").unwrap();
        assert_eq!(serde_json::to_string(&t).unwrap(), "\"2026-01-02T03:04:05Z\"");
        let t: Time = serde_json::from_str("\"2026-01-02T03:04:05.123456789Z\"").unwrap();
        assert_eq!(serde_json::to_string(&t).unwrap(), "\"2026-01-02T03:04:05.123456Z\"");
    }
}
