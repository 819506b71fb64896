//! The soak: one server under mixed, hostile load for a long time, sampled every second, with
//! nothing lost (`lair lab run soak`; the experiment file's `[soak]` table).
//!
//! Phases, in order, against one freshly started server:
//!
//! 1. **warm-up** (`warmup`): the mixed load below, then a short flood and a tenth of the
//!    pipelined phase, so that every path has run once and what a server grows once (helper
//!    threads, its descriptor table, the allocator's arenas) is grown; it should outlast the
//!    server's keep-alive timeout (30 s), or the timeout path first runs after the baseline;
//! 2. **settle**, then the **baseline**: every client connection closed, the server back to
//!    its idle descriptors, then 10 s idle (past its file cache's expiry and lair's hand-back
//!    of idle memory); RSS, anonymous RSS and descriptors read;
//! 3. **mixed** (`duration`), all at once: the experiment's trace in closed loop (`clients`
//!    connections, every body checked against the manifest); slow readers downloading large
//!    files through a small receive buffer at a capped rate; clients that vanish mid-response
//!    (close, reset, half a request, or a request and gone); a flood of idle keep-alive
//!    connections, kept up as the server times them out; a pipelining client; and files
//!    rewritten in place, truncated and renamed over while clients download them;
//! 4. **flood**: `flood` idle keep-alive connections at once (more than the server's
//!    connection cap on this machine: the excess must get its defined answer, 503), held for
//!    `flood_hold`, then closed;
//! 5. **pipelined**: `pipelined` requests down one connection, `pipeline_depth` in flight;
//! 6. settle, then the **final** reading, set against the baseline.
//!
//! Pass: 0 unexpected outcomes, every response correct — against the manifest, or for a
//! churned file against the versions it held while the response was in flight, or cut short
//! because the soak truncated the file meanwhile (never a wrong byte, never a stale body more
//! than `stale_grace` after a change) — the flood held as many connections as the server's
//! cap allows, and the final RSS and descriptors within `tolerance` of the baseline.
//! Why the baseline follows a warm-up: a leak is growth from one idle, warmed-up state to the
//! next; the first touch of a cache or an arena is not. Anonymous RSS (what the server
//! allocated) is reported beside RSS.
//! One kind of wrong byte is the kernel's, not the server's, and is shown apart
//! (`zeroed_tail`).

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context as _};
use lair_load::framing::{parse_head, Head};
use lair_load::{Expect, LoadConfig, Mode, Progress, Slow, Stop};
use rand::{Rng as _, SeedableRng as _};
use serde::{Deserialize, Serialize};

use crate::experiment::{Cpus, Experiment};
use crate::servers::{self, Place, ServerSpec};

/// The `[soak]` table of an experiment.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SoakSpec {
    /// Slow readers (closed loop over the large files).
    pub slow_readers: usize,
    /// How fast each slow reader reads (`64k`: bytes a second).
    pub slow_rate: String,
    /// Each slow reader's `SO_RCVBUF`.
    pub slow_buffer: String,
    /// Large files (1 MiB each) for the slow readers and the vanishing clients.
    pub big_files: usize,
    /// Vanishing clients started a second.
    pub vanish_per_s: u32,
    /// Idle keep-alive connections kept open through the mixed phase.
    pub idle: usize,
    /// Files changed by the churn: one change this often.
    #[serde(with = "crate::experiment::humantime_serde_lite")]
    pub churn_every: Duration,
    /// Clients downloading the churned files.
    pub churn_clients: usize,
    /// Requests in flight on a pipelining connection.
    pub pipeline_depth: usize,
    /// Idle connections opened at once in the flood phase.
    pub flood: usize,
    /// How long the flood is held.
    #[serde(with = "crate::experiment::humantime_serde_lite")]
    pub flood_hold: Duration,
    /// Requests of the pipelined phase.
    pub pipelined: u64,
    /// Longest wait for the server to go idle after a phase.
    #[serde(with = "crate::experiment::humantime_serde_lite")]
    pub settle: Duration,
    /// How long after a change an old version may still be served (the file cache's check
    /// of a hot file is an inotify watch, whose event comes through a thread).
    #[serde(with = "crate::experiment::humantime_serde_lite")]
    pub stale_grace: Duration,
    /// Final RSS and descriptors within this fraction of the baseline.
    pub tolerance: f64,
}

impl Default for SoakSpec {
    fn default() -> Self {
        SoakSpec {
            slow_readers: 40,
            slow_rate: "64k".into(),
            slow_buffer: "8k".into(),
            big_files: 8,
            vanish_per_s: 20,
            idle: 2000,
            churn_every: Duration::from_millis(100),
            churn_clients: 4,
            pipeline_depth: 32,
            flood: 12_000,
            flood_hold: Duration::from_secs(20),
            pipelined: 300_000,
            settle: Duration::from_secs(60),
            stale_grace: Duration::from_secs(1),
            tolerance: 0.05,
        }
    }
}

// ---- outcomes ------------------------------------------------------------------------------

/// What an outcome means for the verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Class {
    /// A response (or connection) that went as it should.
    Done,
    /// A defined answer to what the soak did (a 503 past the cap, a body cut short by a
    /// truncation): counted, not a failure.
    Expected,
    /// Wrong bytes the kernel sends and no zero-copy server can prevent: shown in the
    /// summary beside the failures, not counted as lair's (see [`zeroed_tail`]).
    Kernel,
    /// A failure.
    Unexpected,
}

/// Outcomes of one component, by kind, updated live.
struct Tally {
    kinds: &'static [(&'static str, Class)],
    n: Vec<AtomicU64>,
    done: AtomicU64,
    bad: AtomicU64,
}

impl Tally {
    fn new(kinds: &'static [(&'static str, Class)]) -> Tally {
        Tally {
            kinds,
            n: kinds.iter().map(|_| AtomicU64::new(0)).collect(),
            done: AtomicU64::new(0),
            bad: AtomicU64::new(0),
        }
    }

    fn add(&self, kind: &str) {
        let Some(i) = self.kinds.iter().position(|k| k.0 == kind) else {
            // INVARIANT: every kind a component counts is in its table (a typo is a bug).
            panic!("soak: outcome {kind:?} is not declared");
        };
        self.n[i].fetch_add(1, Ordering::Relaxed);
        match self.kinds[i].1 {
            Class::Unexpected => self.bad.fetch_add(1, Ordering::Relaxed),
            _ => self.done.fetch_add(1, Ordering::Relaxed),
        };
    }

    fn counts(&self) -> Vec<Outcome> {
        self.kinds
            .iter()
            .zip(&self.n)
            .map(|(&(kind, class), n)| Outcome {
                kind: kind.to_string(),
                class,
                count: n.load(Ordering::Relaxed),
            })
            .collect()
    }
}

/// One kind of outcome and how often it happened.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Outcome {
    /// Its name.
    pub kind: String,
    /// What it means.
    pub class: Class,
    /// How often.
    pub count: u64,
}

const CHURN_KINDS: &[(&str, Class)] = &[
    ("ok", Class::Done),
    ("mixed_versions", Class::Done),
    ("while_growing", Class::Done),
    ("cut_by_truncation", Class::Expected),
    ("cut_past_the_new_end", Class::Expected),
    ("zeroed_at_the_new_end", Class::Kernel),
    ("late_within_grace", Class::Expected),
    ("stale", Class::Unexpected),
    ("wrong_bytes", Class::Unexpected),
    ("wrong_length", Class::Unexpected),
    ("cut_unexpected", Class::Unexpected),
    ("status", Class::Unexpected),
    ("io", Class::Unexpected),
];
const CHANGE_KINDS: &[(&str, Class)] = &[
    ("rewrite", Class::Done),
    ("truncate", Class::Done),
    ("rename", Class::Done),
];
const VANISH_KINDS: &[(&str, Class)] = &[
    ("closed", Class::Done),
    ("reset", Class::Done),
    ("half_request", Class::Done),
    ("request_and_gone", Class::Done),
    ("refused_at_cap", Class::Expected),
    ("connect", Class::Unexpected),
    ("status", Class::Unexpected),
];
const IDLE_KINDS: &[(&str, Class)] = &[
    ("answered", Class::Done),
    ("timed_out_by_server", Class::Done),
    ("refused_at_cap", Class::Expected),
    ("closed_early", Class::Unexpected),
    ("no_answer", Class::Unexpected),
    ("wrong_answer", Class::Unexpected),
    ("connect", Class::Unexpected),
];
const PIPE_KINDS: &[(&str, Class)] = &[
    ("ok", Class::Done),
    ("wrong_answer", Class::Unexpected),
    ("io", Class::Unexpected),
];

// ---- file versions -------------------------------------------------------------------------

/// Byte `i` of version `v` of a soak file: every 8 bytes a fresh hash of (version, block), so
/// a byte from another version, another offset or another file is caught.
fn pattern_byte(v: u32, i: u64) -> u8 {
    let mut x = (u64::from(v) << 40) ^ (i / 8);
    // splitmix64's finaliser.
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^= x >> 31;
    (x >> ((i % 8) * 8)) as u8
}

fn pattern(v: u32, len: u64) -> Vec<u8> {
    (0..len).map(|i| pattern_byte(v, i)).collect()
}

/// One state of a churned file: it held `version`'s bytes up to `len` from `start` (when the
/// change that made it began) until the next change finished.
#[derive(Clone, Copy, Debug)]
struct State {
    start: Instant,
    /// When the change that ended this state finished (`None`: it is current).
    ended: Option<Instant>,
    version: u32,
    len: u64,
    /// The length when its change began: an in-place rewrite that extends a truncated file
    /// passes through every length between the two while it writes.
    from_len: u64,
    /// When the change that made it finished (`None`: still running).
    settled: Option<Instant>,
}

/// A file the churn changes, and every state it has had.
struct Churned {
    path: PathBuf,
    url: String,
    full: u64,
    history: Mutex<Vec<State>>,
}

impl Churned {
    /// States that may explain a response sent at `sent` and finished at `done`: any that
    /// began before it finished and ended no more than `back` before it was sent.
    fn candidates(&self, sent: Instant, done: Instant, back: Duration) -> Vec<State> {
        let h = self.history.lock().unwrap_or_else(|e| e.into_inner());
        h.iter()
            .filter(|s| s.start <= done && s.ended.is_none_or(|e| e + back >= sent))
            .copied()
            .collect()
    }
}

/// Whether `body` is version `v` up to `cut`, and past it version `v` or zeros.
///
/// Truncating a file to `cut` zeroes what it cuts off of the folio at the new end *in place*
/// (a page, or with large folios much more: 699,051 bytes of a 1 MiB file were seen here), so
/// that the file would read as zeros there if it were extended. A zero-copy send (`sendfile`,
/// `splice`) hands the socket references to page-cache folios, not copies: a truncation that
/// comes after the server's send call returned, while those folios still wait in the socket
/// (on loopback, until the client reads them), puts those zeros into a response that is
/// otherwise whole and of the announced length. The server cannot see it happen; only a copy
/// of the bytes (the `copy` data mode of issue 14) or replacing files by rename avoids it.
fn zeroed_tail(body: &[u8], v: u32, cut: u64) -> bool {
    body.iter().enumerate().all(|(i, &b)| {
        let i = i as u64;
        b == pattern_byte(v, i) || (b == 0 && i >= cut)
    })
}

/// Whether every byte of `body` (from offset 0) is one of `versions`' at its offset.
fn from_versions(body: &[u8], versions: &[u32]) -> bool {
    body.iter()
        .enumerate()
        .all(|(i, &b)| versions.iter().any(|&v| pattern_byte(v, i as u64) == b))
}

/// Whether `body` (from offset 0) matches version `v` throughout.
fn matches(body: &[u8], v: u32) -> bool {
    from_versions(body, &[v])
}

/// Judge one response for a churned file: `cl` announced, `body` received (all of it, or
/// less if the server closed early), request sent at `sent`, last byte at `done`.
fn judge(
    f: &Churned,
    cl: u64,
    body: &[u8],
    sent: Instant,
    done: Instant,
    grace: Duration,
) -> (&'static str, Option<Duration>) {
    // Far enough back to tell a stale body (an old version served long after its change)
    // from a wrong one.
    let states = f.candidates(sent, done, grace + Duration::from_secs(60));
    let complete = body.len() as u64 == cl;
    // Every byte must be one that some candidate state held at that offset.
    let versions: Vec<u32> = {
        let mut v: Vec<u32> = states.iter().map(|s| s.version).collect();
        v.sort_unstable();
        v.dedup();
        v
    };
    let explained = |body: &[u8]| from_versions(body, &versions);
    if !complete {
        // Cut short: only a truncation during the response may do that. The bytes the file
        // kept must be right; past the shortest length it was cut to, a file being truncated
        // under a sendfile can give what it read of the pages being removed — in a response
        // the client sees is incomplete (fewer bytes than announced), so it must discard it.
        let kept = states
            .iter()
            .filter(|s| s.len < cl && s.ended.is_none_or(|e| e >= sent))
            .map(|s| s.len)
            .min();
        return match kept {
            None if explained(body) => ("cut_unexpected", None),
            None => ("wrong_bytes", None),
            Some(k) if !explained(&body[..body.len().min(k as usize)]) => ("wrong_bytes", None),
            Some(_) if explained(body) => ("cut_by_truncation", None),
            Some(_) => ("cut_past_the_new_end", None),
        };
    }
    if !explained(body) {
        let torn = states.iter().any(|s| {
            s.len < cl && s.ended.is_none_or(|e| e >= sent) && zeroed_tail(body, s.version, s.len)
        });
        return if torn {
            ("zeroed_at_the_new_end", None)
        } else {
            ("wrong_bytes", None)
        };
    }
    // A whole body, explained by the states live during the response: one of them, or a
    // mix (the file changed mid-response, and a zero-copy send carries the new bytes) with
    // the length of one of them, or of a rewrite growing the file.
    let live = |s: &State| s.ended.is_none_or(|e| e >= sent);
    let whole = |s: &State| s.len == cl && matches(body, s.version);
    let growing = |s: &State| {
        s.from_len < s.len
            && (s.from_len..=s.len).contains(&cl)
            && s.start <= done
            && s.settled.is_none_or(|e| e >= sent)
    };
    let live_versions: Vec<u32> = states
        .iter()
        .filter(|s| live(s))
        .map(|s| s.version)
        .collect();
    if from_versions(body, &live_versions) {
        if states.iter().any(|s| live(s) && whole(s)) {
            return ("ok", None);
        }
        if states.iter().any(|s| live(s) && s.len == cl) {
            return ("mixed_versions", None);
        }
        if states.iter().any(growing) {
            // Opened while a rewrite was extending the file: the length it had then.
            return ("while_growing", None);
        }
        return ("wrong_length", None);
    }
    // Bytes of states that had ended before the request was sent: how long before, for the
    // byte whose freshest explanation is the oldest.
    let ended: Vec<(u32, Duration)> = states
        .iter()
        .filter_map(|s| {
            s.ended
                .map(|e| (s.version, sent.saturating_duration_since(e)))
        })
        .collect();
    let late = body
        .iter()
        .enumerate()
        .filter(|&(i, &b)| {
            !live_versions
                .iter()
                .any(|&v| pattern_byte(v, i as u64) == b)
        })
        .filter_map(|(i, &b)| {
            ended
                .iter()
                .filter(|(v, _)| pattern_byte(*v, i as u64) == b)
                .map(|(_, l)| *l)
                .min()
        })
        .max()
        .unwrap_or_default();
    if late <= grace {
        ("late_within_grace", Some(late))
    } else {
        ("stale", Some(late))
    }
}

/// The soak's own files under `ROOT/soak/`.
struct Files {
    dir: PathBuf,
    big: Vec<(String, Expect)>,
    pipe: Vec<(String, Vec<u8>)>,
    churn: Vec<Churned>,
}

/// Sizes of the churned files: two below `--small-file-bytes` (16 KiB: the cached path), the
/// rest sent with sendfile.
const CHURN_SIZES: &[u64] = &[3_000, 12_000, 40_000, 300_000, 1 << 20];

fn write_files(root: &Path, spec: &SoakSpec) -> anyhow::Result<Files> {
    let dir = root.join("soak");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut big = Vec::new();
    for k in 0..spec.big_files.max(1) {
        let body = pattern(0x0B16_0000 + k as u32, 1 << 20);
        std::fs::write(dir.join(format!("big-{k}.bin")), &body)?;
        big.push((
            format!("/soak/big-{k}.bin"),
            Expect {
                bytes: Some(body.len() as u64),
                crc32: Some(crc32fast::hash(&body)),
            },
        ));
    }
    let mut pipe = Vec::new();
    for (k, len) in [100u64, 700, 2_000, 9_000].into_iter().enumerate() {
        let body = pattern(0x0919_0000 + k as u32, len);
        std::fs::write(dir.join(format!("pipe-{k}.txt")), &body)?;
        pipe.push((format!("/soak/pipe-{k}.txt"), body));
    }
    let mut churn = Vec::new();
    let now = Instant::now();
    for (k, &full) in CHURN_SIZES.iter().chain(CHURN_SIZES).enumerate() {
        let version = 1 + k as u32;
        let path = dir.join(format!("churn-{k}.bin"));
        std::fs::write(&path, pattern(version, full))?;
        churn.push(Churned {
            path,
            url: format!("/soak/churn-{k}.bin"),
            full,
            history: Mutex::new(vec![State {
                start: now,
                ended: None,
                version,
                len: full,
                from_len: full,
                settled: Some(now),
            }]),
        });
    }
    Ok(Files {
        dir,
        big,
        pipe,
        churn,
    })
}

/// One change to a churned file, recorded as it is made.
fn change(
    f: &Churned,
    next_version: &AtomicU64,
    rng: &mut impl rand::Rng,
) -> io::Result<&'static str> {
    use std::os::unix::fs::FileExt as _;
    let cur = {
        let h = f.history.lock().unwrap_or_else(|e| e.into_inner());
        *h.last().expect("a churned file has a state")
    };
    let start = Instant::now();
    let (kind, version, len) = match rng.random_range(0..3) {
        // A short file is always restored (by a rewrite that extends it again).
        0 if cur.len == f.full => ("truncate", cur.version, f.full / 3),
        1 => (
            "rename",
            next_version.fetch_add(1, Ordering::Relaxed) as u32,
            f.full,
        ),
        _ => (
            "rewrite",
            next_version.fetch_add(1, Ordering::Relaxed) as u32,
            f.full,
        ),
    };
    // The new state is recorded before the change starts (a response may see it at once)
    // and the old one ended when it is finished.
    {
        let mut h = f.history.lock().unwrap_or_else(|e| e.into_inner());
        h.push(State {
            start,
            ended: None,
            version,
            len,
            from_len: if kind == "rewrite" { cur.len } else { len },
            settled: None,
        });
    }
    match kind {
        "truncate" => std::fs::OpenOptions::new()
            .write(true)
            .open(&f.path)?
            .set_len(len)?,
        "rename" => {
            let tmp = f.path.with_extension("tmp");
            std::fs::write(&tmp, pattern(version, len))?;
            std::fs::rename(&tmp, &f.path)?;
        }
        _ => std::fs::OpenOptions::new()
            .write(true)
            .open(&f.path)?
            .write_all_at(&pattern(version, len), 0)?,
    }
    let done = Instant::now();
    let mut h = f.history.lock().unwrap_or_else(|e| e.into_inner());
    let n = h.len();
    if n >= 2 {
        h[n - 2].ended = Some(done);
    }
    h[n - 1].settled = Some(done);
    // Old states cannot explain anything sent a minute after they ended.
    h.retain(|s| {
        s.ended
            .is_none_or(|e| done.duration_since(e) < Duration::from_secs(120))
    });
    Ok(kind)
}

// ---- clients -------------------------------------------------------------------------------

/// When a component stops: at a time, or at Ctrl-C.
#[derive(Clone, Copy)]
struct Until<'a> {
    at: Instant,
    cancel: &'a AtomicBool,
}

impl Until<'_> {
    fn cancelled(&self) -> bool {
        self.cancel.load(Ordering::Relaxed)
    }

    fn going(&self) -> bool {
        Instant::now() < self.at && !self.cancelled()
    }
}

/// A response read by a blocking client.
struct Resp {
    status: u16,
    /// Announced length (`None`: none; the soak's requests all get one).
    length: Option<u64>,
    body: Vec<u8>,
    /// The server said it will close.
    close: bool,
}

fn request(s: &mut TcpStream, path: &str) -> io::Result<()> {
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: soak\r\n\r\n").as_bytes())
}

/// Read one response from `s`; `buf` holds bytes already received (and keeps what follows
/// the response, for pipelining). A close before the whole body returns what came.
fn read_response(s: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<Resp> {
    let mut chunk = [0u8; 64 * 1024];
    let (len, status, body_len, close) = loop {
        match parse_head(buf) {
            Head::Complete {
                len,
                status,
                body,
                close,
            } => break (len, status, body, close),
            Head::Bad => return Err(io::Error::new(io::ErrorKind::InvalidData, "bad head")),
            Head::Partial => {}
        }
        let n = s.read(&mut chunk)?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    buf.drain(..len);
    let want = body_len.unwrap_or(u64::MAX);
    while (buf.len() as u64) < want {
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            // A reset after part of the body: a cut, judged by the caller.
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => break,
            Err(e) => return Err(e),
        }
    }
    let take = (buf.len() as u64).min(want) as usize;
    let body: Vec<u8> = buf.drain(..take).collect();
    Ok(Resp {
        status,
        length: body_len,
        body,
        close,
    })
}

fn connect(addr: SocketAddr) -> io::Result<TcpStream> {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(20)))?;
    s.set_nodelay(true)?;
    Ok(s)
}

/// What the churn clients saw beyond their counts: the latest an old version was served, and
/// the first few unexpected responses described in full.
#[derive(Default)]
struct ChurnSeen {
    latest: Mutex<Duration>,
    examples: Mutex<Vec<String>>,
}

impl ChurnSeen {
    fn example(&self, text: String) {
        let mut e = self.examples.lock().unwrap_or_else(|e| e.into_inner());
        if e.len() < 20 {
            e.push(text);
        }
    }
}

/// An unexpected response in words: the file's states around it (times in ms from the
/// request), and where the body first departs from each.
fn describe(f: &Churned, kind: &str, cl: u64, body: &[u8], sent: Instant, done: Instant) -> String {
    let ms = |t: Instant| {
        if t >= sent {
            t.duration_since(sent).as_secs_f64() * 1e3
        } else {
            -(sent.duration_since(t).as_secs_f64() * 1e3)
        }
    };
    let states = f.candidates(sent, done, Duration::from_secs(60));
    let mut out = format!(
        "{kind}: {} announced {cl} bytes, {} received, answer took {:.1} ms; states:",
        f.url,
        body.len(),
        ms(done)
    );
    for st in &states {
        let first_bad = body
            .iter()
            .enumerate()
            .find(|&(i, &b)| pattern_byte(st.version, i as u64) != b)
            .map_or("all match".to_string(), |(i, _)| {
                let tail = &body[i..];
                let zeros = tail.iter().filter(|&&b| b == 0).count();
                let hex: String = tail.iter().take(12).map(|b| format!("{b:02x}")).collect();
                format!(
                    "differs from byte {i} ({hex}…; {zeros} of the {} bytes from there are 0)",
                    tail.len()
                )
            });
        out.push_str(&format!(
            " [v{} {} bytes, {:.1}..{} ms, {first_bad}]",
            st.version,
            st.len,
            ms(st.start),
            st.ended.map_or("now".into(), |e| format!("{:.1}", ms(e)))
        ));
    }
    out
}

/// Download churned files until `until`, judging every response.
fn churn_client(
    addr: SocketAddr,
    files: &[Churned],
    grace: Duration,
    until: Until<'_>,
    seed: u64,
    t: &Tally,
    seen: &ChurnSeen,
) {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut conn: Option<(TcpStream, Vec<u8>)> = None;
    while until.going() {
        let (s, buf) = match &mut conn {
            Some(c) => c,
            None => match connect(addr) {
                Ok(s) => conn.insert((s, Vec::new())),
                Err(_) => {
                    t.add("io");
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                }
            },
        };
        let f = &files[rng.random_range(0..files.len())];
        let sent = Instant::now();
        let r = request(s, &f.url).and_then(|()| read_response(s, buf));
        let done = Instant::now();
        let keep = match r {
            Ok(r) if r.status == 200 => {
                let cl = r.length.unwrap_or(0);
                let (kind, late) = judge(f, cl, &r.body, sent, done, grace);
                if let Some(l) = late {
                    let mut m = seen.latest.lock().unwrap_or_else(|e| e.into_inner());
                    *m = (*m).max(l);
                }
                if CHURN_KINDS
                    .iter()
                    .any(|k| k.0 == kind && k.1 == Class::Unexpected)
                {
                    seen.example(describe(f, kind, cl, &r.body, sent, done));
                }
                t.add(kind);
                kind == "ok" || kind == "late_within_grace" || kind == "mixed_versions"
            }
            Ok(r) => {
                seen.example(format!("status: {} answered {}", f.url, r.status));
                t.add("status");
                false
            }
            Err(e) => {
                seen.example(format!(
                    "io: {} after {:.1} ms: {e}",
                    f.url,
                    done.duration_since(sent).as_secs_f64() * 1e3
                ));
                t.add("io");
                false
            }
        };
        if !keep {
            conn = None;
        }
    }
}

/// Change a churned file every `every` until `until`.
/// `next`: the version numbers, shared by every phase's churner so that none repeats.
fn churner(
    files: &[Churned],
    every: Duration,
    until: Until<'_>,
    seed: u64,
    next: &AtomicU64,
    t: &Tally,
) {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    while until.going() {
        let f = &files[rng.random_range(0..files.len())];
        match change(f, next, &mut rng) {
            Ok(kind) => t.add(kind),
            Err(e) => tracing::warn!("soak: changing {}: {e}", f.path.display()),
        }
        std::thread::sleep(every);
    }
    // Leave every file whole for the next phase.
    for f in files {
        let short = f
            .history
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .last()
            .is_some_and(|s| s.len < f.full);
        if short {
            while let Ok("truncate") = change(f, next, &mut rng) {}
        }
    }
}

/// Start `per_s` vanishing clients a second until `until`.
fn vanisher(
    addr: SocketAddr,
    big: &[(String, Expect)],
    per_s: u32,
    until: Until<'_>,
    seed: u64,
    t: &Tally,
) {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let gap = Duration::from_secs(1) / per_s.max(1);
    while until.going() {
        let started = Instant::now();
        let mut s = match connect(addr) {
            Ok(s) => s,
            Err(_) => {
                t.add("connect");
                std::thread::sleep(gap);
                continue;
            }
        };
        let path = &big[rng.random_range(0..big.len())].0;
        let req = format!("GET {path} HTTP/1.1\r\nHost: soak\r\n\r\n");
        match rng.random_range(0..4) {
            0 => {
                let _ = s.write_all(&req.as_bytes()[..req.len() / 2]);
                t.add("half_request");
            }
            1 => {
                let _ = s.write_all(req.as_bytes());
                t.add("request_and_gone");
            }
            how => {
                let _ = s.write_all(req.as_bytes());
                let want = rng.random_range(1..400_000usize);
                let mut got = Vec::new();
                let mut chunk = [0u8; 16 * 1024];
                while got.len() < want {
                    match s.read(&mut chunk) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => got.extend_from_slice(&chunk[..n]),
                    }
                }
                if got.starts_with(b"HTTP/1.1 503") {
                    t.add("refused_at_cap");
                } else if !got.starts_with(b"HTTP/1.1 200") {
                    t.add("status");
                } else if how == 2 {
                    // SO_LINGER 0: the close sends a reset.
                    let _ = rustix::net::sockopt::set_socket_linger(&s, Some(Duration::ZERO));
                    t.add("reset");
                } else {
                    t.add("closed");
                }
            }
        }
        drop(s);
        if let Some(rest) = gap.checked_sub(started.elapsed()) {
            std::thread::sleep(rest);
        }
    }
}

/// One idle keep-alive connection: asked once, then left alone.
struct Idle {
    s: TcpStream,
    buf: Vec<u8>,
    opened: Instant,
    answered: Option<Instant>,
}

/// Hold `n` idle keep-alive connections until `until`; `reopen`: replace each the server
/// times out (the mixed phase), else leave it closed (the flood). `keepalive`: the server's
/// timeout (a close well before it is early). `held`: the most answered and open at once.
/// What an idle holder does.
struct IdleLoad<'a> {
    addr: SocketAddr,
    /// Connections.
    n: usize,
    /// What each asks for once, and the bytes it must get.
    path: &'a (String, Vec<u8>),
    /// Replace each connection the server closes.
    reopen: bool,
    /// The server's keep-alive timeout.
    keepalive: Duration,
    /// Hold them at least this long after the last one opened (the flood): opening
    /// thousands can take longer than the hold on a loaded machine, and a hold that ended
    /// before they were all open held none of them at once (the soak test's samples missed
    /// the flood once, under the full test suite).
    hold_after_open: Option<Duration>,
}

fn idle_holder(l: &IdleLoad<'_>, until: Until<'_>, t: &Tally, held: &AtomicUsize) {
    let IdleLoad {
        addr,
        n,
        path,
        reopen,
        keepalive,
        hold_after_open,
    } = *l;
    let open = |t: &Tally| -> Option<Idle> {
        let mut s = match connect(addr) {
            Ok(s) => s,
            Err(_) => {
                t.add("connect");
                return None;
            }
        };
        if request(&mut s, &path.0).is_err() || s.set_nonblocking(true).is_err() {
            t.add("connect");
            return None;
        }
        Some(Idle {
            s,
            buf: Vec::new(),
            opened: Instant::now(),
            answered: None,
        })
    };
    let mut conns: Vec<Option<Idle>> = (0..n).map(|_| open(t)).collect();
    let until = match hold_after_open {
        Some(h) => Until {
            at: until.at.max(Instant::now() + h),
            cancel: until.cancel,
        },
        None => until,
    };
    let mut chunk = [0u8; 16 * 1024];
    while until.going() {
        let now = Instant::now();
        let mut answered = 0;
        for slot in &mut conns {
            let Some(c) = slot else {
                if reopen {
                    *slot = open(t);
                }
                continue;
            };
            let gone = match c.s.read(&mut chunk) {
                Ok(0) => true,
                Ok(k) => {
                    c.buf.extend_from_slice(&chunk[..k]);
                    false
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => false,
                Err(_) => true,
            };
            if c.answered.is_none() {
                if let Head::Complete {
                    len, status, body, ..
                } = parse_head(&c.buf)
                {
                    let whole = c.buf.len() - len >= body.unwrap_or(0) as usize;
                    if status == 503 {
                        t.add("refused_at_cap");
                        *slot = None;
                        continue;
                    }
                    if whole {
                        if status == 200 && c.buf[len..] == path.1[..] {
                            t.add("answered");
                        } else {
                            t.add("wrong_answer");
                        }
                        c.answered = Some(now);
                        c.buf.clear();
                    }
                }
            }
            match (gone, c.answered) {
                (true, Some(at)) => {
                    // The server closes an idle keep-alive connection at its timeout.
                    if now.duration_since(at) + Duration::from_secs(2) >= keepalive {
                        t.add("timed_out_by_server");
                    } else {
                        t.add("closed_early");
                    }
                    *slot = None;
                }
                (true, None) => {
                    t.add("no_answer");
                    *slot = None;
                }
                (false, None) if now.duration_since(c.opened) > Duration::from_secs(30) => {
                    t.add("no_answer");
                    *slot = None;
                }
                (false, Some(_)) => answered += 1,
                (false, None) => {}
            }
        }
        held.fetch_max(answered, Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Send `total` requests (or until `until`) down one connection, `depth` at a time, each
/// answer compared byte for byte.
fn pipeliner(
    addr: SocketAddr,
    files: &[(String, Vec<u8>)],
    depth: usize,
    total: Option<u64>,
    until: Until<'_>,
    pause: Duration,
    t: &Tally,
) {
    let mut sent = 0u64;
    let mut conn: Option<(TcpStream, Vec<u8>)> = None;
    while total.map_or(until.going(), |n| sent < n && !until.cancelled()) {
        let (s, buf) = match &mut conn {
            Some(c) => c,
            None => match connect(addr) {
                Ok(s) => conn.insert((s, Vec::new())),
                Err(_) => {
                    t.add("io");
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                }
            },
        };
        let batch = total.map_or(depth as u64, |n| (n - sent).min(depth as u64)) as usize;
        let mut req = Vec::new();
        for i in 0..batch {
            let (path, _) = &files[(sent as usize + i) % files.len()];
            req.extend_from_slice(format!("GET {path} HTTP/1.1\r\nHost: soak\r\n\r\n").as_bytes());
        }
        if s.write_all(&req).is_err() {
            t.add("io");
            conn = None;
            continue;
        }
        let mut broken = false;
        for i in 0..batch {
            let want = &files[(sent as usize + i) % files.len()].1;
            match read_response(s, buf) {
                Ok(r) if r.status == 200 && r.body == *want && !r.close => t.add("ok"),
                Ok(_) => t.add("wrong_answer"),
                Err(_) => {
                    t.add("io");
                    broken = true;
                    break;
                }
            }
        }
        sent += batch as u64;
        if broken {
            conn = None;
        }
        std::thread::sleep(pause);
    }
}

// ---- sampling ------------------------------------------------------------------------------

/// One reading, every second.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Sample {
    /// Seconds since the server started.
    pub t_s: f64,
    /// The phase running.
    pub phase: String,
    /// Server RSS, KiB.
    pub rss_kib: u64,
    /// Of it, anonymous memory (what the server allocated), KiB.
    pub anon_kib: u64,
    /// Server threads.
    pub threads: u64,
    /// Server descriptors.
    pub fds: u64,
    /// Server sockets that are connections (all sockets less those it had idle at start).
    pub connections: u64,
    /// Responses and finished connections so far, all components.
    pub done: u64,
    /// Unexpected outcomes so far, all components.
    pub unexpected: u64,
    /// Unexpected outcomes so far, by component.
    pub unexpected_by: BTreeMap<String, u64>,
    /// Lines the server has written to its log so far.
    pub log_lines: u64,
}

/// Descriptors and sockets of the process tree at `pid` (nginx's connections are its
/// worker's).
fn fd_counts(pid: u32) -> (u64, u64) {
    let (mut fds, mut socks) = (0, 0);
    for p in crate::proc::tree(pid) {
        let Ok(dir) = std::fs::read_dir(format!("/proc/{p}/fd")) else {
            continue;
        };
        for e in dir.flatten() {
            fds += 1;
            if std::fs::read_link(e.path())
                .is_ok_and(|l| l.to_string_lossy().starts_with("socket:"))
            {
                socks += 1;
            }
        }
    }
    (fds, socks)
}

/// The live counters the sampler reads.
struct Live<'a> {
    components: Vec<(&'static str, &'a AtomicU64, &'a AtomicU64)>,
}

impl Live<'_> {
    fn read(&self) -> (u64, u64, BTreeMap<String, u64>) {
        let mut done = 0;
        let mut bad = 0;
        let mut by = BTreeMap::new();
        for (name, d, b) in &self.components {
            let b = b.load(Ordering::Relaxed);
            done += d.load(Ordering::Relaxed);
            bad += b;
            by.insert(name.to_string(), b);
        }
        (done, bad, by)
    }
}

// ---- the run -------------------------------------------------------------------------------

/// A reading of the idle server.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub struct IdleReading {
    /// RSS, KiB.
    pub rss_kib: u64,
    /// Anonymous RSS, KiB (reported; the pass criterion compares RSS).
    pub anon_kib: u64,
    /// Descriptors.
    pub fds: u64,
    /// Connections left (should be 0).
    pub connections: u64,
    /// How long it took to get there, seconds.
    pub settled_s: f64,
}

/// What one soak of one server found.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SoakRun {
    /// The server.
    pub server: String,
    /// Seconds from start to finish.
    pub took_s: f64,
    /// Phases: name, start and end (seconds since the server started).
    pub phases: Vec<(String, f64, f64)>,
    /// The idle reading after the warm-up.
    pub baseline: IdleReading,
    /// The idle reading at the end.
    pub last: IdleReading,
    /// Outcomes by component.
    pub outcomes: BTreeMap<String, Vec<Outcome>>,
    /// The trace and slow-reader loads' own reports (lair-load), by component and phase.
    pub loads: BTreeMap<String, serde_json::Value>,
    /// Most idle connections answered and held at once in the flood phase.
    pub flood_held: usize,
    /// The server's connection cap, from its start-up warning (`None`: it logged none).
    pub server_cap: Option<usize>,
    /// Largest delay after a change at which an old version was still served.
    pub latest_old_version_ms: f64,
    /// The first unexpected churn responses, described.
    pub examples: Vec<String>,
    /// Wrong bytes that came from the kernel, not the server ([`Class::Kernel`]).
    pub kernel: Vec<String>,
    /// The server's log lines (distinct, with counts).
    pub log: BTreeMap<String, u64>,
    /// The server's engine counters and HTTP statistics at exit.
    pub engine: Option<serde_json::Value>,
    /// Every second.
    pub samples: Vec<Sample>,
    /// Why it failed (empty: it passed).
    pub failures: Vec<String>,
}

/// What the soak needs from the experiment runner.
pub struct Setup<'a> {
    /// The experiment.
    pub x: &'a Experiment,
    /// Its `[soak]` table.
    pub spec: &'a SoakSpec,
    /// The docroot (the trace's fileset).
    pub root: &'a Path,
    /// The trace's request paths and what each answer must be.
    pub trace: (&'a [String], &'a [Expect]),
    /// Scratch directory.
    pub work: &'a Path,
    /// The `lair` binary.
    pub lair: &'a Path,
    /// CPUs of server and clients.
    pub cpus: Cpus,
    /// Ctrl-C.
    pub cancel: Arc<AtomicBool>,
}

fn phase_name(p: &Mutex<String>) -> String {
    p.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

/// The server's connection cap, from the warning lair logs when its descriptor limit
/// lowers `--max-connections` ("at most N connections at once").
fn cap_from_log(log: &str) -> Option<usize> {
    let at = log.find("at most ")? + "at most ".len();
    let rest = &log[at..];
    let end = rest.find(' ')?;
    rest[..end]
        .parse()
        .ok()
        .filter(|_| rest[end..].starts_with(" connections"))
}

/// Soak one server.
pub fn soak(s: &Setup<'_>, server: &ServerSpec) -> anyhow::Result<SoakRun> {
    let spec = s.spec;
    let files = write_files(s.root, spec)?;
    let ip = std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);
    let addr = SocketAddr::new(
        ip,
        std::net::TcpListener::bind((ip, 0))?.local_addr()?.port(),
    );
    let place = Place {
        root: s.root,
        addr,
        cpu: s.cpus.server,
        work: s.work,
        lair: s.lair,
    };
    let t0 = Instant::now();
    let mut srv = servers::start(server, &place)?;
    let pid = srv.pid;
    let keepalive = Duration::from_secs(30);
    // Its idle sockets (listeners): what "no connections" looks like.
    let (_, idle_socks) = fd_counts(pid);

    let trace = Progress {
        cancel: Arc::clone(&s.cancel),
        ..Progress::default()
    };
    let slow = Progress {
        cancel: Arc::clone(&s.cancel),
        ..Progress::default()
    };
    let churn_t = Tally::new(CHURN_KINDS);
    let change_t = Tally::new(CHANGE_KINDS);
    let vanish_t = Tally::new(VANISH_KINDS);
    let idle_t = Tally::new(IDLE_KINDS);
    let flood_t = Tally::new(IDLE_KINDS);
    let pipe_t = Tally::new(PIPE_KINDS);
    let live = Live {
        components: vec![
            ("trace", &trace.done, &trace.errors),
            ("slow", &slow.done, &slow.errors),
            ("churn", &churn_t.done, &churn_t.bad),
            ("changes", &change_t.done, &change_t.bad),
            ("vanish", &vanish_t.done, &vanish_t.bad),
            ("idle", &idle_t.done, &idle_t.bad),
            ("flood", &flood_t.done, &flood_t.bad),
            ("pipeline", &pipe_t.done, &pipe_t.bad),
        ],
    };
    let seen = ChurnSeen::default();
    let versions = AtomicU64::new(1_000);
    let phase = Mutex::new(String::from("start"));
    let finished = AtomicBool::new(false);
    let samples = Mutex::new(Vec::<Sample>::new());
    let mut phases: Vec<(String, f64, f64)> = Vec::new();
    let mut loads = BTreeMap::new();
    let flood_held = AtomicUsize::new(0);
    let idle_held = AtomicUsize::new(0);
    let log_path = s.work.join(format!("{}.log", server.name));

    let sample_now = || -> Sample {
        let p = crate::proc::sample(pid).unwrap_or_default();
        let (fds, socks) = fd_counts(pid);
        let (done, unexpected, unexpected_by) = live.read();
        let log_lines = std::fs::read(&log_path)
            .map(|b| b.iter().filter(|&&c| c == b'\n').count() as u64)
            .unwrap_or(0);
        Sample {
            t_s: t0.elapsed().as_secs_f64(),
            phase: phase_name(&phase),
            rss_kib: p.rss_kib,
            anon_kib: p.anon_kib,
            threads: p.threads,
            fds,
            connections: socks.saturating_sub(idle_socks),
            done,
            unexpected,
            unexpected_by,
            log_lines,
        }
    };
    let pace = (
        crate::run::parse_size(&Some(spec.slow_rate.clone()))?,
        crate::run::parse_size(&Some(spec.slow_buffer.clone()))?.map(|b| b as usize),
    );
    let load_cfg =
        |paths: Vec<String>, expect: Vec<Expect>, conns: usize, d: Duration, slow: bool| {
            LoadConfig {
                addr,
                host: "soak".into(),
                paths,
                expect,
                times_ms: Vec::new(),
                mode: Mode::Closed,
                connections: conns.max(1),
                threads: 1,
                stop: Stop::After(d),
                timeout: if slow {
                    Duration::from_secs(120)
                } else {
                    Duration::from_secs(10)
                },
                expect_status: Some(200),
                pin: vec![s.cpus.client],
                slow: if slow {
                    Slow {
                        bytes_per_s: pace.0,
                        recv_buffer: pace.1,
                    }
                } else {
                    Slow::default()
                },
                max_open: 10_000,
            }
        };

    // The mixed load for `d`; what lair-load reported goes into `loads` under `name`.
    let mixed = |d: Duration, name: &str, loads: &mut BTreeMap<String, serde_json::Value>| {
        let until = Until {
            at: Instant::now() + d,
            cancel: &s.cancel,
        };
        let seed = s.x.seed ^ (t0.elapsed().as_nanos() as u64);
        std::thread::scope(|sc| -> anyhow::Result<()> {
            let tr = sc.spawn(|| {
                lair_load::run_with(
                    &load_cfg(
                        s.trace.0.to_vec(),
                        s.trace.1.to_vec(),
                        s.x.clients[0],
                        d,
                        false,
                    ),
                    &trace,
                    |_| {},
                )
            });
            let sl = (spec.slow_readers > 0).then(|| {
                sc.spawn(|| {
                    let (paths, expect) = files.big.iter().cloned().unzip();
                    lair_load::run_with(
                        &load_cfg(paths, expect, spec.slow_readers, d, true),
                        &slow,
                        |_| {},
                    )
                })
            });
            for k in 0..spec.churn_clients {
                let (churn_t, seen) = (&churn_t, &seen);
                let files = &files.churn;
                sc.spawn(move || {
                    churn_client(
                        addr,
                        files,
                        spec.stale_grace,
                        until,
                        seed + k as u64,
                        churn_t,
                        seen,
                    )
                });
            }
            sc.spawn(|| {
                churner(
                    &files.churn,
                    spec.churn_every,
                    until,
                    seed ^ 0xC4,
                    &versions,
                    &change_t,
                )
            });
            sc.spawn(|| {
                vanisher(
                    addr,
                    &files.big,
                    spec.vanish_per_s,
                    until,
                    seed ^ 0x7A,
                    &vanish_t,
                )
            });
            sc.spawn(|| {
                let l = IdleLoad {
                    addr,
                    n: spec.idle,
                    path: &files.pipe[0],
                    reopen: true,
                    keepalive,
                    hold_after_open: None,
                };
                idle_holder(&l, until, &idle_t, &idle_held)
            });
            sc.spawn(|| {
                pipeliner(
                    addr,
                    &files.pipe,
                    spec.pipeline_depth,
                    None,
                    until,
                    // One batch each 10 ms in the mix (a client among others, not a
                    // benchmark); back to back in its own phase.
                    Duration::from_millis(10),
                    &pipe_t,
                )
            });
            let r = tr
                .join()
                .map_err(|_| anyhow::anyhow!("trace client panicked"))??;
            loads.insert(format!("trace/{name}"), serde_json::to_value(&r)?);
            if let Some(h) = sl {
                let r = h
                    .join()
                    .map_err(|_| anyhow::anyhow!("slow reader panicked"))??;
                loads.insert(format!("slow/{name}"), serde_json::to_value(&r)?);
            }
            Ok(())
        })
    };

    // Wait until the server holds no connection and its cache has let go, then read it.
    let settle = || -> IdleReading {
        let start = Instant::now();
        while start.elapsed() < spec.settle {
            let (_, socks) = fd_counts(pid);
            if socks <= idle_socks {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        // Idle for 10 s: past the file cache's TTL (1 s) and its watches' grace (TTL + 1 s),
        // and past lair's hand-back of idle memory (after 1 s without connections, at most
        // every 5 s).
        std::thread::sleep(Duration::from_secs(10));
        let mut r = Vec::new();
        for _ in 0..3 {
            r.push(sample_now());
            std::thread::sleep(Duration::from_millis(500));
        }
        let med = |f: fn(&Sample) -> u64| {
            let mut v: Vec<u64> = r.iter().map(f).collect();
            v.sort_unstable();
            v[v.len() / 2]
        };
        IdleReading {
            rss_kib: med(|x| x.rss_kib),
            anon_kib: med(|x| x.anon_kib),
            fds: med(|x| x.fds),
            connections: med(|x| x.connections),
            settled_s: start.elapsed().as_secs_f64(),
        }
    };

    let outcome = std::thread::scope(|sc| -> anyhow::Result<(IdleReading, IdleReading)> {
        sc.spawn(|| {
            while !finished.load(Ordering::Relaxed) {
                let x = sample_now();
                samples.lock().unwrap_or_else(|e| e.into_inner()).push(x);
                std::thread::sleep(Duration::from_secs(1));
            }
        });
        let r = (|| -> anyhow::Result<(IdleReading, IdleReading)> {
            let mut run_phase = |name: &str, f: &mut dyn FnMut() -> anyhow::Result<()>| {
                if s.cancel.load(Ordering::Relaxed) {
                    bail!("interrupted");
                }
                *phase.lock().unwrap_or_else(|e| e.into_inner()) = name.to_string();
                eprintln!("lair lab: soak {}: {name} …", server.name);
                let a = t0.elapsed().as_secs_f64();
                f()?;
                phases.push((name.to_string(), a, t0.elapsed().as_secs_f64()));
                Ok(())
            };
            let mut baseline = IdleReading::default();
            let mut last = IdleReading::default();
            let flood = |hold: Duration, held: &AtomicUsize| {
                let l = IdleLoad {
                    addr,
                    n: spec.flood,
                    path: &files.pipe[0],
                    reopen: false,
                    keepalive,
                    hold_after_open: Some(hold),
                };
                let until = Until {
                    at: Instant::now() + hold,
                    cancel: &s.cancel,
                };
                idle_holder(&l, until, &flood_t, held);
                Ok(())
            };
            let pipelined = |n: u64| {
                let d = spec.pipeline_depth;
                pipeliner(
                    addr,
                    &files.pipe,
                    d,
                    Some(n),
                    Until {
                        at: Instant::now(),
                        cancel: &s.cancel,
                    },
                    Duration::ZERO,
                    &pipe_t,
                );
                Ok(())
            };
            // The warm-up runs every phase once, briefly, so that what the server grows once
            // — helper threads, tables sized for the most descriptors — is grown before the
            // baseline; growth from one round to the next is what the soak looks for.
            let warm_held = AtomicUsize::new(0);
            run_phase("warm-up", &mut || mixed(s.x.warmup, "warm-up", &mut loads))?;
            run_phase("warm-up flood", &mut || {
                flood(spec.flood_hold.min(Duration::from_secs(3)), &warm_held)
            })?;
            run_phase("warm-up pipelined", &mut || pipelined(spec.pipelined / 10))?;
            run_phase("settle", &mut || {
                baseline = settle();
                Ok(())
            })?;
            run_phase("mixed", &mut || mixed(s.x.duration, "mixed", &mut loads))?;
            run_phase("flood", &mut || flood(spec.flood_hold, &flood_held))?;
            run_phase("pipelined", &mut || pipelined(spec.pipelined))?;
            run_phase("settle", &mut || {
                last = settle();
                Ok(())
            })?;
            Ok((baseline, last))
        })();
        finished.store(true, Ordering::Relaxed);
        r
    });
    let alive = srv.running();
    let log = srv.log();
    let engine = srv.stop();
    let _ = std::fs::remove_dir_all(&files.dir);
    let (baseline, last) = outcome?;

    let mut outcomes = BTreeMap::new();
    for (name, t) in [
        ("churn", &churn_t),
        ("changes", &change_t),
        ("vanish", &vanish_t),
        ("idle", &idle_t),
        ("flood", &flood_t),
        ("pipeline", &pipe_t),
    ] {
        outcomes.insert(name.to_string(), t.counts());
    }
    let server_cap = cap_from_log(&log);
    let mut failures = Vec::new();
    let mut kernel = Vec::new();
    if !alive {
        failures.push("the server died".to_string());
    }
    for (name, v) in &outcomes {
        for o in v
            .iter()
            .filter(|o| o.class == Class::Unexpected && o.count > 0)
        {
            failures.push(format!("{name}: {} × {}", o.count, o.kind));
        }
        for o in v.iter().filter(|o| o.class == Class::Kernel && o.count > 0) {
            kernel.push(format!("{name}: {} × {}", o.count, o.kind));
        }
    }
    for (name, r) in &loads {
        let errors = &r["errors"];
        if let Some(m) = errors.as_object() {
            for (k, v) in m.iter().filter(|(_, v)| v.as_u64().unwrap_or(0) > 0) {
                failures.push(format!("{name}: {v} × {k}"));
            }
        }
    }
    let held = flood_held.load(Ordering::Relaxed);
    let want_held = server_cap.unwrap_or(usize::MAX).min(spec.flood);
    if held < want_held {
        failures.push(format!(
            "flood: {held} connections held at once, {want_held} expected (the server's cap {})",
            server_cap.map_or("unknown".into(), |c| c.to_string())
        ));
    }
    let near = |a: u64, b: u64| (a as f64 - b as f64).abs() <= spec.tolerance * b as f64;
    // RSS, as the issue asks. Anonymous RSS (what the server allocated; the rest is its
    // binary's pages, which grow as more of its code runs) is reported beside it: it ends a
    // fixed ~200-270 KB above its baseline whatever the length of the run (60 s, 90 s, 30
    // min) or the number of file changes (18,000 or 52,000) — not growth with time or work,
    // and not yet explained (docs/experiments/soak.md).
    if !near(last.rss_kib, baseline.rss_kib) {
        failures.push(format!(
            "RSS {} KiB at the end against {} KiB at the baseline (more than {:.0} % apart)",
            last.rss_kib,
            baseline.rss_kib,
            spec.tolerance * 100.0
        ));
    }
    if !near(last.fds, baseline.fds) {
        failures.push(format!(
            "{} descriptors at the end against {} at the baseline",
            last.fds, baseline.fds
        ));
    }
    if last.connections > 0 {
        failures.push(format!(
            "{} connections still open at the end",
            last.connections
        ));
    }
    let mut lines = BTreeMap::new();
    for l in log.lines() {
        // Without its timestamp, so repeats count as one line.
        let text = l.split_once(' ').map_or(l, |(_, rest)| rest).to_string();
        *lines.entry(text).or_insert(0) += 1;
    }
    let latest = *seen.latest.lock().unwrap_or_else(|e| e.into_inner());
    let examples = seen
        .examples
        .into_inner()
        .unwrap_or_else(|e| e.into_inner());
    Ok(SoakRun {
        server: server.name.clone(),
        took_s: t0.elapsed().as_secs_f64(),
        phases,
        baseline,
        last,
        outcomes,
        loads,
        flood_held: held,
        server_cap,
        latest_old_version_ms: latest.as_secs_f64() * 1e3,
        examples,
        kernel,
        log: lines,
        engine,
        samples: samples.into_inner().unwrap_or_else(|e| e.into_inner()),
        failures,
    })
}

/// Everything a soak wrote (`soak.json`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SoakResults {
    /// The experiment.
    pub experiment: Experiment,
    /// `--quick`.
    pub quick: bool,
    /// Start, UTC.
    pub started: String,
    /// One soak per server.
    pub runs: Vec<SoakRun>,
}

/// Soak each server in turn and write `soak.json`, `samples.csv`, `summary.md` and a plot
/// per server under `dir`; fails if any soak did.
pub fn run(s: &Setup<'_>, servers: &[ServerSpec], quick: bool, dir: &Path) -> anyhow::Result<()> {
    let started = crate::results::stamp(SystemTime::now());
    let mut r = SoakResults {
        experiment: s.x.clone(),
        quick,
        started,
        runs: Vec::new(),
    };
    let mut err = None;
    for server in servers {
        match soak(s, server) {
            Ok(run) => r.runs.push(run),
            Err(e) => {
                err = Some(e.context(format!("soaking {}", server.name)));
                break;
            }
        }
    }
    write(dir, &r)?;
    if let Some(e) = err {
        return Err(e);
    }
    let failed: Vec<String> = r
        .runs
        .iter()
        .filter(|x| !x.failures.is_empty())
        .map(|x| format!("{}: {}", x.server, x.failures.join("; ")))
        .collect();
    if !failed.is_empty() {
        bail!("soak failed: {}", failed.join(" | "));
    }
    Ok(())
}

/// Write a soak's files into `dir`.
pub fn write(dir: &Path, r: &SoakResults) -> anyhow::Result<()> {
    std::fs::write(dir.join("soak.json"), serde_json::to_string_pretty(r)?)?;
    let mut csv =
        String::from("server,t_s,phase,rss_kib,fds,connections,done,unexpected,log_lines\n");
    for run in &r.runs {
        for x in &run.samples {
            csv.push_str(&format!(
                "{},{:.1},{},{},{},{},{},{},{},{}\n",
                run.server,
                x.t_s,
                x.phase,
                x.rss_kib,
                x.anon_kib,
                x.fds,
                x.connections,
                x.done,
                x.unexpected,
                x.log_lines
            ));
        }
    }
    std::fs::write(dir.join("samples.csv"), csv)?;
    let mut plots = Vec::new();
    for run in &r.runs {
        let name = format!("soak-{}.svg", run.server);
        plot(&dir.join(&name), run)?;
        plots.push(name);
    }
    std::fs::write(dir.join("summary.md"), summary(r, &plots))?;
    Ok(())
}

fn summary(r: &SoakResults, plots: &[String]) -> String {
    let mut out = format!(
        "# soak{}\n\n{}\n\nStarted {} UTC.\n\n",
        if r.quick { " (quick)" } else { "" },
        r.experiment.description,
        r.started
    );
    for (run, plot) in r.runs.iter().zip(plots) {
        out.push_str(&format!(
            "## {}: {}\n\n",
            run.server,
            if run.failures.is_empty() {
                "passed"
            } else {
                "FAILED"
            }
        ));
        for f in &run.failures {
            out.push_str(&format!("- {f}\n"));
        }
        for x in &run.examples {
            out.push_str(&format!("  - {x}\n"));
        }
        for k in &run.kernel {
            out.push_str(&format!(
                "- from the kernel, not the server: {k} (a file truncated in place while its \
                 pages waited in a socket after a zero-copy send: zeros past the new end, in a \
                 response of the announced length)\n"
            ));
        }
        out.push_str(&format!(
            "\n| phase | from (s) | to (s) |\n|---|---:|---:|\n{}",
            run.phases
                .iter()
                .map(|(n, a, b)| format!("| {n} | {a:.0} | {b:.0} |\n"))
                .collect::<String>()
        ));
        let pct = |a: u64, b: u64| (a as f64 / b.max(1) as f64 - 1.0) * 100.0;
        out.push_str(&format!(
            "\n| idle reading | anonymous RSS (KiB) | RSS (KiB) | descriptors | connections | settled in (s) |\n\
             |---|---:|---:|---:|---:|---:|\n\
             | baseline (after the warm-up) | {} | {} | {} | {} | {:.1} |\n\
             | end | {} ({:+.1} %) | {} ({:+.1} %) | {} ({:+.1} %) | {} | {:.1} |\n",
            run.baseline.anon_kib,
            run.baseline.rss_kib,
            run.baseline.fds,
            run.baseline.connections,
            run.baseline.settled_s,
            run.last.anon_kib,
            pct(run.last.anon_kib, run.baseline.anon_kib),
            run.last.rss_kib,
            pct(run.last.rss_kib, run.baseline.rss_kib),
            run.last.fds,
            pct(run.last.fds, run.baseline.fds),
            run.last.connections,
            run.last.settled_s,
        ));
        let peak = run.samples.iter().map(|x| x.rss_kib).max().unwrap_or(0);
        let peak_conns = run.samples.iter().map(|x| x.connections).max().unwrap_or(0);
        out.push_str(&format!(
            "\nPeak RSS {peak} KiB, peak connections {peak_conns}; flood: {} held at once (server cap {}); \
             an old version was served at most {:.1} ms after its change.\n",
            run.flood_held,
            run.server_cap.map_or("not logged".into(), |c| c.to_string()),
            run.latest_old_version_ms
        ));
        out.push_str("\n| component | outcome | class | count |\n|---|---|---|---:|\n");
        for (name, v) in &run.outcomes {
            for o in v
                .iter()
                .filter(|o| o.count > 0 || o.class == Class::Unexpected)
            {
                out.push_str(&format!(
                    "| {name} | {} | {:?} | {} |\n",
                    o.kind, o.class, o.count
                ));
            }
        }
        out.push_str("\n| load | requests | req/s | MB/s | p99 (µs) | errors |\n|---|---:|---:|---:|---:|---:|\n");
        for (name, l) in &run.loads {
            let errors: u64 = l["errors"]
                .as_object()
                .map_or(0, |m| m.values().filter_map(|v| v.as_u64()).sum());
            out.push_str(&format!(
                "| {name} | {} | {:.0} | {:.1} | {} | {errors} |\n",
                l["requests"],
                l["requests_per_s"].as_f64().unwrap_or(0.0),
                l["mb_per_s"].as_f64().unwrap_or(0.0),
                l["latency"]["p99_us"],
            ));
        }
        if !run.log.is_empty() {
            out.push_str("\nThe server's log:\n\n```\n");
            for (line, n) in &run.log {
                out.push_str(&format!("{n:>6} × {line}\n"));
            }
            out.push_str("```\n");
        }
        out.push_str(&format!("\n![{}]({plot})\n\n", run.server));
    }
    out
}

/// One panel of the soak plot: title, unit, lines and their names.
type Panel<'a> = (&'a str, &'a str, Vec<Vec<(f64, f64)>>, Vec<&'a str>);

fn plot(path: &Path, run: &SoakRun) -> anyhow::Result<()> {
    use plotters::prelude::*;
    let e = |e: &dyn std::fmt::Debug| anyhow::anyhow!("plot: {e:?}");
    let root = SVGBackend::new(path, (900, 900)).into_drawing_area();
    root.fill(&WHITE).map_err(|x| e(&x))?;
    let panels = root.split_evenly((4, 1));
    let xmax = run.samples.last().map_or(1.0, |x| x.t_s).max(1.0);
    // Requests and connections finished per second, from the cumulative count.
    let rate: Vec<(f64, f64)> = run
        .samples
        .windows(2)
        .map(|w| {
            let dt = (w[1].t_s - w[0].t_s).max(1e-3);
            (w[1].t_s, (w[1].done.saturating_sub(w[0].done)) as f64 / dt)
        })
        .collect();
    let series: [Panel<'_>; 4] = [
        (
            "server RSS",
            "MiB",
            vec![
                run.samples
                    .iter()
                    .map(|x| (x.t_s, x.rss_kib as f64 / 1024.0))
                    .collect(),
                run.samples
                    .iter()
                    .map(|x| (x.t_s, x.anon_kib as f64 / 1024.0))
                    .collect(),
            ],
            vec!["RSS", "anonymous"],
        ),
        (
            "server descriptors and connections",
            "count",
            vec![
                run.samples.iter().map(|x| (x.t_s, x.fds as f64)).collect(),
                run.samples
                    .iter()
                    .map(|x| (x.t_s, x.connections as f64))
                    .collect(),
            ],
            vec!["descriptors", "connections"],
        ),
        (
            "responses and connections finished",
            "per second",
            vec![rate],
            vec!["all components"],
        ),
        (
            "unexpected outcomes (cumulative)",
            "count",
            vec![run
                .samples
                .iter()
                .map(|x| (x.t_s, x.unexpected as f64))
                .collect()],
            vec!["unexpected"],
        ),
    ];
    for (area, (title, unit, lines, names)) in panels.iter().zip(series) {
        let ymax = lines
            .iter()
            .flatten()
            .map(|p| p.1)
            .fold(0.0f64, f64::max)
            .max(1.0)
            * 1.1;
        let mut chart = ChartBuilder::on(area)
            .caption(format!("{}: {title}", run.server), ("sans-serif", 16))
            .margin(8)
            .x_label_area_size(28)
            .y_label_area_size(60)
            .build_cartesian_2d(0.0..xmax, 0.0..ymax)
            .map_err(|x| e(&x))?;
        chart
            .configure_mesh()
            .x_desc("seconds")
            .y_desc(unit)
            .draw()
            .map_err(|x| e(&x))?;
        // The phases as shaded bands, alternately.
        for (i, (_, a, b)) in run.phases.iter().enumerate() {
            if i % 2 == 1 {
                chart
                    .draw_series(std::iter::once(Rectangle::new(
                        [(*a, 0.0), (*b, ymax)],
                        BLACK.mix(0.06).filled(),
                    )))
                    .map_err(|x| e(&x))?;
            }
        }
        for (i, (pts, name)) in lines.into_iter().zip(names).enumerate() {
            let color = [BLUE, RED, GREEN][i % 3];
            chart
                .draw_series(LineSeries::new(pts, color.stroke_width(2)))
                .map_err(|x| e(&x))?
                .label(name)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                });
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .position(SeriesLabelPosition::UpperRight)
            .draw()
            .map_err(|x| e(&x))?;
    }
    root.present().map_err(|x| e(&x))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(states: Vec<State>) -> Churned {
        Churned {
            path: PathBuf::from("/nowhere"),
            url: "/x".into(),
            full: 100,
            history: Mutex::new(states),
        }
    }

    #[test]
    fn responses_are_judged_against_the_states_the_file_had() {
        let grace = Duration::from_millis(500);
        let t = Instant::now();
        let s = |ms: u64| t + Duration::from_millis(ms);
        // Version 1 (100 bytes) until a rewrite to version 2 finished at 1,000 ms; then
        // truncated to 33 bytes from 5,000 ms.
        let f = file(vec![
            State {
                start: t,
                ended: Some(s(1_000)),
                version: 1,
                len: 100,
                from_len: 100,
                settled: Some(t),
            },
            State {
                start: s(900),
                ended: Some(s(5_001)),
                version: 2,
                len: 100,
                from_len: 100,
                settled: Some(s(1_000)),
            },
            State {
                start: s(5_000),
                ended: Some(s(8_000)),
                version: 2,
                len: 33,
                from_len: 100,
                settled: Some(s(5_001)),
            },
            // Then rewritten in place to version 3, growing from 33 bytes back to 100.
            State {
                start: s(7_990),
                ended: None,
                version: 3,
                len: 100,
                from_len: 33,
                settled: Some(s(8_000)),
            },
        ]);
        let v1 = pattern(1, 100);
        let v2 = pattern(2, 100);
        let judge = |cl, body: &[u8], a, b| judge(&f, cl, body, s(a), s(b), grace).0;
        assert_eq!(judge(100, &v1, 100, 200), "ok");
        assert_eq!(judge(100, &v2, 2_000, 2_100), "ok");
        // Sent 300 ms after version 1 was gone: late, within the grace; 3 s: stale.
        assert_eq!(judge(100, &v1, 1_300, 1_400), "late_within_grace");
        assert_eq!(judge(100, &v1, 4_000, 4_100), "stale");
        // Half of each while the rewrite ran.
        let mut mix = v2[..50].to_vec();
        mix.extend_from_slice(&v1[50..]);
        assert_eq!(judge(100, &mix, 950, 990), "mixed_versions");
        // A byte nobody wrote.
        let mut bad = v2.clone();
        bad[77] ^= 1;
        assert_eq!(judge(100, &bad, 2_000, 2_100), "wrong_bytes");
        // Cut short while the truncation ran; cut short with no truncation about.
        assert_eq!(judge(100, &v2[..33], 4_990, 5_010), "cut_by_truncation");
        assert_eq!(judge(100, &v2[..40], 2_000, 2_100), "cut_unexpected");
        // The length of no state.
        assert_eq!(judge(60, &v2[..60], 2_000, 2_100), "wrong_length");
        assert_eq!(judge(33, &v2[..33], 6_000, 6_100), "ok");
        // Whole, of the announced length, zeros past the new end: the kernel's doing.
        let mut zeroed = v2.clone();
        zeroed[33..].fill(0);
        assert_eq!(judge(100, &zeroed, 4_990, 5_010), "zeroed_at_the_new_end");
        // Cut short, and past the new end not what the file held.
        assert_eq!(
            judge(100, &zeroed[..60], 4_990, 5_010),
            "cut_past_the_new_end"
        );
        assert_eq!(judge(100, &zeroed[..20], 4_990, 5_010), "cut_by_truncation");
        // Opened while the rewrite grew it: 64 bytes of version 3.
        let v3 = pattern(3, 100);
        assert_eq!(judge(64, &v3[..64], 7_995, 7_999), "while_growing");
        assert_eq!(judge(64, &v3[..64], 9_000, 9_100), "wrong_length");
    }

    #[test]
    fn a_change_is_recorded_around_what_it_did() {
        let dir = tempfile::tempdir().unwrap();
        let spec = SoakSpec {
            big_files: 1,
            ..SoakSpec::default()
        };
        let files = write_files(dir.path(), &spec).unwrap();
        let next = AtomicU64::new(1_000);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        for _ in 0..50 {
            for f in &files.churn {
                change(f, &next, &mut rng).unwrap();
                let h = f.history.lock().unwrap();
                let cur = *h.last().unwrap();
                let on_disk = std::fs::read(&f.path).unwrap();
                assert_eq!(on_disk.len() as u64, cur.len);
                assert!(matches(&on_disk, cur.version), "{}", f.url);
                assert!(h[..h.len() - 1].iter().all(|s| s.ended.is_some()));
            }
        }
        assert_eq!(
            cap_from_log("WARN descriptor limit 20000: at most 9968 connections at once"),
            Some(9968)
        );
        assert_eq!(cap_from_log("at most 5 files"), None);
    }
}
