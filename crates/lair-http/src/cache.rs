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
//!
//! **Prebuilt responses** (userver's cache, seed 003 §6.4). A small file's entry also keeps
//! the head of its plain answer — `200`, the whole body, HTTP/1.1 keep-alive — built once: a
//! hit for it is the cached head and the cached body in one gather send, nothing formatted
//! and nothing copied. Its `Date` is patched once a second: into a copy, since sends still in
//! flight hold the old head (shared bytes are never written). Every other answer (a range, a
//! conditional request, `HEAD`, HTTP/1.0, a close) is built as before from the same entry.
//!
//! **Memory.** The bodies (and prebuilt heads) are bounded in bytes (`--cache-bytes`, split
//! over the workers): past the bound, the least recently hit entries go first, to 7/8 of it.
//! When an entry expires and its path opens the very same file again (device, inode, length,
//! modification and change times), the new entry takes over the old one's body, mapping and
//! head instead of reading them again; an expired entry is kept for one more TTL for that.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
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
    /// The prebuilt head of the plain answer (see the module docs), and the second its `Date`
    /// says.
    head: Mutex<Option<(u64, Bytes)>>,
    /// The cache's clock at its last hit (least recently used goes first).
    used: AtomicU64,
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
            head: Mutex::new(None),
            used: AtomicU64::new(0),
            opened: now,
            stat_checks: AtomicU32::new(0),
            watch: OnceLock::new(),
        }
    }
}

/// Where the `Date` value starts in a head made by `response::start` for a 200.
const DATE_AT: usize = b"HTTP/1.1 200 OK\r\nServer: lair\r\nDate: ".len();
/// An IMF-fixdate's length (`Sun, 06 Nov 1994 08:49:37 GMT`).
const DATE_LEN: usize = 29;

impl Entry {
    /// The prebuilt head of the plain answer for Unix second `second`, whose `Date` is `date`:
    /// built by `build` the first time, patched (into a copy) when the second changed.
    pub fn prebuilt_head(
        &self,
        second: u64,
        date: &str,
        build: impl FnOnce(&mut Vec<u8>),
    ) -> Bytes {
        let mut slot = self.head.lock().unwrap_or_else(PoisonError::into_inner);
        match &mut *slot {
            Some((at, head)) if *at == second => head.clone(),
            Some((at, head)) if date.len() == DATE_LEN && head.len() > DATE_AT + DATE_LEN => {
                let mut v = head.to_vec();
                v[DATE_AT..DATE_AT + DATE_LEN].copy_from_slice(date.as_bytes());
                *head = Bytes::from(v);
                *at = second;
                head.clone()
            }
            slot => {
                let mut v = Vec::with_capacity(256);
                build(&mut v);
                let head = Bytes::from(v);
                *slot = Some((second, head.clone()));
                head
            }
        }
    }

    /// Bytes it keeps in memory: the body and the prebuilt head.
    fn resident(&self) -> u64 {
        let head = self
            .head
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map_or(0, |(_, h)| h.len());
        (self.body.get().map_or(0, Bytes::len) + head) as u64
    }

    /// Take over what `old` kept of the same file (see the module docs).
    fn adopt(&self, old: &Entry) {
        if let Some(b) = old.body.get() {
            let _ = self.body.set(b.clone());
        }
        if let Some(m) = old.map.get() {
            let _ = self.map.set(Arc::clone(m));
        }
        let head = old
            .head
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        *self.head.lock().unwrap_or_else(PoisonError::into_inner) = head;
    }
}

/// Whether two `fstat`s describe the very same contents (as far as `fstat` can tell).
fn same_file(a: &FileStat, b: &FileStat) -> bool {
    (a.dev, a.ino, a.len_bytes) == (b.dev, b.ino, b.len_bytes)
        && a.modified == b.modified
        && a.status_changed == b.status_changed
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
    /// Hashed with foldhash, seeded per process: SipHash was 5 % of a cached request's
    /// instructions (cachegrind), and a client cannot fill the map with keys of its choosing
    /// (only files that exist are entered).
    map: HashMap<Vec<u8>, Arc<Entry>, foldhash::fast::RandomState>,
    ttl: Duration,
    capacity: usize,
    /// Most bytes of bodies and heads kept (this worker's share of `--cache-bytes`).
    budget: u64,
    watcher: Option<Arc<Watcher>>,
    warned: bool,
    /// Counts lookups: the "time" of least-recently-used.
    clock: u64,
    /// Lookups answered from the cache.
    pub hits: u64,
    /// Lookups that had to open the file.
    pub misses: u64,
    /// Entries dropped because their file changed.
    pub changed: u64,
    /// Bytes of bodies and heads held now.
    pub bytes: u64,
    /// Entries dropped to stay within the byte budget.
    pub evictions: u64,
}

impl FileCache {
    /// A cache of at most `capacity` files for `ttl` each (`ttl` zero: disabled), holding at
    /// most `budget` bytes of bodies and heads, whose hot entries `watcher` watches (`None`:
    /// every hit checks with `fstat`).
    pub fn new(
        ttl: Duration,
        capacity: usize,
        budget: u64,
        watcher: Option<Arc<Watcher>>,
    ) -> FileCache {
        FileCache {
            map: HashMap::default(),
            ttl,
            capacity,
            budget,
            watcher,
            warned: false,
            clock: 0,
            hits: 0,
            misses: 0,
            changed: 0,
            bytes: 0,
            evictions: 0,
        }
    }

    fn enabled(&self) -> bool {
        !self.ttl.is_zero() && self.capacity > 0
    }

    /// The fresh entry for `key`, if any. An expired one stays (its body may be adopted by
    /// the entry that replaces it); a changed one goes.
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
            if verdict == Verdict::Changed {
                self.changed += 1;
                self.remove(key);
            }
            return None;
        }
        self.hits += 1;
        self.clock += 1;
        let e = self.map.get(key)?;
        e.used.store(self.clock, Ordering::Relaxed);
        Some(e)
    }

    /// Remember `entry` under `key`; if it replaces an entry of the very same file, it takes
    /// over that one's body, mapping and head.
    pub fn insert(&mut self, key: &[u8], entry: Entry, now: Instant) -> Arc<Entry> {
        let entry = Arc::new(entry);
        if !self.enabled() {
            return entry;
        }
        if let Some(old) = self.remove(key) {
            if same_file(&old.stat, &entry.stat) {
                entry.adopt(&old);
            }
        }
        if self.map.len() >= self.capacity {
            let ttl = self.ttl;
            self.drop_where(|e| now.duration_since(e.opened) >= ttl);
            if self.map.len() >= self.capacity {
                self.drop_where(|_| true);
            }
        }
        self.clock += 1;
        entry.used.store(self.clock, Ordering::Relaxed);
        self.bytes += entry.resident();
        self.map.insert(key.to_vec(), Arc::clone(&entry));
        self.evict_past_budget();
        entry
    }

    /// Keep `body` as the whole body of `e` (a small file just read), if the budget can hold
    /// it at all.
    pub fn store_body(&mut self, key: &[u8], e: &Arc<Entry>, body: &[u8]) {
        if !self.enabled() || body.len() as u64 > self.budget / 2 {
            return;
        }
        let cached = self.map.get(key).is_some_and(|m| Arc::ptr_eq(m, e));
        if e.body.set(Bytes::copy_from_slice(body)).is_ok() && cached {
            self.bytes += body.len() as u64;
            self.evict_past_budget();
        }
    }

    /// The prebuilt head of `e` (see [`Entry::prebuilt_head`]), its bytes charged to the
    /// budget the first time.
    pub fn head(
        &mut self,
        e: &Arc<Entry>,
        second: u64,
        date: &str,
        build: impl FnOnce(&mut Vec<u8>),
    ) -> Bytes {
        let mut built = 0;
        let head = e.prebuilt_head(second, date, |v| {
            build(v);
            built = v.len();
        });
        self.bytes += built as u64;
        head
    }

    /// Past the budget: drop the least recently hit entries, down to 7/8 of it.
    fn evict_past_budget(&mut self) {
        if self.bytes <= self.budget {
            return;
        }
        let goal = self.budget / 8 * 7;
        let mut by_age: Vec<(u64, Vec<u8>)> = self
            .map
            .iter()
            .filter(|(_, e)| e.resident() > 0)
            .map(|(k, e)| (e.used.load(Ordering::Relaxed), k.clone()))
            .collect();
        by_age.sort_unstable();
        for (_, k) in by_age {
            if self.bytes <= goal {
                break;
            }
            self.remove(&k);
            self.evictions += 1;
        }
    }

    fn remove(&mut self, key: &[u8]) -> Option<Arc<Entry>> {
        let e = self.map.remove(key)?;
        self.bytes = self.bytes.saturating_sub(e.resident());
        Some(e)
    }

    fn drop_where(&mut self, mut f: impl FnMut(&Entry) -> bool) {
        let mut freed = 0;
        self.map.retain(|_, e| {
            let drop = f(e);
            if drop {
                freed += e.resident();
            }
            !drop
        });
        self.bytes = self.bytes.saturating_sub(freed);
    }

    /// Drop every entry older than twice the TTL (closing their descriptors): one TTL of
    /// use, one more to be adopted by its successor.
    pub fn expire(&mut self, now: Instant) {
        let keep = self.ttl * 2;
        self.drop_where(|e| now.duration_since(e.opened) >= keep);
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
        let mut c = FileCache::new(Duration::from_secs(1), 2, 1 << 20, None);
        c.insert(b"a", entry(&f, t0), t0);
        assert_eq!(
            c.get(b"a", t0).unwrap().content_type,
            b"Content-Type: text/css; charset=utf-8\r\n"
        );
        assert!(
            c.get(b"a", t0 + Duration::from_secs(2)).is_none(),
            "expired"
        );
        assert_eq!(
            c.len(),
            1,
            "the expired entry stays, for its successor to adopt"
        );
        c.insert(b"b", entry(&f, t0), t0);
        let t2 = t0 + Duration::from_secs(2);
        c.insert(b"c", entry(&f, t2), t2);
        c.insert(b"d", entry(&f, t2), t2);
        assert_eq!(c.len(), 2, "full: the expired entry went first");
        assert!(c.get(b"b", t2).is_none() && c.get(b"c", t2).is_some());
        assert_eq!((c.hits, c.misses), (2, 2));
        let mut off = FileCache::new(Duration::ZERO, 10, 1 << 20, None);
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
        let mut c = FileCache::new(
            Duration::from_secs(3600),
            8,
            1 << 20,
            Some(Arc::clone(&watcher)),
        );
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

    /// An entry that expires and is made again for the very same file takes over its body;
    /// one for a changed file does not.
    #[test]
    fn a_successor_adopts_the_body_of_the_same_file_only() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("a.css");
        std::fs::write(&f, b"body").unwrap();
        let t0 = Instant::now();
        let mut c = FileCache::new(Duration::from_secs(1), 8, 1 << 20, None);
        let e = c.insert(b"a", entry(&f, t0), t0);
        c.store_body(b"a", &e, b"body");
        assert_eq!(c.bytes, 4);
        let t1 = t0 + Duration::from_millis(1500);
        assert!(c.get(b"a", t1).is_none(), "expired");
        let e = c.insert(b"a", entry(&f, t1), t1);
        assert_eq!(e.body.get().map(|b| &b[..]), Some(&b"body"[..]), "adopted");
        assert_eq!(c.bytes, 4, "counted once");
        std::fs::write(&f, b"other").unwrap();
        let t2 = t1 + Duration::from_millis(1500);
        assert!(c.get(b"a", t2).is_none());
        let e = c.insert(b"a", entry(&f, t2), t2);
        assert!(
            e.body.get().is_none(),
            "a changed file's body is read again"
        );
        assert_eq!(c.bytes, 0);
        c.expire(t2 + Duration::from_secs(2));
        assert!(c.is_empty(), "gone after two TTLs");
    }

    /// Past the byte budget the least recently hit bodies go, down to 7/8 of it.
    #[test]
    fn the_byte_budget_evicts_the_least_recently_used() {
        let dir = tempfile::tempdir().unwrap();
        let t0 = Instant::now();
        let mut c = FileCache::new(Duration::from_secs(60), 100, 4000, None);
        for i in 0..3u8 {
            let f = dir.path().join(format!("f{i}"));
            std::fs::write(&f, vec![i; 1000]).unwrap();
            let key = [b'f', b'0' + i];
            let e = c.insert(&key, entry(&f, t0), t0);
            c.store_body(&key, &e, &[i; 1000]);
        }
        assert_eq!((c.bytes, c.evictions), (3000, 0));
        assert!(
            c.get(b"f0", t0).is_some(),
            "f0 is now the most recent; f1 the least"
        );
        let f = dir.path().join("f3");
        std::fs::write(&f, vec![3; 1500]).unwrap();
        let e = c.insert(b"f3", entry(&f, t0), t0);
        c.store_body(b"f3", &e, &[3; 1500]);
        assert_eq!(
            c.evictions, 1,
            "4,500 bytes: one entry out brings it under 3,500"
        );
        assert!(c.get(b"f1", t0).is_none(), "the least recently used went");
        assert!(c.get(b"f0", t0).is_some() && c.get(b"f3", t0).is_some());
        assert_eq!(c.bytes, 3500);
        c.store_body(
            b"f2",
            c.map.get(&b"f2"[..]).cloned().as_ref().unwrap(),
            &[0; 3000],
        );
        assert_eq!(c.bytes, 3500, "a body over half the budget is not kept");
    }

    /// The prebuilt head is built once, then patched into a copy when the second changes: a
    /// copy, because a send in flight may still hold the old one.
    #[test]
    fn the_prebuilt_head_gets_a_new_date_in_a_copy() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("a.css");
        std::fs::write(&f, b"a").unwrap();
        let e = entry(&f, Instant::now());
        let d1 = "Sun, 06 Nov 1994 08:49:37 GMT";
        let d2 = "Sun, 06 Nov 1994 08:49:38 GMT";
        let build = |w: &mut Vec<u8>| {
            crate::response::start(w, 200, d1);
            w.extend_from_slice(b"Content-Length: 1\r\n\r\n");
        };
        let h1 = e.prebuilt_head(1, d1, build);
        let mut built = false;
        let again = e.prebuilt_head(1, d1, |_| built = true);
        assert!(
            !built && again.as_ptr() == h1.as_ptr(),
            "the same bytes, not rebuilt"
        );
        let h2 = e.prebuilt_head(2, d2, |_| built = true);
        assert!(!built, "patched, not rebuilt");
        assert!(
            std::str::from_utf8(&h1).unwrap().contains(d1),
            "the old one is untouched"
        );
        let text = std::str::from_utf8(&h2).unwrap();
        assert!(text.contains(&format!("Date: {d2}\r\n")), "{text}");
        assert_eq!(h1.len(), h2.len());
    }
}
