//! The claims of docs/SECURITY.md that no other test holds: a symlink swapped in while requests
//! resolve never leaks what lies outside the root, and names a client or a file system chooses
//! never inject into the access log, an error page or a redirect.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustix::fs::{renameat_with, RenameFlags, CWD};
use support::{Opts, Site, BACKENDS, CANARY};

/// A directory `d` (inside) and a symlink `link` to the directory above the root (outside,
/// where the canary is) are exchanged atomically (`renameat2(RENAME_EXCHANGE)`) as fast as a
/// thread can, while a client asks for `/d/canary.txt` over and over: at every instant either
/// `d` is the real directory (which holds a harmless `canary.txt`) or it is the symlink, which
/// resolution beneath the root refuses. The canary never comes back.
#[test]
fn a_symlink_swapped_in_mid_request_never_leaks_the_outside() {
    let site = Site::new();
    let inside = site.path("d");
    let link = site.path("link");
    std::fs::create_dir(&inside).unwrap();
    std::fs::write(inside.join("canary.txt"), "harmless\n").unwrap();
    std::os::unix::fs::symlink(site.dir.path(), &link).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let swaps = {
        let (stop, inside, link) = (Arc::clone(&stop), inside.clone(), link.clone());
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                renameat_with(CWD, &inside, CWD, &link, RenameFlags::EXCHANGE).unwrap();
                n += 1;
            }
            n
        })
    };
    let mut requests = 0;
    let mut served = 0;
    for b in BACKENDS {
        // No file cache: every request resolves the path again.
        let srv = Opts::new(&site.root, b)
            .args(["--file-cache-ttl", "0"])
            .start();
        let mut c = srv.connect();
        let end = Instant::now() + Duration::from_millis(600);
        while Instant::now() < end {
            let r = c.get("/d/canary.txt");
            requests += 1;
            assert!(!r.text().contains(CANARY), "{b}: the canary leaked");
            match r.status {
                200 => {
                    assert_eq!(r.text(), "harmless\n", "{b}");
                    served += 1;
                }
                // The symlink: refused beneath the root (or, mid-swap, not found).
                403 | 404 => {}
                s => panic!("{b}: status {s}"),
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    let swaps = swaps.join().unwrap();
    assert!(swaps > 1000, "only {swaps} swaps: no race was tried");
    assert!(
        served > 0 && served < requests,
        "both sides of the race were seen: {served} of {requests} served"
    );
}

/// A file name holding a quote, markup and an escape character, requested by a client whose
/// headers hold the same: the log line stays one line with every such byte escaped, the 404
/// page shows no markup from the request, and a redirect's `Location` is percent-encoded.
#[test]
fn names_never_inject_into_the_log_the_page_or_a_redirect() {
    let site = Site::new();
    let name = "q\"<b>\x1b[31m.txt";
    std::fs::write(site.path(name), "ok\n").unwrap();
    std::fs::create_dir(site.path("d\"<i>")).unwrap();
    for b in BACKENDS {
        let log = site.dir.path().join(format!("access-{b}.log"));
        let mut srv = Opts::new(&site.root, b)
            .args(["--access-log", log.to_str().unwrap()])
            .start();
        let mut c = srv.connect();
        let r = c.request(
            "GET",
            "/q%22%3Cb%3E%1B%5B31m.txt",
            &[("User-Agent", "ua\"<x>"), ("Referer", "r\"e\\f")],
        );
        assert_eq!((r.status, r.text().as_str()), (200, "ok\n"), "{b}");
        // A raw control character in a header is refused, and still logged, escaped.
        let mut raw = srv.connect();
        raw.send(b"GET /hello.txt HTTP/1.1\r\nHost: x\r\nUser-Agent: e\x1b[0m\r\n\r\n");
        assert_eq!(raw.read_response(false).status, 400, "{b}");
        let r = c.get("/%3Cscript%3Ealert(1)%3C/script%3E");
        assert_eq!(r.status, 404, "{b}");
        assert!(!r.text().contains("<script>"), "{b}: {}", r.text());
        let r = c.get("/d%22%3Ci%3E");
        assert_eq!(r.status, 301, "{b}");
        let location = r.header("location").unwrap();
        assert!(
            !location.contains('"') && !location.contains('<'),
            "{b}: {location}"
        );
        assert!(location.ends_with("/d%22%3Ci%3E/"), "{b}: {location}");
        drop(c);
        srv.stop();
        let text = std::fs::read(&log).unwrap();
        let lines: Vec<&[u8]> = text
            .split(|&x| x == b'\n')
            .filter(|l| !l.is_empty())
            .collect();
        assert_eq!(lines.len(), 4, "{b}: {}", String::from_utf8_lossy(&text));
        for l in &lines {
            assert!(!l.contains(&0x1b), "{b}: a raw escape in the log");
            // Quotes only as the format's own delimiters: request, referer, user agent.
            assert_eq!(l.iter().filter(|&&x| x == b'"').count(), 6, "{b}");
        }
        let text = String::from_utf8_lossy(&text);
        // The request line as it came (percent-encoded by the client), then the raw escape.
        assert!(
            text.contains("\"GET /q%22%3Cb%3E%1B%5B31m.txt HTTP/1.1\" 200"),
            "{b}: {text}"
        );
        assert!(text.contains("\"e\\x1B[0m\""), "{b}: {text}");
        assert!(text.contains("\"ua\\x22<x>\""), "{b}: {text}");
        assert!(text.contains("\"r\\x22e\\x5Cf\""), "{b}: {text}");
    }
}

/// A 5 GiB sparse file: its length and ranges past 4 GiB are exact on every backend (no
/// 32-bit offset anywhere), and a range at its very end is answered without reading the rest.
#[test]
fn a_five_gib_sparse_file_has_exact_lengths_and_ranges() {
    let site = Site::new();
    let len: u64 = 5 << 30;
    let f = std::fs::File::create(site.path("sparse.bin")).unwrap();
    f.set_len(len).unwrap();
    std::os::unix::fs::FileExt::write_at(&f, b"END!", len - 4).unwrap();
    drop(f);
    for b in BACKENDS {
        let srv = Opts::new(&site.root, b).start();
        let mut c = srv.connect();
        let r = c.request("HEAD", "/sparse.bin", &[]);
        assert_eq!(r.header("content-length"), Some("5368709120"), "{b}");
        let from = len - 10;
        let r = c.request(
            "GET",
            "/sparse.bin",
            &[("Range", &format!("bytes={from}-"))],
        );
        assert_eq!(r.status, 206, "{b}");
        assert_eq!(
            r.header("content-range"),
            Some(format!("bytes {from}-{}/{len}", len - 1).as_str()),
            "{b}"
        );
        assert_eq!(r.body, b"\0\0\0\0\0\0END!", "{b}");
        let r = c.request(
            "GET",
            "/sparse.bin",
            &[("Range", "bytes=4294967296-4294967299")],
        );
        assert_eq!(
            (r.status, r.body.as_slice()),
            (206, &[0u8; 4][..]),
            "{b}: past 4 GiB"
        );
    }
}
