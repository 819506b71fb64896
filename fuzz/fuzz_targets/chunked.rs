//! The chunked request-body scanner on arbitrary bytes: no panic, a complete body never claims
//! more bytes than were given, and a body judged complete stays complete (with the same length)
//! when more bytes follow it — what lets a pipelined request be found after it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lair_http::chunked::{scan, Scan};

fuzz_target!(|data: &[u8]| {
    let limit = 4096;
    if let Scan::Complete { wire } = scan(data, limit) {
        assert!(wire <= data.len());
        let mut more = data[..wire].to_vec();
        more.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
        assert_eq!(scan(&more, limit), Scan::Complete { wire });
    }
});
