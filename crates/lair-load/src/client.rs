//! One client thread: an event loop over its own engine, driving its connections.
//!
//! Closed loop: a fixed set of connections, each cycling Connecting → Sending → Receiving →
//! (next request), reopened after a failure or a `Connection: close`. Open loop: a slot per
//! arrival, taken from a free list when the arrival is due, released (closed) after its one
//! response or its failure. A response is complete when its head is parsed and
//! `Content-Length` body bytes have arrived (or, without a length, when the server closes);
//! body bytes are counted (and hashed when a manifest asks) and dropped, so the receive buffer
//! never grows past one read.
//!
//! Slow clients read at most `bytes_per_s`: after each read the connection sleeps until its
//! budget allows the next (`State::Throttled`), and each read is capped to a twentieth of a
//! second's worth, so the rate is smooth rather than one big read and a long pause.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use lair_io::sys::sync::SyncBackend;
use lair_io::{
    setup, Backend, BufMut, Completion, EngineConfig, Gather, Op, Out, SharedFd, Submit, Token,
};

use crate::framing::Head;
use crate::{Error, LoadConfig, Mode, Progress, Stop, Tally};

/// Room for one receive.
const RECV_BYTES: usize = 64 * 1024;
/// Pause before reconnecting after a failed connect.
const CONNECT_BACKOFF: Duration = Duration::from_millis(10);
/// Failed connects, with none ever succeeding, after which a closed-loop thread gives up.
const CONNECT_GIVE_UP: u64 = 100;
/// How often timeouts, reconnects, throttled reads and progress are looked at.
const TICK: Duration = Duration::from_millis(5);

/// What the threads of one run share.
pub(crate) struct RunState<'a> {
    /// Requests started (closed loop with a request budget).
    pub issued: &'a AtomicU64,
    /// Next path (closed loop, round robin).
    pub cursor: &'a AtomicU64,
    pub progress: &'a Progress,
    pub started: Instant,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Open loop: the slot is unused.
    Free,
    /// Closed loop: waiting to (re)connect at a time.
    Backoff(Instant),
    Connecting,
    Sending,
    Receiving,
    /// A slow client waiting until its read budget allows the next read.
    Throttled(Instant),
    /// Closed loop: finished for the run.
    Done,
}

struct Conn {
    sock: Option<SharedFd>,
    state: State,
    gen: u32,
    wbuf: Vec<u8>,
    wsent: usize,
    rbuf: Vec<u8>,
    /// Index of the request in flight in `LoadConfig::paths`.
    path: usize,
    body_bytes: u64,
    /// Latency and timeout origin: the send (closed loop) or the scheduled arrival (open).
    sent_at: Instant,
    head_bytes: usize,
    status: u16,
    /// Body bytes still to come; `None` until the head is parsed or for a close-delimited body.
    body_left: Option<u64>,
    head_done: bool,
    close_after: bool,
    /// CRC-32 of the body so far, when the manifest gives one for this path.
    crc: Option<crc32fast::Hasher>,
    /// Slow client: the earliest time of the next read.
    next_read: Instant,
}

impl Conn {
    fn new(now: Instant, state: State) -> Conn {
        Conn {
            sock: None,
            state,
            gen: 1,
            wbuf: Vec::with_capacity(256),
            wsent: 0,
            rbuf: Vec::with_capacity(RECV_BYTES),
            path: 0,
            body_bytes: 0,
            sent_at: now,
            head_bytes: 0,
            status: 0,
            body_left: None,
            head_done: false,
            close_after: false,
            crc: None,
            next_read: now,
        }
    }
}

/// Open-loop arrivals of this thread: global indices `t, t + T, t + 2T, …`.
struct Arrivals {
    next: u64,
    step: u64,
    /// Arrivals stop at this index (exclusive), if bounded by count.
    limit: Option<u64>,
    /// …or at this offset from the start.
    until: Option<Duration>,
}

struct Loop<'a, B: Backend> {
    cfg: &'a LoadConfig,
    engine: B,
    conns: Vec<Conn>,
    /// Open loop: unused slots.
    free: Vec<usize>,
    /// Open loop: slots in use.
    open: usize,
    max_open: usize,
    arrivals: Option<Arrivals>,
    tally: Tally,
    shared: &'a RunState<'a>,
    requests: Vec<Vec<u8>>,
    /// Closed loop with a duration: the end.
    end: Option<Instant>,
    /// Completions of operations that finished inline, handled by the loop (not recursively,
    /// which would grow the stack with every request answered before it was awaited).
    inline: Vec<Completion>,
    /// Whether any connect of this thread ever succeeded.
    connected_once: bool,
    /// Closed loop: connections in `State::Done`; the thread ends when all are.
    finished: usize,
    /// Responses and failures already added to the shared progress.
    reported: (u64, u64),
}

fn token(idx: usize, gen: u32) -> Token {
    Token(u64::from(gen) << 32 | idx as u64)
}

pub(crate) fn run_thread(
    cfg: &LoadConfig,
    t: usize,
    cpu: Option<usize>,
    shared: &RunState<'_>,
) -> Result<Tally, Error> {
    if let Some(cpu) = cpu {
        // Best effort: an unavailable CPU leaves the thread unpinned.
        let _ = setup::pin_current_thread(cpu);
    }
    let engine = SyncBackend::new(&EngineConfig {
        helpers: 1,
        ..EngineConfig::default()
    })?;
    let requests = cfg
        .paths
        .iter()
        .map(|p| format!("GET {p} HTTP/1.1\r\nHost: {}\r\n\r\n", cfg.host).into_bytes())
        .collect();
    let now = Instant::now();
    let threads = cfg.threads as u64;
    let (conns, arrivals) = match cfg.mode {
        Mode::Closed => {
            let first = cfg.connections * t / cfg.threads;
            let count = cfg.connections * (t + 1) / cfg.threads - first;
            let conns = (0..count).map(|_| Conn::new(now, State::Backoff(now)));
            (conns.collect(), None)
        }
        Mode::Rate(_) | Mode::Timed { .. } => {
            let (mut limit, until) = match cfg.stop {
                Stop::Requests(n) => (Some(n), None),
                Stop::After(d) => (None, Some(d)),
            };
            if matches!(cfg.mode, Mode::Timed { .. }) {
                let len = cfg.paths.len() as u64;
                limit = Some(limit.map_or(len, |n| n.min(len)));
            }
            let a = Arrivals {
                next: t as u64,
                step: threads,
                limit,
                until,
            };
            (Vec::new(), Some(a))
        }
    };
    let mut l = Loop {
        cfg,
        engine,
        conns,
        free: Vec::new(),
        open: 0,
        max_open: (cfg.max_open / cfg.threads).max(1),
        arrivals,
        tally: Tally::new(),
        shared,
        requests,
        end: match (cfg.mode, cfg.stop) {
            (Mode::Closed, Stop::After(d)) => Some(shared.started + d),
            _ => None,
        },
        inline: Vec::new(),
        connected_once: false,
        finished: 0,
        reported: (0, 0),
    };
    l.run()?;
    l.flush_progress();
    l.tally.ended = Some(Instant::now());
    Ok(l.tally)
}

impl<B: Backend> Loop<'_, B> {
    fn closed(&self) -> bool {
        self.cfg.mode == Mode::Closed
    }

    /// The scheduled time of arrival `i`, as an offset from the start.
    fn arrival_time(&self, i: u64) -> Duration {
        match self.cfg.mode {
            Mode::Rate(r) => Duration::from_secs_f64(i as f64 / r),
            Mode::Timed { speed } => {
                let ms = self.cfg.times_ms.get(i as usize).copied().unwrap_or(0);
                Duration::from_secs_f64(ms as f64 / 1000.0 / speed)
            }
            Mode::Closed => Duration::ZERO,
        }
    }

    /// The next arrival of this thread, if any remain: (index, offset from the start).
    fn next_arrival(&self) -> Option<(u64, Duration)> {
        let a = self.arrivals.as_ref()?;
        if a.limit.is_some_and(|l| a.next >= l) {
            return None;
        }
        let at = self.arrival_time(a.next);
        if a.until.is_some_and(|u| at >= u) {
            return None;
        }
        Some((a.next, at))
    }

    fn run(&mut self) -> Result<(), Error> {
        let mut done: Vec<Completion> = Vec::with_capacity(256);
        let mut next_tick = Instant::now();
        loop {
            let now = Instant::now();
            if self.end.is_some_and(|e| now >= e)
                || self.shared.progress.cancel.load(Ordering::Relaxed)
            {
                break;
            }
            // Open loop: start every arrival that is due.
            let mut next_arrival = None;
            while let Some((i, at)) = self.next_arrival() {
                let due = self.shared.started + at;
                if due > now {
                    next_arrival = Some(due);
                    break;
                }
                if let Some(a) = self.arrivals.as_mut() {
                    a.next += a.step;
                }
                self.arrive(i, due, now);
                self.drain_inline();
            }
            if now >= next_tick {
                self.tick(now);
                self.drain_inline();
                self.flush_progress();
                next_tick = now + TICK;
            }
            let all_done = if self.closed() {
                self.finished == self.conns.len()
            } else {
                next_arrival.is_none() && self.next_arrival().is_none() && self.open == 0
            };
            if all_done {
                break;
            }
            let mut wake = next_tick;
            if let Some(a) = next_arrival {
                wake = wake.min(a);
            }
            if let Some(e) = self.end {
                wake = wake.min(e);
            }
            self.engine
                .poll(&mut done, Some(wake.saturating_duration_since(now)))?;
            for c in done.drain(..) {
                self.dispatch(c);
            }
            self.drain_inline();
        }
        // The run is over: close everything (completions still in flight are not counted).
        for i in 0..self.conns.len() {
            if let Some(sock) = self.conns[i].sock.take() {
                let _ = self.engine.submit(token(i, 0), Op::Close { fd: sock });
            }
        }
        Ok(())
    }

    fn flush_progress(&mut self) {
        let p = self.shared.progress;
        let now = (self.tally.requests, self.tally.errors.total());
        p.done.fetch_add(now.0 - self.reported.0, Ordering::Relaxed);
        p.errors
            .fetch_add(now.1 - self.reported.1, Ordering::Relaxed);
        self.reported = now;
    }

    /// Open loop: arrival `i`, scheduled at `due`, gets a new connection.
    fn arrive(&mut self, i: u64, due: Instant, now: Instant) {
        self.tally.offered += 1;
        let lag = u64::try_from(now.duration_since(due).as_micros()).unwrap_or(u64::MAX);
        self.tally.max_lag_us = self.tally.max_lag_us.max(lag);
        if self.open >= self.max_open {
            self.tally.errors.client_limit += 1;
            return;
        }
        let idx = match self.free.pop() {
            Some(idx) => idx,
            None => {
                self.conns.push(Conn::new(now, State::Free));
                self.conns.len() - 1
            }
        };
        self.open += 1;
        self.tally.max_open = self.tally.max_open.max(self.open as u64);
        let c = &mut self.conns[idx];
        c.path = match self.cfg.mode {
            Mode::Timed { .. } => i as usize,
            _ => (i % self.cfg.paths.len() as u64) as usize,
        };
        c.sent_at = due;
        self.connect(idx);
    }

    fn dispatch(&mut self, c: Completion) {
        let idx = (c.token.0 & 0xffff_ffff) as usize;
        let gen = (c.token.0 >> 32) as u32;
        if self.conns.get(idx).is_some_and(|k| k.gen == gen) {
            self.drive(idx, c);
        }
    }

    fn drain_inline(&mut self) {
        while let Some(c) = self.inline.pop() {
            self.dispatch(c);
        }
    }

    /// Reconnect what is due, time out what is late, resume throttled reads.
    fn tick(&mut self, now: Instant) {
        for i in 0..self.conns.len() {
            match self.conns[i].state {
                State::Backoff(at) if at <= now => self.connect(i),
                State::Connecting | State::Sending | State::Receiving | State::Throttled(_)
                    if now.duration_since(self.conns[i].sent_at) > self.cfg.timeout =>
                {
                    self.tally.errors.timeout += 1;
                    self.drop_conn(i, now);
                }
                State::Throttled(at) if at <= now => self.recv(i),
                _ => {}
            }
        }
    }

    fn submit(&mut self, idx: usize, op: Op) {
        let t = token(idx, self.conns[idx].gen);
        if let Submit::Done(c) = self.engine.submit(t, op) {
            self.inline.push(c);
        }
    }

    fn connect(&mut self, idx: usize) {
        self.conns[idx].state = State::Connecting;
        if self.closed() {
            self.conns[idx].sent_at = Instant::now();
        }
        self.submit(
            idx,
            Op::Connect {
                addr: self.cfg.addr,
                recv_buffer: self.cfg.slow.recv_buffer,
                sock: None,
            },
        );
    }

    /// Close the socket and start a new generation (late completions of the old one are
    /// ignored).
    fn close(&mut self, idx: usize) {
        let c = &mut self.conns[idx];
        c.gen = c.gen.wrapping_add(1).max(1);
        if let Some(sock) = c.sock.take() {
            let _ = self.engine.submit(token(idx, 0), Op::Close { fd: sock });
        }
    }

    /// After a failure or a close: closed loop reconnects (at once or after `at`); open loop
    /// releases the slot.
    fn drop_conn(&mut self, idx: usize, at: Instant) {
        self.close(idx);
        if self.closed() {
            self.conns[idx].state = State::Backoff(at);
            if at <= Instant::now() {
                self.connect(idx);
            }
        } else {
            self.conns[idx].state = State::Free;
            self.free.push(idx);
            self.open -= 1;
        }
    }

    /// Closed loop: this connection is done for the run.
    fn finish(&mut self, idx: usize) {
        if self.conns[idx].state == State::Done {
            return;
        }
        self.close(idx);
        self.conns[idx].state = State::Done;
        self.finished += 1;
    }

    /// Closed loop: send the next request, unless the run's request budget is spent.
    fn send_next(&mut self, idx: usize) {
        if let Stop::Requests(n) = self.cfg.stop {
            if self.shared.issued.fetch_add(1, Ordering::Relaxed) >= n {
                self.finish(idx);
                return;
            }
        }
        let next = self.shared.cursor.fetch_add(1, Ordering::Relaxed) % self.requests.len() as u64;
        self.conns[idx].path = next as usize;
        self.conns[idx].sent_at = Instant::now();
        self.begin_request(idx);
    }

    /// Send the request for `conns[idx].path`.
    fn begin_request(&mut self, idx: usize) {
        let checks_crc = self
            .cfg
            .expect
            .get(self.conns[idx].path)
            .is_some_and(|e| e.crc32.is_some());
        let c = &mut self.conns[idx];
        let req = &self.requests[c.path];
        c.body_bytes = 0;
        c.wbuf.clear();
        c.wbuf.extend_from_slice(req);
        c.wsent = 0;
        c.rbuf.clear();
        c.head_done = false;
        c.body_left = None;
        c.head_bytes = 0;
        c.close_after = false;
        c.crc = checks_crc.then(crc32fast::Hasher::new);
        c.state = State::Sending;
        self.send(idx);
    }

    fn send(&mut self, idx: usize) {
        let c = &mut self.conns[idx];
        let Some(sock) = c.sock.clone() else {
            return;
        };
        let op = Op::Send {
            sock,
            bufs: Gather::one(std::mem::take(&mut c.wbuf)),
            from: c.wsent,
            more: false,
            zerocopy: false,
        };
        self.submit(idx, op);
    }

    fn recv(&mut self, idx: usize) {
        let max = match self.cfg.slow.bytes_per_s {
            Some(rate) => usize::try_from(rate / 20)
                .unwrap_or(RECV_BYTES)
                .clamp(256, RECV_BYTES),
            None => RECV_BYTES,
        };
        let c = &mut self.conns[idx];
        let Some(sock) = c.sock.clone() else {
            return;
        };
        c.state = State::Receiving;
        c.rbuf.reserve(max);
        let op = Op::Recv {
            sock,
            buf: BufMut::Vec(std::mem::take(&mut c.rbuf)),
            max,
            // The answer cannot be there yet: wait for readiness instead of a failing read.
            poll_first: true,
        };
        self.submit(idx, op);
    }

    fn drive(&mut self, idx: usize, c: Completion) {
        match self.conns[idx].state {
            State::Connecting => match (c.result, c.out) {
                (Ok(_), Out::Conn(fd, _)) => {
                    self.connected_once = true;
                    self.conns[idx].sock = Some(fd);
                    if self.closed() {
                        self.send_next(idx);
                    } else {
                        self.begin_request(idx);
                    }
                }
                (result, _) => {
                    let refused = result
                        .err()
                        .is_some_and(|e| e.kind() == std::io::ErrorKind::ConnectionRefused);
                    let e = &mut self.tally.errors;
                    if refused {
                        e.refused += 1;
                    } else {
                        e.connect += 1;
                    }
                    let failed = e.refused + e.connect;
                    if self.closed() && !self.connected_once && failed >= CONNECT_GIVE_UP {
                        // Nothing listens there: stop instead of retrying forever.
                        for i in 0..self.conns.len() {
                            self.finish(i);
                        }
                        return;
                    }
                    self.drop_conn(idx, Instant::now() + CONNECT_BACKOFF);
                }
            },
            State::Sending => {
                if let Out::Gather(mut g) = c.out {
                    self.conns[idx].wbuf = g.take(0).into_vec().unwrap_or_default();
                }
                match c.result {
                    Ok(n) => {
                        let k = &mut self.conns[idx];
                        k.wsent += n;
                        if k.wsent < k.wbuf.len() {
                            self.send(idx);
                        } else {
                            self.recv_paced(idx);
                        }
                    }
                    Err(_) => self.fail_reset(idx),
                }
            }
            State::Receiving => {
                if let Out::Buf(BufMut::Vec(b)) = c.out {
                    self.conns[idx].rbuf = b;
                }
                match c.result {
                    Ok(0) => self.on_eof(idx),
                    Ok(n) => self.on_bytes(idx, n),
                    Err(_) => self.fail_reset(idx),
                }
            }
            State::Free | State::Backoff(_) | State::Throttled(_) | State::Done => {}
        }
    }

    fn fail_reset(&mut self, idx: usize) {
        self.tally.errors.reset += 1;
        self.drop_conn(idx, Instant::now());
    }

    fn fail_framing(&mut self, idx: usize) {
        self.tally.errors.framing += 1;
        self.drop_conn(idx, Instant::now());
    }

    fn on_eof(&mut self, idx: usize) {
        let c = &self.conns[idx];
        if c.head_done && c.body_left.is_none() {
            // A close-delimited body ends here.
            self.conns[idx].close_after = true;
            self.complete(idx);
        } else {
            self.fail_reset(idx);
        }
    }

    fn on_bytes(&mut self, idx: usize, n: usize) {
        let c = &mut self.conns[idx];
        if !c.head_done {
            match crate::framing::parse_head(&c.rbuf) {
                Head::Complete {
                    len: head_len,
                    status,
                    body,
                    close,
                } => {
                    c.head_done = true;
                    c.head_bytes = head_len;
                    c.status = status;
                    c.close_after |= close;
                    let body_here = (c.rbuf.len() - head_len) as u64;
                    c.body_left = body;
                    match c.body_left {
                        // More than announced, with nothing asked: not valid framing.
                        Some(want) if body_here > want => return self.fail_framing(idx),
                        Some(want) => c.body_left = Some(want - body_here),
                        None => {}
                    }
                    if let Some(h) = c.crc.as_mut() {
                        h.update(&c.rbuf[head_len..]);
                    }
                    c.head_bytes += body_here as usize;
                    c.body_bytes = body_here;
                    c.rbuf.clear();
                }
                Head::Partial => {}
                Head::Bad => return self.fail_framing(idx),
            }
        } else {
            c.head_bytes += n;
            c.body_bytes += n as u64;
            if let Some(left) = c.body_left {
                if n as u64 > left {
                    return self.fail_framing(idx);
                }
                c.body_left = Some(left - n as u64);
            }
            if let Some(h) = c.crc.as_mut() {
                h.update(&c.rbuf);
            }
            c.rbuf.clear();
        }
        if let Some(rate) = self.cfg.slow.bytes_per_s {
            // Spend this read's budget — also the last read of a response, or a small response
            // read at once would never be paced: the next read waits until the rate allows it.
            let c = &mut self.conns[idx];
            c.next_read =
                c.next_read.max(Instant::now()) + Duration::from_secs_f64(n as f64 / rate as f64);
        }
        if self.conns[idx].body_left == Some(0) {
            self.complete(idx);
        } else {
            self.recv_paced(idx);
        }
    }

    /// Receive now, or once the connection's read budget allows (slow clients).
    fn recv_paced(&mut self, idx: usize) {
        let c = &mut self.conns[idx];
        if self.cfg.slow.bytes_per_s.is_some() && c.next_read > Instant::now() {
            c.state = State::Throttled(c.next_read);
        } else {
            self.recv(idx);
        }
    }

    fn complete(&mut self, idx: usize) {
        let c = &mut self.conns[idx];
        let took = c.sent_at.elapsed();
        let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX).max(1);
        let _ = self.tally.hist.record(us.min(self.tally.hist.high()));
        self.tally.requests += 1;
        self.tally.bytes += c.head_bytes as u64;
        *self.tally.status.entry(c.status).or_default() += 1;
        let ok = match self.cfg.expect_status {
            Some(s) => c.status == s,
            None => (200..400).contains(&c.status),
        };
        if !ok {
            self.tally.errors.status += 1;
        }
        let crc = c.crc.take().map(crc32fast::Hasher::finalize);
        if let (200, Some(want)) = (c.status, self.cfg.expect.get(c.path)) {
            if want.bytes.is_some_and(|w| w != c.body_bytes) {
                self.tally.errors.size += 1;
            } else if want.crc32.is_some() && want.crc32 != crc {
                self.tally.errors.content += 1;
            }
        }
        // Open loop: one request per connection.
        if c.close_after || !self.closed() {
            self.drop_conn(idx, Instant::now());
        } else {
            self.send_next(idx);
        }
    }
}
