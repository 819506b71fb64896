//! One test per bug found, named after where it was found.

mod support;

use std::process::Command;

use support::{pattern, Opts, Site, BACKENDS};

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

/// Issue 11, found by tests/hostile.rs once every connection was registered with epoll at
/// accept: when a client's last request and its end of stream arrive while the server is still
/// busy with an earlier response, epoll announces both with one edge before the receive that
/// reads the request. The engine took that readiness as used up (a receive sent to a helper, or
/// a receive that got less than it had room for), parked the next receive waiting for an edge
/// that never comes again, and the connection hung until the client gave up. A socket whose
/// peer has shut down is never "known unreadable" now.
#[test]
fn issue_11_an_end_of_stream_behind_a_pipelined_request_closes_at_once() {
    use std::io::{Read, Write};
    use std::time::Duration;
    let site = Site::new();
    for b in BACKENDS {
        let srv = Opts::new(&site.root, b).start();
        for i in 0..3 {
            let mut s = small_window_client(srv.addr);
            // Long enough never to fire on a working server, short enough to fail the test.
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            // A response larger than the socket buffers: the server waits to send more.
            s.write_all(b"GET /big.bin HTTP/1.1\r\nHost: x\r\n\r\n")
                .unwrap();
            std::thread::sleep(Duration::from_millis(100));
            // The next request and the end of stream arrive while it waits...
            s.write_all(b"GET /hello.txt HTTP/1.1\r\nHost: x\r\n\r\n")
                .unwrap();
            s.shutdown(std::net::Shutdown::Write).unwrap();
            std::thread::sleep(Duration::from_millis(100));
            // ...and are read only once the first response is out.
            let mut got = Vec::new();
            let r = s.read_to_end(&mut got);
            assert!(r.is_ok(), "{b} try {i}: the server never closed ({r:?})");
            let answers = got.windows(9).filter(|w| w == b"HTTP/1.1 ").count();
            assert_eq!(answers, 2, "{b} try {i}");
            assert!(got.ends_with(b"hello, world\n"), "{b} try {i}");
        }
    }
}

/// A client socket with a 4 KiB receive buffer, set before the handshake so the window the
/// server sees stays small: a large response then waits on the server side.
fn small_window_client(addr: std::net::SocketAddr) -> std::net::TcpStream {
    use rustix::net::{self, sockopt, AddressFamily, SocketType};
    let fd = net::socket(AddressFamily::INET, SocketType::STREAM, None).unwrap();
    sockopt::set_socket_recv_buffer_size(&fd, 4096).unwrap();
    net::connect(&fd, &addr).unwrap();
    std::net::TcpStream::from(fd)
}

/// Issue 11, found by a loop of the serve tests: "listening" was printed before the signal
/// handlers were installed, so a SIGTERM sent the moment a script saw the line killed the
/// server outright (exit by signal 15, no report, no flushed log) instead of stopping it.
#[test]
fn issue_11_a_sigterm_right_after_listening_is_a_graceful_stop() {
    let site = Site::new();
    for i in 0..30 {
        let mut srv = Opts::new(&site.root, "lazy").workers(1).start();
        // `stop` sends SIGTERM at once and asserts a successful exit.
        let lines = srv.stop();
        assert!(
            lines.iter().any(|l| l.contains("engine counters")),
            "try {i}: no report at exit: {lines:?}"
        );
    }
}

/// Issue 12, found trying lair as a new user (`lair serve … 2>&1 | head -3`, then SIGTERM):
/// once whatever read stderr was gone, the signal thread's log line hit the broken pipe,
/// tracing reported that with `eprintln!`, which panicked, and the thread died — every later
/// SIGTERM was ignored while the server kept serving. A log line that cannot be written is now
/// dropped, and a panic anywhere ends the process.
#[test]
fn issue_12_sigterm_still_stops_the_server_when_its_stderr_is_gone() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};
    let site = Site::new();
    for b in ["lazy", "sync"] {
        let mut child = KillOnDrop(
            Command::new(env!("CARGO_BIN_EXE_lair"))
                .args(["serve", "--listen", "127.0.0.1:0", "--backend", b])
                .arg(&site.root)
                .env("LAIR_LOG", "info")
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap(),
        );
        // Read up to the listening line (start-up lines may come first), then drop the
        // reader: the pipe's read end is closed.
        let mut reader = BufReader::new(child.0.stderr.take().unwrap());
        let mut line = String::new();
        for _ in 0..20 {
            line.clear();
            if reader.read_line(&mut line).unwrap() == 0 || line.contains("listening") {
                break;
            }
        }
        assert!(line.contains("listening"), "{line}");
        drop(reader);
        support::signal(child.0.id(), "TERM");
        let deadline = Instant::now() + Duration::from_secs(15);
        let status = loop {
            if let Some(s) = child.0.try_wait().unwrap() {
                break s;
            }
            // The guard kills it on the way out.
            assert!(
                Instant::now() <= deadline,
                "{b}: SIGTERM ignored once stderr was gone"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(status.success(), "{b}: {status}");
    }
}

/// Issue 12: start-up errors printed the OS error twice (`… (os error 2): No such file or
/// directory (os error 2)`), and log lines carried ANSI colours into files and pipes.
#[test]
fn issue_12_errors_say_their_cause_once_and_pipes_get_no_colours() {
    let out = Command::new(env!("CARGO_BIN_EXE_lair"))
        .args(["serve", "/nonexistent/root", "--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(err.matches("No such file or directory").count(), 1, "{err}");
    let site = Site::new();
    let mut srv = Opts::new(&site.root, "lazy").workers(1).start();
    let lines = srv.stop();
    assert!(
        lines.iter().all(|l| !l.contains('\x1b')),
        "colour codes in a pipe: {lines:?}"
    );
}

/// Issue 12, found trying lair as a new user: a GET whose announced body arrived one byte at a
/// time dodged every timeout (discarding it re-armed the keep-alive deadline on every byte), so
/// ten such clients held a `--max-connections 10` server at 503 as long as they liked. The
/// header timeout now covers the head and the body that is discarded.
#[test]
fn issue_12_a_trickling_request_body_meets_the_header_timeout() {
    use std::io::{Read, Write};
    use std::time::{Duration, Instant};
    let site = Site::new();
    for b in ["lazy", "sync"] {
        let srv = Opts::new(&site.root, b)
            .args(["--header-timeout", "1s", "--keepalive-timeout", "60s"])
            .start();
        let mut s = std::net::TcpStream::connect(srv.addr).unwrap();
        s.write_all(b"GET /hello.txt HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n")
            .unwrap();
        s.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let start = Instant::now();
        let mut got = Vec::new();
        let mut closed = false;
        // One body byte every 100 ms for up to 8 s: far longer than the header timeout.
        while start.elapsed() < Duration::from_secs(8) {
            if s.write_all(b"x").is_err() {
                closed = true;
                break;
            }
            let mut buf = [0u8; 4096];
            match s.read(&mut buf) {
                Ok(0) => {
                    closed = true;
                    break;
                }
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
                Err(_) => {
                    closed = true;
                    break;
                }
            }
        }
        assert!(got.starts_with(b"HTTP/1.1 200"), "{b}: answered first");
        assert!(closed, "{b}: a trickling body kept the connection for 8 s");
    }
}

/// Issue 12, found trying lair as a new user: a second `lair serve` on a port another lair
/// held started without a word, and the kernel spread connections over both (SO_REUSEPORT
/// between processes of one user). A port in use is now an error, unless `--share-port`.
#[test]
fn issue_12_a_port_in_use_is_an_error_unless_shared() {
    let site = Site::new();
    let first = Opts::new(&site.root, "lazy").start();
    let port = first.addr.to_string();
    // Bounded: were the port silently shared again, this server would run until killed.
    let out = Command::new("timeout")
        .arg("20")
        .arg(env!("CARGO_BIN_EXE_lair"))
        .args(["serve", "--listen", &port])
        .arg(&site.root)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("address in use"), "{err}");
    let mut o = Opts::new(&site.root, "lazy").arg("--share-port");
    o.listen = vec![port];
    let mut second = o.start();
    assert_eq!(second.addr, first.addr);
    second.stop();
}

/// Issue 12, found trying lair as a new user: after `truncate -s 100` of a 10,000-byte file
/// the small-file cache kept answering `Content-Length: 10000` with the old bytes for as long
/// as its entries lived. A hit checks the file now — with an `fstat` while the entry is
/// lukewarm, through its inotify watch once it is hot: a truncate, an in-place rewrite or a
/// rename over the file is seen at the next lookup, on every worker, however long the time to
/// live. The watcher's thread raises a hot entry's flag a moment after the change, so a
/// response in that moment is the complete old file — never a mix, never a wrong length — and
/// once the new file has been served the old one never comes back.
#[test]
fn issue_12_a_cached_body_never_outlives_a_change_to_its_file() {
    use std::io::{Seek, Write};
    use std::time::{Duration, Instant};
    let site = Site::new();
    let hot = lair_http::cache::WATCH_AFTER as usize + 1;
    for (b, (heat, workers, warm)) in BACKENDS
        .iter()
        .flat_map(|b| [("lukewarm", 2, 3), ("hot", 1, hot)].map(|h| (b, h)))
    {
        let srv = Opts::new(&site.root, b)
            .workers(workers)
            .args(["--file-cache-ttl", "1h"])
            .start();
        let path = site.path("small.bin");
        let mut old = vec![b'a'; 10_000];
        std::fs::write(&path, &old).unwrap();
        // Each GET on a new connection, so every worker's cache is filled and then tried.
        let get = || srv.connect().get("/small.bin");
        let b = format!("{b}, {heat}");
        for what in ["truncated", "rewritten in place", "renamed over"] {
            // A changed file's new entry starts lukewarm again.
            for _ in 0..warm {
                assert_eq!(get().body, old, "{b}: warm-up");
            }
            let new = match what {
                "truncated" => {
                    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
                    f.set_len(100).unwrap();
                    vec![b'a'; 100]
                }
                "rewritten in place" => {
                    let mut f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
                    f.seek(std::io::SeekFrom::Start(0)).unwrap();
                    f.write_all(&[b'b'; 100]).unwrap();
                    vec![b'b'; 100]
                }
                _ => {
                    let new = pattern(12_345);
                    let tmp = site.path("small.bin.tmp");
                    std::fs::write(&tmp, &new).unwrap();
                    std::fs::rename(&tmp, &path).unwrap();
                    new
                }
            };
            let deadline = Instant::now() + Duration::from_secs(10);
            let mut seen_new = 0;
            while seen_new < 8 {
                let r = get();
                assert_eq!(r.status, 200, "{b}, {what}");
                let len: usize = r.header("content-length").unwrap().parse().unwrap();
                assert_eq!(len, r.body.len(), "{b}, {what}: length and body agree");
                if r.body == new {
                    seen_new += 1;
                } else {
                    assert_eq!(r.body, old, "{b}, {what}: neither the old file nor the new");
                    assert_eq!(seen_new, 0, "{b}, {what}: the old file came back");
                    assert!(Instant::now() < deadline, "{b}, {what}: still the old file");
                }
            }
            old = new;
        }
        let mut srv = srv;
        let lines = srv.stop().join("\n");
        // Each connection thread has a cache of its own: how many entries got hot there
        // depends on which thread took which connection.
        if !support::matrix_threads() {
            let watched = if heat == "hot" { "3 added" } else { "0 added" };
            assert!(
                lines.contains(&format!("hot files watched: {watched}")),
                "{b}: {lines}"
            );
        }
    }
}

/// Issue 12, found by the `conn` fuzz target: a request refused before it was parsed (here
/// `HEAD … HTTP/2.1`, a 505) got its error page even though its method was HEAD, so a client
/// reading it as a HEAD answer took the page for the next response.
#[test]
fn issue_12_a_refused_head_request_gets_no_body() {
    let site = Site::new();
    let srv = Opts::new(&site.root, "lazy").start();
    for (req, status) in [
        (&b"HEAD /hello.txt HTTP/2.1\r\nHost: a\r\n\r\n"[..], 505),
        (b"HEAD /hello.txt HTTP/1.1\r\nHost: a b\r\n\r\n", 400),
    ] {
        let mut c = srv.connect();
        c.send(req);
        let r = c.read_response(true);
        assert_eq!(r.status, status);
        let rest = c.rest_within(std::time::Duration::from_secs(5));
        assert_eq!(
            rest,
            Some(Vec::new()),
            "{status}: closed, no body after the head"
        );
    }
}

/// Issue 12, found with slowhttptest's slow-read attack (docs/SECURITY.md): 1,000 clients
/// with tiny receive windows made the loop push about 700 KB each into their sockets — the
/// kernel kept growing the send buffers — and the 4 s of CPU that took stalled a normal
/// request for 2 s. Listeners now carry `TCP_NOTSENT_LOWAT` (`--notsent-lowat`, 128 KiB), so a
/// connection stops being writable once that much waits unsent. Measured here as the body
/// bytes the server handed the kernel for clients that never read.
#[test]
fn issue_12_a_client_that_never_reads_holds_little_in_the_kernel() {
    let site = Site::new();
    // Bytes queued in the server's sockets (ss's Send-Q) for 8 clients that never read.
    let queued = |b: &str, lowat: &str| -> u64 {
        let mut srv = Opts::new(&site.root, b)
            .workers(1)
            .args(["--notsent-lowat", lowat, "--shutdown-timeout", "1s"])
            .start();
        let clients: Vec<_> = (0..8)
            .map(|_| {
                let mut c = small_window_client(srv.addr);
                std::io::Write::write_all(&mut c, b"GET /big.bin HTTP/1.1\r\nHost: x\r\n\r\n")
                    .unwrap();
                c
            })
            .collect();
        std::thread::sleep(std::time::Duration::from_millis(500));
        let filter = format!("( sport = :{} )", srv.addr.port());
        let out = Command::new("ss")
            .args(["-Htn", "state", "established", &filter])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let rows: Vec<u64> = text
            .lines()
            .filter_map(|l| l.split_whitespace().nth(1)?.parse().ok())
            .collect();
        assert_eq!(rows.len(), 8, "{b}: {text}");
        drop(clients);
        srv.stop();
        rows.iter().sum::<u64>() / 8
    };
    for b in BACKENDS {
        let bounded = queued(b, "128k");
        assert!(
            bounded < 512 << 10,
            "{b}: {bounded} bytes queued per client with the mark"
        );
        let unbounded = queued(b, "0");
        assert!(
            unbounded > bounded,
            "{b}: {unbounded} bytes queued without the mark, {bounded} with it"
        );
        eprintln!("{b}: queued per client: {bounded} with the mark, {unbounded} without");
    }
}

/// Issue 12, found by the `conn` fuzz target: empty lines before a pipelined request (RFC 9112
/// §2.2 lets a server ignore them, and httparse does) left its access-log line with an empty
/// request line, `"" 200 -`.
#[test]
fn issue_12_empty_lines_before_a_request_keep_its_log_line() {
    let site = Site::new();
    let log = site.dir.path().join("access.log");
    let mut srv = Opts::new(&site.root, "lazy")
        .args(["--access-log", log.to_str().unwrap()])
        .start();
    let mut c = srv.connect();
    c.send(b"GET /hello.txt HTTP/1.1\r\nHost: a\r\n\r\n\n\r\n\nHEAD /hello.txt HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_eq!(c.read_response(false).status, 200);
    assert_eq!(c.read_response(true).status, 200);
    drop(c);
    srv.stop();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("\"HEAD /hello.txt HTTP/1.1\" 200"), "{text}");
    assert!(!text.contains("\"\""), "{text}");
}

/// A server started by hand, killed if a test fails before it stops.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}
