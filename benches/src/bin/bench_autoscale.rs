//! `make bench-autoscale`: how fast request load turns into replicas. Starts `berth up` (process runtime,
//! `config/autoscale/load.yaml`: 50 requests/s per replica, 1 to 8 replicas), then 5 times: waits for one
//! ready replica, steps the load from 0 to 300 requests/s through the proxy for 8 s, and measures the time
//! from the step to the first scale-up decision (the Autoscaler's recorded decision time) and to the first
//! answer from a new replica. Prints a table, the p50s against the targets (decision ≤ 2 s, serving ≤ 5 s),
//! and `RESULT autoscale decision_p50_s=N serving_p50_s=N`.
//!
//! Usage: `bench_autoscale [BERTH_BINARY]` (default `target/release/berth`). All load is on loopback and
//! bounded (2400 requests per trial).

use test_support::open_loop as load;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

const TRIALS: usize = 5;
const RPS: u32 = 300;
const STEP: Duration = Duration::from_secs(8);

struct Up {
    child: Child,
    berth: PathBuf,
    dir: PathBuf,
}

impl Drop for Up {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-INT", &self.child.id().to_string()]).status();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Up {
    fn json(&self, kind: &str, name: &str) -> serde_json::Value {
        let out = Command::new(&self.berth)
            .args(["get", kind, name, "-o", "json", "--data-dir"])
            .arg(&self.dir)
            .output()
            .map(|o| o.stdout)
            .unwrap_or_default();
        serde_json::from_slice(&out).unwrap_or(serde_json::Value::Null)
    }
}

fn wait(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) -> Result<(), String> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if cond() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Err(format!("timed out after {timeout:?} waiting for {what}"))
}

fn p50(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    if let Err(e) = run() {
        eprintln!("bench_autoscale: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), String> {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let berth = std::env::args().nth(1).map(PathBuf::from).unwrap_or_else(|| repo.join("target/release/berth"));
    if !berth.exists() {
        return Err(format!("{} not found: build it first (cargo build --release --bin berth)", berth.display()));
    }
    let dir = std::env::temp_dir().join(format!("berth-bench-autoscale-{}", std::process::id()));
    let mut child = Command::new(&berth)
        .args(["up", "--api-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0", "--dns-listen", "127.0.0.1:0"])
        .args(["--admin-listen", "127.0.0.1:0", "--data-dir"])
        .arg(&dir)
        .arg("-f")
        .arg(repo.join("config/autoscale/load.yaml"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", berth.display()))?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let up = Up { child, berth, dir };
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(rest) = line.split("proxy on http://").nth(1) {
                let _ = tx.send(rest.split([' ', ',']).next().unwrap_or("").to_string());
            }
        }
    });
    let proxy = rx.recv_timeout(Duration::from_secs(60)).map_err(|_| "berth up printed no proxy address")?;
    let url = format!("http://{proxy}/");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;

    println!(
        "{:<6} {:>12} {:>12} {:>10} {:>8} {:>8} {:>8}",
        "trial", "decision_s", "serving_s", "replicas", "sent", "skipped", "failed"
    );
    let (mut decisions, mut servings) = (Vec::new(), Vec::new());
    for trial in 1..=TRIALS {
        wait("one ready replica and a settled autoscaler", Duration::from_secs(180), || {
            let d = up.json("deployment", "load");
            let a = up.json("autoscaler", "load");
            d["spec"]["replicas"] == 1 && d["status"]["readyReplicas"] == 1 && a["status"]["desiredReplicas"] == 1
        })?;
        let step = SystemTime::now();
        let report = rt.block_on(load::run(&url, "load.localhost", RPS, STEP));
        let a = up.json("autoscaler", "load");
        let decision = a["status"]["recentDecisions"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|d| d["toReplicas"].as_i64() > d["fromReplicas"].as_i64())
            .filter_map(|d| humantime::parse_rfc3339_weak(d["time"].as_str()?).ok())
            .filter_map(|t| t.duration_since(step).ok())
            .min()
            .ok_or_else(|| format!("trial {trial}: no scale-up decision recorded"))?
            .as_secs_f64();
        let serving = report
            .first_from
            .get(1)
            .ok_or_else(|| format!("trial {trial}: no new replica answered within {STEP:?}"))?
            .0
            .as_secs_f64();
        let replicas = up.json("deployment", "load")["spec"]["replicas"].as_i64().unwrap_or(0);
        println!(
            "{trial:<6} {decision:>12.2} {serving:>12.2} {replicas:>10} {:>8} {:>8} {:>8}",
            report.sent, report.skipped, report.failed
        );
        decisions.push(decision);
        servings.push(serving);
    }
    let (d, s) = (p50(&mut decisions), p50(&mut servings));
    println!("p50: decision {d:.2} s (target <= 2 s), new replicas serving {s:.2} s (target <= 5 s)");
    println!("for comparison, Kubernetes' HPA syncs every 15 s and reacts in about 27 s on average (its maintainers' estimate)");
    println!("RESULT autoscale decision_p50_s={d:.2} serving_p50_s={s:.2}");
    Ok(())
}
