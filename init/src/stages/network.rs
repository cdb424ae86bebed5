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

use crate::boot::{BootContext, Done, Running, ShutdownFuture, StageError};
use crate::clock;
use crate::kernel::Kernel;
use crate::runner::ReaperRunner;
use crate::status::{Condition, StatusPublisher};
use kelson_net::plan::{BridgePlan, UplinkMode};
use kelson_net::{cni, Host, NetPlan, Networking, Outcome, Paths, RtNetlink};
use kelson_supervise::NETWORK_READY;
use std::path::Path;
use std::time::Duration;
use tracing::{info, warn};

/// The node's networking as the stage leaves it running; the management
/// API applies a changed plan through it.
pub type NodeNetworking = Networking<RtNetlink, ReaperRunner>;

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
    let networking = std::sync::Arc::new(tokio::sync::Mutex::new(networking));
    ctx.handles.set_network(&networking);
    let running = Box::new(NetworkHandle(networking));
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

/// The DHCP clients, released at shutdown; bounded so a dead server cannot
/// hold shutdown up.
struct NetworkHandle(std::sync::Arc<tokio::sync::Mutex<NodeNetworking>>);

impl Running for NetworkHandle {
    fn shutdown(self: Box<Self>) -> ShutdownFuture {
        Box::pin(async move {
            let release = async { self.0.lock().await.shutdown().await };
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
}
