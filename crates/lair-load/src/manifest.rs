//! Content manifests: what each file of a docroot must look like on the wire.
//!
//! One line per file, `path<TAB>bytes<TAB>crc32`, the CRC-32 (IEEE, as zlib and gzip compute
//! it) as eight hex digits; blank lines and `#` comments are skipped, malformed lines counted
//! and skipped. `lair lab` writes one next to every fileset it makes; [`build`] makes one for
//! any directory, so an operator can check that their server returns the bytes on disk.

use std::collections::HashMap;
use std::io::{self, Read};
use std::path::Path;

/// What a 200 answer must be.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Expect {
    /// Body length.
    pub bytes: Option<u64>,
    /// CRC-32 of the body.
    pub crc32: Option<u32>,
}

/// Expected content by request path.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Manifest {
    /// Path (as requested, starting with `/`) → what its 200 answer must be.
    pub files: HashMap<String, Expect>,
    /// Lines skipped as malformed.
    pub malformed: u64,
}

impl Manifest {
    /// Parse a manifest's text.
    pub fn parse(text: &str) -> Manifest {
        let mut m = Manifest::default();
        for line in text.lines() {
            let line = line.trim_end_matches('\r');
            if line.trim().is_empty() || line.starts_with('#') {
                continue;
            }
            let mut f = line.split('\t');
            let parsed = match (f.next(), f.next(), f.next(), f.next()) {
                (Some(path), Some(bytes), Some(crc), None) if crate::trace::valid_path(path) => {
                    match (bytes.parse::<u64>(), u32::from_str_radix(crc, 16)) {
                        (Ok(b), Ok(c)) if crc.len() == 8 => Some((path, b, c)),
                        _ => None,
                    }
                }
                _ => None,
            };
            match parsed {
                Some((path, bytes, crc)) => {
                    m.files.insert(
                        path.to_string(),
                        Expect {
                            bytes: Some(bytes),
                            crc32: Some(crc),
                        },
                    );
                }
                None => m.malformed += 1,
            }
        }
        m
    }

    /// The manifest's text, sorted by path.
    pub fn render(&self) -> String {
        let mut rows: Vec<_> = self.files.iter().collect();
        rows.sort_by(|a, b| a.0.cmp(b.0));
        let mut out = String::new();
        for (path, e) in rows {
            if let (Some(b), Some(c)) = (e.bytes, e.crc32) {
                out.push_str(&format!("{path}\t{b}\t{c:08x}\n"));
            }
        }
        out
    }
}

/// CRC-32 and length of a file's content.
pub fn digest_file(path: &Path) -> io::Result<Expect> {
    let mut f = std::fs::File::open(path)?;
    let mut h = crc32fast::Hasher::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut len = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        len += n as u64;
    }
    Ok(Expect {
        bytes: Some(len),
        crc32: Some(h.finalize()),
    })
}

/// A manifest of every regular file under `root` (symbolic links not followed; names that are
/// not valid request paths, e.g. with spaces, left out).
pub fn build(root: &Path) -> io::Result<Manifest> {
    let mut m = Manifest::default();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            let ty = entry.file_type()?;
            let p = entry.path();
            if ty.is_dir() {
                stack.push(p);
            } else if ty.is_file() {
                let rel = p.strip_prefix(root).map_err(io::Error::other)?;
                let Some(rel) = rel.to_str() else { continue };
                let path = format!("/{rel}");
                if crate::trace::valid_path(&path) {
                    m.files.insert(path, digest_file(&p)?);
                }
            }
        }
    }
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_bad_lines() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("d")).unwrap();
        std::fs::write(dir.path().join("d/a.txt"), b"hello").unwrap();
        std::fs::write(dir.path().join("b"), b"").unwrap();
        let m = build(dir.path()).unwrap();
        // crc32("hello") = 3610a686, as zlib computes it.
        assert_eq!(
            m.render(),
            "/b\t0\t00000000\n/d/a.txt\t5\t3610a686\n",
            "{m:?}"
        );
        let text = format!("{}# c\n/x\t1\n/y\t1\tzz\n/z\tq\t00000000\n", m.render());
        let back = Manifest::parse(&text);
        assert_eq!(back.files, m.files);
        assert_eq!(back.malformed, 3);
    }
}
