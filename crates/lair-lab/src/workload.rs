//! Workloads: a fileset (paths and sizes) and a request sequence over it, generated
//! deterministically from a seed, or read from a trace folder or an access log.
//!
//! | kind | fileset | requests |
//! |---|---|---|
//! | `fixed` | one file of `bytes` | that file, again and again |
//! | `uniform` | `files` files of `bytes` | uniformly random over them |
//! | `specweb99` | `dirs` directories × 4 classes × 9 files (0.1–0.9, 1–9, 10–90, 100–900 KiB) | class 35/50/14/1 %, Zipf (α = 1) over directories and over the 9 files of a class |
//! | `surge` | `files` files, lognormal body (μ 9.357, σ 1.318) and Pareto tail (k 133 KB, α 1.1, 7 %) | Zipf (α = 1) popularity, independent of size |
//! | `rice` | SURGE-shaped sizes scaled to 1.1 GB × `scale`, 32,350 × `scale` files | 245,820 × `scale` requests, Zipf (α = 0.9); seed 001's Rice trace in size and count |
//! | `trace` | a folder's `files.tsv` | its `trace.tsv`, in order, with its timestamps |
//! | `clf` | a Common Log Format access log, imported ([`crate::clf`]) | the log's requests, in order, with its timestamps |
//!
//! The generators model what the papers' workloads are known for (size classes, heavy tails,
//! skewed popularity), not their every detail: there is no temporal locality model (SURGE's
//! stack distances), and the Rice trace's real popularity is unknown, so its shape is a
//! stand-in sized like it. The real traces (`trace`) and an operator's own log (`clf`) are
//! the real thing.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, LogNormal, Pareto, Zipf};
use serde::{Deserialize, Serialize};

pub use crate::dataset::{Dataset, FileSpec, Req};

/// What to generate, as written in an experiment file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum Spec {
    /// One file.
    Fixed {
        /// Its size.
        bytes: u64,
    },
    /// Equal files, requested uniformly at random.
    Uniform {
        /// How many.
        files: u32,
        /// Each this big.
        bytes: u64,
        /// Requests to generate (default 10 per file).
        requests: Option<u64>,
    },
    /// Equal files, each requested once, in order, round and round: every download in a
    /// pass is a different file (seed 000's downloads: distinct files, cold).
    Distinct {
        /// How many.
        files: u32,
        /// Each this big.
        bytes: u64,
    },
    /// SPECweb99-like.
    Specweb99 {
        /// Directories (SPECweb99 scales them with the target load; 10 is 51 MB).
        dirs: u32,
        /// Requests to generate.
        requests: u64,
    },
    /// SURGE-like.
    Surge {
        /// Files.
        files: u32,
        /// Requests to generate.
        requests: u64,
    },
    /// Shaped like seed 001's Rice trace.
    Rice {
        /// 1.0: 245,820 requests over 1.1 GB.
        scale: f64,
    },
    /// A trace folder (`files.tsv` + `trace.tsv`), e.g. `../shared/traces/nasa-19950801`.
    Trace {
        /// The folder.
        dir: PathBuf,
    },
    /// A Common Log Format access log.
    Clf {
        /// The log file.
        log: PathBuf,
    },
}

/// Generate (or read) a workload. `seed` makes generation deterministic.
pub fn generate(spec: &Spec, seed: u64) -> anyhow::Result<Dataset> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    Ok(match spec {
        Spec::Fixed { bytes } => Dataset {
            files: vec![FileSpec {
                path: format!("/fixed-{bytes}.bin"),
                bytes: *bytes,
            }],
            requests: vec![Req { t_ms: 0, file: 0 }],
            skipped: 0,
        },
        Spec::Distinct { files, bytes } => {
            if *files == 0 {
                bail!("distinct: files must be at least 1");
            }
            Dataset {
                files: (0..*files)
                    .map(|i| FileSpec {
                        path: format!("/d/{:03}/f{i:06}.bin", i / 1000),
                        bytes: *bytes,
                    })
                    .collect(),
                requests: (0..*files).map(|file| Req { t_ms: 0, file }).collect(),
                skipped: 0,
            }
        }
        Spec::Uniform {
            files,
            bytes,
            requests,
        } => {
            if *files == 0 {
                bail!("uniform: files must be at least 1");
            }
            let files_v = (0..*files)
                .map(|i| FileSpec {
                    path: format!("/u/{:03}/f{i:06}.bin", i / 1000),
                    bytes: *bytes,
                })
                .collect();
            let n = requests.unwrap_or(u64::from(*files) * 10);
            let requests = (0..n)
                .map(|_| Req {
                    t_ms: 0,
                    file: rng.random_range(0..*files),
                })
                .collect();
            Dataset {
                files: files_v,
                requests,
                skipped: 0,
            }
        }
        Spec::Specweb99 { dirs, requests } => specweb99(&mut rng, *dirs, *requests)?,
        Spec::Surge { files, requests } => {
            let sizes = surge_sizes(&mut rng, *files);
            zipf_requests(&mut rng, sizes, *requests, 1.0, "s")?
        }
        Spec::Rice { scale } => {
            if !(scale.is_finite() && *scale > 0.0) {
                bail!("rice: scale must be positive");
            }
            let files = ((32_350.0 * scale).round() as u32).max(1);
            let requests = ((245_820.0 * scale).round() as u64).max(1);
            let mut sizes = surge_sizes(&mut rng, files);
            // Rescale to the trace's dataset size, keeping the shape.
            let total: u64 = sizes.iter().sum();
            let want = 1.1e9 * scale;
            let k = want / total.max(1) as f64;
            for s in &mut sizes {
                *s = ((*s as f64 * k).round() as u64).max(1);
            }
            zipf_requests(&mut rng, sizes, requests, 0.9, "rice")?
        }
        Spec::Trace { dir } => read_trace_dir(dir)?,
        Spec::Clf { log } => {
            let text = std::fs::read_to_string(log)
                .with_context(|| format!("reading access log {}", log.display()))?;
            crate::clf::import(&text).dataset
        }
    })
}

/// SPECweb99's class sizes: class `c`, file `i` (1..=9) is `i × 1024 × 10^c / 10` bytes.
pub fn specweb99_size(class: u32, i: u32) -> u64 {
    u64::from(i) * 1024 * 10u64.pow(class) / 10
}

/// SPECweb99's class mix, percent.
pub const SPECWEB99_CLASS_MIX: [f64; 4] = [0.35, 0.50, 0.14, 0.01];

fn specweb99(rng: &mut ChaCha8Rng, dirs: u32, n: u64) -> anyhow::Result<Dataset> {
    if dirs == 0 {
        bail!("specweb99: dirs must be at least 1");
    }
    let mut files = Vec::with_capacity(dirs as usize * 36);
    for d in 0..dirs {
        for c in 0..4 {
            for i in 1..=9 {
                files.push(FileSpec {
                    path: format!("/dir{d:05}/class{c}_{i}"),
                    bytes: specweb99_size(c, i),
                });
            }
        }
    }
    let dir_zipf = Zipf::new(f64::from(dirs), 1.0).context("zipf over directories")?;
    let file_zipf = Zipf::new(9.0, 1.0).context("zipf over files")?;
    let requests = (0..n)
        .map(|_| {
            let d = dir_zipf.sample(rng) as u32 - 1;
            let u: f64 = rng.random();
            let mut c = 3;
            let mut acc = 0.0;
            for (k, p) in SPECWEB99_CLASS_MIX.iter().enumerate() {
                acc += p;
                if u < acc {
                    c = k as u32;
                    break;
                }
            }
            let i = file_zipf.sample(rng) as u32; // 1..=9, file 1 the most popular
            Req {
                t_ms: 0,
                file: d * 36 + c * 9 + (i - 1),
            }
        })
        .collect();
    Ok(Dataset {
        files,
        requests,
        skipped: 0,
    })
}

/// SURGE's file sizes: lognormal body, Pareto tail (capped at 256 MiB so a fileset stays
/// writable).
fn surge_sizes(rng: &mut ChaCha8Rng, n: u32) -> Vec<u64> {
    // INVARIANT: constant, valid parameters (σ > 0; scale and shape > 0).
    let body = LogNormal::new(9.357, 1.318).expect("valid lognormal");
    let tail = Pareto::new(133_000.0, 1.1).expect("valid pareto");
    (0..n)
        .map(|_| {
            let x: f64 = if rng.random::<f64>() < 0.07 {
                tail.sample(rng)
            } else {
                body.sample(rng)
            };
            (x.round() as u64).clamp(1, 256 << 20)
        })
        .collect()
}

/// Files of `sizes` with Zipf(`alpha`) popularity over a random ranking.
fn zipf_requests(
    rng: &mut ChaCha8Rng,
    sizes: Vec<u64>,
    n: u64,
    alpha: f64,
    prefix: &str,
) -> anyhow::Result<Dataset> {
    if sizes.is_empty() {
        bail!("{prefix}: files must be at least 1");
    }
    let files: Vec<FileSpec> = sizes
        .into_iter()
        .enumerate()
        .map(|(i, bytes)| FileSpec {
            path: format!("/{prefix}/{:03}/f{i:06}.bin", i / 1000),
            bytes,
        })
        .collect();
    // rank → file: a random permutation, so popularity does not follow the size order.
    let mut rank: Vec<u32> = (0..files.len() as u32).collect();
    for i in (1..rank.len()).rev() {
        let j = rng.random_range(0..=i);
        rank.swap(i, j);
    }
    let zipf = Zipf::new(files.len() as f64, alpha).context("zipf popularity")?;
    let requests = (0..n)
        .map(|_| Req {
            t_ms: 0,
            file: rank[zipf.sample(rng) as usize - 1],
        })
        .collect();
    Ok(Dataset {
        files,
        requests,
        skipped: 0,
    })
}

/// Read a trace folder: `files.tsv` (`path<TAB>bytes`) and `trace.tsv`
/// (`t_ms<TAB>path<TAB>bytes`); malformed lines and requests for files not in `files.tsv`
/// are counted in `skipped`.
pub fn read_trace_dir(dir: &Path) -> anyhow::Result<Dataset> {
    let files_text = std::fs::read_to_string(dir.join("files.tsv"))
        .with_context(|| format!("reading {}/files.tsv", dir.display()))?;
    let trace_text = std::fs::read_to_string(dir.join("trace.tsv"))
        .with_context(|| format!("reading {}/trace.tsv", dir.display()))?;
    let mut d = Dataset::default();
    let mut index = std::collections::HashMap::new();
    for line in files_text.lines() {
        let mut f = line.split('\t');
        match (f.next(), f.next().map(str::parse::<u64>), f.next()) {
            (Some(p), Some(Ok(bytes)), None) if p.starts_with('/') => {
                index.insert(p.to_string(), d.files.len() as u32);
                d.files.push(FileSpec {
                    path: p.to_string(),
                    bytes,
                });
            }
            _ if line.trim().is_empty() || line.starts_with('#') => {}
            _ => d.skipped += 1,
        }
    }
    let t = lair_load::trace::parse(&trace_text);
    d.skipped += t.malformed;
    for r in t.requests {
        match index.get(&r.path) {
            Some(&file) => d.requests.push(Req { t_ms: r.t_ms, file }),
            None => d.skipped += 1,
        }
    }
    if d.requests.is_empty() {
        bail!("{}: no usable requests", dir.display());
    }
    Ok(d)
}

impl Dataset {
    /// Sum of the fileset's sizes.
    pub fn dataset_bytes(&self) -> u64 {
        self.files.iter().map(|f| f.bytes).sum()
    }

    /// Sum of the sizes of all requests (what a full replay transfers in bodies).
    pub fn transfer_bytes(&self) -> u64 {
        self.requests
            .iter()
            .map(|r| self.files[r.file as usize].bytes)
            .sum()
    }

    /// `files.tsv`: one `path<TAB>bytes` line per file.
    pub fn files_tsv(&self) -> String {
        let mut s = String::with_capacity(self.files.len() * 32);
        for f in &self.files {
            s.push_str(&format!("{}\t{}\n", f.path, f.bytes));
        }
        s
    }

    /// `trace.tsv`: one `t_ms<TAB>path<TAB>bytes` line per request (what `lair load --trace`
    /// reads).
    pub fn trace_tsv(&self) -> String {
        let mut s = String::with_capacity(self.requests.len() * 40);
        for r in &self.requests {
            let f = &self.files[r.file as usize];
            s.push_str(&format!("{}\t{}\t{}\n", r.t_ms, f.path, f.bytes));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(d: &Dataset) -> Vec<u64> {
        let mut c = vec![0u64; d.files.len()];
        for r in &d.requests {
            c[r.file as usize] += 1;
        }
        c
    }

    #[test]
    fn generation_is_deterministic_and_seeded() {
        for spec in [
            Spec::Specweb99 {
                dirs: 3,
                requests: 2000,
            },
            Spec::Surge {
                files: 300,
                requests: 2000,
            },
            Spec::Rice { scale: 0.01 },
            Spec::Uniform {
                files: 50,
                bytes: 10,
                requests: None,
            },
        ] {
            let a = generate(&spec, 7).unwrap();
            assert_eq!(a, generate(&spec, 7).unwrap(), "{spec:?}");
            assert_ne!(a.requests, generate(&spec, 8).unwrap().requests, "{spec:?}");
        }
    }

    #[test]
    fn specweb99_classes_sizes_and_mix() {
        let d = generate(
            &Spec::Specweb99 {
                dirs: 10,
                requests: 200_000,
            },
            1,
        )
        .unwrap();
        assert_eq!(d.files.len(), 360);
        assert_eq!(specweb99_size(0, 1), 102);
        assert_eq!(specweb99_size(3, 9), 921_600);
        // Ten directories are the 51 MB fileset seed 003 used.
        assert_eq!(d.dataset_bytes(), 10 * 5_119_484);
        let by_class = |c: u32| {
            d.requests.iter().filter(|r| (r.file % 36) / 9 == c).count() as f64
                / d.requests.len() as f64
        };
        for (c, want) in SPECWEB99_CLASS_MIX.iter().enumerate() {
            let got = by_class(c as u32);
            assert!((got - want).abs() < 0.01, "class {c}: {got} vs {want}");
        }
        // Zipf over directories: directory 0 about twice directory 1, ten times directory 9.
        let c = counts(&d);
        let dir = |k: usize| c[k * 36..(k + 1) * 36].iter().sum::<u64>() as f64;
        let r01 = dir(0) / dir(1);
        let r09 = dir(0) / dir(9);
        assert!((1.8..2.2).contains(&r01), "dir0/dir1 = {r01}");
        assert!((8.5..11.5).contains(&r09), "dir0/dir9 = {r09}");
    }

    #[test]
    fn surge_is_heavy_tailed_and_zipf() {
        let d = generate(
            &Spec::Surge {
                files: 5000,
                requests: 200_000,
            },
            3,
        )
        .unwrap();
        let mut sizes: Vec<u64> = d.files.iter().map(|f| f.bytes).collect();
        sizes.sort_unstable();
        let median = sizes[sizes.len() / 2] as f64;
        // Lognormal body: median e^9.357 ≈ 11.6 kB.
        assert!((9_000.0..14_500.0).contains(&median), "median {median}");
        // Heavy tail: the largest 1 % of files hold a large share of the bytes.
        let total: u64 = sizes.iter().sum();
        let top: u64 = sizes[sizes.len() * 99 / 100..].iter().sum();
        assert!(
            top as f64 / total as f64 > 0.25,
            "top 1 % hold {top}/{total}"
        );
        // Zipf α = 1: log(count) against log(rank) has slope about −1 over the head.
        let mut c = counts(&d);
        c.sort_unstable_by(|a, b| b.cmp(a));
        let slope = fit_slope(&c[..100]);
        assert!((-1.15..-0.85).contains(&slope), "slope {slope}");
    }

    #[test]
    fn rice_is_sized_like_the_seed() {
        let d = generate(&Spec::Rice { scale: 0.1 }, 5).unwrap();
        assert_eq!(d.requests.len(), 24_582);
        assert_eq!(d.files.len(), 3_235);
        let gb = d.dataset_bytes() as f64 / 1e9;
        assert!((0.105..0.115).contains(&gb), "{gb} GB");
    }

    #[test]
    fn trace_folder_round_trip() {
        let d = generate(
            &Spec::Surge {
                files: 20,
                requests: 100,
            },
            9,
        )
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("files.tsv"), d.files_tsv() + "bad line\n").unwrap();
        std::fs::write(
            dir.path().join("trace.tsv"),
            d.trace_tsv() + "5\t/not/in/files\t3\n",
        )
        .unwrap();
        let back = read_trace_dir(dir.path()).unwrap();
        assert_eq!(back.files, d.files);
        assert_eq!(back.requests, d.requests);
        assert_eq!(back.skipped, 2);
    }

    /// Least-squares slope of log(count) over log(rank).
    fn fit_slope(c: &[u64]) -> f64 {
        let pts: Vec<(f64, f64)> = c
            .iter()
            .enumerate()
            .map(|(i, &n)| (((i + 1) as f64).ln(), (n.max(1) as f64).ln()))
            .collect();
        let n = pts.len() as f64;
        let mx = pts.iter().map(|p| p.0).sum::<f64>() / n;
        let my = pts.iter().map(|p| p.1).sum::<f64>() / n;
        let sxy: f64 = pts.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
        let sxx: f64 = pts.iter().map(|p| (p.0 - mx).powi(2)).sum();
        sxy / sxx
    }
}
