//! Kelson's own description of a static pod: what the sandbox and the
//! container shim need, already validated, defaulted and converted (cgroup
//! v2 values, durations, paths). Made from a manifest by
//! [`crate::manifest::load`]; nothing in here refers to k8s-openapi.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Duration;

/// A pod's UID: a digest of where its manifest is and what it says, so an
/// edited manifest is a new pod and an untouched one keeps its UID across
/// restarts of PID 1.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct PodUid(pub String);

impl std::fmt::Display for PodUid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodSpec {
    /// The manifest this pod came from.
    pub manifest: PathBuf,
    /// The name the pod runs under: the manifest's `metadata.name`, with
    /// `-<node name>` appended when a node name is known, as the kubelet
    /// names static pods.
    pub name: String,
    /// `metadata.name` as written in the manifest.
    pub manifest_name: String,
    /// `default` when the manifest names none, as for the kubelet.
    pub namespace: String,
    pub uid: PodUid,
    pub node_name: Option<String>,
    pub labels: std::collections::BTreeMap<String, String>,
    pub annotations: std::collections::BTreeMap<String, String>,
    /// Share the host's network namespace (kubeadm's master pods do)
    /// instead of a new one on cbr0.
    pub host_network: bool,
    pub host_pid: bool,
    pub host_ipc: bool,
    /// Informational: there is no scheduler or preemption for static pods.
    pub priority_class_name: Option<String>,
    pub priority: Option<i32>,
    pub restart_policy: RestartPolicy,
    /// SIGTERM, then this long, then SIGKILL. 30 s unless the manifest says.
    pub termination_grace_period: Duration,
    pub volumes: Vec<VolumeSpec>,
    pub containers: Vec<ContainerSpec>,
    /// Fields of the manifest that were ignored (unknown to the Pod type),
    /// for the owner to log.
    pub warnings: Vec<crate::FieldError>,
}

impl PodSpec {
    /// `<namespace>_<name>`, the key status files and log directories use.
    pub fn full_name(&self) -> String {
        format!("{}_{}", self.namespace, self.name)
    }

    pub fn container(&self, name: &str) -> Option<&ContainerSpec> {
        self.containers.iter().find(|c| c.name == name)
    }

    pub fn volume(&self, name: &str) -> Option<&VolumeSpec> {
        self.volumes.iter().find(|v| v.name == name)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum RestartPolicy {
    #[default]
    Always,
    OnFailure,
    Never,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerSpec {
    pub name: String,
    pub image: String,
    pub image_pull_policy: PullPolicy,
    /// Replaces the image's entrypoint when not empty.
    pub command: Vec<String>,
    /// Replaces the image's cmd when not empty.
    pub args: Vec<String>,
    /// In manifest order: a later entry may refer to an earlier one.
    pub env: Vec<EnvVar>,
    pub working_dir: Option<PathBuf>,
    /// Informational: with a shared network namespace there is nothing to
    /// publish.
    pub ports: Vec<PortSpec>,
    pub mounts: Vec<MountSpec>,
    pub resources: Resources,
    pub security: SecurityContext,
    pub liveness: Option<ProbeSpec>,
    pub readiness: Option<ProbeSpec>,
    pub startup: Option<ProbeSpec>,
    pub tty: bool,
    pub stdin: bool,
}

/// Kubernetes' default is `Always` for `:latest` (or no tag) and
/// `IfNotPresent` otherwise; Kelson pulls nothing, so this is recorded for
/// the image store to explain a missing image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PullPolicy {
    Always,
    IfNotPresent,
    Never,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EnvVar {
    pub name: String,
    pub value: EnvValue,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum EnvValue {
    /// `value:` as written; `$(VAR)` references are expanded when the
    /// container starts, against the variables before it.
    Literal(String),
    /// `valueFrom.fieldRef`, resolved when the container starts (the pod IP
    /// is not known before the sandbox exists).
    Field(PodField),
}

/// The downward-API fields a static pod can be told about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PodField {
    /// `metadata.name`
    Name,
    /// `metadata.namespace`
    Namespace,
    /// `metadata.uid`
    Uid,
    /// `spec.nodeName`
    NodeName,
    /// `status.podIP`
    PodIp,
    /// `status.hostIP`
    HostIp,
}

impl PodField {
    pub const ALL: [PodField; 6] =
        [PodField::Name, PodField::Namespace, PodField::Uid, PodField::NodeName, PodField::PodIp, PodField::HostIp];

    /// The `fieldPath` that names this field.
    pub fn path(self) -> &'static str {
        match self {
            PodField::Name => "metadata.name",
            PodField::Namespace => "metadata.namespace",
            PodField::Uid => "metadata.uid",
            PodField::NodeName => "spec.nodeName",
            PodField::PodIp => "status.podIP",
            PodField::HostIp => "status.hostIP",
        }
    }

    pub fn from_path(path: &str) -> Option<PodField> {
        PodField::ALL.into_iter().find(|f| f.path() == path)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Protocol {
    #[serde(rename = "TCP")]
    Tcp,
    #[serde(rename = "UDP")]
    Udp,
    #[serde(rename = "SCTP")]
    Sctp,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PortSpec {
    pub name: Option<String>,
    pub container_port: u16,
    pub host_port: Option<u16>,
    pub host_ip: Option<String>,
    pub protocol: Protocol,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MountSpec {
    /// A volume of the pod (checked when the manifest is loaded).
    pub volume: String,
    pub mount_path: PathBuf,
    pub read_only: bool,
    /// Relative, without `..`: mount this part of the volume only.
    pub sub_path: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VolumeSpec {
    pub name: String,
    pub source: VolumeSource,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum VolumeSource {
    HostPath {
        path: PathBuf,
        kind: HostPathType,
    },
    EmptyDir {
        medium: StorageMedium,
        /// Bytes. For the memory medium it also bounds the tmpfs.
        size_limit: Option<u64>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum StorageMedium {
    /// The node's disk (a directory under the pod's own directory).
    Default,
    /// A tmpfs.
    Memory,
}

/// `hostPath.type`, checked by [`crate::hostpath::check_host_path`] before
/// the container starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum HostPathType {
    /// `""` or absent: no check at all.
    Unchecked,
    DirectoryOrCreate,
    Directory,
    FileOrCreate,
    File,
    Socket,
    CharDevice,
    BlockDevice,
}

impl HostPathType {
    pub fn from_manifest(text: &str) -> Option<HostPathType> {
        Some(match text {
            "" => HostPathType::Unchecked,
            "DirectoryOrCreate" => HostPathType::DirectoryOrCreate,
            "Directory" => HostPathType::Directory,
            "FileOrCreate" => HostPathType::FileOrCreate,
            "File" => HostPathType::File,
            "Socket" => HostPathType::Socket,
            "CharDevice" => HostPathType::CharDevice,
            "BlockDevice" => HostPathType::BlockDevice,
            _ => return None,
        })
    }
}

/// A container's requests and limits (requests default to limits, as the
/// API server's defaulting does), and the cgroup v2 values made from them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Resources {
    pub cpu_request_millis: Option<u64>,
    pub cpu_limit_millis: Option<u64>,
    pub memory_request_bytes: Option<u64>,
    pub memory_limit_bytes: Option<u64>,
    /// Informational: ephemeral storage is not enforced.
    pub ephemeral_storage_request_bytes: Option<u64>,
    pub ephemeral_storage_limit_bytes: Option<u64>,
}

/// The cgroup v2 files a container's cgroup is given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CgroupValues {
    /// `cpu.weight`, 1..=10000.
    pub cpu_weight: u64,
    /// `cpu.max` quota in µs per [`CPU_PERIOD_US`]; `None` is `max`.
    pub cpu_max_quota_us: Option<u64>,
    /// `memory.max` in bytes; `None` is `max`.
    pub memory_max: Option<u64>,
    /// `memory.min` in bytes; `None` leaves it at 0.
    pub memory_min: Option<u64>,
}

/// The CFS period the kubelet uses for `cpu.max`.
pub const CPU_PERIOD_US: u64 = 100_000;

impl CgroupValues {
    /// The text for `cpu.max`: `<quota> <period>` or `max <period>`.
    pub fn cpu_max(&self) -> String {
        match self.cpu_max_quota_us {
            Some(quota) => format!("{quota} {CPU_PERIOD_US}"),
            None => format!("max {CPU_PERIOD_US}"),
        }
    }

    /// The text for `memory.max`.
    pub fn memory_max(&self) -> String {
        self.memory_max.map_or_else(|| "max".to_owned(), |b| b.to_string())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SecurityContext {
    pub privileged: bool,
    /// Capability names without the `CAP_` prefix, upper case, as
    /// Kubernetes writes them (`NET_ADMIN`); `ALL` stands for every one.
    pub capabilities_add: Vec<String>,
    pub capabilities_drop: Vec<String>,
    /// The container's own value, else the pod's; `None` is the image's.
    pub run_as_user: Option<u32>,
    pub run_as_group: Option<u32>,
    pub run_as_non_root: bool,
    pub read_only_root_filesystem: bool,
    pub allow_privilege_escalation: Option<bool>,
    pub supplemental_groups: Vec<u32>,
    pub seccomp: Option<Seccomp>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Seccomp {
    RuntimeDefault,
    Unconfined,
    /// A profile file relative to the kubelet's seccomp directory.
    Localhost(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProbeSpec {
    pub action: ProbeAction,
    pub initial_delay: Duration,
    pub period: Duration,
    pub timeout: Duration,
    pub success_threshold: u32,
    pub failure_threshold: u32,
    /// A liveness or startup probe's own grace period for the restart it
    /// causes, instead of the pod's.
    pub termination_grace_period: Option<Duration>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ProbeAction {
    HttpGet {
        /// `None` is the pod's IP (the host's with `hostNetwork`).
        host: Option<String>,
        port: u16,
        path: String,
        scheme: HttpScheme,
        headers: Vec<(String, String)>,
    },
    TcpSocket {
        host: Option<String>,
        port: u16,
    },
    Exec {
        command: Vec<String>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum HttpScheme {
    #[serde(rename = "HTTP")]
    Http,
    #[serde(rename = "HTTPS")]
    Https,
}
