//! `lair serve`: flags, the TOML config file, signals, and the report at exit.

use std::fs;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Arg, ArgAction, ArgMatches, Args, Command, FromArgMatches};
use lair_http::{Server, ServerConfig};

/// A configuration mistake (exit code 2).
#[derive(Debug)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

/// The flags of `lair serve`: every [`ServerConfig`] setting (declared once, in lair-http's
/// `config.rs`) plus `--config`, `--check` and `--print-config`.
#[derive(Debug, Clone)]
pub struct ServeArgs {
    matches: ArgMatches,
}

impl FromArgMatches for ServeArgs {
    fn from_arg_matches(m: &ArgMatches) -> Result<Self, clap::Error> {
        Ok(ServeArgs { matches: m.clone() })
    }
    fn update_from_arg_matches(&mut self, m: &ArgMatches) -> Result<(), clap::Error> {
        self.matches = m.clone();
        Ok(())
    }
}

impl Args for ServeArgs {
    fn augment_args(cmd: Command) -> Command {
        // The short forms lair has always had.
        let short = |id: &str| match id {
            "listen" => Some('l'),
            "workers" => Some('w'),
            "backend" => Some('b'),
            _ => None,
        };
        let settings = lair_conf::clap_args::<ServerConfig>(&["root"])
            .into_iter()
            .map(|a| match short(a.get_id().as_str()) {
                Some(c) => a.short(c),
                None => a,
            });
        cmd.args(settings)
            .arg(
                Arg::new("config")
                    .long("config")
                    .short('c')
                    .value_name("FILE")
                    .value_parser(clap::value_parser!(PathBuf))
                    .help(
                        "TOML file with the same settings, keys spelled like the flags \
                         (examples/lair.toml has every one); flags win over it",
                    ),
            )
            .arg(
                Arg::new("check")
                    .long("check")
                    .action(ArgAction::SetTrue)
                    .help("Read and check the configuration, print it, and exit (0 if it is good)"),
            )
            .arg(
                Arg::new("print-config")
                    .long("print-config")
                    .action(ArgAction::SetTrue)
                    .help("Print a configuration file with every setting at its default, and exit"),
            )
            .after_help("Every flag is also a key of the --config file (README, \"Options\").")
    }
    fn augment_args_for_update(cmd: Command) -> Command {
        Self::augment_args(cmd)
    }
}

/// The title of the sample configuration file (`lair serve --print-config`).
const SAMPLE_TITLE: &str = "lair serve: every setting at its default (`lair serve --print-config`).
Keys are spelled like the flags; flags given on the command line win over this file.
A relative path here is relative to this file's directory.";

/// Defaults, then the file, then the flags; checked.
fn build_config(args: &ServeArgs) -> Result<ServerConfig, ConfigError> {
    let file = args.matches.get_one::<PathBuf>("config");
    let cfg: ServerConfig = lair_conf::from_matches(&args.matches, file.map(PathBuf::as_path))
        .map_err(|e| ConfigError(e.to_string()))?;
    cfg.check().map_err(ConfigError)?;
    Ok(cfg)
}

/// Run `lair serve` until SIGINT/SIGTERM.
pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    if args.matches.get_flag("print-config") {
        print!("{}", lair_conf::sample::<ServerConfig>(SAMPLE_TITLE));
        return Ok(());
    }
    let cfg = build_config(&args)?;
    if args.matches.get_flag("check") {
        println!("{cfg:#?}");
        crate::say!("lair: configuration ok");
        return Ok(());
    }
    let stats_json = cfg.stats_json.clone();
    if !lair_io::setup::one_allocator_arena() {
        tracing::debug!("the allocator keeps an arena per thread (not glibc)");
    }
    match lair_io::setup::raise_nofile_limit() {
        Ok(n) => tracing::debug!("descriptor limit {n}"),
        Err(e) => tracing::warn!("cannot raise the descriptor limit: {e}"),
    }
    let (workers, backend, root) = (cfg.workers, cfg.backend, cfg.root.clone());
    let (laio_ops, model, threads, ecem) = (cfg.laio_ops, cfg.model, cfg.threads, cfg.ecem);
    // Handlers first: a SIGTERM sent as soon as "listening" is printed must find them (it
    // used to kill the process outright when it came before they were installed).
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
    ])
    .context("installing signal handlers")?;
    let handle = signals.handle();
    let server = Server::bind(cfg).context("cannot start")?;
    let running = server.start()?;
    let stopper = running.stopper();
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
                    crate::say!("lair: second signal, exiting now");
                    std::process::exit(130);
                }
            }
        })
        .context("starting the signal thread")?;
    if lair_io::VALGRIND_BUILD {
        crate::say!(
            "lair: a measurement build (--features valgrind): under valgrind, files open \
             without openat2's RESOLVE_BENEATH; do not serve untrusted trees with it"
        );
    }
    for a in running.local_addrs() {
        // A plain line on stderr (whatever the log level): scripts and tests wait for it.
        crate::say!("lair: listening on http://{a}");
    }
    match model {
        lair_http::Model::Events => tracing::info!(
            "serving {} with {workers} workers, backend {backend}, operations through it: \
             {laio_ops}, event correlation {ecem}",
            root.display()
        ),
        lair_http::Model::Threads => tracing::info!(
            "serving {} with a thread per connection (at most {threads}), {workers} accepting \
             threads, event correlation {ecem}",
            root.display()
        ),
    }

    let report = running.wait();
    handle.close();
    let report = report?;
    crate::say!("{}", report.engine.table().trim_end());
    let h = &report.http;
    crate::say!(
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
    let w = report.file_watch.unwrap_or_default();
    crate::say!(
        "file cache: {} hits, {} misses, {} changed, {} bytes held, {} evicted; hot files watched: {} added, {} attached, {} changed, {} refused",
        h.file_cache_hits,
        h.file_cache_misses,
        h.file_cache_changed,
        h.file_cache_bytes,
        h.file_cache_evictions,
        w.added,
        w.attached,
        w.changed,
        w.refused
    );
    let d = report.datapath;
    if d != lair_io::DataPathCounts::default() {
        crate::say!(
            "data paths: {} pipes made, {} splices sent with sendfile instead; {} files mapped, {} mapped sends with sendfile instead; {} pipefuls moved",
            d.pipes_made,
            d.splice_fallbacks,
            d.maps_made,
            d.map_fallbacks,
            d.moves
        );
    }
    if let Some(p) = stats_json {
        let json = serde_json::to_string_pretty(&report)?;
        fs::write(&p, json).with_context(|| format!("writing {}", p.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use std::time::Duration;
    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        a: ServeArgs,
    }

    #[test]
    fn flags_win_over_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("lair.toml");
        std::fs::write(
            &f,
            "root = 'site'\nworkers = 1\nbackend = 'sync'\nheader-timeout = '5s'\nlisten = ['[::1]:0']\nsmall-file-bytes = '8k'\n",
        )
        .unwrap();
        let t = T::parse_from([
            "t",
            "--config",
            f.to_str().unwrap(),
            "--workers",
            "3",
            "--header-timeout",
            "1",
        ]);
        let c = build_config(&t.a).unwrap();
        assert_eq!(c.workers, 3);
        assert_eq!(c.backend, lair_io::BackendKind::Sync);
        assert_eq!(
            c.header_timeout,
            Duration::from_secs(1),
            "a bare number is seconds"
        );
        assert_eq!(c.small_file_bytes, 8 << 10, "sizes take units in files too");
        assert_eq!(c.root, dir.path().join("site"), "relative to the file");
        assert_eq!(c.listen, vec!["[::1]:0".parse().unwrap()]);
        std::fs::write(&f, "wokers = 1").unwrap();
        let t = T::parse_from(["t", "--config", f.to_str().unwrap()]);
        let e = build_config(&t.a).unwrap_err().0;
        assert!(
            e.contains("wokers") && e.contains("did you mean `workers`"),
            "{e}"
        );
    }
}
