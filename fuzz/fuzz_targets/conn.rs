//! The connection state machine on arbitrary byte streams in arbitrary splits, with sends of
//! arbitrary sizes (lair_http::mem: no socket; file calls for real on a small site). No panic,
//! no loop; what it sends is a sequence of whole HTTP/1.1 responses, each with a valid head and
//! exactly its announced body (none for a 1xx, 204, 304 or an answer to HEAD), one access-log
//! line per final response.
//! Input: one byte for the send size, one for the receive piece size, then the stream.
#![no_main]

use std::cell::RefCell;
use std::time::Duration;

use lair_http::mem::MemConn;
use lair_http::ServerConfig;
use libfuzzer_sys::fuzz_target;

thread_local! {
    static CONN: RefCell<(tempfile::TempDir, MemConn)> = RefCell::new({
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        std::fs::write(p.join("hello.txt"), b"hello\n").unwrap();
        std::fs::write(p.join("index.html"), b"<h1>hi</h1>\n").unwrap();
        std::fs::create_dir(p.join("d")).unwrap();
        std::fs::write(p.join("d/index.html"), b"dir\n").unwrap();
        std::fs::write(p.join(".secret"), b"no\n").unwrap();
        // Past --small-file-bytes (16 KiB), so it goes the sendfile way; small enough that
        // sends of a few hundred bytes keep an input fast (200 KB made it 800 inputs a second).
        std::fs::write(p.join("big.bin"), vec![b'z'; 40_000]).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", p.join("out")).unwrap();
        let cfg = ServerConfig {
            root: p.to_path_buf(),
            file_cache_ttl: Duration::from_secs(1),
            ..ServerConfig::default()
        };
        let conn = MemConn::new(cfg).unwrap();
        (dir, conn)
    });
}

/// Walk the responses in `out`; how many final ones there were.
fn responses(out: &[u8], heads: &[bool]) -> usize {
    let mut at = 0;
    let mut finals = 0;
    while at < out.len() {
        let mut h = [httparse::EMPTY_HEADER; 32];
        let mut r = httparse::Response::new(&mut h);
        let len = match r.parse(&out[at..]) {
            Ok(httparse::Status::Complete(n)) => n,
            other => panic!("not a response head at {at}: {other:?}"),
        };
        assert_eq!(r.version, Some(1));
        let status = r.code.unwrap();
        let cl = r
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case("content-length"))
            .map(|h| std::str::from_utf8(h.value).unwrap().parse::<usize>().unwrap());
        at += len;
        if status / 100 == 1 {
            assert!(cl.is_none());
            continue;
        }
        let head_only = heads.get(finals).copied().unwrap_or(false);
        finals += 1;
        let body = if status == 204 || status == 304 || head_only {
            0
        } else {
            cl.expect("a final response without Content-Length")
        };
        assert!(at + body <= out.len(), "body cut short");
        at += body;
    }
    finals
}

fuzz_target!(|data: &[u8]| {
    let [send, piece, stream @ ..] = data else {
        return;
    };
    let send_max = if *send == 0 { usize::MAX } else { usize::from(*send) * 251 };
    let pieces: Vec<&[u8]> = if *piece == 0 {
        vec![stream]
    } else {
        stream.chunks(usize::from(*piece)).collect()
    };
    let t = CONN.with(|c| c.borrow_mut().1.run(&pieces, send_max));
    // Which answers were to HEAD: the log line's request line says — its first quoted field,
    // not any field (a User-Agent of `HEAD …` fooled the first version of this check).
    let log = String::from_utf8_lossy(&t.log);
    let heads: Vec<bool> = log
        .lines()
        .map(|l| l.split_once("] \"").is_some_and(|(_, r)| r.starts_with("HEAD ")))
        .collect();
    let finals = responses(&t.output, &heads);
    assert_eq!(finals, heads.len(), "responses vs log lines:\n{log}");
});
