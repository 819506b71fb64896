//! `Range` and `If-Range` on arbitrary values and file lengths: no panic, a partial answer lies
//! inside the file, and a file of length zero is never answered in part.
//! Input: 8 bytes of file length, then `Range`, a 0 byte, `If-Range`.
#![no_main]

use lair_http::validators::{range, ETag, RangeDecision};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 8 {
        return;
    }
    let len = u64::from_le_bytes(data[..8].try_into().unwrap()) % (1 << 42);
    let mut fields = data[8..].splitn(2, |&b| b == 0);
    let r = fields.next();
    let if_range = fields.next();
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000_000);
    let etag = ETag::new(1, len, t);
    match range(r, if_range, &etag, t, len) {
        RangeDecision::Partial { first, last } => {
            assert!(first <= last && last < len, "{first}-{last} of {len}");
        }
        RangeDecision::Full | RangeDecision::Unsatisfiable => {}
    }
});
