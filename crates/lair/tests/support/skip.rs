//! A test that cannot run here (not root, no kernel feature, a tool missing) says so where it
//! will be seen: on stderr, and — when `scripts/test.sh` runs the suite — in the file named by
//! `LAIR_TEST_SKIPS`, which the script prints at the end. As root (CI) the script fails if any
//! test skipped: there, every test must run. Shared by the lair and lair-lab test crates.

use std::io::Write;

/// Record that test `name` did not run, and why.
pub fn skipped(name: &str, why: &str) {
    eprintln!("SKIPPED {name}: {why}");
    if let Some(path) = std::env::var_os("LAIR_TEST_SKIPS") {
        // One short line per skip, appended whole: concurrent tests do not interleave.
        let line = format!("{name}: {why}\n");
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            let _ = f.write_all(line.as_bytes());
        }
    }
}
