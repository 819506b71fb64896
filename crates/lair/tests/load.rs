//! `lair load` against the real `lair serve`: counts, validation, failures.

mod support;

use std::process::Command;

use support::{Opts, Site};

fn load(args: &[&str]) -> (Option<i32>, serde_json::Value) {
    let out = Command::new(env!("CARGO_BIN_EXE_lair"))
        .arg("load")
        .args(args)
        .arg("--json")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let json = serde_json::from_str(&text).unwrap_or(serde_json::Value::Null);
    (out.status.code(), json)
}

#[test]
fn counted_run_is_exact_and_validated() {
    let site = Site::new();
    let srv = Opts::new(&site.root, "lazy").start();
    let url = srv.url("/hello.txt");
    let (code, j) = load(&[
        &url,
        "-c",
        "8",
        "-t",
        "2",
        "-n",
        "500",
        "--path",
        "/digits.txt",
    ]);
    assert_eq!(code, Some(0), "{j}");
    assert_eq!(j["requests"], 500);
    assert_eq!(
        j["errors"]["connect"].as_u64().unwrap() + j["errors"]["status"].as_u64().unwrap(),
        0
    );
    assert_eq!(j["status"]["200"], 500);
    // Every response counted whole: 250 of each file's head + body.
    let bytes = j["bytes"].as_u64().unwrap();
    assert!(bytes > 250 * (13 + 100), "{bytes}");
    assert!(j["latency"]["p50_us"].as_u64().unwrap() > 0);
}

#[test]
fn wrong_statuses_are_counted_not_ignored() {
    let site = Site::new();
    let srv = Opts::new(&site.root, "sync").start();
    let (code, j) = load(&[&srv.url("/missing"), "-c", "2", "-n", "50"]);
    assert_eq!(code, Some(0));
    assert_eq!(j["status"]["404"], 50);
    assert_eq!(j["errors"]["status"], 50);
    let (_, j) = load(&[
        &srv.url("/hello.txt"),
        "-c",
        "2",
        "-n",
        "20",
        "--expect-status",
        "204",
    ]);
    assert_eq!(j["errors"]["status"], 20);
}

#[test]
fn timed_run_and_a_dead_target() {
    let site = Site::new();
    let srv = Opts::new(&site.root, "lazy").start();
    let (code, j) = load(&[&srv.url("/hello.txt"), "-c", "4", "-d", "300ms"]);
    assert_eq!(code, Some(0));
    assert!(j["requests"].as_u64().unwrap() > 0);
    assert_eq!(j["elapsed_s"], 0.3);
    let dead = srv.addr;
    drop(srv);
    // Nobody listens: connect errors, a clear failure, and no endless retrying.
    let (code, j) = load(&[&format!("http://{dead}/"), "-c", "2", "-n", "10"]);
    assert_eq!(code, Some(1));
    let failed =
        j["errors"]["refused"].as_u64().unwrap() + j["errors"]["connect"].as_u64().unwrap();
    assert!(failed >= 100, "{j}");
    // The open loop neither hangs nor retries: every arrival refused, once.
    let (code, j) = load(&[&format!("http://{dead}/"), "--rate", "2000", "-n", "500"]);
    assert_eq!(code, Some(1));
    assert_eq!(j["offered"], 500, "{j}");
    assert_eq!(j["errors"]["refused"], 500, "{j}");
}

#[test]
fn trace_replay_checks_sizes_and_skips_bad_lines() {
    let site = Site::new();
    let srv = Opts::new(&site.root, "lazy").start();
    let trace = site.dir.path().join("trace.tsv");
    std::fs::write(
        &trace,
        "0\t/hello.txt\t13\n10\t/digits.txt\t100\nnot a request\n20\t/digits.txt\t99\n30\t/docs/index.html\t14\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_lair"))
        .args([
            "load",
            &srv.url("/"),
            "--trace",
            trace.to_str().unwrap(),
            "-c",
            "2",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["requests"], 4, "one pass over the 4 good lines: {j}");
    assert_eq!(j["status"]["200"], 4);
    assert_eq!(
        j["errors"]["size"], 1,
        "the line that says 99 bytes for a 100-byte file"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("skipped 1 malformed"));
}

#[test]
fn open_loop_counts_every_arrival() {
    let site = Site::new();
    let srv = Opts::new(&site.root, "lazy").start();
    let (code, j) = load(&[
        &srv.url("/hello.txt"),
        "--rate",
        "1000",
        "-n",
        "300",
        "-t",
        "2",
    ]);
    assert_eq!(code, Some(0), "{j}");
    assert_eq!(j["mode"], "rate");
    assert_eq!(j["offered"], 300);
    assert_eq!(j["requests"], 300);
    assert_eq!(j["errors"]["timeout"], 0);
    assert!(j["max_open"].as_u64().unwrap() >= 1);

    // A sweep of two easy rates: both sustained, the peak is the higher one.
    let (code, j) = load(&[
        &srv.url("/hello.txt"),
        "--sweep",
        "100:200:100",
        "-d",
        "500ms",
    ]);
    assert_eq!(code, Some(0), "{j}");
    let steps = j["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 2, "{j}");
    assert!(steps.iter().all(|s| s["sustained"] == true), "{j}");
    assert_eq!(steps[1]["report"]["offered"], 100);
    assert_eq!(j["peak_rate"], 200.0);
}

#[test]
fn timed_replay_keeps_the_trace_order_and_clock() {
    let site = Site::new();
    let srv = Opts::new(&site.root, "sync").start();
    let trace = site.dir.path().join("timed.tsv");
    // 2 s of trace at speed 4: the last request is due 0.5 s after the first.
    std::fs::write(
        &trace,
        "0\t/hello.txt\t13\n1000\t/digits.txt\t100\n2000\t/hello.txt\t13\n",
    )
    .unwrap();
    let (code, j) = load(&[
        &srv.url("/"),
        "--trace",
        trace.to_str().unwrap(),
        "--speed",
        "4",
    ]);
    assert_eq!(code, Some(0), "{j}");
    assert_eq!(j["mode"], "timed");
    assert_eq!(
        (j["offered"].as_u64(), j["requests"].as_u64()),
        (Some(3), Some(3))
    );
    assert_eq!(j["errors"]["size"], 0);
    // A lower bound only (the schedule cannot be beaten), never an upper one.
    assert!(j["elapsed_s"].as_f64().unwrap() >= 0.5, "{j}");
}

#[test]
fn slow_clients_read_at_their_rate() {
    let site = Site::new();
    let srv = Opts::new(&site.root, "lazy").start();
    // 3 MiB at 6 MiB/s through a 4 KiB receive buffer: at least ~0.45 s per response (the
    // first read of a twentieth of a second's worth is free).
    let (code, j) = load(&[
        &srv.url("/big.bin"),
        "-c",
        "2",
        "-n",
        "2",
        "--recv-rate",
        "6m",
        "--recv-buffer",
        "4k",
        "--timeout",
        "30s",
    ]);
    assert_eq!(code, Some(0), "{j}");
    assert_eq!(j["status"]["200"], 2, "{j}");
    assert!(j["bytes"].as_u64().unwrap() >= 2 * (3 << 20));
    assert!(j["latency"]["p50_us"].as_u64().unwrap() >= 450_000, "{j}");
}

#[test]
fn slow_clients_pace_small_responses_too() {
    // Each response arrives in one read; the pace must hold across responses (it did not:
    // the last read of a response was never charged, so small files went at full speed).
    let site = Site::new();
    let srv = Opts::new(&site.root, "lazy").start();
    let (code, j) = load(&[
        &srv.url("/hello.txt"),
        "-c",
        "1",
        "-n",
        "20",
        "--recv-rate",
        "2k",
    ]);
    assert_eq!(code, Some(0), "{j}");
    let bytes = j["bytes"].as_f64().unwrap();
    let elapsed = j["elapsed_s"].as_f64().unwrap();
    assert!(bytes > 20.0 * 100.0, "{j}");
    // At 2,000 bytes/s less the first read's free budget; a lower bound only.
    assert!(
        elapsed >= (bytes - 1000.0) / 2000.0 * 0.9,
        "{elapsed} s for {bytes} bytes: {j}"
    );
}

#[test]
fn manifest_catches_wrong_content_of_the_right_length() {
    let site = Site::new();
    let srv = Opts::new(&site.root, "lazy").start();
    let manifest = site.dir.path().join("manifest.tsv");
    let m = lair_load::manifest::build(&site.root).unwrap();
    std::fs::write(&manifest, m.render()).unwrap();
    let args = |extra: &[&str]| {
        let mut v = vec![
            srv.url("/digits.txt"),
            "--path".into(),
            "/hello.txt".into(),
            "-c".into(),
            "2".into(),
            "-n".into(),
            "40".into(),
            "--manifest".into(),
            manifest.to_str().unwrap().into(),
        ];
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    let a = args(&[]);
    let (code, j) = load(&a.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(code, Some(0), "{j}");
    assert_eq!(j["errors"]["content"], 0, "{j}");
    // Same length, one byte different: only a content check can see it.
    let mut digits = std::fs::read(site.path("digits.txt")).unwrap();
    digits[50] ^= 1;
    std::fs::write(site.path("digits.txt"), digits).unwrap();
    // Past the server's 1 s open-file cache.
    std::thread::sleep(std::time::Duration::from_millis(1200));
    let (_, j) = load(&a.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(j["errors"]["content"], 20, "{j}");
    assert_eq!(j["errors"]["size"], 0, "{j}");
}
