//! An emulated slow disk: a block device whose reads take a fixed service time, served by a
//! fixed number of channels in parallel — a disk that gets faster with more requests in
//! flight, up to a point, as the seed's disk did under a good I/O scheduler.
//!
//! The cgroup throttle ([`crate::env::Throttle`]) is a rate limit: it admits N reads a
//! second however many wait, so every server meets the same ceiling and the question seed 001
//! asks — how much I/O a server keeps in flight without blocking — cannot show. This kernel
//! has no dm-delay, nbd, ublk or null_blk; it has loop devices and FUSE, and that is enough:
//!
//! ```text
//!  docroot (ext4, read-only, mounted over the fileset directory)
//!    └─ /dev/loopN, direct I/O: each block request becomes an async O_DIRECT read …
//!        └─ …of disk.img on a FUSE mount served by this module, which copies the bytes
//!            from an ext4 image in /dev/shm and answers after the model's service time.
//! ```
//!
//! The filesystem on top is a real ext4, so everything the servers rely on works as on a
//! disk: `RWF_NOWAIT`, `RESOLVE_CACHED`, `cachestat`, readahead, and metadata (directory and
//! inode blocks) comes from the slow device too. The service model: a read arriving at `t`
//! takes the channel that frees first; it starts at `max(t, free)` and completes
//! `latency + bytes / read_bps` later. With `channels = 1` it is a single spindle; the device
//! peaks at `channels / latency` reads a second once that many are in flight.
//!
//! Needs root (loop devices, mounts) and `/dev/fuse`. Everything made is undone through
//! [`Undo`], newest first: unmount, detach the loop device, end the FUSE session, delete the
//! image.

use std::collections::BinaryHeap;
use std::ffi::OsStr;
use std::fs::File;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context as _};
use fuser::{
    FileAttr, FileType, Filesystem, KernelConfig, MountOption, ReplyAttr, ReplyData,
    ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, Request,
};
use serde::{Deserialize, Serialize};

use crate::env::{sh, Undo};

/// How the emulated disk serves reads (`device = { latency = "5ms", channels = 8 }` in an
/// experiment's environment).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskModel {
    /// Service time of one read, whatever its size (seek and rotation, or flash latency).
    pub latency: String,
    /// Reads served at once (1: a single spindle).
    #[serde(default = "one")]
    pub channels: usize,
    /// Transfer rate of one channel (`100M`), added to the latency; none: unlimited.
    #[serde(default)]
    pub read_bps: Option<String>,
}

fn one() -> usize {
    1
}

impl DiskModel {
    fn parsed(&self) -> anyhow::Result<Model> {
        let latency = lair_conf::parse_duration(&self.latency).map_err(anyhow::Error::msg)?;
        let read_bps = self
            .read_bps
            .as_deref()
            .map(lair_conf::parse_nonzero_size)
            .transpose()
            .map_err(|e| anyhow::anyhow!("device.read_bps: {e}"))?;
        if self.channels == 0 {
            bail!("device.channels must be at least 1");
        }
        Ok(Model {
            latency,
            channels: self.channels,
            read_bps,
        })
    }
}

#[derive(Clone, Copy, Debug)]
struct Model {
    latency: Duration,
    channels: usize,
    read_bps: Option<u64>,
}

impl Model {
    fn service(&self, bytes: usize) -> Duration {
        self.latency
            + self.read_bps.map_or(Duration::ZERO, |bps| {
                Duration::from_secs_f64(bytes as f64 / bps as f64)
            })
    }
}

/// What the device has served (cumulative; read before and after a run).
#[derive(Debug, Default)]
pub struct DiskStats {
    reads: AtomicU64,
    bytes: AtomicU64,
    /// Sum over reads of the reads in the device (queued or in service) when it arrived,
    /// itself included: divided by `reads`, the mean depth the servers kept.
    depth_sum: AtomicU64,
    /// Sum of the time reads waited for a channel, in microseconds.
    wait_us: AtomicU64,
}

/// A snapshot of [`DiskStats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DiskCounts {
    /// Reads served.
    pub reads: u64,
    /// Bytes served.
    pub bytes: u64,
    /// Sum of arrival depths (see [`DiskCounts::mean_depth`]).
    pub depth_sum: u64,
    /// Sum of waits for a channel, µs.
    pub wait_us: u64,
}

impl DiskCounts {
    /// Counts between `earlier` and `self`.
    pub fn since(&self, earlier: &DiskCounts) -> DiskCounts {
        DiskCounts {
            reads: self.reads.saturating_sub(earlier.reads),
            bytes: self.bytes.saturating_sub(earlier.bytes),
            depth_sum: self.depth_sum.saturating_sub(earlier.depth_sum),
            wait_us: self.wait_us.saturating_sub(earlier.wait_us),
        }
    }

    /// Mean number of reads in the device when one arrived (itself included): how much I/O
    /// the server kept in flight.
    pub fn mean_depth(&self) -> Option<f64> {
        (self.reads > 0).then(|| self.depth_sum as f64 / self.reads as f64)
    }
}

impl DiskStats {
    /// A snapshot.
    pub fn counts(&self) -> DiskCounts {
        DiskCounts {
            reads: self.reads.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
            depth_sum: self.depth_sum.load(Ordering::Relaxed),
            wait_us: self.wait_us.load(Ordering::Relaxed),
        }
    }
}

// ---- the device: a FUSE file whose reads complete late -----------------------------------

const ROOT: u64 = fuser::FUSE_ROOT_ID;
const IMAGE: u64 = 2;
const IMAGE_NAME: &str = "disk.img";
const TTL: Duration = Duration::from_secs(3600);

/// A read answered at `due`.
struct Due {
    due: Instant,
    seq: u64,
    reply: ReplyData,
    data: std::io::Result<Vec<u8>>,
}

impl PartialEq for Due {
    fn eq(&self, o: &Self) -> bool {
        (self.due, self.seq) == (o.due, o.seq)
    }
}
impl Eq for Due {}
impl PartialOrd for Due {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Due {
    /// Earliest first out of a max-heap.
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (o.due, o.seq).cmp(&(self.due, self.seq))
    }
}

/// Replies waiting for their time; one thread sends them.
#[derive(Default)]
struct Pending {
    state: Mutex<(BinaryHeap<Due>, bool)>,
    wake: Condvar,
}

impl Pending {
    fn push(&self, d: Due) -> usize {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let soonest = s.0.peek().is_none_or(|top| d.due < top.due);
        s.0.push(d);
        let depth = s.0.len();
        drop(s);
        if soonest {
            self.wake.notify_one();
        }
        depth
    }

    /// Send each reply at its time until closed; on close, answer what is left at once.
    fn serve(&self) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            let now = Instant::now();
            match s.0.peek() {
                Some(top) if top.due <= now || s.1 => {
                    let Some(d) = s.0.pop() else { continue };
                    drop(s);
                    match d.data {
                        Ok(bytes) => d.reply.data(&bytes),
                        Err(e) => d.reply.error(e.raw_os_error().unwrap_or(libc::EIO)),
                    }
                    s = self.state.lock().unwrap_or_else(|e| e.into_inner());
                }
                Some(top) => {
                    let wait = top.due - now;
                    s = self
                        .wake
                        .wait_timeout(s, wait)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
                None if s.1 => return,
                None => s = self.wake.wait(s).unwrap_or_else(|e| e.into_inner()),
            }
        }
    }

    fn close(&self) {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).1 = true;
        self.wake.notify_all();
    }
}

/// The FUSE filesystem: one read-only file, `disk.img`.
struct Device {
    image: File,
    size: u64,
    model: Model,
    /// When each channel is next free.
    free: Vec<Instant>,
    seq: u64,
    pending: Arc<Pending>,
    stats: Arc<DiskStats>,
    made: SystemTime,
    /// The CPU the device's threads run on (not the server's).
    cpu: Option<usize>,
}

/// Keep the calling thread on `cpu`, saying so if it cannot.
fn pin(cpu: Option<usize>) {
    if let Some(c) = cpu {
        if let Err(e) = lair_io::setup::pin_current_thread(c) {
            tracing::warn!("emulated disk: cannot pin to CPU {c}: {e}");
        }
    }
}

impl Device {
    fn attr(&self, ino: u64) -> Option<FileAttr> {
        let (kind, perm, size, nlink) = match ino {
            ROOT => (FileType::Directory, 0o555, 0, 2),
            IMAGE => (FileType::RegularFile, 0o444, self.size, 1),
            _ => return None,
        };
        Some(FileAttr {
            ino,
            size,
            blocks: size.div_ceil(512),
            atime: self.made,
            mtime: self.made,
            ctime: self.made,
            crtime: self.made,
            kind,
            perm,
            nlink,
            uid: 0,
            gid: 0,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        })
    }
}

impl Filesystem for Device {
    fn init(&mut self, _req: &Request<'_>, config: &mut KernelConfig) -> Result<(), libc::c_int> {
        // The session's thread: like the replier, off the server's CPU.
        pin(self.cpu);
        // Without asynchronous direct I/O the kernel sends the loop device's reads one at a
        // time, and the channels would never fill.
        if let Err(missing) = config.add_capabilities(fuser::consts::FUSE_ASYNC_DIO) {
            tracing::error!("FUSE lacks asynchronous direct I/O ({missing:#x})");
            return Err(libc::ENOSYS);
        }
        // Async direct reads count as background requests: let far more than the default
        // 12 wait in the device.
        let _ = config.set_max_background(1024);
        let _ = config.set_congestion_threshold(1000);
        Ok(())
    }

    fn lookup(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEntry) {
        match (parent, self.attr(IMAGE)) {
            (ROOT, Some(a)) if name == IMAGE_NAME => reply.entry(&TTL, &a, 0),
            _ => reply.error(libc::ENOENT),
        }
    }

    fn getattr(&mut self, _req: &Request<'_>, ino: u64, _fh: Option<u64>, reply: ReplyAttr) {
        match self.attr(ino) {
            Some(a) => reply.attr(&TTL, &a),
            None => reply.error(libc::ENOENT),
        }
    }

    fn open(&mut self, _req: &Request<'_>, ino: u64, flags: i32, reply: ReplyOpen) {
        if ino != IMAGE {
            reply.error(libc::EISDIR);
        } else if flags & libc::O_ACCMODE != libc::O_RDONLY {
            reply.error(libc::EROFS);
        } else {
            // No FUSE page cache: every read reaches the model.
            reply.opened(0, fuser::consts::FOPEN_DIRECT_IO);
        }
    }

    fn read(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        size: u32,
        _flags: i32,
        _lock_owner: Option<u64>,
        reply: ReplyData,
    ) {
        if ino != IMAGE || offset < 0 {
            reply.error(libc::EINVAL);
            return;
        }
        let offset = offset as u64;
        let len = (size as u64).min(self.size.saturating_sub(offset)) as usize;
        let mut buf = vec![0u8; len];
        let data = self.image.read_exact_at(&mut buf, offset).map(|()| buf);
        let now = Instant::now();
        let (ch, free) = self
            .free
            .iter()
            .copied()
            .enumerate()
            .min_by_key(|&(_, t)| t)
            .unwrap_or((0, now));
        let start = free.max(now);
        let due = start + self.model.service(len);
        self.free[ch] = due;
        self.seq += 1;
        let depth = self.pending.push(Due {
            due,
            seq: self.seq,
            reply,
            data,
        });
        let s = &self.stats;
        s.reads.fetch_add(1, Ordering::Relaxed);
        s.bytes.fetch_add(len as u64, Ordering::Relaxed);
        s.depth_sum.fetch_add(depth as u64, Ordering::Relaxed);
        s.wait_us
            .fetch_add((start - now).as_micros() as u64, Ordering::Relaxed);
    }

    fn flush(
        &mut self,
        _req: &Request<'_>,
        _ino: u64,
        _fh: u64,
        _lock_owner: u64,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn fsync(
        &mut self,
        _req: &Request<'_>,
        _ino: u64,
        _fh: u64,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        // Read-only: nothing to write back.
        reply.ok();
    }

    fn readdir(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        mut reply: ReplyDirectory,
    ) {
        if ino != ROOT {
            reply.error(libc::ENOTDIR);
            return;
        }
        let entries = [
            (ROOT, FileType::Directory, "."),
            (ROOT, FileType::Directory, ".."),
            (IMAGE, FileType::RegularFile, IMAGE_NAME),
        ];
        for (i, (ino, kind, name)) in entries.iter().enumerate().skip(offset.max(0) as usize) {
            if reply.add(*ino, i as i64 + 1, *kind, name) {
                break;
            }
        }
        reply.ok();
    }
}

// ---- building and mounting ---------------------------------------------------------------

/// Why an emulated disk cannot be made on this machine, if it cannot (what [`EmulatedDisk::over`]
/// refuses with, and what tests skip on).
pub fn why_unavailable() -> Option<String> {
    if !rustix::process::geteuid().is_root() {
        return Some("an emulated disk needs root (a loop device and two mounts)".into());
    }
    // Root in a container may lack the capability to mount.
    const CAP_SYS_ADMIN: u32 = 21;
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let effective = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0);
    if effective & (1 << CAP_SYS_ADMIN) == 0 {
        return Some("an emulated disk needs CAP_SYS_ADMIN (mounts)".into());
    }
    if !Path::new("/dev/fuse").exists() {
        return Some("/dev/fuse is missing: the emulated disk is served through FUSE".into());
    }
    if !Path::new("/dev/loop-control").exists() {
        return Some("/dev/loop-control is missing: the emulated disk needs loop devices".into());
    }
    for tool in ["losetup", "mkfs.ext4", "mount", "umount"] {
        if sh("which", &[tool]).is_err() {
            return Some(format!(
                "{tool} is missing: apt-get install util-linux e2fsprogs mount"
            ));
        }
    }
    None
}

/// A directory's contents moved onto an emulated slow disk, mounted over the directory
/// itself: every path under it stays the same.
pub struct EmulatedDisk {
    /// The directory now on the emulated disk.
    pub dir: PathBuf,
    /// Its loop device.
    pub loop_device: PathBuf,
    stats: Arc<DiskStats>,
}

/// Files and bytes under `dir`, recursively (symlinks not followed).
fn tree_size(dir: &Path) -> anyhow::Result<(u64, u64)> {
    let (mut files, mut bytes) = (0u64, 0u64);
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).with_context(|| format!("reading {}", d.display()))? {
            let e = e?;
            let m = e.metadata()?;
            files += 1;
            bytes += m.len();
            if m.is_dir() {
                stack.push(e.path());
            }
        }
    }
    Ok((files, bytes))
}

impl EmulatedDisk {
    /// Copy `dir` into an ext4 image, serve the image through the model, and mount it
    /// read-only over `dir`. The device's two threads run on `cpu` if given (the clients'
    /// CPU in an experiment: a disk's work must not be charged to the server's).
    pub fn over(
        undo: &mut Undo,
        model: &DiskModel,
        dir: &Path,
        cpu: Option<usize>,
    ) -> anyhow::Result<EmulatedDisk> {
        let m = model.parsed()?;
        if let Some(why) = why_unavailable() {
            bail!("{why}");
        }
        let dir = std::fs::canonicalize(dir)?;
        static N: AtomicU64 = AtomicU64::new(0);
        let work = PathBuf::from(format!(
            "/dev/shm/lair-lab-disk-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir(&work).with_context(|| format!("creating {}", work.display()))?;
        {
            let work = work.clone();
            undo.push(format!("remove {}", work.display()), move || {
                std::fs::remove_dir_all(&work).with_context(|| format!("rm {}", work.display()))
            });
        }
        // The image, in memory: the model is the only slowness.
        let (files, bytes) = tree_size(&dir)?;
        let size = (bytes + bytes / 8 + files * 8192 + (64 << 20)).next_multiple_of(4 << 20);
        let image_path = work.join(IMAGE_NAME);
        File::create(&image_path)?.set_len(size)?;
        let inodes = (files + files / 4 + 1024).to_string();
        sh(
            "mkfs.ext4",
            &[
                "-q",
                "-F",
                "-b",
                "4096",
                "-m",
                "0",
                "-N",
                &inodes,
                "-O",
                "^has_journal",
                "-L",
                "lair-lab",
                "-d",
                &dir.to_string_lossy(),
                &image_path.to_string_lossy(),
            ],
        )
        .context("building the disk image")?;

        // The device.
        let mnt = work.join("fuse");
        std::fs::create_dir(&mnt)?;
        let pending = Arc::new(Pending::default());
        let stats = Arc::new(DiskStats::default());
        let made = SystemTime::now();
        let device = Device {
            image: File::open(&image_path)?,
            size,
            model: m,
            free: vec![Instant::now(); m.channels],
            seq: 0,
            pending: Arc::clone(&pending),
            stats: Arc::clone(&stats),
            made,
            cpu,
        };
        let replier = {
            let pending = Arc::clone(&pending);
            std::thread::Builder::new()
                .name("lab-disk".into())
                .spawn(move || {
                    pin(cpu);
                    pending.serve()
                })?
        };
        let session = fuser::spawn_mount2(
            device,
            &mnt,
            &[
                MountOption::FSName("lair-lab-disk".into()),
                MountOption::RO,
                MountOption::DefaultPermissions,
            ],
        )
        .with_context(|| format!("mounting the device (FUSE) on {}", mnt.display()))?;
        undo.push(
            format!("end the FUSE device on {}", mnt.display()),
            move || {
                pending.close();
                drop(session);
                replier
                    .join()
                    .map_err(|_| anyhow::anyhow!("the device's reply thread panicked"))
            },
        );

        // The block device over it: direct I/O, so reads reach the device asynchronously
        // and without a second page cache.
        let image_on_fuse = mnt.join(IMAGE_NAME);
        let loop_device = PathBuf::from(
            sh(
                "losetup",
                &[
                    "--find",
                    "--show",
                    "--read-only",
                    "--direct-io=on",
                    &image_on_fuse.to_string_lossy(),
                ],
            )
            .context("attaching a loop device")?
            .trim(),
        );
        {
            let l = loop_device.clone();
            undo.push(format!("detach {}", l.display()), move || {
                sh("losetup", &["-d", &l.to_string_lossy()]).map(drop)
            });
        }
        let name = loop_device
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let dio =
            std::fs::read_to_string(format!("/sys/block/{name}/loop/dio")).unwrap_or_default();
        if dio.trim() != "1" {
            bail!(
                "{} fell back to buffered I/O (dio={}): its reads would reach the device one \
                 at a time",
                loop_device.display(),
                dio.trim()
            );
        }

        sh(
            "mount",
            &[
                "-t",
                "ext4",
                "-o",
                "ro,noatime",
                &loop_device.to_string_lossy(),
                &dir.to_string_lossy(),
            ],
        )
        .with_context(|| format!("mounting {} on {}", loop_device.display(), dir.display()))?;
        {
            let d = dir.clone();
            undo.push(format!("unmount {}", d.display()), move || {
                let p = d.to_string_lossy();
                // A server that outlived its run may still hold a file: detach lazily then.
                sh("umount", &[&p])
                    .or_else(|_| sh("umount", &["-l", &p]))
                    .map(drop)
            });
        }
        tracing::info!(
            "{} is on an emulated disk ({} per read, {} channels): {} over FUSE, image {} MiB",
            dir.display(),
            model.latency,
            m.channels,
            loop_device.display(),
            size >> 20
        );
        Ok(EmulatedDisk {
            dir,
            loop_device,
            stats,
        })
    }

    /// What the device has served so far.
    pub fn counts(&self) -> DiskCounts {
        self.stats.counts()
    }

    /// Make metadata cold too: drop the block device's cached blocks (inode tables,
    /// directories) and the kernel's unused dentries and inodes, so opening and stat-ing a
    /// file reads the slow device as it would after a reboot.
    pub fn drop_metadata(&self) -> anyhow::Result<()> {
        let dev = File::open(&self.loop_device)?;
        rustix::fs::fadvise(&dev, 0, None, rustix::fs::Advice::DontNeed)?;
        std::fs::write("/proc/sys/vm/drop_caches", "2").context("writing vm.drop_caches")?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn models_parse_and_price_reads() {
        let m = DiskModel {
            latency: "5ms".into(),
            channels: 8,
            read_bps: Some("100M".into()),
        }
        .parsed()
        .unwrap();
        assert_eq!(m.channels, 8);
        // 5 ms + 1 MiB at 100 MiB/s.
        let s = m.service(1 << 20);
        assert!((s.as_secs_f64() - 0.015).abs() < 1e-3, "{s:?}");
        let bad = DiskModel {
            latency: "5ms".into(),
            channels: 0,
            read_bps: None,
        };
        assert!(bad.parsed().is_err());
    }
}
