//! The decision function under a simulated clock: a load profile drives a simulated proxy counter, the
//! Deployment follows the decisions and its replicas become ready after a delay.

use super::*;
use model::clock::{Clock, ManualClock};
use model::{
    AutoscalerMetric, Behavior, LatencyCeiling, PerReplicaTarget, ScaleTargetRef, ScalingPolicy, ScalingPolicyType,
};

const TICK: Duration = Duration::from_millis(250);

fn spec(min: i32, max: i32, metrics: Vec<AutoscalerMetric>) -> AutoscalerSpec {
    AutoscalerSpec {
        scale_target_ref: ScaleTargetRef {
            api_version: "apps/v1".into(),
            kind: "Deployment".into(),
            name: "web".into(),
        },
        min_replicas: min,
        max_replicas: max,
        metrics,
        behavior: Behavior::default(),
    }
}

fn rps(target: f64) -> AutoscalerMetric {
    AutoscalerMetric {
        requests_per_second: Some(PerReplicaTarget { target_per_replica: target }),
        ..Default::default()
    }
}

fn latency(ms: f64) -> AutoscalerMetric {
    AutoscalerMetric { latency_p99: Some(LatencyCeiling { ceiling_milliseconds: ms }), ..Default::default() }
}

fn fast_up(s: &mut AutoscalerSpec) {
    s.behavior.scale_up.policies = vec![ScalingPolicy { type_: ScalingPolicyType::Pods, value: 8, period_seconds: 1 }];
}

/// A simulated service and Deployment.
struct Sim {
    clock: ManualClock,
    spec: AutoscalerSpec,
    config: AutoscalerConfig,
    window: MetricWindow,
    state: ScalerState,
    total: f64,
    current: i32,
    /// When each replica beyond the first `ready` becomes ready.
    ready_at: Vec<SystemTime>,
    ready_after: Duration,
    next_periodic: SystemTime,
    /// (seconds since start, from, to) of every change.
    changes: Vec<(f64, i32, i32)>,
    start: SystemTime,
    last: Option<Decision>,
}

impl Sim {
    fn new(spec: AutoscalerSpec, current: i32) -> Sim {
        let clock = ManualClock::at_epoch_2026();
        let now = clock.now();
        Sim {
            clock,
            spec,
            config: AutoscalerConfig::default(),
            window: MetricWindow::default(),
            state: ScalerState::default(),
            total: 0.0,
            current,
            ready_at: vec![now; current as usize],
            ready_after: Duration::from_secs(2),
            next_periodic: now,
            changes: Vec::new(),
            start: now,
            last: None,
        }
    }

    fn secs(&self) -> f64 {
        self.clock.now().duration_since(self.start).unwrap().as_secs_f64()
    }

    fn ready(&self) -> i32 {
        let now = self.clock.now();
        self.ready_at.iter().filter(|t| **t <= now).count() as i32
    }

    /// Advance one tick at `load` rps with `waiting` held requests; returns the decision made, if any.
    fn tick_with(&mut self, load: f64, waiting: u64, p99: Option<f64>) -> Option<Decision> {
        self.clock.advance(TICK);
        let now = self.clock.now();
        self.total += load * TICK.as_secs_f64();
        let sample =
            LoadSample { at: now, requests_total: self.total as u64, in_flight: waiting, waiting, latency_p99_ms: p99 };
        self.window.push(sample, Duration::from_secs(10));
        self.evaluate(None)
    }

    fn evaluate(&mut self, unavailable: Option<Missing>) -> Option<Decision> {
        let now = self.clock.now();
        let eval = if now >= self.next_periodic {
            self.next_periodic = now + self.config.period;
            Evaluation::Periodic
        } else {
            Evaluation::FastPath
        };
        let obs = Observed { window: &self.window, current: self.current, ready: self.ready(), unavailable };
        let d = decide(&self.spec, &obs, &mut self.state, now, &self.config, eval);
        if d.desired != self.current {
            self.changes.push((self.secs(), self.current, d.desired));
            if d.desired > self.current {
                for _ in self.current..d.desired {
                    self.ready_at.push(now + self.ready_after);
                }
            } else {
                self.ready_at.truncate(d.desired as usize);
            }
            self.current = d.desired;
        }
        if eval == Evaluation::Periodic {
            self.last = Some(d.clone());
        }
        Some(d)
    }

    fn run(&mut self, seconds: f64, load: f64) {
        let end = self.secs() + seconds;
        while self.secs() < end - 1e-9 {
            self.tick_with(load, 0, None);
        }
    }
}

#[test]
fn step_up_decides_within_two_seconds_and_reaches_the_load() {
    let mut sim = Sim::new(spec(1, 8, vec![rps(50.0)]), 1);
    sim.run(10.0, 20.0);
    assert!(sim.changes.is_empty(), "steady light load changes nothing: {:?}", sim.changes);
    let step = sim.secs();
    sim.run(30.0, 300.0);
    let (first, from, to) = sim.changes[0];
    assert!(first - step <= 2.0, "first scale-up {:.2} s after the step", first - step);
    assert!(from == 1 && to > 1, "{:?}", sim.changes);
    // HPA's default policy (100% or 4 pods per 15 s) gets there in two steps.
    assert_eq!(sim.current, 6, "{:?}", sim.changes);
    assert!(sim.changes.iter().all(|(_, f, t)| t > f), "only up: {:?}", sim.changes);
}

#[test]
fn step_up_with_a_fast_policy_reaches_six_in_two_seconds() {
    let mut s = spec(1, 8, vec![rps(50.0)]);
    fast_up(&mut s);
    let mut sim = Sim::new(s, 1);
    sim.run(5.0, 0.0);
    let step = sim.secs();
    sim.run(20.0, 300.0);
    let reached = sim.changes.iter().find(|(_, _, to)| *to >= 6).expect("reaches 6").0;
    assert!(reached - step <= 2.0, "6 replicas decided {:.2} s after the step: {:?}", reached - step, sim.changes);
    assert_eq!(sim.current, 6);
    let d = sim.last.as_ref().unwrap();
    assert!(matches!(d.reason, Reason::WithinTolerance { .. }), "{d}");
}

#[test]
fn step_down_waits_for_the_stabilization_window() {
    let mut s = spec(1, 8, vec![rps(50.0)]);
    fast_up(&mut s);
    s.behavior.scale_down.stabilization_window_seconds = 60;
    let mut sim = Sim::new(s, 1);
    sim.run(10.0, 300.0);
    assert_eq!(sim.current, 6);
    let drop = sim.secs();
    sim.run(55.0, 50.0);
    assert_eq!(sim.current, 6, "held within the 60 s window: {:?}", sim.changes);
    let d = sim.last.clone().unwrap();
    assert_eq!(d.stabilized_by, Some((Direction::Down, 60)), "{d}");
    assert!(d.to_string().contains("scale-down stabilization window (60 s)"), "{d}");
    sim.run(10.0, 50.0);
    assert_eq!(sim.current, 1, "{:?}", sim.changes);
    // The first recommendations after the drop still saw part of the high rate, so the count may step down
    // through them; the first step comes only when the window since the last high recommendation (taken up
    // to one period before the drop) has passed.
    let (t, from, _) = sim.changes[1];
    assert_eq!(from, 6);
    assert!((59.0..=62.0).contains(&(t - drop)), "scaled down {:.2} s after the drop", t - drop);
    assert!(sim.changes[1..].iter().all(|(_, f, t)| t < f), "{:?}", sim.changes);
}

#[test]
fn oscillating_load_changes_direction_at_most_once_per_window() {
    let mut s = spec(1, 8, vec![rps(50.0)]);
    fast_up(&mut s);
    let window = 30;
    s.behavior.scale_down.stabilization_window_seconds = window;
    let mut sim = Sim::new(s, 1);
    // 300 rps and 100 rps in turns of 8 s, shorter than the window, for 5 minutes.
    for i in 0..38 {
        sim.run(8.0, if i % 2 == 0 { 300.0 } else { 100.0 });
    }
    let mut turns = Vec::new();
    let mut last_dir = 0;
    for (t, from, to) in &sim.changes {
        let dir = (to - from).signum();
        if last_dir != 0 && dir != last_dir {
            turns.push(*t);
        }
        last_dir = dir;
    }
    for pair in turns.windows(2) {
        assert!(pair[1] - pair[0] >= f64::from(window), "direction changes {pair:?} within {window} s");
    }
    assert!(sim.changes.len() <= 2, "the high recommendation holds through the window: {:?}", sim.changes);
}

#[test]
fn missing_or_stale_metrics_never_scale_down() {
    let mut s = spec(1, 8, vec![rps(50.0)]);
    fast_up(&mut s);
    s.behavior.scale_down.stabilization_window_seconds = 0;
    let mut sim = Sim::new(s, 1);
    sim.run(5.0, 300.0);
    assert_eq!(sim.current, 6);
    // The source stops answering: the window goes stale, and long after any window the count holds.
    for _ in 0..400 {
        sim.clock.advance(TICK);
        sim.evaluate(None);
    }
    assert_eq!(sim.current, 6, "{:?}", sim.changes);
    let d = sim.last.clone().unwrap();
    assert_eq!(d.reason, Reason::MetricsMissing);
    assert!(matches!(d.readings[0].missing, Some(Missing::Stale { .. })), "{:?}", d.readings);
    let conds = conditions(&d, &[], sim.clock.now());
    let active = find_condition(&conds, "ScalingActive").unwrap();
    assert_eq!(active.status, ConditionStatus::False);
    assert_eq!(active.reason.as_deref(), Some("MetricsMissing"));
    assert!(active.message.as_deref().unwrap().contains("newest sample is"), "{active:?}");

    // No Service, no source: same.
    sim.next_periodic = sim.clock.now();
    sim.evaluate(Some(Missing::NoService));
    assert_eq!(sim.current, 6);
    assert!(sim.last.as_ref().unwrap().to_string().contains("no Service selects"), "{}", sim.last.unwrap());
}

#[test]
fn one_missing_metric_blocks_scale_down_but_not_scale_up() {
    let cpu = AutoscalerMetric { cpu: Some(model::CpuTarget { target_utilization_percent: 80 }), ..Default::default() };
    let mut s = spec(1, 8, vec![rps(50.0), cpu]);
    fast_up(&mut s);
    s.behavior.scale_down.stabilization_window_seconds = 0;
    let mut sim = Sim::new(s, 2);
    sim.run(5.0, 300.0);
    assert_eq!(sim.current, 6, "the present metric scales up");
    sim.run(20.0, 10.0);
    assert_eq!(sim.current, 6, "CPU is missing, so no scale-down: {:?}", sim.changes);
    let conds = conditions(sim.last.as_ref().unwrap(), &[], sim.clock.now());
    let active = find_condition(&conds, "ScalingActive").unwrap();
    assert_eq!(active.status, ConditionStatus::True);
    assert!(active.message.as_deref().unwrap().contains("cpu: CPU utilisation is not collected"));
}

#[test]
fn min_and_max_clamp_and_say_so() {
    let mut s = spec(2, 8, vec![rps(50.0)]);
    fast_up(&mut s);
    s.behavior.scale_down.stabilization_window_seconds = 0;
    let mut sim = Sim::new(s, 2);
    sim.run(5.0, 1000.0);
    assert_eq!(sim.current, 8);
    let d = sim.last.clone().unwrap();
    assert_eq!(d.limited, Some(Limit::TooManyReplicas(8)), "{d}");
    let conds = conditions(&d, &[], sim.clock.now());
    assert_eq!(find_condition(&conds, "ScalingLimited").unwrap().reason.as_deref(), Some("TooManyReplicas"));
    sim.run(5.0, 0.0);
    assert_eq!(sim.current, 2);
    assert_eq!(sim.last.as_ref().unwrap().limited, Some(Limit::TooFewReplicas(2)));
}

#[test]
fn scale_up_policy_limits_the_step() {
    // HPA's default scale-up: +100% or +4 pods per 15 s, the larger.
    let mut sim = Sim::new(spec(1, 20, vec![rps(10.0)]), 1);
    sim.run(3.0, 1000.0);
    assert_eq!(sim.current, 5, "{:?}", sim.changes);
    assert_eq!(sim.last.as_ref().unwrap().limited, Some(Limit::ScaleUpPolicy(5)));
    sim.run(14.0, 1000.0);
    assert_eq!(sim.current, 10, "+100% after the period: {:?}", sim.changes);
}

#[test]
fn a_rollout_with_unready_pods_does_not_scale_up() {
    // 4 replicas, 2 of them surge pods still starting; 200 rps at 50 per replica is exactly the capacity.
    let mut s = spec(1, 8, vec![rps(50.0), latency(100.0)]);
    s.behavior.scale_down.stabilization_window_seconds = 0;
    let mut sim = Sim::new(s, 4);
    sim.ready_at[2] = sim.clock.now() + Duration::from_secs(3600);
    sim.ready_at[3] = sim.clock.now() + Duration::from_secs(3600);
    for _ in 0..40 {
        // The two ready pods carry all traffic, so their latency is 1.5x the ceiling.
        sim.tick_with(200.0, 0, Some(150.0));
    }
    assert_eq!(sim.ready(), 2);
    assert!(sim.changes.is_empty(), "no scale-up caused by pods that are not ready: {:?}", sim.changes);
    let d = sim.last.unwrap();
    assert_eq!(d.readings[0].per_replica, Some(100.0), "per ready replica: {d:?}");
}

#[test]
fn new_replicas_are_not_counted_idle_before_they_serve() {
    let mut s = spec(1, 8, vec![rps(50.0)]);
    fast_up(&mut s);
    s.behavior.scale_down.stabilization_window_seconds = 0;
    let mut sim = Sim::new(s, 1);
    sim.ready_after = Duration::from_secs(20);
    sim.run(10.0, 300.0);
    assert_eq!(sim.current, 6);
    assert_eq!(sim.ready(), 1, "the new replicas are still starting");
    assert_eq!(sim.changes.len(), 1, "no scale-down while they start: {:?}", sim.changes);
}

#[test]
fn latency_above_its_ceiling_scales_ready_replicas() {
    let mut s = spec(1, 8, vec![latency(100.0)]);
    fast_up(&mut s);
    let mut sim = Sim::new(s, 2);
    for _ in 0..8 {
        sim.tick_with(50.0, 0, Some(80.0));
    }
    assert!(sim.changes.is_empty(), "below the ceiling nothing changes");
    assert_eq!(sim.last.as_ref().unwrap().reason, Reason::NoProposal);
    for _ in 0..4 {
        sim.tick_with(50.0, 0, Some(300.0));
    }
    assert_eq!(sim.changes[0], (sim.changes[0].0, 2, 6), "ceil(2 * 300/100): {:?}", sim.changes);
}

#[test]
fn scale_from_zero_on_held_requests_and_back_when_idle() {
    let mut s = spec(0, 4, vec![rps(50.0)]);
    s.behavior.scale_down.stabilization_window_seconds = 5;
    let mut sim = Sim::new(s, 0);
    sim.run(3.0, 0.0);
    assert_eq!(sim.current, 0, "idle stays at zero");
    let d = sim.tick_with(0.0, 1, None).unwrap();
    assert_eq!(sim.current, 1, "{d}");
    assert_eq!(d.reason, Reason::Demand { waiting: 1 });
    assert!(d.to_string().contains("held at zero replicas"), "{d}");
    sim.run(2.0, 5.0);
    assert_eq!(sim.current, 1);
    sim.run(10.0, 0.0);
    assert_eq!(sim.current, 0, "back to zero after the window: {:?}", sim.changes);
}

#[test]
fn the_window_restarts_when_the_source_does() {
    let mut w = MetricWindow::default();
    let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
    let at = |ms: u64| t0 + Duration::from_millis(ms);
    let sample = |ms: u64, total: u64| LoadSample {
        at: at(ms),
        requests_total: total,
        in_flight: 0,
        waiting: 0,
        latency_p99_ms: None,
    };
    w.push(sample(0, 1000), Duration::from_secs(5));
    w.push(sample(1000, 1100), Duration::from_secs(5));
    assert_eq!(w.rate(Duration::from_secs(1)), Some(100.0));
    w.push(sample(2000, 5), Duration::from_secs(5));
    assert_eq!(w.rate(Duration::from_secs(1)), None, "a counter that went back is not a negative rate");
    w.push(sample(2500, 55), Duration::from_secs(5));
    assert_eq!(w.rate(Duration::from_secs(1)), Some(100.0));
}

#[test]
fn conditions_keep_their_transition_time() {
    let mut sim = Sim::new(spec(1, 8, vec![rps(50.0)]), 1);
    sim.run(2.0, 10.0);
    let t1 = sim.clock.now();
    let c1 = conditions(sim.last.as_ref().unwrap(), &[], t1);
    sim.run(2.0, 10.0);
    let c2 = conditions(sim.last.as_ref().unwrap(), &c1, sim.clock.now());
    assert_eq!(c2[1].last_transition_time, Some(Time(t1)));
    assert_eq!(c2[1].status, ConditionStatus::True);
}
