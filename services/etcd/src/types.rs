//! Plain answers, free of etcd-client's types, for the management API and
//! cluster membership to map as they need.

use std::num::ParseIntError;
use std::str::FromStr;

/// An etcd member id. Shown and parsed in hexadecimal, as etcdctl prints it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MemberId(pub u64);

impl std::fmt::Display for MemberId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:x}", self.0)
    }
}

impl FromStr for MemberId {
    type Err = ParseIntError;

    fn from_str(hex: &str) -> Result<Self, Self::Err> {
        u64::from_str_radix(hex, 16).map(MemberId)
    }
}

/// A member as the cluster lists it. A learner added but not yet started has
/// an empty name and no client URLs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub id: MemberId,
    pub name: String,
    pub peer_urls: Vec<String>,
    pub client_urls: Vec<String>,
    pub is_learner: bool,
}

/// One member's own report of itself (the member the client reached).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberStatus {
    /// The member that answered.
    pub member: MemberId,
    pub version: String,
    pub db_size_bytes: i64,
    pub leader: MemberId,
    pub raft_index: u64,
    pub raft_term: u64,
    pub is_learner: bool,
    pub errors: Vec<String>,
}

/// An active alarm.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alarm {
    pub member: MemberId,
    /// etcd's name for it: `NOSPACE`, `CORRUPT`.
    pub kind: String,
}

/// What a new member needs to start: its id and its `--initial-cluster`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddedLearner {
    pub id: MemberId,
    /// `name=peer-url,…` for every member, the new one under the name it was
    /// added as, for its `--initial-cluster` (with `--initial-cluster-state=existing`).
    pub initial_cluster: String,
}

/// How [`crate::EtcdClient::join_as_learner`] got the node its learner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JoinedAs {
    /// Added now.
    Added,
    /// Found, added by an earlier boot and never started.
    ReusedLearner,
    /// Added now, after removing the voter that had the node's peer URLs
    /// and whose data the node no longer has.
    ReplacedVoter { stale: MemberId },
}

/// One member as seen by asking it directly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberHealth {
    pub id: MemberId,
    pub name: String,
    /// A learner: no vote yet.
    pub is_learner: bool,
    /// It answered a status request on one of its client URLs.
    pub reachable: bool,
    /// It answered and named itself as leader.
    pub is_leader: bool,
    /// Why it could not be reached, or the errors it reports about itself.
    pub errors: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_ids_read_and_print_as_etcdctl_hex() {
        let id: MemberId = "8e9e05c52164694d".parse().unwrap();
        assert_eq!(id, MemberId(0x8e9e_05c5_2164_694d));
        assert_eq!(id.to_string(), "8e9e05c52164694d");
        assert!("not-hex".parse::<MemberId>().is_err());
    }
}
