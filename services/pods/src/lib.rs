//! Kelson's static pods: what a pod is (the model, on any host) and the
//! pod manager that runs them ([`runtime`]: sandboxes with their own
//! namespaces, containers through the shim and image store of
//! `kelson-containers`, everything that touches the kernel behind traits).
//!
//! - [`manifest`]: a file under `/etc/kubernetes/manifests` read as a
//!   k8s-openapi Pod, validated, and mapped to a [`PodSpec`] (errors name
//!   file, field and reason).
//! - [`cgroup`], [`hostpath`]: requests/limits as cgroup v2 values the
//!   kubelet's way; `hostPath.type` checks over a filesystem seam.
//! - [`env`](mod@env): downward-API values and `$(VAR)` expansion at container start.
//! - [`probe`]: probe results with thresholds, startup gating, restarts.
//! - [`restart`]: restart policy decisions and the kubelet's crash-loop
//!   back-off over a [`Clock`].
//! - [`status`]: pod phase and container states, written as JSON files.
//! - [`crilog`]: container output as CRI-format log files with rotation;
//!   [`logread`]: those files read back (the last lines, then following
//!   them across rotations and restarts) for the management API.
//! - [`runtime`]: the pod manager that runs pods through the container
//!   shim, with its seams (runtime, images, mounts, sandbox, probes).
//! - [`watch`]: the manifest directory as a set, diffed into events, and an
//!   inotify watcher with debounce.

pub mod cgroup;
pub mod crilog;
pub mod env;
mod error;
pub mod hostpath;
pub mod logread;
pub mod manifest;
pub mod probe;
mod quantity;
pub mod restart;
pub mod runtime;
mod spec;
pub mod status;
pub mod time;
mod validate;
pub mod watch;

pub use error::{FieldError, ManifestError};
pub use kelson_base::clock::{Clock, FakeClock, SystemClock};
pub use spec::*;
