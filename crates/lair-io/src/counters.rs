//! Per-operation counters: how each operation was run (inline, after waiting for a socket, on
//! a helper thread) and what the helper round trips cost.
//!
//! Why: the point of lazy asynchronous I/O is that most calls never leave the loop. These
//! counters show whether that held, and the lab reads them (as JSON) next to throughput.
//! They are plain integers owned by one event loop; [`Counters::merge`] sums workers.

use std::time::Duration;

use serde::Serialize;

use crate::op::OpKind;

/// Counters for one operation kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct OpCounters {
    /// Submitted.
    pub submitted: u64,
    /// Finished inline, without waiting (the lazy case).
    pub inline: u64,
    /// Waited for socket readiness at least once before finishing.
    pub parked: u64,
    /// Went to a helper thread.
    pub helper: u64,
    /// Went through the io_uring submission queue (`uring` backend; the kernel ran it inline
    /// or on its own workers — it does not say which).
    pub ring: u64,
    /// Finished with an error (cancellations included).
    pub errors: u64,
    /// Sum of helper round-trip times (submit to collection), nanoseconds.
    pub helper_ns_total: u64,
    /// Longest helper round trip, nanoseconds.
    pub helper_ns_max: u64,
}

impl OpCounters {
    /// Mean helper round trip, if any operation went to a helper.
    pub fn helper_mean(&self) -> Option<Duration> {
        self.helper_ns_total
            .checked_div(self.helper)
            .map(Duration::from_nanos)
    }

    fn merge(&mut self, other: &OpCounters) {
        self.submitted += other.submitted;
        self.inline += other.inline;
        self.parked += other.parked;
        self.helper += other.helper;
        self.ring += other.ring;
        self.errors += other.errors;
        self.helper_ns_total += other.helper_ns_total;
        self.helper_ns_max = self.helper_ns_max.max(other.helper_ns_max);
    }
}

/// Counters for every operation kind of one backend instance.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Backend name (`sync`, `lazy`, ...).
    pub backend: &'static str,
    /// Times the loop woke from its wait.
    pub wakeups: u64,
    /// What event correlation did, when it was on (`--ecem`).
    pub ecem: Option<crate::ecem::EcemCounters>,
    /// What zero-copy sends did, when any was asked for (`--data emulated`).
    pub zerocopy: Option<crate::zerocopy::ZeroCopyCounters>,
    ops: [OpCounters; OpKind::ALL.len()],
}

impl Counters {
    /// Empty counters for `backend`.
    pub fn new(backend: &'static str) -> Self {
        Counters {
            backend,
            ..Counters::default()
        }
    }

    /// The counters of one kind.
    pub fn op(&self, kind: OpKind) -> &OpCounters {
        &self.ops[kind.index()]
    }

    /// Count an operation that finished inline, and hand its completion back as `submit`'s
    /// answer.
    #[inline(always)]
    pub(crate) fn done_inline(
        &mut self,
        token: crate::op::Token,
        kind: OpKind,
        result: std::io::Result<usize>,
        out: crate::op::Out,
    ) -> crate::op::Submit {
        let c = self.op_mut(kind);
        c.inline += 1;
        c.errors += u64::from(result.is_err());
        crate::op::Submit::Done(crate::op::Completion::new(token, kind, result, out))
    }

    pub(crate) fn op_mut(&mut self, kind: OpKind) -> &mut OpCounters {
        &mut self.ops[kind.index()]
    }

    pub(crate) fn record_helper_latency(&mut self, kind: OpKind, took: Duration) {
        let ns = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        let c = self.op_mut(kind);
        c.helper_ns_total = c.helper_ns_total.saturating_add(ns);
        c.helper_ns_max = c.helper_ns_max.max(ns);
    }

    /// Add `other` into `self` (summing workers).
    pub fn merge(&mut self, other: &Counters) {
        if self.backend.is_empty() {
            self.backend = other.backend;
        }
        self.wakeups += other.wakeups;
        if let Some(theirs) = &other.ecem {
            self.ecem.get_or_insert_with(Default::default).merge(theirs);
        }
        if let Some(theirs) = &other.zerocopy {
            self.zerocopy
                .get_or_insert_with(Default::default)
                .merge(theirs);
        }
        for (mine, theirs) in self.ops.iter_mut().zip(other.ops.iter()) {
            mine.merge(theirs);
        }
    }

    /// `(kind, counters)` for every kind that was used.
    pub fn used(&self) -> impl Iterator<Item = (OpKind, &OpCounters)> {
        OpKind::ALL
            .iter()
            .map(|&k| (k, self.op(k)))
            .filter(|(_, c)| c.submitted > 0)
    }

    /// A table for humans, one line per used operation kind.
    pub fn table(&self) -> String {
        let mut s = format!(
            "engine counters (backend {}, {} wakeups)\n{:<9} {:>12} {:>12} {:>10} {:>10} {:>10} {:>8} {:>12} {:>12}\n",
            self.backend,
            self.wakeups,
            "op",
            "submitted",
            "inline",
            "parked",
            "helper",
            "ring",
            "errors",
            "helper mean",
            "helper max"
        );
        for (kind, c) in self.used() {
            let mean = c
                .helper_mean()
                .map(|d| format!("{d:.1?}"))
                .unwrap_or_else(|| "-".into());
            let max = if c.helper > 0 {
                format!("{:.1?}", Duration::from_nanos(c.helper_ns_max))
            } else {
                "-".into()
            };
            s.push_str(&format!(
                "{:<9} {:>12} {:>12} {:>10} {:>10} {:>10} {:>8} {:>12} {:>12}\n",
                kind.name(),
                c.submitted,
                c.inline,
                c.parked,
                c.helper,
                c.ring,
                c.errors,
                mean,
                max
            ));
        }
        s
    }
}

impl Serialize for Counters {
    /// `{"backend":..,"wakeups":..,"ops":{"open":{...},...}}`, only the kinds that were used;
    /// `"ecem":{...}` too when event correlation was on, `"zerocopy":{...}` when a zero-copy
    /// send was asked for.
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let ops: std::collections::BTreeMap<&str, &OpCounters> =
            self.used().map(|(k, v)| (k.name(), v)).collect();
        let mut st = s.serialize_struct("Counters", 6)?;
        st.serialize_field("backend", self.backend)?;
        st.serialize_field("wakeups", &self.wakeups)?;
        st.serialize_field("ops", &ops)?;
        if let Some(e) = &self.ecem {
            st.serialize_field("ecem", e)?;
        }
        if let Some(z) = &self.zerocopy {
            st.serialize_field("zerocopy", z)?;
        }
        st.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_sums_and_keeps_max() {
        let mut a = Counters::new("lazy");
        a.op_mut(OpKind::Read).submitted = 2;
        a.op_mut(OpKind::Read).helper = 1;
        a.record_helper_latency(OpKind::Read, Duration::from_micros(5));
        let mut b = Counters::new("lazy");
        b.op_mut(OpKind::Read).submitted = 3;
        b.op_mut(OpKind::Read).helper = 1;
        b.record_helper_latency(OpKind::Read, Duration::from_micros(9));
        a.merge(&b);
        let r = a.op(OpKind::Read);
        assert_eq!(r.submitted, 5);
        assert_eq!(r.helper_ns_max, 9_000);
        assert_eq!(r.helper_mean(), Some(Duration::from_micros(7)));
        assert_eq!(a.used().count(), 1);
    }
}
