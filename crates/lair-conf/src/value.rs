//! One parser per kind of value, shared by `lair serve`, `lair load` and `lair lab`.
//!
//! Why: before this module a bare number was a duration on the command line but not in a file,
//! and `64k` was a size for `lair load` but not for the server. Every place that reads a
//! duration or a size now calls these, so one spelling works everywhere.
//!
//! Contract: the text forms are what a person types (`500ms`, `10s`, `2m`, `1h`; `4096`, `64k`,
//! `2m`, `1g`, powers of 1024); in TOML a bare integer or float is the same as its text (a
//! duration in seconds, a size in bytes). Errors are one line saying what was expected.

use std::time::Duration;

/// `250us`, `500ms`, `5s`, `2m`, `1h`, or a bare number of seconds (`1.5`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let (num, unit) = t
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .map_or((t, "s"), |i| (&t[..i], t[i..].trim()));
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 500ms, 5s, 2m or 1h"))?;
    let secs = match unit {
        "us" | "µs" => n / 1e6,
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("{s:?}: the unit must be us, ms, s, m or h")),
    };
    if !(0.0..1e12).contains(&secs) {
        return Err(format!("{s:?} is not a duration"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// `4096`, `4k`, `2m`, `1g` (powers of 1024; `KiB`, `MiB`, `GiB` and `kb`-style spellings too)
/// → bytes. Zero is a size; a caller for which zero makes no sense says so itself.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim().to_ascii_lowercase();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = (&t[..digits], t[digits..].trim());
    let mult: u64 = match unit {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => {
            return Err(format!(
                "{s:?}: the unit must be k, m or g (powers of 1024)"
            ))
        }
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| format!("{s:?} is not a size like 4096, 64k or 2m"))
}

/// Bytes as [`parse_size`] reads them, in the largest unit that is exact (`65536` → `64k`).
pub fn size_text(n: u64) -> String {
    for (unit, shift) in [("g", 30), ("m", 20), ("k", 10)] {
        if n != 0 && n % (1 << shift) == 0 {
            return format!("{}{unit}", n >> shift);
        }
    }
    n.to_string()
}

/// A size that must not be zero (a rate, a buffer): [`parse_size`], refusing `0`.
pub fn parse_nonzero_size(s: &str) -> Result<u64, String> {
    match parse_size(s)? {
        0 => Err(format!("{s:?}: must be more than 0")),
        n => Ok(n),
    }
}

/// `true`/`false` (also `yes`/`no`, `on`/`off`, `1`/`0`).
pub fn parse_bool(s: &str) -> Result<bool, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "true" | "yes" | "on" | "1" => Ok(true),
        "false" | "no" | "off" | "0" => Ok(false),
        _ => Err(format!("{s:?} is not true or false")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("20us"), Ok(Duration::from_micros(20)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        for bad in ["soon", "5d", "-1s", "", "1e400", "ms"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("4k"), Ok(4096));
        assert_eq!(parse_size("2M"), Ok(2 << 20));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("0"), Ok(0));
        for bad in ["", "k", "-1", "1.5k", "4x", "99999999999999999999g"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
        assert!(parse_nonzero_size("0").is_err() && parse_nonzero_size("1k") == Ok(1024));
    }

    #[test]
    fn bools() {
        assert_eq!(parse_bool("on"), Ok(true));
        assert_eq!(parse_bool("FALSE"), Ok(false));
        assert!(parse_bool("maybe").is_err());
    }
}
