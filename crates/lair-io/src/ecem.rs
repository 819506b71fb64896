//! Event correlation (seed 000, ECEM): the event-pair table and its counters.
//!
//! Why: a server moving file data to a slow client handles two events that depend on each
//! other — the disk side (the bytes it needs are in the page cache, or a read of them
//! completed) and the network side (the socket has room for a useful chunk). Delivering one
//! while the other is not ready makes the loop (or a thread) wake only to wait again. The seed
//! correlates the two in an *event pair* with a happened-before order and a state (Table 2):
//!
//! | pre ⇒ post | state |
//! |---|---|
//! | ready ⇒ ready | `RR` |
//! | ready ⇒ wait | `RW` (the seed defers delivery here: DED) |
//! | wait ⇒ ready | `WR` |
//! | wait ⇒ wait | `WW` |
//!
//! The table is the seed's API, typed: `ecem_add`/`ecem_del` are [`PairTable::add`] /
//! [`PairTable::remove`], `ecem_retrieve_correlated_disk/network` are [`PairTable::by_net`] /
//! [`PairTable::by_disk`] (several connections may send one open file, so a descriptor of the
//! disk side can be in several pairs), `ecem_check_if_RW_state` is [`PairTable::is_rw`]. The
//! engine keeps each pair's sides from what it knows ([`PairTable::update`]): the disk side
//! from page-cache residency and finished reads, the network side from epoll's writability and
//! the room measured against `TCP_NOTSENT_LOWAT` (see the reactor). This module makes no
//! system call; the counters it keeps ([`EcemCounters`]) go out with the engine's.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::time::{Duration, Instant};

use serde::Serialize;

/// Which event-correlation mechanisms run (`--ecem`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize)]
pub struct EcemMode {
    /// Deferred event delivery: a disk read whose socket has no room is not issued (or its
    /// completion is held) until the pair is `RR`.
    pub ded: bool,
    /// Disk-to-network splicing: each `sendfile` sends the socket's free room, from cached
    /// pages, and starts reading the window after it.
    pub dns: bool,
}

impl EcemMode {
    /// Neither mechanism (the default).
    pub const OFF: EcemMode = EcemMode {
        ded: false,
        dns: false,
    };

    /// Whether any mechanism runs.
    pub fn any(self) -> bool {
        self.ded || self.dns
    }
}

impl fmt::Display for EcemMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match (self.ded, self.dns) {
            (false, false) => "off",
            (true, false) => "ded",
            (false, true) => "dns",
            (true, true) => "ded,dns",
        })
    }
}

impl FromStr for EcemMode {
    type Err = String;
    /// `off`, `ded`, `dns`, or `ded,dns` (either order).
    fn from_str(s: &str) -> Result<Self, String> {
        let mut m = EcemMode::OFF;
        for part in s.split(',').map(str::trim) {
            match part {
                "off" if s.trim() == "off" => {}
                "ded" => m.ded = true,
                "dns" => m.dns = true,
                other => {
                    return Err(format!(
                        "unknown event-correlation mode {other:?} (known: off, ded, dns, ded,dns)"
                    ))
                }
            }
        }
        Ok(m)
    }
}

/// The happened-before relation of a pair: which side's event comes first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum Order {
    /// Disk read response ⇒ network write request (DED: data through a process buffer).
    DiskThenNet,
    /// Room on the socket (an ACK arrived) ⇒ disk read request (DNS: `sendfile`).
    NetThenDisk,
}

/// A pair's state (seed Table 2): the pre-event's readiness, then the post-event's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum PairState {
    /// Both ready: run it.
    RR,
    /// Pre-event ready, post-event not: running it now would block on the post-event.
    RW,
    /// Pre-event waiting, post-event ready.
    WR,
    /// Both waiting.
    WW,
}

impl PairState {
    /// The state of a pair whose pre- and post-events are (not) ready.
    pub fn of(pre_ready: bool, post_ready: bool) -> Self {
        match (pre_ready, post_ready) {
            (true, true) => PairState::RR,
            (true, false) => PairState::RW,
            (false, true) => PairState::WR,
            (false, false) => PairState::WW,
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// A descriptor as the engine names it: its number and which open descriptor under that
/// number it is (the address of its `Arc`, so a number reused after a close is another key).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FdKey {
    /// The descriptor number.
    pub fd: i32,
    /// Identity of the open descriptor.
    pub id: usize,
}

/// A pair's handle, valid until the pair is removed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PairId(u32);

#[derive(Clone, Debug)]
struct Pair {
    disk: FdKey,
    net: FdKey,
    order: Order,
    disk_ready: bool,
    net_ready: bool,
    /// Since when delivery has been deferred, if it is.
    deferred_since: Option<Instant>,
    splice: Splice,
}

/// What disk-to-network splicing remembers of a pair between two sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Splice {
    /// The file is being read ahead up to here, so a window already asked for is not asked
    /// for again.
    pub prefetched_to: u64,
    /// Room the last send left on the socket (bytes below the mark), so a send that filled
    /// it is not followed by a measurement that would find none.
    pub room_left: u64,
}

impl Default for Splice {
    fn default() -> Self {
        Splice {
            prefetched_to: 0,
            // Unknown: measure before the first send.
            room_left: u64::MAX,
        }
    }
}

impl Pair {
    fn state(&self) -> PairState {
        match self.order {
            Order::DiskThenNet => PairState::of(self.disk_ready, self.net_ready),
            Order::NetThenDisk => PairState::of(self.net_ready, self.disk_ready),
        }
    }
}

/// What the event-correlation machinery did (summed over workers by [`EcemCounters::merge`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct EcemCounters {
    /// Pairs added.
    pub pairs_added: u64,
    /// Pairs removed (the connection closed, or its next response paired another file).
    pub pairs_removed: u64,
    /// Most pairs alive at once (summed over workers: the sum of their maxima).
    pub pairs_max: u64,
    /// State changes, by the state entered: `RR`, `RW`, `WR`, `WW`.
    pub entered: [u64; 4],
    /// Deliveries deferred (an operation held because its pair was not `RR`).
    pub deferred: u64,
    /// Total and longest time a deferred delivery waited, nanoseconds.
    pub deferred_ns_total: u64,
    /// Longest deferral, nanoseconds.
    pub deferred_ns_max: u64,
    /// Reads of a body chunk issued while the socket it goes to had no room for it (more than
    /// `TCP_NOTSENT_LOWAT` minus the chunk unsent; without a mark, `poll` not writable) —
    /// what DED avoids; counted for every read that names its socket (a copied body); under
    /// DED it stays 0, since the read is issued only once there is room.
    pub reads_without_room: u64,
    /// DNS sends (one per writability event that found room).
    pub dns_sends: u64,
    /// Bytes DNS sent, and the room it measured for those sends.
    pub dns_bytes: u64,
    /// The room measured for DNS sends, summed.
    pub dns_room_bytes: u64,
    /// Most bytes one DNS send moved beyond the room it measured (at most a page by design).
    pub dns_over_room_max: u64,
    /// DNS windows the policy sent to a helper (`lazy`: not cached; `eager`, `hybrid`: every
    /// one), where the `sendfile` waits only for the disk.
    pub dns_to_helper: u64,
    /// Read-ahead requests (`POSIX_FADV_WILLNEED`) and the bytes they asked for.
    pub prefetches: u64,
    /// Bytes asked for by read-ahead.
    pub prefetch_bytes: u64,
    /// Longest read-ahead call, nanoseconds, where it ran: the thread model's own thread, the
    /// event loop's helpers (never the loop itself: allocating the pages can mean direct
    /// reclaim under a memory limit).
    pub prefetch_ns_max: u64,
}

impl EcemCounters {
    /// Pairs alive now.
    pub fn pairs_live(&self) -> u64 {
        self.pairs_added.saturating_sub(self.pairs_removed)
    }

    /// State changes of all kinds.
    pub fn transitions(&self) -> u64 {
        self.entered.iter().sum()
    }

    /// Add `o` into `self`.
    pub fn merge(&mut self, o: &EcemCounters) {
        self.pairs_added += o.pairs_added;
        self.pairs_removed += o.pairs_removed;
        self.pairs_max += o.pairs_max;
        for (a, b) in self.entered.iter_mut().zip(o.entered) {
            *a += b;
        }
        self.deferred += o.deferred;
        self.deferred_ns_total += o.deferred_ns_total;
        self.deferred_ns_max = self.deferred_ns_max.max(o.deferred_ns_max);
        self.reads_without_room += o.reads_without_room;
        self.dns_sends += o.dns_sends;
        self.dns_bytes += o.dns_bytes;
        self.dns_room_bytes += o.dns_room_bytes;
        self.dns_over_room_max = self.dns_over_room_max.max(o.dns_over_room_max);
        self.dns_to_helper += o.dns_to_helper;
        self.prefetches += o.prefetches;
        self.prefetch_bytes += o.prefetch_bytes;
        self.prefetch_ns_max = self.prefetch_ns_max.max(o.prefetch_ns_max);
    }

    /// Count a read-ahead hint of `bytes`, and how long it took where it was given.
    pub fn prefetched(&mut self, bytes: u64, took: Duration) {
        self.prefetches += 1;
        self.prefetch_bytes += bytes;
        self.prefetch_took(took);
    }

    /// Record how long a read-ahead hint took (given on a helper, it is timed there).
    pub fn prefetch_took(&mut self, took: Duration) {
        self.prefetch_ns_max = self.prefetch_ns_max.max(nanos(took));
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// The event-pair table of one engine instance.
#[derive(Debug, Default)]
pub struct PairTable {
    pairs: Vec<Option<Pair>>,
    free: Vec<u32>,
    by_net: HashMap<FdKey, u32>,
    by_disk: HashMap<FdKey, Vec<u32>>,
    /// What the table and the mechanisms using it did.
    pub counters: EcemCounters,
}

impl PairTable {
    /// An empty table.
    pub fn new() -> Self {
        PairTable::default()
    }

    /// Correlate `disk` and `net` in `order` (`ecem_add`); both sides start not ready (`WW`).
    /// A socket is in at most one pair: if `net` is paired already with the same file and
    /// order, that pair is returned as it is; otherwise its old pair is removed first (the
    /// connection moved on to another response).
    pub fn add(&mut self, disk: FdKey, net: FdKey, order: Order) -> PairId {
        if let Some(&i) = self.by_net.get(&net) {
            match self.pair(PairId(i)) {
                Some(p) if p.disk == disk && p.order == order => return PairId(i),
                _ => {
                    self.remove(PairId(i));
                }
            }
        }
        let pair = Pair {
            disk,
            net,
            order,
            disk_ready: false,
            net_ready: false,
            deferred_since: None,
            splice: Splice::default(),
        };
        let i = match self.free.pop() {
            Some(i) => {
                self.pairs[i as usize] = Some(pair);
                i
            }
            None => {
                self.pairs.push(Some(pair));
                u32::try_from(self.pairs.len() - 1).unwrap_or(u32::MAX)
            }
        };
        self.by_net.insert(net, i);
        self.by_disk.entry(disk).or_default().push(i);
        self.counters.pairs_added += 1;
        self.counters.pairs_max = self.counters.pairs_max.max(self.len() as u64);
        PairId(i)
    }

    /// Remove a pair (`ecem_del`); `false` if it was gone already.
    pub fn remove(&mut self, id: PairId) -> bool {
        let Some(p) = self.pairs.get_mut(id.0 as usize).and_then(Option::take) else {
            return false;
        };
        self.by_net.remove(&p.net);
        if let Some(v) = self.by_disk.get_mut(&p.disk) {
            v.retain(|&i| i != id.0);
            if v.is_empty() {
                self.by_disk.remove(&p.disk);
            }
        }
        self.free.push(id.0);
        self.counters.pairs_removed += 1;
        if self.by_net.is_empty() {
            // Nothing alive: give back what a burst of connections left.
            self.pairs.clear();
            self.free.clear();
            self.by_net.shrink_to(16);
            self.by_disk.shrink_to(16);
        }
        true
    }

    /// Remove the pair of socket `net`, if it has one (its connection closed).
    pub fn remove_net(&mut self, net: FdKey) -> bool {
        match self.by_net.get(&net) {
            Some(&i) => self.remove(PairId(i)),
            None => false,
        }
    }

    /// The pair of socket `net` (`ecem_retrieve_correlated_disk`).
    pub fn by_net(&self, net: FdKey) -> Option<PairId> {
        self.by_net.get(&net).map(|&i| PairId(i))
    }

    /// The pairs of file `disk` (`ecem_retrieve_correlated_network`).
    pub fn by_disk(&self, disk: FdKey) -> impl Iterator<Item = PairId> + '_ {
        self.by_disk
            .get(&disk)
            .into_iter()
            .flatten()
            .map(|&i| PairId(i))
    }

    /// The two descriptors of a pair, disk side first.
    pub fn sides(&self, id: PairId) -> Option<(FdKey, FdKey)> {
        self.pair(id).map(|p| (p.disk, p.net))
    }

    /// Pairs alive.
    pub fn len(&self) -> usize {
        self.by_net.len()
    }

    /// No pair is alive.
    pub fn is_empty(&self) -> bool {
        self.by_net.is_empty()
    }

    /// A pair's state.
    pub fn state(&self, id: PairId) -> Option<PairState> {
        self.pair(id).map(Pair::state)
    }

    /// `ecem_check_if_RW_state`: the pre-event is ready and the post-event is not.
    pub fn is_rw(&self, id: PairId) -> bool {
        self.state(id) == Some(PairState::RW)
    }

    /// What the engine learnt of a pair's sides (`None`: unchanged); counts a change of state.
    pub fn update(
        &mut self,
        id: PairId,
        disk_ready: Option<bool>,
        net_ready: Option<bool>,
    ) -> Option<PairState> {
        let p = self.pairs.get_mut(id.0 as usize)?.as_mut()?;
        let before = p.state();
        if let Some(d) = disk_ready {
            p.disk_ready = d;
        }
        if let Some(n) = net_ready {
            p.net_ready = n;
        }
        let after = p.state();
        if after != before {
            self.counters.entered[after.index()] += 1;
        }
        Some(after)
    }

    /// Delivery for this pair is held (counted once per deferral, however often it is asked).
    pub fn defer(&mut self, id: PairId, now: Instant) {
        if let Some(p) = self.pairs.get_mut(id.0 as usize).and_then(Option::as_mut) {
            if p.deferred_since.is_none() {
                p.deferred_since = Some(now);
                self.counters.deferred += 1;
            }
        }
    }

    /// A held delivery goes ahead: how long it was held is counted.
    pub fn deliver(&mut self, id: PairId, now: Instant) -> Option<Duration> {
        let p = self.pairs.get_mut(id.0 as usize)?.as_mut()?;
        let held = now.saturating_duration_since(p.deferred_since.take()?);
        let ns = nanos(held);
        self.counters.deferred_ns_total = self.counters.deferred_ns_total.saturating_add(ns);
        self.counters.deferred_ns_max = self.counters.deferred_ns_max.max(ns);
        Some(held)
    }

    /// What splicing remembers of the pair.
    pub fn splice_mut(&mut self, id: PairId) -> Option<&mut Splice> {
        Some(&mut self.pairs.get_mut(id.0 as usize)?.as_mut()?.splice)
    }

    fn pair(&self, id: PairId) -> Option<&Pair> {
        self.pairs.get(id.0 as usize)?.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(fd: i32) -> FdKey {
        FdKey {
            fd,
            id: fd as usize * 16,
        }
    }

    #[test]
    fn modes_parse_and_print() {
        for s in ["off", "ded", "dns", "ded,dns"] {
            assert_eq!(s.parse::<EcemMode>().unwrap().to_string(), s);
        }
        assert_eq!(
            "dns, ded".parse::<EcemMode>().unwrap(),
            EcemMode {
                ded: true,
                dns: true
            }
        );
        assert!("off,dns".parse::<EcemMode>().is_err());
        assert!("splice".parse::<EcemMode>().is_err());
        assert!(!EcemMode::OFF.any());
    }

    #[test]
    fn states_follow_the_order_of_the_pair() {
        let mut t = PairTable::new();
        let ded = t.add(k(10), k(4), Order::DiskThenNet);
        assert_eq!(t.state(ded), Some(PairState::WW));
        // The disk read finished, the socket has no room: RW, the state DED defers.
        assert_eq!(t.update(ded, Some(true), Some(false)), Some(PairState::RW));
        assert!(t.is_rw(ded));
        assert_eq!(t.update(ded, None, Some(true)), Some(PairState::RR));
        assert_eq!(t.update(ded, Some(false), None), Some(PairState::WR));
        assert_eq!(t.update(ded, None, Some(false)), Some(PairState::WW));

        let dns = t.add(k(11), k(5), Order::NetThenDisk);
        // Room on the socket (pre-event) but the window is not cached: RW.
        assert_eq!(t.update(dns, Some(false), Some(true)), Some(PairState::RW));
        assert_eq!(t.update(dns, Some(true), Some(false)), Some(PairState::WR));
        // Entered: RW, RR, WR, WW (ded), RW, WR (dns); an unchanged state is no transition.
        assert_eq!(t.update(dns, Some(true), Some(false)), Some(PairState::WR));
        assert_eq!(t.counters.entered, [1, 2, 2, 1]);
        assert_eq!(t.counters.transitions(), 6);
    }

    #[test]
    fn either_side_finds_the_pair_and_removal_frees_both() {
        let mut t = PairTable::new();
        let a = t.add(k(10), k(4), Order::NetThenDisk);
        // Two connections sending one open file: the file is in both pairs.
        let b = t.add(k(10), k(5), Order::NetThenDisk);
        assert_eq!(t.by_net(k(4)), Some(a));
        assert_eq!(t.by_net(k(5)), Some(b));
        let mut of_file: Vec<PairId> = t.by_disk(k(10)).collect();
        of_file.sort_by_key(|p| p.0);
        assert_eq!(of_file, vec![a, b]);
        assert_eq!(t.sides(a), Some((k(10), k(4))));
        // Adding again is the same pair; another file replaces it.
        assert_eq!(t.add(k(10), k(4), Order::NetThenDisk), a);
        let c = t.add(k(12), k(4), Order::NetThenDisk);
        assert_eq!(t.by_net(k(4)), Some(c));
        assert_eq!(t.by_disk(k(10)).collect::<Vec<_>>(), vec![b]);
        assert_eq!(t.len(), 2);
        assert!(t.remove_net(k(4)));
        assert!(!t.remove_net(k(4)));
        assert!(t.remove(b));
        assert!(!t.remove(b));
        assert!(t.is_empty());
        assert_eq!(t.by_disk(k(10)).count(), 0);
        assert_eq!(t.state(b), None);
        assert_eq!(t.counters.pairs_added, 3);
        assert_eq!(t.counters.pairs_live(), 0);
        assert_eq!(t.counters.pairs_max, 2);
    }

    #[test]
    fn a_deferral_is_counted_once_and_timed() {
        let mut t = PairTable::new();
        let p = t.add(k(10), k(4), Order::DiskThenNet);
        let t0 = Instant::now();
        t.defer(p, t0);
        t.defer(p, t0 + Duration::from_millis(1));
        assert_eq!(t.counters.deferred, 1);
        let held = t.deliver(p, t0 + Duration::from_millis(3));
        assert_eq!(held, Some(Duration::from_millis(3)));
        assert_eq!(t.deliver(p, t0 + Duration::from_millis(4)), None);
        assert_eq!(t.counters.deferred_ns_max, 3_000_000);
        let mut sum = EcemCounters::default();
        sum.merge(&t.counters);
        sum.merge(&t.counters);
        assert_eq!(sum.deferred, 2);
        assert_eq!(sum.deferred_ns_max, 3_000_000);
    }
}
