//! From a request target to a path relative to the document root, or a refusal.
//!
//! Why: this is the first of two walls between a URL and the rest of the file system. It
//! percent-decodes strictly (a bad escape, a NUL, an encoded `/` or `\` inside a segment is
//! refused), resolves `.` and `..` (a `..` above the root is refused, not clamped), collapses
//! empty segments, and hides dotfiles. The second wall is the open itself:
//! `openat2(RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)` in lair-io, which no symlink escapes.
//!
//! A consequence: a file whose name contains `\` cannot be requested (its only spelling in a
//! URL is `%5C`, refused), nor can one whose name contains `/` (impossible on Linux anyway).
//!
//! Pure functions, no I/O.

/// Why a target was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PathError {
    /// Not origin-form (`/...`) nor absolute-form (`http://host/...`): 400.
    NotOrigin,
    /// A `%` not followed by two hex digits: 400.
    BadEscape,
    /// A decoded NUL byte: 400.
    Nul,
    /// `%2F` or `%5C` inside a segment: 404 (it would change the segment structure; no file
    /// has such a name — Apache's default, `AllowEncodedSlashes Off`, answers the same).
    EncodedSeparator,
    /// A `..` that climbs above the root: 400.
    AboveRoot,
    /// A segment starting with `.` while dotfiles are hidden: 404.
    Dotfile,
}

/// A target that may be served.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolved {
    /// Decoded, normalised, relative to the root, no leading or trailing `/`; empty is the
    /// root itself. Never contains NUL, `.` or `..` segments, or empty segments.
    pub rel: Vec<u8>,
    /// The target's path ended with `/` (or with a `.`/`..` segment).
    pub trailing_slash: bool,
}

/// The path and query of a request target: `("/a/b", Some("x=1"))`. Absolute-form targets
/// (`http://host/p`) give their path. A fragment (not allowed in requests) ends the path.
pub fn split_target(target: &[u8]) -> Result<(&[u8], Option<&[u8]>), PathError> {
    let rest = if target.first() == Some(&b'/') {
        target
    } else if let Some(after) = strip_scheme(target) {
        match after.iter().position(|&b| b == b'/' || b == b'?') {
            Some(i) if after[i] == b'/' => &after[i..],
            // `http://host` or `http://host?q`: the path is `/`.
            _ => b"/",
        }
    } else {
        return Err(PathError::NotOrigin);
    };
    let end = rest.iter().position(|&b| b == b'#').unwrap_or(rest.len());
    let rest = &rest[..end];
    Ok(match rest.iter().position(|&b| b == b'?') {
        Some(q) => (&rest[..q], Some(&rest[q + 1..])),
        None => (rest, None),
    })
}

fn strip_scheme(t: &[u8]) -> Option<&[u8]> {
    for scheme in [&b"http://"[..], b"https://"] {
        if t.len() > scheme.len() && t[..scheme.len()].eq_ignore_ascii_case(scheme) {
            return Some(&t[scheme.len()..]);
        }
    }
    None
}

/// Resolve the path part of a target (starting with `/`).
pub fn resolve(path: &[u8], allow_dotfiles: bool) -> Result<Resolved, PathError> {
    let mut rel = Vec::with_capacity(path.len());
    let trailing_slash = resolve_into(path, allow_dotfiles, &mut rel)?;
    Ok(Resolved {
        rel,
        trailing_slash,
    })
}

/// [`resolve`] into a caller's buffer (cleared first), without allocating when it has room;
/// returns whether the target ended with `/`. On error the buffer's contents are unspecified.
pub fn resolve_into(
    path: &[u8],
    allow_dotfiles: bool,
    rel: &mut Vec<u8>,
) -> Result<bool, PathError> {
    rel.clear();
    if path.first() != Some(&b'/') {
        return Err(PathError::NotOrigin);
    }
    let mut trailing_slash = false;
    for raw in path[1..].split(|&b| b == b'/') {
        // Decode the segment in place at the end of `rel`, then keep, drop or pop.
        let before = rel.len();
        if before > 0 {
            rel.push(b'/');
        }
        let start = rel.len();
        decode_segment(raw, rel)?;
        trailing_slash = true;
        match &rel[start..] {
            b"" | b"." => rel.truncate(before),
            b".." => {
                if before == 0 {
                    return Err(PathError::AboveRoot);
                }
                // Segments never contain `/` (an encoded one is refused), so the last `/`
                // before this segment starts the one to pop.
                let prev = rel[..before].iter().rposition(|&b| b == b'/').unwrap_or(0);
                rel.truncate(prev);
            }
            seg => {
                if seg[0] == b'.' && !allow_dotfiles && seg != b".well-known" {
                    return Err(PathError::Dotfile);
                }
                trailing_slash = false;
            }
        }
    }
    Ok(trailing_slash)
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Percent-decode `raw`, appending to `out`.
fn decode_segment(raw: &[u8], out: &mut Vec<u8>) -> Result<(), PathError> {
    let mut i = 0;
    while i < raw.len() {
        let b = raw[i];
        if b == b'%' {
            let (Some(h), Some(l)) = (
                raw.get(i + 1).copied().and_then(hex),
                raw.get(i + 2).copied().and_then(hex),
            ) else {
                return Err(PathError::BadEscape);
            };
            let d = h << 4 | l;
            match d {
                0 => return Err(PathError::Nul),
                b'/' | b'\\' => return Err(PathError::EncodedSeparator),
                _ => out.push(d),
            }
            i += 3;
        } else {
            if b == 0 {
                return Err(PathError::Nul);
            }
            out.push(b);
            i += 1;
        }
    }
    Ok(())
}

/// Percent-encode a decoded path for a `Location` header: unreserved characters and the
/// sub-delimiters RFC 3986 allows in a path stay as they are, `/` separates, the rest is
/// escaped.
pub fn encode_path(rel: &[u8], out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in rel {
        let keep = unreserved_or_sub_delim(b) || matches!(b, b'/' | b':' | b'@');
        if keep {
            out.push(b);
        } else {
            out.extend_from_slice(&[b'%', HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]]);
        }
    }
}

/// RFC 3986's unreserved characters and sub-delims: what a path segment (with `:` and `@`)
/// and a host's reg-name (with `%XX`) hold unescaped.
pub(crate) fn unreserved_or_sub_delim(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'-' | b'.'
                | b'_'
                | b'~'
                | b'!'
                | b'$'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'*'
                | b'+'
                | b','
                | b';'
                | b'='
        )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ok(p: &str) -> (String, bool) {
        let r = resolve(p.as_bytes(), false).unwrap();
        (String::from_utf8(r.rel).unwrap(), r.trailing_slash)
    }

    #[test]
    fn table() {
        assert_eq!(ok("/"), ("".into(), true));
        assert_eq!(ok("/a/b.html"), ("a/b.html".into(), false));
        assert_eq!(ok("/a//b/"), ("a/b".into(), true));
        assert_eq!(ok("/a/./b/../c"), ("a/c".into(), false));
        assert_eq!(ok("/a/b/.."), ("a".into(), true));
        assert_eq!(ok("/a%20b"), ("a b".into(), false));
        assert_eq!(ok("/%7Euser"), ("~user".into(), false));
        assert_eq!(ok("/a/%2e%2e/b"), ("b".into(), false));
        assert_eq!(ok("/.well-known/x"), (".well-known/x".into(), false));
        let e = |p: &str| resolve(p.as_bytes(), false).unwrap_err();
        assert_eq!(e("/.."), PathError::AboveRoot);
        assert_eq!(e("/a/../../etc/passwd"), PathError::AboveRoot);
        assert_eq!(e("/%2e%2e/etc"), PathError::AboveRoot);
        assert_eq!(e("/a%2fb"), PathError::EncodedSeparator);
        assert_eq!(e("/a%5Cb"), PathError::EncodedSeparator);
        assert_eq!(e("/a%00"), PathError::Nul);
        assert_eq!(e("/a%zz"), PathError::BadEscape);
        assert_eq!(e("/a%2"), PathError::BadEscape);
        assert_eq!(e("/.git/config"), PathError::Dotfile);
        assert_eq!(e("/a/.env"), PathError::Dotfile);
        assert_eq!(e("a"), PathError::NotOrigin);
        assert_eq!(
            resolve(b"/.env", true).unwrap().rel,
            b".env".to_vec(),
            "dotfiles can be enabled"
        );
    }

    #[test]
    fn targets() {
        assert_eq!(
            split_target(b"/a?x=1").unwrap(),
            (&b"/a"[..], Some(&b"x=1"[..]))
        );
        assert_eq!(split_target(b"/a#f").unwrap(), (&b"/a"[..], None));
        assert_eq!(
            split_target(b"http://h:80/p/q?z").unwrap(),
            (&b"/p/q"[..], Some(&b"z"[..]))
        );
        assert_eq!(split_target(b"HTTP://h").unwrap(), (&b"/"[..], None));
        assert_eq!(split_target(b"*").unwrap_err(), PathError::NotOrigin);
        assert_eq!(split_target(b"h/p").unwrap_err(), PathError::NotOrigin);
    }

    #[test]
    fn encoding_round_trips() {
        let mut out = Vec::new();
        encode_path(b"a b/\xff%?#", &mut out);
        assert_eq!(out, b"a%20b/%FF%25%3F%23");
        let back = resolve(&[b"/", out.as_slice()].concat(), false).unwrap();
        assert_eq!(back.rel, b"a b/\xff%?#");
    }

    proptest! {
        /// Whatever the target, the result stays beneath the root: no `..`, `.` or empty
        /// segment, no leading `/`, no NUL — so `openat2` sees only downward names.
        #[test]
        fn never_escapes(segs in proptest::collection::vec(
            prop_oneof![
                Just("..".to_string()), Just(".".to_string()), Just("".to_string()),
                Just("%2e%2e".to_string()), Just("%2E.".to_string()), Just("%00".to_string()),
                Just("%2f".to_string()), "[a-z.%0-9]{1,6}", "\\PC{0,4}",
            ], 0..10)) {
            let target = format!("/{}", segs.join("/"));
            if let Ok(r) = resolve(target.as_bytes(), true) {
                prop_assert!(!r.rel.starts_with(b"/"));
                prop_assert!(!r.rel.contains(&0));
                for s in r.rel.split(|&b| b == b'/') {
                    prop_assert!(!s.is_empty() || r.rel.is_empty());
                    prop_assert!(s != b".." && s != b".");
                }
            }
        }

        /// Encoding any decoded path and resolving it again gives the same path.
        #[test]
        fn encode_then_resolve(rel in proptest::collection::vec(
            "[^/\\\\\u{0}]{1,8}".prop_filter("not a dot segment", |s| s != "." && s != ".."), 1..5)) {
            let rel = rel.join("/");
            let mut enc = b"/".to_vec();
            encode_path(rel.as_bytes(), &mut enc);
            let r = resolve(&enc, true).unwrap();
            prop_assert_eq!(r.rel, rel.as_bytes().to_vec());
        }
    }
}
