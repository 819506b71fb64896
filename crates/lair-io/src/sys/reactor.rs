//! The readiness reactor: an epoll set, a table of operations parked on sockets, an eventfd for
//! helper completions and cross-thread wake-ups, and a helper pool — driven by a [`Policy`]
//! that decides how each operation is first attempted.
//!
//! Why: `sync`, `lazy`, `eager` and `hybrid` differ only in where a call runs;
//! the socket half (non-blocking calls, edge-triggered readiness, retry on the edge) is the
//! same for all of them, so it lives here once.
//!
//! Invariants:
//! - a socket is registered with epoll (edge-triggered, both directions) when it is accepted
//!   (or, for any other socket, the first time an operation on it would block), and at most one
//!   read-side and one write-side operation is parked per socket;
//! - what is known of a registered socket's readiness is kept in its slot — set by epoll's
//!   edges, cleared by an `EAGAIN`, by a receive that drained the socket (fewer bytes than
//!   asked for) and by a send that filled it (fewer bytes than offered) — and shown to the
//!   policy ([`SocketReady`]) with every operation it decides on;
//! - every operation is attempted inline before it is parked, so an edge that fired before the
//!   operation was submitted is never needed;
//! - the eventfd is read before the helper queue is drained (see `helpers`), so no completion
//!   is left behind while the loop sleeps.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustix::event::epoll;

use super::correlate::Correlator;
use super::exec::{call_once, exec, Caps, Step};
use super::helpers::{Finished, Helpers, Job, JobMeta};
use super::os::{self, Ready, Wait};
use super::zerocopy::ZeroCopy;
use super::{Backend, EngineConfig, Waker};
use crate::counters::Counters;
use crate::op::{Attempt, Call, Completion, Interest, Op, OpKind, OpSet, Out, Submit, Token};
use crate::Error;

/// What the reactor knows of an operation's socket when the policy decides on it: `Some(true)`
/// ready, `Some(false)` not (an `EAGAIN`, a drained receive or a full send since the last
/// edge), `None` unknown (no socket, or one not registered).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SocketReady {
    /// Readable (data or end of stream waiting).
    pub readable: Option<bool>,
    /// Writable (room in the send buffer).
    pub writable: Option<bool>,
}

/// How a backend first attempts an operation (and each retry after readiness).
pub trait Policy: Sized + 'static {
    /// Backend name.
    const NAME: &'static str;
    /// Set up (probe the kernel, read the configuration).
    fn new(config: &EngineConfig) -> Result<Self, Error>;
    /// How the policy runs a generic [`Op::Call`] on the loop itself, if it does (`None`: it
    /// sends every call to a helper). A call run on the loop takes a short path through
    /// [`Backend::submit`].
    const CALL_ON_LOOP: Option<Attempt>;
    /// Attempt `op`, knowing what the reactor knows of its socket.
    fn start(&mut self, op: Op, ready: SocketReady) -> Step;
}

/// Epoll key of the wake-up eventfd; every other key is a descriptor number.
const WAKE_KEY: u64 = u64::MAX;

#[derive(Default)]
struct FdSlot {
    /// Identity of the descriptor the slot describes (`Arc` address), 0 if none: a slot left by
    /// a closed descriptor whose number came back is reset, not trusted.
    owner: usize,
    registered: bool,
    /// Readiness last reported by epoll and not yet used up by an `EAGAIN` (or a drained
    /// receive, a filled send).
    readable: bool,
    writable: bool,
    /// Epoll reported the peer's shutdown or an error: a short receive then does not mean
    /// the socket is drained (the end of stream is still to be read, and no edge will come).
    closing: bool,
    read: Option<Job>,
    write: Option<Job>,
}

/// A backend made of a [`Policy`] and the readiness machinery.
pub struct Readiness<P: Policy> {
    policy: P,
    /// Operations the policy decides on; the others run directly (see [`Readiness::start`]).
    laio_ops: OpSet,
    direct: Caps,
    epoll: OwnedFd,
    wake: Arc<OwnedFd>,
    helpers: Helpers,
    slots: Vec<FdSlot>,
    cancelled: Vec<Completion>,
    raw: Vec<epoll::Event>,
    events: Vec<Ready>,
    finished: Vec<Finished>,
    counters: Counters,
    /// Event correlation (`--ecem`; its pair table and counters are kept in every mode).
    ecem: Correlator,
    /// Zero-copy sends waiting for their notifications (`--data emulated`).
    zc: ZeroCopy,
}

/// A socket's slot key: its descriptor number (the slot's index) and its `Arc`'s address
/// (which descriptor under that number the slot describes).
#[inline]
fn slot_key(sock: &Arc<OwnedFd>) -> (usize, usize) {
    (
        usize::try_from(sock.as_raw_fd()).unwrap_or(usize::MAX),
        Arc::as_ptr(sock) as usize,
    )
}

impl<P: Policy> Backend for Readiness<P> {
    const NAME: &'static str = P::NAME;

    fn new(config: &EngineConfig) -> Result<Self, Error> {
        let policy = P::new(config)?;
        let epoll = os::epoll_new().map_err(|e| Error::setup("epoll_create1", e))?;
        let wake = Arc::new(os::eventfd_new().map_err(|e| Error::setup("eventfd", e))?);
        os::epoll_add_level(&epoll, &*wake, WAKE_KEY)
            .map_err(|e| Error::setup("epoll_ctl(eventfd)", e))?;
        Ok(Readiness {
            policy,
            laio_ops: config.laio_ops,
            direct: Caps::none(),
            epoll,
            helpers: Helpers::new(config.helpers, Arc::clone(&wake), P::NAME, &config.cpus),
            wake,
            slots: Vec::new(),
            cancelled: Vec::new(),
            raw: Vec::with_capacity(256),
            events: Vec::with_capacity(256),
            finished: Vec::new(),
            counters: Counters::new(P::NAME),
            ecem: Correlator::new(config),
            zc: ZeroCopy::default(),
        })
    }

    // Always inlined: a generic call then runs one frame below the caller (see submit_call).
    #[inline(always)]
    fn submit(&mut self, token: Token, op: Op) -> Submit {
        match op {
            Op::Call(f) => self.submit_call(token, f),
            op => self.submit_op(token, op),
        }
    }

    fn poll(&mut self, done: &mut Vec<Completion>, timeout: Option<Duration>) -> Result<(), Error> {
        let had = done.len();
        done.append(&mut self.cancelled);
        let timeout = if done.len() > had {
            Some(Duration::ZERO)
        } else {
            timeout
        };
        os::epoll_wait(&self.epoll, &mut self.raw, &mut self.events, timeout)
            .map_err(|e| Error::setup("epoll_wait", e))?;
        self.counters.wakeups += 1;
        for i in 0..self.events.len() {
            let ev = self.events[i];
            if ev.key == WAKE_KEY {
                // Read the eventfd first, then drain: a completion pushed after the drain
                // signals again (see `helpers`).
                os::eventfd_drain(&self.wake);
                self.helpers.collect(&mut self.finished);
                let mut finished = std::mem::take(&mut self.finished);
                for f in finished.drain(..) {
                    self.finish_helper(f, done);
                }
                self.finished = finished;
                continue;
            }
            let fd = usize::try_from(ev.key).unwrap_or(usize::MAX);
            let mut ev = ev;
            if ev.err && self.zc.has(fd) {
                // Zero-copy notifications (also those a reset connection's purged send queue
                // leaves): release what they cover. Without a hang-up they are all the error
                // there is: take the event for its plain directions only.
                self.zc.drain_fd(fd);
                if ev.err_only {
                    ev.readable = ev.raw_in;
                    ev.writable = ev.raw_out;
                    ev.closing = false;
                }
            }
            if let Some(slot) = self.slots.get_mut(fd) {
                slot.readable |= ev.readable;
                slot.writable |= ev.writable;
                slot.closing |= ev.closing;
            }
            if ev.readable {
                if let Some(job) = self.slots.get_mut(fd).and_then(|s| s.read.take()) {
                    self.retry(job, done);
                }
            }
            if ev.writable {
                if let Some(job) = self.slots.get_mut(fd).and_then(|s| s.write.take()) {
                    self.retry(job, done);
                }
            }
        }
        done.append(&mut self.cancelled);
        if !self.zc.is_empty() {
            self.zc.sweep(Instant::now());
        }
        Ok(())
    }

    fn waker(&self) -> Waker {
        Waker(Arc::clone(&self.wake))
    }

    fn counters(&self) -> Counters {
        let mut c = self.counters.clone();
        c.ecem = Some(self.ecem.counters());
        c.zerocopy = self.zc.counters();
        c
    }

    fn release_idle(&mut self) {
        self.helpers.retire_idle();
        // A slot is empty once its descriptor was closed (`Op::Close` resets it).
        while self
            .slots
            .last()
            .is_some_and(|s| s.owner == 0 && s.read.is_none() && s.write.is_none())
        {
            self.slots.pop();
        }
        self.slots.shrink_to_fit();
        self.raw.shrink_to(256);
        self.events.shrink_to(256);
        self.cancelled.shrink_to_fit();
        self.finished.shrink_to_fit();
    }

    fn helper_threads(&self) -> usize {
        self.helpers.threads()
    }
}

impl<P: Policy> Readiness<P> {
    /// Every operation but a generic call the policy runs on the loop.
    fn submit_op(&mut self, token: Token, op: Op) -> Submit {
        let kind = op.kind();
        self.counters.op_mut(kind).submitted += 1;
        if let Op::Close { fd } = &op {
            self.cancel(fd);
            self.ecem.closed(fd);
            self.zc.closed(fd);
        }
        if let Op::Recv {
            sock,
            poll_first: true,
            ..
        }
        | Op::Readable { sock } = &op
        {
            if self.known_unreadable(sock) {
                return self.park_new(token, op);
            }
        }
        match self.start(op) {
            Step::Done(result, out) => {
                self.watch_accepted(kind, &out);
                self.counters.done_inline(token, kind, result, out)
            }
            Step::WouldBlock(op) => self.park_new(token, op),
            Step::Helper(op) => {
                self.send_to_helper(Job::new(token, op));
                Submit::Pending
            }
        }
    }

    /// A generic call: run on the loop right here if the policy does (the common case, and
    /// the one `lair micro getpid` measures: every stack frame between the caller and the
    /// system call costs a mispredicted return once the kernel has refilled the return stack
    /// buffer on the way back, so this path keeps them few), else the general path.
    #[inline(always)]
    fn submit_call(&mut self, token: Token, mut f: Call) -> Submit {
        let attempt = if self.laio_ops.contains(OpKind::Call) {
            P::CALL_ON_LOOP
        } else {
            Some(Attempt::MayBlock)
        };
        let Some(attempt) = attempt else {
            return self.submit_op(token, Op::Call(f));
        };
        self.counters.op_mut(OpKind::Call).submitted += 1;
        match call_once(&mut f, attempt) {
            Some(r) => self.counters.done_inline(token, OpKind::Call, r, Out::None),
            None => {
                self.send_to_helper(Job::new(token, Op::Call(f)));
                Submit::Pending
            }
        }
    }

    /// The socket is registered, no readiness was reported since its last `EAGAIN` (or
    /// drained receive), and no end of stream is announced (which no edge would report again).
    fn known_unreadable(&self, sock: &Arc<OwnedFd>) -> bool {
        self.known(slot_key(sock)).readable == Some(false)
    }

    /// Park a just-submitted operation (see [`Readiness::park`]).
    fn park_new(&mut self, token: Token, op: Op) -> Submit {
        match self.park(Job::new(token, op)) {
            Ok(()) => Submit::Pending,
            Err(c) => Submit::Done(c),
        }
    }

    /// The slot's readiness flag for the direction `op` waits in, if the slot describes
    /// `op`'s socket.
    fn ready_flag(&mut self, op: &Op) -> Option<&mut bool> {
        let (sock, interest) = op.socket_interest()?;
        let slot = self.slot_mut(slot_key(sock))?;
        Some(match interest {
            Interest::Read => &mut slot.readable,
            Interest::Write => &mut slot.writable,
        })
    }

    fn send_to_helper(&mut self, mut job: Job) {
        // A socket call on a helper uses up the readiness it was retried for; an edge that
        // arrives while it is away sets the flag again (see `finish_helper`).
        if let Some(flag) = self.ready_flag(&job.op) {
            *flag = false;
        }
        if !job.helped {
            job.helped = true;
            self.counters.op_mut(job.op.kind()).helper += 1;
        }
        self.helpers.submit(job);
    }

    /// Park `job` on its socket until epoll reports readiness in its direction.
    fn park(&mut self, mut job: Job) -> Result<(), Completion> {
        let kind = job.op.kind();
        let Some((sock, interest)) = job.op.wait_interest() else {
            // Only socket operations can wait for readiness; anything else is a policy bug.
            return Err(self.fail(job, io::Error::other("not a socket operation")));
        };
        if Arc::strong_count(sock) == 1 && kind != crate::op::OpKind::Connect {
            // Nobody else holds the socket (a connecting one is the engine's own): it was
            // closed while the operation was on a helper (eager, hybrid), so `Op::Close` could
            // not cancel it. Cancel it now.
            return Err(self.fail(job, io::Error::from_raw_os_error(libc::ECANCELED)));
        }
        let (fd, owner) = slot_key(sock);
        if fd >= self.slots.len() {
            self.slots.resize_with(fd + 1, FdSlot::default);
        }
        let slot = &mut self.slots[fd];
        if slot.owner != owner {
            // A stale slot cannot hold jobs: they would keep the old descriptor, and so its
            // number, alive.
            *slot = FdSlot {
                owner,
                ..FdSlot::default()
            };
        }
        if !slot.registered {
            if let Err(e) = os::epoll_add(&self.epoll, &**sock, fd as u64) {
                return Err(self.fail(job, e));
            }
            slot.registered = true;
        }
        // The operation just saw `EAGAIN` (or chose not to try): readiness is used up until
        // epoll reports it again.
        let place = match interest {
            Interest::Read => {
                slot.readable = false;
                &mut slot.read
            }
            Interest::Write => {
                slot.writable = false;
                &mut slot.write
            }
        };
        if place.is_some() {
            return Err(self.fail(job, io::Error::from_raw_os_error(libc::EBUSY)));
        }
        if !job.parked {
            job.parked = true;
            self.counters.op_mut(kind).parked += 1;
        }
        *place = Some(job);
        Ok(())
    }

    fn fail(&mut self, job: Job, e: io::Error) -> Completion {
        let kind = job.op.kind();
        self.counters.op_mut(kind).errors += 1;
        Completion::new(job.token, kind, Err(e), job.op.into_out())
    }

    /// Attempt `op`: by the policy if it is one of `laio_ops`, else directly on the loop as
    /// under `sync` (file calls block, sockets still park on readiness). A receive that got
    /// fewer bytes than it had room for drained the socket, and a send that took fewer than it
    /// was offered filled it: the slot says so, and the next receive between requests waits
    /// for an edge instead of failing first (edge-triggered epoll reports every arrival).
    #[inline]
    fn start(&mut self, mut op: Op) -> Step {
        let sock = op.socket_interest().map(|(s, i)| (slot_key(s), i));
        let want = op.socket_want();
        let ready = sock.map_or(SocketReady::default(), |(key, _)| self.known(key));
        // Event correlation sizes a sendfile to the socket's room (DNS), or holds it.
        let plan = self.ecem.before(&mut op);
        // Its read-ahead hints go to a helper: allocating the pages can mean direct reclaim
        // under a memory limit (17.8 ms once, inline, in the `ecem` experiment).
        if self.ecem.has_prefetches() {
            for p in self.ecem.take_prefetches() {
                self.helpers
                    .submit(Job::internal(Op::Call(Box::new(move |_| {
                        p.run();
                        Ok(0)
                    }))));
            }
        }
        let plan = match plan {
            Ok(plan) => plan,
            Err(()) => return Step::WouldBlock(op),
        };
        if let Op::Readable { .. } = op {
            // Never a helper's: the loop knows readiness (a known-drained socket was parked
            // before it got here; an edge brings it back).
            return Step::Done(Ok(0), Out::None);
        }
        let mut step = if self.zc.prepare(&mut op) {
            // A zero-copy send runs here, never on a helper: its bytes are held in this
            // loop's table until the kernel's notification.
            self.send_zerocopy(op)
        } else if self.laio_ops.contains(op.kind()) {
            self.policy.start(op, ready)
        } else {
            exec(op, Wait::Block, &mut self.direct)
        };
        if let Some(plan) = plan {
            self.ecem.after(plan, &mut step);
        }
        if let (Some((key, interest)), Some(want), Step::Done(Ok(n), _)) = (sock, want, &step) {
            if *n > 0 && *n < want {
                if let Some(slot) = self.slot_mut(key) {
                    match interest {
                        // Data, then an end of stream already announced: not drained.
                        Interest::Read if slot.closing => {}
                        Interest::Read => slot.readable = false,
                        Interest::Write => slot.writable = false,
                    }
                }
            }
        }
        step
    }

    /// Run a zero-copy send (approved by [`ZeroCopy::prepare`]) and hold its bytes.
    fn send_zerocopy(&mut self, op: Op) -> Step {
        let sock = match &op {
            Op::Send { sock, .. } => Arc::clone(sock),
            _ => return exec(op, Wait::NoWait, &mut self.direct),
        };
        let step = exec(op, Wait::NoWait, &mut self.direct);
        if let Step::Done(Ok(n), Out::Gather(bufs)) = &step {
            if *n > 0 {
                self.zc.sent(&sock, bufs, *n);
            }
        }
        step
    }

    /// The slot that describes the socket of `key` (not a stale one a closed descriptor with
    /// the same number left).
    #[inline]
    fn slot_mut(&mut self, (fd, owner): (usize, usize)) -> Option<&mut FdSlot> {
        self.slots.get_mut(fd).filter(|s| s.owner == owner)
    }

    /// What the slot of the socket of `key` knows.
    #[inline]
    fn known(&self, (fd, owner): (usize, usize)) -> SocketReady {
        match self.slots.get(fd) {
            Some(s) if s.owner == owner && s.registered => SocketReady {
                readable: Some(s.readable || s.closing),
                writable: Some(s.writable),
            },
            _ => SocketReady::default(),
        }
    }

    /// Register a just-accepted connection for readiness at once, so its readiness is known
    /// from the start (also for a connection that never blocks) and a slot a closed
    /// descriptor left under the same number is replaced. A failure leaves it unregistered: it
    /// is then registered the first time an operation on it would block.
    fn watch_accepted(&mut self, kind: OpKind, out: &Out) {
        let (OpKind::Accept, Out::Conn(sock, _)) = (kind, out) else {
            return;
        };
        let (fd, owner) = slot_key(sock);
        if fd >= self.slots.len() {
            self.slots.resize_with(fd + 1, FdSlot::default);
        }
        // Edge-triggered: the registration itself reports what is ready now.
        let registered = os::epoll_add(&self.epoll, &**sock, fd as u64).is_ok();
        self.slots[fd] = FdSlot {
            owner,
            registered,
            ..FdSlot::default()
        };
    }

    /// Cancel what is parked on `fd` (completions with `ECANCELED`, delivered by `poll`).
    fn cancel(&mut self, fd: &Arc<OwnedFd>) {
        let Some(slot) = self.slot_mut(slot_key(fd)) else {
            return;
        };
        let slot = std::mem::take(slot);
        for job in [slot.read, slot.write].into_iter().flatten() {
            let c = self.fail(job, io::Error::from_raw_os_error(libc::ECANCELED));
            self.cancelled.push(c);
        }
    }

    fn retry(&mut self, job: Job, done: &mut Vec<Completion>) {
        let Job {
            token,
            op,
            parked,
            helped,
            ..
        } = job;
        let kind = op.kind();
        // A connect's socket belongs to the engine until it completes: then it is closed
        // (failure) or handed out under a new owner (success). Either way the slot must not
        // vouch for it any more, or a new socket with the same number (and, by allocator
        // chance, the same `Arc` address) would be taken as registered and never hear again.
        let connecting = match &op {
            Op::Connect { sock: Some(s), .. } => usize::try_from(s.as_raw_fd()).ok(),
            _ => None,
        };
        match self.start(op) {
            Step::Done(result, out) => {
                if let Some(slot) = connecting.and_then(|fd| self.slots.get_mut(fd)) {
                    *slot = FdSlot::default();
                }
                self.watch_accepted(kind, &out);
                self.counters.op_mut(kind).errors += u64::from(result.is_err());
                done.push(Completion::new(token, kind, result, out));
            }
            Step::WouldBlock(op) => {
                let job = Job {
                    token,
                    op,
                    parked,
                    helped,
                    internal: false,
                };
                if let Err(c) = self.park(job) {
                    done.push(c);
                }
            }
            Step::Helper(op) => self.send_to_helper(Job {
                token,
                op,
                parked,
                helped,
                internal: false,
            }),
        }
    }

    fn finish_helper(&mut self, f: Finished, done: &mut Vec<Completion>) {
        let JobMeta {
            token,
            kind,
            sent,
            parked,
            connecting,
            internal,
        } = f.job;
        debug_assert!(!internal, "the engine's own jobs make no completion");
        self.counters.record_helper_latency(kind, sent.elapsed());
        match f.step {
            Step::Done(result, out) => {
                // A finished handshake's socket is closed or handed out: forget its slot (as
                // `retry` does for one finished on the loop).
                if let Some(slot) = connecting.and_then(|fd| self.slots.get_mut(fd)) {
                    *slot = FdSlot::default();
                }
                self.watch_accepted(kind, &out);
                self.counters.op_mut(kind).errors += u64::from(result.is_err());
                done.push(Completion::new(token, kind, result, out));
            }
            // The socket was not ready (the disk part, if any, is done): wait for it — unless
            // an edge arrived while the call was on the helper, which would not come again.
            Step::WouldBlock(op) => {
                let job = Job {
                    token,
                    op,
                    parked,
                    helped: true,
                    internal: false,
                };
                if self.ready_flag(&job.op).is_some_and(|f| *f) {
                    self.retry(job, done);
                } else if let Err(c) = self.park(job) {
                    done.push(c);
                }
            }
            Step::Helper(op) => self.send_to_helper(Job {
                token,
                op,
                parked,
                helped: true,
                internal: false,
            }),
        }
    }
}
