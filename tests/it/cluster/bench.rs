//! `make bench-failover`: on one Docker cluster of the harness (not loopback processes: the election, the
//! fencing and the clients' failover are measured across real addresses), 10 trials each of `docker kill` and
//! SIGTERM of the leader. Per trial:
//! - failover: from the fault to the new leader's first successful fenced write (the first audit put
//!   `/berth-fence/<lease>` of another lease in etcd's history; a Deployment is scaled right after the fault so
//!   the new leader has something to write);
//! - agent resume: from the fault to the agents' watches being open again on the surviving replicas
//!   (`berth_api_watches` summed over them back to the total before), measured in the trials where the killed
//!   replica served watches.
//!
//! Kubernetes' defaults for comparison: a 15 s lease, failover typically 15-20 s after a kill.

use super::api::Api;
use super::topology::{Cluster, Spec, LEASE, NS};
use std::time::{Duration, Instant};

const TRIALS: usize = 10;

fn p50(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

struct Trial {
    failover: Duration,
    agent_resume: Option<Duration>,
}

fn trial(c: &Cluster, signal: &str, replicas: u32) -> Trial {
    let old = c.wait_leader(None, Duration::from_secs(60));
    // Let the checker see the current term, and every replica its clients, before the fault.
    let old_lease = c.check().leader_at_end().map(|t| t.lease).unwrap_or(0);
    let watches = |i: usize| c.server_metric(i, "berth_api_watches").unwrap_or(0.0);
    let total: f64 = (0..3).map(watches).sum();
    // Agents fail over only with several --server (else they wait for their one replica to return).
    let on_old = if c.features.multi_host { watches(old) } else { 0.0 };
    let survivors: Vec<usize> = (0..3).filter(|i| *i != old).collect();
    let t0 = Instant::now();
    match signal {
        "KILL" => c.servers[old].c.kill(),
        s => c.servers[old].c.signal(s),
    }
    // Work only a leader does, sent to a surviving replica.
    let mut api: Api = c.api.clone();
    api.servers = survivors.iter().map(|i| c.servers[*i].url()).collect();
    c.block_on(api.scale(NS, "web", replicas, Duration::from_secs(30))).expect("scale after the fault");
    let deadline = t0 + LEASE + Duration::from_secs(30);
    let (mut failover, mut agent_resume) = (None, None);
    while (failover.is_none() || (agent_resume.is_none() && on_old > 0.0)) && Instant::now() < deadline {
        if agent_resume.is_none() && on_old > 0.0 && survivors.iter().map(|i| watches(*i)).sum::<f64>() >= total {
            agent_resume = Some(t0.elapsed());
        }
        if failover.is_none() {
            failover = c
                .history
                .events()
                .iter()
                .filter(|e| e.seen >= t0 && e.value.is_some())
                .filter(|e| super::checker::fence_lease(&e.key).is_some_and(|l| l != old_lease))
                .map(|e| e.seen.duration_since(t0))
                .min();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let failover = failover.unwrap_or_else(|| panic!("no fenced write of a new leader within {:?}", deadline - t0));
    assert!(c.servers[old].c.wait_stopped(Duration::from_secs(20)), "the old leader did not stop");
    c.servers[old].c.start();
    c.wait_serving(old, Duration::from_secs(60));
    c.wait_ready_pods(replicas as usize, Duration::from_secs(60));
    Trial { failover, agent_resume }
}

/// Run with `make bench-failover` (ignored in the test suite: it takes several minutes).
#[test]
#[ignore]
fn failover() {
    let Some(c) = Cluster::start("cluster::bench::failover", Spec::default()) else { return };
    assert!(c.features.election, "bench-failover needs a berth with leader election (server --lease-duration)");
    let (mut kill, mut term, mut resume) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..2 * TRIALS {
        let signal = if i % 2 == 0 { "KILL" } else { "TERM" };
        let replicas = if i % 2 == 0 { 4 } else { 3 };
        let t = trial(&c, signal, replicas);
        println!(
            "trial {:>2} {signal}: new leader's first fenced write after {:.2} s, agent watch resumed after {}",
            i / 2 + 1,
            t.failover.as_secs_f64(),
            t.agent_resume.map_or("- (no agent on that replica)".into(), |d| format!("{:.2} s", d.as_secs_f64()))
        );
        if signal == "KILL" { &mut kill } else { &mut term }.push(t.failover.as_secs_f64());
        resume.extend(t.agent_resume.map(|d| d.as_secs_f64()));
    }
    c.assert_invariants();
    println!(
        "lease {:?}; Kubernetes' defaults: 15 s lease, failover typically 15-20 s after a kill; {} agent resumes measured",
        LEASE,
        resume.len()
    );
    println!(
        "RESULT failover kill_p50_s={:.2} term_p50_s={:.2} agent_resume_p50_s={:.2}",
        p50(kill),
        p50(term),
        p50(resume)
    );
}
