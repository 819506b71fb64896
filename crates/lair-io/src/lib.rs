//! lair-io: lair's I/O engine — one completion API over interchangeable backends.
//!
//! The API is seed 001's lazy asynchronous I/O: [`Backend::submit`] runs an [`Op`] and either
//! returns its result at once ([`Submit::Done`], the call did not block) or says it goes on in
//! the background ([`Submit::Pending`], the seed's `EINPROGRESS`), under the caller's [`Token`]
//! (the seed's `laio_gethandle`). [`Backend::poll`] collects finished background operations
//! into the caller's buffer with a timeout (`laio_poll`). One engine instance belongs to one
//! event-loop thread.
//!
//! Backends (chosen at start-up with [`BackendKind`], built by [`with_backend`]):
//! - [`sync`](sys::sync): non-blocking sockets, blocking file calls on the loop (baseline);
//! - [`lazy`](sys::lazy): every call tried without blocking; only one that would block goes
//!   to a bounded helper pool;
//! - [`eager`](sys::eager): every call goes to a helper thread (seed 001's liblaiogen);
//! - [`hybrid`](sys::hybrid): socket calls on the loop, every disk call to a helper (seed 001,
//!   Appendix A);
//! - [`uring`](sys::uring): io_uring — the kernel runs each call inline or on its own workers
//!   (falls back to `lazy`, with a log line saying why, where io_uring is unavailable).
//!
//! [`EngineConfig::laio_ops`] narrows which operations go through a backend at all (seed 001's
//! ohttpd "networkonly" vs "all").
//!
//! What it does not do: HTTP, timers, or policy about what to send — that is lair-http.
//! All `unsafe` lives in `sys/`.

#![deny(unsafe_code)]

use std::io;

pub mod counters;
pub mod ecem;
pub mod op;
pub mod sys;
pub mod topology;

pub use counters::{Counters, OpCounters};
pub use ecem::{EcemCounters, EcemMode};
pub use op::{
    Attempt, Call, Completion, FileStat, FileType, Op, OpKind, OpSet, Out, SharedFd, Submit, Token,
};
pub use sys::blocking::Blocking;
pub use sys::buf;
pub use sys::buf::{Buf, BufMut, Bytes, Gather};
pub use sys::datapath;
pub use sys::datapath::{DataPathCounts, Mapping, Pipe, Via};
pub use sys::watch;
pub use sys::watch::{Watch, Watcher};
pub use sys::zerocopy;
pub use sys::zerocopy::ZeroCopyCounters;
pub use sys::{
    run_blocking, setup, with_backend, Backend, BackendKind, EngineConfig, Waker, WithBackend,
};

/// Built with the `valgrind` feature: a measurement build whose opens go without
/// `openat2`'s containment when valgrind refuses it (see the feature in `Cargo.toml`).
pub const VALGRIND_BUILD: bool = cfg!(feature = "valgrind");

/// Errors of the engine itself (an operation's own failure is in its [`Completion`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A system call the engine needs to run at all failed (the host's fault: limits, kernel).
    #[error("{call} failed: {source}")]
    Setup {
        /// Which call.
        call: &'static str,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The user named a backend that does not exist.
    #[error("unknown backend {0:?} (known: {known})", known = sys::known_backends())]
    UnknownBackend(String),
}

impl Error {
    pub(crate) fn setup(call: &'static str, source: io::Error) -> Self {
        Error::Setup { call, source }
    }
}
