//! Helper threads retire when the loop goes quiet. Its own test binary: it counts this
//! process's helper threads, which the engine tests running beside it would start too.

use std::time::{Duration, Instant};

use lair_io::{
    with_backend, Attempt, Backend, BackendKind, Completion, EngineConfig, Op, Submit, Token,
    WithBackend,
};

/// Poll until every token in `tokens` has completed; their completions, in token order.
fn wait_all<B: Backend>(b: &mut B, tokens: &[u64]) -> Vec<Completion> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut done = Vec::new();
    while tokens
        .iter()
        .any(|t| !done.iter().any(|c: &Completion| c.token == Token(*t)))
    {
        assert!(
            Instant::now() < deadline,
            "{}: {tokens:?} did not all complete",
            B::NAME
        );
        b.poll(&mut done, Some(Duration::from_millis(100))).unwrap();
    }
    done.sort_by_key(|c| c.token.0);
    done
}

/// Helper threads of this process (their names end in `-helper`).
fn helper_threads_running() -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .flatten()
        .filter(|t| {
            std::fs::read_to_string(t.path().join("comm"))
                .is_ok_and(|c| c.trim().ends_with("-helper"))
        })
        .count()
}

/// A burst of blocking calls starts helpers; once the loop is quiet, `release_idle` retires
/// the idle ones, and the next blocking call still runs (on a new one).
struct Retire;
impl WithBackend for Retire {
    type Output = ();
    fn run<B: Backend>(self, mut b: B) {
        let blocking = || {
            Op::Call(Box::new(|a| match a {
                Attempt::NoWait => Err(std::io::ErrorKind::WouldBlock.into()),
                Attempt::MayBlock => {
                    std::thread::sleep(Duration::from_millis(50));
                    Ok(1)
                }
            }))
        };
        let before = helper_threads_running();
        for t in 1..=4 {
            assert!(matches!(b.submit(Token(t), blocking()), Submit::Pending));
        }
        wait_all(&mut b, &[1, 2, 3, 4]);
        assert!(b.helper_threads() >= 1, "{}", B::NAME);
        assert!(helper_threads_running() > before, "{}", B::NAME);
        b.release_idle();
        let deadline = Instant::now() + Duration::from_secs(10);
        while helper_threads_running() > before && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(
            helper_threads_running(),
            before,
            "{}: helpers left",
            B::NAME
        );
        assert!(matches!(b.submit(Token(9), blocking()), Submit::Pending));
        let c = wait_all(&mut b, &[9]);
        assert_eq!(*c[0].result.as_ref().unwrap(), 1, "{}", B::NAME);
        b.release_idle();
    }
}

#[test]
fn idle_helpers_retire_when_the_loop_is_quiet() {
    // In turn, so that each counts only its own helpers; `sync` has none.
    for k in BackendKind::ALL {
        if k != BackendKind::Sync {
            with_backend(k, &EngineConfig::default(), Retire).unwrap();
        }
    }
}
