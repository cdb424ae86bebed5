//! Running static pods: the [`PodManager`] turns manifest events into
//! sandboxes and containers and keeps their status files up to date.
//!
//! Everything that touches the kernel or another process sits behind a
//! trait, so the manager's decisions (restart, back-off, replace, stop with
//! grace) are tested on any host with fakes:
//!
//! - [`ContainerRuntime`]: create / kill / delete and exit events; the real
//!   one is the shim ([`shim::ShimRuntime`]), because PID 1 must never run
//!   libcontainer itself.
//! - [`Images`]: an image reference to an unpacked lower directory and the
//!   image's defaults ([`shim::StoreImages`] over kelson-containers' store).
//! - [`PodHost`]: overlay and tmpfs mounts ([`shim::SystemHost`]).
//! - [`SandboxNetwork`]: a pod's namespaces and IP ([`HostOnlyNetwork`] for
//!   host-network pods; init adds kelson-net's veth attach).
//! - [`Prober`]: one probe attempt ([`probe_exec::NetProber`]).

mod build;
pub mod files;
mod logs;
mod manager;
pub mod netns;
pub mod probe_exec;
mod probe_tasks;
pub mod shim;
mod start;
mod state;
mod status_files;
#[cfg(test)]
mod tests;

pub use build::{container_config, ConfigError, ContainerPaths};
pub use manager::{ManagerCommand, ManagerConfig, PodManager};

use crate::crilog::{ContainerLog, LogLimits};
use crate::hostpath::HostFs;
use crate::spec::{PodSpec, ProbeAction};
use crate::status::{PodStatus, StatusError};
use kelson_base::Exit;
use kelson_containers::store::ImageDefaults;
use kelson_containers::{ContainerConfig, Namespace};
use std::future::Future;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How a container ended, as the runtime reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExitInfo {
    pub id: String,
    pub exit: Exit,
    /// Its cgroup saw an OOM kill: the status says `OOMKilled`.
    pub oom_killed: bool,
}

/// A runtime call that failed: what was asked, of which container, and why.
#[derive(Debug, thiserror::Error)]
#[error("{action} container {id}")]
pub struct RuntimeError {
    pub action: &'static str,
    pub id: String,
    #[source]
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

/// The runtime has no way to start another in its place.
#[derive(Debug, thiserror::Error)]
#[error("this runtime cannot be restarted")]
pub struct NotRestartable;

/// Creates, signals and deletes containers, and reports their exits.
pub trait ContainerRuntime: Send + 'static {
    /// Creates and starts a container from the bundle; its output goes to
    /// the two paths (FIFOs whose reader is already open).
    fn create(
        &mut self,
        id: &str,
        bundle: &Path,
        stdout: &Path,
        stderr: &Path,
    ) -> impl Future<Output = Result<(), RuntimeError>> + Send;
    fn kill(&mut self, id: &str, signal: i32) -> impl Future<Output = Result<(), RuntimeError>> + Send;
    /// Removes an exited container (its cgroup and runtime state).
    fn delete(&mut self, id: &str) -> impl Future<Output = Result<(), RuntimeError>> + Send;
    /// The next container exit. Must be cancel safe: the manager polls it
    /// beside its other inputs. An error means the runtime itself is gone
    /// (the shim died) and every container it ran with it.
    fn next_exit(&mut self) -> impl Future<Output = Result<ExitInfo, RuntimeError>> + Send;
    /// After [`ContainerRuntime::next_exit`] failed: a fresh runtime in
    /// place of the lost one, which kills whatever is left of the lost
    /// one's containers. The default cannot.
    fn restart(&mut self) -> impl Future<Output = Result<(), RuntimeError>> + Send {
        async {
            Err(RuntimeError {
                action: "restarting the runtime of",
                id: "every".into(),
                source: Box::new(NotRestartable),
            })
        }
    }
}

/// An image ready to be a container's lower layer.
#[derive(Debug, Clone)]
pub struct PreparedImage {
    pub lower: PathBuf,
    pub defaults: ImageDefaults,
}

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// Not in the node's store (no registry is ever asked): the status says
    /// `ErrImageNeverPull`.
    #[error("image {reference} is not in the node's image store")]
    NotFound {
        reference: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("preparing image {reference}")]
    Failed {
        reference: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// Finds and unpacks images. Blocking: the manager calls it off the
/// runtime's worker threads.
pub trait Images: Send + Sync + 'static {
    fn prepare(&self, reference: &str) -> Result<PreparedImage, ImageError>;
}

/// A mount-related failure on the host, naming what and where.
#[derive(Debug, thiserror::Error)]
#[error("{action} {}", path.display())]
pub struct HostError {
    pub action: &'static str,
    pub path: PathBuf,
    #[source]
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

/// A pod's emptyDir that could not be made.
#[derive(Debug, thiserror::Error)]
#[error("preparing emptyDir {volume}")]
pub(crate) struct VolumeError {
    pub volume: String,
    #[source]
    pub source: HostError,
}

/// The mounts a pod needs on the host, and every file the manager
/// touches (directories, FIFOs, bundles, logs, cgroups, status files).
pub trait PodHost: Send + Sync + 'static {
    /// Mounts a fresh overlay of `lower` under `container_dir` and returns
    /// the root for the container.
    fn mount_rootfs(&self, lower: &Path, container_dir: &Path) -> Result<PathBuf, HostError>;
    /// Unmounts and removes what [`PodHost::mount_rootfs`] made (nothing
    /// there is fine).
    fn remove_rootfs(&self, container_dir: &Path) -> Result<(), HostError>;
    /// A tmpfs on `target` (an emptyDir with medium Memory).
    fn mount_tmpfs(&self, target: &Path, size_bytes: Option<u64>) -> Result<(), HostError>;
    /// Lazily unmounts `target`; not mounted is fine.
    fn unmount(&self, target: &Path) -> Result<(), HostError>;

    // The manager's files; [`files`] has the real ones.

    /// Creates `dir` and its missing parents.
    fn create_dir(&self, dir: &Path) -> Result<(), HostError>;
    /// Removes a directory tree; absent is fine.
    fn remove_tree(&self, dir: &Path) -> Result<(), HostError>;
    /// Removes a file; absent is fine.
    fn remove_file(&self, path: &Path) -> Result<(), HostError>;
    /// Makes a FIFO at `path` and opens its read end without waiting for
    /// a writer.
    fn open_fifo(&self, path: &Path) -> Result<OwnedFd, HostError>;
    /// Writes a container's bundle (`config.json`) into `dir`.
    fn write_bundle(&self, dir: &Path, config: &ContainerConfig) -> Result<(), HostError>;
    /// Opens (creates) a container's CRI log file.
    fn open_log(&self, path: &Path, limits: LogLimits) -> Result<ContainerLog, HostError>;
    /// The controllers cgroup v2 offers at `cgroup_root`.
    fn cgroup_controllers(&self, cgroup_root: &Path) -> Result<Vec<String>, HostError>;
    /// Removes a pod's cgroup directory and what is left of its
    /// containers' directories in it; absent is fine, busy is an error.
    fn remove_cgroup(&self, dir: &Path) -> Result<(), HostError>;
    /// The directories in `dir`.
    fn list_dirs(&self, dir: &Path) -> Result<Vec<PathBuf>, HostError>;
    /// Writes a pod's status file into `dir`.
    fn write_status(&self, dir: &Path, status: &PodStatus) -> Result<(), StatusError>;
    /// Removes a pod's status file from `dir`; absent is fine.
    fn remove_status(&self, dir: &Path, namespace: &str, name: &str) -> Result<(), StatusError>;
    /// Where hostPath volumes are checked (and made, for the `…OrCreate`
    /// types).
    fn host_paths(&self) -> &dyn HostFs;
}

/// Every pod the manager runs, in start order, as it publishes them on its
/// `watch` channel ([`PodManager::subscribe`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodsStatus {
    pub pods: Vec<PodStatus>,
}

/// A pod's namespaces as its containers join them, and its address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sandbox {
    pub network: Namespace,
    pub ipc: Namespace,
    pub uts: Namespace,
    pub pod_ip: Option<String>,
}

#[derive(Debug, thiserror::Error)]
#[error("{action} the sandbox of pod {pod}")]
pub struct SandboxError {
    pub action: &'static str,
    pub pod: String,
    #[source]
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

/// Makes and releases pod sandboxes.
pub trait SandboxNetwork: Send + Sync + 'static {
    fn create(&self, pod: &PodSpec) -> impl Future<Output = Result<Sandbox, SandboxError>> + Send;
    /// Undoes [`SandboxNetwork::create`]; releasing twice is fine.
    fn release(&self, pod: &PodSpec) -> impl Future<Output = Result<(), SandboxError>> + Send;
}

/// The sandbox of a host-network pod made without namespace files: the
/// host's network and UTS namespaces, and the host's IPC namespace with
/// `hostIPC`. Without it each container gets an IPC namespace of its own;
/// PID 1's sandboxes replace that with one the pod's containers share
/// ([`netns::Unshare::IPC_ONLY`]), as the kubelet's pause container does.
pub fn host_sandbox(pod: &PodSpec, host_ip: Option<String>) -> Sandbox {
    Sandbox {
        network: Namespace::Host,
        uts: Namespace::Host,
        ipc: if pod.host_ipc { Namespace::Host } else { Namespace::New },
        pod_ip: host_ip,
    }
}

/// Sandboxes for host-network pods only; other pods are refused. Used
/// where no pod network exists (no bridge configured, tests).
#[derive(Debug, Clone, Default)]
pub struct HostOnlyNetwork {
    pub host_ip: Option<String>,
}

#[derive(Debug, thiserror::Error)]
#[error("pods without hostNetwork need the node's pod network, and this node has none")]
pub struct NoPodNetwork;

impl SandboxNetwork for HostOnlyNetwork {
    async fn create(&self, pod: &PodSpec) -> Result<Sandbox, SandboxError> {
        if pod.host_network {
            Ok(host_sandbox(pod, self.host_ip.clone()))
        } else {
            Err(SandboxError { action: "creating", pod: pod.full_name(), source: Box::new(NoPodNetwork) })
        }
    }

    async fn release(&self, _pod: &PodSpec) -> Result<(), SandboxError> {
        Ok(())
    }
}

/// Runs one probe attempt against `host` (the pod's IP, or 127.0.0.1
/// for host-network pods, unless the probe names its own host).
pub trait Prober: Send + Sync + 'static {
    fn probe(
        &self,
        action: &ProbeAction,
        host: &str,
        timeout: Duration,
    ) -> impl Future<Output = Result<(), String>> + Send;

    /// Runs an `exec` probe's command inside the container whose cgroup is
    /// `cgroup` (an absolute directory under the cgroup2 mount): it passes
    /// when the command exits 0 within `timeout`. Starting a process is the
    /// node's business (PID 1 reaps everything), so the default refuses.
    fn exec(
        &self,
        command: &[String],
        cgroup: &Path,
        timeout: Duration,
    ) -> impl Future<Output = Result<(), String>> + Send {
        let _ = (command, cgroup, timeout);
        async { Err("this prober cannot run exec probes".to_owned()) }
    }
}
