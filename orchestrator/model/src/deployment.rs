//! The [`Deployment`] kind: replicas of a pod template, rolled out by strategy.

use super::meta::*;
use super::pod::{PodTemplateSpec, RestartPolicy};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Deployment {
    #[serde(default)]
    pub api_version: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    pub spec: DeploymentSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<DeploymentStatus>,
}

fn default_progress_deadline() -> i32 {
    600
}
fn default_history() -> i32 {
    10
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeploymentSpec {
    #[serde(default = "default_one")]
    pub replicas: i32,
    pub selector: LabelSelector,
    pub template: PodTemplateSpec,
    #[serde(default)]
    pub strategy: DeploymentStrategy,
    #[serde(default)]
    pub min_ready_seconds: i32,
    #[serde(default = "default_progress_deadline")]
    pub progress_deadline_seconds: i32,
    #[serde(default = "default_history")]
    pub revision_history_limit: i32,
    #[serde(default, skip_serializing_if = "is_false")]
    pub paused: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeploymentStrategy {
    #[serde(rename = "type", default)]
    pub type_: StrategyType,
    /// Filled with 25%/25% for `RollingUpdate` when absent; must be absent for `Recreate`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rolling_update: Option<RollingUpdate>,
}

impl Default for DeploymentStrategy {
    fn default() -> Self {
        DeploymentStrategy { type_: StrategyType::RollingUpdate, rolling_update: None }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum StrategyType {
    #[default]
    RollingUpdate,
    Recreate,
}

fn default_quarter() -> IntOrString {
    IntOrString::String("25%".into())
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RollingUpdate {
    #[serde(default = "default_quarter")]
    pub max_surge: IntOrString,
    #[serde(default = "default_quarter")]
    pub max_unavailable: IntOrString,
}

impl Default for RollingUpdate {
    fn default() -> Self {
        RollingUpdate { max_surge: default_quarter(), max_unavailable: default_quarter() }
    }
}

impl RollingUpdate {
    /// `(maxSurge, maxUnavailable)` as pod counts for `replicas` (surge rounds up, unavailable down; if both
    /// come out 0, unavailable becomes 1, as Kubernetes does).
    pub fn resolve(&self, replicas: i32) -> (i32, i32) {
        let surge = self.max_surge.scaled_value(replicas, true).unwrap_or(0).max(0);
        let mut unavailable = self.max_unavailable.scaled_value(replicas, false).unwrap_or(0).max(0);
        if surge == 0 && unavailable == 0 {
            unavailable = 1;
        }
        (surge, unavailable)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeploymentStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default)]
    pub replicas: i32,
    #[serde(default)]
    pub updated_replicas: i32,
    #[serde(default)]
    pub ready_replicas: i32,
    #[serde(default)]
    pub available_replicas: i32,
    #[serde(default)]
    pub unavailable_replicas: i32,
    /// `Available`, `Progressing` (reason `ProgressDeadlineExceeded` on failure), `ReplicaFailure`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collision_count: Option<i32>,
}

impl Deployment {
    pub(crate) fn normalize(&mut self) {
        let s = &mut self.spec.strategy;
        if s.type_ == StrategyType::RollingUpdate && s.rolling_update.is_none() {
            s.rolling_update = Some(RollingUpdate::default());
        }
        self.spec.template.spec.normalize();
    }

    pub(crate) fn check(&self, cx: &mut Check) -> CheckResult {
        let spec = &self.spec;
        if spec.replicas < 0 {
            return Err(field_err("spec.replicas", format!("must be >= 0 (got {})", spec.replicas)));
        }
        non_negative("spec.minReadySeconds", spec.min_ready_seconds)?;
        non_negative("spec.revisionHistoryLimit", spec.revision_history_limit)?;
        if spec.progress_deadline_seconds <= spec.min_ready_seconds {
            return Err(field_err("spec.progressDeadlineSeconds", "must be greater than minReadySeconds".to_string()));
        }
        spec.selector.check("spec.selector")?;
        if spec.selector.is_empty() {
            return Err(field_err("spec.selector", "must not be empty"));
        }
        spec.template.metadata.check("spec.template.metadata", cx)?;
        if !spec.selector.matches(&spec.template.metadata.labels) {
            return Err(field_err(
                "spec.template.metadata.labels",
                format!("do not match spec.selector ({})", spec.selector.to_selector()),
            ));
        }
        match (&spec.strategy.type_, &spec.strategy.rolling_update) {
            (StrategyType::Recreate, Some(_)) => {
                return Err(field_err("spec.strategy.rollingUpdate", "must not be set when strategy type is Recreate"));
            }
            (StrategyType::RollingUpdate, Some(ru)) => {
                let p = "spec.strategy.rollingUpdate";
                let surge = check_count_or_percent(&join(p, "maxSurge"), &ru.max_surge, false)?;
                let unavail = check_count_or_percent(&join(p, "maxUnavailable"), &ru.max_unavailable, true)?;
                if surge == 0 && unavail == 0 {
                    return Err(field_err(
                        join(p, "maxUnavailable"),
                        "may not be 0 when maxSurge is 0 (the rollout could never make progress)",
                    ));
                }
            }
            _ => {}
        }
        spec.template.spec.check("spec.template.spec", cx)?;
        if spec.template.spec.restart_policy != RestartPolicy::Always {
            return Err(field_err(
                "spec.template.spec.restartPolicy",
                "must be Always in a Deployment (its pods are replaced, not left finished)",
            ));
        }
        Ok(())
    }
}

/// Validate an int-or-percent; returns its magnitude (count or percent) for the both-zero check.
fn check_count_or_percent(path: &str, v: &IntOrString, max_100: bool) -> Result<i32, FieldError> {
    match v {
        IntOrString::Int(n) if *n < 0 => Err(field_err(path, format!("must be >= 0 (got {n})"))),
        IntOrString::Int(n) => Ok(*n),
        IntOrString::String(s) => {
            let pct = parse_percent(s).map_err(|m| field_err(path, m))?;
            if max_100 && pct > 100 {
                return Err(field_err(path, format!("{s:?} must not exceed 100%")));
            }
            Ok(pct)
        }
    }
}
