//! The thread-per-connection model's engine: every operation runs to its end on the calling
//! thread, waiting for the socket with `poll` and for the disk in the call itself — as
//! Apache's worker threads do (seed 000's "Apache-like multi-process server").
//!
//! Why a separate executor and not a [`Backend`](super::Backend): a thread that serves one
//! connection has nothing else to do while it waits, so there is no loop to hand completions
//! to; it needs the operation's result, with the connection's deadline as the longest wait.
//! The system calls are the same as every backend's (`exec` in `Wait::Block` mode); only a
//! socket's `EAGAIN` turns into a `poll` here instead of a parked operation.
//!
//! Deferred event delivery (`--ecem ded`, seed 000 §3.2) for a body sent through the thread's
//! buffer ([`Op::Read`] naming the socket its bytes go to): the body is kept read ahead a
//! chunk beyond this one (`POSIX_FADV_WILLNEED`, which does not wait); when the socket has no
//! room for the chunk the thread waits for it (`POLLOUT`, which `TCP_NOTSENT_LOWAT` holds back
//! until less than half the mark is unsent), then reads the chunk — cached by then, unless the
//! disk is slower than the client — and the send that follows finds the room there.
//!
//! Invariants: a wait never outlasts the deadline it was given (the operation then fails with
//! `ETIMEDOUT` and gives its buffers back); an interruptible wait also ends when the stop
//! signal fires (`ECANCELED`), for a connection idle between requests at shutdown.

use std::io;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Instant;

use super::exec::{exec, Caps, Step};
use super::os::{self, Wait};
use super::zerocopy::ZeroCopy;
use super::Waker;
use crate::counters::Counters;
use crate::ecem::{EcemMode, PairTable};
use crate::op::{Completion, Interest, Op, Out, Token};

/// Runs operations to their end on the calling thread.
pub struct Blocking {
    stop: Arc<OwnedFd>,
    /// How long waits may go on once the stop signal fired, and until when they may.
    shutdown_timeout: std::time::Duration,
    hard_deadline: Option<Instant>,
    caps: Caps,
    counters: Counters,
    ded: bool,
    /// The `TCP_NOTSENT_LOWAT` the sockets carry (0: none): DED's measure of room.
    lowat: u64,
    /// Kept whatever the mode, so the baseline's counters say how often it read while the
    /// socket had no room (one `ioctl` per chunk read for a socket).
    pairs: PairTable,
    /// Zero-copy sends waiting for their notifications (`--data emulated`): read after each
    /// send, waited for before a close.
    zc: ZeroCopy,
}

/// How a wait for a socket ended.
enum Waited {
    Ready,
    Timeout,
    Stopped,
}

impl Blocking {
    /// The name of this model in counters.
    pub const NAME: &'static str = "threads";

    /// An executor whose interruptible waits end when `stop` is woken, and whose other waits
    /// end at most `shutdown_timeout` after that.
    pub fn new(
        stop: &Waker,
        ecem: EcemMode,
        notsent_lowat: u32,
        shutdown_timeout: std::time::Duration,
    ) -> Self {
        Blocking {
            stop: Arc::clone(&stop.0),
            shutdown_timeout,
            hard_deadline: None,
            caps: Caps::none(),
            counters: Counters::new(Self::NAME),
            ded: ecem.ded,
            lowat: u64::from(notsent_lowat),
            pairs: PairTable::new(),
            zc: ZeroCopy::default(),
        }
    }

    /// A stop signal for a set of threads: waking it ends their interruptible waits, and it
    /// stays signalled (nobody drains it).
    pub fn stop_signal() -> io::Result<Waker> {
        Ok(Waker(Arc::new(os::eventfd_new()?)))
    }

    /// How operations ran on this thread (`parked`: waited for the socket at least once), and
    /// the pair table's counters.
    pub fn counters(&self) -> Counters {
        let mut c = self.counters.clone();
        c.ecem = Some(self.pairs.counters);
        c.zerocopy = self.zc.counters();
        c
    }

    /// Run `op` to its end, waiting at most until `deadline` for its socket; `interruptible`:
    /// a wait also ends when the stop signal fires.
    pub fn run(
        &mut self,
        token: Token,
        mut op: Op,
        deadline: Option<Instant>,
        interruptible: bool,
    ) -> Completion {
        let kind = op.kind();
        self.counters.op_mut(kind).submitted += 1;
        if let Op::Close { fd } = &op {
            self.pairs.remove_net(super::correlate::key(fd));
            // The kernel may still read bytes of this socket's zero-copy sends: wait for its
            // word (or reset the connection after `LINGER`) before they can go.
            self.zc.close_after_notifications(fd);
        }
        if let Op::Readable { sock } = &op {
            // Nothing to read yet: wait for input (or the deadline, or the stop signal).
            let sock = Arc::clone(sock);
            return match self.wait(&sock, Interest::Read, deadline, interruptible) {
                Ok(Waited::Ready) => {
                    self.counters.op_mut(kind).parked += 1;
                    Completion::new(token, kind, Ok(0), Out::None)
                }
                Ok(Waited::Timeout) => {
                    self.fail(token, op, io::Error::from_raw_os_error(libc::ETIMEDOUT))
                }
                Ok(Waited::Stopped) => {
                    self.fail(token, op, io::Error::from_raw_os_error(libc::ECANCELED))
                }
                Err(e) => self.fail(token, op, e),
            };
        }
        let zc = self.zc.prepare(&mut op);
        let zc_sock = match &op {
            Op::Send { sock, .. } if zc => Some(Arc::clone(sock)),
            _ => None,
        };
        let mut pair = None;
        if let Op::Read {
            file,
            offset,
            len,
            to: Some(sock),
            ..
        } = &op
        {
            let now = Instant::now();
            let (p, go, ahead) = super::correlate::chunk_read(
                &mut self.pairs,
                self.ded,
                self.lowat,
                file,
                sock,
                *offset,
                *len as u64,
                now,
            );
            // This thread has nothing else to do: the hint is given here.
            if let Some(ahead) = ahead {
                let took = ahead.run();
                self.pairs.counters.prefetch_took(took);
            }
            pair = Some(p);
            if !go {
                // No room: hold the read (the disk works on the read-ahead meanwhile).
                let waited = self.wait(sock, Interest::Write, deadline, false);
                self.pairs.deliver(p, Instant::now());
                self.pairs.update(p, None, Some(true));
                let e = match waited {
                    Ok(Waited::Ready) => None,
                    Ok(Waited::Timeout | Waited::Stopped) => {
                        Some(io::Error::from_raw_os_error(libc::ETIMEDOUT))
                    }
                    Err(e) => Some(e),
                };
                if let Some(e) = e {
                    return self.fail(token, op, e);
                }
            }
        }
        let mut waited = false;
        loop {
            match exec(op, Wait::Block, &mut self.caps) {
                Step::Done(result, out) => {
                    if let (Some(sock), Ok(n), Out::Gather(bufs)) = (&zc_sock, &result, &out) {
                        if *n > 0 {
                            self.zc.sent(sock, bufs, *n);
                        }
                        self.zc.drain(sock);
                    }
                    // A chunk read: the pair's disk side is done.
                    if let (Some(p), true) = (pair, result.is_ok()) {
                        self.pairs.update(p, Some(true), None);
                    }
                    let c = self.counters.op_mut(kind);
                    if waited {
                        c.parked += 1;
                    } else {
                        c.inline += 1;
                    }
                    c.errors += u64::from(result.is_err());
                    return Completion::new(token, kind, result, out);
                }
                // Blocking mode never sends a call elsewhere; a socket that is not ready is
                // waited for here.
                Step::WouldBlock(o) | Step::Helper(o) => {
                    let Some((sock, interest)) = o.socket_interest() else {
                        return self.fail(token, o, io::ErrorKind::Unsupported.into());
                    };
                    match self.wait(sock, interest, deadline, interruptible) {
                        Ok(Waited::Ready) => {
                            waited = true;
                            op = o;
                        }
                        Ok(Waited::Timeout) => {
                            return self.fail(
                                token,
                                o,
                                io::Error::from_raw_os_error(libc::ETIMEDOUT),
                            )
                        }
                        Ok(Waited::Stopped) => {
                            let e = io::Error::from_raw_os_error(libc::ECANCELED);
                            return self.fail(token, o, e);
                        }
                        Err(e) => return self.fail(token, o, e),
                    }
                }
            }
        }
    }

    /// The stop signal fired (seen by one of this thread's waits).
    pub fn stopping(&self) -> bool {
        self.hard_deadline.is_some()
    }

    /// Wait for `sock`. Until the stop signal fires, every wait also watches it; once it has,
    /// an interruptible wait ends at once and the others are cut at the shutdown deadline
    /// (the signal stays readable, so it is not watched again).
    fn wait(
        &mut self,
        sock: &OwnedFd,
        interest: Interest,
        deadline: Option<Instant>,
        interruptible: bool,
    ) -> io::Result<Waited> {
        self.counters.wakeups += 1;
        loop {
            if self.hard_deadline.is_some() && interruptible {
                return Ok(Waited::Stopped);
            }
            let now = Instant::now();
            let until = match (deadline, self.hard_deadline) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let left = match until {
                Some(d) if d <= now => return Ok(Waited::Timeout),
                Some(d) => Some(d - now),
                None => None,
            };
            let stop = self.hard_deadline.is_none().then_some(&*self.stop);
            match os::wait_socket(sock, interest == Interest::Write, stop, left)? {
                os::SocketWait::Ready => return Ok(Waited::Ready),
                os::SocketWait::Stopped => {
                    self.hard_deadline = Some(Instant::now() + self.shutdown_timeout);
                }
                // A timeout or a signal: the loop checks the deadline.
                os::SocketWait::Nothing => {}
            }
        }
    }

    fn fail(&mut self, token: Token, op: Op, e: io::Error) -> Completion {
        let kind = op.kind();
        self.counters.op_mut(kind).errors += 1;
        Completion::new(token, kind, Err(e), op.into_out())
    }
}
