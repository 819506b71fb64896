//! Zero-copy sends with copy semantics (`MSG_ZEROCOPY`; seed 004's *emulated copy*).
//!
//! A send with `MSG_ZEROCOPY` pins the caller's pages and the kernel reads them when it
//! transmits — after `sendmsg` has returned — then queues a notification (a range of send
//! ids) on the socket's error queue. The bytes must not change until then. Genie protected
//! them by making the pages read-only; here the type system does: only sends whose every part
//! is immutable shared memory ([`Buf::Shared`], `bytes::Bytes`) go zero-copy. The engine keeps
//! a reference to each such part until its notification arrives, so the caller may drop or
//! reuse *its* handle at once — it can never write into those bytes, and their memory is not
//! freed while the kernel may still read it. Any other send is an ordinary copying send
//! (counted as `not_shared`).
//!
//! The kernel copies anyway on loopback, into another network namespace over veth, and
//! whenever it judges it cheaper; the notification then carries
//! `SO_EE_CODE_ZEROCOPY_COPIED`, counted as `copied` — the share of zero-copy sends that were
//! not. A socket closed with notifications outstanding stays open (the table holds it) until
//! they arrive, or for [`LINGER`] at most; then it is closed with a reset, which frees the
//! kernel's references before the bytes are released.
//!
//! Readiness backends: zero-copy sends run on the loop (never on a helper), and the loop reads
//! the error queue when epoll reports it (`EPOLLERR` without a hang-up, on a socket in the
//! table). The thread model reads it after each send and waits for it before a close. The
//! `uring` backend does not use this table: `IORING_OP_SEND_ZC` delivers the notification as
//! a second completion, and the slot of the send keeps the bytes until it arrives.

#![allow(unsafe_code)]

use std::collections::{HashMap, VecDeque};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::buf::{Buf, Bytes, Gather, GATHER_MAX};
use super::os;
use crate::op::{Op, SharedFd};

/// `SO_ZEROCOPY` (asm-generic/socket.h).
const SO_ZEROCOPY: libc::c_int = 60;
/// `SO_EE_ORIGIN_ZEROCOPY` (linux/errqueue.h).
const SO_EE_ORIGIN_ZEROCOPY: u8 = 5;
/// `SO_EE_CODE_ZEROCOPY_COPIED`.
const SO_EE_CODE_ZEROCOPY_COPIED: u8 = 1;

/// How long a closed socket waits for its outstanding notifications before it is reset.
pub(crate) const LINGER: Duration = Duration::from_secs(10);

/// How often [`ZeroCopy::sweep`] looks at every socket.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// What zero-copy sends did (`--stats-json` `engine.zerocopy`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ZeroCopyCounters {
    /// Sends made with `MSG_ZEROCOPY`.
    pub sends: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Sends the kernel reported done (notifications cover ranges of sends).
    pub completed: u64,
    /// Of those, sends it copied anyway (`SO_EE_CODE_ZEROCOPY_COPIED`).
    pub copied: u64,
    /// Sends asked to go zero-copy that held memory other than shared bytes: sent copying.
    pub not_shared: u64,
    /// Sockets that refused `SO_ZEROCOPY`: their sends copy.
    pub refused: u64,
    /// Most sends waiting for their notification at once.
    pub held_max: u64,
    /// Sockets closed with notifications still outstanding after [`LINGER`] (reset).
    pub abandoned: u64,
}

impl ZeroCopyCounters {
    /// Add `o` into `self` (maxima stay maxima).
    pub fn merge(&mut self, o: &ZeroCopyCounters) {
        self.sends += o.sends;
        self.bytes += o.bytes;
        self.completed += o.completed;
        self.copied += o.copied;
        self.not_shared += o.not_shared;
        self.refused += o.refused;
        self.held_max = self.held_max.max(o.held_max);
        self.abandoned += o.abandoned;
    }
}

/// One socket's sends in flight.
struct Sock {
    sock: SharedFd,
    /// The id the kernel gives the next zero-copy send (it counts them from 0).
    next: u32,
    /// Sends not yet notified, oldest first: their id and the bytes they pin.
    held: VecDeque<(u32, [Option<Bytes>; GATHER_MAX])>,
    /// When the caller closed it (it stays open here until `held` is empty).
    closed: Option<Instant>,
}

/// The table of sockets with zero-copy sends (one per engine, or per thread).
#[derive(Default)]
pub(crate) struct ZeroCopy {
    /// By descriptor number: an entry holds its socket open, so the number cannot be reused
    /// while it is here.
    socks: HashMap<usize, Sock>,
    held: u64,
    closing: usize,
    last_sweep: Option<Instant>,
    counters: ZeroCopyCounters,
    said_refused: bool,
}

fn key(sock: &SharedFd) -> usize {
    usize::try_from(sock.as_raw_fd()).unwrap_or(usize::MAX)
}

impl ZeroCopy {
    /// Decide whether `op` (if a send asking for it) goes zero-copy: every part shared bytes,
    /// and the socket accepts `SO_ZEROCOPY` (set once per socket). Clears its flag if not.
    /// True if it does.
    pub fn prepare(&mut self, op: &mut Op) -> bool {
        let Op::Send {
            sock,
            bufs,
            zerocopy,
            ..
        } = op
        else {
            return false;
        };
        if !*zerocopy {
            return false;
        }
        if !bufs.parts().iter().all(|b| matches!(b, Buf::Shared(_))) {
            *zerocopy = false;
            self.counters.not_shared += 1;
            return false;
        }
        let k = key(sock);
        if !self.socks.contains_key(&k) {
            if let Err(e) = set_zerocopy(sock) {
                *zerocopy = false;
                self.counters.refused += 1;
                if !self.said_refused {
                    self.said_refused = true;
                    tracing::warn!("SO_ZEROCOPY refused ({e}): those sends copy");
                }
                return false;
            }
            self.socks.insert(
                k,
                Sock {
                    sock: Arc::clone(sock),
                    next: 0,
                    held: VecDeque::new(),
                    closed: None,
                },
            );
        }
        true
    }

    /// A zero-copy send of `bufs` on `sock` returned `n > 0`: it took the next id; hold its
    /// bytes until its notification.
    pub fn sent(&mut self, sock: &SharedFd, bufs: &Gather, n: usize) {
        let Some(s) = self.socks.get_mut(&key(sock)) else {
            return;
        };
        let id = s.next;
        s.next = s.next.wrapping_add(1);
        // `prepare` let only shared parts through; no allocation per send.
        let mut parts: [Option<Bytes>; GATHER_MAX] = Default::default();
        for (slot, b) in parts.iter_mut().zip(bufs.parts()) {
            if let Buf::Shared(b) = b {
                *slot = Some(b.clone());
            }
        }
        s.held.push_back((id, parts));
        self.held += 1;
        self.counters.sends += 1;
        self.counters.bytes += n as u64;
        self.counters.held_max = self.counters.held_max.max(self.held);
    }

    /// Whether no socket has zero-copy state here.
    pub fn is_empty(&self) -> bool {
        self.socks.is_empty()
    }

    /// Whether `fd` has zero-copy state here (its `EPOLLERR` is the error queue).
    pub fn has(&self, fd: usize) -> bool {
        self.socks.contains_key(&fd)
    }

    /// Read `sock`'s error queue and release the sends it reports done.
    pub fn drain(&mut self, sock: &SharedFd) {
        self.drain_fd(key(sock));
    }

    /// [`ZeroCopy::drain`] by descriptor number.
    pub fn drain_fd(&mut self, k: usize) {
        let Some(s) = self.socks.get_mut(&k) else {
            return;
        };
        let mut done = 0u64;
        while let Some((lo, hi, copied)) = read_notification(&s.sock) {
            let span = hi.wrapping_sub(lo);
            let before = s.held.len();
            s.held.retain(|(id, _)| id.wrapping_sub(lo) > span);
            let released = (before - s.held.len()) as u64;
            done += released;
            self.counters.completed += released;
            if copied {
                self.counters.copied += released;
            }
        }
        self.held -= done.min(self.held);
        if s.held.is_empty() && (s.closed.is_some() || Arc::strong_count(&s.sock) == 1) {
            if s.closed.is_some() {
                self.closing -= 1;
            }
            self.socks.remove(&k);
        }
    }

    /// The caller closed `sock`: forget it, or keep it open until its sends are notified.
    pub fn closed(&mut self, sock: &SharedFd) {
        let k = key(sock);
        self.drain_fd(k);
        let Some(s) = self.socks.get_mut(&k) else {
            return;
        };
        if s.held.is_empty() {
            self.socks.remove(&k);
        } else if s.closed.is_none() {
            s.closed = Some(Instant::now());
            self.closing += 1;
        }
    }

    /// Sockets closed with sends outstanding for longer than [`LINGER`]: reset them (the
    /// kernel drops its references to the bytes as it frees the send queue), then release
    /// the bytes. Also forgets sockets nobody else holds any more with nothing outstanding
    /// (closed without [`ZeroCopy::closed`]), so the table never keeps one open for nothing.
    /// Cheap unless a second has passed since the last full look.
    pub fn sweep(&mut self, now: Instant) {
        if self.last_sweep.is_some_and(|t| now - t < SWEEP_EVERY) {
            return;
        }
        self.last_sweep = Some(now);
        let mut old = Vec::new();
        self.socks.retain(|_, s| {
            if s.held.is_empty() && Arc::strong_count(&s.sock) == 1 {
                return false;
            }
            let expired = s.closed.is_some_and(|t| now.duration_since(t) >= LINGER);
            if expired {
                old.push(std::mem::replace(
                    s,
                    Sock {
                        sock: Arc::clone(&s.sock),
                        next: 0,
                        held: VecDeque::new(),
                        closed: None,
                    },
                ));
            }
            !expired
        });
        for s in old {
            reset_on_close(&s.sock);
            self.held -= (s.held.len() as u64).min(self.held);
            self.counters.abandoned += 1;
            self.closing -= 1;
            // `s` drops here: the socket closes with a reset, then the bytes go.
        }
    }

    /// For a thread that closes `sock` itself: wait (in `poll`) until the kernel has
    /// notified every zero-copy send of it, for [`LINGER`] at most — then reset it — and
    /// forget it.
    pub fn close_after_notifications(&mut self, sock: &SharedFd) {
        let k = key(sock);
        let until = Instant::now() + LINGER;
        loop {
            self.drain_fd(k);
            let Some(s) = self.socks.get(&k) else {
                return;
            };
            let now = Instant::now();
            if s.held.is_empty() || now >= until {
                break;
            }
            let left = (until - now).min(Duration::from_millis(100));
            wait_error_queue(sock, left);
        }
        if let Some(s) = self.socks.remove(&k) {
            if !s.held.is_empty() {
                reset_on_close(&s.sock);
                self.held -= (s.held.len() as u64).min(self.held);
                self.counters.abandoned += 1;
            }
            if s.closed.is_some() {
                self.closing -= 1;
            }
        }
    }

    /// The counters, if any send asked for zero-copy.
    pub fn counters(&self) -> Option<ZeroCopyCounters> {
        (self.counters != ZeroCopyCounters::default()).then_some(self.counters)
    }
}

/// `setsockopt(SO_ZEROCOPY, 1)`.
fn set_zerocopy(sock: &OwnedFd) -> io::Result<()> {
    os::set_int_option(sock, libc::SOL_SOCKET, SO_ZEROCOPY, 1)
}

/// Wait up to `left` for `sock`'s error queue (`POLLERR`, reported whatever is asked).
fn wait_error_queue(sock: &OwnedFd, left: Duration) {
    use rustix::event::{poll, PollFd, PollFlags};
    let mut fds = [PollFd::new(sock, PollFlags::empty())];
    let _ = poll(&mut fds, Some(&os::timespec(left)));
}

/// `SO_LINGER {on, 0}`: the next close resets the connection and frees its send queue.
fn reset_on_close(sock: &OwnedFd) {
    let _ = rustix::net::sockopt::set_socket_linger(sock, Some(Duration::ZERO));
}

/// One zero-copy notification from `sock`'s error queue, without waiting: the range of send
/// ids it covers and whether the kernel copied them. `None`: the queue holds no more.
fn read_notification(sock: &OwnedFd) -> Option<(u32, u32, bool)> {
    loop {
        let mut control = [0u64; 16];
        // SAFETY: `msghdr` is plain data; all zeroes is a valid empty header.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = std::mem::size_of_val(&control);
        // SAFETY: `msg` points at a control buffer that lives for the call and has no data
        // buffers; the kernel writes at most `msg_controllen` bytes into it.
        let r = unsafe {
            libc::recvmsg(
                sock.as_raw_fd(),
                &mut msg,
                libc::MSG_ERRQUEUE | libc::MSG_DONTWAIT,
            )
        };
        if r < 0 {
            return None;
        }
        // SAFETY: `msg` was filled by `recvmsg`; the CMSG macros walk its control buffer
        // within `msg_controllen`.
        let mut cm = unsafe { libc::CMSG_FIRSTHDR(&msg) };
        while !cm.is_null() {
            // SAFETY: `cm` is a header inside the control buffer (from CMSG_FIRSTHDR/NXTHDR).
            let h = unsafe { &*cm };
            let ours = (h.cmsg_level == libc::SOL_IP && h.cmsg_type == libc::IP_RECVERR)
                || (h.cmsg_level == libc::SOL_IPV6 && h.cmsg_type == libc::IPV6_RECVERR);
            if ours {
                // SAFETY: an IP_RECVERR message carries a `sock_extended_err` as its data;
                // `read_unaligned` copies it out of the (u64-aligned) control buffer.
                let ee = unsafe {
                    std::ptr::read_unaligned(libc::CMSG_DATA(cm).cast::<libc::sock_extended_err>())
                };
                if ee.ee_origin == SO_EE_ORIGIN_ZEROCOPY && ee.ee_errno == 0 {
                    let copied = ee.ee_code & SO_EE_CODE_ZEROCOPY_COPIED != 0;
                    return Some((ee.ee_info, ee.ee_data, copied));
                }
            }
            // SAFETY: as above; NXTHDR returns null past the last header.
            cm = unsafe { libc::CMSG_NXTHDR(&msg, cm) };
        }
        // Some other error-queue message (none are asked for): skip it.
    }
}
