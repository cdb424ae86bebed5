//! One task per probe of a running container: it waits the initial
//! delay, then runs an attempt each period and sends the result to the
//! manager, tagged with the container's run so a late result of an earlier
//! run is ignored ([`super::state::Pods::on_probe`]).

use super::state::ProbeResult;
use super::Prober;
use crate::probe::ProbeKind;
use crate::spec::{ContainerSpec, ProbeAction, ProbeSpec};
use crate::Clock;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Where one container's probes aim, and which run they belong to.
pub(super) struct ProbeTarget {
    pub uid: String,
    pub container: usize,
    pub generation: u64,
    /// The pod's IP, or 127.0.0.1 for host-network pods.
    pub host: String,
    /// The container's cgroup, for exec probes.
    pub cgroup: PathBuf,
}

/// The startup, liveness and readiness probes `container` has.
pub(super) fn spawn_probes<P: Prober>(
    container: &ContainerSpec,
    target: &ProbeTarget,
    prober: &Arc<P>,
    clock: &Arc<dyn Clock>,
    results: &mpsc::UnboundedSender<ProbeResult>,
) -> Vec<JoinHandle<()>> {
    [
        (ProbeKind::Startup, &container.startup),
        (ProbeKind::Liveness, &container.liveness),
        (ProbeKind::Readiness, &container.readiness),
    ]
    .into_iter()
    .filter_map(|(kind, probe)| {
        let probe = probe.clone()?;
        Some(spawn_probe(target, kind, probe, prober.clone(), clock.clone(), results.clone()))
    })
    .collect()
}

fn spawn_probe<P: Prober>(
    target: &ProbeTarget,
    kind: ProbeKind,
    probe: ProbeSpec,
    prober: Arc<P>,
    clock: Arc<dyn Clock>,
    results: mpsc::UnboundedSender<ProbeResult>,
) -> JoinHandle<()> {
    let (uid, container, generation) = (target.uid.clone(), target.container, target.generation);
    let (host, cgroup) = (target.host.clone(), target.cgroup.clone());
    tokio::spawn(async move {
        clock.sleep(probe.initial_delay).await;
        loop {
            let limit = probe.timeout.max(Duration::from_millis(1));
            let attempt = async {
                match &probe.action {
                    ProbeAction::Exec { command } => prober.exec(command, &cgroup, probe.timeout).await,
                    action => prober.probe(action, &host, probe.timeout).await,
                }
            };
            let result = match tokio::time::timeout(limit, attempt).await {
                Ok(result) => result,
                Err(_) => Err(format!("timed out after {:?}", probe.timeout)),
            };
            let sent = results.send(ProbeResult { uid: uid.clone(), container, generation, kind, result });
            if sent.is_err() {
                return;
            }
            clock.sleep(probe.period).await;
        }
    })
}
