//! The API's wire types. JSON field names are camelCase; times are
//! milliseconds (since the Unix epoch where the name says `UnixMs`, of
//! CLOCK_BOOTTIME where it says `BootMs`). Every type here is a schema in
//! the OpenAPI document, so a change here is a change of the API.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use utoipa::ToSchema;

/// `GET /v1/version`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Version {
    /// The node's name (its hostname).
    pub node: String,
    /// kelson-init's version, which is the image's version.
    pub version: String,
    /// The API's version: `v1`.
    pub api: String,
}

/// How boot stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub enum Phase {
    Booting,
    Ready,
    /// A critical stage failed; see [`NodeStatus::maintenance`].
    Maintenance,
}

/// Why boot stopped in maintenance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Maintenance {
    pub stage: String,
    pub reason: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum StageState {
    Running,
    Done,
    /// A non-critical stage failed; boot went on.
    Degraded,
    /// A critical stage failed; boot stopped in maintenance.
    Failed,
}

/// One boot stage and its times.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Stage {
    pub name: String,
    pub state: StageState,
    pub started_boot_ms: u64,
    /// `null` while it runs.
    pub elapsed_ms: Option<u64>,
    pub error: Option<String>,
}

/// A condition a stage declares (`network-ready`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// `pending`, `true` or `unreachable`.
    pub state: String,
    /// Why it is unreachable.
    pub reason: Option<String>,
}

/// The version running and how it was booted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Boot {
    pub version: String,
    /// The boot entry's file in the ESP, as booted.
    pub entry: Option<String>,
    /// Booted from a counted entry not yet marked good.
    pub on_trial: bool,
    /// Newer versions whose tries ran out without reaching ready.
    pub failed_updates: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Memory {
    pub total_bytes: u64,
    pub available_bytes: u64,
    /// PID 1's resident set: the two parts below together.
    pub pid1_rss_bytes: u64,
    /// Of that, anonymous memory (heap, stacks). Absent from nodes older
    /// than the field (read as 0), as are the two below.
    #[serde(default)]
    pub pid1_rss_anon_bytes: u64,
    /// Of that, pages of files (its own binary's, mostly).
    #[serde(default)]
    pub pid1_rss_file_bytes: u64,
    /// PID 1's threads.
    #[serde(default)]
    pub pid1_threads: u64,
}

/// `GET /v1/status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeStatus {
    pub node: String,
    pub phase: Phase,
    /// Set when `phase` is `maintenance`.
    pub maintenance: Option<Maintenance>,
    pub stages: Vec<Stage>,
    pub conditions: BTreeMap<String, Condition>,
    /// The node's IPv4 addresses on its uplinks, first the one it is known by.
    pub addresses: Vec<String>,
    pub uptime_ms: u64,
    pub memory: Memory,
    /// `null` on boots without a boot loader (direct kernel boot).
    pub boot: Option<Boot>,
    /// A control-plane node's etcd; `null` on other nodes (and from nodes
    /// older than this field).
    #[serde(default)]
    pub etcd: Option<NodeEtcd>,
}

/// A control-plane node's etcd in its status.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeEtcd {
    /// Joining a running etcd (`cluster.etcdJoin`); `null` when the node
    /// does not join or its etcd had data already.
    pub join: Option<EtcdJoinProgress>,
    /// Each member asked on its own client URLs, as last checked (every 15 s).
    pub members: Vec<EtcdMemberHealth>,
    /// Why the members could not be listed at the last check.
    pub members_error: Option<String>,
}

/// Where a joining member stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EtcdJoinProgress {
    /// `adding` (its etcd held back until it is added as a learner),
    /// `learner` (added and started, not yet promoted), `member`
    /// (promoted) or `failed` (the join could not start; nothing changed).
    pub state: String,
    /// Hexadecimal member id, once added.
    pub member_id: Option<String>,
    /// Failed attempts of the current step.
    pub attempts: u32,
    /// Why the last attempt failed, or why the join could not start.
    pub reason: Option<String>,
}

/// One etcd member's health.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EtcdMemberHealth {
    pub id: String,
    pub name: String,
    pub learner: bool,
    pub reachable: bool,
    pub leader: bool,
    pub errors: Vec<String>,
}

/// A supervised service's state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Service {
    pub name: String,
    /// `waiting`, `starting`, `running`, `healthy`, `backing-off`,
    /// `stopped`, `completed`, `failed`, `absent` or `blocked`.
    pub state: String,
    /// Why the last transition happened, in words.
    pub reason: String,
    pub since_unix_ms: u64,
    /// Starts after the first one.
    pub restarts: u32,
    pub pid: Option<i32>,
    /// How the last run ended: `exit 1`, `signal 9`.
    pub last_exit: Option<String>,
}

/// What to do to a service: `POST /v1/services/{name}/{action}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub enum ServiceAction {
    Start,
    Stop,
    Restart,
}

impl ServiceAction {
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceAction::Start => "start",
            ServiceAction::Stop => "stop",
            ServiceAction::Restart => "restart",
        }
    }
}

/// One container of a static pod.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Container {
    pub name: String,
    pub image: String,
    /// `waiting`, `running` or `terminated`.
    pub state: String,
    /// The waiting or terminated reason (`CrashLoopBackOff`, `Error`).
    pub reason: Option<String>,
    pub ready: bool,
    pub restart_count: u32,
}

/// A static pod PID 1 runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Pod {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    /// `Pending`, `Running`, `Succeeded` or `Failed`, as Kubernetes spells them.
    pub phase: String,
    pub ready: bool,
    #[serde(rename = "podIP")]
    pub pod_ip: Option<String>,
    pub message: Option<String>,
    pub containers: Vec<Container>,
}

/// Whose log: the path of `GET /v1/logs/...`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogSource {
    /// A supervised service (`/v1/logs/services/{name}`).
    Service(String),
    /// A static pod's container (`/v1/logs/pods/{namespace}/{pod}/{container}`).
    Container { namespace: String, pod: String, container: String },
    /// The kernel's ring buffer (`/v1/logs/kernel`).
    Kernel,
    /// PID 1's own log (`/v1/logs/init`).
    Init,
}

/// The query of a log request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct LogQuery {
    /// At most this many of the lines already there (all that are kept when
    /// absent).
    pub tail: Option<u32>,
    /// Keep the response open and send new lines as they come.
    #[serde(default)]
    pub follow: bool,
}

/// One log line; a log response is these as newline-delimited JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct LogLine {
    pub at_unix_ms: u64,
    pub text: String,
    /// Set on a line the server inserts when a follower fell behind and
    /// lines were dropped: how many.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skipped: Option<u64>,
}

/// Where one value of the effective config came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Provenance {
    /// The value's path (`network.podCIDR`).
    pub path: String,
    /// `image defaults`, `command line`, `cloud-init`, `api`.
    pub source: String,
    /// The document it was read from.
    pub document: String,
}

/// `GET /v1/config`: the effective config, secrets redacted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EffectiveConfig {
    /// The config as YAML, each secret shown as `<secret>`.
    pub yaml: String,
    pub provenance: Vec<Provenance>,
}

/// `POST /v1/config`: a new API layer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApplyConfig {
    /// A MachineConfig document (YAML or JSON). It replaces the API layer:
    /// the config it gives is laid over the image defaults, the command
    /// line and the seed, as at boot.
    pub document: String,
    /// Validate and show the diff; change nothing.
    #[serde(default)]
    pub dry_run: bool,
}

/// One thing wrong with a config, as the boot would report it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConfigProblem {
    pub document: String,
    pub path: String,
    pub reason: String,
}

/// The answer to `POST /v1/config`. A rejected config is answered 422 with
/// `problems` filled and nothing changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApplyResult {
    pub dry_run: bool,
    pub problems: Vec<ConfigProblem>,
    /// A unified diff of the effective config (secrets redacted), old to new.
    pub diff: String,
    /// What was (or, in a dry run, would be) applied live: `peer routes`,
    /// `sysctls`, `static pods`, `files`.
    pub applied_live: Vec<String>,
    /// The changed sections that take effect only at the next boot.
    pub reboot_required: Vec<String>,
    /// Live changes that failed (the config is saved all the same and
    /// applies in full at the next boot): what and why.
    #[serde(default)]
    pub live_errors: Vec<String>,
}

/// `POST /v1/reset`: wipes the state partition and reboots.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResetRequest {
    /// Must be the node's name: a reset sent to the wrong node is refused.
    pub confirm: String,
}

/// The answer to reboot, shutdown and reset: accepted, done after the answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Accepted {
    pub action: String,
}

/// An etcd member.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EtcdMember {
    /// Hexadecimal, as etcdctl prints it.
    pub id: String,
    pub name: String,
    pub peer_urls: Vec<String>,
    pub client_urls: Vec<String>,
    pub is_learner: bool,
}

/// `GET /v1/etcd/status`: the local member's view.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EtcdStatus {
    pub version: String,
    pub db_size_bytes: i64,
    /// Hexadecimal member id of the leader.
    pub leader: String,
    pub raft_index: u64,
    pub raft_term: u64,
    pub errors: Vec<String>,
}

/// An active etcd alarm (`NOSPACE`, `CORRUPT`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EtcdAlarm {
    pub member: String,
    pub alarm: String,
}

/// The answer to `POST /v1/upgrade`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UpgradeResult {
    /// The version installed into the inactive slot.
    pub version: String,
    /// The slot's partition label (`kelson-usr-b`).
    pub slot: String,
    /// The boot entry that boots it next, on trial.
    pub entry: String,
    /// Whether a reboot was started (`?reboot=true`).
    pub rebooting: bool,
}

/// Every error the API answers with, whatever its status code.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ErrorBody {
    /// Machine-readable: `unauthorized`, `forbidden`, `not-found`,
    /// `bad-request`, `invalid-config`, `conflict`, `unavailable`,
    /// `internal`.
    pub code: String,
    /// What was being done, to what, and why it failed.
    pub message: String,
}
