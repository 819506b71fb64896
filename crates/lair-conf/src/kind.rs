//! Kinds of values: how a setting's text (a flag, a TOML value, its declared default) becomes
//! the field's type.
//!
//! A kind is a marker type implementing [`Kind<T>`] for the field types it can fill, so a field
//! keeps its plain type (`usize`, `Duration`) while the declaration says how it is spelled
//! (`Size`: `64k`; `Count`: `100`). Every kind parses text with the shared parsers of
//! [`crate::value`], so a flag and a file key take the same syntax.

use std::fmt::Display;
use std::net::SocketAddr;
use std::path::{Path as StdPath, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use crate::value::{parse_bool, parse_duration, parse_size};

/// Where a setting's value comes from.
#[derive(Clone, Copy, Debug)]
pub enum Input<'a> {
    /// The values given on the command line (more than one only for a repeatable flag), or the
    /// declared default.
    Text(&'a [&'a str]),
    /// A TOML value, and the directory of the file it is in (relative paths are relative to it).
    Toml(&'a toml::Value, Option<&'a StdPath>),
}

/// How values of one kind are spelled, for a field of type `T`.
pub trait Kind<T> {
    /// The placeholder in `--help` (`DURATION`, `SIZE`).
    const NAME: &'static str;
    /// The flag may be repeated (its values form a list).
    const REPEAT: bool = false;
    /// A switch: the flag alone means `true` (`--pin`); `--pin=false` says the other thing.
    const SWITCH: bool = false;

    /// The text form (flags, defaults, and TOML strings).
    fn parse(s: &str) -> Result<T, String>;

    /// A TOML value: a string is parsed as text; a number or boolean as its own text.
    fn from_toml(v: &toml::Value, _base: Option<&StdPath>) -> Result<T, String> {
        match v {
            toml::Value::String(s) => Self::parse(s),
            toml::Value::Integer(i) => Self::parse(&i.to_string()),
            toml::Value::Float(f) => Self::parse(&f.to_string()),
            toml::Value::Boolean(b) => Self::parse(&b.to_string()),
            other => Err(format!(
                "expected a {}, found {}",
                Self::NAME,
                other.type_str()
            )),
        }
    }

    /// Several command-line values (only a repeatable kind takes more than one).
    fn from_texts(values: &[&str]) -> Result<T, String> {
        match values {
            [v] => Self::parse(v),
            _ => Err("given more than once".into()),
        }
    }

    /// Read `input`.
    fn read(input: Input<'_>) -> Result<T, String> {
        match input {
            Input::Text(values) => Self::from_texts(values),
            Input::Toml(v, base) => Self::from_toml(v, base),
        }
    }

    /// The declared default as a TOML value, for the sample configuration file.
    fn sample(default: &str) -> String {
        toml_string(default)
    }
}

fn toml_string(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

/// A size in bytes: `4096`, `64k`, `2m`, `1g` (powers of 1024).
pub struct Size;

impl Kind<u64> for Size {
    const NAME: &'static str = "SIZE";
    fn parse(s: &str) -> Result<u64, String> {
        parse_size(s)
    }
}

impl Kind<usize> for Size {
    const NAME: &'static str = "SIZE";
    fn parse(s: &str) -> Result<usize, String> {
        let n = parse_size(s)?;
        usize::try_from(n).map_err(|_| format!("{s:?} is too large"))
    }
}

impl Kind<u32> for Size {
    const NAME: &'static str = "SIZE";
    fn parse(s: &str) -> Result<u32, String> {
        let n = parse_size(s)?;
        u32::try_from(n).map_err(|_| format!("{s:?} is too large (at most 4g - 1)"))
    }
}

/// A plain count: `100`.
pub struct Count;

macro_rules! count_kind {
    ($($t:ty),*) => {$(
        impl Kind<$t> for Count {
            const NAME: &'static str = "N";
            fn parse(s: &str) -> Result<$t, String> {
                s.trim().parse().map_err(|_| format!("{s:?} is not a whole number"))
            }
            fn sample(default: &str) -> String {
                default.to_owned()
            }
        }
    )*};
}
count_kind!(usize, u64, u32, i32);

/// A count within `LO..=HI` (`CountIn<1, 256>`): out of range is an error of the flag or key
/// that gave it, like any other bad value.
pub struct CountIn<const LO: u64, const HI: u64>;

macro_rules! count_in_kind {
    ($($t:ty),*) => {$(
        impl<const LO: u64, const HI: u64> Kind<$t> for CountIn<LO, HI> {
            const NAME: &'static str = "N";
            fn parse(s: &str) -> Result<$t, String> {
                let n: u64 = <Count as Kind<u64>>::parse(s)?;
                if !(LO..=HI).contains(&n) {
                    return Err(if HI == u64::MAX {
                        format!("{s:?}: must be at least {LO}")
                    } else {
                        format!("{s:?}: must be {LO}..={HI}")
                    });
                }
                <$t>::try_from(n).map_err(|_| format!("{s:?} is too large"))
            }
            fn sample(default: &str) -> String {
                default.to_owned()
            }
        }
    )*};
}
count_in_kind!(usize, i32);

/// A count of at least one.
pub type Positive = CountIn<1, { u64::MAX }>;

/// A size that must not be zero (`64k`).
pub struct NonZeroSize;

impl Kind<usize> for NonZeroSize {
    const NAME: &'static str = "SIZE";
    fn parse(s: &str) -> Result<usize, String> {
        let n = crate::value::parse_nonzero_size(s)?;
        usize::try_from(n).map_err(|_| format!("{s:?} is too large"))
    }
}

/// A thread count, or `auto`: as many as the CPUs this process may use.
pub struct Threads;

impl Kind<usize> for Threads {
    const NAME: &'static str = "N|auto";
    fn parse(s: &str) -> Result<usize, String> {
        if s.trim() == "auto" {
            return Ok(std::thread::available_parallelism().map_or(1, |n| n.get()));
        }
        match <Count as Kind<usize>>::parse(s) {
            Ok(0) => Err(format!("{s:?}: must be at least 1 (or auto)")),
            Ok(n) => Ok(n),
            Err(_) => Err(format!("{s:?} is neither a number nor auto")),
        }
    }
}

/// A duration: `500ms`, `10s`, `2m`, `1h`, or a bare number of seconds.
pub struct Time;

impl Kind<Duration> for Time {
    const NAME: &'static str = "DURATION";
    fn parse(s: &str) -> Result<Duration, String> {
        parse_duration(s)
    }
}

/// On or off: the flag alone turns it on (`--pin`), `--pin=false` off; `pin = true` in a file.
pub struct Switch;

impl Kind<bool> for Switch {
    const NAME: &'static str = "BOOL";
    const SWITCH: bool = true;
    fn parse(s: &str) -> Result<bool, String> {
        parse_bool(s)
    }
    fn sample(default: &str) -> String {
        default.to_owned()
    }
}

/// One of a set of names, or anything else with `FromStr` (`lazy`, `network,open`).
pub struct Name;

impl<T: FromStr> Kind<T> for Name
where
    T::Err: Display,
{
    const NAME: &'static str = "NAME";
    fn parse(s: &str) -> Result<T, String> {
        s.trim().parse().map_err(|e: T::Err| e.to_string())
    }
}

/// A file or directory. In a file, a relative path is relative to the file's directory; on the
/// command line, to the current directory. For an optional path, the empty text is "none".
pub struct Path;

fn rebase(p: PathBuf, base: Option<&StdPath>) -> PathBuf {
    match base {
        Some(b) if p.is_relative() => b.join(p),
        _ => p,
    }
}

impl Kind<PathBuf> for Path {
    const NAME: &'static str = "PATH";
    fn parse(s: &str) -> Result<PathBuf, String> {
        if s.is_empty() {
            return Err("an empty path".into());
        }
        Ok(PathBuf::from(s))
    }
    fn from_toml(v: &toml::Value, base: Option<&StdPath>) -> Result<PathBuf, String> {
        match v {
            toml::Value::String(s) => <Self as Kind<PathBuf>>::parse(s).map(|p| rebase(p, base)),
            other => Err(format!("expected a path, found {}", other.type_str())),
        }
    }
}

impl Kind<Option<PathBuf>> for Path {
    const NAME: &'static str = "PATH";
    fn parse(s: &str) -> Result<Option<PathBuf>, String> {
        Ok((!s.is_empty()).then(|| PathBuf::from(s)))
    }
    fn from_toml(v: &toml::Value, base: Option<&StdPath>) -> Result<Option<PathBuf>, String> {
        match v {
            toml::Value::String(s) => {
                Ok(<Self as Kind<Option<PathBuf>>>::parse(s)?.map(|p| rebase(p, base)))
            }
            other => Err(format!("expected a path, found {}", other.type_str())),
        }
    }
}

/// Socket addresses, IPv4 or IPv6 (`127.0.0.1:8080`, `[::1]:8080`): the flag repeats, a file
/// gives an array (or one string).
pub struct Addrs;

impl Kind<Vec<SocketAddr>> for Addrs {
    const NAME: &'static str = "ADDR";
    const REPEAT: bool = true;
    fn parse(s: &str) -> Result<Vec<SocketAddr>, String> {
        if s.trim().is_empty() {
            return Err("no address".into());
        }
        s.split(',')
            .map(str::trim)
            .filter(|a| !a.is_empty())
            .map(|a| {
                a.parse()
                    .map_err(|_| format!("{a:?} is not an address like 127.0.0.1:8080 or [::1]:80"))
            })
            .collect()
    }
    fn from_texts(values: &[&str]) -> Result<Vec<SocketAddr>, String> {
        let mut all = Vec::new();
        for v in values {
            all.extend(<Self as Kind<Vec<SocketAddr>>>::parse(v)?);
        }
        Ok(all)
    }
    fn from_toml(v: &toml::Value, _base: Option<&StdPath>) -> Result<Vec<SocketAddr>, String> {
        match v {
            toml::Value::String(s) => <Self as Kind<Vec<SocketAddr>>>::parse(s),
            toml::Value::Array(items) if items.is_empty() => Err("no address".into()),
            toml::Value::Array(items) => {
                let mut texts = Vec::new();
                for item in items {
                    match item.as_str() {
                        Some(s) => texts.push(s),
                        None => return Err("expected an array of address strings".into()),
                    }
                }
                <Self as Kind<Vec<SocketAddr>>>::from_texts(&texts)
            }
            other => Err(format!("expected addresses, found {}", other.type_str())),
        }
    }
    fn sample(default: &str) -> String {
        let items: Vec<String> = default.split(',').map(|a| toml_string(a.trim())).collect();
        format!("[{}]", items.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_text_from_a_flag_and_a_file() {
        let flag = <Size as Kind<usize>>::read(Input::Text(&["64k"])).unwrap();
        let v = toml::Value::String("64k".into());
        assert_eq!(<Size as Kind<usize>>::read(Input::Toml(&v, None)), Ok(flag));
        let n = toml::Value::Integer(65536);
        assert_eq!(<Size as Kind<usize>>::read(Input::Toml(&n, None)), Ok(flag));
        let secs = toml::Value::Integer(3);
        assert_eq!(
            <Time as Kind<Duration>>::read(Input::Toml(&secs, None)),
            <Time as Kind<Duration>>::read(Input::Text(&["3"]))
        );
    }

    #[test]
    fn bounded_counts_say_their_bounds() {
        assert_eq!(<CountIn<1, 256> as Kind<usize>>::parse("256"), Ok(256));
        let e = <CountIn<1, 256> as Kind<usize>>::parse("257").unwrap_err();
        assert!(e.contains("1..=256"), "{e}");
        let e = <Positive as Kind<usize>>::parse("0").unwrap_err();
        assert!(e.contains("at least 1"), "{e}");
        assert!(<Threads as Kind<usize>>::parse("0").is_err());
        assert!(<NonZeroSize as Kind<usize>>::parse("0").is_err());
        assert!(<Addrs as Kind<Vec<SocketAddr>>>::parse("").is_err());
    }

    #[test]
    fn paths_in_files_are_relative_to_the_file() {
        let v = toml::Value::String("site".into());
        let base = StdPath::new("/etc/lair");
        let p: PathBuf = <Path as Kind<PathBuf>>::from_toml(&v, Some(base)).unwrap();
        assert_eq!(p, PathBuf::from("/etc/lair/site"));
        let abs = toml::Value::String("/srv/www".into());
        let p: PathBuf = <Path as Kind<PathBuf>>::from_toml(&abs, Some(base)).unwrap();
        assert_eq!(p, PathBuf::from("/srv/www"));
    }

    #[test]
    fn addresses_repeat_and_arrays() {
        let a = <Addrs as Kind<Vec<SocketAddr>>>::from_texts(&["127.0.0.1:1", "[::1]:2"]).unwrap();
        assert_eq!(a.len(), 2);
        let v: toml::Value = toml::from_str::<toml::Table>("x = ['127.0.0.1:1', '[::1]:2']")
            .unwrap()
            .remove("x")
            .unwrap();
        assert_eq!(<Addrs as Kind<Vec<SocketAddr>>>::from_toml(&v, None), Ok(a));
        assert_eq!(
            <Addrs as Kind<Vec<SocketAddr>>>::sample("127.0.0.1:8080"),
            "[\"127.0.0.1:8080\"]"
        );
        assert!(<Addrs as Kind<Vec<SocketAddr>>>::parse("localhost:80").is_err());
    }
}
