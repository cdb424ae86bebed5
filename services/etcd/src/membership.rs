//! Changing who is in the cluster: a joining control-plane node is added as a
//! learner, started, promoted once it has caught up; a node reset is removed.

use crate::client::{member_from, EtcdClient};
use crate::error::{EtcdError, Operation};
use crate::types::{AddedLearner, Member, MemberId};
use etcd_client::MemberAddOptions;
use std::time::Duration;

/// How long [`EtcdClient::promote`] and [`EtcdClient::remove`] keep asking
/// while etcd refuses for a reason that passes with time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retry {
    pub attempts: u32,
    pub interval: Duration,
}

impl Default for Retry {
    /// A minute: a learner applies a fresh control plane's database in
    /// seconds, and etcd counts a member active after 5 s connected.
    fn default() -> Self {
        Self { attempts: 60, interval: Duration::from_secs(1) }
    }
}

impl EtcdClient {
    /// Adds a learner (a member without a vote) at `peer_urls`. The new member
    /// must then be started with the returned `--initial-cluster` and
    /// `--initial-cluster-state=existing`, and promoted.
    pub async fn add_learner(&self, name: &str, peer_urls: &[String]) -> Result<AddedLearner, EtcdError> {
        let operation = Operation::AddLearner { name: name.to_owned() };
        let mut client = self.client.clone();
        let answer = self
            .call(operation.clone(), client.member_add(peer_urls, Some(MemberAddOptions::new().with_is_learner())))
            .await?;
        let Some(added) = answer.member() else {
            return Err(EtcdError::NoMemberInAnswer { operation, endpoints: self.endpoint.label() });
        };
        let id = MemberId(added.id());
        let members: Vec<Member> = answer.member_list().iter().map(member_from).collect();
        Ok(AddedLearner { id, initial_cluster: initial_cluster(&members, id, name) })
    }

    /// Promotes learner `id` to a voting member, asking again while etcd
    /// answers that it is not yet in sync with the leader, up to `retry`.
    pub async fn promote(&self, id: MemberId, retry: Retry) -> Result<(), EtcdError> {
        self.retrying(Operation::Promote { id }, retry, is_learner_not_in_sync, |mut client| async move {
            client.member_promote(id.0).await.map(drop)
        })
        .await
    }

    /// Removes member `id` (a voter or a learner), asking again while etcd
    /// answers that the cluster would be unhealthy without it: it refuses to
    /// remove a voter while fewer of the others than a quorum have been
    /// connected for 5 s (a member that just joined, or a peer down).
    pub async fn remove(&self, id: MemberId, retry: Retry) -> Result<(), EtcdError> {
        self.retrying(Operation::Remove { id }, retry, is_unhealthy_cluster, |mut client| async move {
            client.member_remove(id.0).await.map(drop)
        })
        .await
    }

    async fn retrying<F, Fut>(
        &self,
        operation: Operation,
        retry: Retry,
        passes_with_time: fn(&etcd_client::Error) -> bool,
        request: F,
    ) -> Result<(), EtcdError>
    where
        F: Fn(etcd_client::Client) -> Fut,
        Fut: std::future::Future<Output = Result<(), etcd_client::Error>>,
    {
        let started = tokio::time::Instant::now();
        let mut attempts = 0;
        loop {
            attempts += 1;
            let err = match self.call(operation.clone(), request(self.client.clone())).await {
                Ok(()) => return Ok(()),
                Err(err) => err,
            };
            let source = match err {
                EtcdError::Request { source, .. } if passes_with_time(&source) => source,
                other => return Err(other),
            };
            if attempts >= retry.attempts {
                return Err(EtcdError::GaveUp {
                    operation,
                    endpoints: self.endpoint.label(),
                    attempts,
                    waited: started.elapsed(),
                    last: source,
                });
            }
            tokio::time::sleep(retry.interval).await;
        }
    }
}

/// etcd refuses to promote a learner that lags the leader
/// (`ErrGRPCLearnerNotReady`, FailedPrecondition); that passes with time.
fn is_learner_not_in_sync(err: &etcd_client::Error) -> bool {
    match err {
        etcd_client::Error::GRpcStatus(status) => {
            status.code() == tonic::Code::FailedPrecondition && status.message().contains("in sync with leader")
        }
        _ => false,
    }
}

/// etcd's strict reconfiguration check (`ErrGRPCUnhealthy`, Unavailable).
fn is_unhealthy_cluster(err: &etcd_client::Error) -> bool {
    match err {
        etcd_client::Error::GRpcStatus(status) => {
            status.code() == tonic::Code::Unavailable && status.message().contains("unhealthy cluster")
        }
        _ => false,
    }
}

/// `name=peer-url` for every peer URL of every member, as etcdctl's
/// `member add` prints it: the new member under `new_name` (it has no name
/// until it starts). Sorted: etcd lists members in no fixed order, and the
/// order means nothing to it.
fn initial_cluster(members: &[Member], new_id: MemberId, new_name: &str) -> String {
    let mut entries: Vec<String> = members
        .iter()
        .flat_map(|member| {
            let name = if member.id == new_id { new_name } else { member.name.as_str() };
            member.peer_urls.iter().map(move |url| format!("{name}={url}"))
        })
        .collect();
    entries.sort();
    entries.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: u64, name: &str, peer_urls: &[&str]) -> Member {
        Member {
            id: MemberId(id),
            name: name.to_owned(),
            peer_urls: peer_urls.iter().map(|u| (*u).to_owned()).collect(),
            client_urls: vec![],
            is_learner: false,
        }
    }

    #[test]
    fn initial_cluster_names_the_new_member_as_added_and_keeps_the_others() {
        let members = [
            member(2, "", &["https://10.0.0.2:2380", "https://[fd00::2]:2380"]),
            member(1, "cp-1", &["https://10.0.0.1:2380"]),
        ];

        let text = initial_cluster(&members, MemberId(2), "cp-2");

        assert_eq!(text, "cp-1=https://10.0.0.1:2380,cp-2=https://10.0.0.2:2380,cp-2=https://[fd00::2]:2380");
    }

    #[test]
    fn only_the_not_in_sync_refusal_is_retried_on_promote() {
        let not_ready = etcd_client::Error::GRpcStatus(tonic::Status::failed_precondition(
            "etcdserver: can only promote a learner member which is in sync with leader",
        ));
        let not_learner = etcd_client::Error::GRpcStatus(tonic::Status::failed_precondition(
            "etcdserver: can only promote a learner member",
        ));
        let missing = etcd_client::Error::GRpcStatus(tonic::Status::not_found("etcdserver: member not found"));

        assert!(is_learner_not_in_sync(&not_ready));
        assert!(!is_unhealthy_cluster(&not_ready));
        assert!(!is_learner_not_in_sync(&not_learner));
        assert!(!is_learner_not_in_sync(&missing));
    }

    #[test]
    fn only_the_unhealthy_cluster_refusal_is_retried_on_remove() {
        let unhealthy = etcd_client::Error::GRpcStatus(tonic::Status::unavailable("etcdserver: unhealthy cluster"));
        let no_leader = etcd_client::Error::GRpcStatus(tonic::Status::unavailable("etcdserver: no leader"));

        assert!(is_unhealthy_cluster(&unhealthy));
        assert!(!is_unhealthy_cluster(&no_leader));
        assert!(!is_learner_not_in_sync(&unhealthy));
    }
}
