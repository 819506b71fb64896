//! `lair serve`: flags, the TOML config file, signals, and the report at exit.

use std::fs;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use lair_http::{AccessLog, Server, ServerConfig};
use lair_io::{BackendKind, OpSet};
use serde::Deserialize;

/// A configuration mistake (exit code 2).
#[derive(Debug)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

/// Flags of `lair serve`. Every flag can also be set in the `--config` file; flags win.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Directory to serve (default: the config file's `root`, else the current directory).
    root: Option<PathBuf>,

    /// TOML file with the same settings as the flags (see README, "Options"); flags win.
    #[arg(long, short = 'c')]
    config: Option<PathBuf>,

    /// Address to listen on, IPv4 or IPv6 (`[::1]:8080`); repeat for several. Port 0 picks a
    /// free port. Default 127.0.0.1:8080.
    #[arg(long, short = 'l')]
    listen: Vec<SocketAddr>,

    /// Event-loop threads, each with its own SO_REUSEPORT listener (default: CPUs available).
    #[arg(long, short = 'w')]
    workers: Option<usize>,

    /// I/O backend: `lazy` (try without blocking, helpers only for calls that would block),
    /// `sync` (block on the disk inside the loop; the baseline), `eager` (every call to a
    /// helper thread), `hybrid` (sockets on the loop, every disk call to a helper). Default lazy.
    #[arg(long, short = 'b')]
    backend: Option<BackendKind>,

    /// Pin worker i to the i-th CPU this process may use.
    #[arg(long)]
    pin: bool,

    /// Upper bound of helper threads per worker. Default 32.
    #[arg(long)]
    helpers: Option<usize>,

    /// Which operations go through the backend: `all`, `network` (all but open/stat/read/write:
    /// seed 001's "networkonly"), `disk`, `none`, or names (`open,read,sendfile`); the others
    /// run directly on the loop, as under `sync`. Default all.
    #[arg(long)]
    laio_ops: Option<OpSet>,

    /// Most open connections over all workers; beyond it new ones get 503 and accepting
    /// pauses. Default 10000.
    #[arg(long)]
    max_connections: Option<usize>,

    /// Longest request line in bytes (414 beyond). Default 8192.
    #[arg(long)]
    max_request_line: Option<usize>,

    /// Largest request head in bytes (431 beyond). Default 32768.
    #[arg(long)]
    max_header_bytes: Option<usize>,

    /// Most header fields (431 beyond, at most 256). Default 100.
    #[arg(long)]
    max_header_fields: Option<usize>,

    /// Largest request body discarded on GET/HEAD (413 beyond). Default 65536.
    #[arg(long)]
    max_discard_body: Option<u64>,

    /// Time to receive a whole request head, e.g. `10s`, `500ms`. Default 10s.
    #[arg(long, value_parser = parse_duration)]
    header_timeout: Option<Duration>,

    /// Idle time allowed between keep-alive requests. Default 30s.
    #[arg(long, value_parser = parse_duration)]
    keepalive_timeout: Option<Duration>,

    /// Time a response may make no progress before the connection is dropped. Default 30s.
    #[arg(long, value_parser = parse_duration)]
    send_timeout: Option<Duration>,

    /// How long to drain input after an error response before closing. Default 2s.
    #[arg(long, value_parser = parse_duration)]
    linger_timeout: Option<Duration>,

    /// How long SIGINT/SIGTERM waits for in-flight responses. Default 10s.
    #[arg(long, value_parser = parse_duration)]
    shutdown_timeout: Option<Duration>,

    /// Serve files and directories whose names start with `.` (hidden, 404, by default;
    /// `.well-known` is always served).
    #[arg(long)]
    dotfiles: bool,

    /// Bodies up to this many bytes are read and sent with the head in one write; larger ones
    /// go with sendfile. Default 16384.
    #[arg(long)]
    small_file_bytes: Option<usize>,

    /// Access log (Combined Log Format): a file path, `-` for standard output, or `off`.
    /// Default off.
    #[arg(long)]
    access_log: Option<String>,

    /// Most bytes one sendfile call sends before the connection waits its turn again (fairness
    /// between large downloads). Default 524288.
    #[arg(long)]
    sendfile_chunk: Option<usize>,

    /// How long an open file (descriptor, metadata, validators) is reused before its path is
    /// looked up again, e.g. `1s`; `0` disables the cache. Default 1s.
    #[arg(long, value_parser = parse_duration)]
    file_cache_ttl: Option<Duration>,

    /// Most files each worker keeps open in its cache. Default 1024.
    #[arg(long)]
    file_cache_entries: Option<usize>,

    /// Write the engine counters and HTTP statistics as JSON to this file at exit.
    #[arg(long)]
    stats_json: Option<PathBuf>,
}

/// The config file: the same settings as the flags.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    root: Option<PathBuf>,
    #[serde(default)]
    listen: Vec<SocketAddr>,
    workers: Option<usize>,
    backend: Option<BackendKind>,
    pin: Option<bool>,
    helpers: Option<usize>,
    laio_ops: Option<OpSet>,
    max_connections: Option<usize>,
    max_request_line: Option<usize>,
    max_header_bytes: Option<usize>,
    max_header_fields: Option<usize>,
    max_discard_body: Option<u64>,
    header_timeout: Option<String>,
    keepalive_timeout: Option<String>,
    send_timeout: Option<String>,
    linger_timeout: Option<String>,
    shutdown_timeout: Option<String>,
    dotfiles: Option<bool>,
    small_file_bytes: Option<usize>,
    access_log: Option<String>,
    file_cache_ttl: Option<String>,
    file_cache_entries: Option<usize>,
    sendfile_chunk: Option<usize>,
    stats_json: Option<PathBuf>,
}

/// `10s`, `500ms`, `2m` (one parser for flags, config files and experiment files).
pub use lair_lab::experiment::parse_duration;

fn file_duration(v: &Option<String>, key: &str) -> Result<Option<Duration>, ConfigError> {
    v.as_deref()
        .map(|s| parse_duration(s).map_err(|e| ConfigError(format!("config {key}: {e}"))))
        .transpose()
}

fn access_log(v: &str) -> AccessLog {
    match v {
        "off" | "" => AccessLog::Off,
        "-" => AccessLog::Stdout,
        p => AccessLog::File(PathBuf::from(p)),
    }
}

/// Merge flags over the file over the defaults.
fn build_config(
    a: &ServeArgs,
    f: &FileConfig,
) -> Result<(ServerConfig, Option<PathBuf>), ConfigError> {
    let root = a
        .root
        .clone()
        .or_else(|| f.root.clone())
        .unwrap_or_else(|| PathBuf::from("."));
    let mut c = ServerConfig::new(root);
    if !a.listen.is_empty() {
        c.listen = a.listen.clone();
    } else if !f.listen.is_empty() {
        c.listen = f.listen.clone();
    }
    macro_rules! pick {
        ($field:expr, $flag:expr, $file:expr) => {
            if let Some(v) = $flag.or($file) {
                $field = v;
            }
        };
    }
    pick!(c.workers, a.workers, f.workers);
    pick!(c.backend, a.backend, f.backend);
    pick!(c.helpers, a.helpers, f.helpers);
    pick!(c.laio_ops, a.laio_ops, f.laio_ops);
    pick!(c.max_connections, a.max_connections, f.max_connections);
    pick!(
        c.limits.request_line_bytes,
        a.max_request_line,
        f.max_request_line
    );
    pick!(
        c.limits.header_bytes,
        a.max_header_bytes,
        f.max_header_bytes
    );
    pick!(
        c.limits.header_fields,
        a.max_header_fields,
        f.max_header_fields
    );
    pick!(
        c.limits.discard_body_bytes,
        a.max_discard_body,
        f.max_discard_body
    );
    pick!(c.small_file_bytes, a.small_file_bytes, f.small_file_bytes);
    pick!(c.sendfile_chunk_bytes, a.sendfile_chunk, f.sendfile_chunk);
    pick!(
        c.file_cache_entries,
        a.file_cache_entries,
        f.file_cache_entries
    );
    macro_rules! pick_duration {
        ($field:expr, $flag:expr, $key:ident) => {
            pick!($field, $flag, file_duration(&f.$key, stringify!($key))?)
        };
    }
    pick_duration!(c.timeouts.header, a.header_timeout, header_timeout);
    pick_duration!(
        c.timeouts.keep_alive,
        a.keepalive_timeout,
        keepalive_timeout
    );
    pick_duration!(c.timeouts.send, a.send_timeout, send_timeout);
    pick_duration!(c.timeouts.linger, a.linger_timeout, linger_timeout);
    pick_duration!(c.shutdown_timeout, a.shutdown_timeout, shutdown_timeout);
    pick_duration!(c.file_cache_ttl, a.file_cache_ttl, file_cache_ttl);
    c.pin = a.pin || f.pin.unwrap_or(false);
    c.dotfiles = a.dotfiles || f.dotfiles.unwrap_or(false);
    if let Some(l) = a.access_log.as_deref().or(f.access_log.as_deref()) {
        c.access_log = access_log(l);
    }
    if c.workers == 0 {
        return Err(ConfigError("--workers must be at least 1".into()));
    }
    if c.limits.header_fields == 0 || c.limits.header_fields > lair_http::request::MAX_FIELDS {
        return Err(ConfigError(format!(
            "--max-header-fields must be 1..={}",
            lair_http::request::MAX_FIELDS
        )));
    }
    if c.max_connections == 0 {
        return Err(ConfigError("--max-connections must be at least 1".into()));
    }
    let stats = a.stats_json.clone().or_else(|| f.stats_json.clone());
    Ok((c, stats))
}

/// Run `lair serve` until SIGINT/SIGTERM.
pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    let file = match &args.config {
        Some(p) => {
            let text = fs::read_to_string(p)
                .map_err(|e| ConfigError(format!("config {}: {e}", p.display())))?;
            toml::from_str::<FileConfig>(&text)
                .map_err(|e| ConfigError(format!("config {}: {e}", p.display())))?
        }
        None => FileConfig::default(),
    };
    let (cfg, stats_json) = build_config(&args, &file)?;
    match lair_io::setup::raise_nofile_limit() {
        Ok(n) => tracing::debug!("descriptor limit {n}"),
        Err(e) => tracing::warn!("cannot raise the descriptor limit: {e}"),
    }
    let (workers, backend, root) = (cfg.workers, cfg.backend, cfg.root.clone());
    let laio_ops = cfg.laio_ops;
    let server = Server::bind(cfg).context("cannot start")?;
    let running = server.start()?;
    for a in running.local_addrs() {
        // A plain line on stderr (whatever the log level): scripts and tests wait for it.
        eprintln!("lair: listening on http://{a}");
    }
    tracing::info!(
        "serving {} with {workers} workers, backend {backend}, operations through it: {laio_ops}",
        root.display()
    );

    let stopper = running.stopper();
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
    ])
    .context("installing signal handlers")?;
    let handle = signals.handle();
    std::thread::Builder::new()
        .name("lair-signals".into())
        .spawn(move || {
            let mut first = true;
            for sig in signals.forever() {
                if first {
                    tracing::info!("signal {sig}: finishing in-flight responses (again to force)");
                    stopper.stop();
                    first = false;
                } else {
                    eprintln!("lair: second signal, exiting now");
                    std::process::exit(130);
                }
            }
        })
        .context("starting the signal thread")?;

    let report = running.wait();
    handle.close();
    let report = report?;
    eprint!("{}", report.engine.table());
    let h = &report.http;
    eprintln!(
        "http: {} connections, {} requests, 2xx {} 3xx {} 4xx {} 5xx {}, {} body bytes, {} timeouts, {} overload 503s",
        h.connections,
        h.requests,
        h.status_2xx,
        h.status_3xx,
        h.status_4xx,
        h.status_5xx,
        h.body_bytes,
        h.timeouts,
        h.overload_503
    );
    if let Some(p) = stats_json {
        let json = serde_json::to_string_pretty(&report)?;
        fs::write(&p, json).with_context(|| format!("writing {}", p.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("5h").is_err());
        assert!(parse_duration("-1s").is_err());
    }

    #[test]
    fn flags_win_over_the_file() {
        use clap::Parser;
        #[derive(Parser)]
        struct T {
            #[command(flatten)]
            a: ServeArgs,
        }
        let t = T::parse_from(["t", "--workers", "3", "--header-timeout", "1s"]);
        let f: FileConfig = toml::from_str(
            "root = 'site'\nworkers = 1\nbackend = 'sync'\nheader_timeout = '5s'\nlisten = ['[::1]:0']",
        )
        .unwrap();
        let (c, _) = build_config(&t.a, &f).unwrap();
        assert_eq!(c.workers, 3);
        assert_eq!(c.backend, BackendKind::Sync);
        assert_eq!(c.timeouts.header, Duration::from_secs(1));
        assert_eq!(c.root, PathBuf::from("site"));
        assert_eq!(c.listen, vec!["[::1]:0".parse().unwrap()]);
        assert!(
            toml::from_str::<FileConfig>("wokers = 1").is_err(),
            "typos are errors"
        );
    }
}
