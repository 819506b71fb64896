//! Start-up system calls the server needs outside the engine's operations: listening sockets,
//! the document root and log descriptors, CPU pinning, the descriptor limit.
//!
//! Why here: lair-http makes no system call of its own; everything that touches the kernel is
//! in lair-io, so the server is protocol and state only.

use std::io;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::path::Path;

use rustix::fs::{self as rfs, Mode, OFlags};
use rustix::io::Errno;
use rustix::net::{self as rnet, AddressFamily, SocketFlags, SocketType};

fn io_err(e: Errno) -> io::Error {
    io::Error::from_raw_os_error(e.raw_os_error())
}

/// A non-blocking TCP listener on `addr` with `SO_REUSEADDR` and `SO_REUSEPORT` (so every
/// worker can have its own, and the kernel spreads connections across them), `IPV6_V6ONLY` for
/// IPv6 addresses (so `[::]` and `0.0.0.0` can both be bound), and — unless `notsent_lowat`
/// is 0 — `TCP_NOTSENT_LOWAT`, which every accepted connection inherits: a connection is
/// writable only while fewer than that many bytes wait unsent, so a client that reads slowly
/// cannot make the server push megabytes into its socket (kernel memory, and the CPU of the
/// loop that pushes them).
pub fn bind_listener(addr: SocketAddr, backlog: i32, notsent_lowat: u32) -> io::Result<OwnedFd> {
    let family = match addr {
        SocketAddr::V4(_) => AddressFamily::INET,
        SocketAddr::V6(_) => AddressFamily::INET6,
    };
    let fd = rnet::socket_with(
        family,
        SocketType::STREAM,
        SocketFlags::NONBLOCK | SocketFlags::CLOEXEC,
        None,
    )
    .map_err(io_err)?;
    rnet::sockopt::set_socket_reuseaddr(&fd, true).map_err(io_err)?;
    rnet::sockopt::set_socket_reuseport(&fd, true).map_err(io_err)?;
    if addr.is_ipv6() {
        rnet::sockopt::set_ipv6_v6only(&fd, true).map_err(io_err)?;
    }
    if notsent_lowat > 0 {
        super::os::set_notsent_lowat(&fd, notsent_lowat)?;
    }
    rnet::bind(&fd, &addr).map_err(io_err)?;
    rnet::listen(&fd, backlog).map_err(io_err)?;
    Ok(fd)
}

/// Whether `addr` is free to listen on for this process alone: a plain bind (`SO_REUSEADDR`,
/// not `SO_REUSEPORT`) fails with `EADDRINUSE` while any socket listens there — also another
/// process's `SO_REUSEPORT` listener, which the server's own `SO_REUSEPORT` sockets would
/// otherwise silently join (the kernel then spreads connections over both processes).
pub fn check_port_free(addr: SocketAddr) -> io::Result<()> {
    let family = match addr {
        SocketAddr::V4(_) => AddressFamily::INET,
        SocketAddr::V6(_) => AddressFamily::INET6,
    };
    let fd = rnet::socket_with(family, SocketType::STREAM, SocketFlags::CLOEXEC, None)
        .map_err(io_err)?;
    rnet::sockopt::set_socket_reuseaddr(&fd, true).map_err(io_err)?;
    if addr.is_ipv6() {
        rnet::sockopt::set_ipv6_v6only(&fd, true).map_err(io_err)?;
    }
    rnet::bind(&fd, &addr).map_err(io_err)
}

/// The address a socket is bound to (the real port after binding port 0).
pub fn local_addr(fd: &OwnedFd) -> io::Result<SocketAddr> {
    let a = rnet::getsockname(fd).map_err(io_err)?;
    SocketAddr::try_from(a).map_err(|_| io::Error::other("not an IP socket"))
}

/// Open a directory (the document root) for `openat2` beneath it.
pub fn open_dir(path: &Path) -> io::Result<OwnedFd> {
    rfs::open(
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(io_err)
}

/// Open `path` beneath `dir`, blocking, exactly as the engine's `Op::Open` does (flags,
/// resolution, `O_NOATIME` with its fallback) — for baselines that must make the same call
/// without the engine (`lair micro`'s thread-per-request program).
pub fn open_beneath(dir: &OwnedFd, path: &std::ffi::CStr) -> io::Result<OwnedFd> {
    super::os::open(dir, path, true, super::os::Wait::Block)
}

/// Open (create) a file for appending, e.g. the access log.
pub fn open_append(path: &Path) -> io::Result<OwnedFd> {
    rfs::open(
        path,
        OFlags::WRONLY | OFlags::APPEND | OFlags::CREATE | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o644),
    )
    .map_err(io_err)
}

/// Duplicate standard output (for an access log written to `-`).
pub fn stdout() -> io::Result<OwnedFd> {
    use std::os::fd::AsFd;
    io::stdout().as_fd().try_clone_to_owned()
}

/// Pin the calling thread to `cpu`.
pub fn pin_current_thread(cpu: usize) -> io::Result<()> {
    let mut set = rustix::thread::CpuSet::new();
    set.set(cpu);
    rustix::thread::sched_setaffinity(None, &set).map_err(io_err)
}

/// Let the calling thread run only on `cpus` (an engine's own threads on the CPUs the placement
/// gave it). An empty set changes nothing.
pub fn pin_current_thread_to(cpus: &[usize]) -> io::Result<()> {
    if cpus.is_empty() {
        return Ok(());
    }
    let mut set = rustix::thread::CpuSet::new();
    for &c in cpus {
        set.set(c);
    }
    rustix::thread::sched_setaffinity(None, &set).map_err(io_err)
}

/// The CPUs the calling thread may run on.
pub fn current_thread_cpus() -> Vec<usize> {
    match rustix::thread::sched_getaffinity(None) {
        Ok(set) => (0..rustix::thread::CpuSet::MAX_CPU)
            .filter(|&c| set.is_set(c))
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// The CPUs this process may run on.
pub fn allowed_cpus() -> Vec<usize> {
    match rustix::thread::sched_getaffinity(None) {
        Ok(set) => (0..rustix::thread::CpuSet::MAX_CPU)
            .filter(|&c| set.is_set(c))
            .collect(),
        Err(_) => vec![0],
    }
}

/// The soft descriptor limit (`None`: unlimited).
pub fn nofile_limit() -> Option<u64> {
    rustix::process::getrlimit(rustix::process::Resource::Nofile).current
}

/// Raise the soft descriptor limit to the hard limit — as far as the process may go without
/// overriding what its operator set (`ulimit -Hn`, systemd's `LimitNOFILE=`, `prlimit`), even
/// when privileged; returns the new soft limit.
pub fn raise_nofile_limit() -> io::Result<u64> {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let lim = getrlimit(Resource::Nofile);
    let target = lim.maximum;
    if target.is_some() && target != lim.current {
        setrlimit(
            Resource::Nofile,
            Rlimit {
                current: target,
                maximum: lim.maximum,
            },
        )
        .map_err(io_err)?;
    }
    Ok(getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX))
}

/// Pages of `file` in the page cache and pages in all (`cachestat(2)`, Linux 6.5), for
/// checking that a cache was really dropped or warmed.
pub fn cached_pages(file: &OwnedFd) -> io::Result<(u64, u64)> {
    let len = rfs::fstat(file).map_err(io_err)?.st_size;
    super::os::cached_pages(file, 0, u64::try_from(len).unwrap_or(0))
}

/// Make every thread allocate from glibc's main arena. Call once at start-up, before any
/// thread is spawned. Why: a thread's own arena keeps its free top resident for good
/// (`malloc_trim` does not trim it), and every helper thread the lazy backend ever started
/// left one — 300 KB each, found by the soak — while the main arena gives everything free
/// back on [`release_free_memory`]. The cost is one lock shared by the threads, taken only
/// when glibc's per-thread cache misses; lair's request path barely allocates. Returns
/// whether glibc took the setting (`false` elsewhere).
pub fn one_allocator_arena() -> bool {
    #[cfg(target_env = "gnu")]
    {
        #[allow(unsafe_code)]
        // SAFETY: mallopt takes two integers and changes a setting of the allocator under
        // its own lock; M_ARENA_MAX is a documented parameter.
        let r = unsafe { libc::mallopt(libc::M_ARENA_MAX, 1) };
        r == 1
    }
    #[cfg(not(target_env = "gnu"))]
    {
        false
    }
}

/// Hand the allocator's free memory back to the kernel after a burst of connections has
/// come and gone; what it returned is no longer resident. Call it on the thread whose
/// allocations went (a worker). Returns whether glibc said it released anything; `false`
/// where the C library is not glibc.
///
/// Two steps, because glibc's `malloc_trim(0)` releases the free pages inside every arena
/// and the free top of the main arena, but not the free top of a thread's own arena — and
/// a worker's connections are freed into exactly that (6.3 MB of "system bytes", 78 KB in
/// use, after 1,500 connections closed, by `malloc_stats`). glibc trims a thread arena's top
/// when a free of 64 KiB or more happens in it, so the first step is such a free.
pub fn release_free_memory() -> bool {
    #[cfg(target_env = "gnu")]
    {
        // Below the smallest mmap threshold (128 KiB), so it comes from this thread's arena;
        // black_box keeps the compiler from eliding the allocation.
        drop(std::hint::black_box(Vec::<u8>::with_capacity(96 * 1024)));
        #[allow(unsafe_code)]
        // SAFETY: malloc_trim takes no pointer and only walks the allocator's own free lists
        // under its locks; calling it from any thread at any time is allowed.
        let r = unsafe { libc::malloc_trim(0) };
        r == 1
    }
    #[cfg(not(target_env = "gnu"))]
    {
        false
    }
}
