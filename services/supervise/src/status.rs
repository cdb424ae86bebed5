//! A service's state as the rest of the node sees it: in memory (a
//! `watch` snapshot and a stream of transitions) and as one JSON file per
//! service under the state directory.

use kelson_base::Exit;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ServiceState {
    /// Requirements not met yet.
    Waiting,
    /// Being spawned.
    Starting,
    /// The process is alive but not (or no longer) healthy.
    Running,
    Healthy,
    /// Exited (or could not be started); waiting out the back-off delay.
    BackingOff,
    /// Not running and not coming back by itself: stopped on request (at
    /// shutdown, or by [`crate::Supervisor::control`] until started again).
    Stopped,
    /// Exited 0 under a policy that does not restart that: a one-shot that
    /// did its job. What [`crate::Requirement::Completed`] waits for.
    Completed,
    /// Failed under a policy that does not restart.
    Failed,
    /// Its program does not exist on this node.
    Absent,
    /// Waiting for a requirement that can no longer be met: a service it
    /// needs is absent, failed or blocked itself, or a condition it needs
    /// was declared unreachable. Its reason says which.
    Blocked,
}

impl ServiceState {
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceState::Waiting => "waiting",
            ServiceState::Starting => "starting",
            ServiceState::Running => "running",
            ServiceState::Healthy => "healthy",
            ServiceState::BackingOff => "backing-off",
            ServiceState::Stopped => "stopped",
            ServiceState::Completed => "completed",
            ServiceState::Failed => "failed",
            ServiceState::Absent => "absent",
            ServiceState::Blocked => "blocked",
        }
    }
}

impl std::fmt::Display for ServiceState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One service's state file (and its entry in the snapshot).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceStatus {
    pub name: String,
    pub state: ServiceState,
    /// Why the last transition happened, in words.
    pub reason: String,
    /// When the service entered `state`, milliseconds since the Unix epoch.
    pub since_unix_ms: u64,
    /// Starts after the first one.
    pub restarts: u32,
    pub pid: Option<i32>,
    pub last_exit: Option<Exit>,
    /// The delay being waited out, while `backing-off`.
    pub backoff_ms: Option<u64>,
}

impl ServiceStatus {
    pub fn new(name: &str, now: SystemTime) -> Self {
        ServiceStatus {
            name: name.to_owned(),
            state: ServiceState::Waiting,
            reason: "not started yet".to_owned(),
            since_unix_ms: unix_ms(now),
            restarts: 0,
            pid: None,
            last_exit: None,
            backoff_ms: None,
        }
    }
}

pub(crate) fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// One state change, as broadcast to subscribers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Transition {
    pub service: String,
    pub from: ServiceState,
    pub to: ServiceState,
    pub reason: String,
    pub restarts: u32,
    pub at_unix_ms: u64,
}

/// Every service's state and the conditions set so far.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub services: BTreeMap<String, ServiceStatus>,
    pub conditions: BTreeSet<String>,
    /// Conditions that will not be set, and why (the stage that sets it
    /// failed): what waits for one is `blocked`.
    pub unreachable: BTreeMap<String, String>,
}

#[derive(Debug, thiserror::Error)]
pub enum StateFileError {
    #[error("creating state directory {dir}")]
    CreateDir {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("writing state file for service {service}")]
    Write {
        service: String,
        #[source]
        source: kelson_base::atomic::AtomicWriteError,
    },
}

/// Writes `<dir>/<name>.json` atomically (temp file, fsync, rename).
pub fn write_state_file(dir: &Path, status: &ServiceStatus) -> Result<(), StateFileError> {
    std::fs::create_dir_all(dir).map_err(|source| StateFileError::CreateDir { dir: dir.to_owned(), source })?;
    let mut json = serde_json::to_vec_pretty(status).unwrap_or_default();
    json.push(b'\n');
    kelson_base::atomic::write_atomic(&dir.join(format!("{}.json", status.name)), &json, 0o644)
        .map_err(|source| StateFileError::Write { service: status.name.clone(), source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_state_file_uses_camel_case_keys_and_kebab_case_states() {
        let dir = tempfile::tempdir().unwrap();
        let mut status = ServiceStatus::new("kubelet", UNIX_EPOCH + std::time::Duration::from_secs(2));
        status.state = ServiceState::BackingOff;
        status.last_exit = Some(Exit::Signal(9));
        status.backoff_ms = Some(4000);
        status.restarts = 2;
        write_state_file(dir.path(), &status).unwrap();
        let v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.path().join("kubelet.json")).unwrap()).unwrap();
        assert_eq!(v["name"], "kubelet");
        assert_eq!(v["state"], "backing-off");
        assert_eq!(v["sinceUnixMs"], 2000);
        assert_eq!(v["restarts"], 2);
        assert_eq!(v["lastExit"]["signal"], 9);
        assert_eq!(v["backoffMs"], 4000);
        assert!(v["pid"].is_null());
    }

    #[test]
    fn a_completed_one_shot_reads_completed_not_stopped_or_failed() {
        assert_eq!(ServiceState::Completed.to_string(), "completed");
        assert_eq!(serde_json::to_value(ServiceState::Completed).unwrap(), "completed");
        let back: ServiceState = serde_json::from_str("\"completed\"").unwrap();
        assert_eq!(back, ServiceState::Completed);
    }
}
