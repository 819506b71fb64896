//! The data-passing modes (`--data`, issue 14): what each promises when the file changes under
//! it, what its pipes and mappings cost, and what happens when the kernel refuses them.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use support::{pattern, Opts, Site, AS_NOBODY};

/// Every `--data` value.
const DATA: [&str; 6] = ["sendfile", "copy", "splice", "share", "move", "emulated"];

fn stats(path: &std::path::Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn euid() -> u32 {
    let out = Command::new("id").arg("-u").output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

/// Read a whole `Connection: close` response (until the server closes or resets).
fn read_all(s: &mut TcpStream, got: &mut Vec<u8>) {
    let mut chunk = vec![0u8; 256 << 10];
    loop {
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&chunk[..n]),
        }
    }
}

/// A file truncated, extended or renamed over while its body is on the way, under every data
/// mode in both models: the response carries the old file's bytes and nothing else — never
/// the new contents, never bytes past a new end (but for zeroes where the kernel already held
/// the page: sendfile and splice share page-cache pages with the socket) — and it either ends
/// at the length its head promised or closes early.
#[test]
fn a_file_changing_while_sent_never_mixes_contents_under_every_data_mode() {
    let site = Site::new();
    let len = 16 << 20;
    let keep = 1 << 20;
    let old = pattern(len);
    let new: Vec<u8> = old.iter().map(|b| !b).collect();
    let runs: [(&str, &[&str]); 2] = [("events", &["lazy", "uring"]), ("threads", &["lazy"])];
    for data in DATA {
        for (model, backends) in runs {
            for &b in backends {
                let srv = Opts::new(&site.root, b)
                    .args(["--model", model, "--data", data, "--ecem", "off"])
                    .start();
                for change in ["truncated", "extended", "renamed over"] {
                    let what = format!("{data} {model} {b}, {change}");
                    let file = site.path("changing.bin");
                    std::fs::write(&file, &old).unwrap();
                    let mut s = TcpStream::connect(srv.addr).unwrap();
                    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
                    s.write_all(
                        b"GET /changing.bin HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                    )
                    .unwrap();
                    let mut got = Vec::new();
                    let mut chunk = vec![0u8; 64 << 10];
                    while got.len() < 2 * keep {
                        let n = s.read(&mut chunk).unwrap();
                        assert!(n > 0, "{what}: closed early");
                        got.extend_from_slice(&chunk[..n]);
                    }
                    match change {
                        "truncated" => std::fs::OpenOptions::new()
                            .write(true)
                            .open(&file)
                            .unwrap()
                            .set_len(keep as u64)
                            .unwrap(),
                        "extended" => std::fs::OpenOptions::new()
                            .append(true)
                            .open(&file)
                            .unwrap()
                            .write_all(&new[..keep])
                            .unwrap(),
                        _ => {
                            let tmp = site.path("changing.tmp");
                            std::fs::write(&tmp, &new).unwrap();
                            std::fs::rename(&tmp, &file).unwrap();
                        }
                    }
                    read_all(&mut s, &mut got);
                    let head_end = got.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
                    let body = &got[head_end..];
                    if change == "truncated" {
                        assert!(body.len() < len, "{what}: the body was not cut short");
                        // lair stopped once it met the new end: what was in flight arrived
                        // (socket buffers, a pipe, a chunk), not the rest of the file.
                        assert!(body.len() < 12 << 20, "{what}: sent {} bytes", body.len());
                        for (i, &byte) in body.iter().enumerate() {
                            assert!(
                                byte == old[i] || (i >= keep && byte == 0),
                                "{what}: byte {i} is {byte}, neither the old file's nor zero"
                            );
                        }
                    } else {
                        assert_eq!(body.len(), len, "{what}: not the promised length");
                        assert!(body == &old[..], "{what}: the body is not the old file's");
                    }
                }
                assert_eq!(
                    srv.connect().get("/hello.txt").status,
                    200,
                    "{data} {model} {b}"
                );
            }
        }
    }
}

/// What the kernel-side paths hold: one mapping per file however many responses send from it
/// (`share`), and pipes only for responses in flight, given back to the worker's pool
/// (`splice`) — counted in `--stats-json` `datapath`.
#[test]
fn share_maps_each_file_once_and_splice_reuses_its_pipes() {
    let site = Site::new();
    std::fs::write(site.path("two.bin"), pattern(5 << 20)).unwrap();
    for data in ["share", "splice"] {
        let json = site.dir.path().join(format!("paths-{data}.json"));
        let mut srv = Opts::new(&site.root, "lazy")
            .events()
            .workers(1)
            .args(["--data", data, "--ecem", "off"])
            .args(["--stats-json", json.to_str().unwrap()])
            .start();
        let mut c = srv.connect();
        for _ in 0..4 {
            for (path, want) in [("/big.bin", 3 << 20), ("/two.bin", 5 << 20)] {
                let r = c.get(path);
                assert_eq!((r.status, r.body.len()), (200, want), "{data} {path}");
                assert!(r.body == pattern(want), "{data} {path}: the body differs");
            }
        }
        drop(c);
        srv.stop();
        let d = &stats(&json)["datapath"];
        let n = |k: &str| {
            d[k].as_u64()
                .unwrap_or_else(|| panic!("{data}: no {k}: {d}"))
        };
        if data == "share" {
            assert_eq!(n("maps_made"), 2, "{data}: one mapping per file: {d}");
            assert_eq!(n("map_fallbacks"), 0, "{d}");
        } else {
            assert_eq!(n("pipes_made"), 1, "{data}: one connection, one pipe: {d}");
            assert_eq!(n("splice_fallbacks"), 0, "{d}");
        }
    }
}

/// A user past `pipe-user-pages-soft` (16,384 pages) gets pipes of two pages: 200 slow
/// readers under `--data splice` each hold a 512 KiB pipe, more than the limit allows
/// `nobody`, and the ones that cannot have a pipe worth splicing through are sent with
/// sendfile — every body arrives whole (checked against the manifest), none fails.
#[test]
fn splice_falls_back_to_sendfile_past_the_pipe_page_limit() {
    const NAME: &str = "splice_falls_back_to_sendfile_past_the_pipe_page_limit";
    if euid() != 0 {
        return support::skipped(
            NAME,
            "needs root, to run the server as nobody (root is exempt from the pipe limits)",
        );
    }
    let site = Site::new();
    site.open_to_all();
    let manifest = site.manifest();
    let json = std::env::temp_dir().join(format!("lair-pipes-{}.json", std::process::id()));
    let _ = std::fs::remove_file(&json);
    let mut srv = Opts::new(&site.root, "lazy")
        .events()
        .workers(1)
        .wrapper(AS_NOBODY)
        .args(["--data", "splice", "--ecem", "off"])
        .args(["--stats-json", json.to_str().unwrap()])
        .start();
    let args = [
        "-c",
        "200",
        "-n",
        "200",
        "--recv-rate",
        "1m",
        "--recv-buffer",
        "16k",
        "--timeout",
        "60s",
    ];
    support::load_checked(
        "splice as nobody",
        &srv.url("/big.bin"),
        &args,
        &manifest,
        200,
    );
    let lines = srv.stop().join("\n");
    let d = &stats(&json)["datapath"];
    let _ = std::fs::remove_file(&json);
    let n = |k: &str| d[k].as_u64().unwrap_or_else(|| panic!("no {k}: {d}"));
    assert!(n("pipes_made") >= 64, "{d}");
    assert!(
        n("splice_fallbacks") > 0,
        "200 pipes of 512 KiB never met the limit: {d}"
    );
    assert!(lines.contains("pipe-user-pages-soft"), "{lines}");
}

/// `--data emulated` to slow readers, in both models and under `uring` (`IORING_OP_SEND_ZC`,
/// whose second completion is the notification): a chunk sits in the send queue long
/// after its `send` returned, and the kernel reads its pages only when it transmits them. Were
/// a chunk's memory freed or reused before the kernel's notification, the next chunk's read
/// would land in pages still queued, and the bodies would not match the manifest. Every body
/// matches; every zero-copy send was notified; nothing was abandoned. The counters say how
/// many the kernel copied anyway (on loopback: every one, which the write-up reports).
#[test]
fn emulated_copy_holds_each_chunk_until_the_kernel_is_done_with_it() {
    let site = Site::new();
    for i in 0..4u8 {
        let body: Vec<u8> = pattern(2 << 20).iter().map(|b| b.wrapping_add(i)).collect();
        std::fs::write(site.path(&format!("e{i}.bin")), body).unwrap();
    }
    let manifest = site.manifest();
    let trace = site.dir.path().join("trace.txt");
    std::fs::write(&trace, "/e0.bin\n/e1.bin\n/e2.bin\n/e3.bin\n/big.bin\n").unwrap();
    for (model, backend) in [("events", "lazy"), ("events", "uring"), ("threads", "lazy")] {
        let json = site.dir.path().join(format!("zc-{model}-{backend}.json"));
        let mut srv = Opts::new(&site.root, backend)
            .args(["--model", model, "--data", "emulated", "--ecem", "off"])
            .args(["--stats-json", json.to_str().unwrap()])
            .start();
        let args = [
            "--trace",
            trace.to_str().unwrap(),
            "-c",
            "8",
            "-n",
            "24",
            "--recv-rate",
            "4m",
            "--recv-buffer",
            "16k",
            "--timeout",
            "60s",
        ];
        let what = format!("{model} {backend}");
        support::load_checked(&what, &srv.url("/"), &args, &manifest, 24);
        srv.stop();
        let z = &stats(&json)["engine"]["zerocopy"];
        let n = |k: &str| {
            z[k].as_u64()
                .unwrap_or_else(|| panic!("{what}: no {k}: {z}"))
        };
        assert!(n("sends") >= 24 * (2 << 20) / (64 << 10), "{what}: {z}");
        assert_eq!(
            n("completed"),
            n("sends"),
            "{what}: a send never notified: {z}"
        );
        assert_eq!(n("not_shared"), 0, "{what}: {z}");
        assert_eq!(n("abandoned"), 0, "{what}: {z}");
        assert!(
            n("held_max") > 1,
            "{what}: chunks were never in flight together: {z}"
        );
    }
}

/// Slow readers under every data mode in both models: a body stays in flight — in a pipe, in
/// gifted pages, in the send queue — long after the call that queued it, and every body
/// arrives as the manifest has it.
#[test]
fn slow_readers_get_every_body_whole_under_every_data_mode() {
    let site = Site::new();
    for i in 0..3u8 {
        let body: Vec<u8> = pattern(1 << 20).iter().map(|b| b ^ (i + 1)).collect();
        std::fs::write(site.path(&format!("s{i}.bin")), body).unwrap();
    }
    let manifest = site.manifest();
    let trace = site.dir.path().join("trace.txt");
    std::fs::write(&trace, "/s0.bin\n/s1.bin\n/s2.bin\n/big.bin\n").unwrap();
    for data in DATA {
        for model in ["events", "threads"] {
            let what = format!("{data} {model}");
            let srv = Opts::new(&site.root, "lazy")
                .args(["--model", model, "--data", data, "--ecem", "off"])
                .start();
            let args = [
                "--trace",
                trace.to_str().unwrap(),
                "-c",
                "8",
                "-n",
                "16",
                "--recv-rate",
                "8m",
                "--recv-buffer",
                "16k",
                "--timeout",
                "60s",
            ];
            support::load_checked(&what, &srv.url("/"), &args, &manifest, 16);
        }
    }
}

/// The server's resident memory, KiB (the lab's own sampler).
fn rss_kib(pid: u32) -> u64 {
    lair_lab::proc::sample_process(pid).map_or(0, |s| s.rss_kib)
}

/// `uring` stands in for sendfile by reading a window into a buffer and sending it; a send
/// to a slow reader used to hold that buffer until the client had taken it all — 1,000 slow
/// readers cost 270 MB. Now a window is no larger than the socket's room under the mark, and
/// with no room the ring waits for `POLLOUT` before reading: 200 slow readers of 3 MiB each
/// hold a fraction of what they held without the mark (`--notsent-lowat 0`, the old path),
/// measured in the same run, and every body still arrives whole.
#[test]
fn uring_holds_no_buffer_while_a_slow_reader_drains() {
    let site = Site::new();
    let manifest = site.manifest();
    let mut peak = Vec::new();
    for lowat in ["0", "128k"] {
        let srv = Opts::new(&site.root, "uring")
            .events()
            .workers(1)
            .args(["--notsent-lowat", lowat])
            .start();
        let pid = srv.pid();
        let url = srv.url("/big.bin");
        let load = std::thread::spawn({
            let manifest = manifest.clone();
            move || {
                let args = [
                    "-c",
                    "200",
                    "-n",
                    "200",
                    "--recv-rate",
                    "1m",
                    "--recv-buffer",
                    "16k",
                    "--timeout",
                    "60s",
                ];
                support::load_checked("uring slow readers", &url, &args, &manifest, 200);
            }
        });
        let mut most = 0;
        while !load.is_finished() {
            most = most.max(rss_kib(pid));
            std::thread::sleep(Duration::from_millis(50));
        }
        load.join().unwrap();
        peak.push(most);
    }
    let (old, new) = (peak[0], peak[1]);
    eprintln!("uring, 200 slow readers: peak RSS {old} KiB without the mark, {new} KiB with it");
    assert!(
        old > 0 && new * 2 < old,
        "peak RSS without the mark {old} KiB, with it {new} KiB"
    );
}

/// `--data auto` sends each body on the path `--data-auto` names for its size: here a 300 KB
/// body through the connection's buffer (`copy`: file reads) and a 3 MiB one through a pipe
/// (`splice`), both whole, in one server.
#[test]
fn auto_picks_the_data_path_by_body_size() {
    let site = Site::new();
    std::fs::write(site.path("mid.bin"), pattern(300_000)).unwrap();
    let json = site.dir.path().join("auto.json");
    let mut srv = Opts::new(&site.root, "lazy")
        .events()
        .workers(1)
        .args([
            "--data",
            "auto",
            "--data-auto",
            "copy<1m,splice",
            "--ecem",
            "off",
        ])
        .args(["--stats-json", json.to_str().unwrap()])
        .start();
    let mut c = srv.connect();
    let r = c.get("/mid.bin");
    assert!(r.status == 200 && r.body == pattern(300_000), "mid");
    let r = c.get("/big.bin");
    assert!(r.status == 200 && r.body == pattern(3 << 20), "big");
    drop(c);
    srv.stop();
    let s = stats(&json);
    let reads = s["engine"]["ops"]["read"]["submitted"]
        .as_u64()
        .unwrap_or(0);
    assert!(
        reads >= 300_000 / (64 << 10),
        "the 300 KB body was not copied: {s}"
    );
    let d = &s["datapath"];
    assert_eq!(d["pipes_made"], 1, "the 3 MiB body was not spliced: {d}");
}
