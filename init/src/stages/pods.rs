//! `pods`: static pods from `/etc/kubernetes/manifests`, run by
//! kelson-pods' manager through the container shim (see
//! [`crate::pod_runtime`]). The manager runs as a task on PID 1's runtime;
//! a second task feeds it the manifest watcher's events. Non-critical: a
//! failure here is logged and boot goes on to the services.
//!
//! Its handle stops the pods after the supervised services (the kubelet and
//! kube-proxy talk to the static apiserver; they go first, the reverse of
//! boot) and before the network, whose veths the pods use.

use crate::boot::{chain, BootContext, Done, Running, ShutdownFuture, StageError};
use crate::pod_runtime::{connect_or_start_shim, NodeProber, NodeSandboxes};
use kelson_base::paths::IMAGE_LAYOUTS;
use kelson_containers::store::ImageStore;
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
    let stopping = Arc::new(AtomicBool::new(false));
    let commands = runtime.block_on(async {
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
        Ok::<_, PodsError>(tx)
    })?;
    info!("pods: manager started, watching {MANIFEST_DIR}");
    Ok(Done::Running(Box::new(PodsHandle { commands, stopping })))
}

/// Stops every pod, each within its grace period, last started first.
struct PodsHandle {
    commands: mpsc::Sender<ManagerCommand>,
    /// Set once the pods are being stopped: the shim's exit is expected.
    stopping: Arc<AtomicBool>,
}

impl Running for PodsHandle {
    fn shutdown(self: Box<Self>) -> ShutdownFuture {
        Box::pin(async move {
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
