//! Query counters (by type and response code) and the answer-latency histogram, in Prometheus text.
//!
//! Each UDP worker, the TCP side and the forwarder own a [`Stats`] so the hot path touches only its own
//! cache lines; [`render`] sums them when `/metrics` is scraped.

use hdrhistogram::Histogram;
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use parking_lot::Mutex;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

const QTYPES: [&str; 10] = ["A", "AAAA", "SRV", "SOA", "NS", "ANY", "PTR", "TXT", "OTHER", "NONE"];
const RCODES: [&str; 9] =
    ["NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED", "BADVERS", "OTHER", "DROPPED"];

/// Which counter a query lands in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Outcome {
    qtype: u8,
    rcode: u8,
}

impl Outcome {
    pub(crate) fn new(qtype: Option<RecordType>, rcode: ResponseCode) -> Self {
        let qtype = match qtype {
            Some(RecordType::A) => 0,
            Some(RecordType::AAAA) => 1,
            Some(RecordType::SRV) => 2,
            Some(RecordType::SOA) => 3,
            Some(RecordType::NS) => 4,
            Some(RecordType::ANY) => 5,
            Some(RecordType::PTR) => 6,
            Some(RecordType::TXT) => 7,
            Some(_) => 8,
            None => 9,
        };
        let rcode = match rcode {
            ResponseCode::NoError => 0,
            ResponseCode::FormErr => 1,
            ResponseCode::ServFail => 2,
            ResponseCode::NXDomain => 3,
            ResponseCode::NotImp => 4,
            ResponseCode::Refused => 5,
            ResponseCode::BADVERS => 6,
            _ => 7,
        };
        Self { qtype, rcode }
    }

    pub(crate) fn dropped(qtype: Option<RecordType>) -> Self {
        Self { rcode: 8, ..Self::new(qtype, ResponseCode::NoError) }
    }
}

/// Counters and a latency histogram owned by one serving loop.
pub(crate) struct Stats {
    counts: [[AtomicU64; RCODES.len()]; QTYPES.len()],
    latency: Mutex<Histogram<u64>>,
}

impl Stats {
    pub(crate) fn new() -> Self {
        // 1 µs .. 60 s at 3 significant digits; the bounds are constants, so creation cannot fail.
        let hist = Histogram::new_with_bounds(1, 60_000_000, 3).expect("constant histogram bounds are valid");
        Self { counts: Default::default(), latency: Mutex::new(hist) }
    }

    pub(crate) fn count(&self, outcome: Outcome) {
        self.counts[outcome.qtype as usize][outcome.rcode as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Record `n` answers that each took `elapsed` (a UDP batch is timed as a whole).
    pub(crate) fn latency(&self, elapsed: Duration, n: u64) {
        let micros = (elapsed.as_micros() as u64).max(1);
        self.latency.lock().saturating_record_n(micros, n);
    }

    fn snapshot_into(&self, counts: &mut [[u64; RCODES.len()]; QTYPES.len()], hist: &mut Histogram<u64>) {
        for (q, row) in self.counts.iter().enumerate() {
            for (r, c) in row.iter().enumerate() {
                counts[q][r] += c.load(Ordering::Relaxed);
            }
        }
        let _ = hist.add(&*self.latency.lock());
    }
}

/// Sum the given stats into Prometheus text.
pub(crate) fn render<'a>(stats: impl Iterator<Item = &'a Stats>) -> String {
    let mut counts = [[0u64; RCODES.len()]; QTYPES.len()];
    let mut hist = Stats::new().latency.into_inner();
    for s in stats {
        s.snapshot_into(&mut counts, &mut hist);
    }
    let mut out = String::with_capacity(4096);
    out.push_str("# HELP berth_dns_queries_total DNS queries answered, by query type and response code.\n");
    out.push_str("# TYPE berth_dns_queries_total counter\n");
    for (q, row) in counts.iter().enumerate() {
        for (r, c) in row.iter().enumerate() {
            if *c > 0 {
                let _ =
                    writeln!(out, "berth_dns_queries_total{{qtype=\"{}\",rcode=\"{}\"}} {}", QTYPES[q], RCODES[r], c);
            }
        }
    }
    out.push_str(
        "# HELP berth_dns_answer_latency_seconds Time from receiving a query to handing its answer to the kernel.\n",
    );
    out.push_str("# TYPE berth_dns_answer_latency_seconds summary\n");
    for q in [0.5, 0.9, 0.99, 0.999] {
        let v = hist.value_at_quantile(q) as f64 / 1e6;
        let _ = writeln!(out, "berth_dns_answer_latency_seconds{{quantile=\"{q}\"}} {v:.6}");
    }
    let sum = hist.mean() * hist.len() as f64 / 1e6;
    let _ = writeln!(out, "berth_dns_answer_latency_seconds_sum {sum:.6}");
    let _ = writeln!(out, "berth_dns_answer_latency_seconds_count {}", hist.len());
    out
}

/// The p99 answer latency in microseconds over the given stats (for benchmarks).
pub(crate) fn p99_micros<'a>(stats: impl Iterator<Item = &'a Stats>) -> u64 {
    let mut counts = [[0u64; RCODES.len()]; QTYPES.len()];
    let mut hist = Stats::new().latency.into_inner();
    for s in stats {
        s.snapshot_into(&mut counts, &mut hist);
    }
    hist.value_at_quantile(0.99)
}
