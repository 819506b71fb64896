//! `eager` backend: every operation goes to a pooled helper thread — the thesis's liblaiogen
//! (seed 001, §2.3), LAIO without the kernel's help.
//!
//! The loop hands each call to a helper (the pool's idle threads are the thesis's free list,
//! the running ones its active list; the pool grows on demand up to `--helpers`) and collects
//! completions through the eventfd in its epoll set. A socket call a helper finds not ready
//! comes back to the loop, is parked on readiness and goes to a helper again when it is ready.
//!
//! Why: it is what LAIO costs when nothing can be tried inline — at least two context switches
//! per call, cached or not. The seed measured 7.6× a direct call on `getpid`; `lair micro`
//! measures it here.

use super::exec::Step;
use super::reactor::{Policy, Readiness, SocketReady};
use super::EngineConfig;
use crate::op::{Attempt, Op};
use crate::Error;

/// The `eager` policy: everything to a helper.
pub struct Eager;

/// The `eager` backend.
pub type EagerBackend = Readiness<Eager>;

impl Policy for Eager {
    const NAME: &'static str = "eager";
    const CALL_ON_LOOP: Option<Attempt> = None;

    fn new(_config: &EngineConfig) -> Result<Self, Error> {
        Ok(Eager)
    }

    fn start(&mut self, op: Op, _ready: SocketReady) -> Step {
        match op {
            // Dropping a reference is bookkeeping, not a system call that could block (the
            // last reference closes the descriptor; a socket's close does not wait).
            Op::Close { fd } => {
                drop(fd);
                Step::Done(Ok(0), crate::op::Out::None)
            }
            op => Step::Helper(op),
        }
    }
}
