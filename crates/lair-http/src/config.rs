//! Server settings, with the defaults an operator gets when they set nothing.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use lair_io::{BackendKind, OpSet};

/// Request-size limits; each has a status code when exceeded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Longest request line (414 beyond).
    pub request_line_bytes: usize,
    /// Largest request head, request line included (431 beyond).
    pub header_bytes: usize,
    /// Most header fields (431 beyond; at most [`crate::request::MAX_FIELDS`]).
    pub header_fields: usize,
    /// Largest request body read and discarded on GET/HEAD (413 and close beyond).
    pub discard_body_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            request_line_bytes: 8 * 1024,
            header_bytes: 32 * 1024,
            header_fields: 100,
            discard_body_bytes: 64 * 1024,
        }
    }
}

/// Timeouts; each ends the connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// From accept (or the first byte of a later request) to the end of the request head:
    /// slow-header (slowloris) protection.
    pub header: Duration,
    /// Idle time between keep-alive requests.
    pub keep_alive: Duration,
    /// Time without any progress while sending a response.
    pub send: Duration,
    /// How long to drain a client's input after an error response before closing, so the
    /// response is not destroyed by a reset.
    pub linger: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            header: Duration::from_secs(10),
            keep_alive: Duration::from_secs(30),
            send: Duration::from_secs(30),
            linger: Duration::from_secs(2),
        }
    }
}

/// Where the access log goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AccessLog {
    /// No access log.
    Off,
    /// Standard output.
    Stdout,
    /// Appended to this file.
    File(PathBuf),
}

/// Everything `lair serve` is configured with.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// The document root.
    pub root: PathBuf,
    /// Addresses to listen on (each worker binds each with `SO_REUSEPORT`).
    pub listen: Vec<SocketAddr>,
    /// Event-loop threads.
    pub workers: usize,
    /// Pin worker `i` to the i-th allowed CPU.
    pub pin: bool,
    /// Engine backend.
    pub backend: BackendKind,
    /// Helper threads per worker (bound of the pool).
    pub helpers: usize,
    /// Which engine operations go through the backend; the rest run directly, as under `sync`.
    pub laio_ops: OpSet,
    /// Request limits.
    pub limits: Limits,
    /// Timeouts.
    pub timeouts: Timeouts,
    /// Most open connections over all workers; past it, 503 and close, then stop accepting.
    pub max_connections: usize,
    /// Serve names starting with `.` (`.well-known` is always served).
    pub dotfiles: bool,
    /// Bodies up to this size are read into memory and sent with the head in one write; larger
    /// ones go with `sendfile`.
    pub small_file_bytes: usize,
    /// Most bytes one `sendfile` call may send (then the connection waits its turn again),
    /// like nginx's `sendfile_max_chunk`.
    pub sendfile_chunk_bytes: usize,
    /// Access log destination.
    pub access_log: AccessLog,
    /// How long an open file (descriptor, metadata, validators) is reused before its path is
    /// opened again; zero disables the cache.
    pub file_cache_ttl: Duration,
    /// Most files each worker keeps open in its cache.
    pub file_cache_entries: usize,
    /// Listen backlog.
    pub backlog: i32,
    /// How long a graceful shutdown waits for in-flight responses.
    pub shutdown_timeout: Duration,
}

impl ServerConfig {
    /// Defaults for serving `root` on 127.0.0.1:8080.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        ServerConfig {
            root: root.into(),
            listen: vec![SocketAddr::from(([127, 0, 0, 1], 8080))],
            workers: std::thread::available_parallelism().map_or(1, |n| n.get()),
            pin: false,
            backend: BackendKind::Lazy,
            helpers: 32,
            laio_ops: OpSet::ALL,
            limits: Limits::default(),
            timeouts: Timeouts::default(),
            max_connections: 10_000,
            dotfiles: false,
            small_file_bytes: 16 * 1024,
            sendfile_chunk_bytes: 512 * 1024,
            access_log: AccessLog::Off,
            file_cache_ttl: Duration::from_secs(1),
            file_cache_entries: 1024,
            backlog: 4096,
            shutdown_timeout: Duration::from_secs(10),
        }
    }
}
