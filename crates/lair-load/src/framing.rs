//! Reading a response head as the load generator does: status, how its body is delimited,
//! whether the server will close — or why the framing is bad.
//!
//! Why its own module: it reads bytes from whatever server is measured (the server under test
//! may be broken, and the lab points it at nginx and lighttpd too), so it is a parser of
//! untrusted input with its own fuzz target (`fuzz/fuzz_targets/response.rs`). What it refuses
//! counts as a framing error in the run's tally, never a panic or a guess.

/// Most bytes a response head may take.
pub const MAX_HEAD: usize = 64 * 1024;

/// What the bytes received so far say.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Head {
    /// Not a whole head yet (and not over [`MAX_HEAD`]).
    Partial,
    /// Not a response this client can frame: a malformed head, a bad or repeated
    /// `Content-Length`, a `Transfer-Encoding` (the client never asks for one), a head over
    /// [`MAX_HEAD`].
    Bad,
    /// A whole head.
    Complete {
        /// Bytes of the head, its blank line included.
        len: usize,
        /// The status code.
        status: u16,
        /// Body bytes that follow the head: `None` when the body runs until the close.
        body: Option<u64>,
        /// The server said `Connection: close`.
        close: bool,
    },
}

/// Parse the start of `buf` as a response head (the answer to a GET; a HEAD's would need
/// the request's method).
pub fn parse_head(buf: &[u8]) -> Head {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut headers);
    let len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() <= MAX_HEAD => return Head::Partial,
        _ => return Head::Bad,
    };
    if len > MAX_HEAD {
        return Head::Bad;
    }
    let status = resp.code.unwrap_or(0);
    let mut length: Option<u64> = None;
    let mut close = false;
    for h in resp.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            let v = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok());
            match (v, length) {
                (Some(v), None) => length = Some(v),
                (Some(v), Some(was)) if v == was => {}
                _ => return Head::Bad,
            }
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            return Head::Bad;
        } else if h.name.eq_ignore_ascii_case("connection") {
            close |= h
                .value
                .split(|&b| b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"));
        }
    }
    let no_body = status == 304 || status == 204 || status / 100 == 1;
    Head::Complete {
        len,
        status,
        body: if no_body { Some(0) } else { length },
        close,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_good_and_bad() {
        let ok =
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: keep-alive, close\r\n\r\nhello";
        assert_eq!(
            parse_head(ok),
            Head::Complete {
                len: ok.len() - 5,
                status: 200,
                body: Some(5),
                close: true
            }
        );
        assert_eq!(parse_head(&ok[..20]), Head::Partial);
        assert_eq!(
            parse_head(b"HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n"),
            Head::Complete {
                len: 48,
                status: 304,
                body: Some(0),
                close: false
            }
        );
        for bad in [
            &b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"garbage\r\n\r\n",
        ] {
            assert_eq!(
                parse_head(bad),
                Head::Bad,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(parse_head(&vec![b'a'; MAX_HEAD + 1]), Head::Bad);
    }
}
