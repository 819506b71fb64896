//! Trace import on arbitrary text, both formats: `lair load`'s trace files and the lab's
//! Common Log Format import. No panic; every request kept has a path a server can be asked
//! for (starts with `/`, no control character or space; the CLF import also never keeps a
//! `.`/`..` segment); nothing is both kept and counted malformed.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let t = lair_load::trace::parse(&text);
    let lines = text.lines().count() as u64;
    assert!(t.requests.len() as u64 + t.malformed <= lines);
    for r in &t.requests {
        assert!(r.path.starts_with('/'));
        assert!(!r.path.bytes().any(|b| b.is_ascii_control() || b == b' '));
    }
    let imported = lair_lab::clf::import(&text);
    let files = &imported.dataset.files;
    assert!(imported.dataset.requests.iter().all(|r| (r.file as usize) < files.len()));
    for p in files.iter().map(|f| &f.path) {
        assert!(p.starts_with('/'), "{p:?}");
        assert!(!p.split('/').any(|s| s == "." || s == ".."), "{p:?}");
        assert!(!p.bytes().any(|b| b.is_ascii_control() || b == b' '), "{p:?}");
    }
});
