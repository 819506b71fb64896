//! `lair load`'s response-head parser on arbitrary bytes: no panic; a whole head is found at
//! the same length whatever follows it, every shorter prefix is "partial" (so reading in pieces
//! gives the same answer as reading at once), and a 1xx/204/304 never expects a body.
#![no_main]

use lair_load::framing::{parse_head, Head, MAX_HEAD};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match parse_head(data) {
        Head::Complete {
            len, status, body, ..
        } => {
            assert!(len <= data.len() && len <= MAX_HEAD);
            assert_eq!(parse_head(&data[..len]), parse_head(data));
            for cut in [len / 2, len.saturating_sub(1)] {
                if cut < len {
                    assert_eq!(parse_head(&data[..cut]), Head::Partial, "{cut} of {len}");
                }
            }
            if status / 100 == 1 || status == 204 || status == 304 {
                assert_eq!(body, Some(0));
            }
        }
        Head::Partial => assert!(data.len() <= MAX_HEAD),
        Head::Bad => {}
    }
});
