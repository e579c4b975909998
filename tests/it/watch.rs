//! Watch: a client watching pods from revision N sees every later change exactly once, in order, across a
//! forced reconnect that resumes from the last revision it saw, while many writers run.

use crate::common::{self, Server};
use futures::StreamExt;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::time::Duration;

fn pod(name: &str, generation: u32) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": name, "labels": {"gen": generation.to_string()}},
           "spec": {"containers": [{"name": "c", "image": "busybox", "command": ["sleep", "1"]}]}})
}

fn rv(v: &Value) -> u64 {
    v["metadata"]["resourceVersion"].as_str().and_then(|s| s.parse().ok()).expect("resourceVersion")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn watch_sees_every_change_once_across_reconnects() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--no-controllers"]);
    let token = server.token();
    let http = common::api_http(dir.path()).build().unwrap();
    let pods = format!("{}/api/v1/namespaces/default/pods", server.url);
    let start: Value = http.get(&pods).bearer_auth(&token).send().await.unwrap().json().await.unwrap();
    let from: u64 = start["metadata"]["resourceVersion"].as_str().unwrap().parse().unwrap();

    // 8 writers: create, update twice, delete every other pod.
    let mut writers = Vec::new();
    for w in 0..8 {
        let (http, pods, token) = (http.clone(), pods.clone(), token.clone());
        writers.push(tokio::spawn(async move {
            let mut revisions = Vec::new();
            for i in 0..25 {
                let name = format!("p-{w}-{i}");
                let r: Value = http
                    .post(&pods)
                    .bearer_auth(&token)
                    .json(&pod(&name, 0))
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                revisions.push(rv(&r));
                for g in 1..3 {
                    let r: Value = http
                        .put(format!("{pods}/{name}"))
                        .bearer_auth(&token)
                        .json(&pod(&name, g))
                        .send()
                        .await
                        .unwrap()
                        .json()
                        .await
                        .unwrap();
                    revisions.push(rv(&r));
                }
                if i % 2 == 0 {
                    let r: Value = http
                        .delete(format!("{pods}/{name}"))
                        .bearer_auth(&token)
                        .send()
                        .await
                        .unwrap()
                        .json()
                        .await
                        .unwrap();
                    revisions.push(rv(&r));
                }
            }
            revisions
        }));
    }

    // The watcher drops its connection every 97 events and resumes from the last revision it saw.
    let watcher = {
        let (http, pods, token) = (http.clone(), pods.clone(), token.clone());
        tokio::spawn(async move {
            let mut seen: Vec<u64> = Vec::new();
            let mut last = from;
            let mut reconnects = 0;
            let expected = 8 * (25 * 3 + 13);
            while seen.len() < expected {
                let response = http
                    .get(&pods)
                    .query(&[("watch", "true"), ("resourceVersion", &last.to_string())])
                    .bearer_auth(&token)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status(), 200);
                let mut body = response.bytes_stream();
                let mut buf = Vec::new();
                let mut in_this = 0;
                'conn: while let Some(chunk) = body.next().await {
                    buf.extend_from_slice(&chunk.unwrap());
                    while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
                        let line: Vec<u8> = buf.drain(..=pos).collect();
                        let event: Value = serde_json::from_slice(&line).unwrap();
                        assert_ne!(event["type"], "ERROR", "{event}");
                        let r = rv(&event["object"]);
                        assert!(r > last, "revisions arrive in order without repeats ({r} after {last})");
                        last = r;
                        seen.push(r);
                        in_this += 1;
                        if in_this == 97 || seen.len() == expected {
                            break 'conn;
                        }
                    }
                }
                reconnects += 1;
            }
            (seen, reconnects)
        })
    };

    let mut written = BTreeSet::new();
    for w in writers {
        written.extend(w.await.unwrap());
    }
    let (seen, reconnects) =
        tokio::time::timeout(Duration::from_secs(120), watcher).await.expect("watcher finished").unwrap();
    assert!(reconnects >= 5, "the test forced reconnects ({reconnects})");
    let seen_set: BTreeSet<u64> = seen.iter().copied().collect();
    assert_eq!(seen_set.len(), seen.len(), "no duplicates");
    assert_eq!(seen_set, written, "every write seen exactly once");
}
