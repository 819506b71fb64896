//! Parsing one request head (RFC 9112) with `httparse`, and refusing what lair does not serve.
//!
//! Why spans: the head stays in the connection's receive buffer until its response is done, so
//! the parsed [`Head`] records where each field is instead of copying it — no allocation per
//! request.
//!
//! What it decides: the limits (request line → 414, head size or field count → 431), the
//! version (`HTTP/1.x` with x > 1 is served as HTTP/1.1, RFC 9110 §2.5; another major version
//! → 505), the method (GET and HEAD; others 405), `Host` (RFC 9112 §3.2: 400 if missing on
//! HTTP/1.1, repeated, or not `uri-host [":" port]`),
//! `Transfer-Encoding` (`chunked` only — its body is found by [`crate::chunked`] and
//! discarded; any other coding 501, and with `Content-Length` too 400, both closing: what
//! follows cannot be framed, so nothing is smuggled), `Content-Length` (400 if malformed or
//! conflicting),
//! and keep-alive (1.1 unless `close`; 1.0 only with `keep-alive`).

use std::mem::MaybeUninit;

/// Where a field is in the receive buffer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Span {
    start: u32,
    len: u32,
}

impl Span {
    fn of(buf: &[u8], part: &[u8]) -> Span {
        let start = (part.as_ptr() as usize).saturating_sub(buf.as_ptr() as usize);
        Span {
            start: u32::try_from(start).unwrap_or(u32::MAX),
            len: u32::try_from(part.len()).unwrap_or(0),
        }
    }

    /// The bytes in `buf` (empty if out of range).
    pub fn get(self, buf: &[u8]) -> &[u8] {
        let s = self.start as usize;
        buf.get(s..s + self.len as usize).unwrap_or_default()
    }
}

/// Methods lair answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// GET.
    Get,
    /// HEAD: the same head, no body.
    Head,
}

/// A parsed request head.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Head {
    /// GET or HEAD.
    pub method: Method,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor: u8,
    /// The request target.
    pub target: Span,
    /// The request line without CRLF (for the access log).
    pub line: Span,
    /// Keep the connection open after the response.
    pub keep_alive: bool,
    /// Bytes of body that follow the head (discarded).
    pub content_length: u64,
    /// Conditional and range fields.
    pub if_match: Option<Span>,
    /// `If-None-Match`.
    pub if_none_match: Option<Span>,
    /// `If-Modified-Since`.
    pub if_modified_since: Option<Span>,
    /// `If-Unmodified-Since`.
    pub if_unmodified_since: Option<Span>,
    /// `Range`.
    pub range: Option<Span>,
    /// `If-Range`.
    pub if_range: Option<Span>,
    /// `Referer`, for the access log.
    pub referer: Option<Span>,
    /// `User-Agent`, for the access log.
    pub user_agent: Option<Span>,
    /// `Expect: 100-continue`: the client waits for `100 Continue` before sending its body.
    pub expect_continue: bool,
    /// The body is in the chunked transfer coding (`Transfer-Encoding: chunked`).
    pub chunked: bool,
    /// Length of the head in bytes (request line, fields, empty line).
    pub len: usize,
}

/// A request lair will not serve, with the status to answer. The connection is closed after.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reject {
    /// The status code.
    pub status: u16,
    /// What the request line said, when known (for the log); 1 if unknown.
    pub minor: u8,
}

/// The outcome of parsing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Parsed {
    /// A whole head.
    Complete(Head),
    /// Not all of it is here yet.
    Partial,
}

/// The most fields lair ever parses, whatever the configured limit.
pub const MAX_FIELDS: usize = 256;

fn reject(status: u16) -> Reject {
    Reject { status, minor: 1 }
}

/// Request-size limits; each has a status code when exceeded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Longest request line (414 beyond).
    pub request_line_bytes: usize,
    /// Largest request head, request line included (431 beyond).
    pub header_bytes: usize,
    /// Most header fields (431 beyond; at most [`crate::request::MAX_FIELDS`]).
    pub header_fields: usize,
    /// Largest request body read and discarded on GET/HEAD (413 and close beyond).
    pub discard_body_bytes: u64,
}

/// Bytes of the empty lines before a request line, which a server ignores (RFC 9112 §2.2:
/// clients may send a CRLF after a request body) — and httparse skips them too.
fn empty_lines(buf: &[u8]) -> usize {
    let mut at = 0;
    loop {
        match &buf[at..] {
            [b'\r', b'\n', ..] => at += 2,
            [b'\n', ..] => at += 1,
            _ => return at,
        }
    }
}

/// Whether [`parse`] is worth calling on `buf`, whose first `scanned` bytes it has already
/// seen: while the head is short (under 1 KiB: garbage such as a TLS hello is refused at
/// once), when a line has ended since (a field may be malformed, or the head complete), or
/// when a limit is passed. A long head that arrives a few bytes at a time is then parsed once
/// per line, not once per piece, which was quadratic in its length (found by the `conn` fuzz
/// target running at 700 inputs a second, most of them spent re-parsing). Measured with
/// `scripts/trickle-head.py` (a 29 KB head sent one byte per packet, two runs each on a
/// loaded machine): 1.24 and 1.11 s of
/// server CPU before, 1.13 and 0.93 s after; the rest is one receive per packet, which a
/// server cannot avoid (the header timeout bounds it).
pub fn worth_parsing(buf: &[u8], scanned: usize, limits: &Limits) -> bool {
    const SHORT: usize = 1024;
    if buf.len() <= SHORT || buf.len() > limits.header_bytes {
        return true;
    }
    // A request line with no end within its limit is a 414 now.
    if line_unended(buf, limits) {
        return true;
    }
    buf[scanned.min(buf.len())..].contains(&b'\n')
}

/// `buf` holds more than a request line may, and no line feed within the limit: a 414.
fn line_unended(buf: &[u8], limits: &Limits) -> bool {
    let line = &buf[..buf.len().min(limits.request_line_bytes + 2)];
    buf.len() > limits.request_line_bytes + 1 && !line.contains(&b'\n')
}

/// Parse the head at the start of `buf`.
pub fn parse(buf: &[u8], limits: &Limits) -> Result<Parsed, Reject> {
    let start = empty_lines(buf);
    // The request line (after any empty lines) alone must fit its limit, even before the head
    // is complete: looked for in what is not a complete head (a complete one's line ends
    // right after its target, found below without scanning the line twice).
    let mut fields = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_FIELDS];
    let fields = &mut fields[..limits.header_fields.clamp(1, MAX_FIELDS)];
    let mut req = httparse::Request::new(&mut []);
    let status = req.parse_with_uninit_headers(buf, fields);
    let n = match status {
        Ok(httparse::Status::Complete(n)) => n,
        _ if line_unended(&buf[start..], limits) => return Err(reject(414)),
        Ok(httparse::Status::Partial) => {
            return if buf.len() > limits.header_bytes {
                Err(reject(431))
            } else {
                Ok(Parsed::Partial)
            };
        }
        Err(httparse::Error::TooManyHeaders) => return Err(reject(431)),
        Err(httparse::Error::Version) => return later_minor_version(buf, limits),
        Err(_) => return Err(reject(400)),
    };
    if n > limits.header_bytes {
        return Err(reject(431));
    }
    let minor = req.version.unwrap_or(1);
    let reject = |status| Reject { status, minor };
    let (Some(method), Some(path)) = (req.method, req.path) else {
        return Err(reject(400));
    };
    // The line ends with the first line feed after the target (the version holds none).
    let target = Span::of(buf, path.as_bytes());
    let after = (target.start + target.len) as usize;
    let line_end = buf[after..]
        .iter()
        .position(|&b| b == b'\n')
        .map_or(buf.len(), |k| after + k)
        - start;
    if line_end > limits.request_line_bytes {
        return Err(reject(414));
    }
    let line = &buf[start..start + line_end];
    let line = line.strip_suffix(b"\r").unwrap_or(line);

    let mut head = Head {
        method: Method::Get,
        minor,
        target,
        line: Span::of(buf, line),
        keep_alive: minor == 1,
        content_length: 0,
        if_match: None,
        if_none_match: None,
        if_modified_since: None,
        if_unmodified_since: None,
        range: None,
        if_range: None,
        referer: None,
        user_agent: None,
        expect_continue: false,
        chunked: false,
        len: n,
    };
    let mut hosts = 0;
    let mut transfer_encoding = false;
    // Codings named over every Transfer-Encoding field: chunked ones, and any other.
    let (mut chunked, mut other_coding) = (0, false);
    let mut content_length: Option<u64> = None;
    let (mut close, mut keep_alive) = (false, false);
    for f in req.headers.iter() {
        let name = f.name.as_bytes();
        let value = f.value;
        let span = Some(Span::of(buf, value));
        let is = |n: &str| name.eq_ignore_ascii_case(n.as_bytes());
        if is("host") {
            hosts += 1;
            if !valid_host(value) {
                return Err(reject(400));
            }
        } else if is("connection") {
            for token in value.split(|&b| b == b',') {
                let t = token.trim_ascii();
                close |= t.eq_ignore_ascii_case(b"close");
                keep_alive |= t.eq_ignore_ascii_case(b"keep-alive");
            }
        } else if is("content-length") {
            let v = parse_length(value).ok_or(reject(400))?;
            if content_length.is_some_and(|c| c != v) {
                return Err(reject(400));
            }
            content_length = Some(v);
        } else if is("transfer-encoding") {
            transfer_encoding = true;
            for coding in value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                if coding.eq_ignore_ascii_case(b"chunked") {
                    chunked += 1;
                } else if !coding.is_empty() {
                    other_coding = true;
                }
            }
        } else if is("if-match") {
            head.if_match = span;
        } else if is("if-none-match") {
            head.if_none_match = span;
        } else if is("if-modified-since") {
            head.if_modified_since = span;
        } else if is("if-unmodified-since") {
            head.if_unmodified_since = span;
        } else if is("range") {
            head.range = span;
        } else if is("if-range") {
            head.if_range = span;
        } else if is("referer") {
            head.referer = span;
        } else if is("user-agent") {
            head.user_agent = span;
        } else if is("expect") {
            head.expect_continue |= value.trim_ascii().eq_ignore_ascii_case(b"100-continue");
        }
    }
    if transfer_encoding {
        if content_length.is_some() {
            return Err(reject(400));
        }
        if other_coding {
            return Err(reject(501));
        }
        // Chunked once, as the only coding; applied twice (or named without a value) the
        // body cannot be framed.
        if chunked != 1 {
            return Err(reject(400));
        }
        head.chunked = true;
    }
    if minor == 1 && hosts != 1 || hosts > 1 {
        return Err(reject(400));
    }
    head.method = match method {
        "GET" => Method::Get,
        "HEAD" => Method::Head,
        _ => return Err(reject(405)),
    };
    head.content_length = content_length.unwrap_or(0);
    head.keep_alive = if minor == 1 {
        !close
    } else {
        keep_alive && !close
    };
    Ok(Parsed::Complete(head))
}

/// `httparse` refused the version. `HTTP/1.x` with a later minor version is processed as
/// HTTP/1.1 (RFC 9110 §2.5: a recipient treats it as the highest minor version it implements):
/// the head is parsed again from a copy that says `HTTP/1.1` — same length, so every span is
/// the same offset into the original buffer, and the log keeps the line as sent. Another major
/// version is 505; anything else is not a version at all (400).
fn later_minor_version(buf: &[u8], limits: &Limits) -> Result<Parsed, Reject> {
    let start = empty_lines(buf);
    let line_end = buf[start..].iter().position(|&b| b == b'\n');
    let line = &buf[start..start + line_end.unwrap_or(buf.len() - start)];
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let Some(sp) = line.iter().rposition(|&b| b == b' ') else {
        return Err(reject(400));
    };
    let sp = start + sp;
    let version = &buf[sp + 1..start + line.len()];
    match version {
        // (1.0 and 1.1 parse; anything here that looks like them is malformed elsewhere.)
        [b'H', b'T', b'T', b'P', b'/', b'1', b'.', d] if (b'2'..=b'9').contains(d) => {
            let mut copy = buf.to_vec();
            copy[sp + 1 + 7] = b'1';
            // The copy now parses; its spans are offsets, valid in `buf` too.
            parse(&copy, limits)
        }
        [b'H', b'T', b'T', b'P', b'/', m, b'.', d]
            if m.is_ascii_digit() && *m != b'1' && d.is_ascii_digit() =>
        {
            Err(reject(505))
        }
        // No line end yet: more may come.
        _ if line_end.is_none() => Ok(Parsed::Partial),
        _ => Err(reject(400)),
    }
}

/// RFC 9112 §3.2 / RFC 3986 §3.2.2: `uri-host [ ":" port ]` — an IP literal in brackets, or a
/// reg-name / IPv4 address (unreserved, sub-delims, pct-encoded), then an optional port of
/// digits. Empty is allowed (a target without an authority).
fn valid_host(v: &[u8]) -> bool {
    let v = v.trim_ascii();
    let (host, port) = if let Some(rest) = v.strip_prefix(b"[") {
        let Some(end) = rest.iter().position(|&b| b == b']') else {
            return false;
        };
        let literal = &rest[..end];
        // IPv6address (hex digits, `:`, `.`), or IPvFuture: `v` HEXDIG "." then
        // unreserved / sub-delims / `:`.
        let future = matches!(literal.first(), Some(b'v' | b'V'));
        let ok = !literal.is_empty()
            && literal.iter().all(|&b| {
                b.is_ascii_hexdigit()
                    || matches!(b, b':' | b'.')
                    || future
                        && (crate::path::unreserved_or_sub_delim(b) || matches!(b, b'v' | b'V'))
            });
        if !ok {
            return false;
        }
        (&[][..], &rest[end + 1..])
    } else {
        match v.iter().position(|&b| b == b':') {
            Some(i) => (&v[..i], &v[i..]),
            None => (v, &[][..]),
        }
    };
    let port_ok = match port {
        [] => true,
        [b':', digits @ ..] => digits.iter().all(u8::is_ascii_digit),
        _ => false,
    };
    let mut i = 0;
    while i < host.len() {
        let b = host[i];
        let ok = crate::path::unreserved_or_sub_delim(b);
        if b == b'%' {
            if !(i + 2 < host.len()
                && host[i + 1].is_ascii_hexdigit()
                && host[i + 2].is_ascii_hexdigit())
            {
                return false;
            }
            i += 3;
            continue;
        }
        if !ok {
            return false;
        }
        i += 1;
    }
    port_ok
}

/// What the access log needs of a request that was refused before (or instead of) a parsed
/// [`Head`]: its first line and its `Referer` and `User-Agent` fields, found by a plain scan
/// of the bytes received (at most `max_line` bytes of the line; only the head's lines).
pub(crate) fn reject_fields(buf: &[u8], max_line: usize) -> (Span, Option<Span>, Option<Span>) {
    // Spans are into the whole buffer; the scan starts after any empty lines.
    let whole = buf;
    let buf = &buf[empty_lines(buf)..];
    let end = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(buf.len(), |i| i + 2);
    let mut lines = buf[..end].split(|&b| b == b'\n');
    let first = lines.next().unwrap_or_default();
    let first = first.strip_suffix(b"\r").unwrap_or(first);
    let line = Span::of(whole, &first[..first.len().min(max_line)]);
    let (mut referer, mut user_agent) = (None, None);
    for l in lines {
        let l = l.strip_suffix(b"\r").unwrap_or(l);
        let Some(colon) = l.iter().position(|&b| b == b':') else {
            continue;
        };
        let (name, value) = (&l[..colon], l[colon + 1..].trim_ascii());
        if name.eq_ignore_ascii_case(b"referer") {
            referer = Some(Span::of(whole, value));
        } else if name.eq_ignore_ascii_case(b"user-agent") {
            user_agent = Some(Span::of(whole, value));
        }
    }
    (line, referer, user_agent)
}

/// `1*DIGIT`, no sign, no spaces inside, no overflow.
fn parse_length(v: &[u8]) -> Option<u64> {
    let v = v.trim_ascii();
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The server's defaults (`ServerConfig::default().limits()`, checked below).
    fn limits() -> Limits {
        Limits {
            request_line_bytes: 8 << 10,
            header_bytes: 32 << 10,
            header_fields: 100,
            discard_body_bytes: 64 << 10,
        }
    }

    fn ok(raw: &str) -> Head {
        match parse(raw.as_bytes(), &limits()) {
            Ok(Parsed::Complete(h)) => h,
            other => panic!("{raw:?}: {other:?}"),
        }
    }

    fn status(raw: &str) -> u16 {
        match parse(raw.as_bytes(), &limits()) {
            Err(r) => r.status,
            other => panic!("{raw:?}: {other:?}"),
        }
    }

    #[test]
    fn table() {
        let raw = "GET /a?b HTTP/1.1\r\nHost: x\r\nRange: bytes=0-1\r\n\r\n";
        let h = ok(raw);
        assert_eq!(h.method, Method::Get);
        assert_eq!(h.target.get(raw.as_bytes()), b"/a?b");
        assert_eq!(h.line.get(raw.as_bytes()), b"GET /a?b HTTP/1.1");
        assert_eq!(h.range.unwrap().get(raw.as_bytes()), b"bytes=0-1");
        assert!(h.keep_alive);
        assert_eq!(h.len, raw.len());

        assert!(!ok("GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").keep_alive);
        assert!(!ok("GET / HTTP/1.0\r\n\r\n").keep_alive);
        assert!(ok("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n").keep_alive);
        assert_eq!(ok("HEAD / HTTP/1.0\r\n\r\n").method, Method::Head);
        assert_eq!(
            ok("GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n").content_length,
            5
        );
        assert_eq!(
            parse(b"GET / HTTP/1.1\r\nHost: x\r\n", &limits()),
            Ok(Parsed::Partial)
        );

        assert_eq!(status("GET / HTTP/1.1\r\n\r\n"), 400, "no Host");
        assert_eq!(status("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"), 400);
        assert_eq!(status("POST / HTTP/1.1\r\nHost: x\r\n\r\n"), 405);
        assert_eq!(status("BREW / HTTP/1.1\r\nHost: x\r\n\r\n"), 405);
        assert!(ok("GET / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n").chunked);
        assert_eq!(
            status("GET / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"),
            501
        );
        assert_eq!(
            status("GET / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, chunked\r\n\r\n"),
            400
        );
        assert_eq!(
            status("GET / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n"),
            400
        );
        assert_eq!(
            status("GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"),
            400
        );
        assert_eq!(
            status("GET / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n"),
            400
        );
        assert_eq!(
            status("GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1 2\r\n\r\n"),
            400
        );
        assert_eq!(status("GET / HTTP/2.0\r\nHost: x\r\n\r\n"), 505);
        assert_eq!(status("GET /\0 HTTP/1.1\r\n\r\n"), 400);
        assert_eq!(status("\x01\x02garbage\r\n\r\n"), 400);
    }

    #[test]
    fn host_values_are_uri_host_and_port() {
        for good in [
            "x",
            "example.com",
            "example.com:8080",
            "127.0.0.1:80",
            "[::1]",
            "[::1]:8080",
            "[v1.fe80::a+en1]",
            "a-b_c~d.e%41",
            "",
        ] {
            let raw = format!("GET / HTTP/1.1\r\nHost: {good}\r\n\r\n");
            assert!(
                matches!(parse(raw.as_bytes(), &limits()), Ok(Parsed::Complete(_))),
                "{good:?}"
            );
        }
        for bad in [
            "bad host name",
            "a/b",
            "x:8o",
            "[::1",
            "[::1]x",
            "a@b",
            "%zz",
            "x:80:81",
            "[]",
        ] {
            let raw = format!("GET / HTTP/1.1\r\nHost: {bad}\r\n\r\n");
            assert_eq!(status(&raw), 400, "{bad:?}");
        }
        // HTTP/1.0 without Host is fine; with a bad one it is not.
        assert_eq!(status("GET / HTTP/1.0\r\nHost: a b\r\n\r\n"), 400);
    }

    #[test]
    fn a_later_minor_version_is_http_1_1_and_another_major_is_505() {
        let raw = "GET /a HTTP/1.2\r\nHost: x\r\nRange: bytes=0-1\r\n\r\n";
        let h = ok(raw);
        assert_eq!(h.minor, 1);
        assert!(h.keep_alive);
        // Spans are into the original bytes: the log shows the line as sent.
        assert_eq!(h.line.get(raw.as_bytes()), b"GET /a HTTP/1.2");
        assert_eq!(h.range.unwrap().get(raw.as_bytes()), b"bytes=0-1");
        assert_eq!(ok("GET / HTTP/1.9\r\nHost: x\r\n\r\n").minor, 1);
        assert_eq!(
            status("GET / HTTP/1.2\r\n\r\n"),
            400,
            "as 1.1: Host is required"
        );
        assert_eq!(
            parse(b"GET / HTTP/1.3\r\nHost: x\r\n", &limits()),
            Ok(Parsed::Partial)
        );
        assert_eq!(status("GET / HTTP/3.0\r\nHost: x\r\n\r\n"), 505);
        assert_eq!(status("GET / HTTP/0.9\r\nHost: x\r\n\r\n"), 505);
        assert_eq!(status("GET / HTTP/1.10\r\nHost: x\r\n\r\n"), 400);
        assert_eq!(status("GET / HTTQ/1.1\r\nHost: x\r\n\r\n"), 400);
    }

    /// A long head in pieces is parsed once per line, not once per piece; a short one (and
    /// anything passing a limit) every time.
    #[test]
    fn a_long_head_is_parsed_once_per_line() {
        let l = limits();
        let mut head = b"GET / HTTP/1.1\r\nHost: x\r\nX-Long: ".to_vec();
        head.resize(3000, b'v');
        head.extend_from_slice(b"\r\nX-B: 1\r\n\r\n");
        let mut parses = 0;
        for end in 1..=head.len() {
            // Fed one byte at a time, with `scanned` as the connection keeps it.
            if worth_parsing(&head[..end], end - 1, &l) {
                parses += 1;
            }
        }
        // 1,024 while short, then one per line end: X-Long's, X-B's and the blank line's.
        assert_eq!(parses, 1024 + 3);
        assert!(worth_parsing(b"\x16\x03\x01\x00", 0, &l), "short: at once");
        assert!(!worth_parsing(&vec![b'a'; l.request_line_bytes], 1024, &l));
        assert!(
            worth_parsing(&vec![b'a'; l.request_line_bytes + 2], 8000, &l),
            "414 due"
        );
        let mut long = b"GET / HTTP/1.1\r\n".to_vec();
        long.resize(l.header_bytes + 1, b'x');
        assert!(worth_parsing(&long, long.len() - 1, &l), "431 due");
    }

    /// Found by the `conn` fuzz target: empty lines before a request line (which httparse
    /// skips) made the logged request line empty.
    #[test]
    fn empty_lines_before_the_request_line_are_skipped_and_not_logged() {
        let raw = "\r\n\n\r\nHEAD /a HTTP/1.1\r\nHost: x\r\n\r\n";
        let h = ok(raw);
        assert_eq!(h.method, Method::Head);
        assert_eq!(h.line.get(raw.as_bytes()), b"HEAD /a HTTP/1.1");
        let raw = "\n\nGET /a HTTP/1.4\r\nHost: x\r\n\r\n";
        assert_eq!(ok(raw).line.get(raw.as_bytes()), b"GET /a HTTP/1.4");
        assert_eq!(status("\r\n\r\nGET / HTTP/3.0\r\nHost: x\r\n\r\n"), 505);
        let raw = b"\r\nPOST /f HTTP/1.1\r\nUser-Agent: u\r\n\r\n";
        let (line, _, ua) = reject_fields(raw, 100);
        assert_eq!(line.get(raw), b"POST /f HTTP/1.1");
        assert_eq!(ua.unwrap().get(raw), b"u");
    }

    proptest::proptest! {
        /// A head fed in any two pieces parses as if whole: `Partial` before the end, the same
        /// `Head` after (what a slow client or a split TCP segment does).
        #[test]
        fn any_split_parses_as_whole(
            path in "/[a-z0-9./%-]{0,40}",
            extra in proptest::collection::vec(("[A-Za-z-]{1,12}", "[ -~]{0,30}"), 0..6),
            cut in 0usize..400,
        ) {
            let mut raw = format!("GET {path} HTTP/1.1\r\nHost: h\r\n");
            for (n, v) in &extra {
                raw.push_str(&format!("X-{n}: {}\r\n", v.trim()));
            }
            raw.push_str("\r\n");
            let whole = parse(raw.as_bytes(), &limits());
            let cut = cut % raw.len();
            let first = parse(&raw.as_bytes()[..cut], &limits());
            // A prefix is incomplete, or already refused for the same reason as the whole.
            match (&first, &whole) {
                (Ok(Parsed::Partial), _) => {}
                (Err(a), Err(b)) => proptest::prop_assert_eq!(a, b),
                other => proptest::prop_assert!(false, "prefix {cut}: {other:?}"),
            }
            proptest::prop_assert_eq!(parse(raw.as_bytes(), &limits()), whole);
        }

        /// Arbitrary bytes never panic the parser.
        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(proptest::num::u8::ANY, 0..600)) {
            let _ = parse(&data, &limits());
        }
    }

    #[test]
    fn limits_apply() {
        let long_line = format!("GET /{} HTTP/1.1\r\n", "a".repeat(9000));
        assert_eq!(status(&long_line), 414, "even before the head ends");
        // Where the line ends is found from the target's end in a complete head, and by a scan
        // in anything else: both ways give the same answers at the limit (which counts the
        // line's CR: a line of 8,191 characters is the longest).
        let at = |len: usize, rest: &str| {
            let target = format!("/{}", "a".repeat(len - "GET  HTTP/1.1".len() - 1));
            format!("GET {target} HTTP/1.1\r\n{rest}")
        };
        let longest = (8 << 10) - 1;
        assert_eq!(
            ok(&at(longest, "Host: x\r\n\r\n")).line.len as usize,
            longest
        );
        assert_eq!(
            status(&at(longest + 1, "Host: x\r\n\r\n")),
            414,
            "complete, one over"
        );
        assert_eq!(
            parse(at(longest, "Host: x\r\n").as_bytes(), &limits()),
            Ok(Parsed::Partial)
        );
        assert_eq!(
            status(&at(longest + 2, "Host: x\r\n")),
            414,
            "partial, over"
        );
        let bad = format!("GET /{} HTTP/1.1", "\x01".repeat(9000));
        assert_eq!(status(&bad), 414, "too long comes before malformed");
        let many = format!(
            "GET / HTTP/1.1\r\nHost: x\r\n{}\r\n",
            "X-A: b\r\n".repeat(101)
        );
        assert_eq!(status(&many), 431);
        let big = format!(
            "GET / HTTP/1.1\r\nHost: x\r\n{}",
            format!("X-Long: {}\r\n", "v".repeat(4000)).repeat(9)
        );
        assert_eq!(status(&big), 431, "over 32 KiB while still partial");
    }
}
