//! Change notification for open files: a [`Watcher`] tells, without a system call on the
//! asking side, whether a file the caller holds open has changed since it was watched.
//!
//! Why: a cache that keeps a file's length, validator or body must not go on serving them
//! after the file changed. Checking with `fstat` on every hit costs a system call per response
//! (a cached small file is otherwise one receive and one send) and still misses a rewrite that
//! keeps the size within the timestamp's granularity. inotify tells instead, and a hit reads one
//! atomic flag.
//!
//! How: one inotify watch per inode (`inotify_add_watch` on `/proc/self/fd/N`, so the watch is
//! on the very inode the caller opened, even if the path was renamed over meanwhile), shared by
//! every holder of that inode (each has its own flag), and a thread of its own that reads the
//! events and raises the flags. A watch whose last holder has gone is kept for a grace period
//! (given at start: the cache's time to live and a second), so a cache that reopens a hot file
//! every time to live attaches to the watch it already has — no system call — and the thread
//! removes watches idle for longer. Watching an inode not watched yet costs the add and one
//! `fstat` (a change between the caller's `fstat` and the add raised no event).
//!
//! What counts as a change: a write or truncate (`IN_MODIFY`), metadata and link count
//! (`IN_ATTRIB`: a chmod, a touch, the name unlinked or renamed over), the file moved
//! (`IN_MOVE_SELF`) or deleted (`IN_DELETE_SELF`). Watches are one-shot: after the first event
//! every flag on the inode is raised for good, and the kernel drops the watch (`IN_IGNORED`).
//!
//! Limits, said plainly: the flag rises when the watcher thread has read the event, a few
//! microseconds after the change — a response that starts within that window sends what the
//! cache held; a write through a shared mapping of another process, and a change on a network
//! file system made by another machine, raise no event (the cache's time to live bounds those);
//! a parent directory renamed changes no watched inode. Where inotify is refused (no more
//! instances or watches: `fs.inotify.max_user_*`), [`Watcher::watch`] says so and the caller
//! checks another way ([`unchanged`]).

use std::collections::HashMap;
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rustix::fs::inotify::{self, CreateFlags, ReadFlags, WatchFlags};

use super::os;
use crate::FileStat;

/// One watcher per server: an inotify instance and the thread that reads it.
pub struct Watcher {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

struct Shared {
    inotify: OwnedFd,
    /// Signalled to end the thread.
    stop: OwnedFd,
    stopping: AtomicBool,
    grace: Duration,
    state: Mutex<State>,
    stats: WatchStats,
}

/// The kernel's watches and who holds them.
#[derive(Default)]
struct State {
    by_wd: HashMap<i32, Kernel>,
    /// Live (not yet fired) watches by `(dev, ino)`: where a new holder attaches.
    by_inode: HashMap<(u64, u64), i32>,
}

struct Kernel {
    inode: (u64, u64),
    /// One flag per holder, raised by the watch's event.
    flags: Vec<Arc<AtomicBool>>,
    /// When the last holder went (`None` while held).
    idle_since: Option<Instant>,
}

/// What the watcher has done (kept as atomics; [`Watcher::counts`] reads them).
#[derive(Debug, Default)]
struct WatchStats {
    /// Kernel watches added (`inotify_add_watch`).
    added: AtomicU64,
    /// Holders attached to a watch the inode already had (no system call).
    attached: AtomicU64,
    /// Kernel watches removed after their grace period.
    removed: AtomicU64,
    /// Holders told their file changed.
    changed: AtomicU64,
    /// Watches refused by the kernel.
    refused: AtomicU64,
}

/// What the watcher has done so far, for the server's report.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct WatchCounts {
    /// Kernel watches added (`inotify_add_watch`).
    pub added: u64,
    /// Holders attached to a watch the inode already had (no system call).
    pub attached: u64,
    /// Kernel watches removed after their grace period.
    pub removed: u64,
    /// Holders told their file changed.
    pub changed: u64,
    /// Watches refused by the kernel.
    pub refused: u64,
}

/// A file being watched for one holder; dropping it lets the inode's watch go idle.
pub struct Watch {
    shared: Arc<Shared>,
    wd: i32,
    flag: Arc<AtomicBool>,
}

impl std::fmt::Debug for Watch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watch")
            .field("wd", &self.wd)
            .field("changed", &self.changed())
            .finish()
    }
}

impl std::fmt::Debug for Watcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watcher")
            .field("holders", &self.holders())
            .finish()
    }
}

const MASK: WatchFlags = WatchFlags::MODIFY
    .union(WatchFlags::ATTRIB)
    .union(WatchFlags::MOVE_SELF)
    .union(WatchFlags::DELETE_SELF)
    .union(WatchFlags::ONESHOT);

impl Watcher {
    /// An inotify instance and its reader thread; watches nobody holds are removed after
    /// `grace`.
    pub fn start(grace: Duration) -> io::Result<Watcher> {
        let inotify =
            inotify::init(CreateFlags::CLOEXEC | CreateFlags::NONBLOCK).map_err(io::Error::from)?;
        let shared = Arc::new(Shared {
            inotify,
            stop: os::eventfd_new()?,
            stopping: AtomicBool::new(false),
            grace,
            state: Mutex::new(State::default()),
            stats: WatchStats::default(),
        });
        let reader = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("lair-watch".into())
            .spawn(move || reader.run())?;
        Ok(Watcher {
            shared,
            thread: Some(thread),
        })
    }

    /// Watch `file`, whose `fstat` the caller took as `stat`, for changes from that `fstat` on.
    /// The watch may say changed at once (the file changed since).
    pub fn watch(&self, file: &OwnedFd, stat: &FileStat) -> io::Result<Watch> {
        let inode = (stat.dev, stat.ino);
        let flag = Arc::new(AtomicBool::new(false));
        let mut st = self.shared.lock();
        // A live watch on the inode existed before the caller's `fstat` (it was in the map,
        // which holds only watches that have not fired), so it covers the whole time since.
        if let Some(&wd) = st.by_inode.get(&inode) {
            if let Some(k) = st.by_wd.get_mut(&wd) {
                k.flags.push(Arc::clone(&flag));
                k.idle_since = None;
                self.shared.stats.attached.fetch_add(1, Ordering::Relaxed);
                return Ok(self.holder(wd, flag));
            }
        }
        // Held across the add, so the thread cannot handle the watch's first event before the
        // flag is listed under it.
        let path = format!("/proc/self/fd/{}", file.as_fd().as_raw_fd());
        let wd = match inotify::add_watch(&self.shared.inotify, path.as_str(), MASK) {
            Ok(wd) => wd,
            Err(e) => {
                self.shared.stats.refused.fetch_add(1, Ordering::Relaxed);
                return Err(e.into());
            }
        };
        st.by_inode.insert(inode, wd);
        st.by_wd.insert(
            wd,
            Kernel {
                inode,
                flags: vec![Arc::clone(&flag)],
                idle_since: None,
            },
        );
        drop(st);
        self.shared.stats.added.fetch_add(1, Ordering::Relaxed);
        // The caller's `fstat` came before the add: a change in between raised no event.
        if !unchanged(file, stat) {
            flag.store(true, Ordering::Release);
            self.shared.stats.changed.fetch_add(1, Ordering::Relaxed);
        }
        Ok(self.holder(wd, flag))
    }

    fn holder(&self, wd: i32, flag: Arc<AtomicBool>) -> Watch {
        Watch {
            shared: Arc::clone(&self.shared),
            wd,
            flag,
        }
    }

    /// Holders now, over all watches.
    pub fn holders(&self) -> usize {
        self.shared
            .lock()
            .by_wd
            .values()
            .map(|k| k.flags.len())
            .sum()
    }

    /// Kernel watches now (held or in their grace period).
    pub fn kernel_watches(&self) -> usize {
        self.shared.lock().by_wd.len()
    }

    /// Remove now the watches past their grace period (the thread does it at least once a
    /// second).
    pub fn sweep_idle(&self) {
        self.shared.sweep();
    }

    /// What it has done so far.
    pub fn counts(&self) -> WatchCounts {
        let s = &self.shared.stats;
        let n = |c: &AtomicU64| c.load(Ordering::Relaxed);
        WatchCounts {
            added: n(&s.added),
            attached: n(&s.attached),
            removed: n(&s.removed),
            changed: n(&s.changed),
            refused: n(&s.refused),
        }
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::Release);
        os::eventfd_signal(&self.shared.stop);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Watch {
    /// Whether the file has changed since it was watched.
    pub fn changed(&self) -> bool {
        self.flag.load(Ordering::Acquire)
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let mut st = self.shared.lock();
        // Gone: the watch fired and the thread has dropped it.
        if let Some(k) = st.by_wd.get_mut(&self.wd) {
            k.flags.retain(|f| !Arc::ptr_eq(f, &self.flag));
            if k.flags.is_empty() {
                k.idle_since = Some(Instant::now());
            }
        }
    }
}

/// `fstat` of `file`, as the engine's `Op::Stat` reports it.
pub fn stat(file: &OwnedFd) -> io::Result<FileStat> {
    os::stat(file)
}

/// Whether `file` is as `was` describes it: the same inode, length, modification time and
/// change time (one `fstat`). The change time moves with every write, truncate, chmod, link or
/// unlink (a file renamed over loses its link) and cannot be set back, so this sees what
/// a watch sees but a rewrite within the clock's granularity and a move of the file itself.
pub fn unchanged(file: &OwnedFd, was: &FileStat) -> bool {
    match os::stat(file) {
        Ok(now) => {
            now.len_bytes == was.len_bytes
                && (now.dev, now.ino) == (was.dev, was.ino)
                && now.modified == was.modified
                && now.status_changed == was.status_changed
        }
        Err(_) => false,
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn run(&self) {
        let mut buf = [MaybeUninit::<u8>::uninit(); 4096];
        // Idle watches are looked at this often (and when an event arrives).
        let sweep = self
            .grace
            .clamp(Duration::from_millis(100), Duration::from_secs(1));
        while !self.stopping.load(Ordering::Acquire) {
            if os::wait_readable(&self.inotify, &self.stop, Some(sweep)).is_err() {
                std::thread::sleep(sweep);
            }
            let mut events = inotify::Reader::new(&self.inotify, &mut buf);
            // Until EAGAIN (all read) or any other error (wait again).
            while let Ok(ev) = events.next() {
                let (wd, gone) = (ev.wd(), ev.events().contains(ReadFlags::IGNORED));
                self.fired(wd, gone);
            }
            self.sweep();
        }
    }

    /// Watch `wd` reported a change (`gone`: the kernel dropped it).
    fn fired(&self, wd: i32, gone: bool) {
        let mut st = self.lock();
        let flags = if gone {
            st.by_wd.remove(&wd).map(|k| (k.inode, k.flags))
        } else {
            st.by_wd.get(&wd).map(|k| (k.inode, k.flags.clone()))
        };
        let Some((inode, flags)) = flags else {
            return; // removed after its grace period
        };
        // A fired one-shot watch covers nothing any more: a new holder adds a new one.
        if st.by_inode.get(&inode) == Some(&wd) {
            st.by_inode.remove(&inode);
        }
        drop(st);
        for f in flags {
            if !f.swap(true, Ordering::AcqRel) {
                self.stats.changed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Remove the watches nobody has held for the grace period.
    fn sweep(&self) {
        let now = Instant::now();
        let mut st = self.lock();
        let old: Vec<(i32, (u64, u64))> = st
            .by_wd
            .iter()
            .filter(|(_, k)| {
                k.idle_since
                    .is_some_and(|t| now.duration_since(t) >= self.grace)
            })
            .map(|(&wd, k)| (wd, k.inode))
            .collect();
        for (wd, inode) in old {
            st.by_wd.remove(&wd);
            if st.by_inode.get(&inode) == Some(&wd) {
                st.by_inode.remove(&inode);
            }
            // EINVAL: it fired meanwhile (its IN_IGNORED, read later, finds nothing).
            let _ = inotify::remove_watch(&self.inotify, wd);
            self.stats.removed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn soon(w: &Watch) -> bool {
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(10) {
            if w.changed() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        false
    }

    fn file(dir: &std::path::Path, name: &str) -> (std::path::PathBuf, OwnedFd, FileStat) {
        let p = dir.join(name);
        std::fs::write(&p, b"0123456789").unwrap();
        let f: OwnedFd = std::fs::File::open(&p).unwrap().into();
        let st = os::stat(&f).unwrap();
        (p, f, st)
    }

    #[test]
    fn writes_truncates_renames_over_and_unlinks_are_changes() {
        let dir = tempfile::tempdir().unwrap();
        let w = Watcher::start(Duration::from_secs(3600)).unwrap();

        let (p, f, st) = file(dir.path(), "a");
        let a = w.watch(&f, &st).unwrap();
        let a2 = w.watch(&f, &st).unwrap(); // the same inode twice: one kernel watch
        assert_eq!((w.kernel_watches(), w.holders()), (1, 2));
        assert!(!a.changed() && !a2.changed());
        std::fs::OpenOptions::new()
            .append(true)
            .open(&p)
            .unwrap()
            .write_all(b"x")
            .unwrap();
        assert!(soon(&a) && soon(&a2), "append");
        // The fired watch is gone: a new holder gets a new one, and is told the file changed
        // since the stat it brings.
        let late = w.watch(&f, &st).unwrap();
        assert!(
            late.changed(),
            "a change before the watch, after the caller's fstat"
        );

        let (p, f, st) = file(dir.path(), "b");
        let b = w.watch(&f, &st).unwrap();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&p)
            .unwrap()
            .set_len(3)
            .unwrap();
        assert!(soon(&b), "truncate");

        let (p, f, st) = file(dir.path(), "c");
        let c = w.watch(&f, &st).unwrap();
        let other = dir.path().join("c.new");
        std::fs::write(&other, b"new").unwrap();
        std::fs::rename(&other, &p).unwrap();
        assert!(soon(&c), "renamed over");

        let (p, f, st) = file(dir.path(), "d");
        let d = w.watch(&f, &st).unwrap();
        std::fs::remove_file(&p).unwrap();
        assert!(soon(&d), "unlinked while open");

        let (_, f, st) = file(dir.path(), "e");
        let e = w.watch(&f, &st).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        assert!(!e.changed(), "a file nobody touched is unchanged");
        drop((a, a2, late, b, c, d));
        assert_eq!(w.counts().changed, 6);
        // The last holder of an unchanged file goes: its watch stays for the grace period,
        // and the next holder attaches to it without a system call.
        drop(e);
        assert_eq!(w.holders(), 0);
        let added = w.counts().added;
        let again = w.watch(&f, &st).unwrap();
        assert!(!again.changed());
        assert_eq!(w.counts().added, added, "attached");
        assert_eq!(w.counts().attached, 2);
    }

    #[test]
    fn idle_watches_go_after_their_grace_period() {
        let dir = tempfile::tempdir().unwrap();
        let w = Watcher::start(Duration::from_millis(100)).unwrap();
        let (_, f, st) = file(dir.path(), "a");
        drop(w.watch(&f, &st).unwrap());
        assert_eq!(w.kernel_watches(), 1, "kept for the grace period");
        let t = Instant::now();
        while w.kernel_watches() > 0 {
            assert!(t.elapsed() < Duration::from_secs(10), "never removed");
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(w.counts().removed, 1);
    }
}
