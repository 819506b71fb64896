//! One connection's state machine: from received bytes to the next engine operation.
//!
//! Why a state machine over completions: every step of a response (open, stat, read, send,
//! sendfile) is an engine operation that may finish inline or later; the connection remembers
//! which one it waits for ([`Phase`]) and [`Conn::step`] turns the completion into the next
//! operation. The caller (the worker) submits it and feeds the completion back, in a loop while
//! operations finish inline. No system call happens here.
//!
//! Invariants: at most one operation per connection is in flight; the request head stays in
//! `rbuf` (parsed into spans) until its response is complete; pipelined requests are answered
//! one after another, in order.

use std::ffi::CString;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use lair_io::{
    Buf, BufMut, Bytes, Completion, FileType, Gather, Mapping, Op, Out, Pipe, SharedFd, Via,
};

use crate::cache::{Entry, FileCache};
use crate::chunked;
use crate::config::{DataMode, ServerConfig};
use crate::log::{self, LogClock};
use crate::path::{self, PathError};
use crate::request::{self, Head, Method, Parsed};
use crate::response::{self, DateCache, Persistence};
use crate::validators::{self, Conditions, Precondition, RangeDecision};
use crate::HttpStats;

/// Bytes reserved for each receive.
const RECV_BYTES: usize = 4096;

/// The send buffer's size when a large body is copied through it, head included: a buffer
/// the pool keeps (`BufPool::KEEP_BYTES`), and what a socket under the default
/// `--notsent-lowat` (128k) has room for when it reports writable (below half the mark).
const COPY_CHUNK: usize = 64 * 1024;

/// What the connection waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Request bytes (`Recv`).
    Reading,
    /// Input on an idle keep-alive connection, holding no buffer (`Readable`).
    Idle,
    /// The file (`Open`).
    Opening,
    /// Its metadata (`Stat`).
    Statting,
    /// A small body into the send buffer (`Read`).
    ReadingBody,
    /// The head of a large response (`Send` with `MSG_MORE`).
    SendingHead,
    /// The body of a large response (`Sendfile`).
    SendingFile,
    /// A chunk of a large body into the send buffer (`Read`), when bodies are copied.
    CopyReading,
    /// That chunk (the first one behind the head) to the socket (`Send`).
    CopySending,
    /// A whole response held in the send buffer (`Send`).
    SendingBuf,
    /// An interim `100 Continue` on its own, before a chunked body is received (`Send`).
    SendingContinue,
    /// The write side being shut for a lingering close (`Shutdown`).
    ShuttingDown,
    /// Input drained before closing (`Recv`, discarded).
    Lingering,
}

/// What the worker should do next for this connection.
pub(crate) enum Next {
    /// Submit this operation.
    Submit(Op),
    /// Close the connection.
    Close,
}

/// Everything the state machine reads or updates outside the connection.
pub(crate) struct Cx<'a> {
    pub cfg: &'a ServerConfig,
    pub root: &'a SharedFd,
    pub date: &'a DateCache,
    pub clock: &'a mut LogClock,
    pub unix_now: u64,
    pub now: Instant,
    pub stats: &'a mut HttpStats,
    pub log: Option<&'a mut Vec<u8>>,
    pub cache: &'a mut FileCache,
    pub bufs: &'a mut BufPool,
    pub stopping: bool,
}

/// Send buffers and splice pipes shared by a worker's connections, so memory (and pipe
/// pages, which count against the user's `pipe-user-pages-soft`) follows responses in flight,
/// not open connections (an idle keep-alive connection holds only its small receive buffer).
#[derive(Debug, Default)]
pub(crate) struct BufPool {
    free: Vec<Vec<u8>>,
    pipes: Vec<Pipe>,
}

impl BufPool {
    /// Most buffers kept, and the largest kept (bigger ones go back to the allocator).
    const KEEP: usize = 256;
    const KEEP_BYTES: usize = 64 * 1024;

    /// Most empty pipes kept.
    const KEEP_PIPES: usize = 16;

    fn take(&mut self) -> Vec<u8> {
        self.free.pop().unwrap_or_default()
    }

    /// Drop the spare buffers and pipes (the worker is idle).
    pub fn clear(&mut self) {
        self.free = Vec::new();
        self.pipes = Vec::new();
    }

    /// An empty pipe, if one is kept (else the engine makes one).
    fn take_pipe(&mut self) -> Option<Pipe> {
        self.pipes.pop()
    }

    /// Keep a pipe for the next splice, if it holds nothing (one holding bytes of a transfer
    /// that ended early is dropped, and its bytes with it).
    fn give_pipe(&mut self, p: Pipe) {
        if p.held() == 0 && self.pipes.len() < Self::KEEP_PIPES {
            self.pipes.push(p);
        }
    }

    fn give(&mut self, mut b: Vec<u8>) {
        if b.capacity() > 0 && b.capacity() <= Self::KEEP_BYTES && self.free.len() < Self::KEEP {
            b.clear();
            self.free.push(b);
        }
    }
}

/// The response being made.
#[derive(Debug, Default)]
struct Req {
    head: Option<Head>,
    /// Cache key: the resolved path, with a trailing `/` if the target had one.
    key: Vec<u8>,
    rel: Vec<u8>,
    trailing_slash: bool,
    index: bool,
    file: Option<SharedFd>,
    /// The cache entry being served (its body is filled after a whole-file read; its mapping
    /// after the first send from one).
    entry: Option<Arc<Entry>>,
    /// The splice pipe of the body being sent (`--data splice`), holding what the socket has
    /// not taken yet.
    pipe: Option<Pipe>,
    /// The file's mapping (`--data share`), and the file's length it covers.
    map: Option<Arc<Mapping>>,
    file_len: u64,
    /// Shared bytes sent in place of the send buffer: a cached small file's prebuilt head, or
    /// a chunk frozen for a zero-copy send (`--data emulated`).
    lead: Option<Bytes>,
    /// The data path of a large body (`--data`, or what `auto` picked for its size).
    data: DataMode,
    /// A body sent from the cache: shared, immutable bytes that follow the head in the same
    /// gather send (no copy into the send buffer).
    shared_body: Option<Bytes>,
    /// Where the body starts in the send buffer, and whether it is the whole file.
    head_len: usize,
    whole_file: bool,
    status: u16,
    /// Bytes of a chunked body after the head, already received whole (dropped with the head).
    chunked_wire: usize,
    /// A refused request's line, `Referer` and `User-Agent` (no `Head` was made), for the log.
    refused: Option<(request::Span, Option<request::Span>, Option<request::Span>)>,
    /// The client waits for `100 Continue` before sending the body it announced: the response
    /// starts with one (unless it closes), so the body follows and is discarded, never taken
    /// for the next request.
    continue_pending: bool,
    /// A `100 Continue` was sent on its own, ahead of a chunked body the answer waits for.
    continue_sent: bool,
    persist: Option<Persistence>,
    close_after: bool,
    linger: bool,
    body_off: u64,
    body_left: u64,
    body_len: u64,
    wsent: usize,
}

/// A connection can move between threads (the thread-per-connection model runs it on its own
/// thread): checked at compile time.
const _: fn() = || {
    fn send<T: Send>() {}
    send::<Conn>();
};

/// One client connection.
pub(crate) struct Conn {
    pub sock: SharedFd,
    pub peer: Option<SocketAddr>,
    pub phase: Phase,
    /// When the connection times out, if it can.
    pub deadline: Option<Instant>,
    /// It holds a place under the connection cap (it was not answered 503).
    pub admitted: bool,
    rbuf: Vec<u8>,
    wbuf: Vec<u8>,
    head_started: Instant,
    served: u32,
    discard: u64,
    /// Bytes at the start of `rbuf` known to hold no end of a head (so a head arriving in
    /// pieces is parsed once it can be complete, not once per piece).
    scanned: usize,
    req: Req,
}

impl Conn {
    pub fn new(sock: SharedFd, peer: Option<SocketAddr>, now: Instant) -> Self {
        Conn {
            sock,
            peer,
            phase: Phase::Reading,
            deadline: None,
            admitted: false,
            rbuf: Vec::new(),
            wbuf: Vec::new(),
            head_started: now,
            served: 0,
            discard: 0,
            scanned: 0,
            req: Req::default(),
        }
    }

    /// Waiting for a new request with nothing of it received (may be closed at shutdown).
    pub fn is_idle(&self) -> bool {
        self.phase == Phase::Idle
            || (self.phase == Phase::Reading && self.rbuf.is_empty() && self.req.head.is_none())
    }

    /// Answer 503 and close (connection cap reached).
    #[cold]
    #[inline(never)]
    pub fn overloaded(&mut self, cx: &mut Cx<'_>) -> Next {
        cx.stats.overload_503 += 1;
        self.error(cx, 503, true, &[("Retry-After", b"1")])
    }

    /// The next operation, given the completion of the last one (`None`: start).
    pub fn step(&mut self, cx: &mut Cx<'_>, done: Option<Completion>) -> Next {
        let Some(c) = done else {
            return self.recv(cx);
        };
        match self.phase {
            Phase::Reading => self.on_recv(cx, c),
            Phase::Idle => self.on_readable(cx, c),
            Phase::Opening => self.on_open(cx, c),
            Phase::Statting => self.on_stat(cx, c),
            Phase::ReadingBody => self.on_read(cx, c),
            Phase::SendingHead
            | Phase::SendingBuf
            | Phase::SendingContinue
            | Phase::CopySending => self.on_sent(cx, c),
            Phase::SendingFile => self.on_sendfile(cx, c),
            Phase::CopyReading => self.on_copy_read(cx, c),
            Phase::ShuttingDown => {
                self.rbuf.clear();
                self.phase = Phase::Lingering;
                self.deadline = Some(cx.now + cx.cfg.linger_timeout);
                self.recv_op(false)
            }
            Phase::Lingering => match (c.result, c.out) {
                (Ok(n), Out::Buf(BufMut::Vec(mut b))) if n > 0 => {
                    b.clear();
                    self.rbuf = b;
                    self.recv_op(false)
                }
                _ => Next::Close,
            },
        }
    }

    /// A receive; `after_readable`: the socket just reported input (no need to wait first).
    fn recv_op(&mut self, after_readable: bool) -> Next {
        // Between keep-alive requests a receive would nearly always fail: wait for readiness.
        let poll_first = !after_readable && self.rbuf.is_empty() && self.served > 0;
        // The engine receives into spare room only; it never grows the buffer.
        self.rbuf.reserve(RECV_BYTES);
        Next::Submit(Op::Recv {
            sock: Arc::clone(&self.sock),
            buf: BufMut::Vec(std::mem::take(&mut self.rbuf)),
            max: RECV_BYTES,
            poll_first,
        })
    }

    fn recv(&mut self, cx: &mut Cx<'_>) -> Next {
        self.phase = Phase::Reading;
        // Idle between requests: the keep-alive timeout. Still receiving a head, or the body
        // of the last request to discard: the header timeout from when it began — a body that
        // trickles in must not re-arm the keep-alive deadline with every byte.
        let idle = self.rbuf.is_empty() && self.served > 0 && self.discard == 0;
        self.deadline = Some(if idle {
            cx.now + cx.cfg.keepalive_timeout
        } else {
            self.head_started + cx.cfg.header_timeout
        });
        if idle {
            // Waiting for the next request may take long: hold no buffer meanwhile — both go
            // back to the worker's pool, and the connection waits for input without one
            // (an idle connection used to keep its 4 KiB receive buffer: ten times nginx's
            // memory per idle connection), taking a buffer again when the request arrives.
            cx.bufs.give(std::mem::take(&mut self.wbuf));
            cx.bufs.give(std::mem::take(&mut self.rbuf));
            self.scanned = 0;
            self.phase = Phase::Idle;
            return Next::Submit(Op::Readable {
                sock: Arc::clone(&self.sock),
            });
        }
        self.recv_op(false)
    }

    /// Input arrived on an idle connection: receive it into a buffer from the pool.
    fn on_readable(&mut self, cx: &mut Cx<'_>, c: Completion) -> Next {
        if c.result.is_err() {
            return Next::Close;
        }
        self.phase = Phase::Reading;
        if self.rbuf.capacity() == 0 {
            self.rbuf = cx.bufs.take();
        }
        self.recv_op(true)
    }

    /// The send buffer, from the pool if this connection holds none, with the interim
    /// `100 Continue` first when the client waits for one (RFC 9110 §10.1.1).
    fn wbuf(&mut self, cx: &mut Cx<'_>) -> &mut Vec<u8> {
        if self.wbuf.capacity() == 0 {
            self.wbuf = cx.bufs.take();
        }
        self.wbuf.clear();
        if std::mem::take(&mut self.req.continue_pending) && !self.req.close_after {
            self.wbuf
                .extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
        }
        &mut self.wbuf
    }

    fn on_recv(&mut self, cx: &mut Cx<'_>, c: Completion) -> Next {
        let (Ok(n), Out::Buf(BufMut::Vec(buf))) = (c.result, c.out) else {
            return Next::Close;
        };
        let was_empty = buf.len() == n;
        self.rbuf = buf;
        if n == 0 {
            return Next::Close;
        }
        if was_empty && self.discard == 0 {
            self.head_started = cx.now;
        }
        self.next_request(cx)
    }

    /// Discard what remains of the last request's body, then parse the next head.
    fn next_request(&mut self, cx: &mut Cx<'_>) -> Next {
        if self.discard > 0 {
            let k = usize::try_from(self.discard)
                .unwrap_or(usize::MAX)
                .min(self.rbuf.len());
            self.rbuf.drain(..k);
            self.scanned = 0;
            self.discard -= k as u64;
            if self.discard > 0 {
                return self.recv(cx);
            }
            self.head_started = cx.now;
        }
        if self.rbuf.is_empty() {
            if cx.stopping {
                return Next::Close;
            }
            return self.recv(cx);
        }
        let limits = cx.cfg.limits();
        if !request::worth_parsing(&self.rbuf, self.scanned, &limits) {
            self.scanned = self.rbuf.len();
            return self.recv(cx);
        }
        match request::parse(&self.rbuf, &limits) {
            Ok(Parsed::Partial) => {
                self.scanned = self.rbuf.len();
                self.recv(cx)
            }
            Err(r) => {
                // A refused request is a request, and its log line says what it was.
                cx.stats.requests += 1;
                self.req.refused =
                    Some(request::reject_fields(&self.rbuf, cx.cfg.max_request_line));
                self.req.persist = Some(Persistence::Close);
                let extra: &[(&str, &[u8])] = if r.status == 405 {
                    &[("Allow", b"GET, HEAD")]
                } else {
                    &[]
                };
                self.error(cx, r.status, true, extra)
            }
            Ok(Parsed::Complete(head)) => self.begin(cx, head),
        }
    }

    fn begin(&mut self, cx: &mut Cx<'_>, head: Head) -> Next {
        // A chunked body is read whole (it is small: at most the discard limit) before the
        // answer, so that a malformed one gets its 400 and the next request is found.
        let mut chunked_wire = 0;
        if head.chunked {
            let body = self.rbuf.get(head.len..).unwrap_or_default();
            let status = match chunked::scan(body, cx.cfg.max_discard_body) {
                chunked::Scan::Complete { wire } => {
                    chunked_wire = wire;
                    None
                }
                // The client may hold the body back until told to go on (RFC 9110 §10.1.1).
                chunked::Scan::Partial
                    if head.expect_continue
                        && head.minor == 1
                        && body.is_empty()
                        && !self.req.continue_sent =>
                {
                    self.req.continue_sent = true;
                    let w = self.wbuf(cx);
                    w.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
                    self.req.wsent = 0;
                    return self.send_buf(cx, Phase::SendingContinue);
                }
                chunked::Scan::Partial => return self.recv(cx),
                chunked::Scan::TooLarge => Some(413),
                chunked::Scan::Malformed => Some(400),
            };
            if let Some(status) = status {
                cx.stats.requests += 1;
                self.req.head = Some(head);
                return self.error(cx, status, true, &[]);
            }
        }
        cx.stats.requests += 1;
        let persist = match (head.keep_alive, head.minor) {
            (false, _) => Persistence::Close,
            (true, 0) => Persistence::KeepAlive10,
            (true, _) => Persistence::KeepAlive11,
        };
        // The key buffer of the previous request is reused: no allocation on a cache hit.
        let mut key = std::mem::take(&mut self.req.key);
        let target = head.target.get(&self.rbuf);
        let resolved = path::split_target(target)
            .and_then(|(p, _)| path::resolve_into(p, cx.cfg.dotfiles, &mut key));
        let too_big = head.content_length > cx.cfg.max_discard_body;
        self.req = Req {
            persist: Some(persist),
            close_after: persist == Persistence::Close,
            chunked_wire,
            ..Req::default()
        };
        // Only an HTTP/1.1 client may be sent a 1xx, and only one that has not sent the body yet.
        self.req.continue_pending = head.expect_continue
            && head.minor == 1
            && head.content_length > 0
            && self.rbuf.len() <= head.len;
        self.req.head = Some(head);
        if too_big {
            return self.error(cx, 413, true, &[]);
        }
        match resolved {
            Ok(trailing_slash) => {
                let rel_len = key.len();
                if trailing_slash {
                    key.push(b'/');
                }
                self.req.key = key;
                if let Some(e) = cx.cache.get(&self.req.key, cx.now) {
                    let e = Arc::clone(e);
                    return self.respond_file(cx, &e);
                }
                self.req.rel = self.req.key[..rel_len].to_vec();
                self.req.trailing_slash = trailing_slash;
                self.open(cx)
            }
            // No file is named so: not found, the connection kept (RFC 9110 leaves the choice;
            // Apache answers 404 to an encoded slash by default).
            Err(PathError::Dotfile | PathError::EncodedSeparator) => {
                self.error(cx, 404, false, &[])
            }
            Err(_) => self.error(cx, 400, true, &[]),
        }
    }

    // The paths a cached file's request does not take are kept out of line (`inline(never)`,
    // errors `cold`): inlined into `step`, they pushed the code of one request past the 32 KiB
    // instruction cache (cachegrind: I1 misses a request 104 → 47 with this alone).
    #[inline(never)]
    fn open(&mut self, cx: &mut Cx<'_>) -> Next {
        let path = if self.req.rel.is_empty() {
            b".".to_vec()
        } else {
            self.req.rel.clone()
        };
        // `path::resolve` never yields a NUL byte.
        let Ok(path) = CString::new(path) else {
            return self.error(cx, 400, true, &[]);
        };
        self.phase = Phase::Opening;
        self.deadline = None;
        Next::Submit(Op::Open {
            dir: Arc::clone(cx.root),
            path,
            beneath: true,
            prefetch: OPEN_PREFETCH,
        })
    }

    #[inline(never)]
    fn on_open(&mut self, cx: &mut Cx<'_>, c: Completion) -> Next {
        match (c.result, c.out) {
            (Ok(_), Out::File(fd)) => {
                let file = Arc::new(fd);
                self.req.file = Some(Arc::clone(&file));
                self.phase = Phase::Statting;
                Next::Submit(Op::Stat { file })
            }
            (Err(e), _) => {
                let status = open_status(&e);
                if status == 500 {
                    tracing::warn!("open {:?}: {e}", String::from_utf8_lossy(&self.req.rel));
                }
                self.error(cx, status, status >= 500, &[])
            }
            (Ok(_), _) => self.error(cx, 500, true, &[]),
        }
    }

    #[inline(never)]
    fn on_stat(&mut self, cx: &mut Cx<'_>, c: Completion) -> Next {
        let st = match (c.result, c.out) {
            (Ok(_), Out::Stat(st)) => st,
            _ => return self.error(cx, 500, true, &[]),
        };
        match st.file_type {
            // `/hello.txt/` names a directory that does not exist: never the file.
            FileType::Regular if self.req.trailing_slash && !self.req.index => {
                self.error(cx, 404, false, &[])
            }
            FileType::Regular => {
                let Some(file) = self.req.file.clone() else {
                    return Next::Close;
                };
                let rel = std::mem::take(&mut self.req.rel);
                let e = Entry::new(file, st, rel, cx.now);
                let e = cx.cache.insert(&self.req.key, e, cx.now);
                self.respond_file(cx, &e)
            }
            FileType::Directory if self.req.index => self.error(cx, 404, false, &[]),
            FileType::Directory if !self.req.trailing_slash => self.redirect(cx),
            FileType::Directory => {
                self.req.index = true;
                if !self.req.rel.is_empty() {
                    self.req.rel.push(b'/');
                }
                self.req.rel.extend_from_slice(b"index.html");
                self.req.file = None;
                self.open(cx)
            }
            FileType::Other => self.error(cx, 404, false, &[]),
        }
    }

    /// `/dir` → 301 `/dir/`, query kept.
    #[cold]
    #[inline(never)]
    fn redirect(&mut self, cx: &mut Cx<'_>) -> Next {
        let mut loc = b"/".to_vec();
        path::encode_path(&self.req.rel, &mut loc);
        loc.push(b'/');
        if let Some(head) = &self.req.head {
            if let Ok((_, Some(q))) = path::split_target(head.target.get(&self.rbuf)) {
                loc.push(b'?');
                loc.extend_from_slice(q);
            }
        }
        self.error(cx, 301, false, &[("Location", &loc)])
    }

    fn respond_file(&mut self, cx: &mut Cx<'_>, e: &Arc<Entry>) -> Next {
        let Some(head) = self.req.head.clone() else {
            return Next::Close;
        };
        let (st, etag) = (&e.stat, &e.etag);
        self.req.file = Some(Arc::clone(&e.file));
        let rb = &self.rbuf;
        let field = |s: Option<request::Span>| s.map(|s| s.get(rb));
        let conds = Conditions {
            if_match: field(head.if_match),
            if_none_match: field(head.if_none_match),
            if_modified_since: field(head.if_modified_since),
            if_unmodified_since: field(head.if_unmodified_since),
        };
        let last_modified = &e.last_modified;
        match validators::evaluate(head.method, &conds, etag, st.modified) {
            Precondition::Failed => return self.error(cx, 412, false, &[]),
            Precondition::NotModified => {
                let extra: [(&str, &[u8]); 2] = [
                    ("ETag", etag.as_str().as_bytes()),
                    ("Last-Modified", last_modified.as_bytes()),
                ];
                return self.error(cx, 304, false, &extra);
            }
            Precondition::Proceed => {}
        }
        let len = st.len_bytes;
        let decision = validators::range(
            field(head.range),
            field(head.if_range),
            etag,
            st.modified,
            len,
        );
        let (status, first, count) = match decision {
            RangeDecision::Full => (200, 0, len),
            RangeDecision::Partial { first, last } => (206, first, last - first + 1),
            RangeDecision::Unsatisfiable => {
                let cr = format!("bytes */{len}");
                return self.error(cx, 416, false, &[("Content-Range", cr.as_bytes())]);
            }
        };
        let persist = self.persistence(cx);
        let date = cx.date.text();
        self.req.status = status;
        self.req.wsent = 0;
        let plain = !self.req.continue_pending;
        if let (200, Persistence::KeepAlive11, Method::Get, Some(body), true) =
            (status, persist, head.method, e.body.get(), plain)
        {
            // The plain answer of a cached small file (no `100 Continue` in front): its
            // prebuilt head and its body, both shared, in one gather send (see `cache`).
            self.req.lead = Some(cx.cache.head(e, cx.unix_now, date, |w| {
                file_head(w, e, date, status, len, persist);
            }));
            self.req.shared_body = Some(body.clone());
            self.req.body_len = count;
            self.req.file = None;
            // Nothing of the send buffer goes with it (an interim `100 Continue` sent alone
            // before a chunked body may still be in it).
            self.wbuf.clear();
            return self.send_buf(cx, Phase::SendingBuf);
        }
        let w = self.wbuf(cx);
        file_head(w, e, date, status, count, persist);
        if status == 206 {
            // `file_head` ended the head; the range goes before its empty line.
            w.truncate(w.len() - 2);
            let cr = format!("bytes {first}-{}/{len}", first + count - 1);
            response::field(w, "Content-Range", cr.as_bytes());
            w.extend_from_slice(b"\r\n");
        }
        if head.method == Method::Head || count == 0 {
            self.req.file = None;
            return self.send_buf(cx, Phase::SendingBuf);
        }
        self.req.body_off = first;
        self.req.body_left = count;
        self.req.body_len = count;
        if count <= cx.cfg.small_file_bytes as u64 {
            if let Some(body) = e.body.get() {
                // From memory: no read, and no copy — the cached bytes go out behind the head
                // in one gather send.
                let (a, b) = (first as usize, (first + count) as usize);
                self.req.shared_body = Some(body.slice(a.min(body.len())..b.min(body.len())));
                self.req.file = None;
                return self.send_buf(cx, Phase::SendingBuf);
            }
            self.req.head_len = self.wbuf.len();
            self.req.whole_file = first == 0 && count == len;
            self.req.entry = Some(Arc::clone(e));
            self.read_body()
        } else {
            // The data path of this body: `--data`, or under `auto` the one its size gets.
            self.req.data = match cx.cfg.data {
                DataMode::Auto => cx.cfg.data_auto.pick(count),
                m => m,
            };
            self.send_large(cx, e, len)
        }
    }

    /// Start a body larger than `--small-file-bytes` on its data path (`req.data`).
    #[inline(never)]
    fn send_large(&mut self, cx: &mut Cx<'_>, e: &Arc<Entry>, len: u64) -> Next {
        if self.req.data.reads_into_buffer() {
            self.copy_chunk(cx)
        } else {
            if self.req.data == DataMode::Share {
                self.req.map = e.map.get().cloned();
                self.req.file_len = len;
                self.req.entry = Some(Arc::clone(e));
            }
            self.send_buf(cx, Phase::SendingHead)
        }
    }

    /// The next chunk of a copied body, read into the send buffer behind what it holds (the
    /// head, for the first). The read names the socket the chunk goes to, so event
    /// correlation can hold it until the socket has room.
    #[inline(never)]
    fn copy_chunk(&mut self, cx: &Cx<'_>) -> Next {
        let Some(file) = self.req.file.clone() else {
            return Next::Close;
        };
        self.phase = Phase::CopyReading;
        // Under DED the read waits for room on the socket first: a client that stopped
        // reading is dropped after the send timeout here too.
        self.deadline = Some(cx.now + cx.cfg.send_timeout);
        let room = COPY_CHUNK.saturating_sub(self.wbuf.len()).max(RECV_BYTES);
        let len = usize::try_from(self.req.body_left)
            .unwrap_or(usize::MAX)
            .min(room);
        self.wbuf.reserve_exact(len);
        Next::Submit(Op::Read {
            file,
            offset: self.req.body_off,
            len,
            buf: BufMut::Vec(std::mem::take(&mut self.wbuf)),
            to: Some(Arc::clone(&self.sock)),
        })
    }

    #[inline(never)]
    fn on_copy_read(&mut self, cx: &mut Cx<'_>, c: Completion) -> Next {
        if let Out::Buf(BufMut::Vec(b)) = c.out {
            self.wbuf = b;
        }
        match c.result {
            // `Ok(0)`: the file shrank while being sent: a short body and a close.
            Ok(n) => match self.body_moved(cx, n) {
                None => Next::Close,
                Some(_) => {
                    self.req.wsent = 0;
                    self.send_buf(cx, Phase::CopySending)
                }
            },
            Err(e) => {
                tracing::warn!("read {:?}: {e}", String::from_utf8_lossy(&self.req.rel));
                Next::Close
            }
        }
    }

    fn persistence(&mut self, cx: &Cx<'_>) -> Persistence {
        if cx.stopping {
            self.req.close_after = true;
        }
        if self.req.close_after {
            Persistence::Close
        } else {
            self.req.persist.unwrap_or(Persistence::Close)
        }
    }

    #[inline(never)]
    fn read_body(&mut self) -> Next {
        let Some(file) = self.req.file.clone() else {
            return Next::Close;
        };
        self.phase = Phase::ReadingBody;
        self.deadline = None;
        let len = usize::try_from(self.req.body_left).unwrap_or(usize::MAX);
        // Small bodies only (at most `small_file_bytes`): the room is reserved here, the
        // engine fills it.
        self.wbuf.reserve(len);
        Next::Submit(Op::Read {
            file,
            offset: self.req.body_off,
            len,
            buf: BufMut::Vec(std::mem::take(&mut self.wbuf)),
            to: None,
        })
    }

    #[inline(never)]
    fn on_read(&mut self, cx: &mut Cx<'_>, c: Completion) -> Next {
        if let Out::Buf(BufMut::Vec(b)) = c.out {
            self.wbuf = b;
        }
        match c.result {
            // `Ok(0)`: the file shrank since `fstat`; nothing has been sent, but the head
            // promises bytes that no longer exist — close rather than send a wrong length.
            Ok(n) => match self.body_moved(cx, n) {
                None => Next::Close,
                Some(true) => self.read_body(),
                Some(false) => {
                    if let (Some(e), true) = (self.req.entry.take(), self.req.whole_file) {
                        let body = self.wbuf.get(self.req.head_len..).unwrap_or_default();
                        cx.cache.store_body(&self.req.key, &e, body);
                    }
                    self.req.file = None;
                    self.send_buf(cx, Phase::SendingBuf)
                }
            },
            Err(e) => {
                tracing::warn!("read {:?}: {e}", String::from_utf8_lossy(&self.req.rel));
                self.error(cx, 500, true, &[])
            }
        }
    }

    fn send_buf(&mut self, cx: &Cx<'_>, phase: Phase) -> Next {
        self.phase = phase;
        self.deadline = Some(cx.now + cx.cfg.send_timeout);
        let zerocopy = phase == Phase::CopySending && self.req.data == DataMode::Emulated;
        let bufs = if zerocopy {
            // The chunk (behind the head, for the first) becomes immutable shared bytes, which
            // the engine may hold until the kernel has sent them: the next chunk is read into
            // a new buffer, and nothing can write into these meanwhile.
            let chunk = match self.req.lead.take() {
                Some(c) => c,
                None => Bytes::from(std::mem::take(&mut self.wbuf)),
            };
            Gather::one(chunk)
        } else {
            let mut bufs = match self.req.lead.take() {
                Some(head) => Gather::one(head),
                None => Gather::one(std::mem::take(&mut self.wbuf)),
            };
            if let Some(body) = self.req.shared_body.take() {
                // A two-part list never overflows the gather capacity.
                let _ = bufs.push(body);
            }
            bufs
        };
        Next::Submit(Op::Send {
            sock: Arc::clone(&self.sock),
            bufs,
            from: self.req.wsent,
            more: phase == Phase::SendingHead,
            zerocopy,
        })
    }

    fn on_sent(&mut self, cx: &mut Cx<'_>, c: Completion) -> Next {
        if let Out::Gather(mut g) = c.out {
            match g.take(0) {
                // A prebuilt head, or a chunk sent zero-copy.
                Buf::Shared(lead) => self.req.lead = Some(lead),
                first => self.wbuf = first.into_vec().unwrap_or_default(),
            }
            if let Buf::Shared(body) = g.take(1) {
                self.req.shared_body = Some(body);
            }
        }
        let Ok(n) = c.result else {
            return Next::Close;
        };
        self.req.wsent += n;
        let total = self.wbuf.len()
            + self.req.shared_body.as_ref().map_or(0, Bytes::len)
            + self.req.lead.as_ref().map_or(0, Bytes::len);
        if self.req.wsent < total {
            return self.send_buf(cx, self.phase);
        }
        match self.phase {
            Phase::SendingHead => self.send_file(cx),
            Phase::CopySending if self.req.body_left > 0 => {
                // A zero-copy chunk is the engine's until the kernel is done: let it go.
                self.req.lead = None;
                self.wbuf.clear();
                self.copy_chunk(cx)
            }
            Phase::SendingContinue => {
                self.req.wsent = 0;
                self.recv(cx)
            }
            _ => self.complete(cx),
        }
    }

    #[inline(never)]
    fn send_file(&mut self, cx: &mut Cx<'_>) -> Next {
        let Some(file) = self.req.file.clone() else {
            return Next::Close;
        };
        self.phase = Phase::SendingFile;
        self.deadline = Some(cx.now + cx.cfg.send_timeout);
        let via = match self.req.data {
            DataMode::Splice => Via::Splice(self.req.pipe.take().or_else(|| cx.bufs.take_pipe())),
            DataMode::Move => Via::Move(self.req.pipe.take().or_else(|| cx.bufs.take_pipe())),
            DataMode::Share => Via::Mapped {
                map: self.req.map.clone(),
                file_len: self.req.file_len,
            },
            DataMode::Sendfile | DataMode::Copy | DataMode::Emulated | DataMode::Auto => {
                Via::Sendfile
            }
        };
        Next::Submit(Op::Sendfile {
            sock: Arc::clone(&self.sock),
            file,
            offset: self.req.body_off,
            len: usize::try_from(self.req.body_left)
                .unwrap_or(usize::MAX)
                .min(cx.cfg.sendfile_chunk.max(1)),
            via,
        })
    }

    #[inline(never)]
    fn on_sendfile(&mut self, cx: &mut Cx<'_>, c: Completion) -> Next {
        match c.out {
            Out::Via(Via::Splice(Some(p)) | Via::Move(Some(p))) => self.req.pipe = Some(p),
            Out::Via(Via::Mapped { map: Some(m), .. }) => {
                if let Some(e) = &self.req.entry {
                    let _ = e.map.set(Arc::clone(&m));
                }
                self.req.map = Some(m);
            }
            _ => {}
        }
        match c.result {
            // `Ok(0)`: the file shrank while being sent; the client gets a short body and a
            // close, never bytes past the file's end.
            Ok(n) => match self.body_moved(cx, n) {
                None => Next::Close,
                Some(true) => self.send_file(cx),
                Some(false) => {
                    if let Some(p) = self.req.pipe.take() {
                        cx.bufs.give_pipe(p);
                    }
                    self.complete(cx)
                }
            },
            // `EFAULT` from a mapping: the file was cut short while mapped.
            Err(_) => Next::Close,
        }
    }

    /// Account for `n` body bytes read or sent: `None` if none were (the file ended early),
    /// else whether more remain.
    fn body_moved(&mut self, cx: &mut Cx<'_>, n: usize) -> Option<bool> {
        if n == 0 {
            cx.stats.file_changed += 1;
            return None;
        }
        self.req.body_off += n as u64;
        self.req.body_left = self.req.body_left.saturating_sub(n as u64);
        Some(self.req.body_left > 0)
    }

    /// A response lair makes itself. `close`: end the connection after it (lingering).
    #[cold]
    #[inline(never)]
    fn error(
        &mut self,
        cx: &mut Cx<'_>,
        status: u16,
        close: bool,
        extra: &[(&str, &[u8])],
    ) -> Next {
        if close {
            self.req.close_after = true;
            self.req.linger = true;
        }
        // A refused request whose method reads HEAD gets no body either (found by the conn
        // fuzz target: a `HEAD … HTTP/2.1` got its 505 page).
        let head_only = match (&self.req.head, &self.req.refused) {
            (Some(h), _) => h.method == Method::Head,
            (None, Some((line, _, _))) => line.get(&self.rbuf).starts_with(b"HEAD "),
            (None, None) => false,
        };
        let persist = self.persistence(cx);
        self.wbuf(cx);
        self.req.status = status;
        self.req.file = None;
        self.req.shared_body = None;
        self.req.wsent = 0;
        self.req.body_len = response::simple(
            &mut self.wbuf,
            status,
            cx.date.text(),
            persist,
            head_only,
            extra,
        );
        self.send_buf(cx, Phase::SendingBuf)
    }

    /// The response is out: log it, then the next request, a lingering close, or a close.
    fn complete(&mut self, cx: &mut Cx<'_>) -> Next {
        self.served += 1;
        let status = self.req.status;
        match status {
            200..=299 => cx.stats.status_2xx += 1,
            300..=399 => cx.stats.status_3xx += 1,
            400..=499 => cx.stats.status_4xx += 1,
            _ => cx.stats.status_5xx += 1,
        }
        cx.stats.body_bytes += self.req.body_len;
        if let Some(out) = cx.log.as_deref_mut() {
            let rb = &self.rbuf;
            let (line, referer, user_agent) = match (&self.req.head, &self.req.refused) {
                (Some(h), _) => (Some(h.line), h.referer, h.user_agent),
                (None, Some((l, r, u))) => (Some(*l), *r, *u),
                (None, None) => (None, None, None),
            };
            let entry = log::Entry {
                peer: self.peer,
                line: line.map(|s| s.get(rb)).unwrap_or_default(),
                status,
                body_bytes: self.req.body_len,
                referer: referer.map(|s| s.get(rb)),
                user_agent: user_agent.map(|s| s.get(rb)),
            };
            log::append(out, &entry, cx.clock.at(cx.unix_now));
        }
        self.wbuf.clear();
        if self.req.linger {
            self.phase = Phase::ShuttingDown;
            self.deadline = Some(cx.now + cx.cfg.linger_timeout);
            return Next::Submit(Op::Shutdown {
                sock: Arc::clone(&self.sock),
            });
        }
        if self.req.close_after {
            return Next::Close;
        }
        let mut req = std::mem::take(&mut self.req);
        self.req.key = std::mem::take(&mut req.key);
        if let Some(head) = req.head {
            let used = head.len + req.chunked_wire;
            self.rbuf.drain(..used.min(self.rbuf.len()));
            self.scanned = 0;
            self.discard = head.content_length;
        }
        self.head_started = cx.now;
        self.next_request(cx)
    }
}

/// The head of a file's answer: status line, `Date`, type, length, validators, `Connection`.
fn file_head(w: &mut Vec<u8>, e: &Entry, date: &str, status: u16, count: u64, p: Persistence) {
    response::start(w, status, date);
    w.extend_from_slice(&e.content_type);
    response::content_length(w, count);
    response::field(w, "Last-Modified", e.last_modified.as_bytes());
    response::field(w, "ETag", e.etag.as_str().as_bytes());
    response::field(w, "Accept-Ranges", b"bytes");
    response::finish(w, p);
}

/// The status for a failed open.
fn open_status(e: &io::Error) -> u16 {
    match e.raw_os_error() {
        Some(
            libc::ENOENT
            | libc::ENOTDIR
            | libc::ELOOP
            | libc::EXDEV
            | libc::ENAMETOOLONG
            | libc::ENXIO,
        ) => 404,
        Some(libc::EACCES | libc::EPERM) => 403,
        Some(libc::EMFILE | libc::ENFILE | libc::ENOMEM) => 503,
        _ => 500,
    }
}

/// Bytes a helper that had to open a file (cold metadata) starts reading right away: the
/// kernel's own readahead window, so small files arrive whole and large ones start early.
const OPEN_PREFETCH: usize = 128 << 10;
