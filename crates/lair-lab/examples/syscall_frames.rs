//! What a stack frame between a caller and a system call costs on this machine.
//!
//! `getpid` called through 0 to 4 extra functions that are never inlined, interleaved, seven
//! rounds of 2,000,000 calls each; prints the median and minimum ns per call. With the AMD
//! "Safe RET" return-stack mitigation (`/sys/devices/system/cpu/vulnerabilities/
//! spec_rstack_overflow`), each return after a system call mispredicts, so every extra frame
//! shows; this is why the engine runs a generic call right inside `submit`
//! (docs/experiments/laio.md, Table 2).
//!
//!     taskset -c 1 cargo run --release -p lair-lab --example syscall_frames

use std::hint::black_box;
use std::time::Instant;

#[inline(never)]
fn f0() -> i32 {
    rustix::process::getpid().as_raw_nonzero().get()
}
#[inline(never)]
fn f1() -> i32 {
    black_box(f0())
}
#[inline(never)]
fn f2() -> i32 {
    black_box(f1())
}
#[inline(never)]
fn f3() -> i32 {
    black_box(f2())
}
#[inline(never)]
fn f4() -> i32 {
    black_box(f3())
}

fn main() {
    const CALLS: u32 = 2_000_000;
    let ways: [fn() -> i32; 5] = [f0, f1, f2, f3, f4];
    let mut ns: Vec<Vec<f64>> = vec![Vec::new(); ways.len()];
    for _ in 0..7 {
        for (i, f) in ways.iter().enumerate() {
            let t = Instant::now();
            let mut sum = 0i64;
            for _ in 0..CALLS {
                sum += i64::from(f());
            }
            black_box(sum);
            ns[i].push(t.elapsed().as_nanos() as f64 / f64::from(CALLS));
        }
    }
    println!("| extra frames | median ns per getpid | min |");
    println!("|---:|---:|---:|");
    for (i, v) in ns.iter_mut().enumerate() {
        v.sort_by(f64::total_cmp);
        println!("| {i} | {:.0} | {:.0} |", v[v.len() / 2], v[0]);
    }
}
