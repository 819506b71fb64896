//! The schema of a run's results (`results.json`): what was measured, per row, and where.
//!
//! Its own module so that reading results ([`crate::report`]) does not depend on making them
//! ([`crate::run`]).

use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::experiment::Experiment;
use crate::fileset::Fileset;

/// One measured client group of one run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Row {
    /// Server name.
    pub server: String,
    /// Workload name.
    pub workload: String,
    /// Environment name.
    pub environment: String,
    /// The run's `clients` value.
    pub clients: usize,
    /// Repetition, from 0.
    pub rep: usize,
    /// Client group.
    pub group: String,
    /// Connections of this group.
    pub connections: usize,
    /// Responses completed.
    pub requests: u64,
    /// Responses per second.
    pub requests_per_s: f64,
    /// MB/s received.
    pub mb_per_s: f64,
    /// Seconds measured.
    pub elapsed_s: f64,
    /// Latency percentiles, µs.
    pub p50_us: u64,
    /// 90th.
    pub p90_us: u64,
    /// 99th.
    pub p99_us: u64,
    /// 99.9th.
    pub p999_us: u64,
    /// Slowest.
    pub max_us: u64,
    /// Mean, µs.
    #[serde(default)]
    pub mean_us: f64,
    /// Failures (all kinds).
    pub errors: u64,
    /// Failures by kind.
    pub error_kinds: std::collections::BTreeMap<String, u64>,
    /// Responses by status code.
    pub status: std::collections::BTreeMap<u16, u64>,
    /// Server CPU during the run (all groups), user seconds.
    pub server_user_s: f64,
    /// System seconds.
    pub server_system_s: f64,
    /// Server CPU per response of all groups, µs.
    pub server_cpu_us_per_req: f64,
    /// Server voluntary context switches during the run.
    pub server_voluntary_cs: u64,
    /// Involuntary.
    pub server_involuntary_cs: u64,
    /// Server resident memory at the end, KiB.
    pub server_rss_kib: u64,
    /// Client CPU during the run (this process, all groups), seconds.
    pub client_cpu_s: f64,
    /// Share of this group's files in the page cache when the run started.
    pub cached_at_start: f64,
    /// Reads the slow disk counted during the run (its cgroup's counter, or the emulated
    /// device's).
    pub disk_reads: Option<u64>,
    /// Emulated device only: the mean number of reads in the device when one arrived — how
    /// much I/O the server kept in flight.
    #[serde(default)]
    pub disk_depth: Option<f64>,
    /// KiB read from block devices during the run, the whole machine's (`pgpgin` of
    /// `/proc/vmstat`; the lab itself reads nothing from disk while a run goes).
    #[serde(default)]
    pub disk_read_kib: Option<u64>,
    /// The server's sockets' send queues (bytes sent but not acknowledged, or not sent yet:
    /// `ss -tin`'s Send-Q, or `tx_queue` of `/proc/net/tcp` without `ss`), summed over its
    /// connections, sampled every 200 ms: the mean and the largest sum, KiB, and the mean
    /// connections counted.
    #[serde(default)]
    pub sendq_mean_kib: Option<f64>,
    /// Largest summed send queue, KiB.
    #[serde(default)]
    pub sendq_max_kib: Option<f64>,
    /// Connections the send-queue samples counted, on average.
    #[serde(default)]
    pub sendq_conns: Option<f64>,
    /// Of a connection's send queue, the bytes not yet sent (what `TCP_NOTSENT_LOWAT`
    /// bounds), KiB, on average (`ss -tin`'s `notsent`).
    #[serde(default)]
    pub notsent_kib: Option<f64>,
    /// A connection's smoothed RTT, ms, on average.
    #[serde(default)]
    pub rtt_ms: Option<f64>,
    /// A connection's bandwidth-delay product, KiB: its delivery rate × its smoothed RTT, on
    /// average.
    #[serde(default)]
    pub bdp_kib: Option<f64>,
    /// The same with its minimum RTT (the path without the queues), KiB.
    #[serde(default)]
    pub bdp_min_kib: Option<f64>,
    /// lair's engine counters and HTTP statistics.
    pub engine: Option<serde_json::Value>,
}

/// The host a run was made on.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Host {
    /// `uname -r`.
    pub kernel: String,
    /// CPUs this process may use.
    pub cpus: usize,
    /// Peer versions.
    pub peers: Vec<String>,
}

/// Everything a run of an experiment produced (`results.json`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Results {
    /// The experiment as run (after `--quick` and `--set`).
    pub experiment: Experiment,
    /// Whether `--quick`.
    pub quick: bool,
    /// UTC start, `YYYYMMDDTHHMMSSZ`.
    pub started: String,
    /// Seconds it took.
    pub took_s: f64,
    /// The machine.
    pub host: Host,
    /// Filesets used, by workload.
    pub filesets: std::collections::BTreeMap<String, Fileset>,
    /// Measurements.
    pub rows: Vec<Row>,
    /// Things a reader must know (validation failures, skipped parts, interruptions).
    pub notes: Vec<String>,
}

/// `YYYYMMDDTHHMMSSZ` for a time.
pub fn stamp(t: SystemTime) -> String {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}
