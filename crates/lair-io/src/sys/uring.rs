//! `uring` backend: io_uring, through the `io-uring` crate.
//!
//! Every socket and file operation becomes a submission queue entry; the kernel runs it inline
//! when it can and punts it to its own io-wq workers when it would block — lazy asynchronous
//! I/O done by the kernel, which is what seed 001's FreeBSD scheduler activations did.
//! Submissions are batched: `submit` only queues; `poll` makes one `io_uring_enter` that
//! submits everything queued and waits for completions.
//!
//! | operation | how |
//! | --- | --- |
//! | accept, connect, recv, send, shutdown | `IORING_OP_ACCEPT` / `CONNECT` / `RECV` (with `POLL_FIRST` for idle keep-alive reads) / `SEND` (`SENDMSG` for a gather list of several parts) / `SHUTDOWN` |
//! | open | `IORING_OP_OPENAT2` with the flags and resolution of the other backends (`O_NOATIME`, retried without it on `EPERM`; `O_NONBLOCK` cleared after the open, see below) |
//! | stat | `IORING_OP_STATX` with `AT_EMPTY_PATH` on the open file |
//! | read, write | `IORING_OP_READ` / `WRITEV` |
//! | sendfile | io_uring has no sendfile: a `READ` of up to the sendfile window (`--sendfile-chunk`, 512 KiB) into a staging buffer, then a `SEND` of it with `MSG_WAITALL` (the kernel retries a short send). One copy more than `sendfile`; `lair lab run laio` measures what it costs |
//! | close | cancels what is in flight on the descriptor (`IORING_OP_ASYNC_CANCEL`, all matches), then drops it |
//! | call | tried inline without blocking, else on a helper thread (as under `lazy`) |
//!
//! A file opened `O_NONBLOCK` makes io_uring return `EAGAIN` for an uncached read instead of
//! punting it, so opens clear the flag once the file is open (the flag is there so that a FIFO
//! in the document root cannot hang the open).
//!
//! [`EngineConfig::laio_ops`] chooses which *file* calls (open, stat, read, write, call) go
//! through the ring; the others run directly on the loop as under `sync`. Socket calls and
//! sendfile always go through the ring: there is no readiness loop to park them on.
//! `Op::Open::prefetch` is not honoured: a completion does not say whether the open needed the
//! disk (the kernel's io-wq ran it, or not), which is what the prefetch keys on.
//!
//! When io_uring is unavailable (kernel too old, `kernel.io_uring_disabled`, a seccomp filter)
//! [`with_backend`](super::with_backend) logs why and falls back to `lazy`.
//!
//! Memory safety: every buffer, path, address and `statx` the kernel reads or writes is owned
//! by the operation's [`Flight`] entry until its completion is reaped, and the engine never
//! drops a flight early: on drop it cancels everything and waits for the completions, and
//! leaks what did not complete in time rather than free memory the kernel may still write.

#![allow(unsafe_code)]

use std::ffi::CString;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use io_uring::{cqueue, opcode, squeue, types, IoUring};

use super::buf::{Buf, Bytes};
use super::buf::{BufMut, Gather, GATHER_MAX};
use super::datapath::Via;
use super::exec::{call_once, exec, Caps, Step};
use super::helpers::{Helpers, Job};
use super::os::{self, Wait};
use super::zerocopy::ZeroCopyCounters;
use super::{Backend, EngineConfig, Waker};
use crate::counters::Counters;
use crate::op::{Attempt, Call, Completion, Op, OpKind, OpSet, Out, SharedFd, Submit, Token};
use crate::Error;

/// `user_data` of the multishot poll on the wake-up eventfd.
const WAKE: u64 = u64::MAX;
/// `user_data` of cancel requests (their own completions are not reported).
const CANCEL: u64 = u64::MAX - 1;
/// Largest read of one sendfile step.
/// Submission queue size (the completion queue is twice as large).
const ENTRIES: u32 = 1024;
/// `IORING_RECVSEND_POLL_FIRST`: wait for readiness before the first receive attempt.
const RECVSEND_POLL_FIRST: u16 = 1;
/// `IORING_SEND_ZC_REPORT_USAGE`: a zero-copy send's notification says whether it copied.
const SEND_ZC_REPORT_USAGE: u16 = 1 << 3;
/// `IORING_NOTIF_USAGE_ZC_COPIED`, in such a notification's result.
const NOTIF_USAGE_ZC_COPIED: u32 = 1 << 31;

/// What one operation in the ring owns while the kernel works on it.
enum State {
    Connect {
        addr: SocketAddr,
        sock: OwnedFd,
        raw: Box<rustix::net::SocketAddrAny>,
    },
    Accept {
        listener: SharedFd,
    },
    Recv {
        sock: SharedFd,
        buf: BufMut,
        max: usize,
    },
    Send {
        sock: SharedFd,
        bufs: Gather,
        from: usize,
        more: bool,
        /// For a list of several parts: the `msghdr` and `iovec`s of a `SENDMSG`.
        msg: Option<Box<Vectors>>,
    },
    /// A zero-copy send (`IORING_OP_SEND_ZC`) of one shared part: its first completion is
    /// the result, the second (`IORING_CQE_F_NOTIF`) says the kernel is done with the bytes.
    SendZc {
        sock: SharedFd,
        bufs: Gather,
        from: usize,
    },
    /// The bytes of a zero-copy send whose result was delivered, held until its
    /// notification.
    ZcHeld {
        _bytes: Bytes,
    },
    /// Sendfile, step 0: the socket had no room; waiting for `POLLOUT` before staging (so no
    /// buffer is held while a slow client drains).
    AwaitRoom {
        sock: SharedFd,
        file: SharedFd,
        offset: u64,
        len: usize,
    },
    /// Sendfile, step 1: reading the file into `stage`.
    FileToStage {
        sock: SharedFd,
        file: SharedFd,
        stage: Vec<u8>,
    },
    /// Sendfile, step 2: sending `stage`.
    StageToSock {
        sock: SharedFd,
        stage: Vec<u8>,
    },
    Shutdown {
        sock: SharedFd,
    },
    /// `Op::Readable`: a one-shot poll for input.
    Readable {
        sock: SharedFd,
    },
    Open {
        dir: SharedFd,
        path: CString,
        beneath: bool,
        noatime: bool,
        how: Box<types::OpenHow>,
    },
    Stat {
        file: SharedFd,
        statx: Box<libc::statx>,
    },
    Read {
        file: SharedFd,
        buf: BufMut,
    },
    Write {
        file: SharedFd,
        bufs: Gather,
        /// The `iovec`s of a `WRITEV`.
        msg: Box<Vectors>,
    },
}

/// The `iovec`s (and `msghdr`) of a gather operation, owned by its flight so they stay put
/// until the kernel has read them.
struct Vectors {
    hdr: libc::msghdr,
    iov: [libc::iovec; GATHER_MAX],
}

impl Vectors {
    /// Point at the stream of `bufs` from `from` (the buffers are owned by the same flight).
    fn new(bufs: &Gather, from: usize) -> Box<Vectors> {
        let empty = libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        };
        // SAFETY: `msghdr` is plain data; all zeroes (no name, no control data) is valid.
        let hdr = unsafe { std::mem::zeroed() };
        let mut v = Box::new(Vectors {
            hdr,
            iov: [empty; GATHER_MAX],
        });
        let mut n = 0;
        for part in bufs.slices_from(from) {
            v.iov[n] = libc::iovec {
                iov_base: part.as_ptr().cast_mut().cast(),
                iov_len: part.len(),
            };
            n += 1;
        }
        v.hdr.msg_iov = v.iov.as_mut_ptr();
        v.hdr.msg_iovlen = n as _;
        v
    }

    fn count(&self) -> usize {
        self.hdr.msg_iovlen
    }
}

/// An operation in the ring.
struct Flight {
    token: Token,
    kind: OpKind,
    state: State,
}

/// The `uring` backend.
pub struct UringBackend {
    ring: IoUring,
    flights: Vec<Option<Flight>>,
    free: Vec<usize>,
    in_ring: usize,
    wake: Arc<OwnedFd>,
    wake_armed: bool,
    helpers: Helpers,
    finished: Vec<super::helpers::Finished>,
    laio_ops: OpSet,
    direct: Caps,
    stages: Vec<Vec<u8>>,
    /// Staging buffer size: `EngineConfig::sendfile_window`.
    window: usize,
    /// `TCP_NOTSENT_LOWAT` of the accepted sockets (0: none): a staged window is no larger
    /// than the socket's room under it, so the send that follows never waits for the client
    /// while holding the buffer.
    lowat: u64,
    cqes: Vec<(u64, i32, u32)>,
    ready: Vec<Completion>,
    counters: Counters,
    /// Whether the log said that `--data splice|share` is staged here.
    said_via: bool,
    /// What zero-copy sends did (`--data emulated`, `IORING_OP_SEND_ZC`).
    zc: ZeroCopyCounters,
    /// Zero-copy sends waiting for their notification.
    zc_held: u64,
}

/// Whether io_uring can be used here, and if not, why (for the fallback message).
pub fn available() -> Result<(), String> {
    match IoUring::new(8) {
        Ok(_) => Ok(()),
        Err(e) => Err(why_unavailable(&e)),
    }
}

fn why_unavailable(e: &io::Error) -> String {
    let sysctl = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    match e.raw_os_error() {
        Some(libc::ENOSYS) => format!("{e} (the kernel has no io_uring)"),
        Some(libc::EPERM) if sysctl == "2" => {
            format!("{e} (kernel.io_uring_disabled = 2: disabled for everyone)")
        }
        Some(libc::EPERM) if sysctl == "1" => {
            format!("{e} (kernel.io_uring_disabled = 1: only the io_uring_group may use it)")
        }
        Some(libc::EPERM) => format!("{e} (forbidden, e.g. by a seccomp filter)"),
        _ => e.to_string(),
    }
}

fn errno(res: i32) -> io::Error {
    io::Error::from_raw_os_error(-res)
}

impl Backend for UringBackend {
    const NAME: &'static str = "uring";

    fn new(config: &EngineConfig) -> Result<Self, Error> {
        if config.ecem.any() {
            static SAID: std::sync::Once = std::sync::Once::new();
            SAID.call_once(|| {
                tracing::warn!(
                    "uring: --ecem {} is not applied: event correlation reads the socket's \
                     readiness, which only the readiness backends (sync, lazy, eager, hybrid) \
                     see; this ring stages --sendfile-chunk windows as before",
                    config.ecem
                );
            });
        }
        let ring = IoUring::builder()
            .setup_cqsize(ENTRIES * 2)
            .setup_coop_taskrun()
            .build(ENTRIES)
            .or_else(|_| IoUring::new(ENTRIES))
            .map_err(|e| Error::setup("io_uring_setup", io::Error::other(why_unavailable(&e))))?;
        let wake = Arc::new(os::eventfd_new().map_err(|e| Error::setup("eventfd", e))?);
        let mut b = UringBackend {
            ring,
            flights: Vec::new(),
            free: Vec::new(),
            in_ring: 0,
            helpers: Helpers::new(config.helpers, Arc::clone(&wake), "uring", &config.cpus),
            wake,
            wake_armed: false,
            finished: Vec::new(),
            laio_ops: config.laio_ops,
            direct: Caps::none(),
            stages: Vec::new(),
            window: config.sendfile_window.max(4096),
            lowat: u64::from(config.notsent_lowat),
            cqes: Vec::with_capacity(256),
            ready: Vec::new(),
            counters: Counters::new("uring"),
            said_via: false,
            zc: ZeroCopyCounters::default(),
            zc_held: 0,
        };
        b.arm_wake();
        Ok(b)
    }

    // Always inlined, with the generic call's short path (as in `Readiness::submit`).
    #[inline(always)]
    fn submit(&mut self, token: Token, op: Op) -> Submit {
        match op {
            Op::Call(f) => self.submit_call(token, f),
            op => self.submit_op(token, op),
        }
    }

    fn poll(&mut self, done: &mut Vec<Completion>, timeout: Option<Duration>) -> Result<(), Error> {
        let had = done.len();
        done.append(&mut self.ready);
        let no_wait = done.len() > had || timeout == Some(Duration::ZERO);
        let submitter = self.ring.submitter();
        let r = if no_wait {
            submitter.submit()
        } else if let Some(t) = timeout {
            let ts = types::Timespec::from(t);
            let args = types::SubmitArgs::new().timespec(&ts);
            submitter.submit_with_args(1, &args)
        } else {
            submitter.submit_and_wait(1)
        };
        match r {
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ETIME | libc::EINTR | libc::EBUSY | libc::EAGAIN)
                ) => {}
            Err(e) => return Err(Error::setup("io_uring_enter", e)),
        }
        self.counters.wakeups += 1;
        self.reap(done);
        Ok(())
    }

    fn waker(&self) -> Waker {
        Waker(Arc::clone(&self.wake))
    }

    fn counters(&self) -> Counters {
        let mut c = self.counters.clone();
        c.zerocopy = (self.zc != ZeroCopyCounters::default()).then_some(self.zc);
        c
    }

    fn release_idle(&mut self) {
        self.helpers.retire_idle();
        // A `None` flight has nothing in the ring under its id; a late completion for a
        // dropped id finds no flight and is ignored.
        while self.flights.last().is_some_and(Option::is_none) {
            self.flights.pop();
        }
        let n = self.flights.len();
        self.free.retain(|&i| i < n);
        self.flights.shrink_to_fit();
        self.free.shrink_to_fit();
        self.stages = Vec::new();
        self.cqes.shrink_to(256);
        self.ready.shrink_to_fit();
        self.finished.shrink_to_fit();
    }

    fn helper_threads(&self) -> usize {
        self.helpers.threads()
    }
}

impl UringBackend {
    /// Every operation but a generic call.
    fn submit_op(&mut self, token: Token, op: Op) -> Submit {
        let kind = op.kind();
        self.counters.op_mut(kind).submitted += 1;
        let direct_ok = matches!(
            kind,
            OpKind::Open | OpKind::Stat | OpKind::Read | OpKind::Write
        );
        if direct_ok && !self.laio_ops.contains(kind) {
            // Outside `--laio-ops`: directly on the loop, as under `sync`.
            let step = exec(op, Wait::Block, &mut self.direct);
            return self.inline(token, kind, step);
        }
        match op {
            Op::Close { fd } => {
                self.cancel_fd(&fd);
                drop(fd);
                self.inline(token, kind, Step::Done(Ok(0), Out::None))
            }
            op => match self.start(token, op) {
                Ok(()) => {
                    self.counters.op_mut(kind).ring += 1;
                    Submit::Pending
                }
                Err((e, out)) => {
                    self.counters.op_mut(kind).errors += 1;
                    Submit::Done(Completion::new(token, kind, Err(e), out))
                }
            },
        }
    }

    /// A generic call: io_uring has no opcode for an arbitrary function, so it runs on the
    /// loop like `lazy`'s (without waiting unless outside `--laio-ops`), and goes to a helper
    /// if it would block.
    #[inline(always)]
    fn submit_call(&mut self, token: Token, mut f: Call) -> Submit {
        let c = self.counters.op_mut(OpKind::Call);
        c.submitted += 1;
        let attempt = if self.laio_ops.contains(OpKind::Call) {
            Attempt::NoWait
        } else {
            Attempt::MayBlock
        };
        match call_once(&mut f, attempt) {
            Some(r) => self.counters.done_inline(token, OpKind::Call, r, Out::None),
            None => {
                self.counters.op_mut(OpKind::Call).helper += 1;
                // Counted as helped here: uring has no send_to_helper to do it.
                self.helpers.submit(Job {
                    helped: true,
                    ..Job::new(token, Op::Call(f))
                });
                Submit::Pending
            }
        }
    }

    fn inline(&mut self, token: Token, kind: OpKind, step: Step) -> Submit {
        match step {
            Step::Done(result, out) => self.counters.done_inline(token, kind, result, out),
            // Only file calls and generic calls run inline here, and never on sockets.
            Step::WouldBlock(op) | Step::Helper(op) => {
                let c = Completion::new(
                    token,
                    kind,
                    Err(io::Error::other(
                        "uring: unexpected retry of an inline call",
                    )),
                    op.into_out(),
                );
                Submit::Done(c)
            }
        }
    }

    fn arm_wake(&mut self) {
        let e = opcode::PollAdd::new(types::Fd(self.wake.as_raw_fd()), libc::POLLIN as u32)
            .multi(true)
            .build()
            .user_data(WAKE);
        self.push(&e);
        self.wake_armed = true;
    }

    /// Queue `e`, making room by submitting if the queue is full.
    ///
    /// Every pointer in `e` is into memory owned by a `Flight` (or the engine: the eventfd)
    /// that stays in place until the completion is reaped (module notes, drop).
    fn push(&mut self, e: &squeue::Entry) {
        loop {
            // SAFETY: what `e` points into outlives its time in the kernel (see above): no
            // dangling buffer, path, address or statx.
            if unsafe { self.ring.submission().push(e) }.is_ok() {
                return;
            }
            // Full: hand what is queued to the kernel. An error here leaves the entries
            // queued; the next `poll` reports it.
            let _ = self.ring.submit();
        }
    }

    fn slot(&mut self, f: Flight) -> u64 {
        self.in_ring += 1;
        match self.free.pop() {
            Some(i) => {
                self.flights[i] = Some(f);
                i as u64
            }
            None => {
                self.flights.push(Some(f));
                (self.flights.len() - 1) as u64
            }
        }
    }

    /// Stage the next window of a sendfile: no more than the socket takes now (its room under
    /// the mark, and in its send buffer), or — with no room — wait for `POLLOUT` first,
    /// holding no buffer. Without a mark, a whole `window` (the send then waits for the
    /// client with the buffer: 1,000 slow readers held 270 MB that way).
    fn start_sendfile(
        &mut self,
        token: Token,
        kind: OpKind,
        sock: SharedFd,
        file: SharedFd,
        offset: u64,
        len: usize,
    ) {
        let mut window = len.min(self.window);
        if self.lowat > 0 {
            const PAGE: u64 = 4096;
            let room = match os::send_queue(&sock) {
                Ok(q) => self
                    .lowat
                    .saturating_sub(q.unsent)
                    .min(q.sndbuf.saturating_sub(q.queued)),
                // Not a TCP socket (or gone): stage as without a mark; the send reports.
                Err(_) => u64::MAX,
            };
            if room < PAGE {
                // Counted as a parked sendfile: it waits for the socket's readiness.
                self.counters.op_mut(kind).parked += 1;
                let flight = Flight {
                    token,
                    kind,
                    state: State::AwaitRoom {
                        sock,
                        file,
                        offset,
                        len,
                    },
                };
                self.queue(flight, None);
                return;
            }
            let room = usize::try_from(room / PAGE * PAGE).unwrap_or(usize::MAX);
            window = window.min(room);
        }
        let stage = self.stage_buffer();
        let flight = Flight {
            token,
            kind,
            state: State::FileToStage { sock, file, stage },
        };
        // The stage buffer is empty; a step reads at most one window.
        self.queue(flight, Some((offset, window)));
    }

    fn stage_buffer(&mut self) -> Vec<u8> {
        self.stages
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(self.window))
    }

    /// Put `op` into the ring.
    /// On failure, the error and what the operation gives back.
    fn start(&mut self, token: Token, op: Op) -> Result<(), (io::Error, Out)> {
        let kind = op.kind();
        let no_room = || io::Error::from_raw_os_error(libc::EINVAL);
        let state = match op {
            Op::Connect {
                addr, recv_buffer, ..
            } => State::Connect {
                addr,
                sock: os::tcp_socket(addr, recv_buffer, false).map_err(|e| (e, Out::None))?,
                raw: Box::new(rustix::net::SocketAddrAny::from(addr)),
            },
            Op::Accept { listener } => State::Accept { listener },
            Op::Recv {
                sock, mut buf, max, ..
            } => {
                // A zero-length receive would complete with 0, which means end of stream.
                if buf.spare().is_empty() || max == 0 {
                    return Err((no_room(), Out::Buf(buf)));
                }
                State::Recv { sock, buf, max }
            }
            Op::Send {
                sock,
                bufs,
                from,
                more,
                zerocopy,
            } => {
                let one_shared =
                    bufs.parts().len() == 1 && matches!(bufs.parts()[0], Buf::Shared(_));
                if zerocopy && one_shared {
                    State::SendZc {
                        sock,
                        from: from.min(bufs.len()),
                        bufs,
                    }
                } else {
                    if zerocopy {
                        self.zc.not_shared += 1;
                    }
                    State::Send {
                        sock,
                        from: from.min(bufs.len()),
                        msg: (bufs.parts().len() > 1).then(|| Vectors::new(&bufs, from)),
                        bufs,
                        more,
                    }
                }
            }
            Op::Sendfile {
                sock,
                file,
                offset,
                len,
                via,
            } => {
                if !matches!(via, Via::Sendfile) && !self.said_via {
                    self.said_via = true;
                    tracing::warn!(
                        "uring: --data {} is not wired to io_uring yet; bodies are staged \
                         through a buffer as for sendfile",
                        match via {
                            Via::Splice(_) => "splice",
                            Via::Move(_) => "move",
                            _ => "share",
                        }
                    );
                }
                self.start_sendfile(token, kind, sock, file, offset, len);
                return Ok(());
            }
            Op::Shutdown { sock } => State::Shutdown { sock },
            Op::Readable { sock } => State::Readable { sock },
            Op::Open {
                dir, path, beneath, ..
            } => State::Open {
                dir,
                path,
                beneath,
                noatime: true,
                how: Box::new(types::OpenHow::new()),
            },
            Op::Stat { file } => State::Stat {
                file,
                // SAFETY: `statx` is plain data; all zeroes is a valid value.
                statx: Box::new(unsafe { std::mem::zeroed() }),
            },
            Op::Read {
                file,
                offset,
                len,
                mut buf,
                to: _,
            } => {
                if buf.spare().is_empty() || len == 0 {
                    return Err((no_room(), Out::Buf(buf)));
                }
                let flight = Flight {
                    token,
                    kind,
                    state: State::Read { file, buf },
                };
                self.queue(flight, Some((offset, len)));
                return Ok(());
            }
            Op::Write { file, offset, bufs } => {
                let msg = Vectors::new(&bufs, 0);
                let flight = Flight {
                    token,
                    kind,
                    state: State::Write { file, bufs, msg },
                };
                self.queue(flight, Some((offset.unwrap_or(u64::MAX), 0)));
                return Ok(());
            }
            Op::Close { .. } | Op::Call(_) => unreachable!("handled by submit"),
        };
        self.queue(Flight { token, kind, state }, None);
        Ok(())
    }

    /// Build the entry for `f` (file position and length for reads and writes) and queue it.
    fn queue(&mut self, mut f: Flight, at: Option<(u64, usize)>) {
        let (offset, len) = at.unwrap_or((0, 0));
        let e = match &mut f.state {
            State::Connect { sock, raw, .. } => opcode::Connect::new(
                types::Fd(sock.as_raw_fd()),
                raw.as_ptr().cast(),
                raw.addr_len(),
            )
            .build(),
            State::Accept { listener } => opcode::Accept::new(
                types::Fd(listener.as_raw_fd()),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
            )
            .flags(libc::SOCK_CLOEXEC)
            .build(),
            State::Recv { sock, buf, max } => {
                let spare = buf.spare();
                opcode::Recv::new(
                    types::Fd(sock.as_raw_fd()),
                    spare.as_mut_ptr().cast(),
                    u32::try_from(spare.len().min(*max)).unwrap_or(u32::MAX),
                )
                .ioprio(RECVSEND_POLL_FIRST)
                .build()
            }
            State::Send {
                sock,
                bufs,
                from,
                more,
                msg,
            } => {
                let flags = if *more {
                    libc::MSG_NOSIGNAL | libc::MSG_MORE
                } else {
                    libc::MSG_NOSIGNAL
                };
                match msg {
                    Some(v) if v.count() > 1 => {
                        opcode::SendMsg::new(types::Fd(sock.as_raw_fd()), &v.hdr)
                            .flags(flags as u32)
                            .build()
                    }
                    _ => {
                        let rest = bufs.slices_from(*from).next().unwrap_or_default();
                        opcode::Send::new(
                            types::Fd(sock.as_raw_fd()),
                            rest.as_ptr(),
                            u32::try_from(rest.len()).unwrap_or(u32::MAX),
                        )
                        .flags(flags)
                        .build()
                    }
                }
            }
            State::SendZc { sock, bufs, from } => {
                let rest = bufs.slices_from(*from).next().unwrap_or_default();
                opcode::SendZc::new(
                    types::Fd(sock.as_raw_fd()),
                    rest.as_ptr(),
                    u32::try_from(rest.len()).unwrap_or(u32::MAX),
                )
                .flags(libc::MSG_NOSIGNAL)
                .zc_flags(SEND_ZC_REPORT_USAGE)
                .build()
            }
            // Never queued: it only waits for a notification in its slot.
            State::ZcHeld { .. } => return,
            State::AwaitRoom { sock, .. } => {
                opcode::PollAdd::new(types::Fd(sock.as_raw_fd()), libc::POLLOUT as u32).build()
            }
            State::StageToSock { sock, stage, .. } => opcode::Send::new(
                types::Fd(sock.as_raw_fd()),
                stage.as_ptr(),
                u32::try_from(stage.len()).unwrap_or(u32::MAX),
            )
            .flags(libc::MSG_NOSIGNAL | libc::MSG_WAITALL)
            .build(),
            State::FileToStage { file, stage, .. } => opcode::Read::new(
                types::Fd(file.as_raw_fd()),
                stage.as_mut_ptr(),
                u32::try_from(len.min(stage.capacity())).unwrap_or(u32::MAX),
            )
            .offset(offset)
            .build(),
            State::Shutdown { sock } => {
                opcode::Shutdown::new(types::Fd(sock.as_raw_fd()), libc::SHUT_WR).build()
            }
            State::Readable { sock } => opcode::PollAdd::new(
                types::Fd(sock.as_raw_fd()),
                (libc::POLLIN | libc::POLLRDHUP) as u32,
            )
            .build(),
            State::Open {
                dir,
                path,
                beneath,
                noatime,
                how,
            } => {
                let (flags, resolve) = os::open_how(*beneath, *noatime);
                **how = types::OpenHow::new().flags(flags).resolve(resolve);
                opcode::OpenAt2::new(types::Fd(dir.as_raw_fd()), path.as_ptr(), &**how).build()
            }
            State::Stat { file, statx } => opcode::Statx::new(
                types::Fd(file.as_raw_fd()),
                c"".as_ptr(),
                (&mut **statx as *mut libc::statx).cast(),
            )
            .flags(libc::AT_EMPTY_PATH)
            .mask(libc::STATX_BASIC_STATS)
            .build(),
            State::Read { file, buf } => {
                let spare = buf.spare();
                let n = len.min(spare.len());
                opcode::Read::new(
                    types::Fd(file.as_raw_fd()),
                    spare.as_mut_ptr().cast(),
                    u32::try_from(n).unwrap_or(u32::MAX),
                )
                .offset(offset)
                .build()
            }
            State::Write { file, msg, .. } => opcode::Writev::new(
                types::Fd(file.as_raw_fd()),
                msg.iov.as_ptr(),
                msg.count() as u32,
            )
            .offset(offset)
            .build(),
        };
        let id = self.slot(f);
        self.push(&e.user_data(id));
    }

    /// Cancel everything in flight on `fd` (each completes with `ECANCELED` unless it finished
    /// first). An operation in flight holds a clone of `fd`, so a descriptor nobody else holds
    /// has nothing to cancel (O(1), no scan of the flights).
    fn cancel_fd(&mut self, fd: &SharedFd) {
        if Arc::strong_count(fd) > 1 {
            let target = types::CancelBuilder::fd(types::Fd(fd.as_raw_fd())).all();
            let e = opcode::AsyncCancel2::new(target).build().user_data(CANCEL);
            self.push(&e);
        }
    }

    fn reap(&mut self, done: &mut Vec<Completion>) {
        self.cqes.clear();
        self.cqes.extend(
            self.ring
                .completion()
                .map(|c| (c.user_data(), c.result(), c.flags())),
        );
        for i in 0..self.cqes.len() {
            let (id, res, flags) = self.cqes[i];
            match id {
                WAKE => {
                    os::eventfd_drain(&self.wake);
                    if !cqueue::more(flags) {
                        self.wake_armed = false;
                    }
                    self.helpers.collect(&mut self.finished);
                    for f in std::mem::take(&mut self.finished) {
                        let k = f.job.kind;
                        self.counters.record_helper_latency(k, f.job.sent.elapsed());
                        // Only generic calls go to helpers here, and a call that may block
                        // always finishes; anything else is reported, never dropped.
                        let (result, out) = match f.step {
                            Step::Done(result, out) => (result, out),
                            Step::WouldBlock(op) | Step::Helper(op) => (
                                Err(io::Error::other(
                                    "uring: a helper's call asked to be retried",
                                )),
                                op.into_out(),
                            ),
                        };
                        self.counters.op_mut(k).errors += u64::from(result.is_err());
                        done.push(Completion::new(f.job.token, k, result, out));
                    }
                }
                CANCEL => {}
                id => {
                    let Some(f) = self.flights.get_mut(id as usize).and_then(Option::take) else {
                        continue;
                    };
                    if cqueue::more(flags) {
                        // A zero-copy send's result; its notification comes to the same slot.
                        if let Some(c) = self.zc_result(id as usize, f, res) {
                            done.push(c);
                        }
                        continue;
                    }
                    self.free.push(id as usize);
                    self.in_ring -= 1;
                    if cqueue::notif(flags) {
                        self.zc.completed += 1;
                        if res as u32 & NOTIF_USAGE_ZC_COPIED != 0 {
                            self.zc.copied += 1;
                        }
                        self.zc_held = self.zc_held.saturating_sub(1);
                        continue;
                    }
                    if let Some(c) = self.complete(f, res) {
                        self.counters.op_mut(c.kind).errors += u64::from(c.result.is_err());
                        done.push(c);
                    }
                }
            }
        }
        if !self.wake_armed {
            self.arm_wake();
        }
    }

    /// The first completion of a zero-copy send (more follows): give the caller its result and
    /// its list back now, and keep a reference to the bytes in the slot until the kernel's
    /// notification.
    fn zc_result(&mut self, id: usize, f: Flight, res: i32) -> Option<Completion> {
        let Flight { token, kind, state } = f;
        let State::SendZc { bufs, .. } = state else {
            // Nothing else asks for two completions.
            self.flights[id] = Some(Flight { token, kind, state });
            return None;
        };
        let bytes = match bufs.parts().first() {
            Some(Buf::Shared(b)) => b.clone(),
            _ => Bytes::new(),
        };
        self.flights[id] = Some(Flight {
            token,
            kind,
            state: State::ZcHeld { _bytes: bytes },
        });
        let result = match usize::try_from(res) {
            Ok(n) => {
                self.zc.sends += 1;
                self.zc.bytes += n as u64;
                self.zc_held += 1;
                self.zc.held_max = self.zc.held_max.max(self.zc_held);
                Ok(n)
            }
            Err(_) => Err(errno(res)),
        };
        self.counters.op_mut(kind).errors += u64::from(result.is_err());
        Some(Completion::new(token, kind, result, Out::Gather(bufs)))
    }

    /// Turn a completion into the caller's [`Completion`], or queue the operation's next step.
    fn complete(&mut self, f: Flight, res: i32) -> Option<Completion> {
        let Flight { token, kind, state } = f;
        let ok = usize::try_from(res).ok();
        let (result, out) = match state {
            State::Connect { addr, sock, .. } => match ok {
                Some(_) => (Ok(0), Out::Conn(Arc::new(sock), Some(addr))),
                None => (Err(errno(res)), Out::None),
            },
            State::Accept { .. } => match ok {
                Some(_) => {
                    // SAFETY: a successful accept's result is a new descriptor we now own.
                    let fd = unsafe { OwnedFd::from_raw_fd(res) };
                    let peer = os::accepted(&fd);
                    (Ok(0), Out::Conn(Arc::new(fd), peer))
                }
                None => (Err(errno(res)), Out::None),
            },
            State::Recv { mut buf, .. } | State::Read { mut buf, .. } => match ok {
                Some(n) => {
                    // SAFETY: the kernel wrote `n` bytes into the spare room it was given
                    // (at most that room), right after the filled part.
                    unsafe { buf.filled(n) };
                    (Ok(n), Out::Buf(buf))
                }
                None => (Err(errno(res)), Out::Buf(buf)),
            },
            State::SendZc { bufs, .. } => match ok {
                Some(n) => (Ok(n), Out::Gather(bufs)),
                None => (Err(errno(res)), Out::Gather(bufs)),
            },
            State::ZcHeld { .. } => return None,
            State::AwaitRoom {
                sock,
                file,
                offset,
                len,
            } => match ok {
                Some(_) => {
                    self.start_sendfile(token, kind, sock, file, offset, len);
                    return None;
                }
                None => (Err(errno(res)), Out::None),
            },
            State::Send { bufs, .. } | State::Write { bufs, .. } => match ok {
                Some(n) => (Ok(n), Out::Gather(bufs)),
                None => (Err(errno(res)), Out::Gather(bufs)),
            },
            State::FileToStage {
                sock, mut stage, ..
            } => match ok {
                Some(0) => {
                    self.stages.push(stage);
                    (Ok(0), Out::None)
                }
                Some(n) => {
                    // SAFETY: as for a read: `n` bytes written at the start of `stage`.
                    unsafe { stage.set_len(n) };
                    let next = Flight {
                        token,
                        kind,
                        state: State::StageToSock { sock, stage },
                    };
                    self.queue(next, None);
                    return None;
                }
                None => {
                    self.stages.push(stage);
                    (Err(errno(res)), Out::None)
                }
            },
            State::StageToSock { mut stage, .. } => {
                stage.clear();
                self.stages.push(stage);
                match ok {
                    Some(n) => (Ok(n), Out::None),
                    None => (Err(errno(res)), Out::None),
                }
            }
            State::Shutdown { .. } | State::Readable { .. } => match ok {
                Some(_) => (Ok(0), Out::None),
                None => (Err(errno(res)), Out::None),
            },
            State::Open {
                dir,
                path,
                beneath,
                noatime,
                how,
            } => match ok {
                Some(_) => {
                    // SAFETY: a successful open's result is a new descriptor we now own.
                    let fd = unsafe { OwnedFd::from_raw_fd(res) };
                    match os::clear_nonblock(&fd) {
                        Ok(()) => (Ok(0), Out::File(fd)),
                        Err(e) => (Err(e), Out::None),
                    }
                }
                None if res == -libc::EPERM && noatime => {
                    // Not the file's owner: open it without O_NOATIME (as `os::open` does).
                    os::NOATIME_REFUSED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let again = Flight {
                        token,
                        kind,
                        state: State::Open {
                            dir,
                            path,
                            beneath,
                            noatime: false,
                            how,
                        },
                    };
                    self.queue(again, None);
                    return None;
                }
                None => (Err(errno(res)), Out::None),
            },
            State::Stat { statx, .. } => match ok {
                Some(_) => {
                    let st = os::file_stat(
                        statx.stx_size,
                        (
                            rustix::fs::makedev(statx.stx_dev_major, statx.stx_dev_minor),
                            statx.stx_ino,
                        ),
                        u32::from(statx.stx_mode),
                        (statx.stx_mtime.tv_sec, statx.stx_mtime.tv_nsec),
                        (statx.stx_ctime.tv_sec, statx.stx_ctime.tv_nsec),
                    );
                    (Ok(0), Out::Stat(st))
                }
                None => (Err(errno(res)), Out::None),
            },
        };
        Some(Completion::new(token, kind, result, out))
    }
}

impl Drop for UringBackend {
    fn drop(&mut self) {
        if self.in_ring == 0 {
            return;
        }
        // The kernel may still write into buffers owned by flights: cancel everything, wait
        // (bounded) for the completions, and leak whatever is still in flight.
        let e = opcode::AsyncCancel2::new(types::CancelBuilder::any())
            .build()
            .user_data(CANCEL);
        self.push(&e);
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut sink = Vec::new();
        while self.in_ring > 0 && Instant::now() < deadline {
            if self
                .poll(&mut sink, Some(Duration::from_millis(50)))
                .is_err()
            {
                break;
            }
            sink.clear();
        }
        if self.in_ring > 0 {
            tracing::warn!(
                "uring: {} operations did not finish after cancellation; their buffers are leaked",
                self.in_ring
            );
            for f in self.flights.drain(..).flatten() {
                std::mem::forget(f);
            }
        }
    }
}
