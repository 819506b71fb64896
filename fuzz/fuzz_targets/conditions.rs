//! Conditional requests on arbitrary header values: no panic, the same answer every time, and
//! the RFC 9110 §13.2.2 order: a failed `If-Match` is a 412 whatever follows, and `If-None-Match`
//! carrying the current validator is never "proceed".
//! Input: one byte of method, then `If-Match`, `If-None-Match`, `If-Modified-Since`,
//! `If-Unmodified-Since`, separated by 0 bytes (a missing field is no header).
#![no_main]

use lair_http::request::Method;
use lair_http::validators::{evaluate, Conditions, ETag, Precondition};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&m, rest)) = data.split_first() else {
        return;
    };
    let method = if m & 1 == 0 { Method::Get } else { Method::Head };
    let mut f = rest.split(|&b| b == 0);
    let c = Conditions {
        if_match: f.next().filter(|v| !v.is_empty()),
        if_none_match: f.next().filter(|v| !v.is_empty()),
        if_modified_since: f.next().filter(|v| !v.is_empty()),
        if_unmodified_since: f.next().filter(|v| !v.is_empty()),
    };
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000_000);
    let etag = ETag::new(7, 100, t);
    let p = evaluate(method, &c, &etag, t);
    assert_eq!(p, evaluate(method, &c, &etag, t));
    if c.if_none_match == Some(etag.as_str().as_bytes()) {
        assert_ne!(p, Precondition::Proceed);
    }
});
