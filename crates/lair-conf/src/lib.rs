//! lair-conf: settings declared once — name, type, default and doc — and read from flags and
//! TOML files with one parser per kind of value.
//!
//! Why: a switch of `lair serve` used to be four to six edits (the config struct, the clap
//! struct, the file struct, the merge, the engine's copy), and they drifted: help texts that
//! missed a backend, a bare number that was a duration on the command line but not in a file.
//! Now [`settings!`] declares a struct's fields once; the flag (`--header-timeout`), the TOML
//! key (`header-timeout`, spelled like the flag), the default, the `--help` text and the sample
//! configuration file all come from that declaration.
//!
//! Contract:
//! - precedence is default < file < flag ([`from_matches`]);
//! - a key or value that is wrong is an [`Error`] naming the file and the key, or the flag;
//!   an unknown key is an error (with the spelling it probably meant), never ignored;
//! - a relative path in a file is relative to the file's directory.
//!
//! What it does not do: validate combinations of settings (the owner of the struct does), or
//! reload (a caller can simply build a new struct).

use std::path::{Path, PathBuf};

use clap::{Arg, ArgAction, ArgMatches};

pub mod kind;
pub mod value;

pub use kind::{Input, Kind};
/// The TOML crate this one reads files with (for kinds defined elsewhere).
pub use toml;
pub use value::{parse_bool, parse_duration, parse_nonzero_size, parse_size};

/// One declared setting (made by [`settings!`]).
#[derive(Clone, Copy, Debug)]
pub struct Setting {
    /// The field name, snake_case; the flag and the key are its kebab-case spelling.
    pub field: &'static str,
    /// The declaration's doc comment (one line per source line).
    pub doc: &'static str,
    /// The default, in the syntax a user writes.
    pub default: &'static str,
    /// The value placeholder in `--help`.
    pub value_name: &'static str,
    /// The flag may repeat.
    pub repeat: bool,
    /// The flag alone means `true`.
    pub switch: bool,
    /// Whether a text value parses (the flag's value check).
    pub check: fn(&str) -> Result<(), String>,
    /// The default as a TOML value.
    pub sample: fn(&str) -> String,
}

impl Setting {
    /// The flag name without dashes, which is also the TOML key: `header-timeout`.
    pub fn key(&self) -> String {
        self.field.replace('_', "-")
    }

    /// The doc as paragraphs of joined lines.
    pub fn paragraphs(&self) -> Vec<String> {
        let lines: Vec<&str> = self.doc.lines().map(str::trim).collect();
        lines
            .split(|l| l.is_empty())
            .filter(|p| !p.is_empty())
            .map(|p| p.join(" "))
            .collect()
    }

    /// The first paragraph: the short help.
    pub fn summary(&self) -> String {
        self.paragraphs().into_iter().next().unwrap_or_default()
    }

    fn default_note(&self) -> String {
        if self.default.is_empty() {
            "[default: none]".into()
        } else {
            format!("[default: {}]", self.default)
        }
    }
}

/// A struct of settings (implemented by [`settings!`]).
pub trait Settings: Default {
    /// Every setting, in declaration order.
    const SETTINGS: &'static [Setting];
    /// Set setting number `index` (of [`Settings::SETTINGS`]) from `input`.
    fn set(&mut self, index: usize, input: Input<'_>) -> Result<(), String>;
}

/// A setting that could not be read: whose fault and where.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The configuration file cannot be read or is not TOML.
    #[error("config {path}: {msg}")]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        msg: String,
    },
    /// A key of the file is unknown or has a bad value.
    #[error("config {path}: {key}: {msg}")]
    Key {
        /// The file.
        path: PathBuf,
        /// The key as written.
        key: String,
        /// What is wrong.
        msg: String,
    },
    /// A flag has a bad value (clap checks most values before this).
    #[error("--{key}: {msg}")]
    Flag {
        /// The flag, without dashes.
        key: String,
        /// What is wrong.
        msg: String,
    },
}

/// Declare a settings struct: each field with its doc, type, default (as a user writes it)
/// and kind (how it is spelled: [`kind`]).
///
/// ```
/// lair_conf::settings! {
///     /// Example settings.
///     #[derive(Clone, Debug)]
///     pub struct Example {
///         /// How long to wait.
///         wait: std::time::Duration = "10s" as lair_conf::kind::Time;
///         /// Buffer size.
///         buffer: usize = "64k" as lair_conf::kind::Size;
///     }
/// }
/// use lair_conf::Settings as _;
/// assert_eq!(Example::default().buffer, 65536);
/// assert_eq!(Example::SETTINGS[0].key(), "wait");
/// ```
#[macro_export]
macro_rules! settings {
    (
        $(#[$meta:meta])*
        $vis:vis struct $Name:ident {
            $(
                $(#[doc = $doc:literal])+
                $field:ident : $ty:ty = $default:literal as $kind:ty;
            )+
        }
    ) => {
        $(#[$meta])*
        $vis struct $Name {
            $( $(#[doc = $doc])+ pub $field: $ty, )+
        }

        impl ::core::default::Default for $Name {
            fn default() -> Self {
                $Name {
                    $( $field: <$kind as $crate::Kind<$ty>>::read($crate::Input::Text(&[$default]))
                        .unwrap_or_else(|e| panic!(
                            "the declared default of {} does not parse: {e}", stringify!($field)
                        )), )+
                }
            }
        }

        impl $crate::Settings for $Name {
            const SETTINGS: &'static [$crate::Setting] = &[
                $( $crate::Setting {
                    field: stringify!($field),
                    doc: concat!($($doc, "\n"),+),
                    default: $default,
                    value_name: <$kind as $crate::Kind<$ty>>::NAME,
                    repeat: <$kind as $crate::Kind<$ty>>::REPEAT,
                    switch: <$kind as $crate::Kind<$ty>>::SWITCH,
                    check: |s| <$kind as $crate::Kind<$ty>>::parse(s).map(drop),
                    sample: <$kind as $crate::Kind<$ty>>::sample,
                }, )+
            ];

            fn set(&mut self, index: usize, input: $crate::Input<'_>) -> Result<(), String> {
                let mut i = 0usize;
                $(
                    if index == i {
                        self.$field = <$kind as $crate::Kind<$ty>>::read(input)?;
                        return Ok(());
                    }
                    i += 1;
                )+
                Err(format!("no setting number {index} (of {i})"))
            }
        }
    };
}

/// The clap arguments of `S`'s settings; those named in `positional` are positional instead
/// of flags (in that order). No clap defaults are set: a value in the matches was given.
pub fn clap_args<S: Settings>(positional: &[&str]) -> Vec<Arg> {
    S::SETTINGS
        .iter()
        .map(|s| {
            let key = s.key();
            let check = s.check;
            let mut arg = Arg::new(key.clone())
                .value_name(s.value_name)
                .value_parser(move |v: &str| check(v).map(|()| v.to_owned()))
                .help(format!("{} {}", s.summary(), s.default_note()))
                .long_help(format!(
                    "{}\n\n{}",
                    s.paragraphs().join("\n\n"),
                    s.default_note()
                ));
            if let Some(i) = positional.iter().position(|p| *p == key || *p == s.field) {
                return arg
                    .index(i + 1)
                    .required(false)
                    .value_name(s.field.to_uppercase());
            }
            arg = arg.long(key);
            if s.repeat {
                arg = arg.action(ArgAction::Append);
            } else if s.switch {
                arg = arg
                    .num_args(0..=1)
                    .require_equals(true)
                    .default_missing_value("true");
            }
            arg
        })
        .collect()
}

/// Defaults, then the file (if any), then the flags given: the settings `S` to run with.
pub fn from_matches<S: Settings>(m: &ArgMatches, file: Option<&Path>) -> Result<S, Error> {
    let mut cfg = S::default();
    if let Some(path) = file {
        load_file(&mut cfg, path)?;
    }
    apply_matches(&mut cfg, m)?;
    Ok(cfg)
}

/// Set what the command line gave.
pub fn apply_matches<S: Settings>(cfg: &mut S, m: &ArgMatches) -> Result<(), Error> {
    for (i, s) in S::SETTINGS.iter().enumerate() {
        let key = s.key();
        let Ok(Some(values)) = m.try_get_many::<String>(&key) else {
            continue;
        };
        let values: Vec<&str> = values.map(String::as_str).collect();
        cfg.set(i, Input::Text(&values))
            .map_err(|msg| Error::Flag { key, msg })?;
    }
    Ok(())
}

/// Read a TOML file over `cfg`.
pub fn load_file<S: Settings>(cfg: &mut S, path: &Path) -> Result<(), Error> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::File {
        path: path.to_owned(),
        msg: e.to_string(),
    })?;
    apply_toml(cfg, &text, path)
}

/// Apply the TOML text `text` (read from `path`, which names it in errors and anchors its
/// relative paths) over `cfg`.
pub fn apply_toml<S: Settings>(cfg: &mut S, text: &str, path: &Path) -> Result<(), Error> {
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| Error::File {
        path: path.to_owned(),
        msg: e.message().to_owned(),
    })?;
    let base = path.parent();
    for (key, value) in &table {
        let at = |msg: String| Error::Key {
            path: path.to_owned(),
            key: key.clone(),
            msg,
        };
        let Some(i) = S::SETTINGS.iter().position(|s| s.key() == *key) else {
            return Err(at(unknown_key::<S>(key)));
        };
        cfg.set(i, Input::Toml(value, base)).map_err(at)?;
    }
    Ok(())
}

/// Why `key` is unknown, with the key it probably meant.
fn unknown_key<S: Settings>(key: &str) -> String {
    let kebab = key.replace('_', "-");
    let keys: Vec<String> = S::SETTINGS.iter().map(Setting::key).collect();
    if keys.contains(&kebab) {
        return format!("unknown key; keys are spelled like the flags: `{kebab}`");
    }
    let near = keys
        .iter()
        .map(|k| (edit_distance(&kebab, k), k))
        .filter(|(d, _)| *d <= 2)
        .min();
    match near {
        Some((_, k)) => format!("unknown key (did you mean `{k}`?)"),
        None => format!("unknown key (known: {})", keys.join(", ")),
    }
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

/// A TOML file with every setting of `S` at its default, each under its doc as comments.
pub fn sample<S: Settings>(title: &str) -> String {
    let mut out = String::new();
    for line in title.lines() {
        out.push_str(&format!("# {line}\n").replace("# \n", "#\n"));
    }
    for s in S::SETTINGS {
        out.push('\n');
        for p in s.paragraphs() {
            for line in wrap(&p, 96) {
                out.push_str("# ");
                out.push_str(&line);
                out.push('\n');
            }
        }
        let value = if s.default.is_empty() {
            format!("# {} = \"\"", s.key())
        } else {
            format!("{} = {}", s.key(), (s.sample)(s.default))
        };
        out.push_str(&value);
        out.push('\n');
    }
    out
}

/// The settings of `S` as Markdown table rows: flag / key, default, what it does (those in
/// `positional` as arguments, as in [`clap_args`]).
pub fn markdown_rows<S: Settings>(positional: &[&str]) -> String {
    let mut out = String::new();
    for s in S::SETTINGS {
        let name = if positional.contains(&s.field) {
            format!("`{}` (argument), `{}` key", s.field.to_uppercase(), s.key())
        } else {
            format!("`--{}`", s.key())
        };
        let default = if s.default.is_empty() {
            "—".to_owned()
        } else {
            format!("`{}`", s.default)
        };
        out.push_str(&format!(
            "| {name} | {} | {} |\n",
            default,
            s.summary().replace('|', "\\|")
        ));
    }
    out
}

fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = Vec::new();
    let mut cur = String::new();
    for word in text.split_whitespace() {
        if !cur.is_empty() && cur.len() + 1 + word.len() > width {
            lines.push(std::mem::take(&mut cur));
        }
        if !cur.is_empty() {
            cur.push(' ');
        }
        cur.push_str(word);
    }
    if !cur.is_empty() {
        lines.push(cur);
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    settings! {
        /// Test settings.
        #[derive(Clone, Debug, PartialEq)]
        pub struct T {
            /// Where.
            root: PathBuf = "." as kind::Path;
            /// How long.
            ///
            /// More words.
            header_timeout: Duration = "10s" as kind::Time;
            /// How big.
            small_file_bytes: usize = "16k" as kind::Size;
            /// On or off.
            pin: bool = "false" as kind::Switch;
            /// Listen.
            listen: Vec<std::net::SocketAddr> = "127.0.0.1:8080" as kind::Addrs;
        }
    }

    fn cmd() -> clap::Command {
        clap::Command::new("t").args(clap_args::<T>(&["root"]))
    }

    #[test]
    fn defaults_come_from_the_declaration() {
        let t = T::default();
        assert_eq!(t.header_timeout, Duration::from_secs(10));
        assert_eq!(t.small_file_bytes, 16384);
        assert_eq!(T::SETTINGS[1].summary(), "How long.");
        assert_eq!(T::SETTINGS[1].paragraphs().len(), 2);
    }

    #[test]
    fn flags_over_file_over_defaults() {
        let dir = std::env::temp_dir().join(format!("lair-conf-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("x.toml");
        std::fs::write(
            &f,
            "root = 'site'\nheader-timeout = 5\nsmall-file-bytes = '32k'\npin = true\n",
        )
        .unwrap();
        let m = cmd()
            .try_get_matches_from([
                "t",
                "--header-timeout",
                "1",
                "--pin=false",
                "--listen",
                "[::1]:1",
                "--listen",
                "127.0.0.1:2",
            ])
            .unwrap();
        let t: T = from_matches(&m, Some(&f)).unwrap();
        assert_eq!(t.header_timeout, Duration::from_secs(1), "flag wins");
        assert_eq!(t.small_file_bytes, 32 << 10, "file over default");
        assert!(!t.pin, "--pin=false over pin = true");
        assert_eq!(t.root, dir.join("site"), "relative to the file");
        assert_eq!(t.listen.len(), 2);
        let m = cmd().try_get_matches_from(["t", "here", "--pin"]).unwrap();
        let t: T = from_matches(&m, None).unwrap();
        assert!(t.pin);
        assert_eq!(t.root, PathBuf::from("here"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn errors_name_the_file_and_key_or_the_flag() {
        let p = Path::new("/x/lair.toml");
        let mut t = T::default();
        let e = apply_toml(&mut t, "header_timeout = '1s'", p)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("config /x/lair.toml: header_timeout") && e.contains("`header-timeout`"),
            "{e}"
        );
        let e = apply_toml(&mut t, "pinn = true", p)
            .unwrap_err()
            .to_string();
        assert!(e.contains("did you mean `pin`"), "{e}");
        let e = apply_toml(&mut t, "small-file-bytes = 'big'", p)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("small-file-bytes") && e.contains("\"big\""),
            "{e}"
        );
        let e = apply_toml(&mut t, "pin = ", p).unwrap_err().to_string();
        assert!(e.starts_with("config /x/lair.toml:"), "{e}");
        let e = cmd()
            .try_get_matches_from(["t", "--small-file-bytes", "big"])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("--small-file-bytes") && e.contains("\"big\""),
            "{e}"
        );
    }

    #[test]
    fn the_sample_is_accepted_and_is_the_default() {
        let text = sample::<T>("Sample.");
        assert!(
            text.contains("\nheader-timeout = \"10s\"\n") && text.contains("pin = false"),
            "{text}"
        );
        let mut t = T {
            pin: true,
            ..T::default()
        };
        apply_toml(&mut t, &text, Path::new("/x/s.toml")).unwrap();
        assert_eq!(t.pin, T::default().pin);
        assert_eq!(t.small_file_bytes, T::default().small_file_bytes);
        assert!(
            markdown_rows::<T>(&["root"]).contains("| `--small-file-bytes` | `16k` | How big. |")
        );
    }
}
