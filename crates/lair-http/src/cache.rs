//! A per-worker cache of open files: descriptor, metadata, the prebuilt validator and type
//! fields and, for small files, the body itself — for a short time (default 1 s).
//!
//! Why: opening, `fstat`ing and closing a file is three of the six system calls of a small
//! cached response; with the cache a hit costs none of them, and a small file's body kept in
//! memory saves the read too: a hit is one receive and one send.
//! lighttpd's stat cache and nginx's `open_file_cache` make the same trade.
//!
//! Contract: an entry is used only while younger than the time to live, then the path is opened
//! and checked again, so a file replaced (renamed over) is seen at most one TTL late; a file
//! changed in place is read through the cached descriptor, and a body that shrank ends the
//! connection as without the cache. Entries are `Arc`s, so a connection holding one can move to
//! another thread (the thread-per-connection model). A TTL of zero disables the cache. The cache holds at most
//! `capacity` descriptors; when full, expired entries go first, then everything.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use lair_io::{Bytes, FileStat, SharedFd};

use crate::validators::ETag;

/// What a hit gives: enough to answer without any system call but the body's.
#[derive(Clone, Debug)]
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
    opened: Instant,
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
            opened: now,
        }
    }
}

/// The cache, keyed by the request's resolved path (a trailing `/` kept, so `/d/` and `/d` are
/// different keys).
#[derive(Debug)]
pub struct FileCache {
    map: HashMap<Vec<u8>, Arc<Entry>>,
    ttl: Duration,
    capacity: usize,
    /// Lookups answered from the cache.
    pub hits: u64,
    /// Lookups that had to open the file.
    pub misses: u64,
}

impl FileCache {
    /// A cache of at most `capacity` files for `ttl` each (`ttl` zero: disabled).
    pub fn new(ttl: Duration, capacity: usize) -> FileCache {
        FileCache {
            map: HashMap::new(),
            ttl,
            capacity,
            hits: 0,
            misses: 0,
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
        match self.map.get(key) {
            Some(e) if now.duration_since(e.opened) < self.ttl => {
                self.hits += 1;
                Some(e)
            }
            _ => {
                self.misses += 1;
                None
            }
        }
    }

    /// Remember `entry` under `key`.
    pub fn insert(&mut self, key: &[u8], entry: Arc<Entry>, now: Instant) {
        if !self.enabled() {
            return;
        }
        if self.map.len() >= self.capacity && !self.map.contains_key(key) {
            let ttl = self.ttl;
            self.map.retain(|_, e| now.duration_since(e.opened) < ttl);
            if self.map.len() >= self.capacity {
                self.map.clear();
            }
        }
        self.map.insert(key.to_vec(), entry);
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
    use lair_io::FileType;
    use std::time::UNIX_EPOCH;

    fn entry(now: Instant) -> Entry {
        let fd = std::fs::File::open("/proc/self/exe").unwrap();
        let stat = FileStat {
            len_bytes: 1,
            ino: 2,
            modified: UNIX_EPOCH,
            file_type: FileType::Regular,
        };
        Entry::new(Arc::new(fd.into()), stat, b"a.css".to_vec(), now)
    }

    #[test]
    fn ttl_capacity_and_disable() {
        let t0 = Instant::now();
        let mut c = FileCache::new(Duration::from_secs(1), 2);
        c.insert(b"a", Arc::new(entry(t0)), t0);
        assert_eq!(
            c.get(b"a", t0).unwrap().content_type,
            b"Content-Type: text/css; charset=utf-8\r\n"
        );
        assert!(
            c.get(b"a", t0 + Duration::from_secs(2)).is_none(),
            "expired"
        );
        c.insert(b"b", Arc::new(entry(t0)), t0);
        let t2 = t0 + Duration::from_secs(2);
        c.insert(b"c", Arc::new(entry(t2)), t2);
        assert_eq!(c.len(), 1, "full: expired entries went first");
        assert_eq!((c.hits, c.misses), (1, 1));
        let mut off = FileCache::new(Duration::ZERO, 10);
        off.insert(b"a", Arc::new(entry(t0)), t0);
        assert!(off.get(b"a", t0).is_none() && off.is_empty());
    }
}
