//! One service's life, as a task: wait for requirements, start, watch the
//! process and its health, back off and restart, stop when told.

use crate::command;
use crate::control::{allowed, ControlError, ServiceAction};
use crate::health;
use crate::launcher::ExitFuture;
use crate::logs::LogSink;
use crate::spec::{HealthCheck, Requirement, ServiceSpec};
use crate::status::{unix_ms, write_state_file, ServiceState, ServiceStatus, Snapshot, Transition};
use crate::supervisor::Shared;
use kelson_base::restart::{after_exit, AfterExit, BackoffState};
use kelson_base::Exit;
use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

/// How long a failed run's output may take to reach the log after its exit.
const OUTPUT_DRAIN: Duration = Duration::from_millis(200);
/// A failed run's last line, in its reason, is cut after this many characters.
const LAST_OUTPUT_CHARS: usize = 300;

pub(crate) enum Control {
    /// Stop the service for good (shutdown); answer when it is down. The
    /// task ends afterwards.
    Shutdown(oneshot::Sender<()>),
    /// An operator's request, answered with the status once it took effect
    /// (or with why it cannot be done).
    Request(ServiceAction, Reply),
}

pub(crate) type Reply = oneshot::Sender<Result<ServiceStatus, ControlError>>;

/// Who to tell that the service has stopped: `None` when the supervisor
/// was dropped rather than asked to stop.
type Ack = Option<oneshot::Sender<()>>;

/// A control message that ends what the service is doing.
enum Interrupt {
    Shutdown(Ack),
    Stop(Reply),
    Restart(Reply),
}

enum RunEnd {
    Exited { exit: Option<Exit>, ran_for: Duration },
    Stopped { exit: Option<Exit>, interrupt: Interrupt },
}

/// How a stretch of activity (waiting, running, backing off, restarting)
/// ended.
enum Stretch {
    /// Asked to stop; `how` ends the reason `stopped on request…`.
    Interrupted { interrupt: Interrupt, how: String },
    /// Completed, failed or absent: nothing more happens by itself.
    Settled,
}

pub(crate) struct Runner {
    spec: ServiceSpec,
    shared: Arc<Shared>,
    control: mpsc::Receiver<Control>,
    log: Arc<LogSink>,
    status: ServiceStatus,
    backoff: BackoffState,
    started_before: bool,
    state_file_error_reported: bool,
    /// A start request's answer, sent at the first state it leads to
    /// other than `starting`.
    start_reply: Option<Reply>,
}

impl Runner {
    pub fn new(spec: ServiceSpec, shared: Arc<Shared>, control: mpsc::Receiver<Control>, log: Arc<LogSink>) -> Self {
        let status = ServiceStatus::new(&spec.name, shared.clock.wall());
        Runner {
            spec,
            shared,
            control,
            log,
            status,
            backoff: BackoffState::default(),
            started_before: false,
            state_file_error_reported: false,
            start_reply: None,
        }
    }

    pub async fn run(mut self) {
        self.write_status();
        loop {
            if let Stretch::Interrupted { interrupt, how } = self.run_until_stopped_or_settled().await {
                self.status.pid = None;
                self.transition(ServiceState::Stopped, format!("stopped on request{how}"));
                match interrupt {
                    Interrupt::Shutdown(ack) => {
                        if let Some(ack) = ack {
                            let _ = ack.send(());
                        }
                        return;
                    }
                    Interrupt::Stop(reply) => {
                        let _ = reply.send(Ok(self.status.clone()));
                    }
                    Interrupt::Restart(reply) => {
                        self.begin_start(reply);
                        continue;
                    }
                }
            }
            match self.idle().await {
                Some(reply) => self.begin_start(reply),
                None => return,
            }
        }
    }

    /// Waits for requirements, starts, supervises and restarts by the
    /// policy until asked to stop or the service settles.
    async fn run_until_stopped_or_settled(&mut self) -> Stretch {
        loop {
            if let Some(interrupt) = self.wait_for_requirements().await {
                return Stretch::Interrupted { interrupt, how: " before it was started".to_owned() };
            }
            if command::find_program(&self.spec).is_none() {
                let program = self.spec.argv.first().cloned().unwrap_or_default();
                self.transition(ServiceState::Absent, format!("program {program} is not on this node"));
                return Stretch::Settled;
            }
            if self.started_before {
                self.status.restarts += 1;
            }
            self.started_before = true;
            self.transition(ServiceState::Starting, format!("starting {}", self.spec.argv.join(" ")));
            let first_line = self.log.next_seq();
            let (pid, exit, output) = match self.spawn() {
                Ok(started) => started,
                Err(reason) => {
                    let delay = self.backoff.next_delay(&self.spec.restart.backoff, Duration::ZERO);
                    match self.back_off(delay, format!("could not start: {reason}")).await {
                        Some(interrupt) => {
                            return Stretch::Interrupted { interrupt, how: " while backing off".to_owned() }
                        }
                        None => continue,
                    }
                }
            };
            match self.supervise(pid, exit).await {
                RunEnd::Stopped { exit, interrupt } => {
                    self.status.last_exit = exit;
                    let how = exit.map(|e| e.to_string()).unwrap_or_else(|| "exit status unknown".to_owned());
                    return Stretch::Interrupted { interrupt, how: format!(" ({how})") };
                }
                RunEnd::Exited { exit, ran_for } => {
                    self.status.last_exit = exit;
                    self.status.pid = None;
                    let how = exit.map(|e| e.to_string()).unwrap_or_else(|| "ended, exit status lost".to_owned());
                    let mut what = format!("pid {pid} {how} after {}", human(ran_for));
                    // A program that gives up with an error code usually
                    // says why last (a signal says nothing of the kind).
                    if matches!(exit, Some(Exit::Code(code)) if code != 0) {
                        if let Some(line) = self.last_output(output, first_line).await {
                            what.push_str(&format!(" (last output: {line})"));
                        }
                    }
                    match after_exit(&self.spec.restart, exit) {
                        AfterExit::Restart => {
                            let delay = self.backoff.next_delay(&self.spec.restart.backoff, ran_for);
                            if let Some(interrupt) = self.back_off(delay, what).await {
                                return Stretch::Interrupted { interrupt, how: " while backing off".to_owned() };
                            }
                        }
                        AfterExit::Completed => {
                            self.transition(
                                ServiceState::Completed,
                                format!("{what}; done (its restart policy does not restart a success)"),
                            );
                            return Stretch::Settled;
                        }
                        AfterExit::Failed => {
                            self.transition(
                                ServiceState::Failed,
                                format!("{what}; its restart policy does not restart it"),
                            );
                            return Stretch::Settled;
                        }
                    }
                }
            }
        }
    }

    /// A start on request begins with a fresh back-off; its answer waits
    /// for the state the start leads to.
    fn begin_start(&mut self, reply: Reply) {
        self.backoff = BackoffState::default();
        self.start_reply = Some(reply);
    }

    /// Stopped, completed, failed or absent: waits for a start or restart
    /// that fits, refusing the rest. `None` when the task should end
    /// (shutdown, or the supervisor dropped).
    async fn idle(&mut self) -> Option<Reply> {
        loop {
            match self.control.recv().await? {
                Control::Shutdown(ack) => {
                    let _ = ack.send(());
                    return None;
                }
                Control::Request(action, reply) => {
                    if allowed(action, self.status.state) {
                        return Some(reply);
                    }
                    let _ = reply.send(Err(self.conflict(action)));
                }
            }
        }
    }

    /// A control message received while the service is active: `Some` when
    /// it ends the activity; a request that does not fit is refused here.
    fn screen(&mut self, control: Option<Control>) -> Option<Interrupt> {
        match control {
            None => Some(Interrupt::Shutdown(None)),
            Some(Control::Shutdown(ack)) => Some(Interrupt::Shutdown(Some(ack))),
            Some(Control::Request(action, reply)) if !allowed(action, self.status.state) => {
                let _ = reply.send(Err(self.conflict(action)));
                None
            }
            Some(Control::Request(ServiceAction::Stop, reply)) => Some(Interrupt::Stop(reply)),
            Some(Control::Request(ServiceAction::Restart, reply)) => Some(Interrupt::Restart(reply)),
            Some(Control::Request(ServiceAction::Start, reply)) => {
                let _ = reply.send(Err(self.conflict(ServiceAction::Start)));
                None
            }
        }
    }

    fn conflict(&self, action: ServiceAction) -> ControlError {
        ControlError::Conflict { service: self.spec.name.clone(), action, state: self.status.state }
    }

    /// Waits until every requirement holds. `Some` if asked to stop first.
    async fn wait_for_requirements(&mut self) -> Option<Interrupt> {
        if self.spec.requires.is_empty() {
            return None;
        }
        let mut snapshots = self.shared.snapshot.subscribe();
        let polls = self.spec.requires.iter().any(|r| matches!(r, Requirement::PathExists(_)));
        loop {
            let unmet = unmet_requirements(&self.spec.requires, &snapshots.borrow_and_update());
            if unmet.is_empty() {
                return None;
            }
            let blocked = blocking_requirements(&self.spec.requires, &snapshots.borrow());
            let (state, reason) = if blocked.is_empty() {
                (ServiceState::Waiting, format!("waiting for {}", unmet.join(", ")))
            } else {
                (ServiceState::Blocked, format!("cannot start: {}", blocked.join("; ")))
            };
            if self.status.state != state || self.status.reason != reason {
                self.transition(state, reason);
            }
            let poll = self.shared.clock.sleep(self.shared.settings.poll_interval);
            tokio::select! {
                changed = snapshots.changed() => if changed.is_err() { return Some(Interrupt::Shutdown(None)) },
                () = poll, if polls => {}
                control = self.control.recv() => if let Some(interrupt) = self.screen(control) { return Some(interrupt) },
            }
        }
    }

    /// Prepares the cgroup, builds the command and launches it; starts the
    /// output pump, whose task is returned with the pid and exit.
    fn spawn(&mut self) -> Result<(i32, ExitFuture, JoinHandle<()>), String> {
        let procs = match &self.shared.settings.cgroups {
            Some(root) => Some(root.prepare(&self.spec.name, &self.spec.resources).map_err(|e| error_chain(&e))?),
            None => None,
        };
        let (cmd, output) =
            command::build(&self.spec, procs.as_deref()).map_err(|e| format!("preparing the command: {e}"))?;
        let program = self.spec.argv.first().cloned().unwrap_or_default();
        let launched = self.shared.launcher.spawn(cmd).map_err(|e| format!("spawning {program}: {e}"))?;
        let pump = tokio::spawn(self.log.clone().pump(output));
        if let Some(wanted) = self.spec.resources.oom_score_adj {
            let path = format!("/proc/{}/oom_score_adj", launched.pid);
            let actual = std::fs::read_to_string(&path).ok().and_then(|s| s.trim().parse::<i32>().ok());
            if actual.is_some_and(|a| a != wanted.clamp(-1000, 1000)) {
                tracing::warn!(service = %self.spec.name, pid = launched.pid, wanted, actual = ?actual,
                    "OOM score not applied (lowering it needs CAP_SYS_RESOURCE)");
            }
        }
        Ok((launched.pid, launched.exit, pump))
    }

    /// The last line the run that began at log line `first_line` printed,
    /// once its output has reached the log: the pump ends at end-of-file,
    /// which comes right after the exit unless a child the service left
    /// behind still holds the pipe, so it gets [`OUTPUT_DRAIN`] at most.
    async fn last_output(&self, pump: JoinHandle<()>, first_line: u64) -> Option<String> {
        // Real time, not the clock: this bounds the kernel handing over
        // bytes already written, it schedules nothing, and a fake clock
        // nobody moves would hold the runner here.
        let _ = tokio::time::timeout(OUTPUT_DRAIN, pump).await;
        let line = self.log.last_line_since(first_line)?;
        Some(match line.char_indices().nth(LAST_OUTPUT_CHARS) {
            Some((cut, _)) => format!("{}…", &line[..cut]),
            None => line,
        })
    }

    /// Watches one run until the process exits or a stop is requested.
    async fn supervise(&mut self, pid: i32, mut exit: ExitFuture) -> RunEnd {
        let started = self.shared.clock.now();
        self.status.pid = Some(pid);
        self.transition(ServiceState::Running, format!("started as pid {pid}"));
        let (health_tx, mut health_rx) = mpsc::channel(4);
        let _health = match &self.spec.health {
            Some(check) => Some(AbortOnDrop(tokio::spawn(health_loop(check.clone(), self.shared.clone(), health_tx)))),
            None => {
                self.transition(ServiceState::Healthy, format!("started as pid {pid}; no health check"));
                None
            }
        };
        let threshold = self.spec.health.as_ref().map(|h| h.failure_threshold.max(1)).unwrap_or(1);
        let mut failures = 0;
        loop {
            tokio::select! {
                result = &mut exit => {
                    return RunEnd::Exited { exit: result, ran_for: self.shared.clock.now().saturating_duration_since(started) };
                }
                Some(result) = health_rx.recv() => self.on_health(pid, result, &mut failures, threshold),
                control = self.control.recv() => {
                    if let Some(interrupt) = self.screen(control) {
                        let exit = self.stop_process(pid, &mut exit).await;
                        return RunEnd::Stopped { exit, interrupt };
                    }
                }
            }
        }
    }

    fn on_health(&mut self, pid: i32, result: Result<String, String>, failures: &mut u32, threshold: u32) {
        match (self.status.state, result) {
            (ServiceState::Running, Ok(seen)) => {
                *failures = 0;
                self.transition(ServiceState::Healthy, seen);
            }
            (ServiceState::Running, Err(why)) => {
                let reason = format!("pid {pid} not healthy yet: {why}");
                if self.status.reason != reason {
                    self.status.reason = reason;
                    self.publish_without_transition();
                }
            }
            (ServiceState::Healthy, Ok(_)) => *failures = 0,
            (ServiceState::Healthy, Err(why)) => {
                *failures += 1;
                if *failures >= threshold {
                    self.transition(
                        ServiceState::Running,
                        format!("unhealthy after {failures} failed checks in a row; last: {why}"),
                    );
                }
            }
            _ => {}
        }
    }

    /// The stop signal, then SIGKILL to the process group after the grace
    /// period. Returns the exit.
    async fn stop_process(&mut self, pid: i32, exit: &mut ExitFuture) -> Option<Exit> {
        let stop = self.spec.stop;
        let _ = kill(Pid::from_raw(pid), stop.signal);
        let grace = self.shared.clock.sleep(stop.grace);
        tokio::select! {
            result = &mut *exit => return result,
            () = grace => {}
        }
        tracing::warn!(service = %self.spec.name, pid, grace = ?stop.grace, "did not stop within its grace period; sending SIGKILL");
        // The service leads its own process group (setsid before exec).
        let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        let wait = self.shared.clock.sleep(self.shared.settings.kill_wait);
        tokio::select! {
            result = exit => result,
            () = wait => {
                tracing::error!(service = %self.spec.name, pid, "no exit reported after SIGKILL");
                None
            }
        }
    }

    /// Records the back-off, then waits it out. `Some` if asked to stop.
    async fn back_off(&mut self, delay: Duration, what: String) -> Option<Interrupt> {
        self.status.backoff_ms = Some(delay.as_millis() as u64);
        self.transition(ServiceState::BackingOff, format!("{what}; restarting in {}", human(delay)));
        let mut sleep = self.shared.clock.sleep(delay);
        let interrupted = loop {
            tokio::select! {
                () = &mut sleep => break None,
                control = self.control.recv() => if let Some(interrupt) = self.screen(control) { break Some(interrupt) },
            }
        };
        self.status.backoff_ms = None;
        interrupted
    }

    fn transition(&mut self, to: ServiceState, reason: String) {
        let from = self.status.state;
        let at = self.shared.clock.wall();
        self.status.state = to;
        self.status.reason = reason;
        self.status.since_unix_ms = unix_ms(at);
        tracing::info!(service = %self.spec.name, from = %from, to = %to, reason = %self.status.reason, restarts = self.status.restarts, "service state");
        // The transition goes out before the snapshot changes, so whoever
        // wakes on the snapshot finds the transition already sent.
        let _ = self.shared.transitions.send(Transition {
            service: self.spec.name.clone(),
            from,
            to,
            reason: self.status.reason.clone(),
            restarts: self.status.restarts,
            at_unix_ms: unix_ms(at),
        });
        self.publish_without_transition();
        // Without a health check, `running` is followed at once by `healthy`:
        // the answer waits for that.
        let passing = to == ServiceState::Starting || (to == ServiceState::Running && self.spec.health.is_none());
        if !passing {
            if let Some(reply) = self.start_reply.take() {
                let _ = reply.send(Ok(self.status.clone()));
            }
        }
    }

    /// Writes the state file and updates the snapshot.
    fn publish_without_transition(&mut self) {
        self.write_status();
        let status = self.status.clone();
        self.shared.snapshot.send_modify(|s| {
            s.services.insert(status.name.clone(), status);
        });
    }

    fn write_status(&mut self) {
        match write_state_file(&self.shared.settings.state_dir, &self.status) {
            Ok(()) => self.state_file_error_reported = false,
            // Reported once per run of failures: /run full or read-only
            // should not flood the console on every health check.
            Err(e) if !self.state_file_error_reported => {
                self.state_file_error_reported = true;
                tracing::warn!(service = %self.spec.name, error = %error_chain(&e), "state file not written");
            }
            Err(_) => {}
        }
    }
}

/// What keeps a service waiting, in words; empty when it may start.
pub(crate) fn unmet_requirements(requires: &[Requirement], snapshot: &Snapshot) -> Vec<String> {
    requires
        .iter()
        .filter_map(|r| match r {
            Requirement::Healthy(dep) => match snapshot.services.get(dep).map(|s| s.state) {
                Some(ServiceState::Healthy) => None,
                Some(state) => Some(format!("service {dep} to be healthy (it is {state})")),
                None => Some(format!("service {dep} to be healthy (no such service)")),
            },
            Requirement::Completed(dep) => match snapshot.services.get(dep).map(|s| s.state) {
                Some(ServiceState::Completed) => None,
                Some(state) => Some(format!("service {dep} to complete (it is {state})")),
                None => Some(format!("service {dep} to complete (no such service)")),
            },
            Requirement::PathExists(path) => (!path.exists()).then(|| format!("{} to exist", path.display())),
            Requirement::Condition(name) => (!snapshot.conditions.contains(name)).then(|| format!("condition {name}")),
        })
        .collect()
}

/// The requirements that can no longer be met, in words: a service needed
/// is absent, failed or blocked, or a condition was declared unreachable.
pub(crate) fn blocking_requirements(requires: &[Requirement], snapshot: &Snapshot) -> Vec<String> {
    requires
        .iter()
        .filter_map(|r| match r {
            Requirement::Healthy(dep) | Requirement::Completed(dep) => {
                let status = snapshot.services.get(dep)?;
                matches!(status.state, ServiceState::Absent | ServiceState::Failed | ServiceState::Blocked)
                    .then(|| format!("service {dep} is {} ({})", status.state, status.reason))
            }
            Requirement::Condition(name) => {
                snapshot.unreachable.get(name).map(|why| format!("condition {name} is not set ({why})"))
            }
            Requirement::PathExists(_) => None,
        })
        .collect()
}

/// Checks forever, sending each result; the runner decides what it means.
async fn health_loop(check: HealthCheck, shared: Arc<Shared>, results: mpsc::Sender<Result<String, String>>) {
    let mut passed_once = false;
    loop {
        let result = health::check(&check.probe, check.timeout, shared.clock.as_ref(), shared.launcher.as_ref()).await;
        passed_once |= result.is_ok();
        if results.send(result).await.is_err() {
            return;
        }
        let interval = if passed_once { check.interval } else { check.startup_interval };
        shared.clock.sleep(interval).await;
    }
}

/// Aborts the health-check task when a run ends, however it ends.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

pub(crate) use kelson_base::error_chain;

/// `1.5s`, `250ms`, `2m0s`: short and exact enough for reasons.
fn human(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{}ms", d.as_millis())
    } else if d < Duration::from_secs(60) {
        if d.subsec_millis() == 0 {
            format!("{}s", d.as_secs())
        } else {
            format!("{:.1}s", d.as_secs_f64())
        }
    } else {
        format!("{}m{}s", d.as_secs() / 60, d.as_secs() % 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{BTreeMap, BTreeSet};
    use std::time::SystemTime;

    #[test]
    fn waiting_reasons_name_each_unmet_requirement() {
        let mut services = BTreeMap::new();
        let mut containerd = ServiceStatus::new("containerd", SystemTime::UNIX_EPOCH);
        containerd.state = ServiceState::BackingOff;
        services.insert("containerd".to_owned(), containerd);
        let mut import = ServiceStatus::new("sandbox-image", SystemTime::UNIX_EPOCH);
        import.state = ServiceState::Healthy;
        services.insert("sandbox-image".to_owned(), import);
        let mut snapshot = Snapshot { services, conditions: BTreeSet::new(), unreachable: BTreeMap::new() };
        let requires = vec![
            Requirement::Healthy("containerd".into()),
            Requirement::Completed("sandbox-image".into()),
            Requirement::Condition("network-ready".into()),
            Requirement::PathExists("/nonexistent/kelson".into()),
            Requirement::PathExists("/".into()),
        ];
        assert_eq!(
            unmet_requirements(&requires, &snapshot),
            [
                "service containerd to be healthy (it is backing-off)",
                "service sandbox-image to complete (it is healthy)",
                "condition network-ready",
                "/nonexistent/kelson to exist"
            ]
        );
        snapshot.conditions.insert("network-ready".into());
        snapshot.services.get_mut("containerd").unwrap().state = ServiceState::Healthy;
        snapshot.services.get_mut("sandbox-image").unwrap().state = ServiceState::Completed;
        assert_eq!(unmet_requirements(&requires, &snapshot), ["/nonexistent/kelson to exist"]);
    }

    #[test]
    fn blocking_requirements_name_what_can_no_longer_be_met() {
        let mut services = BTreeMap::new();
        for (name, state, reason) in [
            ("kubelet", ServiceState::Absent, "program /usr/bin/kubelet is not on this node"),
            ("import", ServiceState::Failed, "pid 7 exited with code 1"),
            ("containerd", ServiceState::BackingOff, "restarting in 1s"),
        ] {
            let mut status = ServiceStatus::new(name, SystemTime::UNIX_EPOCH);
            status.state = state;
            status.reason = reason.to_owned();
            services.insert(name.to_owned(), status);
        }
        let unreachable = BTreeMap::from([("network-ready".to_owned(), "the network stage failed".to_owned())]);
        let snapshot = Snapshot { services, conditions: BTreeSet::new(), unreachable };
        let requires = vec![
            Requirement::Healthy("kubelet".into()),
            Requirement::Completed("import".into()),
            Requirement::Healthy("containerd".into()),
            Requirement::Condition("network-ready".into()),
            Requirement::Condition("other".into()),
        ];
        assert_eq!(
            blocking_requirements(&requires, &snapshot),
            [
                "service kubelet is absent (program /usr/bin/kubelet is not on this node)",
                "service import is failed (pid 7 exited with code 1)",
                "condition network-ready is not set (the network stage failed)",
            ]
        );
    }

    #[test]
    fn durations_read_short() {
        assert_eq!(human(Duration::from_millis(250)), "250ms");
        assert_eq!(human(Duration::from_secs(4)), "4s");
        assert_eq!(human(Duration::from_millis(1500)), "1.5s");
        assert_eq!(human(Duration::from_secs(125)), "2m5s");
    }
}
