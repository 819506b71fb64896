//! The engine contract, run against every backend with real files and real sockets.

use std::ffi::CString;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lair_io::{
    setup, with_backend, Attempt, Backend, BackendKind, BufMut, Bytes, Completion, EngineConfig,
    FileType, Gather, Op, OpKind, OpSet, Out, Submit, Token, WithBackend,
};

/// A receive or read buffer holding `filled`, with `room` bytes reserved after it.
fn room(filled: &[u8], room: usize) -> BufMut {
    let mut v = filled.to_vec();
    v.reserve(room);
    BufMut::Vec(v)
}

/// Submit and, if pending, poll until that token completes (bounded).
fn run<B: Backend>(b: &mut B, token: u64, op: Op) -> Completion {
    match b.submit(Token(token), op) {
        Submit::Done(c) => c,
        Submit::Pending => wait_for(b, token),
    }
}

fn wait_for<B: Backend>(b: &mut B, token: u64) -> Completion {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut done = Vec::new();
    loop {
        b.poll(&mut done, Some(Duration::from_millis(100))).unwrap();
        if let Some(i) = done.iter().position(|c| c.token == Token(token)) {
            return done.swap_remove(i);
        }
        assert!(Instant::now() < deadline, "token {token} never completed");
    }
}

fn for_each_backend(f: impl Fn(BackendKind) + Copy) {
    for kind in BackendKind::ALL {
        f(kind);
    }
}

struct Files;
impl WithBackend for Files {
    type Output = ();
    fn run<B: Backend>(self, mut b: B) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.txt"), b"hello, lair").unwrap();
        let root = Arc::new(setup::open_dir(dir.path()).unwrap());

        let c = run(
            &mut b,
            1,
            Op::Open {
                dir: root.clone(),
                path: CString::new("a.txt").unwrap(),
                beneath: true,
                prefetch: 0,
            },
        );
        let Out::File(f) = c.out else {
            panic!("open gave {:?}", c.result)
        };
        let f = Arc::new(f);
        let c = run(&mut b, 2, Op::Stat { file: f.clone() });
        let Out::Stat(st) = c.out else { panic!("stat") };
        assert_eq!(st.len_bytes, 11);
        assert_eq!(st.file_type, FileType::Regular);
        let c = run(
            &mut b,
            3,
            Op::Read {
                file: f.clone(),
                offset: 7,
                len: 100,
                buf: room(b"x", 100),
                to: None,
            },
        );
        assert_eq!(c.result.unwrap(), 4);
        let Out::Buf(buf) = c.out else { panic!("read") };
        assert_eq!(buf.as_bytes(), b"xlair");

        // `..` and absolute paths cannot leave the directory.
        for bad in ["../x", "/etc/passwd"] {
            let c = run(
                &mut b,
                4,
                Op::Open {
                    dir: root.clone(),
                    path: CString::new(bad).unwrap(),
                    beneath: true,
                    prefetch: 0,
                },
            );
            assert_eq!(
                c.result.unwrap_err().raw_os_error(),
                Some(libc::EXDEV),
                "{bad}"
            );
        }
        let c = run(
            &mut b,
            5,
            Op::Open {
                dir: root.clone(),
                path: CString::new("missing").unwrap(),
                beneath: true,
                prefetch: 0,
            },
        );
        assert_eq!(c.result.unwrap_err().kind(), std::io::ErrorKind::NotFound);

        // Appending writes come back with their buffer.
        let log = Arc::new(setup::open_append(&dir.path().join("log")).unwrap());
        let c = run(
            &mut b,
            6,
            Op::Write {
                file: log.clone(),
                offset: None,
                bufs: Gather::one(b"line\n".to_vec()),
            },
        );
        assert_eq!(c.result.unwrap(), 5);
        assert!(matches!(c.out, Out::Gather(ref g) if g.parts()[0].as_bytes() == b"line\n"));
        assert_eq!(std::fs::read(dir.path().join("log")).unwrap(), b"line\n");
        assert!(b.counters().op(OpKind::Open).submitted >= 4);
    }
}

#[test]
fn file_operations_on_every_backend() {
    for_each_backend(|k| with_backend(k, &EngineConfig::default(), Files).unwrap());
}

struct Calls;
impl WithBackend for Calls {
    type Output = ();
    fn run<B: Backend>(self, mut b: B) {
        // A call that never blocks finishes inline, except where every call goes to a helper.
        let first = b.submit(
            Token(1),
            Op::Call(Box::new(|_| Ok(u64::from(std::process::id())))),
        );
        let c = match (B::NAME, first) {
            ("sync" | "lazy" | "uring", Submit::Done(c)) => c,
            ("eager" | "hybrid", Submit::Pending) => wait_for(&mut b, 1),
            (name, s) => panic!("{name}: unexpected {s:?}"),
        };
        assert_eq!(c.result.unwrap() as u32, std::process::id());
        // A call that would block: `sync` runs it in place, the others on a helper.
        let op = Op::Call(Box::new(|a| match a {
            Attempt::NoWait => Err(std::io::ErrorKind::WouldBlock.into()),
            Attempt::MayBlock => {
                std::thread::sleep(Duration::from_millis(20));
                Ok(7)
            }
        }));
        let submitted = b.submit(Token(2), op);
        let c = match (B::NAME, submitted) {
            ("sync", Submit::Done(c)) => c,
            (_, Submit::Pending) => wait_for(&mut b, 2),
            (name, s) => panic!("{name}: unexpected {s:?}"),
        };
        assert_eq!(c.result.unwrap(), 7);
        let counters = b.counters();
        let calls = counters.op(OpKind::Call);
        assert_eq!(calls.submitted, 2);
        let expect = match B::NAME {
            "sync" => (2, 0),
            "lazy" | "uring" => (1, 1),
            _ => (0, 2),
        };
        assert_eq!((calls.inline, calls.helper), expect, "{}", B::NAME);
        if B::NAME != "sync" {
            assert!(calls.helper_ns_max >= 20_000_000);
        }
    }
}

#[test]
fn calls_go_to_helpers_only_when_they_would_block() {
    for_each_backend(|k| with_backend(k, &EngineConfig::default(), Calls).unwrap());
}

fn pair() -> (Arc<OwnedFd>, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let client = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (server, _) = l.accept().unwrap();
    server.set_nonblocking(true).unwrap();
    (Arc::new(OwnedFd::from(server)), client)
}

/// `Op::Readable` waits for input without a buffer: on a socket known to be drained it stays
/// pending until the peer writes (no completion before), then completes with 0, and the data
/// is still there for the receive that follows.
struct Readable;
impl WithBackend for Readable {
    type Output = ();
    fn run<B: Backend>(self, mut b: B) {
        let name = B::NAME;
        let (sock, mut client) = pair();
        // A receive that waits (so the loop watches the socket, as it does every accepted
        // one), then drains it: fewer bytes than it had room for.
        let s = b.submit(
            Token(1),
            Op::Recv {
                sock: sock.clone(),
                buf: room(b"", 64),
                max: 64,
                poll_first: false,
            },
        );
        assert!(matches!(s, Submit::Pending), "{name}");
        client.write_all(b"one").unwrap();
        let c = wait_for(&mut b, 1);
        assert_eq!(c.result.unwrap(), 3, "{name}");
        let s = b.submit(Token(2), Op::Readable { sock: sock.clone() });
        // `eager` runs the receive on a helper, which does not tell the loop it drained the
        // socket: there the wait may end at once, which is allowed (the receive finds out).
        if name != "eager" {
            assert!(
                matches!(s, Submit::Pending),
                "{name}: drained, yet readable"
            );
        }
        if let Submit::Pending = s {
            let mut done = Vec::new();
            b.poll(&mut done, Some(Duration::from_millis(50))).unwrap();
            assert!(
                done.iter().all(|c| c.token != Token(2)),
                "{name}: readable before any input"
            );
            client.write_all(b"two").unwrap();
            let c = wait_for(&mut b, 2);
            assert_eq!(c.result.unwrap(), 0, "{name}");
        } else {
            client.write_all(b"two").unwrap();
        }
        let c = run(
            &mut b,
            3,
            Op::Recv {
                sock,
                buf: room(b"", 64),
                max: 64,
                poll_first: false,
            },
        );
        assert!(
            matches!(c.out, Out::Buf(ref v) if v.as_bytes() == b"two"),
            "{name}: the input waited for is received after"
        );
    }
}

#[test]
fn readable_waits_for_input_without_a_buffer() {
    for_each_backend(|k| with_backend(k, &EngineConfig::default(), Readable).unwrap());
}

struct Sockets;
impl WithBackend for Sockets {
    type Output = ();
    fn run<B: Backend>(self, mut b: B) {
        let (sock, mut client) = pair();
        // Nothing to read yet: parked until the client writes.
        let s = b.submit(
            Token(1),
            Op::Recv {
                sock: sock.clone(),
                buf: room(b"", 64),
                max: 64,
                poll_first: false,
            },
        );
        assert!(matches!(s, Submit::Pending));
        client.write_all(b"ping").unwrap();
        let c = wait_for(&mut b, 1);
        assert_eq!(c.result.unwrap(), 4);
        assert!(matches!(c.out, Out::Buf(ref v) if v.as_bytes() == b"ping"));

        let c = run(
            &mut b,
            2,
            Op::Send {
                sock: sock.clone(),
                bufs: Gather::one(b"xpong".to_vec()),
                from: 1,
                more: false,
                zerocopy: false,
            },
        );
        assert_eq!(c.result.unwrap(), 4);
        let mut got = [0u8; 4];
        client.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"pong");

        // Readiness that arrives while nothing waits is remembered: a poll-first receive
        // submitted afterwards runs at once instead of waiting for an edge that already passed.
        client.write_all(b"late").unwrap();
        let mut none = Vec::new();
        b.poll(&mut none, Some(Duration::from_millis(200))).unwrap();
        let op = Op::Recv {
            sock: sock.clone(),
            buf: room(b"", 64),
            max: 64,
            poll_first: true,
        };
        // Were the readiness forgotten, this would park for an edge that never comes again
        // and `wait_for` would fail.
        let done = match b.submit(Token(9), op) {
            Submit::Done(c) => c,
            Submit::Pending => wait_for(&mut b, 9),
        };
        assert!(matches!(done.out, Out::Buf(ref v) if v.as_bytes() == b"late"));

        // Closing cancels a parked receive and gives its buffer back.
        let s = b.submit(
            Token(3),
            Op::Recv {
                sock: sock.clone(),
                buf: room(b"kept", 64),
                max: 64,
                poll_first: true,
            },
        );
        assert!(matches!(s, Submit::Pending));
        let closed = b.submit(Token(4), Op::Close { fd: sock });
        assert!(matches!(closed, Submit::Done(_)));
        let c = wait_for(&mut b, 3);
        assert_eq!(c.result.unwrap_err().raw_os_error(), Some(libc::ECANCELED));
        assert!(matches!(c.out, Out::Buf(ref v) if v.as_bytes() == b"kept"));
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty(), "the server side is closed");

        // A waker from another thread ends a long poll early.
        let w = b.waker();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            w.wake();
        });
        let started = Instant::now();
        let mut done = Vec::new();
        b.poll(&mut done, Some(Duration::from_secs(20))).unwrap();
        assert!(started.elapsed() < Duration::from_secs(10));
        t.join().unwrap();
    }
}

#[test]
fn sockets_park_until_ready_and_close_cancels() {
    for_each_backend(|k| with_backend(k, &EngineConfig::default(), Sockets).unwrap());
}

struct Accepts;
impl WithBackend for Accepts {
    type Output = ();
    fn run<B: Backend>(self, mut b: B) {
        let l = Arc::new(setup::bind_listener("127.0.0.1:0".parse().unwrap(), 16, 0).unwrap());
        let addr = setup::local_addr(&l).unwrap();
        assert!(matches!(
            b.submit(
                Token(1),
                Op::Accept {
                    listener: l.clone()
                }
            ),
            Submit::Pending
        ));
        let _client = TcpStream::connect(addr).unwrap();
        let c = wait_for(&mut b, 1);
        let Out::Conn(_, Some(peer)) = c.out else {
            panic!("accept: {:?}", c.result)
        };
        assert!(peer.ip().is_loopback());
    }
}

#[test]
fn accept_parks_on_the_listener() {
    for_each_backend(|k| with_backend(k, &EngineConfig::default(), Accepts).unwrap());
}

fn connect_op(addr: std::net::SocketAddr, recv_buffer: Option<usize>) -> Op {
    Op::Connect {
        addr,
        recv_buffer,
        sock: None,
    }
}

/// A listener on a loopback port outside the ephemeral range
/// (`net.ipv4.ip_local_port_range`). Why: once it is closed, thousands of connects to its
/// port must all be refused, while the other tests of this binary run in parallel and bind
/// listeners to port 0 — which the kernel picks from the ephemeral range, so a port just
/// freed there can come back to one of them and a "refused" connect succeeds (the flaky
/// failure of this test seen once in issue 12; a self-connect cannot be it: Linux gives
/// `connect` even source ports and `bind(0)` odd ones, and 40,000 connects to a closed
/// ephemeral port here found none). No `bind(0)` can return a port outside the range.
fn listener_outside_ephemeral_range() -> TcpListener {
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .unwrap_or_else(|_| "32768 60999".into());
    let low: u16 = range
        .split_whitespace()
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or(32768);
    (1024..low)
        .rev()
        .find_map(|port| TcpListener::bind(("127.0.0.1", port)).ok())
        .expect("no free port below the ephemeral range")
}

struct Connects;
impl WithBackend for Connects {
    type Output = ();
    fn run<B: Backend>(self, mut b: B) {
        let l = listener_outside_ephemeral_range();
        let addr = l.local_addr().unwrap();
        let c = run(&mut b, 1, connect_op(addr, None));
        let Out::Conn(fd, Some(peer)) = c.out else {
            panic!("connect: {:?}", c.result)
        };
        assert_eq!(peer, addr);
        let (mut server_side, _) = l.accept().unwrap();
        let sock = fd;
        let c = run(
            &mut b,
            2,
            Op::Send {
                sock: sock.clone(),
                bufs: Gather::one(b"hi".to_vec()),
                from: 0,
                more: false,
                zerocopy: false,
            },
        );
        assert_eq!(c.result.unwrap(), 2);
        let mut got = [0u8; 2];
        server_side.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"hi");
        // Nobody listens here any more: refused, as a completion, not a panic or a hang.
        drop(l);
        let c = run(&mut b, 3, connect_op(addr, None));
        assert_eq!(
            c.result.unwrap_err().kind(),
            std::io::ErrorKind::ConnectionRefused
        );
        assert_eq!(b.counters().op(OpKind::Connect).submitted, 2);

        // Many refusals in a row, several in flight at once: each socket number comes back
        // at once, and a slot left registered by a failed handshake must not swallow the
        // next socket's events (it did: the load generator's open loop hung on them).
        let mut pending = 0;
        for t in 0..2000u64 {
            match b.submit(Token(100 + t), connect_op(addr, Some(4096))) {
                Submit::Done(c) => assert!(c.result.is_err()),
                Submit::Pending => pending += 1,
            }
            if t % 8 == 7 {
                let mut done = Vec::new();
                let deadline = Instant::now() + Duration::from_secs(10);
                while pending > 0 {
                    b.poll(&mut done, Some(Duration::from_millis(100))).unwrap();
                    for c in done.drain(..) {
                        assert!(c.result.is_err(), "connect to a closed port succeeded");
                        pending -= 1;
                    }
                    assert!(
                        Instant::now() < deadline,
                        "{pending} refused connects never completed"
                    );
                }
            }
        }
    }
}

#[test]
fn connect_completes_or_reports_refusal() {
    for_each_backend(|k| with_backend(k, &EngineConfig::default(), Connects).unwrap());
}

/// With `laio_ops` narrowed to the network calls, a file open never reaches a helper, even on
/// the backend that sends everything else to one.
struct NetworkOnly;
impl WithBackend for NetworkOnly {
    type Output = ();
    fn run<B: Backend>(self, mut b: B) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.txt"), b"x").unwrap();
        let root = Arc::new(setup::open_dir(dir.path()).unwrap());
        let open = Op::Open {
            dir: root,
            path: CString::new("a.txt").unwrap(),
            beneath: true,
            prefetch: 0,
        };
        let Submit::Done(c) = b.submit(Token(1), open) else {
            panic!("{}: open went to the background", B::NAME)
        };
        assert!(matches!(c.out, Out::File(_)));
        let (sock, mut client) = pair();
        client.write_all(b"hi").unwrap();
        let c = run(
            &mut b,
            2,
            Op::Recv {
                sock,
                buf: room(b"", 8),
                max: 8,
                poll_first: false,
            },
        );
        assert_eq!(c.result.unwrap(), 2);
        let counters = b.counters();
        let (open, recv) = (counters.op(OpKind::Open), counters.op(OpKind::Recv));
        assert_eq!((open.inline, open.helper), (1, 0), "{}", B::NAME);
        if B::NAME == "eager" {
            assert_eq!(recv.helper, 1, "eager: the recv still goes to a helper");
        }
    }
}

#[test]
fn laio_ops_keep_other_operations_on_the_loop() {
    let cfg = EngineConfig {
        laio_ops: OpSet::NETWORK,
        ..EngineConfig::default()
    };
    for_each_backend(|k| with_backend(k, &cfg, NetworkOnly).unwrap());
}

struct Buffers;
impl WithBackend for Buffers {
    type Output = ();
    fn run<B: Backend>(self, mut b: B) {
        let name = B::NAME;
        let (sock, mut client) = pair();
        // A head and a shared body in one gather send, resumed from inside the first part;
        // the shared bytes come back untouched, for the next response to send again.
        let body = Bytes::from(vec![b'b'; 3000]);
        let mut bufs = Gather::one(b"xxHEAD\r\n\r\n".to_vec());
        bufs.push(body.slice(1000..)).unwrap();
        let c = run(
            &mut b,
            1,
            Op::Send {
                sock: sock.clone(),
                bufs,
                from: 2,
                more: false,
                zerocopy: false,
            },
        );
        assert_eq!(
            c.result.unwrap(),
            8 + 2000,
            "{name}: one call sends both parts"
        );
        let Out::Gather(mut g) = c.out else {
            panic!("{name}: send gives its list back")
        };
        assert_eq!(g.parts().len(), 2);
        assert_eq!(g.take(0).into_vec().unwrap(), b"xxHEAD\r\n\r\n");
        let mut got = vec![0u8; 2008];
        client.read_exact(&mut got).unwrap();
        assert_eq!(&got[..8], b"HEAD\r\n\r\n");
        assert!(got[8..].iter().all(|&x| x == b'b'), "{name}: body bytes");

        // The engine never grows a buffer: no room is EINVAL, with the buffer given back, not
        // a zero-length receive that would read as end of stream.
        client.write_all(b"data").unwrap();
        let full = BufMut::Vec(Vec::new());
        let c = run(
            &mut b,
            2,
            Op::Recv {
                sock: sock.clone(),
                buf: full,
                max: 64,
                poll_first: false,
            },
        );
        assert_eq!(
            c.result.unwrap_err().raw_os_error(),
            Some(libc::EINVAL),
            "{name}"
        );
        assert!(matches!(c.out, Out::Buf(_)), "{name}: buffer back");
        // At most `max` bytes, even with more room.
        let c = run(
            &mut b,
            3,
            Op::Recv {
                sock: sock.clone(),
                buf: room(b"", 64),
                max: 3,
                poll_first: false,
            },
        );
        assert_eq!(c.result.unwrap(), 3, "{name}: capped at max");
        assert!(matches!(c.out, Out::Buf(ref v) if v.as_bytes() == b"dat"));
    }
}

#[test]
fn gather_sends_and_caller_reserved_room_on_every_backend() {
    for_each_backend(|k| with_backend(k, &EngineConfig::default(), Buffers).unwrap());
}

struct Placed(usize);
impl WithBackend for Placed {
    type Output = ();
    fn run<B: Backend>(self, mut b: B) {
        // A call that must block runs on a helper thread, which reports where it may run.
        let call: lair_io::Call = Box::new(|a| match a {
            Attempt::NoWait => Err(std::io::ErrorKind::WouldBlock.into()),
            Attempt::MayBlock => {
                let cpus = setup::current_thread_cpus();
                Ok(cpus.iter().map(|c| 1u64 << c).sum())
            }
        });
        let c = run(&mut b, 1, Op::Call(call));
        assert_eq!(
            c.result.unwrap(),
            1 << self.0,
            "{}: helper off its CPUs",
            B::NAME
        );
    }
}

#[test]
fn helpers_run_on_the_cpus_the_placement_gave_the_engine() {
    let last = *setup::allowed_cpus().last().unwrap();
    let cfg = EngineConfig {
        cpus: vec![last],
        ..EngineConfig::default()
    };
    // `sync` has no helpers: its calls run on the loop.
    for k in BackendKind::ALL
        .into_iter()
        .filter(|k| *k != BackendKind::Sync)
    {
        with_backend(k, &cfg, Placed(last)).unwrap();
    }
}
