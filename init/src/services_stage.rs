//! The `services` boot stage: containerd, the kubelet and kube-proxy,
//! rendered from the machine config by kelson-supervise and supervised on
//! PID 1's runtime. Every process starts through PID 1's reaper.
//!
//! The stage runs before the network stage so containerd starts while the
//! network comes up; the kubelet waits for the `network-ready` condition,
//! which the network stage sets when it is done. Shutdown stops the
//! services in reverse dependency order before PID 1 signals everything
//! else.

use crate::boot::{BootContext, StageError};
use crate::reaper::Reaper;
use kelson_supervise::{node, Launched, Launcher, Settings, Supervisor, SystemClock, NETWORK_READY};
use std::io;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use tracing::{info, warn};

static RUNNING: Mutex<Option<Arc<Supervisor>>> = Mutex::new(None);
/// What the network stage said; remembered because it finishes before
/// the supervisor exists.
static NETWORK: Mutex<Network> = Mutex::new(Network::Pending);

#[derive(Debug, Clone)]
enum Network {
    Pending,
    Ready,
    /// The network stage ended without bringing the network up: whatever
    /// waits for `network-ready` is blocked, with this reason.
    Unreachable(String),
}

fn tell(supervisor: &Supervisor, network: &Network) {
    match network {
        Network::Pending => {}
        Network::Ready => supervisor.set_condition(NETWORK_READY),
        Network::Unreachable(why) => supervisor.condition_unreachable(NETWORK_READY, why),
    }
}

/// Starts services through the reaper, which owns every wait.
pub struct ReaperLauncher(pub Arc<Reaper>);

impl Launcher for ReaperLauncher {
    fn spawn(&self, mut cmd: Command) -> io::Result<Launched> {
        let spawned = self.0.spawn(&mut cmd)?;
        // Our copies of the output pipe close with the Command, so the
        // supervisor sees end-of-file when the service exits.
        drop(cmd);
        let exit = spawned.exit;
        Ok(Launched { pid: spawned.pid, exit: Box::pin(async move { exit.await.ok() }) })
    }
}

pub fn stage_services(ctx: &mut BootContext<'_>) -> Result<(), StageError> {
    let Some(effective) = &ctx.config else { return Ok(()) };
    let hostname = nix::unistd::gethostname().map(|h| h.to_string_lossy().into_owned()).unwrap_or_default();
    let mut rendered = node::render(&effective.config, &hostname);
    // Test knob: a short fixed back-off, so a test can kill a service many
    // times in a row without waiting out the real schedule.
    if let Some(ms) = ctx.cmdline.get("kelson.test.restart_backoff_ms").and_then(|v| v.parse::<u64>().ok()) {
        let wait = std::time::Duration::from_millis(ms);
        for spec in &mut rendered.services {
            spec.restart.backoff.initial = wait;
            spec.restart.backoff.cap = wait;
        }
        warn!(ms, "test knob: every service restarts after a fixed back-off");
    }
    for note in &rendered.notes {
        info!("services: {note}");
    }
    node::write_files(Path::new("/"), &rendered.files)?;
    let runtime =
        tokio::runtime::Handle::try_current().map_err(|e| format!("no async runtime for the supervisor: {e}"))?;
    let names: Vec<String> = rendered.services.iter().map(|s| s.name.clone()).collect();
    let supervisor = Arc::new(Supervisor::new(
        rendered.services,
        Settings::default(),
        Arc::new(ReaperLauncher(ctx.reaper.clone())),
        Arc::new(SystemClock),
    )?);
    {
        let _entered = runtime.enter();
        supervisor.start();
    }
    tell(&supervisor, &NETWORK.lock().unwrap_or_else(|e| e.into_inner()));
    *RUNNING.lock().unwrap_or_else(|e| e.into_inner()) = Some(supervisor);
    info!(services = names.join(",").as_str(), "supervisor started");
    Ok(())
}

/// Called by the network stage when it is done.
pub fn network_ready() {
    set_network(Network::Ready);
}

/// Called when the network stage ended without bringing the network up:
/// the services that wait for it are `blocked` with `why`, not left
/// waiting for ever.
pub fn network_unreachable(why: &str) {
    warn!(reason = why, "network-ready will not be set; the services that need it are blocked");
    set_network(Network::Unreachable(why.to_owned()));
}

fn set_network(network: Network) {
    *NETWORK.lock().unwrap_or_else(|e| e.into_inner()) = network.clone();
    if let Some(supervisor) = RUNNING.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
        tell(supervisor, &network);
    }
}

/// Stops every service, each within its grace period.
pub async fn shutdown() {
    let supervisor = RUNNING.lock().unwrap_or_else(|e| e.into_inner()).take();
    if let Some(supervisor) = supervisor {
        info!("stopping supervised services");
        supervisor.shutdown().await;
        info!("supervised services stopped");
    } else {
        warn!("no supervisor was running");
    }
}
