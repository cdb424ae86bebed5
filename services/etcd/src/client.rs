//! A connected client and the read side: members, status, alarms, snapshots,
//! per-member health.

use crate::endpoint::EtcdEndpoint;
use crate::error::{EtcdError, Operation};
use crate::snapshot::{pump, EtcdSnapshot, SNAPSHOT_CHUNKS_BUFFERED};
use crate::types::{Alarm, Member, MemberHealth, MemberId, MemberStatus};
use etcd_client::{AlarmAction, AlarmType, Certificate, Client, ConnectOptions, Identity, TlsOptions};
use kelson_base::error_chain;
use std::future::Future;
use std::time::Duration;
use tokio::sync::mpsc;

/// How long one request (or one snapshot chunk) may take before it is given
/// up. etcd-client waits for a reachable endpoint without limit, so every call
/// here is bounded.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// A client for one set of etcd endpoints. Cheap to clone.
#[derive(Clone)]
pub struct EtcdClient {
    pub(crate) client: Client,
    pub(crate) endpoint: EtcdEndpoint,
    pub(crate) timeout: Duration,
}

impl std::fmt::Debug for EtcdClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdClient").field("endpoints", &self.endpoint.endpoints).finish()
    }
}

impl EtcdClient {
    /// A client over mutual TLS. No connection is made yet: an endpoint that
    /// cannot be reached or refuses the certificate fails the first request.
    pub async fn connect(endpoint: &EtcdEndpoint) -> Result<Self, EtcdError> {
        Self::connect_with_timeout(endpoint, DEFAULT_REQUEST_TIMEOUT).await
    }

    pub async fn connect_with_timeout(endpoint: &EtcdEndpoint, timeout: Duration) -> Result<Self, EtcdError> {
        let tls = TlsOptions::new()
            .ca_certificate(Certificate::from_pem(&endpoint.ca_pem))
            .identity(Identity::from_pem(&endpoint.cert_pem, &endpoint.key_pem));
        let options = ConnectOptions::new().with_tls(tls).with_connect_timeout(timeout);
        let client = Client::connect(&endpoint.endpoints, Some(options))
            .await
            .map_err(|source| EtcdError::Connect { endpoints: endpoint.label(), source })?;
        Ok(Self { client, endpoint: endpoint.clone(), timeout })
    }

    /// Runs one request with this client's timeout, naming the operation and
    /// endpoints on failure.
    pub(crate) async fn call<T, F>(&self, operation: Operation, request: F) -> Result<T, EtcdError>
    where
        F: Future<Output = Result<T, etcd_client::Error>>,
    {
        match tokio::time::timeout(self.timeout, request).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(source)) => Err(EtcdError::Request { operation, endpoints: self.endpoint.label(), source }),
            Err(_) => Err(EtcdError::TimedOut { operation, endpoints: self.endpoint.label(), timeout: self.timeout }),
        }
    }

    pub async fn members(&self) -> Result<Vec<Member>, EtcdError> {
        let mut client = self.client.clone();
        let answer = self.call(Operation::ListMembers, client.member_list()).await?;
        Ok(answer.members().iter().map(member_from).collect())
    }

    /// The status of the member this client reached; give it one endpoint to
    /// ask a particular member.
    pub async fn status(&self) -> Result<MemberStatus, EtcdError> {
        let mut client = self.client.clone();
        let answer = self.call(Operation::Status, client.status()).await?;
        Ok(MemberStatus {
            member: MemberId(answer.header().map_or(0, |h| h.member_id())),
            version: answer.version().to_owned(),
            db_size_bytes: answer.db_size(),
            leader: MemberId(answer.leader()),
            raft_index: answer.raft_index(),
            raft_term: answer.raft_term(),
            is_learner: answer.is_learner(),
            errors: answer.errors().to_vec(),
        })
    }

    /// The cluster's active alarms.
    pub async fn alarms(&self) -> Result<Vec<Alarm>, EtcdError> {
        let mut client = self.client.clone();
        let answer = self.call(Operation::ListAlarms, client.alarm(AlarmAction::Get, AlarmType::None, None)).await?;
        Ok(answer
            .alarms()
            .iter()
            .map(|a| Alarm { member: MemberId(a.member_id()), kind: a.alarm().as_str_name().to_owned() })
            .collect())
    }

    /// The backend database of the member reached, as a stream of chunks in
    /// order. A bounded channel paces etcd to the reader; dropping the
    /// receiver stops the transfer. The last item is an error if the stream
    /// failed or ended before etcd said it was complete; a reader must treat
    /// everything before it as unusable then. Wrap in
    /// `tokio_stream::wrappers::ReceiverStream` for a hyper `StreamBody`.
    pub async fn snapshot(&self) -> Result<mpsc::Receiver<Result<Vec<u8>, EtcdError>>, EtcdError> {
        let mut client = self.client.clone();
        let stream = self.call(Operation::StartSnapshot, client.snapshot()).await?;
        let (chunks, receiver) = mpsc::channel(SNAPSHOT_CHUNKS_BUFFERED);
        tokio::spawn(pump(EtcdSnapshot { stream, client: self.clone() }, chunks));
        Ok(receiver)
    }

    /// Each member asked directly on its own client URLs, all at once. A
    /// member that has not started (a learner not yet running) has no client
    /// URLs and is reported unreachable.
    pub async fn member_health(&self) -> Result<Vec<MemberHealth>, EtcdError> {
        let members = self.members().await?;
        let checks: Vec<_> = members
            .iter()
            .map(|member| {
                let endpoint = self.endpoint.with_endpoints(member.client_urls.clone());
                tokio::spawn(health_of(endpoint, self.timeout, member.id, member.name.clone(), member.is_learner))
            })
            .collect();
        let mut report = Vec::with_capacity(members.len());
        for (member, check) in members.into_iter().zip(checks) {
            report.push(match check.await {
                Ok(health) => health,
                Err(err) => {
                    unreachable(member.id, member.name, member.is_learner, format!("the health check failed: {err}"))
                }
            });
        }
        Ok(report)
    }
}

fn unreachable(id: MemberId, name: String, is_learner: bool, reason: String) -> MemberHealth {
    MemberHealth { id, name, is_learner, reachable: false, is_leader: false, errors: vec![reason] }
}

async fn health_of(
    endpoint: EtcdEndpoint,
    timeout: Duration,
    id: MemberId,
    name: String,
    is_learner: bool,
) -> MemberHealth {
    if endpoint.endpoints.is_empty() {
        return unreachable(id, name, is_learner, "not started: no client URLs".to_owned());
    }
    let status = match EtcdClient::connect_with_timeout(&endpoint, timeout).await {
        Ok(client) => client.status().await,
        Err(err) => Err(err),
    };
    match status {
        Ok(status) => MemberHealth {
            id,
            name,
            is_learner,
            reachable: true,
            is_leader: status.leader == id,
            errors: status.errors,
        },
        Err(err) => unreachable(id, name, is_learner, error_chain(&err)),
    }
}

pub(crate) fn member_from(member: &etcd_client::Member) -> Member {
    Member {
        id: MemberId(member.id()),
        name: member.name().to_owned(),
        peer_urls: member.peer_urls().to_vec(),
        client_urls: member.client_urls().to_vec(),
        is_learner: member.is_learner(),
    }
}
