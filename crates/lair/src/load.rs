//! `lair load`: flags → a [`lair_load::LoadConfig`], a progress bar, Ctrl-C, the report.
//!
//! Modes: closed loop (default), `--rate` (open loop), `--sweep` (open loop, rising rates,
//! stops at the first that fails), `--trace` (closed loop in trace order, or at the trace's
//! timestamps with `--speed`).

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use lair_conf::{parse_duration, parse_nonzero_size};
use lair_load::{Expect, LoadConfig, Manifest, Mode, Progress, Slow, Stop, Sustained};

use crate::serve::ConfigError;

/// Flags of `lair load`.
#[derive(Debug, Args)]
pub struct LoadArgs {
    /// Target, `http://HOST:PORT/PATH` (HTTP only).
    url: String,

    /// Extra request paths; connections walk the URL's path and these round robin.
    #[arg(long = "path", conflicts_with = "trace")]
    paths: Vec<String>,

    /// Replay this trace (`t_ms<TAB>path<TAB>bytes` per line, or one path per line) in its
    /// order, as fast as the connections go (or at its timestamps with --speed); 200 answers
    /// must have the trace's sizes. The URL gives only the server. Default stop: one pass.
    #[arg(long)]
    trace: Option<std::path::PathBuf>,

    /// With --trace: open loop, request i sent at its timestamp divided by this factor, each
    /// on a new connection (1 = real time, 60 = an hour per minute).
    #[arg(long, requires = "trace", conflicts_with_all = ["rate", "sweep"])]
    speed: Option<f64>,

    /// Open loop: this many requests per second, each on a new connection, whatever the
    /// server does (httperf-like).
    #[arg(long, conflicts_with = "sweep")]
    rate: Option<f64>,

    /// Open loop at rising rates `START:END:STEP` (req/s), each for --duration, stopping at
    /// the first rate not sustained (replies < 95 % of arrivals or errors > 1 %); reports the
    /// peak rate before failure.
    #[arg(long, value_parser = parse_sweep)]
    sweep: Option<Rates>,

    /// Open loop: most connections open at once; arrivals beyond are counted as
    /// `client_limit` errors.
    #[arg(long, default_value_t = 10_000)]
    max_open: usize,

    /// Slow clients: each connection reads at most this many bytes per second (`20k`, `1m`).
    #[arg(long, value_parser = parse_nonzero_size)]
    recv_rate: Option<u64>,

    /// Slow clients: `SO_RCVBUF` of each connection (`4k`), set before connecting.
    #[arg(long, value_parser = parse_nonzero_size)]
    recv_buffer: Option<u64>,

    /// Check 200 answers against this manifest (`path<TAB>bytes<TAB>crc32hex`, as `lair lab`
    /// writes it): body length and CRC-32.
    #[arg(long)]
    manifest: Option<std::path::PathBuf>,

    /// Keep-alive connections in all.
    #[arg(long, short = 'c', default_value_t = 10)]
    connections: usize,

    /// Event-loop threads (connections are spread evenly).
    #[arg(long, short = 't', default_value_t = 1)]
    threads: usize,

    /// Run this long, e.g. `10s` (default 10s unless --requests is given).
    #[arg(long, short = 'd', value_parser = parse_duration, conflicts_with = "requests")]
    duration: Option<Duration>,

    /// Send this many requests in all, then stop.
    #[arg(long, short = 'n')]
    requests: Option<u64>,

    /// A request not answered within this is a timeout.
    #[arg(long, value_parser = parse_duration, default_value = "5s")]
    timeout: Duration,

    /// The status every response must have (default: any 2xx or 3xx).
    #[arg(long)]
    expect_status: Option<u16>,

    /// Pin thread i to the i-th CPU of this comma-separated list, e.g. `0` or `0,1`.
    #[arg(long, value_delimiter = ',')]
    pin: Vec<usize>,

    /// Print the report as JSON instead of text.
    #[arg(long)]
    json: bool,

    /// No progress bar (it is drawn only on a terminal anyway).
    #[arg(long, short = 'q')]
    quiet: bool,
}

/// The rates of a sweep (a newtype: clap would take a bare `Vec` for a repeated flag).
#[derive(Clone, Debug, PartialEq)]
struct Rates(Vec<f64>);

/// `START:END:STEP` → the rates.
fn parse_sweep(s: &str) -> Result<Rates, String> {
    let bad = || format!("{s:?} is not START:END:STEP with 0 < START <= END and STEP > 0");
    let v: Vec<f64> = s
        .split(':')
        .map(|x| x.trim().parse::<f64>().map_err(|_| bad()))
        .collect::<Result<_, _>>()?;
    let [start, end, step] = v[..] else {
        return Err(bad());
    };
    if !(start > 0.0 && end >= start && step > 0.0) || (end - start) / step > 1000.0 {
        return Err(bad());
    }
    let mut rates = Vec::new();
    let mut r = start;
    while r <= end + step * 1e-9 {
        rates.push(r);
        r += step;
    }
    Ok(Rates(rates))
}

/// `http://host:port/path` → (address, Host value, path).
fn parse_url(url: &str) -> Result<(SocketAddr, String, String), ConfigError> {
    let bad = || ConfigError(format!("{url:?} is not an http://HOST[:PORT][/PATH] URL"));
    let rest = url.strip_prefix("http://").ok_or_else(bad)?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.is_empty() {
        return Err(bad());
    }
    let with_port = if authority.ends_with(']') || !authority.contains(':') {
        format!("{authority}:80")
    } else {
        authority.to_string()
    };
    let addr = with_port
        .to_socket_addrs()
        .map_err(|e| ConfigError(format!("{authority}: {e}")))?
        .next()
        .ok_or_else(bad)?;
    Ok((addr, authority.to_string(), path.to_string()))
}

/// Run `lair load`.
pub fn run(a: LoadArgs) -> anyhow::Result<()> {
    let (addr, host, path) = parse_url(&a.url)?;
    let mut expect = Vec::new();
    let mut times_ms = Vec::new();
    let (paths, one_pass) = match &a.trace {
        Some(file) => {
            let text = std::fs::read_to_string(file)
                .map_err(|e| ConfigError(format!("trace {}: {e}", file.display())))?;
            let t = lair_load::trace::parse(&text);
            if t.malformed > 0 {
                eprintln!(
                    "lair load: {}: skipped {} malformed lines",
                    file.display(),
                    t.malformed
                );
            }
            if t.requests.is_empty() {
                return Err(ConfigError(format!("trace {}: no requests", file.display())).into());
            }
            let n = t.requests.len() as u64;
            let mut p = Vec::with_capacity(t.requests.len());
            for r in t.requests {
                expect.push(Expect {
                    bytes: r.bytes,
                    crc32: None,
                });
                times_ms.push(r.t_ms);
                p.push(r.path);
            }
            (p, Some(n))
        }
        None => {
            let mut p = vec![path];
            p.extend(a.paths.iter().cloned());
            (p, None)
        }
    };
    if let Some(file) = &a.manifest {
        let text = std::fs::read_to_string(file)
            .map_err(|e| ConfigError(format!("manifest {}: {e}", file.display())))?;
        let m = Manifest::parse(&text);
        if m.malformed > 0 {
            eprintln!(
                "lair load: {}: skipped {} malformed lines",
                file.display(),
                m.malformed
            );
        }
        expect.resize(paths.len(), Expect::default());
        for (e, p) in expect.iter_mut().zip(&paths) {
            // The path without its query is what names the file.
            let file = p.split('?').next().unwrap_or(p);
            if let Some(m) = m.files.get(file) {
                *e = *m;
            }
        }
    }
    let mode = match (a.rate, &a.sweep, a.speed) {
        (Some(r), _, _) => Mode::Rate(r),
        (_, Some(rates), _) => Mode::Rate(rates.0[0]),
        (_, _, Some(speed)) => Mode::Timed { speed },
        _ => Mode::Closed,
    };
    let open = mode != Mode::Closed;
    let stop = match (a.requests, a.duration, one_pass) {
        (Some(n), _, _) => Stop::Requests(n),
        (None, Some(d), _) => Stop::After(d),
        (None, None, Some(n)) => Stop::Requests(n),
        (None, None, None) => Stop::After(Duration::from_secs(10)),
    };
    if a.sweep.is_some() && !matches!(stop, Stop::After(_)) {
        return Err(ConfigError("--sweep runs each rate for --duration, not -n".into()).into());
    }
    let cfg = LoadConfig {
        addr,
        host,
        paths,
        expect,
        times_ms,
        mode,
        connections: a.connections,
        threads: a.threads,
        stop,
        timeout: a.timeout,
        expect_status: a.expect_status,
        pin: a.pin,
        slow: Slow {
            bytes_per_s: a.recv_rate,
            recv_buffer: a
                .recv_buffer
                .map(|b| usize::try_from(b).unwrap_or(usize::MAX)),
        },
        max_open: a.max_open,
    };
    let progress = Progress::default();
    // Ctrl-C ends the run early; what completed is still reported.
    signal_hook::flag::register(signal_hook::consts::SIGINT, Arc::clone(&progress.cancel))
        .context("installing the Ctrl-C handler")?;
    let config_err = |e: lair_load::Error| match e {
        lair_load::Error::Config(m) => anyhow::Error::new(ConfigError(m)),
        e => anyhow::Error::new(e),
    };

    if let Some(Rates(rates)) = &a.sweep {
        let each_s = match stop {
            Stop::After(d) => d.as_secs_f64(),
            Stop::Requests(_) => 0.0,
        };
        eprintln!(
            "lair load: sweeping {} rates, {each_s:.0} s each, up to {:.0} req/s",
            rates.len(),
            rates[rates.len() - 1]
        );
        let s = lair_load::sweep(&cfg, rates, Sustained::default(), &progress, |step| {
            if !a.json {
                let r = &step.report;
                println!(
                    "rate {:>9.1}/s  replies {:>9.1}/s  errors {:>6}  p99 {:>8} µs  max open {:>6}  {}",
                    step.rate,
                    r.requests_per_s,
                    r.errors.total(),
                    r.latency.p99_us,
                    r.max_open,
                    if step.sustained { "ok" } else { "FAILED" }
                );
            }
        })
        .map_err(config_err)?;
        if a.json {
            println!("{}", serde_json::to_string_pretty(&s).context("report")?);
        } else {
            match s.peak_rate {
                Some(p) => println!(
                    "peak sustained rate: {p:.1} req/s (replies {:.1}/s){}",
                    s.peak_reply_rate.unwrap_or(0.0),
                    if s.steps.iter().all(|x| x.sustained) {
                        " — every rate held: raise END to find the failure point"
                    } else {
                        ""
                    }
                ),
                None => println!("peak sustained rate: none (the first rate already failed)"),
            }
        }
        return Ok(());
    }

    let bar = progress_bar(&cfg, a.quiet);
    let report = lair_load::run_with(&cfg, &progress, |p| {
        if let Some(b) = &bar {
            b.set_position(match cfg.stop {
                Stop::After(_) => bar_elapsed_ms(b),
                Stop::Requests(_) => p.done.load(Ordering::Relaxed),
            });
            b.set_message(format!(
                "{} responses, {} errors",
                p.done.load(Ordering::Relaxed),
                p.errors.load(Ordering::Relaxed)
            ));
        }
    })
    .map_err(config_err)?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).context("report")?
        );
    } else {
        print!("{}", report.human(&a.url));
    }
    if report.requests == 0 {
        anyhow::bail!(
            "no response completed ({} refused, {} other connect errors): is a server listening \
             on {addr}?",
            report.errors.refused,
            report.errors.connect
        );
    }
    if open && report.max_lag_us > 10_000 {
        eprintln!(
            "lair load: the generator fell up to {} ms behind its schedule: use more --threads \
             or a lower rate (latencies still count from the scheduled time)",
            report.max_lag_us / 1000
        );
    }
    Ok(())
}

/// A progress bar on stderr for runs longer than two seconds (none when not a terminal).
fn progress_bar(cfg: &LoadConfig, quiet: bool) -> Option<indicatif::ProgressBar> {
    use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
    if quiet {
        return None;
    }
    let (len, template) = match cfg.stop {
        Stop::After(d) if d >= Duration::from_secs(2) => (
            d.as_millis() as u64,
            "{spinner} [{elapsed_precise}] {wide_bar} ETA {eta} {msg}",
        ),
        Stop::Requests(n) if n >= 100_000 || cfg.mode != Mode::Closed => (
            n,
            "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} ETA {eta} {msg}",
        ),
        _ => return None,
    };
    let b = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template(template) {
        b.set_style(style);
    }
    Some(b)
}

fn bar_elapsed_ms(b: &indicatif::ProgressBar) -> u64 {
    u64::try_from(b.elapsed().as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let (a, h, p) = parse_url("http://127.0.0.1:8080/x/y?z").unwrap();
        assert_eq!(
            (a.port(), h.as_str(), p.as_str()),
            (8080, "127.0.0.1:8080", "/x/y?z")
        );
        let (a, _, p) = parse_url("http://[::1]:81").unwrap();
        assert_eq!((a.port(), p.as_str()), (81, "/"));
        assert_eq!(parse_url("http://127.0.0.1/").unwrap().0.port(), 80);
        assert!(parse_url("https://x/").is_err());
        assert!(parse_url("http:///").is_err());
    }

    #[test]
    fn sweeps_and_sizes() {
        assert_eq!(
            parse_sweep("100:300:100").unwrap().0,
            vec![100.0, 200.0, 300.0]
        );
        assert_eq!(parse_sweep("0.5:1:0.25").unwrap().0, vec![0.5, 0.75, 1.0]);
        for bad in [
            "",
            "1:2",
            "0:10:1",
            "5:1:1",
            "1:10:0",
            "1:1000000:1",
            "a:b:c",
        ] {
            assert!(parse_sweep(bad).is_err(), "{bad}");
        }
    }
}
