//! A Deployment's template history: one [`RevisionRecord`] per Deployment and template hash, stored under the
//! key kind [`REVISIONS_KIND`] (like a Kubernetes ControllerRevision). The Deployment controller writes them;
//! the API serves them read-only at `.../deployments/NAME/revisions` for `rollout history|undo`.

use crate::{PodTemplateSpec, Time};
use serde::{Deserialize, Serialize};

/// Store kind (key prefix) of [`RevisionRecord`]s. Not an API kind.
pub const REVISIONS_KIND: &str = "revisions";

/// One revision of a Deployment's pod template.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RevisionRecord {
    pub namespace: String,
    /// The owning Deployment.
    pub deployment: String,
    pub revision: u64,
    /// The `pod-template-hash` of `template`.
    pub hash: String,
    pub template: PodTemplateSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<Time>,
    /// The Deployment's `kubernetes.io/change-cause` annotation when this revision became current.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub change_cause: Option<String>,
}

impl RevisionRecord {
    /// Store name of the record: `DEPLOYMENT-HASH`.
    pub fn name(&self) -> String {
        record_name(&self.deployment, &self.hash)
    }
}

pub fn record_name(deployment: &str, hash: &str) -> String {
    format!("{deployment}-{hash}")
}
