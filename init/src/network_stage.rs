//! The `network` boot stage: the machine config's `network` section applied
//! by kelson-net (lo, uplinks or DHCP, resolv.conf, cbr0, forwarding, the
//! MASQUERADE chain, peer routes), then the CNI config for containerd's
//! pods. The stage is not critical: a failed step is logged and boot goes
//! on, so the node stays reachable for whatever did come up.
//!
//! The [`Networking`] value outlives the stage (its DHCP clients renew
//! leases in the background); shutdown takes it back to release them.

use crate::boot::{BootContext, StageError};
use crate::clock;
use crate::runner::ReaperRunner;
use kelson_net::{cni, Host, NetPlan, Networking, Outcome, Paths, RtNetlink};
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;
use tracing::{info, warn};

type NodeNetworking = Networking<RtNetlink, ReaperRunner>;

static RUNNING: Mutex<Option<NodeNetworking>> = Mutex::new(None);

/// Until the network is up, declares `network-ready` unreachable if the
/// stage ends any other way (an error before the network was applied, or
/// a panic), so the services waiting for it are blocked, saying why.
struct Unreachable(Option<String>);

impl Drop for Unreachable {
    fn drop(&mut self) {
        if let Some(why) = self.0.take() {
            crate::services_stage::network_unreachable(&why);
        }
    }
}

pub fn stage_network(ctx: &mut BootContext<'_>) -> Result<(), StageError> {
    let mut pending = Unreachable(Some("the network stage ended before the network was up".to_owned()));
    let result = apply(ctx, &mut pending);
    if let (Err(e), Some(_)) = (&result, &pending.0) {
        pending.0 = Some(format!("the network stage failed: {}", crate::boot::chain(e.as_ref())));
    }
    result
}

fn apply(ctx: &mut BootContext<'_>, pending: &mut Unreachable) -> Result<(), StageError> {
    // Without a config there are no services to tell.
    let Some(effective) = &ctx.config else {
        pending.0 = None;
        return Ok(());
    };
    let config = &effective.config;
    // The config stage already refused a network section that does not plan.
    let plan = NetPlan::from_config(&config.network)
        .map_err(|errors| errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))?;
    let runtime = tokio::runtime::Handle::try_current().map_err(|e| format!("no async runtime for networking: {e}"))?;
    let started = clock::boottime();
    let runner = ReaperRunner::new(ctx.reaper.clone());
    let hostname = config.node.hostname.clone();
    let (networking, report) = runtime.block_on(async move {
        let netlink = RtNetlink::open().map_err(|e| format!("opening a netlink socket: {e}"))?;
        let mut networking = Networking::new(Host { netlink, runner, paths: Paths::default() }).with_hostname(hostname);
        let report = networking.apply(&plan).await;
        Ok::<_, String>((networking, report))
    })?;
    let elapsed_ms = clock::boottime().saturating_sub(started).as_millis() as u64;
    // kelson-net logs each step's outcome itself.
    let failed = report.steps.iter().filter(|s| matches!(s.outcome, Outcome::Failed { .. })).count();
    info!(elapsed_ms, failed, "network applied");
    *RUNNING.lock().unwrap_or_else(|e| e.into_inner()) = Some(networking);

    if let Some(bridge) = NetPlan::from_config(&config.network).ok().and_then(|p| p.bridge) {
        match cni::write_conflist(Path::new(cni::DEFAULT_CONFLIST), &bridge) {
            Ok(changed) => info!(path = cni::DEFAULT_CONFLIST, changed, "CNI config written"),
            Err(e) => warn!(error = %e, "CNI config not written"),
        }
    }
    // Steps that failed are logged; the network is as up as it will get.
    pending.0 = None;
    crate::services_stage::network_ready();
    if failed > 0 {
        return Err(format!("{failed} network step(s) failed; see above").into());
    }
    Ok(())
}

/// Releases DHCP leases before the node goes down; bounded so a dead
/// server cannot hold up shutdown.
pub async fn shutdown() {
    let taken = RUNNING.lock().unwrap_or_else(|e| e.into_inner()).take();
    if let Some(mut networking) = taken {
        if tokio::time::timeout(Duration::from_secs(3), networking.shutdown()).await.is_err() {
            warn!("DHCP release did not finish within 3 s");
        } else {
            info!("network: DHCP leases released");
        }
    }
}
