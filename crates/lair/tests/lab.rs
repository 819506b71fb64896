//! `lair lab` end to end: the experiments' --quick variants against real servers, and the
//! access-log importer feeding a trace experiment.

#[path = "support/skip.rs"]
mod support;

use std::path::Path;
use std::process::Command;

/// Where the lab writes filesets: shared by the tests, so each is made once.
const LAB_DATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../target/lab-data");

fn lair() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_lair"));
    // Experiments are found relative to the repository root.
    c.current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."));
    c
}

fn installed(prog: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {prog}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Run `lair lab run ARGS --quick --out OUT`; the results directory and results.json.
fn run(out: &Path, args: &[&str]) -> (std::path::PathBuf, serde_json::Value) {
    let o = lair()
        .args(["lab", "run"])
        .args(args)
        .arg("--quick")
        .arg("--out")
        .arg(out)
        .args(["--data", LAB_DATA])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "lab run {args:?} failed: {stderr}");
    let dir = std::path::PathBuf::from(String::from_utf8_lossy(&o.stdout).trim());
    let json = std::fs::read_to_string(dir.join("results.json")).unwrap();
    (dir, serde_json::from_str(&json).unwrap())
}

fn check_outputs(dir: &Path, j: &serde_json::Value, rows: usize) {
    let r = j["rows"].as_array().unwrap();
    assert_eq!(r.len(), rows, "{j:#}");
    for row in r {
        assert_eq!(row["errors"], 0, "validation failed: {row:#}");
        assert!(row["requests"].as_u64().unwrap() > 0, "{row:#}");
        // CPU time is counted in 10 ms ticks: a short run may show none.
        if row["requests"].as_u64().unwrap() >= 20_000 {
            let user = row["server_user_s"].as_f64().unwrap();
            assert!(
                user + row["server_system_s"].as_f64().unwrap() > 0.0,
                "{row:#}"
            );
        }
    }
    let csv = std::fs::read_to_string(dir.join("results.csv")).unwrap();
    assert_eq!(csv.lines().count(), rows + 1);
    let md = std::fs::read_to_string(dir.join("summary.md")).unwrap();
    assert!(md.contains("| clients | server | req/s"), "{md}");
    let plots: Vec<_> = std::fs::read_dir(dir.join("plots"))
        .unwrap()
        .flatten()
        .collect();
    assert!(!plots.is_empty());
    for p in plots {
        let svg = std::fs::read_to_string(p.path()).unwrap();
        assert!(
            svg.starts_with("<svg") && svg.contains("</svg>"),
            "{}",
            p.path().display()
        );
    }
    // `lair lab report` rebuilds the same summary from results.json.
    std::fs::remove_file(dir.join("summary.md")).unwrap();
    let o = lair().args(["lab", "report"]).arg(dir).output().unwrap();
    assert!(o.status.success());
    assert_eq!(std::fs::read_to_string(dir.join("summary.md")).unwrap(), md);
}

#[test]
fn peers_quick_validates_every_response() {
    let out = tempfile::tempdir_in(concat!(env!("CARGO_MANIFEST_DIR"), "/../../target")).unwrap();
    let mut servers = vec!["lair-sync", "lair-lazy"];
    for (prog, names) in [
        ("nginx", ["nginx", "nginx-aio"].as_slice()),
        ("lighttpd", &["lighttpd"]),
    ] {
        if installed(prog) {
            servers.extend_from_slice(names);
        } else {
            support::skipped(
                &format!("peers_quick with {prog}"),
                "not installed (scripts/test.sh installs it)",
            );
        }
    }
    let list = servers.join(",");
    // A relative --out (resolved against the lab's working directory): peers resolve relative
    // config paths against their own prefix, so the lab must hand them absolute ones.
    let repo = std::fs::canonicalize(concat!(env!("CARGO_MANIFEST_DIR"), "/../..")).unwrap();
    let abs = std::fs::canonicalize(out.path()).unwrap();
    let rel = abs.strip_prefix(&repo).unwrap().to_path_buf();
    assert!(rel.is_relative());
    let (dir, j) = run(&rel, &["peers", "--servers", &list]);
    // Four workloads × one client count × the servers.
    check_outputs(&dir, &j, 4 * servers.len());
}

const LOG_LINE: &str = "h - - [01/Aug/1995:00:00:{s:02} -0400] \"GET /{p} HTTP/1.0\" 200 {b}\n";

/// Write an access log of 600 requests over 40 files under directories `{dir}0..2` (and one
/// malformed line) into `tmp` and `lair lab import` it; the trace folder and the importer's
/// standard error.
fn import_trace(tmp: &Path, dir: &str) -> (std::path::PathBuf, String) {
    let mut log = String::new();
    for i in 0..600u32 {
        let p = format!("{dir}{}/f{}.html", i % 3, (i * 7) % 40);
        let b = 100 + (i * 7) % 40 * 997;
        log.push_str(
            &LOG_LINE
                .replace("{s:02}", &format!("{:02}", i / 20))
                .replace("{p}", &p)
                .replace("{b}", &b.to_string()),
        );
    }
    log.push_str("garbage line\n");
    std::fs::write(tmp.join("access.log"), log).unwrap();
    let trace = tmp.join("trace");
    let o = lair()
        .args(["lab", "import"])
        .arg(tmp.join("access.log"))
        .arg(&trace)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(o.status.success(), "{stderr}");
    (trace, stderr)
}

#[test]
fn imported_log_replays_through_the_trace_experiment() {
    let tmp = tempfile::tempdir().unwrap();
    let (trace, stderr) = import_trace(tmp.path(), "d");
    assert!(stderr.contains("malformed 1"));
    assert_eq!(
        std::fs::read_to_string(trace.join("trace.tsv"))
            .unwrap()
            .lines()
            .count(),
        600
    );

    let set = format!("trace={}", trace.display());
    let (dir, j) = run(
        tmp.path(),
        &["nasa", "--set", &set, "--servers", "lair-sync,lair-lazy"],
    );
    // Two servers × warm and cold; a pass over all 600 requests each.
    check_outputs(&dir, &j, 4);
    for row in j["rows"].as_array().unwrap() {
        assert_eq!(row["requests"], 600);
        if row["environment"] == "cold" {
            assert!(row["cached_at_start"].as_f64().unwrap() < 0.05, "{row:#}");
        }
    }
}

#[test]
fn hol_quick_throttles_the_disk_when_it_can() {
    const NAME: &str = "hol_quick_throttles_the_disk_when_it_can";
    if let Err(why) = lair_lab::env::detect_cgroup() {
        return support::skipped(NAME, &why.to_string());
    }
    if rustix::process::geteuid().as_raw() != 0 {
        return support::skipped(NAME, "the slow disk needs root");
    }
    let out = tempfile::tempdir().unwrap();
    let (dir, j) = run(out.path(), &["hol", "--servers", "lair-lazy"]);
    // hot-alone: one group; hol: hot and cold.
    check_outputs(&dir, &j, 3);
    let rows = j["rows"].as_array().unwrap();
    let cold = rows.iter().find(|r| r["group"] == "cold").unwrap();
    assert!(cold["disk_reads"].as_u64().unwrap() > 0, "{cold:#}");
    assert!(cold["cached_at_start"].as_f64().unwrap() < 0.05, "{cold:#}");
    // No cgroup or namespace of ours is left behind.
    assert!(!std::fs::read_dir("/sys/fs/cgroup/blkio")
        .map(|d| d
            .flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with("lair-lab-")))
        .unwrap_or(false));
}

#[test]
fn laio_quick_runs_every_new_backend() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, j) = run(tmp.path(), &["laio"]);
    // Four backends × one client count × one pass of 1,500 requests.
    check_outputs(&dir, &j, 4);
    let mut seen = Vec::new();
    for row in j["rows"].as_array().unwrap() {
        assert_eq!(row["requests"], 1500, "{row:#}");
        // The server's own counters name the backend that really ran (uring falls back to
        // lazy where io_uring is unavailable, and says so).
        let backend = row["engine"]["engine"]["backend"]
            .as_str()
            .unwrap_or_default();
        seen.push((
            row["server"].as_str().unwrap().to_string(),
            backend.to_string(),
        ));
    }
    for (server, backend) in &seen {
        let want = server.trim_start_matches("lair-");
        assert!(
            backend == want || (want == "uring" && backend == "lazy"),
            "{server} ran backend {backend:?}"
        );
    }
}

#[test]
fn micro_benchmarks_print_tables_and_json() {
    let o = lair()
        .args([
            "micro",
            "getpid",
            "--calls",
            "2000",
            "--threads",
            "1,4",
            "--reps",
            "1",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&o.stdout).unwrap();
    // direct + 5 backends × 2 pool sizes.
    assert_eq!(rows.len(), 11);
    for r in &rows {
        assert_eq!(r["ops"], 2000, "{r}");
        let helper = r["helper_ops"].as_u64().unwrap();
        match r["way"].as_str().unwrap() {
            "eager" | "hybrid" => assert_eq!(helper, 2000, "{r}"),
            _ => assert_eq!(helper, 0, "{r}"),
        }
    }

    // open-stat-read over a small imported trace folder, warm only (cold needs root for the
    // dentry cache; the library's tests cover the cache control).
    let tmp = tempfile::tempdir().unwrap();
    let mut files = String::new();
    let mut trace = String::new();
    for i in 0..30u32 {
        files.push_str(&format!("/f{i}\t{}\n", 1000 + i * 5000));
        trace.push_str(&format!("{}\t/f{}\t{}\n", i, i % 30, 1000 + i * 5000));
    }
    std::fs::write(tmp.path().join("files.tsv"), files).unwrap();
    std::fs::write(tmp.path().join("trace.tsv"), trace).unwrap();
    let o = lair()
        .args([
            "micro",
            "open-stat-read",
            "--cache",
            "warm",
            "--threads",
            "2",
        ])
        .args(["--reps", "1", "--trace"])
        .arg(tmp.path())
        .arg("--data")
        .arg(tmp.path().join("data"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let table = String::from_utf8_lossy(&o.stdout);
    for way in ["threads", "sync", "lazy", "eager", "hybrid", "uring"] {
        let line = table
            .lines()
            .find(|l| l.contains(&format!("| {way} | 2 |")))
            .unwrap_or_else(|| panic!("no {way} row in {table}"));
        assert!(line.starts_with("| open-stat-read | warm |"), "{line}");
        assert!(line.contains("| 30 |"), "{line}");
    }
}

#[test]
fn slow_quick_shapes_the_link_and_paces_readers() {
    if !rustix::process::geteuid().is_root() || !installed("ip") {
        return support::skipped(
            "slow_quick_shapes_the_link_and_paces_readers",
            "the slow-link environment needs root and iproute2 (network namespaces)",
        );
    }
    let tmp = tempfile::tempdir().unwrap();
    let (dir, j) = run(tmp.path(), &["slow"]);
    // One server × one client count × two environments.
    check_outputs(&dir, &j, 2);
    for row in j["rows"].as_array().unwrap() {
        // 10 clients, 1 MiB each, for about a second: a 200 Mbit/s link carries at most
        // ~25 responses a second and 2 MiB/s readers ~20; unshaped loopback would carry
        // thousands.
        let rate = row["requests_per_s"].as_f64().unwrap();
        assert!(
            rate < 60.0,
            "{}: {rate} req/s is not slow: {row:#}",
            row["environment"]
        );
    }
    // Nothing the environment made is left behind.
    let ns = Command::new("ip").args(["netns", "list"]).output().unwrap();
    assert!(
        !String::from_utf8_lossy(&ns.stdout).contains("lair-lab"),
        "a lab namespace outlived the run"
    );
}

/// The event-correlation experiment's quick variant: distinct cold files read by a server
/// held to 256 MiB of memory, paced readers; every row says what it read from the disk, what
/// its sockets queued, and (for lair) what the pair table did.
#[test]
fn ecem_quick_reads_cold_files_and_samples_send_queues() {
    const NAME: &str = "ecem_quick_reads_cold_files_and_samples_send_queues";
    if !rustix::process::geteuid().is_root() {
        return support::skipped(NAME, "the memory cgroup and cold caches need root");
    }
    let tmp = tempfile::tempdir().unwrap();
    let (dir, j) = run(tmp.path(), &["ecem"]);
    // Four servers × one client count × one environment.
    check_outputs(&dir, &j, 4);
    for row in j["rows"].as_array().unwrap() {
        let what = row["server"].as_str().unwrap();
        assert_eq!(row["requests"], 20, "{what}: {row:#}");
        assert_eq!(row["cached_at_start"], 0.0, "{what}: not cold: {row:#}");
        // 20 distinct 1 MiB files, each read from the disk once at least.
        let read = row["disk_read_kib"].as_u64().unwrap();
        assert!(
            read >= 20 * 1024,
            "{what}: {read} KiB read from disk: {row:#}"
        );
        assert!(
            row["sendq_conns"].as_f64().unwrap() > 0.0,
            "{what}: {row:#}"
        );
        assert!(row["mean_us"].as_f64().unwrap() > 0.0, "{what}: {row:#}");
        let ecem = &row["engine"]["engine"]["ecem"];
        if what != "lair-lazy" {
            assert!(
                ecem["pairs_added"].as_u64().unwrap() >= 20,
                "{what}: {ecem}"
            );
        }
    }
    let left = std::fs::read_dir("/sys/fs/cgroup/memory")
        .map(|d| {
            d.flatten()
                .any(|e| e.file_name().to_string_lossy().starts_with("lair-lab-mem"))
        })
        .unwrap_or(false);
    assert!(!left, "a lab memory cgroup outlived the run");
}

/// Every data-passing mode answers every request (the lab validates each body) over loopback
/// and over a veth pair, and each mode's own counters say it ran as itself.
#[test]
fn datapass_quick_runs_every_mode_on_loopback_and_veth() {
    const NAME: &str = "datapass_quick_runs_every_mode_on_loopback_and_veth";
    if !rustix::process::geteuid().is_root() {
        return support::skipped(NAME, "the veth link into a namespace needs root");
    }
    let tmp = tempfile::tempdir().unwrap();
    let (dir, j) = run(tmp.path(), &["datapass"]);
    // Seven servers × two sizes × one client count × two environments.
    check_outputs(&dir, &j, 28);
    for row in j["rows"].as_array().unwrap() {
        let what = format!(
            "{} {} {}",
            row["server"].as_str().unwrap(),
            row["workload"].as_str().unwrap(),
            row["environment"].as_str().unwrap()
        );
        let stats = &row["engine"];
        let d = &stats["datapath"];
        let n = |v: &serde_json::Value, k: &str| v[k].as_u64().unwrap_or(0);
        match row["server"].as_str().unwrap() {
            "lair-share" => assert!(n(d, "maps_made") > 0, "{what}: {d}"),
            "lair-splice" => assert!(n(d, "pipes_made") > 0, "{what}: {d}"),
            "lair-move" => assert!(n(d, "moves") > 0, "{what}: {d}"),
            "lair-emulated" => {
                let z = &stats["engine"]["zerocopy"];
                assert!(n(z, "sends") > 0, "{what}: {z}");
                assert!(n(z, "completed") <= n(z, "sends"), "{what}: {z}");
            }
            "lair-cache" => assert!(
                n(&stats["http"], "file_cache_bytes") > 0,
                "{what}: the bodies were not kept: {}",
                stats["http"]
            ),
            _ => {}
        }
    }
}

#[test]
fn an_experiment_on_the_emulated_disk_counts_its_reads_and_unmounts() {
    if let Some(why) = lair_lab::disk::why_unavailable() {
        return support::skipped(
            "an_experiment_on_the_emulated_disk_counts_its_reads_and_unmounts",
            &why,
        );
    }
    let tmp = tempfile::tempdir().unwrap();
    let x = tmp.path().join("disk.toml");
    std::fs::write(
        &x,
        r#"
name = "disk"
description = "a cold pass from the emulated disk"
repetitions = 1
duration = "5s"
warmup = "0s"
clients = [8]
servers = ["lair-sync", "lair-lazy"]

[[workload]]
name = "few"
spec = { kind = "uniform", files = 60, bytes = 20000 }
replay = "pass"
requests = 120

[[environment]]
name = "cold-2ms"
cache = "cold"
device = { latency = "2ms", channels = 4 }
"#,
    )
    .unwrap();
    let (dir, j) = run(tmp.path(), &[x.to_str().unwrap()]);
    check_outputs(&dir, &j, 2);
    let depth = |server: &str| {
        let row = j["rows"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["server"] == server)
            .unwrap()
            .clone();
        assert!(row["cached_at_start"].as_f64().unwrap() < 0.05, "{row:#}");
        assert!(row["disk_reads"].as_u64().unwrap() >= 50, "{row:#}");
        row["disk_depth"].as_f64().unwrap()
    };
    // sync waits for each read on its loop; lazy keeps several in the disk at once.
    let (sync, lazy) = (depth("lair-sync"), depth("lair-lazy"));
    assert!(sync < 1.5, "sync kept {sync} reads in the disk");
    assert!(lazy > 2.0, "lazy kept only {lazy} reads in the disk");
    // The mount over the fileset is gone.
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains("lair-lab-disk"), "{mounts}");
}

#[test]
fn soak_quick_passes_and_samples_every_second() {
    // A trace of its own (CI has no ../shared/traces): 40 files in 600 requests.
    let tmp = tempfile::tempdir().unwrap();
    let (trace, _) = import_trace(tmp.path(), "s");
    let o = lair()
        .args(["lab", "run", "soak", "--quick", "--set"])
        .arg(format!("trace={}", trace.display()))
        .arg("--out")
        .arg(tmp.path())
        .args(["--data", LAB_DATA])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    let dir = std::path::PathBuf::from(String::from_utf8_lossy(&o.stdout).trim());
    let summary = std::fs::read_to_string(dir.join("summary.md")).unwrap_or_default();
    assert!(o.status.success(), "soak failed: {stderr}\n{summary}");
    let j: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("soak.json")).unwrap()).unwrap();
    let run = &j["runs"][0];
    assert_eq!(run["server"], "lair-lazy");
    assert!(run["failures"].as_array().unwrap().is_empty(), "{run:#}");
    // Every phase ran, and the sampler read the server about once a second throughout.
    let phases: Vec<&str> = run["phases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p[0].as_str().unwrap())
        .collect();
    for p in [
        "warm-up",
        "warm-up flood",
        "mixed",
        "flood",
        "pipelined",
        "settle",
    ] {
        assert!(phases.contains(&p), "{phases:?}");
    }
    let took = run["took_s"].as_f64().unwrap();
    let samples = run["samples"].as_array().unwrap();
    assert!(
        samples.len() as f64 >= took * 0.8,
        "{} samples in {took} s",
        samples.len()
    );
    assert!(samples
        .iter()
        .any(|s| s["connections"].as_u64() >= Some(1500)));
    // The load really ran: the pipelined phase's 20,000, every churn kind, idle connections.
    let count = |comp: &str, kind: &str| {
        run["outcomes"][comp]
            .as_array()
            .unwrap()
            .iter()
            .find(|o| o["kind"] == kind)
            .map_or(0, |o| o["count"].as_u64().unwrap())
    };
    assert!(count("pipeline", "ok") >= 20_000);
    for kind in ["rewrite", "truncate", "rename"] {
        assert!(count("changes", kind) > 0, "{kind}");
    }
    assert!(count("churn", "ok") > 0 && count("idle", "answered") > 0);
    assert_eq!(run["flood_held"], 1500);
    for f in ["samples.csv", "summary.md", "soak-lair-lazy.svg"] {
        assert!(dir.join(f).is_file(), "{f}");
    }
}
