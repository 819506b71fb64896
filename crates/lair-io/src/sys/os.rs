//! The system calls of the readiness-based backends (`sync`, `lazy`), one thin function each.
//!
//! Why one file: every way lair touches the kernel for these backends is listed here, with its
//! flags, so a reader can audit it and a new backend can reuse it. Almost everything goes
//! through rustix's safe wrappers; the two raw system calls — `cachestat`, which neither rustix
//! nor libc wrap, and `preadv2` into a buffer's spare capacity, which rustix's initialised-slice
//! wrapper cannot do — carry `SAFETY:` notes.
//!
//! Socket calls here never block: sockets are created non-blocking and an `EAGAIN` is returned
//! to the caller, who parks the operation until epoll reports readiness.

#![allow(unsafe_code)]

use std::ffi::CStr;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::time::{Duration, UNIX_EPOCH};

use rustix::event::epoll;
use rustix::fs::{self as rfs, Mode, OFlags, ResolveFlags};
use rustix::io::{Errno, ReadWriteFlags};
use rustix::net::{self as rnet, RecvFlags, SendFlags, SocketFlags};

use super::buf::{BufMut, Gather, GATHER_MAX};
use crate::op::{FileStat, FileType};

/// How a file call may run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Wait {
    /// Fail with `EAGAIN` instead of waiting for the disk.
    NoWait,
    /// Block if needed.
    Block,
}

fn io_err(e: Errno) -> io::Error {
    io::Error::from_raw_os_error(e.raw_os_error())
}

// ---- sockets -------------------------------------------------------------------------------

/// `accept4(SOCK_NONBLOCK | SOCK_CLOEXEC)`, then `TCP_NODELAY` (responses are written whole, so
/// Nagle only delays the last segment).
pub(crate) fn accept(listener: &OwnedFd) -> io::Result<(OwnedFd, Option<SocketAddr>)> {
    let (fd, peer) = rnet::acceptfrom_with(listener, SocketFlags::NONBLOCK | SocketFlags::CLOEXEC)
        .map_err(io_err)?;
    // A Unix-domain listener has no TCP options; ignore the error there.
    let _ = rnet::sockopt::set_tcp_nodelay(&fd, true);
    let peer = peer.and_then(|a| SocketAddr::try_from(a).ok());
    Ok((fd, peer))
}

/// A TCP socket for `addr`'s family (close-on-exec, `TCP_NODELAY`, `SO_RCVBUF` if given — before
/// connect, since the window scale is fixed in the SYN), non-blocking if asked.
pub(crate) fn tcp_socket(
    addr: SocketAddr,
    recv_buffer: Option<usize>,
    nonblocking: bool,
) -> io::Result<OwnedFd> {
    let family = match addr {
        SocketAddr::V4(_) => rnet::AddressFamily::INET,
        SocketAddr::V6(_) => rnet::AddressFamily::INET6,
    };
    let mut flags = SocketFlags::CLOEXEC;
    if nonblocking {
        flags |= SocketFlags::NONBLOCK;
    }
    let fd = rnet::socket_with(family, rnet::SocketType::STREAM, flags, None).map_err(io_err)?;
    let _ = rnet::sockopt::set_tcp_nodelay(&fd, true);
    if let Some(bytes) = recv_buffer {
        rnet::sockopt::set_socket_recv_buffer_size(&fd, bytes).map_err(io_err)?;
    }
    Ok(fd)
}

/// A non-blocking TCP socket connecting to `addr`: `Ok((fd, true))` if connected at once,
/// `Ok((fd, false))` while the handshake is in progress (wait for writability, then
/// [`connect_finished`]).
pub(crate) fn connect_start(
    addr: SocketAddr,
    recv_buffer: Option<usize>,
) -> io::Result<(OwnedFd, bool)> {
    let fd = tcp_socket(addr, recv_buffer, true)?;
    match rnet::connect(&fd, &addr) {
        Ok(()) => Ok((fd, true)),
        Err(Errno::INPROGRESS) => Ok((fd, false)),
        Err(e) => Err(io_err(e)),
    }
}

/// A connection the kernel accepted for us (io_uring): `TCP_NODELAY` and its peer's address.
pub(crate) fn accepted(fd: &OwnedFd) -> Option<SocketAddr> {
    let _ = rnet::sockopt::set_tcp_nodelay(fd, true);
    rnet::getpeername(fd)
        .ok()
        .flatten()
        .and_then(|a| SocketAddr::try_from(a).ok())
}

/// Clear `O_NONBLOCK` on a file: io_uring returns `EAGAIN` for a read of an uncached page of an
/// `O_NONBLOCK` file instead of running it on its workers.
pub(crate) fn clear_nonblock(fd: &OwnedFd) -> io::Result<()> {
    let flags = rfs::fcntl_getfl(fd).map_err(io_err)?;
    rfs::fcntl_setfl(fd, flags - OFlags::NONBLOCK).map_err(io_err)
}

/// The flags and resolution [`open`] uses, for a backend that opens files another way
/// (io_uring's `openat2`).
pub(crate) fn open_how(beneath: bool, noatime: bool) -> (u64, u64) {
    let mut flags = OPEN_FLAGS;
    if noatime {
        flags |= OFlags::NOATIME;
    }
    (u64::from(flags.bits()), open_resolve(beneath).bits())
}

/// A [`FileStat`] from the fields of `fstat` or `statx`.
pub(crate) fn file_stat(
    size: u64,
    (dev, ino): (u64, u64),
    mode: u32,
    mtime: (i64, u32),
    ctime: (i64, u32),
) -> FileStat {
    let time = |(s, ns): (i64, u32)| UNIX_EPOCH + Duration::new(u64::try_from(s).unwrap_or(0), ns);
    let file_type = match rfs::FileType::from_raw_mode(mode as _) {
        rfs::FileType::RegularFile => FileType::Regular,
        rfs::FileType::Directory => FileType::Directory,
        _ => FileType::Other,
    };
    FileStat {
        len_bytes: size,
        ino,
        dev,
        modified: time(mtime),
        status_changed: time(ctime),
        file_type,
    }
}

/// `TCP_NOTSENT_LOWAT`: writability is reported (and a send accepted) only while fewer than
/// `bytes` sent bytes wait unsent in the socket; accepted sockets inherit it from a listener.
/// rustix has no wrapper for it.
pub(crate) fn set_notsent_lowat(fd: &OwnedFd, bytes: u32) -> io::Result<()> {
    let v = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    set_int_option(fd, libc::IPPROTO_TCP, libc::TCP_NOTSENT_LOWAT, v)
}

/// `setsockopt(level, name, &v)` for an `int` option rustix has no wrapper for.
pub(crate) fn set_int_option(
    fd: &OwnedFd,
    level: libc::c_int,
    name: libc::c_int,
    v: libc::c_int,
) -> io::Result<()> {
    // SAFETY: `fd` is an open socket for the call's duration; the option value is a live
    // `c_int` whose size is passed with it.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&v as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// What a connected TCP socket holds in its send queue: bytes not yet sent (`SIOCOUTQNSD`),
/// bytes sent or not but not yet acknowledged (`SIOCOUTQ`), and its send buffer's size
/// (`SO_SNDBUF`, the kernel's doubled figure, in the unit it compares the queue with).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SendQueue {
    pub unsent: u64,
    pub queued: u64,
    pub sndbuf: u64,
}

/// Bytes of a TCP socket's send queue not yet sent (`SIOCOUTQNSD`).
pub(crate) fn unsent_bytes(sock: &OwnedFd) -> io::Result<u64> {
    #[allow(clippy::unnecessary_cast)]
    sock_ioctl(sock, libc::SIOCOUTQNSD as libc::Ioctl)
}

/// An `ioctl` that writes one `c_int` about a socket.
fn sock_ioctl(sock: &OwnedFd, req: libc::Ioctl) -> io::Result<u64> {
    let mut v: libc::c_int = 0;
    // SAFETY: `sock` is open for the call; the pointer is to `v`, a live local `c_int`, and
    // the requests this is used with (`SIOCOUTQ`, `SIOCOUTQNSD`) write one `c_int`.
    let r = unsafe { libc::ioctl(sock.as_raw_fd(), req, &mut v) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(u64::try_from(v).unwrap_or(0))
}

/// Read a socket's send queue (three system calls: two `ioctl`s, one `getsockopt`).
pub(crate) fn send_queue(sock: &OwnedFd) -> io::Result<SendQueue> {
    let unsent = unsent_bytes(sock)?;
    let queued = sock_ioctl(sock, libc::TIOCOUTQ)?;
    let sndbuf = rnet::sockopt::socket_send_buffer_size(sock).map_err(io_err)?;
    Ok(SendQueue {
        unsent,
        queued,
        sndbuf: sndbuf as u64,
    })
}

/// Whether `sock` is writable now (a zero-timeout `poll`). A TCP socket found not writable is
/// flagged by the kernel to raise a writability event when room frees up: a later edge is
/// guaranteed even if no send ever failed.
pub(crate) fn poll_writable(sock: &OwnedFd) -> bool {
    use rustix::event::{poll, PollFd, PollFlags};
    let mut fds = [PollFd::new(sock, PollFlags::OUT)];
    let zero = timespec(Duration::ZERO);
    match poll(&mut fds, Some(&zero)) {
        Ok(_) => fds[0].revents().contains(PollFlags::OUT),
        // Unknown: say writable, so the caller sends and learns from the send.
        Err(_) => true,
    }
}

/// Start reading `[offset, offset + len)` of `file` into the page cache without waiting for
/// it (`POSIX_FADV_WILLNEED`); a hint, so a failure is ignored.
pub(crate) fn prefetch_range(file: &OwnedFd, offset: u64, len: u64) {
    let _ = rfs::fadvise(
        file,
        offset,
        std::num::NonZeroU64::new(len),
        rfs::Advice::WillNeed,
    );
}

/// After writability: `Ok(true)` connected, `Ok(false)` still in progress, or the
/// handshake's error (`SO_ERROR`).
pub(crate) fn connect_finished(fd: &OwnedFd) -> io::Result<bool> {
    match rnet::getpeername(fd) {
        Ok(_) => Ok(true),
        Err(Errno::NOTCONN) => match rnet::sockopt::socket_error(fd).map_err(io_err)? {
            Ok(()) => Ok(false),
            Err(e) => Err(io_err(e)),
        },
        Err(e) => Err(io_err(e)),
    }
}

/// `recv` of at most `max` bytes into the spare room of `buf` (reserved by the caller; none is
/// `EINVAL`, never a zero-length receive that would look like end of stream).
pub(crate) fn recv(sock: &OwnedFd, buf: &mut BufMut, max: usize) -> io::Result<usize> {
    let spare = buf.spare();
    let room = spare.len().min(max);
    if room == 0 {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    let ((init, _), _) =
        rnet::recv(sock, &mut spare[..room], RecvFlags::empty()).map_err(io_err)?;
    let n = init.len();
    // SAFETY: `recv` initialised exactly these `n` bytes at the start of the spare room.
    unsafe { buf.filled(n) };
    Ok(n)
}

/// `send(MSG_NOSIGNAL [| MSG_MORE] [| MSG_ZEROCOPY])` of the stream of `bufs` from offset `from` — `sendmsg`
/// with one `iovec` per part when there are several: a vanished peer is `EPIPE`, never a
/// signal.
pub(crate) fn send(
    sock: &OwnedFd,
    bufs: &Gather,
    from: usize,
    more: bool,
    zerocopy: bool,
) -> io::Result<usize> {
    let mut flags = SendFlags::NOSIGNAL;
    if more {
        flags |= SendFlags::MORE;
    }
    if zerocopy {
        // Only for sends `zerocopy::ZeroCopy::prepare` approved (shared bytes, SO_ZEROCOPY set).
        flags |= SendFlags::from_bits_retain(libc::MSG_ZEROCOPY as u32);
    }
    let mut slices = [io::IoSlice::new(&[]); GATHER_MAX];
    let mut n = 0;
    for part in bufs.slices_from(from) {
        slices[n] = io::IoSlice::new(part);
        n += 1;
    }
    match n {
        0 => Ok(0),
        1 => rnet::send(sock, &slices[0], flags).map_err(io_err),
        _ => rnet::sendmsg(
            sock,
            &slices[..n],
            &mut rnet::SendAncillaryBuffer::default(),
            flags,
        )
        .map_err(io_err),
    }
}

/// `sendfile(sock, file, &offset, len)` on a non-blocking socket: never waits for the socket,
/// but waits for the disk if the pages are not cached.
pub(crate) fn sendfile(
    sock: &OwnedFd,
    file: &OwnedFd,
    offset: u64,
    len: usize,
) -> io::Result<usize> {
    let mut off = offset;
    rfs::sendfile(sock, file, Some(&mut off), len).map_err(io_err)
}

/// `shutdown(SHUT_WR)`.
pub(crate) fn shutdown_write(sock: &OwnedFd) -> io::Result<()> {
    rnet::shutdown(sock, rnet::Shutdown::Write).map_err(io_err)
}

// ---- files ---------------------------------------------------------------------------------

/// `openat2(dir, path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK | O_NOATIME)`.
///
/// - `O_NONBLOCK`, so a FIFO planted in the document root cannot hang the open;
/// - `O_NOATIME`, because reading a file updates its access time *after* the data is copied —
///   also when `RWF_NOWAIT` found nothing cached — and that update can read the inode's block
///   from disk (`touch_atime` → `ext4_dirty_inode` → `ext4_get_inode_loc`): a blocking disk
///   read inside a "non-blocking" call. Only the file's owner (or `CAP_FOWNER`) may ask for it;
///   on `EPERM` the file is opened without it, and [`NOATIME_REFUSED`] counts that.
///
/// With `beneath`, resolution stays under `dir` and refuses magic links; with
/// [`Wait::NoWait`], `RESOLVE_CACHED` makes a lookup that needs the disk fail with `EAGAIN`.
pub(crate) fn open(dir: &OwnedFd, path: &CStr, beneath: bool, wait: Wait) -> io::Result<OwnedFd> {
    let mut resolve = open_resolve(beneath);
    if wait == Wait::NoWait {
        resolve |= ResolveFlags::CACHED;
    }
    match rfs::openat2(
        dir,
        path,
        OPEN_FLAGS | OFlags::NOATIME,
        Mode::empty(),
        resolve,
    ) {
        Err(Errno::PERM) => {
            NOATIME_REFUSED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            rfs::openat2(dir, path, OPEN_FLAGS, Mode::empty(), resolve).map_err(io_err)
        }
        // Valgrind does not know `openat2`: a measurement build opens with `openat`, and so
        // without `RESOLVE_BENEATH`'s containment (`lair serve` says so when it starts; the
        // request path is still normalized, so only a symbolic link can lead out).
        #[cfg(feature = "valgrind")]
        Err(Errno::NOSYS) => rfs::openat(dir, path, OPEN_FLAGS, Mode::empty()).map_err(io_err),
        r => r.map_err(io_err),
    }
}

/// The open flags of every file open (besides `O_NOATIME`, asked for and dropped on `EPERM`).
const OPEN_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::CLOEXEC)
    .union(OFlags::NOCTTY)
    .union(OFlags::NONBLOCK);

/// `RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS` when the open must stay beneath its directory.
fn open_resolve(beneath: bool) -> ResolveFlags {
    if beneath {
        ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS
    } else {
        ResolveFlags::empty()
    }
}

/// Opens that could not use `O_NOATIME` (the process does not own the file), process-wide.
pub static NOATIME_REFUSED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// `fstat`.
pub(crate) fn stat(file: &OwnedFd) -> io::Result<FileStat> {
    let st = rfs::fstat(file).map_err(io_err)?;
    Ok(file_stat(
        u64::try_from(st.st_size).unwrap_or(0),
        (st.st_dev, st.st_ino),
        st.st_mode,
        (st.st_mtime, u32::try_from(st.st_mtime_nsec).unwrap_or(0)),
        (st.st_ctime, u32::try_from(st.st_ctime_nsec).unwrap_or(0)),
    ))
}

/// Start reading the first `len` bytes of `file` into the page cache, without waiting
/// (`POSIX_FADV_WILLNEED`); a hint, so a failure (a directory, say) is ignored.
pub(crate) fn prefetch(file: &OwnedFd, len: usize) {
    let len = std::num::NonZeroU64::new(u64::try_from(len).unwrap_or(u64::MAX));
    let _ = rfs::fadvise(file, 0, len, rfs::Advice::WillNeed);
}

/// `preadv2` of up to `len` bytes at `offset` into the spare room of `buf` (reserved by the
/// caller; at most the room is read); with [`Wait::NoWait`] it uses `RWF_NOWAIT` (`EAGAIN`
/// when the first page is not cached; short when a later one is not).
pub(crate) fn read(
    file: &OwnedFd,
    offset: u64,
    len: usize,
    buf: &mut BufMut,
    wait: Wait,
) -> io::Result<usize> {
    // Into the spare capacity, not zeroed first: rustix's `preadv2` takes initialised slices,
    // and zero-filling a 256 KiB read buffer before every read cost more than the read
    // (`lair micro open-stat-read`: 1.6× a plain `pread` loop, 1.0× without it).
    let spare = buf.spare();
    let len = len.min(spare.len());
    if len == 0 {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    let spare = &mut spare[..len];
    let iov = libc::iovec {
        iov_base: spare.as_mut_ptr().cast(),
        iov_len: spare.len(),
    };
    let flags = match wait {
        Wait::NoWait => libc::RWF_NOWAIT,
        Wait::Block => 0,
    };
    let offset =
        libc::off_t::try_from(offset).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: `iov` is `len` bytes of `buf`'s spare capacity, mutably borrowed for the call;
    // the kernel writes at most `iov_len` bytes there and reports how many.
    let r = unsafe { libc::preadv2(file.as_raw_fd(), &iov, 1, offset, flags) };
    let n = usize::try_from(r).map_err(|_| io::Error::last_os_error())?;
    // SAFETY: the kernel initialised the first `n` (≤ `len`) bytes of the spare room.
    unsafe { buf.filled(n) };
    Ok(n)
}

/// `pwritev2` of the stream of `bufs` at `offset` (or appended: `RWF_APPEND`), `RWF_NOWAIT`
/// with [`Wait::NoWait`].
pub(crate) fn write(
    file: &OwnedFd,
    offset: Option<u64>,
    bufs: &Gather,
    wait: Wait,
) -> io::Result<usize> {
    let mut flags = match wait {
        Wait::NoWait => ReadWriteFlags::NOWAIT,
        Wait::Block => ReadWriteFlags::empty(),
    };
    let off = match offset {
        Some(o) => o,
        None => {
            flags |= ReadWriteFlags::APPEND;
            u64::MAX
        }
    };
    let mut slices = [io::IoSlice::new(&[]); GATHER_MAX];
    let mut n = 0;
    for part in bufs.slices_from(0) {
        slices[n] = io::IoSlice::new(part);
        n += 1;
    }
    rustix::io::pwritev2(file, &slices[..n], off, flags).map_err(io_err)
}

/// `cachestat(2)` (Linux 6.5): the system call number is 451 on every architecture.
const SYS_CACHESTAT: libc::c_long = 451;

#[repr(C)]
struct CachestatRange {
    off: u64,
    len: u64,
}

#[repr(C)]
#[derive(Default)]
struct Cachestat {
    nr_cache: u64,
    nr_dirty: u64,
    nr_writeback: u64,
    nr_evicted: u64,
    nr_recently_evicted: u64,
}

/// The page size `cachestat` and the in-flight check reason in.
const PAGE: u64 = 4096;

/// Whether every page of `[offset, offset + len)` is in the page cache (`cachestat(2)`).
/// Pages past the end of the file are never cached, so callers ask only for ranges inside it.
pub(crate) fn range_cached(
    file: &OwnedFd,
    offset: u64,
    len: u64,
    reads_in_flight: bool,
    via_mincore: bool,
) -> io::Result<bool> {
    let (cached, pages) = if via_mincore {
        cached_pages_mincore(file, offset, len)?
    } else {
        cached_pages(file, offset, len)?
    };
    if cached < pages {
        return Ok(false);
    }
    // cachestat counts a page the moment it is in the cache, also while the read that fills
    // it is still in flight (readahead, a helper's read, a prefetch): a sendfile would then
    // wait for the disk on the loop. When reads may be in flight, a one-byte RWF_NOWAIT read
    // of the range's last page says whether it is readable now (the pages of one read
    // complete together, the last last). It costs a system call (~1 µs here), so not when the
    // disk has not been needed lately.
    if pages == 0 || !reads_in_flight {
        return Ok(true);
    }
    let last = (offset + len - 1) / PAGE * PAGE;
    let mut byte = [0u8; 1];
    match rustix::io::preadv2(
        file,
        &mut [io::IoSliceMut::new(&mut byte)],
        last,
        ReadWriteFlags::NOWAIT,
    ) {
        Ok(_) => Ok(true),
        Err(Errno::AGAIN) => Ok(false),
        Err(e) => Err(io_err(e)),
    }
}

/// Pages of `[offset, offset + len)` in the page cache, and pages in the range
/// (`cachestat(2)`).
/// The same count as [`cached_pages`] by `mincore(2)` over a read-only shared mapping of the
/// range: for a process that may read the file but not `cachestat` it (`cachestat` wants the
/// file's owner, a file open for writing, or `CAP_SYS_ADMIN` — the usual deployment, a
/// `www-data` server of root's files, has none). Three system calls (mmap, mincore, munmap);
/// the mapping is never touched, so nothing is read from the disk.
pub(crate) fn cached_pages_mincore(
    file: &OwnedFd,
    offset: u64,
    len: u64,
) -> io::Result<(u64, u64)> {
    let end = offset.saturating_add(len);
    if end <= offset {
        return Ok((0, 0));
    }
    let first = offset / PAGE;
    let last = end.div_ceil(PAGE);
    let mut cached = 0u64;
    let mut vec = [0u8; 512];
    let mut page = first;
    while page < last {
        let n = (last - page).min(vec.len() as u64);
        let map_len = usize::try_from(n * PAGE).map_err(|_| io::Error::from(Errno::INVAL))?;
        let map_off =
            libc::off_t::try_from(page * PAGE).map_err(|_| io::Error::from(Errno::INVAL))?;
        // SAFETY: a fresh read-only shared mapping at an address the kernel chooses; it aliases
        // no Rust memory and is never dereferenced, only handed to mincore and unmapped.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                map_off,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `addr` is the page-aligned start of `map_len` mapped bytes; `vec` has room
        // for one byte per page of them (`n` ≤ its length).
        let r = unsafe { libc::mincore(addr, map_len, vec.as_mut_ptr()) };
        let err = io::Error::last_os_error();
        // SAFETY: unmapping exactly the mapping made above, which nothing else refers to.
        unsafe { libc::munmap(addr, map_len) };
        if r != 0 {
            return Err(err);
        }
        cached += vec[..n as usize].iter().filter(|&&b| b & 1 != 0).count() as u64;
        page += n;
    }
    Ok((cached, last - first))
}

pub(crate) fn cached_pages(file: &OwnedFd, offset: u64, len: u64) -> io::Result<(u64, u64)> {
    let end = offset.saturating_add(len);
    if end <= offset {
        return Ok((0, 0));
    }
    let first = offset / PAGE;
    let last = end.div_ceil(PAGE);
    let range = CachestatRange {
        off: first * PAGE,
        len: (last - first) * PAGE,
    };
    // `range` and `cs` are laid out as `struct cachestat_range` and `struct cachestat`
    // (include/uapi/linux/mman.h); flags must be 0.
    let mut cs = Cachestat::default();
    // SAFETY: both are live and exclusively borrowed for the call, and `file` keeps the
    // descriptor valid for it.
    let r = unsafe {
        libc::syscall(
            SYS_CACHESTAT,
            file.as_raw_fd(),
            &range as *const CachestatRange,
            &mut cs as *mut Cachestat,
            0u32,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((cs.nr_cache, last - first))
}

// ---- epoll and eventfd ---------------------------------------------------------------------

pub(crate) fn timespec(d: Duration) -> rustix::time::Timespec {
    rustix::time::Timespec {
        tv_sec: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        tv_nsec: i64::from(d.subsec_nanos()),
    }
}

/// A new epoll instance.
pub(crate) fn epoll_new() -> io::Result<OwnedFd> {
    epoll::create(epoll::CreateFlags::CLOEXEC).map_err(io_err)
}

/// Register `fd` edge-triggered for both directions, with `key` as its event data.
pub(crate) fn epoll_add(ep: &OwnedFd, fd: impl AsFd, key: u64) -> io::Result<()> {
    let flags = epoll::EventFlags::IN
        | epoll::EventFlags::OUT
        | epoll::EventFlags::RDHUP
        | epoll::EventFlags::ET;
    match epoll::add(ep, fd, epoll::EventData::new_u64(key), flags) {
        Ok(()) | Err(Errno::EXIST) => Ok(()),
        Err(e) => Err(io_err(e)),
    }
}

/// Register `fd` level-triggered for reading (the wake-up eventfd).
pub(crate) fn epoll_add_level(ep: &OwnedFd, fd: impl AsFd, key: u64) -> io::Result<()> {
    epoll::add(
        ep,
        fd,
        epoll::EventData::new_u64(key),
        epoll::EventFlags::IN,
    )
    .map_err(io_err)
}

/// One ready descriptor as epoll reported it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Ready {
    pub key: u64,
    pub readable: bool,
    pub writable: bool,
    /// The peer shut its side or the socket failed (`EPOLLRDHUP`, `EPOLLHUP`, `EPOLLERR`): an
    /// end of stream or an error waits behind any data, and no further edge will announce it.
    pub closing: bool,
    /// `EPOLLERR`: the socket failed, or (on a socket with zero-copy sends) its error queue
    /// holds notifications.
    pub err: bool,
    /// `EPOLLERR` without a hang-up: a failed TCP connection also hangs up, so on a socket
    /// with zero-copy sends this is the error queue alone. `readable`, `writable` and
    /// `closing` count the error; `raw_in`/`raw_out` are the plain directions.
    pub err_only: bool,
    /// `EPOLLIN | EPOLLRDHUP` alone.
    pub raw_in: bool,
    /// `EPOLLOUT` alone.
    pub raw_out: bool,
}

/// `epoll_wait` into `events` (cleared first); `None` waits forever. `EINTR` is an empty wait.
pub(crate) fn epoll_wait(
    ep: &OwnedFd,
    raw: &mut Vec<epoll::Event>,
    out: &mut Vec<Ready>,
    timeout: Option<Duration>,
) -> io::Result<()> {
    raw.clear();
    out.clear();
    match wait_events(ep, raw, timeout) {
        Ok(()) => {}
        Err(Errno::INTR) => return Ok(()),
        Err(e) => return Err(io_err(e)),
    }
    use epoll::EventFlags as F;
    out.extend(raw.iter().map(|ev| {
        let f = ev.flags;
        let bad = f.intersects(F::ERR | F::HUP);
        let raw_in = f.intersects(F::IN | F::RDHUP);
        let raw_out = f.contains(F::OUT);
        Ready {
            key: ev.data.u64(),
            readable: bad || raw_in,
            writable: bad || raw_out,
            closing: bad || f.contains(F::RDHUP),
            err: f.contains(F::ERR),
            err_only: f.contains(F::ERR) && !f.intersects(F::HUP | F::RDHUP),
            raw_in,
            raw_out,
        }
    }));
    Ok(())
}

/// The wait itself: `epoll_pwait2`, nanosecond timeouts.
#[cfg(not(feature = "valgrind"))]
fn wait_events(
    ep: &OwnedFd,
    raw: &mut Vec<epoll::Event>,
    timeout: Option<Duration>,
) -> Result<(), Errno> {
    let ts = timeout.map(timespec);
    epoll::wait(ep, rustix::buffer::spare_capacity(raw), ts.as_ref()).map(drop)
}

/// The wait under valgrind, which does not know `epoll_pwait2` (3.19 answers `ENOSYS`): plain
/// `epoll_wait`, its timeout rounded up to whole milliseconds so that it never wakes early.
#[cfg(feature = "valgrind")]
fn wait_events(
    ep: &OwnedFd,
    raw: &mut Vec<epoll::Event>,
    timeout: Option<Duration>,
) -> Result<(), Errno> {
    const _: () =
        assert!(std::mem::size_of::<epoll::Event>() == std::mem::size_of::<libc::epoll_event>());
    let ms = timeout.map_or(-1, |d| {
        i32::try_from(d.as_nanos().div_ceil(1_000_000)).unwrap_or(i32::MAX)
    });
    // rustix's `epoll::Event` has the layout of the kernel's `epoll_event` (`repr(C)`, packed
    // on x86-64; the sizes are asserted equal above).
    let room = i32::try_from(raw.capacity()).unwrap_or(i32::MAX);
    // SAFETY: the kernel writes at most `room` events into the empty vector's spare capacity,
    // and the length is set to the number it reports having written.
    unsafe {
        let n = libc::epoll_wait(ep.as_raw_fd(), raw.as_mut_ptr().cast(), room, ms);
        if n < 0 {
            return Err(Errno::from_raw_os_error(*libc::__errno_location()));
        }
        raw.set_len(n as usize);
    }
    Ok(())
}

/// A non-blocking eventfd.
pub(crate) fn eventfd_new() -> io::Result<OwnedFd> {
    use rustix::event::EventfdFlags;
    rustix::event::eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK).map_err(io_err)
}

/// Block until `fd` or `stop` is readable or `timeout` passes (`EINTR` returns early: the
/// caller loops).
pub(crate) fn wait_readable(
    fd: &OwnedFd,
    stop: &OwnedFd,
    timeout: Option<Duration>,
) -> io::Result<()> {
    use rustix::event::{poll, PollFd, PollFlags};
    let mut fds = [
        PollFd::new(fd, PollFlags::IN),
        PollFd::new(stop, PollFlags::IN),
    ];
    let ts = timeout.map(timespec);
    match poll(&mut fds, ts.as_ref()) {
        Ok(_) | Err(Errno::INTR) => Ok(()),
        Err(e) => Err(io_err(e)),
    }
}

/// How a [`wait_socket`] ended.
pub(crate) enum SocketWait {
    /// The socket is ready in the direction asked for (or failed: the call will say how).
    Ready,
    /// The stop descriptor is readable.
    Stopped,
    /// Neither, within the timeout (or a signal interrupted the wait).
    Nothing,
}

/// Block until `sock` is readable (or writable, with `write`), `stop` (if any) is readable,
/// or `timeout` passes (`None`: no limit).
pub(crate) fn wait_socket(
    sock: &OwnedFd,
    write: bool,
    stop: Option<&OwnedFd>,
    timeout: Option<Duration>,
) -> io::Result<SocketWait> {
    use rustix::event::{poll, PollFd, PollFlags};
    let want = if write { PollFlags::OUT } else { PollFlags::IN };
    let mut fds = [
        PollFd::new(sock, want),
        PollFd::new(stop.unwrap_or(sock), PollFlags::IN),
    ];
    let n = if stop.is_some() { 2 } else { 1 };
    let ts = timeout.map(timespec);
    match poll(&mut fds[..n], ts.as_ref()) {
        Ok(0) | Err(Errno::INTR) => Ok(SocketWait::Nothing),
        Ok(_) => {
            let ended = PollFlags::HUP | PollFlags::ERR | PollFlags::NVAL;
            if fds[0].revents().intersects(want | ended) {
                Ok(SocketWait::Ready)
            } else if n == 2 && fds[1].revents().contains(PollFlags::IN) {
                Ok(SocketWait::Stopped)
            } else {
                Ok(SocketWait::Nothing)
            }
        }
        Err(e) => Err(io_err(e)),
    }
}

/// Add one to an eventfd (wakes a waiter). A full counter (`EAGAIN`) is already a wake-up.
pub(crate) fn eventfd_signal(fd: &OwnedFd) {
    let _ = rustix::io::write(fd, &1u64.to_ne_bytes());
}

/// Reset an eventfd to zero.
pub(crate) fn eventfd_drain(fd: &OwnedFd) {
    let mut b = [0u8; 8];
    let _ = rustix::io::read(fd, &mut b);
}

// ---- probes --------------------------------------------------------------------------------

/// The kernel's `(major, minor)` and full release string, from `uname`.
pub(crate) fn kernel_version() -> ((u32, u32), String) {
    let uts = rustix::system::uname();
    let release = uts.release().to_string_lossy().into_owned();
    let mut nums = release
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|p| p.parse::<u32>().ok());
    let major = nums.next().unwrap_or(0);
    let minor = nums.next().unwrap_or(0);
    ((major, minor), release)
}

/// The first regular file directly inside `dir` (opened read-only), to probe its file system.
pub(crate) fn first_regular_file(dir: &OwnedFd) -> Option<OwnedFd> {
    let mut d = rfs::Dir::read_from(dir).ok()?;
    for _ in 0..4096 {
        let entry = d.read()?.ok()?;
        if entry.file_type() != rfs::FileType::RegularFile {
            continue;
        }
        if let Ok(fd) = open(dir, entry.file_name(), true, Wait::Block) {
            return Some(fd);
        }
    }
    None
}

/// Open an absolute path read-only (probes only).
pub(crate) fn open_absolute(path: &CStr) -> io::Result<OwnedFd> {
    rfs::open(path, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty()).map_err(io_err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mincore_counts_what_cachestat_counts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, vec![7u8; 40 * 4096 + 10]).unwrap();
        let file: OwnedFd = std::fs::File::open(&path).unwrap().into();
        // Written just now: every page cached, by both counts, for any window.
        for (off, len) in [(0, 41 * 4096), (4096 * 3 + 5, 10_000), (40 * 4096, 10)] {
            let a = cached_pages(&file, off, len).unwrap();
            let b = cached_pages_mincore(&file, off, len).unwrap();
            assert_eq!(a, b, "window {off}+{len}");
            assert_eq!(a.0, a.1, "all cached");
        }
        // Dropped from the cache (a dirty page cannot be, so write it back first).
        rfs::fsync(&file).unwrap();
        let _ = rfs::fadvise(&file, 0, None, rfs::Advice::DontNeed);
        let (cached, pages) = cached_pages_mincore(&file, 0, 41 * 4096).unwrap();
        assert_eq!(pages, 41);
        assert_eq!(cached, cached_pages(&file, 0, 41 * 4096).unwrap().0);
        assert!(
            cached < pages,
            "dropped pages are not counted ({cached} of {pages})"
        );
    }
}
