//! The placement seam: which CPUs each worker's event loop and its engine threads run on.
//!
//! Why: engines used to be built inside each worker with pinning hard-wired as
//! `cpus[id % n]`. Processor partitioning (seed 003) puts network-engine threads on CPUs of
//! their own and the application loops on the others; the start-up code now asks this module
//! for a [`Placement`], pins each worker's loop to its `app_cpu` and hands `engine_cpus` to the
//! engine ([`lair_io::EngineConfig::cpus`]), whose own threads (helpers, a polling engine) run
//! there.
//!
//! Contract: a placement names only CPUs the process may use; `per_core` is today's behaviour
//! (loops pinned round-robin when asked, engine threads unrestricted); `partitioned` splits
//! the allowed CPUs into an engine set and an application set, both non-empty.

/// Where one worker runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Place {
    /// The CPU the worker's event loop is pinned to (`None`: not pinned).
    pub app_cpu: Option<usize>,
    /// The CPUs the worker's engine threads run on (empty: anywhere).
    pub engine_cpus: Vec<usize>,
}

/// Where every worker runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placement {
    /// One per worker, in worker order.
    pub workers: Vec<Place>,
}

impl Placement {
    /// Every worker a loop with its engine beside it: loop `i` pinned to the `i`-th allowed CPU
    /// (round robin) if `pin`, engine threads anywhere.
    pub fn per_core(allowed: &[usize], workers: usize, pin: bool) -> Placement {
        let workers = (0..workers)
            .map(|i| Place {
                app_cpu: (pin && !allowed.is_empty()).then(|| allowed[i % allowed.len()]),
                engine_cpus: Vec::new(),
            })
            .collect();
        Placement { workers }
    }

    /// The first `engine` allowed CPUs for engine threads, the rest for application loops
    /// (pinned round robin).
    pub fn partitioned(
        allowed: &[usize],
        workers: usize,
        engine: usize,
    ) -> Result<Placement, String> {
        if engine == 0 || engine >= allowed.len() {
            return Err(format!(
                "a partition needs at least one engine CPU and one application CPU \
                 (asked for {engine} engine CPUs of {} allowed: {allowed:?})",
                allowed.len()
            ));
        }
        let (eng, app) = allowed.split_at(engine);
        let workers = (0..workers)
            .map(|i| Place {
                app_cpu: Some(app[i % app.len()]),
                engine_cpus: eng.to_vec(),
            })
            .collect();
        Ok(Placement { workers })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_core_is_round_robin_when_pinned() {
        let p = Placement::per_core(&[2, 5], 3, true);
        let cpus: Vec<_> = p.workers.iter().map(|w| w.app_cpu).collect();
        assert_eq!(cpus, [Some(2), Some(5), Some(2)]);
        assert!(p.workers.iter().all(|w| w.engine_cpus.is_empty()));
        assert!(Placement::per_core(&[0, 1], 2, false)
            .workers
            .iter()
            .all(|w| w.app_cpu.is_none()));
    }

    #[test]
    fn partitions_keep_engines_and_loops_apart() {
        let p = Placement::partitioned(&[0, 1, 2, 3], 3, 1).unwrap();
        for w in &p.workers {
            assert_eq!(w.engine_cpus, [0]);
            assert!(w.app_cpu.is_some_and(|c| c != 0));
        }
        assert!(
            Placement::partitioned(&[0, 1], 1, 2).is_err(),
            "no CPU left for loops"
        );
        assert!(Placement::partitioned(&[0, 1], 1, 0).is_err());
    }
}
