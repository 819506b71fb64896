//! The settings' documentation cannot drift from the code: README's "Options" table and
//! `examples/lair.toml` are checked against the one declaration (lair-http's `config.rs`).

use std::path::{Path, PathBuf};
use std::process::Command;

use lair_http::ServerConfig;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn lair(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_lair"))
        .args(args)
        .output()
        .unwrap()
}

/// The README's `## Options` section.
fn options_section() -> String {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let start = readme
        .find("\n## Options\n")
        .expect("README has an \"## Options\" section");
    let rest = &readme[start + 1..];
    let end = rest[3..].find("\n## ").map_or(rest.len(), |i| i + 3);
    rest[..end].to_owned()
}

#[test]
fn readme_lists_every_setting_as_declared() {
    let table = lair_conf::markdown_rows::<ServerConfig>(&["root"]);
    let section = options_section();
    assert!(
        section.contains(&table),
        "README's Options table differs from the declaration; it should contain:\n{table}"
    );
}

#[test]
fn every_flag_the_readme_names_exists() {
    let help = String::from_utf8(lair(&["serve", "-h"]).stdout).unwrap();
    let section = options_section();
    let mut named = 0;
    for (i, _) in section.match_indices("`--") {
        let flag: String = section[i + 1..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
            .collect();
        named += 1;
        assert!(
            help.contains(&format!("{flag} ")) || help.contains(&format!("{flag}[")),
            "README names {flag}, which `lair serve --help` does not have"
        );
    }
    assert!(
        named > 20,
        "only {named} flags found in the Options section"
    );
}

#[test]
fn the_sample_config_has_every_key_and_is_accepted() {
    let sample = std::fs::read_to_string(repo().join("examples/lair.toml")).unwrap();
    let printed = String::from_utf8(lair(&["serve", "--print-config"]).stdout).unwrap();
    assert_eq!(
        sample, printed,
        "examples/lair.toml is stale: regenerate it with `lair serve --print-config`"
    );
    use lair_conf::Settings as _;
    for s in ServerConfig::SETTINGS {
        let key = s.key();
        assert!(
            sample.contains(&format!("\n{key} = ")) || sample.contains(&format!("\n# {key} = ")),
            "examples/lair.toml lacks {key}"
        );
    }
    let path = repo().join("examples/lair.toml");
    let out = lair(&["serve", "--config", path.to_str().unwrap(), "--check"]);
    assert!(
        out.status.success(),
        "examples/lair.toml is refused: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_wrong_key_or_value_names_the_file_and_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("l.toml");
    for (text, wants) in [
        (
            "keepalive_timeout = '1s'",
            "keys are spelled like the flags: `keepalive-timeout`",
        ),
        ("workerz = 2", "did you mean `workers`"),
        ("small-file-bytes = 'lots'", "small-file-bytes: \"lots\""),
        ("backend = 'fast'", "backend: unknown backend \"fast\""),
        ("workers = 0", "workers: \"0\": must be at least 1"),
        (
            "max-header-fields = 300",
            "max-header-fields: \"300\": must be 1..=256",
        ),
        ("listen = []", "listen: no address"),
    ] {
        std::fs::write(&f, text).unwrap();
        let out = lair(&["serve", "--config", f.to_str().unwrap(), "--check"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{text}: {err}");
        assert!(err.contains(wants), "{text}: {err}");
    }
    // The same syntax on the command line and in the file.
    std::fs::write(&f, "send-timeout = 3\nsmall-file-bytes = '8k'\n").unwrap();
    let from_file = lair(&["serve", "--config", f.to_str().unwrap(), "--check"]);
    let from_flags = lair(&[
        "serve",
        "--send-timeout",
        "3",
        "--small-file-bytes",
        "8k",
        "--check",
    ]);
    assert!(from_file.status.success() && from_flags.status.success());
    assert_eq!(from_file.stdout, from_flags.stdout);
}
