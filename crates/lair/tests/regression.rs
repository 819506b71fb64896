//! One test per bug found, named after where it was found.

mod support;

use std::process::Command;

use support::{Opts, Site, BACKENDS};

/// Issue 3, found by scripts/hol-check.sh: reading a file updates its access time after the
/// read, also when `preadv2(RWF_NOWAIT)` returns `EAGAIN`, and that update can read the inode's
/// block from a slow disk inside the event loop (hot p99 went from 0.5 ms to 160 ms and more).
/// lair opens files with `O_NOATIME`, so serving a file never touches its atime.
#[test]
fn issue_3_serving_never_updates_atime() {
    let site = Site::new();
    let old = "2000-01-01 00:00:00";
    for b in BACKENDS {
        for f in ["hello.txt", "big.bin"] {
            // An atime older than mtime: under relatime the next read would update it.
            let ok = Command::new("touch")
                .args(["-a", "-d", old])
                .arg(site.path(f))
                .status()
                .unwrap()
                .success();
            assert!(ok);
        }
        let before: Vec<_> = ["hello.txt", "big.bin"]
            .iter()
            .map(|f| std::fs::metadata(site.path(f)).unwrap().accessed().unwrap())
            .collect();
        let srv = Opts::new(&site.root, b)
            .args(["--file-cache-ttl", "0"])
            .start();
        let mut c = srv.connect();
        assert_eq!(c.get("/hello.txt").status, 200);
        assert_eq!(c.get("/big.bin").status, 200, "sendfile path too");
        drop(srv);
        let after: Vec<_> = ["hello.txt", "big.bin"]
            .iter()
            .map(|f| std::fs::metadata(site.path(f)).unwrap().accessed().unwrap())
            .collect();
        assert_eq!(before, after, "{b}: atime changed");
    }
}
