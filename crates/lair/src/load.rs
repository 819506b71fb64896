//! `lair load`: the closed-loop load generator (more modes come with the lab).

use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use lair_load::{LoadConfig, Stop};

use crate::serve::{parse_duration, ConfigError};

/// Flags of `lair load`.
#[derive(Debug, Args)]
pub struct LoadArgs {
    /// Target, `http://HOST:PORT/PATH` (HTTP only).
    url: String,

    /// Extra request paths; connections walk the URL's path and these round robin.
    #[arg(long = "path", conflicts_with = "trace")]
    paths: Vec<String>,

    /// Replay this trace (`t_ms<TAB>path<TAB>bytes` per line, or one path per line) in its
    /// order, as fast as the connections go; 200 answers must have the trace's sizes. The URL
    /// gives only the server. Default stop: one pass over the trace.
    #[arg(long)]
    trace: Option<std::path::PathBuf>,

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
    let (paths, sizes, one_pass) = match &a.trace {
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
            let (p, s) = t.requests.into_iter().map(|r| (r.path, r.bytes)).unzip();
            (p, s, Some(n))
        }
        None => {
            let mut p = vec![path];
            p.extend(a.paths.iter().cloned());
            (p, Vec::new(), None)
        }
    };
    let stop = match (a.requests, a.duration, one_pass) {
        (Some(n), _, _) => Stop::Requests(n),
        (None, Some(d), _) => Stop::After(d),
        (None, None, Some(n)) => Stop::Requests(n),
        (None, None, None) => Stop::After(Duration::from_secs(10)),
    };
    let cfg = LoadConfig {
        addr,
        host,
        paths,
        sizes,
        connections: a.connections,
        threads: a.threads,
        stop,
        timeout: a.timeout,
        expect_status: a.expect_status,
        pin: a.pin,
    };
    let report = lair_load::run(&cfg).map_err(|e| match e {
        lair_load::Error::Config(m) => anyhow::Error::new(ConfigError(m)),
        e => anyhow::Error::new(e),
    })?;
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
            "no response completed ({} connect errors): is a server listening on {addr}?",
            report.errors.connect
        );
    }
    Ok(())
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
}
