//! How far a Deployment's rollout has got, read from the status the Deployment controller writes. This is
//! what `berth rollout status` waits on; it follows `kubectl rollout status` (same order of checks, same
//! messages) so its output reads the same.

use crate::{find_condition, Deployment};

/// The `Progressing` reason the controller reports when the new revision made no progress in time.
pub const PROGRESS_DEADLINE_EXCEEDED: &str = "ProgressDeadlineExceeded";

/// One reading of a rollout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RolloutProgress {
    /// Still going; the message says what it waits for.
    Waiting(String),
    /// Every replica runs the newest template and is available; no old pod is left.
    Complete(String),
    /// The controller reported `ProgressDeadlineExceeded`.
    Failed(String),
}

/// Where the rollout of `d` stands. Only a status computed for the Deployment's current generation counts:
/// until the controller has seen the latest spec, the answer is "waiting".
pub fn rollout_progress(d: &Deployment) -> RolloutProgress {
    let name = &d.metadata.name;
    let observed =
        |s: &&crate::DeploymentStatus| s.observed_generation.unwrap_or(0) >= d.metadata.generation.unwrap_or(0);
    let Some(status) = d.status.as_ref().filter(observed) else {
        return RolloutProgress::Waiting("Waiting for deployment spec update to be observed...".into());
    };
    if find_condition(&status.conditions, "Progressing")
        .is_some_and(|c| c.reason.as_deref() == Some(PROGRESS_DEADLINE_EXCEEDED))
    {
        return RolloutProgress::Failed(format!("deployment {name:?} exceeded its progress deadline"));
    }
    let replicas = d.spec.replicas.max(0);
    let waiting =
        |what: String| RolloutProgress::Waiting(format!("Waiting for deployment {name:?} rollout to finish: {what}"));
    if status.updated_replicas < replicas {
        return waiting(format!("{} out of {replicas} new replicas have been updated...", status.updated_replicas));
    }
    if status.replicas > status.updated_replicas {
        return waiting(format!(
            "{} old replicas are pending termination...",
            status.replicas - status.updated_replicas
        ));
    }
    if status.available_replicas < status.updated_replicas {
        return waiting(format!(
            "{} of {} updated replicas are available...",
            status.available_replicas, status.updated_replicas
        ));
    }
    RolloutProgress::Complete(format!("deployment {name:?} successfully rolled out"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Condition, ConditionStatus, DeploymentStatus};

    fn deployment(generation: i64, replicas: i32, status: Option<DeploymentStatus>) -> Deployment {
        let mut d: Deployment = serde_json::from_value(serde_json::json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "default", "generation": generation},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "web"}},
                     "template": {"metadata": {"labels": {"app": "web"}},
                                  "spec": {"containers": [{"name": "c", "command": ["berth", "echo"]}]}}}
        }))
        .unwrap();
        d.status = status;
        d
    }

    fn status(generation: i64, replicas: i32, updated: i32, available: i32) -> DeploymentStatus {
        DeploymentStatus {
            observed_generation: Some(generation),
            replicas,
            updated_replicas: updated,
            ready_replicas: available,
            available_replicas: available,
            ..DeploymentStatus::default()
        }
    }

    fn message(p: RolloutProgress) -> String {
        match p {
            RolloutProgress::Waiting(m) | RolloutProgress::Complete(m) | RolloutProgress::Failed(m) => m,
        }
    }

    #[test]
    fn unobserved_spec_waits() {
        assert_eq!(
            rollout_progress(&deployment(3, 4, Some(status(2, 4, 4, 4)))),
            RolloutProgress::Waiting("Waiting for deployment spec update to be observed...".into())
        );
        assert!(matches!(rollout_progress(&deployment(1, 4, None)), RolloutProgress::Waiting(_)));
    }

    #[test]
    fn each_stage_says_what_it_waits_for() {
        let m = message(rollout_progress(&deployment(2, 4, Some(status(2, 5, 1, 4)))));
        assert_eq!(m, "Waiting for deployment \"web\" rollout to finish: 1 out of 4 new replicas have been updated...");
        let m = message(rollout_progress(&deployment(2, 4, Some(status(2, 5, 4, 4)))));
        assert!(m.ends_with("1 old replicas are pending termination..."), "{m}");
        let m = message(rollout_progress(&deployment(2, 4, Some(status(2, 4, 4, 2)))));
        assert!(m.ends_with("2 of 4 updated replicas are available..."), "{m}");
        assert_eq!(
            rollout_progress(&deployment(2, 4, Some(status(2, 4, 4, 4)))),
            RolloutProgress::Complete("deployment \"web\" successfully rolled out".into())
        );
        // Scaled to zero with nothing left is complete too.
        assert!(matches!(rollout_progress(&deployment(2, 0, Some(status(2, 0, 0, 0)))), RolloutProgress::Complete(_)));
    }

    #[test]
    fn an_exceeded_deadline_fails() {
        let mut s = status(2, 5, 1, 4);
        s.conditions.push(Condition {
            type_: "Progressing".into(),
            status: ConditionStatus::False,
            reason: Some(PROGRESS_DEADLINE_EXCEEDED.into()),
            ..Condition::default()
        });
        assert_eq!(
            rollout_progress(&deployment(2, 4, Some(s))),
            RolloutProgress::Failed("deployment \"web\" exceeded its progress deadline".into())
        );
    }
}
