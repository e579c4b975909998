//! Crash test for the redb store: a child process (this test binary, re-run with an environment variable)
//! creates objects from 8 concurrent clients and prints each acknowledged key; the parent `kill -9`s it
//! after a random number of acknowledgements, reopens the file, and checks that every acknowledged object
//! is present and byte-identical, and that the store is internally consistent. Several rounds run against
//! the same file, so recovery after a crash is itself crashed into.
//!
//! Reproduce a run with `BERTH_DURABILITY_SEED=<seed printed by the test>`.

use control_plane::store::{Key, Prefix, RedbStore, Store, StoreEvent};
use futures::StreamExt;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

const CHILD_DB: &str = "BERTH_DURABILITY_CHILD_DB";
const CHILD_ROUND: &str = "BERTH_DURABILITY_CHILD_ROUND";
const CLIENTS: usize = 8;
const PER_CLIENT: usize = 2_000;
const CHILD_TIME_LIMIT: Duration = Duration::from_secs(60);
const ROUNDS: usize = 3;
const KIND: &str = "pods";
const NAMESPACE: &str = "durability";

/// The bytes stored under `name`: JSON of a size that varies with the name (100 B to ~4 KiB).
fn value_for(name: &str) -> Vec<u8> {
    let h = name.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
    let payload: String = (0..(100 + h % 4000)).map(|i| char::from(b'a' + ((h >> (i % 48)) % 26) as u8)).collect();
    format!(r#"{{"metadata":{{"name":"{name}","labels":{{"app":"crash"}}}},"spec":{{"payload":"{payload}"}}}}"#)
        .into_bytes()
}

/// The child: runs only when started by the parent test below.
#[test]
fn durability_child() {
    let Some(db) = std::env::var_os(CHILD_DB) else {
        return;
    };
    let round = std::env::var(CHILD_ROUND).unwrap_or_default();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    rt.block_on(async move {
        let store = Arc::new(RedbStore::open(Path::new(&db)).expect("child opens the store"));
        let deadline = Instant::now() + CHILD_TIME_LIMIT;
        let clients: Vec<_> = (0..CLIENTS)
            .map(|c| {
                let store = store.clone();
                let round = round.clone();
                tokio::spawn(async move {
                    for i in 0..PER_CLIENT {
                        if Instant::now() > deadline {
                            break;
                        }
                        let name = format!("r{round}-c{c}-{i}");
                        let key = Key::new(KIND, NAMESPACE, &name);
                        store.create(&key, value_for(&name)).await.expect("child create");
                        // Direct to the fd (not the test harness's capture); one short write per line.
                        let mut out = std::io::stdout().lock();
                        out.write_all(format!("ACK {name} END\n").as_bytes()).expect("stdout");
                        out.flush().expect("stdout");
                    }
                })
            })
            .collect();
        for c in clients {
            c.await.expect("client task");
        }
    });
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*: enough to pick kill points reproducibly from a printed seed.
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// Start a writer child, kill it with SIGKILL after `kill_after` acknowledgements, and return every
/// acknowledged name.
fn crash_one_round(db: &Path, round: usize, kill_after: usize) -> (Vec<String>, bool) {
    let exe = std::env::current_exe().expect("test binary path");
    let mut child = Command::new(exe)
        .args(["store_durability::durability_child", "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_DB, db)
        .env(CHILD_ROUND, round.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn child");
    let stdout = child.stdout.take().expect("child stdout");
    let mut acked = Vec::new();
    let mut killed = false;
    if kill_after == 0 {
        child.kill().expect("kill -9");
        killed = true;
    }
    // The child bounds itself in count and time, so reading to EOF terminates.
    for line in BufReader::new(stdout).lines() {
        let line = line.expect("read child stdout");
        if let Some(name) = line.strip_prefix("ACK ").and_then(|l| l.strip_suffix(" END")) {
            acked.push(name.to_string());
            if !killed && acked.len() >= kill_after {
                child.kill().expect("kill -9");
                killed = true;
            }
        }
    }
    let status = child.wait().expect("wait child");
    // If the child finished first, it must have finished cleanly.
    assert!(killed || status.success(), "child failed on its own: {status}");
    (acked, killed)
}

async fn verify(db: &Path, acked: &[String]) {
    let store = RedbStore::open(db).expect("reopen after kill -9");
    // Everything committed (acknowledged or not) is intact, and the revision counts exactly the writes.
    let prefix = Prefix { kind: KIND.into(), namespace: Some(NAMESPACE.into()) };
    let (items, revision) = store.list(&prefix, None).await.expect("list");
    for item in &items {
        assert!(item.value == value_for(&item.key.name), "stored object {} is corrupt", item.key);
    }
    let stored: std::collections::HashSet<&str> = items.iter().map(|v| v.key.name.as_str()).collect();
    for name in acked {
        assert!(stored.contains(name.as_str()), "acknowledged object {name} is missing after kill -9");
    }
    // Point reads agree with the list (sampled: each is a blocking-pool round trip).
    for name in acked.iter().step_by(97) {
        let got = store.get(&Key::new(KIND, NAMESPACE, name)).await.expect("get");
        assert!(got.is_some_and(|v| v.value == value_for(name)), "get {name} after kill -9");
    }
    assert_eq!(items.len() as u64, revision, "only creates ran: one revision per object");
    assert_eq!(store.revision().await.expect("revision"), revision);
    // The persisted history replays every write, in order.
    let mut watch = store.watch(&prefix, 0).await.expect("watch from 0");
    for want in 1..=revision {
        let ev = tokio::time::timeout(Duration::from_secs(30), watch.next())
            .await
            .expect("history replay stalled")
            .expect("history ended")
            .expect("history event");
        assert_eq!(ev.revision(), want);
        assert!(matches!(ev, StoreEvent::Put { created: true, .. }));
    }
}

#[test]
fn redb_keeps_every_acknowledged_write_across_kill_9() {
    if std::env::var_os(CHILD_DB).is_some() {
        return;
    }
    let seed = std::env::var("BERTH_DURABILITY_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64)
    }) | 1;
    eprintln!("durability seed: BERTH_DURABILITY_SEED={seed}");
    let mut rng = Rng(seed);
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("berth.redb");
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");

    let mut all_acked = Vec::new();
    for round in 0..ROUNDS {
        // Round 0 may kill before the store is even open; later rounds kill mid-stream.
        let kill_after = (rng.next() % 1_500) as usize;
        let started = Instant::now();
        let (acked, killed) = crash_one_round(&db, round, kill_after);
        let wrote = started.elapsed();
        all_acked.extend(acked.iter().cloned());
        rt.block_on(verify(&db, &all_acked));
        eprintln!(
            "round {round}: kill after {kill_after} acks; {} acknowledged in {wrote:?}, killed: {killed}; verified in {:?}",
            acked.len(),
            started.elapsed() - wrote
        );
    }
    assert!(!all_acked.is_empty(), "no round acknowledged anything");
}
