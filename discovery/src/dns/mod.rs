//! Berth's authoritative DNS server for the cluster zone, answering from registry snapshots.
//!
//! It serves UDP and TCP on sockets the caller has already bound (tests use port 0), stops when the
//! given shutdown future completes, follows the [`Registry`] by its change notifications (never a timer),
//! and checks the registry revision before each batch of queries, so a change is visible to the very next
//! query. Answers are pre-encoded per (name, type) with hickory-proto whenever the registry changes, and
//! only the names of the services and labels a change touches are rebuilt; the hot path copies bytes.
//! It is not a resolver: names outside the zone are REFUSED, or forwarded over UDP to one configured
//! upstream and relayed unchanged.
//!
//! # Names (ZONE defaults to `cluster.local`)
//!
//! | name | type | answer |
//! |---|---|---|
//! | `ZONE` | SOA, NS | SOA (`ns.dns.ZONE`, `hostmaster.ZONE`, serial = registry revision mod 2³², minimum = TTL); NS `ns.dns.ZONE` with its address as glue |
//! | `ns.dns.ZONE` | A/AAAA | [`DnsConfig::nameserver`] |
//! | `SERVICE.NS.svc.ZONE` | A/AAAA | the service's `virtual_ip` if set, else the addresses of its ready endpoints |
//! | `_PORT._PROTO.SERVICE.NS.svc.ZONE` | SRV | one record per ready endpoint: priority 0, weight = endpoint weight (capped at 65535), port = the endpoint's resolved target port for the service port named `PORT`, target = the endpoint's name below; A/AAAA glue in the additional section. `PROTO` is `_tcp` or `_udp`. Unnamed service ports have no SRV. With a `virtual_ip`: one SRV to `SERVICE.NS.svc.ZONE` on the service port. |
//! | `ENDPOINT.SERVICE.NS.svc.ZONE` | A/AAAA | that endpoint, while it is a ready member of the service (headless per-endpoint names) |
//! | `VALUE.KEY.NS.label.ZONE` | A/AAAA | ready endpoints in namespace `NS` carrying label `KEY=VALUE` |
//!
//! "Ready" means [`Endpoint::accepts_new`](crate::Endpoint::accepts_new): ready, not terminating, weight > 0.
//!
//! **Label names.** `KEY` and `VALUE` are each exactly *one* DNS label holding the key or value verbatim:
//! a `.` or `/` inside them is part of the label, not a separator. On the wire that needs no escaping; in
//! presentation form (dig, zone files) a dot inside a label is written `\.`, so label
//! `app.kubernetes.io/name=web` in namespace `default` is
//! `dig 'web.app\.kubernetes\.io/name.default.label.cluster.local'`, and `tier=db` is
//! `db.tier.default.label.cluster.local`. As everywhere in DNS, matching ignores ASCII case, so values that
//! differ only by case share one name (the answer holds both). A key longer than 63 bytes (possible with
//! a long prefix) and the empty value cannot be written as a label; use the HTTP discovery API for those.
//! Likewise a service, namespace or endpoint name that is not a valid label gets no DNS name.
//!
//! **Responses.** An existing name without records of the asked type is NODATA (NOERROR, empty answer),
//! a missing name in the zone is NXDOMAIN; both carry the zone SOA in the authority section. Names that
//! only have names below them (`svc.ZONE`, `NS.svc.ZONE`, `_tcp.SERVICE...`) exist (NODATA). ANY returns
//! every record of the name. AXFR/IXFR and classes other than IN are REFUSED, opcodes other than QUERY
//! NOTIMP, undecodable queries FORMERR (or dropped when too short to carry an ID), EDNS versions above 0
//! BADVERS. With EDNS the response carries an OPT record (payload 1232) and UDP answers may use the
//! client's advertised size; without EDNS they are limited to 512 bytes. A larger answer is sent with TC
//! set and no records, and the full answer is available over TCP.
//! (hickory-proto compresses at most 120 names per message,
//! so a 200-endpoint answer is about 5.5 KiB rather than 3.3 KiB.)
//!
//! # Performance shape
//! UDP is served by dedicated threads with `recvmmsg`/`sendmmsg` (see `udp`); use [`bind_udp`] to get
//! several `SO_REUSEPORT` sockets, or set [`DnsConfig::udp_workers`] to share one socket among threads.
//! Counters and an answer-latency histogram are exposed as Prometheus text by [`DnsServer::metrics`].

mod answer;
mod forward;
mod key;
mod metrics;
mod table;
mod tcp;
mod udp;

use crate::registry::Registry;
use hickory_proto::rr::Name;
use metrics::Stats;
use parking_lot::{Mutex, RwLock};
use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;
use table::{BuildSettings, Follower, Table, Zone};

/// DNS server settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsConfig {
    /// The zone served, e.g. `cluster.local` (a trailing dot is optional).
    pub zone: String,
    /// TTL of every record (whole seconds; zero is allowed and means "do not cache").
    pub ttl: Duration,
    /// Where to forward names outside the zone; `None` answers them REFUSED.
    pub upstream: Option<SocketAddr>,
    /// The address published for `ns.dns.ZONE`.
    pub nameserver: IpAddr,
    /// Threads reading each UDP socket passed to [`DnsServer::serve`] (at least 1).
    pub udp_workers: usize,
}

impl Default for DnsConfig {
    fn default() -> Self {
        Self {
            zone: "cluster.local".into(),
            ttl: Duration::from_secs(5),
            upstream: None,
            nameserver: IpAddr::V4(Ipv4Addr::LOCALHOST),
            udp_workers: 1,
        }
    }
}

/// Why the DNS server could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error("invalid DNS zone {zone:?}: {reason}")]
    Zone { zone: String, reason: String },
    #[error("DNS TTL {ttl:?} does not fit in 32 bits of seconds")]
    Ttl { ttl: Duration },
    #[error("DNS server {what}: {source}")]
    Io {
        what: &'static str,
        #[source]
        source: io::Error,
    },
}

fn io_err(what: &'static str) -> impl FnOnce(io::Error) -> DnsError {
    move |source| DnsError::Io { what, source }
}

/// Requested UDP socket buffer sizes.
const UDP_BUFFER: usize = 4 << 20;

/// State shared by the transports.
pub(crate) struct Shared {
    registry: Arc<Registry>,
    pub(crate) table: RwLock<Table>,
    follower: Mutex<Follower>,
    pub(crate) opt: Vec<u8>,
    pub(crate) upstream: Option<SocketAddr>,
    stats: Mutex<Vec<Arc<Stats>>>,
}

impl Shared {
    /// Apply pending registry changes now if the published table is behind (read-your-writes).
    pub(crate) fn ensure_fresh(&self) {
        let published = self.table.read().revision;
        if self.registry.revision() > published {
            self.follower.lock().refresh(&self.table);
        }
    }

    fn new_stats(&self) -> Arc<Stats> {
        let s = Arc::new(Stats::new());
        self.stats.lock().push(s.clone());
        s
    }
}

/// A DNS server over one registry. Cheap to clone; clones share tables and metrics.
#[derive(Clone)]
pub struct DnsServer {
    shared: Arc<Shared>,
    config: Arc<DnsConfig>,
}

impl std::fmt::Debug for DnsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DnsServer").field("config", &self.config).finish_non_exhaustive()
    }
}

impl DnsServer {
    /// Validate the config and build the answer tables from the registry's current snapshot.
    pub fn new(config: DnsConfig, registry: Arc<Registry>) -> Result<Self, DnsError> {
        let zone_err = |reason: String| DnsError::Zone { zone: config.zone.clone(), reason };
        let mut name = Name::from_ascii(&config.zone).map_err(|e| zone_err(e.to_string()))?;
        name.set_fqdn(true);
        let zone = Zone::new(name).ok_or_else(|| zone_err("the root zone cannot be served".into()))?;
        let ttl = u32::try_from(config.ttl.as_secs()).map_err(|_| DnsError::Ttl { ttl: config.ttl })?;
        let settings = BuildSettings { zone, ttl, nameserver: config.nameserver };
        let (follower, table) = Follower::start(registry.clone(), settings);
        let shared = Arc::new(Shared {
            registry,
            table,
            follower: Mutex::new(follower),
            opt: answer::opt_record(),
            upstream: config.upstream,
            stats: Mutex::new(Vec::new()),
        });
        Ok(Self { shared, config: Arc::new(config) })
    }

    /// Prometheus text: `berth_dns_queries_total{qtype,rcode}` and the
    /// `berth_dns_answer_latency_seconds` summary, plus the registry revision answered from.
    pub fn metrics(&self) -> String {
        let mut out = metrics::render(self.shared.stats.lock().iter().map(|s| &**s));
        let t = self.shared.table.read();
        out.push_str("# HELP berth_dns_revision Registry revision the DNS answers reflect.\n");
        out.push_str("# TYPE berth_dns_revision gauge\n");
        out.push_str(&format!("berth_dns_revision {}\n", t.revision));
        out.push_str("# HELP berth_dns_names Names with pre-encoded answers (including empty non-terminals).\n");
        out.push_str("# TYPE berth_dns_names gauge\n");
        out.push_str(&format!("berth_dns_names {}\n", t.len()));
        out
    }

    /// Answer one query packet as the transports would (`tcp` lifts the UDP size limit), except that
    /// nothing is forwarded (names outside the zone are REFUSED). `None` when the packet is dropped.
    /// For embedding in another transport, and for fuzzing.
    pub fn handle_packet(&self, query: &[u8], tcp: bool) -> Option<Vec<u8>> {
        self.shared.ensure_fresh();
        let transport = if tcp { answer::Transport::Tcp } else { answer::Transport::Udp };
        let mut out = Vec::new();
        let table = self.shared.table.read();
        let (verdict, _) = answer::answer(&table, &self.shared.opt, false, query, transport, &mut out);
        (verdict == answer::Verdict::Reply).then_some(out)
    }

    /// The 99th percentile of server-side answer latency so far.
    pub fn answer_latency_p99(&self) -> Duration {
        Duration::from_micros(metrics::p99_micros(self.shared.stats.lock().iter().map(|s| &**s)))
    }

    /// Serve until `shutdown` completes: UDP on each of `udp` (with [`DnsConfig::udp_workers`] threads
    /// each), TCP on `tcp`. Must be called within a tokio runtime.
    pub async fn serve(
        &self,
        udp: Vec<UdpSocket>,
        tcp: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), DnsError> {
        let shared = self.shared.clone();
        let stop = Arc::new(AtomicBool::new(false));
        let (wake_rx, wake_tx) = io::pipe().map_err(io_err("creating the wake pipe"))?;

        let (forward_tx, forward_task) = match (self.config.upstream, udp.first()) {
            (Some(upstream), Some(first)) => {
                let reply = first.try_clone().map_err(io_err("cloning the UDP socket"))?;
                reply.set_nonblocking(true).map_err(io_err("setting the UDP socket non-blocking"))?;
                let reply = tokio::net::UdpSocket::from_std(reply).map_err(io_err("registering the UDP socket"))?;
                let (tx, rx) = tokio::sync::mpsc::channel(1024);
                let task = tokio::spawn(forward::run(upstream, rx, reply, shared.new_stats()));
                (Some(tx), Some(task))
            }
            _ => (None, None),
        };

        let mut threads = Vec::new();
        for (i, socket) in udp.into_iter().enumerate() {
            socket.set_nonblocking(true).map_err(io_err("setting the UDP socket non-blocking"))?;
            // A thread that is descheduled for a few milliseconds under load must not lose queries to
            // a full receive queue; the kernel caps the request at net.core.rmem_max.
            let sock = socket2::SockRef::from(&socket);
            let _ = sock.set_recv_buffer_size(UDP_BUFFER);
            let _ = sock.set_send_buffer_size(UDP_BUFFER);
            for w in 0..self.config.udp_workers.max(1) {
                let socket = socket.try_clone().map_err(io_err("cloning the UDP socket"))?;
                let worker = udp::Worker {
                    socket,
                    shared: shared.clone(),
                    stats: shared.new_stats(),
                    forward: forward_tx.clone(),
                    stop: stop.clone(),
                    wake: wake_rx.try_clone().map_err(io_err("cloning the wake pipe"))?,
                };
                let handle = std::thread::Builder::new()
                    .name(format!("berth-dns-udp-{i}-{w}"))
                    .spawn(move || worker.run())
                    .map_err(io_err("starting a UDP thread"))?;
                threads.push(handle);
            }
        }
        drop(forward_tx);
        drop(wake_rx);

        let follow = tokio::spawn(follow(shared.clone()));
        let tcp_stats = shared.new_stats();
        tokio::select! {
            _ = shutdown => {}
            _ = tcp::accept_loop(tcp, shared.clone(), tcp_stats) => {}
        }

        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        drop(wake_tx);
        follow.abort();
        if let Some(task) = forward_task {
            task.abort();
        }
        let joined = tokio::task::spawn_blocking(move || {
            for t in threads {
                let _ = t.join();
            }
        });
        let _ = joined.await;
        Ok(())
    }
}

/// Rebuild tables as soon as the registry announces a change.
async fn follow(shared: Arc<Shared>) {
    loop {
        let revision = shared.table.read().revision;
        shared.registry.changed_since(revision).await;
        shared.follower.lock().refresh(&shared.table);
    }
}

/// Serve `registry` with `config` on already-bound sockets until `shutdown` completes.
pub async fn serve(
    config: DnsConfig,
    registry: Arc<Registry>,
    udp: UdpSocket,
    tcp: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), DnsError> {
    DnsServer::new(config, registry)?.serve(vec![udp], tcp, shutdown).await
}

/// Bind `count` UDP sockets and one TCP listener on the same address, as clients expect one port for
/// both. With port 0 the kernel picks the UDP port, which another process may already hold for TCP:
/// then a new port is tried (up to 50 times) instead of failing a start that asked for "any port".
pub async fn bind(addr: SocketAddr, count: usize) -> io::Result<(Vec<UdpSocket>, tokio::net::TcpListener)> {
    let mut attempts = 0;
    loop {
        attempts += 1;
        let udp = bind_udp(addr, count)?;
        let chosen = udp[0].local_addr()?;
        match tokio::net::TcpListener::bind(chosen).await {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(e) if addr.port() == 0 && e.kind() == io::ErrorKind::AddrInUse && attempts < 50 => continue,
            Err(e) => return Err(io::Error::new(e.kind(), format!("TCP {chosen}: {e}"))),
        }
    }
}

/// Bind `count` UDP sockets to `addr` with `SO_REUSEPORT` so the kernel spreads clients over them
/// (port 0 picks one free port shared by all).
pub fn bind_udp(addr: SocketAddr, count: usize) -> io::Result<Vec<UdpSocket>> {
    use socket2::{Domain, Protocol, Socket, Type};
    let mut out = Vec::with_capacity(count.max(1));
    let mut bound = addr;
    for _ in 0..count.max(1) {
        let socket = Socket::new(Domain::for_address(bound), Type::DGRAM, Some(Protocol::UDP))?;
        socket.set_reuse_port(true)?;
        socket.bind(&bound.into())?;
        let socket: UdpSocket = socket.into();
        bound = socket.local_addr()?;
        out.push(socket);
    }
    Ok(out)
}
