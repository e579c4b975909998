//! A steady HTTP client for the under-load tests: one request every `interval` (sent on schedule, not after
//! the previous answer, so a slow or failed request never thins the load), each recorded with its outcome.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// Which pod answered, from `berth echo`'s JSON body.
#[derive(Debug, Clone)]
pub struct Answer {
    pub pod: String,
    pub pid: u64,
    pub node: String,
}

#[derive(Debug, Clone)]
pub struct Sample {
    pub sent: Instant,
    pub sent_wall: SystemTime,
    /// When the answer (or the failure) arrived, on the wall clock (to compare with stored timestamps).
    pub done_wall: SystemTime,
    pub done: Instant,
    pub result: Result<Answer, String>,
}

/// A running load; [`Load::finish`] waits for every request to end.
pub struct Load {
    samples: Arc<Mutex<Vec<Sample>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Load {
    /// Send `count` GET / requests with `Host: host` to `proxy` (`127.0.0.1:PORT`), one every `interval`.
    /// Each request may take up to 10 s (then it counts as failed).
    pub fn start(proxy: &str, host: &str, count: usize, interval: Duration) -> Load {
        let samples = Arc::new(Mutex::new(Vec::with_capacity(count)));
        let (url, host, out) = (format!("http://{proxy}/"), host.to_string(), samples.clone());
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
            rt.block_on(async move {
                let client = test_support::http().timeout(Duration::from_secs(10)).build().unwrap();
                let start = tokio::time::Instant::now();
                let mut tasks = Vec::with_capacity(count);
                for i in 0..count {
                    tokio::time::sleep_until(start + interval * i as u32).await;
                    let (client, url, host, out) = (client.clone(), url.clone(), host.clone(), out.clone());
                    tasks.push(tokio::spawn(async move {
                        let (sent, sent_wall) = (Instant::now(), SystemTime::now());
                        let result = one(&client, &url, &host).await;
                        let (done, done_wall) = (Instant::now(), SystemTime::now());
                        out.lock().unwrap().push(Sample { sent, sent_wall, done_wall, done, result });
                    }));
                }
                for t in tasks {
                    let _ = t.await;
                }
            });
        });
        Load { samples, thread: Some(thread) }
    }

    /// The samples recorded so far (requests that ended).
    pub fn snapshot(&self) -> Vec<Sample> {
        self.samples.lock().unwrap().clone()
    }

    /// Wait until every request ended; returns all samples in completion order.
    pub fn finish(mut self) -> Vec<Sample> {
        if let Some(t) = self.thread.take() {
            t.join().expect("load thread");
        }
        self.samples.lock().unwrap().clone()
    }
}

async fn one(client: &reqwest::Client, url: &str, host: &str) -> Result<Answer, String> {
    let resp = client.get(url).header("host", host).send().await.map_err(|e| format!("request: {e}"))?;
    let status = resp.status();
    let body = resp.text().await.map_err(|e| format!("body: {e}"))?;
    if !status.is_success() {
        return Err(format!("status {status}: {}", body.trim()));
    }
    let v: serde_json::Value = serde_json::from_str(&body).map_err(|e| format!("not echo JSON ({e}): {body}"))?;
    Ok(Answer {
        pod: v["pod"].as_str().ok_or_else(|| format!("no pod in {body}"))?.to_string(),
        pid: v["pid"].as_u64().ok_or_else(|| format!("no pid in {body}"))?,
        node: v["node"].as_str().unwrap_or_default().to_string(),
    })
}

/// The failed samples, for assertion messages.
pub fn failures(samples: &[Sample]) -> Vec<String> {
    samples.iter().filter_map(|s| s.result.as_ref().err().cloned()).collect()
}

/// One request, synchronously (for warm-up and checks outside a load).
pub fn get_once(proxy: &str, host: &str) -> Result<Answer, String> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
    rt.block_on(async {
        let client = test_support::http().timeout(Duration::from_secs(10)).build().map_err(|e| e.to_string())?;
        one(&client, &format!("http://{proxy}/"), host).await
    })
}
