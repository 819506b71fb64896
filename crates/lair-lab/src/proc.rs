//! What a server process cost, from `/proc`: CPU time, context switches, memory.
//!
//! A server may be several processes (nginx's master and worker) of several threads (lair's
//! workers and helpers): a sample sums the whole process tree, and the context switches of
//! every thread (`/proc/PID/status` reports only the main thread's). Take one sample before
//! and one after the load, before the server stops: a process that has exited cannot be read.

use serde::Serialize;

/// One reading of a process tree.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Sample {
    /// User CPU, seconds.
    pub user_s: f64,
    /// System CPU, seconds.
    pub system_s: f64,
    /// Voluntary context switches (blocked: waited for I/O, a lock, an event).
    pub voluntary_cs: u64,
    /// Involuntary context switches (preempted).
    pub involuntary_cs: u64,
    /// Resident memory now, KiB.
    pub rss_kib: u64,
    /// Of it, anonymous memory (`RssAnon`: heap, stacks — what the server allocated; the
    /// rest is its binary's and libraries' pages, which grow as more of their code runs).
    pub anon_kib: u64,
    /// Peak resident memory, KiB (`VmHWM`, summed over processes).
    pub peak_rss_kib: u64,
    /// Threads.
    pub threads: u64,
}

impl Sample {
    /// What happened between `before` and `self` (memory: the later reading).
    pub fn since(&self, before: &Sample) -> Sample {
        Sample {
            user_s: self.user_s - before.user_s,
            system_s: self.system_s - before.system_s,
            voluntary_cs: self.voluntary_cs.saturating_sub(before.voluntary_cs),
            involuntary_cs: self.involuntary_cs.saturating_sub(before.involuntary_cs),
            rss_kib: self.rss_kib,
            anon_kib: self.anon_kib,
            peak_rss_kib: self.peak_rss_kib,
            threads: self.threads,
        }
    }
}

/// `pid` and its descendants.
pub fn tree(pid: u32) -> Vec<u32> {
    let mut out = vec![pid];
    let mut i = 0;
    while i < out.len() {
        let p = out[i];
        if let Ok(tasks) = std::fs::read_dir(format!("/proc/{p}/task")) {
            for t in tasks.flatten() {
                let kids = std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
                out.extend(
                    kids.split_whitespace()
                        .filter_map(|k| k.parse::<u32>().ok()),
                );
            }
        }
        i += 1;
    }
    out.sort_unstable();
    out.dedup();
    out
}

fn status_kib(status: &str, key: &str) -> u64 {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Sample the tree rooted at `pid`; `None` if `pid` is gone.
pub fn sample(pid: u32) -> Option<Sample> {
    sample_pids(&tree(pid))
}

/// Sample one process (all its threads, none of its children).
pub fn sample_process(pid: u32) -> Option<Sample> {
    sample_pids(&[pid])
}

fn sample_pids(pids: &[u32]) -> Option<Sample> {
    let tick = rustix::param::clock_ticks_per_second() as f64;
    let mut s = Sample::default();
    let mut any = false;
    for &p in pids {
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
            continue;
        };
        // Fields after the command name (which may contain spaces) in parentheses.
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 2..]) else {
            continue;
        };
        let f: Vec<&str> = rest.split(' ').collect();
        // rest[0] is field 3 (state); utime and stime are fields 14 and 15.
        let num = |i: usize| {
            f.get(i - 3)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        s.user_s += num(14) as f64 / tick;
        s.system_s += num(15) as f64 / tick;
        s.threads += num(20);
        let status = std::fs::read_to_string(format!("/proc/{p}/status")).unwrap_or_default();
        s.rss_kib += status_kib(&status, "VmRSS:");
        s.anon_kib += status_kib(&status, "RssAnon:");
        s.peak_rss_kib += status_kib(&status, "VmHWM:");
        if let Ok(tasks) = std::fs::read_dir(format!("/proc/{p}/task")) {
            for t in tasks.flatten() {
                let ts = std::fs::read_to_string(t.path().join("status")).unwrap_or_default();
                s.voluntary_cs += status_kib(&ts, "voluntary_ctxt_switches:");
                s.involuntary_cs += status_kib(&ts, "nonvoluntary_ctxt_switches:");
            }
        }
        any = true;
    }
    any.then_some(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_busy_child_shows_cpu_and_switches() {
        let mut child = std::process::Command::new("sh")
            .args([
                "-c",
                "i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done; sleep 5",
            ])
            .spawn()
            .unwrap();
        let pid = child.id();
        let before = sample(std::process::id()).unwrap();
        // The loop takes some CPU; then the shell sleeps (a voluntary switch).
        let mut after = before;
        for _ in 0..100 {
            std::thread::sleep(std::time::Duration::from_millis(50));
            after = sample(pid).unwrap();
            if after.user_s + after.system_s > 0.0 && after.voluntary_cs > 0 {
                break;
            }
        }
        assert!(tree(std::process::id()).contains(&pid));
        assert!(after.user_s + after.system_s > 0.0, "{after:?}");
        assert!(after.voluntary_cs > 0, "{after:?}");
        assert!(after.rss_kib > 0 && after.peak_rss_kib >= after.rss_kib);
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// KiB read from block devices so far, the whole machine's (`pgpgin` in `/proc/vmstat`).
pub fn disk_read_kib() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/vmstat").ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("pgpgin "))
        .and_then(|n| n.trim().parse().ok())
}

/// Samples of the send queues of a server's connections: `ss -tin` every 200 ms (socket
/// statistics over netlink: each socket's send queue, unsent bytes, RTT and delivery rate),
/// or, without `ss`, the send queues of `/proc/net/tcp` alone.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SendQueues {
    samples: u64,
    total_bytes: u128,
    max_bytes: u64,
    conns: u64,
    /// Per connection and sample, summed: unsent bytes, smoothed RTT (µs), minimum RTT
    /// (µs), and the bandwidth-delay products (bytes) at each (delivery rate × RTT).
    per_conn: u64,
    notsent: u128,
    rtt_us: u128,
    bdp: u128,
    bdp_min: u128,
}

/// One connection as `ss -tin` shows it.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct SsConn {
    send_q: u64,
    notsent: u64,
    rtt_us: f64,
    minrtt_us: f64,
    delivery_bps: f64,
}

impl SendQueues {
    /// Sample the established connections whose local port is `port` every 200 ms while
    /// `go` holds.
    pub fn sample_while(port: u16, go: &std::sync::atomic::AtomicBool) -> SendQueues {
        let mut s = SendQueues::default();
        while go.load(std::sync::atomic::Ordering::Relaxed) {
            let conns = ss_conns(port).unwrap_or_else(|| proc_conns(port));
            let bytes: u64 = conns.iter().map(|c| c.send_q).sum();
            s.samples += 1;
            s.total_bytes += u128::from(bytes);
            s.max_bytes = s.max_bytes.max(bytes);
            s.conns += conns.len() as u64;
            for c in conns.iter().filter(|c| c.rtt_us > 0.0) {
                s.per_conn += 1;
                s.notsent += u128::from(c.notsent);
                s.rtt_us += c.rtt_us as u128;
                s.bdp += (c.delivery_bps / 8.0 * c.rtt_us / 1e6) as u128;
                s.bdp_min += (c.delivery_bps / 8.0 * c.minrtt_us / 1e6) as u128;
            }
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        s
    }

    /// Mean summed send queue, KiB (`None`: no sample).
    pub fn mean_kib(&self) -> Option<f64> {
        (self.samples > 0).then(|| self.total_bytes as f64 / self.samples as f64 / 1024.0)
    }

    /// Largest summed send queue, KiB.
    pub fn max_kib(&self) -> Option<f64> {
        (self.samples > 0).then(|| self.max_bytes as f64 / 1024.0)
    }

    /// Connections counted per sample, on average.
    pub fn mean_conns(&self) -> Option<f64> {
        (self.samples > 0).then(|| self.conns as f64 / self.samples as f64)
    }

    fn per_conn(&self, v: u128) -> Option<f64> {
        (self.per_conn > 0).then(|| v as f64 / self.per_conn as f64)
    }

    /// Unsent bytes per connection, KiB (what the mark bounds).
    pub fn notsent_kib(&self) -> Option<f64> {
        self.per_conn(self.notsent).map(|b| b / 1024.0)
    }

    /// Smoothed RTT per connection, ms.
    pub fn rtt_ms(&self) -> Option<f64> {
        self.per_conn(self.rtt_us).map(|u| u / 1000.0)
    }

    /// Bandwidth-delay product per connection, KiB: delivery rate × smoothed RTT (the
    /// queue the connection sees included), and × minimum RTT (the path's own).
    pub fn bdp_kib(&self) -> (Option<f64>, Option<f64>) {
        (
            self.per_conn(self.bdp).map(|b| b / 1024.0),
            self.per_conn(self.bdp_min).map(|b| b / 1024.0),
        )
    }
}

/// The server's connections as `ss -Htin` lists them; `None` if `ss` cannot run.
fn ss_conns(port: u16) -> Option<Vec<SsConn>> {
    let out = std::process::Command::new("ss")
        .args(["-Htin", "state", "established"])
        .arg(format!("( sport = :{port} )"))
        .output()
        .ok()
        .filter(|o| o.status.success())?;
    Some(parse_ss(&String::from_utf8_lossy(&out.stdout)))
}

/// `ss -Htin` output: a line per socket (`Recv-Q Send-Q local peer`), then an indented line
/// of its TCP information.
fn parse_ss(text: &str) -> Vec<SsConn> {
    let mut out: Vec<SsConn> = Vec::new();
    for line in text.lines() {
        if !line.starts_with(char::is_whitespace) {
            let send_q = line
                .split_whitespace()
                .nth(1)
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            out.push(SsConn {
                send_q,
                ..SsConn::default()
            });
            continue;
        }
        let Some(c) = out.last_mut() else { continue };
        let words: Vec<&str> = line.split_whitespace().collect();
        for (k, w) in words.iter().enumerate() {
            if let Some(v) = w.strip_prefix("rtt:") {
                c.rtt_us = v
                    .split('/')
                    .next()
                    .and_then(|x| x.parse::<f64>().ok())
                    .unwrap_or(0.0)
                    * 1000.0;
            } else if let Some(v) = w.strip_prefix("minrtt:") {
                c.minrtt_us = v.parse::<f64>().unwrap_or(0.0) * 1000.0;
            } else if let Some(v) = w.strip_prefix("notsent:") {
                c.notsent = v.parse().unwrap_or(0);
            } else if *w == "delivery_rate" {
                c.delivery_bps = words.get(k + 1).and_then(|r| rate_bps(r)).unwrap_or(0.0);
            }
        }
    }
    out
}

/// `123bps`, `1.5Kbps`, `10Mbps`, `2Gbps` as bits per second.
fn rate_bps(s: &str) -> Option<f64> {
    let s = s.strip_suffix("bps")?;
    let (num, mult) = match s.chars().last()? {
        'K' => (&s[..s.len() - 1], 1e3),
        'M' => (&s[..s.len() - 1], 1e6),
        'G' => (&s[..s.len() - 1], 1e9),
        _ => (s, 1.0),
    };
    num.parse::<f64>().ok().map(|n| n * mult)
}

/// The send queues of `/proc/net/tcp` and `tcp6` (no RTT, no unsent count).
fn proc_conns(port: u16) -> Vec<SsConn> {
    let mut out = Vec::new();
    for f in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = std::fs::read_to_string(f).unwrap_or_default();
        for (b, _) in send_queues(&text).filter(|&(_, p)| p == port) {
            out.push(SsConn {
                send_q: b,
                ..SsConn::default()
            });
        }
    }
    out
}

/// `(tx_queue bytes, local port)` of each established socket in a `/proc/net/tcp` text.
fn send_queues(text: &str) -> impl Iterator<Item = (u64, u16)> + '_ {
    text.lines().skip(1).filter_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        let port = u16::from_str_radix(f.get(1)?.rsplit(':').next()?, 16).ok()?;
        if *f.get(3)? != "01" {
            return None;
        }
        let tx = u64::from_str_radix(f.get(4)?.split(':').next()?, 16).ok()?;
        Some((tx, port))
    })
}

#[cfg(test)]
mod sendq_tests {
    use super::*;

    #[test]
    fn send_queues_are_read_from_proc_net_tcp() {
        let text = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1\n\
   1: 0100007F:1F90 0100007F:C350 01 00020000:00000000 01:00000014 00000000     0        0 2 1\n\
   2: 0100007F:C350 0100007F:1F90 01 00000000:00001000 00:00000000 00000000     0        0 3 1\n";
        let got: Vec<(u64, u16)> = send_queues(text).collect();
        assert_eq!(got, vec![(0x20000, 8080), (0, 50000)]);
    }

    #[test]
    fn ss_lines_give_queues_rtts_and_rates() {
        let text = "0      114933 127.0.0.1:18401 127.0.0.1:38372\n\
\t bbr wscale:0,10 rto:212 rtt:10.425/0.466 mss:8192 cwnd:12 send 75437122bps \
pacing_rate 15942480bps delivery_rate 10950952bps delivered:200 unacked:2 \
notsent:98549 minrtt:0.025 snd_wnd:16384\n\
0      0 127.0.0.1:18401 127.0.0.1:38374\n\
\t cubic rtt:0.05/0.02 delivery_rate 2.5Gbps notsent:0 minrtt:0.01\n";
        let c = parse_ss(text);
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].send_q, 114_933);
        assert_eq!(c[0].notsent, 98_549);
        assert!((c[0].rtt_us - 10_425.0).abs() < 1e-6);
        assert!((c[0].minrtt_us - 25.0).abs() < 1e-6);
        assert!((c[0].delivery_bps - 10_950_952.0).abs() < 1e-3);
        assert!((c[1].delivery_bps - 2.5e9).abs() < 1.0);
        assert_eq!(rate_bps("1.5Kbps"), Some(1500.0));
    }
}
