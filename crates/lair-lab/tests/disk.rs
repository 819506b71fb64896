//! The emulated disk, for real: a directory moved onto it reads back the same bytes, its
//! reads reach the device in parallel when several threads read, and undoing leaves no
//! mount or loop device behind. Needs root, /dev/fuse and loop devices; skipped (with a
//! line) otherwise.

#[path = "../../lair/tests/support/skip.rs"]
mod skip;

use std::io::Read as _;
use std::path::{Path, PathBuf};

use lair_lab::disk::{DiskModel, EmulatedDisk};
use lair_lab::env::Undo;

fn skip_reason() -> Option<String> {
    lair_lab::disk::why_unavailable()
}

fn drop_pages(files: &[PathBuf]) {
    for f in files {
        let fd = std::fs::File::open(f).unwrap();
        rustix::fs::fadvise(&fd, 0, None, rustix::fs::Advice::DontNeed).unwrap();
    }
}

fn read_all(files: &[PathBuf], threads: usize) -> Vec<Vec<u8>> {
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                s.spawn(move || {
                    files
                        .iter()
                        .enumerate()
                        .filter(|(i, _)| i % threads == t)
                        .map(|(i, f)| {
                            let mut v = Vec::new();
                            std::fs::File::open(f).unwrap().read_to_end(&mut v).unwrap();
                            (i, v)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut all: Vec<(usize, Vec<u8>)> = handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        all.sort_by_key(|(i, _)| *i);
        all.into_iter().map(|(_, v)| v).collect()
    })
}

fn mounted(dir: &Path) -> bool {
    let dir = dir.to_string_lossy();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(&*dir))
}

#[test]
fn a_directory_on_the_emulated_disk_reads_the_same_in_parallel_and_is_given_back() {
    if let Some(why) = skip_reason() {
        return skip::skipped(
            "a_directory_on_the_emulated_disk_reads_the_same_in_parallel_and_is_given_back",
            &why,
        );
    }
    let tmp = tempfile::tempdir_in(concat!(env!("CARGO_MANIFEST_DIR"), "/../../target")).unwrap();
    let dir = std::fs::canonicalize(tmp.path()).unwrap();
    std::fs::create_dir(dir.join("sub")).unwrap();
    let mut files = Vec::new();
    let mut expected = Vec::new();
    for i in 0..32u32 {
        let p = dir.join("sub").join(format!("f{i}"));
        // Distinct contents, sizes from a few bytes to ~200 KiB.
        let body: Vec<u8> = (0..(i * i * 200 + 7))
            .map(|b| (b ^ (i * 31)) as u8)
            .collect();
        std::fs::write(&p, &body).unwrap();
        files.push(p);
        expected.push(body);
    }
    let model = DiskModel {
        latency: "2ms".into(),
        channels: 8,
        read_bps: None,
    };
    let mut undo = Undo::default();
    let disk = EmulatedDisk::over(&mut undo, &model, &dir, None).unwrap();
    assert!(mounted(&dir), "not mounted over {}", dir.display());

    // One reader: about one read in the device at a time.
    drop_pages(&files);
    let before = disk.counts();
    assert_eq!(read_all(&files, 1), expected);
    let one = disk.counts().since(&before);
    assert!(one.reads >= 31, "{one:?}");
    assert!(one.mean_depth().unwrap() < 1.5, "{one:?}");

    // Sixteen readers: reads queue up in the device together.
    drop_pages(&files);
    let before = disk.counts();
    assert_eq!(read_all(&files, 16), expected);
    let many = disk.counts().since(&before);
    assert!(many.reads >= 31, "{many:?}");
    assert!(many.mean_depth().unwrap() > 3.0, "{many:?}");

    // Cold metadata: reading the directory again goes to the device.
    disk.drop_metadata().unwrap();
    let before = disk.counts();
    assert_eq!(std::fs::read_dir(dir.join("sub")).unwrap().count(), 32);
    assert!(disk.counts().since(&before).reads > 0);

    // Read-only: the original stays untouched.
    assert!(std::fs::write(dir.join("new"), b"x").is_err());

    let loop_device = disk.loop_device.clone();
    undo.run();
    assert!(!mounted(&dir), "still mounted over {}", dir.display());
    let losetup = std::process::Command::new("losetup")
        .arg("-l")
        .output()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&losetup.stdout).contains(&*loop_device.to_string_lossy()),
        "{} still attached",
        loop_device.display()
    );
    // The original files are back under the directory.
    assert_eq!(std::fs::read(&files[5]).unwrap(), expected[5]);
}

/// A directory of `n` files of `bytes` each on an emulated disk with a long `latency`.
fn slow_dir(n: usize, bytes: usize, latency: &str) -> (tempfile::TempDir, Undo, EmulatedDisk) {
    let tmp = tempfile::tempdir_in(concat!(env!("CARGO_MANIFEST_DIR"), "/../../target")).unwrap();
    for i in 0..n {
        // Not zeros: mkfs.ext4 -d stores zero blocks as holes, which read without I/O.
        std::fs::write(tmp.path().join(format!("f{i}")), vec![i as u8 + 1; bytes]).unwrap();
    }
    let model = DiskModel {
        latency: latency.into(),
        channels: 4,
        read_bps: None,
    };
    let mut undo = Undo::default();
    let disk = EmulatedDisk::over(&mut undo, &model, tmp.path(), None).unwrap();
    (tmp, undo, disk)
}

mod engine {
    use super::*;
    use lair_io::{setup, with_backend, Backend, BackendKind, EngineConfig, WithBackend};
    use lair_io::{Op, Out, Submit, Token};
    use std::ffi::CString;
    use std::os::fd::OwnedFd;
    use std::sync::Arc;
    use std::time::Duration;

    fn finish<B: Backend>(b: &mut B) -> lair_io::Completion {
        let mut done = Vec::new();
        while done.is_empty() {
            b.poll(&mut done, Some(Duration::from_secs(10))).unwrap();
        }
        done.pop().unwrap()
    }

    /// Bug: cachestat counts a page while the read filling it is still in flight, so the lazy
    /// loop ran sendfile inline and waited for the disk. Now a page being read goes to a
    /// helper.
    struct InFlight(PathBuf);
    impl WithBackend for InFlight {
        type Output = ();
        fn run<B: Backend>(self, mut b: B) {
            let file: Arc<OwnedFd> = Arc::new(std::fs::File::open(&self.0).unwrap().into());
            // A request finds the file cold: its read goes to a helper (and the engine now
            // knows the disk is busy)…
            let read = Op::Read {
                file: Arc::clone(&file),
                offset: 0,
                len: 1,
                buf: lair_io::BufMut::Vec(Vec::with_capacity(1)),
                to: None,
            };
            assert!(matches!(b.submit(Token(0), read), Submit::Pending));
            // …and the file's pages are on their way, as readahead would have them.
            rustix::fs::fadvise(&*file, 0, None, rustix::fs::Advice::WillNeed).unwrap();
            let (pages, total) = setup::cached_pages(&file).unwrap();
            assert_eq!(
                pages, total,
                "the read is under way: every page is in the cache"
            );
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let client = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
            let sock: Arc<OwnedFd> = Arc::new(l.accept().unwrap().0.into());
            let op = Op::Sendfile {
                sock,
                file,
                offset: 0,
                len: 8192,
                via: lair_io::Via::Sendfile,
            };
            match b.submit(Token(1), op) {
                Submit::Pending => {
                    let mut done = Vec::new();
                    while !done
                        .iter()
                        .any(|c: &lair_io::Completion| c.token == Token(1))
                    {
                        b.poll(&mut done, Some(Duration::from_secs(10))).unwrap();
                    }
                    let c = done.into_iter().find(|c| c.token == Token(1)).unwrap();
                    assert_eq!(c.result.unwrap(), 8192);
                }
                Submit::Done(c) => panic!(
                    "sendfile ran on the loop while its pages were being read: {:?}",
                    c.result
                ),
            }
            drop(client);
        }
    }

    #[test]
    fn lazy_does_not_sendfile_pages_still_being_read() {
        if let Some(why) = skip_reason() {
            return skip::skipped("lazy_does_not_sendfile_pages_still_being_read", &why);
        }
        let (tmp, mut undo, _disk) = slow_dir(1, 8192, "300ms");
        drop_pages(&[tmp.path().join("f0")]);
        let cfg = EngineConfig::default();
        with_backend(BackendKind::Lazy, &cfg, InFlight(tmp.path().join("f0"))).unwrap();
        undo.run();
    }

    /// An open that had to go to a helper (cold metadata) starts reading the file's first
    /// window before it completes.
    struct Prefetch(PathBuf);
    impl WithBackend for Prefetch {
        type Output = (u64, u64);
        fn run<B: Backend>(self, mut b: B) -> (u64, u64) {
            let root = Arc::new(setup::open_dir(&self.0).unwrap());
            let op = Op::Open {
                dir: root,
                path: CString::new("f1").unwrap(),
                beneath: true,
                prefetch: 128 << 10,
            };
            let c = match b.submit(Token(1), op) {
                Submit::Pending => finish(&mut b),
                Submit::Done(_) => panic!("a cold open ran on the loop"),
            };
            let Out::File(fd) = c.out else {
                panic!("{:?}", c.result)
            };
            setup::cached_pages(&fd).unwrap()
        }
    }

    #[test]
    fn a_cold_open_on_a_helper_starts_reading_the_file() {
        if let Some(why) = skip_reason() {
            return skip::skipped("a_cold_open_on_a_helper_starts_reading_the_file", &why);
        }
        let (tmp, mut undo, disk) = slow_dir(2, 64 << 10, "20ms");
        drop_pages(&[tmp.path().join("f1")]);
        disk.drop_metadata().unwrap();
        let cfg = EngineConfig::default();
        let (cached, pages) =
            with_backend(BackendKind::Lazy, &cfg, Prefetch(tmp.path().to_path_buf())).unwrap();
        assert_eq!(pages, 16);
        assert_eq!(cached, 16, "the whole 64 KiB file is on its way");
        undo.run();
    }
}
