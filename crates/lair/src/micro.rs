//! `lair micro`: seed 001's micro-benchmarks (getpid; open-stat and open-stat-read) through
//! every engine backend, printed as tables like the seed's (or `--json`).

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use lair_io::BackendKind;
use lair_lab::micro::{self, Measurement, Trace};
use lair_lab::workload::{generate, Spec};

/// Flags of `lair micro`.
#[derive(Debug, Args)]
pub struct MicroArgs {
    #[command(subcommand)]
    bench: Bench,
}

#[derive(Debug, Args)]
struct Common {
    /// Backends to run (comma-separated).
    #[arg(long, value_delimiter = ',', default_values_t = BackendKind::ALL)]
    backends: Vec<BackendKind>,
    /// Helper pool bounds (and most operations in flight) to try; threads of the baseline.
    #[arg(long, value_delimiter = ',', default_values_t = [1usize, 10, 100])]
    threads: Vec<usize>,
    /// Repetitions of every cell, interleaved; the table shows the median and the range.
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// Print the rows as JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Subcommand)]
enum Bench {
    /// A million getpid calls, directly and through each backend (seed 001, Table 2).
    Getpid {
        /// Calls per run.
        #[arg(long, default_value_t = 1_000_000)]
        calls: u64,
        #[command(flatten)]
        common: Common,
    },
    /// open + fstat of every request of a trace, cold and warm (seed 001, Table 3).
    OpenStat(Box<OpenStatArgs>),
    /// open + fstat + read to the end of every request of a trace (seed 001, Table 4).
    OpenStatRead(Box<OpenStatArgs>),
}

#[derive(Debug, Args)]
struct OpenStatArgs {
    /// A trace folder (files.tsv + trace.tsv, e.g. one `lair lab import` made); default:
    /// the Rice-shaped trace at --scale.
    #[arg(long)]
    trace: Option<PathBuf>,
    /// Size of the Rice-shaped trace: 1.0 is the seed's 245,820 requests over 1.1 GB.
    #[arg(long, default_value_t = 0.1)]
    scale: f64,
    /// Cache states to run (comma-separated: cold, warm).
    #[arg(long, value_delimiter = ',', default_values_t = ["cold".to_string(), "warm".to_string()])]
    cache: Vec<String>,
    /// Filesets are written (and reused) here.
    #[arg(long, default_value = "target/lab-data")]
    data: PathBuf,
    #[command(flatten)]
    common: Common,
}

fn print(rows: Vec<Measurement>, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        print!("{}", micro::table(&rows));
    }
    Ok(())
}

/// Run `lair micro`.
pub fn run(a: MicroArgs) -> anyhow::Result<()> {
    match a.bench {
        Bench::Getpid { calls, common } => {
            let mut cells: Vec<Vec<Measurement>> = Vec::new();
            for _ in 0..common.reps.max(1) {
                let mut i = 0;
                let mut put = |r: Measurement| {
                    if cells.len() <= i {
                        cells.push(Vec::new());
                    }
                    cells[i].push(r);
                    i += 1;
                };
                put(micro::getpid_direct(calls));
                for &t in &common.threads {
                    for &k in &common.backends {
                        put(micro::getpid_backend(k, calls, t)?);
                    }
                }
            }
            print(
                cells.into_iter().filter_map(micro::median).collect(),
                common.json,
            )
        }
        Bench::OpenStat(o) => open_stat(*o, false),
        Bench::OpenStatRead(o) => open_stat(*o, true),
    }
}

fn open_stat(o: OpenStatArgs, read: bool) -> anyhow::Result<()> {
    let spec = match &o.trace {
        Some(dir) => Spec::Trace { dir: dir.clone() },
        None => Spec::Rice { scale: o.scale },
    };
    let dataset = generate(&spec, 1).context("making the trace")?;
    let name = match &o.trace {
        Some(_) => "micro-trace",
        None => "micro-rice",
    };
    eprintln!(
        "lair micro: {} requests over {} files ({:.0} MB) …",
        dataset.requests.len(),
        dataset.files.len(),
        dataset.dataset_bytes() as f64 / 1e6
    );
    let fs = lair_lab::fileset::materialize(&o.data, name, &[("micro".to_string(), &dataset)])?;
    let paths: Vec<String> = dataset.files.iter().map(|f| f.path.clone()).collect();
    let requests: Vec<u32> = dataset.requests.iter().map(|r| r.file).collect();
    let trace = Trace::new(&fs.root, &paths, &requests)?;
    let mut cells: Vec<Vec<Measurement>> = Vec::new();
    let mut warned = false;
    for _ in 0..o.common.reps.max(1) {
        let mut i = 0;
        for cache in &o.cache {
            for &t in &o.common.threads {
                let ways: Vec<Option<BackendKind>> = std::iter::once(None)
                    .chain(o.common.backends.iter().copied().map(Some))
                    .collect();
                for way in ways {
                    match cache.as_str() {
                        "cold" => {
                            let c = micro::make_cold(&trace)?;
                            if !c.dentries_dropped && !warned {
                                warned = true;
                                eprintln!(
                                    "lair micro: not root: file data is dropped from the cache, \
                                     directory entries and inodes are not (cold open/stat will \
                                     find them cached)"
                                );
                            }
                            anyhow::ensure!(
                                c.cached_fraction < 0.05,
                                "the files stayed {:.0} % cached after dropping them",
                                c.cached_fraction * 100.0
                            );
                        }
                        "warm" => {
                            micro::make_warm(&trace)?;
                        }
                        other => anyhow::bail!("--cache {other:?}: say cold or warm"),
                    }
                    let mut r = match way {
                        None => micro::open_stat_threads(&trace, t, read)?,
                        Some(k) => micro::open_stat_backend(k, &trace, t, read)?,
                    };
                    r.cache = cache.clone();
                    if cells.len() <= i {
                        cells.push(Vec::new());
                    }
                    cells[i].push(r);
                    i += 1;
                }
            }
        }
    }
    print(
        cells.into_iter().filter_map(micro::median).collect(),
        o.common.json,
    )
}
