//! What noticing a changed file costs the small-file cache, per way of noticing.
//!
//! A 10,000-byte file in the temporary directory; seven rounds each of: the hit-path check of a
//! watched entry (one atomic flag), the hit-path check without a watch (one `fstat` comparing
//! length, inode and modification time), what a watch adds to a miss when the inode is watched
//! already (a reopen after the time to live: attach, no system call), and when it is not (the
//! watch added on `/proc/self/fd/N`, the `fstat` that closes the window before it, the watch
//! removed later). Prints the median and minimum ns per operation.
//!
//!     taskset -c 1 cargo run --release -p lair-lab --example watch_cost

use std::hint::black_box;
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use lair_io::Watcher;

fn main() {
    let dir = std::env::temp_dir().join(format!("lair-watch-cost-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("f");
    std::fs::write(&path, vec![b'x'; 10_000]).unwrap();
    let file: OwnedFd = std::fs::File::open(&path).unwrap().into();
    let stat = lair_io::watch::stat(&file).unwrap();
    let watcher = Watcher::start(Duration::from_secs(3600)).unwrap();
    let held = watcher.watch(&file, &stat).unwrap();
    // A watcher with no grace period: a watch nobody holds goes at the next sweep.
    let fresh = Watcher::start(Duration::ZERO).unwrap();

    let rows = [
        ("hit, watched: one atomic flag", 10_000_000),
        ("hit, unwatched: one fstat", 1_000_000),
        ("miss, inode watched already: attach", 1_000_000),
        ("miss, inode not watched: add + fstat (worker)", 50_000),
        ("the idle watch removed (watcher thread)", 50_000),
    ];
    let mut ns: Vec<Vec<f64>> = vec![Vec::new(); rows.len()];
    for _ in 0..7 {
        for (i, &(_, n)) in rows.iter().enumerate().take(4) {
            let (mut work, mut removal) = (Duration::ZERO, Duration::ZERO);
            let t = Instant::now();
            for _ in 0..n {
                match i {
                    0 => {
                        black_box(held.changed());
                    }
                    1 => {
                        black_box(lair_io::watch::unchanged(&file, &stat));
                    }
                    2 => drop(black_box(watcher.watch(&file, &stat).unwrap())),
                    _ => {
                        let a = Instant::now();
                        let w = black_box(fresh.watch(&file, &stat).unwrap());
                        work += a.elapsed();
                        drop(w);
                        let r = Instant::now();
                        fresh.sweep_idle();
                        removal += r.elapsed();
                    }
                }
            }
            if i < 3 {
                work = t.elapsed();
            }
            ns[i].push(work.as_nanos() as f64 / f64::from(n));
            if i == 3 {
                ns[4].push(removal.as_nanos() as f64 / f64::from(n));
            }
        }
    }
    drop(held);
    println!("| check | median ns | min |");
    println!("|---|---:|---:|");
    for ((what, _), v) in rows.iter().zip(ns.iter_mut()) {
        v.sort_by(f64::total_cmp);
        println!("| {what} | {:.1} | {:.1} |", v[v.len() / 2], v[0]);
    }
    let _ = std::fs::remove_dir_all(&dir);
}
