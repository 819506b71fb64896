//! Import a Common Log Format (or Combined) access log into a workload, so an operator can
//! replay their own traffic.
//!
//! A line looks like
//! `host ident user [01/Aug/1995:00:00:01 -0400] "GET /images/a.gif HTTP/1.0" 200 1713 …`.
//! Kept, as in `../shared/traces/`: GET, status 200, a size > 0, static paths only (no query,
//! no CGI, only `[A-Za-z0-9._~+,=@/-]`, no dot segments), `/dir/` read as `/dir/index.html`.
//! Each file's size is the largest logged for it (partial transfers log less). Requests
//! logged within one second are spread evenly over it. A line that does not parse is counted
//! as malformed; a well-formed line that is not kept is counted by reason. Nothing is fatal.

use std::collections::HashMap;

use serde::Serialize;

use crate::dataset::{Dataset, FileSpec, Req};

/// Why lines were not kept.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ImportStats {
    /// Lines read (blank lines excluded).
    pub lines: u64,
    /// Requests kept.
    pub kept: u64,
    /// Lines that are not Common Log Format.
    pub malformed: u64,
    /// Not GET.
    pub method: u64,
    /// Not 200.
    pub status: u64,
    /// Size `-` or 0.
    pub empty: u64,
    /// Query strings, CGI, characters outside the static set, dot segments.
    pub not_static: u64,
}

/// An imported log.
#[derive(Clone, Debug, Default)]
pub struct Imported {
    /// The workload (fileset most requested first, requests in log order).
    pub dataset: Dataset,
    /// What was kept and skipped.
    pub stats: ImportStats,
}

struct Line<'a> {
    secs: i64,
    method: &'a str,
    target: &'a str,
    status: u16,
    bytes: Option<u64>,
}

/// Parse one line; `None` if it is not Common Log Format.
fn parse_line(line: &str) -> Option<Line<'_>> {
    let open = line.find('[')?;
    let close = open + line[open..].find(']')?;
    let secs = parse_time(&line[open + 1..close])?;
    let rest = &line[close + 1..];
    let q1 = rest.find('"')?;
    let q2 = q1 + 1 + rest[q1 + 1..].find('"')?;
    let request = &rest[q1 + 1..q2];
    let mut req = request.split(' ');
    let method = req.next()?;
    let target = req.next()?;
    let mut after = rest[q2 + 1..].split_ascii_whitespace();
    let status = after.next()?.parse().ok()?;
    let bytes = match after.next()? {
        "-" => None,
        b => Some(b.parse().ok()?),
    };
    Some(Line {
        secs,
        method,
        target,
        status,
        bytes,
    })
}

/// `01/Aug/1995:00:00:01 -0400` → seconds since the epoch (UTC).
fn parse_time(s: &str) -> Option<i64> {
    let (stamp, zone) = s.split_once(' ')?;
    let mut p = stamp.split(['/', ':']);
    let day: i64 = p.next()?.parse().ok()?;
    let mon = p.next()?;
    let year: i64 = p.next()?.parse().ok()?;
    let h: i64 = p.next()?.parse().ok()?;
    let m: i64 = p.next()?.parse().ok()?;
    let sec: i64 = p.next()?.parse().ok()?;
    let month = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ]
    .iter()
    .position(|x| *x == mon)? as i64
        + 1;
    // Bounded year, ASCII zone: found by the trace fuzz target (a 13-digit year overflowed
    // the day count; a zone with a multi-byte character split inside it).
    if !(1..=31).contains(&day)
        || !(0..=9999).contains(&year)
        || !(0..=23).contains(&h)
        || !(0..=59).contains(&m)
        || !(0..=60).contains(&sec)
        || zone.len() != 5
        || !zone.is_ascii()
    {
        return None;
    }
    let sign = match zone.as_bytes()[0] {
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    let zh: i64 = zone[1..3].parse().ok()?;
    let zm: i64 = zone[3..5].parse().ok()?;
    // Days from civil (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + h * 3600 + m * 60 + sec - sign * (zh * 3600 + zm * 60))
}

/// The static path a target names, or `None` if it is not a static file request.
fn static_path(target: &str) -> Option<String> {
    let path = target
        .strip_prefix("http://")
        .and_then(|t| t.find('/').map(|i| &t[i..]))
        .unwrap_or(target);
    if !path.starts_with('/')
        || path.contains("cgi-bin")
        || !path.bytes().all(|b| {
            b.is_ascii_alphanumeric()
                || matches!(
                    b,
                    b'.' | b'_' | b'~' | b'+' | b',' | b'=' | b'@' | b'/' | b'-'
                )
        })
        || path.split('/').any(|s| s == "." || s == "..")
    {
        return None;
    }
    Some(if path.ends_with('/') {
        format!("{path}index.html")
    } else {
        path.to_string()
    })
}

/// Import a log's text.
pub fn import(text: &str) -> Imported {
    let mut st = ImportStats::default();
    let mut kept: Vec<(i64, String, u64)> = Vec::new();
    for line in text.lines() {
        if line.trim().is_empty() {
            continue;
        }
        st.lines += 1;
        let Some(l) = parse_line(line) else {
            st.malformed += 1;
            continue;
        };
        if l.method != "GET" {
            st.method += 1;
        } else if l.status != 200 {
            st.status += 1;
        } else if l.bytes.unwrap_or(0) == 0 {
            st.empty += 1;
        } else if let Some(p) = static_path(l.target) {
            kept.push((l.secs, p, l.bytes.unwrap_or(0)));
        } else {
            st.not_static += 1;
        }
    }
    st.kept = kept.len() as u64;
    // Sizes (largest seen) and popularity.
    let mut size: HashMap<&str, (u64, u64)> = HashMap::new();
    for (_, p, b) in &kept {
        let e = size.entry(p.as_str()).or_default();
        e.0 = e.0.max(*b);
        e.1 += 1;
    }
    let mut files: Vec<(&str, u64, u64)> = size.iter().map(|(p, (b, n))| (*p, *b, *n)).collect();
    files.sort_by(|a, b| b.2.cmp(&a.2).then(a.0.cmp(b.0)));
    let index: HashMap<&str, u32> = files
        .iter()
        .enumerate()
        .map(|(i, f)| (f.0, i as u32))
        .collect();
    // Time: ms after the first request, requests of one second spread over it.
    let first = kept.first().map_or(0, |k| k.0);
    let mut requests = Vec::with_capacity(kept.len());
    let mut i = 0;
    while i < kept.len() {
        let mut j = i;
        while j < kept.len() && kept[j].0 == kept[i].0 {
            j += 1;
        }
        let n = (j - i) as u64;
        for (k, entry) in kept[i..j].iter().enumerate() {
            let base = u64::try_from((entry.0 - first).max(0)).unwrap_or(0) * 1000;
            requests.push(Req {
                t_ms: base + k as u64 * 1000 / n,
                file: index[entry.1.as_str()],
            });
        }
        i = j;
    }
    // A log is in time order; if clocks stepped back, keep the order but not negative gaps.
    let dataset = Dataset {
        files: files
            .iter()
            .map(|f| FileSpec {
                path: f.0.to_string(),
                bytes: f.1,
            })
            .collect(),
        requests,
        skipped: st.lines - st.kept,
    };
    Imported { dataset, stats: st }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOG: &str = r#"in24.inetnebr.com - - [01/Aug/1995:00:00:01 -0400] "GET /shuttle/missions/sts-68/news/sts-68-mcc-05.txt HTTP/1.0" 200 1839
uplherc.upl.com - - [01/Aug/1995:00:00:07 -0400] "GET / HTTP/1.0" 304 0
uplherc.upl.com - - [01/Aug/1995:00:00:08 -0400] "GET /images/ksclogo-medium.gif HTTP/1.0" 200 5866
ix-esc-ca2-07.ix.netcom.com - - [01/Aug/1995:00:00:09 -0400] "GET /images/launch-logo.gif HTTP/1.0" 200 1713
uplherc.upl.com - - [01/Aug/1995:00:00:08 -0400] "GET /images/ksclogo-medium.gif HTTP/1.0" 200 3000
slppp6.intermind.net - - [01/Aug/1995:00:00:10 -0400] "GET /history/skylab/ HTTP/1.0" 200 1687
piweba4y.prodigy.com - - [01/Aug/1995:00:00:10 -0400] "POST /cgi-bin/form HTTP/1.0" 200 100
piweba4y.prodigy.com - - [01/Aug/1995:00:00:11 -0400] "GET /cgi-bin/imagemap/countdown?99,176 HTTP/1.0" 200 1000
piweba4y.prodigy.com - - [01/Aug/1995:00:00:11 -0400] "GET /a/../etc/passwd HTTP/1.0" 200 1000
this is not a log line
broken - - [01/Aug/1995:00:00:12 -0400 "GET /x HTTP/1.0" 200 1
broken - - [32/Aug/1995:00:00:12 -0400] "GET /x HTTP/1.0" 200 1
host - - [01/Aug/1995:00:00:13 -0400] "GET /empty HTTP/1.0" 200 -
"#;

    #[test]
    fn keeps_static_gets_and_counts_the_rest() {
        let im = import(LOG);
        let s = &im.stats;
        assert_eq!(s.lines, 13);
        assert_eq!(s.kept, 5);
        assert_eq!(s.malformed, 3);
        assert_eq!((s.method, s.status, s.empty, s.not_static), (1, 1, 1, 2));
        let d = &im.dataset;
        // Most requested first; the largest size logged wins.
        assert_eq!(d.files[0].path, "/images/ksclogo-medium.gif");
        assert_eq!(d.files[0].bytes, 5866);
        assert!(d
            .files
            .iter()
            .any(|f| f.path == "/history/skylab/index.html"));
        // Log order is kept; ms after the first request.
        let t: Vec<u64> = d.requests.iter().map(|r| r.t_ms).collect();
        assert_eq!(t, vec![0, 7000, 8000, 7000, 9000]);
    }

    /// Found by the trace fuzz target: a 13-digit year overflowed the day count, and a zone
    /// of five bytes but not five characters was cut inside a character. Both are malformed.
    #[test]
    fn fuzz_found_years_and_zones_are_malformed_not_panics() {
        assert_eq!(parse_time("01/Jul/1777777777995:00:00:01 -0400"), None);
        assert_eq!(parse_time("01/Jul/1995:00:00:01 +0\u{e9}0"), None);
        let line = "h - - [01/Jul/17777777779995:00:00:01 -0400] \"GET /a HTTP/1.0\" 200 5\n";
        assert_eq!(import(line).stats.malformed, 1);
    }

    #[test]
    fn time_zones_and_dates() {
        // 1995-08-01 04:00:01 UTC.
        assert_eq!(parse_time("01/Aug/1995:00:00:01 -0400"), Some(807_249_601));
        assert_eq!(parse_time("01/Aug/1995:04:00:01 +0000"), Some(807_249_601));
        assert_eq!(parse_time("29/Feb/2000:12:00:00 +0100"), Some(951_822_000));
        assert_eq!(parse_time("01/Foo/1995:00:00:01 -0400"), None);
        assert_eq!(parse_time("01/Aug/1995:00:00:01"), None);
    }
}
