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
    assert!(j["errors"]["connect"].as_u64().unwrap() >= 100, "{j}");
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
