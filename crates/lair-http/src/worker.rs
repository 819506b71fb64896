//! One worker: an event loop over one engine instance, its listeners and its connections.
//!
//! Why per worker: each worker owns its engine (epoll set, helper pool), its `SO_REUSEPORT`
//! listeners and its connection table, so workers share nothing on the request path.
//!
//! The loop: `poll` the engine; hand each completion to the [`Scheduler`], which says which
//! connection runs next ([`Conn::step`], then the operation it asks for is submitted; one that
//! finishes inline goes back to the scheduler); every 100 ms scan
//! deadlines (header, keep-alive, send-stall, linger) and resume paused listeners; flush the
//! access log. Connections are named by a [`Token`] of slot and generation, so a completion
//! that arrives after its connection closed is recognised and dropped.

use std::io;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use lair_io::{Backend, Completion, Gather, Op, Out, SharedFd, Submit, Token};

use crate::cache::FileCache;
use crate::conn::{BufPool, Conn, Cx, Next, Phase};
use crate::log::LogClock;
use crate::response::DateCache;
use crate::schedule::{Input, Scheduler, Work};
use crate::{HttpStats, ServerState, WorkerReport};

/// How often deadlines are checked.
const TICK: Duration = Duration::from_millis(100);
/// Connection slots kept however idle the worker is.
const SLOTS_KEPT: usize = 256;
/// How often idle memory may be handed back.
const RELEASE_EVERY: Duration = Duration::from_secs(5);
/// How long accepting pauses after `EMFILE`/`ENFILE`.
pub(crate) const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// Most connections accepted per listener per loop turn.
const ACCEPT_BATCH: usize = 64;
/// Log buffer size that triggers a flush before the second is up.
pub(crate) const LOG_FLUSH_BYTES: usize = 32 * 1024;
/// Token of the access-log write.
const LOG_TOKEN: Token = Token(u64::MAX);
/// Token of every `Op::Close`: its own space, never a listener's (generation 0) or a
/// connection's token, so a close that a backend finishes later is recognised and dropped.
const CLOSE_TOKEN: Token = Token(u64::MAX - 1);

struct Listener {
    fd: SharedFd,
    armed: bool,
    paused_until: Option<Instant>,
    again: bool,
}

struct ConnSlot {
    gen: u32,
    conn: Option<Conn>,
}

struct LogState {
    fd: SharedFd,
    buf: Vec<u8>,
    inflight: bool,
    last_flush: Instant,
    warned: Option<Instant>,
}

pub(crate) struct Worker<B: Backend, S: Scheduler> {
    id: usize,
    engine: B,
    sched: S,
    shared: Arc<ServerState>,
    listeners: Vec<Listener>,
    slots: Vec<ConnSlot>,
    free: Vec<u32>,
    live: usize,
    /// The generation of the newest connection: unique to each, so a late completion for a
    /// closed connection never reaches whatever reuses (or re-creates) its slot.
    next_gen: u32,
    /// When idle memory was last handed back ([`Worker::release_idle`]), and the
    /// connections served by then.
    last_release: Option<Instant>,
    released_after: u64,
    /// When a connection last closed.
    last_close: Instant,
    /// Connections allowed over all workers (`ServerState::open`) before answering 503, and
    /// the allowance past it before refusing to accept at all.
    cap: usize,
    overflow_cap: usize,
    date: DateCache,
    clock: LogClock,
    unix_now: u64,
    now: Instant,
    stats: HttpStats,
    log: Option<LogState>,
    cache: FileCache,
    bufs: BufPool,
    stopping: bool,
    stop_deadline: Option<Instant>,
    next_tick: Instant,
    last_backoff_log: Option<Instant>,
}

fn token(idx: u32, gen: u32) -> Token {
    Token(u64::from(gen) << 32 | u64::from(idx))
}

impl<B: Backend, S: Scheduler> Worker<B, S> {
    pub fn new(id: usize, engine: B, shared: Arc<ServerState>, listeners: Vec<OwnedFd>) -> Self {
        let cap = shared.max_open;
        let now = Instant::now();
        let log = shared.log.as_ref().map(|fd| LogState {
            fd: Arc::clone(fd),
            buf: Vec::with_capacity(LOG_FLUSH_BYTES * 2),
            inflight: false,
            last_flush: now,
            warned: None,
        });
        Worker {
            id,
            engine,
            sched: S::new(),
            listeners: listeners
                .into_iter()
                .map(|fd| Listener {
                    fd: Arc::new(fd),
                    armed: false,
                    paused_until: None,
                    again: false,
                })
                .collect(),
            slots: Vec::new(),
            free: Vec::new(),
            live: 0,
            next_gen: 0,
            last_release: None,
            released_after: 0,
            last_close: now,
            cap,
            overflow_cap: cap / 8 + 16,
            date: DateCache::default(),
            clock: LogClock::default(),
            unix_now: 0,
            now,
            stats: HttpStats::default(),
            shared: Arc::clone(&shared),
            log,
            cache: FileCache::new(
                shared.cfg.file_cache_ttl,
                shared.cfg.file_cache_entries,
                (shared.cfg.cache_bytes / shared.cfg.workers.max(1)) as u64,
                shared.watcher.clone(),
            ),
            bufs: BufPool::default(),
            stopping: false,
            stop_deadline: None,
            next_tick: now + TICK,
            last_backoff_log: None,
        }
    }

    pub fn run(mut self) -> Result<WorkerReport, lair_io::Error> {
        for i in 0..self.listeners.len() {
            self.accept_loop(i);
        }
        self.run_scheduled();
        let mut done: Vec<Completion> = Vec::with_capacity(256);
        loop {
            self.now = Instant::now();
            self.unix_now = self.date.refresh(SystemTime::now());
            if !self.stopping && self.shared.stop.load(Ordering::Acquire) {
                self.begin_stop();
            }
            if self.stopping {
                let log_busy = self.log.as_ref().is_some_and(|l| l.inflight);
                if self.live == 0 && !log_busy {
                    break;
                }
                if self.stop_deadline.is_some_and(|d| self.now >= d) {
                    tracing::warn!(
                        "worker {}: shutdown deadline passed, closing {} connections",
                        self.id,
                        self.live
                    );
                    self.close_all();
                    break;
                }
            }
            if self.now >= self.next_tick {
                self.tick();
                self.next_tick = self.now + TICK;
            }
            self.flush_log(false);
            let again = self.listeners.iter().any(|l| l.again);
            let timeout = if again {
                Duration::ZERO
            } else {
                self.next_tick.saturating_duration_since(self.now)
            };
            for i in 0..self.listeners.len() {
                if self.listeners[i].again {
                    self.listeners[i].again = false;
                    self.accept_loop(i);
                }
            }
            self.run_scheduled();
            self.engine.poll(&mut done, Some(timeout))?;
            self.now = Instant::now();
            for c in done.drain(..) {
                self.dispatch(c);
            }
            self.run_scheduled();
        }
        self.flush_log_now();
        self.stats.file_cache_hits = self.cache.hits;
        self.stats.file_cache_misses = self.cache.misses;
        self.stats.file_cache_changed = self.cache.changed;
        self.stats.file_cache_bytes = self.cache.bytes;
        self.stats.file_cache_evictions = self.cache.evictions;
        let mut engine = self.engine.counters();
        engine.backend = B::NAME;
        Ok(WorkerReport {
            worker: self.id,
            engine,
            http: self.stats,
            helper_threads: self.engine.helper_threads(),
            scheduler: S::NAME,
        })
    }

    fn dispatch(&mut self, c: Completion) {
        if c.token == LOG_TOKEN {
            self.log_done(c);
            return;
        }
        if c.token == CLOSE_TOKEN {
            self.closed(c);
            return;
        }
        let idx = (c.token.0 & 0xffff_ffff) as u32;
        let gen = (c.token.0 >> 32) as u32;
        if gen == 0 {
            let li = idx as usize;
            if let Some(l) = self.listeners.get_mut(li) {
                l.armed = false;
                self.accepted(li, c);
                self.accept_loop(li);
            }
            return;
        }
        match self.slots.get(idx as usize) {
            Some(ConnSlot {
                gen: g,
                conn: Some(_),
            }) if *g == gen => {
                self.sched.arrived(Work {
                    idx,
                    gen,
                    input: Input::Done(c),
                });
            }
            // A completion for a connection that is gone (closed while a helper worked).
            _ => {}
        }
    }

    // ---- accepting ---------------------------------------------------------------------

    fn accept_loop(&mut self, li: usize) {
        for _ in 0..ACCEPT_BATCH {
            let l = &self.listeners[li];
            if self.stopping || l.armed || l.paused_until.is_some() {
                return;
            }
            if self.open() >= self.cap + self.overflow_cap {
                // Past the cap and the 503 allowance: stop accepting until a connection closes.
                return;
            }
            let op = Op::Accept {
                listener: Arc::clone(&l.fd),
            };
            match self.engine.submit(token(li as u32, 0), op) {
                Submit::Pending => {
                    self.listeners[li].armed = true;
                    return;
                }
                Submit::Done(c) => self.accepted(li, c),
            }
        }
        self.listeners[li].again = true;
    }

    fn accepted(&mut self, li: usize, c: Completion) {
        match (c.result, c.out) {
            (Ok(_), Out::Conn(fd, peer)) => self.new_conn(fd, peer),
            (Err(e), _) if is_fd_exhaustion(&e) => {
                self.listeners[li].paused_until = Some(self.now + ACCEPT_BACKOFF);
                self.stats.accept_backoffs += 1;
                let quiet = self
                    .last_backoff_log
                    .is_some_and(|t| self.now.duration_since(t) < Duration::from_secs(10));
                if !quiet {
                    self.last_backoff_log = Some(self.now);
                    tracing::warn!(
                        "worker {}: accept: {e}; pausing accepts for {ACCEPT_BACKOFF:?} \
                         (raise the descriptor limit or lower --max-connections)",
                        self.id
                    );
                }
            }
            (Err(e), _) if e.raw_os_error() == Some(libc::ECANCELED) => {}
            (Err(e), _) => tracing::debug!("worker {}: accept: {e}", self.id),
            (Ok(_), _) => {}
        }
    }

    fn new_conn(&mut self, fd: SharedFd, peer: Option<SocketAddr>) {
        self.stats.connections += 1;
        let idx = match self.free.pop() {
            Some(i) => i,
            None => {
                self.slots.push(ConnSlot { gen: 0, conn: None });
                (self.slots.len() - 1) as u32
            }
        };
        self.next_gen = self.next_gen.wrapping_add(1).max(1);
        let slot = &mut self.slots[idx as usize];
        slot.gen = self.next_gen;
        slot.conn = Some(Conn::new(fd, peer, self.now));
        let gen = slot.gen;
        self.live += 1;
        self.shared.open.fetch_add(1, Ordering::Relaxed);
        // Whether it is over the cap is decided when it runs: closes queued before it (from
        // the same `poll`) count first.
        self.sched.arrived(Work {
            idx,
            gen,
            input: Input::Start,
        });
    }

    // ---- connections -------------------------------------------------------------------

    /// Run what the scheduler holds, until it holds nothing.
    fn run_scheduled(&mut self) {
        while let Some(mut w) = self.sched.next() {
            // Steps whose operation finished inline, for as long as the scheduler wants them
            // run at once.
            while let Some(again) = self.step(w) {
                w = again;
            }
        }
    }

    /// One step of one connection: `Conn::step` on the work's input, then submit the operation
    /// it asks for; one that finishes inline goes to the scheduler, which may hand it back to
    /// run at once.
    fn step(&mut self, w: Work) -> Option<Work> {
        let Worker {
            engine,
            sched,
            shared,
            slots,
            date,
            clock,
            stats,
            log,
            cache,
            bufs,
            cap,
            ..
        } = self;
        let slot = slots.get_mut(w.idx as usize)?;
        let gen = slot.gen;
        // None: closed since the work was queued.
        let conn = slot.conn.as_mut().filter(|_| gen == w.gen)?;
        let mut cx = Cx {
            cfg: &shared.cfg,
            root: &shared.root,
            date,
            clock,
            unix_now: self.unix_now,
            now: self.now,
            stats,
            log: log.as_mut().map(|l| &mut l.buf),
            cache,
            bufs,
            stopping: self.stopping,
        };
        let next = match w.input {
            // Admitted in the order connections start, up to the cap over all workers; a
            // connection accepted but not yet started holds no place, so a batch of accepts
            // cannot push earlier connections out (the flaky-test hunt of issue 12 found the
            // first of each batch answered 503 while later ones were served).
            Input::Start => {
                let admitted = shared
                    .admitted
                    .fetch_update(Ordering::AcqRel, Ordering::Acquire, |a| {
                        (a < *cap).then_some(a + 1)
                    })
                    .is_ok();
                if admitted {
                    conn.admitted = true;
                    conn.step(&mut cx, None)
                } else {
                    conn.overloaded(&mut cx)
                }
            }
            Input::Done(c) => conn.step(&mut cx, Some(c)),
        };
        match next {
            Next::Close => {
                self.close(w.idx);
                None
            }
            Next::Submit(op) => match engine.submit(token(w.idx, gen), op) {
                Submit::Done(c) => sched.inline(Work {
                    idx: w.idx,
                    gen,
                    input: Input::Done(c),
                }),
                Submit::Pending => None,
            },
        }
    }

    fn close(&mut self, idx: u32) {
        let Some(conn) = self.slots[idx as usize].conn.take() else {
            return;
        };
        // The slot's generation stays: the next connection in it gets a new, unique one.
        self.free.push(idx);
        self.live -= 1;
        self.last_close = self.now;
        self.shared.open.fetch_sub(1, Ordering::Relaxed);
        if conn.admitted {
            self.shared.admitted.fetch_sub(1, Ordering::AcqRel);
        }
        // Cancels a parked operation; a helper still running on the socket holds its own
        // reference, and its late completion is dropped by the generation check.
        self.submit_close(conn.sock);
        if self.open() < self.cap + self.overflow_cap {
            for l in &mut self.listeners {
                if !l.armed && l.paused_until.is_none() {
                    l.again = true;
                }
            }
        }
    }

    /// Connections open over all workers.
    fn open(&self) -> usize {
        self.shared.open.load(Ordering::Relaxed)
    }

    fn close_all(&mut self) {
        for i in 0..self.slots.len() {
            self.close(i as u32);
        }
    }

    /// Give back what a burst of connections left: drop the slots past the last one in use
    /// and the spare buffers, and hand the allocator's free memory back to the kernel, so a
    /// flood of 10,000 connections does not leave the server 50 MB larger for good (the
    /// soak's RSS check). Runs when three quarters of the slots are free, or when the worker
    /// has been without connections for a second after serving some; at most every
    /// [`RELEASE_EVERY`].
    fn release_idle(&mut self) {
        let len = self.slots.len();
        let burst_gone = len > SLOTS_KEPT && self.live * 4 <= len;
        let quiet = self.live == 0
            && self.stats.connections > self.released_after
            && self.now.duration_since(self.last_close) >= Duration::from_secs(1);
        if !(burst_gone || quiet)
            || self
                .last_release
                .is_some_and(|t| self.now.duration_since(t) < RELEASE_EVERY)
        {
            return;
        }
        while self.slots.len() > SLOTS_KEPT && self.slots.last().is_some_and(|s| s.conn.is_none()) {
            self.slots.pop();
        }
        let kept = self.slots.len();
        if kept < len {
            self.free.retain(|&i| (i as usize) < kept);
            self.slots.shrink_to_fit();
            self.free.shrink_to_fit();
        }
        if self.live == 0 {
            self.bufs.clear();
        }
        self.last_release = Some(self.now);
        self.released_after = self.stats.connections;
        self.stats.memory_releases += 1;
        if self.live == 0 {
            self.engine.release_idle();
        }
        lair_io::setup::release_free_memory();
    }

    fn tick(&mut self) {
        let now = self.now;
        self.cache.expire(now);
        self.release_idle();
        for i in 0..self.slots.len() {
            let expired = self.slots[i]
                .conn
                .as_ref()
                .and_then(|c| c.deadline)
                .is_some_and(|d| d <= now);
            if expired {
                let phase = self.slots[i].conn.as_ref().map(|c| c.phase);
                if phase != Some(Phase::Lingering) {
                    self.stats.timeouts += 1;
                }
                self.close(i as u32);
            }
        }
        // Below the cap again (another worker may have closed connections): accept again.
        let room = self.open() < self.cap + self.overflow_cap;
        for l in &mut self.listeners {
            if l.paused_until.is_some_and(|t| t <= now) {
                l.paused_until = None;
                l.again = true;
            } else if room && !l.armed && l.paused_until.is_none() {
                l.again = true;
            }
        }
    }

    fn begin_stop(&mut self) {
        self.stopping = true;
        self.stop_deadline = Some(self.now + self.shared.cfg.shutdown_timeout);
        for l in std::mem::take(&mut self.listeners) {
            self.submit_close(l.fd);
        }
        for i in 0..self.slots.len() {
            if self.slots[i].conn.as_ref().is_some_and(Conn::is_idle) {
                self.close(i as u32);
            }
        }
    }

    /// Close `fd` (cancelling what is parked on it). Every backend today finishes a close at
    /// once; one that does not delivers it later under [`CLOSE_TOKEN`].
    fn submit_close(&mut self, fd: SharedFd) {
        if let Submit::Done(c) = self.engine.submit(CLOSE_TOKEN, Op::Close { fd }) {
            self.closed(c);
        }
    }

    fn closed(&mut self, c: Completion) {
        if let Err(e) = c.result {
            tracing::debug!("worker {}: close: {e}", self.id);
        }
    }

    // ---- access log --------------------------------------------------------------------

    fn flush_log(&mut self, force: bool) {
        let now = self.now;
        let Some(log) = self.log.as_mut() else {
            return;
        };
        if log.inflight || log.buf.is_empty() {
            return;
        }
        let due = force
            || self.stopping
            || log.buf.len() >= LOG_FLUSH_BYTES
            || now.duration_since(log.last_flush) >= Duration::from_secs(1);
        if !due {
            return;
        }
        log.last_flush = now;
        let op = Op::Write {
            file: Arc::clone(&log.fd),
            offset: None,
            bufs: Gather::one(std::mem::replace(
                &mut log.buf,
                Vec::with_capacity(LOG_FLUSH_BYTES * 2),
            )),
        };
        match self.engine.submit(LOG_TOKEN, op) {
            Submit::Done(c) => self.log_done(c),
            Submit::Pending => log.inflight = true,
        }
    }

    fn log_done(&mut self, c: Completion) {
        let now = self.now;
        let Some(log) = self.log.as_mut() else {
            return;
        };
        log.inflight = false;
        let written = match (&c.result, &c.out) {
            (Ok(n), Out::Gather(b)) if *n == b.len() => Ok(()),
            (Ok(n), Out::Gather(b)) => Err(format!("short write ({n} of {} bytes)", b.len())),
            (Err(e), _) => Err(e.to_string()),
            _ => Ok(()),
        };
        if let Err(e) = written {
            if log
                .warned
                .is_none_or(|t| now.duration_since(t) > Duration::from_secs(10))
            {
                log.warned = Some(now);
                tracing::warn!("access log write failed: {e}; lines lost");
            }
        }
    }

    /// At exit: write what is buffered, waiting for it.
    fn flush_log_now(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut done = Vec::new();
        loop {
            let busy = self.log.as_ref().is_some_and(|l| l.inflight);
            let pending = self.log.as_ref().is_some_and(|l| !l.buf.is_empty());
            if !busy && !pending || Instant::now() >= deadline {
                return;
            }
            if !busy {
                self.flush_log(true);
                continue;
            }
            if self.engine.poll(&mut done, Some(TICK)).is_err() {
                return;
            }
            for c in done.drain(..) {
                if c.token == LOG_TOKEN {
                    self.log_done(c);
                }
            }
        }
    }
}

pub(crate) fn is_fd_exhaustion(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ENFILE | libc::EMFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}
