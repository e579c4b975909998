//! Berth's [`Autoscaler`] (`berth.dev/v1`), which scales a Deployment on request load (requests per second or
//! concurrency per replica, a p99 latency ceiling) and optionally CPU, and the `autoscaling/v2`
//! [`HorizontalPodAutoscaler`], converted to an Autoscaler when read.
//!
//! HPA metric mapping (anything else is rejected with its path):
//! - `type: Resource`, `resource.name: cpu`, `target.type: Utilization` -> `cpu.targetUtilizationPercent`;
//! - `type: Pods` or `type: Object`, metric names `requests_per_second`, `http_requests_per_second`,
//!   `http_requests` (read as a per-second rate, as prometheus-adapter exposes it), with an `AverageValue`
//!   target -> `requestsPerSecond.targetPerReplica`;
//! - the same with names `concurrency`, `requests_in_flight`, `http_requests_in_flight` -> `concurrency`;
//! - the same with names `latency_p99_ms`, `http_request_duration_p99_ms` -> `latencyP99.ceilingMilliseconds`
//!   (`Value` or `AverageValue`);
//! - `Resource` memory, `External` and `ContainerResource` metrics are dropped with a warning.
//!
//! An HPA with no metrics gets Kubernetes' default, CPU at 80%.

use super::meta::*;
use super::quantity::Quantity;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Autoscaler {
    #[serde(default)]
    pub api_version: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    pub spec: AutoscalerSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<AutoscalerStatus>,
}

fn default_one() -> i32 {
    1
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AutoscalerSpec {
    pub scale_target_ref: ScaleTargetRef,
    /// 0 allows scale to zero (the proxy holds the first requests while a replica starts).
    #[serde(default = "default_one")]
    pub min_replicas: i32,
    pub max_replicas: i32,
    pub metrics: Vec<AutoscalerMetric>,
    /// Filled with the defaults (see [`Behavior::default`]) when absent.
    #[serde(default)]
    pub behavior: Behavior,
}

fn default_apps_v1() -> String {
    "apps/v1".into()
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ScaleTargetRef {
    #[serde(default = "default_apps_v1")]
    pub api_version: String,
    pub kind: String,
    pub name: String,
}

/// One metric; exactly one field is set. With several metrics the largest desired replica count wins.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AutoscalerMetric {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests_per_second: Option<PerReplicaTarget>,
    /// In-flight requests per replica.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<PerReplicaTarget>,
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "latencyP99")]
    pub latency_p99: Option<LatencyCeiling>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<CpuTarget>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PerReplicaTarget {
    pub target_per_replica: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LatencyCeiling {
    pub ceiling_milliseconds: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CpuTarget {
    /// Percent of the pods' CPU request.
    pub target_utilization_percent: i32,
}

/// Which metric an [`AutoscalerMetric`] is, for status and messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum MetricName {
    RequestsPerSecond,
    Concurrency,
    #[serde(rename = "latencyP99")]
    LatencyP99,
    Cpu,
}

impl AutoscalerMetric {
    /// The metric and its target value (per replica, milliseconds or percent).
    pub fn target(&self) -> Option<(MetricName, f64)> {
        if let Some(t) = &self.requests_per_second {
            Some((MetricName::RequestsPerSecond, t.target_per_replica))
        } else if let Some(t) = &self.concurrency {
            Some((MetricName::Concurrency, t.target_per_replica))
        } else if let Some(t) = &self.latency_p99 {
            Some((MetricName::LatencyP99, t.ceiling_milliseconds))
        } else {
            self.cpu.as_ref().map(|t| (MetricName::Cpu, f64::from(t.target_utilization_percent)))
        }
    }
}

/// HPA v2 `behavior`, with a per-direction tolerance (default 10%).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Behavior {
    #[serde(default = "ScalingRules::default_up")]
    pub scale_up: ScalingRules,
    #[serde(default = "ScalingRules::default_down")]
    pub scale_down: ScalingRules,
}

impl Default for Behavior {
    /// HPA's defaults: up with no stabilization, at most +100% or +4 pods per 15 s (the larger); down after a
    /// 300 s window, at most -100% per 15 s.
    fn default() -> Self {
        Behavior { scale_up: ScalingRules::default_up(), scale_down: ScalingRules::default_down() }
    }
}

fn default_tolerance() -> f64 {
    0.1
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ScalingRules {
    pub stabilization_window_seconds: i32,
    #[serde(default)]
    pub select_policy: SelectPolicy,
    #[serde(default)]
    pub policies: Vec<ScalingPolicy>,
    /// Relative change of the metric ignored as noise.
    #[serde(default = "default_tolerance")]
    pub tolerance: f64,
}

impl ScalingRules {
    pub fn default_up() -> Self {
        ScalingRules {
            stabilization_window_seconds: 0,
            select_policy: SelectPolicy::Max,
            policies: vec![
                ScalingPolicy { type_: ScalingPolicyType::Percent, value: 100, period_seconds: 15 },
                ScalingPolicy { type_: ScalingPolicyType::Pods, value: 4, period_seconds: 15 },
            ],
            tolerance: default_tolerance(),
        }
    }

    pub fn default_down() -> Self {
        ScalingRules {
            stabilization_window_seconds: 300,
            select_policy: SelectPolicy::Max,
            policies: vec![ScalingPolicy { type_: ScalingPolicyType::Percent, value: 100, period_seconds: 15 }],
            tolerance: default_tolerance(),
        }
    }

    fn check(&self, p: &str) -> CheckResult {
        if !(0..=3600).contains(&self.stabilization_window_seconds) {
            return Err(field_err(join(p, "stabilizationWindowSeconds"), "must be between 0 and 3600"));
        }
        if !(0.0..1.0).contains(&self.tolerance) {
            return Err(field_err(join(p, "tolerance"), "must be >= 0 and < 1"));
        }
        if self.policies.is_empty() && self.select_policy != SelectPolicy::Disabled {
            return Err(field_err(
                join(p, "policies"),
                "at least one policy is required unless selectPolicy is Disabled",
            ));
        }
        for (i, pol) in self.policies.iter().enumerate() {
            let pp = index(p, "policies", i);
            if pol.value < 1 {
                return Err(field_err(join(&pp, "value"), format!("must be >= 1 (got {})", pol.value)));
            }
            if !(1..=1800).contains(&pol.period_seconds) {
                return Err(field_err(join(&pp, "periodSeconds"), "must be between 1 and 1800"));
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SelectPolicy {
    #[default]
    Max,
    Min,
    Disabled,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ScalingPolicy {
    #[serde(rename = "type")]
    pub type_: ScalingPolicyType,
    pub value: i32,
    pub period_seconds: i32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ScalingPolicyType {
    Pods,
    Percent,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AutoscalerStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default)]
    pub current_replicas: i32,
    #[serde(default)]
    pub desired_replicas: i32,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub current_metrics: Vec<MetricStatus>,
    /// `AbleToScale`, `ScalingActive` (False with reason `MetricsMissing` when metrics are stale),
    /// `ScalingLimited`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scale_time: Option<Time>,
    /// The latest scaling decisions, newest last (at most [`RECENT_DECISIONS`]). Berth has no Event kind; this
    /// is what `berth describe autoscaler` shows as events.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recent_decisions: Vec<ScaleRecord>,
}

/// How many decisions [`AutoscalerStatus::recent_decisions`] keeps.
pub const RECENT_DECISIONS: usize = 10;

/// One scaling decision, as recorded in status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ScaleRecord {
    pub time: Time,
    pub from_replicas: i32,
    pub to_replicas: i32,
    /// Why, e.g. `requestsPerSecond 300/50 per replica wants 6`.
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MetricStatus {
    pub name: MetricName,
    /// Per replica (rps, concurrency), milliseconds (latency) or percent (cpu); absent when unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current: Option<f64>,
    pub target: f64,
    /// The last sample is too old to act on.
    #[serde(default)]
    pub stale: bool,
    /// Human-readable `current/target` for `berth get autoscalers` (e.g. `rps 42/50`), written by the
    /// autoscaler controller.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display: Option<String>,
}

impl Autoscaler {
    pub(crate) fn check(&self, _cx: &mut Check) -> CheckResult {
        let s = &self.spec;
        let t = &s.scale_target_ref;
        if t.kind != "Deployment" || t.api_version != "apps/v1" {
            return Err(field_err(
                "spec.scaleTargetRef",
                format!("only apps/v1 Deployment can be scaled (got {} {})", t.api_version, t.kind),
            ));
        }
        validate_dns_subdomain(&t.name).map_err(|m| field_err("spec.scaleTargetRef.name", m))?;
        if s.min_replicas < 0 {
            return Err(field_err("spec.minReplicas", format!("must be >= 0 (got {})", s.min_replicas)));
        }
        if s.max_replicas < 1 {
            return Err(field_err("spec.maxReplicas", format!("must be >= 1 (got {})", s.max_replicas)));
        }
        if s.min_replicas > s.max_replicas {
            return Err(field_err(
                "spec.minReplicas",
                format!("must not exceed maxReplicas ({} > {})", s.min_replicas, s.max_replicas),
            ));
        }
        if s.metrics.is_empty() {
            return Err(field_err("spec.metrics", "at least one metric is required"));
        }
        for (i, m) in s.metrics.iter().enumerate() {
            let mp = index("spec", "metrics", i);
            let n = usize::from(m.requests_per_second.is_some())
                + usize::from(m.concurrency.is_some())
                + usize::from(m.latency_p99.is_some())
                + usize::from(m.cpu.is_some());
            if n != 1 {
                return Err(field_err(
                    mp,
                    "exactly one of requestsPerSecond, concurrency, latencyP99, cpu must be set",
                ));
            }
            let positive = |path: String, v: f64| -> CheckResult {
                if v.is_finite() && v > 0.0 {
                    Ok(())
                } else {
                    Err(field_err(path, format!("must be a number > 0 (got {v})")))
                }
            };
            if let Some(t) = &m.requests_per_second {
                positive(join(&mp, "requestsPerSecond.targetPerReplica"), t.target_per_replica)?;
            }
            if let Some(t) = &m.concurrency {
                positive(join(&mp, "concurrency.targetPerReplica"), t.target_per_replica)?;
            }
            if let Some(t) = &m.latency_p99 {
                positive(join(&mp, "latencyP99.ceilingMilliseconds"), t.ceiling_milliseconds)?;
            }
            if let Some(t) = &m.cpu {
                if t.target_utilization_percent < 1 {
                    return Err(field_err(join(&mp, "cpu.targetUtilizationPercent"), "must be >= 1"));
                }
            }
        }
        if s.min_replicas == 0 && s.metrics.iter().all(|m| m.cpu.is_some()) {
            return Err(field_err(
                "spec.minReplicas",
                "0 needs a request metric (requestsPerSecond or concurrency): CPU cannot wake a scaled-to-zero target",
            ));
        }
        s.behavior.scale_up.check("spec.behavior.scaleUp")?;
        s.behavior.scale_down.check("spec.behavior.scaleDown")?;
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------------------
// HorizontalPodAutoscaler (autoscaling/v2)

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HorizontalPodAutoscaler {
    #[serde(default)]
    pub api_version: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    pub spec: HpaSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Ignored>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HpaSpec {
    pub scale_target_ref: ScaleTargetRef,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_replicas: Option<i32>,
    pub max_replicas: i32,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub metrics: Vec<HpaMetricSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub behavior: Option<HpaBehavior>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HpaMetricSpec {
    #[serde(rename = "type")]
    pub type_: HpaMetricType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<HpaResourceMetric>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pods: Option<HpaPodsMetric>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object: Option<HpaObjectMetric>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external: Option<Ignored>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_resource: Option<Ignored>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum HpaMetricType {
    Resource,
    Pods,
    Object,
    External,
    ContainerResource,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HpaResourceMetric {
    pub name: String,
    pub target: HpaMetricTarget,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HpaPodsMetric {
    pub metric: HpaMetricIdentifier,
    pub target: HpaMetricTarget,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HpaObjectMetric {
    pub described_object: HpaObjectReference,
    pub metric: HpaMetricIdentifier,
    pub target: HpaMetricTarget,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HpaObjectReference {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    pub kind: String,
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HpaMetricIdentifier {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HpaMetricTarget {
    #[serde(rename = "type")]
    pub type_: HpaTargetType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<Quantity>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub average_value: Option<Quantity>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub average_utilization: Option<i32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum HpaTargetType {
    Utilization,
    Value,
    AverageValue,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HpaBehavior {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_up: Option<HpaScalingRules>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_down: Option<HpaScalingRules>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HpaScalingRules {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stabilization_window_seconds: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub select_policy: Option<SelectPolicy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policies: Option<Vec<ScalingPolicy>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tolerance: Option<Quantity>,
}

impl HpaScalingRules {
    fn merge_into(&self, mut base: ScalingRules) -> ScalingRules {
        if let Some(w) = self.stabilization_window_seconds {
            base.stabilization_window_seconds = w;
        }
        if let Some(s) = self.select_policy {
            base.select_policy = s;
        }
        if let Some(p) = &self.policies {
            base.policies = p.clone();
        }
        if let Some(t) = &self.tolerance {
            base.tolerance = t.as_f64();
        }
        base
    }
}

const RPS_NAMES: &[&str] = &["requests_per_second", "http_requests_per_second", "http_requests"];
const CONCURRENCY_NAMES: &[&str] = &["concurrency", "requests_in_flight", "http_requests_in_flight"];
const LATENCY_NAMES: &[&str] = &["latency_p99_ms", "http_request_duration_p99_ms"];

impl HorizontalPodAutoscaler {
    /// The equivalent Autoscaler (same metadata); see the module documentation for the metric mapping.
    pub(crate) fn into_autoscaler(self, cx: &mut Check) -> Result<Autoscaler, FieldError> {
        let s = &self.spec;
        let mut metrics = Vec::new();
        for (i, m) in s.metrics.iter().enumerate() {
            let mp = index("spec", "metrics", i);
            if let Some(metric) = convert_metric(&mp, m, cx)? {
                metrics.push(metric);
            }
        }
        if s.metrics.is_empty() {
            metrics.push(AutoscalerMetric {
                cpu: Some(CpuTarget { target_utilization_percent: 80 }),
                ..Default::default()
            });
        } else if metrics.is_empty() {
            return Err(field_err("spec.metrics", "none of the metrics is supported by Berth"));
        }
        let behavior = match &s.behavior {
            None => Behavior::default(),
            Some(b) => Behavior {
                scale_up: b
                    .scale_up
                    .as_ref()
                    .map_or_else(ScalingRules::default_up, |r| r.merge_into(ScalingRules::default_up())),
                scale_down: b
                    .scale_down
                    .as_ref()
                    .map_or_else(ScalingRules::default_down, |r| r.merge_into(ScalingRules::default_down())),
            },
        };
        Ok(Autoscaler {
            api_version: super::Kind::Autoscaler.api_version().into(),
            kind: super::Kind::Autoscaler.kind_name().into(),
            metadata: self.metadata,
            spec: AutoscalerSpec {
                scale_target_ref: s.scale_target_ref.clone(),
                min_replicas: s.min_replicas.unwrap_or(1),
                max_replicas: s.max_replicas,
                metrics,
                behavior,
            },
            status: None,
        })
    }
}

fn convert_metric(mp: &str, m: &HpaMetricSpec, cx: &mut Check) -> Result<Option<AutoscalerMetric>, FieldError> {
    let missing = |field: &str| field_err(join(mp, field), format!("required when type is {:?}", m.type_));
    match m.type_ {
        HpaMetricType::Resource => {
            let r = m.resource.as_ref().ok_or_else(|| missing("resource"))?;
            let rp = join(mp, "resource");
            if r.name != "cpu" {
                cx.warn(&join(&rp, "name"), format!("resource metric {:?} is not supported; dropped", r.name));
                return Ok(None);
            }
            match (r.target.type_, r.target.average_utilization) {
                (HpaTargetType::Utilization, Some(pct)) if pct >= 1 => Ok(Some(AutoscalerMetric {
                    cpu: Some(CpuTarget { target_utilization_percent: pct }),
                    ..Default::default()
                })),
                (HpaTargetType::Utilization, _) => {
                    Err(field_err(join(&rp, "target.averageUtilization"), "required (>= 1) for a Utilization target"))
                }
                _ => Err(field_err(join(&rp, "target.type"), "Berth scales on CPU only by Utilization")),
            }
        }
        HpaMetricType::Pods | HpaMetricType::Object => {
            let (name, target, tp) = match m.type_ {
                HpaMetricType::Pods => {
                    let p = m.pods.as_ref().ok_or_else(|| missing("pods"))?;
                    (&p.metric.name, &p.target, join(mp, "pods"))
                }
                _ => {
                    let o = m.object.as_ref().ok_or_else(|| missing("object"))?;
                    (&o.metric.name, &o.target, join(mp, "object"))
                }
            };
            let per_replica = |what: &str| -> Result<f64, FieldError> {
                match (target.type_, &target.average_value) {
                    (HpaTargetType::AverageValue, Some(v)) if !v.is_zero() => Ok(v.as_f64()),
                    _ => Err(field_err(
                        join(&tp, "target"),
                        format!("{what} needs an AverageValue target (per replica) greater than 0"),
                    )),
                }
            };
            let n = name.as_str();
            if RPS_NAMES.contains(&n) {
                let v = per_replica("a request-rate metric")?;
                Ok(Some(AutoscalerMetric {
                    requests_per_second: Some(PerReplicaTarget { target_per_replica: v }),
                    ..Default::default()
                }))
            } else if CONCURRENCY_NAMES.contains(&n) {
                let v = per_replica("a concurrency metric")?;
                Ok(Some(AutoscalerMetric {
                    concurrency: Some(PerReplicaTarget { target_per_replica: v }),
                    ..Default::default()
                }))
            } else if LATENCY_NAMES.contains(&n) {
                let v = target.value.as_ref().or(target.average_value.as_ref()).filter(|v| !v.is_zero()).ok_or_else(
                    || field_err(join(&tp, "target"), "a latency ceiling needs a Value or AverageValue greater than 0"),
                )?;
                Ok(Some(AutoscalerMetric {
                    latency_p99: Some(LatencyCeiling { ceiling_milliseconds: v.as_f64() }),
                    ..Default::default()
                }))
            } else {
                let known: Vec<&str> =
                    RPS_NAMES.iter().chain(CONCURRENCY_NAMES).chain(LATENCY_NAMES).copied().collect();
                Err(field_err(
                    join(&tp, "metric.name"),
                    format!("unknown metric {n:?} (Berth knows {})", known.join(", ")),
                ))
            }
        }
        HpaMetricType::External | HpaMetricType::ContainerResource => {
            cx.warn(mp, format!("{:?} metrics are not supported; dropped", m.type_));
            Ok(None)
        }
    }
}
