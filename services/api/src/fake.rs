//! A [`Node`] for tests of the server and its clients (feature `fake`):
//! state you can read and change, log sources you push lines into, a
//! config that rejects any document containing `invalid`, and a record of
//! every call. Also a throwaway PKI ([`TestPki`]) to serve it with, and a
//! plain client ([`ClientTls`]) to reach it.

mod client;
mod pki;

pub use client::{ClientError, ClientTls, Connection};
pub use pki::{ClientCert, TestPki};

use crate::backend::*;
use crate::types::*;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, MutexGuard};
use tokio::io::AsyncReadExt;
use tokio::sync::{mpsc, watch};

/// The node's name, which `POST /v1/reset` must confirm.
pub const NODE_NAME: &str = "fake-node";

/// The bytes `GET /v1/etcd/snapshot` answers with by default.
pub const SNAPSHOT: &[u8] = b"fake etcd snapshot\0with binary bytes\xff";

/// One upgrade the fake was asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpgradeCall {
    pub bundle: Vec<u8>,
    pub reboot: bool,
}

/// What the fake holds; read and change it through [`FakeNode::state`].
#[derive(Debug)]
pub struct FakeState {
    pub version: Version,
    pub status: NodeStatus,
    pub services: Vec<Service>,
    pub pods: Vec<Pod>,
    pub config_yaml: String,
    /// Every Node method called, in order: `services`, `service_action
    /// kubelet restart`, `logs service kubelet`, `apply_config dryRun=true`,
    /// `power Reboot`, `reset`, `upgrade reboot=false`, `etcd_members`, ….
    pub calls: Vec<String>,
    pub power: Vec<Power>,
    pub resets: u32,
    pub upgrades: Vec<UpgradeCall>,
    /// `None`: etcd does not run here (a worker); etcd calls answer 404.
    pub etcd_members: Option<Vec<EtcdMember>>,
    pub etcd_status: EtcdStatus,
    pub etcd_alarms: Vec<EtcdAlarm>,
    pub snapshot: Vec<u8>,
    /// The next call whose name (the first word of its `calls` entry)
    /// matches fails with this error.
    pub failures: HashMap<String, NodeError>,
    /// Follow requests end after the backlog, as if every source had closed.
    pub logs_closed: bool,
}

#[derive(Default)]
struct LogFeed {
    lines: Vec<LogLine>,
    followers: Vec<mpsc::Sender<LogLine>>,
}

/// A node that keeps its state in memory.
pub struct FakeNode {
    state: Mutex<FakeState>,
    logs: Mutex<HashMap<String, LogFeed>>,
    /// Bumped whenever a follower subscribes, for [`FakeNode::wait_for_followers`].
    subscribed: watch::Sender<u64>,
}

impl Default for FakeNode {
    fn default() -> Self {
        Self::new()
    }
}

fn service(name: &str, state: &str, pid: Option<i32>) -> Service {
    Service {
        name: name.to_owned(),
        state: state.to_owned(),
        reason: "started by the fake".to_owned(),
        since_unix_ms: 1_700_000_000_000,
        restarts: 0,
        pid,
        last_exit: None,
    }
}

fn source_key(source: &LogSource) -> String {
    match source {
        LogSource::Service(name) => format!("service {name}"),
        LogSource::Container { namespace, pod, container } => format!("container {namespace}/{pod}/{container}"),
        LogSource::Kernel => "kernel".to_owned(),
        LogSource::Init => "init".to_owned(),
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A test that panicked while holding the lock has failed already; the
    // state is still worth reading.
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl FakeNode {
    /// A ready control-plane node with services `containerd` (running),
    /// `kubelet` (running) and `kube-proxy` (stopped), the static pod
    /// `kube-system/etcd-fake-node` (container `etcd`), and one etcd member.
    pub fn new() -> FakeNode {
        let stage = |name: &str| Stage {
            name: name.to_owned(),
            state: StageState::Done,
            started_boot_ms: 100,
            elapsed_ms: Some(10),
            error: None,
        };
        let state = FakeState {
            version: Version { node: NODE_NAME.to_owned(), version: "0.0.0-fake".to_owned(), api: "v1".to_owned() },
            status: NodeStatus {
                node: NODE_NAME.to_owned(),
                phase: Phase::Ready,
                maintenance: None,
                stages: vec![stage("early"), stage("config"), stage("network")],
                conditions: BTreeMap::from([(
                    "network-ready".to_owned(),
                    Condition { state: "true".to_owned(), reason: None },
                )]),
                addresses: vec!["10.0.2.15".to_owned()],
                uptime_ms: 60_000,
                memory: Memory {
                    total_bytes: 1 << 30,
                    available_bytes: 1 << 29,
                    pid1_rss_bytes: 20 << 20,
                    pid1_rss_anon_bytes: 12 << 20,
                    pid1_rss_file_bytes: 8 << 20,
                    pid1_threads: 5,
                },
                boot: None,
                etcd: None,
            },
            services: vec![
                service("containerd", "running", Some(100)),
                service("kubelet", "running", Some(200)),
                service("kube-proxy", "stopped", None),
            ],
            pods: vec![Pod {
                namespace: "kube-system".to_owned(),
                name: format!("etcd-{NODE_NAME}"),
                uid: "00000000-0000-0000-0000-000000000001".to_owned(),
                phase: "Running".to_owned(),
                ready: true,
                pod_ip: Some("10.0.2.15".to_owned()),
                message: None,
                containers: vec![Container {
                    name: "etcd".to_owned(),
                    image: "registry.k8s.io/etcd:3.5.16-0".to_owned(),
                    state: "running".to_owned(),
                    reason: None,
                    ready: true,
                    restart_count: 0,
                }],
            }],
            config_yaml: "apiVersion: kelson/v1\nkind: MachineConfig\nnode:\n  name: fake-node\n".to_owned(),
            calls: Vec::new(),
            power: Vec::new(),
            resets: 0,
            upgrades: Vec::new(),
            etcd_members: Some(vec![EtcdMember {
                id: "8e9e05c52164694d".to_owned(),
                name: NODE_NAME.to_owned(),
                peer_urls: vec!["https://10.0.2.15:2380".to_owned()],
                client_urls: vec!["https://10.0.2.15:2379".to_owned()],
                is_learner: false,
            }]),
            etcd_status: EtcdStatus {
                version: "3.5.16".to_owned(),
                db_size_bytes: 20480,
                leader: "8e9e05c52164694d".to_owned(),
                raft_index: 42,
                raft_term: 2,
                errors: Vec::new(),
            },
            etcd_alarms: Vec::new(),
            snapshot: SNAPSHOT.to_vec(),
            failures: HashMap::new(),
            logs_closed: false,
        };
        FakeNode { state: Mutex::new(state), logs: Mutex::new(HashMap::new()), subscribed: watch::Sender::new(0) }
    }

    /// The fake's state, to read or change. Do not hold it across an await.
    pub fn state(&self) -> MutexGuard<'_, FakeState> {
        lock(&self.state)
    }

    /// Every call so far (see [`FakeState::calls`]).
    pub fn calls(&self) -> Vec<String> {
        self.state().calls.clone()
    }

    /// Makes the next call named `call` (`services`, `apply_config`, …) fail.
    pub fn fail_next(&self, call: &str, error: NodeError) {
        self.state().failures.insert(call.to_owned(), error);
    }

    /// Appends a line to a log source and sends it to its followers.
    pub fn push_log(&self, source: &LogSource, text: &str) {
        let line = LogLine { at_unix_ms: 1_700_000_000_000, text: text.to_owned(), skipped: None };
        let mut logs = lock(&self.logs);
        let feed = logs.entry(source_key(source)).or_default();
        feed.lines.push(line.clone());
        feed.followers.retain(|follower| follower.try_send(line.clone()).is_ok());
    }

    /// Ends every follow now and makes later ones end after their backlog.
    pub fn close_logs(&self) {
        self.state().logs_closed = true;
        for feed in lock(&self.logs).values_mut() {
            feed.followers.clear();
        }
    }

    /// How many followers of `source` are still connected.
    pub fn followers(&self, source: &LogSource) -> usize {
        let logs = lock(&self.logs);
        logs.get(&source_key(source))
            .map(|feed| feed.followers.iter().filter(|follower| !follower.is_closed()).count())
            .unwrap_or(0)
    }

    /// Waits until `source` has at least `count` connected followers.
    pub async fn wait_for_followers(&self, source: &LogSource, count: usize) {
        let mut subscribed = self.subscribed.subscribe();
        while self.followers(source) < count {
            if subscribed.changed().await.is_err() {
                return;
            }
        }
    }

    /// Waits until every follower of `source` has gone (its receiver was
    /// dropped: the server ended the stream).
    pub async fn wait_for_no_followers(&self, source: &LogSource) {
        let followers: Vec<_> =
            lock(&self.logs).get(&source_key(source)).map(|feed| feed.followers.clone()).unwrap_or_default();
        for follower in followers {
            follower.closed().await;
        }
    }

    /// Records a call and returns the failure injected for it, if any.
    fn call(&self, entry: String) -> NodeResult<()> {
        let mut state = self.state();
        let name = entry.split(' ').next().unwrap_or_default().to_owned();
        state.calls.push(entry);
        match state.failures.remove(&name) {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }

    fn etcd<T>(&self, call: &str, read: impl FnOnce(&FakeState) -> T) -> NodeResult<T> {
        self.call(call.to_owned())?;
        let state = self.state();
        if state.etcd_members.is_none() {
            return Err(NodeError::NotFound("etcd does not run on this node".to_owned()));
        }
        Ok(read(&state))
    }
}

fn line_diff(old: &str, new: &str) -> String {
    let mut diff = String::from("--- effective\n+++ proposed\n");
    for line in old.lines().filter(|line| !new.lines().any(|other| other == *line)) {
        diff.push_str(&format!("-{line}\n"));
    }
    for line in new.lines().filter(|line| !old.lines().any(|other| other == *line)) {
        diff.push_str(&format!("+{line}\n"));
    }
    diff
}

impl Node for FakeNode {
    fn version(&self) -> Version {
        let _ = self.call("version".to_owned());
        self.state().version.clone()
    }

    fn status(&self) -> NodeStatus {
        let _ = self.call("status".to_owned());
        self.state().status.clone()
    }

    fn services(&self) -> NodeResult<Vec<Service>> {
        self.call("services".to_owned())?;
        Ok(self.state().services.clone())
    }

    async fn service_action(&self, name: &str, action: ServiceAction) -> NodeResult<Service> {
        self.call(format!("service_action {name} {}", action.as_str()))?;
        let mut state = self.state();
        let service = state
            .services
            .iter_mut()
            .find(|service| service.name == name)
            .ok_or_else(|| NodeError::NotFound(format!("no service {name:?} on this node")))?;
        match action {
            ServiceAction::Stop if service.state == "stopped" => {
                return Err(NodeError::Conflict(format!("stopping service {name}: it is stopped already")));
            }
            ServiceAction::Stop => {
                service.state = "stopped".to_owned();
                service.pid = None;
            }
            ServiceAction::Start if service.state == "running" => {
                return Err(NodeError::Conflict(format!("starting service {name}: it is running already")));
            }
            ServiceAction::Start | ServiceAction::Restart => {
                if service.state == "running" {
                    service.restarts += 1;
                }
                service.state = "running".to_owned();
                service.pid = Some(service.pid.unwrap_or(1000) + 1);
            }
        }
        service.reason = format!("{} through the API", action.as_str());
        Ok(service.clone())
    }

    fn pods(&self) -> NodeResult<Vec<Pod>> {
        self.call("pods".to_owned())?;
        Ok(self.state().pods.clone())
    }

    async fn logs(&self, source: &LogSource, query: LogQuery) -> NodeResult<LogStream> {
        let key = source_key(source);
        self.call(format!("logs {key}"))?;
        let (known, closed) = {
            let state = self.state();
            let known = match source {
                LogSource::Service(name) => state.services.iter().any(|service| &service.name == name),
                LogSource::Container { namespace, pod, container } => state.pods.iter().any(|candidate| {
                    &candidate.namespace == namespace
                        && &candidate.name == pod
                        && candidate.containers.iter().any(|c| &c.name == container)
                }),
                LogSource::Kernel | LogSource::Init => true,
            };
            (known, state.logs_closed)
        };
        if !known {
            return Err(NodeError::NotFound(format!("no log source {key} on this node")));
        }
        let mut logs = lock(&self.logs);
        let feed = logs.entry(key).or_default();
        let tail = query.tail.map_or(feed.lines.len(), |tail| usize::try_from(tail).unwrap_or(usize::MAX));
        let backlog = feed.lines[feed.lines.len().saturating_sub(tail)..].to_vec();
        let live = query.follow.then(|| {
            let (sender, receiver) = mpsc::channel(64);
            if !closed {
                feed.followers.push(sender);
            }
            receiver
        });
        drop(logs);
        self.subscribed.send_modify(|count| *count += 1);
        Ok(LogStream { backlog, live })
    }

    fn config(&self) -> NodeResult<EffectiveConfig> {
        self.call("config".to_owned())?;
        let yaml = self.state().config_yaml.clone();
        let provenance = vec![Provenance {
            path: "node.name".to_owned(),
            source: "image defaults".to_owned(),
            document: "fake".to_owned(),
        }];
        Ok(EffectiveConfig { yaml, provenance })
    }

    async fn apply_config(&self, request: ApplyConfig) -> NodeResult<ApplyResult> {
        self.call(format!("apply_config dryRun={}", request.dry_run))?;
        if request.document.contains("invalid") {
            return Err(NodeError::InvalidConfig(vec![ConfigProblem {
                document: "api".to_owned(),
                path: "".to_owned(),
                reason: "the fake rejects any document containing 'invalid'".to_owned(),
            }]));
        }
        let mut state = self.state();
        let diff = line_diff(&state.config_yaml, &request.document);
        if !request.dry_run {
            state.config_yaml = request.document;
        }
        Ok(ApplyResult {
            dry_run: request.dry_run,
            problems: Vec::new(),
            diff,
            applied_live: vec!["files".to_owned()],
            reboot_required: Vec::new(),
            live_errors: Vec::new(),
        })
    }

    fn power(&self, action: Power) -> NodeResult<()> {
        self.call(format!("power {action:?}"))?;
        self.state().power.push(action);
        Ok(())
    }

    async fn reset(&self) -> NodeResult<()> {
        self.call("reset".to_owned())?;
        self.state().resets += 1;
        Ok(())
    }

    async fn etcd_members(&self) -> NodeResult<Vec<EtcdMember>> {
        self.etcd("etcd_members", |state| state.etcd_members.clone().unwrap_or_default())
    }

    async fn etcd_status(&self) -> NodeResult<EtcdStatus> {
        self.etcd("etcd_status", |state| state.etcd_status.clone())
    }

    async fn etcd_alarms(&self) -> NodeResult<Vec<EtcdAlarm>> {
        self.etcd("etcd_alarms", |state| state.etcd_alarms.clone())
    }

    async fn etcd_snapshot(&self) -> NodeResult<ByteStream> {
        let snapshot = self.etcd("etcd_snapshot", |state| state.snapshot.clone())?;
        let chunks: Vec<Vec<u8>> = snapshot.chunks(16).map(<[u8]>::to_vec).collect();
        let (sender, receiver) = mpsc::channel(chunks.len().max(1));
        for chunk in chunks {
            // The channel has room for every chunk.
            let _ = sender.try_send(Ok(chunk));
        }
        Ok(receiver)
    }

    async fn upgrade(&self, mut bundle: Upload, reboot: bool) -> NodeResult<UpgradeResult> {
        self.call(format!("upgrade reboot={reboot}"))?;
        let mut bytes = Vec::new();
        bundle
            .read_to_end(&mut bytes)
            .await
            .map_err(|error| NodeError::BadRequest(format!("reading the update bundle: {error}")))?;
        if bytes.is_empty() {
            return Err(NodeError::BadRequest("installing the update bundle: it is empty".to_owned()));
        }
        self.state().upgrades.push(UpgradeCall { bundle: bytes, reboot });
        Ok(UpgradeResult {
            version: "0.0.1-fake".to_owned(),
            slot: "kelson-usr-b".to_owned(),
            entry: "kelson-0.0.1-fake+3.efi".to_owned(),
            rebooting: reboot,
        })
    }
}
