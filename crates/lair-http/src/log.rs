//! The access log in Combined Log Format, buffered per worker.
//!
//! Why buffered: one `write` per request would put a file write on every request's path; the
//! worker appends lines to a buffer and hands it to the engine (a `Write` operation, so a slow
//! disk never blocks the loop under `lazy`) when it is large or a second has passed.
//!
//! Request lines, referers and user agents come from the network: bytes outside printable
//! ASCII and `"`/`\` are written as `\xHH`, so a client cannot forge log lines.

use std::io::Write as _;
use std::net::SocketAddr;

/// Formats `[10/Oct/2000:13:55:36 +0000]` for a Unix second, caching the last one.
#[derive(Debug, Default)]
pub struct LogClock {
    second: u64,
    text: String,
}

impl LogClock {
    /// The bracketed timestamp for Unix second `s` (UTC).
    pub fn at(&mut self, s: u64) -> &str {
        if self.text.is_empty() || s != self.second {
            self.second = s;
            let days = s / 86_400;
            let rem = s % 86_400;
            let (y, m, d) = civil_from_days(days as i64);
            const MON: [&str; 12] = [
                "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
            ];
            self.text = format!(
                "[{d:02}/{}/{y:04}:{:02}:{:02}:{:02} +0000]",
                MON[(m - 1) as usize],
                rem / 3600,
                rem / 60 % 60,
                rem % 60
            );
        }
        &self.text
    }
}

/// Days since 1970-01-01 to (year, month, day) — Howard Hinnant's `civil_from_days`.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

fn escaped(out: &mut Vec<u8>, v: &[u8]) {
    for &b in v {
        if (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\' {
            out.push(b);
        } else {
            let _ = write!(out, "\\x{b:02X}");
        }
    }
}

/// One request, as the log sees it.
#[derive(Debug)]
pub struct Entry<'a> {
    /// Client address.
    pub peer: Option<SocketAddr>,
    /// The request line, raw (or empty when none was parsed).
    pub line: &'a [u8],
    /// Status sent.
    pub status: u16,
    /// Body bytes sent.
    pub body_bytes: u64,
    /// `Referer`.
    pub referer: Option<&'a [u8]>,
    /// `User-Agent`.
    pub user_agent: Option<&'a [u8]>,
}

/// Append one Combined Log Format line.
pub fn append(out: &mut Vec<u8>, e: &Entry<'_>, timestamp: &str) {
    match e.peer {
        Some(p) => {
            let _ = write!(out, "{}", p.ip());
        }
        None => out.push(b'-'),
    }
    let _ = write!(out, " - - {timestamp} \"");
    escaped(out, e.line);
    let _ = write!(out, "\" {} ", e.status);
    if e.body_bytes == 0 {
        out.push(b'-');
    } else {
        let _ = write!(out, "{}", e.body_bytes);
    }
    out.extend_from_slice(b" \"");
    escaped(out, e.referer.unwrap_or(b"-"));
    out.extend_from_slice(b"\" \"");
    escaped(out, e.user_agent.unwrap_or(b"-"));
    out.extend_from_slice(b"\"\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn combined_format() {
        let mut c = LogClock::default();
        assert_eq!(c.at(971_186_136), "[10/Oct/2000:13:55:36 +0000]");
        assert_eq!(c.at(0), "[01/Jan/1970:00:00:00 +0000]");
        assert_eq!(c.at(951_782_400), "[29/Feb/2000:00:00:00 +0000]");
        let mut out = Vec::new();
        let e = Entry {
            peer: Some("127.0.0.1:5".parse().unwrap()),
            line: b"GET /a\"\n HTTP/1.1",
            status: 200,
            body_bytes: 12,
            referer: None,
            user_agent: Some(b"curl/8"),
        };
        append(&mut out, &e, "[T]");
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "127.0.0.1 - - [T] \"GET /a\\x22\\x0A HTTP/1.1\" 200 12 \"-\" \"curl/8\"\n"
        );
    }
}
