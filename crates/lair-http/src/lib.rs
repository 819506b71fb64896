//! lair-http: an HTTP/1.1 static-content server over the lair-io engine.
//!
//! [`Server::bind`] opens the document root and every listener (one `SO_REUSEPORT` socket per
//! address per worker); [`Server::start`] runs N workers, each an event loop over its own
//! engine instance; [`Running::stop`] begins a graceful shutdown and [`Running::wait`] returns
//! per-worker reports (engine counters and HTTP statistics).
//!
//! Layers: `request` (parse and refuse), `path` (target to safe relative path), `validators`
//! (preconditions and ranges), `response` (heads), `log` (access log), `conn` (one
//! connection's state machine), `worker` (the loop). Everything that touches the kernel goes
//! through lair-io: this crate makes no system call.

#![forbid(unsafe_code)]

use std::io;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;

use lair_io::{setup, with_backend, Backend, Counters, SharedFd, Waker, WithBackend};
use serde::Serialize;

pub mod cache;
pub mod chunked;
pub mod config;
mod conn;
pub mod log;
pub mod mem;
pub mod path;
pub mod place;
pub mod request;
pub mod response;
mod schedule;
mod threaded;
pub mod validators;
mod worker;

pub use config::{AccessLog, DataMode, Limits, LogDest, Model, ServerConfig};

/// Errors starting or running the server (the operator's or the host's fault).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The document root cannot be opened.
    #[error("document root {path}: {source}")]
    Root {
        /// The configured root.
        path: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A listen address cannot be bound.
    #[error("listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The access log cannot be opened.
    #[error("access log {path}: {source}")]
    AccessLog {
        /// The path.
        path: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The configuration is inconsistent.
    #[error("configuration: {0}")]
    Config(String),
    /// The engine failed.
    #[error(transparent)]
    Engine(#[from] lair_io::Error),
    /// A worker thread could not start or panicked.
    #[error("worker {0}: {1}")]
    Worker(usize, String),
}

/// HTTP-level statistics of one worker.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct HttpStats {
    /// Connections accepted.
    pub connections: u64,
    /// Request heads parsed.
    pub requests: u64,
    /// Responses by class.
    pub status_2xx: u64,
    /// 3xx responses.
    pub status_3xx: u64,
    /// 4xx responses.
    pub status_4xx: u64,
    /// 5xx responses.
    pub status_5xx: u64,
    /// Body bytes sent.
    pub body_bytes: u64,
    /// Connections ended by a timeout.
    pub timeouts: u64,
    /// Connections answered 503 because of the connection cap.
    pub overload_503: u64,
    /// Times accepting paused for lack of descriptors.
    pub accept_backoffs: u64,
    /// Times a worker handed idle memory back after a burst of connections.
    pub memory_releases: u64,
    /// Responses cut short because the file changed under them.
    pub file_changed: u64,
    /// Open-file cache hits.
    pub file_cache_hits: u64,
    /// Open-file cache misses (the file was opened).
    pub file_cache_misses: u64,
    /// Open-file cache entries dropped because their file changed.
    pub file_cache_changed: u64,
    /// Bytes of small-file bodies and prebuilt heads the cache held at the end.
    pub file_cache_bytes: u64,
    /// Cache entries dropped to stay within `--cache-bytes`.
    pub file_cache_evictions: u64,
}

impl HttpStats {
    /// Add `o` into `self`.
    pub fn merge(&mut self, o: &HttpStats) {
        self.connections += o.connections;
        self.requests += o.requests;
        self.status_2xx += o.status_2xx;
        self.status_3xx += o.status_3xx;
        self.status_4xx += o.status_4xx;
        self.status_5xx += o.status_5xx;
        self.body_bytes += o.body_bytes;
        self.timeouts += o.timeouts;
        self.overload_503 += o.overload_503;
        self.accept_backoffs += o.accept_backoffs;
        self.memory_releases += o.memory_releases;
        self.file_changed += o.file_changed;
        self.file_cache_hits += o.file_cache_hits;
        self.file_cache_misses += o.file_cache_misses;
        self.file_cache_changed += o.file_cache_changed;
        self.file_cache_bytes += o.file_cache_bytes;
        self.file_cache_evictions += o.file_cache_evictions;
    }
}

/// What one worker did, returned at shutdown.
#[derive(Clone, Debug, Serialize)]
pub struct WorkerReport {
    /// Worker index.
    pub worker: usize,
    /// How the engine ran each operation.
    pub engine: Counters,
    /// HTTP statistics.
    pub http: HttpStats,
    /// Helper threads the engine started.
    pub helper_threads: usize,
    /// The scheduling policy the worker ran (`depth`).
    pub scheduler: &'static str,
}

/// The whole server's report: the sum over workers, and each worker.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// Summed engine counters.
    pub engine: Counters,
    /// Summed HTTP statistics.
    pub http: HttpStats,
    /// Per worker.
    pub workers: Vec<WorkerReport>,
    /// What watched the small-file cache's hot entries did (`None`: no watcher).
    pub file_watch: Option<lair_io::watch::WatchCounts>,
    /// Pipes and mappings the data paths made, and transfers they ran as `sendfile` instead
    /// (process-wide).
    pub datapath: lair_io::DataPathCounts,
}

/// State every worker shares (read-only but for the stop flag and waker list).
pub(crate) struct ServerState {
    pub cfg: ServerConfig,
    pub root: SharedFd,
    pub log: Option<SharedFd>,
    pub stop: AtomicBool,
    pub wakers: Mutex<Vec<Waker>>,
    /// Connections open over all workers: `--max-connections` is a total, whichever worker
    /// the kernel hands a connection to.
    pub open: std::sync::atomic::AtomicUsize,
    /// Connections admitted (not answered 503) and still open, over all workers: at most
    /// `max_open`.
    pub admitted: std::sync::atomic::AtomicUsize,
    /// The connection cap in force: `--max-connections`, lowered to what the descriptor limit
    /// leaves after a headroom for files, the log and the engine ([`connection_cap`]).
    pub max_open: usize,
    /// Watches the small-file cache's entries for changes (`None`: no cache, or no inotify).
    pub watcher: Option<Arc<lair_io::Watcher>>,
}

/// `--max-connections`, or less when the descriptor limit `nofile` would run out first. A
/// connection may need two descriptors — its socket and the file it is sending (a miss opens
/// one per request until the cache has it; a large file is held for the whole transfer) — so
/// the cap is half of what remains after 64 for the server itself (listeners, the engine, the
/// log, the root); nginx's documentation gives the same rule (`worker_rlimit_nofile` twice
/// `worker_connections`). Found by the flaky-test hunt of issue 12: under
/// `prlimit --nofile=256` on a loaded machine, 192 connections that all missed the cache at
/// once opened 192 files, the opens failed with `EMFILE`, and 1,000 clients got 75 answers.
/// Connections beyond the cap get 503. Under `--data splice` or `move` a connection sending a body may
/// also hold a pipe (two more descriptors), so the cap is a quarter.
fn connection_cap(cfg: &ServerConfig, nofile: Option<u64>) -> usize {
    let want = cfg.max_connections.max(1);
    let Some(n) = nofile.and_then(|n| usize::try_from(n).ok()) else {
        return want;
    };
    let pipes = |m: DataMode| matches!(m, DataMode::Splice | DataMode::Move);
    let piped = match cfg.data {
        DataMode::Auto => cfg.data_auto.modes().any(pipes),
        m => pipes(m),
    };
    let (per, what) = if piped {
        (4, "a socket, a file and a pipe")
    } else {
        (2, "a socket and a file")
    };
    let cap = (n.saturating_sub(64) / per).max(1);
    if cap < want {
        tracing::warn!(
            "descriptor limit {n}: at most {cap} connections at once (--max-connections \
             {want}; each may need {what}, and 64 are kept for the server), 503 beyond — \
             raise the limit (ulimit -n, LimitNOFILE=) for more"
        );
    }
    cap.min(want)
}

/// A server with its sockets bound, not yet running.
pub struct Server {
    shared: Arc<ServerState>,
    listeners: Vec<Vec<OwnedFd>>,
    addrs: Vec<SocketAddr>,
}

impl Server {
    /// Open the root and the access log, bind every listener for every worker. A port of 0 is
    /// chosen once by the kernel and then shared by all workers.
    pub fn bind(cfg: ServerConfig) -> Result<Server, Error> {
        cfg.check().map_err(Error::Config)?;
        let root = setup::open_dir(&cfg.root).map_err(|source| Error::Root {
            path: cfg.root.display().to_string(),
            source,
        })?;
        let log = match &cfg.access_log {
            AccessLog::Off => None,
            AccessLog::Stdout => Some(setup::stdout().map_err(|source| Error::AccessLog {
                path: "-".into(),
                source,
            })?),
            AccessLog::File(p) => {
                Some(setup::open_append(p).map_err(|source| Error::AccessLog {
                    path: p.display().to_string(),
                    source,
                })?)
            }
        };
        let mut listeners: Vec<Vec<OwnedFd>> = (0..cfg.workers).map(|_| Vec::new()).collect();
        let mut addrs = Vec::new();
        for &want in &cfg.listen {
            if want.port() != 0 && !cfg.share_port {
                setup::check_port_free(want).map_err(|e| Error::Listen {
                    addr: want,
                    source: if e.raw_os_error() == Some(libc::EADDRINUSE) {
                        io::Error::new(
                            e.kind(),
                            "address in use (another server listens there; --share-port joins it)",
                        )
                    } else {
                        e
                    },
                })?;
            }
            let mut addr = want;
            for per_worker in listeners.iter_mut() {
                let fd = setup::bind_listener(addr, cfg.backlog, cfg.notsent_lowat)
                    .map_err(|source| Error::Listen { addr: want, source })?;
                if addr.port() == 0 {
                    addr = setup::local_addr(&fd)
                        .map_err(|source| Error::Listen { addr: want, source })?;
                }
                per_worker.push(fd);
            }
            addrs.push(addr);
        }
        let max_open = connection_cap(&cfg, setup::nofile_limit());
        let watcher = if cfg.file_cache_ttl.is_zero() || cfg.file_cache_entries == 0 {
            None
        } else {
            // Kept a second past the time to live: an entry reopened when it expires finds its
            // inode's watch still there.
            match lair_io::Watcher::start(cfg.file_cache_ttl + std::time::Duration::from_secs(1)) {
                Ok(w) => Some(Arc::new(w)),
                Err(e) => {
                    tracing::warn!(
                        "file cache: no inotify ({e}): every cache hit checks the file with fstat"
                    );
                    None
                }
            }
        };
        Ok(Server {
            shared: Arc::new(ServerState {
                cfg,
                root: Arc::new(root),
                log: log.map(Arc::new),
                stop: AtomicBool::new(false),
                wakers: Mutex::new(Vec::new()),
                open: std::sync::atomic::AtomicUsize::new(0),
                admitted: std::sync::atomic::AtomicUsize::new(0),
                max_open,
                watcher,
            }),
            listeners,
            addrs,
        })
    }

    /// The bound addresses, one per `--listen`, with real ports.
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// Start the workers: the one place where the server model and the placement of its
    /// threads are chosen.
    pub fn start(self) -> Result<Running, Error> {
        let cfg = &self.shared.cfg;
        let placement = place::Placement::per_core(&setup::allowed_cpus(), cfg.workers, cfg.pin);
        let threads = match cfg.model {
            // Each worker an event loop over its own engine.
            Model::Events => {
                let mut threads = Vec::new();
                let places = placement.workers.into_iter();
                for (id, (listeners, at)) in self.listeners.into_iter().zip(places).enumerate() {
                    let shared = Arc::clone(&self.shared);
                    let t = std::thread::Builder::new()
                        .name(format!("lair-worker-{id}"))
                        .spawn(move || run_worker(id, shared, listeners, at))
                        .map_err(|e| Error::Worker(id, e.to_string()))?;
                    threads.push(t);
                }
                threads
            }
            // A thread per connection (seed 000's Apache-like server), running the same `Conn`.
            Model::Threads => vec![threaded::start(Arc::clone(&self.shared), self.listeners)?],
        };
        Ok(Running {
            shared: self.shared,
            threads,
            addrs: self.addrs,
        })
    }
}

struct WorkerMain {
    id: usize,
    shared: Arc<ServerState>,
    listeners: Vec<OwnedFd>,
}

impl WithBackend for WorkerMain {
    type Output = Result<WorkerReport, Error>;
    fn run<B: Backend>(self, engine: B) -> Self::Output {
        self.shared
            .wakers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(engine.waker());
        // The one place the scheduling policy is chosen (the stage scheduler of seed 002 adds
        // its arm here, with its setting).
        let w = worker::Worker::<B, schedule::DepthFirst>::new(
            self.id,
            engine,
            self.shared,
            self.listeners,
        );
        Ok(w.run()?)
    }
}

fn run_worker(
    id: usize,
    shared: Arc<ServerState>,
    listeners: Vec<OwnedFd>,
    at: place::Place,
) -> Result<WorkerReport, Error> {
    if let Some(cpu) = at.app_cpu {
        if let Err(e) = setup::pin_current_thread(cpu) {
            tracing::warn!("worker {id}: cannot pin to CPU {cpu}: {e}");
        }
    }
    let engine_cfg = shared
        .cfg
        .engine(Some(Arc::clone(&shared.root)), at.engine_cpus);
    let kind = shared.cfg.backend;
    let job = WorkerMain {
        id,
        shared: Arc::clone(&shared),
        listeners,
    };
    let result = with_backend(kind, &engine_cfg, job)
        .map_err(Error::from)
        .and_then(|r| r);
    if result.is_err() {
        // One worker failing stops the others, so `Running::wait` returns.
        Stopper(shared).stop();
    }
    result
}

/// Stops a running server from any thread (e.g. a signal handler thread).
#[derive(Clone)]
pub struct Stopper(Arc<ServerState>);

impl Stopper {
    /// Begin a graceful shutdown: stop accepting, close idle connections, finish in-flight
    /// responses up to the shutdown timeout.
    pub fn stop(&self) {
        self.0.stop.store(true, Ordering::Release);
        for w in self
            .0
            .wakers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
        {
            w.wake();
        }
    }
}

/// A running server.
pub struct Running {
    shared: Arc<ServerState>,
    threads: Vec<JoinHandle<Result<WorkerReport, Error>>>,
    addrs: Vec<SocketAddr>,
}

impl Running {
    /// The bound addresses.
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// A handle that stops the server.
    pub fn stopper(&self) -> Stopper {
        Stopper(Arc::clone(&self.shared))
    }

    /// Begin a graceful shutdown.
    pub fn stop(&self) {
        self.stopper().stop();
    }

    /// Wait for every worker to finish; the first worker error wins.
    pub fn wait(self) -> Result<Report, Error> {
        let mut workers = Vec::new();
        let mut first_err = None;
        for (id, t) in self.threads.into_iter().enumerate() {
            match t.join() {
                Ok(Ok(r)) => workers.push(r),
                Ok(Err(e)) => {
                    // One worker failing stops the others.
                    Stopper(Arc::clone(&self.shared)).stop();
                    first_err.get_or_insert(e);
                }
                Err(_) => {
                    Stopper(Arc::clone(&self.shared)).stop();
                    first_err.get_or_insert(Error::Worker(id, "panicked".into()));
                }
            }
        }
        if let Some(e) = first_err {
            return Err(e);
        }
        let mut engine = Counters::new(workers.first().map_or("", |w| w.engine.backend));
        let mut http = HttpStats::default();
        for w in &workers {
            engine.merge(&w.engine);
            http.merge(&w.http);
        }
        let file_watch = self.shared.watcher.as_ref().map(|w| w.counts());
        Ok(Report {
            engine,
            http,
            workers,
            file_watch,
            datapath: lair_io::datapath::counts(),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::time::Duration;

    use lair_io::{Completion, EngineConfig, Op, OpKind, Submit, Token};

    use super::*;

    /// A real backend whose closes finish later, in the next `poll` — as one with asynchronous
    /// closes (io_uring's close opcode) would. None of lair's backends does yet.
    struct LateClose<B> {
        inner: B,
        late: Vec<Completion>,
    }

    impl<B: Backend> Backend for LateClose<B> {
        const NAME: &'static str = "late-close";
        fn release_idle(&mut self) {
            self.inner.release_idle();
        }
        fn new(config: &EngineConfig) -> Result<Self, lair_io::Error> {
            Ok(LateClose {
                inner: B::new(config)?,
                late: Vec::new(),
            })
        }
        fn submit(&mut self, token: Token, op: Op) -> Submit {
            let close = matches!(op, Op::Close { .. });
            match self.inner.submit(token, op) {
                Submit::Done(c) if close => {
                    self.late.push(c);
                    Submit::Pending
                }
                s => s,
            }
        }
        fn poll(
            &mut self,
            done: &mut Vec<Completion>,
            timeout: Option<Duration>,
        ) -> Result<(), lair_io::Error> {
            if self.late.is_empty() {
                return self.inner.poll(done, timeout);
            }
            done.append(&mut self.late);
            self.inner.poll(done, Some(Duration::ZERO))
        }
        fn waker(&self) -> Waker {
            self.inner.waker()
        }
        fn counters(&self) -> Counters {
            self.inner.counters()
        }
        fn helper_threads(&self) -> usize {
            self.inner.helper_threads()
        }
    }

    /// Issue 11: `Op::Close` used to be submitted under a listener's accept token; a close
    /// finished later was then taken for that listener's accept, and the worker submitted
    /// accepts on a listener that already had one parked (each failing with `EBUSY`).
    #[test]
    fn the_connection_cap_leaves_a_file_for_every_connection() {
        let cfg = ServerConfig::default(); // --max-connections 10000
        assert_eq!(super::connection_cap(&cfg, None), 10_000);
        assert_eq!(super::connection_cap(&cfg, Some(1 << 20)), 10_000);
        assert_eq!(super::connection_cap(&cfg, Some(20_000)), 9_968);
        assert_eq!(super::connection_cap(&cfg, Some(256)), 96);
        assert_eq!(super::connection_cap(&cfg, Some(10)), 1, "never 0");
    }

    #[test]
    fn a_close_that_finishes_later_is_not_taken_for_an_accept() {
        let mut cfg = ServerConfig::new(std::env::temp_dir());
        cfg.workers = 1;
        cfg.listen = vec!["127.0.0.1:0".parse().unwrap()];
        let server = Server::bind(cfg).unwrap();
        let addr = server.addrs[0];
        let Server {
            shared,
            mut listeners,
            ..
        } = server;
        let job = WorkerMain {
            id: 0,
            shared: Arc::clone(&shared),
            listeners: listeners.remove(0),
        };
        let worker = std::thread::spawn(move || {
            let engine =
                LateClose::<lair_io::sys::lazy::LazyBackend>::new(&EngineConfig::default())
                    .unwrap();
            job.run(engine)
        });
        for i in 0..20 {
            let mut s = TcpStream::connect(addr).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            s.write_all(b"GET /no-such-file HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .unwrap();
            let mut got = Vec::new();
            s.read_to_end(&mut got).unwrap();
            assert!(got.starts_with(b"HTTP/1.1 404"), "try {i}: {got:?}");
        }
        Stopper(Arc::clone(&shared)).stop();
        let report = worker.join().unwrap().unwrap();
        assert_eq!(report.http.connections, 20);
        // One accept per connection and the one parked when the server stopped (cancelled
        // when its listener closed): no accept submitted because of a close.
        let accept = report.engine.op(OpKind::Accept);
        assert_eq!(accept.submitted, 21, "{accept:?}");
        assert!(accept.errors <= 1, "accepts failed: {accept:?}");
    }
}
