//! The pod manager's decisions, as plain functions of its state and one
//! event that return the [`Action`]s to carry out, in order. Nothing here
//! waits or touches the host: the manager ([`super::manager`]) runs the
//! actions and reports their outcomes back (a pod's sandbox, a container
//! that started or did not, a new runtime), so restart policy, back-off,
//! replacement, stop with grace, shutdown order, probe results and a lost
//! runtime are tested here without tasks, fakes or time passing.

use super::build::container_id;
use super::{ExitInfo, PodsStatus, Sandbox, SandboxError, VolumeError};
use crate::probe::{ContainerProbes, ProbeKind, ProbeVerdict};
use crate::restart::{NextStep, RestartTracker};
use crate::spec::PodSpec;
use crate::status::{PodStatus, TerminatedReason, WaitingReason};
use crate::watch::ManifestEvent;
use crate::Clock;
use kelson_base::error_chain;
use kelson_base::Exit;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};
use tracing::{info, warn};

pub(super) const SIGTERM: i32 = 15;
pub(super) const SIGKILL: i32 = 9;

/// The longest wait between attempts to start a new runtime.
const RUNTIME_RETRY_CAP: Duration = Duration::from_secs(30);

/// In the status of a container whose runtime died under it.
const LOST_MESSAGE: &str =
    "the container shim was lost; the container was killed and is started again under a new shim";

/// What the manager does next, in the order given.
#[derive(Debug)]
pub(super) enum Action {
    /// Make the pod's sandbox and volumes, then report to [`Pods::add_pod`].
    StartPod(Box<PodSpec>),
    /// Run the start pipeline of container `index` of pod `uid` (see
    /// [`Pods::start_request`]), then report to [`Pods::container_started`]
    /// or [`Pods::start_failed`].
    StartContainer {
        uid: String,
        index: usize,
    },
    /// Start the probe tasks of a container's run `generation`.
    StartProbes {
        uid: String,
        index: usize,
        generation: u64,
    },
    /// End the probe tasks of a container's current run.
    StopProbes {
        uid: String,
        index: usize,
    },
    Kill {
        id: String,
        signal: i32,
    },
    /// Remove an exited container at the runtime.
    Delete {
        id: String,
    },
    /// Remove what a stopped pod leaves behind.
    CleanUp(Box<StoppedPod>),
    /// Try a new runtime, then report to [`Pods::runtime_restarted`].
    RestartRuntime,
    /// Remove the cgroups of pods other than `live`.
    RemoveStaleCgroups {
        live: BTreeSet<String>,
    },
    /// The pods' status changed.
    Publish,
}

/// A pod that has stopped and left the manager.
#[derive(Debug)]
pub(super) struct StoppedPod {
    pub spec: PodSpec,
    pub containers: Vec<String>,
    /// Its sandbox was made, so it must be released.
    pub had_sandbox: bool,
}

/// Why a container did not start.
#[derive(Debug)]
pub(super) enum StartFailure {
    /// Cannot start until the manifest changes (unknown image, bad config).
    Blocked { reason: WaitingReason, message: String },
    /// May pass: tried again after the back-off, as a crashed container is.
    Failed { reason: WaitingReason, message: String },
}

/// What the start pipeline needs to know of a container.
#[derive(Debug, Clone)]
pub(super) struct StartRequest {
    pub spec: PodSpec,
    pub index: usize,
    pub sandbox: Sandbox,
    /// Starts so far: the run's number in log and FIFO names.
    pub restarts: u32,
}

/// One probe attempt's outcome, from a probe task.
#[derive(Debug)]
pub(super) struct ProbeResult {
    pub uid: String,
    pub container: usize,
    pub generation: u64,
    pub kind: ProbeKind,
    pub result: Result<(), String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Run {
    /// Never started, or waiting to start again (see `restart_at`).
    Idle,
    Running,
    /// Exited and deleted at the runtime.
    Exited,
    /// Cannot start until the manifest changes (unknown image, bad config).
    Blocked,
}

struct Ctr {
    name: String,
    id: String,
    run: Run,
    tracker: RestartTracker,
    starts: u32,
    restart_at: Option<Instant>,
    /// SIGKILL after a liveness failure's grace period.
    kill_at: Option<Instant>,
    probes: ContainerProbes,
    /// Bumped on each start, so results of an earlier run's probes are
    /// ignored.
    generation: u64,
}

struct Stopping {
    kill_at: Instant,
    killed: bool,
}

struct Pod {
    spec: PodSpec,
    status: PodStatus,
    sandbox: Option<Sandbox>,
    containers: Vec<Ctr>,
    stopping: Option<Stopping>,
    /// Started once this pod is gone (the manifest changed).
    then: Option<PodSpec>,
}

/// The runtime died; another is tried at `retry_at`.
struct RuntimeLost {
    retry_at: Instant,
    failures: u32,
}

/// Every pod the manager has, and what it is waiting for.
pub(super) struct Pods {
    host_ip: Option<String>,
    /// Replaces the crash-loop back-off (a test knob).
    fixed_backoff: Option<Duration>,
    /// By UID.
    pods: BTreeMap<String, Pod>,
    /// UIDs in start order.
    order: Vec<String>,
    /// Pods still to stop, one at a time, once shutdown began.
    shutdown: Option<VecDeque<String>>,
    runtime_lost: Option<RuntimeLost>,
}

impl Pods {
    pub fn new(host_ip: Option<String>, fixed_backoff: Option<Duration>) -> Self {
        Pods { host_ip, fixed_backoff, pods: BTreeMap::new(), order: Vec::new(), shutdown: None, runtime_lost: None }
    }

    pub fn shutting_down(&self) -> bool {
        self.shutdown.is_some()
    }

    /// Shutdown began and every pod is gone.
    pub fn shutdown_finished(&self) -> bool {
        self.shutdown.as_ref().is_some_and(VecDeque::is_empty) && self.pods.is_empty()
    }

    pub fn runtime_up(&self) -> bool {
        self.runtime_lost.is_none()
    }

    /// A new runtime is due to be tried.
    pub fn runtime_retry_due(&self, now: Instant) -> bool {
        self.runtime_lost.as_ref().is_some_and(|lost| lost.retry_at <= now)
    }

    /// Every pod's status, in start order.
    pub fn snapshot(&self) -> PodsStatus {
        let pods = self
            .order
            .iter()
            .filter_map(|uid| self.pods.get(uid))
            .map(|pod| {
                let mut status = pod.status.clone();
                status.update_phase(pod.spec.restart_policy);
                status
            })
            .collect();
        PodsStatus { pods }
    }

    /// The next time something is due: a restart, a SIGKILL after a grace
    /// period, another try at a runtime.
    pub fn next_deadline(&self) -> Option<Instant> {
        // Without a runtime, restarts wait for the next attempt at one.
        let retry = self.runtime_lost.as_ref().map(|lost| lost.retry_at);
        self.pods
            .values()
            .flat_map(|pod| {
                let stop = pod.stopping.as_ref().filter(|s| !s.killed).map(|s| s.kill_at);
                pod.containers.iter().flat_map(|c| [c.restart_at.filter(|_| retry.is_none()), c.kill_at]).chain([stop])
            })
            .chain([retry])
            .flatten()
            .min()
    }

    pub fn on_manifest(&mut self, event: ManifestEvent, clock: &dyn Clock) -> Vec<Action> {
        if self.shutdown.is_some() {
            return Vec::new();
        }
        match event {
            ManifestEvent::Added(spec) => vec![Action::StartPod(Box::new(spec))],
            ManifestEvent::Changed { old, new } => {
                info!("pod changed: {}/{}: replacing it", new.namespace, new.name);
                match self.pods.get_mut(&old.uid.0) {
                    Some(pod) => {
                        pod.then = Some(*new);
                        self.stop_pod(&old.uid.0, clock)
                    }
                    None => vec![Action::StartPod(new)],
                }
            }
            ManifestEvent::Removed(spec) => {
                info!("pod removed: {}/{}: stopping it", spec.namespace, spec.name);
                self.stop_pod(&spec.uid.0, clock)
            }
            ManifestEvent::Rejected(error) => {
                for field in error.errors() {
                    warn!("pod rejected: {}: {}: {}", error.file().display(), field.path, field.reason);
                }
                if error.errors().is_empty() {
                    warn!("pod rejected: {}: {}", error.file().display(), error_chain(&error));
                }
                Vec::new()
            }
        }
    }

    /// A pod whose sandbox was made (or not: `sandbox` holds why) and whose
    /// volumes were prepared (or not: `volumes` holds why) joins the
    /// manager; its containers start unless either failed.
    pub fn add_pod(
        &mut self,
        spec: PodSpec,
        sandbox: Result<Sandbox, SandboxError>,
        volumes: Result<(), VolumeError>,
        clock: &dyn Clock,
    ) -> Vec<Action> {
        let uid = spec.uid.0.clone();
        let mut status = PodStatus::new(&spec, self.host_ip.clone(), clock.wall());
        let mut containers: Vec<Ctr> = spec
            .containers
            .iter()
            .map(|c| Ctr {
                name: c.name.clone(),
                id: container_id(&spec, &c.name),
                run: Run::Idle,
                tracker: RestartTracker::new(),
                starts: 0,
                restart_at: None,
                kill_at: None,
                probes: ContainerProbes::new(c),
                generation: 0,
            })
            .collect();
        let problem = match (&sandbox, volumes) {
            (Err(error), _) => Some((WaitingReason::CreateContainerError, error_chain(error))),
            (Ok(_), Err(error)) => Some((WaitingReason::CreateContainerConfigError, error_chain(&error))),
            (Ok(_), Ok(())) => None,
        };
        if let Some(ip) = sandbox.as_ref().ok().and_then(|s| s.pod_ip.clone()) {
            status.pod_ip = Some(ip);
        }
        let blocked = problem.is_some();
        if let Some((reason, message)) = problem {
            for c in &mut status.containers {
                c.set_waiting(reason, Some(message.clone()));
            }
            status.message = Some(message);
            for c in &mut containers {
                c.run = Run::Blocked;
            }
        }
        info!("pod started: {}/{} (uid {}, {} containers)", spec.namespace, spec.name, uid, containers.len());
        let count = containers.len();
        let pod = Pod { spec, status, sandbox: sandbox.ok(), containers, stopping: None, then: None };
        self.pods.insert(uid.clone(), pod);
        self.order.push(uid.clone());
        let mut actions = Vec::new();
        if !blocked {
            actions.extend((0..count).map(|index| Action::StartContainer { uid: uid.clone(), index }));
        }
        actions.push(Action::Publish);
        actions
    }

    /// What starting container `index` of pod `uid` needs; `None` when the
    /// pod is gone or has no sandbox.
    pub fn start_request(&self, uid: &str, index: usize) -> Option<StartRequest> {
        let pod = self.pods.get(uid)?;
        pod.spec.containers.get(index)?;
        Some(StartRequest {
            spec: pod.spec.clone(),
            index,
            sandbox: pod.sandbox.clone()?,
            restarts: pod.containers.get(index)?.starts,
        })
    }

    /// The container runs: a new generation of probes, and its status.
    pub fn container_started(&mut self, uid: &str, index: usize, clock: &dyn Clock) -> Vec<Action> {
        let Some(pod) = self.pods.get_mut(uid) else { return Vec::new() };
        let Some(spec_c) = pod.spec.containers.get(index) else { return Vec::new() };
        let Some(ctr) = pod.containers.get_mut(index) else { return Vec::new() };
        ctr.tracker.started(clock);
        ctr.starts += 1;
        ctr.run = Run::Running;
        ctr.restart_at = None;
        ctr.generation += 1;
        ctr.probes = ContainerProbes::new(spec_c);
        let (started, ready) = (ctr.probes.started(), ctr.probes.ready());
        let generation = ctr.generation;
        if let Some(status) = pod.status.container_mut(&spec_c.name) {
            status.set_running(clock.wall());
            status.set_probed(started, ready);
        }
        pod.status.message = None;
        vec![Action::StartProbes { uid: uid.to_owned(), index, generation }, Action::Publish]
    }

    pub fn start_failed(&mut self, uid: &str, index: usize, failure: StartFailure, clock: &dyn Clock) -> Vec<Action> {
        let Some(pod) = self.pods.get_mut(uid) else { return Vec::new() };
        let full = format!("{}/{}", pod.spec.namespace, pod.spec.name);
        let policy = pod.spec.restart_policy;
        let Some(ctr) = pod.containers.get_mut(index) else { return Vec::new() };
        let (reason, message) = match failure {
            StartFailure::Blocked { reason, message } => {
                warn!("container {full}/{}: not started: {message}", ctr.name);
                ctr.run = Run::Blocked;
                (reason, message)
            }
            StartFailure::Failed { reason, message } => {
                warn!("container {full}/{}: not started: {message}", ctr.name);
                ctr.tracker.started(clock);
                ctr.starts += 1;
                ctr.run = Run::Exited;
                if let NextStep::Restart { delay } = ctr.tracker.exited(policy, Some(Exit::Code(128)), clock) {
                    let delay = self.fixed_backoff.unwrap_or(delay);
                    ctr.restart_at = Some(clock.now() + delay);
                    ctr.run = Run::Idle;
                }
                (reason, message)
            }
        };
        let name = ctr.name.clone();
        if let Some(status) = pod.status.container_mut(&name) {
            status.set_waiting(reason, Some(message));
        }
        vec![Action::Publish]
    }

    /// A container exited: deleted at the runtime, then recorded.
    pub fn on_exit(&mut self, exit: ExitInfo, clock: &dyn Clock) -> Vec<Action> {
        let found = self
            .pods
            .iter()
            .find_map(|(uid, pod)| pod.containers.iter().position(|c| c.id == exit.id).map(|i| (uid.clone(), i)));
        let Some((uid, index)) = found else { return Vec::new() };
        let mut actions = vec![Action::Delete { id: exit.id.clone() }];
        actions.extend(self.record_exit(&uid, index, exit, None, clock));
        actions
    }

    /// A container has exited: its status, and a restart if its policy
    /// wants one.
    fn record_exit(
        &mut self,
        uid: &str,
        index: usize,
        exit: ExitInfo,
        message: Option<String>,
        clock: &dyn Clock,
    ) -> Vec<Action> {
        let backoff = self.fixed_backoff;
        let Some(pod) = self.pods.get_mut(uid) else { return Vec::new() };
        let full = format!("{}/{}", pod.spec.namespace, pod.spec.name);
        let policy = pod.spec.restart_policy;
        let Some(ctr) = pod.containers.get_mut(index) else { return Vec::new() };
        let mut actions = vec![Action::StopProbes { uid: uid.to_owned(), index }];
        ctr.run = Run::Exited;
        ctr.kill_at = None;
        let name = ctr.name.clone();
        let code = match exit.exit {
            Exit::Code(code) => code,
            Exit::Signal(signal) => 128 + signal,
        };
        if let Some(status) = pod.status.container_mut(&name) {
            status.set_terminated(exit.exit, exit.oom_killed, clock.wall(), message);
        }
        let reason = match crate::status::terminated_reason(exit.exit, exit.oom_killed) {
            TerminatedReason::Completed => "Completed",
            TerminatedReason::Error => "Error",
            TerminatedReason::OomKilled => "OOMKilled",
        };
        info!("container exited: {full}/{name}: exit code {code}, reason {reason}");
        if pod.stopping.is_none() {
            if let NextStep::Restart { delay } = ctr.tracker.exited(policy, Some(exit.exit), clock) {
                let delay = backoff.unwrap_or(delay);
                ctr.restart_at = Some(clock.now() + delay);
                ctr.run = Run::Idle;
                info!("container restarting: {full}/{name} in {} ms", delay.as_millis());
                if let Some(status) = pod.status.container_mut(&name) {
                    status.set_waiting(
                        WaitingReason::CrashLoopBackOff,
                        Some(format!(
                            "back-off {} restarting failed container={name} pod={}",
                            seconds(delay),
                            pod.spec.name
                        )),
                    );
                }
            }
        }
        // A pod that has now stopped leaves the published status only once
        // it is cleaned up (its clean-up publishes): a status file gone
        // means nothing of the pod is left.
        let finished = self.finish_stop_if_done(uid, clock);
        if finished.is_empty() {
            actions.push(Action::Publish);
        }
        actions.extend(finished);
        actions
    }

    pub fn on_probe(&mut self, result: ProbeResult, clock: &dyn Clock) -> Vec<Action> {
        let Some(pod) = self.pods.get_mut(&result.uid) else { return Vec::new() };
        if pod.stopping.is_some() {
            return Vec::new();
        }
        let full = format!("{}/{}", pod.spec.namespace, pod.spec.name);
        let grace = pod.spec.termination_grace_period;
        let Some(ctr) = pod.containers.get_mut(result.container) else { return Vec::new() };
        if ctr.generation != result.generation || ctr.run != Run::Running {
            return Vec::new();
        }
        let name = ctr.name.clone();
        let verdict = ctr.probes.record(result.kind, result.result.is_ok());
        let (started, ready) = (ctr.probes.started(), ctr.probes.ready());
        let mut actions = Vec::new();
        match verdict {
            ProbeVerdict::Nothing => return actions,
            ProbeVerdict::Started => info!("container {full}/{name}: startup probe succeeded"),
            ProbeVerdict::Ready(ready) => info!("container {full}/{name}: ready {ready}"),
            ProbeVerdict::Restart(kind) => {
                let why = result.result.err().unwrap_or_default();
                info!("container {full}/{name}: {kind:?} probe failed ({why}), restarting it");
                let probe = match kind {
                    ProbeKind::Startup => pod.spec.container(&name).and_then(|c| c.startup.as_ref()),
                    _ => pod.spec.container(&name).and_then(|c| c.liveness.as_ref()),
                };
                let grace = probe.and_then(|p| p.termination_grace_period).unwrap_or(grace);
                ctr.kill_at = Some(clock.now() + grace);
                actions.push(Action::StopProbes { uid: result.uid.clone(), index: result.container });
                actions.push(Action::Kill { id: ctr.id.clone(), signal: SIGTERM });
            }
        }
        if let Some(status) = pod.status.container_mut(&name) {
            status.set_probed(started, ready);
        }
        actions.push(Action::Publish);
        actions
    }

    /// What is due at `clock.now()`: SIGKILLs after grace periods and
    /// restarts after back-off (not while the runtime is lost).
    pub fn on_deadlines(&mut self, clock: &dyn Clock) -> Vec<Action> {
        let now = clock.now();
        let runtime_up = self.runtime_lost.is_none();
        let mut restarts = Vec::new();
        let mut kills = Vec::new();
        for (uid, pod) in &mut self.pods {
            if let Some(stopping) = &mut pod.stopping {
                if !stopping.killed && stopping.kill_at <= now {
                    stopping.killed = true;
                    info!("pod {}/{}: grace period over, killing its containers", pod.spec.namespace, pod.spec.name);
                    kills.extend(pod.containers.iter().filter(|c| c.run == Run::Running).map(|c| c.id.clone()));
                }
                continue;
            }
            for (index, ctr) in pod.containers.iter_mut().enumerate() {
                if runtime_up && ctr.restart_at.is_some_and(|at| at <= now) {
                    ctr.restart_at = None;
                    restarts.push(Action::StartContainer { uid: uid.clone(), index });
                }
                if ctr.kill_at.is_some_and(|at| at <= now) {
                    ctr.kill_at = None;
                    if ctr.run == Run::Running {
                        kills.push(ctr.id.clone());
                    }
                }
            }
        }
        let mut actions: Vec<Action> = kills.into_iter().map(|id| Action::Kill { id, signal: SIGKILL }).collect();
        actions.extend(restarts);
        actions
    }

    /// The runtime died and its containers with it (the new one kills what
    /// is left of them): each running container has exited, and restarts
    /// as its policy says once a new runtime is up.
    pub fn on_runtime_lost(&mut self, error: &str, clock: &dyn Clock) -> Vec<Action> {
        warn!("pods: the container runtime is gone ({error}); its containers count as killed and start again under a new one");
        self.runtime_lost = Some(RuntimeLost { retry_at: clock.now(), failures: 0 });
        let running: Vec<(String, usize, String)> = self
            .pods
            .iter()
            .flat_map(|(uid, pod)| {
                pod.containers
                    .iter()
                    .enumerate()
                    .filter(|(_, c)| c.run == Run::Running)
                    .map(|(i, c)| (uid.clone(), i, c.id.clone()))
            })
            .collect();
        let mut actions = Vec::new();
        for (uid, index, id) in running {
            let exit = ExitInfo { id, exit: Exit::Signal(SIGKILL), oom_killed: false };
            actions.extend(self.record_exit(&uid, index, exit, Some(LOST_MESSAGE.to_owned()), clock));
        }
        actions
    }

    /// A new runtime is up (`Ok`), or could not be started (`Err` says why).
    pub fn runtime_restarted(&mut self, result: Result<(), String>, clock: &dyn Clock) -> Vec<Action> {
        let Some(lost) = &mut self.runtime_lost else { return Vec::new() };
        match result {
            Ok(()) => {
                info!("pods: a new container runtime is up");
                self.runtime_lost = None;
                vec![Action::RemoveStaleCgroups { live: self.pods.keys().cloned().collect() }]
            }
            Err(error) => {
                lost.failures += 1;
                let delay = Duration::from_secs(1u64 << lost.failures.min(5)).min(RUNTIME_RETRY_CAP);
                lost.retry_at = clock.now() + delay;
                warn!("pods: no container runtime, trying again in {} s: {error}", delay.as_secs());
                Vec::new()
            }
        }
    }

    /// Stops every pod, last started first, one at a time.
    pub fn begin_shutdown(&mut self, clock: &dyn Clock) -> Vec<Action> {
        info!("pods: stopping {} pods", self.order.len());
        // Last started first: a control plane's apiserver goes before the
        // etcd it writes to.
        let queue: VecDeque<String> = self.order.iter().rev().cloned().collect();
        for pod in self.pods.values_mut() {
            pod.then = None;
        }
        self.shutdown = Some(queue);
        self.shutdown_next(clock)
    }

    /// Stops the pod at the head of the shutdown queue, unless it is still
    /// stopping: the next starts stopping only when this one is gone.
    fn shutdown_next(&mut self, clock: &dyn Clock) -> Vec<Action> {
        let mut actions = Vec::new();
        loop {
            let Some(queue) = &mut self.shutdown else { return actions };
            let Some(uid) = queue.front().cloned() else { return actions };
            match self.pods.get(&uid) {
                None => {
                    queue.pop_front();
                }
                Some(pod) if pod.stopping.is_some() => return actions,
                // Stopping it may end it at once (nothing running), in
                // which case the loop moves on to the next.
                Some(_) => actions.extend(self.stop_pod(&uid, clock)),
            }
        }
    }

    /// SIGTERM to the pod's running containers; SIGKILL once its grace
    /// period is over (see [`Pods::on_deadlines`]).
    fn stop_pod(&mut self, uid: &str, clock: &dyn Clock) -> Vec<Action> {
        let Some(pod) = self.pods.get_mut(uid) else { return Vec::new() };
        if pod.stopping.is_some() {
            return Vec::new();
        }
        pod.stopping = Some(Stopping { kill_at: clock.now() + pod.spec.termination_grace_period, killed: false });
        let mut actions = Vec::new();
        let mut kills = Vec::new();
        for (index, ctr) in pod.containers.iter_mut().enumerate() {
            ctr.restart_at = None;
            ctr.kill_at = None;
            actions.push(Action::StopProbes { uid: uid.to_owned(), index });
            if ctr.run == Run::Running {
                kills.push(Action::Kill { id: ctr.id.clone(), signal: SIGTERM });
            }
        }
        actions.extend(kills);
        actions.extend(self.finish_stop_if_done(uid, clock));
        actions
    }

    /// A stopping pod whose containers have all exited leaves: its
    /// clean-up, then its replacement if any, then the next pod of a
    /// shutdown.
    fn finish_stop_if_done(&mut self, uid: &str, clock: &dyn Clock) -> Vec<Action> {
        let done = self
            .pods
            .get(uid)
            .is_some_and(|pod| pod.stopping.is_some() && pod.containers.iter().all(|c| c.run != Run::Running));
        if !done {
            return Vec::new();
        }
        let Some(pod) = self.pods.remove(uid) else { return Vec::new() };
        self.order.retain(|u| u != uid);
        let stopped = StoppedPod {
            containers: pod.containers.iter().map(|c| c.name.clone()).collect(),
            had_sandbox: pod.sandbox.is_some(),
            spec: pod.spec,
        };
        let mut actions = vec![Action::CleanUp(Box::new(stopped)), Action::Publish];
        if let Some(next) = pod.then {
            actions.push(Action::StartPod(Box::new(next)));
        }
        actions.extend(self.shutdown_next(clock));
        actions
    }
}

/// `10s` as the kubelet writes it; a test knob's sub-second delays as `0.2s`.
fn seconds(delay: Duration) -> String {
    if delay.subsec_millis() == 0 {
        format!("{}s", delay.as_secs())
    } else {
        format!("{}s", delay.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{parse, LoadOptions};
    use crate::runtime::host_sandbox;
    use crate::FakeClock;
    use std::path::Path;

    fn pod(name: &str, image: &str, extra: &str, container_extra: &str) -> PodSpec {
        let yaml = format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  hostNetwork: true\n{extra}  containers:\n  - name: main\n    image: {image}\n{container_extra}"
        );
        parse(Path::new(&format!("/m/{name}.yaml")), yaml.as_bytes(), &LoadOptions::default()).unwrap()
    }

    fn id(spec: &PodSpec) -> String {
        container_id(spec, "main")
    }

    /// Actions as short lines, pods by name, containers by id.
    fn lines(pods: &Pods, actions: &[Action]) -> Vec<String> {
        let name = |uid: &str| pods.pods.get(uid).map_or_else(|| uid.to_owned(), |p| p.spec.name.clone());
        actions
            .iter()
            .map(|action| match action {
                Action::StartPod(spec) => format!("start pod {}", spec.name),
                Action::StartContainer { uid, index } => format!("start {}/{index}", name(uid)),
                Action::StartProbes { uid, index, generation } => format!("probes {}/{index} #{generation}", name(uid)),
                Action::StopProbes { uid, index } => format!("stop probes {}/{index}", name(uid)),
                Action::Kill { id, signal } => format!("kill {id} {signal}"),
                Action::Delete { id } => format!("delete {id}"),
                Action::CleanUp(stopped) => format!("clean up {}", stopped.spec.name),
                Action::RestartRuntime => "restart runtime".into(),
                Action::RemoveStaleCgroups { live } => format!("remove stale cgroups but {}", live.len()),
                Action::Publish => "publish".into(),
            })
            .collect()
    }

    /// What is due now, as lines.
    fn due(pods: &mut Pods, clock: &FakeClock) -> Vec<String> {
        let actions = pods.on_deadlines(clock);
        lines(pods, &actions)
    }

    /// A pod added and its container started.
    fn running(pods: &mut Pods, spec: &PodSpec, clock: &FakeClock) {
        let sandbox = Ok(host_sandbox(spec, None));
        let actions = pods.add_pod(spec.clone(), sandbox, Ok(()), clock);
        assert_eq!(lines(pods, &actions), [format!("start {}/0", spec.name), "publish".into()]);
        pods.container_started(&spec.uid.0, 0, clock);
    }

    fn exit(spec: &PodSpec, exit: Exit) -> ExitInfo {
        ExitInfo { id: id(spec), exit, oom_killed: false }
    }

    fn container_status(pods: &Pods, name: &str) -> serde_json::Value {
        let status = pods.snapshot().pods.into_iter().find(|p| p.name == name).unwrap();
        serde_json::to_value(&status).unwrap()["containers"][0].clone()
    }

    #[test]
    fn a_crash_is_deleted_and_restarted_after_a_back_off_that_doubles() {
        let clock = FakeClock::new();
        let mut pods = Pods::new(None, None);
        let p = pod("crash", "busybox", "", "");
        running(&mut pods, &p, &clock);

        let actions = pods.on_exit(exit(&p, Exit::Code(3)), &clock);
        assert_eq!(
            lines(&pods, &actions),
            [format!("delete {}", id(&p)), "stop probes crash/0".into(), "publish".into()]
        );
        assert_eq!(container_status(&pods, "crash")["state"]["waiting"]["reason"], "CrashLoopBackOff");
        assert_eq!(pods.next_deadline(), Some(clock.now() + Duration::from_secs(10)));
        clock.advance(Duration::from_secs(9));
        assert!(pods.on_deadlines(&clock).is_empty(), "no restart before 10 s");
        clock.advance(Duration::from_secs(1));
        assert_eq!(due(&mut pods, &clock), ["start crash/0"]);

        let actions = pods.container_started(&p.uid.0, 0, &clock);
        assert_eq!(lines(&pods, &actions), ["probes crash/0 #2", "publish"], "a new generation of probes");
        pods.on_exit(exit(&p, Exit::Code(3)), &clock);
        assert_eq!(pods.next_deadline(), Some(clock.now() + Duration::from_secs(20)), "the second back-off is 20 s");
        assert_eq!(container_status(&pods, "crash")["restartCount"], 1);
    }

    #[test]
    fn restart_policy_never_leaves_a_finished_container_alone() {
        let clock = FakeClock::new();
        let mut pods = Pods::new(None, Some(Duration::from_millis(1)));
        let p = pod("once", "busybox", "  restartPolicy: Never\n", "");
        running(&mut pods, &p, &clock);
        pods.on_exit(exit(&p, Exit::Code(0)), &clock);
        assert_eq!(pods.next_deadline(), None);
        assert_eq!(pods.snapshot().pods[0].phase, crate::status::PodPhase::Succeeded);
    }

    #[test]
    fn a_removed_pod_gets_sigterm_then_sigkill_after_its_grace_then_is_cleaned_up() {
        let clock = FakeClock::new();
        let mut pods = Pods::new(None, None);
        let p = pod("slow", "busybox", "  terminationGracePeriodSeconds: 5\n", "");
        running(&mut pods, &p, &clock);

        let actions = pods.on_manifest(ManifestEvent::Removed(p.clone()), &clock);
        assert_eq!(lines(&pods, &actions), ["stop probes slow/0".to_owned(), format!("kill {} 15", id(&p))]);
        clock.advance(Duration::from_secs(4));
        assert!(pods.on_deadlines(&clock).is_empty(), "no SIGKILL within the grace period");
        clock.advance(Duration::from_secs(1));
        assert_eq!(due(&mut pods, &clock), [format!("kill {} 9", id(&p))]);
        assert!(pods.on_deadlines(&clock).is_empty(), "SIGKILL is sent once");

        let actions = pods.on_exit(exit(&p, Exit::Signal(9)), &clock);
        assert_eq!(
            lines(&pods, &actions),
            [
                format!("delete {}", id(&p)),
                // The pod has left: named by its UID.
                format!("stop probes {}/0", p.uid.0),
                // Published only after the clean-up: until then the pod's
                // status file stays, so its absence means nothing is left.
                "clean up slow".into(),
                "publish".into()
            ]
        );
        assert!(pods.snapshot().pods.is_empty(), "the pod has left the status");
    }

    #[test]
    fn a_changed_manifest_starts_the_new_pod_only_once_the_old_one_is_gone() {
        let clock = FakeClock::new();
        let mut pods = Pods::new(None, None);
        let old = pod("web", "busybox", "", "");
        let new = pod("web", "busybox:1.36", "", "");
        running(&mut pods, &old, &clock);
        let changed = ManifestEvent::Changed { old: Box::new(old.clone()), new: Box::new(new.clone()) };
        let actions = pods.on_manifest(changed, &clock);
        assert_eq!(lines(&pods, &actions), ["stop probes web/0".to_owned(), format!("kill {} 15", id(&old))]);
        let actions = pods.on_exit(exit(&old, Exit::Signal(15)), &clock);
        assert_eq!(lines(&pods, &actions).last().unwrap(), "start pod web");
        assert!(matches!(actions.last(), Some(Action::StartPod(spec)) if spec.uid == new.uid));
    }

    #[test]
    fn a_pod_whose_sandbox_or_volumes_failed_starts_no_container() {
        let clock = FakeClock::new();
        let mut pods = Pods::new(None, None);
        let p = pod("nonet", "busybox", "", "");
        let no_network = SandboxError { action: "creating", pod: p.full_name(), source: "no pod network".into() };
        let actions = pods.add_pod(p.clone(), Err(no_network), Ok(()), &clock);
        assert_eq!(lines(&pods, &actions), ["publish"]);
        let status = container_status(&pods, "nonet");
        assert_eq!(status["state"]["waiting"]["reason"], "CreateContainerError");
        assert_eq!(status["state"]["waiting"]["message"], "creating the sandbox of pod default_nonet: no pod network");

        let q = pod("novol", "busybox", "", "");
        let full = super::super::HostError { action: "creating", path: "/v/shm".into(), source: "disk full".into() };
        let volume = VolumeError { volume: "shm".into(), source: full };
        let actions = pods.add_pod(q.clone(), Ok(host_sandbox(&q, None)), Err(volume), &clock);
        assert_eq!(lines(&pods, &actions), ["publish"]);
        let status = container_status(&pods, "novol");
        assert_eq!(status["state"]["waiting"]["reason"], "CreateContainerConfigError");
        assert_eq!(status["state"]["waiting"]["message"], "preparing emptyDir shm: creating /v/shm: disk full");
    }

    #[test]
    fn a_failed_start_is_tried_again_after_the_back_off_and_a_blocked_one_is_not() {
        let clock = FakeClock::new();
        let mut pods = Pods::new(None, None);
        let p = pod("flaky", "busybox", "", "");
        pods.add_pod(p.clone(), Ok(host_sandbox(&p, None)), Ok(()), &clock);
        let failure = StartFailure::Failed { reason: WaitingReason::RunContainerError, message: "no shim".into() };
        pods.start_failed(&p.uid.0, 0, failure, &clock);
        assert_eq!(container_status(&pods, "flaky")["state"]["waiting"]["reason"], "RunContainerError");
        clock.advance(Duration::from_secs(10));
        assert_eq!(due(&mut pods, &clock), ["start flaky/0"]);

        let q = pod("bad", "missing/image", "", "");
        pods.add_pod(q.clone(), Ok(host_sandbox(&q, None)), Ok(()), &clock);
        let failure = StartFailure::Blocked { reason: WaitingReason::ErrImageNeverPull, message: "not found".into() };
        pods.start_failed(&q.uid.0, 0, failure, &clock);
        clock.advance(Duration::from_secs(600));
        assert!(!due(&mut pods, &clock).contains(&"start bad/0".to_owned()));
        assert_eq!(pods.start_request(&q.uid.0, 0).map(|r| r.restarts), Some(0), "a blocked start is no restart");
    }

    #[test]
    fn a_liveness_failure_sends_sigterm_and_results_of_an_earlier_run_are_ignored() {
        let clock = FakeClock::new();
        let mut pods = Pods::new(None, None);
        let probe = "    livenessProbe: {tcpSocket: {port: 80}, failureThreshold: 1}\n";
        let p = pod("live", "busybox", "  terminationGracePeriodSeconds: 7\n", probe);
        running(&mut pods, &p, &clock);
        let result = |generation| ProbeResult {
            uid: p.uid.0.clone(),
            container: 0,
            generation,
            kind: ProbeKind::Liveness,
            result: Err("connection refused".into()),
        };
        assert!(pods.on_probe(result(0), &clock).is_empty(), "a result of an earlier run");
        let actions = pods.on_probe(result(1), &clock);
        assert_eq!(
            lines(&pods, &actions),
            ["stop probes live/0".to_owned(), format!("kill {} 15", id(&p)), "publish".into()]
        );
        clock.advance(Duration::from_secs(7));
        assert_eq!(due(&mut pods, &clock), [format!("kill {} 9", id(&p))]);
    }

    /// One pod at a time, last started first: an apiserver is gone before
    /// the etcd it writes to gets SIGTERM. (Before the manager was split,
    /// every pod got SIGTERM at once, against its own comment.)
    #[test]
    fn shutdown_stops_pods_one_at_a_time_last_started_first_and_ends_when_every_pod_is_gone() {
        let clock = FakeClock::new();
        let mut pods = Pods::new(None, None);
        let first = pod("etcd", "busybox", "", "");
        let second = pod("apiserver", "busybox", "", "");
        running(&mut pods, &first, &clock);
        running(&mut pods, &second, &clock);
        let actions = pods.begin_shutdown(&clock);
        assert_eq!(lines(&pods, &actions), ["stop probes apiserver/0".to_owned(), format!("kill {} 15", id(&second))]);
        assert!(pods.on_manifest(ManifestEvent::Added(pod("late", "busybox", "", "")), &clock).is_empty());
        let after_apiserver = pods.on_exit(exit(&second, Exit::Signal(15)), &clock);
        let after_apiserver = lines(&pods, &after_apiserver);
        assert!(after_apiserver.contains(&format!("kill {} 15", id(&first))), "{after_apiserver:?}");
        assert!(!pods.shutdown_finished());
        pods.on_exit(exit(&first, Exit::Signal(15)), &clock);
        assert!(pods.shutdown_finished());
    }

    #[test]
    fn a_lost_runtime_counts_its_containers_killed_and_restarts_wait_for_a_new_one() {
        let clock = FakeClock::new();
        let mut pods = Pods::new(None, Some(Duration::from_millis(100)));
        let always = pod("etcd", "busybox", "", "");
        let never = pod("once", "busybox", "  restartPolicy: Never\n", "");
        running(&mut pods, &always, &clock);
        running(&mut pods, &never, &clock);

        let actions = pods.on_runtime_lost("the shim closed its socket", &clock);
        assert!(!lines(&pods, &actions).iter().any(|a| a.starts_with("delete")), "lost containers are not deleted");
        let etcd = container_status(&pods, "etcd");
        assert_eq!(etcd["lastState"]["terminated"]["exitCode"], 137);
        assert!(etcd["lastState"]["terminated"]["message"].as_str().unwrap().contains("shim was lost"));
        assert_eq!(pods.snapshot().pods[1].phase, crate::status::PodPhase::Failed);
        assert!(!pods.runtime_up() && pods.runtime_retry_due(clock.now()), "a new runtime is tried at once");

        assert!(pods.runtime_restarted(Err("no answer".into()), &clock).is_empty());
        clock.advance(Duration::from_secs(1));
        assert!(!pods.runtime_retry_due(clock.now()), "the next try is 2 s later");
        assert!(pods.on_deadlines(&clock).is_empty(), "no container starts without a runtime");
        clock.advance(Duration::from_secs(1));
        assert!(pods.runtime_retry_due(clock.now()));
        let actions = pods.runtime_restarted(Ok(()), &clock);
        assert_eq!(lines(&pods, &actions), ["remove stale cgroups but 2"]);
        assert_eq!(due(&mut pods, &clock), ["start etcd/0"]);
    }
}
