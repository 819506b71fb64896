//! lair-lab: the experiment lab — workloads, environments, peers, runs, reports and plots.
//!
//! An experiment is a TOML file under `experiments/` ([`experiment`]): servers × workloads ×
//! client counts × environments × repetitions. [`run::run`] makes the filesets
//! ([`workload`], [`fileset`]), sets up the environment ([`env`]: cold cache, slow disk, slow
//! clients, all undone afterwards; [`disk`]: an emulated disk whose reads take a fixed time
//! on parallel channels), starts each server pinned to its CPU ([`servers`]: lair's
//! backends, nginx, nginx `aio threads`, lighttpd), drives it with `lair-load` clients pinned
//! to theirs, reads the server's cost from `/proc` ([`proc`]) and its engine counters, and
//! writes JSON ([`results`]), CSV, a Markdown summary and SVG plots ([`report`]). Access logs of one's own
//! become workloads through [`clf`]. Seed 001's micro-benchmarks (getpid, open-stat) are in
//! [`micro`].
//!
//! The lab changes the system only as root and only in ways it undoes: cgroups and network
//! namespaces it names after its PID, loop devices and mounts over its own filesets, page-cache
//! state of its own files.

#![forbid(unsafe_code)]

pub mod clf;
pub mod dataset;
pub mod disk;
pub mod env;
pub mod experiment;
pub mod fileset;
pub mod micro;
pub mod proc;
pub mod report;
pub mod results;
pub mod run;
pub mod servers;
pub mod soak;
pub mod workload;
