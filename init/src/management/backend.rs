//! PID 1's answer to every API request: kelson-api's [`Node`] over the
//! node status, the supervisor, the pod manager, the config store, the
//! kernel's log, the power actions and the A/B updater.

use super::config_apply::{self, LiveChange};
use super::{kmsg, ConfigState, Handles};
use crate::kernel::Kernel;
use crate::shutdown::Action;
use crate::status::{self, StatusPublisher};
use kelson_api::backend::{ByteStream, LogStream, Node, NodeError, NodeResult, Power, Upload};
use kelson_api::types::*;
use kelson_base::paths::MANIFEST_DIR;
use kelson_config::Store;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{broadcast, mpsc};
use tracing::{info, warn};

/// Where an uploaded update bundle is kept while it is installed: on the
/// state partition, since it is as large as /usr.
pub const UPLOAD_DIR: &str = "/var/lib/kelson/update";
/// Written by a reset; the state stage wipes the state partition at the
/// next boot when it finds it.
pub const RESET_MARKER: &str = "/var/lib/kelson/reset-requested";
/// kubeadm's certificate directory on a control-plane node.
pub const ETCD_PKI_DIR: &str = "/etc/kubernetes/pki";
/// Lines a follower may fall behind before it is told it skipped some.
const FOLLOW_BUFFER: usize = 256;

pub struct NodeBackend {
    pub handles: Handles,
    pub status: StatusPublisher,
    pub power: mpsc::Sender<Action>,
    pub kernel: Arc<dyn Kernel + Send + Sync>,
    pub module_dir: PathBuf,
    pub store: Store,
    /// The kernel's log device (`/dev/kmsg`).
    pub kmsg: PathBuf,
    /// Container logs (`/var/log/kelson/pods`).
    pub pod_logs: PathBuf,
}

fn unavailable(what: &str, why: &str) -> NodeError {
    NodeError::Unavailable(format!("{what}: {why}"))
}

fn hostname() -> String {
    nix::unistd::gethostname().map(|h| h.to_string_lossy().into_owned()).unwrap_or_default()
}

fn unix_ms_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// `MemTotal` and `MemAvailable` from /proc/meminfo, in bytes.
fn meminfo() -> (u64, u64) {
    let text = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().strip_suffix("kB")?.trim().parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    };
    (field("MemTotal:"), field("MemAvailable:"))
}

/// PID 1's own memory and threads from /proc/self/status (zeros if it
/// cannot be read).
fn own_memory(total_bytes: u64, available_bytes: u64) -> Memory {
    let text = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let number =
        |name: &str| text.lines().find_map(|l| l.strip_prefix(name)?.split_whitespace().next()?.parse::<u64>().ok());
    let kib = |name: &str| number(name).map_or(0, |kb| kb * 1024);
    Memory {
        total_bytes,
        available_bytes,
        pid1_rss_bytes: kib("VmRSS:"),
        pid1_rss_anon_bytes: kib("RssAnon:"),
        pid1_rss_file_bytes: kib("RssFile:") + kib("RssShmem:"),
        pid1_threads: number("Threads:").unwrap_or(0),
    }
}

/// The node status in the API's terms.
pub fn node_status(node: String, s: &status::NodeStatus) -> NodeStatus {
    let (phase, maintenance) = match &s.phase {
        status::Phase::Booting => (Phase::Booting, None),
        status::Phase::Ready => (Phase::Ready, None),
        status::Phase::Maintenance { stage, reason } => {
            (Phase::Maintenance, Some(Maintenance { stage: (*stage).to_owned(), reason: reason.clone() }))
        }
    };
    let stages = s
        .stages
        .iter()
        .map(|st| Stage {
            name: st.name.to_owned(),
            state: match st.state {
                status::StageState::Running => StageState::Running,
                status::StageState::Done => StageState::Done,
                status::StageState::Degraded => StageState::Degraded,
                status::StageState::Failed => StageState::Failed,
            },
            started_boot_ms: st.started_ms,
            elapsed_ms: st.elapsed_ms,
            error: st.error.clone(),
        })
        .collect();
    let conditions = s
        .conditions
        .iter()
        .map(|(name, c)| {
            let (state, reason) = match c {
                status::Condition::Pending => ("pending", None),
                status::Condition::True => ("true", None),
                status::Condition::Unreachable(why) => ("unreachable", Some(why.clone())),
            };
            ((*name).to_owned(), Condition { state: state.to_owned(), reason })
        })
        .collect();
    let (total, available) = meminfo();
    NodeStatus {
        node,
        phase,
        maintenance,
        stages,
        conditions,
        addresses: s.addresses.iter().map(ToString::to_string).collect(),
        uptime_ms: crate::clock::boottime().as_millis() as u64,
        memory: own_memory(total, available),
        boot: s.boot.as_ref().map(|b| Boot {
            version: b.version.clone(),
            entry: b.entry.clone(),
            on_trial: b.on_trial,
            failed_updates: b.failed_updates.iter().map(|f| f.version.clone()).collect(),
        }),
        etcd: s.etcd.as_ref().map(node_etcd),
    }
}

fn node_etcd(view: &status::EtcdView) -> NodeEtcd {
    let join = view.join.as_ref().map(|join| {
        let progress =
            |state: &str, member_id: Option<&String>, attempts: u32, reason: Option<&String>| EtcdJoinProgress {
                state: state.to_owned(),
                member_id: member_id.cloned(),
                attempts,
                reason: reason.cloned(),
            };
        match join {
            status::EtcdJoin::Adding { attempts, last_error } => {
                progress("adding", None, *attempts, last_error.as_ref())
            }
            status::EtcdJoin::Learner { id, attempts, last_error } => {
                progress("learner", Some(id), *attempts, last_error.as_ref())
            }
            status::EtcdJoin::Member { id } => progress("member", Some(id), 0, None),
            status::EtcdJoin::Failed { reason } => progress("failed", None, 0, Some(reason)),
        }
    });
    NodeEtcd {
        join,
        members: view
            .members
            .iter()
            .map(|m| EtcdMemberHealth {
                id: m.id.clone(),
                name: m.name.clone(),
                learner: m.learner,
                reachable: m.reachable,
                leader: m.leader,
                errors: m.errors.clone(),
            })
            .collect(),
        members_error: view.members_error.clone(),
    }
}

fn service(s: &kelson_supervise::ServiceStatus) -> Service {
    Service {
        name: s.name.clone(),
        state: s.state.as_str().to_owned(),
        reason: s.reason.clone(),
        since_unix_ms: s.since_unix_ms,
        restarts: s.restarts,
        pid: s.pid,
        last_exit: s.last_exit.map(|e| e.to_string()),
    }
}

fn pod(p: &kelson_pods::status::PodStatus) -> Pod {
    use kelson_pods::status::ContainerState as S;
    let containers = p
        .containers
        .iter()
        .map(|c| {
            let (state, reason) = match &c.state {
                S::Waiting { reason, .. } => ("waiting", Some(format!("{reason:?}"))),
                S::Running { .. } => ("running", None),
                S::Terminated { reason, .. } => ("terminated", Some(format!("{reason:?}"))),
            };
            Container {
                name: c.name.clone(),
                image: c.image.clone(),
                state: state.to_owned(),
                reason,
                ready: c.ready,
                restart_count: c.restart_count,
            }
        })
        .collect();
    Pod {
        namespace: p.namespace.clone(),
        name: p.name.clone(),
        uid: p.uid.to_string(),
        phase: format!("{:?}", p.phase),
        ready: p.ready,
        pod_ip: p.pod_ip.clone(),
        message: p.message.clone(),
        containers,
    }
}

/// The last `tail` of `lines` (all when `None`).
fn last<T>(mut lines: Vec<T>, tail: Option<u32>) -> Vec<T> {
    if let Some(n) = tail {
        let keep = n as usize;
        if lines.len() > keep {
            lines.drain(..lines.len() - keep);
        }
    }
    lines
}

/// Forwards a service's live lines to a follower, telling it when it fell
/// behind, until either side goes away.
fn forward_service_lines(mut live: broadcast::Receiver<kelson_supervise::LogLine>) -> mpsc::Receiver<LogLine> {
    let (tx, rx) = mpsc::channel(FOLLOW_BUFFER);
    tokio::spawn(async move {
        loop {
            let line = tokio::select! {
                line = live.recv() => line,
                () = tx.closed() => return,
            };
            let out = match line {
                Ok(l) => LogLine { at_unix_ms: l.at_unix_ms, text: l.text, skipped: None },
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    LogLine { at_unix_ms: unix_ms_now(), text: format!("[{n} lines skipped]"), skipped: Some(n) }
                }
                Err(broadcast::error::RecvError::Closed) => return,
            };
            if tx.send(out).await.is_err() {
                return;
            }
        }
    });
    rx
}

fn etcd_error(e: kelson_etcd::EtcdError) -> NodeError {
    NodeError::Unavailable(crate::boot::chain(&e))
}

impl NodeBackend {
    /// A client of the node's own etcd member, with the API server's etcd
    /// client certificate; only control-plane nodes run etcd.
    async fn etcd(&self) -> NodeResult<kelson_etcd::EtcdClient> {
        let role = self.handles.config().effective.map(|e| e.config.node.role);
        if role != Some(kelson_config::Role::ControlPlane) {
            return Err(NodeError::NotFound("this node is not a control-plane node: it runs no etcd".into()));
        }
        let endpoint = kelson_etcd::EtcdEndpoint::for_node(
            Path::new(ETCD_PKI_DIR),
            vec![kelson_etcd::LOCAL_CLIENT_URL.to_owned()],
        )
        .map_err(etcd_error)?;
        kelson_etcd::EtcdClient::connect(&endpoint).await.map_err(etcd_error)
    }

    /// On a control-plane node running an etcd static pod, removes its
    /// member through the other members before a reset wipes its data: a
    /// member that vanishes without leaving still counts towards the
    /// cluster's quorum. Fails (and the reset with it) if it cannot.
    async fn leave_etcd(&self) -> NodeResult<()> {
        let Some(config) = self.handles.config().effective.map(|e| e.config) else { return Ok(()) };
        if config.node.role != kelson_config::Role::ControlPlane {
            return Ok(());
        }
        let manifest = Path::new(MANIFEST_DIR).join(kelson_config::ETCD_STATIC_POD);
        let (kernel, path) = (self.kernel.clone(), manifest.clone());
        let read = tokio::task::spawn_blocking(move || kernel.read_file(&path))
            .await
            .map_err(|e| NodeError::Internal(format!("reading {}: the task died: {e}", manifest.display())))?;
        let text = match read {
            Ok(text) => text,
            // No etcd static pod (or a join still holding it back): no
            // member of this node's to remove.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(NodeError::Internal(format!("reading {}: {e}", manifest.display()))),
        };
        let mut endpoints = vec![kelson_etcd::LOCAL_CLIENT_URL.to_owned()];
        endpoints.extend(config.cluster.etcd_endpoints);
        let endpoint = kelson_etcd::EtcdEndpoint::for_node(Path::new(ETCD_PKI_DIR), endpoints)
            .map_err(|e| NodeError::Unavailable(format!("not reset: leaving etcd: {}", crate::boot::chain(&e))))?;
        let left = crate::etcd_join::leave(
            &manifest,
            &text,
            endpoint,
            kelson_etcd::Retry::default(),
            kelson_etcd::DEFAULT_REQUEST_TIMEOUT,
        )
        .await
        .map_err(|e| NodeError::Unavailable(format!("not reset: leaving etcd: {}", crate::boot::chain(&e))))?;
        match left {
            crate::etcd_join::Left::Removed { id } => warn!("reset: etcd member {id} removed from the cluster"),
            crate::etcd_join::Left::NotAMember => info!("reset: this node's etcd is no member of the cluster"),
            crate::etcd_join::Left::LastMember { id } => {
                warn!("reset: etcd member {id} is the cluster's only member; its data goes with the reset")
            }
        }
        Ok(())
    }

    fn supervisor(&self) -> NodeResult<Arc<kelson_supervise::Supervisor>> {
        self.handles.supervisor().ok_or_else(|| {
            unavailable("the services", "the supervisor is not running (the services stage has not started it)")
        })
    }

    fn kernel_log(&self, filter: kmsg::Filter, query: LogQuery) -> NodeResult<LogStream> {
        let (backlog, file) = kmsg::backlog(&self.kmsg, filter, query.tail.map(|t| t as usize))
            .map_err(|e| NodeError::Internal(format!("reading the kernel log {}: {e}", self.kmsg.display())))?;
        let live = query.follow.then(|| {
            let (tx, rx) = mpsc::channel(FOLLOW_BUFFER);
            tokio::spawn(async move {
                if let Err(e) = kmsg::follow(file, filter, tx).await {
                    warn!(error = %e, "following the kernel log stopped");
                }
            });
            rx
        });
        Ok(LogStream { backlog, live })
    }

    fn container_log(
        &self,
        namespace: &str,
        pod_name: &str,
        container: &str,
        query: LogQuery,
    ) -> NodeResult<LogStream> {
        let pods = self.handles.pods().ok_or_else(|| unavailable("the static pods", "the pods stage has not run"))?;
        // The newest instance of the pod by that name: an edited manifest
        // leaves the old instance in the status while it stops.
        let found = pods
            .pods
            .iter()
            .rev()
            .find(|p| p.namespace == namespace && p.name == pod_name)
            .ok_or_else(|| NodeError::NotFound(format!("no static pod {namespace}/{pod_name} on this node")))?;
        if !found.containers.iter().any(|c| c.name == container) {
            return Err(NodeError::NotFound(format!("static pod {namespace}/{pod_name} has no container {container}")));
        }
        use kelson_pods::logread::{self, LogReadError};
        let what = format!("{namespace}/{pod_name}/{container}");
        let read_error = |e: LogReadError| match e {
            LogReadError::NoContainer { .. } | LogReadError::NoLogDir { .. } => {
                NodeError::NotFound(format!("container {what} has written no log yet ({})", crate::boot::chain(&e)))
            }
            other => {
                NodeError::Internal(format!("reading the log of container {what}: {}", crate::boot::chain(&other)))
            }
        };
        let uid = found.uid.to_string();
        let dir = logread::container_log_dir(&self.pod_logs, namespace, pod_name, Some(&uid), container)
            .map_err(&read_error)?;
        let (lines, cursor) =
            logread::read_tail_with_cursor(&dir, query.tail.map(|t| t as usize)).map_err(&read_error)?;
        let backlog =
            lines.into_iter().map(|l| LogLine { at_unix_ms: l.at_unix_ms, text: l.text, skipped: None }).collect();
        let live = query.follow.then(|| {
            let (raw_tx, mut raw_rx) = mpsc::channel(FOLLOW_BUFFER);
            let (tx, rx) = mpsc::channel(FOLLOW_BUFFER);
            tokio::spawn(async move {
                if let Err(e) = logread::follow_from(dir, cursor, raw_tx).await {
                    warn!(error = %crate::boot::chain(&e), "following a container log stopped");
                }
            });
            tokio::spawn(async move {
                while let Some(l) = raw_rx.recv().await {
                    if tx.send(LogLine { at_unix_ms: l.at_unix_ms, text: l.text, skipped: None }).await.is_err() {
                        return;
                    }
                }
            });
            rx
        });
        Ok(LogStream { backlog, live })
    }

    /// Writes what can change on a running node; returns what failed.
    async fn apply_live(
        &self,
        old: Option<&kelson_config::MachineConfig>,
        planned: &config_apply::Planned,
    ) -> Vec<String> {
        let mut errors = Vec::new();
        let config = &planned.effective.config;
        let files_like = planned
            .live
            .iter()
            .any(|c| matches!(c, LiveChange::Files | LiveChange::Pki | LiveChange::StaticPods | LiveChange::Sysctls));
        if files_like {
            let (kernel, module_dir) = (self.kernel.clone(), self.module_dir.clone());
            let mut config = config.clone();
            // Modules are loaded at boot only: they are not unloaded, so a
            // change waits for the next boot.
            config.kernel_modules.clear();
            let removed: Vec<String> = old
                .map(|o| o.static_pods.iter().map(|p| p.name.clone()).collect::<Vec<_>>())
                .unwrap_or_default()
                .into_iter()
                .filter(|name| !config.static_pods.iter().any(|p| &p.name == name))
                .collect();
            let failed = tokio::task::spawn_blocking(move || {
                let mut failed = crate::stages::apply_config::apply_parts(kernel.as_ref(), &module_dir, &config);
                for name in removed {
                    let path = Path::new(MANIFEST_DIR).join(&name);
                    if let Err(e) = kernel.remove_file(&path) {
                        failed.push(format!("removing {}: {e}", path.display()));
                    }
                }
                failed
            })
            .await
            .unwrap_or_else(|e| vec![format!("the task writing the config died: {e}")]);
            errors.extend(failed);
        }
        if planned.live.contains(&LiveChange::PeerRoutes) {
            match self.handles.network() {
                Some(network) => {
                    let report = network.lock().await.apply_config(&planned.net_plan).await;
                    for step in &report.steps {
                        if let kelson_net::Outcome::Failed { errors: failed, .. } = &step.outcome {
                            errors.extend(failed.iter().map(|e| format!("network step {}: {e}", step.step)));
                        }
                    }
                    info!(changes = ?report.changes(), "network applied again for the API's config");
                }
                None => {
                    errors.push("peer routes: the network stage is not running; they apply at the next boot".into())
                }
            }
        }
        errors
    }
}

impl Node for NodeBackend {
    fn version(&self) -> Version {
        let version = self.status.current().boot.map_or_else(|| env!("CARGO_PKG_VERSION").to_owned(), |b| b.version);
        Version { node: hostname(), version, api: "v1".into() }
    }

    fn status(&self) -> NodeStatus {
        node_status(hostname(), &self.status.current())
    }

    fn services(&self) -> NodeResult<Vec<Service>> {
        Ok(self.supervisor()?.snapshot().services.values().map(service).collect())
    }

    async fn service_action(&self, name: &str, action: ServiceAction) -> NodeResult<Service> {
        use kelson_supervise::{ControlError, ServiceAction as A};
        let supervisor = self.supervisor()?;
        let wanted = match action {
            ServiceAction::Start => A::Start,
            ServiceAction::Stop => A::Stop,
            ServiceAction::Restart => A::Restart,
        };
        info!(service = name, action = action.as_str(), "service action through the API");
        match supervisor.control(name, wanted).await {
            Ok(status) => Ok(service(&status)),
            Err(e @ ControlError::UnknownService { .. }) => Err(NodeError::NotFound(e.to_string())),
            Err(e @ (ControlError::ShuttingDown { .. } | ControlError::NotStarted { .. })) => {
                Err(NodeError::Unavailable(e.to_string()))
            }
            Err(e) => Err(NodeError::Conflict(e.to_string())),
        }
    }

    fn pods(&self) -> NodeResult<Vec<Pod>> {
        let pods = self.handles.pods().ok_or_else(|| unavailable("the static pods", "the pods stage has not run"))?;
        Ok(pods.pods.iter().map(pod).collect())
    }

    async fn logs(&self, source: &LogSource, query: LogQuery) -> NodeResult<LogStream> {
        match source {
            LogSource::Service(name) => {
                let subscription = self
                    .supervisor()?
                    .logs(name)
                    .ok_or_else(|| NodeError::NotFound(format!("no service {name} on this node")))?;
                let backlog = subscription
                    .backlog
                    .into_iter()
                    .map(|l| LogLine { at_unix_ms: l.at_unix_ms, text: l.text, skipped: None })
                    .collect();
                let live = query.follow.then(|| forward_service_lines(subscription.live));
                Ok(LogStream { backlog: last(backlog, query.tail), live })
            }
            LogSource::Container { namespace, pod, container } => self.container_log(namespace, pod, container, query),
            LogSource::Kernel => self.kernel_log(kmsg::Filter::All, query),
            LogSource::Init => self.kernel_log(kmsg::Filter::Init, query),
        }
    }

    fn config(&self) -> NodeResult<EffectiveConfig> {
        let state = self.handles.config();
        let effective = state.effective.ok_or_else(|| {
            NodeError::Conflict("the node has no accepted config: this boot rejected it (see the status)".into())
        })?;
        let provenance = effective
            .leaf_origins()
            .into_iter()
            .map(|(path, origin)| {
                let (source, document) = origin
                    .map_or(("built-in default", "built-in default".to_owned()), |(s, d)| (s.label(), d.to_owned()));
                Provenance { path, source: source.to_owned(), document }
            })
            .collect();
        Ok(EffectiveConfig { yaml: effective.config.to_yaml(), provenance })
    }

    async fn apply_config(&self, request: ApplyConfig) -> NodeResult<ApplyResult> {
        let state = self.handles.config();
        let planned = config_apply::plan(&state.layers, &state.unreadable, state.effective.as_ref(), &request.document)
            .map_err(NodeError::InvalidConfig)?;
        let mut result = ApplyResult {
            dry_run: request.dry_run,
            problems: Vec::new(),
            diff: planned.diff.clone(),
            applied_live: planned.live.iter().map(|c| c.label().to_owned()).collect(),
            reboot_required: planned.reboot_required.clone(),
            live_errors: Vec::new(),
        };
        if request.dry_run {
            return Ok(result);
        }
        let store = self.store.clone();
        let layer = planned.layer.clone();
        tokio::task::spawn_blocking(move || store.save(&layer))
            .await
            .map_err(|e| NodeError::Internal(format!("saving the API config: the task died: {e}")))?
            .map_err(|e| NodeError::Internal(format!("saving the API config: {}", crate::boot::chain(&e))))?;
        info!(live = ?result.applied_live, reboot = ?result.reboot_required, "API config saved");
        let mut layers: Vec<_> = state.layers.into_iter().filter(|l| l.source != kelson_config::Source::Api).collect();
        layers.push(planned.layer.clone());
        let in_maintenance = matches!(self.status.current().phase, status::Phase::Maintenance { .. });
        let old = state.effective.as_ref().map(|e| e.config.clone());
        self.handles.set_config(ConfigState {
            layers,
            unreadable: state.unreadable,
            effective: Some(planned.effective.clone()),
        });
        if in_maintenance {
            result.applied_live.clear();
            result.reboot_required = vec!["the node is in maintenance: it reboots now to boot with this config".into()];
            self.power(Power::Reboot)?;
            return Ok(result);
        }
        result.live_errors = self.apply_live(old.as_ref(), &planned).await;
        for e in &result.live_errors {
            warn!(error = e.as_str(), "part of the API config was not applied live");
        }
        Ok(result)
    }

    fn power(&self, action: Power) -> NodeResult<()> {
        let action = match action {
            Power::Reboot => Action::Reboot,
            Power::PowerOff => Action::PowerOff,
        };
        self.power.try_send(action).map_err(|_| NodeError::Conflict("a shutdown is already under way".into()))
    }

    async fn reset(&self) -> NodeResult<()> {
        self.leave_etcd().await?;
        self.kernel
            .install_file(Path::new(RESET_MARKER), b"requested through the management API\n", 0o600)
            .map_err(|e| NodeError::Internal(format!("writing the reset marker {RESET_MARKER}: {e}")))?;
        warn!("reset requested through the API: the state partition is wiped at the next boot");
        self.power(Power::Reboot)
    }

    async fn etcd_members(&self) -> NodeResult<Vec<EtcdMember>> {
        let members = self.etcd().await?.members().await.map_err(etcd_error)?;
        Ok(members
            .into_iter()
            .map(|m| EtcdMember {
                id: m.id.to_string(),
                name: m.name,
                peer_urls: m.peer_urls,
                client_urls: m.client_urls,
                is_learner: m.is_learner,
            })
            .collect())
    }

    async fn etcd_status(&self) -> NodeResult<EtcdStatus> {
        let s = self.etcd().await?.status().await.map_err(etcd_error)?;
        Ok(EtcdStatus {
            version: s.version,
            db_size_bytes: s.db_size_bytes,
            leader: s.leader.to_string(),
            raft_index: s.raft_index,
            raft_term: s.raft_term,
            errors: s.errors,
        })
    }

    async fn etcd_alarms(&self) -> NodeResult<Vec<EtcdAlarm>> {
        let alarms = self.etcd().await?.alarms().await.map_err(etcd_error)?;
        Ok(alarms.into_iter().map(|a| EtcdAlarm { member: a.member.to_string(), alarm: a.kind }).collect())
    }

    async fn etcd_snapshot(&self) -> NodeResult<ByteStream> {
        let mut chunks = self.etcd().await?.snapshot().await.map_err(etcd_error)?;
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(async move {
            while let Some(chunk) = chunks.recv().await {
                if tx.send(chunk.map_err(etcd_error)).await.is_err() {
                    return;
                }
            }
        });
        info!("etcd snapshot streamed through the API");
        Ok(rx)
    }

    async fn upgrade(&self, mut bundle: Upload, reboot: bool) -> NodeResult<UpgradeResult> {
        let dir = PathBuf::from(UPLOAD_DIR);
        let partial = dir.join("bundle.tar.partial");
        let whole = dir.join("bundle.tar");
        let io_error = |what: &str, e: std::io::Error| NodeError::Internal(format!("{what}: {e}"));
        tokio::fs::create_dir_all(&dir).await.map_err(|e| io_error(&format!("creating {UPLOAD_DIR}"), e))?;
        let mut file = tokio::fs::File::create(&partial)
            .await
            .map_err(|e| io_error(&format!("creating {}", partial.display()), e))?;
        let bytes = tokio::io::copy(&mut bundle, &mut file)
            .await
            .map_err(|e| NodeError::BadRequest(format!("receiving the update bundle: {e}")))?;
        file.sync_all().await.map_err(|e| io_error(&format!("writing {}", partial.display()), e))?;
        drop(file);
        tokio::fs::rename(&partial, &whole)
            .await
            .map_err(|e| io_error(&format!("renaming {}", partial.display()), e))?;
        info!(bytes, "update bundle received through the API; installing it");
        let kernel = self.kernel.clone();
        let path = whole.clone();
        let installed = tokio::task::spawn_blocking(move || {
            crate::update::install_on_running(kernel.as_ref(), &path, crate::boot_entry::DEFAULT_TRIES)
        })
        .await
        .map_err(|e| NodeError::Internal(format!("installing the update: the task died: {e}")))?;
        let _ = tokio::fs::remove_file(&whole).await;
        let installed = installed.map_err(|e| match e {
            crate::update::InstallError::NotOnSlots(why) => NodeError::Conflict(why),
            crate::update::InstallError::Refused(why) => NodeError::BadRequest(why),
        })?;
        info!(version = installed.version.as_str(), slot = installed.slot.as_str(), "update installed");
        if reboot {
            // The answer goes out before the node goes down.
            let power = self.power.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(500)).await;
                let _ = power.send(Action::Reboot).await;
            });
        }
        Ok(UpgradeResult {
            version: installed.version,
            slot: installed.slot,
            entry: installed.entry,
            rebooting: reboot,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_status_carries_a_joining_members_progress_and_the_members_health() {
        let mut status = status::NodeStatus::default();
        assert_eq!(node_status("cp-2".into(), &status).etcd, None, "no etcd view on a node without one");
        status.etcd = Some(status::EtcdView {
            join: Some(status::EtcdJoin::Learner {
                id: "b1".into(),
                attempts: 3,
                last_error: Some("promoting etcd learner b1: not in sync".into()),
            }),
            members: vec![status::EtcdMemberHealth {
                id: "a1".into(),
                name: "cp-1".into(),
                learner: false,
                reachable: true,
                leader: true,
                errors: vec![],
            }],
            members_error: None,
        });

        let etcd = node_status("cp-2".into(), &status).etcd.unwrap();

        let join = etcd.join.unwrap();
        assert_eq!((join.state.as_str(), join.member_id.as_deref(), join.attempts), ("learner", Some("b1"), 3));
        assert_eq!(join.reason.as_deref(), Some("promoting etcd learner b1: not in sync"));
        assert_eq!(etcd.members.len(), 1);
        assert!(etcd.members[0].leader && etcd.members[0].reachable && !etcd.members[0].learner);
    }
}
