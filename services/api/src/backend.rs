//! What a node provides to be served. The server does the transport, the
//! roles, the audit log and the encoding; everything it answers comes from
//! a [`Node`]. PID 1 implements it over the real node; host tests over
//! fakes.

use crate::types::*;
use std::future::Future;
use std::pin::Pin;
use tokio::sync::mpsc;

/// Why a request could not be carried out. The server turns the kind into
/// the status code; the message says what was being done, to what, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NodeError {
    /// 404: no such service, pod, container or endpoint on this node
    /// (etcd on a worker).
    #[error("{0}")]
    NotFound(String),
    /// 400: the request itself is wrong (a reset confirmation that does not
    /// name the node, a bundle that is not one).
    #[error("{0}")]
    BadRequest(String),
    /// 422: a config that does not validate; nothing was changed.
    #[error("the config was rejected with {} problem(s)", .0.len())]
    InvalidConfig(Vec<ConfigProblem>),
    /// 409: not possible in the node's state (no A/B slots, a stopped service
    /// asked to stop, an older image asked to install).
    #[error("{0}")]
    Conflict(String),
    /// 503: the part that would answer is not up (the supervisor before the
    /// services stage, etcd not answering).
    #[error("{0}")]
    Unavailable(String),
    /// 500: it went wrong on the node.
    #[error("{0}")]
    Internal(String),
}

/// Lines already there, then (when following) the lines that come after
/// them, in order; the channel closes when the source ends (the pod was
/// removed). A follower that falls behind gets a line with `skipped` set.
#[derive(Debug)]
pub struct LogStream {
    pub backlog: Vec<LogLine>,
    pub live: Option<mpsc::Receiver<LogLine>>,
}

/// A stream of bytes (an etcd snapshot), chunk by chunk; an `Err` ends it
/// early, and the client sees a cut response.
pub type ByteStream = mpsc::Receiver<Result<Vec<u8>, NodeError>>;

/// An upload's body as it arrives, chunk by chunk, so an image is never held
/// whole in memory.
pub type Upload = Pin<Box<dyn tokio::io::AsyncRead + Send>>;

/// A shutdown of the node, begun after the answer has been sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Power {
    Reboot,
    PowerOff,
}

pub type NodeResult<T> = Result<T, NodeError>;

/// Everything the API serves. Methods take `&self` and may be called
/// concurrently. Reads are cheap; writes may take long (an upgrade writes
/// a whole slot) and must not block the caller's runtime thread: do
/// blocking work on a blocking thread.
pub trait Node: Send + Sync + 'static {
    fn version(&self) -> Version;
    fn status(&self) -> NodeStatus;

    fn services(&self) -> NodeResult<Vec<Service>>;
    /// Starts, stops or restarts one service; answers with its state once
    /// the action has taken effect (stopped, or started again).
    fn service_action(&self, name: &str, action: ServiceAction) -> impl Future<Output = NodeResult<Service>> + Send;

    fn pods(&self) -> NodeResult<Vec<Pod>>;

    fn logs(&self, source: &LogSource, query: LogQuery) -> impl Future<Output = NodeResult<LogStream>> + Send;

    fn config(&self) -> NodeResult<EffectiveConfig>;
    /// Validates `request.document` as the API layer; unless a dry run,
    /// saves it atomically and applies what can be applied live.
    fn apply_config(&self, request: ApplyConfig) -> impl Future<Output = NodeResult<ApplyResult>> + Send;

    /// Begins a reboot or power-off; returns at once.
    fn power(&self, action: Power) -> NodeResult<()>;
    /// Marks the state partition to be wiped, then reboots; `confirm` has
    /// been checked against the node's name already. A control-plane node
    /// first leaves etcd, and is not reset if it cannot.
    fn reset(&self) -> impl Future<Output = NodeResult<()>> + Send;

    fn etcd_members(&self) -> impl Future<Output = NodeResult<Vec<EtcdMember>>> + Send;
    fn etcd_status(&self) -> impl Future<Output = NodeResult<EtcdStatus>> + Send;
    fn etcd_alarms(&self) -> impl Future<Output = NodeResult<Vec<EtcdAlarm>>> + Send;
    fn etcd_snapshot(&self) -> impl Future<Output = NodeResult<ByteStream>> + Send;

    /// Installs the update bundle read from `bundle` into the inactive
    /// slot; reboots into it afterwards when `reboot` is set.
    fn upgrade(&self, bundle: Upload, reboot: bool) -> impl Future<Output = NodeResult<UpgradeResult>> + Send;
}
