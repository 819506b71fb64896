//! The `lair` command: `lair serve`, `lair load`, `lair lab` and `lair micro`.
//!
//! Thin on purpose: it parses flags and the TOML config (flags win), sets up logging and
//! signals, runs the library, and maps errors to exit codes (0 ok, 1 runtime failure, 2 bad
//! usage or configuration).

#![forbid(unsafe_code)]

use std::io::IsTerminal as _;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod lab;
mod load;
mod micro;
mod serve;

/// Write a line to stderr, ignoring failure: whatever reads our stderr may be gone (`| head`),
/// and a diagnostic must never take a thread down with it (`eprintln!` panics on `EPIPE`).
macro_rules! say {
    ($($arg:tt)*) => {{
        let _ = std::io::Write::write_fmt(&mut std::io::stderr(), format_args!("{}\n", format_args!($($arg)*)));
    }};
}
pub(crate) use say;

/// lair: an event-driven static web server built on lazy asynchronous I/O.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None, propagate_version = true)]
struct Cli {
    /// Log filter (tracing `EnvFilter` syntax), e.g. `info`, `debug`, `lair_http=debug`.
    #[arg(long, global = true, env = "LAIR_LOG", default_value = "info")]
    log: String,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve a directory over HTTP/1.1.
    Serve(Box<serve::ServeArgs>),
    /// Generate load: N keep-alive connections in a closed loop, every response validated.
    Load(Box<load::LoadArgs>),
    /// Run declared experiments against lair and its peers; tables and plots out.
    Lab(Box<lab::LabArgs>),
    /// Seed 001's micro-benchmarks (getpid, open-stat, open-stat-read) through every backend.
    Micro(Box<micro::MicroArgs>),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_new(&cli.log)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        // Colours only for a terminal; and a log line that cannot be written is dropped, not
        // reported with `eprintln!` (which panics when stderr is a closed pipe).
        .with_ansi(std::io::stderr().is_terminal())
        .log_internal_errors(false)
        .init();
    // A panic in any thread ends the process with a message, never a half-alive server (a
    // signal thread gone, workers still serving).
    std::panic::set_hook(Box::new(|info| {
        say!("lair: fatal: {info}");
        std::process::exit(101);
    }));
    let result = match cli.command {
        Command::Serve(args) => serve::run(*args),
        Command::Load(args) => load::run(*args),
        Command::Lab(args) => lab::run(*args),
        Command::Micro(args) => micro::run(*args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let code = if e.downcast_ref::<serve::ConfigError>().is_some() {
                2
            } else {
                1
            };
            say!("lair: error: {}", error_chain(&e));
            ExitCode::from(code)
        }
    }
}

/// The error and its causes, each said once (a message that already quotes its cause, as
/// `document root X: No such file or directory` does, is not followed by it again).
fn error_chain(e: &anyhow::Error) -> String {
    let mut msg = e.to_string();
    for cause in e.chain().skip(1) {
        let c = cause.to_string();
        if !msg.contains(&c) {
            msg.push_str(": ");
            msg.push_str(&c);
        }
    }
    msg
}
