//! The chunked transfer coding of a request body (RFC 9112 §7.1), read only to be discarded.
//!
//! Why: "A recipient MUST be able to parse the chunked transfer coding." lair serves GET and
//! HEAD, whose bodies it throws away; but it must know where a chunked body ends to find the
//! next pipelined request, and refuse one it cannot frame (a request smuggler's favourite).
//!
//! Contract: [`scan`] looks at the bytes after the head and says whether the whole body is
//! there ([`Scan::Complete`] with its length on the wire), more is needed, or it is malformed
//! (bad or overflowing size, a missing CRLF, a bare LF or control byte) or larger than the
//! limit. Chunk extensions and trailer fields are accepted and ignored. It allocates nothing
//! and keeps no state: the caller scans again from the start when more bytes arrive (bodies
//! are bounded by the limit, so that stays cheap).

/// What [`scan`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scan {
    /// The whole body, `wire` bytes long (sizes, data, CRLFs, trailers, the final CRLF).
    Complete {
        /// Bytes the body takes in the stream.
        wire: usize,
    },
    /// Not all of it has arrived.
    Partial,
    /// Not the chunked coding: 400, and close (the stream cannot be framed).
    Malformed,
    /// More data than the limit, or a body still unfinished past twice the limit (endless
    /// extensions, one-byte chunks): 413, and close.
    TooLarge,
}

/// Scan a chunked body at the start of `buf`, with at most `limit` bytes of chunk data.
pub fn scan(buf: &[u8], limit: u64) -> Scan {
    match scan_whole(buf, limit) {
        Scan::Partial if buf.len() as u64 > limit.saturating_mul(2).saturating_add(16 << 10) => {
            Scan::TooLarge
        }
        s => s,
    }
}

fn scan_whole(buf: &[u8], limit: u64) -> Scan {
    let mut at = 0;
    let mut data: u64 = 0;
    loop {
        // chunk-size [chunk-ext] CRLF
        let Some(line_end) = find_crlf(buf, at) else {
            return partial_or_bad_line(&buf[at..]);
        };
        let line = &buf[at..line_end];
        let Some(size) = chunk_size(line) else {
            return Scan::Malformed;
        };
        at = line_end + 2;
        if size == 0 {
            break;
        }
        data = match data.checked_add(size) {
            Some(d) if d <= limit => d,
            _ => return Scan::TooLarge,
        };
        let Ok(size) = usize::try_from(size) else {
            return Scan::TooLarge;
        };
        // chunk-data CRLF
        let end = at + size;
        if buf.len() < end + 2 {
            return Scan::Partial;
        }
        if &buf[end..end + 2] != b"\r\n" {
            return Scan::Malformed;
        }
        at = end + 2;
    }
    // trailer-section CRLF: field lines until an empty one.
    loop {
        let Some(line_end) = find_crlf(buf, at) else {
            return partial_or_bad_line(&buf[at..]);
        };
        let line = &buf[at..line_end];
        at = line_end + 2;
        if line.is_empty() {
            return Scan::Complete { wire: at };
        }
        if !line.contains(&b':') || line.iter().any(|&b| b < 0x20 && b != b'\t') {
            return Scan::Malformed;
        }
    }
}

/// A line not yet ended: more may come, unless what is there is already wrong (a bare LF or
/// a control byte: the line can never become valid).
fn partial_or_bad_line(rest: &[u8]) -> Scan {
    let bad = rest.iter().enumerate().any(|(i, &b)| {
        b == b'\n' || (b < 0x20 && b != b'\t' && !(b == b'\r' && i + 1 == rest.len()))
    });
    if bad {
        Scan::Malformed
    } else {
        Scan::Partial
    }
}

/// Where the next CRLF starts, at or after `from`; `None` if there is none yet.
fn find_crlf(buf: &[u8], from: usize) -> Option<usize> {
    buf.get(from..)?
        .windows(2)
        .position(|w| w == b"\r\n")
        .map(|i| from + i)
}

/// `1*HEXDIG` then nothing, or `;` and an extension (any visible bytes and tabs): the size.
fn chunk_size(line: &[u8]) -> Option<u64> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 || digits > 16 {
        return None;
    }
    let rest = &line[digits..];
    let ext_ok = rest.is_empty()
        || (rest.trim_ascii_start().first() == Some(&b';')
            && rest
                .iter()
                .all(|&b| b == b'\t' || (0x20..0x7f).contains(&b)));
    if !ext_ok {
        return None;
    }
    let hex = std::str::from_utf8(&line[..digits]).ok()?;
    u64::from_str_radix(hex, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_bodies_with_extensions_and_trailers() {
        let b = b"5\r\nhello\r\n6;name=v\r\n world\r\n0\r\n\r\nGET";
        assert_eq!(scan(b, 100), Scan::Complete { wire: b.len() - 3 });
        let t = b"3\r\nabc\r\n0\r\nX-Trailer: 1\r\n\r\n";
        assert_eq!(scan(t, 100), Scan::Complete { wire: t.len() });
        assert_eq!(scan(b"0\r\n\r\n", 0), Scan::Complete { wire: 5 });
        assert_eq!(scan(b"000\r\n\r\n", 0), Scan::Complete { wire: 7 });
    }

    #[test]
    fn every_prefix_of_a_good_body_is_partial() {
        let b = b"5\r\nhello\r\nA\r\n0123456789\r\n0\r\nT: x\r\n\r\n";
        for cut in 0..b.len() {
            assert_eq!(scan(&b[..cut], 100), Scan::Partial, "cut at {cut}");
        }
        assert_eq!(scan(b, 100), Scan::Complete { wire: b.len() });
    }

    #[test]
    fn malformed_and_too_large() {
        for bad in [
            &b"zz\r\n"[..],
            b"-1\r\n",
            b"0x5\r\nhello\r\n",
            b"ffffffffffffffffff\r\n",
            b"5\r\nhelloXX",
            b"5\nhello\r\n",
            b"5 \r\nhello\r\n",
            b"3\r\nabc\r\n0\r\nno colon\r\n\r\n",
            b"\r\n",
        ] {
            assert_eq!(
                scan(bad, 1 << 20),
                Scan::Malformed,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(scan(b"5\r\nhello\r\n0\r\n\r\n", 4), Scan::TooLarge);
        assert_eq!(scan(b"fffffffffffffff\r\n", 1 << 20), Scan::TooLarge);
        let endless = [&b"1;"[..], &[b'x'; 20_000]].concat();
        assert_eq!(
            scan(&endless, 1024),
            Scan::TooLarge,
            "an extension that never ends"
        );
    }
}
