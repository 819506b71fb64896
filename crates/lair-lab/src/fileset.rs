//! Filesets on disk: write a workload's files under a docroot, with a manifest and a trace
//! per client group, and move them out of (or into) the page cache.
//!
//! Layout of a fileset directory (`target/lab-data/NAME-FINGERPRINT/` by default):
//! `root/` (the docroot), `files.tsv`, `manifest.tsv` (path, size, CRC-32: what `lair load
//! --manifest` checks), `GROUP.trace.tsv` per client group, and `complete`, written last. A
//! directory with `complete` is reused as is: the fingerprint covers every path, size and
//! request, so the same workload and seed always land in the same, finished directory.
//!
//! File content is a slice of one pseudo-random megabyte, starting at an offset derived from
//! the path, so files differ from each other (a server that mixed them up fails the content
//! check) and writing a gigabyte costs no more than copying it.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::workload::{Dataset, FileSpec};

/// A fileset written to disk.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Fileset {
    /// The fileset directory.
    pub dir: PathBuf,
    /// The docroot.
    pub root: PathBuf,
    /// `manifest.tsv`.
    pub manifest: PathBuf,
    /// Group name → its `trace.tsv`.
    pub traces: BTreeMap<String, PathBuf>,
    /// Files.
    pub files: usize,
    /// Bytes of all files.
    pub bytes: u64,
}

const PATTERN: usize = 1 << 20;

/// Write the union of the groups' files (deduplicated by path) and each group's trace under
/// `data/NAME-FINGERPRINT/`, or reuse it if already complete.
pub fn materialize(
    data: &Path,
    name: &str,
    groups: &[(String, &Dataset)],
) -> anyhow::Result<Fileset> {
    let mut files: BTreeMap<&str, u64> = BTreeMap::new();
    let mut h = crc32fast::Hasher::new();
    for (g, d) in groups {
        for f in &d.files {
            let size = files.entry(f.path.as_str()).or_insert(f.bytes);
            anyhow::ensure!(
                *size == f.bytes,
                "{}: two sizes ({} and {}) for one path across groups",
                f.path,
                size,
                f.bytes
            );
        }
        h.update(g.as_bytes());
        h.update(d.files_tsv().as_bytes());
        h.update(d.trace_tsv().as_bytes());
    }
    let dir = data.join(format!("{name}-{:08x}", h.finalize()));
    let root = dir.join("root");
    let manifest = dir.join("manifest.tsv");
    let traces: BTreeMap<String, PathBuf> = groups
        .iter()
        .map(|(g, _)| (g.clone(), dir.join(format!("{g}.trace.tsv"))))
        .collect();
    let fileset = Fileset {
        dir: dir.clone(),
        root: root.clone(),
        manifest: manifest.clone(),
        traces: traces.clone(),
        files: files.len(),
        bytes: files.values().sum(),
    };
    if dir.join("complete").exists() {
        return Ok(fileset);
    }
    if dir.exists() {
        // An interrupted earlier attempt: start over.
        std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    std::fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
    let mut pattern = vec![0u8; PATTERN];
    ChaCha8Rng::seed_from_u64(0x1a12).fill_bytes(&mut pattern);
    let mut manifest_text = String::new();
    for (path, &bytes) in &files {
        let file = root.join(path.trim_start_matches('/'));
        if let Some(parent) = file.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        let crc = write_file(&file, path, bytes, &pattern)
            .with_context(|| format!("writing {}", file.display()))?;
        manifest_text.push_str(&format!("{path}\t{bytes}\t{crc:08x}\n"));
    }
    std::fs::write(&manifest, manifest_text)?;
    let all = Dataset {
        files: files
            .iter()
            .map(|(p, b)| FileSpec {
                path: p.to_string(),
                bytes: *b,
            })
            .collect(),
        ..Dataset::default()
    };
    std::fs::write(dir.join("files.tsv"), all.files_tsv())?;
    for (g, d) in groups {
        std::fs::write(&traces[g], d.trace_tsv())?;
    }
    std::fs::write(dir.join("complete"), "")?;
    Ok(fileset)
}

fn write_file(file: &Path, path: &str, bytes: u64, pattern: &[u8]) -> std::io::Result<u32> {
    let mut out = std::io::BufWriter::with_capacity(256 * 1024, std::fs::File::create(file)?);
    let mut crc = crc32fast::Hasher::new();
    let mut at = crc32fast::hash(path.as_bytes()) as usize % PATTERN;
    let mut left = bytes;
    while left > 0 {
        let n = (PATTERN - at).min(usize::try_from(left).unwrap_or(usize::MAX));
        let chunk = &pattern[at..at + n];
        out.write_all(chunk)?;
        crc.update(chunk);
        left -= n as u64;
        at = 0;
    }
    out.flush()?;
    Ok(crc.finalize())
}

/// How much of a set of files is in the page cache.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Residency {
    /// Pages cached.
    pub cached_pages: u64,
    /// Pages in all.
    pub pages: u64,
}

impl Residency {
    /// Cached share, 0–1 (1 for an empty set).
    pub fn fraction(&self) -> f64 {
        if self.pages == 0 {
            1.0
        } else {
            self.cached_pages as f64 / self.pages as f64
        }
    }
}

fn open(path: &Path) -> std::io::Result<OwnedFd> {
    Ok(OwnedFd::from(std::fs::File::open(path)?))
}

/// Page-cache residency of `files` (`cachestat(2)`).
pub fn residency(files: &[PathBuf]) -> std::io::Result<Residency> {
    let mut r = Residency::default();
    for f in files {
        let (c, p) = lair_io::setup::cached_pages(&open(f)?)?;
        r.cached_pages += c;
        r.pages += p;
    }
    Ok(r)
}

/// Move `files` out of the page cache: `fsync` (dirty pages cannot be dropped), then
/// `posix_fadvise(DONTNEED)`; returns the residency afterwards, for the caller to verify.
pub fn drop_cache(files: &[PathBuf]) -> std::io::Result<Residency> {
    for f in files {
        let fd = open(f)?;
        rustix::fs::fsync(&fd)?;
        rustix::fs::fadvise(&fd, 0, None, rustix::fs::Advice::DontNeed)?;
    }
    residency(files)
}

/// Read `files` once so they are in the page cache; returns the residency afterwards.
pub fn warm_cache(files: &[PathBuf]) -> std::io::Result<Residency> {
    let mut buf = vec![0u8; 1 << 20];
    for f in files {
        let mut file = std::fs::File::open(f)?;
        while std::io::Read::read(&mut file, &mut buf)? > 0 {}
    }
    residency(files)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::{generate, Spec};

    #[test]
    fn materialize_matches_manifest_and_is_reused() {
        let data = tempfile::tempdir().unwrap();
        let d = generate(
            &Spec::Surge {
                files: 40,
                requests: 200,
            },
            2,
        )
        .unwrap();
        let hot = generate(&Spec::Fixed { bytes: 3000 }, 0).unwrap();
        let groups = [("cold".to_string(), &d), ("hot".to_string(), &hot)];
        let fs = materialize(data.path(), "t", &groups).unwrap();
        assert_eq!(fs.files, 41);
        // What lair-load would compute from the bytes on disk is what the manifest says.
        let on_disk = lair_load::manifest::build(&fs.root).unwrap();
        let written = lair_load::Manifest::parse(&std::fs::read_to_string(&fs.manifest).unwrap());
        assert_eq!(on_disk.files, written.files);
        assert_eq!(written.files.len(), 41);
        let trace = std::fs::read_to_string(&fs.traces["cold"]).unwrap();
        assert_eq!(trace.lines().count(), 200);
        // Reused: same directory, files untouched.
        let f = fs.root.join("fixed-3000.bin");
        let before = std::fs::metadata(&f).unwrap().modified().unwrap();
        let again = materialize(data.path(), "t", &groups).unwrap();
        assert_eq!(again.dir, fs.dir);
        assert_eq!(std::fs::metadata(&f).unwrap().modified().unwrap(), before);
    }

    #[test]
    fn cache_drop_and_warm_are_verified() {
        let dir =
            tempfile::tempdir_in(concat!(env!("CARGO_MANIFEST_DIR"), "/../../target")).unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, vec![7u8; 1 << 20]).unwrap();
        let files = vec![p];
        let cold = drop_cache(&files).unwrap();
        assert_eq!(cold.pages, 256);
        // tmpfs cannot drop pages; this directory is on the build disk.
        assert!(cold.fraction() < 0.1, "{cold:?}");
        let warm = warm_cache(&files).unwrap();
        assert_eq!(warm.cached_pages, 256);
    }
}
