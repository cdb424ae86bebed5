//! What it takes to run one container, in Kelson's own terms: the pods side
//! fills it from a pod spec and the image's defaults, and [`crate::bundle`]
//! turns it into an OCI runtime bundle.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// One container to run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerConfig {
    /// Unique on the node; used as the runtime's container id.
    pub id: String,
    /// The container's root directory (an overlay from [`crate::rootfs`]).
    pub rootfs: PathBuf,
    /// argv; the first element is the program.
    pub args: Vec<String>,
    /// `KEY=VALUE` entries.
    pub env: Vec<String>,
    /// Absolute working directory inside the container.
    pub cwd: String,
    pub user: User,
    pub security: Security,
    pub mounts: Vec<Mount>,
    /// Absolute cgroup v2 path relative to the cgroup2 mount, e.g.
    /// `/kelson.slice/pods/etcd/etcd`.
    pub cgroups_path: PathBuf,
    pub resources: Resources,
    pub namespaces: Namespaces,
    /// Set only when the container has its own UTS namespace.
    pub hostname: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    pub uid: u32,
    pub gid: u32,
    #[serde(default)]
    pub additional_gids: Vec<u32>,
}

/// The basic securityContext.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Security {
    /// Every capability, no masked or read-only kernel paths, /sys writable.
    pub privileged: bool,
    /// Capability names as Kubernetes writes them (`NET_ADMIN`; a `CAP_`
    /// prefix is accepted), added to the default set.
    #[serde(default)]
    pub capabilities_add: Vec<String>,
    /// Removed from the default set after adding; `ALL` removes all.
    #[serde(default)]
    pub capabilities_drop: Vec<String>,
    pub readonly_rootfs: bool,
    /// The process and its children cannot gain privileges (setuid, file
    /// capabilities): Kubernetes' `allowPrivilegeEscalation: false`.
    #[serde(default)]
    pub no_new_privileges: bool,
    /// Kelson's RuntimeDefault seccomp filter ([`crate::seccomp`]), fitted
    /// to the container's capabilities; never for a privileged one.
    #[serde(default)]
    pub seccomp_runtime_default: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Mount {
    /// A host path bound into the container.
    Bind { source: PathBuf, destination: String, readonly: bool },
    /// A fresh tmpfs; `size_bytes` caps it.
    Tmpfs { destination: String, size_bytes: Option<u64> },
}

/// cgroup v2 limits; `None` leaves the kernel's default.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resources {
    /// `cpu.weight`, 1-10000.
    pub cpu_weight: Option<u64>,
    /// `cpu.max`.
    pub cpu_max: Option<CpuMax>,
    /// `memory.max` in bytes.
    pub memory_max: Option<u64>,
    /// `memory.min` in bytes.
    pub memory_min: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuMax {
    /// Microseconds per period; `None` is `max` (no quota).
    pub quota_us: Option<u64>,
    pub period_us: u64,
}

/// Where the container's network, IPC and UTS namespaces come from; it
/// always gets its own mount, PID and cgroup namespaces.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Namespaces {
    pub network: Namespace,
    pub ipc: Namespace,
    pub uts: Namespace,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "path", rename_all = "snake_case")]
pub enum Namespace {
    /// The node's own (hostNetwork, hostIPC).
    Host,
    /// A new one for this container alone.
    New,
    /// Join an existing one, e.g. the pod sandbox's `/proc/<pid>/ns/net` or
    /// a bind-mounted `/run/kelson/netns/<pod>`.
    Join(PathBuf),
}

impl Default for Namespaces {
    fn default() -> Self {
        Self { network: Namespace::New, ipc: Namespace::New, uts: Namespace::New }
    }
}
