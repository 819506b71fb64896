//! The kernel-side data paths of [`Op::Sendfile`](crate::Op::Sendfile): how a file's bytes
//! reach a socket without passing through a buffer the server fills (seed 004's modes that
//! keep the data in the kernel).
//!
//! - [`Via::Sendfile`]: `sendfile(2)`, page references from the page cache to the socket;
//! - [`Via::Splice`]: `splice(2)` file → pipe → socket through a [`Pipe`] the operation carries
//!   (nginx and HAProxy's splicing; the pipe holds what the socket could not take yet, so it
//!   travels with the operation and comes back in the completion);
//! - [`Via::Mapped`]: `send(2)` from a shared read-only mapping of the file ([`Mapping`],
//!   seed 004's *share*: one copy, page cache → socket buffer, in the kernel);
//! - [`Via::Move`]: seed 004's *move*: the bytes are read into fresh anonymous pages, which
//!   are then given to a pipe (`vmsplice(SPLICE_F_GIFT)`) and unmapped — the process keeps no
//!   way to touch them, so there is nothing to protect — and spliced to the socket, which
//!   takes the pages themselves. One copy (page cache → the pages), and the price of move:
//!   a mapping made, faulted in and torn down for every pipeful.
//!
//! Why here: each path is a few raw system calls, and what goes wrong with them is the
//! kernel's business — a pipe the user's `pipe-user-pages-soft` clamps to one page, a file
//! system that cannot be mapped, a file cut short while mapped. Each has a defined answer
//! here: the operation runs as a plain `sendfile` instead, counted in [`DataPathCounts`]
//! (a clamped pipe is not worth 4 KiB per system call pair), or it fails with the error the
//! kernel gave, which ends the connection.
//!
//! **A mapped file cut short.** Touching a mapped page past the file's end raises `SIGBUS`.
//! lair never touches the mapping in user space: only `send(2)` reads it, inside the kernel,
//! where such a fault is an `EFAULT` (a short send, then an error), not a signal. So a file
//! truncated while being sent from its mapping ends the response early and closes the
//! connection, as `sendfile` does; the test `share_survives_a_file_cut_short` does it.

#![allow(unsafe_code)]

use std::ffi::c_void;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use rustix::io::Errno;
use rustix::pipe::{self as rpipe, PipeFlags, SpliceFlags};

use super::os;

/// How an [`Op::Sendfile`](crate::Op::Sendfile) moves its bytes. Given back in the completion
/// ([`Out::Via`](crate::Out::Via)) with what it carries.
#[derive(Debug, Default)]
pub enum Via {
    /// `sendfile(2)`.
    #[default]
    Sendfile,
    /// `splice(2)` through this pipe (`None`: the engine makes one, or falls back to
    /// `sendfile` if it cannot).
    Splice(Option<Pipe>),
    /// Read into fresh pages, give them to this pipe and unmap them, then splice (`None`:
    /// the engine makes a pipe, or falls back to `sendfile`).
    Move(Option<Pipe>),
    /// `send(2)` from a shared mapping of the whole file (`None`: the engine maps
    /// `file_len` bytes of it, or falls back to `sendfile` if it cannot).
    Mapped {
        /// The mapping, shared by every response for the same file.
        map: Option<Arc<Mapping>>,
        /// The file's length when its response began (what the mapping covers).
        file_len: u64,
    },
}

/// What the data paths did, process-wide (`--stats-json` `datapath`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct DataPathCounts {
    /// Pipes made for splicing.
    pub pipes_made: u64,
    /// Splices run as `sendfile` instead: no pipe could be made (descriptors ran out), or the
    /// kernel clamped it below [`Pipe::MIN_BYTES`] (`pipe-user-pages-soft`).
    pub splice_fallbacks: u64,
    /// Files mapped for sending from the mapping.
    pub maps_made: u64,
    /// Mapped sends run as `sendfile` instead (the file could not be mapped).
    pub map_fallbacks: u64,
    /// Pipefuls moved (read into fresh pages, gifted, unmapped).
    pub moves: u64,
}

static PIPES_MADE: AtomicU64 = AtomicU64::new(0);
static SPLICE_FALLBACKS: AtomicU64 = AtomicU64::new(0);
static MAPS_MADE: AtomicU64 = AtomicU64::new(0);
static MAP_FALLBACKS: AtomicU64 = AtomicU64::new(0);
static MOVES: AtomicU64 = AtomicU64::new(0);

/// A snapshot of [`DataPathCounts`].
pub fn counts() -> DataPathCounts {
    DataPathCounts {
        pipes_made: PIPES_MADE.load(Relaxed),
        splice_fallbacks: SPLICE_FALLBACKS.load(Relaxed),
        maps_made: MAPS_MADE.load(Relaxed),
        map_fallbacks: MAP_FALLBACKS.load(Relaxed),
        moves: MOVES.load(Relaxed),
    }
}

fn io_err(e: Errno) -> io::Error {
    io::Error::from_raw_os_error(e.raw_os_error())
}

/// A non-blocking pipe for splicing, and how many bytes of the transfer it holds: the bytes
/// at the operation's `offset` onwards, already read from the file, not yet taken by the
/// socket.
#[derive(Debug)]
pub struct Pipe {
    r: OwnedFd,
    w: OwnedFd,
    cap: usize,
    held: usize,
}

impl Pipe {
    /// The smallest pipe worth splicing through: a pipe the kernel clamped below this (a user
    /// past `pipe-user-pages-soft` gets one page) would cost two system calls per page.
    pub const MIN_BYTES: usize = 16 << 10;

    /// A pipe of `want` bytes if the kernel allows (`F_SETPIPE_SZ`; up to `pipe-max-size`),
    /// else the size it gives. `None` (counted, logged once) if it cannot be made or is
    /// smaller than [`Pipe::MIN_BYTES`].
    pub(crate) fn new(want: usize) -> Option<Pipe> {
        let made = rpipe::pipe_with(PipeFlags::NONBLOCK | PipeFlags::CLOEXEC);
        let (r, w) = match made {
            Ok(p) => p,
            Err(e) => {
                fallback_once(&SPLICE_FALLBACKS, &format!("no pipe ({e})"));
                return None;
            }
        };
        // `EPERM` past `pipe-user-pages-hard` or above `pipe-max-size`: keep what it has.
        let _ = rpipe::fcntl_setpipe_size(&w, want);
        let cap = rpipe::fcntl_getpipe_size(&w).unwrap_or(0);
        if cap < Self::MIN_BYTES {
            fallback_once(
                &SPLICE_FALLBACKS,
                &format!("the kernel clamped a pipe to {cap} bytes (pipe-user-pages-soft)"),
            );
            return None;
        }
        PIPES_MADE.fetch_add(1, Relaxed);
        Some(Pipe { r, w, cap, held: 0 })
    }

    /// Bytes of the transfer the pipe holds (read from the file, not yet sent).
    pub fn held(&self) -> usize {
        self.held
    }

    /// Its capacity.
    pub fn capacity(&self) -> usize {
        self.cap
    }
}

/// Count a fallback, and say why the first time.
fn fallback_once(counter: &AtomicU64, why: &str) {
    if counter.fetch_add(1, Relaxed) == 0 {
        tracing::warn!("data path: {why}; sending with sendfile instead (counted in stats)");
    }
}

/// Move up to `len` bytes of `file` from `offset` to `sock` through `pipe`: first what the
/// pipe already holds (the bytes at `offset`), else a fresh pipeful — spliced from the file,
/// or with `gift` read into fresh pages that are gifted to the pipe and unmapped (seed 004's
/// move). Returns the bytes the socket took; what it did not take stays in the pipe. `Ok(0)`:
/// the file ended before `offset`.
fn through(
    gift: bool,
    sock: &OwnedFd,
    file: &OwnedFd,
    offset: u64,
    len: usize,
    pipe: &mut Pipe,
) -> io::Result<usize> {
    if pipe.held == 0 {
        let want = len.min(pipe.cap);
        let n = if gift {
            gift_pages(file, offset, want, pipe)?
        } else {
            let mut off = offset;
            rpipe::splice(
                file,
                Some(&mut off),
                &pipe.w,
                None,
                want,
                SpliceFlags::NONBLOCK | SpliceFlags::MOVE,
            )
            .map_err(io_err)?
        };
        if n == 0 {
            return Ok(0);
        }
        if gift {
            MOVES.fetch_add(1, Relaxed);
        }
        pipe.held = n;
    }
    let n = rpipe::splice(
        &pipe.r,
        None,
        sock,
        None,
        pipe.held.min(len),
        SpliceFlags::NONBLOCK | SpliceFlags::MOVE,
    )
    .map_err(io_err)?;
    pipe.held -= n;
    Ok(n)
}

/// Read up to `want` bytes of `file` at `offset` into fresh anonymous pages, give them to
/// `pipe` (empty, with room for them) and unmap them. Returns the bytes now in the pipe.
fn gift_pages(file: &OwnedFd, offset: u64, want: usize, pipe: &Pipe) -> io::Result<usize> {
    let page = rustix::param::page_size();
    let len = want.div_ceil(page).max(1) * page;
    // SAFETY: a fresh private anonymous mapping at an address the kernel chooses: it replaces
    // no memory, and nothing else refers to it.
    let base = unsafe {
        rustix::mm::mmap_anonymous(
            std::ptr::null_mut(),
            len,
            rustix::mm::ProtFlags::READ | rustix::mm::ProtFlags::WRITE,
            rustix::mm::MapFlags::PRIVATE | rustix::mm::MapFlags::POPULATE,
        )
    }
    .map_err(io_err)?;
    let result = (|| {
        // SAFETY: `base` is a live, writable mapping of `len >= want` bytes that only this
        // function refers to, until it is unmapped below.
        let region = unsafe { std::slice::from_raw_parts_mut(base.cast::<u8>(), want) };
        let n = rustix::io::pread(file, &mut *region, offset).map_err(io_err)?;
        if n == 0 {
            return Ok(0);
        }
        // The region is page-aligned and whole pages but for the tail, which the kernel pins
        // instead of stealing (no copy either way).
        let iov = [rpipe::IoSliceRaw::from_slice(&region[..n])];
        // SAFETY: the pages go to the pipe's write end and are unmapped right after, never
        // written again by this process, as `SPLICE_F_GIFT` requires.
        let moved = unsafe { rpipe::vmsplice(&pipe.w, &iov, SpliceFlags::GIFT) }.map_err(io_err)?;
        Ok(moved)
    })();
    // SAFETY: `base`/`len` are what `mmap_anonymous` returned; the pipe holds references to
    // the pages it was given, which outlive the mapping.
    let _ = unsafe { rustix::mm::munmap(base, len) };
    result
}

/// A shared, read-only mapping of a file's first `len` bytes. Never read in user space (see
/// the module docs): only the kernel reads it, on behalf of `send`.
#[derive(Debug)]
pub struct Mapping {
    base: NonNull<c_void>,
    len: usize,
}

// SAFETY: the mapping is plain shared memory that no one writes through (`PROT_READ`) and
// this process never reads: only its address travels, to the kernel. Any thread may hold it
// and unmap it when the last reference goes.
unsafe impl Send for Mapping {}
// SAFETY: as above; no interior state changes after `new`.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Map `len` bytes of `file` (`mmap(PROT_READ, MAP_SHARED)`). `None` (counted, logged
    /// once) if it cannot be mapped (an empty file, a file system without `mmap`, no address
    /// space).
    pub(crate) fn new(file: &OwnedFd, len: u64) -> Option<Mapping> {
        let len = usize::try_from(len).ok().filter(|&l| l > 0)?;
        // SAFETY: a fresh mapping at an address the kernel chooses, so no existing memory is
        // replaced; it is only ever handed to the kernel, never dereferenced here.
        let mapped = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                len,
                rustix::mm::ProtFlags::READ,
                rustix::mm::MapFlags::SHARED,
                file,
                0,
            )
        };
        match mapped.ok().and_then(NonNull::new) {
            Some(base) => {
                MAPS_MADE.fetch_add(1, Relaxed);
                Some(Mapping { base, len })
            }
            None => {
                fallback_once(&MAP_FALLBACKS, "a file could not be mapped");
                None
            }
        }
    }

    /// Bytes mapped.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is mapped (never: an empty file is not mapped).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `base`/`len` are what `mmap` returned; this is the last reference (its `Arc`
        // is gone), so nothing hands the range to the kernel any more.
        let _ = unsafe { rustix::mm::munmap(self.base.as_ptr(), self.len) };
    }
}

/// `send(MSG_NOSIGNAL)` of up to `len` bytes of the mapping from `offset` (bounded by what is
/// mapped; `Ok(0)` past its end). A page past the file's current end is an `EFAULT` from the
/// kernel, never a signal (see the module docs).
fn send_mapped(sock: &OwnedFd, map: &Mapping, offset: u64, len: usize) -> io::Result<usize> {
    let Some(start) = usize::try_from(offset).ok().filter(|&o| o < map.len) else {
        return Ok(0);
    };
    // Only the kernel reads the bytes, and it checks every page (one past the file's end is
    // `EFAULT`); no Rust reference to them is made.
    let n = len.min(map.len - start);
    // SAFETY: `start + n <= map.len`: the range lies inside the mapping, which the caller's
    // `Arc` keeps mapped for the call.
    let r = unsafe {
        libc::send(
            sock.as_raw_fd(),
            map.base.as_ptr().cast::<u8>().add(start).cast::<c_void>(),
            n,
            libc::MSG_NOSIGNAL,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as usize)
    }
}

/// Run one transfer by `via`: the bytes the socket took, and the `Via` to give back (with its
/// pipe or mapping, made here if it had none and could be made). A pipe or mapping that
/// cannot be made runs this transfer as `sendfile` (counted).
pub(crate) fn transfer(
    via: Via,
    sock: &OwnedFd,
    file: &OwnedFd,
    offset: u64,
    len: usize,
    window: usize,
) -> (io::Result<usize>, Via) {
    let gift = matches!(via, Via::Move(_));
    match via {
        Via::Sendfile => (os::sendfile(sock, file, offset, len), Via::Sendfile),
        Via::Splice(pipe) | Via::Move(pipe) => {
            let wrap = if gift { Via::Move } else { Via::Splice };
            match pipe.or_else(|| Pipe::new(window)) {
                Some(mut p) => {
                    let r = through(gift, sock, file, offset, len, &mut p);
                    (r, wrap(Some(p)))
                }
                None => (os::sendfile(sock, file, offset, len), wrap(None)),
            }
        }
        Via::Mapped { map, file_len } => {
            let map = map.or_else(|| Mapping::new(file, file_len).map(Arc::new));
            match map {
                Some(m) => {
                    let r = send_mapped(sock, &m, offset, len);
                    (
                        r,
                        Via::Mapped {
                            map: Some(m),
                            file_len,
                        },
                    )
                }
                None => (
                    os::sendfile(sock, file, offset, len),
                    Via::Mapped {
                        map: None,
                        file_len,
                    },
                ),
            }
        }
    }
}
