//! The Deployment controller's pure decision: given a Deployment, the pods it owns, its revision records and
//! the time, say which pods to create or delete, which revision records to write and what status to report.
//! No IO happens here; its reconciler (`reconcilers/deployment.rs`) executes the [`Action`]s against the store.
//!
//! Revisions. Each distinct pod template is a revision, identified by the `pod-template-hash` label its pods
//! carry (a stable FNV-1a hash of the template's JSON). The templates themselves are kept as small
//! [`RevisionRecord`]s in the store under the kind `revisions` (one per Deployment and hash, like a
//! Kubernetes ControllerRevision), not in an annotation: `berth apply` replaces a Deployment's annotations, so
//! they cannot hold history. `rollout undo` copies a record's template back into the Deployment; the reconcile
//! then finds the hash among the records and gives it the next revision number, as Kubernetes does. The current
//! number is also written as the `deployment.kubernetes.io/revision` annotation, for display.
//!
//! Deleting a pod is two steps, so no request fails: [`Action::DeletePod`] marks it terminating
//! (`deletionTimestamp`), which the endpoints controller publishes at once (no new requests); after the
//! drain period [`Action::RemovePod`] deletes it from the store, and its agent stops the process (SIGTERM,
//! in-flight requests finish). Terminating pods count neither towards the desired replicas nor towards surge.
//!
//! Config-change rollouts. A Deployment annotated `berth.dev/rollout-on-config-change: "true"` is reconciled as
//! if its template carried the annotation `berth.dev/config-hash` = a hash of the data of every ConfigMap and
//! Secret the template references ([`with_config_hash`]); when one of them changes, the template hash changes
//! and the usual rolling update follows. The hash is added on the fly, never written into the Deployment, so
//! `berth apply` of the same manifest does not fight the controller. Without the annotation nothing rolls:
//! pods read env and files when their containers start.
//!
//! Not here: pods on lost nodes (see `node.rs`), endpoints (see `endpoints.rs`).

use crate::scheduler::SeededRng;
pub use model::revision::{record_name, RevisionRecord, REVISIONS_KIND};
use model::well_known::{
    CHANGE_CAUSE_ANNOTATION, CONFIG_HASH_ANNOTATION, POD_TEMPLATE_HASH_LABEL, REVISION_ANNOTATION,
    ROLLOUT_ON_CONFIG_CHANGE_ANNOTATION,
};
use model::{
    find_condition, Condition, ConditionStatus, ConfigMap, Deployment, DeploymentStatus, ObjectMeta, OwnerReference,
    Pod, PodPhase, PodTemplateSpec, Secret, StrategyType, Time,
};
use std::collections::BTreeSet;
use std::time::{Duration, SystemTime};

/// Why a pod is being deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeleteReason {
    /// More pods than `replicas`.
    ScaleDown,
    /// A pod of an older revision, replaced by the rollout.
    OldRevision,
    /// The pod's phase is `Failed` or `Succeeded`: it will not serve again.
    Failed,
}

/// What the runner must do.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    CreatePod(Box<Pod>),
    /// Mark terminating (set `deletionTimestamp`); removal follows after the drain period.
    DeletePod {
        name: String,
        reason: DeleteReason,
    },
    /// Delete from the store a pod that has been terminating for the drain period.
    RemovePod {
        name: String,
    },
    /// Create or replace a revision record.
    PutRevision(Box<RevisionRecord>),
    /// Delete a revision record beyond `revisionHistoryLimit` (by store name).
    DeleteRevision {
        name: String,
    },
    /// Write the Deployment's revision annotation.
    SetRevisionAnnotation(u64),
    UpdateStatus(DeploymentStatus),
}

/// The decision of one reconcile: actions now, and when to look again if nothing else happens.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    pub actions: Vec<Action>,
    /// A time-based transition is pending (minReadySeconds, drain, progress deadline).
    pub requeue_after: Option<Duration>,
}

/// Tunables that are not part of the Deployment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeploymentConfig {
    /// How long a pod stays terminating (published, receiving no new requests) before it is removed and its
    /// agent stops it. In one process the registry reflects a terminating pod within milliseconds; the
    /// default leaves room for remote proxies to apply the revision.
    pub drain: Duration,
}

impl Default for DeploymentConfig {
    fn default() -> Self {
        DeploymentConfig { drain: Duration::from_secs(2) }
    }
}

/// The stable hash of a pod template: 10 hex digits (40 bits), enough because a collision only matters
/// within one Deployment's history.
pub fn template_hash(template: &PodTemplateSpec) -> String {
    // FNV-1a: stable across builds and Rust versions (std's hashers promise neither).
    let bytes = serde_json::to_vec(template).unwrap_or_default();
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{:010x}", h & 0xff_ffff_ffff)
}

/// The names of the ConfigMaps and Secrets a pod template references (every container's env and envFrom,
/// every volume, mounted or not): what its config hash covers.
pub fn referenced_config(t: &PodTemplateSpec) -> (BTreeSet<String>, BTreeSet<String>) {
    let refs = t.spec.config_references();
    (refs.config_maps, refs.secrets)
}

/// Whether the Deployment asks to roll out when its ConfigMaps or Secrets change.
pub fn rolls_on_config_change(d: &Deployment) -> bool {
    d.metadata.annotations.get(ROLLOUT_ON_CONFIG_CHANGE_ANNOTATION).is_some_and(|v| v.eq_ignore_ascii_case("true"))
}

/// SHA-256 (first 16 hex digits) of the data of the referenced ConfigMaps and Secrets, an absent one counting
/// as absent (so its creation rolls too). A cryptographic hash because it is shown in pod annotations and
/// covers Secret data.
pub fn config_hash<'a>(
    t: &PodTemplateSpec,
    config_map: impl Fn(&str) -> Option<&'a ConfigMap>,
    secret: impl Fn(&str) -> Option<&'a Secret>,
) -> String {
    let (cms, secrets) = referenced_config(t);
    let mut parts = Vec::new();
    for name in &cms {
        let data = config_map(name).map(|c| (&c.data, &c.binary_data));
        parts.push(serde_json::json!(["configmap", name, data]));
    }
    for name in &secrets {
        // After normalisation every value is in `data`; `stringData` is covered for objects that skipped it.
        let data = secret(name).map(|s| (&s.data, &s.string_data));
        parts.push(serde_json::json!(["secret", name, data]));
    }
    let bytes = serde_json::to_vec(&parts).unwrap_or_default();
    let digest = ring::digest::digest(&ring::digest::SHA256, &bytes);
    digest.as_ref().iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// The Deployment as the controller reconciles it: with `berth.dev/config-hash` set in its template when it
/// asks for config-change rollouts (unchanged otherwise).
pub fn with_config_hash<'a>(
    d: &Deployment,
    config_map: impl Fn(&str) -> Option<&'a ConfigMap>,
    secret: impl Fn(&str) -> Option<&'a Secret>,
) -> Deployment {
    let mut d = d.clone();
    if rolls_on_config_change(&d) {
        let hash = config_hash(&d.spec.template, config_map, secret);
        d.spec.template.metadata.annotations.insert(CONFIG_HASH_ANNOTATION.to_string(), hash);
    }
    d
}

/// Whether the Deployment is the controlling owner of the pod.
pub fn owns(deployment: &Deployment, pod: &Pod) -> bool {
    pod.metadata.namespace == deployment.metadata.namespace
        && pod.metadata.owner_references.iter().any(|o| {
            o.kind == "Deployment"
                && o.name == deployment.metadata.name
                && (deployment.metadata.uid.is_none()
                    || o.uid.is_empty()
                    || Some(&o.uid) == deployment.metadata.uid.as_ref())
        })
}

/// The controlling Deployment's name, if a Deployment owns this pod.
pub fn owner_name(pod: &Pod) -> Option<&str> {
    pod.metadata.owner_references.iter().find(|o| o.kind == "Deployment").map(|o| o.name.as_str())
}

/// The template of revision `to` (or, with `None`, of the revision before the current one), for
/// `rollout undo`.
pub fn rollback_template(
    records: &[RevisionRecord],
    current_revision: u64,
    to: Option<u64>,
) -> Option<&PodTemplateSpec> {
    let target = match to {
        Some(n) => records.iter().find(|r| r.revision == n)?,
        None => records.iter().filter(|r| r.revision < current_revision).max_by_key(|r| r.revision)?,
    };
    Some(&target.template)
}

/// Pods of this revision.
fn hash_of(pod: &Pod) -> Option<&str> {
    pod.metadata.labels.get(POD_TEMPLATE_HASH_LABEL).map(String::as_str)
}

fn ready_since(pod: &Pod) -> Option<SystemTime> {
    let s = pod.status.as_ref()?;
    let c = find_condition(&s.conditions, "Ready")?;
    if c.status != ConditionStatus::True {
        return None;
    }
    Some(c.last_transition_time.map(|t| t.0).unwrap_or(SystemTime::UNIX_EPOCH))
}

/// Ready for at least `min_ready`; `Err(remaining)` when ready but not yet long enough.
fn availability(pod: &Pod, now: SystemTime, min_ready: Duration) -> Result<bool, Duration> {
    match ready_since(pod) {
        None => Ok(false),
        Some(since) => {
            let age = now.duration_since(since).unwrap_or_default();
            if age >= min_ready {
                Ok(true)
            } else {
                Err(min_ready - age)
            }
        }
    }
}

fn is_finished(pod: &Pod) -> bool {
    matches!(pod.phase(), PodPhase::Failed | PodPhase::Succeeded)
}

/// Deletion order: not ready first, then the newest (so long-running, warmed-up pods stay).
fn deletion_order(a: &&Pod, b: &&Pod) -> std::cmp::Ordering {
    let ra = a.is_ready();
    let rb = b.is_ready();
    ra.cmp(&rb)
        .then_with(|| b.metadata.creation_timestamp.cmp(&a.metadata.creation_timestamp))
        .then_with(|| b.metadata.name.cmp(&a.metadata.name))
}

const NAME_ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

fn pod_name(deployment: &str, hash: &str, rng: &mut SeededRng) -> String {
    let suffix: String =
        (0..5).map(|_| NAME_ALPHABET[rng.below(NAME_ALPHABET.len() as u64) as usize] as char).collect();
    format!("{deployment}-{hash}-{suffix}")
}

fn new_pod(d: &Deployment, hash: &str, revision: u64, now: SystemTime, rng: &mut SeededRng) -> Pod {
    let t = &d.spec.template;
    let mut labels = t.metadata.labels.clone();
    labels.insert(POD_TEMPLATE_HASH_LABEL.into(), hash.into());
    let mut annotations = t.metadata.annotations.clone();
    annotations.insert(REVISION_ANNOTATION.into(), revision.to_string());
    Pod {
        api_version: "v1".into(),
        kind: "Pod".into(),
        metadata: ObjectMeta {
            name: pod_name(&d.metadata.name, hash, rng),
            namespace: d.metadata.namespace.clone(),
            labels,
            annotations,
            creation_timestamp: Some(Time(now)),
            owner_references: vec![OwnerReference {
                api_version: "apps/v1".into(),
                kind: "Deployment".into(),
                name: d.metadata.name.clone(),
                uid: d.metadata.uid.clone().unwrap_or_default(),
                controller: Some(true),
                block_owner_deletion: Some(true),
            }],
            ..ObjectMeta::default()
        },
        spec: t.spec.clone(),
        status: None,
    }
}

fn min_some(a: Option<Duration>, b: Duration) -> Option<Duration> {
    Some(a.map_or(b, |a| a.min(b)))
}

/// Decide what to do for one Deployment. `pods` are the pods it owns (any state); `records` its revision
/// records. Deterministic for a given `rng` state.
pub fn reconcile(
    d: &Deployment,
    pods: &[Pod],
    records: &[RevisionRecord],
    now: SystemTime,
    config: &DeploymentConfig,
    rng: &mut SeededRng,
) -> Plan {
    let mut plan = Plan::default();
    let replicas = d.spec.replicas.max(0);
    let hash = template_hash(&d.spec.template);
    let min_ready = Duration::from_secs(d.spec.min_ready_seconds.max(0) as u64);

    // Revision bookkeeping.
    let max_revision = records.iter().map(|r| r.revision).max().unwrap_or(0);
    let revision = match records.iter().find(|r| r.hash == hash) {
        Some(r) if r.revision == max_revision => r.revision,
        Some(r) => {
            // Rolled back to an older template: it becomes the newest revision.
            let mut bumped = r.clone();
            // It keeps the change cause recorded with its template.
            bumped.revision = max_revision + 1;
            plan.actions.push(Action::PutRevision(Box::new(bumped)));
            max_revision + 1
        }
        None => {
            plan.actions.push(Action::PutRevision(Box::new(RevisionRecord {
                namespace: d.metadata.namespace.clone(),
                deployment: d.metadata.name.clone(),
                revision: max_revision + 1,
                hash: hash.clone(),
                template: d.spec.template.clone(),
                created: Some(Time(now)),
                change_cause: d.metadata.annotations.get(CHANGE_CAUSE_ANNOTATION).cloned(),
            })));
            max_revision + 1
        }
    };
    if d.metadata.annotations.get(REVISION_ANNOTATION).and_then(|v| v.parse::<u64>().ok()) != Some(revision) {
        plan.actions.push(Action::SetRevisionAnnotation(revision));
    }
    // History: keep the current revision, revisions with live pods, and the newest `revisionHistoryLimit`
    // others.
    let mut old: Vec<&RevisionRecord> =
        records.iter().filter(|r| r.hash != hash && !pods.iter().any(|p| hash_of(p) == Some(&r.hash))).collect();
    old.sort_by_key(|r| std::cmp::Reverse(r.revision));
    for r in old.iter().skip(d.spec.revision_history_limit.max(0) as usize) {
        plan.actions.push(Action::DeleteRevision { name: r.name() });
    }

    // Terminating pods: remove after the drain period.
    for p in pods.iter().filter(|p| p.is_terminating()) {
        let since = p.metadata.deletion_timestamp.map(|t| t.0).unwrap_or(SystemTime::UNIX_EPOCH);
        let age = now.duration_since(since).unwrap_or_default();
        if age >= config.drain {
            plan.actions.push(Action::RemovePod { name: p.metadata.name.clone() });
        } else {
            plan.requeue_after = min_some(plan.requeue_after, config.drain - age);
        }
    }
    // Finished pods are replaced.
    let mut deleting: Vec<&Pod> = Vec::new();
    for p in pods.iter().filter(|p| !p.is_terminating() && is_finished(p)) {
        plan.actions.push(Action::DeletePod { name: p.metadata.name.clone(), reason: DeleteReason::Failed });
        plan.requeue_after = min_some(plan.requeue_after, config.drain);
        deleting.push(p);
    }
    let active: Vec<&Pod> = pods.iter().filter(|p| !p.is_terminating() && !is_finished(p)).collect();
    let (new, old): (Vec<&Pod>, Vec<&Pod>) = active.iter().partition(|p| hash_of(p) == Some(hash.as_str()));
    let mut available_count = 0i32;
    for p in &active {
        match availability(p, now, min_ready) {
            Ok(true) => available_count += 1,
            Ok(false) => {}
            Err(remaining) => plan.requeue_after = min_some(plan.requeue_after, remaining),
        }
    }
    let is_available = |p: &Pod| matches!(availability(p, now, min_ready), Ok(true));

    let mut create = 0i32;
    let mut delete: Vec<(&Pod, DeleteReason)> = Vec::new();
    if !d.spec.paused {
        match d.spec.strategy.type_ {
            StrategyType::Recreate => {
                if !old.is_empty() {
                    for p in &old {
                        delete.push((p, DeleteReason::OldRevision));
                    }
                } else if pods.iter().any(|p| p.is_terminating() && hash_of(p) != Some(hash.as_str())) {
                    // Wait until every old pod is gone before starting the new revision.
                } else {
                    create = replicas - new.len() as i32;
                }
            }
            StrategyType::RollingUpdate => {
                let (surge, unavailable) = d.spec.strategy.rolling_update.clone().unwrap_or_default().resolve(replicas);
                let max_total = replicas + surge;
                let min_available = replicas - unavailable;
                if (new.len() as i32) < replicas {
                    create = (replicas - new.len() as i32).min(max_total - active.len() as i32);
                }
                // Old pods: not-ready ones serve nothing and go at once. Ready ones go only while enough available
                // pods remain, including those ready for less than minReadySeconds: they already serve traffic
                // (and a template change right after a scale-up must not take them all down at once).
                let mut old_sorted = old.clone();
                old_sorted.sort_by(deletion_order);
                let mut spare = available_count - min_available;
                for p in old_sorted {
                    if p.is_ready() {
                        if spare <= 0 {
                            continue;
                        }
                        spare -= 1;
                    }
                    delete.push((p, DeleteReason::OldRevision));
                }
            }
        }
        // Too many pods of the current revision (scale down).
        if new.len() as i32 > replicas {
            let mut sorted = new.clone();
            sorted.sort_by(deletion_order);
            for p in sorted.into_iter().take(new.len() - replicas as usize) {
                delete.push((p, DeleteReason::ScaleDown));
            }
        }
    }
    if !delete.is_empty() {
        // The pods marked now are removed after the drain.
        plan.requeue_after = min_some(plan.requeue_after, config.drain);
    }
    for (p, reason) in delete {
        plan.actions.push(Action::DeletePod { name: p.metadata.name.clone(), reason });
    }
    for _ in 0..create.max(0) {
        plan.actions.push(Action::CreatePod(Box::new(new_pod(d, &hash, revision, now, rng))));
    }

    // Status.
    let complete =
        new.len() as i32 == replicas && old.is_empty() && new.iter().all(|p| is_available(p)) && deleting.is_empty();
    let ready_count = active.iter().filter(|p| p.is_ready()).count() as i32;
    let previous = d.status.clone().unwrap_or_default();
    let unavailable_allowed = match d.spec.strategy.type_ {
        StrategyType::Recreate => 0,
        StrategyType::RollingUpdate => d.spec.strategy.rolling_update.clone().unwrap_or_default().resolve(replicas).1,
    };
    let mut status = DeploymentStatus {
        observed_generation: d.metadata.generation,
        replicas: active.len() as i32,
        updated_replicas: new.len() as i32,
        ready_replicas: ready_count,
        available_replicas: available_count,
        unavailable_replicas: (replicas - available_count).max(0),
        conditions: Vec::new(),
        collision_count: previous.collision_count,
    };
    let available_ok = available_count >= replicas - unavailable_allowed;
    status.conditions.push(condition(
        &previous.conditions,
        "Available",
        if available_ok { ConditionStatus::True } else { ConditionStatus::False },
        if available_ok { "MinimumReplicasAvailable" } else { "MinimumReplicasUnavailable" },
        format!("{available_count} of {replicas} replicas available"),
        now,
        false,
    ));
    status.conditions.push(progressing(d, &previous, &status, complete, revision, now, &mut plan));
    if d.status.as_ref() != Some(&status) {
        plan.actions.push(Action::UpdateStatus(status));
    }
    plan
}

/// A condition whose `lastTransitionTime` only moves when its status changes and whose `lastUpdateTime`
/// moves when `touch` (progress) is set or the reason changes.
fn condition(
    previous: &[Condition],
    type_: &str,
    status: ConditionStatus,
    reason: &str,
    message: String,
    now: SystemTime,
    touch: bool,
) -> Condition {
    let prev = find_condition(previous, type_);
    let transition = match prev {
        Some(p) if p.status == status => p.last_transition_time,
        _ => Some(Time(now)),
    };
    let update = match prev {
        Some(p) if p.status == status && p.reason.as_deref() == Some(reason) && !touch => p.last_update_time,
        _ => Some(Time(now)),
    };
    Condition {
        type_: type_.into(),
        status,
        reason: Some(reason.into()),
        message: Some(message),
        last_transition_time: transition,
        last_update_time: update,
        ..Condition::default()
    }
}

/// `Progressing`: `True/NewReplicaSetAvailable` when complete; `True/ReplicaSetUpdated` while progress is
/// being made (progress = a new spec generation or a change in replicas/updated/available counts, which moves
/// `lastUpdateTime`); `False/ProgressDeadlineExceeded` when no progress for `progressDeadlineSeconds`. Like
/// Kubernetes, an exceeded deadline is reported, not acted on: the controller keeps trying.
fn progressing(
    d: &Deployment,
    previous: &DeploymentStatus,
    status: &DeploymentStatus,
    complete: bool,
    revision: u64,
    now: SystemTime,
    plan: &mut Plan,
) -> Condition {
    let message = format!("revision {revision}");
    if complete {
        return condition(
            &previous.conditions,
            "Progressing",
            ConditionStatus::True,
            "NewReplicaSetAvailable",
            format!("{message} has successfully progressed"),
            now,
            false,
        );
    }
    let progressed = previous.observed_generation != status.observed_generation
        || previous.replicas != status.replicas
        || previous.updated_replicas != status.updated_replicas
        || previous.available_replicas != status.available_replicas
        || find_condition(&previous.conditions, "Progressing")
            .is_none_or(|c| c.reason.as_deref() == Some("NewReplicaSetAvailable"));
    let deadline = Duration::from_secs(d.spec.progress_deadline_seconds.max(0) as u64);
    let last = find_condition(&previous.conditions, "Progressing")
        .and_then(|c| c.last_update_time)
        .map(|t| t.0)
        .unwrap_or(now);
    let since = now.duration_since(last).unwrap_or_default();
    let prev_exceeded = find_condition(&previous.conditions, "Progressing")
        .is_some_and(|c| c.reason.as_deref() == Some("ProgressDeadlineExceeded"));
    if !progressed && (prev_exceeded || since >= deadline) {
        return condition(
            &previous.conditions,
            "Progressing",
            ConditionStatus::False,
            "ProgressDeadlineExceeded",
            format!("{message} has timed out progressing"),
            now,
            false,
        );
    }
    plan.requeue_after = min_some(plan.requeue_after, if progressed { deadline } else { deadline - since });
    condition(
        &previous.conditions,
        "Progressing",
        ConditionStatus::True,
        "ReplicaSetUpdated",
        format!("{message} is progressing"),
        now,
        progressed,
    )
}
