//! Arbitrary and hostile byte streams against the running server: whatever a client sends, in
//! whatever pieces, the server answers or closes, and keeps serving everyone else.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use proptest::prelude::*;
use support::{Opts, Site, BACKENDS};

fn piece() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        Just(b"GET /hello.txt HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()),
        Just(b"HEAD /digits.txt HTTP/1.1\r\nHost: x\r\nRange: bytes=5-\r\n\r\n".to_vec()),
        Just(b"GET /big.bin HTTP/1.1\r\nHost: x\r\nRange: bytes=-70000\r\n\r\n".to_vec()),
        Just(b"GET /docs HTTP/1.0\r\nConnection: keep-alive\r\n\r\n".to_vec()),
        Just(b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc".to_vec()),
        Just(b"GET /%2e%2e/%2e%2e/etc/passwd HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()),
        Just(b"GET / HTTP/1.1\r\nHost: x\r\nIf-None-Match: \"\r\nIf-Range: W/\r\nRange: bytes=-\r\n\r\n".to_vec()),
        Just(b"\r\n\r\n\r\n".to_vec()),
        proptest::collection::vec(any::<u8>(), 0..64),
        "[ -~\r\n]{0,80}".prop_map(String::into_bytes),
    ]
}

fn stream() -> impl Strategy<Value = (Vec<u8>, Vec<usize>)> {
    (
        proptest::collection::vec(piece(), 1..8),
        proptest::collection::vec(1usize..40, 0..6),
    )
        .prop_map(|(pieces, cuts)| (pieces.concat(), cuts))
}

#[test]
fn hostile_streams_never_take_the_server_down() {
    let site = Site::new();
    for b in BACKENDS {
        let srv = Opts::new(&site.root, b)
            .args(["--header-timeout", "1s", "--linger-timeout", "200ms"])
            .start();
        let addr = srv.addr;
        let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
            cases: 150,
            ..ProptestConfig::default()
        });
        runner
            .run(&stream(), |(bytes, cuts)| {
                let mut s = TcpStream::connect(addr).unwrap();
                s.set_nodelay(true).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                // Send in the chosen pieces; the server may close early (that is an answer).
                let mut at: usize = 0;
                for c in cuts.iter().chain(std::iter::once(&usize::MAX)) {
                    let end = at.saturating_add(*c).min(bytes.len());
                    if s.write_all(&bytes[at..end]).is_err() {
                        break;
                    }
                    at = end;
                    if at == bytes.len() {
                        break;
                    }
                }
                let _ = s.shutdown(std::net::Shutdown::Write);
                // Drain whatever comes back until the server closes (bounded by the timeouts).
                let mut sink = Vec::new();
                let _ = s.read_to_end(&mut sink);
                if !sink.is_empty() {
                    prop_assert!(
                        sink.starts_with(b"HTTP/1.1 "),
                        "not HTTP: {:?}",
                        &sink[..sink.len().min(40)]
                    );
                }
                Ok(())
            })
            .unwrap();
        // Still up, still right.
        let mut c = srv.connect();
        assert_eq!(c.get("/hello.txt").body, b"hello, world\n", "{b}");
        assert!(
            srv.stderr_lines().iter().all(|l| !l.contains("panicked")),
            "{b}"
        );
    }
}
