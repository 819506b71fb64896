//! `lazy` backend: try each call without blocking; only a call that would block goes to a
//! helper thread (seed 001's lazy asynchronous I/O, built from today's non-blocking file calls).
//!
//! - open: `openat2(RESOLVE_CACHED)` — `EAGAIN` when the lookup needs the disk;
//! - read: `preadv2(RWF_NOWAIT)` — `EAGAIN` when the first page is not cached;
//! - sendfile: inline only when `cachestat(2)` says the whole window is cached;
//! - sockets: non-blocking, parked on epoll readiness (never a helper).
//!
//! Why: most requests hit the page cache, where a thread hop costs more than the call itself;
//! only the rare miss should pay for a thread. Invariant: the event loop never waits on the
//! disk, whatever the kernel supports — a missing feature sends that operation to the helpers
//! instead (probed once per process at start-up, logged in one line each).

use std::sync::OnceLock;

use super::exec::{exec, Caps, Step};
use super::os::{self, Wait};
use super::reactor::{Policy, Readiness, SocketReady};
use super::EngineConfig;
use crate::op::{Attempt, Op};
use crate::Error;

/// The `lazy` policy.
pub struct Lazy {
    caps: Caps,
}

/// The `lazy` backend.
pub type LazyBackend = Readiness<Lazy>;

static PROBED: OnceLock<Caps> = OnceLock::new();

impl Policy for Lazy {
    const NAME: &'static str = "lazy";
    const CALL_ON_LOOP: Option<Attempt> = Some(Attempt::NoWait);

    fn new(config: &EngineConfig) -> Result<Self, Error> {
        let caps = *PROBED.get_or_init(|| probe(config));
        Ok(Lazy { caps })
    }

    #[inline]
    fn start(&mut self, op: Op, _ready: SocketReady) -> Step {
        let step = exec(op, Wait::NoWait, &mut self.caps);
        if let Step::Helper(_) = &step {
            self.caps.last_miss = Some(std::time::Instant::now());
        }
        step
    }
}

/// What this kernel and the document root's file system let the loop try without blocking.
fn probe(config: &EngineConfig) -> Caps {
    let mut caps = Caps {
        nowait_read: true,
        nowait_write: true,
        cached_open: true,
        cachestat: true,
        mincore: false,
        last_miss: None,
    };
    let ((major, minor), release) = os::kernel_version();
    let version = (major, minor);
    if version < (4, 14) {
        caps.nowait_read = false;
        caps.nowait_write = false;
        tracing::warn!(
            "lazy: Linux {release} lacks RWF_NOWAIT (4.14+): file reads go to helper threads"
        );
    } else if version == (5, 9) || version == (5, 10) {
        caps.nowait_read = false;
        tracing::warn!(
            "lazy: Linux {release} can return wrong short reads with RWF_NOWAIT (5.9/5.10 bug): \
             file reads go to helper threads"
        );
    }

    let fallback_dir = os::open_absolute(c"/").ok();
    let dir = config.probe_dir.as_deref().or(fallback_dir.as_ref());
    if let Some(dir) = dir {
        if let Err(e) = os::open(dir, c".", true, Wait::NoWait) {
            if e.kind() != std::io::ErrorKind::WouldBlock {
                caps.cached_open = false;
                tracing::warn!(
                    "lazy: openat2(RESOLVE_CACHED) failed ({e}; needs Linux 5.12): opens go to helper threads"
                );
            }
        }
    }

    // A regular file of the document root's file system, else our own executable.
    let from_root = config.probe_dir.as_deref().and_then(os::first_regular_file);
    let probed_root = from_root.is_some();
    if probed_root && os::NOATIME_REFUSED.load(std::sync::atomic::Ordering::Relaxed) > 0 {
        tracing::warn!(
            "lazy: files of the document root cannot be opened with O_NOATIME (lair does not own \
             them): reading a file may update its access time, which can wait for the disk in \
             the event loop; mount the root with noatime, or run lair as the files' owner"
        );
    }
    let file = from_root.or_else(|| os::open_absolute(c"/proc/self/exe").ok());
    if let Some(file) = &file {
        match os::cached_pages(file, 0, 1) {
            Ok(_) => {}
            // cachestat wants the file's owner (or a file open for writing, or
            // CAP_SYS_ADMIN): a server of someone else's files reads residency with mincore.
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
                match os::cached_pages_mincore(file, 0, 1) {
                    Ok(_) => {
                        caps.mincore = true;
                        tracing::info!("{}", super::exec::CACHESTAT_REFUSED);
                    }
                    Err(m) => {
                        caps.cachestat = false;
                        tracing::warn!(
                            "lazy: cachestat(2) refused ({e}) and mincore(2) failed ({m}): \
                         sendfile always goes to a helper thread"
                        );
                    }
                }
            }
            Err(e) => {
                caps.cachestat = false;
                let why = if e.raw_os_error() == Some(libc::ENOSYS) {
                    "needs Linux 6.5"
                } else {
                    "unexpected"
                };
                tracing::warn!(
                    "lazy: cachestat(2) failed ({e}; {why}): sendfile always goes to a helper thread"
                );
            }
        }
        if probed_root && caps.nowait_read {
            let mut b = crate::buf::BufMut::Vec(Vec::with_capacity(1));
            if let Err(e) = os::read(file, 0, 1, &mut b, Wait::NoWait) {
                if e.raw_os_error() == Some(libc::EOPNOTSUPP) {
                    caps.nowait_read = false;
                    tracing::warn!(
                        "lazy: the document root's file system does not support RWF_NOWAIT: \
                         file reads go to helper threads"
                    );
                }
            }
        }
    }
    tracing::info!(
        "lazy: Linux {release}; inline attempts: openat2(RESOLVE_CACHED) {}, preadv2(RWF_NOWAIT) {}, sendfile residency {}",
        yes(caps.cached_open),
        yes(caps.nowait_read),
        match (caps.cachestat, caps.mincore) {
            (false, _) => "none",
            (true, false) => "cachestat",
            (true, true) => "mincore",
        }
    );
    caps
}

fn yes(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no (helper)"
    }
}
