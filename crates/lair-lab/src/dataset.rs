//! The data every workload becomes: a fileset and a request sequence over it.
//!
//! Its own module so that the generators ([`crate::workload`]) and the access-log importer
//! ([`crate::clf`]) both build it without depending on each other.

use serde::{Deserialize, Serialize};

/// A file of a fileset.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileSpec {
    /// Request path, starting with `/`.
    pub path: String,
    /// Size in bytes.
    pub bytes: u64,
}

/// One request: which file, and when (ms after the first; 0 when the workload has no clock).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Req {
    /// Milliseconds after the first request.
    pub t_ms: u64,
    /// Index into [`Dataset::files`].
    pub file: u32,
}

/// A generated or imported workload.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Dataset {
    /// The fileset.
    pub files: Vec<FileSpec>,
    /// The request sequence.
    pub requests: Vec<Req>,
    /// Lines skipped while reading (traces, logs).
    pub skipped: u64,
}
