//! The request path on arbitrary bytes: parse a head, then resolve its target, then evaluate
//! its preconditions and range against a fixed file — no panic, and a resolved path never
//! climbs out of the root.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lair_http::request::{parse, Parsed};
use lair_http::validators::{evaluate, range, Conditions, ETag};
use lair_http::{path, ServerConfig};

fuzz_target!(|data: &[u8]| {
    let limits = ServerConfig::default().limits();
    let Ok(Parsed::Complete(head)) = parse(data, &limits) else {
        return;
    };
    if let Ok((p, _)) = path::split_target(head.target.get(data)) {
        if let Ok(r) = path::resolve(p, false) {
            assert!(!r.rel.starts_with(b"/"));
            assert!(r.rel.split(|&b| b == b'/').all(|s| s != b".." && s != b"."));
        }
    }
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000_000);
    let etag = ETag::new(1, 100, t);
    let field = |s: Option<lair_http::request::Span>| s.map(|s| s.get(data));
    let c = Conditions {
        if_match: field(head.if_match),
        if_none_match: field(head.if_none_match),
        if_modified_since: field(head.if_modified_since),
        if_unmodified_since: field(head.if_unmodified_since),
    };
    let _ = evaluate(head.method, &c, &etag, t);
    if let lair_http::validators::RangeDecision::Partial { first, last } =
        range(field(head.range), field(head.if_range), &etag, t, 100)
    {
        assert!(first <= last && last < 100);
    }
});
