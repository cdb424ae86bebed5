//! PID 1's life: boot, then serve events forever. Reads top to bottom:
//! logging and the panic hook, ctrl-alt-del to SIGINT, a tokio runtime
//! whose main loop reaps children and listens for SIGTERM, SIGINT and the
//! power button while the boot stages run on a blocking thread, and the
//! ordered shutdown those events lead to. Nothing here returns or exits:
//! if even the runtime fails, PID 1 falls back to a bare reaping loop.

use crate::boot::{self, BootContext, Outcome, RunningStages};
use crate::kernel::LinuxKernel;
use crate::log::LogOutputs;
use crate::reaper::Reaper;
use crate::shutdown::{self, Action, ShutdownOps};
use crate::status::StatusPublisher;
use crate::{clock, cmdline::Cmdline, hooks, power};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;
use tracing::{error, info, warn};

/// Starts PID 1. Never returns: the `ExitCode` type only satisfies `main`.
pub fn run() -> ExitCode {
    let started = clock::boottime();
    // The kernel starts init with no PATH; helpers such as mkfs.ext4 are
    // found through it. Set while PID 1 still has a single thread.
    std::env::set_var("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
    // One malloc arena: PID 1's few threads rarely contend, and each extra
    // glibc arena keeps megabytes that a process living as long as the node
    // never gives back (`cargo xtask bench api` saw +3.4 MB jumps as API
    // streams landed in fresh arenas). Set before any thread starts.
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt changes only the allocator's tunables; no other thread
    // exists yet.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
    let log = crate::log::init();
    std::panic::set_hook(Box::new(|info| {
        error!(panic = %info, "panic caught; PID 1 carries on");
    }));
    info!(version = env!("CARGO_PKG_VERSION"), "kelson-init starting as PID 1");
    // From now on ctrl-alt-del reaches us as SIGINT instead of an
    // immediate reboot by the kernel.
    if let Err(e) = nix::sys::reboot::set_cad_enabled(false) {
        warn!(error = %e, "could not disable the kernel's ctrl-alt-del reboot");
    }
    match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => {
            if let Err(payload) =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| rt.block_on(main_loop(started, log.clone()))))
            {
                error!(panic = ?payload.downcast_ref::<&str>(), "the main loop panicked");
            }
        }
        Err(e) => error!(error = %e, "could not start the async runtime"),
    }
    last_resort_loop()
}

/// Reaps forever. Only reached if the runtime itself failed.
fn last_resort_loop() -> ! {
    error!("PID 1 is in its last-resort loop: reaping only");
    loop {
        match nix::sys::wait::wait() {
            Ok(_) => {}
            Err(_) => std::thread::sleep(Duration::from_secs(1)),
        }
    }
}

fn module_dir() -> PathBuf {
    let release = nix::sys::utsname::uname().map(|u| u.release().to_string_lossy().into_owned()).unwrap_or_default();
    PathBuf::from("/usr/lib/modules").join(release)
}

/// Points stdin, stdout and stderr at /dev/console so children PID 1
/// starts inherit a working console, whatever the kernel handed us.
fn attach_console() {
    use std::os::fd::AsRawFd;
    if let Ok(console) = std::fs::OpenOptions::new().read(true).write(true).open("/dev/console") {
        for fd in 0..=2 {
            // SAFETY: dup2 onto the standard descriptors of our own process;
            // `console` stays open for the duration of the calls.
            unsafe { libc::dup2(console.as_raw_fd(), fd) };
        }
    }
}

async fn main_loop(started: Duration, log: LogOutputs) {
    let reaper = Arc::new(Reaper::new());
    // What the boot stages leave running, stopped in reverse at shutdown;
    // and the node status, which the management API will serve.
    let running = RunningStages::default();
    let status = StatusPublisher::default();
    let (shutdown_tx, mut shutdown_rx) = mpsc::channel::<Action>(4);
    let mut sigterm = signal(SignalKind::terminate()).ok();
    let mut sigint = signal(SignalKind::interrupt()).ok();
    // Registered before the boot thread can start any child.
    let mut sigchld = signal(SignalKind::child()).ok();

    let boot = {
        let (reaper, running, status) = (reaper.clone(), running.clone(), status.clone());
        let tx = shutdown_tx.clone();
        tokio::task::spawn_blocking(move || boot_and_start(reaper, running, status, log, tx, started))
    };
    tokio::spawn(async move {
        if let Err(e) = boot.await {
            error!(error = %e, "the boot thread died; the node is in maintenance");
        }
    });

    // Reaping runs for PID 1's whole life, on its own task: services
    // stopping at shutdown are waited for through it.
    {
        let reaper = reaper.clone();
        tokio::spawn(async move {
            loop {
                let r = reaper.reap();
                if r.orphans > 0 {
                    tracing::debug!(orphans = r.orphans, "reaped orphans");
                }
                match &mut sigchld {
                    Some(s) => {
                        s.recv().await;
                    }
                    // Without a SIGCHLD handler, reap on a timer instead.
                    None => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
    }

    let action = tokio::select! {
        Some(()) = recv(&mut sigterm) => Action::PowerOff,
        Some(()) = recv(&mut sigint) => Action::Reboot,
        Some(action) = shutdown_rx.recv() => action,
    };
    let why = match action {
        Action::PowerOff => "SIGTERM or power button",
        Action::Reboot => "ctrl-alt-del",
    };
    info!(action = %action, trigger = why, "shutdown requested");
    let grace = Cmdline::from_proc()
        .get("kelson.shutdown_grace")
        .and_then(|s| s.parse().ok())
        .map(Duration::from_secs)
        .unwrap_or(shutdown::DEFAULT_GRACE);
    // Last started first: the services (the kubelet uses the static
    // apiserver), then the pods, then the network (the pods' veths and
    // addresses are released through it).
    running.shutdown().await;
    let result = tokio::task::spawn_blocking(move || {
        let mut ops = LinuxShutdown { reaper };
        shutdown::run(&mut ops, action, grace)
    })
    .await;
    match result {
        Ok(reason) => error!(reason = reason.as_str(), "the kernel did not {action}; PID 1 stays up"),
        Err(e) => error!(error = %e, "the shutdown thread died; PID 1 stays up"),
    }
    // Stay alive and keep reaping: returning would panic the kernel.
    loop {
        tokio::time::sleep(Duration::from_secs(3600)).await;
    }
}

async fn recv(sig: &mut Option<tokio::signal::unix::Signal>) -> Option<()> {
    match sig {
        Some(s) => s.recv().await,
        None => std::future::pending().await,
    }
}

/// Runs the boot stages, announces the outcome, then starts what runs in
/// either outcome: the power button watchers and any test hooks.
fn boot_and_start(
    reaper: Arc<Reaper>,
    running: RunningStages,
    status: StatusPublisher,
    log: LogOutputs,
    shutdown_tx: mpsc::Sender<Action>,
    started: Duration,
) {
    let kernel = LinuxKernel;
    let mut ctx = BootContext::new(&kernel, reaper.clone(), module_dir(), status, log);
    crate::management::start(crate::management::backend::NodeBackend {
        handles: ctx.handles.clone(),
        status: ctx.status.clone(),
        power: shutdown_tx.clone(),
        kernel: Arc::new(LinuxKernel),
        module_dir: ctx.module_dir.clone(),
        store: kelson_config::Store::new(kelson_config::STATE_DIR),
        kmsg: PathBuf::from("/dev/kmsg"),
        pod_logs: PathBuf::from(kelson_pods::crilog::LOG_ROOT),
    });
    // The power button works from the moment its driver is loaded, so a
    // press during the rest of boot (or right as ready or maintenance is
    // announced) powers the node off.
    let (early, late) = boot::STAGES.split_at(boot::stages_through(boot::STAGES, "modules"));
    let mut outcome = boot::run_stages(&mut ctx, early, &running);
    attach_console();
    watch_power_buttons(shutdown_tx.clone());
    watch_trial_deadline(&ctx, shutdown_tx.clone());
    if outcome == Outcome::Ready {
        outcome = boot::run_stages(&mut ctx, late, &running);
    }
    boot::publish_outcome(&ctx.status, &outcome);
    let now = clock::boottime();
    let pid1_to_ready_ms = now.saturating_sub(started).as_millis() as u64;
    match &outcome {
        Outcome::Ready => {
            info!(pid1_start_s = %clock::format_seconds(started), pid1_to_ready_ms, "ready")
        }
        Outcome::Maintenance { stage, error } => error!(
            stage = *stage,
            error = error.as_str(),
            "maintenance: boot stopped; PID 1 stays up, reaping and answering the power button"
        ),
    }
    if outcome != Outcome::Ready {
        serve_maintenance(&mut ctx, &running);
    }
    follow_up_boot_entry(&ctx, outcome == Outcome::Ready, &shutdown_tx);
    start_hooks(&reaper, &ctx.cmdline);
}

/// A node in maintenance serves the management API, so it can be
/// inspected and sent a good config: with its config, or, if that was
/// rejected (or never read), with the config an earlier boot accepted; and
/// with the network that config describes, if the boot stopped before the
/// network stage brought it up.
fn serve_maintenance(ctx: &mut BootContext<'_>, running: &RunningStages) {
    let config = match ctx.handles.config().effective {
        Some(accepted) => accepted,
        None => {
            let defaults = std::fs::read_to_string(crate::stages::config::IMAGE_DEFAULTS).ok();
            let store = kelson_config::Store::new(kelson_config::STATE_DIR);
            let Some(earlier) = crate::management::fallback_config(defaults.as_deref(), &store) else {
                warn!("maintenance: no config was accepted, now or at an earlier boot: the management API cannot be reached");
                return;
            };
            if ctx.handles.serve_with_if_unset(&earlier.config) {
                warn!("maintenance: the management API serves with the certificate of the config accepted at an earlier boot");
            }
            earlier
        }
    };
    if ctx.handles.network().is_some() {
        return;
    }
    let plan = match kelson_net::NetPlan::from_config(&config.config.network) {
        Ok(plan) => plan,
        Err(problems) => {
            let reasons: Vec<String> = problems.iter().map(|p| format!("{}: {}", p.field, p.reason)).collect();
            warn!(problems = reasons.join("; ").as_str(), "maintenance: the network cannot be brought up");
            return;
        }
    };
    info!("maintenance: bringing the network up so the management API can be reached");
    match crate::stages::network::bring_up(ctx, &plan, config.config.node.hostname.clone()) {
        Ok(boot::Done::Running(handle)) | Ok(boot::Done::Degraded { running: handle, .. }) => {
            running.push("network", handle)
        }
        Ok(boot::Done::Finished) => {}
        Err(e) => warn!(error = %boot::chain(e.as_ref()), "maintenance: the network could not be brought up"),
    }
}

/// Marks a version on trial good once ready; reboots one that stopped in
/// maintenance, or that has not reached ready by its deadline, so the boot
/// loader counts the failed try (and falls back when none are left).
fn follow_up_boot_entry(ctx: &BootContext<'_>, ready: bool, shutdown_tx: &mpsc::Sender<Action>) {
    use crate::stages::boot_entry::{after_boot, AfterBoot};
    const NOTICE: Duration = Duration::from_secs(10);
    match after_boot(ctx, ready) {
        AfterBoot::Nothing => {}
        AfterBoot::MarkedGood(entry) => info!(entry = entry.as_str(), "this version reached ready: marked good"),
        AfterBoot::MarkFailed(error) => {
            error!(error = error.as_str(), "could not mark this version good: the boot loader will go on counting it")
        }
        AfterBoot::RebootToCount { entry, tries_left } => {
            error!(
                entry = entry.as_str(),
                tries_left,
                "this version is on trial and did not reach ready: rebooting in {} s so the boot loader counts the \
                 failed try",
                NOTICE.as_secs()
            );
            let tx = shutdown_tx.clone();
            std::thread::spawn(move || {
                std::thread::sleep(NOTICE);
                let _ = tx.blocking_send(Action::Reboot);
            });
        }
    }
}

/// A version on trial that is still booting `trial_timeout` after the
/// kernel started (hung rather than in maintenance) is rebooted as failed.
fn watch_trial_deadline(ctx: &BootContext<'_>, shutdown_tx: mpsc::Sender<Action>) {
    let deadline = crate::stages::boot_entry::trial_timeout(&ctx.cmdline);
    let status = ctx.status.clone();
    let spawned = std::thread::Builder::new().name("trial-deadline".into()).spawn(move || {
        std::thread::sleep(deadline.saturating_sub(clock::boottime()));
        if crate::stages::boot_entry::overdue(&status.current()) {
            error!(
                deadline_s = deadline.as_secs(),
                "this version is on trial and has not reached ready by its deadline: rebooting so the boot loader \
                 counts the failed try"
            );
            let _ = shutdown_tx.blocking_send(Action::Reboot);
        }
    });
    if let Err(e) = spawned {
        warn!(error = %e, "could not start the trial deadline watcher");
    }
}

fn watch_power_buttons(shutdown_tx: mpsc::Sender<Action>) {
    let devices = power::power_button_devices(Path::new("/sys/class/input"), Path::new("/dev/input"));
    if devices.is_empty() {
        warn!("no power button input device found; power off with SIGTERM instead");
    }
    for device in devices {
        let file = match std::fs::File::open(&device) {
            Ok(f) => f,
            Err(e) => {
                warn!(device = %device.display(), error = %e, "could not open power button device");
                continue;
            }
        };
        info!(device = %device.display(), "watching power button");
        let tx = shutdown_tx.clone();
        let spawned = std::thread::Builder::new().name("power-button".into()).spawn(move || {
            let result = power::watch(file, || {
                info!(device = %device.display(), "power button pressed");
                let _ = tx.blocking_send(Action::PowerOff);
            });
            if let Err(e) = result {
                warn!(device = %device.display(), error = %e, "stopped watching power button");
            }
        });
        if let Err(e) = spawned {
            warn!(error = %e, "could not start the power button watcher");
        }
    }
}

fn start_hooks(reaper: &Arc<Reaper>, cmdline: &Cmdline) {
    if hooks::enabled(cmdline) && !Path::new(hooks::HOOK_DIR).exists() {
        match hooks::unpack_layer_disk(Path::new("/sys/class/block"), Path::new("/dev"), Path::new("/")) {
            Ok(Some(disk)) => info!(disk = %disk.display(), "test layer unpacked from its disk"),
            Ok(None) => {}
            Err(e) => warn!(error = e.as_str(), "test layer not unpacked"),
        }
    }
    let hooks = match hooks::plan(cmdline, Path::new(hooks::HOOK_DIR)) {
        hooks::Plan::Absent => return,
        hooks::Plan::Ignored => {
            warn!(
                dir = hooks::HOOK_DIR,
                "test hooks present but not run: the kernel command line does not say {}=1",
                hooks::ENABLE_KEY
            );
            return;
        }
        hooks::Plan::Run(hooks) => hooks,
    };
    for hook in hooks {
        match spawn_hook(reaper, &hook) {
            Ok(spawned) => {
                info!(hook = %hook.display(), pid = spawned.pid, "test hook started");
                let name = hook.display().to_string();
                std::thread::spawn(move || {
                    if let Ok(exit) = spawned.exit.blocking_recv() {
                        info!(hook = name.as_str(), exit = %exit, "test hook ended");
                    }
                });
            }
            Err(e) => warn!(hook = %hook.display(), error = %e, "test hook did not start"),
        }
    }
}

/// Starts one hook. The hook may have been written by `unpack_layer_disk` a
/// moment ago while another thread forked a service: the child holds a copy of
/// the file's write descriptor until it execs, and exec of the hook fails with
/// ETXTBSY meanwhile. That window is short, so the spawn is tried again.
fn spawn_hook(reaper: &Reaper, hook: &Path) -> std::io::Result<crate::reaper::Spawned> {
    const ATTEMPTS: u32 = 50;
    let mut attempt = 1;
    loop {
        let mut cmd = Command::new(hook);
        cmd.stdin(Stdio::null());
        match reaper.spawn(&mut cmd) {
            Err(e) if e.raw_os_error() == Some(nix::libc::ETXTBSY) && attempt < ATTEMPTS => {
                attempt += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            result => return result,
        }
    }
}

/// The real shutdown operations.
struct LinuxShutdown {
    reaper: Arc<Reaper>,
}

impl ShutdownOps for LinuxShutdown {
    fn signal_all(&mut self, signal: nix::sys::signal::Signal) {
        // kill(-1) reaches every process but PID 1 and kernel threads.
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(-1), signal);
    }

    fn wait_for_no_processes(&mut self, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        loop {
            self.reaper.reap();
            let left = crate::procs::user_processes(Path::new("/proc")).len();
            if left == 0 || Instant::now() >= deadline {
                return left;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn sync(&mut self) {
        nix::unistd::sync();
    }

    fn unmount_var(&mut self) -> Result<(), String> {
        use nix::mount::{mount, umount2, MntFlags, MsFlags};
        match umount2("/var", MntFlags::empty()) {
            Ok(()) => Ok(()),
            Err(nix::errno::Errno::EINVAL) => Ok(()),
            Err(e) => {
                let remount =
                    mount(None::<&str>, "/var", None::<&str>, MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY, None::<&str>);
                Err(format!(
                    "unmount failed ({e}); read-only remount {}",
                    if remount.is_ok() { "done" } else { "failed too" }
                ))
            }
        }
    }

    fn log(&mut self, line: &str) {
        info!("{line}");
    }

    fn finish(&mut self, action: Action) -> String {
        use nix::sys::reboot::{reboot, RebootMode};
        let mode = match action {
            Action::PowerOff => RebootMode::RB_POWER_OFF,
            Action::Reboot => RebootMode::RB_AUTOBOOT,
        };
        match reboot(mode) {
            Ok(never) => match never {},
            Err(e) => format!("reboot(2) failed: {e}"),
        }
    }
}
