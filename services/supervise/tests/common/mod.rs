#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]
//! Helpers for the tests that supervise real processes.

use kelson_supervise::{
    Backoff, LogSettings, RestartMode, RestartPolicy, ServiceSpec, ServiceState, Settings, Snapshot, Supervisor,
    SystemClock, ThreadLauncher, Transition,
};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast;

/// Settings that keep everything under `dir` and poll quickly.
pub fn settings(dir: &Path) -> Settings {
    Settings {
        state_dir: dir.join("state"),
        logs: LogSettings { dir: dir.join("log"), max_file_bytes: 64 * 1024, keep_files: 2, ring_lines: 100 },
        cgroups: None,
        poll_interval: Duration::from_millis(20),
        kill_wait: Duration::from_secs(5),
    }
}

/// Waits (real time, at most `secs`) until `pred` holds for the snapshot.
pub async fn wait_until(sup: &Supervisor, secs: u64, what: &str, pred: impl Fn(&Snapshot) -> bool) -> Snapshot {
    let mut rx = sup.watch();
    let result = tokio::time::timeout(Duration::from_secs(secs), rx.wait_for(|s| pred(s))).await;
    match result {
        Ok(Ok(snapshot)) => snapshot.clone(),
        _ => panic!("timed out after {secs}s waiting for {what}; state: {:#?}", sup.snapshot().services),
    }
}

pub fn state_of(s: &Snapshot, name: &str) -> ServiceState {
    s.services[name].state
}

/// Everything received so far.
pub fn drain(rx: &mut broadcast::Receiver<Transition>) -> Vec<Transition> {
    let mut out = Vec::new();
    while let Ok(t) = rx.try_recv() {
        out.push(t);
    }
    out
}

/// Index of the first transition of `service` into `to`.
pub fn position(log: &[Transition], service: &str, to: ServiceState) -> usize {
    log.iter()
        .position(|t| t.service == service && t.to == to)
        .unwrap_or_else(|| panic!("no transition of {service} to {to} in {log:#?}"))
}

pub fn sh(name: &str, script: &str) -> kelson_supervise::ServiceSpec {
    kelson_supervise::ServiceSpec::new(name, ["sh", "-c", script])
}

/// Children of this process that are zombies, from /proc.
pub fn zombie_children() -> Vec<i32> {
    children().into_iter().filter(|(_, state)| *state == 'Z').map(|(pid, _)| pid).collect()
}

/// (pid, state) of every child of this process, from /proc.
pub fn children() -> Vec<(i32, char)> {
    let me = std::process::id() as i32;
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let Some(close) = stat.rfind(')') else {
            continue;
        };
        let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        let (Some(state), Some(ppid)) = (fields.first(), fields.get(1)) else {
            continue;
        };
        if ppid.parse::<i32>().ok() == Some(me) {
            let pid = stat[..stat.find('(').unwrap()].trim().parse().unwrap();
            out.push((pid, state.chars().next().unwrap()));
        }
    }
    out
}

/// Live (non-zombie) processes whose process group is `pgid`.
pub fn processes_in_group(pgid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let Some(close) = stat.rfind(')') else {
            continue;
        };
        let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        if fields.get(2).and_then(|g| g.parse::<i32>().ok()) == Some(pgid) && fields.first() != Some(&"Z") {
            out.push(stat[..stat.find('(').unwrap()].trim().parse().unwrap());
        }
    }
    out
}

/// A supervisor of `specs` launching real processes on the real clock, not
/// started yet.
pub fn unstarted(specs: Vec<ServiceSpec>, settings: Settings) -> Supervisor {
    Supervisor::new(specs, settings, Arc::new(ThreadLauncher), Arc::new(SystemClock)).unwrap()
}

/// The same, started.
pub fn start(specs: Vec<ServiceSpec>, settings: Settings) -> Supervisor {
    let sup = unstarted(specs, settings);
    sup.start();
    sup
}

/// Always restart, first after `initial_ms`, doubling up to 5 s.
pub fn quick_backoff(initial_ms: u64) -> RestartPolicy {
    RestartPolicy {
        mode: RestartMode::Always,
        backoff: Backoff {
            initial: Duration::from_millis(initial_ms),
            factor: 2,
            cap: Duration::from_secs(5),
            reset_after: Duration::from_secs(60),
        },
    }
}
