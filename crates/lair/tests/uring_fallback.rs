//! `--backend uring` where io_uring is forbidden: the server says why and serves with `lazy`.
//!
//! The test forbids io_uring for the whole machine (`kernel.io_uring_disabled = 2`, root only)
//! and puts the old value back when it ends, also on failure. It lives in its own test binary
//! because cargo runs test binaries one after another: no other test of this suite can be
//! running (and starting rings) while the switch is thrown.

mod support;

use support::{Opts, Site};

const SYSCTL: &str = "/proc/sys/kernel/io_uring_disabled";

/// Puts the sysctl back on drop.
struct Restore(String);

impl Drop for Restore {
    fn drop(&mut self) {
        if let Err(e) = std::fs::write(SYSCTL, &self.0) {
            eprintln!("could not restore {SYSCTL} to {}: {e}", self.0);
        }
    }
}

#[test]
fn uring_falls_back_to_lazy_when_io_uring_is_forbidden() {
    const NAME: &str = "uring_falls_back_to_lazy_when_io_uring_is_forbidden";
    let Ok(old) = std::fs::read_to_string(SYSCTL) else {
        return support::skipped(NAME, &format!("this kernel has no {SYSCTL} (Linux < 6.6)"));
    };
    if std::fs::write(SYSCTL, "2").is_err() {
        return support::skipped(NAME, &format!("writing {SYSCTL} needs root"));
    }
    let _restore = Restore(old.trim().to_string());

    let site = Site::new();
    let mut srv = Opts::new(&site.root, "uring").events().start();
    let mut c = srv.connect();
    assert_eq!(c.get("/hello.txt").body, b"hello, world\n");
    let log = srv.stop().join("\n");
    assert!(
        log.contains("io_uring_disabled = 2") && log.contains("falling back to the lazy backend"),
        "{log}"
    );
    assert!(
        log.contains("backend lazy"),
        "the counters name the backend that ran: {log}"
    );
}
