//! Config-change rollouts: a Deployment annotated `berth.dev/rollout-on-config-change: "true"` gets a new
//! revision when a ConfigMap or Secret its template references changes; without the annotation nothing rolls.
//! First as the pure reconcile under a manual clock, then through the runner over an encrypting store.

use control_plane::controllers::deployment::{
    config_hash, reconcile, referenced_config, with_config_hash, Action, DeploymentConfig, RevisionRecord,
};
use control_plane::scheduler::SeededRng;
use model::clock::{Clock, ManualClock};
use model::well_known::{CONFIG_HASH_ANNOTATION, POD_TEMPLATE_HASH_LABEL};
use model::{Condition, ConditionStatus, ConfigMap, Deployment, Kind, Pod, PodPhase, PodStatus, Secret, Time};
use serde_json::{json, Value};
use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

fn decode<T: serde::de::DeserializeOwned>(kind: Kind, v: Value) -> T {
    let doc = model::decode(Some(kind), v).expect("valid object");
    serde_json::from_value(doc.object).expect("typed object")
}

fn deployment_json(roll: bool) -> Value {
    let mut annotations = json!({});
    if roll {
        annotations["berth.dev/rollout-on-config-change"] = json!("true");
    }
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "default", "uid": "d-uid", "generation": 1,
                     "annotations": annotations},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "web"}},
            "strategy": {"rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {
                    "volumes": [{"name": "creds", "secret": {"secretName": "db"}}],
                    "containers": [{
                        "name": "app", "command": ["berth", "echo"],
                        "env": [{"name": "GREETING", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "greeting"}}}],
                        "envFrom": [{"configMapRef": {"name": "extra", "optional": true}}],
                        "volumeMounts": [{"name": "creds", "mountPath": "/etc/creds"}]
                    }]
                }
            }
        }
    })
}

fn config_map(name: &str, greeting: &str) -> ConfigMap {
    decode(
        Kind::ConfigMap,
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": "default"},
               "data": {"greeting": greeting}}),
    )
}

fn secret(password: &str) -> Secret {
    decode(
        Kind::Secret,
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "db", "namespace": "default"},
               "stringData": {"password": password}}),
    )
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

/// A tiny cluster: the pure reconcile runs over the Deployment as the runner presents it (with the config
/// hash), new pods become ready on the next tick, and the clock is manual.
struct Sim {
    d: Deployment,
    config_maps: HashMap<String, ConfigMap>,
    secrets: HashMap<String, Secret>,
    pods: Vec<Pod>,
    records: Vec<RevisionRecord>,
    clock: ManualClock,
    rng: SeededRng,
    config: DeploymentConfig,
}

impl Sim {
    fn new(d: Deployment) -> Sim {
        Sim {
            d,
            config_maps: HashMap::new(),
            secrets: HashMap::new(),
            pods: Vec::new(),
            records: Vec::new(),
            clock: ManualClock::at_epoch_2026(),
            rng: SeededRng::new(3),
            config: DeploymentConfig { drain: Duration::from_secs(1) },
        }
    }

    fn effective(&self) -> Deployment {
        with_config_hash(&self.d, |n| self.config_maps.get(n), |n| self.secrets.get(n))
    }

    fn step(&mut self) -> Vec<Action> {
        let eff = self.effective();
        let plan = reconcile(&eff, &self.pods, &self.records, self.clock.now(), &self.config, &mut self.rng);
        let now = self.clock.now();
        for a in &plan.actions {
            match a {
                Action::CreatePod(p) => self.pods.push((**p).clone()),
                Action::DeletePod { name, .. } => {
                    if let Some(p) = self.pods.iter_mut().find(|p| &p.metadata.name == name) {
                        p.metadata.deletion_timestamp = Some(Time(now));
                    }
                }
                Action::RemovePod { name } => self.pods.retain(|p| &p.metadata.name != name),
                Action::PutRevision(r) => {
                    self.records.retain(|x| x.hash != r.hash);
                    self.records.push((**r).clone());
                }
                Action::DeleteRevision { name } => self.records.retain(|r| &r.name() != name),
                Action::SetRevisionAnnotation(_) | Action::UpdateStatus(_) => {}
            }
        }
        self.clock.advance(Duration::from_secs(1));
        let now = self.clock.now();
        for p in &mut self.pods {
            if p.status.is_none() {
                p.status = Some(ready_status(now));
            }
        }
        plan.actions
    }

    /// Step until a whole step changes no pods (bounded).
    fn settle(&mut self) {
        for _ in 0..60 {
            let acts = self.step();
            if !acts
                .iter()
                .any(|a| matches!(a, Action::CreatePod(_) | Action::DeletePod { .. } | Action::RemovePod { .. }))
                && self.pods.iter().all(|p| !p.is_terminating())
            {
                return;
            }
        }
        panic!("did not settle in 60 steps: {} pods", self.pods.len());
    }

    fn hashes(&self) -> BTreeSet<String> {
        self.pods.iter().filter_map(|p| p.metadata.labels.get(POD_TEMPLATE_HASH_LABEL).cloned()).collect()
    }

    fn config_hashes(&self) -> BTreeSet<String> {
        self.pods.iter().filter_map(|p| p.metadata.annotations.get(CONFIG_HASH_ANNOTATION).cloned()).collect()
    }
}

#[test]
fn references_cover_env_env_from_and_volumes() {
    let d: Deployment = decode(Kind::Deployment, deployment_json(true));
    let (cms, secrets) = referenced_config(&d.spec.template);
    assert_eq!(cms.into_iter().collect::<Vec<_>>(), ["cfg", "extra"]);
    assert_eq!(secrets.into_iter().collect::<Vec<_>>(), ["db"]);
}

#[test]
fn config_hash_changes_with_referenced_data_only() {
    let d: Deployment = decode(Kind::Deployment, deployment_json(true));
    let cm1 = config_map("cfg", "hello");
    let cm2 = config_map("cfg", "bonjour");
    let unrelated = config_map("other", "x");
    let s1 = secret("one");
    let s2 = secret("two");
    let h = |cm: &ConfigMap, s: &Secret| config_hash(&d.spec.template, |n| (n == "cfg").then_some(cm), |_| Some(s));
    assert_eq!(h(&cm1, &s1), h(&cm1, &s1), "stable");
    assert_ne!(h(&cm1, &s1), h(&cm2, &s1), "ConfigMap change");
    assert_ne!(h(&cm1, &s1), h(&cm1, &s2), "Secret change");
    assert_eq!(h(&cm1, &s1).len(), 16);
    let with_unrelated =
        config_hash(&d.spec.template, |n| [&cm1, &unrelated].into_iter().find(|c| c.metadata.name == n), |_| Some(&s1));
    assert_eq!(with_unrelated, h(&cm1, &s1), "an unreferenced ConfigMap does not count");
    // The hash never contains the secret value.
    assert!(!h(&cm1, &s1).contains("one"));
}

#[test]
fn config_change_rolls_only_deployments_that_ask() {
    for roll in [true, false] {
        let mut sim = Sim::new(decode(Kind::Deployment, deployment_json(roll)));
        sim.config_maps.insert("cfg".into(), config_map("cfg", "hello"));
        sim.secrets.insert("db".into(), secret("one"));
        sim.settle();
        assert_eq!(sim.pods.len(), 2);
        let before = sim.hashes();
        assert_eq!(before.len(), 1);
        assert_eq!(sim.config_hashes().len(), usize::from(roll), "config-hash annotation only when asked");

        // The ConfigMap changes.
        sim.config_maps.insert("cfg".into(), config_map("cfg", "bonjour"));
        let mut max_pods = 0;
        let mut min_ready = usize::MAX;
        for _ in 0..60 {
            sim.step();
            max_pods = max_pods.max(sim.pods.iter().filter(|p| !p.is_terminating()).count());
            min_ready = min_ready.min(sim.pods.iter().filter(|p| !p.is_terminating() && p.is_ready()).count());
        }
        let after = sim.hashes();
        if roll {
            assert_eq!(after.len(), 1, "rollout finished: one revision left");
            assert_ne!(after, before, "a new revision after the ConfigMap change");
            assert_eq!(sim.records.len(), 2, "two revisions recorded");
            assert!(max_pods <= 3, "maxSurge 1: at most 3 pods, saw {max_pods}");
            assert!(min_ready >= 2, "maxUnavailable 0: never fewer than 2 ready, saw {min_ready}");
            // And again for the Secret.
            sim.secrets.insert("db".into(), secret("two"));
            sim.settle();
            assert_eq!(sim.hashes().len(), 1);
            assert!(!sim.hashes().is_subset(&after), "the Secret change rolled too");
            // Creating an optional envFrom ConfigMap that was absent is a change as well.
            let h = sim.hashes();
            sim.config_maps.insert("extra".into(), config_map("extra", "x"));
            sim.settle();
            assert_ne!(sim.hashes(), h);
        } else {
            assert_eq!(after, before, "no annotation: nothing rolls");
            assert_eq!(sim.records.len(), 1);
        }
    }
}

#[test]
fn the_deployment_object_itself_is_not_modified() {
    let d: Deployment = decode(Kind::Deployment, deployment_json(true));
    let cm = config_map("cfg", "hello");
    let eff = with_config_hash(&d, |_| Some(&cm), |_| None);
    assert!(!d.spec.template.metadata.annotations.contains_key(CONFIG_HASH_ANNOTATION));
    assert!(eff.spec.template.metadata.annotations.contains_key(CONFIG_HASH_ANNOTATION));
    assert_eq!(eff.metadata, d.metadata, "only the template differs");
}

// ---------------------------------------------------------------------------------------------------------
// Through the runner, over an encrypting store (the controller reads Secrets decrypted).

mod runner {
    use super::*;
    use control_plane::controllers::{Controllers, ControllersConfig};
    use control_plane::store::encrypt::SecretKey;
    use control_plane::store::{EncryptingStore, Key, MemoryStore, Prefix, Store};
    use model::clock::SystemClock;
    use std::sync::Arc;
    use std::time::Instant;

    const DEADLINE: Duration = Duration::from_secs(20);

    fn normalized(kind: Kind, v: Value) -> Vec<u8> {
        let mut o = model::decode(Some(kind), v).expect("valid").object;
        o["metadata"]["uid"] = json!(format!("uid-{}", o["metadata"]["name"].as_str().unwrap_or("")));
        o["metadata"]["generation"] = json!(1);
        serde_json::to_vec(&o).unwrap()
    }

    async fn pod_hashes(store: &dyn Store) -> (BTreeSet<String>, usize) {
        let (list, _) = store.list(&Prefix { kind: "pods".into(), namespace: None }, None).await.unwrap();
        let pods: Vec<Pod> = list.iter().map(|v| serde_json::from_slice(&v.value).unwrap()).collect();
        let live: Vec<&Pod> = pods.iter().filter(|p| !p.is_terminating()).collect();
        (live.iter().filter_map(|p| p.metadata.labels.get(POD_TEMPLATE_HASH_LABEL).cloned()).collect(), live.len())
    }

    /// Play agent: mark every pod without status Ready.
    async fn make_ready(store: &dyn Store) {
        let (list, _) = store.list(&Prefix { kind: "pods".into(), namespace: None }, None).await.unwrap();
        for v in list {
            let mut p: Pod = serde_json::from_slice(&v.value).unwrap();
            if p.status.is_some() || p.is_terminating() {
                continue;
            }
            // Left unbound: the node-lifecycle controller would evict pods of a node that does not exist.
            p.status = Some(ready_status(std::time::SystemTime::now()));
            let _ = store.update(&v.key, serde_json::to_vec(&p).unwrap(), v.revision).await;
        }
    }

    async fn until(store: &dyn Store, what: &str, mut done: impl FnMut(&BTreeSet<String>, usize) -> bool) {
        let start = Instant::now();
        loop {
            make_ready(store).await;
            let (h, n) = pod_hashes(store).await;
            if done(&h, n) {
                return;
            }
            assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}: hashes {h:?}, {n} pods");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn secret_change_rolls_through_the_runner_over_an_encrypting_store() {
        let raw = Arc::new(MemoryStore::new());
        let store: Arc<dyn Store> = Arc::new(EncryptingStore::new(raw.clone(), SecretKey::from_bytes(&[5; 32])));
        let cfg = |v: &str| {
            normalized(
                Kind::ConfigMap,
                json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg", "namespace": "default"},
                       "data": {"greeting": v}}),
            )
        };
        let sec = |v: &str| {
            normalized(
                Kind::Secret,
                json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "db", "namespace": "default"},
                       "stringData": {"password": v}}),
            )
        };
        let cm_key = Key::new("configmaps", "default", "cfg");
        let s_key = Key::new("secrets", "default", "db");
        store.create(&cm_key, cfg("hello")).await.unwrap();
        store.create(&s_key, sec("one")).await.unwrap();
        store
            .create(&Key::new("deployments", "default", "web"), normalized(Kind::Deployment, deployment_json(true)))
            .await
            .unwrap();
        let config = ControllersConfig {
            deployment: DeploymentConfig { drain: Duration::from_millis(50) },
            ..ControllersConfig::default()
        };
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let controllers = Controllers::start_with(
            store.clone(),
            Arc::new(discovery::Registry::new()),
            Arc::new(SystemClock),
            config,
            async move {
                let _ = stop_rx.await;
            },
        );
        until(&*store, "2 ready pods", |h, n| h.len() == 1 && n == 2).await;
        let (first, _) = pod_hashes(&*store).await;

        // The plaintext never reached the backend.
        let raw_secret = raw.get(&s_key).await.unwrap().unwrap();
        let raw_text = String::from_utf8_lossy(&raw_secret.value).to_string();
        assert!(!raw_text.contains("b25l") && !raw_text.contains("\"one\""), "{raw_text}");

        let rev = store.get(&s_key).await.unwrap().unwrap().revision;
        store.update(&s_key, sec("two"), rev).await.unwrap();
        until(&*store, "a rollout after the Secret change", |h, n| h.len() == 1 && *h != first && n == 2).await;
        let (second, _) = pod_hashes(&*store).await;

        let rev = store.get(&cm_key).await.unwrap().unwrap().revision;
        store.update(&cm_key, cfg("bonjour"), rev).await.unwrap();
        until(&*store, "a rollout after the ConfigMap change", |h, n| {
            h.len() == 1 && *h != second && *h != first && n == 2
        })
        .await;
        let _ = stop_tx.send(());
        controllers.join().await;
    }
}
