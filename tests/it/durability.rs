//! Durability: `kill -9` the server while 8 clients apply 2,000 objects; after a restart every object whose
//! write was acknowledged is present and intact.

use crate::common;
use crate::common::Server;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const CLIENTS: usize = 8;
const TOTAL: usize = 2_000;

fn object(i: usize) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap",
           "metadata": {"name": format!("obj-{i:05}"), "labels": {"client": format!("c{}", i % CLIENTS)}},
           "data": {"index": i.to_string(), "payload": format!("{i:05}-").repeat(40)}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_writes_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), &[]);
    let token = server.token();
    let url = format!("{}/api/v1/namespaces/default/configmaps", server.url);

    // Kill after a random number of acknowledgements, so the crash lands mid-stream.
    let seed = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().subsec_nanos() as usize;
    let kill_after = 200 + seed % (TOTAL - 400);
    eprintln!("durability: kill -9 after {kill_after} acknowledged writes");
    let acked = Arc::new(AtomicUsize::new(0));
    let http = crate::common::api_http(&server.dir).build().unwrap();
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let (http, url, token, acked) = (http.clone(), url.clone(), token.clone(), acked.clone());
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            for i in (c..TOTAL).step_by(CLIENTS) {
                let r =
                    http.post(&url).bearer_auth(&token).json(&object(i)).timeout(Duration::from_secs(30)).send().await;
                match r {
                    Ok(r) if r.status() == 201 => {
                        mine.push(i);
                        acked.fetch_add(1, Ordering::SeqCst);
                    }
                    Ok(r) => panic!("unexpected status {} for object {i}", r.status()),
                    Err(_) => break, // the server is gone
                }
            }
            mine
        }));
    }
    common::wait_for("enough acknowledged writes", Duration::from_secs(120), || {
        acked.load(Ordering::SeqCst) >= kill_after
    });
    server.kill9();
    let mut acknowledged = Vec::new();
    for t in tasks {
        acknowledged.extend(t.await.unwrap());
    }
    assert!(
        acknowledged.len() >= kill_after && acknowledged.len() < TOTAL,
        "the kill landed mid-stream ({} acked)",
        acknowledged.len()
    );

    let server = Server::start(dir.path(), &[]);
    let url = format!("{}/api/v1/namespaces/default/configmaps", server.url);
    let list: Value = http.get(&url).bearer_auth(server.token()).send().await.unwrap().json().await.unwrap();
    let stored: BTreeMap<String, Value> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| (o["metadata"]["name"].as_str().unwrap().to_string(), o.clone()))
        .collect();
    for i in &acknowledged {
        let want = object(*i);
        let name = want["metadata"]["name"].as_str().unwrap();
        let got = stored.get(name).unwrap_or_else(|| panic!("acknowledged object {name} is missing after restart"));
        assert_eq!(got["data"], want["data"], "{name} is intact");
        assert_eq!(got["metadata"]["labels"], want["metadata"]["labels"], "{name} is intact");
    }
    // Unacknowledged writes may or may not have landed, but nothing else may appear.
    assert!(stored.len() >= acknowledged.len() && stored.len() <= acknowledged.len() + CLIENTS);
    eprintln!("durability: {} acknowledged, {} present after restart", acknowledged.len(), stored.len());
}
