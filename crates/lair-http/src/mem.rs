//! An in-memory driver for one connection: the state machine the workers run ([`crate::conn`]),
//! fed a byte stream in given pieces, with no socket and no engine.
//!
//! Why: the connection's state machine reads untrusted bytes, and how they are split over
//! receives is the client's choice. Tests and the `conn` fuzz target drive it here with
//! arbitrary streams in arbitrary splits, sends of arbitrary sizes, and see every byte it would
//! have sent. Socket operations are completed here: a receive takes the next piece (at most
//! what it has room for; an end of stream when none is left), a send takes at most `send_max`
//! bytes, `sendfile` reads the file and "sends" what it read. File operations (open, stat,
//! read) run for real on the configured root, blocking ([`lair_io::run_blocking`]), so path
//! resolution beneath the root, the file cache and short files are the real ones.
//!
//! What it does not model: time (no deadline ever passes), the connection cap, and the
//! worker's scheduler; nothing here is on the serving path.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use lair_io::{setup, BufMut, Completion, Op, OpKind, Out, SharedFd, Token};

use crate::cache::FileCache;
use crate::config::ServerConfig;
use crate::conn::{BufPool, Conn, Cx, Next};
use crate::log::LogClock;
use crate::response::DateCache;
use crate::{Error, HttpStats};

/// Steps after which a connection that has not finished is a bug (a loop in the machine).
const MAX_STEPS: usize = 1_000_000;

/// A root, a configuration and the per-worker state a connection needs.
pub struct MemConn {
    cfg: ServerConfig,
    root: SharedFd,
    cache: FileCache,
    bufs: BufPool,
    date: DateCache,
    clock: LogClock,
}

/// What one connection did.
#[derive(Debug, Default)]
pub struct Transcript {
    /// Every byte the server sent, in order.
    pub output: Vec<u8>,
    /// The access-log lines it wrote.
    pub log: Vec<u8>,
    /// Its statistics.
    pub stats: HttpStats,
    /// Input bytes never received: the server closed before reading them.
    pub unread: usize,
    /// Operations it asked for.
    pub steps: usize,
}

impl MemConn {
    /// A driver serving `cfg.root` with `cfg` (its file cache, limits and timeouts).
    pub fn new(cfg: ServerConfig) -> Result<MemConn, Error> {
        let root = setup::open_dir(&cfg.root).map_err(|source| Error::Root {
            path: cfg.root.display().to_string(),
            source,
        })?;
        Ok(MemConn {
            cache: FileCache::new(
                cfg.file_cache_ttl,
                cfg.file_cache_entries,
                cfg.cache_bytes as u64,
                None,
            ),
            cfg,
            root: Arc::new(root),
            bufs: BufPool::default(),
            date: DateCache::default(),
            clock: LogClock::default(),
        })
    }

    /// Run one connection that receives `pieces` one after another and then an end of
    /// stream, each send taking at most `send_max` bytes (at least one).
    pub fn run(&mut self, pieces: &[&[u8]], send_max: usize) -> Transcript {
        let send_max = send_max.max(1);
        let mut t = Transcript::default();
        let mut log = Vec::new();
        let mut input: std::collections::VecDeque<&[u8]> = pieces.iter().copied().collect();
        let now = Instant::now();
        let unix_now = self.date.refresh(SystemTime::now());
        let mut conn = Conn::new(Arc::clone(&self.root), None, now);
        let mut done: Option<Completion> = None;
        loop {
            let mut cx = Cx {
                cfg: &self.cfg,
                root: &self.root,
                date: &self.date,
                clock: &mut self.clock,
                unix_now,
                now,
                stats: &mut t.stats,
                log: Some(&mut log),
                cache: &mut self.cache,
                bufs: &mut self.bufs,
                stopping: false,
            };
            let op = match conn.step(&mut cx, done.take()) {
                Next::Close => break,
                Next::Submit(op) => op,
            };
            t.steps += 1;
            assert!(t.steps < MAX_STEPS, "the connection never finished");
            done = Some(complete(op, &mut input, send_max, &mut t.output));
        }
        t.unread = input.iter().map(|p| p.len()).sum();
        t.log = log;
        t
    }
}

/// Complete `op` as a socket with `input` to receive would, or run it for real.
fn complete(
    op: Op,
    input: &mut std::collections::VecDeque<&[u8]>,
    send_max: usize,
    output: &mut Vec<u8>,
) -> Completion {
    let token = Token(0);
    match op {
        Op::Recv { mut buf, max, .. } => {
            let n = match input.pop_front() {
                Some(piece) => {
                    let n = buf.fill_from(&piece[..piece.len().min(max)]);
                    if n < piece.len() {
                        input.push_front(&piece[n..]);
                    }
                    n
                }
                None => 0,
            };
            Completion::new(token, OpKind::Recv, Ok(n), Out::Buf(buf))
        }
        Op::Send { bufs, from, .. } => {
            let mut n = 0;
            for s in bufs.slices_from(from) {
                let take = s.len().min(send_max - n);
                output.extend_from_slice(&s[..take]);
                n += take;
                if n == send_max {
                    break;
                }
            }
            Completion::new(token, OpKind::Send, Ok(n), Out::Gather(bufs))
        }
        Op::Sendfile {
            file, offset, len, ..
        } => {
            let len = len.min(send_max);
            let read = Op::Read {
                file,
                offset,
                len,
                buf: BufMut::Vec(Vec::with_capacity(len)),
                to: None,
            };
            let c = lair_io::run_blocking(token, read);
            if let (Ok(_), Out::Buf(b)) = (&c.result, &c.out) {
                output.extend_from_slice(b.as_bytes());
            }
            Completion::new(token, OpKind::Sendfile, c.result, Out::None)
        }
        Op::Shutdown { .. } => Completion::new(token, OpKind::Shutdown, Ok(0), Out::None),
        op => lair_io::run_blocking(token, op),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn site() -> (tempfile::TempDir, ServerConfig) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("hello.txt"), b"hello\n").unwrap();
        std::fs::write(dir.path().join("big.bin"), vec![7u8; 300_000]).unwrap();
        let cfg = ServerConfig {
            root: dir.path().to_path_buf(),
            file_cache_ttl: Duration::from_secs(1),
            ..ServerConfig::default()
        };
        (dir, cfg)
    }

    /// The same pipelined requests, whole or a byte at a time, with sends of one byte or of
    /// any size, give the same bytes out.
    #[test]
    fn splits_do_not_change_what_is_sent() {
        let (_dir, cfg) = site();
        let copying = ServerConfig {
            data: crate::config::DataMode::Copy,
            ..cfg.clone()
        };
        let mut m = MemConn::new(cfg).unwrap();
        let mut m_copy = MemConn::new(copying).unwrap();
        let reqs: &[u8] = b"GET /hello.txt HTTP/1.1\r\nHost: a\r\n\r\n\
            HEAD /big.bin HTTP/1.1\r\nHost: a\r\n\r\n\
            GET /big.bin HTTP/1.1\r\nHost: a\r\nRange: bytes=10-19\r\n\r\n\
            GET /nope HTTP/1.1\r\nHost: a\r\n\r\n\
            GET /big.bin HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n";
        let whole = m.run(&[reqs], usize::MAX);
        assert_eq!(whole.unread, 0);
        assert_eq!(whole.stats.requests, 5);
        let text = String::from_utf8_lossy(&whole.output);
        assert_eq!(text.matches("HTTP/1.1 200 OK").count(), 3, "{text:.300}");
        assert_eq!(text.matches("HTTP/1.1 206").count(), 1);
        assert_eq!(text.matches("HTTP/1.1 404").count(), 1);
        assert!(whole.output.ends_with(&[7u8; 1000]));
        let bytes: Vec<&[u8]> = reqs.chunks(1).collect();
        for (send_max, copy) in [(1, false), (7, true), (4096, false), (usize::MAX, true)] {
            // Bodies copied through the send buffer (`--data copy`) are the same bytes.
            let split = if copy { &mut m_copy } else { &mut m }.run(&bytes, send_max);
            // Only the Date header may differ (a second may pass).
            let strip = |o: &[u8]| {
                String::from_utf8_lossy(o)
                    .lines()
                    .filter(|l| !l.starts_with("Date:"))
                    .collect::<Vec<_>>()
                    .join("\n")
            };
            assert_eq!(
                strip(&split.output),
                strip(&whole.output),
                "{send_max} {copy}"
            );
        }
        assert_eq!(String::from_utf8_lossy(&whole.log).lines().count(), 5);
    }

    /// A 400 ends the connection; what follows it is drained by the lingering close (so the
    /// client sees the answer, not a reset), never answered.
    #[test]
    fn a_bad_request_is_answered_once_and_what_follows_is_drained() {
        let (_dir, cfg) = site();
        let mut m = MemConn::new(cfg).unwrap();
        let t = m.run(
            &[
                b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n",
                b"GET / HTTP/1.1\r\n\r\n",
            ],
            10,
        );
        let text = String::from_utf8_lossy(&t.output);
        assert!(text.starts_with("HTTP/1.1 400"), "{text}");
        assert_eq!(text.matches("HTTP/1.1").count(), 1, "{text}");
        assert_eq!(t.unread, 0, "drained");
        assert_eq!(t.stats.status_4xx, 1);
    }
}
