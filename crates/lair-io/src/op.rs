//! Operations, tokens and completions: the plain data that crosses the engine seam.
//!
//! An [`Op`] owns everything the operation touches (descriptors as [`SharedFd`], memory as
//! [`Gather`] lists of [`Buf`]s to send or write and [`BufMut`]s to receive or read into; see
//! [`crate::buf`]), so a backend may run it inline, park it until a socket is ready, or hand it to a
//! helper thread without any lifetime tying it to the caller. The [`Completion`] gives every
//! owned resource back (the buffer, the new descriptor), also on error, so nothing is lost.
//!
//! This module does no I/O.

use std::ffi::CString;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::SystemTime;

use serde::Serialize;

use crate::buf::{BufMut, Gather};
use crate::datapath::Via;

/// A descriptor shared between the caller and the engine (and, for a background operation,
/// a helper thread). It closes when the last clone is dropped, so a helper still running on
/// it can never see its number reused.
pub type SharedFd = Arc<OwnedFd>;

/// The caller's name for an operation, returned in its [`Completion`] (the seed's
/// `laio_gethandle` value).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Token(pub u64);

/// How a generic [`Op::Call`] is being run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attempt {
    /// Inline on the event loop: the call must not block; it returns
    /// `io::ErrorKind::WouldBlock` if it would, and is then run again with [`Attempt::MayBlock`]
    /// on a helper thread (lazy backend).
    NoWait,
    /// The call may block (a helper thread, or the `sync` backend on the loop itself).
    MayBlock,
}

/// A generic call (the seed's `laio_syscall`): any closure that may block. It gets told how it
/// is being run and returns a number, like a system call.
pub type Call = Box<dyn FnMut(Attempt) -> io::Result<u64> + Send>;

/// One operation. Build it with the constructors, which keep the field invariants.
#[non_exhaustive]
pub enum Op {
    /// Open a TCP connection to `addr` (non-blocking, close-on-exec, `TCP_NODELAY`); the
    /// completion carries it as [`Out::Conn`].
    Connect {
        /// Where to.
        addr: SocketAddr,
        /// `SO_RCVBUF` for the new socket, set before the handshake so the advertised window
        /// stays that small (a slow client); `None`: the kernel's default (autotuned).
        recv_buffer: Option<usize>,
        /// The socket while the handshake is in progress (set by the engine; submit `None`).
        sock: Option<SharedFd>,
    },
    /// Accept one connection (non-blocking socket, close-on-exec, `TCP_NODELAY`).
    Accept {
        /// The listening socket.
        listener: SharedFd,
    },
    /// Receive at most `max` bytes into the spare room of `buf`, after its contents. The
    /// caller reserves the room (the engine never grows a buffer); none is `EINVAL`. `Ok(0)`
    /// is end of stream.
    Recv {
        /// The connected socket.
        sock: SharedFd,
        /// Bytes are appended after its filled part.
        buf: BufMut,
        /// Most bytes to receive.
        max: usize,
        /// Wait for readiness before trying, unless the socket is already known readable
        /// (like io_uring's `IORING_RECVSEND_POLL_FIRST`): for an idle keep-alive connection,
        /// whose first attempt would almost always fail.
        poll_first: bool,
    },
    /// Send the byte stream of `bufs` from offset `from` (one system call — `sendmsg` when the
    /// list has several parts; the result may be short).
    Send {
        /// The connected socket.
        sock: SharedFd,
        /// The bytes, as a gather list; given back in the completion.
        bufs: Gather,
        /// First byte (of the whole list) to send.
        from: usize,
        /// More data follows at once (`MSG_MORE`): the kernel coalesces it with the next send.
        more: bool,
        /// Send without copying (`MSG_ZEROCOPY`, `--data emulated`): honoured when every part
        /// is shared bytes ([`crate::Buf::Shared`]), which the engine keeps until the kernel
        /// says it is done with them (see [`crate::zerocopy`]); otherwise an ordinary send.
        /// Readiness backends and the thread model (`MSG_ZEROCOPY`), `uring`
        /// (`IORING_OP_SEND_ZC`, one shared part).
        zerocopy: bool,
    },
    /// Send `len` bytes of `file` from `offset` to `sock` in the kernel (`sendfile`); the result
    /// may be short, and `Ok(0)` means the file ended before `offset`. `len` is the caller's
    /// window and the only one: `lazy` checks exactly this range with `cachestat` before
    /// sending inline; `uring` stages it through a buffer of [`crate::EngineConfig`]'s
    /// `sendfile_window` (the same setting, `--sendfile-chunk`, in the server).
    Sendfile {
        /// The connected socket.
        sock: SharedFd,
        /// A regular file.
        file: SharedFd,
        /// Where in the file to start.
        offset: u64,
        /// How many bytes at most.
        len: usize,
        /// Which kernel path moves them (`sendfile`, `splice` through a pipe, `send` from a
        /// mapping; see [`crate::datapath`]); given back, with its pipe or mapping, in the
        /// completion ([`Out::Via`]). `uring` always stages (it says so once).
        via: Via,
    },
    /// Shut down the sending side (`shutdown(SHUT_WR)`), for a lingering close.
    Shutdown {
        /// The connected socket.
        sock: SharedFd,
    },
    /// Close a descriptor: operations parked on it are cancelled (they complete with
    /// `ECANCELED`), then this reference is dropped.
    Close {
        /// The descriptor.
        fd: SharedFd,
    },
    /// Open `path` read-only, relative to `dir`.
    Open {
        /// The directory the path is relative to.
        dir: SharedFd,
        /// A relative path without NUL bytes.
        path: CString,
        /// Resolve beneath `dir`: no `..`, absolute path or symlink leaves it, no magic links
        /// (`RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS`).
        beneath: bool,
        /// When the open runs on a helper thread (under `lazy`: because the path's metadata was
        /// not cached), also start reading this many bytes from the file's start into the page
        /// cache (`POSIX_FADV_WILLNEED`) before completing: data behind cold metadata is almost
        /// always cold too, and the read then overlaps the completion's trip back to the loop
        /// and the `fstat` — one disk latency less per cold file (Flash's helpers did the same).
        /// 0: nothing. `uring` does not honour it (a ring completion does not say whether the
        /// open needed the disk).
        prefetch: usize,
    },
    /// `fstat` an open descriptor.
    Stat {
        /// The file.
        file: SharedFd,
    },
    /// Read up to `len` bytes at `offset` into the spare room of `buf` (reserved by the
    /// caller; at most the room is read), after its contents.
    Read {
        /// The file.
        file: SharedFd,
        /// Where in the file.
        offset: u64,
        /// How many bytes at most.
        len: usize,
        /// Bytes are appended after its filled part.
        buf: BufMut,
        /// The socket these bytes will be sent to, if any: event correlation (`--ecem ded`)
        /// holds the read until that socket has room for them.
        to: Option<SharedFd>,
    },
    /// Write the byte stream of `bufs` at `offset`, or at the end of the file when `offset` is
    /// `None` (one `pwritev2`; the result may be short).
    Write {
        /// The file.
        file: SharedFd,
        /// Where; `None` appends.
        offset: Option<u64>,
        /// The bytes; given back in the completion.
        bufs: Gather,
    },
    /// Any call that may block (the seed's `laio_syscall`).
    Call(Call),
    /// Wait until `sock` is readable (data, or the end of the stream); completes with 0 and
    /// reads nothing — so an idle keep-alive connection waits without a receive buffer. Under
    /// a readiness backend it completes at once unless the socket is known drained (an
    /// `EAGAIN` or a short receive since the last edge); the caller's receive then finds out.
    Readable {
        /// The connected socket.
        sock: SharedFd,
    },
}

impl Op {
    /// The kind of this operation, for counters and completions.
    pub fn kind(&self) -> OpKind {
        match self {
            Op::Connect { .. } => OpKind::Connect,
            Op::Accept { .. } => OpKind::Accept,
            Op::Recv { .. } => OpKind::Recv,
            Op::Send { .. } => OpKind::Send,
            Op::Sendfile { .. } => OpKind::Sendfile,
            Op::Shutdown { .. } => OpKind::Shutdown,
            Op::Close { .. } => OpKind::Close,
            Op::Open { .. } => OpKind::Open,
            Op::Stat { .. } => OpKind::Stat,
            Op::Read { .. } => OpKind::Read,
            Op::Write { .. } => OpKind::Write,
            Op::Call(_) => OpKind::Call,
            Op::Readable { .. } => OpKind::Readable,
        }
    }

    /// How many bytes a socket operation asks for at most (a receive's room, a send's rest):
    /// fewer moved means the socket is drained (receive) or full (send) for now.
    pub(crate) fn socket_want(&self) -> Option<usize> {
        match self {
            Op::Recv { buf, max, .. } => Some(buf.spare_len().min(*max)),
            Op::Send { bufs, from, .. } => Some(bufs.len().saturating_sub(*from)),
            _ => None,
        }
    }

    /// The socket this operation waits on when it would block, and in which direction.
    pub(crate) fn socket_interest(&self) -> Option<(&SharedFd, Interest)> {
        match self {
            Op::Connect { sock, .. } => sock.as_ref().map(|s| (s, Interest::Write)),
            Op::Accept { listener } => Some((listener, Interest::Read)),
            Op::Recv { sock, .. } | Op::Readable { sock } => Some((sock, Interest::Read)),
            Op::Send { sock, .. } | Op::Sendfile { sock, .. } => Some((sock, Interest::Write)),
            _ => None,
        }
    }

    /// The socket an operation may be held on until it is writable, and in which direction:
    /// a socket operation's own, or the socket a read's bytes go to (deferred event
    /// delivery holds the read until that socket has room).
    pub(crate) fn wait_interest(&self) -> Option<(&SharedFd, Interest)> {
        match self {
            Op::Read { to: Some(sock), .. } => Some((sock, Interest::Write)),
            op => op.socket_interest(),
        }
    }

    /// Give the owned buffer back (used when an operation fails or is cancelled).
    pub(crate) fn into_out(self) -> Out {
        match self {
            Op::Recv { buf, .. } | Op::Read { buf, .. } => Out::Buf(buf),
            Op::Send { bufs, .. } | Op::Write { bufs, .. } => Out::Gather(bufs),
            Op::Sendfile { via, .. } => Out::Via(via),
            _ => Out::None,
        }
    }
}

impl fmt::Debug for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Op::{:?}", self.kind())
    }
}

/// Which way a parked socket operation waits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Interest {
    Read,
    Write,
}

/// The kinds of [`Op`], used to index counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
#[allow(missing_docs)]
pub enum OpKind {
    Connect,
    Accept,
    Recv,
    Send,
    Sendfile,
    Shutdown,
    Close,
    Open,
    Stat,
    Read,
    Write,
    Call,
    Readable,
}

impl OpKind {
    /// Every kind, in counter order.
    pub const ALL: [OpKind; 13] = [
        OpKind::Connect,
        OpKind::Accept,
        OpKind::Recv,
        OpKind::Send,
        OpKind::Sendfile,
        OpKind::Shutdown,
        OpKind::Close,
        OpKind::Open,
        OpKind::Stat,
        OpKind::Read,
        OpKind::Write,
        OpKind::Call,
        OpKind::Readable,
    ];

    /// Position in [`OpKind::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// Lower-case name, as in the counters' JSON.
    pub fn name(self) -> &'static str {
        match self {
            OpKind::Connect => "connect",
            OpKind::Accept => "accept",
            OpKind::Recv => "recv",
            OpKind::Send => "send",
            OpKind::Sendfile => "sendfile",
            OpKind::Shutdown => "shutdown",
            OpKind::Close => "close",
            OpKind::Open => "open",
            OpKind::Stat => "stat",
            OpKind::Read => "read",
            OpKind::Write => "write",
            OpKind::Call => "call",
            OpKind::Readable => "readable",
        }
    }
}

/// What an `fstat` found, in the units the server needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileStat {
    /// Size in bytes.
    pub len_bytes: u64,
    /// Inode number.
    pub ino: u64,
    /// The device the inode is on (with `ino`, names the inode on this machine).
    pub dev: u64,
    /// Last modification (nanosecond resolution where the file system has it).
    pub modified: SystemTime,
    /// Last change of the inode (`ctime`: contents, metadata, link count or name; no call
    /// can set it back, so it tells a file changed where `modified` may not).
    pub status_changed: SystemTime,
    /// What the inode is.
    pub file_type: FileType,
}

/// The kind of inode a [`FileStat`] describes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileType {
    /// A regular file.
    Regular,
    /// A directory.
    Directory,
    /// Anything else (FIFO, socket, device).
    Other,
}

/// The resources an operation gives back, next to its result.
#[derive(Debug, Default)]
pub enum Out {
    /// Nothing to give back.
    #[default]
    None,
    /// The buffer received or read into (`Recv`, `Read`), also on error.
    Buf(BufMut),
    /// The gather list sent or written (`Send`, `Write`), also on error.
    Gather(Gather),
    /// A newly opened file (`Open`).
    File(OwnedFd),
    /// A newly accepted or connected connection and its peer (`Accept`, `Connect`), already
    /// shared: the engine may have registered it for readiness under this very `Arc`.
    Conn(SharedFd, Option<SocketAddr>),
    /// The result of `Stat`.
    Stat(FileStat),
    /// How a `Sendfile` moved its bytes, with the pipe (holding what the socket did not take
    /// yet) or the mapping it used, also on error.
    Via(Via),
}

/// A finished operation (the seed's `laio_completion`).
#[derive(Debug)]
pub struct Completion {
    /// The token the operation was submitted with.
    pub token: Token,
    /// What it was.
    pub kind: OpKind,
    /// The system call's result: bytes moved, or 0, or the error.
    pub result: io::Result<usize>,
    /// What it gives back.
    pub out: Out,
}

impl Completion {
    /// A completion; engines make them, and so does a driver that completes operations itself
    /// (an in-memory connection for tests and fuzzing).
    pub fn new(token: Token, kind: OpKind, result: io::Result<usize>, out: Out) -> Self {
        Completion {
            token,
            kind,
            result,
            out,
        }
    }
}

/// The answer of `submit`, like httparse's `Status`: done at once, or going on in the
/// background (the seed's `-1`/`EINPROGRESS`), to be collected by `poll` under its token.
#[derive(Debug)]
pub enum Submit {
    /// Finished inline; this is its completion.
    Done(Completion),
    /// Going on in the background; `poll` will deliver its completion.
    Pending,
}

/// A set of [`OpKind`]s: which operations go through the backend's asynchronous machinery
/// (seed 001's ohttpd "networkonly" vs "all"). An operation outside the set runs directly on
/// the loop, as under `sync`: blocking on the disk, sockets still waiting on readiness.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct OpSet(u16);

impl OpSet {
    /// Every operation (the default).
    pub const ALL: OpSet = OpSet((1 << OpKind::ALL.len()) - 1);
    /// No operation: every backend behaves like `sync`.
    pub const NONE: OpSet = OpSet(0);
    /// The disk-only calls: `open`, `stat`, `read`, `write`.
    pub const DISK: OpSet = OpSet(
        1 << OpKind::Open as u16
            | 1 << OpKind::Stat as u16
            | 1 << OpKind::Read as u16
            | 1 << OpKind::Write as u16,
    );
    /// Everything but the disk-only calls — seed 001's "networkonly" (which, as its footnote
    /// says, still includes `sendfile`).
    pub const NETWORK: OpSet = OpSet(Self::ALL.0 & !Self::DISK.0);

    /// Whether `kind` is in the set.
    pub fn contains(self, kind: OpKind) -> bool {
        self.0 & (1 << kind as u16) != 0
    }

    /// The set with `kind` added.
    pub fn with(self, kind: OpKind) -> OpSet {
        OpSet(self.0 | 1 << kind as u16)
    }
}

impl Default for OpSet {
    fn default() -> Self {
        OpSet::ALL
    }
}

impl fmt::Display for OpSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (name, set) in [
            ("all", OpSet::ALL),
            ("network", OpSet::NETWORK),
            ("disk", OpSet::DISK),
            ("none", OpSet::NONE),
        ] {
            if *self == set {
                return f.write_str(name);
            }
        }
        let names: Vec<&str> = OpKind::ALL
            .into_iter()
            .filter(|k| self.contains(*k))
            .map(OpKind::name)
            .collect();
        f.write_str(&names.join(","))
    }
}

impl fmt::Debug for OpSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "OpSet({self})")
    }
}

impl std::str::FromStr for OpSet {
    type Err = String;
    /// `all`, `network`, `disk`, `none`, or a comma list of operation names and groups
    /// (`open,read`, `network,open`).
    fn from_str(s: &str) -> Result<Self, String> {
        let mut set = OpSet::NONE;
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            set.0 |= match part {
                "all" => OpSet::ALL.0,
                "network" => OpSet::NETWORK.0,
                "disk" => OpSet::DISK.0,
                "none" => 0,
                name => match OpKind::ALL.into_iter().find(|k| k.name() == name) {
                    Some(k) => 1 << k as u16,
                    None => {
                        let known: Vec<&str> = OpKind::ALL.into_iter().map(OpKind::name).collect();
                        return Err(format!(
                            "unknown operation {name:?} (known: all, network, disk, none, {})",
                            known.join(", ")
                        ));
                    }
                },
            };
        }
        if s.trim().is_empty() {
            return Err("empty operation set (say `none` for no operation)".into());
        }
        Ok(set)
    }
}

impl Serialize for OpSet {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for OpSet {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn op_sets_parse_and_print() {
        assert_eq!("all".parse::<OpSet>().unwrap(), OpSet::ALL);
        let net: OpSet = "network".parse().unwrap();
        assert!(net.contains(OpKind::Sendfile) && net.contains(OpKind::Accept));
        assert!(!net.contains(OpKind::Open) && !net.contains(OpKind::Stat));
        let s: OpSet = "open, read".parse().unwrap();
        assert!(s.contains(OpKind::Open) && s.contains(OpKind::Read) && !s.contains(OpKind::Recv));
        assert_eq!(s.to_string(), "open,read");
        assert_eq!("network,disk".parse::<OpSet>().unwrap(), OpSet::ALL);
        assert_eq!(OpSet::NETWORK.to_string(), "network");
        assert_eq!(
            OpSet::NETWORK
                .with(OpKind::Open)
                .to_string()
                .parse::<OpSet>(),
            Ok(OpSet::NETWORK.with(OpKind::Open))
        );
        assert!("opne"
            .parse::<OpSet>()
            .unwrap_err()
            .contains("unknown operation \"opne\""));
        assert!("".parse::<OpSet>().is_err());
    }
}
