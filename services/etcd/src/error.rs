use crate::types::MemberId;
use std::path::PathBuf;
use std::time::Duration;

/// What was being asked of etcd when it failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Operation {
    ListMembers,
    Status,
    ListAlarms,
    StartSnapshot,
    ReadSnapshot,
    AddLearner { name: String },
    Promote { id: MemberId },
    Remove { id: MemberId },
}

impl std::fmt::Display for Operation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Operation::ListMembers => f.write_str("listing etcd members"),
            Operation::Status => f.write_str("reading etcd member status"),
            Operation::ListAlarms => f.write_str("listing etcd alarms"),
            Operation::StartSnapshot => f.write_str("starting an etcd snapshot"),
            Operation::ReadSnapshot => f.write_str("reading an etcd snapshot stream"),
            Operation::AddLearner { name } => write!(f, "adding etcd learner {name}"),
            Operation::Promote { id } => write!(f, "promoting etcd learner {id}"),
            Operation::Remove { id } => write!(f, "removing etcd member {id}"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    #[error("reading {path}")]
    ReadPki {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("setting up a client for etcd at {endpoints}")]
    Connect {
        endpoints: String,
        #[source]
        source: etcd_client::Error,
    },
    #[error("{operation} at {endpoints}")]
    Request {
        operation: Operation,
        endpoints: String,
        #[source]
        source: etcd_client::Error,
    },
    #[error("{operation} at {endpoints}: no answer within {timeout:?}")]
    TimedOut { operation: Operation, endpoints: String, timeout: Duration },
    #[error("{operation} at {endpoints}: etcd's answer holds no member")]
    NoMemberInAnswer { operation: Operation, endpoints: String },
    /// etcd kept refusing for a reason that usually passes; the last refusal is the source.
    #[error("{operation} at {endpoints}: gave up after {attempts} attempts over {waited:?}")]
    GaveUp {
        operation: Operation,
        endpoints: String,
        attempts: u32,
        waited: Duration,
        #[source]
        last: etcd_client::Error,
    },
    #[error("{operation} at {endpoints}: the stream ended after {received_bytes} bytes, before etcd's last chunk")]
    SnapshotCut { operation: Operation, endpoints: String, received_bytes: u64 },
}
