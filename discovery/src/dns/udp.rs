//! The UDP serving loop: one OS thread per socket (or per duplicate of one socket), reading batches with
//! `recvmmsg(2)` and answering them with one `sendmmsg(2)`.
//!
//! Buffers, iovecs and message headers are allocated once per thread; per packet the loop only decodes,
//! looks up and copies (see `answer`). The loop waits in `poll(2)` on the socket and a pipe that is
//! closed at shutdown, so an idle server uses no CPU and stops promptly. It never reads the registry
//! itself beyond the revision check that makes a change visible to the next batch.

use super::answer::{answer, Transport, Verdict};
use super::metrics::{Outcome, Stats};
use super::Shared;
use std::io::{self, PipeReader};
use std::mem::{size_of, zeroed};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, UdpSocket};
use std::os::fd::AsRawFd;
use std::ptr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

const BATCH: usize = 32;
/// Queries are small; a datagram larger than this is reported truncated by the kernel and dropped.
const RECV_SIZE: usize = 4096;

/// A forwarded query: the packet and whom to answer.
pub(crate) struct Forwarded {
    pub(crate) packet: Vec<u8>,
    pub(crate) client: SocketAddr,
}

pub(crate) struct Worker {
    pub(crate) socket: UdpSocket,
    pub(crate) shared: Arc<Shared>,
    pub(crate) stats: Arc<Stats>,
    pub(crate) forward: Option<tokio::sync::mpsc::Sender<Forwarded>>,
    pub(crate) stop: Arc<AtomicBool>,
    pub(crate) wake: PipeReader,
}

fn empty_msghdr() -> libc::mmsghdr {
    // SAFETY: mmsghdr is a plain C struct for which all-zero is a valid (empty) value.
    unsafe { zeroed() }
}

impl Worker {
    pub(crate) fn run(self) {
        let fd = self.socket.as_raw_fd();
        let wake_fd = self.wake.as_raw_fd();
        let mut rbufs: Vec<[u8; RECV_SIZE]> = vec![[0u8; RECV_SIZE]; BATCH];
        let mut outs: Vec<Vec<u8>> = (0..BATCH).map(|_| Vec::with_capacity(1024)).collect();
        // SAFETY: sockaddr_storage is plain data; all-zero is valid.
        let mut names: Vec<libc::sockaddr_storage> = (0..BATCH).map(|_| unsafe { zeroed() }).collect();
        let mut riov: Vec<libc::iovec> =
            (0..BATCH).map(|_| libc::iovec { iov_base: ptr::null_mut(), iov_len: 0 }).collect();
        let mut rmsgs: Vec<libc::mmsghdr> = (0..BATCH).map(|_| empty_msghdr()).collect();
        let mut siov: Vec<libc::iovec> =
            (0..BATCH).map(|_| libc::iovec { iov_base: ptr::null_mut(), iov_len: 0 }).collect();
        let mut smsgs: Vec<libc::mmsghdr> = (0..BATCH).map(|_| empty_msghdr()).collect();
        let mut reply_of = [0usize; BATCH];
        let can_forward = self.forward.is_some();
        // After a short batch the queue is most likely empty: waiting in poll first saves the
        // recvmmsg that would only return EAGAIN (one syscall of about four per small batch).
        let mut drained = false;

        loop {
            if self.stop.load(Ordering::Relaxed) {
                return;
            }
            if drained && wait(fd, wake_fd, libc::POLLIN) == Wake::Stop {
                return;
            }
            for i in 0..BATCH {
                riov[i] = libc::iovec { iov_base: rbufs[i].as_mut_ptr().cast(), iov_len: RECV_SIZE };
                let hdr = &mut rmsgs[i].msg_hdr;
                hdr.msg_name = (&mut names[i] as *mut libc::sockaddr_storage).cast();
                hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
                hdr.msg_iov = &mut riov[i];
                hdr.msg_iovlen = 1;
                hdr.msg_control = ptr::null_mut();
                hdr.msg_controllen = 0;
                hdr.msg_flags = 0;
                rmsgs[i].msg_len = 0;
            }
            // SAFETY: every header points at buffers owned by this frame that outlive the call.
            let n = unsafe {
                libc::recvmmsg(fd, rmsgs.as_mut_ptr(), BATCH as libc::c_uint, libc::MSG_DONTWAIT, ptr::null_mut())
            };
            if n < 0 {
                let err = io::Error::last_os_error();
                match err.kind() {
                    io::ErrorKind::WouldBlock => {
                        if !drained && wait(fd, wake_fd, libc::POLLIN) == Wake::Stop {
                            return;
                        }
                        drained = false;
                    }
                    io::ErrorKind::Interrupted => {}
                    // ICMP errors from earlier sends surface here (ECONNREFUSED); they are not ours.
                    io::ErrorKind::ConnectionRefused => {}
                    _ => {
                        tracing::warn!(error = %err, "dns: udp receive failed; stopping this worker");
                        return;
                    }
                }
                continue;
            }
            let n = n as usize;
            self.shared.ensure_fresh();
            let started = Instant::now();
            let mut replies = 0;
            {
                let table = self.shared.table.read();
                for i in 0..n {
                    if rmsgs[i].msg_hdr.msg_flags & libc::MSG_TRUNC != 0 {
                        self.stats.count(Outcome::dropped(None));
                        continue;
                    }
                    let len = (rmsgs[i].msg_len as usize).min(RECV_SIZE);
                    let packet = &rbufs[i][..len];
                    let (verdict, outcome) =
                        answer(&table, &self.shared.opt, can_forward, packet, Transport::Udp, &mut outs[i]);
                    match verdict {
                        Verdict::Reply => {
                            self.stats.count(outcome);
                            reply_of[replies] = i;
                            replies += 1;
                        }
                        Verdict::Forward => {
                            let client = sockaddr_to_std(&names[i], rmsgs[i].msg_hdr.msg_namelen);
                            if let (Some(tx), Some(client)) = (&self.forward, client) {
                                // A full queue means the upstream is not keeping up; dropping is what
                                // UDP would do anyway, and the client retries.
                                if tx.try_send(Forwarded { packet: packet.to_vec(), client }).is_err() {
                                    self.stats.count(Outcome::dropped(None));
                                }
                            }
                        }
                        Verdict::Drop => self.stats.count(outcome),
                    }
                }
            }
            for (j, &i) in reply_of[..replies].iter().enumerate() {
                siov[j] = libc::iovec { iov_base: outs[i].as_mut_ptr().cast(), iov_len: outs[i].len() };
                let hdr = &mut smsgs[j].msg_hdr;
                hdr.msg_name = (&mut names[i] as *mut libc::sockaddr_storage).cast();
                hdr.msg_namelen = rmsgs[i].msg_hdr.msg_namelen;
                hdr.msg_iov = &mut siov[j];
                hdr.msg_iovlen = 1;
                hdr.msg_control = ptr::null_mut();
                hdr.msg_controllen = 0;
                hdr.msg_flags = 0;
                smsgs[j].msg_len = 0;
            }
            self.send_all(fd, wake_fd, &mut smsgs[..replies]);
            self.stats.latency(started.elapsed(), n as u64);
            drained = n < BATCH;
        }
    }

    fn send_all(&self, fd: i32, wake_fd: i32, msgs: &mut [libc::mmsghdr]) {
        let mut sent = 0;
        let mut stalls = 0;
        while sent < msgs.len() {
            let rest = &mut msgs[sent..];
            // SAFETY: the headers point at reply buffers and addresses that live until this returns.
            let r = unsafe { libc::sendmmsg(fd, rest.as_mut_ptr(), rest.len() as libc::c_uint, 0) };
            if r > 0 {
                sent += r as usize;
                continue;
            }
            let err = io::Error::last_os_error();
            match err.kind() {
                io::ErrorKind::Interrupted => {}
                io::ErrorKind::WouldBlock if stalls < 3 => {
                    stalls += 1;
                    if wait(fd, wake_fd, libc::POLLOUT) == Wake::Stop {
                        return;
                    }
                }
                // This one reply cannot be sent (unreachable client, full buffers): skip it.
                _ => sent += 1,
            }
        }
    }
}

#[derive(PartialEq, Eq)]
enum Wake {
    Ready,
    Stop,
}

/// Block until the socket is ready for `events` or the wake pipe is closed.
fn wait(fd: i32, wake_fd: i32, events: libc::c_short) -> Wake {
    let mut fds =
        [libc::pollfd { fd, events, revents: 0 }, libc::pollfd { fd: wake_fd, events: libc::POLLIN, revents: 0 }];
    // SAFETY: `fds` is a valid array of two pollfd for the duration of the call.
    let r = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
    if r > 0 && fds[1].revents != 0 {
        return Wake::Stop;
    }
    Wake::Ready
}

fn sockaddr_to_std(storage: &libc::sockaddr_storage, len: libc::socklen_t) -> Option<SocketAddr> {
    match i32::from(storage.ss_family) {
        libc::AF_INET if len as usize >= size_of::<libc::sockaddr_in>() => {
            // SAFETY: the family says the storage holds a sockaddr_in, and it is large enough.
            let sin: libc::sockaddr_in = unsafe { ptr::read((storage as *const libc::sockaddr_storage).cast()) };
            let ip = Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
            Some(SocketAddr::V4(SocketAddrV4::new(ip, u16::from_be(sin.sin_port))))
        }
        libc::AF_INET6 if len as usize >= size_of::<libc::sockaddr_in6>() => {
            // SAFETY: as above, for sockaddr_in6.
            let sin6: libc::sockaddr_in6 = unsafe { ptr::read((storage as *const libc::sockaddr_storage).cast()) };
            let ip = Ipv6Addr::from(sin6.sin6_addr.s6_addr);
            Some(SocketAddr::V6(SocketAddrV6::new(
                ip,
                u16::from_be(sin6.sin6_port),
                sin6.sin6_flowinfo,
                sin6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}
