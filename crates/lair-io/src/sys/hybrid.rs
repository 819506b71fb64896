//! `hybrid` backend: network calls non-blocking on the loop, every disk call to a helper thread
//! (seed 001, Appendix A; the AMPED design of Flash without its guess).
//!
//! A call on a socket is tried in place and parked on epoll readiness when it would block; a
//! call that touches a file (`open`, `stat`, `read`, `write`, `sendfile`, and a generic
//! [`Op::Call`]) always goes to a helper, cached or not. Helper completions arrive through an
//! eventfd in the same epoll set as the sockets — the thesis's version used a signal and
//! `pselect`, whose non-atomic mask in glibc lost wake-ups; an eventfd cannot.
//!
//! Why: it is the middle ground between `eager` (a thread hop per call) and `lazy` (a hop only
//! for a call that would really block): it pays the hop on every disk call, even a cached one.

use super::exec::{exec, Caps, Step};
use super::os::Wait;
use super::reactor::{Policy, Readiness, SocketReady};
use super::EngineConfig;
use crate::op::{Attempt, Op};
use crate::Error;

/// The `hybrid` policy.
pub struct Hybrid {
    caps: Caps,
}

/// The `hybrid` backend.
pub type HybridBackend = Readiness<Hybrid>;

impl Policy for Hybrid {
    const NAME: &'static str = "hybrid";
    const CALL_ON_LOOP: Option<Attempt> = None;

    fn new(_config: &EngineConfig) -> Result<Self, Error> {
        Ok(Hybrid { caps: Caps::none() })
    }

    fn start(&mut self, op: Op, _ready: SocketReady) -> Step {
        match op {
            Op::Open { .. }
            | Op::Stat { .. }
            | Op::Read { .. }
            | Op::Write { .. }
            | Op::Sendfile { .. }
            | Op::Call(_) => Step::Helper(op),
            // Sockets: tried without waiting; `Caps::none` sends nothing here to a helper.
            op => exec(op, Wait::NoWait, &mut self.caps),
        }
    }
}
