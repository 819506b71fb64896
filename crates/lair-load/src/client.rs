//! One client thread: an event loop over its own engine, driving a set of connections in a
//! closed loop.
//!
//! Each connection cycles Connecting → Sending → Receiving → (next request) and is reopened
//! after a failure or a `Connection: close`. A response is complete when its head is parsed and
//! `Content-Length` body bytes have arrived (or, without a length, when the server closes);
//! body bytes are counted and dropped, so the receive buffer never grows past one read.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lair_io::sys::sync::SyncBackend;
use lair_io::{setup, Backend, Completion, EngineConfig, Op, Out, SharedFd, Submit, Token};

use crate::{Error, LoadConfig, Stop, Tally};

/// Room for one receive.
const RECV_BYTES: usize = 64 * 1024;
/// Largest response head accepted.
const MAX_HEAD: usize = 64 * 1024;
/// Pause before reconnecting after a failed connect.
const CONNECT_BACKOFF: Duration = Duration::from_millis(10);
/// Failed connects, with none ever succeeding, after which a thread gives up.
const CONNECT_GIVE_UP: u64 = 100;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Waiting to (re)connect at a time.
    Backoff(Instant),
    Connecting,
    Sending,
    Receiving,
    /// Finished (the run's end).
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
    sent_at: Instant,
    head_bytes: usize,
    status: u16,
    /// Body bytes still to come; `None` until the head is parsed or for a close-delimited body.
    body_left: Option<u64>,
    head_done: bool,
    close_after: bool,
}

struct Loop<'a, B: Backend> {
    cfg: &'a LoadConfig,
    engine: B,
    conns: Vec<Conn>,
    tally: Tally,
    issued: &'a AtomicU64,
    cursor: &'a AtomicU64,
    requests: Vec<Vec<u8>>,
    end: Option<Instant>,
    /// Completions of operations that finished inline, handled by the loop (not recursively,
    /// which would grow the stack with every request answered before it was awaited).
    inline: Vec<Completion>,
    /// Whether any connect of this thread ever succeeded.
    connected_once: bool,
    /// Connections in `State::Done`; the thread ends when all are.
    finished: usize,
}

fn token(idx: usize, gen: u32) -> Token {
    Token(u64::from(gen) << 32 | idx as u64)
}

pub(crate) fn run_thread(
    cfg: &LoadConfig,
    count: usize,
    cpu: Option<usize>,
    issued: &AtomicU64,
    cursor: &AtomicU64,
    started: Instant,
) -> Result<Tally, Error> {
    if let Some(cpu) = cpu {
        // Best effort: an unavailable CPU leaves the thread unpinned.
        let _ = setup::pin_current_thread(cpu);
    }
    let engine = SyncBackend::new(&EngineConfig {
        helpers: 1,
        probe_dir: None,
    })?;
    let requests = cfg
        .paths
        .iter()
        .map(|p| format!("GET {p} HTTP/1.1\r\nHost: {}\r\n\r\n", cfg.host).into_bytes())
        .collect();
    let now = Instant::now();
    let mut l = Loop {
        cfg,
        engine,
        conns: (0..count)
            .map(|_| Conn {
                sock: None,
                state: State::Backoff(now),
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
            })
            .collect(),
        tally: Tally::new(),
        issued,
        cursor,
        requests,
        end: match cfg.stop {
            Stop::After(d) => Some(started + d),
            Stop::Requests(_) => None,
        },
        inline: Vec::new(),
        connected_once: false,
        finished: 0,
    };
    l.run()?;
    Ok(l.tally)
}

impl<B: Backend> Loop<'_, B> {
    fn run(&mut self) -> Result<(), Error> {
        let mut done: Vec<Completion> = Vec::with_capacity(256);
        let mut next_tick = Instant::now();
        loop {
            let now = Instant::now();
            if self.end.is_some_and(|e| now >= e) {
                break;
            }
            if now >= next_tick {
                self.tick(now);
                self.drain_inline();
                next_tick = now + Duration::from_millis(5);
            }
            if self.finished == self.conns.len() {
                break;
            }
            let wait = next_tick.saturating_duration_since(now);
            let wait = self
                .end
                .map_or(wait, |e| wait.min(e.saturating_duration_since(now)));
            self.engine.poll(&mut done, Some(wait))?;
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

    /// Reconnect what is due, time out what is late.
    fn tick(&mut self, now: Instant) {
        for i in 0..self.conns.len() {
            match self.conns[i].state {
                State::Backoff(at) if at <= now => self.connect(i),
                State::Sending | State::Receiving
                    if now.duration_since(self.conns[i].sent_at) > self.cfg.timeout =>
                {
                    self.tally.errors.timeout += 1;
                    self.reopen(i, Instant::now());
                }
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
        self.conns[idx].sent_at = Instant::now();
        self.submit(
            idx,
            Op::Connect {
                addr: self.cfg.addr,
                sock: None,
            },
        );
    }

    /// Drop the connection (new generation: its late completions are ignored) and reconnect,
    /// at once or after `at`.
    fn reopen(&mut self, idx: usize, at: Instant) {
        let c = &mut self.conns[idx];
        c.gen = c.gen.wrapping_add(1).max(1);
        if let Some(sock) = c.sock.take() {
            let _ = self.engine.submit(token(idx, 0), Op::Close { fd: sock });
        }
        self.conns[idx].state = State::Backoff(at);
        if at <= Instant::now() {
            self.connect(idx);
        }
    }

    /// This connection is done for the run: close it and count it.
    fn finish(&mut self, idx: usize) {
        if self.conns[idx].state == State::Done {
            return;
        }
        self.conns[idx].state = State::Done;
        self.finished += 1;
        if let Some(sock) = self.conns[idx].sock.take() {
            let _ = self.engine.submit(token(idx, 0), Op::Close { fd: sock });
        }
    }

    /// Send the next request, unless the run's request budget is spent.
    fn send_next(&mut self, idx: usize) {
        if let Stop::Requests(n) = self.cfg.stop {
            if self.issued.fetch_add(1, Ordering::Relaxed) >= n {
                self.finish(idx);
                return;
            }
        }
        let next = self.cursor.fetch_add(1, Ordering::Relaxed) % self.requests.len() as u64;
        let c = &mut self.conns[idx];
        c.path = next as usize;
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
        c.state = State::Sending;
        c.sent_at = Instant::now();
        self.send(idx);
    }

    fn send(&mut self, idx: usize) {
        let c = &mut self.conns[idx];
        let Some(sock) = c.sock.clone() else {
            return;
        };
        let op = Op::Send {
            sock,
            buf: std::mem::take(&mut c.wbuf),
            from: c.wsent,
            more: false,
        };
        self.submit(idx, op);
    }

    fn recv(&mut self, idx: usize) {
        let c = &mut self.conns[idx];
        let Some(sock) = c.sock.clone() else {
            return;
        };
        c.state = State::Receiving;
        let op = Op::Recv {
            sock,
            buf: std::mem::take(&mut c.rbuf),
            max: RECV_BYTES,
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
                    self.conns[idx].sock = Some(Arc::new(fd));
                    self.send_next(idx);
                }
                _ => {
                    self.tally.errors.connect += 1;
                    if !self.connected_once && self.tally.errors.connect >= CONNECT_GIVE_UP {
                        // Nothing listens there: stop instead of retrying forever.
                        for i in 0..self.conns.len() {
                            self.finish(i);
                        }
                        return;
                    }
                    self.reopen(idx, Instant::now() + CONNECT_BACKOFF);
                }
            },
            State::Sending => {
                if let Out::Buf(b) = c.out {
                    self.conns[idx].wbuf = b;
                }
                match c.result {
                    Ok(n) => {
                        let k = &mut self.conns[idx];
                        k.wsent += n;
                        if k.wsent < k.wbuf.len() {
                            self.send(idx);
                        } else {
                            self.recv(idx);
                        }
                    }
                    Err(_) => {
                        self.tally.errors.reset += 1;
                        self.reopen(idx, Instant::now());
                    }
                }
            }
            State::Receiving => {
                if let Out::Buf(b) = c.out {
                    self.conns[idx].rbuf = b;
                }
                match c.result {
                    Ok(0) => self.on_eof(idx),
                    Ok(n) => self.on_bytes(idx, n),
                    Err(_) => {
                        self.tally.errors.reset += 1;
                        self.reopen(idx, Instant::now());
                    }
                }
            }
            State::Backoff(_) | State::Done => {}
        }
    }

    fn on_eof(&mut self, idx: usize) {
        let c = &self.conns[idx];
        if c.head_done && c.body_left.is_none() {
            // A close-delimited body ends here.
            self.conns[idx].close_after = true;
            self.complete(idx);
        } else {
            self.tally.errors.reset += 1;
            self.reopen(idx, Instant::now());
        }
    }

    fn on_bytes(&mut self, idx: usize, n: usize) {
        let c = &mut self.conns[idx];
        if !c.head_done {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut resp = httparse::Response::new(&mut headers);
            match resp.parse(&c.rbuf) {
                Ok(httparse::Status::Complete(head_len)) => {
                    c.head_done = true;
                    c.head_bytes = head_len;
                    c.status = resp.code.unwrap_or(0);
                    let mut length = None;
                    let mut bad = false;
                    for h in resp.headers.iter() {
                        if h.name.eq_ignore_ascii_case("content-length") {
                            length = std::str::from_utf8(h.value)
                                .ok()
                                .and_then(|v| v.trim().parse::<u64>().ok());
                            bad |= length.is_none();
                        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                            bad = true;
                        } else if h.name.eq_ignore_ascii_case("connection") {
                            c.close_after |= h.value.eq_ignore_ascii_case(b"close");
                        }
                    }
                    let no_body = c.status == 304 || c.status == 204 || c.status / 100 == 1;
                    if bad {
                        self.tally.errors.framing += 1;
                        self.reopen(idx, Instant::now());
                        return;
                    }
                    let c = &mut self.conns[idx];
                    let body_here = (c.rbuf.len() - head_len) as u64;
                    c.body_left = if no_body { Some(0) } else { length };
                    match c.body_left {
                        Some(want) if body_here > want => {
                            // More than announced, with nothing asked: not valid framing.
                            self.tally.errors.framing += 1;
                            self.reopen(idx, Instant::now());
                            return;
                        }
                        Some(want) => c.body_left = Some(want - body_here),
                        None => {}
                    }
                    c.head_bytes += body_here as usize;
                    c.body_bytes = body_here;
                    c.rbuf.clear();
                }
                Ok(httparse::Status::Partial) if c.rbuf.len() <= MAX_HEAD => {}
                _ => {
                    self.tally.errors.framing += 1;
                    self.reopen(idx, Instant::now());
                    return;
                }
            }
        } else {
            c.head_bytes += n;
            c.body_bytes += n as u64;
            if let Some(left) = c.body_left {
                if n as u64 > left {
                    self.tally.errors.framing += 1;
                    self.reopen(idx, Instant::now());
                    return;
                }
                c.body_left = Some(left - n as u64);
            }
            c.rbuf.clear();
        }
        if self.conns[idx].body_left == Some(0) {
            self.complete(idx);
        } else {
            self.recv(idx);
        }
    }

    fn complete(&mut self, idx: usize) {
        let c = &self.conns[idx];
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
        let want = self.cfg.sizes.get(c.path).copied().flatten();
        if c.status == 200 && want.is_some_and(|w| w != c.body_bytes) {
            self.tally.errors.size += 1;
        }
        if c.close_after {
            self.reopen(idx, Instant::now());
        } else {
            self.send_next(idx);
        }
    }
}
