//! Test support: the real `lair` binary in a guard that kills it on drop, and a small raw
//! HTTP/1.1 client over real sockets (so tests control every byte and every split).

#![allow(dead_code)]

mod skip;
#[allow(unused_imports)] // not every test binary skips
pub use skip::skipped;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The backends every integration test runs against: all of them, as lair-io lists them, so a
/// new backend is tested without touching the tests.
pub const BACKENDS: [&str; lair_io::BackendKind::ALL.len()] = {
    let mut names = [""; lair_io::BackendKind::ALL.len()];
    let mut i = 0;
    while i < names.len() {
        names[i] = lair_io::BackendKind::ALL[i].name();
        i += 1;
    }
    names
};

/// The server modes a test of the core subset runs under, besides the defaults: every value
/// of every mode setting (`tests/modes.rs`). `./scripts/test.sh --matrix` runs the whole
/// suite under every combination instead (`LAIR_TEST_MODE`).
pub const MODES: &[&[&str]] = &[
    &["--ecem", "dns"],
    &["--data", "copy"],
    &["--data", "copy", "--ecem", "ded"],
    &["--data", "splice"],
    &["--data", "splice", "--ecem", "dns"],
    &["--data", "share"],
    &["--data", "share", "--ecem", "dns"],
    &["--data", "move"],
    &["--data", "emulated"],
    &["--data", "emulated", "--ecem", "ded"],
    &["--model", "threads"],
    &["--model", "threads", "--data", "copy"],
    &["--model", "threads", "--data", "copy", "--ecem", "ded"],
    &["--model", "threads", "--data", "splice"],
    &["--model", "threads", "--data", "share"],
    &["--model", "threads", "--data", "move"],
    &["--model", "threads", "--data", "emulated"],
];

/// The matrix runs this suite under the thread-per-connection model (`LAIR_TEST_MODE`), where
/// figures that belong to the event loop's engine differ.
pub fn matrix_threads() -> bool {
    std::env::var("LAIR_TEST_MODE").is_ok_and(|m| m.contains("--model threads"))
}

/// The backends a test runs under `mode`: all of them in the event loop, one under the thread
/// model (which uses none).
pub fn backends_for(mode: &[&str]) -> &'static [&'static str] {
    if mode.windows(2).any(|w| w == ["--model", "threads"]) {
        &BACKENDS[1..2]
    } else {
        &BACKENDS
    }
}

/// A running `lair serve`, killed (SIGKILL) when dropped unless stopped first.
pub struct Server {
    pub child: Child,
    pub addr: SocketAddr,
    pub addrs: Vec<SocketAddr>,
    stderr: mpsc::Receiver<String>,
    /// Lines read while waiting for the listening line (start-up warnings among them).
    startup: Vec<String>,
}

/// How to start the server.
pub struct Opts<'a> {
    pub root: &'a Path,
    pub backend: &'a str,
    pub args: Vec<String>,
    /// Program and arguments to run lair under (setpriv, prlimit).
    pub wrapper: Vec<String>,
    pub listen: Vec<String>,
    pub workers: usize,
}

impl<'a> Opts<'a> {
    pub fn new(root: &'a Path, backend: &'a str) -> Self {
        Opts {
            root,
            backend,
            args: Vec::new(),
            wrapper: Vec::new(),
            listen: vec!["127.0.0.1:0".into()],
            workers: 2,
        }
    }

    pub fn arg(mut self, a: impl Into<String>) -> Self {
        self.args.push(a.into());
        self
    }

    pub fn args<I: IntoIterator<Item = S>, S: Into<String>>(mut self, a: I) -> Self {
        self.args.extend(a.into_iter().map(Into::into));
        self
    }

    /// This test is about the event loop's engine (its backends' counters, system calls):
    /// run that model whatever the matrix asks for.
    pub fn events(self) -> Self {
        self.args(["--model", "events"])
    }

    pub fn workers(mut self, n: usize) -> Self {
        self.workers = n;
        self
    }

    pub fn wrapper<I: IntoIterator<Item = S>, S: Into<String>>(mut self, w: I) -> Self {
        self.wrapper = w.into_iter().map(Into::into).collect();
        self
    }

    pub fn start(self) -> Server {
        let exe = env!("CARGO_BIN_EXE_lair");
        let mut cmd = if self.wrapper.is_empty() {
            Command::new(exe)
        } else {
            let mut c = Command::new(&self.wrapper[0]);
            c.args(&self.wrapper[1..]).arg(exe);
            c
        };
        cmd.arg("serve")
            .arg(self.root)
            .args(["--backend", self.backend]);
        cmd.args(["--workers", &self.workers.to_string()]);
        for l in &self.listen {
            cmd.args(["--listen", l]);
        }
        // A `--matrix` run of the test script runs the whole suite under each mode. A test
        // that sets a mode setting itself runs exactly its own mode: the settings depend on
        // each other (`--ecem ded` needs a buffer path), so the matrix's are not mixed in.
        let pinned = self
            .args
            .iter()
            .any(|a| ["--model", "--data", "--ecem"].contains(&a.as_str()));
        if let Ok(mode) =
            std::env::var("LAIR_TEST_MODE").map(|m| if pinned { String::new() } else { m })
        {
            let words: Vec<&str> = mode.split_whitespace().collect();
            for pair in words.chunks(2) {
                cmd.args(pair);
            }
        }
        cmd.args(&self.args)
            .env("LAIR_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("start lair");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut server = Server {
            child,
            addr: "0.0.0.0:0".parse().unwrap(),
            addrs: Vec::new(),
            stderr: rx,
            startup: Vec::new(),
        };
        let want = self.listen.len();
        let deadline = Instant::now() + Duration::from_secs(10);
        while server.addrs.len() < want {
            let left = deadline.saturating_duration_since(Instant::now());
            match server.stderr.recv_timeout(left) {
                Ok(line) => {
                    if let Some(a) = line.strip_prefix("lair: listening on http://") {
                        server.addrs.push(a.parse().expect("address"));
                    }
                    server.startup.push(line);
                }
                Err(_) => panic!("lair did not start: {:?}", server.child.try_wait()),
            }
        }
        server.addr = server.addrs[0];
        server
    }
}

impl Server {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn connect(&self) -> Client {
        Client::connect(self.addr)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// SIGTERM, then wait (bounded) for exit; returns stderr lines after the signal.
    pub fn stop(&mut self) -> Vec<String> {
        signal(self.pid(), "TERM");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                assert!(status.success(), "lair exited with {status}");
                break;
            }
            assert!(Instant::now() < deadline, "lair did not stop");
            std::thread::sleep(Duration::from_millis(20));
        }
        // Everything it wrote, start-up included: a warning may come before it listens.
        let mut lines = std::mem::take(&mut self.startup);
        while let Ok(l) = self.stderr.recv_timeout(Duration::from_millis(500)) {
            lines.push(l);
        }
        lines
    }

    /// Lines written to stderr so far.
    pub fn stderr_lines(&self) -> Vec<String> {
        self.stderr.try_iter().collect()
    }

    /// User + system CPU time of the server process so far.
    pub fn cpu_time(&self) -> Duration {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap();
        let after = &stat[stat.rfind(')').unwrap() + 2..];
        let f: Vec<&str> = after.split_whitespace().collect();
        let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
        Duration::from_millis(ticks * 10)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

pub fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .args([format!("-{sig}"), pid.to_string()])
        .status()
        .expect("kill")
        .success();
    assert!(ok, "kill -{sig} {pid}");
}

/// One parsed response.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A raw HTTP/1.1 client on one connection.
pub struct Client {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        stream.set_nodelay(true).unwrap();
        Client {
            stream,
            buf: Vec::new(),
        }
    }

    pub fn send(&mut self, raw: &[u8]) {
        self.stream.write_all(raw).expect("send");
    }

    /// `GET path` with Host, keep-alive.
    pub fn get(&mut self, path: &str) -> Response {
        self.request("GET", path, &[])
    }

    pub fn request(&mut self, method: &str, path: &str, headers: &[(&str, &str)]) -> Response {
        let mut raw = format!("{method} {path} HTTP/1.1\r\nHost: test\r\n");
        for (n, v) in headers {
            raw.push_str(&format!("{n}: {v}\r\n"));
        }
        raw.push_str("\r\n");
        self.send(raw.as_bytes());
        self.read_response(method == "HEAD")
    }

    fn fill(&mut self) -> usize {
        let mut chunk = [0u8; 65536];
        match self.stream.read(&mut chunk) {
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                n
            }
            Err(e) => panic!("read: {e} (have {} bytes)", self.buf.len()),
        }
    }

    /// Read one response (a HEAD response has no body).
    pub fn read_response(&mut self, head_only: bool) -> Response {
        loop {
            let mut hs = [httparse::EMPTY_HEADER; 64];
            let mut r = httparse::Response::new(&mut hs);
            if let httparse::Status::Complete(n) = r.parse(&self.buf).expect("response head") {
                let status = r.code.unwrap();
                let headers: Vec<(String, String)> = r
                    .headers
                    .iter()
                    .map(|h| {
                        (
                            h.name.to_string(),
                            String::from_utf8_lossy(h.value).into_owned(),
                        )
                    })
                    .collect();
                let resp = Response {
                    status,
                    headers,
                    body: Vec::new(),
                };
                let len: usize = if head_only || status == 304 {
                    0
                } else {
                    resp.header("content-length")
                        .expect("content-length")
                        .parse()
                        .unwrap()
                };
                while self.buf.len() < n + len {
                    assert!(self.fill() > 0, "closed inside a body");
                }
                let body = self.buf[n..n + len].to_vec();
                self.buf.drain(..n + len);
                return Response { body, ..resp };
            }
            assert!(self.fill() > 0, "closed before a response");
        }
    }

    /// Whether the server closed the connection (EOF, or reset) within `wait`, after
    /// draining whatever was still to read.
    pub fn closed_within(&mut self, wait: Duration) -> bool {
        self.rest_within(wait).is_some()
    }

    /// Everything still to read, unparsed, if the server closes (EOF, or reset) within
    /// `wait`.
    pub fn rest_within(&mut self, wait: Duration) -> Option<Vec<u8>> {
        self.stream.set_read_timeout(Some(wait)).unwrap();
        let mut rest = std::mem::take(&mut self.buf);
        let mut chunk = [0u8; 65536];
        let deadline = Instant::now() + wait;
        loop {
            match self.stream.read(&mut chunk) {
                Ok(0) => return Some(rest),
                Ok(n) => rest.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Some(rest),
                Err(_) => return None,
            }
            if Instant::now() > deadline {
                return None;
            }
        }
    }
}

/// A document root with known files, next to a canary file outside it.
pub struct Site {
    pub dir: tempfile::TempDir,
    pub root: PathBuf,
    pub canary: &'static str,
}

pub const CANARY: &str = "CANARY-must-never-be-served";

impl Site {
    pub fn new() -> Site {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir(&root).unwrap();
        std::fs::write(dir.path().join("canary.txt"), CANARY).unwrap();
        std::fs::write(root.join("index.html"), "<h1>home</h1>\n").unwrap();
        std::fs::write(root.join("hello.txt"), "hello, world\n").unwrap();
        std::fs::create_dir(root.join("docs")).unwrap();
        std::fs::write(root.join("docs/index.html"), "<h1>docs</h1>\n").unwrap();
        std::fs::create_dir(root.join("empty")).unwrap();
        std::fs::write(root.join(".secret"), "hidden").unwrap();
        std::fs::write(root.join("data.json"), "{\"a\":1}").unwrap();
        std::fs::write(root.join("zero.bin"), "").unwrap();
        let digits: Vec<u8> = (0..100u8).map(|i| b'0' + i % 10).collect();
        std::fs::write(root.join("digits.txt"), &digits).unwrap();
        std::fs::write(root.join("big.bin"), pattern(3 << 20)).unwrap();
        Site {
            dir,
            root,
            canary: CANARY,
        }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }
}

/// The user `lair` runs as in tests that must not be root (`setpriv`): `nobody`.
pub const AS_NOBODY: [&str; 4] = [
    "setpriv",
    "--reuid=65534",
    "--regid=65534",
    "--clear-groups",
];

impl Site {
    /// Let another user (`nobody`) reach the site's files.
    pub fn open_to_all(&self) {
        use std::os::unix::fs::PermissionsExt;
        for p in [self.dir.path(), self.root.as_path()] {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
    }

    /// A content manifest of the site (`lair lab manifest`), for `lair load --manifest`.
    pub fn manifest(&self) -> PathBuf {
        let path = self.dir.path().join("manifest.tsv");
        let out = Command::new(env!("CARGO_BIN_EXE_lair"))
            .args(["lab", "manifest"])
            .arg(&self.root)
            .output()
            .unwrap();
        assert!(out.status.success());
        std::fs::write(&path, &out.stdout).unwrap();
        path
    }
}

/// Run `lair load` against `url` with `args`, checking every body against `manifest`; panics
/// (saying `what`) unless every one of `requests` requests succeeded. Returns its JSON report.
pub fn load_checked(
    what: &str,
    url: &str,
    args: &[&str],
    manifest: &Path,
    requests: u64,
) -> serde_json::Value {
    let load = Command::new(env!("CARGO_BIN_EXE_lair"))
        .args(["load", url])
        .args(args)
        .args(["--json", "-q", "--manifest"])
        .arg(manifest)
        .output()
        .unwrap();
    assert!(
        load.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&load.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&load.stdout).unwrap();
    assert_eq!(report["requests"], requests, "{what}: {report}");
    for (kind, n) in report["errors"].as_object().unwrap() {
        assert_eq!(
            n, 0,
            "{what}: {kind} errors (bodies checked by the manifest): {report}"
        );
    }
    report
}

/// Deterministic, position-dependent bytes (a wrong offset shows up as a mismatch).
pub fn pattern(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[3])
        .collect()
}
