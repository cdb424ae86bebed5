//! Kelson's service supervisor, and the node services it runs.
//!
//! A [`Supervisor`] runs [`ServiceSpec`]s: each waits for its
//! [`Requirement`]s (another service healthy, or completed for a one-shot,
//! a path existing, a named condition such as [`NETWORK_READY`]), is started through a [`Launcher`]
//! (PID 1's reaper on the node), gets its own cgroup and OOM score, is
//! health-checked, restarted with exponential back-off, and stopped in
//! reverse dependency order; one service at a time can be started, stopped
//! or restarted on request ([`Supervisor::control`]). Each service's state is a [`ServiceStatus`],
//! published in a `watch` snapshot, as [`Transition`]s and as
//! `<state_dir>/<name>.json`; its output goes to a rotated log file and an
//! in-memory ring ([`Supervisor::logs`]).
//!
//! [`node`] renders containerd's, the kubelet's and kube-proxy's files and
//! specs, and the one-shot that imports the pod sandbox image, from the
//! machine config, as pure functions.

mod cgroup;
mod command;
mod control;
mod health;
mod launcher;
mod logs;
pub mod node;
mod runner;
mod spec;
mod status;
mod supervisor;

pub use cgroup::{CgroupError, CgroupRoot};
pub use control::{ControlError, ServiceAction};
pub use health::parse_http_url;
pub use kelson_base::{Clock, FakeClock, SystemClock};
pub use launcher::{ExitFuture, Launched, Launcher, ThreadLauncher};
pub use logs::{LogFileError, LogLine, LogSettings, LogSubscription};
pub use spec::*;
pub use status::{write_state_file, ServiceState, ServiceStatus, Snapshot, StateFileError, Transition};
pub use supervisor::{Settings, SuperviseError, Supervisor, DEFAULT_STATE_DIR};
