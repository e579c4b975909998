//! Forwarding of names outside the zone to one upstream resolver over UDP, when configured.
//!
//! Each forwarded query gets its own connected ephemeral socket, so only the upstream's answer with the
//! same ID is accepted; the answer is relayed unchanged. No caching, no retries: a timeout becomes
//! SERVFAIL and the client's resolver retries as it would with any server.

use super::answer::servfail;
use super::metrics::{Outcome, Stats};
use super::udp::Forwarded;
use hickory_proto::op::Header;
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;

/// How long to wait for the upstream.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(2);
/// Forwarded queries in flight at once; more are dropped (the clients retry).
const MAX_IN_FLIGHT: usize = 256;

fn id_of(packet: &[u8]) -> Option<u16> {
    Header::read(&mut BinDecoder::new(packet)).ok().map(|h| h.metadata.id)
}

/// Send `query` to `upstream` and wait for its answer.
pub(crate) async fn exchange(upstream: SocketAddr, query: &[u8]) -> Option<Vec<u8>> {
    let id = id_of(query)?;
    let local: SocketAddr =
        if upstream.is_ipv4() { (Ipv4Addr::UNSPECIFIED, 0).into() } else { (Ipv6Addr::UNSPECIFIED, 0).into() };
    let socket = UdpSocket::bind(local).await.ok()?;
    socket.connect(upstream).await.ok()?;
    socket.send(query).await.ok()?;
    let deadline = tokio::time::Instant::now() + FORWARD_TIMEOUT;
    let mut buf = vec![0u8; usize::from(u16::MAX)];
    loop {
        let n = tokio::time::timeout_at(deadline, socket.recv(&mut buf)).await.ok()?.ok()?;
        if id_of(&buf[..n]) == Some(id) {
            buf.truncate(n);
            return Some(buf);
        }
    }
}

/// The response code of a relayed answer, for metrics.
pub(crate) fn outcome_of(reply: &[u8]) -> Outcome {
    let mut dec = BinDecoder::new(reply);
    match Header::read(&mut dec) {
        Ok(h) => {
            let qtype = if h.counts.queries >= 1 {
                hickory_proto::op::Query::read(&mut dec).ok().map(|q| q.query_type())
            } else {
                None
            };
            Outcome::new(qtype, h.metadata.response_code)
        }
        Err(_) => Outcome::dropped(None),
    }
}

/// Serve forwarded UDP queries until the channel closes.
pub(crate) async fn run(
    upstream: SocketAddr,
    mut queue: mpsc::Receiver<Forwarded>,
    reply: UdpSocket,
    stats: Arc<Stats>,
) {
    let reply = Arc::new(reply);
    let limit = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let mut tasks = JoinSet::new();
    while let Some(f) = queue.recv().await {
        while tasks.try_join_next().is_some() {}
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            stats.count(Outcome::dropped(None));
            continue;
        };
        let reply = reply.clone();
        let stats = stats.clone();
        tasks.spawn(async move {
            let _permit = permit;
            let started = Instant::now();
            let mut out = Vec::new();
            let outcome = match exchange(upstream, &f.packet).await {
                Some(answer) => {
                    out = answer;
                    outcome_of(&out)
                }
                None => match servfail(&f.packet, &mut out) {
                    Some(o) => o,
                    None => return,
                },
            };
            if reply.send_to(&out, f.client).await.is_ok() {
                stats.count(outcome);
                stats.latency(started.elapsed(), 1);
            }
        });
    }
}
