//! The boot sequence: the table of stages, and the runner that walks it.
//!
//! Each stage is one file under [`crate::stages`] and one row in
//! [`STAGES`]. A stage reads what earlier stages decided from the
//! [`BootContext`] (the resolved config, the network plan, the node's
//! identity) and adds what it decides. Each runs in turn with its
//! CLOCK_BOOTTIME start and duration logged and published in the node
//! status; a panic inside a stage is caught and treated as that stage
//! failing. A failed *critical* stage stops the sequence and leaves the node
//! in maintenance (PID 1 keeps reaping and answering the power button); a
//! failed non-critical stage is logged and boot goes on.
//!
//! A stage that leaves something running (the network's DHCP clients, the
//! pod manager, the supervisor) returns a [`Running`] handle. The runner
//! keeps the handles in start order in [`RunningStages`]; at shutdown PID 1
//! stops them last-started first, so the order follows the table.

use crate::cmdline::Cmdline;
use crate::kernel::Kernel;
use crate::log::LogOutputs;
use crate::reaper::Reaper;
use crate::stages;
use crate::status::{Condition, Phase, StageState, StageStatus, StatusPublisher};
use crate::{clock, identity};
use std::error::Error;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use tracing::{info, warn};

pub type StageError = Box<dyn Error + Send + Sync>;

/// Renders an error and its sources as one line: `a: b: c`.
pub use kelson_base::error_chain as chain;

/// The node's identity, as the identity stage set it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub machine_id: identity::MachineId,
    pub hostname: String,
}

/// What stages share: the kernel (a trait object, so stages run against a
/// fake), the reaper that starts every child, and the typed results of the
/// stages so far.
pub struct BootContext<'a> {
    pub kernel: &'a dyn Kernel,
    pub cmdline: Cmdline,
    pub reaper: Arc<Reaper>,
    /// Where the kernel's modules live (`/usr/lib/modules/$(uname -r)`).
    pub module_dir: PathBuf,
    pub status: StatusPublisher,
    /// PID 1's log outputs, opened by the stages that make them usable.
    pub log: LogOutputs,
    /// The accepted machine config, once the config stage has run.
    pub config: Option<kelson_config::Effective>,
    /// The config's network section as kelson-net plans it; set with the
    /// config (a network section that does not plan is a config error).
    pub net_plan: Option<kelson_net::NetPlan>,
    /// Set by the identity stage.
    pub identity: Option<Identity>,
    /// The disk the node booted from, when /usr came from a disk image
    /// (set by the usr stage); the state partition lives on it.
    pub boot_disk: Option<PathBuf>,
    /// The Kelson ISO's device, when /usr came from it (a live node; set by
    /// the usr stage); only such a node installs.
    pub live_media: Option<PathBuf>,
    /// The boot entry this boot came from (set by the boot-entry stage on a
    /// disk image booted through systemd-boot).
    pub boot_entry: Option<crate::boot_entry::RunningEntry>,
    /// What the management API reaches; stages add what they start.
    pub handles: crate::management::Handles,
}

impl<'a> BootContext<'a> {
    pub fn new(
        kernel: &'a dyn Kernel,
        reaper: Arc<Reaper>,
        module_dir: PathBuf,
        status: StatusPublisher,
        log: LogOutputs,
    ) -> Self {
        BootContext {
            kernel,
            cmdline: Cmdline::default(),
            reaper,
            module_dir,
            status,
            log,
            config: None,
            net_plan: None,
            identity: None,
            boot_disk: None,
            live_media: None,
            boot_entry: None,
            handles: crate::management::Handles::default(),
        }
    }

    /// The node's name: the identity stage's hostname, else the configured
    /// one, else empty (the identity stage did not run or failed).
    pub fn node_name(&self) -> String {
        self.identity
            .as_ref()
            .map(|i| i.hostname.clone())
            .or_else(|| self.config.as_ref().and_then(|c| c.config.node.hostname.clone()))
            .unwrap_or_default()
    }
}

pub type ShutdownFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Something a stage left running, stopped at shutdown.
pub trait Running: Send {
    /// Stops it, bounded by its own limit.
    fn shutdown(self: Box<Self>) -> ShutdownFuture;
}

/// How a stage that did not fail outright ended.
pub enum Done {
    Finished,
    /// It left this running.
    Running(Box<dyn Running>),
    /// It left this running, but part of its work failed: for the runner
    /// that is the stage failing, and the handle is still kept.
    Degraded {
        running: Box<dyn Running>,
        error: StageError,
    },
}

pub struct Stage {
    pub name: &'static str,
    pub critical: bool,
    /// Conditions this stage is to set. One it leaves pending when it ends
    /// (it failed, panicked or had nothing to do) is declared unreachable,
    /// so whatever waits for it is blocked, saying why, instead of waiting
    /// for ever.
    pub provides: &'static [&'static str],
    pub run: fn(&mut BootContext<'_>) -> Result<Done, StageError>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Ready,
    Maintenance { stage: &'static str, error: String },
}

/// The handles of the stages that left something running, in start order.
/// Shared between the boot thread, which adds to it, and PID 1's main loop,
/// which shuts them down.
#[derive(Clone, Default)]
pub struct RunningStages(Arc<Mutex<Vec<StageHandle>>>);

/// A stage's name and what it left running.
type StageHandle = (&'static str, Box<dyn Running>);

impl RunningStages {
    /// Keeps `handle` to be stopped at shutdown, after everything pushed
    /// later.
    pub fn push(&self, stage: &'static str, handle: Box<dyn Running>) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).push((stage, handle));
    }

    /// Stops every handle, last started first. A stage still booting when
    /// this runs adds nothing more: its handle is taken by the next call.
    pub async fn shutdown(&self) {
        loop {
            let next = self.0.lock().unwrap_or_else(|e| e.into_inner()).pop();
            let Some((stage, handle)) = next else { return };
            info!(stage, "stopping what the stage started");
            handle.shutdown().await;
        }
    }

    /// The stages holding a handle, in start order.
    pub fn stages(&self) -> Vec<&'static str> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).iter().map(|(name, _)| *name).collect()
    }
}

fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic payload".into())
}

/// Runs `stages` in order, keeping what they leave running in `running`,
/// and says how boot ended.
pub fn run_stages(ctx: &mut BootContext<'_>, stages: &[Stage], running: &RunningStages) -> Outcome {
    for stage in stages {
        // Test knob: make one stage panic, to prove a panic never takes
        // PID 1 down. Looked up per stage: the command line is only read
        // once /proc is mounted.
        let panic_stage = ctx.cmdline.get("kelson.test.panic_stage").map(str::to_owned);
        let started = clock::boottime();
        info!(stage = stage.name, "stage start");
        ctx.status.update(|s| {
            s.stages.push(StageStatus {
                name: stage.name,
                state: StageState::Running,
                started_ms: started.as_millis() as u64,
                elapsed_ms: None,
                error: None,
            })
        });
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            if panic_stage.as_deref() == Some(stage.name) {
                panic!("induced by kelson.test.panic_stage={}", stage.name);
            }
            (stage.run)(ctx)
        }));
        let elapsed_ms = (clock::boottime().saturating_sub(started)).as_millis() as u64;
        let error = match result {
            Ok(Ok(done)) => {
                let failed = match done {
                    Done::Finished => None,
                    Done::Running(handle) => {
                        running.push(stage.name, handle);
                        None
                    }
                    Done::Degraded { running: handle, error } => {
                        running.push(stage.name, handle);
                        Some(chain(error.as_ref()))
                    }
                };
                let Some(error) = failed else {
                    info!(stage = stage.name, elapsed_ms, "stage done");
                    finish(ctx, stage, elapsed_ms, StageState::Done, None);
                    continue;
                };
                error
            }
            Ok(Err(e)) => chain(e.as_ref()),
            Err(payload) => format!("panicked: {}", panic_text(payload.as_ref())),
        };
        let state = if stage.critical { StageState::Failed } else { StageState::Degraded };
        finish(ctx, stage, elapsed_ms, state, Some(error.clone()));
        if stage.critical {
            warn!(stage = stage.name, elapsed_ms, error = error.as_str(), "stage failed");
            return Outcome::Maintenance { stage: stage.name, error };
        }
        warn!(stage = stage.name, elapsed_ms, error = error.as_str(), "stage degraded, boot continues");
    }
    Outcome::Ready
}

/// Records how a stage ended, and declares the conditions it was to set
/// but left pending unreachable, saying why: its error, if it had one.
fn finish(ctx: &BootContext<'_>, stage: &Stage, elapsed_ms: u64, state: StageState, error: Option<String>) {
    let why = error.clone().unwrap_or_else(|| "it ended without setting it".to_owned());
    ctx.status.update(|s| {
        if let Some(entry) = s.stages.iter_mut().rev().find(|e| e.name == stage.name) {
            entry.state = state;
            entry.elapsed_ms = Some(elapsed_ms);
            entry.error = error;
        }
        for condition in stage.provides {
            if matches!(s.condition(condition), Condition::Pending) {
                let reason = format!("the {} stage did not set it: {why}", stage.name);
                s.conditions.insert(condition, Condition::Unreachable(reason));
            }
        }
    });
}

/// Announces how boot ended in the node status.
pub fn publish_outcome(status: &StatusPublisher, outcome: &Outcome) {
    let phase = match outcome {
        Outcome::Ready => Phase::Ready,
        Outcome::Maintenance { stage, error } => Phase::Maintenance { stage, reason: error.clone() },
    };
    status.update(|s| s.phase = phase);
}

/// How many of `stages` there are up to and including the one named `name`
/// (all of them if there is none by that name).
pub fn stages_through(stages: &[Stage], name: &str) -> usize {
    stages.iter().position(|s| s.name == name).map_or(stages.len(), |i| i + 1)
}

/// The node's boot sequence, in order.
pub const STAGES: &[Stage] = &[
    Stage { name: "mounts", critical: true, provides: &[], run: stages::mounts::run },
    Stage { name: "kernel-log", critical: false, provides: &[], run: stages::kernel_log::run },
    Stage { name: "cmdline", critical: true, provides: &[], run: stages::cmdline::run },
    Stage { name: "usr", critical: true, provides: &[], run: stages::usr::run },
    Stage { name: "cgroups", critical: true, provides: &[], run: stages::cgroups::run },
    Stage { name: "modules", critical: false, provides: &[], run: stages::modules::run },
    Stage { name: "sysctls", critical: false, provides: &[], run: stages::sysctls::run },
    Stage { name: "state", critical: true, provides: &[], run: stages::state::run },
    Stage { name: "boot-entry", critical: false, provides: &[], run: stages::boot_entry::run },
    Stage { name: "config", critical: true, provides: &[], run: stages::config::run },
    // Only a live node (booted from the ISO) with install.disk set acts.
    Stage { name: "install", critical: true, provides: &[], run: stages::install::run },
    Stage { name: "identity", critical: false, provides: &[], run: stages::identity::run },
    Stage { name: "apply-config", critical: false, provides: &[], run: stages::apply_config::run },
    // The network before the services, as the design's boot order has it:
    // the kubelet waits for the network anyway, containerd finds the CNI
    // config already written, and the network stage does not share the CPU
    // with containerd's start-up.
    Stage { name: "network", critical: false, provides: &[kelson_supervise::NETWORK_READY], run: stages::network::run },
    // Static pods after the network (sandboxed pods attach to cbr0) and
    // before the services (the kubelet talks to the static apiserver).
    Stage { name: "pods", critical: false, provides: &[], run: stages::pods::run },
    Stage { name: "services", critical: false, provides: &[], run: stages::services::run },
];

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::kernel::fake::FakeKernel;

    pub(crate) fn ctx<'a>(kernel: &'a FakeKernel, cmdline: &str) -> BootContext<'a> {
        let log = LogOutputs::default();
        let mut ctx =
            BootContext::new(kernel, Arc::new(Reaper::new()), PathBuf::from("/m"), StatusPublisher::default(), log);
        ctx.cmdline = Cmdline::parse(cmdline);
        ctx
    }

    fn ok(_: &mut BootContext<'_>) -> Result<Done, StageError> {
        Ok(Done::Finished)
    }
    fn fails(_: &mut BootContext<'_>) -> Result<Done, StageError> {
        Err("disk on fire".into())
    }
    fn marks(ctx: &mut BootContext<'_>) -> Result<Done, StageError> {
        ctx.kernel.set_hostname("reached")?;
        Ok(Done::Finished)
    }
    fn stage(name: &'static str, critical: bool, run: fn(&mut BootContext<'_>) -> Result<Done, StageError>) -> Stage {
        Stage { name, critical, provides: &[], run }
    }

    #[test]
    fn the_stages_split_after_the_named_one() {
        assert_eq!(STAGES[stages_through(STAGES, "modules") - 1].name, "modules");
        assert_eq!(stages_through(STAGES, "no-such-stage"), STAGES.len());
    }

    #[test]
    fn all_stages_passing_means_ready() {
        let k = FakeKernel::default();
        let stages = [stage("a", true, ok), stage("b", false, marks)];
        assert_eq!(run_stages(&mut ctx(&k, ""), &stages, &RunningStages::default()), Outcome::Ready);
        assert_eq!(k.calls(), vec!["hostname reached"]);
    }

    #[test]
    fn a_failed_critical_stage_stops_boot_in_maintenance() {
        let k = FakeKernel::default();
        let stages = [stage("state", true, fails), stage("later", true, marks)];
        let outcome = run_stages(&mut ctx(&k, ""), &stages, &RunningStages::default());
        assert_eq!(outcome, Outcome::Maintenance { stage: "state", error: "disk on fire".into() });
        assert!(k.calls().is_empty(), "stages after the failure must not run");
    }

    #[test]
    fn a_failed_optional_stage_lets_boot_continue() {
        let k = FakeKernel::default();
        let stages = [stage("sysctls", false, fails), stage("later", true, marks)];
        assert_eq!(run_stages(&mut ctx(&k, ""), &stages, &RunningStages::default()), Outcome::Ready);
        assert_eq!(k.calls(), vec!["hostname reached"]);
    }

    #[test]
    fn a_panicking_stage_is_caught_and_means_maintenance() {
        let k = FakeKernel::default();
        let stages = [stage("a", true, ok), stage("b", true, marks)];
        let outcome = run_stages(&mut ctx(&k, "kelson.test.panic_stage=b"), &stages, &RunningStages::default());
        match outcome {
            Outcome::Maintenance { stage: "b", error } => assert!(error.contains("panicked: induced"), "{error}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn stage_states_and_times_are_published() {
        let k = FakeKernel::default();
        let mut ctx = ctx(&k, "");
        let stages = [stage("a", true, ok), stage("b", false, fails), stage("c", true, fails)];
        let outcome = run_stages(&mut ctx, &stages, &RunningStages::default());
        publish_outcome(&ctx.status, &outcome);
        let status = ctx.status.current();
        let states: Vec<_> = status.stages.iter().map(|s| (s.name, s.state)).collect();
        assert_eq!(states, vec![("a", StageState::Done), ("b", StageState::Degraded), ("c", StageState::Failed)]);
        assert!(status.stages.iter().all(|s| s.elapsed_ms.is_some()));
        assert_eq!(status.stage("b").and_then(|s| s.error.as_deref()), Some("disk on fire"));
        assert_eq!(status.phase, Phase::Maintenance { stage: "c", reason: "disk on fire".into() });
    }

    fn sets_it(ctx: &mut BootContext<'_>) -> Result<Done, StageError> {
        ctx.status.set_condition("it", Condition::True);
        Ok(Done::Finished)
    }

    #[test]
    fn a_condition_left_pending_by_its_stage_is_unreachable_saying_why() {
        let k = FakeKernel::default();
        let mut ctx = ctx(&k, "kelson.test.panic_stage=panics");
        let stages = [
            Stage { name: "sets", critical: false, provides: &["it"], run: sets_it },
            Stage { name: "fails", critical: false, provides: &["failed-one"], run: fails },
            Stage { name: "panics", critical: false, provides: &["panicked-one"], run: ok },
            Stage { name: "idle", critical: false, provides: &["idle-one"], run: ok },
        ];
        run_stages(&mut ctx, &stages, &RunningStages::default());
        let status = ctx.status.current();
        assert_eq!(status.condition("it"), &Condition::True);
        let reason = |name| match status.condition(name) {
            Condition::Unreachable(why) => why.clone(),
            other => panic!("{name}: {other:?}"),
        };
        assert_eq!(reason("failed-one"), "the fails stage did not set it: disk on fire");
        assert!(reason("panicked-one").starts_with("the panics stage did not set it: panicked: induced"));
        assert_eq!(reason("idle-one"), "the idle stage did not set it: it ended without setting it");
    }

    struct Recorded(&'static str, Arc<Mutex<Vec<&'static str>>>);

    impl Running for Recorded {
        fn shutdown(self: Box<Self>) -> ShutdownFuture {
            Box::pin(async move { self.1.lock().unwrap().push(self.0) })
        }
    }

    #[test]
    fn what_stages_leave_running_stops_last_started_first() {
        let stopped = Arc::new(Mutex::new(Vec::new()));
        let k = FakeKernel::default();
        let mut ctx = ctx(&k, "");
        let running = RunningStages::default();
        // A row's run is a plain fn: each handle is made by name from a thread local.
        thread_local! { static STOPPED: std::cell::RefCell<Option<Arc<Mutex<Vec<&'static str>>>>> = const { std::cell::RefCell::new(None) }; }
        STOPPED.with(|s| *s.borrow_mut() = Some(stopped.clone()));
        fn leaves(name: &'static str) -> Result<Done, StageError> {
            let log = STOPPED.with(|s| s.borrow().clone()).unwrap();
            Ok(Done::Running(Box::new(Recorded(name, log))))
        }
        fn net(_: &mut BootContext<'_>) -> Result<Done, StageError> {
            leaves("net")
        }
        fn pods(_: &mut BootContext<'_>) -> Result<Done, StageError> {
            leaves("pods")
        }
        fn services(_: &mut BootContext<'_>) -> Result<Done, StageError> {
            leaves("services")
        }
        let stages = [
            stage("net", false, net),
            stage("between", false, ok),
            stage("pods", false, pods),
            stage("services", false, services),
        ];
        run_stages(&mut ctx, &stages, &running);
        assert_eq!(running.stages(), vec!["net", "pods", "services"]);
        tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(running.shutdown());
        assert_eq!(*stopped.lock().unwrap(), vec!["services", "pods", "net"]);
        assert!(running.stages().is_empty());
    }

    struct Nothing;

    impl Running for Nothing {
        fn shutdown(self: Box<Self>) -> ShutdownFuture {
            Box::pin(async {})
        }
    }

    fn degraded(_: &mut BootContext<'_>) -> Result<Done, StageError> {
        Ok(Done::Degraded { running: Box::new(Nothing), error: "2 steps failed".into() })
    }

    #[test]
    fn a_degraded_stage_keeps_its_handle_and_counts_as_failing() {
        let k = FakeKernel::default();
        let running = RunningStages::default();
        let mut ctx = ctx(&k, "");
        let optional = [stage("net", false, degraded), stage("later", false, marks)];
        assert_eq!(run_stages(&mut ctx, &optional, &running), Outcome::Ready);
        assert_eq!(ctx.status.current().stage("net").map(|s| s.state), Some(StageState::Degraded));
        assert_eq!(k.calls(), vec!["hostname reached"]);
        let critical = [stage("net2", true, degraded)];
        let outcome = run_stages(&mut ctx, &critical, &running);
        assert_eq!(outcome, Outcome::Maintenance { stage: "net2", error: "2 steps failed".into() });
        assert_eq!(running.stages(), vec!["net", "net2"]);
    }

    #[test]
    fn the_table_stops_the_network_last_of_what_it_leaves_running() {
        let order: Vec<&str> = STAGES.iter().map(|s| s.name).collect();
        let position = |name| order.iter().position(|n| *n == name).unwrap();
        // Reverse start order at shutdown: services, then pods, then the network.
        assert!(position("network") < position("pods") && position("pods") < position("services"));
    }
}
