#!/usr/bin/env python3
"""What cachestat(2) costs per call and per page checked (the lazy backend asks it before
every inline sendfile). Times N calls over cached ranges of growing size from Python; the
difference between sizes is the kernel's per-page cost (Python's own overhead is in the base).
The kernel walks folios, not pages, so the cost depends on how the file entered the cache: by
default two 2 MiB files are made next to the script's working directory (ext4 here), one
written in 4 KiB pieces (small folios) and one in a single write (large folios).

    python3 scripts/cachestat-cost.py [FILE ...]

It also times the check lazy adds after cachestat while disk reads may be in flight: a
one-byte preadv2(RWF_NOWAIT) of a cached page, against getpid through the same Python path;
and the residency check lazy uses when cachestat is refused (EPERM: a server of files it does
not own): mmap + mincore + munmap of the same range.
"""
import ctypes
import os
import sys
import tempfile
import time

SYS_CACHESTAT = 451  # x86_64 and aarch64


class Range(ctypes.Structure):
    _fields_ = [("off", ctypes.c_uint64), ("len", ctypes.c_uint64)]


class Cachestat(ctypes.Structure):
    _fields_ = [(n, ctypes.c_uint64) for n in ("cache", "dirty", "writeback", "evicted", "recently_evicted")]


def measure(libc, path):
    fd = os.open(path, os.O_RDONLY)
    with open(path, "rb") as f:  # bring it into the page cache
        while f.read(1 << 20):
            pass
    size = os.fstat(fd).st_size
    cs = Cachestat()
    rows = []
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                          ctypes.c_int, ctypes.c_long]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    vec = ctypes.create_string_buffer(1024)
    for length in (4096, 65536, 131072, 524288, 2 << 20):
        if length > size:
            break
        r = Range(0, length)
        n = 20000
        t = time.perf_counter()
        for _ in range(n):
            if libc.syscall(SYS_CACHESTAT, fd, ctypes.byref(r), ctypes.byref(cs), 0) != 0:
                sys.exit(f"cachestat: {os.strerror(ctypes.get_errno())} (needs Linux 6.5)")
        ns = (time.perf_counter() - t) / n * 1e9
        t = time.perf_counter()
        for _ in range(n):
            addr = libc.mmap(None, length, 1, 1, fd, 0)  # PROT_READ, MAP_SHARED
            libc.mincore(addr, length, vec)
            libc.munmap(addr, length)
        rows.append((length, ns, cs.cache, (time.perf_counter() - t) / n * 1e9))
    os.close(fd)
    base = rows[0][1]
    print(f"\n{path}\n")
    print("| range | pages cached | cachestat ns per call | ns per extra page | mmap+mincore+munmap ns |")
    print("|---:|---:|---:|---:|---:|")
    for length, ns, cached, mincore in rows:
        pages = length // 4096
        extra = f"{(ns - base) / (pages - 1):.0f}" if pages > 1 else "-"
        print(f"| {length // 1024} KiB | {cached} | {ns:.0f} | {extra} | {mincore:.0f} |")


def probe_cost(path):
    """ns per one-byte RWF_NOWAIT read of a cached page, and per getpid, both from Python."""
    fd = os.open(path, os.O_RDONLY)
    buf = bytearray(1)
    os.preadv(fd, [buf], 0)
    n = 200000
    best = {}
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(n):
            os.preadv(fd, [buf], 0, os.RWF_NOWAIT)
        read = (time.perf_counter() - t) / n * 1e9
        t = time.perf_counter()
        for _ in range(n):
            os.getpid()
        pid = (time.perf_counter() - t) / n * 1e9
        best["read"] = min(best.get("read", read), read)
        best["getpid"] = min(best.get("getpid", pid), pid)
    os.close(fd)
    print(f"\none-byte preadv2(RWF_NOWAIT) of a cached page: {best['read']:.0f} ns a call from "
          f"Python; getpid the same way: {best['getpid']:.0f} ns; the read costs "
          f"{best['read'] - best['getpid']:.0f} ns more than a getpid")


def main():
    libc = ctypes.CDLL(None, use_errno=True)
    if len(sys.argv) > 1:
        for path in sys.argv[1:]:
            measure(libc, path)
        return
    data = os.urandom(2 << 20)
    with tempfile.TemporaryDirectory(dir=".") as d:
        small = os.path.join(d, "written-in-4k-pieces")
        with open(small, "wb", buffering=0) as f:
            for i in range(0, len(data), 4096):
                f.write(data[i : i + 4096])
        large = os.path.join(d, "written-at-once")
        with open(large, "wb", buffering=0) as f:
            f.write(data)
        for path in (small, large):
            os.sync()
            fd = os.open(path, os.O_RDONLY)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)  # re-read: folios as read-ahead makes them
            os.close(fd)
            measure(libc, path)
        probe_cost(large)


if __name__ == "__main__":
    main()
