//! The upstream keep-alive pool of the fast path: idle connections per endpoint, one pool per worker thread.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::task::Context;
use tokio::net::TcpStream;

/// Idle upstream connections kept per endpoint.
const MAX_IDLE_PER_ENDPOINT: usize = 512;

/// Idle keep-alive connections to upstream endpoints, most recently used last. Each worker thread keeps its
/// own, so the request path takes no lock; a connection goes back to the pool of the thread that finished
/// with it. The pools live as long as the proxy's threads.
pub(crate) struct Upstreams {
    /// Tells this proxy's connections from another's that may share a thread (tests run several proxies).
    id: usize,
}

type IdleMap = HashMap<(usize, SocketAddr), Vec<(TcpStream, u64)>>;

thread_local! {
    static IDLE: std::cell::RefCell<IdleMap> = std::cell::RefCell::new(HashMap::new());
}

impl Default for Upstreams {
    fn default() -> Self {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        Upstreams { id: NEXT.fetch_add(1, Relaxed) }
    }
}

impl Upstreams {
    /// An idle connection to `addr` that is neither older than `max_idle_ns` nor closed by the endpoint.
    pub(super) fn take(&self, addr: SocketAddr, now: u64, max_idle_ns: u64) -> Option<TcpStream> {
        IDLE.with(|idle| {
            let mut idle = idle.borrow_mut();
            let list = idle.get_mut(&(self.id, addr))?;
            while let Some((conn, since)) = list.pop() {
                if now.saturating_sub(since) < max_idle_ns && quiet(&conn) {
                    return Some(conn);
                }
            }
            None
        })
    }

    pub(super) fn put(&self, addr: SocketAddr, conn: TcpStream, now: u64) {
        IDLE.with(|idle| {
            let mut idle = idle.borrow_mut();
            let list = idle.entry((self.id, addr)).or_default();
            if list.len() >= MAX_IDLE_PER_ENDPOINT {
                list.remove(0);
            }
            list.push((conn, now));
        })
    }
}

/// Whether an idle connection has nothing to read. Readable while idle means the endpoint closed it (or sent
/// something unasked): unusable either way. Tokio knows from the reactor's last event, without a syscall; a
/// close it has not seen yet is caught by the resend on a new connection.
fn quiet(conn: &TcpStream) -> bool {
    let mut cx = Context::from_waker(std::task::Waker::noop());
    conn.poll_read_ready(&mut cx).is_pending()
}
