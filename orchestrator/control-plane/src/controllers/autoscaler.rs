//! The autoscaler's decision, HPA v2 style, on the request load the proxy sees.
//!
//! [`decide`] is a pure function of (the metric window, the target's replicas, the Autoscaler's spec and
//! behaviour, the recommendation/scale history in [`ScalerState`], now). Its reconciler
//! (`reconcilers/autoscaler.rs`) samples a [`LoadSource`] every `sample_period` into a [`MetricWindow`],
//! calls [`decide`] every `period` (1 s by default) and, between periods, on every sample as a *fast path*
//! that may only scale up, so a load step gets a decision within one sample period plus the rate window's
//! share of the step.
//!
//! The algorithm, in order:
//! 1. Each metric proposes a replica count. Request rate and concurrency are service totals divided by the
//!    per-replica target (`ceil(total / target)`), unless the ratio to the current capacity is within the
//!    tolerance (then the current count). Because they are totals, pods that are not ready yet neither inflate
//!    the per-replica load (no scale-up caused by a rollout's surge pods) nor count as idle capacity (no
//!    scale-down right after a scale-up). `latencyP99` is a ceiling: above it, it proposes
//!    `ceil(ready * p99 / ceiling)` (ready pods only); below it, it proposes nothing. CPU has no source yet
//!    and is always reported missing.
//! 2. The largest proposal wins. A missing or stale metric never lets the count go down; with every metric
//!    missing the count stays. Requests held by the proxy while at zero replicas always ask for one.
//! 3. Stabilization: the result is clamped between the lowest recommendation of the scale-up window and the
//!    highest of the scale-down window (recommendations are recorded unstabilized, as HPA does).
//! 4. Rate policies (pods or percent per period, `selectPolicy` Max/Min/Disabled) limit the change against the
//!    replicas added or removed within each policy's period; then `minReplicas`/`maxReplicas` clamp.

use model::{
    find_condition, AutoscalerSpec, Condition, ConditionStatus, MetricName, ScalingPolicyType, ScalingRules,
    SelectPolicy, Time,
};
use std::collections::VecDeque;
use std::fmt;
use std::time::{Duration, SystemTime};

/// One reading of a service's load, as a [`LoadSource`] reports it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LoadSample {
    /// When the figures were read.
    pub at: SystemTime,
    /// Requests received (completed or in flight) since the source started; a decrease is read as a restart
    /// of the source. Arrivals rather than completions, so a backlog that drains after a scale-up does not read
    /// as extra load.
    pub requests_total: u64,
    /// Requests in flight now, held ones included.
    pub in_flight: u64,
    /// Requests the proxy holds because the service has no endpoint (scale-from-zero demand).
    pub waiting: u64,
    /// p99 latency (ms) of the requests completed since the previous sample of this service; `None` when none
    /// completed.
    pub latency_p99_ms: Option<f64>,
}

impl LoadSample {
    /// Several services fronting one Deployment read as one: counts add up, the worst p99 wins, the oldest
    /// reading time is kept.
    pub fn combine(samples: &[LoadSample]) -> Option<LoadSample> {
        let first = *samples.first()?;
        Some(samples[1..].iter().fold(first, |a, b| LoadSample {
            at: a.at.min(b.at),
            requests_total: a.requests_total + b.requests_total,
            in_flight: a.in_flight + b.in_flight,
            waiting: a.waiting + b.waiting,
            latency_p99_ms: match (a.latency_p99_ms, b.latency_p99_ms) {
                (Some(x), Some(y)) => Some(x.max(y)),
                (x, y) => x.or(y),
            },
        }))
    }
}

/// Where the autoscaler reads request load: the proxy's per-service figures (in process in `berth up`;
/// a remote proxy's `/metrics` can implement it too).
pub trait LoadSource: Send + Sync + 'static {
    /// The current figures of one Service, or `None` when the source knows nothing about it.
    fn sample(&self, namespace: &str, service: &str) -> Option<LoadSample>;
}

/// Timing of the autoscaler runner and of the metric window.
#[derive(Debug, Clone)]
pub struct AutoscalerConfig {
    /// How often every Autoscaler is evaluated.
    pub period: Duration,
    /// How often the load source is read (the fast path looks at every sample).
    pub sample_period: Duration,
    /// The span request rates and mean concurrency are computed over.
    pub rate_window: Duration,
    /// A newest sample older than this makes every metric missing.
    pub stale_after: Duration,
}

impl Default for AutoscalerConfig {
    fn default() -> Self {
        AutoscalerConfig {
            period: Duration::from_secs(1),
            sample_period: Duration::from_millis(250),
            // Two seconds: a step still shows within one sample (a fraction of it), and one-second bursts of
            // arrivals (connection setup, a stalled client) do not read as load.
            rate_window: Duration::from_secs(2),
            stale_after: Duration::from_secs(3),
        }
    }
}

/// The samples of the last few seconds, oldest first.
#[derive(Debug, Default, Clone)]
pub struct MetricWindow {
    samples: VecDeque<LoadSample>,
}

impl MetricWindow {
    /// Add a sample and forget those older than `keep` (two are always kept, so a rate exists).
    pub fn push(&mut self, s: LoadSample, keep: Duration) {
        if let Some(last) = self.samples.back() {
            // A clock step back or a restarted source: old figures cannot be compared with new ones.
            if s.at < last.at || s.requests_total < last.requests_total {
                self.samples.clear();
            }
        }
        self.samples.push_back(s);
        while self.samples.len() > 2 && self.samples.front().is_some_and(|f| age(s.at, f.at) > keep) {
            self.samples.pop_front();
        }
    }

    pub fn newest(&self) -> Option<&LoadSample> {
        self.samples.back()
    }

    /// The sample that starts a span of at least `over` ending at the newest (the oldest if none is that old).
    fn span_start(&self, over: Duration) -> Option<(&LoadSample, &LoadSample)> {
        let n = self.samples.back()?;
        let o = self.samples.iter().rev().find(|s| age(n.at, s.at) >= over).or(self.samples.front())?;
        (o.at < n.at).then_some((o, n))
    }

    /// Requests per second over about `over`, ending at the newest sample.
    pub fn rate(&self, over: Duration) -> Option<f64> {
        let (o, n) = self.span_start(over)?;
        let secs = n.at.duration_since(o.at).ok()?.as_secs_f64();
        Some(n.requests_total.saturating_sub(o.requests_total) as f64 / secs)
    }

    /// Mean of the in-flight readings within `over` of the newest sample.
    pub fn mean_in_flight(&self, over: Duration) -> Option<f64> {
        let n = self.samples.back()?;
        let within: Vec<f64> =
            self.samples.iter().filter(|s| age(n.at, s.at) <= over).map(|s| s.in_flight as f64).collect();
        Some(within.iter().sum::<f64>() / within.len() as f64)
    }

    /// The worst p99 reported within `over` of the newest sample.
    pub fn max_p99(&self, over: Duration) -> Option<f64> {
        let n = self.samples.back()?;
        self.samples.iter().filter(|s| age(n.at, s.at) <= over).filter_map(|s| s.latency_p99_ms).reduce(f64::max)
    }
}

fn age(now: SystemTime, then: SystemTime) -> Duration {
    now.duration_since(then).unwrap_or_default()
}

/// What one Autoscaler remembers between evaluations (lost on restart, as in HPA).
#[derive(Debug, Default, Clone)]
pub struct ScalerState {
    /// Unstabilized recommendations with their times.
    recommendations: Vec<(SystemTime, i32)>,
    /// Replica changes made (positive up, negative down) with their times, for the rate policies.
    scale_events: Vec<(SystemTime, i32)>,
}

/// Why a decision is being made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Evaluation {
    /// The regular evaluation: may scale either way.
    Periodic,
    /// A sample between periods: acts only when it scales up, and then records like a periodic one.
    FastPath,
}

/// What the runner knows about the scale target besides the load.
#[derive(Debug, Clone, Copy)]
pub struct Observed<'a> {
    pub window: &'a MetricWindow,
    /// The Deployment's `spec.replicas`.
    pub current: i32,
    /// Replicas ready (taking traffic).
    pub ready: i32,
    /// Set when no load can be read at all.
    pub unavailable: Option<Missing>,
}

/// Why a metric has no value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Missing {
    /// No load source runs in this process (`berth server` without a proxy).
    NoLoadSource,
    /// No Service selects the Deployment's pods, so no proxy figures belong to it.
    NoService,
    /// Not enough samples yet to compute a rate.
    NoSamples,
    /// The newest sample is too old to act on.
    Stale { age_ms: u64 },
    /// CPU utilisation is not collected from the runtimes yet.
    NoCpuSource,
}

impl fmt::Display for Missing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Missing::NoLoadSource => f.write_str("no load source in this process (the proxy runs elsewhere)"),
            Missing::NoService => f.write_str("no Service selects the target's pods"),
            Missing::NoSamples => f.write_str("not enough samples yet"),
            Missing::Stale { age_ms } => write!(f, "newest sample is {age_ms} ms old"),
            Missing::NoCpuSource => f.write_str("CPU utilisation is not collected"),
        }
    }
}

/// One metric's reading and what it asks for.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    pub name: MetricName,
    pub target: f64,
    /// Service total (rps, in-flight) or p99 milliseconds.
    pub value: Option<f64>,
    /// `value` per ready replica for rps and concurrency (what `berth get autoscalers` shows).
    pub per_replica: Option<f64>,
    pub missing: Option<Missing>,
    pub proposal: Option<i32>,
}

/// What settled the replica count before stabilization and limits.
#[derive(Debug, Clone, PartialEq)]
pub enum Reason {
    /// The metric with the largest proposal.
    Metric { name: MetricName, value: f64, target: f64, wants: i32 },
    /// The load is within the tolerance of the current capacity.
    WithinTolerance { name: MetricName, ratio: f64 },
    /// Requests are held while the target has no replica.
    Demand { waiting: u64 },
    /// Some metric is missing and the others would scale down: hold.
    MetricsMissing,
    /// Only ceilings (latency) are configured and none is exceeded: hold.
    NoProposal,
}

/// What capped the change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    TooFewReplicas(i32),
    TooManyReplicas(i32),
    ScaleUpPolicy(i32),
    ScaleDownPolicy(i32),
}

/// The outcome of one evaluation.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub current: i32,
    pub desired: i32,
    /// The count the metrics asked for (before stabilization and limits).
    pub proposed: i32,
    pub reason: Reason,
    /// The stabilization window that held the count back, in seconds, when one did.
    pub stabilized_by: Option<(Direction, i32)>,
    pub limited: Option<Limit>,
    pub readings: Vec<Reading>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Up,
    Down,
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Direction::Up => "scale-up",
            Direction::Down => "scale-down",
        })
    }
}

pub fn metric_label(name: MetricName) -> &'static str {
    match name {
        MetricName::RequestsPerSecond => "requestsPerSecond",
        MetricName::Concurrency => "concurrency",
        MetricName::LatencyP99 => "latencyP99",
        MetricName::Cpu => "cpu",
    }
}

impl fmt::Display for Decision {
    /// One line for events and logs, e.g. `requestsPerSecond 300.0 (target 50 per replica) wants 6`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.reason {
            Reason::Metric { name: MetricName::LatencyP99, value, target, wants } => {
                write!(f, "latencyP99 {value:.1} ms above ceiling {target} ms wants {wants}")?
            }
            Reason::Metric { name, value, target, wants } => {
                write!(f, "{} {value:.1} (target {target} per replica) wants {wants}", metric_label(*name))?
            }
            Reason::WithinTolerance { name, ratio } => {
                write!(f, "{} at {:.0}% of target, within tolerance", metric_label(*name), ratio * 100.0)?
            }
            Reason::Demand { waiting } => write!(f, "{waiting} request(s) held at zero replicas wants 1")?,
            Reason::MetricsMissing => {
                let missing: Vec<String> = self
                    .readings
                    .iter()
                    .filter_map(|r| r.missing.map(|m| format!("{}: {m}", metric_label(r.name))))
                    .collect();
                write!(f, "metrics missing ({}), not scaling down", missing.join("; "))?
            }
            Reason::NoProposal => f.write_str("no ceiling exceeded")?,
        }
        if let Some((dir, secs)) = self.stabilized_by {
            write!(f, "; held at {} by the {dir} stabilization window ({secs} s)", self.desired)?;
        }
        match self.limited {
            Some(Limit::TooFewReplicas(n)) => write!(f, "; raised to minReplicas {n}")?,
            Some(Limit::TooManyReplicas(n)) => write!(f, "; capped at maxReplicas {n}")?,
            Some(Limit::ScaleUpPolicy(n)) => write!(f, "; scale-up policy allows {n} now")?,
            Some(Limit::ScaleDownPolicy(n)) => write!(f, "; scale-down policy allows {n} now")?,
            None => {}
        }
        Ok(())
    }
}

/// Decide the replica count for one Autoscaler. Updates `state` (recommendations and scale events) unless a
/// fast-path evaluation finds nothing to scale up.
pub fn decide(
    spec: &AutoscalerSpec,
    obs: &Observed<'_>,
    state: &mut ScalerState,
    now: SystemTime,
    config: &AutoscalerConfig,
    eval: Evaluation,
) -> Decision {
    let current = obs.current.max(0);
    let window = obs.window;
    let up = &spec.behavior.scale_up;
    let down = &spec.behavior.scale_down;
    let fresh: Result<&LoadSample, Missing> = match obs.unavailable {
        Some(m) => Err(m),
        None => match window.newest() {
            None => Err(Missing::NoSamples),
            Some(n) if age(now, n.at) > config.stale_after => {
                Err(Missing::Stale { age_ms: age(now, n.at).as_millis() as u64 })
            }
            Some(n) => Ok(n),
        },
    };

    let readings: Vec<Reading> = spec
        .metrics
        .iter()
        .filter_map(|m| m.target())
        .map(|(name, target)| read_metric(name, target, fresh.map(|_| window), obs, up, down, config))
        .collect();

    let mut best: Option<(i32, Reason)> = None;
    for r in &readings {
        let (Some(p), Some(v)) = (r.proposal, r.value) else { continue };
        if best.as_ref().is_none_or(|(b, _)| p > *b) {
            let reason = if p == current && r.name != MetricName::LatencyP99 {
                Reason::WithinTolerance { name: r.name, ratio: ratio(v, r.target, current) }
            } else {
                Reason::Metric { name: r.name, value: r.per_replica.unwrap_or(v), target: r.target, wants: p }
            };
            best = Some((p, reason));
        }
    }
    let any_missing = readings.iter().any(|r| r.missing.is_some());
    let (mut proposed, mut reason) = match best {
        Some(b) => b,
        None if any_missing => (current, Reason::MetricsMissing),
        None => (current, Reason::NoProposal),
    };
    if any_missing && proposed < current {
        (proposed, reason) = (current, Reason::MetricsMissing);
    }
    if let Ok(n) = fresh {
        if current == 0 && n.waiting > 0 && proposed < 1 {
            (proposed, reason) = (1, Reason::Demand { waiting: n.waiting });
        }
    }

    if eval == Evaluation::FastPath && proposed <= current {
        return Decision { current, desired: current, proposed, reason, stabilized_by: None, limited: None, readings };
    }

    // Stabilization over the recorded (unstabilized) recommendations.
    let cutoff = |secs: i32| now.checked_sub(Duration::from_secs(secs.max(0) as u64)).unwrap_or(now);
    let (up_cut, down_cut) = (cutoff(up.stabilization_window_seconds), cutoff(down.stabilization_window_seconds));
    let (mut up_rec, mut down_rec) = (proposed, proposed);
    for &(t, r) in &state.recommendations {
        if t > up_cut {
            up_rec = up_rec.min(r);
        }
        if t > down_cut {
            down_rec = down_rec.max(r);
        }
    }
    let stabilized = current.max(up_rec).min(down_rec);
    let stabilized_by = if proposed > current && stabilized < proposed {
        Some((Direction::Up, up.stabilization_window_seconds))
    } else if proposed < current && stabilized > proposed {
        Some((Direction::Down, down.stabilization_window_seconds))
    } else {
        None
    };
    state.recommendations.push((now, proposed));
    let keep = up.stabilization_window_seconds.max(down.stabilization_window_seconds);
    let keep_cut = cutoff(keep);
    state.recommendations.retain(|&(t, _)| t > keep_cut || t == now);

    // Rate policies, then the replica bounds.
    let mut limited = None;
    let mut desired = stabilized;
    if stabilized > current {
        let mut allowed = up_limit(current, up, &state.scale_events, now).max(current);
        if current == 0 {
            allowed = allowed.max(1); // percent policies alone could never leave zero
        }
        if desired > allowed {
            desired = allowed;
            limited = Some(Limit::ScaleUpPolicy(allowed));
        }
    } else if stabilized < current {
        let allowed = down_limit(current, down, &state.scale_events, now).min(current);
        if desired < allowed {
            desired = allowed;
            limited = Some(Limit::ScaleDownPolicy(allowed));
        }
    }
    if desired > spec.max_replicas {
        desired = spec.max_replicas;
        limited = Some(Limit::TooManyReplicas(spec.max_replicas));
    }
    if desired < spec.min_replicas {
        desired = spec.min_replicas;
        limited = Some(Limit::TooFewReplicas(spec.min_replicas));
    }
    if desired != current {
        state.scale_events.push((now, desired - current));
    }
    let longest = [up, down].iter().flat_map(|r| r.policies.iter()).map(|p| p.period_seconds).max().unwrap_or(0);
    let event_cut = cutoff(longest);
    state.scale_events.retain(|&(t, _)| t > event_cut);

    Decision { current, desired, proposed, reason, stabilized_by, limited, readings }
}

fn ratio(value: f64, target: f64, current: i32) -> f64 {
    if current == 0 {
        return if value > 0.0 { f64::INFINITY } else { 1.0 };
    }
    value / (target * f64::from(current))
}

fn read_metric(
    name: MetricName,
    target: f64,
    window: Result<&MetricWindow, Missing>,
    obs: &Observed<'_>,
    up: &ScalingRules,
    down: &ScalingRules,
    config: &AutoscalerConfig,
) -> Reading {
    let current = obs.current.max(0);
    let mut r = Reading { name, target, value: None, per_replica: None, missing: None, proposal: None };
    let window = match (name, window) {
        (MetricName::Cpu, _) => {
            r.missing = Some(Missing::NoCpuSource);
            return r;
        }
        (_, Err(m)) => {
            r.missing = Some(m);
            return r;
        }
        (_, Ok(w)) => w,
    };
    match name {
        MetricName::RequestsPerSecond | MetricName::Concurrency => {
            let value = if name == MetricName::RequestsPerSecond {
                window.rate(config.rate_window)
            } else {
                window.mean_in_flight(config.rate_window)
            };
            let Some(value) = value else {
                r.missing = Some(Missing::NoSamples);
                return r;
            };
            r.value = Some(value);
            r.per_replica = Some(value / f64::from(obs.ready.max(1)));
            let wanted = (value / target).ceil() as i32;
            let q = ratio(value, target, current);
            r.proposal = Some(if current > 0 && q <= 1.0 + up.tolerance && q >= 1.0 - down.tolerance {
                current
            } else {
                wanted
            });
        }
        MetricName::LatencyP99 => {
            // A ceiling: only ready replicas count, so pods that are still starting never cause a scale-up.
            r.value = window.max_p99(config.rate_window);
            if let Some(p99) = r.value {
                let q = p99 / target;
                if q > 1.0 + up.tolerance && obs.ready > 0 {
                    r.proposal = Some((f64::from(obs.ready) * q).ceil() as i32);
                }
            }
        }
        MetricName::Cpu => {}
    }
    r
}

fn replicas_changed_since(events: &[(SystemTime, i32)], since: SystemTime, up: bool) -> i32 {
    events.iter().filter(|(t, d)| *t > since && (*d > 0) == up).map(|(_, d)| d.abs()).sum()
}

/// The most replicas the scale-up policies allow now (HPA's `calculateScaleUpLimitWithScalingRules`).
fn up_limit(current: i32, rules: &ScalingRules, events: &[(SystemTime, i32)], now: SystemTime) -> i32 {
    let per_policy = rules.policies.iter().map(|p| {
        let since = now.checked_sub(Duration::from_secs(p.period_seconds as u64)).unwrap_or(now);
        let start = current - replicas_changed_since(events, since, true);
        match p.type_ {
            ScalingPolicyType::Pods => start + p.value,
            ScalingPolicyType::Percent => (f64::from(start) * (1.0 + f64::from(p.value) / 100.0)).ceil() as i32,
        }
    });
    match rules.select_policy {
        SelectPolicy::Disabled => current,
        SelectPolicy::Max => per_policy.max().unwrap_or(current),
        SelectPolicy::Min => per_policy.min().unwrap_or(current),
    }
}

/// The fewest replicas the scale-down policies allow now (HPA's `calculateScaleDownLimitWithBehaviors`).
fn down_limit(current: i32, rules: &ScalingRules, events: &[(SystemTime, i32)], now: SystemTime) -> i32 {
    let per_policy = rules.policies.iter().map(|p| {
        let since = now.checked_sub(Duration::from_secs(p.period_seconds as u64)).unwrap_or(now);
        let start = current + replicas_changed_since(events, since, false);
        match p.type_ {
            ScalingPolicyType::Pods => start - p.value,
            ScalingPolicyType::Percent => (f64::from(start) * (1.0 - f64::from(p.value) / 100.0)) as i32,
        }
    });
    match rules.select_policy {
        SelectPolicy::Disabled => current,
        // Max picks the policy allowing the biggest change, i.e. the fewest replicas.
        SelectPolicy::Max => per_policy.min().unwrap_or(current),
        SelectPolicy::Min => per_policy.max().unwrap_or(current),
    }
}

/// `AbleToScale`, `ScalingActive` and `ScalingLimited` for a decision, keeping transition times of
/// conditions whose status did not change.
pub fn conditions(decision: &Decision, previous: &[Condition], now: SystemTime) -> Vec<Condition> {
    let active = decision.readings.iter().any(|r| r.missing.is_none());
    let missing: Vec<String> =
        decision.readings.iter().filter_map(|r| r.missing.map(|m| format!("{}: {m}", metric_label(r.name)))).collect();
    let (limited, limit_reason, limit_message) = match decision.limited {
        Some(Limit::TooFewReplicas(n)) => {
            (true, "TooFewReplicas", format!("the desired count is below minReplicas {n}"))
        }
        Some(Limit::TooManyReplicas(n)) => {
            (true, "TooManyReplicas", format!("the desired count is above maxReplicas {n}"))
        }
        Some(Limit::ScaleUpPolicy(n)) => (true, "ScaleUpLimit", format!("the scale-up policy allows {n} replicas now")),
        Some(Limit::ScaleDownPolicy(n)) => {
            (true, "ScaleDownLimit", format!("the scale-down policy allows {n} replicas now"))
        }
        None => (false, "DesiredWithinRange", "the desired count is within range".to_string()),
    };
    let (able_reason, able_message) = match decision.stabilized_by {
        Some((Direction::Down, s)) => {
            ("ScaleDownStabilized", format!("recent recommendations were higher; holding for the {s} s window"))
        }
        Some((Direction::Up, s)) => {
            ("ScaleUpStabilized", format!("recent recommendations were lower; holding for the {s} s window"))
        }
        None => ("ReadyForNewScale", "recommended size matches the current size or is being applied".to_string()),
    };
    vec![
        condition(previous, "AbleToScale", true, able_reason, able_message, now),
        if active {
            let msg = if missing.is_empty() {
                "the metrics are read from the proxy".to_string()
            } else {
                format!("some metrics are missing and cannot scale down: {}", missing.join("; "))
            };
            condition(previous, "ScalingActive", true, "ValidMetricFound", msg, now)
        } else {
            condition(previous, "ScalingActive", false, "MetricsMissing", missing.join("; "), now)
        },
        condition(previous, "ScalingLimited", limited, limit_reason, limit_message, now),
    ]
}

/// One condition, with its transition time carried over when its status is unchanged.
pub fn condition(
    previous: &[Condition],
    type_: &str,
    status: bool,
    reason: &str,
    message: String,
    now: SystemTime,
) -> Condition {
    let status = if status { ConditionStatus::True } else { ConditionStatus::False };
    let since = find_condition(previous, type_)
        .filter(|c| c.status == status)
        .and_then(|c| c.last_transition_time)
        .unwrap_or(Time(now));
    Condition {
        type_: type_.into(),
        status,
        reason: Some(reason.into()),
        message: Some(message),
        last_transition_time: Some(since),
        ..Condition::default()
    }
}

#[cfg(test)]
mod tests;
