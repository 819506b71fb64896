//! The core subset under every mode: each value of each mode setting (`support::MODES`) on
//! every backend — the basic answers, whole and partial bodies checked byte for byte, slow
//! readers checked against a manifest, and a client that vanishes mid-download. What each mode
//! promises of itself is asserted from the engine counters it writes (`--stats-json`).
//! (`./scripts/test.sh --matrix` runs the whole suite under every combination instead.)

mod support;

use std::io::Read;
use std::process::Command;

use support::{backends_for, pattern, Opts, Site, BACKENDS, MODES};

fn stats(path: &std::path::Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The readiness backends, where event correlation runs (`uring` says it does not).
fn correlates(backend: &str) -> bool {
    backend != "uring"
}

#[test]
fn core_answers_under_every_mode() {
    let site = Site::new();
    let big = pattern(3 << 20);
    for mode in MODES {
        for &b in backends_for(mode) {
            let what = format!("{b} {mode:?}");
            let srv = Opts::new(&site.root, b).args(mode.iter().copied()).start();
            let mut c = srv.connect();
            let r = c.get("/hello.txt");
            assert_eq!(
                (r.status, r.body.as_slice()),
                (200, &b"hello, world\n"[..]),
                "{what}"
            );
            let h = c.request("HEAD", "/big.bin", &[]);
            assert_eq!(h.status, 200, "{what}");
            assert!(h.body.is_empty(), "{what}");
            let r = c.get("/big.bin");
            assert_eq!(r.status, 200, "{what}");
            assert!(r.body == big, "{what}: the body differs from the file");
            let r = c.request("GET", "/big.bin", &[("Range", "bytes=1000000-2100000")]);
            assert_eq!(r.status, 206, "{what}");
            assert!(
                r.body == big[1_000_000..=2_100_000],
                "{what}: the range differs"
            );
            assert_eq!(c.get("/missing").status, 404, "{what}");
            drop(srv);
        }
    }
}

/// Slow readers downloading large files under `--ecem dns`: every byte arrives as the file
/// has it (lair load checks each body against the manifest), and no send goes past the room
/// it measured by more than a page.
#[test]
fn dns_sends_the_room_it_measured_to_slow_readers() {
    let site = Site::new();
    for i in 0..3 {
        let body: Vec<u8> = pattern(2 << 20).iter().map(|b| b ^ i).collect();
        std::fs::write(site.path(&format!("f{i}.bin")), body).unwrap();
    }
    let manifest = site.manifest();
    let trace = site.dir.path().join("trace.txt");
    std::fs::write(&trace, "/f0.bin\n/f1.bin\n/f2.bin\n/big.bin\n").unwrap();
    for b in BACKENDS {
        let json = site.dir.path().join(format!("dns-{b}.json"));
        let mut srv = Opts::new(&site.root, b)
            .events()
            .args(["--ecem", "dns", "--stats-json", json.to_str().unwrap()])
            .start();
        // 8 readers at 4 MB/s through 16 KiB receive buffers: the socket, not the disk or
        // the loop, sets the pace, so every send finds its room through the mark.
        let load = Command::new(env!("CARGO_BIN_EXE_lair"))
            .args(["load", &srv.url("/"), "--trace"])
            .arg(&trace)
            .args([
                "-c",
                "8",
                "-n",
                "16",
                "--recv-rate",
                "4m",
                "--recv-buffer",
                "16k",
            ])
            .args(["--timeout", "30s", "--json", "-q", "--manifest"])
            .arg(&manifest)
            .output()
            .unwrap();
        assert!(
            load.status.success(),
            "{b}: {}",
            String::from_utf8_lossy(&load.stderr)
        );
        let report: serde_json::Value = serde_json::from_slice(&load.stdout).unwrap();
        assert_eq!(report["requests"], 16, "{b}: {report}");
        for (kind, n) in report["errors"].as_object().unwrap() {
            assert_eq!(n, 0, "{b}: {kind} errors: {report}");
        }
        let lines = srv.stop().join("\n");
        let engine = &stats(&json)["engine"];
        if !correlates(b) {
            assert!(engine.get("ecem").is_none(), "{b}: {engine}");
            assert!(lines.contains("--ecem dns is not applied"), "{b}: {lines}");
            continue;
        }
        let e = &engine["ecem"];
        let n = |k: &str| e[k].as_u64().unwrap_or_else(|| panic!("{b}: no {k}: {e}"));
        // Sends made on the loop are counted with their bytes; `eager` and `hybrid` send
        // every window from a helper (sized the same way, so never past the room).
        assert!(n("dns_sends") + n("dns_to_helper") >= 16, "{b}: {e}");
        assert!(
            n("dns_over_room_max") <= 4096,
            "{b}: a send went past its room: {e}"
        );
        if n("dns_to_helper") == 0 {
            assert!(
                n("dns_bytes") >= 16 * (2 << 20) - (2 << 20),
                "{b}: the bodies went out another way: {e}"
            );
        }
        assert!(
            n("deferred") > 0,
            "{b}: slow readers never held a send: {e}"
        );
        assert!(n("prefetches") > 0, "{b}: {e}");
        assert_eq!(
            n("pairs_added"),
            n("pairs_removed"),
            "{b}: a pair outlived its socket: {e}"
        );
    }
}

/// A client that goes away in the middle of a large body frees what its download held: the
/// engine's pair, its zero-copy sends and, under `--model threads`, its thread — with three threads, three clients
/// vanish and a fourth is still served — and the server goes on serving.
#[test]
fn a_client_that_vanishes_mid_download_frees_its_pair_and_thread() {
    let site = Site::new();
    for mode in MODES {
        for &b in backends_for(mode).iter().filter(|b| correlates(b)) {
            let what = format!("{b} {mode:?}");
            let json = site.dir.path().join(format!("vanish-{b}.json"));
            let mut srv = Opts::new(&site.root, b)
                .args(mode.iter().copied())
                .args(["--threads", "3", "--stats-json", json.to_str().unwrap()])
                .start();
            for _ in 0..3 {
                let mut c = srv.connect();
                c.send(b"GET /big.bin HTTP/1.1\r\nHost: x\r\n\r\n");
                let mut got = vec![0u8; 200 << 10];
                c.stream.read_exact(&mut got).unwrap();
                // Gone, with most of the body unread: a reset for the server's next send.
                drop(c);
            }
            let mut c = srv.connect();
            let r = c.get("/hello.txt");
            assert_eq!(r.status, 200, "{what}");
            drop(c);
            srv.stop();
            let engine = &stats(&json)["engine"];
            if let Some(e) = engine.get("ecem") {
                assert_eq!(
                    e["pairs_added"], e["pairs_removed"],
                    "{what}: a pair outlived its connection: {e}"
                );
            }
            // Zero-copy sends of a vanished client are notified as its send queue is purged:
            // none is left for the linger to abandon.
            if let Some(z) = engine.get("zerocopy") {
                assert_eq!(z["completed"], z["sends"], "{what}: {z}");
                assert_eq!(z["abandoned"], 0, "{what}: {z}");
            }
        }
    }
}

/// Slow readers of a copied body, in both models: every body as the manifest has it; with
/// `--ecem ded` no chunk is read while its socket has no room, and reads were held for room;
/// without it, reads happen while the socket is full (what DED avoids) — the pair table
/// counts both.
#[test]
fn ded_reads_a_chunk_only_when_its_socket_has_room() {
    let site = Site::new();
    let manifest = site.manifest();
    for model in ["events", "threads"] {
        let mut without = 0;
        for ded in [false, true] {
            let what = format!("{model}, ded {ded}");
            let json = site.dir.path().join(format!("ded-{model}-{ded}.json"));
            let mut srv = Opts::new(&site.root, "lazy")
                .args(["--model", model, "--data", "copy"])
                .args(["--ecem", if ded { "ded" } else { "off" }])
                .args(["--stats-json", json.to_str().unwrap()])
                .start();
            let args = [
                "-c",
                "4",
                "-n",
                "4",
                "--recv-rate",
                "2m",
                "--recv-buffer",
                "16k",
                "--timeout",
                "30s",
            ];
            support::load_checked(&what, &srv.url("/big.bin"), &args, &manifest, 4);
            srv.stop();
            let e = &stats(&json)["engine"]["ecem"];
            let n = |k: &str| {
                e[k].as_u64()
                    .unwrap_or_else(|| panic!("{what}: no {k}: {e}"))
            };
            if ded {
                assert_eq!(n("reads_without_room"), 0, "{what}: {e}");
                assert!(
                    n("deferred") > 0,
                    "{what}: a slow reader never held a read: {e}"
                );
                assert!(n("prefetches") >= 4 * (3 << 20) / (64 << 10), "{what}: {e}");
            } else {
                without = n("reads_without_room");
                assert_eq!(n("deferred"), 0, "{what}: {e}");
            }
            assert_eq!(n("pairs_added"), n("pairs_removed"), "{what}: {e}");
        }
        assert!(
            without > 0,
            "{model}: without DED the slow readers never filled their sockets"
        );
    }
}
