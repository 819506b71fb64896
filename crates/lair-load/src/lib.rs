//! lair-load: a load generator whose clients run on the lair-io engine.
//!
//! Why our own: the lab needs clients it controls (closed and open loop, trace replay, slow
//! readers, validation of every response) and that cost as little CPU as the servers they
//! measure. Three ways to drive a server ([`Mode`]):
//!
//! - **closed loop** (wrk-like): N keep-alive connections spread over T threads, each sending
//!   its next request as soon as the last response is read, for a duration or a total number
//!   of requests (ab's `-n`);
//! - **open loop** (httperf-like): requests arrive at a fixed rate whatever the server does,
//!   each on a new connection with its own timeout; replies, timeouts, resets and refusals are
//!   counted, and [`sweep`] raises the rate step by step to find the peak before failure
//!   (seed 002's method);
//! - **timed replay**: a trace's requests arrive at their timestamps divided by a speed-up,
//!   each on a new connection (the closed-loop modes replay a trace in its order, as fast as
//!   the connections go).
//!
//! Every response is checked — status line, framing (`Content-Length`, or close-delimited),
//! and, when the trace or a [`manifest`] knows them, the body's length and CRC-32 — and
//! failures are counted by kind, never ignored. Slow clients ([`Slow`]) read at a capped rate
//! through a small receive buffer, so the server's send path sees a real slow reader.
//!
//! Latency in the open-loop modes is measured from the *scheduled* arrival, not from when the
//! generator got round to it, so a late generator cannot hide a slow server (coordinated
//! omission); the report's `max_lag_us` says how late the generator itself ever was.
//!
//! Each thread is one event loop over its own engine instance: requests are written with
//! `Op::Send` from a per-connection buffer, responses read with `Op::Recv` (waiting for
//! readiness first), so the hot path allocates nothing. Chunked responses count as framing
//! errors (static servers do not send them for files).

#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;

mod client;
pub mod framing;
pub mod manifest;
pub mod trace;

pub use manifest::{Expect, Manifest};

/// When a run ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// After this long. Closed loop: responses still in flight then are not counted. Open
    /// loop: no arrival after this; those in flight get their timeout to finish.
    After(Duration),
    /// After this many requests have been sent and answered (or failed).
    Requests(u64),
}

/// How requests are generated.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Mode {
    /// `LoadConfig::connections` keep-alive connections, each sending its next request when
    /// the last is answered.
    Closed,
    /// Open loop: this many requests per second, evenly spaced, each on a new connection.
    Rate(f64),
    /// Open loop: request *i* arrives at `times_ms[i] / speed`, each on a new connection.
    Timed {
        /// Speed-up over the trace's clock (1.0: real time; 60.0: an hour in a minute).
        speed: f64,
    },
}

/// A slow client: how each connection reads.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Slow {
    /// Read at most this many bytes per second per connection.
    pub bytes_per_s: Option<u64>,
    /// `SO_RCVBUF` of each connection, set before connecting (bytes; the kernel doubles it
    /// and enforces a minimum).
    pub recv_buffer: Option<usize>,
}

/// A run.
#[derive(Clone, Debug)]
pub struct LoadConfig {
    /// Server address.
    pub addr: SocketAddr,
    /// `Host` header value.
    pub host: String,
    /// Request paths. Closed loop and rate: taken in order, round robin. Timed: request *i*
    /// is `paths[i]`.
    pub paths: Vec<String>,
    /// What a 200 answer to `paths[i]` must be, if known (from a trace or a manifest); empty
    /// or shorter than `paths` means unknown.
    pub expect: Vec<Expect>,
    /// Arrival times (ms after the first request) for [`Mode::Timed`], one per path.
    pub times_ms: Vec<u64>,
    /// How requests are generated.
    pub mode: Mode,
    /// Closed loop: connections in all. Open loop: ignored.
    pub connections: usize,
    /// Event-loop threads (closed loop: connections are spread evenly; open loop: arrivals).
    pub threads: usize,
    /// When to stop.
    pub stop: Stop,
    /// A request not answered within this is a timeout (closed loop: the connection is
    /// reopened; open loop: it is closed).
    pub timeout: Duration,
    /// The status every response must have; `None`: any 2xx or 3xx.
    pub expect_status: Option<u16>,
    /// Pin thread *i* to `pin[i % pin.len()]` (empty: no pinning).
    pub pin: Vec<usize>,
    /// Slow-client behaviour (default: read as fast as possible).
    pub slow: Slow,
    /// Open loop: at most this many connections open at once per run; an arrival beyond it
    /// is not sent and counted as `errors.client_limit` (the generator's fd budget, not the
    /// server's fault, but shown).
    pub max_open: usize,
}

impl LoadConfig {
    /// A closed-loop run of `connections` connections on one thread for `stop`, any 2xx/3xx.
    pub fn closed(addr: SocketAddr, paths: Vec<String>, connections: usize, stop: Stop) -> Self {
        LoadConfig {
            addr,
            host: addr.to_string(),
            paths,
            expect: Vec::new(),
            times_ms: Vec::new(),
            mode: Mode::Closed,
            connections,
            threads: 1,
            stop,
            timeout: Duration::from_secs(5),
            expect_status: None,
            pin: Vec::new(),
            slow: Slow::default(),
            max_open: 10_000,
        }
    }
}

/// Errors of the load generator itself (not of the server, which are counted in the report).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The configuration cannot run.
    #[error("load configuration: {0}")]
    Config(String),
    /// The engine failed.
    #[error(transparent)]
    Engine(#[from] lair_io::Error),
    /// A client thread panicked or could not start.
    #[error("client thread: {0}")]
    Thread(String),
}

/// Failures, by kind.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Errors {
    /// Connections refused (`ECONNREFUSED`: nothing listening, or the backlog overflowed
    /// with `tcp_abort_on_overflow`).
    pub refused: u64,
    /// Connections that could not be opened for another reason.
    pub connect: u64,
    /// Connections reset or closed in the middle of a response, or send/receive errors.
    pub reset: u64,
    /// Requests not answered within the timeout (including connects that never finished).
    pub timeout: u64,
    /// Responses with an unexpected status.
    pub status: u64,
    /// Responses that were not valid HTTP/1.1 or not framed as announced.
    pub framing: u64,
    /// 200 answers whose body length differs from the size the trace or manifest gives.
    pub size: u64,
    /// 200 answers of the right length whose CRC-32 differs from the manifest's.
    pub content: u64,
    /// Open loop: arrivals not sent because `max_open` connections were already open.
    pub client_limit: u64,
}

impl Errors {
    /// All failures.
    pub fn total(&self) -> u64 {
        self.refused
            + self.connect
            + self.reset
            + self.timeout
            + self.status
            + self.framing
            + self.size
            + self.content
            + self.client_limit
    }

    fn merge(&mut self, o: &Errors) {
        self.refused += o.refused;
        self.connect += o.connect;
        self.reset += o.reset;
        self.timeout += o.timeout;
        self.status += o.status;
        self.framing += o.framing;
        self.size += o.size;
        self.content += o.content;
        self.client_limit += o.client_limit;
    }
}

/// Latency percentiles of completed responses, microseconds.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Latency {
    /// Median.
    pub p50_us: u64,
    /// 90th percentile.
    pub p90_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// 99.9th percentile.
    pub p999_us: u64,
    /// Slowest.
    pub max_us: u64,
    /// Mean.
    pub mean_us: f64,
}

/// What a run measured.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// `closed`, `rate` or `timed`.
    pub mode: &'static str,
    /// Responses completed (whatever their status).
    pub requests: u64,
    /// Bytes received (heads and bodies) in completed responses.
    pub bytes: u64,
    /// Wall time of the run, seconds (timed closed-loop and open-loop runs: the duration
    /// asked for).
    pub elapsed_s: f64,
    /// `requests / elapsed_s`.
    pub requests_per_s: f64,
    /// `bytes / elapsed_s / 1e6`.
    pub mb_per_s: f64,
    /// Open loop: requests that arrived (were due), sent or not.
    pub offered: u64,
    /// Open loop: `offered / elapsed_s`.
    pub offered_per_s: f64,
    /// Open loop: most connections open at once (seed 002 plots it along the rate).
    pub max_open: u64,
    /// Open loop: how late, at worst, the generator sent a request after its scheduled time.
    pub max_lag_us: u64,
    /// Latency of completed responses (send of the request, or open loop: its scheduled
    /// arrival, to the last byte).
    pub latency: Latency,
    /// Failures by kind.
    pub errors: Errors,
    /// Completed responses by status code.
    pub status: BTreeMap<u16, u64>,
    /// Connections in all (closed loop).
    pub connections: usize,
    /// Threads.
    pub threads: usize,
}

/// What one thread measured (merged into a [`Report`]).
pub(crate) struct Tally {
    pub requests: u64,
    pub bytes: u64,
    pub offered: u64,
    pub max_open: u64,
    pub max_lag_us: u64,
    pub errors: Errors,
    pub status: BTreeMap<u16, u64>,
    pub hist: Histogram<u64>,
    /// When the thread's last connection finished.
    pub ended: Option<Instant>,
}

impl Tally {
    pub(crate) fn new() -> Tally {
        Tally {
            requests: 0,
            bytes: 0,
            offered: 0,
            max_open: 0,
            max_lag_us: 0,
            errors: Errors::default(),
            status: BTreeMap::new(),
            // 1 µs to 100 s at 3 significant digits; a longer latency is clamped to the max.
            // INVARIANT: these bounds are valid (low >= 1, high >= 2 * low, 3 <= 5 digits).
            hist: Histogram::new_with_bounds(1, 100_000_000, 3).expect("valid histogram bounds"),
            ended: None,
        }
    }
}

/// Where a run stands, for a progress display: shared by the client threads, read by
/// whoever watches (see [`run_with`]).
#[derive(Debug, Default)]
pub struct Progress {
    /// Responses completed so far (updated by each thread every few milliseconds).
    pub done: AtomicU64,
    /// Failures so far.
    pub errors: AtomicU64,
    /// Set to end the run early (Ctrl-C); what completed is reported. Shared so a signal
    /// handler can hold it.
    pub cancel: Arc<AtomicBool>,
}

/// Run and report.
pub fn run(cfg: &LoadConfig) -> Result<Report, Error> {
    run_with(cfg, &Progress::default(), |_| {})
}

/// Run, calling `watch` about five times a second with the shared [`Progress`] until the
/// run ends, and report.
pub fn run_with(
    cfg: &LoadConfig,
    progress: &Progress,
    mut watch: impl FnMut(&Progress),
) -> Result<Report, Error> {
    validate(cfg)?;
    let issued = AtomicU64::new(0);
    let cursor = AtomicU64::new(0);
    let started = Instant::now();
    let shared = client::RunState {
        issued: &issued,
        cursor: &cursor,
        progress,
        started,
    };
    let tallies = std::thread::scope(|s| -> Result<Vec<Tally>, Error> {
        let mut handles = Vec::new();
        for t in 0..cfg.threads {
            let cpu = (!cfg.pin.is_empty()).then(|| cfg.pin[t % cfg.pin.len()]);
            let shared = &shared;
            let h = std::thread::Builder::new()
                .name(format!("lair-load-{t}"))
                .spawn_scoped(s, move || client::run_thread(cfg, t, cpu, shared))
                .map_err(|e| Error::Thread(e.to_string()))?;
            handles.push(h);
        }
        let mut last_watch = Instant::now();
        while !handles.iter().all(|h| h.is_finished()) {
            if last_watch.elapsed() >= Duration::from_millis(200) {
                watch(progress);
                last_watch = Instant::now();
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        watch(progress);
        handles
            .into_iter()
            .map(|h| h.join().map_err(|_| Error::Thread("panicked".into()))?)
            .collect()
    })?;
    let mut total = Tally::new();
    // A counted run lasts until its last thread finished (not until this thread noticed).
    let ended = tallies.iter().filter_map(|t| t.ended).max();
    for tally in tallies {
        total.requests += tally.requests;
        total.bytes += tally.bytes;
        total.offered += tally.offered;
        total.max_open += tally.max_open;
        total.max_lag_us = total.max_lag_us.max(tally.max_lag_us);
        total.errors.merge(&tally.errors);
        for (k, v) in tally.status {
            *total.status.entry(k).or_default() += v;
        }
        let _ = total.hist.add(&tally.hist);
    }
    // A timed run counts what completed within its duration; a counted run (or one cut
    // short) takes as long as it took.
    let elapsed = match cfg.stop {
        Stop::After(d) if !progress.cancel.load(Ordering::Relaxed) => d.as_secs_f64(),
        _ => ended
            .map_or_else(|| started.elapsed(), |e| e.duration_since(started))
            .as_secs_f64(),
    }
    .max(1e-9);
    let h = &total.hist;
    let latency = if h.is_empty() {
        Latency::default()
    } else {
        Latency {
            p50_us: h.value_at_quantile(0.50),
            p90_us: h.value_at_quantile(0.90),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            max_us: h.max(),
            mean_us: h.mean(),
        }
    };
    Ok(Report {
        mode: match cfg.mode {
            Mode::Closed => "closed",
            Mode::Rate(_) => "rate",
            Mode::Timed { .. } => "timed",
        },
        requests: total.requests,
        bytes: total.bytes,
        elapsed_s: elapsed,
        requests_per_s: total.requests as f64 / elapsed,
        mb_per_s: total.bytes as f64 / elapsed / 1e6,
        offered: total.offered,
        offered_per_s: total.offered as f64 / elapsed,
        max_open: total.max_open,
        max_lag_us: total.max_lag_us,
        latency,
        errors: total.errors,
        status: total.status,
        connections: cfg.connections,
        threads: cfg.threads,
    })
}

fn validate(cfg: &LoadConfig) -> Result<(), Error> {
    let bad = |m: String| Err(Error::Config(m));
    if cfg.threads == 0 {
        return bad("threads must be at least 1".into());
    }
    if cfg.paths.is_empty() {
        return bad("no request path".into());
    }
    match cfg.mode {
        Mode::Closed => {
            if cfg.connections == 0 {
                return bad("connections must be at least 1".into());
            }
            if cfg.threads > cfg.connections {
                return bad(format!(
                    "{} threads for {} connections: use at most one thread per connection",
                    cfg.threads, cfg.connections
                ));
            }
        }
        Mode::Rate(r) if !(r.is_finite() && r > 0.0) => {
            return bad(format!(
                "rate {r} is not a positive number of requests per second"
            ))
        }
        Mode::Rate(_) => {}
        Mode::Timed { speed } => {
            if !(speed.is_finite() && speed > 0.0) {
                return bad(format!("speed {speed} is not a positive factor"));
            }
            if cfg.times_ms.len() != cfg.paths.len() {
                return bad("a timed replay needs one arrival time per path".into());
            }
        }
    }
    if cfg.mode != Mode::Closed && cfg.max_open == 0 {
        return bad("max_open must be at least 1".into());
    }
    if cfg.slow.bytes_per_s == Some(0) {
        return bad("a receive rate of 0 bytes/s never finishes".into());
    }
    Ok(())
}

/// When a rate counts as sustained in a [`sweep`]: replies keep up with arrivals and few
/// fail. Seed 002 reads the peak off httperf's reply rate where it stops tracking the offered
/// rate; these are the thresholds that make that a number.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sustained {
    /// Replies at least this share of arrivals.
    pub min_reply_share: f64,
    /// Failures at most this share of arrivals.
    pub max_error_share: f64,
}

impl Default for Sustained {
    fn default() -> Self {
        Sustained {
            min_reply_share: 0.95,
            max_error_share: 0.01,
        }
    }
}

impl Sustained {
    /// Whether this open-loop report sustained its offered rate.
    pub fn holds(&self, r: &Report) -> bool {
        let offered = r.offered.max(1) as f64;
        r.requests as f64 >= self.min_reply_share * offered
            && r.errors.total() as f64 <= self.max_error_share * offered
    }
}

/// One step of a [`sweep`].
#[derive(Clone, Debug, Serialize)]
pub struct SweepStep {
    /// Offered rate, requests per second.
    pub rate: f64,
    /// Whether the rate was sustained.
    pub sustained: bool,
    /// What the step measured.
    pub report: Report,
}

/// Result of a [`sweep`].
#[derive(Clone, Debug, Serialize)]
pub struct SweepReport {
    /// The steps run, in order.
    pub steps: Vec<SweepStep>,
    /// Highest rate sustained before the first failure (`None`: not even the first).
    pub peak_rate: Option<f64>,
    /// Reply rate measured at the peak.
    pub peak_reply_rate: Option<f64>,
}

/// Run the open loop at each of `rates` (ascending) for `cfg.stop`, stopping after the
/// first rate that is not sustained (the server entered its failure zone) or when
/// `progress.cancel` is set; `each` sees every step as it finishes.
pub fn sweep(
    cfg: &LoadConfig,
    rates: &[f64],
    rule: Sustained,
    progress: &Progress,
    mut each: impl FnMut(&SweepStep),
) -> Result<SweepReport, Error> {
    let mut steps = Vec::new();
    let mut peak = None;
    for &rate in rates {
        let step_cfg = LoadConfig {
            mode: Mode::Rate(rate),
            ..cfg.clone()
        };
        let report = run_with(&step_cfg, progress, |_| {})?;
        let sustained = rule.holds(&report);
        let step = SweepStep {
            rate,
            sustained,
            report,
        };
        each(&step);
        if sustained {
            peak = Some((rate, step.report.requests_per_s));
        }
        steps.push(step);
        if !sustained || progress.cancel.load(Ordering::Relaxed) {
            break;
        }
        // Let the server drain TIME_WAIT and backlog before the next step.
        std::thread::sleep(Duration::from_millis(500));
    }
    Ok(SweepReport {
        steps,
        peak_rate: peak.map(|p| p.0),
        peak_reply_rate: peak.map(|p| p.1),
    })
}

impl Report {
    /// A summary for humans.
    pub fn human(&self, target: &str) -> String {
        let l = &self.latency;
        let e = &self.errors;
        let status = self
            .status
            .iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect::<Vec<_>>()
            .join(", ");
        let shape = match self.mode {
            "closed" => format!(
                "{} connections on {} threads",
                self.connections, self.threads
            ),
            _ => format!(
                "open loop ({}) on {} threads, offered {} ({:.1}/s), at most {} open, \
                 generator late by up to {} µs",
                self.mode,
                self.threads,
                self.offered,
                self.offered_per_s,
                self.max_open,
                self.max_lag_us
            ),
        };
        format!(
            "lair load: {target}, {shape}, {:.2} s\n  \
             requests   {} ({:.1}/s), {:.2} MB/s\n  \
             latency    p50 {} µs, p90 {} µs, p99 {} µs, p99.9 {} µs, max {} µs (mean {:.1} µs)\n  \
             errors     {} (refused {}, connect {}, reset {}, timeout {}, status {}, framing {}, \
             size {}, content {}, client limit {})\n  \
             status     {}\n",
            self.elapsed_s,
            self.requests,
            self.requests_per_s,
            self.mb_per_s,
            l.p50_us,
            l.p90_us,
            l.p99_us,
            l.p999_us,
            l.max_us,
            l.mean_us,
            e.total(),
            e.refused,
            e.connect,
            e.reset,
            e.timeout,
            e.status,
            e.framing,
            e.size,
            e.content,
            e.client_limit,
            if status.is_empty() {
                "-".into()
            } else {
                status
            }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(offered: u64, replies: u64, errors: u64) -> Report {
        Report {
            mode: "rate",
            requests: replies,
            bytes: 0,
            elapsed_s: 1.0,
            requests_per_s: replies as f64,
            mb_per_s: 0.0,
            offered,
            offered_per_s: offered as f64,
            max_open: 0,
            max_lag_us: 0,
            latency: Latency::default(),
            errors: Errors {
                timeout: errors,
                ..Errors::default()
            },
            status: BTreeMap::new(),
            connections: 0,
            threads: 1,
        }
    }

    #[test]
    fn sustained_needs_replies_and_few_errors() {
        let rule = Sustained::default();
        assert!(rule.holds(&report(1000, 1000, 0)));
        assert!(rule.holds(&report(1000, 950, 10)));
        assert!(!rule.holds(&report(1000, 940, 0)), "too few replies");
        assert!(!rule.holds(&report(1000, 1000, 11)), "too many errors");
        assert!(!rule.holds(&report(0, 0, 1)));
    }
}
