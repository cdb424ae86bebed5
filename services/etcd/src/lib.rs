//! etcd from Rust for a Kelson control-plane node, through etcd-client over
//! mutual TLS: what the management API shows (members, status, alarms, a
//! snapshot streamed to its client) and what cluster membership does (a
//! joining node adds itself as a learner, starts, is promoted; a reset node
//! removes itself). Answers are this crate's own plain types.

mod client;
mod endpoint;
mod error;
mod membership;
mod snapshot;
mod types;

pub use client::{EtcdClient, DEFAULT_REQUEST_TIMEOUT};
pub use endpoint::{EtcdEndpoint, CLIENT_CERT_FILE, CLIENT_KEY_FILE, ETCD_CA_FILE, LOCAL_CLIENT_URL};
pub use error::{EtcdError, Operation};
pub use membership::Retry;
pub use types::{AddedLearner, Alarm, JoinedAs, Member, MemberHealth, MemberId, MemberStatus};
