//! `network`: the config's network plan applied by kelson-net (lo, uplinks
//! or DHCP, resolv.conf, cbr0, forwarding, the MASQUERADE chain, peer
//! routes), then the CNI config for containerd's pods. Not critical: a
//! failed step is logged and boot goes on, so the node stays reachable for
//! whatever did come up.
//!
//! When the network is as up as it will get, the stage sets `network-ready`
//! in the node status and publishes the node's addresses there (a DHCP
//! lease's as it arrives). The DHCP clients outlive the stage, renewing
//! leases: its handle releases them at shutdown.
//!
//! On a node with cluster credentials the stage also starts the Node
//! watcher (`kelson_cluster::NodeWatcher`; on a node that joined by
//! bootstrap token, with its kubelet's certificate once TLS bootstrap has
//! made it): from then on the peer routes
//! follow the cluster's Node objects, each other node's pod CIDR via its
//! InternalIP; the config's static `network.peerRoutes` keep the pod CIDRs
//! the Nodes do not cover (all of them while no API server answers).

use crate::boot::{BootContext, Done, Running, ShutdownFuture, StageError};
use crate::clock;
use crate::kernel::Kernel;
use crate::runner::ReaperRunner;
use crate::status::{Condition, StatusPublisher};
use kelson_cluster::{ClusterView, NodeWatcher, ReporterConfig, Timing};
use kelson_net::plan::{BridgePlan, PeerRoutePlan, UplinkMode};
use kelson_net::{cni, ApplyReport, Host, NetPlan, Networking, Outcome, Paths, RtNetlink};
use kelson_supervise::node::paths::{DISCOVERED_CA_FILE, KUBELET_CLIENT_CERT};
use kelson_supervise::node::{kubelet_credential, Credential};
use kelson_supervise::NETWORK_READY;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{oneshot, watch, Mutex};
use tracing::{debug, info, warn};

type NodeNetworking = Networking<RtNetlink, ReaperRunner>;

/// The node's networking as the stage leaves it running, with both sources
/// of peer routes: the config's plan (the management API applies a changed
/// one through [`NodeNetwork::apply_config`]) and the cluster's Node
/// objects (the Node watcher's, through [`NodeNetwork::follow_cluster`]).
/// Each apply is of the two merged, so neither undoes the other.
pub struct NodeNetwork {
    networking: NodeNetworking,
    config_plan: NetPlan,
    /// `None` until the Node watcher has seen the cluster.
    cluster_routes: Option<Vec<PeerRoutePlan>>,
}

impl NodeNetwork {
    /// Applies a new config's plan, keeping the cluster's routes.
    pub async fn apply_config(&mut self, plan: &NetPlan) -> ApplyReport {
        self.config_plan = plan.clone();
        self.apply().await
    }

    /// Applies the cluster's routes, keeping the config's plan.
    pub async fn follow_cluster(&mut self, routes: Vec<PeerRoutePlan>) -> ApplyReport {
        self.cluster_routes = Some(routes);
        self.apply().await
    }

    async fn apply(&mut self) -> ApplyReport {
        let plan = merged_plan(&self.config_plan, self.cluster_routes.as_deref());
        self.networking.apply(&plan).await
    }
}

/// `config_plan` with its peer routes joined by the cluster's: a Node's
/// route wins over a static one for any pod CIDR the two share (the Node
/// objects are the cluster as it is now; the config's routes are a
/// fallback for when no API server answers).
fn merged_plan(config_plan: &NetPlan, cluster_routes: Option<&[PeerRoutePlan]>) -> NetPlan {
    let mut plan = config_plan.clone();
    let Some(cluster) = cluster_routes else { return plan };
    let overlaps = |a: &PeerRoutePlan, b: &PeerRoutePlan| {
        a.pod_cidr.contains(&b.pod_cidr.network()) || b.pod_cidr.contains(&a.pod_cidr.network())
    };
    plan.peer_routes.retain(|fixed| !cluster.iter().any(|route| overlaps(fixed, route)));
    plan.peer_routes.extend(cluster.iter().copied());
    plan
}

/// The cluster's routes for `view`, without any to this node's own pod
/// CIDR (a peer claiming part of it is left out by the view already).
fn cluster_routes(view: &ClusterView) -> Vec<PeerRoutePlan> {
    view.peers.iter().map(|peer| PeerRoutePlan { pod_cidr: peer.pod_cidr, via: peer.address }).collect()
}

#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("no async runtime for networking")]
    NoRuntime(#[source] tokio::runtime::TryCurrentError),
    #[error("opening a netlink socket")]
    Netlink(#[source] std::io::Error),
    #[error("{failed} network step(s) failed; see above")]
    StepsFailed { failed: usize },
}

pub fn run(ctx: &mut BootContext<'_>) -> Result<Done, StageError> {
    // Without a config there is nothing to apply, and no services wait.
    let (Some(plan), Some(effective)) = (&ctx.net_plan, &ctx.config) else { return Ok(Done::Finished) };
    let (plan, hostname) = (plan.clone(), effective.config.node.hostname.clone());
    bring_up(ctx, &plan, hostname)
}

/// Applies `plan` and leaves the networking running: the stage's work, and
/// what a node in maintenance does with the config an earlier boot
/// accepted, so that its management API can be reached.
pub fn bring_up(ctx: &mut BootContext<'_>, plan: &NetPlan, hostname: Option<String>) -> Result<Done, StageError> {
    let runtime = tokio::runtime::Handle::try_current().map_err(NetworkError::NoRuntime)?;
    let started = clock::boottime();
    let runner = ReaperRunner::new(ctx.reaper.clone());
    let (networking, report) = runtime.block_on(async {
        let netlink = RtNetlink::open().map_err(NetworkError::Netlink)?;
        let mut networking = Networking::new(Host { netlink, runner, paths: Paths::default() }).with_hostname(hostname);
        let report = networking.apply(plan).await;
        Ok::<_, NetworkError>((networking, report))
    })?;
    let elapsed_ms = clock::boottime().saturating_sub(started).as_millis() as u64;
    // kelson-net logs each step's outcome itself.
    let failed = report.steps.iter().filter(|s| matches!(s.outcome, Outcome::Failed { .. })).count();
    info!(elapsed_ms, failed, "network applied");
    {
        let _entered = runtime.enter();
        publish_addresses(plan, &networking, &ctx.status);
    }
    if let Some(bridge) = &plan.bridge {
        match write_conflist(ctx.kernel, bridge) {
            Ok(changed) => info!(path = cni::DEFAULT_CONFLIST, changed, "CNI config written"),
            Err(e) => warn!(path = cni::DEFAULT_CONFLIST, error = %e, "CNI config not written"),
        }
    }
    // Steps that failed are logged; the network is as up as it will get.
    ctx.status.set_condition(NETWORK_READY, Condition::True);
    let network = Arc::new(Mutex::new(NodeNetwork { networking, config_plan: plan.clone(), cluster_routes: None }));
    ctx.handles.set_network(&network);
    let watcher_stop = start_node_watcher(ctx, plan, &network, &runtime);
    let running = Box::new(NetworkHandle { network, watcher_stop });
    if failed > 0 {
        return Ok(Done::Degraded { running, error: NetworkError::StepsFailed { failed }.into() });
    }
    Ok(Done::Running(running))
}

/// Writes containerd's CNI config for `bridge` if it differs from what is
/// there; true when it wrote.
fn write_conflist(kernel: &dyn Kernel, bridge: &BridgePlan) -> std::io::Result<bool> {
    let path = Path::new(cni::DEFAULT_CONFLIST);
    let text = format!("{:#}\n", cni::conflist(bridge));
    if kernel.read_file(path).is_ok_and(|have| have == text.as_bytes()) {
        return Ok(false);
    }
    kernel.install_file(path, text.as_bytes(), 0o644)?;
    Ok(true)
}

/// The node's addresses: each static uplink's, in plan order, and each DHCP
/// lease's as the client gets it.
fn publish_addresses(plan: &NetPlan, networking: &NodeNetworking, status: &StatusPublisher) {
    for uplink in &plan.uplinks {
        match &uplink.mode {
            UplinkMode::Static { addresses, .. } => {
                for address in addresses {
                    status.add_address(address.addr());
                }
            }
            UplinkMode::Dhcp4 => {
                let Some(mut lease) = networking.dhcp_watch(&uplink.field) else { continue };
                let status = status.clone();
                tokio::spawn(async move {
                    loop {
                        let address = lease.borrow_and_update().lease.as_ref().map(|l| l.address.addr());
                        if let Some(address) = address {
                            status.add_address(address);
                        }
                        if lease.changed().await.is_err() {
                            return;
                        }
                    }
                });
            }
        }
    }
}

/// Starts the Node watcher and the task that applies what it sees, when
/// the config carries the node's cluster credentials, or, on a node
/// joining by bootstrap token, once its kubelet has a certificate; the
/// sender stops both. Without credentials (a node outside a cluster) or
/// with ones it refuses, the static routes are all there is, and the log
/// says why.
fn start_node_watcher(
    ctx: &BootContext<'_>,
    plan: &NetPlan,
    network: &Arc<Mutex<NodeNetwork>>,
    runtime: &tokio::runtime::Handle,
) -> Option<oneshot::Sender<()>> {
    let effective = ctx.config.as_ref()?;
    let node_name = ctx.node_name();
    let pinned = plan.bridge.as_ref().map(|bridge| bridge.pod_cidr);
    let _entered = runtime.enter();
    let (stop, stopped) = oneshot::channel::<()>();
    match crate::stages::pods::reporter_config(&effective.config, &node_name) {
        Ok(config) => {
            follow_nodes(config, pinned, network.clone(), stopped)?;
        }
        Err(_) if kubelet_credential(&effective.config) == Credential::TokenDiscovery => {
            let api_server = effective.config.cluster.api_server_endpoint.clone()?;
            let network = network.clone();
            info!("network: the Node watcher starts once the kubelet's TLS bootstrap has given it a certificate");
            tokio::spawn(async move {
                let mut stopped = stopped;
                let config = tokio::select! {
                    _ = &mut stopped => return,
                    config = kubelet_credential_once_bootstrapped(api_server, node_name) => config,
                };
                follow_nodes(config, pinned, network, stopped);
            });
        }
        Err(missing) => {
            info!("network: routes follow the config only: the machine config has no {missing}");
            return None;
        }
    }
    Some(stop)
}

/// How often a token-joined node looks for its kubelet's certificate.
const KUBELET_CREDENTIAL_POLL: Duration = Duration::from_secs(5);

/// The node's own credential on a node that joined by token: the
/// kubelet's rotated client certificate (`system:node:<node>`, cert and
/// key in one file) and the CA token discovery verified, once both exist.
/// The watcher keeps the certificate it started with; the kubelet renews
/// it long before it expires (a year by default), so a renewal is picked
/// up at the next boot.
async fn kubelet_credential_once_bootstrapped(api_server: String, node_name: String) -> ReporterConfig {
    loop {
        let pem = tokio::fs::read_to_string(KUBELET_CLIENT_CERT).await;
        let ca = tokio::fs::read(DISCOVERED_CA_FILE).await;
        if let (Ok(pem), Ok(ca_pem)) = (pem, ca) {
            let (cert_pem, key_pem) = split_cert_and_key(&pem);
            if !cert_pem.is_empty() && !key_pem.is_empty() {
                return ReporterConfig {
                    api_server,
                    ca_pem,
                    cert_pem: cert_pem.into_bytes(),
                    key_pem: key_pem.into_bytes(),
                    node_name,
                    timing: Timing::default(),
                };
            }
        }
        tokio::time::sleep(KUBELET_CREDENTIAL_POLL).await;
    }
}

/// A PEM file's certificate blocks and its private key block, apart (the
/// kubelet keeps both in one file; a client presents only the first).
fn split_cert_and_key(pem: &str) -> (String, String) {
    let mut certs = String::new();
    let mut key = String::new();
    let mut block: Option<(bool, String)> = None;
    for line in pem.lines() {
        if let Some(label) = line.strip_prefix("-----BEGIN ") {
            block = Some((label.contains("PRIVATE KEY"), String::new()));
        }
        if let Some((is_key, text)) = &mut block {
            text.push_str(line);
            text.push('\n');
            if line.starts_with("-----END ") {
                let target = if *is_key { &mut key } else { &mut certs };
                target.push_str(text);
                block = None;
            }
        }
    }
    (certs, key)
}

/// Runs the Node watcher with `config` and the task that applies what it
/// sees, until `stopped`; `None` (logged) when it refuses the credential.
fn follow_nodes(
    config: ReporterConfig,
    pinned: Option<ipnet::Ipv4Net>,
    network: Arc<Mutex<NodeNetwork>>,
    stopped: oneshot::Receiver<()>,
) -> Option<()> {
    let node_name = config.node_name.clone();
    let watcher = match NodeWatcher::new(&config, pinned) {
        Ok(watcher) => watcher,
        Err(e) => {
            warn!("network: routes follow the config only: {}", crate::boot::chain(&e));
            return None;
        }
    };
    let (views, mut seen) = watch::channel::<Option<ClusterView>>(None);
    tokio::spawn(watcher.run(views, async {
        let _ = stopped.await;
    }));
    let network = network.clone();
    tokio::spawn(async move {
        // Ends when the watcher does (its sender dropped).
        while seen.changed().await.is_ok() {
            let Some(view) = seen.borrow_and_update().clone() else { continue };
            for name in &view.overlapping {
                warn!("network: no route to Node {name}: its pod CIDR overlaps this node's or another Node's");
            }
            let routes = cluster_routes(&view);
            let report = network.lock().await.follow_cluster(routes).await;
            let failed: Vec<String> = report
                .steps
                .iter()
                .filter_map(|s| match &s.outcome {
                    Outcome::Failed { errors, .. } => Some(format!("{}: {}", s.step, errors.join("; "))),
                    _ => None,
                })
                .collect();
            let peers: Vec<String> =
                view.peers.iter().map(|p| format!("{}={} via {}", p.name, p.pod_cidr, p.address)).collect();
            let changes = report.changes();
            if failed.is_empty() && changes.is_empty() {
                debug!(peers = ?peers, "network: the cluster's Nodes changed, the routes did not");
            } else if failed.is_empty() {
                info!(changes = ?changes, peers = ?peers, "network: routes follow the cluster's Nodes");
            } else {
                warn!(failed = ?failed, peers = ?peers, "network: applying the cluster's Nodes' routes failed in part");
            }
        }
    });
    info!("network: following the cluster's Nodes at {} as Node {node_name}", config.api_server);
    Some(())
}

#[cfg(test)]
mod kubelet_credential_tests {
    use super::split_cert_and_key;

    #[test]
    fn the_kubelets_file_splits_into_its_certificate_and_its_key() {
        let pem = "-----BEGIN CERTIFICATE-----\nAAA\n-----END CERTIFICATE-----\n\
                   -----BEGIN EC PRIVATE KEY-----\nBBB\n-----END EC PRIVATE KEY-----\n";
        let (cert, key) = split_cert_and_key(pem);
        assert_eq!(cert, "-----BEGIN CERTIFICATE-----\nAAA\n-----END CERTIFICATE-----\n");
        assert_eq!(key, "-----BEGIN EC PRIVATE KEY-----\nBBB\n-----END EC PRIVATE KEY-----\n");
        assert_eq!(split_cert_and_key("no pem"), (String::new(), String::new()));
    }
}

/// The DHCP clients, released at shutdown; bounded so a dead server cannot
/// hold shutdown up. The Node watcher stops first.
struct NetworkHandle {
    network: Arc<Mutex<NodeNetwork>>,
    watcher_stop: Option<oneshot::Sender<()>>,
}

impl Running for NetworkHandle {
    fn shutdown(self: Box<Self>) -> ShutdownFuture {
        Box::pin(async move {
            if let Some(stop) = self.watcher_stop {
                // Gone already is fine: it only ends on this signal.
                let _ = stop.send(());
            }
            let release = async { self.network.lock().await.networking.shutdown().await };
            if tokio::time::timeout(Duration::from_secs(3), release).await.is_err() {
                warn!("DHCP release did not finish within 3 s");
            } else {
                info!("network: DHCP leases released");
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::boot::tests::ctx;
    use crate::kernel::fake::FakeKernel;

    #[test]
    fn without_a_config_nothing_is_applied_and_network_ready_is_left_to_the_runner() {
        let k = FakeKernel::default();
        let mut ctx = ctx(&k, "");
        assert!(matches!(run(&mut ctx), Ok(Done::Finished)));
        assert_eq!(ctx.status.current().condition(NETWORK_READY), &Condition::Pending);
        assert!(k.calls().is_empty());
    }

    #[test]
    fn the_cni_config_is_written_through_the_kernel_only_when_it_changes() {
        let network = kelson_config::Network {
            pod_cidr: Some("10.244.1.0/24".into()),
            cluster_cidr: Some("10.244.0.0/16".into()),
            ..Default::default()
        };
        let bridge = NetPlan::from_config(&network).unwrap().bridge.unwrap();
        let k = FakeKernel::default();
        assert!(write_conflist(&k, &bridge).unwrap());
        let written = k.file(cni::DEFAULT_CONFLIST).unwrap();
        assert!(written.contains("\"bridge\": \"cbr0\""), "{written}");
        assert!(!write_conflist(&k, &bridge).unwrap(), "the same config is not written again");
        assert_eq!(k.calls().iter().filter(|c| c.starts_with("install")).count(), 1);
    }

    fn route(cidr: &str, via: &str) -> PeerRoutePlan {
        PeerRoutePlan { pod_cidr: cidr.parse().unwrap(), via: via.parse().unwrap() }
    }

    fn config_plan() -> NetPlan {
        let network = kelson_config::Network {
            pod_cidr: Some("10.244.1.0/24".into()),
            cluster_cidr: Some("10.244.0.0/16".into()),
            peer_routes: vec![
                kelson_config::PeerRoute { pod_cidr: "10.244.0.0/24".into(), via: "192.168.100.10".into() },
                kelson_config::PeerRoute { pod_cidr: "10.244.9.0/24".into(), via: "192.168.100.19".into() },
            ],
            ..Default::default()
        };
        NetPlan::from_config(&network).unwrap()
    }

    #[test]
    fn before_the_cluster_is_seen_the_configs_routes_are_all() {
        assert_eq!(merged_plan(&config_plan(), None), config_plan());
    }

    #[test]
    fn the_nodes_routes_win_where_they_cover_a_static_one_and_the_rest_stay() {
        let cluster = [route("10.244.0.0/24", "192.168.100.20"), route("10.244.2.0/24", "192.168.100.12")];
        let merged = merged_plan(&config_plan(), Some(&cluster));
        assert_eq!(
            merged.peer_routes,
            [
                route("10.244.9.0/24", "192.168.100.19"),
                route("10.244.0.0/24", "192.168.100.20"),
                route("10.244.2.0/24", "192.168.100.12")
            ]
        );
        let without_routes = NetPlan { peer_routes: Vec::new(), ..merged };
        assert_eq!(without_routes, NetPlan { peer_routes: Vec::new(), ..config_plan() }, "nothing else changes");
    }

    #[test]
    fn a_cluster_with_no_other_nodes_leaves_the_static_routes() {
        assert_eq!(merged_plan(&config_plan(), Some(&[])).peer_routes, config_plan().peer_routes);
    }
}
