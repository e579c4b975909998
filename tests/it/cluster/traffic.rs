//! Steady client load during a scenario, bounded in count and time, only to the cluster's own containers:
//! - requests through the standalone proxy to the app (`Host: web.test`), one every `interval`, each with a
//!   5 s limit, counting failures (only when agents run pods at their own address, else the proxy cannot reach
//!   them);
//! - acknowledged API writes (a ConfigMap each) through the harness's client, recorded for the checker's
//!   lost-write check, with their failures and latencies.

use super::api::Api;
use super::checker::Ack;
use super::topology::{Cluster, APP_HOST, NS};
use serde_json::json;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct Sample {
    pub took: Duration,
    /// The answering pod, or what went wrong.
    pub result: Result<String, String>,
}

pub struct Traffic {
    stop: Arc<AtomicBool>,
    requests: Arc<Mutex<Vec<Sample>>>,
    writes: Arc<Mutex<Vec<Sample>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// What the load saw.
#[derive(Debug)]
pub struct Seen {
    pub requests: Vec<Sample>,
    pub writes: Vec<Sample>,
}

impl Seen {
    pub fn request_failures(&self) -> Vec<String> {
        self.requests.iter().filter_map(|s| s.result.as_ref().err().cloned()).collect()
    }

    pub fn write_failures(&self) -> Vec<String> {
        self.writes.iter().filter_map(|s| s.result.as_ref().err().cloned()).collect()
    }

    pub fn summary(&self) -> String {
        let max = |v: &[Sample]| v.iter().map(|s| s.took).max().unwrap_or_default();
        format!(
            "{} proxied requests ({} failed, slowest {:?}), {} API writes ({} failed, slowest {:?})",
            self.requests.len(),
            self.request_failures().len(),
            max(&self.requests),
            self.writes.len(),
            self.write_failures().len(),
            max(&self.writes)
        )
    }
}

/// Upper bounds, whatever the scenario does: at most this long and this many requests.
const MAX_RUN: Duration = Duration::from_secs(300);
const REQUEST_INTERVAL: Duration = Duration::from_millis(50);
const WRITE_INTERVAL: Duration = Duration::from_millis(250);

impl Traffic {
    pub fn start(c: &Cluster) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let requests: Arc<Mutex<Vec<Sample>>> = Arc::default();
        let writes: Arc<Mutex<Vec<Sample>>> = Arc::default();
        let mut tasks = Vec::new();
        if c.features.multi_host {
            let url = format!("http://{}/", c.proxy().http());
            let (stop, out) = (stop.clone(), requests.clone());
            tasks.push(c.rt.spawn(async move {
                let http = test_support::http().timeout(Duration::from_secs(5)).build().expect("client");
                let start = tokio::time::Instant::now();
                let mut inflight = Vec::new();
                for i in 0..(MAX_RUN.as_millis() / REQUEST_INTERVAL.as_millis()) as u32 {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    tokio::time::sleep_until(start + REQUEST_INTERVAL * i).await;
                    let (http, url, out) = (http.clone(), url.clone(), out.clone());
                    inflight.push(tokio::spawn(async move {
                        let at = Instant::now();
                        let result = request(&http, &url).await;
                        out.lock().unwrap().push(Sample { took: at.elapsed(), result });
                    }));
                }
                for t in inflight {
                    let _ = t.await;
                }
            }));
        }
        {
            let (api, acks, stop, out) = (c.api.clone(), c.acks.clone(), stop.clone(), writes.clone());
            let prefix = format!("ack-{:x}", super::since_start().as_millis());
            tasks.push(c.rt.spawn(async move {
                let start = tokio::time::Instant::now();
                for i in 0..(MAX_RUN.as_millis() / WRITE_INTERVAL.as_millis()) as u32 {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    tokio::time::sleep_until(start + WRITE_INTERVAL * i).await;
                    let at = Instant::now();
                    let result = write(&api, &acks, &format!("{prefix}-{i}")).await.map(|rev| rev.to_string());
                    out.lock().unwrap().push(Sample { took: at.elapsed(), result });
                }
            }));
        }
        Traffic { stop, requests, writes, tasks }
    }

    /// Samples so far (requests that ended).
    pub fn seen(&self) -> Seen {
        Seen { requests: self.requests.lock().unwrap().clone(), writes: self.writes.lock().unwrap().clone() }
    }

    /// Stop sending, wait for what is in flight, return everything seen.
    pub fn finish(self, c: &Cluster) -> Seen {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            let _ = c.block_on(t);
        }
        Seen { requests: self.requests.lock().unwrap().clone(), writes: self.writes.lock().unwrap().clone() }
    }
}

async fn request(http: &reqwest::Client, url: &str) -> Result<String, String> {
    let resp = http.get(url).header("host", APP_HOST).send().await.map_err(|e| format!("request: {e}"))?;
    let status = resp.status();
    let body = resp.text().await.map_err(|e| format!("body: {e}"))?;
    if !status.is_success() {
        return Err(format!("status {status}: {}", body.trim()));
    }
    let v: serde_json::Value = serde_json::from_str(&body).map_err(|e| format!("not echo JSON ({e}): {body}"))?;
    v["pod"].as_str().map(str::to_string).ok_or_else(|| format!("no pod in {body}"))
}

/// Create one ConfigMap; when acknowledged, remember its key and revision for the lost-write check. A create
/// retried on another replica after a transport error may find its first attempt committed (409): that one
/// counts as acknowledged at the stored revision.
pub async fn write(api: &Api, acks: &Mutex<Vec<Ack>>, name: &str) -> Result<u64, String> {
    let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": NS},
                    "data": {"written": name}});
    let a = api.call("POST", &format!("/api/v1/namespaces/{NS}/configmaps"), Some(&cm)).await?;
    let a = if a.status == 409 { api.get(&format!("/api/v1/namespaces/{NS}/configmaps/{name}")).await? } else { a };
    if !a.ok() {
        return Err(format!("{} from {}: {}", a.status, a.server, a.body));
    }
    let rev = a.resource_version().ok_or_else(|| format!("no resourceVersion in {}", a.body))?;
    acks.lock().unwrap().push(Ack { key: format!("/berth/configmaps/{NS}/{name}"), rev: rev as i64 });
    Ok(rev)
}
