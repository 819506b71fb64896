//! `lair serve`'s configuration file on arbitrary text: no panic; a file that is accepted gives
//! a configuration whose own check runs, and applying the same file twice gives the same
//! configuration (no setting accumulates).
#![no_main]

use std::path::Path;

use lair_http::ServerConfig;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = Path::new("/fuzz/lair.toml");
    let mut cfg = ServerConfig::default();
    if lair_conf::apply_toml(&mut cfg, text, path).is_ok() {
        let _ = cfg.check();
        let once = cfg.clone();
        lair_conf::apply_toml(&mut cfg, text, path).unwrap();
        assert_eq!(format!("{cfg:?}"), format!("{once:?}"));
    }
});
