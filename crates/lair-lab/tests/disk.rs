//! The emulated disk, for real: a directory moved onto it reads back the same bytes, its
//! reads reach the device in parallel when several threads read, and undoing leaves no
//! mount or loop device behind. Needs root and /dev/fuse; skipped (with a line) otherwise.

use std::io::Read as _;
use std::path::{Path, PathBuf};

use lair_lab::disk::{DiskModel, EmulatedDisk};
use lair_lab::env::Undo;

fn skip_reason() -> Option<&'static str> {
    if !rustix::process::geteuid().is_root() {
        return Some("needs root");
    }
    if !Path::new("/dev/fuse").exists() {
        return Some("no /dev/fuse");
    }
    None
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
        eprintln!("skipped: {why}");
        return;
    }
    let tmp = tempfile::tempdir_in(concat!(env!("CARGO_MANIFEST_DIR"), "/../../target")).unwrap();
    let dir = std::fs::canonicalize(tmp.path()).unwrap();
    std::fs::create_dir(dir.join("sub")).unwrap();
    let mut files = Vec::new();
    let mut expected = Vec::new();
    for i in 0..32u32 {
        let p = dir.join("sub").join(format!("f{i}"));
        // Distinct contents, sizes from a few bytes to ~200 KiB.
        let body: Vec<u8> = (0..(i * i * 200 + 7)).map(|b| (b ^ (i * 31)) as u8).collect();
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
    let disk = EmulatedDisk::over(&mut undo, &model, &dir).unwrap();
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
