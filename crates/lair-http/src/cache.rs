//! A per-worker cache of open files: descriptor, metadata, the prebuilt validator and type
//! fields and, for small files, the body itself — for a short time (default 1 s).
//!
//! Why: opening, `fstat`ing and closing a file is three of the six system calls of a small
//! cached response; with the cache a hit costs none of them, and a small file's body kept in
//! memory saves the read too: a hit is one receive and one send.
//! lighttpd's stat cache and nginx's `open_file_cache` make the same trade.
//!
//! Contract: what an entry holds (length, validators, body) is never used after a change the
//! server could have seen. A hit checks the file with one `fstat` (length, inode, modification
//! time) until the entry has been hit [`WATCH_AFTER`] times; then the file is hot, and the
//! entry is watched instead ([`lair_io::Watcher`], inotify on the open inode: a write,
//! truncate, chmod, touch, unlink or rename over the file raises its flag), which makes every
//! later hit one atomic load, no system call. Why not watch at once: adding a watch costs about
//! as much as 18 `fstat`s, and most files of a real trace are asked for a few times only
//! (`cargo run --release -p lair-lab --example watch_cost`; docs/results/file-cache/). The
//! watch of a hot file outlives its entry by a second, so the entry made when the old one
//! expires attaches to it for free. Where the kernel refuses watches
//! (`fs.inotify.max_user_watches`), every hit goes on with `fstat`, with one log line per
//! worker. The time to live still bounds what neither sees (a parent directory renamed, a file
//! system that sends no events), and a watched entry is used for the few microseconds between
//! a change and the watcher thread reading its event. A response already under way when the
//! file changes is the connection's business: a body that shrank ends the connection. Entries
//! are `Arc`s, so a connection holding one can move to another thread (the
//! thread-per-connection model). A TTL of zero disables the cache. The cache holds at most
//! `capacity` descriptors; when full, expired entries go first, then everything.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use lair_io::{Bytes, FileStat, Mapping, SharedFd, Watch, Watcher};

use crate::validators::ETag;

/// What a hit gives: enough to answer without any system call but the body's.
#[derive(Debug)]
pub struct Entry {
    /// The open file.
    pub file: SharedFd,
    /// Its metadata when opened.
    pub stat: FileStat,
    /// The path actually opened (a directory request maps to its `index.html`).
    pub rel: Vec<u8>,
    /// Strong validator.
    pub etag: ETag,
    /// `Last-Modified` value.
    pub last_modified: String,
    /// The whole `Content-Type: ...\r\n` line.
    pub content_type: Vec<u8>,
    /// The whole body, for a small file, once it has been read: immutable and shared, so every
    /// response that uses it sends these very bytes (a slice for a range) next to its own head
    /// in one gather send, without copying them (copy semantics without the copy).
    pub body: OnceLock<Bytes>,
    /// A shared mapping of the whole file (`--data share`), made by the first response that
    /// sends from it and reused by the others until the entry is replaced.
    pub map: OnceLock<Arc<Mapping>>,
    opened: Instant,
    /// Hits checked with `fstat` so far (the entry is watched once they reach
    /// [`WATCH_AFTER`]).
    stat_checks: AtomicU32,
    /// The file's watch, once it is hot.
    watch: OnceLock<Watch>,
}

impl Entry {
    /// Build an entry for a file just opened and `fstat`ed.
    pub fn new(file: SharedFd, stat: FileStat, rel: Vec<u8>, now: Instant) -> Entry {
        let mut content_type = Vec::with_capacity(48);
        crate::response::content_type(&mut content_type, &rel);
        Entry {
            etag: ETag::new(stat.ino, stat.len_bytes, stat.modified),
            last_modified: httpdate::fmt_http_date(stat.modified),
            file,
            stat,
            rel,
            content_type,
            body: OnceLock::new(),
            map: OnceLock::new(),
            opened: now,
            stat_checks: AtomicU32::new(0),
            watch: OnceLock::new(),
        }
    }
}

/// Hits checked with `fstat` before an entry is watched: a watch costs about 18 `fstat`s to
/// add (and as much again to remove, on the watcher's thread), so a file is watched once it
/// has earned it.
pub const WATCH_AFTER: u32 = 32;

/// A lookup's verdict on an entry.
#[derive(PartialEq)]
enum Verdict {
    Fresh,
    Expired,
    Changed,
}

/// Whether the file of `e` may have changed since the entry was made; watches it once hot.
fn check(e: &Entry, watcher: Option<&Watcher>, warned: &mut bool) -> Verdict {
    if let Some(w) = e.watch.get() {
        return if w.changed() {
            Verdict::Changed
        } else {
            Verdict::Fresh
        };
    }
    if !lair_io::watch::unchanged(&e.file, &e.stat) {
        return Verdict::Changed;
    }
    let Some(watcher) = watcher else {
        return Verdict::Fresh;
    };
    if e.stat_checks.fetch_add(1, Ordering::Relaxed) + 1 != WATCH_AFTER {
        return Verdict::Fresh;
    }
    match watcher.watch(&e.file, &e.stat) {
        Ok(w) if w.changed() => return Verdict::Changed,
        Ok(w) => {
            let _ = e.watch.set(w);
        }
        Err(err) => {
            if !std::mem::replace(warned, true) {
                tracing::warn!(
                    "file cache: cannot watch {:?} for changes ({err}; see \
                     fs.inotify.max_user_watches): entries without a watch go on with an \
                     fstat per hit",
                    String::from_utf8_lossy(&e.rel)
                );
            }
        }
    }
    Verdict::Fresh
}

/// The cache, keyed by the request's resolved path (a trailing `/` kept, so `/d/` and `/d` are
/// different keys).
#[derive(Debug)]
pub struct FileCache {
    map: HashMap<Vec<u8>, Arc<Entry>>,
    ttl: Duration,
    capacity: usize,
    watcher: Option<Arc<Watcher>>,
    warned: bool,
    /// Lookups answered from the cache.
    pub hits: u64,
    /// Lookups that had to open the file.
    pub misses: u64,
    /// Entries dropped because their file changed.
    pub changed: u64,
}

impl FileCache {
    /// A cache of at most `capacity` files for `ttl` each (`ttl` zero: disabled), whose
    /// hot entries `watcher` watches (`None`: every hit checks with `fstat`).
    pub fn new(ttl: Duration, capacity: usize, watcher: Option<Arc<Watcher>>) -> FileCache {
        FileCache {
            map: HashMap::new(),
            ttl,
            capacity,
            watcher,
            warned: false,
            hits: 0,
            misses: 0,
            changed: 0,
        }
    }

    fn enabled(&self) -> bool {
        !self.ttl.is_zero() && self.capacity > 0
    }

    /// The fresh entry for `key`, if any.
    pub fn get(&mut self, key: &[u8], now: Instant) -> Option<&Arc<Entry>> {
        if !self.enabled() {
            return None;
        }
        let verdict = match self.map.get(key) {
            None => Verdict::Expired,
            Some(e) if now.duration_since(e.opened) >= self.ttl => Verdict::Expired,
            Some(e) => check(e, self.watcher.as_deref(), &mut self.warned),
        };
        if verdict != Verdict::Fresh {
            self.misses += 1;
            self.changed += u64::from(verdict == Verdict::Changed);
            self.map.remove(key);
            return None;
        }
        self.hits += 1;
        self.map.get(key)
    }

    /// Remember `entry` under `key`.
    pub fn insert(&mut self, key: &[u8], entry: Entry, now: Instant) -> Arc<Entry> {
        let entry = Arc::new(entry);
        if !self.enabled() {
            return entry;
        }
        if self.map.len() >= self.capacity && !self.map.contains_key(key) {
            let ttl = self.ttl;
            self.map.retain(|_, e| now.duration_since(e.opened) < ttl);
            if self.map.len() >= self.capacity {
                self.map.clear();
            }
        }
        self.map.insert(key.to_vec(), Arc::clone(&entry));
        entry
    }

    /// Drop every entry older than the TTL (closing their descriptors).
    pub fn expire(&mut self, now: Instant) {
        let ttl = self.ttl;
        self.map.retain(|_, e| now.duration_since(e.opened) < ttl);
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(path: &std::path::Path, now: Instant) -> Entry {
        let fd: std::os::fd::OwnedFd = std::fs::File::open(path).unwrap().into();
        let stat = lair_io::watch::stat(&fd).unwrap();
        Entry::new(Arc::new(fd), stat, b"a.css".to_vec(), now)
    }

    #[test]
    fn ttl_capacity_and_disable() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("a.css");
        std::fs::write(&f, b"a").unwrap();
        let t0 = Instant::now();
        let mut c = FileCache::new(Duration::from_secs(1), 2, None);
        c.insert(b"a", entry(&f, t0), t0);
        assert_eq!(
            c.get(b"a", t0).unwrap().content_type,
            b"Content-Type: text/css; charset=utf-8\r\n"
        );
        assert!(
            c.get(b"a", t0 + Duration::from_secs(2)).is_none(),
            "expired"
        );
        assert!(c.is_empty(), "the expired entry was dropped at the lookup");
        c.insert(b"b", entry(&f, t0), t0);
        let t2 = t0 + Duration::from_secs(2);
        c.insert(b"c", entry(&f, t2), t2);
        c.insert(b"d", entry(&f, t2), t2);
        assert_eq!(c.len(), 2, "full: the expired entry went first");
        assert!(c.get(b"b", t2).is_none() && c.get(b"c", t2).is_some());
        assert_eq!((c.hits, c.misses), (2, 2));
        let mut off = FileCache::new(Duration::ZERO, 10, None);
        off.insert(b"a", entry(&f, t0), t0);
        assert!(off.get(b"a", t0).is_none() && off.is_empty());
    }

    /// Both ways of noticing a change: the `fstat` of a lukewarm entry, and the watch of a hot
    /// one — which also sees a rewrite that keeps the length and the modification time.
    #[test]
    fn a_changed_file_is_a_miss_lukewarm_or_hot() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let watcher = Arc::new(Watcher::start(Duration::from_secs(3600)).unwrap());
        let t0 = Instant::now();
        let mut c = FileCache::new(Duration::from_secs(3600), 8, Some(Arc::clone(&watcher)));
        let f = dir.path().join("f");

        std::fs::write(&f, vec![b'x'; 10_000]).unwrap();
        c.insert(b"f", entry(&f, t0), t0);
        assert!(c.get(b"f", t0).is_some(), "a hit");
        assert_eq!(watcher.holders(), 0, "lukewarm: not watched yet");
        std::fs::OpenOptions::new()
            .write(true)
            .open(&f)
            .unwrap()
            .set_len(100)
            .unwrap();
        assert!(
            c.get(b"f", t0).is_none(),
            "the fstat saw the truncate at once"
        );
        assert_eq!(c.changed, 1);

        c.insert(b"f", entry(&f, t0), t0);
        for _ in 0..WATCH_AFTER {
            assert!(c.get(b"f", t0).is_some());
        }
        assert_eq!(watcher.holders(), 1, "hot: watched");
        let mtime = std::fs::metadata(&f).unwrap().modified().unwrap();
        let mut w = std::fs::OpenOptions::new().write(true).open(&f).unwrap();
        w.write_all(&[b'y'; 100]).unwrap();
        w.set_modified(mtime).unwrap();
        drop(w);
        // The watcher's thread raises the flag a moment after the event.
        let deadline = Instant::now() + Duration::from_secs(10);
        while c.get(b"f", t0).is_some() {
            assert!(Instant::now() < deadline, "still a hit");
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(c.changed, 2);
        assert!(c.is_empty(), "the entry is gone");
        assert_eq!(watcher.holders(), 0, "the dropped entry let its watch go");
    }
}
