//! The thread-per-connection model (`--model threads`): seed 000's Apache-like server, the
//! way Apache's worker MPM runs — a bounded pool of threads, each serving one connection at a
//! time with blocking calls.
//!
//! Why: seed 000 measures deferred event delivery in such a server, where a thread that
//! reads a chunk from the disk and then writes it to a slow client blocks twice per chunk; and
//! operators know this model (Apache) as the baseline an event loop is compared with. It runs
//! the very same [`Conn`] state machine as the event loop — parsing, limits, validators,
//! logging — through [`lair_io::Blocking`], which runs each operation to its end on the
//! calling thread (waiting for a socket with `poll`, bounded by the connection's deadline).
//! Large bodies go by `sendfile` or, with `--data copy`, through the thread's buffer (read a
//! chunk, send it), as Apache does by default (`EnableSendfile Off`); with `--ecem ded` the
//! executor starts each chunk's read, waits for room on the socket, then reads and sends it.
//!
//! Threads: one accepting thread per listener (per `--workers` × `--listen`), which admits a
//! connection under the cap (`--max-connections` over the whole server, as in the event loop)
//! or answers 503 at once without waiting, and queues it; connection threads, started on
//! demand up to `--threads` and retired after a keep-alive timeout idle, take connections
//! from the queue. A connection waits in the queue while every thread is busy (Apache leaves
//! it in the listen backlog). A supervisor joins the accepting threads at shutdown, then waits
//! for the connection threads (each finishes its response, bounded by `--shutdown-timeout`)
//! and returns one report for the whole pool.
//!
//! Invariants: a connection thread that panics still gives back its place in the pool and its
//! connection's places under the cap (drop guards); no wait outlasts the connection's
//! deadline; an idle connection is closed at shutdown.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use lair_io::{Blocking, Counters, Gather, Op, Out, SharedFd, Token, Waker};

use crate::cache::FileCache;
use crate::conn::{BufPool, Conn, Cx, Next, Phase};
use crate::log::LogClock;
use crate::response::DateCache;
use crate::worker::{is_fd_exhaustion, ACCEPT_BACKOFF, LOG_FLUSH_BYTES};
use crate::{Error, HttpStats, ServerState, WorkerReport};

/// Files each connection thread keeps open in its own cache (it serves one connection at a
/// time; a large shared cache would be lock traffic for every request).
const CACHE_PER_THREAD: usize = 64;
/// How long the supervisor waits past the shutdown timeout for connection threads stuck in
/// a disk call.
const JOIN_GRACE: Duration = Duration::from_secs(5);

/// A connection waiting for a thread.
struct Accepted {
    sock: SharedFd,
    peer: Option<SocketAddr>,
}

/// The pool's shared state.
struct PoolState {
    waiting: VecDeque<Accepted>,
    idle: usize,
    threads: usize,
    peak: usize,
    stopping: bool,
    /// What exited threads did, summed.
    engine: Counters,
    http: HttpStats,
    spawn_failed_logged: Option<Instant>,
}

struct Pool {
    shared: Arc<ServerState>,
    stop: Waker,
    state: Mutex<PoolState>,
    /// A connection was queued, or the pool is stopping.
    work: Condvar,
    /// A connection thread exited.
    exited: Condvar,
}

impl Pool {
    fn lock(&self) -> MutexGuard<'_, PoolState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queue a connection; start a thread for it if none is idle and the pool may grow.
    fn push(self: &Arc<Self>, a: Accepted) {
        let mut st = self.lock();
        st.waiting.push_back(a);
        if st.idle > 0 || st.threads >= self.shared.cfg.threads {
            drop(st);
            self.work.notify_one();
            return;
        }
        st.threads += 1;
        st.peak = st.peak.max(st.threads);
        let id = st.threads;
        let pool = Arc::clone(self);
        let spawned = std::thread::Builder::new()
            .name(format!("lair-conn-{id}"))
            .spawn(move || connection_thread(pool));
        if let Err(e) = spawned {
            st.threads -= 1;
            let quiet = st
                .spawn_failed_logged
                .is_some_and(|t| t.elapsed() < Duration::from_secs(10));
            if !quiet {
                st.spawn_failed_logged = Some(Instant::now());
                tracing::warn!(
                    "threads: cannot start a connection thread ({e}); {} running, the \
                     connection waits for one of them",
                    st.threads
                );
            }
            if st.threads == 0 {
                // Nobody would ever take it.
                st.waiting.pop_back();
            }
        }
    }

    /// The next connection for a connection thread; `None`: the thread should exit (the pool
    /// stops, or it was idle for a keep-alive timeout).
    fn take(&self) -> Option<Accepted> {
        let idle_for = self
            .shared
            .cfg
            .keepalive_timeout
            .max(Duration::from_secs(1));
        let mut st = self.lock();
        loop {
            if let Some(a) = st.waiting.pop_front() {
                return Some(a);
            }
            if st.stopping {
                return None;
            }
            st.idle += 1;
            let (g, waited) = self
                .work
                .wait_timeout(st, idle_for)
                .unwrap_or_else(PoisonError::into_inner);
            st = g;
            st.idle -= 1;
            if waited.timed_out() && st.waiting.is_empty() {
                return None;
            }
        }
    }
}

/// Gives a connection thread's place back and its figures to the pool, also if it panics.
struct ThreadGuard {
    pool: Arc<Pool>,
    local: Option<Local>,
}

impl Drop for ThreadGuard {
    fn drop(&mut self) {
        let local = self.local.take().map(|mut l| {
            l.finish();
            (l.exec.counters(), l.stats)
        });
        let mut st = self.pool.lock();
        if let Some((engine, http)) = local {
            st.engine.merge(&engine);
            st.http.merge(&http);
        }
        st.threads -= 1;
        drop(st);
        self.pool.exited.notify_all();
    }
}

/// Gives a connection's places under the cap back when it ends, also by a panic.
struct ConnGuard<'a> {
    shared: &'a ServerState,
    admitted: bool,
}

impl Drop for ConnGuard<'_> {
    fn drop(&mut self) {
        self.shared.open.fetch_sub(1, Ordering::Relaxed);
        if self.admitted {
            self.shared.admitted.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// What one thread (accepting or serving) keeps for the connections it runs.
struct Local {
    shared: Arc<ServerState>,
    exec: Blocking,
    date: DateCache,
    clock: LogClock,
    stats: HttpStats,
    log: Vec<u8>,
    last_flush: Instant,
    log_warned: Option<Instant>,
    cache: FileCache,
    bufs: BufPool,
}

impl Local {
    fn new(shared: &Arc<ServerState>, stop: &Waker) -> Self {
        let cfg = &shared.cfg;
        Local {
            shared: Arc::clone(shared),
            exec: Blocking::new(stop, cfg.ecem, cfg.notsent_lowat, cfg.shutdown_timeout),
            date: DateCache::default(),
            clock: LogClock::default(),
            stats: HttpStats::default(),
            log: Vec::new(),
            last_flush: Instant::now(),
            log_warned: None,
            cache: FileCache::new(
                cfg.file_cache_ttl,
                cfg.file_cache_entries.min(CACHE_PER_THREAD),
                (cfg.cache_bytes / cfg.threads.max(1)) as u64,
                shared.watcher.clone(),
            ),
            bufs: BufPool::default(),
        }
    }

    fn stopping(&self) -> bool {
        self.exec.stopping() || self.shared.stop.load(Ordering::Acquire)
    }

    /// Serve one connection to its end. `quick`: no operation may wait (a 503 over the cap,
    /// answered by the accepting thread).
    fn serve(&mut self, a: Accepted, admitted: bool, quick: bool) {
        let shared = Arc::clone(&self.shared);
        let _places = ConnGuard {
            shared: &shared,
            admitted,
        };
        let now = Instant::now();
        let mut conn = Conn::new(a.sock, a.peer, now);
        conn.admitted = admitted;
        let mut done = None;
        let mut first = true;
        loop {
            let now = Instant::now();
            let unix_now = self.date.refresh(SystemTime::now());
            let stopping = self.stopping();
            let mut cx = Cx {
                cfg: &shared.cfg,
                root: &shared.root,
                date: &self.date,
                clock: &mut self.clock,
                unix_now,
                now,
                stats: &mut self.stats,
                log: shared.log.as_ref().map(|_| &mut self.log),
                cache: &mut self.cache,
                bufs: &mut self.bufs,
                stopping,
            };
            let next = match (std::mem::take(&mut first), admitted) {
                (true, true) => conn.step(&mut cx, None),
                (true, false) => conn.overloaded(&mut cx),
                (false, _) => conn.step(&mut cx, done.take()),
            };
            let op = match next {
                Next::Close => break,
                Next::Submit(op) => op,
            };
            let idle = conn.is_idle();
            if idle {
                // Waiting for the next request may take long: what is logged goes out first.
                self.flush_log(true);
            } else {
                self.flush_log(false);
            }
            let deadline = if quick { Some(now) } else { conn.deadline };
            let c = self.exec.run(Token(0), op, deadline, idle);
            match c.result.as_ref().map_err(std::io::Error::raw_os_error) {
                // The deadline passed (the worker's tick closes such connections).
                Err(Some(libc::ETIMEDOUT)) => {
                    if self.exec.stopping() && !idle {
                        tracing::warn!(
                            "threads: shutdown deadline passed, closing a connection still in \
                             flight"
                        );
                    } else if conn.phase != Phase::Lingering && !quick {
                        self.stats.timeouts += 1;
                    }
                    break;
                }
                // Idle when the server stops.
                Err(Some(libc::ECANCELED)) => break,
                _ => done = Some(c),
            }
        }
        let _ = self
            .exec
            .run(Token(0), Op::Close { fd: conn.sock }, None, false);
    }

    /// Write the access-log lines held, when enough are or a second passed (or `force`).
    fn flush_log(&mut self, force: bool) {
        if self.log.is_empty() {
            return;
        }
        let due = force
            || self.log.len() >= LOG_FLUSH_BYTES
            || self.last_flush.elapsed() >= Duration::from_secs(1);
        let Some(fd) = self.shared.log.as_ref().filter(|_| due) else {
            return;
        };
        self.last_flush = Instant::now();
        let op = Op::Write {
            file: Arc::clone(fd),
            offset: None,
            bufs: Gather::one(std::mem::take(&mut self.log)),
        };
        let c = self.exec.run(Token(0), op, None, false);
        let failed = match (&c.result, &c.out) {
            (Ok(n), Out::Gather(b)) if *n < b.len() => {
                Some(format!("short write ({n} of {} bytes)", b.len()))
            }
            (Err(e), _) => Some(e.to_string()),
            _ => None,
        };
        if let Out::Gather(mut g) = c.out {
            // The buffer is kept for the next lines.
            self.log = g.take(0).into_vec().unwrap_or_default();
            self.log.clear();
        }
        if let Some(e) = failed {
            if self
                .log_warned
                .is_none_or(|t| t.elapsed() > Duration::from_secs(10))
            {
                self.log_warned = Some(Instant::now());
                tracing::warn!("access log write failed: {e}; lines lost");
            }
        }
    }

    /// At exit: what is logged goes out; the file cache's figures into the statistics.
    fn finish(&mut self) {
        self.flush_log(true);
        self.stats.file_cache_hits += self.cache.hits;
        self.stats.file_cache_misses += self.cache.misses;
        self.stats.file_cache_changed += self.cache.changed;
        self.stats.file_cache_evictions += self.cache.evictions;
        self.stats.file_cache_bytes = self.cache.bytes;
        self.cache.hits = 0;
        self.cache.misses = 0;
        self.cache.changed = 0;
        self.cache.evictions = 0;
    }
}

fn connection_thread(pool: Arc<Pool>) {
    let mut guard = ThreadGuard {
        local: Some(Local::new(&pool.shared, &pool.stop)),
        pool: Arc::clone(&pool),
    };
    while let Some(a) = pool.take() {
        if let Some(l) = guard.local.as_mut() {
            l.serve(a, true, false);
        }
    }
}

/// Accept on one listener until the server stops; admit or answer 503; queue.
fn accept_thread(pool: Arc<Pool>, listener: OwnedFd) -> (Counters, HttpStats) {
    let shared = Arc::clone(&pool.shared);
    let listener = Arc::new(listener);
    let mut local = Local::new(&shared, &pool.stop);
    let mut backoff_logged: Option<Instant> = None;
    while !local.stopping() {
        let op = Op::Accept {
            listener: Arc::clone(&listener),
        };
        let c = local.exec.run(Token(0), op, None, true);
        match (c.result, c.out) {
            (Ok(_), Out::Conn(sock, peer)) => {
                local.stats.connections += 1;
                shared.open.fetch_add(1, Ordering::Relaxed);
                let cap = shared.max_open;
                let admitted = shared
                    .admitted
                    .fetch_update(Ordering::AcqRel, Ordering::Acquire, |a| {
                        (a < cap).then_some(a + 1)
                    })
                    .is_ok();
                let a = Accepted { sock, peer };
                if admitted {
                    pool.push(a);
                } else {
                    // Over the cap: 503 without waiting for the client, so a flood cannot
                    // hold the accepting thread.
                    local.serve(a, false, true);
                }
            }
            (Err(e), _) if e.raw_os_error() == Some(libc::ECANCELED) => break,
            (Err(e), _) if is_fd_exhaustion(&e) => {
                local.stats.accept_backoffs += 1;
                if backoff_logged.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                    backoff_logged = Some(Instant::now());
                    tracing::warn!(
                        "threads: accept: {e}; pausing accepts for {ACCEPT_BACKOFF:?} (raise \
                         the descriptor limit or lower --max-connections)"
                    );
                }
                std::thread::sleep(ACCEPT_BACKOFF);
            }
            (Err(e), _) => tracing::debug!("threads: accept: {e}"),
            (Ok(_), _) => {}
        }
    }
    local.finish();
    (local.exec.counters(), local.stats)
}

/// Start the model: the supervisor thread, which starts the rest and returns the report.
pub(crate) fn start(
    shared: Arc<ServerState>,
    listeners: Vec<Vec<OwnedFd>>,
) -> Result<JoinHandle<Result<WorkerReport, Error>>, Error> {
    let cfg = &shared.cfg;
    if cfg.backend != lair_io::BackendKind::Lazy {
        tracing::info!(
            "model threads: --backend {} is not used (each connection thread blocks in its \
             own calls)",
            cfg.backend
        );
    }
    if cfg.ecem.dns {
        tracing::warn!(
            "model threads: --ecem dns is not applied (disk-to-network splicing paces the \
             event loop's sendfile)"
        );
    }
    let stop =
        Blocking::stop_signal().map_err(|e| Error::Worker(0, format!("stop signal: {e}")))?;
    shared
        .wakers
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(stop.clone());
    let pool = Arc::new(Pool {
        shared: Arc::clone(&shared),
        stop,
        state: Mutex::new(PoolState {
            waiting: VecDeque::new(),
            idle: 0,
            threads: 0,
            peak: 0,
            stopping: false,
            engine: Counters::new(Blocking::NAME),
            http: HttpStats::default(),
            spawn_failed_logged: None,
        }),
        work: Condvar::new(),
        exited: Condvar::new(),
    });
    let mut acceptors = Vec::new();
    for (i, l) in listeners.into_iter().flatten().enumerate() {
        let p = Arc::clone(&pool);
        let t = std::thread::Builder::new()
            .name(format!("lair-accept-{i}"))
            .spawn(move || accept_thread(p, l))
            .map_err(|e| Error::Worker(i, e.to_string()))?;
        acceptors.push(t);
    }
    std::thread::Builder::new()
        .name("lair-threads".into())
        .spawn(move || supervise(pool, acceptors))
        .map_err(|e| Error::Worker(0, e.to_string()))
}

fn supervise(
    pool: Arc<Pool>,
    acceptors: Vec<JoinHandle<(Counters, HttpStats)>>,
) -> Result<WorkerReport, Error> {
    let mut engine = Counters::new(Blocking::NAME);
    let mut http = HttpStats::default();
    let mut failed = None;
    for (i, t) in acceptors.into_iter().enumerate() {
        match t.join() {
            Ok((e, h)) => {
                engine.merge(&e);
                http.merge(&h);
            }
            Err(_) => {
                failed.get_or_insert(Error::Worker(i, "accepting thread panicked".into()));
            }
        }
    }
    // Accepting has ended: the server is stopping (or an accepting thread failed).
    pool.stop.wake();
    let deadline = Instant::now() + pool.shared.cfg.shutdown_timeout + JOIN_GRACE;
    let mut st = pool.lock();
    st.stopping = true;
    pool.work.notify_all();
    while st.threads > 0 {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            tracing::warn!(
                "threads: {} connection threads still busy past the shutdown deadline",
                st.threads
            );
            break;
        }
        st = pool
            .exited
            .wait_timeout(st, left)
            .unwrap_or_else(PoisonError::into_inner)
            .0;
    }
    engine.merge(&st.engine);
    http.merge(&st.http);
    let peak = st.peak;
    drop(st);
    if let Some(e) = failed {
        return Err(e);
    }
    engine.backend = Blocking::NAME;
    Ok(WorkerReport {
        worker: 0,
        engine,
        http,
        helper_threads: peak,
        scheduler: Blocking::NAME,
    })
}
