//! The driver seam: in what order a worker runs its connections' steps.
//!
//! Why a seam: the worker used to hard-wire one policy — every completion that finished
//! inline went straight back into the same connection's `Conn::step` (depth first). Seed 002's
//! stage scheduler runs the server stage by stage over batches instead (all the connections
//! waiting to parse, then all waiting to send, ...), which keeps one stage's code and data in
//! the CPU's caches. Here the worker only hands the scheduler [`Work`] and asks it what to run
//! next; a scheduler is one module implementing [`Scheduler`], chosen where the worker is built
//! (`WorkerMain::run` in `lib.rs`).
//!
//! Contract: a scheduler runs every piece of work it was given exactly once, in an order of its
//! choosing, and returns `None` from [`Scheduler::next`] only when it holds nothing; the worker
//! drains it every loop turn, so nothing waits across a `poll`. Work carries the connection's
//! generation: work for a connection closed meanwhile is dropped by the worker, not by the
//! scheduler. Schedulers do no I/O and never see the engine.

use std::collections::VecDeque;

use lair_io::Completion;

/// What a connection's next step starts from.
pub(crate) enum Input {
    /// A new connection: start reading a request (or answer 503 if it is over the cap when
    /// it runs).
    Start,
    /// The completion of the operation it waited for.
    Done(Completion),
}

/// One step to run: connection `idx` (of generation `gen`) has `input`. (A stage scheduler
/// will want the stage too: the connection's `Phase`, added here when it comes.)
pub(crate) struct Work {
    pub idx: u32,
    pub gen: u32,
    pub input: Input,
}

/// A scheduling policy over a worker's connections.
pub(crate) trait Scheduler: 'static {
    /// Name, for logs and reports.
    const NAME: &'static str;
    /// An empty scheduler.
    fn new() -> Self;
    /// Work from outside a step: a completion `poll` delivered, a connection just accepted.
    fn arrived(&mut self, w: Work);
    /// Work made by the step just run: the operation it submitted finished inline. Give it
    /// back to have it run at once (no queueing: the common case of depth first), or keep it.
    fn inline(&mut self, w: Work) -> Option<Work>;
    /// The next step to run; `None` when nothing is left.
    fn next(&mut self) -> Option<Work>;
}

/// Depth first (the worker's policy so far): a connection whose operation finished inline runs
/// again at once (handed straight back, never queued), so a cached small response is one
/// uninterrupted run of steps; work from `poll` runs in the order it arrived.
pub(crate) struct DepthFirst {
    queue: VecDeque<Work>,
}

impl Scheduler for DepthFirst {
    const NAME: &'static str = "depth";

    fn new() -> Self {
        DepthFirst {
            queue: VecDeque::with_capacity(256),
        }
    }

    #[inline]
    fn arrived(&mut self, w: Work) {
        self.queue.push_back(w);
    }

    #[inline]
    fn inline(&mut self, w: Work) -> Option<Work> {
        Some(w)
    }

    #[inline]
    fn next(&mut self) -> Option<Work> {
        self.queue.pop_front()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(idx: u32) -> Work {
        Work {
            idx,
            gen: 1,
            input: Input::Start,
        }
    }

    #[test]
    fn depth_first_runs_inline_work_before_what_arrived() {
        let mut s = DepthFirst::new();
        s.arrived(w(1));
        s.arrived(w(2));
        assert_eq!(s.next().map(|w| w.idx), Some(1));
        let again = s.inline(w(1));
        assert_eq!(
            again.map(|w| w.idx),
            Some(1),
            "the same connection, at once"
        );
        assert_eq!(s.next().map(|w| w.idx), Some(2));
        assert!(s.next().is_none());
    }
}
