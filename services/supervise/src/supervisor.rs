//! The supervisor: validates the services' dependency graph, runs one task
//! per service, holds the shared state, and stops everything in reverse
//! dependency order.

use crate::cgroup::CgroupRoot;
use crate::control::{ControlError, ServiceAction};
use crate::launcher::Launcher;
use crate::logs::{LogSettings, LogSink, LogSubscription};
use crate::runner::{Control, Runner};
use crate::spec::{Requirement, RestartMode, ServiceSpec};
use crate::status::{ServiceStatus, Snapshot, Transition};
use kelson_base::Clock;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{broadcast, mpsc, oneshot, watch};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// One `<service>.json` per service; `/run/kelson/services` on the node.
    pub state_dir: PathBuf,
    pub logs: LogSettings,
    /// `None` runs services in the supervisor's own cgroup (tests, or a
    /// host without a writable cgroup2).
    pub cgroups: Option<CgroupRoot>,
    /// How often `PathExists` requirements are looked at again.
    pub poll_interval: Duration,
    /// After the SIGKILL that ends a grace period, how long to wait for the
    /// exit before declaring the service stopped anyway.
    pub kill_wait: Duration,
}

pub const DEFAULT_STATE_DIR: &str = "/run/kelson/services";

impl Default for Settings {
    fn default() -> Self {
        Settings {
            state_dir: PathBuf::from(DEFAULT_STATE_DIR),
            logs: LogSettings::default(),
            cgroups: Some(CgroupRoot::default()),
            poll_interval: Duration::from_millis(250),
            kill_wait: Duration::from_secs(5),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SuperviseError {
    #[error("two services are named {name}")]
    DuplicateName { name: String },
    #[error("service name {name:?} cannot name its log and state files (empty, containing '/', or starting with '.')")]
    BadName { name: String },
    #[error("service {service} has an empty argv")]
    EmptyArgv { service: String },
    #[error("service {service} requires service {missing}, but no service has that name")]
    UnknownDependency { service: String, missing: String },
    #[error("service {service} requires service {dependency} to complete, but {dependency} restarts always, so it never completes")]
    NeverCompletes { service: String, dependency: String },
    #[error("services require each other in a cycle: {}", cycle.join(" -> "))]
    Cycle { cycle: Vec<String> },
}

/// What every service task shares.
pub(crate) struct Shared {
    pub clock: Arc<dyn Clock>,
    pub launcher: Arc<dyn Launcher>,
    pub settings: Settings,
    pub snapshot: watch::Sender<Snapshot>,
    pub transitions: broadcast::Sender<Transition>,
}

pub struct Supervisor {
    shared: Arc<Shared>,
    controls: BTreeMap<String, mpsc::Sender<Control>>,
    /// service → the services that require it (healthy or completed).
    dependents: BTreeMap<String, Vec<String>>,
    logs: BTreeMap<String, Arc<LogSink>>,
    /// Prepared by `new`, taken by `start`.
    runners: Mutex<Vec<Runner>>,
    started: AtomicBool,
    shutting_down: AtomicBool,
}

impl std::fmt::Debug for Supervisor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Supervisor")
            .field("services", &self.controls.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Supervisor {
    /// Checks the specs and prepares one runner per service; nothing runs
    /// until [`Supervisor::start`], so subscribers can attach first.
    pub fn new(
        specs: Vec<ServiceSpec>,
        settings: Settings,
        launcher: Arc<dyn Launcher>,
        clock: Arc<dyn Clock>,
    ) -> Result<Supervisor, SuperviseError> {
        let dependents = check_graph(&specs)?;
        let now = clock.wall();
        let mut snapshot = Snapshot::default();
        for spec in &specs {
            snapshot.services.insert(spec.name.clone(), ServiceStatus::new(&spec.name, now));
        }
        let (snapshot, _) = watch::channel(snapshot);
        let (transitions, _) = broadcast::channel(1024);
        let shared = Arc::new(Shared { clock: clock.clone(), launcher, settings, snapshot, transitions });

        let mut controls = BTreeMap::new();
        let mut logs = BTreeMap::new();
        let mut runners = Vec::new();
        for spec in specs {
            let log = Arc::new(LogSink::new(&spec.name, &shared.settings.logs, clock.clone()));
            let (tx, rx) = mpsc::channel(4);
            controls.insert(spec.name.clone(), tx);
            logs.insert(spec.name.clone(), log.clone());
            runners.push(Runner::new(spec, shared.clone(), rx, log));
        }
        Ok(Supervisor {
            shared,
            controls,
            dependents,
            logs,
            runners: Mutex::new(runners),
            started: AtomicBool::new(false),
            shutting_down: AtomicBool::new(false),
        })
    }

    /// Starts one task per service; each waits for its requirements, so
    /// independent services start in parallel and the others in dependency
    /// order. Must be called inside a tokio runtime; a second call does
    /// nothing.
    pub fn start(&self) {
        let runners = std::mem::take(&mut *self.runners.lock().unwrap_or_else(|e| e.into_inner()));
        for runner in runners {
            tokio::spawn(runner.run());
        }
        self.started.store(true, Ordering::SeqCst);
    }

    /// Carries out `action` on `service`; returns its status once it took
    /// effect: stopped (after the stop policy's grace, if need be), or, for
    /// a start, the first state the start leads to (healthy, running,
    /// waiting for requirements, backing off). Each change is broadcast and
    /// written to the state file like any other.
    pub async fn control(&self, service: &str, action: ServiceAction) -> Result<ServiceStatus, ControlError> {
        let service_name = || service.to_owned();
        let control = self
            .controls
            .get(service)
            .ok_or_else(|| ControlError::UnknownService { service: service_name(), action })?;
        if self.shutting_down.load(Ordering::SeqCst) {
            return Err(ControlError::ShuttingDown { service: service_name(), action });
        }
        if !self.started.load(Ordering::SeqCst) {
            return Err(ControlError::NotStarted { service: service_name(), action });
        }
        let (reply_tx, reply_rx) = oneshot::channel();
        // The service's task ends only at shutdown (or when the supervisor
        // is dropped): a request it can no longer take comes too late.
        let too_late = || ControlError::ShuttingDown { service: service_name(), action };
        control.send(Control::Request(action, reply_tx)).await.map_err(|_| too_late())?;
        reply_rx.await.map_err(|_| too_late())?
    }

    /// Sets a named condition (e.g. [`crate::NETWORK_READY`]); services
    /// waiting for it start.
    pub fn set_condition(&self, name: &str) {
        self.shared.snapshot.send_modify(|s| {
            s.conditions.insert(name.to_owned());
            s.unreachable.remove(name);
        });
    }

    /// Declares that `name` is not set for now, and why (the network stage
    /// ended before the network was up; a token join is still failing):
    /// services waiting for it become `blocked`, with `why` in their
    /// reason. Setting the condition later still starts them.
    pub fn condition_unreachable(&self, name: &str, why: &str) {
        self.shared.snapshot.send_modify(|s| {
            s.unreachable.insert(name.to_owned(), why.to_owned());
        });
    }

    /// Clears a condition. Running services are left alone; it only gates
    /// later starts and restarts.
    pub fn clear_condition(&self, name: &str) {
        self.shared.snapshot.send_modify(|s| {
            s.conditions.remove(name);
        });
    }

    pub fn snapshot(&self) -> Snapshot {
        self.shared.snapshot.borrow().clone()
    }

    pub fn status(&self, service: &str) -> Option<ServiceStatus> {
        self.shared.snapshot.borrow().services.get(service).cloned()
    }

    /// Follows every change of state (and of the conditions).
    pub fn watch(&self) -> watch::Receiver<Snapshot> {
        self.shared.snapshot.subscribe()
    }

    /// Every transition from now on, in order per service.
    pub fn transitions(&self) -> broadcast::Receiver<Transition> {
        self.shared.transitions.subscribe()
    }

    /// Recent output of `service` and a stream of what follows.
    pub fn logs(&self, service: &str) -> Option<LogSubscription> {
        self.logs.get(service).map(|log| log.subscribe())
    }

    /// Stops every service, each only after the services that require it
    /// have stopped; independent ones stop in parallel. Each gets its stop
    /// signal, then SIGKILL (to its whole process group) after its grace
    /// period. Returns when all are stopped; nothing restarts afterwards.
    pub async fn shutdown(&self) {
        // Runners never started are dropped, so their stop requests fail
        // at once instead of waiting for an answer that cannot come.
        self.shutting_down.store(true, Ordering::SeqCst);
        drop(std::mem::take(&mut *self.runners.lock().unwrap_or_else(|e| e.into_inner())));
        let (done_tx, done_rx) = watch::channel(BTreeSet::<String>::new());
        let done_tx = Arc::new(done_tx);
        let mut stopping = tokio::task::JoinSet::new();
        for (name, control) in &self.controls {
            let waits_for = self.dependents.get(name).cloned().unwrap_or_default();
            let (name, control, done_tx, mut done_rx) =
                (name.clone(), control.clone(), done_tx.clone(), done_rx.clone());
            stopping.spawn(async move {
                let _ = done_rx.wait_for(|done| waits_for.iter().all(|d| done.contains(d))).await;
                let (ack_tx, ack_rx) = oneshot::channel();
                // A task that already ended (stopped before) has dropped its
                // receiver: nothing to wait for.
                if control.send(Control::Shutdown(ack_tx)).await.is_ok() {
                    let _ = ack_rx.await;
                }
                done_tx.send_modify(|done| {
                    done.insert(name);
                });
            });
        }
        while stopping.join_next().await.is_some() {}
    }
}

/// Validates names, argv and the requirements on other services (`Healthy`,
/// `Completed`: the service exists, and one waited on to complete can), and
/// rejects cycles. Returns each service's dependents.
fn check_graph(specs: &[ServiceSpec]) -> Result<BTreeMap<String, Vec<String>>, SuperviseError> {
    let mut requires: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for spec in specs {
        let name = spec.name.as_str();
        if name.is_empty() || name.contains('/') || name.starts_with('.') {
            return Err(SuperviseError::BadName { name: name.to_owned() });
        }
        if spec.argv.is_empty() {
            return Err(SuperviseError::EmptyArgv { service: name.to_owned() });
        }
        let deps = spec
            .requires
            .iter()
            .filter_map(|r| match r {
                Requirement::Healthy(dep) | Requirement::Completed(dep) => Some(dep.as_str()),
                Requirement::PathExists(_) | Requirement::Condition(_) => None,
            })
            .collect();
        if requires.insert(name, deps).is_some() {
            return Err(SuperviseError::DuplicateName { name: name.to_owned() });
        }
    }
    let mut dependents: BTreeMap<String, Vec<String>> =
        requires.keys().map(|name| (name.to_string(), Vec::new())).collect();
    for (service, deps) in &requires {
        for dep in deps {
            match dependents.get_mut(*dep) {
                Some(list) => list.push(service.to_string()),
                None => {
                    return Err(SuperviseError::UnknownDependency {
                        service: service.to_string(),
                        missing: dep.to_string(),
                    })
                }
            }
        }
    }
    for spec in specs {
        for r in &spec.requires {
            let Requirement::Completed(dep) = r else {
                continue;
            };
            if specs.iter().any(|s| s.name == *dep && s.restart.mode == RestartMode::Always) {
                return Err(SuperviseError::NeverCompletes { service: spec.name.clone(), dependency: dep.clone() });
            }
        }
    }
    // Depth-first search with an explicit path: a service met again while
    // still on the path closes a cycle.
    fn visit<'a>(
        node: &'a str,
        requires: &BTreeMap<&'a str, Vec<&'a str>>,
        path: &mut Vec<&'a str>,
        finished: &mut BTreeSet<&'a str>,
    ) -> Result<(), SuperviseError> {
        if finished.contains(node) {
            return Ok(());
        }
        if let Some(at) = path.iter().position(|n| *n == node) {
            let mut cycle: Vec<String> = path[at..].iter().map(|s| s.to_string()).collect();
            cycle.push(node.to_owned());
            return Err(SuperviseError::Cycle { cycle });
        }
        path.push(node);
        for dep in requires.get(node).into_iter().flatten() {
            visit(dep, requires, path, finished)?;
        }
        path.pop();
        finished.insert(node);
        Ok(())
    }
    let mut finished = BTreeSet::new();
    for name in requires.keys() {
        visit(name, &requires, &mut Vec::new(), &mut finished)?;
    }
    Ok(dependents)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, deps: &[&str]) -> ServiceSpec {
        let mut s = ServiceSpec::new(name, ["true"]);
        s.requires = deps.iter().map(|d| Requirement::Healthy(d.to_string())).collect();
        s
    }

    #[test]
    fn dependents_are_the_reverse_of_requirements() {
        let deps =
            check_graph(&[spec("containerd", &[]), spec("kubelet", &["containerd"]), spec("kube-proxy", &["kubelet"])])
                .unwrap();
        assert_eq!(deps["containerd"], ["kubelet"]);
        assert_eq!(deps["kubelet"], ["kube-proxy"]);
        assert!(deps["kube-proxy"].is_empty());
    }

    fn one_shot(name: &str) -> ServiceSpec {
        let mut s = spec(name, &[]);
        s.restart.mode = RestartMode::OnFailure;
        s
    }

    fn completed(mut s: ServiceSpec, dep: &str) -> ServiceSpec {
        s.requires.push(Requirement::Completed(dep.to_owned()));
        s
    }

    #[test]
    fn a_service_waiting_for_a_one_shot_to_complete_is_its_dependent() {
        let deps = check_graph(&[
            spec("containerd", &[]),
            completed(one_shot("import"), "containerd"),
            completed(spec("kubelet", &["containerd"]), "import"),
        ]);
        // containerd restarts always: nothing may wait for it to complete.
        let err = deps.unwrap_err();
        assert_eq!(
            err.to_string(),
            "service import requires service containerd to complete, but containerd restarts always, so it never completes"
        );
        let mut import = one_shot("import");
        import.requires = vec![Requirement::Healthy("containerd".into())];
        let deps =
            check_graph(&[spec("containerd", &[]), import, completed(spec("kubelet", &["containerd"]), "import")])
                .unwrap();
        assert_eq!(deps["containerd"], ["import", "kubelet"]);
        assert_eq!(deps["import"], ["kubelet"]);
        let mut never = one_shot("never");
        never.restart.mode = RestartMode::Never;
        assert!(check_graph(&[never, completed(spec("after", &[]), "never")]).is_ok());
    }

    #[test]
    fn cycles_through_completion_and_unknown_one_shots_are_refused() {
        let err = check_graph(&[completed(one_shot("a"), "b"), completed(one_shot("b"), "a")]).unwrap_err();
        assert_eq!(err.to_string(), "services require each other in a cycle: a -> b -> a");
        let err = check_graph(&[completed(spec("kubelet", &[]), "sandbox-image")]).unwrap_err();
        assert_eq!(err.to_string(), "service kubelet requires service sandbox-image, but no service has that name");
    }

    #[test]
    fn cycles_unknown_services_and_bad_names_are_refused() {
        let err = check_graph(&[spec("a", &["b"]), spec("b", &["c"]), spec("c", &["a"])]).unwrap_err();
        assert_eq!(err.to_string(), "services require each other in a cycle: a -> b -> c -> a");
        let err = check_graph(&[spec("kubelet", &["containerd"])]).unwrap_err();
        assert!(matches!(err, SuperviseError::UnknownDependency { .. }), "{err}");
        assert!(matches!(check_graph(&[spec("a", &[]), spec("a", &[])]), Err(SuperviseError::DuplicateName { .. })));
        assert!(matches!(check_graph(&[spec("../x", &[])]), Err(SuperviseError::BadName { .. })));
        assert!(matches!(
            check_graph(&[ServiceSpec::new("x", Vec::<String>::new())]),
            Err(SuperviseError::EmptyArgv { .. })
        ));
    }
}
