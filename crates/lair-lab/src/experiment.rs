//! Experiment files: what to run, declared in TOML under `experiments/`.
//!
//! ```toml
//! name = "peers"
//! description = "lair vs nginx vs lighttpd on fixed sizes and the SPECweb99 mix"
//! repetitions = 3
//! duration = "5s"          # per run, closed loop (a group with `replay = "pass"` runs one pass)
//! warmup = "1s"
//! clients = [10, 100, 1000]
//! servers = ["lair-sync", "lair-lazy", "nginx", "nginx-aio", "lighttpd"]
//!
//! [params]                 # ${name} in any string below; `--set name=value` overrides
//! trace = "../shared/traces/nasa-19950801"
//!
//! [[workload]]
//! name = "1k"
//! spec = { kind = "fixed", bytes = 1024 }
//!
//! [[workload]]             # several client groups at once, each measured on its own
//! name = "hol"
//! [[workload.group]]
//! name = "hot"
//! spec = { kind = "fixed", bytes = 1024 }
//! connections = 10         # default: the `clients` value of the run
//! warm = true              # in the page cache even in a cold environment
//! [[workload.group]]
//! name = "cold"
//! spec = { kind = "uniform", files = 20000, bytes = 16384 }
//! connections = 50
//!
//! [[environment]]
//! name = "cold-slow-disk"
//! cache = "cold"                       # or "warm" (the default)
//! disk = { read_iops = 200 }           # cgroup v1 blkio or v2 io.max
//! device = { latency = "5ms", channels = 8 }  # or an emulated disk (crate::disk)
//! net = { rate = "8mbit" }             # clients in a netns behind tbf (`net = {}`: unshaped)
//! client = { recv_rate = "20k", recv_buffer = "4k" }
//! memory = "256m"                      # the server's cgroup holds at most this (page cache)
//!
//! [quick]                  # replaces these top-level keys under --quick
//! repetitions = 1
//! duration = "1s"
//! clients = [10]
//! ```
//!
//! Servers are built-in names ([`crate::servers::builtin_names`]) or `[[server]]` tables
//! (`name`, `kind = "lair" | "nginx" | "lighttpd"`, and its options).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context as _};
use serde::{Deserialize, Serialize};

use crate::env::DiskLimit;
use crate::servers::ServerSpec;
use crate::workload::Spec;

/// How a group replays its requests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Replay {
    /// Closed loop over the request sequence, round and round, for the run's duration.
    #[default]
    Loop,
    /// Closed loop, one pass over the sequence (seed 001's method: "the program terminates
    /// when the trace file is exhausted").
    Pass,
}

/// One client group of a workload.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Group {
    /// Name in tables (default `all`).
    #[serde(default = "all")]
    pub name: String,
    /// What it requests.
    pub spec: Spec,
    /// Connections (default: the run's `clients`).
    #[serde(default)]
    pub connections: Option<usize>,
    /// Keep its files in the page cache even in a cold environment.
    #[serde(default)]
    pub warm: bool,
    /// How it replays.
    #[serde(default)]
    pub replay: Replay,
    /// At most this many requests per run (a pass over the first N).
    #[serde(default)]
    pub requests: Option<u64>,
}

fn all() -> String {
    "all".into()
}

/// A workload: one or several client groups over one docroot.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Workload {
    /// Name.
    pub name: String,
    /// Shorthand for a single group.
    #[serde(default)]
    pub spec: Option<Spec>,
    /// Replay of the single group.
    #[serde(default)]
    pub replay: Option<Replay>,
    /// Request cap of the single group.
    #[serde(default)]
    pub requests: Option<u64>,
    /// The groups.
    #[serde(default)]
    pub group: Vec<Group>,
}

impl Workload {
    /// The groups, with the single-group shorthand expanded.
    pub fn groups(&self) -> anyhow::Result<Vec<Group>> {
        match (&self.spec, self.group.is_empty()) {
            (Some(spec), true) => Ok(vec![Group {
                name: all(),
                spec: spec.clone(),
                connections: None,
                warm: false,
                replay: self.replay.unwrap_or_default(),
                requests: self.requests,
            }]),
            (None, false) => Ok(self.group.clone()),
            _ => bail!(
                "workload {}: give either `spec` or [[workload.group]] tables",
                self.name
            ),
        }
    }
}

/// Page cache state at the start of a run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Cache {
    /// Files read once before the run (and a warm-up load).
    #[default]
    Warm,
    /// Files dropped from the cache (fsync + fadvise DONTNEED), verified with cachestat.
    Cold,
}

/// Slow-client network.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Net {
    /// Server-to-client rate, tc syntax (`8mbit`); none: the veth link unshaped (clients in
    /// another namespace, where the kernel treats zero-copy sends differently from loopback).
    #[serde(default)]
    pub rate: Option<String>,
}

/// Slow-client reading.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientPace {
    /// Bytes per second per connection (`20k`).
    #[serde(default)]
    pub recv_rate: Option<String>,
    /// `SO_RCVBUF` (`4k`).
    #[serde(default)]
    pub recv_buffer: Option<String>,
}

/// An environment variant.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Environment {
    /// Name.
    pub name: String,
    /// Cache state.
    #[serde(default)]
    pub cache: Cache,
    /// Slow disk.
    #[serde(default)]
    pub disk: Option<DiskLimit>,
    /// An emulated disk under each fileset: reads take a fixed time on parallel channels
    /// (root; [`crate::disk`]).
    #[serde(default)]
    pub device: Option<crate::disk::DiskModel>,
    /// Slow network.
    #[serde(default)]
    pub net: Option<Net>,
    /// Slow reading.
    #[serde(default)]
    pub client: Option<ClientPace>,
    /// The most memory (page cache included) the server's cgroup may hold (`256m`), so a
    /// fileset larger than that cannot stay cached.
    #[serde(default)]
    pub memory: Option<String>,
}

/// Which CPU runs what.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cpus {
    /// The server's CPU.
    pub server: usize,
    /// The clients' CPU.
    pub client: usize,
}

/// A server entry: a built-in name or a table.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ServerEntry {
    /// Built-in name.
    Name(String),
    /// Custom.
    Spec(ServerSpec),
}

/// A parsed experiment.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Experiment {
    /// Name (results go to `results/NAME/`).
    pub name: String,
    /// One line on what it shows.
    #[serde(default)]
    pub description: String,
    /// Seed of the workload generators.
    #[serde(default = "one")]
    pub seed: u64,
    /// Repetitions of every run.
    #[serde(default = "one_usize")]
    pub repetitions: usize,
    /// Run length (closed loop).
    #[serde(with = "humantime_serde_lite")]
    pub duration: Duration,
    /// Warm-up load before each measured run (warm groups only).
    #[serde(with = "humantime_serde_lite", default = "one_second")]
    pub warmup: Duration,
    /// Client counts.
    pub clients: Vec<usize>,
    /// Client event-loop threads.
    #[serde(default = "one_usize")]
    pub client_threads: usize,
    /// Request timeout.
    #[serde(with = "humantime_serde_lite", default = "ten_seconds")]
    pub timeout: Duration,
    /// Servers.
    pub servers: Vec<ServerEntry>,
    /// Workloads.
    #[serde(rename = "workload")]
    pub workloads: Vec<Workload>,
    /// Environments (default: one warm environment).
    #[serde(rename = "environment", default)]
    pub environments: Vec<Environment>,
    /// CPUs (default: server 1, clients 0).
    #[serde(default)]
    pub cpus: Option<Cpus>,
    /// Values for `${name}`.
    #[serde(default)]
    pub params: BTreeMap<String, String>,
    /// A soak instead of a grid of runs (`crate::soak`): its phases and loads.
    #[serde(default)]
    pub soak: Option<crate::soak::SoakSpec>,
}

fn one() -> u64 {
    1
}
fn one_usize() -> usize {
    1
}
fn one_second() -> Duration {
    Duration::from_secs(1)
}
fn ten_seconds() -> Duration {
    Duration::from_secs(10)
}

/// `"5s"`, `"500ms"`, `"2m"` as a duration in experiment files.
pub(crate) mod humantime_serde_lite {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{}ms", d.as_millis()))
    }

    /// A string in the shared duration syntax, or a bare number of seconds (as in `lair
    /// serve`'s config files).
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Text {
            S(String),
            N(f64),
        }
        let s = match Text::deserialize(d)? {
            Text::S(s) => s,
            Text::N(n) => n.to_string(),
        };
        lair_conf::parse_duration(&s).map_err(serde::de::Error::custom)
    }
}

/// Replace `${name}` in every string of `v`.
fn substitute(v: &mut toml::Value, params: &BTreeMap<String, String>) -> anyhow::Result<()> {
    match v {
        toml::Value::String(s) => {
            while let Some(start) = s.find("${") {
                let end = start
                    + s[start..]
                        .find('}')
                        .with_context(|| format!("unclosed ${{ in {s:?}"))?;
                let key = &s[start + 2..end];
                let val = params.get(key).with_context(|| {
                    format!("${{{key}}} is not a parameter ([params] or --set)")
                })?;
                s.replace_range(start..=end, val);
            }
        }
        toml::Value::Array(a) => {
            for x in a {
                substitute(x, params)?;
            }
        }
        toml::Value::Table(t) => {
            for (_, x) in t.iter_mut() {
                substitute(x, params)?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// Parse an experiment's text: `quick` applies its `[quick]` table, `set` overrides
/// `[params]`.
pub fn parse(text: &str, quick: bool, set: &[(String, String)]) -> anyhow::Result<Experiment> {
    let mut v: toml::Table = toml::from_str(text).context("experiment file")?;
    let q = v.remove("quick");
    if quick {
        match q {
            Some(toml::Value::Table(q)) => {
                for (k, x) in q {
                    v.insert(k, x);
                }
            }
            Some(_) => bail!("[quick] must be a table"),
            None => {}
        }
    }
    let mut params: BTreeMap<String, String> = match v.get("params") {
        Some(p) => p
            .clone()
            .try_into()
            .context("[params] must map names to strings")?,
        None => BTreeMap::new(),
    };
    for (k, val) in set {
        params.insert(k.clone(), val.clone());
    }
    v.insert(
        "params".into(),
        toml::Value::try_from(&params).context("params")?,
    );
    let mut value = toml::Value::Table(v);
    substitute(&mut value, &params)?;
    let mut e: Experiment = value.try_into().context("experiment file")?;
    if e.environments.is_empty() {
        e.environments.push(Environment {
            name: "warm".into(),
            ..Environment::default()
        });
    }
    e.validate()?;
    Ok(e)
}

impl Experiment {
    fn validate(&self) -> anyhow::Result<()> {
        if self.clients.is_empty() || self.clients.contains(&0) {
            bail!("clients: give at least one positive count");
        }
        if self.repetitions == 0 {
            bail!("repetitions must be at least 1");
        }
        if self.workloads.is_empty() {
            bail!("no [[workload]]");
        }
        for w in &self.workloads {
            w.groups()?;
        }
        self.server_specs()?;
        Ok(())
    }

    /// The servers, resolved.
    pub fn server_specs(&self) -> anyhow::Result<Vec<ServerSpec>> {
        self.servers
            .iter()
            .map(|s| match s {
                ServerEntry::Name(n) => crate::servers::builtin(n).with_context(|| {
                    format!(
                        "unknown server {n:?}; built in: {}",
                        crate::servers::builtin_names().join(", ")
                    )
                }),
                ServerEntry::Spec(s) => Ok(s.clone()),
            })
            .collect()
    }
}

/// Experiment files in `dir` (`*.toml`), sorted.
pub fn list(dir: &Path) -> anyhow::Result<Vec<(PathBuf, Experiment)>> {
    let mut out = Vec::new();
    let entries = std::fs::read_dir(dir)
        .with_context(|| format!("reading experiments in {}", dir.display()))?;
    for e in entries.flatten() {
        let p = e.path();
        if p.extension().is_some_and(|x| x == "toml") {
            let text = std::fs::read_to_string(&p)?;
            let x = parse(&text, false, &[]).with_context(|| format!("{}", p.display()))?;
            out.push((p, x));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"
name = "t"
duration = "2s"
clients = [1, 10]
servers = ["lair-lazy", { name = "mine", kind = "lair", backend = "sync", args = ["--helpers", "4"] }]
[params]
trace = "/nowhere"
[[workload]]
name = "nasa"
spec = { kind = "trace", dir = "${trace}/x" }
replay = "pass"
[[workload]]
name = "hol"
[[workload.group]]
name = "hot"
spec = { kind = "fixed", bytes = 1024 }
connections = 10
warm = true
[[workload.group]]
name = "cold"
spec = { kind = "uniform", files = 10, bytes = 16384 }
[[environment]]
name = "cold"
cache = "cold"
disk = { read_iops = 200 }
[quick]
clients = [1]
duration = "300ms"
"#;

    #[test]
    fn parses_quick_and_params() {
        let e = parse(TEXT, false, &[]).unwrap();
        assert_eq!(e.clients, vec![1, 10]);
        assert_eq!(e.duration, Duration::from_secs(2));
        assert_eq!(e.server_specs().unwrap()[1].name, "mine");
        let g = e.workloads[0].groups().unwrap();
        assert_eq!(g[0].replay, Replay::Pass);
        assert_eq!(
            g[0].spec,
            Spec::Trace {
                dir: "/nowhere/x".into()
            }
        );
        assert_eq!(e.workloads[1].groups().unwrap()[0].connections, Some(10));
        assert_eq!(e.environments[0].disk.unwrap().read_iops, Some(200));

        let q = parse(TEXT, true, &[("trace".into(), "/t".into())]).unwrap();
        assert_eq!(q.clients, vec![1]);
        assert_eq!(q.duration, Duration::from_millis(300));
        assert_eq!(
            q.workloads[0].groups().unwrap()[0].spec,
            Spec::Trace { dir: "/t/x".into() }
        );
    }

    #[test]
    fn mistakes_are_reported() {
        for (bad, why) in [
            (TEXT.replace("clients = [1, 10]", "clients = []"), "clients"),
            (
                TEXT.replace("\"lair-lazy\"", "\"apache\""),
                "unknown server",
            ),
            (TEXT.replace("${trace}", "${nope}"), "nope"),
            (
                TEXT.replace("replay = \"pass\"", "replay = \"pass\"\ncolour = 1"),
                "colour",
            ),
        ] {
            let err = format!("{:#}", parse(&bad, false, &[]).unwrap_err());
            assert!(err.contains(why), "{why}: {err}");
        }
        assert_eq!(
            lair_conf::parse_duration("500ms").unwrap(),
            Duration::from_millis(500)
        );
        assert_eq!(
            lair_conf::parse_duration("2m").unwrap(),
            Duration::from_secs(120)
        );
        assert!(lair_conf::parse_duration("5d").is_err());
    }
}
