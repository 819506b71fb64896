//! Seed 001's micro-benchmarks (§3.4, Tables 2–4), run through lair's engine backends.
//!
//! - `getpid`: a million `getpid` calls made directly, then as [`Op::Call`]s through each
//!   backend with at most 1, 10 or 100 in flight (the helper pool is as large). A backend that
//!   runs the call inline costs what the call costs plus the engine's bookkeeping; one that
//!   hands it to a helper pays two context switches per call (Table 2).
//! - `open-stat` and `open-stat-read`: for every request of a trace, open the file, `fstat` it,
//!   and (second variant) read it whole, with a cold or a warm cache. The baseline is thread
//!   per request (T threads, requests dealt round-robin, each processed start to end); the
//!   backends run the same calls event-driven with at most T requests in flight (Tables 3–4).
//!
//! Every run reports its wall time, the context switches of the whole process (all threads),
//! and how many operations went to helper threads; the caller prints or saves the rows.

use std::ffi::CString;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use lair_io::{
    setup, with_backend, Backend, BackendKind, BufMut, Completion, EngineConfig, Op, OpKind, Out,
    Submit, Token, WithBackend,
};
use serde::Serialize;

use crate::fileset;
use crate::proc::{sample_process, Sample};

/// Bytes one read asks for (the thread baseline and the backends alike).
pub const READ_CHUNK: usize = 256 * 1024;

/// One measured run.
#[derive(Clone, Debug, Serialize)]
pub struct Measurement {
    /// `getpid`, `open-stat` or `open-stat-read`.
    pub bench: String,
    /// `direct`, `threads`, or a backend name.
    pub way: String,
    /// Helper pool bound and most operations in flight (backends), or threads (baseline).
    pub threads: usize,
    /// `cold`, `warm`, or empty for `getpid`.
    pub cache: String,
    /// Calls or requests made.
    pub ops: u64,
    /// Wall time, seconds (the median run's, after [`median`]).
    pub seconds: f64,
    /// Fastest and slowest of the repetitions [`median`] chose from (both `seconds` for one run).
    pub seconds_min: f64,
    /// See `seconds_min`.
    pub seconds_max: f64,
    /// Nanoseconds per call or request.
    pub ns_per_op: f64,
    /// Bytes read (open-stat-read).
    pub bytes: u64,
    /// Voluntary + involuntary context switches of the whole process during the run.
    pub context_switches: u64,
    /// Operations that went to a helper thread.
    pub helper_ops: u64,
    /// Helper threads the backend started.
    pub helper_threads: usize,
}

impl Measurement {
    /// A run of `ops` calls or requests that took `seconds`; the other counts start at zero.
    fn measured(
        bench: &str,
        way: &str,
        threads: usize,
        ops: u64,
        seconds: f64,
        before: &Sample,
    ) -> Measurement {
        Measurement {
            bench: bench.into(),
            way: way.into(),
            threads,
            cache: String::new(),
            ops,
            seconds,
            seconds_min: seconds,
            seconds_max: seconds,
            ns_per_op: seconds * 1e9 / ops.max(1) as f64,
            bytes: 0,
            context_switches: cs(before),
            helper_ops: 0,
            helper_threads: 0,
        }
    }
}

/// The median of repetitions of one cell (by time), carrying the range of their times.
pub fn median(mut reps: Vec<Measurement>) -> Option<Measurement> {
    reps.sort_by(|a, b| a.seconds.total_cmp(&b.seconds));
    let (lo, hi) = (reps.first()?.seconds, reps.last()?.seconds);
    let mut mid = reps.swap_remove(reps.len() / 2);
    mid.seconds_min = lo;
    mid.seconds_max = hi;
    Some(mid)
}

fn cs(before: &Sample) -> u64 {
    let now = sample_process(std::process::id()).unwrap_or_default();
    let d = now.since(before);
    d.voluntary_cs + d.involuntary_cs
}

fn me() -> Sample {
    sample_process(std::process::id()).unwrap_or_default()
}

fn getpid() -> u64 {
    u64::from(std::process::id())
}

/// `calls` direct `getpid` calls.
pub fn getpid_direct(calls: u64) -> Measurement {
    let before = me();
    let start = Instant::now();
    let mut sum = 0u64;
    for _ in 0..calls {
        sum = sum.wrapping_add(std::hint::black_box(getpid()));
    }
    std::hint::black_box(sum);
    let seconds = start.elapsed().as_secs_f64();
    Measurement::measured("getpid", "direct", 1, calls, seconds, &before)
}

/// `calls` `getpid` calls through backend `kind`, at most `inflight` at once (and as many
/// helper threads).
pub fn getpid_backend(
    kind: BackendKind,
    calls: u64,
    inflight: usize,
) -> anyhow::Result<Measurement> {
    let cfg = EngineConfig {
        helpers: inflight,
        ..EngineConfig::default()
    };
    let mut row = with_backend(kind, &cfg, Getpid { calls, inflight })??;
    row.way = kind.name().into();
    Ok(row)
}

struct Getpid {
    calls: u64,
    inflight: usize,
}

impl WithBackend for Getpid {
    type Output = anyhow::Result<Measurement>;
    fn run<B: Backend>(self, mut b: B) -> anyhow::Result<Measurement> {
        let before = me();
        let start = Instant::now();
        let (mut submitted, mut finished, mut pending) = (0u64, 0u64, 0usize);
        let mut done: Vec<Completion> = Vec::with_capacity(self.inflight);
        let mut sum = 0u64;
        while finished < self.calls {
            while submitted < self.calls && pending < self.inflight.max(1) {
                submitted += 1;
                // A closure that captures nothing: boxing it does not allocate.
                match b.submit(Token(submitted), Op::Call(Box::new(|_| Ok(getpid())))) {
                    Submit::Done(c) => {
                        sum = sum.wrapping_add(c.result? as u64);
                        finished += 1;
                    }
                    Submit::Pending => pending += 1,
                }
            }
            if pending > 0 {
                b.poll(&mut done, Some(Duration::from_secs(10)))?;
                for c in done.drain(..) {
                    sum = sum.wrapping_add(c.result? as u64);
                    pending -= 1;
                    finished += 1;
                }
            }
        }
        std::hint::black_box(sum);
        let seconds = start.elapsed().as_secs_f64();
        Ok(Measurement {
            helper_ops: b.counters().op(OpKind::Call).helper,
            helper_threads: b.helper_threads(),
            ..Measurement::measured("getpid", "", self.inflight, self.calls, seconds, &before)
        })
    }
}

/// The files and request sequence an open-stat run walks.
pub struct Trace {
    /// The directory paths are relative to.
    pub root: PathBuf,
    /// Request paths, relative, in order.
    pub requests: Vec<CString>,
    /// Every distinct file (for cache control).
    pub files: Vec<PathBuf>,
}

impl Trace {
    /// A trace over a materialised fileset: `requests` are indexes into `files` paths.
    pub fn new(root: &Path, paths: &[String], requests: &[u32]) -> anyhow::Result<Trace> {
        let rel: Vec<CString> = paths
            .iter()
            .map(|p| CString::new(p.trim_start_matches('/')).context("NUL in a path"))
            .collect::<anyhow::Result<_>>()?;
        Ok(Trace {
            root: root.to_path_buf(),
            requests: requests.iter().map(|&i| rel[i as usize].clone()).collect(),
            files: paths
                .iter()
                .map(|p| root.join(p.trim_start_matches('/')))
                .collect(),
        })
    }
}

/// How cold a cold run is.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Cold {
    /// Share of the files' pages still cached after dropping (should be ~0).
    pub cached_fraction: f64,
    /// Whether dentries and inodes were dropped too (`/proc/sys/vm/drop_caches`, root only);
    /// without it a cold `open`/`stat` finds the directory entries cached.
    pub dentries_dropped: bool,
}

/// Make the trace's files cold: data pages with `fadvise(DONTNEED)` (verified with
/// `cachestat`), and as root the kernel's dentry and inode caches too.
pub fn make_cold(trace: &Trace) -> anyhow::Result<Cold> {
    let r = fileset::drop_cache(&trace.files).context("dropping the files from the cache")?;
    // "2": reclaimable slab objects (dentries, inodes) — system-wide, nothing to undo.
    let dentries_dropped = std::fs::write("/proc/sys/vm/drop_caches", "2").is_ok();
    Ok(Cold {
        cached_fraction: r.fraction(),
        dentries_dropped,
    })
}

/// Make the trace's files warm (read once) and look every path up once.
pub fn make_warm(trace: &Trace) -> anyhow::Result<f64> {
    Ok(fileset::warm_cache(&trace.files)
        .context("reading the files into the cache")?
        .fraction())
}

fn bench_name(read: bool) -> &'static str {
    if read {
        "open-stat-read"
    } else {
        "open-stat"
    }
}

/// Thread per request: `threads` threads, request `i` on thread `i % threads`, each request
/// the engine's own blocking open ([`setup::open_beneath`]) + `fstat` (+ `pread` to the end)
/// in sequence.
pub fn open_stat_threads(trace: &Trace, threads: usize, read: bool) -> anyhow::Result<Measurement> {
    let dir = setup::open_dir(&trace.root).context("opening the fileset root")?;
    let threads = threads.max(1);
    let before = me();
    let start = Instant::now();
    let bytes = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let dir = &dir;
                s.spawn(move || -> std::io::Result<u64> {
                    let mut buf = vec![0u8; READ_CHUNK];
                    let mut bytes = 0u64;
                    for path in trace.requests.iter().skip(t).step_by(threads) {
                        let fd = setup::open_beneath(dir, path)?;
                        let st = rustix::fs::fstat(&fd)?;
                        if read {
                            bytes += read_all(&fd, st.st_size as u64, &mut buf)?;
                        }
                    }
                    Ok(bytes)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("open-stat thread panicked"))
            .sum::<std::io::Result<u64>>()
    })?;
    let seconds = start.elapsed().as_secs_f64();
    let n = trace.requests.len() as u64;
    Ok(Measurement {
        bytes,
        ..Measurement::measured(bench_name(read), "threads", threads, n, seconds, &before)
    })
}

fn read_all(fd: &OwnedFd, size: u64, buf: &mut [u8]) -> std::io::Result<u64> {
    let mut off = 0u64;
    while off < size {
        let n = rustix::io::pread(fd, &mut *buf, off)?;
        if n == 0 {
            break;
        }
        off += n as u64;
    }
    Ok(off)
}

/// The same requests event-driven through backend `kind`, at most `inflight` at once (and as
/// many helper threads).
pub fn open_stat_backend(
    kind: BackendKind,
    trace: &Trace,
    inflight: usize,
    read: bool,
) -> anyhow::Result<Measurement> {
    let dir = Arc::new(setup::open_dir(&trace.root).context("opening the fileset root")?);
    let cfg = EngineConfig {
        helpers: inflight,
        probe_dir: Some(Arc::clone(&dir)),
        ..EngineConfig::default()
    };
    let job = OpenStat {
        trace,
        dir,
        inflight: inflight.max(1),
        read,
    };
    let mut row = with_backend(kind, &cfg, job)??;
    row.way = kind.name().into();
    Ok(row)
}

struct OpenStat<'a> {
    trace: &'a Trace,
    dir: lair_io::SharedFd,
    inflight: usize,
    read: bool,
}

/// Where one in-flight request is.
enum Stage {
    Idle,
    Opening,
    Stating(lair_io::SharedFd),
    Reading {
        file: lair_io::SharedFd,
        offset: u64,
        size: u64,
    },
}

impl OpenStat<'_> {
    /// The next operation of a slot after completion `c`, or `None` when its request is done.
    /// `spare` is the slot's read buffer, reused from request to request (as the thread
    /// baseline reuses its own): a fresh 256 KiB allocation per file would be a fresh `mmap`
    /// and 64 page faults, measured instead of the reads.
    fn next(
        &self,
        stage: &mut Stage,
        spare: &mut Vec<u8>,
        c: Completion,
        bytes: &mut u64,
    ) -> anyhow::Result<Option<Op>> {
        let kind = c.kind;
        let n = c
            .result
            .with_context(|| format!("{} failed", kind.name()))?;
        Ok(match (std::mem::replace(stage, Stage::Idle), c.out) {
            (Stage::Opening, Out::File(fd)) => {
                let file = Arc::new(fd);
                *stage = Stage::Stating(Arc::clone(&file));
                Some(Op::Stat { file })
            }
            (Stage::Stating(file), Out::Stat(st)) if self.read && st.len_bytes > 0 => {
                *stage = Stage::Reading {
                    file: Arc::clone(&file),
                    offset: 0,
                    size: st.len_bytes,
                };
                Some(read_op(file, 0, std::mem::take(spare)))
            }
            (Stage::Stating(_), Out::Stat(_)) => None,
            (Stage::Reading { file, offset, size }, Out::Buf(BufMut::Vec(buf))) => {
                *bytes += n as u64;
                let offset = offset + n as u64;
                if n == 0 || offset >= size {
                    *spare = buf;
                    None
                } else {
                    *stage = Stage::Reading {
                        file: Arc::clone(&file),
                        offset,
                        size,
                    };
                    Some(read_op(file, offset, buf))
                }
            }
            (_, out) => anyhow::bail!("unexpected completion {kind:?} with {out:?}"),
        })
    }
}

fn read_op(file: lair_io::SharedFd, offset: u64, mut buf: Vec<u8>) -> Op {
    buf.clear();
    buf.reserve(READ_CHUNK);
    Op::Read {
        file,
        offset,
        len: READ_CHUNK,
        buf: BufMut::Vec(buf),
        to: None,
    }
}

impl WithBackend for OpenStat<'_> {
    type Output = anyhow::Result<Measurement>;
    fn run<B: Backend>(self, mut b: B) -> anyhow::Result<Measurement> {
        let before = me();
        let start = Instant::now();
        let mut stages: Vec<Stage> = (0..self.inflight).map(|_| Stage::Idle).collect();
        let mut spares: Vec<Vec<u8>> = (0..self.inflight)
            .map(|_| Vec::with_capacity(READ_CHUNK))
            .collect();
        let mut next_request = 0usize;
        let mut active = 0usize;
        let mut bytes = 0u64;
        let mut ready: Vec<Completion> = Vec::new();
        let mut done: Vec<Completion> = Vec::new();
        let n = self.trace.requests.len();
        loop {
            // Give every idle slot its next request.
            for (i, stage) in stages.iter_mut().enumerate() {
                if matches!(stage, Stage::Idle) && next_request < n {
                    let path = self.trace.requests[next_request].clone();
                    next_request += 1;
                    active += 1;
                    *stage = Stage::Opening;
                    let op = Op::Open {
                        dir: Arc::clone(&self.dir),
                        path,
                        beneath: true,
                        prefetch: 0,
                    };
                    if let Submit::Done(c) = b.submit(Token(i as u64), op) {
                        ready.push(c);
                    }
                }
            }
            if active == 0 {
                break;
            }
            if ready.is_empty() {
                b.poll(&mut done, Some(Duration::from_secs(30)))?;
                ready.append(&mut done);
            }
            while let Some(c) = ready.pop() {
                let i = c.token.0 as usize;
                match self.next(&mut stages[i], &mut spares[i], c, &mut bytes)? {
                    Some(op) => {
                        if let Submit::Done(c) = b.submit(Token(i as u64), op) {
                            ready.push(c);
                        }
                    }
                    None => active -= 1,
                }
            }
        }
        let seconds = start.elapsed().as_secs_f64();
        let c = b.counters();
        let helper_ops = [OpKind::Open, OpKind::Stat, OpKind::Read]
            .into_iter()
            .map(|k| c.op(k).helper)
            .sum();
        Ok(Measurement {
            bytes,
            helper_ops,
            helper_threads: b.helper_threads(),
            ..Measurement::measured(
                bench_name(self.read),
                "",
                self.inflight,
                n as u64,
                seconds,
                &before,
            )
        })
    }
}

/// Rows as a Markdown table, with each row's time relative to its baseline (same bench and
/// cache: the direct call, or the thread baseline with as many threads) and its range.
pub fn table(rows: &[Measurement]) -> String {
    let mut out = String::from(
        "| bench | cache | way | threads | ops | time (s) | ns/op | × base | context switches | helper ops | range (s) |\n\
         |---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in rows {
        let base = rows
            .iter()
            .find(|b| {
                b.bench == r.bench
                    && b.cache == r.cache
                    && (b.way == "direct" || (b.way == "threads" && b.threads == r.threads))
            })
            .map_or(f64::NAN, |b| r.seconds / b.seconds);
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {:.3} | {:.0} | {:.2} | {} | {} | {:.3}–{:.3} |\n",
            r.bench,
            if r.cache.is_empty() { "-" } else { &r.cache },
            r.way,
            r.threads,
            r.ops,
            r.seconds,
            r.ns_per_op,
            base,
            r.context_switches,
            r.helper_ops,
            r.seconds_min,
            r.seconds_max
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small_trace(dir: &Path) -> Trace {
        let paths: Vec<String> = (0..20).map(|i| format!("/d{}/f{i}", i % 3)).collect();
        for (i, p) in paths.iter().enumerate() {
            let f = dir.join(p.trim_start_matches('/'));
            std::fs::create_dir_all(f.parent().unwrap()).unwrap();
            std::fs::write(f, vec![7u8; i * 40_000]).unwrap();
        }
        let requests: Vec<u32> = (0..100).map(|i| (i * 7 % 20) as u32).collect();
        Trace::new(dir, &paths, &requests).unwrap()
    }

    #[test]
    fn every_way_reads_the_same_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let trace = small_trace(dir.path());
        let expect: u64 = (0..100u64).map(|i| (i * 7 % 20) * 40_000).sum();
        let base = open_stat_threads(&trace, 3, true).unwrap();
        assert_eq!((base.ops, base.bytes), (100, expect));
        for kind in BackendKind::ALL {
            for inflight in [1, 10] {
                let r = open_stat_backend(kind, &trace, inflight, true).unwrap();
                assert_eq!((r.ops, r.bytes), (100, expect), "{kind} × {inflight}");
                let r = open_stat_backend(kind, &trace, inflight, false).unwrap();
                assert_eq!((r.ops, r.bytes), (100, 0), "{kind} × {inflight}");
                if kind == BackendKind::Eager {
                    assert_eq!(r.helper_ops, 200, "eager: every open and stat on a helper");
                }
            }
        }
    }

    #[test]
    fn getpid_counts_calls_and_helpers() {
        let d = getpid_direct(1000);
        assert_eq!(d.ops, 1000);
        for kind in BackendKind::ALL {
            let r = getpid_backend(kind, 1000, 10).unwrap();
            assert_eq!(r.ops, 1000);
            let expect = match kind {
                BackendKind::Eager | BackendKind::Hybrid => 1000,
                _ => 0,
            };
            assert_eq!(r.helper_ops, expect, "{kind}");
            assert!(r.helper_threads <= 10);
        }
        let t = table(&[d]);
        assert!(t.contains("| getpid | - | direct | 1 | 1000 |"), "{t}");
    }

    #[test]
    fn missing_files_are_errors_not_skips() {
        let dir = tempfile::tempdir().unwrap();
        let trace = Trace::new(dir.path(), &["/gone".into()], &[0]).unwrap();
        assert!(open_stat_threads(&trace, 1, false).is_err());
        for kind in BackendKind::ALL {
            let e = open_stat_backend(kind, &trace, 2, false).unwrap_err();
            assert!(format!("{e:#}").contains("No such file"), "{kind}: {e:#}");
        }
    }
}
