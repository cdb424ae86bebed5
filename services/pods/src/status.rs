//! A pod's status as the API serves it: phase, each container's state,
//! restarts, last termination, readiness and pod IP. Kept in memory by the
//! pod's owner and written as `<dir>/<namespace>_<name>.json`
//! (`/run/kelson/pods` on the node), atomically, so a reader never sees
//! half a file.

use kelson_base::atomic::{write_atomic, AtomicWriteError};
use kelson_base::Exit;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::spec::{PodSpec, PodUid, RestartPolicy};
use crate::time::rfc3339;

/// Where status files go on the node.
pub const STATUS_DIR: &str = "/run/kelson/pods";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PodPhase {
    Pending,
    Running,
    Succeeded,
    Failed,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodStatus {
    pub namespace: String,
    pub name: String,
    pub uid: PodUid,
    pub manifest: PathBuf,
    pub phase: PodPhase,
    /// Every container ready while the pod runs.
    pub ready: bool,
    /// Spelt as Kubernetes does (`podIP`, not camelCase's `podIp`).
    #[serde(rename = "podIP")]
    pub pod_ip: Option<String>,
    #[serde(rename = "hostIP")]
    pub host_ip: Option<String>,
    /// When the pod was accepted (RFC 3339).
    pub start_time: Option<String>,
    /// Why the pod as a whole is not running (a sandbox that failed).
    pub message: Option<String>,
    pub containers: Vec<ContainerStatus>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerStatus {
    pub name: String,
    pub image: String,
    pub state: ContainerState,
    /// The previous run's end, once the container has ended at least once
    /// and is waiting or running again.
    pub last_state: Option<ContainerState>,
    pub ready: bool,
    /// The startup probe passed (or there is none) and it is running.
    pub started: bool,
    pub restart_count: u32,
    /// A termination not yet followed by a new run: the next run counts as
    /// a restart. Not part of the file.
    #[serde(skip)]
    ended: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ContainerState {
    #[serde(rename_all = "camelCase")]
    Waiting { reason: WaitingReason, message: Option<String> },
    #[serde(rename_all = "camelCase")]
    Running { started_at: String },
    #[serde(rename_all = "camelCase")]
    Terminated {
        /// 128 + the signal for a container killed by one, as runtimes
        /// report it.
        exit_code: i32,
        signal: Option<i32>,
        reason: TerminatedReason,
        message: Option<String>,
        started_at: Option<String>,
        finished_at: String,
    },
}

/// The kubelet's reasons, spelled as `kubectl` shows them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum WaitingReason {
    /// Sandbox, mounts and cgroup being set up.
    ContainerCreating,
    /// Waiting out the restart back-off.
    CrashLoopBackOff,
    /// The image is not in the local store, and Kelson pulls nothing.
    ErrImageNeverPull,
    /// The spec could not be turned into a container (a hostPath check
    /// failed, an env reference is missing).
    CreateContainerConfigError,
    /// The runtime refused to create or start it.
    CreateContainerError,
    RunContainerError,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TerminatedReason {
    Completed,
    Error,
    #[serde(rename = "OOMKilled")]
    OomKilled,
}

/// Why a container ended: the memory cgroup's OOM kill wins over the exit
/// status it caused (SIGKILL), then exit 0 is Completed.
pub fn terminated_reason(exit: Exit, oom_killed: bool) -> TerminatedReason {
    if oom_killed {
        TerminatedReason::OomKilled
    } else if exit.success() {
        TerminatedReason::Completed
    } else {
        TerminatedReason::Error
    }
}

impl ContainerState {
    pub fn waiting(reason: WaitingReason) -> Self {
        ContainerState::Waiting { reason, message: None }
    }

    fn is_terminated(&self) -> bool {
        matches!(self, ContainerState::Terminated { .. })
    }
}

impl ContainerStatus {
    fn new(name: &str, image: &str) -> Self {
        ContainerStatus {
            name: name.to_owned(),
            image: image.to_owned(),
            state: ContainerState::waiting(WaitingReason::ContainerCreating),
            last_state: None,
            ready: false,
            started: false,
            restart_count: 0,
            ended: false,
        }
    }

    /// Waiting (creating, backing off, or failing to start). A termination
    /// shown until now becomes the last state.
    pub fn set_waiting(&mut self, reason: WaitingReason, message: Option<String>) {
        self.retire_termination();
        self.state = ContainerState::Waiting { reason, message };
        self.ready = false;
        self.started = false;
    }

    /// Running since `at`; the first run after an end is a restart.
    pub fn set_running(&mut self, at: SystemTime) {
        self.retire_termination();
        if std::mem::take(&mut self.ended) {
            self.restart_count = self.restart_count.saturating_add(1);
        }
        self.state = ContainerState::Running { started_at: rfc3339(at) };
        self.ready = false;
        self.started = false;
    }

    /// Ended with `exit` at `finished` (`oom_killed` from the cgroup's
    /// `memory.events`).
    pub fn set_terminated(&mut self, exit: Exit, oom_killed: bool, finished: SystemTime, message: Option<String>) {
        let started_at = match &self.state {
            ContainerState::Running { started_at } => Some(started_at.clone()),
            _ => None,
        };
        let (exit_code, signal) = match exit {
            Exit::Code(code) => (code, None),
            Exit::Signal(sig) => (128 + sig, Some(sig)),
        };
        self.state = ContainerState::Terminated {
            exit_code,
            signal,
            reason: terminated_reason(exit, oom_killed),
            message,
            started_at,
            finished_at: rfc3339(finished),
        };
        self.ended = true;
        self.ready = false;
        self.started = false;
    }

    /// Readiness (from the readiness probe, or true once started without
    /// one); only a running container can be ready or started.
    pub fn set_probed(&mut self, started: bool, ready: bool) {
        let running = matches!(self.state, ContainerState::Running { .. });
        self.started = running && started;
        self.ready = running && started && ready;
    }

    fn retire_termination(&mut self) {
        if self.state.is_terminated() {
            let ended = std::mem::replace(&mut self.state, ContainerState::waiting(WaitingReason::ContainerCreating));
            self.last_state = Some(ended);
        }
    }
}

impl PodStatus {
    /// A pod just accepted: pending, every container being created.
    pub fn new(spec: &PodSpec, host_ip: Option<String>, now: SystemTime) -> Self {
        PodStatus {
            namespace: spec.namespace.clone(),
            name: spec.name.clone(),
            uid: spec.uid.clone(),
            manifest: spec.manifest.clone(),
            phase: PodPhase::Pending,
            ready: false,
            // With the host's network the pod's IP is the host's.
            pod_ip: if spec.host_network { host_ip.clone() } else { None },
            host_ip,
            start_time: Some(rfc3339(now)),
            message: None,
            containers: spec.containers.iter().map(|c| ContainerStatus::new(&c.name, &c.image)).collect(),
        }
    }

    pub fn container_mut(&mut self, name: &str) -> Option<&mut ContainerStatus> {
        self.containers.iter_mut().find(|c| c.name == name)
    }

    /// Recomputes the phase and readiness from the containers.
    pub fn update_phase(&mut self, policy: RestartPolicy) {
        self.phase = pod_phase(policy, &self.containers);
        self.ready = self.phase == PodPhase::Running && self.containers.iter().all(|c| c.ready);
    }

    /// `<namespace>_<name>.json` under `dir`.
    pub fn file(&self, dir: &Path) -> PathBuf {
        status_file(dir, &self.namespace, &self.name)
    }

    /// Writes the status file atomically; returns its path.
    pub fn write(&self, dir: &Path) -> Result<PathBuf, StatusError> {
        let path = self.file(dir);
        let mut json =
            serde_json::to_vec_pretty(self).map_err(|source| StatusError::Serialize { path: path.clone(), source })?;
        json.push(b'\n');
        write_atomic(&path, &json, 0o644).map_err(|source| StatusError::Write { path: path.clone(), source })?;
        Ok(path)
    }
}

pub fn status_file(dir: &Path, namespace: &str, name: &str) -> PathBuf {
    dir.join(format!("{namespace}_{name}.json"))
}

/// Removes a stopped pod's status file; one already gone is fine.
pub fn remove_status(dir: &Path, namespace: &str, name: &str) -> Result<(), StatusError> {
    let path = status_file(dir, namespace, name);
    match std::fs::remove_file(&path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(StatusError::Remove { path, source: e }),
        _ => Ok(()),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error("serializing pod status for {path}")]
    Serialize {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("writing pod status file {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: AtomicWriteError,
    },
    #[error("removing pod status file {path}")]
    Remove {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The kubelet's phase rules: any container not yet started keeps the pod
/// Pending; one running makes it Running; when all have ended it is
/// Succeeded if all succeeded, Failed if one failed and nothing restarts,
/// and Running while a restart is coming. A container waiting to restart
/// counts as ended.
pub fn pod_phase(policy: RestartPolicy, containers: &[ContainerStatus]) -> PodPhase {
    let (mut waiting, mut running, mut ended, mut succeeded) = (0, 0, 0, 0);
    for c in containers {
        match &c.state {
            ContainerState::Running { .. } => running += 1,
            ContainerState::Terminated { exit_code, .. } => {
                ended += 1;
                if *exit_code == 0 {
                    succeeded += 1;
                }
            }
            ContainerState::Waiting { .. } if c.last_state.is_some() => ended += 1,
            ContainerState::Waiting { .. } => waiting += 1,
        }
    }
    if waiting > 0 || containers.is_empty() {
        PodPhase::Pending
    } else if running > 0 || policy == RestartPolicy::Always {
        // Under Always, containers that all ended are about to restart.
        PodPhase::Running
    } else if ended == succeeded {
        PodPhase::Succeeded
    } else if policy == RestartPolicy::Never {
        PodPhase::Failed
    } else {
        PodPhase::Running
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
    }

    fn container(name: &str) -> ContainerStatus {
        ContainerStatus::new(name, "img:1")
    }

    fn terminated(code: i32) -> ContainerStatus {
        let mut c = container("c");
        c.set_running(at(0));
        c.set_terminated(Exit::Code(code), false, at(1), None);
        c
    }

    #[test]
    fn phases_follow_the_kubelets_rules() {
        let creating = container("a");
        let mut running = container("b");
        running.set_running(at(0));
        let mut backing_off = terminated(1);
        backing_off.set_waiting(WaitingReason::CrashLoopBackOff, None);
        use PodPhase::*;
        use RestartPolicy::*;
        for (policy, containers, phase) in [
            (Always, vec![creating.clone(), running.clone()], Pending),
            (Always, vec![running.clone(), terminated(0)], Running),
            (Always, vec![terminated(0)], Running),
            (Always, vec![backing_off.clone()], Running),
            (OnFailure, vec![terminated(0), terminated(0)], Succeeded),
            (OnFailure, vec![terminated(0), terminated(1)], Running),
            (Never, vec![terminated(0), terminated(1)], Failed),
            (Never, vec![terminated(0)], Succeeded),
            (Never, vec![running.clone(), terminated(1)], Running),
        ] {
            assert_eq!(pod_phase(policy, &containers), phase, "{policy:?} {containers:?}");
        }
    }

    #[test]
    fn a_restart_moves_the_termination_to_last_state_and_counts_once() {
        let mut c = container("etcd");
        c.set_running(at(0));
        assert_eq!(c.restart_count, 0, "the first run is not a restart");
        c.set_terminated(Exit::Signal(9), true, at(30), Some("out of memory".to_owned()));
        assert_eq!(
            c.state,
            ContainerState::Terminated {
                exit_code: 137,
                signal: Some(9),
                reason: TerminatedReason::OomKilled,
                message: Some("out of memory".to_owned()),
                started_at: Some("2023-11-14T22:13:20Z".to_owned()),
                finished_at: "2023-11-14T22:13:50Z".to_owned(),
            }
        );
        c.set_waiting(WaitingReason::CrashLoopBackOff, Some("back-off 10s".to_owned()));
        assert!(matches!(c.last_state, Some(ContainerState::Terminated { exit_code: 137, .. })));
        c.set_running(at(40));
        c.set_terminated(Exit::Code(2), false, at(41), None);
        c.set_running(at(60));
        assert_eq!(c.restart_count, 2);
        assert!(matches!(
            c.last_state,
            Some(ContainerState::Terminated { exit_code: 2, reason: TerminatedReason::Error, .. })
        ));
        c.set_probed(true, true);
        assert!(c.ready && c.started);
        c.set_waiting(WaitingReason::ContainerCreating, None);
        assert!(!c.ready, "only a running container is ready");
    }

    #[test]
    fn termination_reasons_put_oom_first_then_the_exit() {
        for (exit, oom, reason) in [
            (Exit::Code(0), false, TerminatedReason::Completed),
            (Exit::Code(1), false, TerminatedReason::Error),
            (Exit::Signal(15), false, TerminatedReason::Error),
            (Exit::Signal(9), true, TerminatedReason::OomKilled),
            (Exit::Code(0), true, TerminatedReason::OomKilled),
        ] {
            assert_eq!(terminated_reason(exit, oom), reason, "{exit:?} oom={oom}");
        }
    }
}
