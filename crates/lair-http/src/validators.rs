//! Validators, preconditions and ranges (RFC 9110 §8.8, §13, §14).
//!
//! Why here and pure: the order in which preconditions are evaluated is what makes caches and
//! resumed downloads correct, and it is easiest to get right as a table-tested function of the
//! request fields and the file's validators.
//!
//! Decisions: the entity tag is strong, built from inode, size and modification time in
//! nanoseconds; dates compare at one-second resolution; a multi-range request is answered with
//! the whole file (200), which RFC 9110 §14.2 allows, rather than multipart/byteranges.

use std::fmt::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::request::Method;

/// A strong entity tag with its quotes, e.g. `"2a3f-400-17a..."`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ETag(String);

impl ETag {
    /// The tag of a file with this inode, size and modification time.
    pub fn new(ino: u64, len_bytes: u64, modified: SystemTime) -> ETag {
        let ns = modified
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let mut s = String::with_capacity(48);
        let _ = write!(s, "\"{ino:x}-{len_bytes:x}-{ns:x}\"");
        ETag(s)
    }

    /// The tag, quoted.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// What the preconditions say.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Precondition {
    /// Serve the resource (ranges may still apply).
    Proceed,
    /// 304 Not Modified.
    NotModified,
    /// 412 Precondition Failed.
    Failed,
}

/// The request fields preconditions read (raw values, `None` if absent).
#[derive(Clone, Copy, Debug, Default)]
pub struct Conditions<'a> {
    /// `If-Match`.
    pub if_match: Option<&'a [u8]>,
    /// `If-None-Match`.
    pub if_none_match: Option<&'a [u8]>,
    /// `If-Modified-Since`.
    pub if_modified_since: Option<&'a [u8]>,
    /// `If-Unmodified-Since`.
    pub if_unmodified_since: Option<&'a [u8]>,
}

fn secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn date(v: &[u8]) -> Option<u64> {
    let s = std::str::from_utf8(v).ok()?;
    httpdate::parse_http_date(s.trim()).ok().map(secs)
}

/// The entity tags in a list field; `None` for `*`.
fn tags(v: &[u8]) -> Option<impl Iterator<Item = (bool, &[u8])>> {
    if v.trim_ascii() == b"*" {
        return None;
    }
    Some(
        v.split(|&b| b == b',')
            .map(<[u8]>::trim_ascii)
            .filter(|t| !t.is_empty())
            .map(|t| match t.strip_prefix(b"W/") {
                Some(rest) => (true, rest),
                None => (false, t),
            }),
    )
}

/// Evaluate preconditions in RFC 9110 §13.2.2 order.
pub fn evaluate(
    method: Method,
    c: &Conditions<'_>,
    etag: &ETag,
    modified: SystemTime,
) -> Precondition {
    let mine = etag.as_str().as_bytes();
    let mtime = secs(modified);
    // 1. If-Match: strong comparison.
    if let Some(v) = c.if_match {
        let matched = match tags(v) {
            None => true,
            Some(mut it) => it.any(|(weak, t)| !weak && t == mine),
        };
        if !matched {
            return Precondition::Failed;
        }
    } else if let Some(d) = c.if_unmodified_since.and_then(date) {
        // 2. If-Unmodified-Since, only without If-Match; an invalid date is ignored.
        if mtime > d {
            return Precondition::Failed;
        }
    }
    // 3. If-None-Match: weak comparison.
    if let Some(v) = c.if_none_match {
        let matched = match tags(v) {
            None => true,
            Some(mut it) => it.any(|(_, t)| t == mine),
        };
        if matched {
            return Precondition::NotModified;
        }
    } else if let Some(d) = c.if_modified_since.and_then(date) {
        // 4. If-Modified-Since, only without If-None-Match, only for GET and HEAD.
        if matches!(method, Method::Get | Method::Head) && mtime <= d {
            return Precondition::NotModified;
        }
    }
    Precondition::Proceed
}

/// What to send of a file of a given length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RangeDecision {
    /// 200 with the whole file.
    Full,
    /// 206 with bytes `first..=last`.
    Partial {
        /// First byte.
        first: u64,
        /// Last byte, inclusive.
        last: u64,
    },
    /// 416 with `Content-Range: bytes */len`.
    Unsatisfiable,
}

/// Decide from `Range` and `If-Range` (an invalid or multi-range `Range` is ignored: 200).
pub fn range(
    range: Option<&[u8]>,
    if_range: Option<&[u8]>,
    etag: &ETag,
    modified: SystemTime,
    len: u64,
) -> RangeDecision {
    let Some(spec) = range else {
        return RangeDecision::Full;
    };
    if let Some(v) = if_range {
        let v = v.trim_ascii();
        let fresh = if v.starts_with(b"\"") {
            v == etag.as_str().as_bytes()
        } else if v.starts_with(b"W/") {
            false
        } else {
            date(v) == Some(secs(modified))
        };
        if !fresh {
            return RangeDecision::Full;
        }
    }
    let spec = spec.trim_ascii();
    if spec.len() < 6 || !spec[..6].eq_ignore_ascii_case(b"bytes=") {
        return RangeDecision::Full;
    }
    let set = &spec[6..];
    let mut parts = set
        .split(|&b| b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|p| !p.is_empty());
    let (Some(one), None) = (parts.next(), parts.next()) else {
        return RangeDecision::Full;
    };
    let Some(dash) = one.iter().position(|&b| b == b'-') else {
        return RangeDecision::Full;
    };
    let num = |s: &[u8]| -> Option<u64> {
        let s = s.trim_ascii();
        if s.is_empty() || s.len() > 19 || !s.iter().all(u8::is_ascii_digit) {
            return None;
        }
        std::str::from_utf8(s).ok()?.parse().ok()
    };
    let (a, b) = (&one[..dash], &one[dash + 1..]);
    if a.trim_ascii().is_empty() {
        // Suffix: the last n bytes.
        let Some(n) = num(b) else {
            return RangeDecision::Full;
        };
        if n == 0 || len == 0 {
            return RangeDecision::Unsatisfiable;
        }
        return RangeDecision::Partial {
            first: len.saturating_sub(n),
            last: len - 1,
        };
    }
    let Some(first) = num(a) else {
        return RangeDecision::Full;
    };
    let last = if b.trim_ascii().is_empty() {
        u64::MAX
    } else {
        match num(b) {
            Some(l) if l >= first => l,
            _ => return RangeDecision::Full,
        }
    };
    if first >= len {
        return RangeDecision::Unsatisfiable;
    }
    RangeDecision::Partial {
        first,
        last: last.min(len - 1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn t(s: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(s)
    }

    const MTIME: u64 = 784111777; // Sun, 06 Nov 1994 08:49:37 GMT
    const DATE: &[u8] = b"Sun, 06 Nov 1994 08:49:37 GMT";
    const LATER: &[u8] = b"Sun, 06 Nov 1994 08:49:38 GMT";
    const EARLIER: &[u8] = b"Sun, 06 Nov 1994 08:49:36 GMT";

    fn eval(c: Conditions<'_>) -> Precondition {
        let e = ETag::new(1, 2, t(MTIME));
        evaluate(Method::Get, &c, &e, t(MTIME))
    }

    #[test]
    fn preconditions() {
        let e = ETag::new(1, 2, t(MTIME));
        let tag = e.as_str().as_bytes();
        let weak = [b"W/", tag].concat();
        let list = [b"\"x\", ", tag].concat();
        use Precondition::*;
        assert_eq!(eval(Conditions::default()), Proceed);
        assert_eq!(
            eval(Conditions {
                if_none_match: Some(tag),
                ..Default::default()
            }),
            NotModified
        );
        assert_eq!(
            eval(Conditions {
                if_none_match: Some(&weak),
                ..Default::default()
            }),
            NotModified
        );
        assert_eq!(
            eval(Conditions {
                if_none_match: Some(&list),
                ..Default::default()
            }),
            NotModified
        );
        assert_eq!(
            eval(Conditions {
                if_none_match: Some(b"*"),
                ..Default::default()
            }),
            NotModified
        );
        assert_eq!(
            eval(Conditions {
                if_none_match: Some(b"\"other\""),
                ..Default::default()
            }),
            Proceed
        );
        assert_eq!(
            eval(Conditions {
                if_modified_since: Some(DATE),
                ..Default::default()
            }),
            NotModified
        );
        assert_eq!(
            eval(Conditions {
                if_modified_since: Some(EARLIER),
                ..Default::default()
            }),
            Proceed
        );
        assert_eq!(
            eval(Conditions {
                if_modified_since: Some(b"garbage"),
                ..Default::default()
            }),
            Proceed
        );
        // If-None-Match wins over If-Modified-Since.
        assert_eq!(
            eval(Conditions {
                if_none_match: Some(b"\"other\""),
                if_modified_since: Some(LATER),
                ..Default::default()
            }),
            Proceed
        );
        assert_eq!(
            eval(Conditions {
                if_match: Some(tag),
                ..Default::default()
            }),
            Proceed
        );
        assert_eq!(
            eval(Conditions {
                if_match: Some(&weak),
                ..Default::default()
            }),
            Failed,
            "strong comparison"
        );
        assert_eq!(
            eval(Conditions {
                if_match: Some(b"\"other\""),
                ..Default::default()
            }),
            Failed
        );
        assert_eq!(
            eval(Conditions {
                if_match: Some(b"*"),
                ..Default::default()
            }),
            Proceed
        );
        assert_eq!(
            eval(Conditions {
                if_unmodified_since: Some(EARLIER),
                ..Default::default()
            }),
            Failed
        );
        assert_eq!(
            eval(Conditions {
                if_unmodified_since: Some(DATE),
                ..Default::default()
            }),
            Proceed
        );
        // If-Match present: If-Unmodified-Since is not evaluated.
        assert_eq!(
            eval(Conditions {
                if_match: Some(tag),
                if_unmodified_since: Some(EARLIER),
                ..Default::default()
            }),
            Proceed
        );
    }

    #[test]
    fn ranges() {
        let e = ETag::new(1, 2, t(MTIME));
        let r = |spec: &str, len| range(Some(spec.as_bytes()), None, &e, t(MTIME), len);
        use RangeDecision::*;
        assert_eq!(r("bytes=0-9", 100), Partial { first: 0, last: 9 });
        assert_eq!(
            r("bytes=90-", 100),
            Partial {
                first: 90,
                last: 99
            }
        );
        assert_eq!(
            r("bytes=90-1000", 100),
            Partial {
                first: 90,
                last: 99
            }
        );
        assert_eq!(
            r("bytes=-10", 100),
            Partial {
                first: 90,
                last: 99
            }
        );
        assert_eq!(r("bytes=-1000", 100), Partial { first: 0, last: 99 });
        assert_eq!(r("BYTES= 5-5 ", 100), Partial { first: 5, last: 5 });
        assert_eq!(r("bytes=100-", 100), Unsatisfiable);
        assert_eq!(r("bytes=-0", 100), Unsatisfiable);
        assert_eq!(r("bytes=0-", 0), Unsatisfiable);
        assert_eq!(r("bytes=0-1,5-6", 100), Full, "multi-range: whole file");
        assert_eq!(r("bytes=5-1", 100), Full, "invalid: ignored");
        assert_eq!(r("items=0-1", 100), Full);
        assert_eq!(r("bytes=a-b", 100), Full);
        assert_eq!(range(None, None, &e, t(MTIME), 100), Full);
        let ir = |v: &[u8]| range(Some(b"bytes=0-0"), Some(v), &e, t(MTIME), 100);
        assert_eq!(ir(e.as_str().as_bytes()), Partial { first: 0, last: 0 });
        assert_eq!(ir(b"\"stale\""), Full);
        assert_eq!(ir(&[b"W/", e.as_str().as_bytes()].concat()), Full);
        assert_eq!(ir(DATE), Partial { first: 0, last: 0 });
        assert_eq!(ir(EARLIER), Full);
    }
}
