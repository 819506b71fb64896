//! The servers under test: lair with each backend, nginx (default and `aio threads`) and
//! lighttpd, each configured by the lab for the same docroot, address and CPU.
//!
//! The peers get the configuration their documentation recommends for static files: one
//! worker (the lab pins every server to the same single core), `sendfile`, keep-alive with no
//! request cap, no access log (lair's is off by default too), an open-file cache where they
//! have one. nginx `aio threads` is the variant nginx offers against blocking disk reads
//! (its thread pool; 32 threads, its default). Every server is started under `taskset` so it
//! and its helpers run on the server CPU only, and stopped by its PID.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use serde::{Deserialize, Serialize};

/// What kind of server.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum ServerKind {
    /// `lair serve`.
    Lair {
        /// `--backend`.
        backend: String,
        /// More flags.
        #[serde(default)]
        args: Vec<String>,
        /// Run as this user (and its group) rather than the lab's, the usual deployment
        /// (`www-data` serving files it does not own): started through `setpriv`.
        #[serde(default)]
        user: Option<String>,
    },
    /// nginx.
    Nginx {
        /// `aio threads` with a pool of this many threads.
        #[serde(default)]
        aio_threads: Option<u32>,
    },
    /// lighttpd.
    Lighttpd,
}

/// A named server configuration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerSpec {
    /// Name in tables and plots.
    pub name: String,
    /// What it is.
    #[serde(flatten)]
    pub kind: ServerKind,
}

/// The built-in servers by name: `lair-BACKEND` for each engine backend (`lair-sync`,
/// `lair-lazy`, … — every [`lair_io::BackendKind`]), `nginx`, `nginx-aio`, `lighttpd`; and
/// `lair-BACKEND@USER`, lair run as another user (`lair-lazy@nobody`: not the files' owner).
pub fn builtin(name: &str) -> Option<ServerSpec> {
    let (base, user) = match name.split_once('@') {
        Some((b, u)) if b.starts_with("lair-") && !u.is_empty() => (b, Some(u.to_string())),
        Some(_) => return None,
        None => (name, None),
    };
    let backend = base
        .strip_prefix("lair-")
        .and_then(|b| b.parse::<lair_io::BackendKind>().ok());
    let kind = match base {
        _ if backend.is_some() => ServerKind::Lair {
            backend: base["lair-".len()..].to_string(),
            args: Vec::new(),
            user,
        },
        "nginx" => ServerKind::Nginx { aio_threads: None },
        "nginx-aio" => ServerKind::Nginx {
            aio_threads: Some(32),
        },
        "lighttpd" => ServerKind::Lighttpd,
        _ => return None,
    };
    Some(ServerSpec {
        name: name.to_string(),
        kind,
    })
}

/// `spec` as the `--servers` entry `want` asks for it: itself for its own name; for
/// `NAME@USER` with a lair `NAME`, the same server run as `USER`; otherwise `None`.
pub fn as_user(spec: &ServerSpec, want: &str) -> Option<ServerSpec> {
    if want == spec.name {
        return Some(spec.clone());
    }
    let (name, user) = want.split_once('@')?;
    let mut s = spec.clone();
    match &mut s.kind {
        ServerKind::Lair { user: u, .. } if name == spec.name && !user.is_empty() => {
            *u = Some(user.to_string());
            s.name = want.to_string();
            Some(s)
        }
        _ => None,
    }
}

/// Names of the built-in servers: lair on each backend, then the peers.
pub fn builtin_names() -> Vec<String> {
    let lair = lair_io::BackendKind::ALL.map(|b| format!("lair-{b}"));
    let peers = ["nginx", "nginx-aio", "lighttpd"].map(String::from);
    lair.into_iter().chain(peers).collect()
}

/// Whether the server's program is installed; the error says how to install it.
pub fn check_installed(spec: &ServerSpec) -> anyhow::Result<()> {
    let (prog, pkg) = match spec.kind {
        ServerKind::Lair { .. } => return Ok(()),
        ServerKind::Nginx { .. } => ("nginx", "nginx-light"),
        ServerKind::Lighttpd => ("lighttpd", "lighttpd"),
    };
    let found = std::env::var_os("PATH").is_some_and(|paths| {
        std::env::split_paths(&paths).any(|d| d.join(prog).is_file())
            || Path::new("/usr/sbin").join(prog).is_file()
    });
    if !found {
        bail!(
            "{}: {prog} is not installed (apt-get install {pkg}), or leave it out of the \
             experiment with --servers",
            spec.name
        );
    }
    Ok(())
}

/// A running server.
pub struct ServerProcess {
    /// Its name.
    pub name: String,
    /// Process id (nginx: the master; its worker is a child).
    pub pid: u32,
    child: Child,
    stats_json: Option<PathBuf>,
    log: PathBuf,
}

/// Where to start a server.
pub struct Place<'a> {
    /// The docroot.
    pub root: &'a Path,
    /// Address to listen on.
    pub addr: SocketAddr,
    /// CPU to pin to.
    pub cpu: usize,
    /// Scratch directory for configs, logs, pid files.
    pub work: &'a Path,
    /// The `lair` binary.
    pub lair: &'a Path,
}

fn write_nginx_conf(p: &Place<'_>, aio: Option<u32>) -> anyhow::Result<PathBuf> {
    let w = p.work.display();
    let (pool, aio_line) = match aio {
        Some(n) => (
            format!("thread_pool default threads={n} max_queue=65536;\n"),
            "aio threads;",
        ),
        None => (String::new(), ""),
    };
    let conf = format!(
        "worker_processes 1;\ndaemon off;\nerror_log {w}/nginx-error.log;\npid {w}/nginx.pid;\n\
         worker_rlimit_nofile 20000;\n{pool}\
         events {{ worker_connections 16384; }}\n\
         http {{\n  access_log off;\n  sendfile on; tcp_nopush on; tcp_nodelay on; {aio_line}\n  \
         open_file_cache max=10000 inactive=60s; open_file_cache_valid 60s;\n  \
         keepalive_requests 1000000; keepalive_timeout 65;\n  \
         types {{ text/html html; application/octet-stream bin; }}\n  \
         default_type application/octet-stream;\n  \
         client_body_temp_path {w}; proxy_temp_path {w}; fastcgi_temp_path {w};\n  \
         uwsgi_temp_path {w}; scgi_temp_path {w};\n  \
         server {{ listen {addr} backlog=4096; root {root}; }}\n}}\n",
        addr = p.addr,
        root = p.root.display(),
    );
    let path = p.work.join("nginx.conf");
    std::fs::write(&path, conf)?;
    Ok(path)
}

fn write_lighttpd_conf(p: &Place<'_>) -> anyhow::Result<PathBuf> {
    let conf = format!(
        "server.document-root = \"{root}\"\nserver.bind = \"{ip}\"\nserver.port = {port}\n\
         server.network-backend = \"sendfile\"\nserver.max-keep-alive-requests = 1000000\n\
         server.max-keep-alive-idle = 65\nserver.max-connections = 8192\n\
         server.max-fds = 16384\nserver.listen-backlog = 4096\n\
         server.errorlog = \"{w}/lighttpd-error.log\"\nserver.stat-cache-engine = \"simple\"\n\
         mimetype.assign = (\".html\" => \"text/html\", \"\" => \"application/octet-stream\")\n",
        root = p.root.display(),
        ip = p.addr.ip(),
        port = p.addr.port(),
        w = p.work.display(),
    );
    let path = p.work.join("lighttpd.conf");
    std::fs::write(&path, conf)?;
    Ok(path)
}

/// Start `spec` at `place` and wait until it accepts connections.
pub fn start(spec: &ServerSpec, place: &Place<'_>) -> anyhow::Result<ServerProcess> {
    check_installed(spec)?;
    std::fs::create_dir_all(place.work)?;
    let log = place.work.join(format!("{}.log", spec.name));
    let mut cmd = Command::new("taskset");
    cmd.arg("-c").arg(place.cpu.to_string());
    let mut stats_json = None;
    match &spec.kind {
        ServerKind::Lair {
            backend,
            args,
            user,
        } => {
            let stats = place.work.join(format!("{}.stats.json", spec.name));
            let _ = std::fs::remove_file(&stats);
            if let Some(u) = user {
                // Its statistics file is written into the scratch directory.
                let ok = Command::new("chown")
                    .arg(format!("{u}:"))
                    .arg(place.work)
                    .status()
                    .is_ok_and(|s| s.success());
                if !ok {
                    bail!(
                        "{}: cannot give {} to user {u}",
                        spec.name,
                        place.work.display()
                    );
                }
                let group = Command::new("id")
                    .args(["-gn", u])
                    .output()
                    .ok()
                    .filter(|o| o.status.success())
                    .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
                    .with_context(|| format!("{}: no user {u}", spec.name))?;
                cmd.args([
                    "setpriv",
                    &format!("--reuid={u}"),
                    &format!("--regid={group}"),
                ])
                .args(["--clear-groups", "--"]);
            }
            cmd.arg(place.lair)
                .arg("serve")
                .arg(place.root)
                .args(["--listen", &place.addr.to_string()])
                .args(["--workers", "1", "--backend", backend])
                .arg("--stats-json")
                .arg(&stats)
                .args(args);
            stats_json = Some(stats);
        }
        ServerKind::Nginx { aio_threads } => {
            let conf = write_nginx_conf(place, *aio_threads)?;
            cmd.arg("nginx").arg("-c").arg(conf);
        }
        ServerKind::Lighttpd => {
            let conf = write_lighttpd_conf(place)?;
            cmd.arg("lighttpd").arg("-D").arg("-f").arg(conf);
        }
    }
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log)?)
        .spawn()
        .with_context(|| format!("starting {}", spec.name))?;
    let mut r = ServerProcess {
        name: spec.name.clone(),
        pid: child.id(),
        child,
        stats_json,
        log,
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if TcpStream::connect_timeout(&place.addr, Duration::from_millis(200)).is_ok() {
            return Ok(r);
        }
        if let Ok(Some(status)) = r.child.try_wait() {
            bail!(
                "{} exited at start ({status}): {}",
                spec.name,
                std::fs::read_to_string(&r.log).unwrap_or_default().trim()
            );
        }
        if Instant::now() > deadline {
            bail!(
                "{} did not accept connections on {} within 10 s",
                spec.name,
                place.addr
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl ServerProcess {
    /// Stop the server (SIGTERM, then SIGKILL after 10 s) and return lair's engine counters
    /// and HTTP statistics, if it is lair.
    pub fn stop(mut self) -> Option<serde_json::Value> {
        self.terminate();
        let text = std::fs::read_to_string(self.stats_json.as_ref()?).ok()?;
        serde_json::from_str(&text).ok()
    }

    fn terminate(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        if let Some(pid) = rustix::process::Pid::from_raw(self.pid as i32) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        tracing::warn!(
            "{} did not stop on SIGTERM within 10 s; killing it",
            self.name
        );
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Whether it is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The server's standard error so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.terminate();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lair_server_can_be_asked_for_as_another_user() {
        let lazy = builtin("lair-lazy").unwrap();
        let as_nobody = builtin("lair-lazy@nobody").unwrap();
        assert_eq!(as_user(&lazy, "lair-lazy@nobody"), Some(as_nobody.clone()));
        assert!(matches!(
            as_nobody.kind,
            ServerKind::Lair { user: Some(ref u), .. } if u == "nobody"
        ));
        assert_eq!(as_user(&lazy, "lair-lazy"), Some(lazy.clone()));
        assert_eq!(as_user(&lazy, "lair-sync@nobody"), None);
        assert_eq!(as_user(&builtin("nginx").unwrap(), "nginx@nobody"), None);
        assert!(builtin("nginx@nobody").is_none() && builtin("lair-lazy@").is_none());
    }
}
