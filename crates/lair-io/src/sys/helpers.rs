//! A bounded pool of helper threads that run operations which may block.
//!
//! Why: lazy asynchronous I/O sends only the calls that would block to a helper; everything
//! else stays on the loop. The pool grows on demand up to its bound (the thesis's free list is
//! the set of idle threads waiting on the condition variable; its active list is the set
//! running a job); when the loop goes quiet it retires the idle ones ([`Helpers::retire_idle`]),
//! so a burst of blocking calls does not leave 32 threads and their stacks and arenas behind.
//!
//! Completions go to a queue shared with the loop; the helper that makes the queue non-empty
//! signals the loop's eventfd. The loop reads the eventfd *before* it drains the queue, so a
//! completion pushed after the drain always signals again: no wake-up is lost.

use std::collections::VecDeque;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::Instant;

use super::exec::{exec, Caps, Step};
use super::os::{self, Wait};
use crate::op::{Op, Out, Token};

/// An operation travelling through the engine.
pub(crate) struct Job {
    pub token: Token,
    pub op: Op,
    /// Already counted as parked / as sent to a helper (each counted once per operation).
    pub parked: bool,
    pub helped: bool,
    /// The engine's own work (a read-ahead hint): it reports through its own means (an
    /// atomic), so it makes no completion and does not wake the loop.
    pub internal: bool,
}

impl Job {
    /// A just-submitted operation, not yet counted as parked or helped.
    pub fn new(token: Token, op: Op) -> Job {
        Job {
            token,
            op,
            parked: false,
            helped: false,
            internal: false,
        }
    }

    /// Work of the engine's own (see [`Job::internal`]).
    pub fn internal(op: Op) -> Job {
        Job {
            internal: true,
            ..Job::new(Token(0), op)
        }
    }
}

/// A job a helper has run.
pub(crate) struct Finished {
    pub job: JobMeta,
    pub step: Step,
}

/// What the loop needs of a finished job besides its result.
pub(crate) struct JobMeta {
    pub token: Token,
    pub kind: crate::op::OpKind,
    pub sent: Instant,
    pub parked: bool,
    /// The descriptor number of a connect's socket: when the connect finishes, the loop must
    /// forget that number's readiness slot.
    pub connecting: Option<usize>,
    /// The engine's own work: never finished through the queue (see [`Job::internal`]).
    pub internal: bool,
}

struct Queue {
    /// Each with when it was queued (for the latency counter): timed here, so an operation
    /// that never leaves the loop reads no clock (one per parked receive was 1.3 % of the
    /// loop's user time on a cached 1 KiB file).
    jobs: VecDeque<(Job, Instant)>,
    idle: usize,
    /// Threads running (or starting): the bound applies to these.
    live: usize,
    /// Threads that find no job exit (set when the loop goes quiet, cleared by new work).
    retire: bool,
    stop: bool,
}

struct PoolState {
    queue: Mutex<Queue>,
    work: Condvar,
    done: Mutex<Vec<Finished>>,
    wake: Arc<OwnedFd>,
}

/// The pool. Dropping it stops the threads after their current job.
pub(crate) struct Helpers {
    shared: Arc<PoolState>,
    threads: Vec<JoinHandle<()>>,
    /// Threads started so far (retired ones included).
    started: usize,
    max: usize,
    name: &'static str,
    /// Where helper threads run (the placement's engine CPUs; empty: anywhere).
    cpus: Vec<usize>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A helper that panicked mid-job leaves consistent data behind (a queue of plain values).
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Helpers {
    /// A pool of at most `max` threads (at least one) that signals `wake` on completions; its
    /// threads run on `cpus` (empty: wherever the kernel puts them).
    pub fn new(max: usize, wake: Arc<OwnedFd>, name: &'static str, cpus: &[usize]) -> Self {
        Helpers {
            shared: Arc::new(PoolState {
                queue: Mutex::new(Queue {
                    jobs: VecDeque::new(),
                    idle: 0,
                    live: 0,
                    retire: false,
                    stop: false,
                }),
                work: Condvar::new(),
                done: Mutex::new(Vec::new()),
                wake,
            }),
            threads: Vec::new(),
            started: 0,
            max: max.max(1),
            name,
            cpus: cpus.to_vec(),
        }
    }

    /// Threads started so far.
    pub fn threads(&self) -> usize {
        self.started
    }

    /// Queue `job`; start a thread if every running one is busy and the bound allows.
    pub fn submit(&mut self, job: Job) {
        let need_thread = {
            let mut q = lock(&self.shared.queue);
            q.jobs.push_back((job, Instant::now()));
            q.retire = false;
            let need = q.jobs.len() > q.idle && q.live < self.max;
            if need {
                q.live += 1;
            }
            need
        };
        if need_thread {
            // Handles of retired threads (finished) are let go.
            self.threads.retain(|h| !h.is_finished());
            let shared = Arc::clone(&self.shared);
            let cpus = self.cpus.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("{}-helper", self.name))
                .spawn(move || {
                    if let Err(e) = super::setup::pin_current_thread_to(&cpus) {
                        tracing::warn!("helper: cannot run on CPUs {cpus:?}: {e}");
                    }
                    helper_main(&shared)
                });
            match spawned {
                Ok(h) => {
                    self.threads.push(h);
                    self.started += 1;
                }
                // Out of threads: the queued job waits for a running helper.
                Err(e) => {
                    lock(&self.shared.queue).live -= 1;
                    tracing::warn!("cannot start a helper thread: {e}");
                }
            }
        }
        self.shared.work.notify_one();
    }

    /// Let every thread without a job exit (the loop has gone quiet): the idle ones now,
    /// the busy ones when they finish, until the next [`submit`](Helpers::submit) — which
    /// starts a thread again if none is left to take its job.
    pub fn retire_idle(&mut self) {
        lock(&self.shared.queue).retire = true;
        self.shared.work.notify_all();
    }

    /// Move every finished job into `out`.
    pub fn collect(&self, out: &mut Vec<Finished>) {
        out.append(&mut lock(&self.shared.done));
    }
}

impl Drop for Helpers {
    fn drop(&mut self) {
        lock(&self.shared.queue).stop = true;
        self.shared.work.notify_all();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn helper_main(shared: &PoolState) {
    // Helpers run every call in blocking mode; socket calls stay non-blocking and come back as
    // `Step::WouldBlock` for the loop to park.
    let mut caps = Caps::none();
    loop {
        let (job, sent) = {
            let mut q = lock(&shared.queue);
            loop {
                if q.stop {
                    return;
                }
                if let Some(j) = q.jobs.pop_front() {
                    break j;
                }
                if q.retire {
                    q.live -= 1;
                    return;
                }
                q.idle += 1;
                q = shared.work.wait(q).unwrap_or_else(PoisonError::into_inner);
                q.idle -= 1;
            }
        };
        let meta = JobMeta {
            token: job.token,
            kind: job.op.kind(),
            sent,
            parked: job.parked,
            connecting: match &job.op {
                Op::Connect { sock: Some(s), .. } => usize::try_from(s.as_raw_fd()).ok(),
                _ => None,
            },
            internal: job.internal,
        };
        let prefetch = match &job.op {
            Op::Open { prefetch, .. } => *prefetch,
            _ => 0,
        };
        let step = exec(job.op, Wait::Block, &mut caps);
        if meta.internal {
            // The engine's own work reports through its own means: no completion, and no
            // wake-up of the loop.
            continue;
        }
        if let (Step::Done(Ok(_), Out::File(fd)), 1..) = (&step, prefetch) {
            os::prefetch(fd, prefetch);
        }
        let was_empty = {
            let mut d = lock(&shared.done);
            let was_empty = d.is_empty();
            d.push(Finished { job: meta, step });
            was_empty
        };
        if was_empty {
            os::eventfd_signal(&shared.wake);
        }
    }
}
