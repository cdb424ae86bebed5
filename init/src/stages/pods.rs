//! `pods`: static pods from `/etc/kubernetes/manifests`, run by
//! kelson-pods' manager through the container shim (see
//! [`crate::pod_runtime`]). The manager runs as a task on PID 1's runtime;
//! a second task feeds it the manifest watcher's events. Non-critical: a
//! failure here is logged and boot goes on to the services.
//!
//! With a cluster to report to (`cluster.apiServerEndpoint`, `pki.ca` and
//! `pki.certificates.kubelet` in the machine config), a third task keeps
//! the Node's `KelsonStaticPodsHealthy`/`KelsonEtcdHealthy` conditions and
//! posts Events as the pods change (kelson-cluster), as the node itself.
//!
//! On a control-plane node joining a running etcd (`cluster.etcdJoin`),
//! the etcd manifest is held back before the manager starts and a task adds
//! the member and writes it back ([`crate::etcd_join`]); on every
//! control-plane node a task checks the etcd members' health for the node
//! status.
//!
//! Its handle stops the reporter (the API server is one of the pods), then
//! the pods, after the supervised services (the kubelet and kube-proxy
//! talk to the static apiserver; they go first, the reverse of boot) and
//! before the network, whose veths the pods use.

use crate::boot::{chain, BootContext, Done, Running, ShutdownFuture, StageError};
use crate::etcd_join::{self, JoinPaths, Joiner, Pace, Prepared};
use crate::kernel::{Kernel, LinuxKernel};
use crate::pod_runtime::{connect_or_start_shim, NodeProber, NodeSandboxes};
use crate::status::{EtcdJoin, StatusPublisher};
use kelson_base::paths::IMAGE_LAYOUTS;
use kelson_cluster::discovery::BootstrapToken;
use kelson_cluster::{AddonApplier, Reporter, ReporterConfig, Timing, TokenJoin, ADDONS_CERTIFICATE};
use kelson_config::MachineConfig;
use kelson_config::Role;
use kelson_containers::store::ImageStore;
use kelson_etcd::EtcdEndpoint;
use kelson_pods::manifest::LoadOptions;
use kelson_pods::runtime::netns::NETNS_DIR;
use kelson_pods::runtime::shim::{ShimRuntime, StartShim, StoreImages, SystemHost};
use kelson_pods::runtime::{ManagerCommand, ManagerConfig, PodManager};
use kelson_pods::watch::{ManifestWatcher, DEBOUNCE, MANIFEST_DIR};
use kelson_pods::SystemClock;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

/// Unpacked image trees, on the state disk when there is one.
pub const IMAGE_UNPACKED: &str = "/var/lib/kelson/images";
/// Test knob: a fixed restart delay instead of the 10 s..5 min back-off.
pub const BACKOFF_KNOB: &str = "kelson.test.pod_backoff_ms";
/// The certificate in `pki.certificates` the reporter authenticates with:
/// the kubelet's, `CN=system:node:<node>`, so NodeRestriction lets it
/// patch this Node's status and post events.
pub const REPORTER_CERTIFICATE: &str = kelson_supervise::node::NODE_CERT;
/// How often a control-plane node checks its etcd members' health.
const ETCD_MEMBERS_INTERVAL: Duration = Duration::from_secs(15);
/// The longest shutdown waits for the pods (each has its own grace period
/// inside this).
const SHUTDOWN_LIMIT: Duration = Duration::from_secs(120);

#[derive(Debug, thiserror::Error)]
pub enum PodsError {
    #[error("no async runtime for the pods")]
    NoRuntime(#[source] tokio::runtime::TryCurrentError),
    #[error("no container shim for the pods")]
    Shim(#[source] crate::pod_runtime::ShimError),
    #[error("watching {MANIFEST_DIR}")]
    Watch(#[source] kelson_pods::watch::WatchError),
}

pub fn run(ctx: &mut BootContext<'_>) -> Result<Done, StageError> {
    let runtime = tokio::runtime::Handle::try_current().map_err(PodsError::NoRuntime)?;
    let node_name = ctx.node_name();
    let bridge = ctx.net_plan.as_ref().and_then(|plan| plan.bridge.clone());
    let fixed_backoff = ctx.cmdline.get(BACKOFF_KNOB).and_then(|v| v.parse::<u64>().ok()).map(Duration::from_millis);
    if let Some(backoff) = fixed_backoff {
        warn!("test knob: pods restart after a fixed {} ms", backoff.as_millis());
    }
    if !ctx.kernel.exists(Path::new(IMAGE_LAYOUTS)) {
        warn!("pods: no image store at {IMAGE_LAYOUTS}: every container will wait with ErrImageNeverPull");
    }
    // The address the network stage published, for `status.hostIP`.
    let host_ip = ctx.status.current().addresses.first().map(ToString::to_string);
    let reaper = ctx.reaper.clone();
    let handles = ctx.handles.clone();
    let stopping = Arc::new(AtomicBool::new(false));
    let reporter_config = match ctx.config.as_ref().map(|c| reporter_config(&c.config, &node_name)) {
        Some(Ok(config)) => Some(config),
        Some(Err(missing)) => {
            info!("pods: not reporting to the cluster: the machine config has no {missing}");
            None
        }
        None => None,
    };
    // A control-plane node applies the cluster objects Kelson needs.
    let addons_config = ctx.config.as_ref().and_then(|c| {
        let credential = c.config.pki.certificates.get(ADDONS_CERTIFICATE)?;
        let node = reporter_config.as_ref()?;
        let config = ReporterConfig {
            cert_pem: credential.cert.clone().into_bytes(),
            key_pem: credential.key.expose().as_bytes().to_vec(),
            ..node.clone()
        };
        Some((config, token_join(&c.config)))
    });
    // Before the pod manager reads the manifests: a joining etcd member's
    // is held back until the member is added.
    let joiner = ctx.config.as_ref().and_then(|c| prepare_etcd_join(ctx.kernel, &c.config, &ctx.status));
    let members_endpoint = ctx.config.as_ref().and_then(|c| members_endpoint(&c.config));
    let status = ctx.status.clone();
    let (commands, cluster_tasks, background) = runtime.block_on(async {
        let client = connect_or_start_shim(&reaper, &stopping).await.map_err(PodsError::Shim)?;
        let (restart_reaper, restart_stopping) = (reaper.clone(), stopping.clone());
        let start_shim: StartShim = Box::new(move || {
            let (reaper, stopping) = (restart_reaper.clone(), restart_stopping.clone());
            Box::pin(async move { Ok(connect_or_start_shim(&reaper, &stopping).await?) })
        });
        let network = NodeSandboxes::new(
            bridge,
            host_ip.clone(),
            Path::new(NETNS_DIR),
            Path::new(kelson_net::pods::DEFAULT_STATE_DIR),
        );
        let config = ManagerConfig { host_ip, fixed_backoff, ..ManagerConfig::default() };
        let manager = PodManager::new(
            config,
            ShimRuntime::restartable(client, start_shim),
            Arc::new(network),
            Arc::new(NodeProber::new(reaper.clone())),
            Arc::new(StoreImages(ImageStore::new(IMAGE_LAYOUTS, IMAGE_UNPACKED))),
            Arc::new(SystemHost),
            Arc::new(SystemClock),
        );
        let reporter_stop = reporter_config.and_then(|config| start_reporter(config, manager.subscribe()));
        let addons_stop = addons_config.and_then(|(config, join)| start_addons(config, join));
        handles.set_pods(manager.subscribe());
        let options = LoadOptions { node_name: (!node_name.is_empty()).then_some(node_name) };
        let mut watcher =
            ManifestWatcher::new(PathBuf::from(MANIFEST_DIR), options, DEBOUNCE).map_err(PodsError::Watch)?;
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(manager.run(rx));
        let feed = tx.clone();
        tokio::spawn(async move {
            loop {
                match watcher.next().await {
                    Ok(events) if events.is_empty() => {}
                    Ok(events) => {
                        if feed.send(ManagerCommand::Manifests(events)).await.is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        // Running pods stay; only new changes go unseen.
                        warn!("pods: no longer watching {MANIFEST_DIR}: {}", chain(&e));
                        return;
                    }
                }
            }
        });
        // Started once the watcher is, which then sees the manifest the
        // join writes back.
        let mut background = Vec::new();
        if let Some(joiner) = joiner {
            let kernel: Arc<dyn Kernel + Send + Sync> = Arc::new(LinuxKernel);
            background.push(tokio::spawn(joiner.run(kernel, status.clone(), Pace::default())).abort_handle());
        }
        if let Some(endpoint) = members_endpoint {
            let watch = etcd_join::watch_members(endpoint, status, ETCD_MEMBERS_INTERVAL);
            background.push(tokio::spawn(watch).abort_handle());
        }
        let cluster_tasks = [reporter_stop, addons_stop].into_iter().flatten().collect::<Vec<_>>();
        Ok::<_, PodsError>((tx, cluster_tasks, background))
    })?;
    info!("pods: manager started, watching {MANIFEST_DIR}");
    Ok(Done::Running(Box::new(PodsHandle { commands, stopping, cluster_tasks, background })))
}

/// The etcd join to run this boot, if any; a join that cannot start is
/// logged and shown in the status, and the manifest left as it was.
fn prepare_etcd_join(kernel: &dyn Kernel, config: &MachineConfig, status: &StatusPublisher) -> Option<Box<Joiner>> {
    match etcd_join::prepare(kernel, config, &JoinPaths::default()) {
        Ok(Prepared::NotJoining) => None,
        Ok(Prepared::AlreadyMember { wal }) => {
            info!("etcd join: {} exists: this node's etcd is a member already", wal.display());
            None
        }
        Ok(Prepared::Join(joiner)) => {
            info!("etcd join: {} has no data yet: its manifest is held back until it is added", joiner.flags.name);
            Some(joiner)
        }
        Err(e) => {
            let reason = chain(&e);
            warn!("etcd join: not joining: {reason}");
            status.update_etcd(|v| v.join = Some(EtcdJoin::Failed { reason }));
            None
        }
    }
}

/// On a control-plane node with kubeadm's etcd certificates, its own etcd
/// member, through which the members' health is checked.
fn members_endpoint(config: &MachineConfig) -> Option<EtcdEndpoint> {
    if config.node.role != Role::ControlPlane {
        return None;
    }
    let local = vec![kelson_etcd::LOCAL_CLIENT_URL.to_owned()];
    match EtcdEndpoint::for_node(Path::new(etcd_join::PKI_DIR), local) {
        Ok(endpoint) => Some(endpoint),
        Err(e) => {
            info!("pods: not watching the etcd members: {}", chain(&e));
            None
        }
    }
}

/// What the reporter needs from the machine config, or the first field
/// missing (a node outside a cluster has none of them).
pub(crate) fn reporter_config(config: &MachineConfig, node_name: &str) -> Result<ReporterConfig, &'static str> {
    let api_server = config.cluster.api_server_endpoint.as_ref().ok_or("cluster.apiServerEndpoint")?;
    let ca = config.pki.ca.as_ref().ok_or("pki.ca")?;
    let credential = config.pki.certificates.get(REPORTER_CERTIFICATE).ok_or("pki.certificates.kubelet")?;
    if node_name.is_empty() {
        return Err("node.hostname (and the identity stage found none)");
    }
    Ok(ReporterConfig {
        api_server: api_server.clone(),
        ca_pem: ca.clone().into_bytes(),
        cert_pem: credential.cert.clone().into_bytes(),
        key_pem: credential.key.expose().as_bytes().to_vec(),
        node_name: node_name.to_owned(),
        timing: Timing::default(),
    })
}

/// Spawns the reporter on this runtime; the sender stops it. A config it
/// refuses (a malformed PEM) is logged and leaves the pods running.
fn start_reporter(
    config: ReporterConfig,
    pods: tokio::sync::watch::Receiver<kelson_pods::runtime::PodsStatus>,
) -> Option<oneshot::Sender<()>> {
    let target = format!("{} as Node {}", config.api_server, config.node_name);
    match Reporter::new(config) {
        Ok(reporter) => {
            let (stop, stopped) = oneshot::channel::<()>();
            tokio::spawn(reporter.run(pods, async {
                let _ = stopped.await;
            }));
            info!("pods: reporting static pods to {target}");
            Some(stop)
        }
        Err(e) => {
            warn!("pods: not reporting to the cluster: {}", chain(&e));
            None
        }
    }
}

/// What a control-plane node publishes for workers joining by token: its
/// config's `cluster.bootstrapToken` (with its expiration), the API server
/// endpoint and the CA. `None` without a token (or a CA, or an endpoint).
pub(crate) fn token_join(config: &MachineConfig) -> Option<TokenJoin> {
    let token = config.cluster.bootstrap_token.as_ref()?;
    let Some(token) = BootstrapToken::parse(token.expose()) else {
        // Validation refuses such a config; this only keeps the secret out.
        warn!("pods: cluster.bootstrapToken is not a bootstrap token; not publishing it");
        return None;
    };
    Some(TokenJoin {
        token,
        expiration: config.cluster.bootstrap_token_expiration.clone(),
        server: config.cluster.api_server_endpoint.clone()?,
        ca_pem: config.pki.ca.clone()?,
    })
}

/// Spawns the addon applier on this runtime; the sender stops it.
fn start_addons(config: ReporterConfig, join: Option<TokenJoin>) -> Option<oneshot::Sender<()>> {
    if let Some(join) = &join {
        info!("pods: publishing bootstrap token {} and cluster-info for token joins", join.token.id());
    }
    match AddonApplier::new(&config, join) {
        Ok(applier) => {
            let (stop, stopped) = oneshot::channel::<()>();
            tokio::spawn(applier.run(async {
                let _ = stopped.await;
            }));
            info!("pods: applying Kelson's cluster objects at {}", config.api_server);
            Some(stop)
        }
        Err(e) => {
            warn!("pods: not applying Kelson's cluster objects: {}", chain(&e));
            None
        }
    }
}

/// Stops every pod, each within its grace period, last started first.
struct PodsHandle {
    commands: mpsc::Sender<ManagerCommand>,
    /// Set once the pods are being stopped: the shim's exit is expected.
    stopping: Arc<AtomicBool>,
    /// Stop the cluster reporter and the addon applier, first: the API
    /// server is one of the pods.
    cluster_tasks: Vec<oneshot::Sender<()>>,
    /// The etcd join and the members' health checks, stopped first.
    background: Vec<tokio::task::AbortHandle>,
}

impl Running for PodsHandle {
    fn shutdown(self: Box<Self>) -> ShutdownFuture {
        Box::pin(async move {
            for task in &self.background {
                task.abort();
            }
            for stop in self.cluster_tasks {
                // Gone already is fine.
                let _ = stop.send(());
            }
            self.stopping.store(true, Ordering::SeqCst);
            let (done, finished) = oneshot::channel();
            if self.commands.send(ManagerCommand::Shutdown(done)).await.is_err() {
                warn!("pods: the manager is gone; pods are left to the final kill");
                return;
            }
            match tokio::time::timeout(SHUTDOWN_LIMIT, finished).await {
                Ok(Ok(())) => info!("pods: stopped"),
                Ok(Err(_)) => warn!("pods: the manager ended before stopping every pod"),
                Err(_) => warn!("pods: not all stopped within {} s", SHUTDOWN_LIMIT.as_secs()),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = "apiVersion: kelson.dev/v1alpha1\nkind: MachineConfig\nnode:\n  hostname: cp-1\n";
    const CLUSTER: &str = "cluster:\n  apiServerEndpoint: https://10.0.0.1:6443\n";
    const CA: &str = "pki:\n  ca: CA-PEM\n";
    const KUBELET: &str = "  certificates:\n    kubelet:\n      cert: CERT-PEM\n      key: KEY-PEM\n";

    fn config(text: &str) -> MachineConfig {
        kelson_config::parse("test", text).expect("test config parses")
    }

    #[test]
    fn the_reporter_uses_the_endpoint_the_ca_and_the_kubelets_certificate_from_the_config() {
        let reporter = reporter_config(&config(&format!("{CONFIG}{CLUSTER}{CA}{KUBELET}")), "cp-1").expect("complete");
        assert_eq!(reporter.api_server, "https://10.0.0.1:6443");
        assert_eq!(reporter.ca_pem, b"CA-PEM");
        assert_eq!(reporter.cert_pem, b"CERT-PEM");
        assert_eq!(reporter.key_pem, b"KEY-PEM");
        assert_eq!(reporter.node_name, "cp-1");
        assert!(!format!("{reporter:?}").contains("KEY-PEM"));
    }

    #[test]
    fn a_control_plane_publishes_its_configs_token_with_the_endpoint_and_ca() {
        let token =
            "cluster:\n  apiServerEndpoint: https://10.0.0.1:6443\n  bootstrapToken: abcdef.0123456789abcdef\n  \
                     bootstrapTokenExpiration: \"2026-12-09T10:00:00Z\"\n";
        let join = token_join(&config(&format!("{CONFIG}{token}{CA}"))).expect("a token, an endpoint and a CA");
        assert_eq!(join.token.id(), "abcdef");
        assert_eq!(join.expiration.as_deref(), Some("2026-12-09T10:00:00Z"));
        assert_eq!((join.server.as_str(), join.ca_pem.as_str()), ("https://10.0.0.1:6443", "CA-PEM"));
        assert!(token_join(&config(&format!("{CONFIG}{CLUSTER}{CA}"))).is_none(), "no token");
        assert!(token_join(&config(&format!("{CONFIG}{token}"))).is_none(), "no CA to publish");
    }

    #[test]
    fn without_any_of_them_the_reporter_stays_off_naming_the_first_missing_field() {
        assert_eq!(reporter_config(&config(CONFIG), "cp-1").err(), Some("cluster.apiServerEndpoint"));
        assert_eq!(reporter_config(&config(&format!("{CONFIG}{CLUSTER}")), "cp-1").err(), Some("pki.ca"));
        let no_kubelet = format!("{CONFIG}{CLUSTER}{CA}");
        assert_eq!(reporter_config(&config(&no_kubelet), "cp-1").err(), Some("pki.certificates.kubelet"));
    }
}
