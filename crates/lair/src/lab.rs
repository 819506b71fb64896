//! `lair lab`: list, run and report experiments; import access logs; write manifests.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Args, Subcommand};

use crate::serve::ConfigError;

/// Flags of `lair lab`.
#[derive(Debug, Args)]
pub struct LabArgs {
    /// Directory of experiment files.
    #[arg(long, global = true, default_value = "experiments")]
    experiments: PathBuf,

    #[command(subcommand)]
    command: LabCommand,
}

#[derive(Debug, Subcommand)]
enum LabCommand {
    /// List the experiments.
    List,
    /// Run an experiment (a name under --experiments, or a .toml path).
    Run {
        /// Experiment name or file.
        name: String,
        /// The experiment's [quick] variant: seconds, for tests and trials.
        #[arg(long)]
        quick: bool,
        /// Override a parameter, e.g. `--set trace=/tmp/site-trace` (a folder `lair lab import` made).
        #[arg(long = "set", value_parser = parse_kv)]
        set: Vec<(String, String)>,
        /// Only these servers (comma-separated names; `NAME@USER` runs the experiment's lair server NAME as USER, e.g. `lair-lazy@nobody`: not the files' owner).
        #[arg(long, value_delimiter = ',')]
        servers: Option<Vec<String>>,
        /// Only these environments (comma-separated names).
        #[arg(long, value_delimiter = ',')]
        envs: Option<Vec<String>>,
        /// Repetitions of every cell, instead of the experiment's.
        #[arg(long)]
        repetitions: Option<usize>,
        /// Results go to OUT/NAME/TIMESTAMP/.
        #[arg(long, default_value = "results")]
        out: PathBuf,
        /// Filesets are written (and reused) here.
        #[arg(long, default_value = "target/lab-data")]
        data: PathBuf,
    },
    /// Rebuild the CSV, summary and plots of a results directory from its results.json (a
    /// soak's from its soak.json).
    Report {
        /// The results directory.
        dir: PathBuf,
    },
    /// Import a Common Log Format access log as a trace folder (files.tsv, trace.tsv,
    /// stats.json) that experiments and `lair load --trace` replay.
    Import {
        /// The access log.
        #[arg(value_name = "LOG")]
        access_log: PathBuf,
        /// Folder to write.
        out: PathBuf,
    },
    /// Put a directory on an emulated slow disk until Ctrl-C: its contents copied into an
    /// ext4 image whose reads take LATENCY each on CHANNELS parallel channels, mounted
    /// read-only over the directory (root; the same disk as an experiment's `device`).
    Disk {
        /// The directory (a docroot, say).
        dir: PathBuf,
        /// Service time of one read.
        #[arg(long, default_value = "5ms")]
        latency: String,
        /// Reads served at once.
        #[arg(long, default_value_t = 1)]
        channels: usize,
        /// Transfer rate of a channel (`100M`); unlimited if not given.
        #[arg(long)]
        read_bps: Option<String>,
        /// Run the device's threads on this CPU (keep it off the server's).
        #[arg(long)]
        cpu: Option<usize>,
    },
    /// Write a content manifest (path, size, CRC-32) of a docroot for `lair load --manifest`.
    Manifest {
        /// The docroot.
        root: PathBuf,
    },
}

fn parse_kv(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.trim().to_string(), v.to_string()))
        .filter(|(k, _)| !k.is_empty())
        .ok_or_else(|| format!("{s:?} is not NAME=VALUE"))
}

fn experiment_file(dir: &Path, name: &str) -> PathBuf {
    if name.ends_with(".toml") || name.contains('/') {
        PathBuf::from(name)
    } else {
        dir.join(format!("{name}.toml"))
    }
}

/// A flag raised by Ctrl-C or SIGTERM.
fn stop_flag() -> anyhow::Result<Arc<AtomicBool>> {
    let flag = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGINT, Arc::clone(&flag))
        .context("installing the Ctrl-C handler")?;
    signal_hook::flag::register(signal_hook::consts::SIGTERM, Arc::clone(&flag))
        .context("installing the SIGTERM handler")?;
    Ok(flag)
}

/// Run `lair lab`.
pub fn run(a: LabArgs) -> anyhow::Result<()> {
    match a.command {
        LabCommand::List => {
            for (path, x) in lair_lab::experiment::list(&a.experiments)? {
                let servers = x
                    .server_specs()
                    .map(|s| s.into_iter().map(|s| s.name).collect::<Vec<_>>().join(", "))
                    .unwrap_or_default();
                println!(
                    "{:<8} {}\n         {} workload(s), clients {:?}, {} environment(s), servers {servers} ({})",
                    x.name,
                    x.description,
                    x.workloads.len(),
                    x.clients,
                    x.environments.len(),
                    path.display()
                );
            }
            Ok(())
        }
        LabCommand::Run {
            name,
            quick,
            set,
            servers,
            envs,
            repetitions,
            out,
            data,
        } => {
            let file = experiment_file(&a.experiments, &name);
            let text = std::fs::read_to_string(&file)
                .map_err(|e| ConfigError(format!("experiment {}: {e}", file.display())))?;
            let mut x = lair_lab::experiment::parse(&text, quick, &set)
                .map_err(|e| ConfigError(format!("{}: {e:#}", file.display())))?;
            if let Some(only) = &envs {
                let known: Vec<String> = x.environments.iter().map(|e| e.name.clone()).collect();
                x.environments.retain(|e| only.contains(&e.name));
                if x.environments.is_empty() {
                    return Err(ConfigError(format!(
                        "--envs {} matches none of the experiment's environments ({})",
                        only.join(","),
                        known.join(", ")
                    ))
                    .into());
                }
            }
            if let Some(n) = repetitions {
                if n == 0 {
                    return Err(ConfigError("--repetitions must be at least 1".into()).into());
                }
                x.repetitions = n;
            }
            let cancel = stop_flag()?;
            let opts = lair_lab::run::RunOptions {
                quick,
                results: out,
                data,
                lair: std::env::current_exe().context("locating the lair binary")?,
                only_servers: servers,
                cancel,
            };
            let dir = lair_lab::run::run(&x, &opts)?;
            println!("{}", dir.display());
            Ok(())
        }
        LabCommand::Report { dir } => {
            let soak = dir.join("soak.json");
            if soak.is_file() {
                let text = std::fs::read_to_string(&soak)?;
                let r: lair_lab::soak::SoakResults = serde_json::from_str(&text)
                    .with_context(|| format!("reading {}", soak.display()))?;
                lair_lab::soak::write(&dir, &r)?;
                println!("{}", dir.join("summary.md").display());
                return Ok(());
            }
            let r = lair_lab::report::load(&dir)?;
            lair_lab::report::rebuild(&dir, &r)?;
            println!("{}", dir.join("summary.md").display());
            Ok(())
        }
        LabCommand::Import {
            access_log: log,
            out,
        } => {
            let text = std::fs::read_to_string(&log)
                .map_err(|e| ConfigError(format!("{}: {e}", log.display())))?;
            let im = lair_lab::clf::import(&text);
            std::fs::create_dir_all(&out)?;
            std::fs::write(out.join("files.tsv"), im.dataset.files_tsv())?;
            std::fs::write(out.join("trace.tsv"), im.dataset.trace_tsv())?;
            let stats = serde_json::json!({
                "source": log.display().to_string(),
                "import": im.stats,
                "files": im.dataset.files.len(),
                "dataset_bytes": im.dataset.dataset_bytes(),
                "transfer_bytes": im.dataset.transfer_bytes(),
            });
            std::fs::write(
                out.join("stats.json"),
                serde_json::to_string_pretty(&stats)?,
            )?;
            eprintln!(
                "lair lab: {} lines: kept {}, malformed {}, not GET {}, not 200 {}, empty {}, not static {}",
                im.stats.lines,
                im.stats.kept,
                im.stats.malformed,
                im.stats.method,
                im.stats.status,
                im.stats.empty,
                im.stats.not_static
            );
            if im.stats.kept == 0 {
                anyhow::bail!("no request kept from {}", log.display());
            }
            println!("{}", out.display());
            Ok(())
        }
        LabCommand::Disk {
            dir,
            latency,
            channels,
            read_bps,
            cpu,
        } => {
            let model = lair_lab::disk::DiskModel {
                latency,
                channels,
                read_bps,
            };
            let stop = stop_flag()?;
            let mut undo = lair_lab::env::Undo::default();
            let disk = lair_lab::disk::EmulatedDisk::over(&mut undo, &model, &dir, cpu)?;
            eprintln!(
                "lair lab: {} is on the emulated disk ({}); Ctrl-C to undo",
                disk.dir.display(),
                disk.loop_device.display()
            );
            let mut last = disk.counts();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                std::thread::sleep(std::time::Duration::from_secs(1));
                let now = disk.counts();
                let d = now.since(&last);
                if d.reads > 0 {
                    eprintln!(
                        "{:>7} reads/s {:>9.1} MB/s  mean depth {:>6.1}  wait {:>6.2} ms/read",
                        d.reads,
                        d.bytes as f64 / 1e6,
                        d.mean_depth().unwrap_or(0.0),
                        d.wait_us as f64 / 1e3 / d.reads as f64
                    );
                }
                last = now;
            }
            undo.run();
            Ok(())
        }
        LabCommand::Manifest { root } => {
            let m = lair_load::manifest::build(&root)
                .with_context(|| format!("reading {}", root.display()))?;
            print!("{}", m.render());
            Ok(())
        }
    }
}
