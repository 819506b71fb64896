//! Request traces: what to ask for, in which order, and how big each answer must be.
//!
//! Two formats, one request per line: the shared traces' `t_ms<TAB>path<TAB>bytes` (time
//! order, file size of a 200 answer) and a plain `path` per line. Blank lines and `#` comments
//! are skipped; a malformed line (not a path starting with `/`, a bad number, a control
//! character) is counted and skipped, never fatal, so an operator's own log extracts replay
//! even when a few lines are broken.

/// One request of a trace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceRequest {
    /// Milliseconds after the first request (0 for plain path lists).
    pub t_ms: u64,
    /// The request path.
    pub path: String,
    /// Size of a 200 answer's body, if the trace knows it.
    pub bytes: Option<u64>,
}

/// A parsed trace.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Trace {
    /// The requests, in order.
    pub requests: Vec<TraceRequest>,
    /// Lines skipped as malformed.
    pub malformed: u64,
}

pub(crate) fn valid_path(p: &str) -> bool {
    p.starts_with('/') && !p.bytes().any(|b| b.is_ascii_control() || b == b' ')
}

/// Parse a trace from text.
pub fn parse(text: &str) -> Trace {
    let mut t = Trace::default();
    for line in text.lines() {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = line.split('\t').collect();
        let req = match fields.as_slice() {
            [path] if valid_path(path) => Some(TraceRequest {
                t_ms: 0,
                path: path.to_string(),
                bytes: None,
            }),
            [t_ms, path, bytes] if valid_path(path) => {
                match (t_ms.parse::<u64>(), bytes.parse::<u64>()) {
                    (Ok(t_ms), Ok(bytes)) => Some(TraceRequest {
                        t_ms,
                        path: path.to_string(),
                        bytes: Some(bytes),
                    }),
                    _ => None,
                }
            }
            _ => None,
        };
        match req {
            Some(r) => t.requests.push(r),
            None => t.malformed += 1,
        }
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_formats_and_bad_lines() {
        let t = parse(
            "0\t/a.gif\t1713\n4000\t/b/c.html\t8677\n# comment\n\n\
             x\t/bad-time\t1\n5\tno-slash\t1\n6\t/bad-size\t-1\n/plain\n/has space\n7\t/x\n",
        );
        assert_eq!(t.requests.len(), 3);
        assert_eq!(
            t.requests[1],
            TraceRequest {
                t_ms: 4000,
                path: "/b/c.html".into(),
                bytes: Some(8677)
            }
        );
        assert_eq!(
            t.requests[2],
            TraceRequest {
                t_ms: 0,
                path: "/plain".into(),
                bytes: None
            }
        );
        assert_eq!(t.malformed, 5);
    }
}
