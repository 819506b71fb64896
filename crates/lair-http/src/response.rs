//! Writing response heads and the small bodies lair makes itself (errors, redirects).
//!
//! Why a module: every response goes through the same few functions, so the header set (Date,
//! Server, framing, Connection) is right everywhere. The `Date` value is formatted once per
//! second per worker ([`DateCache`]).

use std::time::{SystemTime, UNIX_EPOCH};

/// The reason phrase of the statuses lair sends.
pub fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        206 => "Partial Content",
        301 => "Moved Permanently",
        304 => "Not Modified",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        412 => "Precondition Failed",
        413 => "Content Too Large",
        414 => "URI Too Long",
        416 => "Range Not Satisfiable",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "Unknown",
    }
}

/// The `Date` header value, reformatted only when the second changes.
#[derive(Debug)]
pub struct DateCache {
    second: u64,
    text: String,
}

impl Default for DateCache {
    fn default() -> Self {
        let mut d = DateCache {
            second: u64::MAX,
            text: String::new(),
        };
        d.refresh(SystemTime::now());
        d
    }
}

impl DateCache {
    /// Bring the cached value up to `now`; returns the Unix second.
    pub fn refresh(&mut self, now: SystemTime) -> u64 {
        let s = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        if s != self.second {
            self.second = s;
            self.text = httpdate::fmt_http_date(now);
        }
        s
    }

    /// The current value (`Sun, 06 Nov 1994 08:49:37 GMT`).
    pub fn text(&self) -> &str {
        &self.text
    }
}

/// What the `Connection` header says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Persistence {
    /// HTTP/1.1 keep-alive: no header needed.
    KeepAlive11,
    /// HTTP/1.0 keep-alive: `Connection: keep-alive`.
    KeepAlive10,
    /// `Connection: close`.
    Close,
}

/// Start a head: status line, `Server`, `Date`.
pub fn start(buf: &mut Vec<u8>, status: u16, date: &str) {
    buf.extend_from_slice(b"HTTP/1.1 ");
    buf.extend_from_slice(itoa::Buffer::new().format(status).as_bytes());
    buf.push(b' ');
    buf.extend_from_slice(reason(status).as_bytes());
    buf.extend_from_slice(b"\r\nServer: lair\r\nDate: ");
    buf.extend_from_slice(date.as_bytes());
    buf.extend_from_slice(b"\r\n");
}

/// One header field.
pub fn field(buf: &mut Vec<u8>, name: &str, value: &[u8]) {
    buf.extend_from_slice(name.as_bytes());
    buf.extend_from_slice(b": ");
    buf.extend_from_slice(value);
    buf.extend_from_slice(b"\r\n");
}

/// `Content-Length`.
pub fn content_length(buf: &mut Vec<u8>, n: u64) {
    buf.extend_from_slice(b"Content-Length: ");
    buf.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
    buf.extend_from_slice(b"\r\n");
}

/// The `Connection` field (if any) and the empty line.
pub fn finish(buf: &mut Vec<u8>, p: Persistence) {
    match p {
        Persistence::KeepAlive11 => {}
        Persistence::KeepAlive10 => buf.extend_from_slice(b"Connection: keep-alive\r\n"),
        Persistence::Close => buf.extend_from_slice(b"Connection: close\r\n"),
    }
    buf.extend_from_slice(b"\r\n");
}

/// A whole response lair makes itself: a small HTML body naming the status (none for HEAD and
/// for 304), plus `extra` fields (`Allow`, `Location`, `Content-Range`). Returns the body size.
pub fn simple(
    buf: &mut Vec<u8>,
    status: u16,
    date: &str,
    p: Persistence,
    head_only: bool,
    extra: &[(&str, &[u8])],
) -> u64 {
    start(buf, status, date);
    for (n, v) in extra {
        field(buf, n, v);
    }
    if status == 304 {
        finish(buf, p);
        return 0;
    }
    let body = format!(
        "<!DOCTYPE html>\n<html><head><title>{status} {r}</title></head>\
         <body><h1>{status} {r}</h1></body></html>\n",
        r = reason(status)
    );
    field(buf, "Content-Type", b"text/html; charset=utf-8");
    content_length(buf, body.len() as u64);
    finish(buf, p);
    if !head_only {
        buf.extend_from_slice(body.as_bytes());
        body.len() as u64
    } else {
        0
    }
}

/// The `Content-Type` of a path, from its extension; text types get `charset=utf-8`.
pub fn content_type(buf: &mut Vec<u8>, rel: &[u8]) {
    let name = std::str::from_utf8(rel).unwrap_or("");
    let mime = mime_guess::from_path(name)
        .first_raw()
        .unwrap_or("application/octet-stream");
    buf.extend_from_slice(b"Content-Type: ");
    buf.extend_from_slice(mime.as_bytes());
    let texty = mime.starts_with("text/")
        || matches!(
            mime,
            "application/javascript" | "application/json" | "application/xml" | "image/svg+xml"
        );
    if texty {
        buf.extend_from_slice(b"; charset=utf-8");
    }
    buf.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn simple_responses() {
        let mut b = Vec::new();
        let n = simple(
            &mut b,
            405,
            "D",
            Persistence::Close,
            false,
            &[("Allow", b"GET, HEAD")],
        );
        let s = String::from_utf8(b).unwrap();
        assert!(s.starts_with(
            "HTTP/1.1 405 Method Not Allowed\r\nServer: lair\r\nDate: D\r\nAllow: GET, HEAD\r\n"
        ));
        assert!(s.contains(&format!(
            "Content-Length: {n}\r\nConnection: close\r\n\r\n<!DOCTYPE"
        )));
        let mut b = Vec::new();
        assert_eq!(
            simple(&mut b, 404, "D", Persistence::KeepAlive11, true, &[]),
            0
        );
        assert!(b.ends_with(b"\r\n\r\n"));
    }

    #[test]
    fn types() {
        let ct = |p: &str| {
            let mut b = Vec::new();
            content_type(&mut b, p.as_bytes());
            String::from_utf8(b).unwrap()
        };
        assert_eq!(
            ct("a/index.html"),
            "Content-Type: text/html; charset=utf-8\r\n"
        );
        assert_eq!(ct("x.png"), "Content-Type: image/png\r\n");
        assert_eq!(
            ct("x.js"),
            "Content-Type: text/javascript; charset=utf-8\r\n"
        );
        assert_eq!(ct("noext"), "Content-Type: application/octet-stream\r\n");
    }

    #[test]
    fn date_is_http_date() {
        let mut d = DateCache::default();
        d.refresh(UNIX_EPOCH + std::time::Duration::from_secs(784111777));
        assert_eq!(d.text(), "Sun, 06 Nov 1994 08:49:37 GMT");
    }
}
