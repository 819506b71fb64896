//! `sync` backend: non-blocking sockets driven by readiness, blocking file calls run on the
//! event loop itself (thttpd's "nb-b").
//!
//! Why: it is the baseline every other backend is measured against. When the data is cached it
//! is the cheapest possible design; when it is not, the whole loop — every other connection —
//! waits for the disk. That head-of-line blocking is what lazy asynchronous I/O removes.

use super::exec::{exec, Caps, Step};
use super::os::Wait;
use super::reactor::{Policy, Readiness, SocketReady};
use super::EngineConfig;
use crate::op::{Attempt, Op};
use crate::Error;

/// The `sync` policy: run everything in place, blocking on the disk.
pub struct Sync {
    caps: Caps,
}

/// The `sync` backend.
pub type SyncBackend = Readiness<Sync>;

impl Policy for Sync {
    const NAME: &'static str = "sync";
    const CALL_ON_LOOP: Option<Attempt> = Some(Attempt::MayBlock);

    fn new(_config: &EngineConfig) -> Result<Self, Error> {
        Ok(Sync { caps: Caps::none() })
    }

    #[inline]
    fn start(&mut self, op: Op, _ready: SocketReady) -> Step {
        exec(op, Wait::Block, &mut self.caps)
    }
}
