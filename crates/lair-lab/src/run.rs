//! Running an experiment: every environment × repetition × workload × client count × server,
//! servers interleaved (adjacent in time, so their ratios are measured under the same
//! machine weather), each run on a freshly started server.
//!
//! One run: start the server pinned to the server CPU (into the slow-disk cgroup if the
//! environment has one); warm up (warm groups: read their files, then a short load); in a cold
//! environment, drop the other groups' files from the page cache and check with `cachestat`;
//! sample `/proc` of the server; run every client group at once, in this process, pinned to
//! the client CPU (inside the clients' network namespace if there is one); sample again; stop
//! the server and read its engine counters. Every response is validated against the fileset's
//! manifest (length and CRC-32); failures are counted in the row, never dropped.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use anyhow::{bail, Context as _};
use lair_load::{Expect, LoadConfig, Manifest, Mode, Progress, Slow, Stop};

use crate::disk::EmulatedDisk;
use crate::env::{MemLimit, Netns, Throttle, Undo};
use crate::experiment::{Cache, Environment, Experiment, Group, Replay};
use crate::fileset::{self, Fileset};
use crate::results::{stamp, Host, Results, Row};
use crate::servers::{self, Place};
use crate::workload;

/// How to run.
pub struct RunOptions {
    /// `--quick`.
    pub quick: bool,
    /// Results go to `results/NAME/TIMESTAMP/` under this.
    pub results: PathBuf,
    /// Filesets are written under this.
    pub data: PathBuf,
    /// The `lair` binary the servers run.
    pub lair: PathBuf,
    /// Only these servers (names), if given.
    pub only_servers: Option<Vec<String>>,
    /// Set (by Ctrl-C) to stop after the run in progress; what finished is written.
    pub cancel: Arc<AtomicBool>,
}

fn host() -> Host {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string();
    let mut peers = Vec::new();
    for (prog, arg) in [("nginx", "-v"), ("lighttpd", "-v")] {
        if let Ok(o) = std::process::Command::new(prog).arg(arg).output() {
            let text = String::from_utf8_lossy(if o.stderr.is_empty() {
                &o.stdout
            } else {
                &o.stderr
            })
            .lines()
            .next()
            .unwrap_or("")
            .to_string();
            peers.push(text);
        }
    }
    Host {
        kernel,
        cpus: lair_io::setup::allowed_cpus().len(),
        peers,
    }
}

/// A free TCP port on `ip`.
fn free_port(ip: std::net::IpAddr) -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind((ip, 0)).context("finding a free port")?;
    Ok(l.local_addr()?.port())
}

/// CPU seconds of this process (the clients run in it).
fn own_cpu_s() -> f64 {
    crate::proc::sample_process(std::process::id()).map_or(0.0, |s| s.user_s + s.system_s)
}

struct Prepared {
    name: String,
    groups: Vec<Group>,
    fileset: Fileset,
    /// Per group: paths and what each 200 answer must be.
    requests: Vec<(Vec<String>, Vec<Expect>)>,
    /// Per group: its distinct files on disk.
    files: Vec<Vec<PathBuf>>,
}

fn prepare(x: &Experiment, data: &Path) -> anyhow::Result<Vec<Prepared>> {
    let mut out = Vec::new();
    for w in &x.workloads {
        let groups = w.groups()?;
        let mut datasets = Vec::new();
        for g in &groups {
            let d = workload::generate(&g.spec, x.seed)
                .with_context(|| format!("workload {}/{}", w.name, g.name))?;
            if d.skipped > 0 {
                tracing::info!(
                    "workload {}/{}: {} lines skipped",
                    w.name,
                    g.name,
                    d.skipped
                );
            }
            datasets.push((g.name.clone(), d));
        }
        let refs: Vec<(String, &workload::Dataset)> =
            datasets.iter().map(|(n, d)| (n.clone(), d)).collect();
        eprintln!("lair lab: preparing fileset {} …", w.name);
        let fs = fileset::materialize(data, &w.name, &refs)?;
        let manifest = Manifest::parse(&std::fs::read_to_string(&fs.manifest)?);
        let mut requests = Vec::new();
        let mut files = Vec::new();
        for (_, d) in &datasets {
            let paths: Vec<String> = d
                .requests
                .iter()
                .map(|r| d.files[r.file as usize].path.clone())
                .collect();
            let expect = paths
                .iter()
                .map(|p| manifest.files.get(p).copied().unwrap_or_default())
                .collect();
            requests.push((paths, expect));
            files.push(
                d.files
                    .iter()
                    .map(|f| fs.root.join(f.path.trim_start_matches('/')))
                    .collect(),
            );
        }
        out.push(Prepared {
            name: w.name.clone(),
            groups,
            fileset: fs,
            requests,
            files,
        });
    }
    Ok(out)
}

pub(crate) fn parse_size(s: &Option<String>) -> anyhow::Result<Option<u64>> {
    s.as_deref()
        .map(|s| lair_conf::parse_nonzero_size(s).map_err(anyhow::Error::msg))
        .transpose()
}

/// Run an experiment and write its results; returns the results directory.
pub fn run(x: &Experiment, opts: &RunOptions) -> anyhow::Result<PathBuf> {
    let started_at = SystemTime::now();
    let t0 = Instant::now();
    let mut servers = x.server_specs()?;
    if let Some(only) = &opts.only_servers {
        // `NAME@USER`: the experiment's lair server NAME, run as USER; a built-in name the
        // experiment does not list is run too (`--servers nginx` against a lair-only soak).
        let mut picked = Vec::new();
        for o in only {
            let mine: Vec<_> = servers
                .iter()
                .filter_map(|s| crate::servers::as_user(s, o))
                .collect();
            if !mine.is_empty() {
                picked.extend(mine);
            } else if let Some(b) = crate::servers::builtin(o) {
                picked.push(b);
            } else {
                bail!(
                    "--servers {o}: neither one of the experiment's servers ({}) nor a built-in \
                     one ({})",
                    servers
                        .iter()
                        .map(|s| s.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                    crate::servers::builtin_names().join(", ")
                );
            }
        }
        servers = picked;
    }
    for s in &servers {
        servers::check_installed(s)?;
    }
    let cpus = x.cpus.unwrap_or_else(|| {
        let all = lair_io::setup::allowed_cpus();
        crate::experiment::Cpus {
            server: all.get(1).copied().unwrap_or(0),
            client: all.first().copied().unwrap_or(0),
        }
    });
    if let Err(e) = lair_io::setup::raise_nofile_limit() {
        tracing::warn!("could not raise the descriptor limit: {e}");
    }
    // Absolute: peers resolve a relative docroot against their own prefix, not our cwd.
    std::fs::create_dir_all(&opts.data)
        .with_context(|| format!("creating {}", opts.data.display()))?;
    let data = std::fs::canonicalize(&opts.data)?;
    let prepared = prepare(x, &data)?;
    let dir = opts
        .results
        .join(&x.name)
        .join(stamp(started_at) + if opts.quick { "-quick" } else { "" });
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    // Absolute, for the same reason as the data directory (config and pid file paths).
    let dir = std::fs::canonicalize(&dir)?;
    let work = dir.join("work");
    if let Some(spec) = &x.soak {
        let p = prepared
            .first()
            .context("a soak needs a [[workload]]: the trace it replays")?;
        fileset::warm_cache(&p.files[0])?;
        let setup = crate::soak::Setup {
            x,
            spec,
            root: &p.fileset.root,
            trace: (&p.requests[0].0, &p.requests[0].1),
            work: &work,
            lair: &opts.lair,
            cpus,
            cancel: Arc::clone(&opts.cancel),
        };
        let r = crate::soak::run(&setup, &servers, opts.quick, &dir);
        let _ = std::fs::remove_dir_all(&work);
        return r
            .map(|()| dir.clone())
            .with_context(|| format!("results written to {}", dir.display()));
    }
    let mut results = Results {
        experiment: x.clone(),
        quick: opts.quick,
        started: stamp(started_at),
        took_s: 0.0,
        host: host(),
        filesets: prepared
            .iter()
            .map(|p| (p.name.clone(), p.fileset.clone()))
            .collect(),
        rows: Vec::new(),
        notes: Vec::new(),
    };
    let total =
        x.environments.len() * x.repetitions * prepared.len() * x.clients.len() * servers.len();
    let bar = indicatif::ProgressBar::with_draw_target(
        Some(total as u64),
        indicatif::ProgressDrawTarget::stderr(),
    );
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} runs, ETA {eta} {msg}",
    ) {
        bar.set_style(style);
    }
    let outcome = (|| -> anyhow::Result<()> {
        for env in &x.environments {
            let mut undo = Undo::default();
            let throttle = match env.disk {
                Some(limit) => Some(
                    Throttle::new(&mut undo, limit, &data)
                        .with_context(|| format!("environment {}: slow disk", env.name))?,
                ),
                None => None,
            };
            let devices = match &env.device {
                Some(model) => prepared
                    .iter()
                    .map(|p| {
                        EmulatedDisk::over(&mut undo, model, &p.fileset.dir, Some(cpus.client))
                    })
                    .collect::<anyhow::Result<Vec<_>>>()
                    .with_context(|| format!("environment {}: emulated disk", env.name))?,
                None => Vec::new(),
            };
            let memory = match &env.memory {
                Some(m) => {
                    let bytes = lair_conf::parse_size(m)
                        .map_err(anyhow::Error::msg)
                        .with_context(|| format!("environment {}: memory {m:?}", env.name))?;
                    Some(
                        MemLimit::new(&mut undo, bytes)
                            .with_context(|| format!("environment {}: memory limit", env.name))?,
                    )
                }
                None => None,
            };
            let netns = match &env.net {
                Some(n) => Some(
                    Netns::new(&mut undo, n.rate.as_deref())
                        .with_context(|| format!("environment {}: slow network", env.name))?,
                ),
                None => None,
            };
            for rep in 0..x.repetitions {
                for (i, p) in prepared.iter().enumerate() {
                    for &clients in &x.clients {
                        // Rotate the server order each repetition: no server always runs
                        // first (or right after the slowest).
                        let n = servers.len();
                        for k in 0..n {
                            if opts.cancel.load(Ordering::Relaxed) {
                                bail!("interrupted");
                            }
                            let s = &servers[(k + rep) % n];
                            bar.set_message(format!(
                                "{} {}/{} {} clients",
                                s.name, p.name, env.name, clients
                            ));
                            let cell = Cell {
                                x,
                                opts,
                                env,
                                p,
                                server: s,
                                clients,
                                rep,
                                cpus,
                                throttle: throttle.as_ref(),
                                memory: memory.as_ref(),
                                device: devices.get(i),
                                netns: netns.as_ref(),
                                work: &work,
                            };
                            let rows = cell.run().with_context(|| {
                                format!("{} on {}/{}, {clients} clients", s.name, p.name, env.name)
                            })?;
                            for r in &rows {
                                let line = format!(
                                    "{:<11} {:<10} {:<10} {:>5} clients  {:<6} {:>10.0} req/s  p99 {:>8} µs  errors {}",
                                    r.server, r.workload, r.environment, r.clients, r.group,
                                    r.requests_per_s, r.p99_us, r.errors
                                );
                                // A hidden bar (not a terminal) drops its println.
                                if bar.is_hidden() {
                                    eprintln!("{line}");
                                } else {
                                    bar.println(line);
                                }
                                if r.errors > 0 {
                                    results.notes.push(format!(
                                        "{} {}/{}/{} {} clients rep {}: {} failed responses {:?}, statuses {:?}",
                                        r.server, r.workload, r.environment, r.group, r.clients,
                                        r.rep, r.errors, r.error_kinds, r.status
                                    ));
                                }
                            }
                            results.rows.extend(rows);
                            bar.inc(1);
                        }
                    }
                }
            }
            undo.run();
        }
        Ok(())
    })();
    bar.finish_and_clear();
    if let Err(e) = &outcome {
        results.notes.push(format!("run stopped early: {e:#}"));
    }
    results.took_s = t0.elapsed().as_secs_f64();
    crate::report::write(&dir, &results)?;
    let _ = std::fs::remove_dir_all(&work);
    outcome
        .map(|()| dir.clone())
        .with_context(|| format!("partial results written to {}", dir.display()))
}

struct Cell<'a> {
    x: &'a Experiment,
    opts: &'a RunOptions,
    env: &'a Environment,
    p: &'a Prepared,
    server: &'a servers::ServerSpec,
    clients: usize,
    rep: usize,
    cpus: crate::experiment::Cpus,
    throttle: Option<&'a Throttle>,
    memory: Option<&'a MemLimit>,
    device: Option<&'a EmulatedDisk>,
    netns: Option<&'a Netns>,
    work: &'a Path,
}

impl Cell<'_> {
    fn load_config(
        &self,
        g: usize,
        addr: std::net::SocketAddr,
        warmup: bool,
    ) -> anyhow::Result<LoadConfig> {
        let group = &self.p.groups[g];
        let (paths, expect) = &self.p.requests[g];
        let conns = group.connections.unwrap_or(self.clients);
        let stop = match (warmup, group.replay) {
            (true, _) => Stop::After(self.x.warmup),
            (false, Replay::Loop) => match group.requests {
                Some(n) => Stop::Requests(n),
                None => Stop::After(self.x.duration),
            },
            (false, Replay::Pass) => Stop::Requests(
                group
                    .requests
                    .map_or(paths.len() as u64, |n| n.min(paths.len() as u64)),
            ),
        };
        let pace = self.env.client.clone().unwrap_or_default();
        Ok(LoadConfig {
            addr,
            host: addr.to_string(),
            paths: paths.clone(),
            expect: expect.clone(),
            times_ms: Vec::new(),
            mode: Mode::Closed,
            connections: if warmup { conns.min(10) } else { conns },
            threads: self.x.client_threads.min(conns).max(1),
            stop,
            timeout: self.x.timeout,
            expect_status: Some(200),
            pin: vec![self.cpus.client],
            slow: Slow {
                bytes_per_s: parse_size(&pace.recv_rate)?,
                recv_buffer: parse_size(&pace.recv_buffer)?.map(|b| b as usize),
            },
            max_open: 10_000,
        })
    }

    /// Run the groups' loads at once; `only_warm`: just the groups marked warm.
    fn load(
        &self,
        addr: std::net::SocketAddr,
        warmup: bool,
        only_warm: bool,
    ) -> anyhow::Result<Vec<Option<lair_load::Report>>> {
        let cancel = Arc::clone(&self.opts.cancel);
        let netns = self.netns.map(|n| n.name.clone());
        let cfgs = (0..self.p.groups.len())
            .map(|g| {
                let run = !only_warm || self.p.groups[g].warm;
                run.then(|| self.load_config(g, addr, warmup)).transpose()
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        std::thread::scope(|s| {
            let handles: Vec<_> = cfgs
                .iter()
                .map(|cfg| {
                    let cancel = Arc::clone(&cancel);
                    let netns = netns.clone();
                    s.spawn(move || -> anyhow::Result<Option<lair_load::Report>> {
                        let Some(cfg) = cfg else { return Ok(None) };
                        if let Some(ns) = netns {
                            enter_netns(&ns)?;
                        }
                        let progress = Progress {
                            cancel,
                            ..Progress::default()
                        };
                        Ok(Some(lair_load::run_with(cfg, &progress, |_| {})?))
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .map_err(|_| anyhow::anyhow!("client thread panicked"))?
                })
                .collect()
        })
    }

    fn run(&self) -> anyhow::Result<Vec<Row>> {
        let ip = match self.netns {
            Some(n) => std::net::IpAddr::V4(n.server_ip),
            None => std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
        };
        let addr = std::net::SocketAddr::new(ip, free_port(ip)?);
        let place = Place {
            root: &self.p.fileset.root,
            addr,
            cpu: self.cpus.server,
            work: self.work,
            lair: &self.opts.lair,
        };
        // Warm what must be warm before the server starts (reads by the lab, not charged to
        // the server's cgroup).
        let cold = self.env.cache == Cache::Cold;
        for (g, files) in self.p.files.iter().enumerate() {
            if !cold || self.p.groups[g].warm {
                fileset::warm_cache(files)?;
            }
        }
        let server = servers::start(self.server, &place)?;
        if let Some(t) = self.throttle {
            t.add(server.pid)?;
        }
        if let Some(m) = self.memory {
            m.add(server.pid)?;
        }
        if !self.x.warmup.is_zero() {
            self.load(addr, true, cold)?;
        }
        let mut cached = Vec::new();
        for (g, files) in self.p.files.iter().enumerate() {
            let r = if cold && !self.p.groups[g].warm {
                fileset::drop_cache(files)?
            } else {
                fileset::residency(files)?
            };
            cached.push(r.fraction());
        }
        if let (true, Some(d)) = (cold, self.device) {
            d.drop_metadata()?;
        }
        let before = crate::proc::sample(server.pid).context("server vanished before the run")?;
        let reads_before = self.throttle.map(Throttle::reads);
        let device_before = self.device.map(EmulatedDisk::counts);
        let client_before = own_cpu_s();
        let pgpgin_before = crate::proc::disk_read_kib();
        let sampling = std::sync::atomic::AtomicBool::new(true);
        let (reports, sendq) = std::thread::scope(|s| {
            let sampler = s.spawn(|| {
                let _ = lair_io::setup::pin_current_thread(self.cpus.client);
                crate::proc::SendQueues::sample_while(addr.port(), &sampling)
            });
            let reports = self.load(addr, false, false);
            sampling.store(false, Ordering::Relaxed);
            (reports, sampler.join().unwrap_or_default())
        });
        let reports = reports?;
        let client_cpu_s = own_cpu_s() - client_before;
        let disk_read_kib = crate::proc::disk_read_kib()
            .zip(pgpgin_before)
            .map(|(a, b)| a.saturating_sub(b));
        let after = crate::proc::sample(server.pid)
            .with_context(|| format!("server died during the run: {}", server.log()))?;
        let disk_reads = self
            .throttle
            .map(Throttle::reads)
            .zip(reads_before)
            .map(|(a, b)| a.saturating_sub(b));
        let device = self
            .device
            .map(EmulatedDisk::counts)
            .zip(device_before)
            .map(|(a, b)| a.since(&b));
        let disk_reads = disk_reads.or(device.map(|d| d.reads));
        let disk_depth = device.and_then(|d| d.mean_depth());
        let engine = server.stop();
        let d = after.since(&before);
        let all_requests: u64 = reports.iter().flatten().map(|r| r.requests).sum();
        let mut rows = Vec::new();
        for (g, r) in reports.into_iter().enumerate() {
            let Some(r) = r else { continue };
            let kinds: std::collections::BTreeMap<String, u64> =
                serde_json::from_value(serde_json::to_value(&r.errors)?)?;
            rows.push(Row {
                server: self.server.name.clone(),
                workload: self.p.name.clone(),
                environment: self.env.name.clone(),
                clients: self.clients,
                rep: self.rep,
                group: self.p.groups[g].name.clone(),
                connections: r.connections,
                requests: r.requests,
                requests_per_s: r.requests_per_s,
                mb_per_s: r.mb_per_s,
                elapsed_s: r.elapsed_s,
                p50_us: r.latency.p50_us,
                p90_us: r.latency.p90_us,
                p99_us: r.latency.p99_us,
                p999_us: r.latency.p999_us,
                max_us: r.latency.max_us,
                mean_us: r.latency.mean_us,
                errors: r.errors.total(),
                error_kinds: kinds.into_iter().filter(|(_, v)| *v > 0).collect(),
                status: r.status.clone(),
                server_user_s: d.user_s,
                server_system_s: d.system_s,
                server_cpu_us_per_req: (d.user_s + d.system_s) * 1e6 / all_requests.max(1) as f64,
                server_voluntary_cs: d.voluntary_cs,
                server_involuntary_cs: d.involuntary_cs,
                server_rss_kib: d.rss_kib,
                client_cpu_s,
                cached_at_start: cached[g],
                disk_reads,
                disk_depth,
                disk_read_kib,
                sendq_mean_kib: sendq.mean_kib(),
                sendq_max_kib: sendq.max_kib(),
                sendq_conns: sendq.mean_conns(),
                notsent_kib: sendq.notsent_kib(),
                rtt_ms: sendq.rtt_ms(),
                bdp_kib: sendq.bdp_kib().0,
                bdp_min_kib: sendq.bdp_kib().1,
                engine: engine.clone(),
            });
        }
        Ok(rows)
    }
}

/// Move this thread (and threads it spawns later) into a network namespace.
fn enter_netns(name: &str) -> anyhow::Result<()> {
    let f = std::fs::File::open(format!("/var/run/netns/{name}"))
        .with_context(|| format!("opening netns {name}"))?;
    rustix::thread::move_into_link_name_space(
        std::os::fd::AsFd::as_fd(&f),
        Some(rustix::thread::LinkNameSpaceType::Network),
    )
    .with_context(|| format!("entering netns {name}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn stamps() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(807_249_601);
        assert_eq!(stamp(t), "19950801T040001Z");
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(951_822_000);
        assert_eq!(stamp(t), "20000229T110000Z");
    }
}
