//! The boot sequence as a list of stages. Each runs in turn with its
//! CLOCK_BOOTTIME start and duration logged; a panic inside a stage is
//! caught and treated as that stage failing. A failed *critical* stage
//! stops the sequence and leaves the node in maintenance (PID 1 keeps
//! reaping and answering the power button); a failed non-critical stage is
//! logged and boot goes on.

use crate::cmdline::Cmdline;
use crate::kernel::Kernel;
use crate::reaper::Reaper;
use crate::{clock, identity, modules, mounts, state_disk, sysctl};
use std::error::Error;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tracing::{info, warn};

pub type StageError = Box<dyn Error + Send + Sync>;

/// What a stage needs. The kernel is a trait object so stages can be run
/// against a fake; the reaper starts helper programs (mkfs).
pub struct BootContext<'a> {
    pub kernel: &'a dyn Kernel,
    pub cmdline: Cmdline,
    pub reaper: Arc<Reaper>,
    /// Where the kernel's modules live (`/usr/lib/modules/$(uname -r)`).
    pub module_dir: PathBuf,
    /// The accepted machine config, once the config stage has run.
    pub config: Option<kelson_config::Effective>,
}

pub struct Stage {
    pub name: &'static str,
    pub critical: bool,
    pub run: fn(&mut BootContext<'_>) -> Result<(), StageError>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Ready,
    Maintenance { stage: &'static str, error: String },
}

/// Renders an error and its sources as one line: `a: b: c`.
pub use kelson_base::error_chain as chain;

fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic payload".into())
}

/// Runs `stages` in order and says how boot ended.
pub fn run_stages(ctx: &mut BootContext<'_>, stages: &[Stage]) -> Outcome {
    for stage in stages {
        // Test knob: make one stage panic, to prove a panic never takes
        // PID 1 down. Looked up per stage: the command line is only read
        // once /proc is mounted.
        let panic_stage = ctx.cmdline.get("kelson.test.panic_stage").map(str::to_owned);
        let started = clock::boottime();
        info!(stage = stage.name, "stage start");
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            if panic_stage.as_deref() == Some(stage.name) {
                panic!("induced by kelson.test.panic_stage={}", stage.name);
            }
            (stage.run)(ctx)
        }));
        let elapsed_ms = (clock::boottime().saturating_sub(started)).as_millis() as u64;
        let error = match result {
            Ok(Ok(())) => {
                info!(stage = stage.name, elapsed_ms, "stage done");
                continue;
            }
            Ok(Err(e)) => chain(e.as_ref()),
            Err(payload) => format!("panicked: {}", panic_text(payload.as_ref())),
        };
        if stage.critical {
            warn!(stage = stage.name, elapsed_ms, error = error.as_str(), "stage failed");
            return Outcome::Maintenance { stage: stage.name, error };
        }
        warn!(stage = stage.name, elapsed_ms, error = error.as_str(), "stage degraded, boot continues");
    }
    Outcome::Ready
}

/// How many of `stages` there are up to and including the one named `name`
/// (all of them if there is none by that name).
pub fn stages_through(stages: &[Stage], name: &str) -> usize {
    stages.iter().position(|s| s.name == name).map_or(stages.len(), |i| i + 1)
}

/// The node's boot sequence, in order.
pub const STAGES: &[Stage] = &[
    Stage { name: "mounts", critical: true, run: stage_mounts },
    Stage { name: "kernel-log", critical: false, run: stage_kernel_log },
    Stage { name: "cmdline", critical: true, run: stage_cmdline },
    Stage { name: "usr", critical: true, run: stage_usr },
    Stage { name: "cgroups", critical: true, run: stage_cgroups },
    Stage { name: "modules", critical: false, run: stage_modules },
    Stage { name: "sysctls", critical: false, run: stage_sysctls },
    Stage { name: "state", critical: true, run: stage_state },
    Stage { name: "config", critical: true, run: crate::config_stage::stage_config },
    Stage { name: "identity", critical: false, run: stage_identity },
    Stage { name: "apply-config", critical: false, run: crate::config_stage::stage_apply },
    // The network before the services, as the design's boot order has it:
    // the kubelet waits for the network anyway, containerd finds the CNI
    // config already written, and the network stage does not share the CPU
    // with containerd's start-up.
    Stage { name: "network", critical: false, run: crate::network_stage::stage_network },
    // Static pods after the network (sandboxed pods attach to cbr0) and
    // before the services (the kubelet talks to the static apiserver).
    Stage { name: "pods", critical: false, run: crate::pods_stage::stage_pods },
    Stage { name: "services", critical: false, run: crate::services_stage::stage_services },
];

fn stage_mounts(ctx: &mut BootContext<'_>) -> Result<(), StageError> {
    mounts::mount_all(ctx.kernel, mounts::EARLY_MOUNTS)?;
    crate::log::open_console();
    // Only now can the command line be read.
    ctx.cmdline = Cmdline::from_proc();
    Ok(())
}

/// Reports every unknown `kelson.*` key, and stops boot on a misspelling of
/// a key that changes what the node does (`kelson.stat=/dev/vdb`), before
/// the state disk or the config is looked at.
fn stage_cmdline(ctx: &mut BootContext<'_>) -> Result<(), StageError> {
    crate::power_cut::install(&ctx.cmdline);
    let unknown = ctx.cmdline.unknown_kelson_keys();
    for key in unknown.iter().filter(|k| !k.stops_boot) {
        warn!("{key}");
    }
    let stopping: Vec<String> = unknown.iter().filter(|k| k.stops_boot).map(ToString::to_string).collect();
    for line in &stopping {
        tracing::error!("{line}");
    }
    if stopping.is_empty() {
        Ok(())
    } else {
        Err(stopping.join("; ").into())
    }
}

fn stage_kernel_log(ctx: &mut BootContext<'_>) -> Result<(), StageError> {
    // Userspace kmsg writes are rate limited to a handful per burst by
    // default, which would drop most of the boot log.
    // The sysctl wants the trailing newline: it rejects "on" without one.
    ctx.kernel.write_file(Path::new("/proc/sys/kernel/printk_devkmsg"), b"on\n")?;
    // Kelson's own lines already go to the console; keep the kernel's
    // informational chatter off it (it stays in dmesg) unless the command
    // line asks for a log level.
    let c = &ctx.cmdline;
    if !(c.has("loglevel") || c.has("debug") || c.has("quiet") || c.has("ignore_loglevel")) {
        ctx.kernel.write_file(Path::new("/proc/sys/kernel/printk"), b"4")?;
    }
    // Only now, with the console level set, do Kelson's lines also go to
    // the kernel log; earlier they would have shown twice on the console.
    crate::log::open_kmsg();
    Ok(())
}

fn stage_usr(ctx: &mut BootContext<'_>) -> Result<(), StageError> {
    match crate::usr::mount_usr(ctx.kernel, Path::new(crate::usr::USR_IMAGE), &ctx.module_dir)? {
        crate::usr::UsrOutcome::InPlace => info!("no /usr image: /usr is part of the initramfs"),
        crate::usr::UsrOutcome::Mounted { device } => {
            info!(image = crate::usr::USR_IMAGE, device = %device.display(), "read-only /usr mounted")
        }
    }
    Ok(())
}

fn stage_cgroups(ctx: &mut BootContext<'_>) -> Result<(), StageError> {
    mounts::enable_cgroup_controllers(ctx.kernel, Path::new("/sys/fs/cgroup"))?;
    Ok(())
}

fn stage_modules(ctx: &mut BootContext<'_>) -> Result<(), StageError> {
    let list_path = Path::new(modules::MODULE_LIST);
    let list = ctx
        .kernel
        .read_file(list_path)
        .map_err(|source| modules::ModuleError::ReadList { path: list_path.to_owned(), source })?;
    let names = modules::parse_list(&String::from_utf8_lossy(&list));
    let report = modules::load_listed(ctx.kernel, &ctx.module_dir, &names)?;
    info!(
        listed = names.len(),
        loaded = report.loaded.len(),
        already_loaded = report.already_loaded.len(),
        no_such_hardware = report.no_device.join(",").as_str(),
        failed = report.failed.len(),
        "modules loaded"
    );
    if report.failed.is_empty() {
        return Ok(());
    }
    for e in &report.failed {
        warn!(error = chain(e).as_str(), "module not loaded");
    }
    Err(format!("{} of the listed modules (or their dependencies) did not load", report.failed.len()).into())
}

fn stage_sysctls(ctx: &mut BootContext<'_>) -> Result<(), StageError> {
    let errors = sysctl::apply(ctx.kernel, sysctl::NODE_SYSCTLS);
    if errors.is_empty() {
        return Ok(());
    }
    for e in &errors {
        warn!(error = chain(e).as_str(), "sysctl not set");
    }
    Err(format!("{} sysctls not set", errors.len()).into())
}

/// How long a disk named by `kelson.state` may take to appear after its
/// driver loaded.
const STATE_DISK_WAIT: Duration = Duration::from_secs(5);

fn stage_state(ctx: &mut BootContext<'_>) -> Result<(), StageError> {
    use state_disk::{StateDiskError, StatePlan};
    let named = ctx.cmdline.get("kelson.state").map(PathBuf::from);
    if let Some(device) = &named {
        let started = std::time::Instant::now();
        while !ctx.kernel.exists(device) && started.elapsed() < STATE_DISK_WAIT {
            std::thread::sleep(Duration::from_millis(50));
        }
        if !ctx.kernel.exists(device) {
            return Err(StateDiskError::Missing {
                device: device.clone(),
                waited_ms: STATE_DISK_WAIT.as_millis() as u64,
            }
            .into());
        }
    }
    let devices = state_disk::block_devices(Path::new("/sys/class/block"), Path::new("/dev"));
    let plan = state_disk::plan(named.as_deref(), &devices)?;
    let var = Path::new("/var");
    ctx.kernel.create_dir_all(var)?;
    let flags = crate::kernel::MountFlags { readonly: false, nosuid: true, nodev: true, noexec: false, relatime: true };
    match &plan {
        StatePlan::Tmpfs => {
            info!("no state disk: /var is tmpfs and nothing survives a reboot");
            ctx.kernel
                .mount("var", var, "tmpfs", flags, Some("mode=0755"))
                .map_err(|source| StateDiskError::Mount { what: "tmpfs".into(), source })?;
        }
        StatePlan::FormatThenMount(device) | StatePlan::Mount(device) => {
            if matches!(plan, StatePlan::FormatThenMount(_)) {
                info!(device = %device.display(), "state disk is blank: formatting it as ext4 KELSON_STATE");
                let mut cmd = state_disk::mkfs_command(device);
                let command = format!("{cmd:?}");
                let exit = ctx.reaper.run_blocking(&mut cmd).map_err(|source| StateDiskError::Format {
                    device: device.clone(),
                    command: command.clone(),
                    source,
                })?;
                if !exit.success() {
                    return Err(StateDiskError::Format {
                        device: device.clone(),
                        command,
                        source: std::io::Error::other(format!("mkfs.ext4 ended with {exit}")),
                    }
                    .into());
                }
            }
            ctx.kernel
                .mount(&device.to_string_lossy(), var, "ext4", flags, None)
                .map_err(|source| StateDiskError::Mount { what: device.display().to_string(), source })?;
            info!(device = %device.display(), "state disk mounted on /var");
        }
    }
    for dir in ["/var/lib/kelson", "/var/log", "/var/tmp", "/var/cache"] {
        ctx.kernel.create_dir_all(Path::new(dir))?;
    }
    Ok(())
}

fn stage_identity(ctx: &mut BootContext<'_>) -> Result<(), StageError> {
    let persisted = identity::read_trimmed(Path::new(identity::PERSISTED_MACHINE_ID));
    let smbios = identity::read_trimmed(Path::new(identity::SMBIOS_UUID));
    let (id, source) = identity::choose_machine_id(persisted.as_deref(), smbios.as_deref(), identity::random_bytes());
    let line = format!("{}\n", id.as_str());
    if persisted.as_deref() != Some(id.as_str()) {
        crate::atomic::write_atomic(Path::new(identity::PERSISTED_MACHINE_ID), line.as_bytes(), 0o444)?;
    }
    crate::atomic::write_atomic(Path::new("/etc/machine-id"), line.as_bytes(), 0o444)?;
    // The config was validated, hostname included (kelson.hostname on the
    // command line is one of its layers).
    let configured = ctx.config.as_ref().and_then(|c| c.config.node.hostname.clone());
    let hostname = configured.unwrap_or_else(|| id.default_hostname());
    ctx.kernel.set_hostname(&hostname)?;
    crate::atomic::write_atomic(Path::new("/etc/hostname"), format!("{hostname}\n").as_bytes(), 0o644)?;
    info!(machine_id = id.as_str(), source, hostname = hostname.as_str(), "identity set");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::fake::FakeKernel;

    fn ctx<'a>(kernel: &'a FakeKernel, cmdline: &str) -> BootContext<'a> {
        BootContext {
            kernel,
            cmdline: Cmdline::parse(cmdline),
            reaper: Arc::new(Reaper::new()),
            module_dir: PathBuf::from("/m"),
            config: None,
        }
    }

    fn ok(_: &mut BootContext<'_>) -> Result<(), StageError> {
        Ok(())
    }
    fn fails(_: &mut BootContext<'_>) -> Result<(), StageError> {
        Err("disk on fire".into())
    }
    fn marks(ctx: &mut BootContext<'_>) -> Result<(), StageError> {
        ctx.kernel.set_hostname("reached")?;
        Ok(())
    }

    #[test]
    fn the_stages_split_after_the_named_one() {
        assert_eq!(STAGES[stages_through(STAGES, "modules") - 1].name, "modules");
        assert_eq!(stages_through(STAGES, "no-such-stage"), STAGES.len());
    }

    #[test]
    fn all_stages_passing_means_ready() {
        let k = FakeKernel::default();
        let stages = [Stage { name: "a", critical: true, run: ok }, Stage { name: "b", critical: false, run: marks }];
        assert_eq!(run_stages(&mut ctx(&k, ""), &stages), Outcome::Ready);
        assert_eq!(k.calls(), vec!["hostname reached"]);
    }

    #[test]
    fn a_failed_critical_stage_stops_boot_in_maintenance() {
        let k = FakeKernel::default();
        let stages =
            [Stage { name: "state", critical: true, run: fails }, Stage { name: "later", critical: true, run: marks }];
        let outcome = run_stages(&mut ctx(&k, ""), &stages);
        assert_eq!(outcome, Outcome::Maintenance { stage: "state", error: "disk on fire".into() });
        assert!(k.calls().is_empty(), "stages after the failure must not run");
    }

    #[test]
    fn a_failed_optional_stage_lets_boot_continue() {
        let k = FakeKernel::default();
        let stages = [
            Stage { name: "sysctls", critical: false, run: fails },
            Stage { name: "later", critical: true, run: marks },
        ];
        assert_eq!(run_stages(&mut ctx(&k, ""), &stages), Outcome::Ready);
        assert_eq!(k.calls(), vec!["hostname reached"]);
    }

    #[test]
    fn a_panicking_stage_is_caught_and_means_maintenance() {
        let k = FakeKernel::default();
        let stages = [Stage { name: "a", critical: true, run: ok }, Stage { name: "b", critical: true, run: marks }];
        let outcome = run_stages(&mut ctx(&k, "kelson.test.panic_stage=b"), &stages);
        match outcome {
            Outcome::Maintenance { stage: "b", error } => assert!(error.contains("panicked: induced"), "{error}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_kernel_log_stage_quiets_the_console_unless_a_level_was_asked_for() {
        let k = FakeKernel::default();
        stage_kernel_log(&mut ctx(&k, "console=ttyS0")).unwrap();
        assert_eq!(k.file("/proc/sys/kernel/printk").as_deref(), Some("4"));
        assert_eq!(k.file("/proc/sys/kernel/printk_devkmsg").as_deref(), Some("on\n"));
        let k = FakeKernel::default();
        stage_kernel_log(&mut ctx(&k, "console=ttyS0 loglevel=7")).unwrap();
        assert_eq!(k.file("/proc/sys/kernel/printk"), None);
    }

    #[test]
    fn the_modules_stage_reports_how_many_failed() {
        let k = FakeKernel::default()
            .with_file("/etc/kelson/modules", "bridge\nnot_a_module\n")
            .with_file("/m/modules.dep", "kernel/net/bridge/bridge.ko.xz:\n");
        let err = stage_modules(&mut ctx(&k, "")).unwrap_err();
        assert_eq!(err.to_string(), "1 of the listed modules (or their dependencies) did not load");
        assert!(k.calls().contains(&"load /m/kernel/net/bridge/bridge.ko.xz".to_string()));
    }

    #[test]
    fn stage_errors_render_their_whole_chain() {
        let err = crate::sysctl::SysctlError {
            key: "a.b".into(),
            value: "1".into(),
            path: "/proc/sys/a/b".into(),
            source: std::io::Error::from_raw_os_error(libc::ENOENT),
        };
        assert_eq!(chain(&err), "setting sysctl a.b=1 (/proc/sys/a/b): No such file or directory (os error 2)");
    }
}
