//! Path resolution on arbitrary target bytes: no panic; a resolved path is relative, has no
//! NUL, empty, `.` or `..` segment (so it cannot climb out of the root), never names a dotfile
//! unless allowed, and resolving is the same however often it is asked.
#![no_main]

use lair_http::path;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok((p, _query)) = path::split_target(data) else {
        return;
    };
    for dotfiles in [false, true] {
        let Ok(r) = path::resolve(p, dotfiles) else {
            continue;
        };
        assert!(!r.rel.starts_with(b"/") && !r.rel.ends_with(b"/"));
        assert!(!r.rel.contains(&0));
        for seg in r.rel.split(|&b| b == b'/').filter(|_| !r.rel.is_empty()) {
            assert!(!seg.is_empty() && seg != b"." && seg != b"..", "{:?}", r.rel);
            assert!(dotfiles || !seg.starts_with(b"."), "{:?}", r.rel);
        }
        assert_eq!(path::resolve(p, dotfiles), Ok(r));
    }
});
