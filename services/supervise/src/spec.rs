//! What a service is: the plain data a [`crate::Supervisor`] is given.

pub use kelson_base::restart::{Backoff, RestartMode, RestartPolicy};
use nix::sys::signal::Signal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// One supervised program.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceSpec {
    /// Unique among the supervisor's services; names the log and state files.
    pub name: String,
    /// `argv[0]` is the program: an absolute path, or a name looked up in
    /// `PATH` (the spec's own `PATH`, else [`DEFAULT_PATH`]).
    pub argv: Vec<String>,
    /// Added to a cleared environment that holds only `PATH=`[`DEFAULT_PATH`],
    /// so a service never inherits whatever PID 1 was started with.
    pub env: Vec<(String, String)>,
    pub working_dir: Option<PathBuf>,
    /// Everything that must hold before each start (and each restart).
    pub requires: Vec<Requirement>,
    /// Without one, the service counts as healthy as soon as it is started.
    pub health: Option<HealthCheck>,
    pub restart: RestartPolicy,
    pub stop: StopPolicy,
    pub resources: Resources,
}

/// The `PATH` a service gets unless its spec sets one.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

impl ServiceSpec {
    /// A spec with the defaults: no requirements, no health check, restart
    /// always with [`Backoff::default`], SIGTERM with a 10 s grace, no limits.
    pub fn new(name: impl Into<String>, argv: impl IntoIterator<Item = impl Into<String>>) -> Self {
        ServiceSpec {
            name: name.into(),
            argv: argv.into_iter().map(Into::into).collect(),
            env: Vec::new(),
            working_dir: None,
            requires: Vec::new(),
            health: None,
            restart: RestartPolicy::default(),
            stop: StopPolicy::default(),
            resources: Resources::default(),
        }
    }
}

/// Something a service waits for before it is started.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Requirement {
    /// Another service of the same supervisor is in state `healthy`.
    Healthy(String),
    /// Another service of the same supervisor has exited 0 under a restart
    /// policy that leaves it so (state `completed`): a one-shot that did its
    /// job, such as importing an image. A service that restarts always
    /// never completes, so [`crate::Supervisor::new`] refuses to wait for one.
    Completed(String),
    /// A file, directory or unix socket exists (checked by polling).
    PathExists(PathBuf),
    /// A named condition the caller sets with
    /// [`crate::Supervisor::set_condition`], e.g. [`NETWORK_READY`].
    Condition(String),
}

/// The condition PID 1 sets once node networking is up.
pub const NETWORK_READY: &str = "network-ready";
/// Set by PID 1 on a node joining by bootstrap token once discovery has
/// verified the cluster and written the kubelet's bootstrap kubeconfig; the
/// kubelet waits for it.
pub const CLUSTER_JOINED: &str = "cluster-joined";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    pub probe: Probe,
    /// Between checks until the service is first healthy.
    pub startup_interval: Duration,
    /// Between checks once it is healthy.
    pub interval: Duration,
    /// One check's limit; a check that takes longer has failed.
    pub timeout: Duration,
    /// Consecutive failures that take a healthy service back to `running`.
    pub failure_threshold: u32,
}

impl HealthCheck {
    /// Checks every 500 ms until healthy, then every 10 s, each within 2 s;
    /// three failures in a row make it unhealthy.
    pub fn new(probe: Probe) -> Self {
        HealthCheck {
            probe,
            startup_interval: Duration::from_millis(500),
            interval: Duration::from_secs(10),
            timeout: Duration::from_secs(2),
            failure_threshold: 3,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// `http://host:port/path`; healthy on a 2xx status.
    HttpGet { url: String },
    /// Healthy when a TCP connection is accepted.
    TcpConnect { addr: SocketAddr },
    /// Healthy when the unix socket accepts a connection.
    UnixConnect { path: PathBuf },
    /// Healthy when the program exits 0. Started through the same launcher
    /// as services, so PID 1's reaper sees it.
    Exec { argv: Vec<String> },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StopPolicy {
    pub signal: Signal,
    /// After this, the service's process group gets SIGKILL.
    pub grace: Duration,
}

impl Default for StopPolicy {
    fn default() -> Self {
        StopPolicy { signal: Signal::SIGTERM, grace: Duration::from_secs(10) }
    }
}

/// Limits applied through the service's own cgroup, and its OOM score.
/// The cgroup is created only when the supervisor has a cgroup root.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Resources {
    /// Bytes, written to `memory.max`; `None` leaves it at `max`.
    pub memory_max: Option<u64>,
    /// 1..=10000, written to `cpu.weight`; `None` leaves the kernel's 100.
    pub cpu_weight: Option<u32>,
    /// -1000..=1000, written to `/proc/self/oom_score_adj` before exec.
    pub oom_score_adj: Option<i32>,
}
