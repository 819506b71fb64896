//! The environment of a run: slow disk (cgroup I/O throttling), slow clients (a network
//! namespace behind a rate-limited veth), and undoing every change.
//!
//! Every change to the system is registered with an [`Undo`] as it is made; `Undo` reverts
//! them in reverse order when dropped, so a failed run, a panic unwinding, or Ctrl-C (which the
//! runner turns into an ordinary early return) leaves the machine as it found it. Names carry
//! the lab's PID, so two labs never touch each other's cgroups or namespaces, and the lab
//! only ever removes what it created.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context as _};

/// How to revert one change.
type Revert = Box<dyn FnOnce() -> anyhow::Result<()>>;

/// Changes to revert, newest first.
#[derive(Default)]
pub struct Undo {
    steps: Vec<(String, Revert)>,
}

impl Undo {
    /// Remember how to revert a change just made.
    pub fn push(
        &mut self,
        what: impl Into<String>,
        f: impl FnOnce() -> anyhow::Result<()> + 'static,
    ) {
        self.steps.push((what.into(), Box::new(f)));
    }

    /// Revert everything now (also done on drop); failures are logged, not fatal, so one
    /// stuck step does not leave the others in place.
    pub fn run(&mut self) {
        while let Some((what, f)) = self.steps.pop() {
            match f() {
                Ok(()) => tracing::debug!("undone: {what}"),
                Err(e) => tracing::warn!("could not undo {what}: {e:#}"),
            }
        }
    }
}

impl Drop for Undo {
    fn drop(&mut self) {
        self.run();
    }
}

/// Run a command, failing with its stderr.
pub(crate) fn sh(cmd: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .with_context(|| format!("running {cmd}"))?;
    if !out.status.success() {
        bail!(
            "{cmd} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

// ---- slow disk ---------------------------------------------------------------------------

/// Which cgroup I/O controller this machine offers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Cgroup {
    /// cgroup v1 `blkio`, mounted here.
    V1(PathBuf),
    /// cgroup v2 with the `io` controller, mounted here.
    V2(PathBuf),
}

/// Find the I/O controller, or say plainly why there is none.
pub fn detect_cgroup() -> Result<Cgroup, String> {
    let v1 = Path::new("/sys/fs/cgroup/blkio");
    if v1.join("cgroup.procs").exists() {
        return Ok(Cgroup::V1(v1.to_path_buf()));
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    for line in mounts.lines() {
        // … mount-point … - fstype source options
        let Some((pre, post)) = line.split_once(" - ") else {
            continue;
        };
        if post.split(' ').next() == Some("cgroup2") {
            if let Some(mp) = pre.split(' ').nth(4) {
                let p = PathBuf::from(mp);
                let ctl = std::fs::read_to_string(p.join("cgroup.controllers")).unwrap_or_default();
                if ctl.split_whitespace().any(|c| c == "io") {
                    return Ok(Cgroup::V2(p));
                }
            }
        }
    }
    Err(
        "no cgroup I/O controller: neither cgroup v1 blkio (/sys/fs/cgroup/blkio) nor a \
         cgroup v2 mount with the io controller; a slow disk cannot be made here"
            .into(),
    )
}

/// The whole disk (`major:minor`) holding `path` (throttling applies to disks, not
/// partitions).
pub fn disk_of(path: &Path) -> anyhow::Result<String> {
    let st = rustix::fs::stat(path).with_context(|| format!("stat {}", path.display()))?;
    let (major, minor) = (rustix::fs::major(st.st_dev), rustix::fs::minor(st.st_dev));
    let sys = PathBuf::from(format!("/sys/dev/block/{major}:{minor}"));
    if sys.join("partition").exists() {
        let parent = std::fs::read_to_string(sys.join("../dev"))
            .with_context(|| format!("the disk of partition {major}:{minor}"))?;
        return Ok(parent.trim().to_string());
    }
    if !sys.exists() {
        bail!(
            "{} is on device {major}:{minor}, which is not a block device (tmpfs, overlay?): \
             a slow disk needs the fileset on a real disk",
            path.display()
        );
    }
    Ok(format!("{major}:{minor}"))
}

/// Create cgroup `dir` under `base`, and register its removal: members (a server that
/// outlived its run) go back to `base` first.
fn make_cgroup(undo: &mut Undo, base: &Path, dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir(dir).with_context(|| format!("creating cgroup {}", dir.display()))?;
    let (base, dir) = (base.to_path_buf(), dir.to_path_buf());
    undo.push(format!("remove cgroup {}", dir.display()), move || {
        let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
        for pid in procs.split_whitespace() {
            let _ = std::fs::write(base.join("cgroup.procs"), pid);
        }
        std::fs::remove_dir(&dir).with_context(|| format!("rmdir {}", dir.display()))
    });
    Ok(())
}

/// Move a process (all its threads) and its children into cgroup `dir`.
fn join_cgroup(dir: &Path, pid: u32) -> anyhow::Result<()> {
    for p in crate::proc::tree(pid) {
        std::fs::write(dir.join("cgroup.procs"), p.to_string())
            .with_context(|| format!("moving {p} into {}", dir.display()))?;
    }
    Ok(())
}

/// A cgroup whose members' reads from one disk are throttled.
pub struct Throttle {
    kind: Cgroup,
    dir: PathBuf,
    device: String,
}

/// Limits of a slow disk.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DiskLimit {
    /// Reads per second.
    pub read_iops: Option<u64>,
    /// Read bytes per second.
    pub read_bps: Option<u64>,
}

impl Throttle {
    /// Make a throttled cgroup for the disk under `fileset_dir`.
    pub fn new(undo: &mut Undo, limit: DiskLimit, fileset_dir: &Path) -> anyhow::Result<Throttle> {
        let kind = detect_cgroup().map_err(anyhow::Error::msg)?;
        let device = disk_of(fileset_dir)?;
        let name = format!("lair-lab-{}", std::process::id());
        let (base, dir) = match &kind {
            Cgroup::V1(m) | Cgroup::V2(m) => (m.clone(), m.join(&name)),
        };
        if let Cgroup::V2(m) = &kind {
            let sub = std::fs::read_to_string(m.join("cgroup.subtree_control")).unwrap_or_default();
            if !sub.split_whitespace().any(|c| c == "io") {
                std::fs::write(m.join("cgroup.subtree_control"), "+io")
                    .context("enabling the io controller for child cgroups")?;
            }
        }
        make_cgroup(undo, &base, &dir)?;
        let t = Throttle { kind, dir, device };
        let write = |file: &str, value: String| {
            std::fs::write(t.dir.join(file), &value)
                .with_context(|| format!("writing {value:?} to {file}"))
        };
        match &t.kind {
            Cgroup::V1(_) => {
                if let Some(n) = limit.read_iops {
                    write(
                        "blkio.throttle.read_iops_device",
                        format!("{} {n}", t.device),
                    )?;
                }
                if let Some(n) = limit.read_bps {
                    write(
                        "blkio.throttle.read_bps_device",
                        format!("{} {n}", t.device),
                    )?;
                }
            }
            Cgroup::V2(_) => {
                let mut v = t.device.clone();
                if let Some(n) = limit.read_iops {
                    v.push_str(&format!(" riops={n}"));
                }
                if let Some(n) = limit.read_bps {
                    v.push_str(&format!(" rbps={n}"));
                }
                write("io.max", v)?;
            }
        }
        Ok(t)
    }

    /// Move a process (all its threads) and its children into the cgroup.
    pub fn add(&self, pid: u32) -> anyhow::Result<()> {
        join_cgroup(&self.dir, pid)
    }

    /// Reads from the disk by the cgroup's members so far (from the controller's own
    /// counters: the proof the throttle saw the I/O).
    pub fn reads(&self) -> u64 {
        let (file, key) = match self.kind {
            Cgroup::V1(_) => ("blkio.throttle.io_serviced", "Read"),
            Cgroup::V2(_) => ("io.stat", "rios"),
        };
        let text = std::fs::read_to_string(self.dir.join(file)).unwrap_or_default();
        text.lines()
            .filter(|l| l.starts_with(&format!("{} ", self.device)))
            .map(|l| match self.kind {
                Cgroup::V1(_) => {
                    let f: Vec<&str> = l.split_whitespace().collect();
                    if f.get(1) == Some(&key) {
                        f.get(2).and_then(|n| n.parse().ok()).unwrap_or(0)
                    } else {
                        0
                    }
                }
                Cgroup::V2(_) => l
                    .split_whitespace()
                    .find_map(|kv| kv.strip_prefix("rios="))
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0),
            })
            .sum()
    }
}

/// A memory cgroup the server joins, so the page cache it fills is reclaimed within a limit:
/// how a machine with 24 GiB is made to hold less of a fileset than the fileset's size (seed
/// 000's downloads need more files than fit in the cache). Page-cache pages are charged to
/// the cgroup of the process that reads them in, so the lab's own writing of the fileset
/// stays outside.
pub struct MemLimit {
    dir: PathBuf,
}

impl MemLimit {
    /// Make the cgroup (cgroup v1 `memory`, or v2 `memory.max`), limited to `bytes`.
    pub fn new(undo: &mut Undo, bytes: u64) -> anyhow::Result<MemLimit> {
        let v1 = Path::new("/sys/fs/cgroup/memory");
        let (base, file) = if v1.join("memory.limit_in_bytes").exists() {
            (v1.to_path_buf(), "memory.limit_in_bytes")
        } else if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
            let m = PathBuf::from("/sys/fs/cgroup");
            let sub = std::fs::read_to_string(m.join("cgroup.subtree_control")).unwrap_or_default();
            if !sub.split_whitespace().any(|c| c == "memory") {
                std::fs::write(m.join("cgroup.subtree_control"), "+memory")
                    .context("enabling the memory controller for child cgroups")?;
            }
            (m, "memory.max")
        } else {
            anyhow::bail!(
                "no memory cgroup (neither /sys/fs/cgroup/memory nor cgroup v2): the page \
                 cache cannot be limited here"
            );
        };
        let dir = base.join(format!("lair-lab-mem-{}", std::process::id()));
        make_cgroup(undo, &base, &dir)?;
        std::fs::write(dir.join(file), bytes.to_string())
            .with_context(|| format!("writing {bytes} to {file}"))?;
        Ok(MemLimit { dir })
    }

    /// Move a process and its children into the cgroup.
    pub fn add(&self, pid: u32) -> anyhow::Result<()> {
        join_cgroup(&self.dir, pid)
    }
}

// ---- slow clients ------------------------------------------------------------------------

/// A network namespace for the clients, joined to the server's by a veth pair whose
/// server-side end sends through a token bucket (`tbf`) at a given rate.
pub struct Netns {
    /// Namespace name (`ip netns exec NAME …`).
    pub name: String,
    /// The server's address on the link.
    pub server_ip: std::net::Ipv4Addr,
    /// The clients' address.
    pub client_ip: std::net::Ipv4Addr,
}

impl Netns {
    /// Make the namespace and the link; `rate` is tc syntax (`8mbit`), `None` unshaped.
    pub fn new(undo: &mut Undo, rate: Option<&str>) -> anyhow::Result<Netns> {
        for tool in ["ip", "tc"] {
            if sh("which", &[tool]).is_err() {
                bail!("{tool} is missing: apt-get install iproute2");
            }
        }
        let pid = std::process::id();
        let name = format!("lair-lab-{pid}");
        // Interface names are at most 15 bytes.
        let (srv, cli) = (
            format!("lls{}", pid % 1_000_000),
            format!("llc{}", pid % 1_000_000),
        );
        // A /30 out of 10.213.0.0/16 chosen by PID, so parallel labs do not collide.
        let k = (pid % 16_000) * 4;
        let net = [10u8, 213, (k >> 8) as u8, (k & 0xff) as u8];
        let server_ip = std::net::Ipv4Addr::new(net[0], net[1], net[2], net[3] + 1);
        let client_ip = std::net::Ipv4Addr::new(net[0], net[1], net[2], net[3] + 2);
        sh("ip", &["netns", "add", &name])?;
        {
            let name = name.clone();
            undo.push(format!("delete netns {name}"), move || {
                sh("ip", &["netns", "del", &name]).map(drop)
            });
        }
        sh(
            "ip",
            &["link", "add", &srv, "type", "veth", "peer", "name", &cli],
        )?;
        {
            let srv = srv.clone();
            undo.push(format!("delete link {srv}"), move || {
                // Gone already if the namespace took its peer with it.
                let _ = sh("ip", &["link", "del", &srv]);
                Ok(())
            });
        }
        sh("ip", &["link", "set", &cli, "netns", &name])?;
        sh(
            "ip",
            &["addr", "add", &format!("{server_ip}/30"), "dev", &srv],
        )?;
        sh("ip", &["link", "set", &srv, "up"])?;
        let ns = |args: &[&str]| {
            let mut v = vec!["netns", "exec", &name];
            v.extend_from_slice(args);
            sh("ip", &v)
        };
        ns(&["ip", "addr", "add", &format!("{client_ip}/30"), "dev", &cli])?;
        ns(&["ip", "link", "set", &cli, "up"])?;
        ns(&["ip", "link", "set", "lo", "up"])?;
        // TIME_WAIT reuse for the clients' many short connections (a namespaced sysctl:
        // gone with the namespace).
        let _ = ns(&["sysctl", "-qw", "net.ipv4.tcp_tw_reuse=1"]);
        if let Some(rate) = rate {
            sh(
                "tc",
                &[
                    "qdisc", "add", "dev", &srv, "root", "tbf", "rate", rate, "burst", "32kb",
                    "latency", "400ms",
                ],
            )?;
        }
        Ok(Netns {
            name,
            server_ip,
            client_ip,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::rc::Rc;

    #[test]
    fn undo_runs_newest_first_even_after_a_failure() {
        let log = Rc::new(RefCell::new(Vec::new()));
        {
            let mut u = Undo::default();
            for i in 0..3 {
                let log = Rc::clone(&log);
                u.push(format!("step {i}"), move || {
                    log.borrow_mut().push(i);
                    if i == 1 {
                        bail!("stuck");
                    }
                    Ok(())
                });
            }
        }
        assert_eq!(*log.borrow(), vec![2, 1, 0]);
    }

    #[test]
    fn the_disk_of_the_build_directory_is_found() {
        // The build directory is on a disk on these machines (in containers it may not be).
        match disk_of(Path::new(env!("CARGO_MANIFEST_DIR"))) {
            Ok(d) => assert!(d.contains(':'), "{d}"),
            Err(e) => eprintln!("no disk: {e:#}"),
        }
    }
}
