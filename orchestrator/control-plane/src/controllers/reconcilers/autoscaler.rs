//! The autoscaler controller: every `sample_period` (its resync) each Autoscaler samples the [`LoadSource`]
//! for the Services of its target and calls [`scaling::decide`]: a periodic evaluation every `period`, a fast
//! path (which may only scale up) on the samples between. It writes the target Deployment's `spec.replicas`
//! and the Autoscaler's status (with its recent decisions) by compare-and-swap.
//!
//! Watched changes only refresh the caches: evaluations follow the samples, not the events. A failed write is
//! retried at the next sample rather than with back-off, since every evaluation also takes a sample.

use crate::controllers::autoscaler::{
    self as scaling, AutoscalerConfig, Evaluation, LoadSample, LoadSource, MetricWindow, Missing, ScalerState,
};
use crate::controllers::driver::{Cache, Cached, Caches, Changed, Context, Reconciler, Requeue, Resync, Watch};
use crate::store::{Key, StoreError};
use model::{
    Autoscaler, AutoscalerStatus, Deployment, MetricName, MetricStatus, ScaleRecord, Service, Time, RECENT_DECISIONS,
};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

pub struct Autoscalers {
    config: AutoscalerConfig,
    load: Option<Arc<dyn LoadSource>>,
    scalers: HashMap<Key, Scaling>,
}

impl Autoscalers {
    /// Without a load source, every Autoscaler reports its metrics missing and holds its target's replicas.
    pub fn new(config: AutoscalerConfig, load: Option<Arc<dyn LoadSource>>) -> Self {
        Autoscalers { config, load, scalers: HashMap::new() }
    }
}

/// What the controller keeps per Autoscaler (lost on restart, as in HPA).
#[derive(Default)]
struct Scaling {
    window: MetricWindow,
    state: ScalerState,
    next_periodic: Option<SystemTime>,
}

const WATCHES: &[Watch] = &[Watch::of::<Autoscaler>(), Watch::of::<Deployment>(), Watch::of::<Service>()];

impl Reconciler for Autoscalers {
    type Key = Key;
    const NAME: &'static str = "autoscaler-controller";

    fn watches(&self) -> &[Watch] {
        WATCHES
    }

    fn affected(&self, _: &Changed<'_>, _: &Caches) -> Vec<Key> {
        Vec::new()
    }

    fn resync_period(&self) -> Option<Duration> {
        Some(self.config.sample_period)
    }

    /// At every sample, every Autoscaler; the state of deleted ones is dropped.
    fn resync(&mut self, why: Resync, caches: &Caches) -> Vec<Key> {
        if why != Resync::Periodic {
            return Vec::new();
        }
        let autoscalers = caches.of::<Autoscaler>();
        self.scalers.retain(|k, _| autoscalers.contains(k));
        autoscalers.keys().cloned().collect()
    }

    async fn reconcile(&mut self, key: &Key, ctx: &mut Context<'_>) -> Result<Requeue, StoreError> {
        if let Err(e) = self.evaluate(key, ctx).await {
            tracing::warn!(autoscaler = %key, error = %e, "autoscaler write failed; retrying next period");
        }
        Ok(Requeue::OnChange)
    }
}

impl Autoscalers {
    async fn evaluate(&mut self, key: &Key, ctx: &mut Context<'_>) -> Result<(), StoreError> {
        let Some(a) = ctx.cache::<Autoscaler>().get(key).cloned() else { return Ok(()) };
        let config = &self.config;
        let s = self.scalers.entry(key.clone()).or_default();
        let now = ctx.now();
        let periodic = s.next_periodic.is_none_or(|t| now >= t);
        let dkey = Deployment::store_key(key.namespace.clone(), a.spec.scale_target_ref.name.clone());
        let Some(d) = ctx.cache::<Deployment>().get(&dkey).cloned() else {
            if periodic {
                s.next_periodic = Some(now + config.period);
                let prev = a.status.clone().unwrap_or_default();
                let message = format!("Deployment {} not found", a.spec.scale_target_ref.name);
                let mut st = prev.clone();
                st.observed_generation = a.metadata.generation;
                st.conditions =
                    vec![scaling::condition(&prev.conditions, "AbleToScale", false, "FailedGetScale", message, now)];
                write_status(key, st, ctx).await?;
            }
            return Ok(());
        };
        let unavailable = match self.load.as_deref() {
            None => Some(Missing::NoLoadSource),
            Some(load) => {
                let services = services_of(ctx.cache::<Service>(), &d);
                if services.is_empty() {
                    Some(Missing::NoService)
                } else {
                    let samples: Vec<LoadSample> = services
                        .iter()
                        .filter_map(|svc| load.sample(&svc.metadata.namespace, &svc.metadata.name))
                        .collect();
                    if let Some(sample) = LoadSample::combine(&samples) {
                        s.window.push(sample, config.rate_window.max(config.period) * 3);
                    }
                    None
                }
            }
        };
        let current = d.spec.replicas;
        let ready = d.status.as_ref().map_or(0, |st| st.ready_replicas);
        let eval = if periodic {
            s.next_periodic = Some(now + config.period);
            Evaluation::Periodic
        } else {
            Evaluation::FastPath
        };
        let obs = scaling::Observed { window: &s.window, current, ready, unavailable };
        let decision = scaling::decide(&a.spec, &obs, &mut s.state, now, config, eval);
        let scaled = decision.desired != current;
        if scaled {
            tracing::info!(autoscaler = %key, from = current, to = decision.desired, reason = %decision, "scaling");
            let desired = decision.desired;
            ctx.update(&dkey, |d: &mut Deployment| {
                if d.spec.replicas == desired {
                    return false;
                }
                d.spec.replicas = desired;
                // A spec change, as the API would record it.
                d.metadata.generation = Some(d.metadata.generation.unwrap_or(1) + 1);
                true
            })
            .await?;
        }
        if !(periodic || scaled) {
            return Ok(());
        }
        let prev = a.status.unwrap_or_default();
        let mut st = AutoscalerStatus {
            observed_generation: a.metadata.generation,
            current_replicas: current,
            desired_replicas: decision.desired,
            current_metrics: decision.readings.iter().map(metric_status).collect(),
            conditions: scaling::conditions(&decision, &prev.conditions, now),
            last_scale_time: prev.last_scale_time,
            recent_decisions: prev.recent_decisions,
        };
        if scaled {
            st.current_replicas = decision.desired;
            st.last_scale_time = Some(Time(now));
            st.recent_decisions.push(ScaleRecord {
                time: Time(now),
                from_replicas: current,
                to_replicas: decision.desired,
                reason: decision.to_string(),
            });
            let excess = st.recent_decisions.len().saturating_sub(RECENT_DECISIONS);
            st.recent_decisions.drain(..excess);
        }
        write_status(key, st, ctx).await
    }
}

/// The Services in the Deployment's namespace whose selector matches its pod template.
fn services_of<'a>(services: &'a Cache<Service>, d: &Deployment) -> Vec<&'a Service> {
    let labels = &d.spec.template.metadata.labels;
    services
        .values()
        .filter(|svc| {
            svc.metadata.namespace == d.metadata.namespace
                && !svc.spec.selector.is_empty()
                && svc.spec.selector.iter().all(|(k, v)| labels.get(k) == Some(v))
        })
        .collect()
}

/// The status line of one metric: per replica for rates and concurrency, milliseconds for latency.
fn metric_status(r: &scaling::Reading) -> MetricStatus {
    let current = match r.name {
        MetricName::LatencyP99 => r.value,
        _ => r.per_replica,
    };
    let shown = current.map_or_else(|| "<unknown>".to_string(), |v| format!("{v:.0}"));
    let display = match r.name {
        MetricName::RequestsPerSecond => format!("rps {shown}/{}", r.target),
        MetricName::Concurrency => format!("concurrency {shown}/{}", r.target),
        MetricName::LatencyP99 => format!("p99 {shown}ms/{}ms", r.target),
        MetricName::Cpu => format!("cpu {shown}/{}%", r.target),
    };
    // Rounded, so a status write happens when a figure moves, not on every sampling jitter.
    MetricStatus {
        name: r.name,
        current: current.map(|v| (v * 10.0).round() / 10.0),
        target: r.target,
        stale: r.missing.is_some(),
        display: Some(display),
    }
}

async fn write_status(key: &Key, status: AutoscalerStatus, ctx: &mut Context<'_>) -> Result<(), StoreError> {
    ctx.update(key, |a: &mut Autoscaler| {
        if a.status.as_ref() == Some(&status) {
            return false;
        }
        a.status = Some(status.clone());
        true
    })
    .await
}
