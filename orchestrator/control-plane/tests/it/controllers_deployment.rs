//! The pure Deployment reconcile under a simulated clock: a tiny in-memory "cluster" applies the actions and
//! makes pods ready a few ticks after they are created, while every step is checked against the rollout
//! invariants.

use control_plane::controllers::deployment::{
    reconcile, rollback_template, template_hash, Action, DeleteReason, DeploymentConfig, Plan, RevisionRecord,
};
use control_plane::scheduler::SeededRng;
use model::clock::{Clock, ManualClock};
use model::well_known::{POD_TEMPLATE_HASH_LABEL, REVISION_ANNOTATION};
use model::{find_condition, Condition, ConditionStatus, Deployment, Kind, Pod, PodPhase, PodStatus, Time};
use serde_json::json;
use std::collections::HashMap;
use std::time::Duration;

fn deployment(replicas: i32, surge: serde_json::Value, unavailable: serde_json::Value) -> Deployment {
    let v = json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "default", "uid": "d-uid", "generation": 1},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": "web"}},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": surge, "maxUnavailable": unavailable}},
            "progressDeadlineSeconds": 60,
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "app", "command": ["berth", "echo"], "env": [{"name": "V", "value": "1"}]}]}
            }
        }
    });
    let doc = model::decode(Some(Kind::Deployment), v).expect("valid deployment");
    serde_json::from_value(doc.object).expect("typed deployment")
}

/// A simulated cluster: pods become ready `ready_after` ticks after creation unless their env says `BAD`.
struct Sim {
    d: Deployment,
    pods: Vec<Pod>,
    records: Vec<RevisionRecord>,
    clock: ManualClock,
    born: HashMap<String, u32>,
    tick: u32,
    ready_after: u32,
    rng: SeededRng,
    config: DeploymentConfig,
}

impl Sim {
    fn new(d: Deployment, ready_after: u32) -> Sim {
        Sim {
            d,
            pods: Vec::new(),
            records: Vec::new(),
            clock: ManualClock::at_epoch_2026(),
            born: HashMap::new(),
            tick: 0,
            ready_after,
            rng: SeededRng::new(7),
            config: DeploymentConfig { drain: Duration::from_secs(1) },
        }
    }

    fn plan(&mut self) -> Plan {
        let mut rng = self.rng.clone();
        let p = reconcile(&self.d, &self.pods, &self.records, self.clock.now(), &self.config, &mut rng);
        self.rng = rng;
        p
    }

    fn apply(&mut self, plan: &Plan) {
        let now = self.clock.now();
        for a in &plan.actions {
            match a {
                Action::CreatePod(p) => {
                    assert!(
                        !self.pods.iter().any(|q| q.metadata.name == p.metadata.name),
                        "duplicate pod name {}",
                        p.metadata.name
                    );
                    self.born.insert(p.metadata.name.clone(), self.tick);
                    self.pods.push((**p).clone());
                }
                Action::DeletePod { name, .. } => {
                    let p = self.pod_mut(name);
                    assert!(p.metadata.deletion_timestamp.is_none(), "deleted twice: {name}");
                    p.metadata.deletion_timestamp = Some(Time(now));
                }
                Action::RemovePod { name } => self.pods.retain(|p| &p.metadata.name != name),
                Action::PutRevision(r) => {
                    self.records.retain(|x| x.hash != r.hash);
                    self.records.push((**r).clone());
                }
                Action::DeleteRevision { name } => self.records.retain(|r| &r.name() != name),
                Action::SetRevisionAnnotation(n) => {
                    self.d.metadata.annotations.insert(REVISION_ANNOTATION.into(), n.to_string());
                }
                Action::UpdateStatus(s) => self.d.status = Some(s.clone()),
            }
        }
    }

    fn pod_mut(&mut self, name: &str) -> &mut Pod {
        self.pods.iter_mut().find(|p| p.metadata.name == name).expect("pod exists")
    }

    /// One second passes; pods old enough become ready.
    fn advance(&mut self) {
        self.tick += 1;
        self.clock.advance(Duration::from_secs(1));
        let now = self.clock.now();
        for p in &mut self.pods {
            let age = self.tick - self.born.get(&p.metadata.name).copied().unwrap_or(0);
            let bad = p.spec.containers[0].env.iter().any(|e| e.value.as_deref() == Some("BAD"));
            if p.status.is_none() && age >= self.ready_after && !bad {
                p.spec.node_name = Some("n1".into());
                p.status = Some(ready_status(now));
            }
        }
    }

    /// Reconcile and apply until nothing changes in a tick, then advance; `check` runs after every apply.
    fn run(&mut self, ticks: u32, mut check: impl FnMut(&Sim)) {
        for _ in 0..ticks {
            let plan = self.plan();
            self.apply(&plan);
            check(self);
            self.advance();
            check(self);
        }
    }

    fn active(&self) -> Vec<&Pod> {
        self.pods.iter().filter(|p| !p.is_terminating() && p.phase() != PodPhase::Failed).collect()
    }

    fn ready(&self) -> usize {
        self.active().iter().filter(|p| p.is_ready()).count()
    }

    fn current_hash(&self) -> String {
        template_hash(&self.d.spec.template)
    }

    fn updated_ready(&self) -> usize {
        let h = self.current_hash();
        self.active()
            .iter()
            .filter(|p| p.is_ready() && p.metadata.labels.get(POD_TEMPLATE_HASH_LABEL) == Some(&h))
            .count()
    }

    fn is_complete(&self) -> bool {
        let r = self.d.spec.replicas as usize;
        self.active().len() == r && self.updated_ready() == r && self.pods.len() == r
    }

    fn set_env(&mut self, value: &str) {
        self.d.spec.template.spec.containers[0].env[0].value = Some(value.into());
        self.bump_generation();
    }

    fn bump_generation(&mut self) {
        self.d.metadata.generation = Some(self.d.metadata.generation.unwrap_or(1) + 1);
    }
}

fn ready_status(now: std::time::SystemTime) -> PodStatus {
    PodStatus {
        phase: PodPhase::Running,
        conditions: vec![Condition {
            type_: "Ready".into(),
            status: ConditionStatus::True,
            last_transition_time: Some(Time(now)),
            ..Condition::default()
        }],
        host_ip: Some("127.0.0.1".into()),
        ..PodStatus::default()
    }
}

fn progressing_reason(d: &Deployment) -> Option<String> {
    d.status.as_ref().and_then(|s| find_condition(&s.conditions, "Progressing")).and_then(|c| c.reason.clone())
}

#[test]
fn scale_up_then_down_deletes_not_ready_then_newest() {
    let mut sim = Sim::new(deployment(3, json!("25%"), json!("25%")), 2);
    sim.run(10, |_| {});
    assert!(sim.is_complete(), "3 ready pods after scale up");
    let status = sim.d.status.clone().expect("status written");
    assert_eq!(
        (status.replicas, status.ready_replicas, status.available_replicas, status.updated_replicas),
        (3, 3, 3, 3)
    );
    assert_eq!(progressing_reason(&sim.d).as_deref(), Some("NewReplicaSetAvailable"));
    for p in &sim.pods {
        assert!(p.metadata.name.starts_with(&format!("web-{}-", sim.current_hash())));
        assert_eq!(p.metadata.name.len(), "web-".len() + 10 + 1 + 5);
        assert_eq!(p.metadata.owner_references[0].name, "web");
        assert_eq!(p.metadata.owner_references[0].uid, "d-uid");
    }

    sim.d.spec.replicas = 6;
    sim.bump_generation();
    sim.run(10, |_| {});
    assert!(sim.is_complete());
    // Scale down to 2 while one pod is not ready: that one goes first, then the newest ready ones.
    let not_ready = sim.pods[0].metadata.name.clone();
    sim.pod_mut(&not_ready).status.as_mut().unwrap().conditions[0].status = ConditionStatus::False;
    let oldest_ready = sim.pods[1].metadata.name.clone();
    sim.d.spec.replicas = 2;
    sim.bump_generation();
    let plan = sim.plan();
    let deleted: Vec<&str> = plan
        .actions
        .iter()
        .filter_map(|a| match a {
            Action::DeletePod { name, reason: DeleteReason::ScaleDown } => Some(name.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(deleted.len(), 4);
    assert!(deleted.contains(&not_ready.as_str()));
    assert!(!deleted.contains(&oldest_ready.as_str()), "oldest ready pod is kept");
    sim.apply(&plan);
    sim.run(5, |_| {});
    assert_eq!(sim.pods.len(), 2, "terminating pods are removed after the drain");
    assert!(sim.pods.iter().any(|p| p.metadata.name == oldest_ready));
}

#[test]
fn rolling_update_respects_surge_and_unavailable_for_every_combination() {
    let values = [json!(0), json!(1), json!("25%")];
    for replicas in [1, 4, 5] {
        for surge in &values {
            for unavailable in &values {
                if surge == &json!(0) && unavailable == &json!(0) {
                    continue; // rejected by validation: the rollout could never progress
                }
                let d = deployment(replicas, surge.clone(), unavailable.clone());
                let (max_surge, max_unavailable) = d.spec.strategy.rolling_update.clone().unwrap().resolve(replicas);
                let label = format!("replicas={replicas} maxSurge={surge} maxUnavailable={unavailable}");
                let mut sim = Sim::new(d, 3);
                sim.run(20, |_| {});
                assert!(sim.is_complete(), "{label}: initial rollout");
                let before = sim.current_hash();
                sim.set_env("2");
                assert_ne!(before, sim.current_hash());
                let r = replicas as usize;
                let mut steps = 0;
                while !sim.is_complete() {
                    steps += 1;
                    assert!(steps < 200, "{label}: rollout did not finish");
                    sim.run(1, |s| {
                        let ready = s.ready();
                        let total = s.active().len();
                        assert!(
                            ready + max_unavailable as usize >= r,
                            "{label}: {ready} ready < {r} - {max_unavailable} at tick {}",
                            s.tick
                        );
                        assert!(
                            total <= r + max_surge as usize,
                            "{label}: {total} pods > {r} + {max_surge} at tick {}",
                            s.tick
                        );
                    });
                }
                let status = sim.d.status.clone().unwrap();
                assert_eq!(status.updated_replicas, replicas, "{label}");
                sim.run(2, |_| {});
                assert_eq!(progressing_reason(&sim.d).as_deref(), Some("NewReplicaSetAvailable"), "{label}");
                assert_eq!(
                    sim.d.metadata.annotations.get(REVISION_ANNOTATION).map(String::as_str),
                    Some("2"),
                    "{label}"
                );
            }
        }
    }
}

#[test]
fn a_template_change_within_min_ready_seconds_keeps_every_ready_pod() {
    // The old pods are ready but not yet available (ready for less than minReadySeconds) when the template
    // changes: with maxUnavailable=0 none of them may go until new pods are available.
    for unavailable in [json!(0), json!(1)] {
        let mut d = deployment(4, json!(1), unavailable.clone());
        d.spec.min_ready_seconds = 5;
        let (_, max_unavailable) = d.spec.strategy.rolling_update.clone().unwrap().resolve(4);
        let mut sim = Sim::new(d, 2);
        let mut ticks = 0;
        while sim.ready() < 4 {
            ticks += 1;
            assert!(ticks < 20, "initial pods never became ready");
            sim.run(1, |_| {});
        }
        sim.set_env("2");
        let mut steps = 0;
        while !sim.is_complete() {
            steps += 1;
            assert!(steps < 200, "maxUnavailable={unavailable}: rollout did not finish");
            sim.run(1, |s| {
                assert!(
                    s.ready() + max_unavailable as usize >= 4,
                    "maxUnavailable={unavailable}: {} ready at tick {}",
                    s.ready(),
                    s.tick
                );
                assert!(s.active().len() <= 5, "{} pods at tick {}", s.active().len(), s.tick);
            });
        }
    }
}

#[test]
fn recreate_deletes_all_old_pods_before_creating_new_ones() {
    let mut d = deployment(3, json!(1), json!(0));
    d.spec.strategy = serde_json::from_value(json!({"type": "Recreate"})).unwrap();
    let mut sim = Sim::new(d, 2);
    sim.run(10, |_| {});
    assert!(sim.is_complete());
    let old = sim.current_hash();
    sim.set_env("2");
    let new = sim.current_hash();
    for _ in 0..20 {
        sim.run(1, |s| {
            let has_old = s.pods.iter().any(|p| p.metadata.labels.get(POD_TEMPLATE_HASH_LABEL) == Some(&old));
            let has_new = s.pods.iter().any(|p| p.metadata.labels.get(POD_TEMPLATE_HASH_LABEL) == Some(&new));
            assert!(!(has_old && has_new), "old and new pods at once at tick {}", s.tick);
        });
    }
    assert!(sim.is_complete());
}

#[test]
fn rollback_reuses_the_old_template_as_a_new_revision() {
    let mut sim = Sim::new(deployment(2, json!(1), json!(0)), 1);
    sim.run(6, |_| {});
    let first = sim.current_hash();
    sim.set_env("2");
    sim.run(15, |_| {});
    assert!(sim.is_complete());
    assert_eq!(sim.d.metadata.annotations[REVISION_ANNOTATION], "2");
    assert_eq!(sim.records.len(), 2);

    // `rollout undo`: the previous revision's template goes back into the Deployment.
    let template = rollback_template(&sim.records, 2, None).expect("revision 1 kept").clone();
    assert_eq!(template_hash(&template), first);
    sim.d.spec.template = template;
    sim.bump_generation();
    sim.run(15, |_| {});
    assert!(sim.is_complete());
    assert_eq!(sim.current_hash(), first);
    assert_eq!(sim.d.metadata.annotations[REVISION_ANNOTATION], "3");
    let mut revs: Vec<(u64, String)> = sim.records.iter().map(|r| (r.revision, r.hash.clone())).collect();
    revs.sort();
    assert_eq!(revs.len(), 2, "the rolled-back revision is renumbered, not duplicated");
    assert_eq!(revs[1], (3, first.clone()));
    // --to-revision picks by number.
    assert!(rollback_template(&sim.records, 3, Some(2)).is_some());
    assert!(rollback_template(&sim.records, 3, Some(9)).is_none());
}

#[test]
fn progress_deadline_exceeded_when_new_pods_never_become_ready() {
    let mut sim = Sim::new(deployment(2, json!(1), json!(0)), 1);
    sim.run(6, |_| {});
    assert!(sim.is_complete());
    sim.set_env("BAD");
    sim.run(30, |s| {
        assert!(s.ready() >= 2, "maxUnavailable=0 keeps the old pods serving");
    });
    assert_eq!(progressing_reason(&sim.d).as_deref(), Some("ReplicaSetUpdated"));
    sim.run(40, |_| {});
    let c = sim.d.status.as_ref().and_then(|s| find_condition(&s.conditions, "Progressing")).cloned().unwrap();
    assert_eq!(c.status, ConditionStatus::False);
    assert_eq!(c.reason.as_deref(), Some("ProgressDeadlineExceeded"));
    // Fixing the template makes progress again.
    sim.set_env("3");
    sim.run(15, |_| {});
    assert!(sim.is_complete());
    assert_eq!(progressing_reason(&sim.d).as_deref(), Some("NewReplicaSetAvailable"));
}

#[test]
fn failed_and_deleted_pods_are_replaced() {
    let mut sim = Sim::new(deployment(3, json!(1), json!(0)), 1);
    sim.run(6, |_| {});
    assert!(sim.is_complete());
    let failed = sim.pods[0].metadata.name.clone();
    sim.pod_mut(&failed).status.as_mut().unwrap().phase = PodPhase::Failed;
    let gone = sim.pods[1].metadata.name.clone();
    sim.pods.retain(|p| p.metadata.name != gone);
    let plan = sim.plan();
    assert!(plan.actions.contains(&Action::DeletePod { name: failed.clone(), reason: DeleteReason::Failed }));
    assert_eq!(plan.actions.iter().filter(|a| matches!(a, Action::CreatePod(_))).count(), 2);
    sim.apply(&plan);
    sim.run(6, |_| {});
    assert!(sim.is_complete());
    assert!(!sim.pods.iter().any(|p| p.metadata.name == failed));
}

#[test]
fn reconcile_is_idempotent_and_deterministic() {
    let mut sim = Sim::new(deployment(3, json!("25%"), json!("25%")), 1);
    sim.run(6, |_| {});
    assert!(sim.is_complete());
    // Steady state: nothing to do.
    assert_eq!(sim.plan().actions, vec![]);
    // Mid-rollout: once a plan is applied, reconciling the resulting state creates or deletes nothing more
    // (only the status catches up with the new pod), and after that nothing at all.
    sim.set_env("2");
    let a = sim.plan();
    assert!(a.actions.iter().any(|x| matches!(x, Action::CreatePod(_))));
    sim.apply(&a);
    let b = sim.plan();
    assert!(
        b.actions.iter().all(|x| !matches!(x, Action::CreatePod(_) | Action::DeletePod { .. })),
        "second reconcile repeats work: {b:?}"
    );
    sim.apply(&b);
    assert_eq!(sim.plan().actions, vec![], "third reconcile of the same state");
    // Determinism: same inputs and seed, same names.
    let d = deployment(3, json!(1), json!(0));
    let now = ManualClock::at_epoch_2026().now();
    let p1 = reconcile(&d, &[], &[], now, &DeploymentConfig::default(), &mut SeededRng::new(1));
    let p2 = reconcile(&d, &[], &[], now, &DeploymentConfig::default(), &mut SeededRng::new(1));
    assert_eq!(p1, p2);
}
