//! Running one operation, in one of two modes: without waiting for the disk (the lazy
//! attempt) or blocking (the `sync` loop and the helper threads).
//!
//! Why one function: `sync`, `lazy` and the helpers must run the very same system calls, so
//! the only difference between backends is *where* a call runs and whether it may wait.
//! Sockets are never waited on here: an `EAGAIN` from a socket is [`Step::WouldBlock`] and the
//! reactor parks the operation until epoll reports readiness.

use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::datapath;
use super::os::{self, Wait};
use crate::op::{Attempt, Call, Op, Out};

/// What became of an attempt.
pub enum Step {
    /// Finished: the system call's result and what it gives back.
    Done(io::Result<usize>, Out),
    /// The socket side is not ready: park until epoll says so, then try again.
    WouldBlock(Op),
    /// It would wait for the disk: run it on a helper thread.
    Helper(Op),
}

/// Which non-blocking file calls this kernel and file system support (probed at start-up,
/// narrowed at run time when a call reports `EOPNOTSUPP`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Caps {
    /// `preadv2(RWF_NOWAIT)` on regular files.
    pub nowait_read: bool,
    /// `pwritev2(RWF_NOWAIT)`.
    pub nowait_write: bool,
    /// `openat2(RESOLVE_CACHED)`.
    pub cached_open: bool,
    /// A residency check, to know whether a `sendfile` would wait for the disk: `cachestat(2)`,
    /// or `mincore(2)` when `mincore` is set.
    pub cachestat: bool,
    /// `cachestat` refused (`EPERM`: not the files' owner): residency is read with `mincore`.
    pub mincore: bool,
    /// Not a capability: when a call last had to go to a helper because it would have waited
    /// for the disk. Pages can be on their way from the disk only while such calls happen, so
    /// only then is `cachestat`'s answer checked with a read (see [`os::range_cached`]).
    pub last_miss: Option<Instant>,
}

/// The smallest pipe a splice asks for: the default pipe size (16 pages); larger windows
/// get pipes as large as the window (`F_SETPIPE_SZ`, up to `pipe-max-size`).
const PIPE_BYTES: usize = 64 << 10;

/// How long after the last miss a read may still be in flight.
const IN_FLIGHT_FOR: Duration = Duration::from_secs(10);

impl Caps {
    /// Whether the disk was needed lately (reads may still be under way).
    fn missed_lately(&self) -> bool {
        self.last_miss.is_some_and(|t| t.elapsed() < IN_FLIGHT_FOR)
    }

    /// No non-blocking file call at all: every file call in `NoWait` mode goes to a helper.
    pub fn none() -> Self {
        Caps {
            nowait_read: false,
            nowait_write: false,
            cached_open: false,
            cachestat: false,
            mincore: false,
            last_miss: None,
        }
    }
}

fn would_block(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock
}

fn unsupported(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::EOPNOTSUPP)
}

/// Run `op` once. With [`Wait::NoWait`], a file call that would wait for the disk returns
/// [`Step::Helper`] (and a feature found missing at run time is switched off in `caps`, with
/// one log line).
#[inline]
pub(crate) fn exec(op: Op, wait: Wait, caps: &mut Caps) -> Step {
    let nowait = wait == Wait::NoWait;
    match op {
        Op::Connect {
            addr,
            recv_buffer,
            sock: None,
        } => match os::connect_start(addr, recv_buffer) {
            Ok((fd, true)) => Step::Done(Ok(0), Out::Conn(Arc::new(fd), Some(addr))),
            Ok((fd, false)) => Step::WouldBlock(Op::Connect {
                addr,
                recv_buffer,
                sock: Some(Arc::new(fd)),
            }),
            Err(e) => Step::Done(Err(e), Out::None),
        },
        Op::Connect {
            addr,
            recv_buffer,
            sock: Some(sock),
        } => match os::connect_finished(&sock) {
            Ok(true) => Step::Done(Ok(0), Out::Conn(sock, Some(addr))),
            Ok(false) => Step::WouldBlock(Op::Connect {
                addr,
                recv_buffer,
                sock: Some(sock),
            }),
            Err(e) => Step::Done(Err(e), Out::None),
        },
        Op::Accept { listener } => match os::accept(&listener) {
            Ok((fd, peer)) => Step::Done(Ok(0), Out::Conn(Arc::new(fd), peer)),
            Err(e) if would_block(&e) => Step::WouldBlock(Op::Accept { listener }),
            Err(e) => Step::Done(Err(e), Out::None),
        },
        Op::Recv {
            sock,
            mut buf,
            max,
            poll_first,
        } => match os::recv(&sock, &mut buf, max) {
            Ok(n) => Step::Done(Ok(n), Out::Buf(buf)),
            Err(e) if would_block(&e) => Step::WouldBlock(Op::Recv {
                sock,
                buf,
                max,
                poll_first,
            }),
            Err(e) => Step::Done(Err(e), Out::Buf(buf)),
        },
        Op::Send {
            sock,
            bufs,
            from,
            more,
            zerocopy,
        } => match os::send(&sock, &bufs, from, more, zerocopy) {
            Ok(n) => Step::Done(Ok(n), Out::Gather(bufs)),
            Err(e) if would_block(&e) => Step::WouldBlock(Op::Send {
                sock,
                bufs,
                from,
                more,
                zerocopy,
            }),
            Err(e) => Step::Done(Err(e), Out::Gather(bufs)),
        },
        Op::Sendfile {
            sock,
            file,
            offset,
            len,
            via,
        } => {
            // Inline only if all of the caller's window (`len`, sized by `--sendfile-chunk`)
            // is cached: a partly cached window would wait for the disk. Bytes a splice's
            // pipe already holds need no disk, but the rest of the window may.
            if nowait {
                let cached = caps.cachestat && residency(caps, &file, offset, len as u64);
                if !cached {
                    return Step::Helper(Op::Sendfile {
                        sock,
                        file,
                        offset,
                        len,
                        via,
                    });
                }
            }
            let window = len.max(PIPE_BYTES);
            match datapath::transfer(via, &sock, &file, offset, len, window) {
                (Ok(n), via) => Step::Done(Ok(n), Out::Via(via)),
                (Err(e), via) if would_block(&e) => Step::WouldBlock(Op::Sendfile {
                    sock,
                    file,
                    offset,
                    len,
                    via,
                }),
                (Err(e), via) => Step::Done(Err(e), Out::Via(via)),
            }
        }
        Op::Shutdown { sock } => Step::Done(os::shutdown_write(&sock).map(|()| 0), Out::None),
        Op::Close { fd } => {
            drop(fd);
            Step::Done(Ok(0), Out::None)
        }
        Op::Open {
            dir,
            path,
            beneath,
            prefetch,
        } => {
            if nowait && !caps.cached_open {
                return Step::Helper(Op::Open {
                    dir,
                    path,
                    beneath,
                    prefetch,
                });
            }
            match os::open(&dir, &path, beneath, wait) {
                Ok(fd) => Step::Done(Ok(0), Out::File(fd)),
                Err(e) if nowait && would_block(&e) => Step::Helper(Op::Open {
                    dir,
                    path,
                    beneath,
                    prefetch,
                }),
                Err(e) => Step::Done(Err(e), Out::None),
            }
        }
        Op::Stat { file } => match os::stat(&file) {
            Ok(st) => Step::Done(Ok(0), Out::Stat(st)),
            Err(e) => Step::Done(Err(e), Out::None),
        },
        Op::Read {
            file,
            offset,
            len,
            mut buf,
            to,
        } => {
            if nowait && !caps.nowait_read {
                return Step::Helper(Op::Read {
                    file,
                    offset,
                    len,
                    buf,
                    to,
                });
            }
            match os::read(&file, offset, len, &mut buf, wait) {
                Ok(n) => Step::Done(Ok(n), Out::Buf(buf)),
                Err(e) if nowait && (would_block(&e) || unsupported(&e)) => {
                    if unsupported(&e) {
                        caps.nowait_read = false;
                        tracing::warn!(
                            "lazy: preadv2(RWF_NOWAIT) is not supported on this file system; \
                             file reads now always go to a helper thread"
                        );
                    }
                    Step::Helper(Op::Read {
                        file,
                        offset,
                        len,
                        buf,
                        to,
                    })
                }
                Err(e) => Step::Done(Err(e), Out::Buf(buf)),
            }
        }
        Op::Write { file, offset, bufs } => {
            if nowait && !caps.nowait_write {
                return Step::Helper(Op::Write { file, offset, bufs });
            }
            match os::write(&file, offset, &bufs, wait) {
                Ok(n) => Step::Done(Ok(n), Out::Gather(bufs)),
                Err(e) if nowait && (would_block(&e) || unsupported(&e)) => {
                    if unsupported(&e) {
                        caps.nowait_write = false;
                        tracing::info!(
                            "lazy: pwritev2(RWF_NOWAIT) is not supported here; \
                             file writes now always go to a helper thread"
                        );
                    }
                    Step::Helper(Op::Write { file, offset, bufs })
                }
                Err(e) => Step::Done(Err(e), Out::Gather(bufs)),
            }
        }
        // Readiness is the caller's to know (the reactor parks it on the socket until an edge;
        // the thread model polls first): here it is done.
        Op::Readable { .. } => Step::Done(Ok(0), Out::None),
        Op::Call(mut f) => {
            let attempt = if nowait {
                Attempt::NoWait
            } else {
                Attempt::MayBlock
            };
            match call_once(&mut f, attempt) {
                Some(r) => Step::Done(r, Out::None),
                None => Step::Helper(Op::Call(f)),
            }
        }
    }
}

/// Why residency is read with `mincore` (said once, by the probe or at the first `EPERM`).
pub(crate) const CACHESTAT_REFUSED: &str = "lazy: cachestat(2) refused (EPERM: lair does not own \
     the files and has them open read-only); page-cache residency is checked with mincore(2) \
     instead";

/// Whether `len` bytes of `file` from `offset` are cached and readable now. A file this
/// process may not `cachestat` (`EPERM`: not its owner) switches the check to `mincore` for
/// good, with one log line; any other failure counts as "not cached" (the helper runs it).
fn residency(caps: &mut Caps, file: &std::os::fd::OwnedFd, offset: u64, len: u64) -> bool {
    let lately = caps.missed_lately();
    match os::range_cached(file, offset, len, lately, caps.mincore) {
        Ok(cached) => cached,
        Err(e) if e.raw_os_error() == Some(libc::EPERM) && !caps.mincore => {
            caps.mincore = true;
            tracing::info!("{CACHESTAT_REFUSED}");
            matches!(os::range_cached(file, offset, len, lately, true), Ok(true))
        }
        Err(_) => false,
    }
}

/// Run a generic call once; `None`: it would block (only asked with [`Attempt::NoWait`]).
/// Always inlined, so a backend's short path for calls adds no frame (see
/// `Readiness::submit_call`).
#[inline(always)]
pub(crate) fn call_once(f: &mut Call, attempt: Attempt) -> Option<io::Result<usize>> {
    match f(attempt) {
        Ok(v) => Some(Ok(usize::try_from(v).unwrap_or(usize::MAX))),
        Err(e) if attempt == Attempt::NoWait && would_block(&e) => None,
        Err(e) => Some(Err(e)),
    }
}
