//! `boot-entry`: which version runs, whether the boot loader is still
//! trying it, and which newer versions it gave up on (the node fell back
//! from them). Only on a disk image booted through systemd-boot; not
//! critical: a node whose ESP cannot be read still runs, it just cannot be
//! marked good.
//!
//! [`after_boot`] is the other half: when the node is ready, the entry on
//! trial is marked good; when boot stops in maintenance, PID 1 reboots so
//! the boot loader counts the failed try and, once the tries run out, falls
//! back to the previous version.

use crate::boot::{BootContext, Done, StageError};
use crate::boot_entry::{self, EntryFile, RunningEntry, VERSION_FIELD};
use crate::esp::{self, MountedEsp};
use crate::kernel::Kernel;
use crate::status::BootStatus;
use std::path::Path;
use std::time::Duration;
use tracing::{info, warn};

/// Where PID 1 mounts the ESP while it reads or changes it.
pub const ESP_MOUNT: &str = "/run/kelson/esp";
/// The running version's os-release.
pub const OS_RELEASE: &str = "/usr/lib/os-release";
/// How long a version on trial may take to reach ready before PID 1
/// reboots it as failed (`kelson.trial_timeout=` seconds overrides).
pub const TRIAL_TIMEOUT: Duration = Duration::from_secs(15 * 60);
pub const TRIAL_TIMEOUT_KEY: &str = "kelson.trial_timeout";

pub fn run(ctx: &mut BootContext<'_>) -> Result<Done, StageError> {
    let Some(disk) = ctx.boot_disk.clone() else {
        info!("not booted from a disk image: no boot entries to follow");
        return Ok(Done::Finished);
    };
    let Some(vars) = esp::loader_vars(ctx.kernel, &ctx.module_dir) else {
        info!("not booted through UEFI: no boot entries to follow");
        return Ok(Done::Finished);
    };
    let version = running_version(ctx.kernel)?;
    let device = esp::find(ctx.kernel, &disk)?;
    let entries = MountedEsp::mount(ctx.kernel, &device, Path::new(ESP_MOUNT), false)?.entries()?;
    // The counted file booted is this version's only if the boot loader
    // started what /usr says runs; anything else is not ours to bless.
    let trial = vars.boot_count_file.as_deref().and_then(EntryFile::parse).filter(|e| e.version == version);
    let failed = boot_entry::failed_updates(&entries, &version);
    for update in &failed {
        warn!(
            failed_version = update.version.as_str(),
            tries = update.tries,
            running = version.as_str(),
            "version {} never reached ready in {} tries: the boot loader gave up on it and the node fell back to {}",
            update.version,
            update.tries,
            version
        );
    }
    match &trial {
        Some(entry) => info!(
            version = version.as_str(),
            entry = entry.file.as_str(),
            tries_left = entry.counter.map_or(0, |c| c.left),
            "this version is on trial: it is marked good when the node is ready"
        ),
        None => info!(
            version = version.as_str(),
            entry = vars.entry_selected.as_deref().unwrap_or("-"),
            "this version is not on trial"
        ),
    }
    let entry = trial.as_ref().map(|e| e.file.clone()).or(vars.entry_selected);
    ctx.status.update(|s| {
        s.boot = Some(BootStatus { version: version.clone(), entry, on_trial: trial.is_some(), failed_updates: failed })
    });
    ctx.boot_entry = Some(RunningEntry { esp: device, version, trial });
    Ok(Done::Finished)
}

/// The running version: `IMAGE_VERSION` in /usr's os-release.
pub fn running_version(kernel: &dyn Kernel) -> Result<String, StageError> {
    let text = kernel.read_file(Path::new(OS_RELEASE)).map_err(|e| format!("reading {OS_RELEASE}: {e}"))?;
    let version = boot_entry::os_release_field(&String::from_utf8_lossy(&text), VERSION_FIELD)
        .ok_or_else(|| format!("{OS_RELEASE} has no {VERSION_FIELD}"))?;
    Ok(version)
}

/// What PID 1 does about the boot entry once boot has ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AfterBoot {
    /// Not on trial (or not a disk image): nothing.
    Nothing,
    /// Ready on trial: the entry was renamed to this, marked good.
    MarkedGood(String),
    /// Ready on trial, but the entry could not be renamed: the boot loader
    /// will go on counting it.
    MarkFailed(String),
    /// In maintenance on trial: reboot so the boot loader counts the try.
    RebootToCount { entry: String, tries_left: u32 },
}

/// Marks the entry on trial good when `ready`, or asks for the reboot
/// that counts a failed try.
pub fn after_boot(ctx: &BootContext<'_>, ready: bool) -> AfterBoot {
    if !ready {
        // Boot may have stopped before this stage ran (before /usr, even):
        // the boot loader's variable says whether this was a counted try.
        let counted = esp::loader_vars(ctx.kernel, &ctx.module_dir).and_then(|vars| vars.boot_count_file);
        return match counted {
            Some(file) => {
                let tries_left = EntryFile::parse(&file).and_then(|e| e.counter).map_or(0, |c| c.left);
                AfterBoot::RebootToCount { entry: file, tries_left }
            }
            None => AfterBoot::Nothing,
        };
    }
    let Some(RunningEntry { esp, trial: Some(entry), .. }) = &ctx.boot_entry else {
        return AfterBoot::Nothing;
    };
    let marked =
        MountedEsp::mount(ctx.kernel, esp, Path::new(ESP_MOUNT), true).and_then(|mounted| mounted.bless(entry));
    let result = match marked {
        Ok(name) => AfterBoot::MarkedGood(name),
        Err(e) => AfterBoot::MarkFailed(crate::boot::chain(&e)),
    };
    if let AfterBoot::MarkedGood(_) = result {
        ctx.status.update(|s| {
            if let Some(boot) = s.boot.as_mut() {
                boot.on_trial = false;
            }
        });
    }
    result
}

/// Whether a node at its trial deadline, in `status`, is to be rebooted:
/// on trial and still booting (hung, rather than ready or in maintenance,
/// which [`after_boot`] handles).
pub fn overdue(status: &crate::status::NodeStatus) -> bool {
    status.phase == crate::status::Phase::Booting && status.boot.as_ref().is_some_and(|b| b.on_trial)
}

/// How long a trial boot may take to reach ready.
pub fn trial_timeout(cmdline: &crate::cmdline::Cmdline) -> Duration {
    cmdline.get(TRIAL_TIMEOUT_KEY).and_then(|s| s.parse().ok()).map(Duration::from_secs).unwrap_or(TRIAL_TIMEOUT)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::boot::tests::ctx;
    use crate::kernel::fake::FakeKernel;
    use crate::verity::tests::disk;

    use crate::esp::tests::efi_string;

    const VENDOR: &str = boot_entry::LOADER_VENDOR;

    /// A disk whose GPT has an ESP, booted from `counted` (if any), with
    /// version 2 running.
    fn node(counted: Option<&str>, entries: &[&str]) -> FakeKernel {
        let mut k = FakeKernel::default()
            .with_bytes("/dev/vda", disk(&[(esp::ESP_TYPE, uuid::Uuid::from_u128(1))]))
            .with_file("/sys/firmware/efi", "")
            .with_file(OS_RELEASE, "ID=debian\nIMAGE_ID=kelson\nIMAGE_VERSION=2\n")
            .with_bytes(&format!("{}/LoaderEntrySelected-{VENDOR}", esp::EFIVARS), efi_string("kelson-2.efi"));
        if let Some(file) = counted {
            k = k.with_bytes(
                &format!("{}/LoaderBootCountPath-{VENDOR}", esp::EFIVARS),
                efi_string(&format!("\\EFI\\Linux\\{file}")),
            );
        }
        for entry in entries {
            k = k.with_file(&format!("{ESP_MOUNT}/EFI/Linux/{entry}"), "uki");
        }
        k
    }

    #[test]
    fn a_trial_boot_is_marked_good_when_ready() {
        let k = node(Some("kelson-2+2-1.efi"), &["kelson-1.efi", "kelson-2+2-1.efi"]);
        let mut c = ctx(&k, "");
        c.boot_disk = Some("/dev/vda".into());
        run(&mut c).unwrap();
        let boot = c.status.current().boot.unwrap();
        assert_eq!((boot.version.as_str(), boot.on_trial), ("2", true));
        assert_eq!(after_boot(&c, true), AfterBoot::MarkedGood("kelson-2.efi".into()));
        assert!(k.file(&format!("{ESP_MOUNT}/EFI/Linux/kelson-2.efi")).is_some());
        assert!(!c.status.current().boot.unwrap().on_trial);
    }

    #[test]
    fn a_trial_boot_in_maintenance_reboots_to_count_the_try() {
        let k = node(Some("kelson-2+1-2.efi"), &["kelson-1.efi", "kelson-2+1-2.efi"]);
        let mut c = ctx(&k, "");
        c.boot_disk = Some("/dev/vda".into());
        run(&mut c).unwrap();
        assert_eq!(after_boot(&c, false), AfterBoot::RebootToCount { entry: "kelson-2+1-2.efi".into(), tries_left: 1 });
        assert!(k.file(&format!("{ESP_MOUNT}/EFI/Linux/kelson-2+1-2.efi")).is_some(), "not renamed");
        // Stopped before the stage ran (no boot disk known yet): still counted.
        let early = ctx(&k, "");
        assert_eq!(
            after_boot(&early, false),
            AfterBoot::RebootToCount { entry: "kelson-2+1-2.efi".into(), tries_left: 1 }
        );
    }

    #[test]
    fn a_fallback_names_the_version_that_failed() {
        let k = node(None, &["kelson-2.efi", "kelson-3+0-3.efi"]);
        let mut c = ctx(&k, "");
        c.boot_disk = Some("/dev/vda".into());
        run(&mut c).unwrap();
        let boot = c.status.current().boot.unwrap();
        assert!(!boot.on_trial);
        assert_eq!(boot.failed_updates, vec![boot_entry::FailedUpdate { version: "3".into(), tries: 3 }]);
        assert_eq!(after_boot(&c, true), AfterBoot::Nothing);
        assert_eq!(after_boot(&c, false), AfterBoot::Nothing);
    }

    #[test]
    fn only_a_trial_boot_still_booting_at_its_deadline_is_overdue() {
        use crate::status::{NodeStatus, Phase};
        let boot = |on_trial| BootStatus { version: "2".into(), entry: None, on_trial, failed_updates: vec![] };
        let status = |phase, boot| NodeStatus { phase, boot, ..NodeStatus::default() };
        assert!(overdue(&status(Phase::Booting, Some(boot(true)))));
        assert!(!overdue(&status(Phase::Booting, Some(boot(false)))));
        assert!(!overdue(&status(Phase::Booting, None)));
        assert!(!overdue(&status(Phase::Ready, Some(boot(true)))));
        let maintenance = Phase::Maintenance { stage: "usr", reason: "x".into() };
        assert!(!overdue(&status(maintenance, Some(boot(true)))));
        assert_eq!(trial_timeout(&crate::cmdline::Cmdline::parse("kelson.trial_timeout=90")), Duration::from_secs(90));
        assert_eq!(trial_timeout(&crate::cmdline::Cmdline::default()), TRIAL_TIMEOUT);
    }

    #[test]
    fn without_a_boot_disk_or_uefi_there_is_nothing_to_follow() {
        let k = FakeKernel::default();
        let mut c = ctx(&k, "");
        run(&mut c).unwrap();
        c.boot_disk = Some("/dev/vda".into());
        run(&mut c).unwrap();
        assert_eq!(c.status.current().boot, None);
        assert_eq!(after_boot(&c, false), AfterBoot::Nothing);
    }
}
