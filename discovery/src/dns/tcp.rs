//! DNS over TCP (RFC 7766): two-byte length framing around the same `answer` function as UDP, with no
//! size limit but 64 KiB, an idle timeout and a cap on concurrent connections.

use super::answer::{answer, servfail, Transport, Verdict};
use super::forward;
use super::metrics::Stats;
use super::Shared;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

const IDLE: Duration = Duration::from_secs(10);
const MAX_CONNECTIONS: usize = 512;

/// Accept connections until the future is dropped (which also closes every connection).
pub(crate) async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, stats: Arc<Stats>) {
    let limit = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut conns = JoinSet::new();
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Usually EMFILE: back off a little instead of spinning on the error.
                tracing::warn!(error = %e, "dns: tcp accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        while conns.try_join_next().is_some() {}
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            continue;
        };
        let shared = shared.clone();
        let stats = stats.clone();
        conns.spawn(async move {
            let _permit = permit;
            connection(stream, shared, stats).await;
        });
    }
}

async fn connection(mut stream: TcpStream, shared: Arc<Shared>, stats: Arc<Stats>) {
    let _ = stream.set_nodelay(true);
    let mut query = vec![0u8; usize::from(u16::MAX)];
    let mut out = Vec::with_capacity(4096);
    let mut frame = Vec::with_capacity(4096);
    loop {
        let len = match tokio::time::timeout(IDLE, stream.read_u16()).await {
            Ok(Ok(len)) => usize::from(len),
            _ => return,
        };
        match tokio::time::timeout(IDLE, stream.read_exact(&mut query[..len])).await {
            Ok(Ok(_)) => {}
            _ => return,
        }
        let packet = &query[..len];
        shared.ensure_fresh();
        let started = Instant::now();
        let (verdict, mut outcome) = {
            let table = shared.table.read();
            answer(&table, &shared.opt, shared.upstream.is_some(), packet, Transport::Tcp, &mut out)
        };
        match (verdict, shared.upstream) {
            (Verdict::Reply, _) => {}
            (Verdict::Forward, Some(upstream)) => match forward::exchange(upstream, packet).await {
                Some(reply) => {
                    outcome = forward::outcome_of(&reply);
                    out = reply;
                }
                None => match servfail(packet, &mut out) {
                    Some(o) => outcome = o,
                    None => return,
                },
            },
            _ => {
                stats.count(outcome);
                return;
            }
        }
        stats.count(outcome);
        let Ok(n) = u16::try_from(out.len()) else {
            return;
        };
        frame.clear();
        frame.extend_from_slice(&n.to_be_bytes());
        frame.extend_from_slice(&out);
        if stream.write_all(&frame).await.is_err() {
            return;
        }
        stats.latency(started.elapsed(), 1);
    }
}
