//! lair-load: a load generator whose clients run on the lair-io engine.
//!
//! Why our own: the lab needs clients it controls (closed and open loop, trace replay, slow
//! readers, validation of every response) and that cost as little CPU as the servers they
//! measure. This first part is the **closed loop** (wrk-like): N keep-alive connections spread
//! over T threads, each sending its next request as soon as the last response is read, for a
//! duration or a total number of requests (ab's `-n`). Every response is checked — status
//! line, framing (`Content-Length`, or close-delimited) — and failures are counted by kind,
//! never ignored.
//!
//! Each thread is one event loop over its own engine instance: requests are written with
//! `Op::Send` from a per-connection buffer, responses read with `Op::Recv` (waiting for
//! readiness first), so the hot path allocates nothing.
//!
//! Requests come from a list of paths or a trace ([`trace`]); connections take the next one
//! from a shared cursor, so a trace is replayed in its order (closed loop: as fast as the
//! clients go, not at the trace's timestamps), and a 200 answer's body length is checked
//! against the size the trace gives.
//!
//! Not yet here (issue 4): open loop, timestamp-scaled replay, slow clients, content checks
//! against a manifest, a progress bar; chunked responses count as framing errors.

#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;

mod client;
pub mod trace;

/// When a run ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// After this long (responses still in flight then are not counted).
    After(Duration),
    /// After this many requests have been sent and answered (or failed).
    Requests(u64),
}

/// A closed-loop run.
#[derive(Clone, Debug)]
pub struct LoadConfig {
    /// Server address.
    pub addr: SocketAddr,
    /// `Host` header value.
    pub host: String,
    /// Request paths, taken in order (round robin) by whichever connection is ready next.
    pub paths: Vec<String>,
    /// Body size a 200 answer to `paths[i]` must have, if known (from a trace); empty or
    /// shorter than `paths` means unknown.
    pub sizes: Vec<Option<u64>>,
    /// Connections in all.
    pub connections: usize,
    /// Event-loop threads (connections are spread evenly).
    pub threads: usize,
    /// When to stop.
    pub stop: Stop,
    /// A request not answered within this is a timeout (the connection is reopened).
    pub timeout: Duration,
    /// The status every response must have; `None`: any 2xx or 3xx.
    pub expect_status: Option<u16>,
    /// Pin thread *i* to `pin[i % pin.len()]` (empty: no pinning).
    pub pin: Vec<usize>,
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
    /// Connections that could not be opened.
    pub connect: u64,
    /// Connections reset or closed in the middle of a response, or send/receive errors.
    pub reset: u64,
    /// Requests not answered within the timeout.
    pub timeout: u64,
    /// Responses with an unexpected status.
    pub status: u64,
    /// Responses that were not valid HTTP/1.1 or not framed as announced.
    pub framing: u64,
    /// 200 answers whose body length differs from the size the trace gives.
    pub size: u64,
}

impl Errors {
    /// All failures.
    pub fn total(&self) -> u64 {
        self.connect + self.reset + self.timeout + self.status + self.framing + self.size
    }

    fn merge(&mut self, o: &Errors) {
        self.connect += o.connect;
        self.reset += o.reset;
        self.timeout += o.timeout;
        self.status += o.status;
        self.framing += o.framing;
        self.size += o.size;
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
    /// Responses completed (whatever their status).
    pub requests: u64,
    /// Bytes received (heads and bodies) in completed responses.
    pub bytes: u64,
    /// Wall time of the run, seconds.
    pub elapsed_s: f64,
    /// `requests / elapsed_s`.
    pub requests_per_s: f64,
    /// `bytes / elapsed_s / 1e6`.
    pub mb_per_s: f64,
    /// Latency of completed responses (send of the request to the last byte).
    pub latency: Latency,
    /// Failures by kind.
    pub errors: Errors,
    /// Completed responses by status code.
    pub status: BTreeMap<u16, u64>,
    /// Connections in all.
    pub connections: usize,
    /// Threads.
    pub threads: usize,
}

/// What one thread measured (merged into a [`Report`]).
pub(crate) struct Tally {
    pub requests: u64,
    pub bytes: u64,
    pub errors: Errors,
    pub status: BTreeMap<u16, u64>,
    pub hist: Histogram<u64>,
}

impl Tally {
    pub(crate) fn new() -> Tally {
        Tally {
            requests: 0,
            bytes: 0,
            errors: Errors::default(),
            status: BTreeMap::new(),
            // 1 µs to 100 s at 3 significant digits; a longer latency is clamped to the max.
            // INVARIANT: these bounds are valid (low >= 1, high >= 2 * low, 3 <= 5 digits).
            hist: Histogram::new_with_bounds(1, 100_000_000, 3).expect("valid histogram bounds"),
        }
    }
}

/// Run the closed loop and report.
pub fn run(cfg: &LoadConfig) -> Result<Report, Error> {
    if cfg.connections == 0 || cfg.threads == 0 {
        return Err(Error::Config(
            "connections and threads must be at least 1".into(),
        ));
    }
    if cfg.paths.is_empty() {
        return Err(Error::Config("no request path".into()));
    }
    if cfg.threads > cfg.connections {
        return Err(Error::Config(format!(
            "{} threads for {} connections: use at most one thread per connection",
            cfg.threads, cfg.connections
        )));
    }
    let issued = Arc::new(AtomicU64::new(0));
    let cursor = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut handles = Vec::new();
    for t in 0..cfg.threads {
        let first = cfg.connections * t / cfg.threads;
        let count = cfg.connections * (t + 1) / cfg.threads - first;
        let cfg_t = cfg.clone();
        let issued = Arc::clone(&issued);
        let cursor = Arc::clone(&cursor);
        let cpu = (!cfg.pin.is_empty()).then(|| cfg.pin[t % cfg.pin.len()]);
        let h = std::thread::Builder::new()
            .name(format!("lair-load-{t}"))
            .spawn(move || client::run_thread(&cfg_t, count, cpu, &issued, &cursor, started))
            .map_err(|e| Error::Thread(e.to_string()))?;
        handles.push(h);
    }
    let mut total = Tally::new();
    for h in handles {
        let tally = h.join().map_err(|_| Error::Thread("panicked".into()))??;
        total.requests += tally.requests;
        total.bytes += tally.bytes;
        total.errors.merge(&tally.errors);
        for (k, v) in tally.status {
            *total.status.entry(k).or_default() += v;
        }
        let _ = total.hist.add(&tally.hist);
    }
    // A timed run counts what completed within its duration; a counted run takes as long as
    // it takes.
    let elapsed = match cfg.stop {
        Stop::After(d) => d.as_secs_f64(),
        Stop::Requests(_) => started.elapsed().as_secs_f64(),
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
        requests: total.requests,
        bytes: total.bytes,
        elapsed_s: elapsed,
        requests_per_s: total.requests as f64 / elapsed,
        mb_per_s: total.bytes as f64 / elapsed / 1e6,
        latency,
        errors: total.errors,
        status: total.status,
        connections: cfg.connections,
        threads: cfg.threads,
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
        format!(
            "lair load: {target}, {} connections on {} threads, {:.2} s\n  \
             requests   {} ({:.1}/s), {:.2} MB/s\n  \
             latency    p50 {} µs, p90 {} µs, p99 {} µs, p99.9 {} µs, max {} µs (mean {:.1} µs)\n  \
             errors     {} (connect {}, reset {}, timeout {}, status {}, framing {}, size {})\n  \
             status     {}\n",
            self.connections,
            self.threads,
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
            e.connect,
            e.reset,
            e.timeout,
            e.status,
            e.framing,
            e.size,
            if status.is_empty() {
                "-".into()
            } else {
                status
            }
        )
    }
}
