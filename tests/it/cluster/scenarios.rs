//! The fault table of issue #17, one test per row, each on a fresh cluster (about 15 s to start) under steady
//! client load: requests through the standalone proxy and acknowledged API writes (see `traffic.rs`). Every
//! test ends with the checker's invariants over etcd's whole history (see `checker.rs`).
//!
//! Tests that need leader election or multi-host clients skip, saying so, on a binary without them.

use super::topology::{Cluster, Features, Spec, LEASE, RENEW_DEADLINE};
use super::traffic::{Seen, Traffic};
use std::time::{Duration, Instant};

fn log(msg: &str) {
    eprintln!("[scenario {:>7.1}s] {msg}", super::since_start().as_secs_f64());
}

/// What a scenario needs of the binary under test.
#[derive(PartialEq)]
enum Needs {
    Nothing,
    /// Leader election (`berth server --lease-duration`).
    Election,
    /// Election, and agents that run pods at their own address with clients that fail over (`--node-ip`).
    MultiHost,
}

/// A cluster for `test`, or `None` when it must be skipped (no Docker, or a binary without what it needs).
fn cluster(test: &str, needs: Needs) -> Option<Cluster> {
    let f = Features::detect(std::path::Path::new(crate::common::BERTH));
    if needs != Needs::Nothing && !f.election {
        test_support::skip(&format!("{test}: this berth has no leader election (server --lease-duration)"));
        return None;
    }
    if needs == Needs::MultiHost && !f.multi_host {
        test_support::skip(&format!("{test}: this berth's agents run pods on 127.0.0.1 only (agent --node-ip)"));
        return None;
    }
    Cluster::start(test, Spec::default())
}

fn pause(d: Duration) {
    std::thread::sleep(d);
}

fn assert_no_request_failures(seen: &Seen) {
    let f = seen.request_failures();
    assert!(
        f.is_empty(),
        "{} of {} requests through the proxy failed: {:?}",
        f.len(),
        seen.requests.len(),
        &f[..f.len().min(10)]
    );
}

fn assert_no_write_failures(seen: &Seen) {
    let f = seen.write_failures();
    assert!(f.is_empty(), "{} of {} API writes failed: {:?}", f.len(), seen.writes.len(), &f[..f.len().min(10)]);
}

/// The cluster comes up (3 etcd, 3 servers, 3 agents, a proxy), runs the app, takes acknowledged writes, and
/// every invariant holds: the harness itself, without a fault.
#[test]
fn cluster_starts_and_invariants_hold() {
    let Some(c) = cluster("cluster::scenarios::cluster_starts_and_invariants_hold", Needs::Nothing) else { return };
    let traffic = Traffic::start(&c);
    pause(Duration::from_secs(5));
    let seen = traffic.finish(&c);
    log(&seen.summary());
    assert_no_write_failures(&seen);
    assert_no_request_failures(&seen);
    let r = c.assert_invariants();
    if c.features.election {
        assert_eq!(r.terms.len(), 1, "one leader term without faults: {:?}", r.terms);
        assert_eq!(c.pods_per_agent().iter().sum::<usize>(), 3);
    }
}

/// `docker kill` the leader: a new leader acts (its first fenced write) within lease + 2 s; a Deployment scaled
/// during the gap converges; invariants hold.
#[test]
fn leader_killed() {
    let Some(c) = cluster("cluster::scenarios::leader_killed", Needs::Election) else { return };
    let old = c.wait_leader(None, Duration::from_secs(30));
    let traffic = Traffic::start(&c);
    pause(Duration::from_secs(2));
    let old_lease = c.check().leader_at_end().map(|t| t.lease).unwrap_or(0);
    let killed = Instant::now();
    c.servers[old].c.kill();
    log(&format!("killed the leader {}", c.servers[old].name));
    // Scaled during the gap: only a leader's Deployment controller can create the two new pods.
    c.block_on(c.api.scale(super::topology::NS, "web", 5, Duration::from_secs(20))).expect("scale during the gap");
    let new = c.wait_leader(Some(old), LEASE + Duration::from_secs(10));
    c.wait_ready_pods(5, Duration::from_secs(60));
    let r = c.check();
    let acted = r.first_fence_after(killed, old_lease).map(|t| t.duration_since(killed));
    log(&format!("new leader {} acted {acted:?} after the kill", c.servers[new].name));
    c.servers[old].c.start();
    c.wait_serving(old, Duration::from_secs(60));
    let seen = traffic.finish(&c);
    log(&seen.summary());
    c.assert_invariants();
    let acted = acted.expect("a fenced write of the new leader");
    assert!(acted <= LEASE + Duration::from_secs(2), "the new leader acted {acted:?} after the kill (lease {LEASE:?})");
    assert_no_request_failures(&seen);
}

/// SIGTERM the leader: it resigns, and a new leader is elected within 2 s.
#[test]
fn leader_sigterm() {
    let Some(c) = cluster("cluster::scenarios::leader_sigterm", Needs::Election) else { return };
    let old = c.wait_leader(None, Duration::from_secs(30));
    let traffic = Traffic::start(&c);
    pause(Duration::from_secs(2));
    let signalled = Instant::now();
    c.servers[old].c.signal("TERM");
    let new = c.wait_leader(Some(old), Duration::from_secs(10));
    let r = c.check();
    let elected = r.terms.iter().find(|t| t.from_seen >= signalled).map(|t| t.from_seen.duration_since(signalled));
    log(&format!("new leader {} elected {elected:?} after SIGTERM", c.servers[new].name));
    assert!(c.servers[old].c.wait_stopped(Duration::from_secs(15)), "the old leader did not exit after SIGTERM");
    c.servers[old].c.start();
    c.wait_serving(old, Duration::from_secs(60));
    let seen = traffic.finish(&c);
    log(&seen.summary());
    c.assert_invariants();
    let elected = elected.expect("a new leader term");
    assert!(elected <= Duration::from_secs(2), "new leader {elected:?} after SIGTERM, want <= 2 s");
    assert_no_request_failures(&seen);
}

/// The leader cut from the store network: its loops stop within the renew deadline (`berth_leader` 0), a new
/// leader takes over, no stale write commits, and on reconnection it rejoins as a follower.
#[test]
fn leader_cut_from_store() {
    let Some(c) = cluster("cluster::scenarios::leader_cut_from_store", Needs::Election) else { return };
    let old = c.wait_leader(None, Duration::from_secs(30));
    let traffic = Traffic::start(&c);
    pause(Duration::from_secs(2));
    let (cut, cut_wall) = (Instant::now(), std::time::SystemTime::now());
    c.servers[old].c.disconnect(&c.store_net.name);
    log(&format!("cut the leader {} from the store network", c.servers[old].name));
    c.wait("the cut leader to step down (berth_leader 0)", LEASE + Duration::from_secs(30), || {
        c.leader_gauge(old) == Some(0)
    });
    // The gauge is polled through /metrics, which a replica without its store answers only after its 2 s store
    // probe; the replica's own "stepped down" line (logged once its loops ended) dates the step-down exactly.
    let gauge_zero = cut.elapsed();
    let stepped_down = c.servers[old]
        .c
        .first_log_after("stepped down", cut_wall)
        .and_then(|t| t.duration_since(cut_wall).ok())
        .unwrap_or(gauge_zero);
    log(&format!("berth_leader 0 seen {gauge_zero:?} after the cut; \"stepped down\" logged after {stepped_down:?}"));
    // Work for the new leader: only it may create these pods.
    c.block_on(c.api.scale(super::topology::NS, "web", 4, Duration::from_secs(20))).expect("scale");
    let new = c.wait_leader(Some(old), LEASE + Duration::from_secs(10));
    c.wait_ready_pods(4, Duration::from_secs(60));
    log(&format!("stepped down after {stepped_down:?}; new leader {}", c.servers[new].name));
    c.servers[old].c.connect(&c.store_net.name, c.servers[old].store_ip);
    c.wait_serving(old, Duration::from_secs(30));
    pause(Duration::from_secs(3));
    assert_eq!(c.leader(), Some(new), "the reconnected replica took the lead back");
    assert_eq!(c.leader_gauge(old), Some(0), "the reconnected replica says it leads");
    let seen = traffic.finish(&c);
    log(&seen.summary());
    c.assert_invariants();
    assert!(
        stepped_down <= RENEW_DEADLINE + Duration::from_secs(1),
        "the cut leader's loops stopped {stepped_down:?} after the cut (renew deadline {RENEW_DEADLINE:?})"
    );
    assert_no_request_failures(&seen);
}

/// `docker pause` the leader for 30 s, then unpause: what it had in flight is fenced off (the checker finds no
/// fenced write of its term after its key was gone), and it steps down.
#[test]
fn leader_paused() {
    let Some(c) = cluster("cluster::scenarios::leader_paused", Needs::Election) else { return };
    let old = c.wait_leader(None, Duration::from_secs(30));
    let traffic = Traffic::start(&c);
    pause(Duration::from_secs(2));
    // Give its loops work, then freeze it in the middle of it.
    c.block_on(c.api.scale(super::topology::NS, "web", 6, Duration::from_secs(20))).expect("scale");
    c.servers[old].c.pause();
    log(&format!("paused the leader {}", c.servers[old].name));
    let new = c.wait_leader(Some(old), LEASE + Duration::from_secs(10));
    log(&format!("new leader {}", c.servers[new].name));
    pause(Duration::from_secs(30).saturating_sub(LEASE));
    let unpaused = Instant::now();
    c.servers[old].c.unpause();
    c.wait("the unpaused replica to step down", RENEW_DEADLINE + Duration::from_secs(5), || {
        c.leader_gauge(old) == Some(0)
    });
    log(&format!("unpaused replica stepped down after {:?}", unpaused.elapsed()));
    c.wait_ready_pods(6, Duration::from_secs(60));
    let rejected = c.server_metric(old, "berth_fenced_writes_rejected_total").unwrap_or(0.0);
    log(&format!("fenced writes rejected on the unpaused replica: {rejected}"));
    let seen = traffic.finish(&c);
    log(&seen.summary());
    c.assert_invariants();
    assert_eq!(c.leader(), Some(new), "the unpaused replica took the lead back");
}

/// A replica that does not lead cut from the node network: the agents and the proxy that used it fail over
/// within 5 s; no pod restarts; zero failed client requests.
#[test]
fn follower_cut_from_node_network() {
    let Some(c) = cluster("cluster::scenarios::follower_cut_from_node_network", Needs::MultiHost) else { return };
    let leader = c.wait_leader(None, Duration::from_secs(30));
    // The proxy and agent-2 try server-2 first, agent-3 server-3: cut the first of those that does not lead.
    let cut = if leader == super::topology::PROXY_FIRST_SERVER { 2 } else { super::topology::PROXY_FIRST_SERVER };
    let watches = |i: usize| c.server_metric(i, "berth_api_watches").unwrap_or(0.0);
    let total_before: f64 = (0..3).map(watches).sum();
    let on_cut = watches(cut);
    let restarts = c.restarts();
    let reconnects = c.proxy_metric("berth_mirror_reconnects_total").unwrap_or(0.0);
    let traffic = Traffic::start(&c);
    pause(Duration::from_secs(2));
    let t = Instant::now();
    c.servers[cut].c.disconnect(&c.node_net.name);
    log(&format!("cut {} (watches on it: {on_cut}) from the node network", c.servers[cut].name));
    let survivors: Vec<usize> = (0..3).filter(|i| *i != cut).collect();
    c.wait("the agents' watches to resume on the other replicas", Duration::from_secs(15), || {
        survivors.iter().map(|i| watches(*i)).sum::<f64>() >= total_before
    });
    let agents_moved = t.elapsed();
    let proxy_moved = if cut == super::topology::PROXY_FIRST_SERVER {
        c.wait("the proxy's mirror to reconnect", Duration::from_secs(15), || {
            c.proxy_metric("berth_mirror_reconnects_total").unwrap_or(0.0) > reconnects
                && c.proxy_metric("berth_mirror_connected") == Some(1.0)
        });
        Some(t.elapsed())
    } else {
        None
    };
    log(&format!("agents resumed after {agents_moved:?}, proxy after {proxy_moved:?}"));
    pause(Duration::from_secs(5));
    c.servers[cut].c.connect(&c.node_net.name, c.servers[cut].node_ip);
    let seen = traffic.finish(&c);
    log(&seen.summary());
    assert_eq!(c.restarts(), restarts, "pods restarted or replaced");
    c.assert_invariants();
    assert_no_request_failures(&seen);
    assert!(agents_moved <= Duration::from_secs(5), "agents failed over after {agents_moved:?}");
    if let Some(p) = proxy_moved {
        assert!(p <= Duration::from_secs(5), "the proxy failed over after {p:?}");
    }
}

/// An agent cut off (every packet dropped in its namespace): its node goes NotReady after the grace period,
/// its pods are replaced on the other agents; on reconnection it stops its orphans and the replica count is
/// exact, in the API and in running processes.
#[test]
fn agent_cut_off() {
    let Some(c) = cluster("cluster::scenarios::agent_cut_off", Needs::Nothing) else { return };
    let per_agent = c.pods_per_agent();
    let a = (0..c.agents.len()).max_by_key(|i| per_agent[*i]).expect("an agent");
    assert!(per_agent[a] > 0, "no pods on any agent: {per_agent:?}");
    let traffic = Traffic::start(&c);
    pause(Duration::from_secs(2));
    c.agents[a].c.isolate();
    let t = Instant::now();
    log(&format!("cut off {} ({} pods)", c.agents[a].name, per_agent[a]));
    c.wait("the cut-off node to become NotReady", Duration::from_secs(40), || {
        !c.ready_nodes().contains(&c.agents[a].name)
    });
    log(&format!("NotReady after {:?}", t.elapsed()));
    c.wait("the pods to be replaced on the other agents", Duration::from_secs(60), || {
        c.pods_per_agent()[a] == 0 && c.ready_app_pods().len() == 3
    });
    log(&format!("replaced after {:?}", t.elapsed()));
    c.agents[a].c.unisolate();
    c.wait_nodes_ready(3, Duration::from_secs(60));
    c.wait("the reconnected agent to stop its orphans", Duration::from_secs(60), || c.workloads_on(a) == 0);
    let processes: usize = (0..c.agents.len()).map(|i| c.workloads_on(i)).sum();
    let seen = traffic.finish(&c);
    log(&seen.summary());
    assert_eq!(
        processes,
        3,
        "app processes running across agents: {:?}",
        (0..3).map(|i| c.workloads_on(i)).collect::<Vec<_>>()
    );
    assert_eq!(c.app_pods().len(), 3);
    c.assert_invariants();
}

/// Kill 1 of 3 etcd members: no API write fails, at most one Berth leader change.
#[test]
fn etcd_one_member_killed() {
    let Some(c) = cluster("cluster::scenarios::etcd_one_member_killed", Needs::Nothing) else { return };
    let traffic = Traffic::start(&c);
    pause(Duration::from_secs(2));
    let t = Instant::now();
    c.etcd[0].c.kill();
    log("killed etcd-1");
    pause(Duration::from_secs(15));
    c.block_on(c.api.scale(super::topology::NS, "web", 4, Duration::from_secs(20))).expect("scale without a member");
    c.wait_ready_pods(4, Duration::from_secs(60));
    c.etcd[0].c.start();
    pause(Duration::from_secs(5));
    let seen = traffic.finish(&c);
    log(&seen.summary());
    let r = c.assert_invariants();
    assert_no_write_failures(&seen);
    assert_no_request_failures(&seen);
    if c.features.election {
        let changes = r.leader_changes_after(t);
        assert!(changes <= 1, "{changes} Berth leader changes after losing one etcd member");
    }
}

/// Kill 2 of 3 etcd members: API writes fail fast with 503 (within the 5 s request timeout), the leader steps
/// down; after the members return, everything recovers within 30 s.
#[test]
fn etcd_quorum_lost() {
    let Some(c) = cluster("cluster::scenarios::etcd_quorum_lost", Needs::Election) else { return };
    let leader = c.wait_leader(None, Duration::from_secs(30));
    c.etcd[0].c.kill();
    c.etcd[1].c.kill();
    log("killed etcd-1 and etcd-2");
    pause(Duration::from_secs(1));
    for i in 0..3 {
        let t = Instant::now();
        let cm = serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": format!("no-quorum-{i}"), "namespace": super::topology::NS}});
        let url = c.servers[i].url();
        let a = c.block_on(c.api.one(&url, "POST", "/api/v1/namespaces/default/configmaps", Some(&cm)));
        let took = t.elapsed();
        log(&format!(
            "write to {} without quorum: {:?} after {took:?}",
            c.servers[i].name,
            a.as_ref().map(|a| a.status)
        ));
        assert_eq!(a.as_ref().map(|a| a.status).ok(), Some(503), "{a:?}");
        assert!(took <= Duration::from_secs(6), "a write without quorum took {took:?}");
    }
    c.wait("the leader to step down", LEASE + Duration::from_secs(5), || c.leader_gauge(leader) == Some(0));
    let restored = Instant::now();
    c.etcd[0].c.start();
    c.etcd[1].c.start();
    log("restored both members");
    c.wait("a leader again", Duration::from_secs(30), || c.leader().is_some());
    c.block_on(c.api.scale(super::topology::NS, "web", 4, Duration::from_secs(30))).expect("scale after recovery");
    c.wait_ready_pods(4, Duration::from_secs(30));
    for i in 0..3 {
        c.wait_serving(i, Duration::from_secs(30).saturating_sub(restored.elapsed()));
    }
    let recovered = restored.elapsed();
    log(&format!("recovered {recovered:?} after restoring"));
    c.assert_invariants();
    assert!(recovered <= Duration::from_secs(30), "full recovery took {recovered:?} after restoring the members");
}

/// Every control-plane replica stopped for 60 s: no failed request through the proxy, no pod restarted; when
/// they return, nothing is restarted or replaced.
#[test]
fn control_plane_down() {
    let Some(c) = cluster("cluster::scenarios::control_plane_down", Needs::MultiHost) else { return };
    let restarts = c.restarts();
    let traffic = Traffic::start(&c);
    pause(Duration::from_secs(2));
    for s in &c.servers {
        s.c.kill();
    }
    log("stopped every server");
    pause(Duration::from_secs(60));
    let during = traffic.seen();
    for s in &c.servers {
        s.c.start();
    }
    for i in 0..3 {
        c.wait_serving(i, Duration::from_secs(60));
    }
    if c.features.election {
        c.wait_leader(None, Duration::from_secs(30));
    }
    pause(Duration::from_secs(15));
    let seen = traffic.finish(&c);
    log(&format!("during the outage: {}; overall: {}", during.summary(), seen.summary()));
    assert_no_request_failures(&seen);
    assert_eq!(c.restarts(), restarts, "pods restarted or replaced after the outage");
    c.assert_invariants();
}

/// Rolling restart of all three servers (SIGTERM, start, ready, next): at most 3 leader changes, agents always
/// attached (every node stays Ready), invariants hold.
#[test]
fn rolling_restart() {
    let Some(c) = cluster("cluster::scenarios::rolling_restart", Needs::Election) else { return };
    c.wait_leader(None, Duration::from_secs(30));
    let restarts = c.restarts();
    let traffic = Traffic::start(&c);
    pause(Duration::from_secs(2));
    let t = Instant::now();
    for i in 0..3 {
        c.servers[i].c.signal("TERM");
        assert!(c.servers[i].c.wait_stopped(Duration::from_secs(20)), "{} did not stop", c.servers[i].name);
        c.servers[i].c.start();
        c.wait_serving(i, Duration::from_secs(60));
        assert_eq!(c.ready_nodes().len(), 3, "a node went NotReady during the restart of {}", c.servers[i].name);
        log(&format!("restarted {}", c.servers[i].name));
        pause(Duration::from_secs(3));
    }
    c.wait_leader(None, Duration::from_secs(30));
    let seen = traffic.finish(&c);
    log(&seen.summary());
    let r = c.assert_invariants();
    let changes = r.leader_changes_after(t);
    assert!(changes <= 3, "{changes} leader changes in a rolling restart");
    assert_eq!(c.restarts(), restarts, "pods restarted or replaced");
    assert_no_request_failures(&seen);
}
