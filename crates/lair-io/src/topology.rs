//! The CPU caches as the kernel describes them in sysfs
//! (`/sys/devices/system/cpu/cpuN/cache/indexK/`): level, type, size, line size, ways and which
//! CPUs share each one.
//!
//! Why: seed 002's pools are sized to a cache (`--pool-cache l2|llc|BYTES`), and the cachegrind
//! runs simulate this machine's caches; both read them here instead of assuming a CPU.
//! What it does not do: detect caches the kernel does not list (some VMs list none — then
//! [`caches`] is empty and the caller says so and uses its own default).

use std::fs;
use std::io;
use std::path::Path;

/// What a cache holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheKind {
    /// Data only (an L1d).
    Data,
    /// Instructions only (an L1i).
    Instruction,
    /// Both (L2 and beyond, usually).
    Unified,
}

/// One cache of one CPU.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cache {
    /// 1 for L1, 2 for L2, …
    pub level: u8,
    /// What it holds.
    pub kind: CacheKind,
    /// Its capacity.
    pub size_bytes: u64,
    /// Its line (`coherency_line_size`).
    pub line_bytes: u32,
    /// 0 when the kernel does not say (fully associative caches report 0 too).
    pub ways: u32,
    /// The CPUs that share it, ascending.
    pub shared_with: Vec<usize>,
}

impl Cache {
    /// Whether data lives in it (a data or a unified cache).
    pub fn holds_data(&self) -> bool {
        self.kind != CacheKind::Instruction
    }
}

/// The caches of CPU `cpu`, in sysfs order (by index: L1 first), from `/sys`.
pub fn caches(cpu: usize) -> io::Result<Vec<Cache>> {
    caches_under(Path::new(&format!(
        "/sys/devices/system/cpu/cpu{cpu}/cache"
    )))
}

/// The data (or unified) cache of `level` of CPU `cpu`, if the kernel lists one.
pub fn data_cache(cpu: usize, level: u8) -> Option<Cache> {
    caches(cpu)
        .ok()?
        .into_iter()
        .find(|c| c.level == level && c.holds_data())
}

/// The last (largest-level) data cache of CPU `cpu`.
pub fn last_level_cache(cpu: usize) -> Option<Cache> {
    caches(cpu)
        .ok()?
        .into_iter()
        .filter(Cache::holds_data)
        .max_by_key(|c| c.level)
}

/// The caches described under `dir` (a `…/cpuN/cache` directory; tests point it elsewhere).
/// An `indexK` entry that cannot be read or parsed is an error naming the file.
pub fn caches_under(dir: &Path) -> io::Result<Vec<Cache>> {
    let mut indexes: Vec<(u32, std::path::PathBuf)> = fs::read_dir(dir)?
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let k = name.strip_prefix("index")?.parse().ok()?;
            Some((k, e.path()))
        })
        .collect();
    indexes.sort();
    indexes.iter().map(|(_, p)| read_index(p)).collect()
}

fn read_index(dir: &Path) -> io::Result<Cache> {
    let field = |name: &str| -> io::Result<String> {
        let p = dir.join(name);
        fs::read_to_string(&p)
            .map(|s| s.trim().to_owned())
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", p.display())))
    };
    let bad = |name: &str, v: &str| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: cannot read {v:?}", dir.join(name).display()),
        )
    };
    let level = field("level")?;
    let level = level.parse().map_err(|_| bad("level", &level))?;
    let kind = match field("type")?.as_str() {
        "Data" => CacheKind::Data,
        "Instruction" => CacheKind::Instruction,
        "Unified" => CacheKind::Unified,
        other => return Err(bad("type", other)),
    };
    let size = field("size")?;
    let size_bytes = parse_size(&size).ok_or_else(|| bad("size", &size))?;
    let line = field("coherency_line_size")?;
    let line_bytes = line
        .parse()
        .map_err(|_| bad("coherency_line_size", &line))?;
    // Absent on some kernels and architectures: unknown, not an error.
    let ways = field("ways_of_associativity")
        .ok()
        .and_then(|w| w.parse().ok())
        .unwrap_or(0);
    let shared = field("shared_cpu_list")?;
    let shared_with = parse_cpu_list(&shared).ok_or_else(|| bad("shared_cpu_list", &shared))?;
    Ok(Cache {
        level,
        kind,
        size_bytes,
        line_bytes,
        ways,
        shared_with,
    })
}

/// sysfs sizes: `32K`, `512K`, `32768K`, `8M` (binary units), or plain bytes.
fn parse_size(s: &str) -> Option<u64> {
    let (digits, unit) = match s.as_bytes().last()? {
        b'K' => (&s[..s.len() - 1], 1 << 10),
        b'M' => (&s[..s.len() - 1], 1 << 20),
        b'G' => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    digits.parse::<u64>().ok()?.checked_mul(unit)
}

/// A kernel CPU list: `0-3,8,10-11`.
pub fn parse_cpu_list(s: &str) -> Option<Vec<usize>> {
    let mut cpus = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (usize, usize) = (a.parse().ok()?, b.parse().ok()?);
                if a > b {
                    return None;
                }
                cpus.extend(a..=b);
            }
            None => cpus.push(part.parse().ok()?),
        }
    }
    cpus.sort_unstable();
    cpus.dedup();
    Some(cpus)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index(dir: &Path, k: u32, fields: &[(&str, &str)]) {
        let d = dir.join(format!("index{k}"));
        fs::create_dir_all(&d).unwrap();
        for (name, value) in fields {
            fs::write(d.join(name), format!("{value}\n")).unwrap();
        }
    }

    #[test]
    fn reads_a_cache_directory_like_the_kernels() {
        let t = tempfile::tempdir().unwrap();
        let common = |level, kind, size, shared| {
            vec![
                ("level", level),
                ("type", kind),
                ("size", size),
                ("coherency_line_size", "64"),
                ("ways_of_associativity", "8"),
                ("shared_cpu_list", shared),
            ]
        };
        index(t.path(), 0, &common("1", "Data", "32K", "0"));
        index(t.path(), 1, &common("1", "Instruction", "32K", "0"));
        index(t.path(), 2, &common("2", "Unified", "512K", "0"));
        // Ten entries sort as numbers, not as text; ways may be missing.
        index(
            t.path(),
            10,
            &[
                ("level", "3"),
                ("type", "Unified"),
                ("size", "32768K"),
                ("coherency_line_size", "64"),
                ("shared_cpu_list", "0-3,8"),
            ],
        );
        let c = caches_under(t.path()).unwrap();
        assert_eq!(c.len(), 4);
        assert_eq!(
            (c[0].level, c[0].kind, c[0].size_bytes),
            (1, CacheKind::Data, 32 << 10)
        );
        assert!(!c[1].holds_data());
        assert_eq!(c[2].size_bytes, 512 << 10);
        assert_eq!(c[3].size_bytes, 32 << 20);
        assert_eq!(c[3].ways, 0);
        assert_eq!(c[3].shared_with, vec![0, 1, 2, 3, 8]);

        index(t.path(), 4, &[("level", "x")]);
        let e = caches_under(t.path()).unwrap_err();
        assert!(e.to_string().contains("index4/level"), "{e}");
    }

    #[test]
    fn sizes_and_cpu_lists() {
        assert_eq!(parse_size("48K"), Some(48 << 10));
        assert_eq!(parse_size("2M"), Some(2 << 20));
        assert_eq!(parse_size("1024"), Some(1024));
        assert_eq!(parse_size("K"), None);
        assert_eq!(parse_cpu_list("0-1"), Some(vec![0, 1]));
        assert_eq!(parse_cpu_list("3,1,1-2"), Some(vec![1, 2, 3]));
        assert_eq!(parse_cpu_list("2-1"), None);
        assert_eq!(parse_cpu_list("a"), None);
        assert_eq!(parse_cpu_list(""), Some(vec![]));
    }

    /// This machine's own caches, as the kernel lists them.
    #[test]
    fn this_machine() {
        let c = caches(0).unwrap();
        assert!(!c.is_empty(), "cpu0 lists no caches");
        assert!(c.iter().all(|c| c.size_bytes > 0 && c.line_bytes > 0));
        assert!(data_cache(0, 1).is_some());
        assert!(last_level_cache(0).is_some_and(|l| l.level >= 2));
    }
}
