//! Event correlation in the readiness reactor: the pair table kept from what the reactor
//! knows, and disk-to-network splicing (DNS) for `sendfile` (seed 000 §4).
//!
//! Why here: the reactor is the one place that sees both sides of a body being sent — the
//! socket's readiness (its slot, epoll's edges) and the file (the policy's residency check,
//! a helper's finished read). The seed puts DNS into the kernel's ACK processing, so data
//! goes out in the same step that frees send-buffer room; the nearest a user-space loop gets
//! is to send, on each writability event, exactly the room that event made — measured
//! against `TCP_NOTSENT_LOWAT` with `SIOCOUTQNSD` and against `SO_SNDBUF` with `SIOCOUTQ` —
//! from pages already cached, and to start reading the window after it so the next event
//! finds it cached (`POSIX_FADV_WILLNEED`, which queues the read and returns).
//!
//! Invariants:
//! - a DNS send asks for at most the room it measured, rounded down to pages; with less than
//!   a page free it is held until the next writability event, after a zero-timeout `poll`
//!   that arms that event (the kernel raises the edge only for a socket found without room,
//!   and a send that stays under the mark and is taken whole finds none) — a one-page probe
//!   instead would be taken again and again, appended to the last queued segment, going far
//!   past the mark;
//! - a window the policy finds uncached goes where the policy sends it (`lazy`: a helper,
//!   whose `sendfile` then waits only for the disk: the room is there);
//! - a socket's pair is removed when the socket is closed.

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::exec::Step;
use super::os;
use super::EngineConfig;
use crate::ecem::{EcemCounters, EcemMode, FdKey, Order, PairId, PairTable};
use crate::op::Op;

/// Pages, as the page cache and the room are counted.
const PAGE: u64 = 4096;

/// Read-ahead distance when no `TCP_NOTSENT_LOWAT` is set: the kernel's own default
/// readahead window.
const AHEAD_DEFAULT: u64 = 128 << 10;

/// A descriptor's key in the pair table.
pub(crate) fn key(fd: &Arc<OwnedFd>) -> FdKey {
    FdKey {
        fd: fd.as_raw_fd(),
        id: Arc::as_ptr(fd) as usize,
    }
}

/// Whether `sock` has room for `len` more bytes: under a mark, fewer than `mark - len`
/// unsent (`SIOCOUTQNSD`, one `ioctl`) — so a chunk that fits goes at once, as a send that
/// fills the socket would; otherwise what a zero-timeout `poll` says, which also arms the next
/// writability event when it finds none (the kernel reports room below half the mark only).
pub(crate) fn room_for(sock: &OwnedFd, mark: u64, len: u64) -> bool {
    if mark > 0 {
        if let Ok(unsent) = os::unsent_bytes(sock) {
            if unsent + len <= mark {
                return true;
            }
        }
    }
    os::poll_writable(sock)
}

/// A chunk read of a copied body, whose bytes go to `sock`: pair the two and say whether the
/// read may go now (both models use this). Under DED the body is kept read ahead a chunk
/// beyond this one and the read goes only if the socket has room for the chunk (held, the
/// deferral is timed from `now`); without DED it always goes, and a read made while the
/// socket had no room is counted — what DED avoids.
#[allow(clippy::too_many_arguments)]
pub(crate) fn chunk_read(
    table: &mut PairTable,
    ded: bool,
    mark: u64,
    file: &Arc<OwnedFd>,
    sock: &Arc<OwnedFd>,
    offset: u64,
    len: u64,
    now: Instant,
) -> (PairId, bool, Option<Prefetch>) {
    let pair = table.add(key(file), key(sock), Order::DiskThenNet);
    let ahead = if ded {
        read_ahead_chunks(table, pair, file, offset, len)
    } else {
        None
    };
    let room = room_for(sock, mark, len);
    table.update(pair, None, Some(room));
    if !ded {
        table.counters.reads_without_room += u64::from(!room);
        return (pair, true, ahead);
    }
    if room {
        table.deliver(pair, now);
    } else {
        table.defer(pair, now);
    }
    (pair, room, ahead)
}

/// A read-ahead hint to give (`POSIX_FADV_WILLNEED`), wherever the caller runs it: the thread
/// model on its own thread, the event loop on a helper — queueing the reads does not wait
/// for them, but allocating their pages can mean direct reclaim when memory is limited.
pub(crate) struct Prefetch {
    file: Arc<OwnedFd>,
    from: u64,
    len: u64,
    /// Where a hint given on another thread records its time (nanoseconds, the slowest).
    slowest: Option<Arc<AtomicU64>>,
}

impl Prefetch {
    /// Give the hint; how long the call took (also raised into `slowest`, if it has one).
    pub fn run(&self) -> Duration {
        let t = Instant::now();
        os::prefetch_range(&self.file, self.from, self.len);
        let took = t.elapsed();
        if let Some(s) = &self.slowest {
            s.fetch_max(
                u64::try_from(took.as_nanos()).unwrap_or(u64::MAX),
                Ordering::Relaxed,
            );
        }
        took
    }
}

/// DED's read-ahead: keep a copied body read ahead one chunk past the one about to be read.
/// (The first full run read ahead only the chunk itself, just before its read: when the
/// socket had room the read-ahead was still in flight, and 38,134 of 38,640 event-loop reads
/// missed the cache and went to helper threads.)
fn read_ahead_chunks(
    table: &mut PairTable,
    pair: PairId,
    file: &Arc<OwnedFd>,
    offset: u64,
    len: u64,
) -> Option<Prefetch> {
    let want = offset + 2 * len;
    let s = table.splice_mut(pair)?;
    let done = s.prefetched_to;
    let from = if (offset..=want).contains(&done) {
        done
    } else {
        offset
    };
    if from >= want {
        return None;
    }
    s.prefetched_to = want;
    table.counters.prefetched(want - from, Duration::ZERO);
    Some(Prefetch {
        file: Arc::clone(file),
        from,
        len: want - from,
        slowest: None,
    })
}

/// The correlation state of one reactor.
pub(crate) struct Correlator {
    mode: EcemMode,
    lowat: u64,
    table: PairTable,
    /// Read-ahead hints decided and not yet handed to the caller.
    prefetches: Vec<Prefetch>,
    /// The slowest hint the helpers gave, nanoseconds.
    slowest: Arc<AtomicU64>,
}

/// What DNS decided for one `sendfile`, checked against its result.
pub(crate) struct Plan {
    pair: PairId,
    /// A DNS send: the room measured, the window asked for and the length the server asked
    /// for (given back if the send has to wait). `None`: a chunk read of a copied body.
    send: Option<(u64, usize, usize)>,
}

impl Correlator {
    /// The correlation state of one reactor. It is kept with every mode: without DED, the
    /// reads of a copied body that found their socket without room are still counted (one
    /// `ioctl` per chunk), so the baseline shows what DED avoids.
    pub fn new(config: &EngineConfig) -> Self {
        Correlator {
            mode: config.ecem,
            lowat: u64::from(config.notsent_lowat),
            table: PairTable::new(),
            prefetches: Vec::new(),
            slowest: Arc::new(AtomicU64::new(0)),
        }
    }

    pub fn counters(&self) -> EcemCounters {
        let mut c = self.table.counters;
        c.prefetch_ns_max = c.prefetch_ns_max.max(self.slowest.load(Ordering::Relaxed));
        c
    }

    /// A descriptor was closed: its pair goes.
    pub fn closed(&mut self, fd: &Arc<OwnedFd>) {
        self.table.remove_net(key(fd));
    }

    /// Before an operation is attempted: a chunk read of a copied body is paired and, under
    /// DED, held while its socket has no room for it ([`chunk_read`]); a `sendfile` under DNS
    /// is paired and its window sized to the socket's room. `Err(())` holds the operation
    /// until the next writability event; `Ok(None)` leaves it as it is (neither kind, DNS
    /// off, or the room could not be read). The reactor's readiness flag is not trusted to say "no room": it is also
    /// cleared when a call leaves for a helper, and holding a send on it then would wait for
    /// an edge the kernel was never asked to raise.
    pub fn before(&mut self, op: &mut Op) -> Result<Option<Plan>, ()> {
        if let Op::Read {
            file,
            offset,
            len,
            to: Some(sock),
            ..
        } = op
        {
            let (pair, go, ahead) = chunk_read(
                &mut self.table,
                self.mode.ded,
                self.lowat,
                file,
                sock,
                *offset,
                *len as u64,
                Instant::now(),
            );
            self.prefetches.extend(ahead.map(|p| Prefetch {
                slowest: Some(Arc::clone(&self.slowest)),
                ..p
            }));
            if !go {
                // Parked on the socket's writability by the reactor; the `poll` that found
                // no room armed it.
                return Err(());
            }
            return Ok(Some(Plan { pair, send: None }));
        }
        let Op::Sendfile {
            sock,
            file,
            offset,
            len,
            ..
        } = op
        else {
            return Ok(None);
        };
        if !self.mode.dns {
            return Ok(None);
        }
        let pair = self.table.add(key(file), key(sock), Order::NetThenDisk);
        let now = Instant::now();
        self.table.deliver(pair, now);
        let left = self
            .table
            .splice_mut(pair)
            .map_or(u64::MAX, |s| s.room_left);
        let measured = |c: &Self| c.room(sock).ok();
        // The last send filled the room: no need to measure it to know.
        let Some(mut room) = (if left < PAGE {
            Some(left)
        } else {
            measured(self)
        }) else {
            return Ok(None);
        };
        if room < PAGE {
            if !os::poll_writable(sock) {
                // No room: wait for the next writability event. The `poll` that said so armed
                // it (a send that stays under the mark arms nothing).
                self.table.update(pair, None, Some(false));
                self.table.defer(pair, now);
                if let Some(s) = self.table.splice_mut(pair) {
                    s.room_left = u64::MAX;
                }
                return Err(());
            }
            // Room freed up since (or the mark measured against is not this socket's).
            room = measured(self).unwrap_or(0);
        }
        let window = (room / PAGE * PAGE).max(PAGE);
        let asked = *len;
        let window = usize::try_from(window).unwrap_or(usize::MAX).min(asked);
        *len = window;
        self.table.update(pair, None, Some(true));
        self.read_ahead(pair, file, *offset + window as u64);
        Ok(Some(Plan {
            pair,
            send: Some((room, window, asked)),
        }))
    }

    /// Bytes the socket takes before it reaches the mark (`SIOCOUTQNSD`: one `ioctl`), or,
    /// without a mark, before its send buffer is full (`SIOCOUTQ` and `SO_SNDBUF`). A send
    /// buffer smaller than the mark is not looked for: the send then comes back short, which
    /// arms the next writability event as well.
    fn room(&self, sock: &OwnedFd) -> std::io::Result<u64> {
        if self.lowat > 0 {
            return Ok(self.lowat.saturating_sub(os::unsent_bytes(sock)?));
        }
        let q = os::send_queue(sock)?;
        Ok(q.sndbuf.saturating_sub(q.queued))
    }

    /// Keep the file read ahead of `end` (where this send stops) by one to two marks, asking
    /// for a mark's worth at a time.
    fn read_ahead(&mut self, pair: PairId, file: &Arc<OwnedFd>, end: u64) {
        let mark = if self.lowat > 0 {
            self.lowat
        } else {
            AHEAD_DEFAULT
        };
        let Some(s) = self.table.splice_mut(pair) else {
            return;
        };
        let done_to = s.prefetched_to;
        if (end + mark..=end + 2 * mark).contains(&done_to) {
            return;
        }
        let from = if (end..end + mark).contains(&done_to) {
            done_to
        } else {
            end
        };
        let to = end + 2 * mark;
        s.prefetched_to = to;
        self.table.counters.prefetched(to - from, Duration::ZERO);
        self.prefetches.push(Prefetch {
            file: Arc::clone(file),
            from,
            len: to - from,
            slowest: Some(Arc::clone(&self.slowest)),
        });
    }

    /// Whether [`Correlator::take_prefetches`] has anything (checked first: an empty drain on
    /// every operation was 36 instructions a request).
    #[inline]
    pub fn has_prefetches(&self) -> bool {
        !self.prefetches.is_empty()
    }

    /// The read-ahead hints decided since the last call, for the caller to give.
    pub fn take_prefetches(&mut self) -> std::vec::Drain<'_, Prefetch> {
        self.prefetches.drain(..)
    }

    /// What became of a planned operation: a chunk read that finished makes its pair's disk
    /// side ready; a DNS send is counted against its room.
    pub fn after(&mut self, plan: Plan, step: &mut Step) {
        let Some((room, window, asked)) = plan.send else {
            if let Step::Done(Ok(_), _) = step {
                self.table.update(plan.pair, Some(true), None);
            }
            return;
        };
        let c = &mut self.table.counters;
        match step {
            Step::Done(Ok(n), _) => {
                let n = *n as u64;
                tracing::trace!(room, window, sent = n, "dns send");
                c.dns_sends += 1;
                c.dns_bytes += n;
                c.dns_room_bytes += room;
                c.dns_over_room_max = c.dns_over_room_max.max(n.saturating_sub(room));
                let full = n < window as u64;
                self.table.update(plan.pair, Some(true), Some(!full));
                if let Some(s) = self.table.splice_mut(plan.pair) {
                    // A short send found the socket full (and armed the next event).
                    s.room_left = if full { 0 } else { room.saturating_sub(n) };
                }
            }
            Step::Done(Err(_), _) => {}
            Step::WouldBlock(op) => {
                // It waits for the next event, which sizes it again.
                if let Op::Sendfile { len, .. } = op {
                    *len = asked;
                }
                self.table.update(plan.pair, None, Some(false));
            }
            Step::Helper(_) => {
                c.dns_to_helper += 1;
                self.table.update(plan.pair, Some(false), None);
            }
        }
    }
}
