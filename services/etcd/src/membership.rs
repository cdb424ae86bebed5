//! Changing who is in the cluster: a joining control-plane node is added as a
//! learner, started, promoted once it has caught up; a node reset is removed.

use crate::client::{member_from, EtcdClient};
use crate::error::{EtcdError, Operation};
use crate::types::{AddedLearner, JoinedAs, Member, MemberId};
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

/// Long enough for the clock to reach the next second.
const SAME_SECOND: Duration = Duration::from_millis(1100);

impl EtcdClient {
    /// Adds a learner (a member without a vote) at `peer_urls`. The new member
    /// must then be started with the returned `--initial-cluster` and
    /// `--initial-cluster-state=existing`, and promoted.
    pub async fn add_learner(&self, name: &str, peer_urls: &[String]) -> Result<AddedLearner, EtcdError> {
        self.add_learner_retrying(name, peer_urls, Retry { attempts: 1, interval: Duration::ZERO }).await
    }

    /// [`Self::add_learner`], asking again while etcd answers that the
    /// cluster would be unhealthy (a member joined or came back less than
    /// 5 s ago), up to `retry`.
    async fn add_learner_retrying(
        &self,
        name: &str,
        peer_urls: &[String],
        retry: Retry,
    ) -> Result<AddedLearner, EtcdError> {
        let operation = Operation::AddLearner { name: name.to_owned() };
        let answer = self
            .retrying(operation.clone(), retry, is_unhealthy_cluster, |mut client| {
                let peer_urls = peer_urls.to_vec();
                async move { client.member_add(peer_urls, Some(MemberAddOptions::new().with_is_learner())).await }
            })
            .await?;
        let Some(added) = answer.member() else {
            return Err(EtcdError::NoMemberInAnswer { operation, endpoints: self.endpoint.label() });
        };
        let id = MemberId(added.id());
        let members: Vec<Member> = answer.member_list().iter().map(member_from).collect();
        Ok(AddedLearner { id, initial_cluster: initial_cluster(&members, id, name) })
    }

    /// What a node joining with `name` at `peer_urls` must start with,
    /// whatever an earlier boot of it left in the cluster:
    /// - no member at those peer URLs: it is added as a learner;
    /// - a learner there: it is reused (an earlier boot added it and went
    ///   down before its etcd stored anything);
    /// - a voter there: the node lost the data that member had (a wiped or
    ///   tmpfs /var), and a voter must not come back without its log, so it
    ///   is removed (asking again while etcd says the cluster would be
    ///   unhealthy, up to `retry`) and the node added afresh as a learner.
    pub async fn join_as_learner(
        &self,
        name: &str,
        peer_urls: &[String],
        retry: Retry,
    ) -> Result<(AddedLearner, JoinedAs), EtcdError> {
        let members = self.members().await?;
        let ours = members.iter().find(|m| m.peer_urls.iter().any(|url| peer_urls.contains(url)));
        match ours {
            None => Ok((self.add_learner_retrying(name, peer_urls, retry).await?, JoinedAs::Added)),
            Some(learner) if learner.is_learner => {
                let added =
                    AddedLearner { id: learner.id, initial_cluster: initial_cluster(&members, learner.id, name) };
                Ok((added, JoinedAs::ReusedLearner))
            }
            Some(voter) => {
                let stale = voter.id;
                self.remove(stale, retry).await?;
                // etcd derives a new member's id from its peer URLs and the
                // second it is added: added again within the second it was
                // removed, it would get the removed id, which etcd never
                // lets back in ("member not found").
                tokio::time::sleep(SAME_SECOND).await;
                Ok((self.add_learner_retrying(name, peer_urls, retry).await?, JoinedAs::ReplacedVoter { stale }))
            }
        }
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

    async fn retrying<T, F, Fut>(
        &self,
        operation: Operation,
        retry: Retry,
        passes_with_time: fn(&etcd_client::Error) -> bool,
        request: F,
    ) -> Result<T, EtcdError>
    where
        F: Fn(etcd_client::Client) -> Fut,
        Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
    {
        let started = tokio::time::Instant::now();
        let mut attempts = 0;
        loop {
            attempts += 1;
            let err = match self.call(operation.clone(), request(self.client.clone())).await {
                Ok(answer) => return Ok(answer),
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
