//! `services`: containerd, the kubelet and kube-proxy, rendered from the
//! machine config by kelson-supervise and supervised on PID 1's runtime.
//! Every process starts through PID 1's reaper.
//!
//! The supervisor follows the node status: `network-ready` set there (or
//! declared unreachable) is passed on, so the kubelet waits for the network
//! or is blocked saying why. On a node joining by bootstrap token the
//! stage also starts the token join ([`crate::token_join`]), whose
//! `cluster-joined` the kubelet waits for the same way. Its handle stops the services in reverse
//! dependency order at shutdown, before PID 1 signals everything else.

use crate::boot::{BootContext, Done, Running, ShutdownFuture, StageError};
use crate::kernel::{Kernel, LinuxKernel};
use crate::reaper::Reaper;
use crate::status::{Condition, NodeStatus};
use crate::token_join::{Pace, TokenJoiner};
use kelson_config::MachineConfig;
use kelson_supervise::node::{self, NodeServices};
use kelson_supervise::{
    Launched, Launcher, Settings, SuperviseError, Supervisor, SystemClock, CLUSTER_JOINED, NETWORK_READY,
};
use std::io;
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::sync::watch;
use tracing::{info, warn};

/// Test knob: a short fixed back-off, so a test can kill a service many
/// times in a row without waiting out the real schedule.
pub const BACKOFF_KNOB: &str = "kelson.test.restart_backoff_ms";

#[derive(Debug, thiserror::Error)]
pub enum ServicesError {
    #[error("writing {path}")]
    WriteFile {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("no async runtime for the supervisor")]
    NoRuntime(#[source] tokio::runtime::TryCurrentError),
    #[error("starting the supervisor")]
    Supervisor(#[source] SuperviseError),
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

pub fn run(ctx: &mut BootContext<'_>) -> Result<Done, StageError> {
    let Some(effective) = &ctx.config else { return Ok(Done::Finished) };
    let backoff = ctx.cmdline.get(BACKOFF_KNOB).and_then(|v| v.parse::<u64>().ok()).map(Duration::from_millis);
    let rendered = render_and_install(ctx.kernel, &effective.config, &ctx.node_name(), backoff)?;
    let runtime = tokio::runtime::Handle::try_current().map_err(ServicesError::NoRuntime)?;
    let names: Vec<String> = rendered.services.iter().map(|s| s.name.clone()).collect();
    let supervisor = Arc::new(
        Supervisor::new(
            rendered.services,
            Settings::default(),
            Arc::new(ReaperLauncher(ctx.reaper.clone())),
            Arc::new(SystemClock),
        )
        .map_err(ServicesError::Supervisor)?,
    );
    let joiner = TokenJoiner::from_config(&effective.config);
    let join_task = {
        let _entered = runtime.enter();
        supervisor.start();
        tokio::spawn(follow_conditions(ctx.status.subscribe(), Arc::downgrade(&supervisor)));
        joiner.map(|joiner| {
            let kernel: Arc<dyn Kernel + Send + Sync> = Arc::new(LinuxKernel);
            tokio::spawn(joiner.run(kernel, ctx.status.clone(), Pace::default())).abort_handle()
        })
    };
    ctx.handles.set_supervisor(&supervisor);
    info!(services = names.join(",").as_str(), "supervisor started");
    Ok(Done::Running(Box::new(ServicesHandle { supervisor, join_task })))
}

/// The node's services and their files, the files written through the
/// kernel; `backoff` replaces every service's restart back-off.
fn render_and_install(
    kernel: &dyn Kernel,
    config: &MachineConfig,
    hostname: &str,
    backoff: Option<Duration>,
) -> Result<NodeServices, ServicesError> {
    let mut rendered = node::render(config, hostname);
    if let Some(wait) = backoff {
        for spec in &mut rendered.services {
            spec.restart.backoff.initial = wait;
            spec.restart.backoff.cap = wait;
        }
        warn!(ms = wait.as_millis() as u64, "test knob: every service restarts after a fixed back-off");
    }
    for note in &rendered.notes {
        info!("services: {note}");
    }
    for file in &rendered.files {
        kernel
            .install_file(&file.path, &file.contents, file.mode)
            .map_err(|source| ServicesError::WriteFile { path: file.path.clone(), source })?;
    }
    Ok(rendered)
}

/// The node status's conditions the services wait for: `network-ready`
/// (the network stage's) and `cluster-joined` (a token join's).
const FOLLOWED: [&str; 2] = [NETWORK_READY, CLUSTER_JOINED];

/// Passes the [`FOLLOWED`] conditions from the node status on to the
/// supervisor, as they are set or declared unreachable. Holds the
/// supervisor weakly: once the services are shut down it is dropped,
/// closing its log files on /var.
async fn follow_conditions(mut status: watch::Receiver<NodeStatus>, supervisor: Weak<Supervisor>) {
    let mut told = [Condition::Pending, Condition::Pending];
    loop {
        let now = {
            let current = status.borrow_and_update();
            FOLLOWED.map(|name| current.condition(name).clone())
        };
        for ((name, now), told) in FOLLOWED.iter().zip(now).zip(told.iter_mut()) {
            if now == *told {
                continue;
            }
            // Upgraded only while telling it, never across the wait below.
            let Some(supervisor) = supervisor.upgrade() else { return };
            match &now {
                Condition::Pending => {}
                Condition::True => supervisor.set_condition(name),
                Condition::Unreachable(why) => {
                    // The token join logs its own reasons as they change.
                    if *name == NETWORK_READY {
                        warn!(reason = why.as_str(), "{name} will not be set; the services that need it are blocked");
                    }
                    supervisor.condition_unreachable(name, why);
                }
            }
            *told = now;
        }
        if status.changed().await.is_err() {
            return;
        }
    }
}

/// Stops every service, each within its grace period, after the token
/// join if it is still trying.
struct ServicesHandle {
    supervisor: Arc<Supervisor>,
    join_task: Option<tokio::task::AbortHandle>,
}

impl Running for ServicesHandle {
    fn shutdown(self: Box<Self>) -> ShutdownFuture {
        Box::pin(async move {
            if let Some(task) = &self.join_task {
                task.abort();
            }
            info!("stopping supervised services");
            self.supervisor.shutdown().await;
            info!("supervised services stopped");
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::boot::tests::ctx;
    use crate::kernel::fake::FakeKernel;

    const CONFIG: &str = "apiVersion: kelson.dev/v1alpha1\nkind: MachineConfig\nnode:\n  hostname: worker-1\n";

    #[test]
    fn without_a_config_no_service_starts_and_nothing_is_written() {
        let k = FakeKernel::default();
        assert!(matches!(run(&mut ctx(&k, "")), Ok(Done::Finished)));
        assert!(k.calls().is_empty());
    }

    #[test]
    fn the_rendered_files_are_written_through_the_kernel_and_the_knob_fixes_the_back_off() {
        let config = kelson_config::parse("t", CONFIG).unwrap();
        let k = FakeKernel::default();
        let rendered = render_and_install(&k, &config, "worker-1", Some(Duration::from_millis(50))).unwrap();
        assert!(!rendered.files.is_empty());
        for file in &rendered.files {
            let expected = format!("install {} {:o}", file.path.display(), file.mode);
            assert!(k.calls().contains(&expected), "{expected} missing from {:?}", k.calls());
        }
        assert!(rendered.services.iter().all(|s| s.restart.backoff.initial == Duration::from_millis(50)));
        let k = FakeKernel::default().failing("/etc/containerd/config.toml", libc::EROFS);
        let err = render_and_install(&k, &config, "worker-1", None).unwrap_err();
        assert_eq!(err.to_string(), "writing /etc/containerd/config.toml");
    }

    #[tokio::test]
    async fn the_supervisor_follows_network_ready_from_the_node_status() {
        let status = crate::status::StatusPublisher::default();
        let supervisor = Arc::new(
            Supervisor::new(
                vec![],
                Settings::default(),
                Arc::new(kelson_supervise::ThreadLauncher),
                Arc::new(SystemClock),
            )
            .unwrap(),
        );
        tokio::spawn(follow_conditions(status.subscribe(), Arc::downgrade(&supervisor)));
        let mut snapshot = supervisor.watch();
        status.set_condition(NETWORK_READY, Condition::Unreachable("no uplink".into()));
        let seen = snapshot.wait_for(|s| s.unreachable.contains_key(NETWORK_READY)).await.unwrap().clone();
        assert_eq!(seen.unreachable.get(NETWORK_READY).map(String::as_str), Some("no uplink"));
        status.set_condition(NETWORK_READY, Condition::True);
        snapshot.wait_for(|s| s.conditions.contains(NETWORK_READY)).await.unwrap();
    }
}
