//! A bounded open-loop HTTP load generator on loopback (rate-driven; the e2e tests' `common/load.rs` is the
//! fixed-interval one), shared by the autoscale tests and `bench_autoscale` (feature `load`). Requests go out at a fixed rate over pooled
//! keep-alive connections; the count, the duration, the requests in flight and each request's time are all
//! bounded.

use std::sync::Arc;
use std::time::{Duration, Instant};

/// What a run saw.
#[derive(Debug, Default)]
pub struct LoadReport {
    pub sent: u64,
    /// Requests not sent because they were late (see [`run`]).
    pub skipped: u64,
    pub ok: u64,
    /// Non-2xx answers and transport errors.
    pub failed: u64,
    /// The first answer from each pod (the `pod` field of `berth echo`'s reply), in order, with the time since
    /// the load started.
    pub first_from: Vec<(Duration, String)>,
}

/// Send `rps` requests per second for `duration` to `url` with `Host: host`. At most 512 requests are in
/// flight and each has a 10 s timeout.
pub async fn run(url: &str, host: &str, rps: u32, duration: Duration) -> LoadReport {
    let client =
        crate::http().timeout(Duration::from_secs(10)).pool_max_idle_per_host(128).build().expect("HTTP client");
    let total = (f64::from(rps) * duration.as_secs_f64()) as u64;
    let start = Instant::now();
    let in_flight = Arc::new(tokio::sync::Semaphore::new(512));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(Duration, Option<String>)>();
    let mut report_skipped = 0;
    for i in 0..total {
        let at = start + Duration::from_secs_f64(i as f64 / f64::from(rps));
        tokio::time::sleep_until(at.into()).await;
        // Open loop without catch-up: a request more than 100 ms late (the machine stalled, or 512 are in
        // flight) is skipped, so the offered rate never bursts above `rps`.
        let Ok(permit) = in_flight.clone().try_acquire_owned() else {
            report_skipped += 1;
            continue;
        };
        if at.elapsed() > Duration::from_millis(100) {
            report_skipped += 1;
            continue;
        }
        let (client, tx, url, host) = (client.clone(), tx.clone(), url.to_string(), host.to_string());
        tokio::spawn(async move {
            let pod = match client.get(&url).header("Host", host).send().await {
                Ok(r) if r.status().is_success() => r
                    .text()
                    .await
                    .ok()
                    .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
                    .and_then(|v| v["pod"].as_str().map(str::to_string)),
                _ => None,
            };
            let _ = tx.send((start.elapsed(), pod));
            drop(permit);
        });
    }
    drop(tx);
    let mut report = LoadReport { sent: total - report_skipped, skipped: report_skipped, ..Default::default() };
    while let Some((at, pod)) = rx.recv().await {
        match pod {
            Some(pod) => {
                report.ok += 1;
                if !report.first_from.iter().any(|(_, p)| *p == pod) {
                    report.first_from.push((at, pod));
                }
            }
            None => report.failed += 1,
        }
    }
    report.first_from.sort();
    report
}
