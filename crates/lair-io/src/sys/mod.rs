//! The backend seam: what every engine backend must do, and the one place that lists them.
//!
//! A backend takes typed operations ([`Op`]) under caller-chosen [`Token`]s and either finishes
//! them at once ([`Submit::Done`]) or later ([`Submit::Pending`], collected by
//! [`Backend::poll`]) — the seed's `laio_syscall` / `laio_gethandle` / `laio_poll`. It must:
//!
//! 1. never block the caller's thread in `submit` unless it is the `sync` baseline, whose point
//!    is to block on the disk;
//! 2. give every owned resource of an operation back in its completion, also on error;
//! 3. deliver completions of background work through `poll`, waking a `poll` that sleeps
//!    (its wait includes the wake-up descriptor; no lost wake-ups), and wake it when
//!    [`Waker::wake`] is called from another thread;
//! 4. on [`Op::Close`], cancel (complete with `ECANCELED`) what is parked on the descriptor;
//! 5. keep [`Counters`] of how each operation ran.
//!
//! Adding a backend is one new file here implementing [`Backend`] (or a `Policy` on the
//! readiness reactor), its [`BackendKind`] variant and one arm in [`with_backend`]; nothing in
//! the server changes, and the tests and the lab, which list `BackendKind::ALL`, cover it.
//!
//! Only `sys/` may use `unsafe`: `os.rs` (the raw `cachestat` call and `preadv2` into spare
//! capacity, for the readiness backends), `uring.rs` (the io_uring backend's submission
//! entries and the descriptors and bytes the kernel hands back), `buf.rs` (marking a
//! buffer's spare room as filled) and `datapath.rs` (a file's mapping, handed to `send`).

use std::fmt;
use std::os::fd::OwnedFd;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use crate::counters::Counters;
use crate::op::{Completion, Op, OpSet, SharedFd, Submit, Token};
use crate::Error;

pub mod blocking;
pub mod buf;
mod correlate;
pub mod datapath;
mod exec;
mod helpers;
pub(crate) mod os;
mod reactor;
pub mod setup;
pub mod watch;
pub mod zerocopy;

pub mod eager;
pub mod hybrid;
pub mod lazy;
pub mod sync;
pub mod uring;

pub use reactor::{Policy, Readiness, SocketReady};

/// One engine instance, owned by one event loop thread.
pub trait Backend: Sized + 'static {
    /// The name used on the command line and in counters.
    const NAME: &'static str;
    /// Build one instance (each worker builds its own).
    fn new(config: &EngineConfig) -> Result<Self, Error>;
    /// Start `op`: finished at once, or pending under `token`. Errors of the operation itself
    /// are in its completion, never here.
    fn submit(&mut self, token: Token, op: Op) -> Submit;
    /// Move finished background operations into `done`, waiting up to `timeout` (`None`:
    /// forever) if there are none. Returns early when woken.
    fn poll(&mut self, done: &mut Vec<Completion>, timeout: Option<Duration>) -> Result<(), Error>;
    /// A handle other threads use to wake `poll`.
    fn waker(&self) -> Waker;
    /// How operations ran so far: a snapshot, so a backend whose counters live on another
    /// thread (a dedicated network engine) can gather them.
    fn counters(&self) -> Counters;
    /// Helper threads started so far.
    fn helper_threads(&self) -> usize;
    /// Give back what a burst left behind: tables sized for more descriptors or operations
    /// than are in use now, spare buffers. The event loop calls it when it has gone quiet.
    fn release_idle(&mut self) {}
}

/// Wakes a backend's `poll` from another thread.
#[derive(Clone, Debug)]
pub struct Waker(pub(crate) Arc<OwnedFd>);

impl Waker {
    /// Make the backend's current or next `poll` return.
    pub fn wake(&self) {
        os::eventfd_signal(&self.0);
    }
}

/// Settings every backend reads at start-up.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Upper bound of the helper-thread pool, per engine instance.
    pub helpers: usize,
    /// A directory whose file system the lazy backend probes for `RWF_NOWAIT` support (the
    /// document root).
    pub probe_dir: Option<SharedFd>,
    /// Which operations go through the backend at all; the others run directly on the loop as
    /// under `sync` (seed 001's ohttpd "networkonly" is [`OpSet::NETWORK`]).
    pub laio_ops: OpSet,
    /// The CPUs the engine's own threads run on (helpers; a dedicated network engine), as the
    /// start-up placement decided; empty: wherever the kernel puts them. The thread that calls
    /// `submit`/`poll` is placed by its owner, not here.
    pub cpus: Vec<usize>,
    /// The most bytes one `Op::Sendfile` moves: what the server asks for (`--sendfile-chunk`),
    /// and the size of `uring`'s staging buffers, which stand in for `sendfile` there.
    pub sendfile_window: usize,
    /// Event correlation (seed 000): deferred event delivery and disk-to-network splicing
    /// (`--ecem`; readiness backends, see `correlate`).
    pub ecem: crate::ecem::EcemMode,
    /// The `TCP_NOTSENT_LOWAT` accepted sockets carry (0: none): what "room on the socket"
    /// is measured against.
    pub notsent_lowat: u32,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            helpers: 32,
            probe_dir: None,
            laio_ops: OpSet::ALL,
            cpus: Vec::new(),
            sendfile_window: 512 << 10,
            ecem: crate::ecem::EcemMode::OFF,
            notsent_lowat: 0,
        }
    }
}

/// The backends, chosen at start-up.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// Non-blocking sockets, blocking file calls on the loop (thttpd's "nb-b" baseline).
    Sync,
    /// Try every call without blocking; only a call that would block goes to a helper.
    Lazy,
    /// Every call to a helper thread (seed 001's liblaiogen).
    Eager,
    /// Socket calls non-blocking on the loop, every disk call to a helper (seed 001, App. A).
    Hybrid,
    /// io_uring: the kernel runs each call inline or on its own workers.
    Uring,
}

impl BackendKind {
    /// Every backend, in the order experiments list them.
    pub const ALL: [BackendKind; 5] = [
        BackendKind::Sync,
        BackendKind::Lazy,
        BackendKind::Eager,
        BackendKind::Hybrid,
        BackendKind::Uring,
    ];

    /// The name on the command line (also `lair-NAME` among the lab's servers).
    pub const fn name(self) -> &'static str {
        match self {
            BackendKind::Sync => sync::SyncBackend::NAME,
            BackendKind::Lazy => lazy::LazyBackend::NAME,
            BackendKind::Eager => eager::EagerBackend::NAME,
            BackendKind::Hybrid => hybrid::HybridBackend::NAME,
            BackendKind::Uring => uring::UringBackend::NAME,
        }
    }
}

/// The backends' names, comma-separated (for messages).
pub(crate) fn known_backends() -> String {
    let names: Vec<&str> = BackendKind::ALL
        .into_iter()
        .map(BackendKind::name)
        .collect();
    names.join(", ")
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for BackendKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        BackendKind::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| Error::UnknownBackend(s.to_owned()))
    }
}

/// Something to run with a concrete backend type (a generic closure, which Rust lacks).
pub trait WithBackend {
    /// What running it returns.
    type Output;
    /// Run with backend `B`, already built.
    fn run<B: Backend>(self, backend: B) -> Self::Output;
}

/// Run `op` on the calling thread, blocking as the `sync` loop does, without an engine: for a
/// driver that completes socket operations itself and needs the file calls run for real (an
/// in-memory connection in tests and fuzzing). A socket call that would wait fails with
/// `EAGAIN` (its buffers are dropped).
pub fn run_blocking(token: Token, op: Op) -> Completion {
    let kind = op.kind();
    let (result, out) = match exec::exec(op, os::Wait::Block, &mut exec::Caps::none()) {
        exec::Step::Done(r, out) => (r, out),
        exec::Step::WouldBlock(_) | exec::Step::Helper(_) => (
            Err(std::io::Error::from(std::io::ErrorKind::WouldBlock)),
            crate::op::Out::None,
        ),
    };
    Completion::new(token, kind, result, out)
}

/// Build the backend `kind` and run `job` with it: the one `match` over backends.
pub fn with_backend<W: WithBackend>(
    kind: BackendKind,
    config: &EngineConfig,
    job: W,
) -> Result<W::Output, Error> {
    Ok(match kind {
        BackendKind::Sync => job.run(sync::SyncBackend::new(config)?),
        BackendKind::Lazy => job.run(lazy::LazyBackend::new(config)?),
        BackendKind::Eager => job.run(eager::EagerBackend::new(config)?),
        BackendKind::Hybrid => job.run(hybrid::HybridBackend::new(config)?),
        BackendKind::Uring => match uring::UringBackend::new(config) {
            Ok(b) => job.run(b),
            Err(e) => {
                tracing::warn!("uring: {e}; falling back to the lazy backend");
                job.run(lazy::LazyBackend::new(config)?)
            }
        },
    })
}
