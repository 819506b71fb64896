//! Server settings: every setting of `lair serve`, declared once with its default and doc.
//!
//! The [`lair_conf::settings!`] declaration below is the only place a setting exists: the flag
//! (`--header-timeout`), the TOML key (`header-timeout`), the default, the `--help` text, the
//! README's options table and `examples/lair.toml` all come from it. Adding a setting is one
//! entry here plus the code that reads the field.

use std::net::SocketAddr;
use std::path::{Path as StdPath, PathBuf};
use std::time::Duration;

use lair_conf::kind::{
    Addrs, Count, CountIn, Name, NonZeroSize, Path, Positive, Size, Switch, Threads, Time,
};
use lair_conf::{Input, Kind};
use lair_io::{BackendKind, EngineConfig, OpSet, SharedFd};

pub use crate::request::Limits;

/// Where the access log goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AccessLog {
    /// No access log.
    Off,
    /// Standard output.
    Stdout,
    /// Appended to this file.
    File(PathBuf),
}

/// The access log's spelling: `off`, `-` (standard output) or a path (relative to the
/// configuration file when given in one).
pub struct LogDest;

impl Kind<AccessLog> for LogDest {
    const NAME: &'static str = "PATH|-|off";
    fn parse(s: &str) -> Result<AccessLog, String> {
        Ok(match s {
            "off" | "" => AccessLog::Off,
            "-" => AccessLog::Stdout,
            p => AccessLog::File(PathBuf::from(p)),
        })
    }
    fn from_toml(v: &lair_conf::toml::Value, base: Option<&StdPath>) -> Result<AccessLog, String> {
        match <Path as Kind<PathBuf>>::from_toml(v, None)? {
            p if p.as_os_str() == "off" || p.as_os_str() == "-" => {
                <Self as Kind<AccessLog>>::read(Input::Text(&[&p.to_string_lossy()]))
            }
            p => Ok(AccessLog::File(match base {
                Some(b) if p.is_relative() => b.join(p),
                _ => p,
            })),
        }
    }
}

/// How the server runs connections (`--model`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Model {
    /// Each worker an event loop over its own engine, driving many connections.
    #[default]
    Events,
    /// A thread per connection, blocking in its calls (seed 000's Apache-like server).
    Threads,
}

impl std::fmt::Display for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Model::Events => "events",
            Model::Threads => "threads",
        })
    }
}

impl std::str::FromStr for Model {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "events" => Ok(Model::Events),
            "threads" => Ok(Model::Threads),
            other => Err(format!("unknown model {other:?} (known: events, threads)")),
        }
    }
}

/// How a large body leaves the server (`--data`; seed 004's data-passing modes). Each mode's
/// system calls live in lair-io (`lair_io::datapath` for the kernel-side paths); the server
/// only picks one per response.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DataMode {
    /// `sendfile`: the kernel moves the file's pages to the socket.
    #[default]
    Sendfile,
    /// Read a chunk into the connection's buffer, then send it (the baseline every paper
    /// starts from; seed 000's "via a process buffer").
    Copy,
    /// `splice` file → pipe → socket, through a pipe from a small per-worker pool.
    Splice,
    /// `send` from a shared mapping of the file (`mmap`), one per cached file.
    Share,
    /// Read into fresh pages, give them to a pipe and unmap them, splice the pipe to the
    /// socket (seed 004's move).
    Move,
    /// Read like `copy`, then send without copying (`MSG_ZEROCOPY`; seed 004's emulated
    /// copy): the chunk becomes immutable shared bytes the engine holds until the kernel's
    /// notification.
    Emulated,
    /// Per response, by the body's size: the mode `--data-auto` names for it.
    Auto,
}

impl DataMode {
    /// Every mode, in the order experiments list them.
    pub const ALL: [DataMode; 7] = [
        DataMode::Copy,
        DataMode::Share,
        DataMode::Sendfile,
        DataMode::Splice,
        DataMode::Move,
        DataMode::Emulated,
        DataMode::Auto,
    ];

    /// Whether bodies pass through the connection's buffer (read, then sent from it): what
    /// deferred event delivery holds the reads of.
    pub const fn reads_into_buffer(self) -> bool {
        matches!(self, DataMode::Copy | DataMode::Emulated)
    }

    /// The name on the command line.
    pub const fn name(self) -> &'static str {
        match self {
            DataMode::Sendfile => "sendfile",
            DataMode::Copy => "copy",
            DataMode::Splice => "splice",
            DataMode::Share => "share",
            DataMode::Move => "move",
            DataMode::Emulated => "emulated",
            DataMode::Auto => "auto",
        }
    }
}

/// `--data-auto`: which mode `--data auto` uses for a body of a given size — a list of
/// `MODE<SIZE` steps, smallest first, then the mode for everything larger (`copy<64k,sendfile`:
/// below 64 KiB `copy`, from there `sendfile`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AutoRule {
    steps: Vec<(DataMode, u64)>,
    rest: DataMode,
}

impl AutoRule {
    /// The mode for a body of `len` bytes.
    pub fn pick(&self, len: u64) -> DataMode {
        self.steps
            .iter()
            .find(|(_, below)| len < *below)
            .map_or(self.rest, |(m, _)| *m)
    }

    /// Every mode the rule can pick.
    pub fn modes(&self) -> impl Iterator<Item = DataMode> + '_ {
        self.steps.iter().map(|(m, _)| *m).chain([self.rest])
    }
}

impl std::fmt::Display for AutoRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (m, below) in &self.steps {
            write!(f, "{m}<{},", lair_conf::value::size_text(*below))?;
        }
        write!(f, "{}", self.rest)
    }
}

impl std::str::FromStr for AutoRule {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let parts: Vec<&str> = s.split(',').map(str::trim).collect();
        let (last, steps) = parts.split_last().ok_or("an empty rule")?;
        let mode = |t: &str| -> Result<DataMode, String> {
            match t.parse::<DataMode>()? {
                DataMode::Auto => Err("`auto` cannot pick `auto`".into()),
                m => Ok(m),
            }
        };
        let mut out = Vec::new();
        let mut prev = 0;
        for step in steps {
            let (m, size) = step
                .split_once('<')
                .ok_or_else(|| format!("{step:?}: expected MODE<SIZE"))?;
            let below = lair_conf::value::parse_size(size.trim())?;
            if below <= prev {
                return Err(format!("{step:?}: sizes must grow from step to step"));
            }
            prev = below;
            out.push((mode(m.trim())?, below));
        }
        Ok(AutoRule {
            steps: out,
            rest: mode(last)?,
        })
    }
}

impl std::fmt::Display for DataMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for DataMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        DataMode::ALL
            .into_iter()
            .find(|m| m.name() == s)
            .ok_or_else(|| {
                let known: Vec<&str> = DataMode::ALL.into_iter().map(DataMode::name).collect();
                format!("unknown data mode {s:?} (known: {})", known.join(", "))
            })
    }
}

lair_conf::settings! {
    /// Everything `lair serve` is configured with (`lair serve --help`, README "Options").
    #[derive(Clone, Debug)]
    pub struct ServerConfig {
        /// Directory to serve (the positional argument; `root` in a file).
        root: PathBuf = "." as Path;
        /// Address to listen on, IPv4 or IPv6 (`[::1]:8080`); repeat the flag (or give a list)
        /// for several. Port 0 picks a free port.
        listen: Vec<SocketAddr> = "127.0.0.1:8080" as Addrs;
        /// Server model: `events` (each worker an event loop over many connections) or
        /// `threads` (a thread per connection blocking in its calls, as Apache's worker MPM;
        /// `--backend` is not used).
        model: Model = "events" as Name;
        /// Event-loop threads (with `--model threads`: accepting threads), each with its own
        /// SO_REUSEPORT listener; `auto`: one per CPU this process may use.
        workers: usize = "auto" as Threads;
        /// With `--model threads`: most connection threads (Apache's `MaxRequestWorkers`,
        /// 400 by default there too); more connections wait for a free thread, up to
        /// `--max-connections`.
        threads: usize = "400" as Positive;
        /// Pin worker i to the i-th CPU this process may use.
        pin: bool = "false" as Switch;
        /// I/O backend: `lazy` (try without blocking, helpers only for calls that would block),
        /// `sync` (block on the disk inside the loop; the baseline), `eager` (every call to a
        /// helper thread), `hybrid` (sockets on the loop, every disk call to a helper), `uring`
        /// (io_uring; falls back to lazy where it is unavailable; `--laio-ops` applies to its
        /// file calls only, and its cold opens do not prefetch).
        backend: BackendKind = "lazy" as Name;
        /// Upper bound of helper threads per worker.
        helpers: usize = "32" as Positive;
        /// Which operations go through the backend: `all`, `network` (all but
        /// open/stat/read/write: seed 001's "networkonly"), `disk`, `none`, or names
        /// (`open,read,sendfile`); the others run directly on the loop, as under `sync`.
        laio_ops: OpSet = "all" as Name;
        /// Most open connections over all workers; beyond it new ones get 503 and accepting
        /// pauses.
        max_connections: usize = "10000" as Positive;
        /// Longest request line (414 beyond).
        max_request_line: usize = "8k" as Size;
        /// Largest request head, request line included (431 beyond).
        max_header_bytes: usize = "32k" as Size;
        /// Most header fields (431 beyond; at most 256).
        max_header_fields: usize = "100" as CountIn<1, 256>;
        /// Largest request body read and discarded on GET/HEAD (413 and close beyond).
        max_discard_body: u64 = "64k" as Size;
        /// Time to receive a whole request head (slowloris protection).
        header_timeout: Duration = "10s" as Time;
        /// Idle time allowed between keep-alive requests.
        keepalive_timeout: Duration = "30s" as Time;
        /// Time a response may make no progress before the connection is dropped.
        send_timeout: Duration = "30s" as Time;
        /// How long to drain a client's input after an error response before closing, so the
        /// response is not destroyed by a reset.
        linger_timeout: Duration = "2s" as Time;
        /// How long SIGINT/SIGTERM waits for in-flight responses.
        shutdown_timeout: Duration = "10s" as Time;
        /// Serve files and directories whose names start with `.` (hidden, 404, otherwise;
        /// `.well-known` is always served).
        dotfiles: bool = "false" as Switch;
        /// Bodies up to this size are read into memory and sent with the head in one write;
        /// larger ones go by `--data`.
        small_file_bytes: usize = "16k" as Size;
        /// How a body larger than `--small-file-bytes` is sent: `sendfile`; `copy` (read
        /// 64 KiB at a time into the connection's buffer, then send it: Apache's default,
        /// `EnableSendfile Off`, and what deferred event delivery works on); `splice` (file →
        /// pipe → socket, pipes from a per-worker pool); `share` (`send` from a shared
        /// mapping of the file); `move` (read into fresh pages, gift them to a pipe and unmap
        /// them, splice); `emulated` (read like `copy`, send with `MSG_ZEROCOPY`, the chunk
        /// held until the kernel is done with it; `uring` uses `IORING_OP_SEND_ZC`). `uring`
        /// stages `splice`, `share` and `move` as it stages sendfile.
        data: DataMode = "sendfile" as Name;
        /// What `--data auto` uses, by body size: `MODE<SIZE` steps, smallest first, then the
        /// mode for larger bodies (`copy<64k,sendfile`). Not yet measured: the `datapass`
        /// experiment is to set it.
        data_auto: AutoRule = "sendfile" as Name;
        /// Most bytes one sendfile call sends before the connection waits its turn again
        /// (fairness between large downloads, like nginx's `sendfile_max_chunk`); the one
        /// sendfile window: `lazy` checks this range with cachestat, `uring` stages it.
        sendfile_chunk: usize = "512k" as NonZeroSize;
        /// Access log (Combined Log Format): a file path, `-` for standard output, or `off`.
        access_log: AccessLog = "off" as LogDest;
        /// How long an open file (descriptor, metadata, validators, small body) is reused
        /// before its path is looked up again (a change to the file itself is seen at once:
        /// each hit checks it); `0` disables the cache.
        file_cache_ttl: Duration = "1s" as Time;
        /// Most files each worker keeps open in its cache.
        file_cache_entries: usize = "1024" as Count;
        /// Most bytes of small-file bodies and their prebuilt response heads kept in memory,
        /// over the whole server (split evenly between workers, or threads under `--model
        /// threads`); past it the least recently used go first.
        cache_bytes: usize = "64m" as Size;
        /// Join a port that another process already listens on (both with SO_REUSEPORT; the
        /// kernel spreads connections over them): for a rolling restart. Off, such a port is
        /// an error at start-up, as it is for nginx.
        share_port: bool = "false" as Switch;
        /// Listen backlog (the kernel caps it at `net.core.somaxconn`).
        backlog: i32 = "4096" as CountIn<1, 65535>;
        /// Most bytes a connection may leave unsent in the kernel before it stops being
        /// writable (`TCP_NOTSENT_LOWAT`), so a slow reader cannot make the server queue
        /// megabytes for it; `0`: no limit (the kernel's default). See docs/SECURITY.md for
        /// the measurement behind 128k.
        notsent_lowat: u32 = "128k" as Size;
        /// Event correlation (seed 000): `off`; `dns` (disk-to-network splicing, event loop:
        /// each sendfile sends the socket's free room under `--notsent-lowat`, from cached
        /// pages, and reads the next window ahead; readiness backends only, `uring` says so
        /// and runs without it); `ded` (deferred event delivery, `--model threads`: a chunk's
        /// disk read is started, then the thread waits for room on the socket, then reads
        /// and sends it); or `ded,dns`.
        ecem: lair_io::EcemMode = "off" as Name;
        /// Write the engine counters and HTTP statistics as JSON to this file at exit.
        stats_json: Option<PathBuf> = "" as Path;
    }
}

impl ServerConfig {
    /// Defaults for serving `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        ServerConfig {
            root: root.into(),
            ..ServerConfig::default()
        }
    }

    /// The engine's settings: the ones declared above, the document root it probes, and the
    /// CPUs the placement gave its threads. The one place a server setting reaches lair-io.
    pub fn engine(&self, probe_dir: Option<SharedFd>, cpus: Vec<usize>) -> EngineConfig {
        EngineConfig {
            helpers: self.helpers,
            probe_dir,
            laio_ops: self.laio_ops,
            cpus,
            sendfile_window: self.sendfile_chunk,
            ecem: self.ecem,
            notsent_lowat: self.notsent_lowat,
        }
    }

    /// The request-size limits, as the parser takes them.
    pub fn limits(&self) -> Limits {
        Limits {
            request_line_bytes: self.max_request_line,
            header_bytes: self.max_header_bytes,
            header_fields: self.max_header_fields,
            discard_body_bytes: self.max_discard_body,
        }
    }

    /// What the kinds of the declaration cannot rule out (a struct built in code rather than
    /// read from flags or a file). A value read from a flag or a file was checked by its kind
    /// already, and its error named that flag, or that file and key.
    pub fn check(&self) -> Result<(), String> {
        if self.workers == 0 {
            return Err("workers must be at least 1".into());
        }
        if self.listen.is_empty() {
            return Err("no listen address".into());
        }
        if self.max_header_fields == 0 || self.max_header_fields > crate::request::MAX_FIELDS {
            return Err(format!(
                "max-header-fields must be 1..={}",
                crate::request::MAX_FIELDS
            ));
        }
        let ded_ok = match self.data {
            DataMode::Auto => self.data_auto.modes().any(DataMode::reads_into_buffer),
            m => m.reads_into_buffer(),
        };
        if self.ecem.ded && !ded_ok {
            return Err(
                "ecem: `ded` holds the disk reads of bodies sent through the connection's \
                 buffer: it needs --data copy or emulated (sendfile bodies are paced by `dns`)"
                    .into(),
            );
        }
        if self.max_connections == 0 || self.sendfile_chunk == 0 || self.backlog < 1 {
            return Err("max-connections, sendfile-chunk and backlog must be at least 1".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lair_conf::Settings as _;

    #[test]
    fn an_auto_rule_picks_by_size_and_reads_back_as_written() {
        let r: AutoRule = "emulated<16k, copy<64k, sendfile".parse().unwrap();
        assert_eq!(r.pick(1000), DataMode::Emulated);
        assert_eq!(r.pick(16 << 10), DataMode::Copy);
        assert_eq!(r.pick(64 << 10), DataMode::Sendfile);
        assert_eq!(r.to_string(), "emulated<16k,copy<64k,sendfile");
        assert_eq!(
            "splice".parse::<AutoRule>().unwrap().pick(1),
            DataMode::Splice
        );
        for bad in [
            "",
            "copy<64k",
            "copy<64k,auto",
            "copy<64k,emulated<16k,sendfile",
            "x<1k,copy",
        ] {
            assert!(bad.parse::<AutoRule>().is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn every_backend_is_named_in_the_backend_help() {
        let s = ServerConfig::SETTINGS
            .iter()
            .find(|s| s.field == "backend")
            .unwrap();
        for b in BackendKind::ALL {
            assert!(
                s.doc.contains(&format!("`{b}`")),
                "{b} missing from --backend's doc"
            );
        }
    }

    #[test]
    fn the_header_field_bound_is_the_parsers() {
        let s = ServerConfig::SETTINGS
            .iter()
            .find(|s| s.field == "max_header_fields")
            .unwrap();
        let max = crate::request::MAX_FIELDS;
        assert!((s.check)(&max.to_string()).is_ok());
        assert!((s.check)(&(max + 1).to_string()).is_err());
        assert!((s.check)("0").is_err());
    }

    #[test]
    fn defaults_are_sane() {
        let c = ServerConfig::default();
        assert_eq!(c.check(), Ok(()));
        assert_eq!(
            c.limits(),
            Limits {
                request_line_bytes: 8 << 10,
                header_bytes: 32 << 10,
                header_fields: 100,
                discard_body_bytes: 64 << 10,
            },
            "the request parser's tests use these"
        );
        assert_eq!(c.backend, BackendKind::Lazy);
        assert_eq!(c.access_log, AccessLog::Off);
        assert!(c.stats_json.is_none());
    }

    #[test]
    fn access_log_paths_in_a_file_are_relative_to_it() {
        let mut c = ServerConfig::default();
        lair_conf::apply_toml(
            &mut c,
            "access-log = 'logs/a.log'",
            StdPath::new("/etc/lair/l.toml"),
        )
        .unwrap();
        assert_eq!(c.access_log, AccessLog::File("/etc/lair/logs/a.log".into()));
        lair_conf::apply_toml(&mut c, "access-log = '-'", StdPath::new("/etc/lair/l.toml"))
            .unwrap();
        assert_eq!(c.access_log, AccessLog::Stdout);
    }
}
