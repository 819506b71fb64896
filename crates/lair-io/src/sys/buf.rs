//! Owned buffers: the memory an operation carries into the engine and gets back in its
//! completion — not only `Vec<u8>`.
//!
//! Why: the mechanisms after LAIO need other memory to travel through the same operations —
//! immutable bodies of the small-file cache sent by many connections at once ([`Buf::Shared`],
//! the `bytes` crate's reference-counted [`Bytes`], sliced for a range without a copy), buffers
//! carved from a cache-sized per-worker pool, a mapped file region, io_uring registered
//! buffers — and a gather list ([`Gather`]) so that a prebuilt head and a cached body leave in
//! one `sendmsg`.
//!
//! The contract every kind of memory meets is a trait: [`IoBuf`] (bytes the kernel reads: a
//! send, a write) and [`IoBufMut`] (room the kernel fills: a receive, a read). The enums
//! [`Buf`] and [`BufMut`] carry them through `Op` without making `Op` generic: the common kinds
//! are variants (no allocation to wrap them); any other implementor rides in `Other` (one box).
//! A kind that must not allocate even that (a pool buffer on the hit path) becomes a variant
//! here, which is a local change to this file.
//!
//! Invariants: a buffer's bytes do not move while the operation owns it (a `Vec`'s heap block,
//! a `Bytes`' shared block, a box's contents stay put when the enum moves), so a backend may
//! hand their addresses to the kernel (io_uring) for as long as it holds the operation; the
//! engine only ever *appends* to a [`BufMut`] (at its spare capacity), and never grows it: the
//! caller reserves the room.
//!
//! It lives in `sys/` because filling spare room is `unsafe` (the kernel initialises the bytes,
//! the type system cannot know); it is re-exported as `lair_io::buf`.

#![allow(unsafe_code)]

use std::mem::MaybeUninit;
use std::sync::Arc;

pub use bytes::Bytes;

/// Memory the kernel reads from (a send, a write): any owner of stable bytes.
///
/// Contract: while the value is not mutated, [`IoBuf::as_bytes`] returns the same address and
/// length, *even after the value is moved* (the bytes live on the heap or in static memory,
/// never inline in the value): io_uring reads them after `submit` has returned.
pub trait IoBuf: Send + 'static {
    /// The bytes.
    fn as_bytes(&self) -> &[u8];
}

/// Memory the kernel writes into (a receive, a read): filled bytes, then spare room.
pub trait IoBufMut: IoBuf {
    /// The room after the filled bytes (may be empty: the caller reserves it).
    fn spare(&mut self) -> &mut [MaybeUninit<u8>];
    /// How much room [`IoBufMut::spare`] has.
    fn spare_len(&self) -> usize;
    /// Mark `n` more bytes, at the start of [`IoBufMut::spare`], as filled.
    ///
    /// # Safety
    /// The first `n` bytes of the spare room must have been initialised, and `n` must not
    /// exceed its length.
    unsafe fn filled(&mut self, n: usize);
}

impl IoBuf for Vec<u8> {
    fn as_bytes(&self) -> &[u8] {
        self
    }
}

impl IoBufMut for Vec<u8> {
    fn spare(&mut self) -> &mut [MaybeUninit<u8>] {
        self.spare_capacity_mut()
    }
    fn spare_len(&self) -> usize {
        self.capacity() - self.len()
    }
    unsafe fn filled(&mut self, n: usize) {
        debug_assert!(n <= self.capacity() - self.len());
        // SAFETY: the caller guarantees the `n` bytes after the length are initialised and
        // within the capacity.
        unsafe { self.set_len(self.len() + n) }
    }
}

impl IoBuf for Bytes {
    fn as_bytes(&self) -> &[u8] {
        self
    }
}

impl IoBuf for Box<[u8]> {
    fn as_bytes(&self) -> &[u8] {
        self
    }
}

impl IoBuf for Arc<[u8]> {
    fn as_bytes(&self) -> &[u8] {
        self
    }
}

impl IoBuf for &'static [u8] {
    fn as_bytes(&self) -> &[u8] {
        self
    }
}

/// Bytes an operation sends or writes, owned by it until its completion gives them back.
pub enum Buf {
    /// An owned vector (a response head, a body read into memory, an access-log batch).
    Vec(Vec<u8>),
    /// Immutable shared bytes (a cached body; many connections send the same block at once).
    Shared(Bytes),
    /// Any other kind of memory.
    Other(Box<dyn IoBuf>),
}

impl Buf {
    /// An empty buffer (no allocation).
    pub const EMPTY: Buf = Buf::Vec(Vec::new());

    /// The bytes.
    #[inline]
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Buf::Vec(v) => v,
            Buf::Shared(b) => b,
            Buf::Other(o) => o.as_bytes(),
        }
    }

    /// Length in bytes.
    #[inline]
    pub fn len(&self) -> usize {
        self.as_bytes().len()
    }

    /// Whether it holds no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The vector back, if this is one.
    pub fn into_vec(self) -> Option<Vec<u8>> {
        match self {
            Buf::Vec(v) => Some(v),
            _ => None,
        }
    }
}

impl std::fmt::Debug for Buf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self {
            Buf::Vec(_) => "Vec",
            Buf::Shared(_) => "Shared",
            Buf::Other(_) => "Other",
        };
        write!(f, "Buf::{kind}({} bytes)", self.len())
    }
}

impl From<Vec<u8>> for Buf {
    fn from(v: Vec<u8>) -> Buf {
        Buf::Vec(v)
    }
}

impl From<Bytes> for Buf {
    fn from(b: Bytes) -> Buf {
        Buf::Shared(b)
    }
}

/// Room an operation receives or reads into, owned by it until its completion.
pub enum BufMut {
    /// An owned vector: bytes land in its spare capacity.
    Vec(Vec<u8>),
    /// Any other kind of memory.
    Other(Box<dyn IoBufMut>),
}

impl BufMut {
    /// The filled bytes.
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            BufMut::Vec(v) => v,
            BufMut::Other(o) => o.as_bytes(),
        }
    }

    /// The room after the filled bytes.
    #[inline]
    pub fn spare(&mut self) -> &mut [MaybeUninit<u8>] {
        match self {
            BufMut::Vec(v) => v.spare_capacity_mut(),
            BufMut::Other(o) => o.spare(),
        }
    }

    /// Copy as much of `src` as fits into the room after the filled bytes, as a receive
    /// would; how many bytes were copied.
    pub fn fill_from(&mut self, src: &[u8]) -> usize {
        let room = self.spare();
        let n = room.len().min(src.len());
        for (d, &s) in room.iter_mut().zip(&src[..n]) {
            d.write(s);
        }
        // SAFETY: the first `n` bytes of the spare room were written just above.
        unsafe { self.filled(n) };
        n
    }

    /// How much room there is after the filled bytes.
    #[inline]
    pub fn spare_len(&self) -> usize {
        match self {
            BufMut::Vec(v) => v.capacity() - v.len(),
            BufMut::Other(o) => o.spare_len(),
        }
    }

    /// Mark `n` more bytes as filled.
    ///
    /// # Safety
    /// As [`IoBufMut::filled`].
    #[inline]
    pub unsafe fn filled(&mut self, n: usize) {
        match self {
            // SAFETY: forwarded from the caller.
            BufMut::Vec(v) => unsafe { IoBufMut::filled(v, n) },
            // SAFETY: forwarded from the caller.
            BufMut::Other(o) => unsafe { o.filled(n) },
        }
    }

    /// The vector back, if this is one.
    pub fn into_vec(self) -> Option<Vec<u8>> {
        match self {
            BufMut::Vec(v) => Some(v),
            BufMut::Other(_) => None,
        }
    }
}

impl std::fmt::Debug for BufMut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self {
            BufMut::Vec(_) => "Vec",
            BufMut::Other(_) => "Other",
        };
        write!(f, "BufMut::{kind}({} bytes)", self.as_bytes().len())
    }
}

impl From<Vec<u8>> for BufMut {
    fn from(v: Vec<u8>) -> BufMut {
        BufMut::Vec(v)
    }
}

/// Most parts of a [`Gather`]: a head and a body. Every part is inline in the operation (a
/// [`Buf`] is 40 bytes), and operations and completions are moved by value on every submit, so
/// the list is as short as the server needs; raise it when a response has more parts.
pub const GATHER_MAX: usize = 2;

/// A gather list: up to [`GATHER_MAX`] buffers sent (or written) as one byte stream, in one
/// system call (`sendmsg`/`pwritev2`). Inline, so making one allocates nothing.
pub struct Gather {
    parts: [Buf; GATHER_MAX],
    n: usize,
}

impl Gather {
    /// An empty list.
    pub const fn new() -> Gather {
        Gather {
            parts: [Buf::EMPTY; GATHER_MAX],
            n: 0,
        }
    }

    /// A list of one buffer.
    pub fn one(b: impl Into<Buf>) -> Gather {
        let mut g = Gather::new();
        g.parts[0] = b.into();
        g.n = 1;
        g
    }

    /// Append `b`; gives it back if the list is full.
    pub fn push(&mut self, b: impl Into<Buf>) -> Result<(), Buf> {
        let b = b.into();
        if self.n == GATHER_MAX {
            return Err(b);
        }
        self.parts[self.n] = b;
        self.n += 1;
        Ok(())
    }

    /// The parts.
    pub fn parts(&self) -> &[Buf] {
        &self.parts[..self.n]
    }

    /// Total bytes.
    pub fn len(&self) -> usize {
        self.parts().iter().map(Buf::len).sum()
    }

    /// Whether it holds no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Take part `i` out (leaving an empty buffer), e.g. to reuse a head's vector.
    pub fn take(&mut self, i: usize) -> Buf {
        if i >= self.n {
            return Buf::EMPTY;
        }
        std::mem::replace(&mut self.parts[i], Buf::EMPTY)
    }

    /// The bytes from stream offset `from` on, as at most [`GATHER_MAX`] slices.
    pub fn slices_from(&self, mut from: usize) -> impl Iterator<Item = &[u8]> {
        self.parts().iter().filter_map(move |p| {
            let b = p.as_bytes();
            if from >= b.len() {
                from -= b.len();
                return None;
            }
            let rest = &b[from..];
            from = 0;
            Some(rest)
        })
    }
}

impl Default for Gather {
    fn default() -> Self {
        Gather::new()
    }
}

impl std::fmt::Debug for Gather {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.parts()).finish()
    }
}

impl From<Vec<u8>> for Gather {
    fn from(v: Vec<u8>) -> Gather {
        Gather::one(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gather_slices_skip_what_was_sent() {
        let mut g = Gather::one(b"head:".to_vec());
        g.push(Bytes::from_static(b"body")).unwrap();
        assert_eq!(g.len(), 9);
        let all: Vec<&[u8]> = g.slices_from(0).collect();
        assert_eq!(all, [&b"head:"[..], b"body"]);
        let rest: Vec<&[u8]> = g.slices_from(3).collect();
        assert_eq!(rest, [&b"d:"[..], b"body"]);
        let rest: Vec<&[u8]> = g.slices_from(5).collect();
        assert_eq!(rest, [&b"body"[..]]);
        assert_eq!(g.slices_from(9).count(), 0);
        assert_eq!(g.take(0).into_vec().unwrap(), b"head:");
        assert!(g.push(Vec::new()).is_err(), "full at GATHER_MAX");
    }

    #[test]
    fn sizes_stay_small() {
        // Operations and completions move by value through every submit.
        assert!(std::mem::size_of::<Buf>() <= 40);
        assert!(
            std::mem::size_of::<crate::Op>() <= 120,
            "{}",
            std::mem::size_of::<crate::Op>()
        );
        assert!(
            std::mem::size_of::<crate::Completion>() <= 128,
            "{}",
            std::mem::size_of::<crate::Completion>()
        );
    }

    #[test]
    fn other_memory_rides_in_a_box() {
        let shared: Arc<[u8]> = Arc::from(&b"abc"[..]);
        let b = Buf::Other(Box::new(shared));
        assert_eq!(b.as_bytes(), b"abc");
        let mut m = BufMut::Vec(Vec::with_capacity(8));
        assert!(m.spare().len() >= 8);
        m.spare()[0].write(7);
        // SAFETY: the first spare byte was just written.
        unsafe { m.filled(1) };
        assert_eq!(m.as_bytes(), [7]);
    }
}
