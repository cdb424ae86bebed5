//! `state`: /var on the disk `kelson.state=` names (formatted only when
//! blank); else, on a node booted from the disk image, on the boot disk's
//! `KELSON_STATE` partition, added over the free space on first boot and
//! grown with the disk; else on the disk labelled `KELSON_STATE`; else on
//! tmpfs.

use crate::boot::{BootContext, Done, StageError};
use crate::kernel::MountFlags;
use crate::management::backend::RESET_MARKER;
use crate::state_disk::{self, StateDiskError, StatePlan};
use crate::state_part::{self, StatePartition};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use tracing::{info, warn};

/// How long a disk named by `kelson.state` may take to appear after its
/// driver loaded.
const STATE_DISK_WAIT: Duration = Duration::from_secs(5);

pub fn run(ctx: &mut BootContext<'_>) -> Result<Done, StageError> {
    let named = ctx.cmdline.get("kelson.state").map(PathBuf::from);
    if let Some(device) = &named {
        if !appears(ctx, device) {
            return Err(StateDiskError::Missing {
                device: device.clone(),
                waited_ms: STATE_DISK_WAIT.as_millis() as u64,
            }
            .into());
        }
    }
    let mut grow = None;
    let plan = match (&named, ctx.boot_disk.clone()) {
        (None, Some(disk)) => match boot_disk_partition(ctx, &disk)? {
            Some((plan, grown)) => {
                grow = grown;
                plan
            }
            None => labelled_or_tmpfs(ctx)?,
        },
        (Some(_), _) => {
            let devices = state_disk::block_devices(ctx.kernel, Path::new("/sys/class/block"), Path::new("/dev"));
            state_disk::plan(ctx.kernel, named.as_deref(), &devices)?
        }
        (None, None) => labelled_or_tmpfs(ctx)?,
    };
    let var = Path::new("/var");
    ctx.kernel.create_dir_all(var)?;
    let flags = MountFlags { readonly: false, nosuid: true, nodev: true, noexec: false, relatime: true };
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
            if ctx.kernel.exists(Path::new(RESET_MARKER)) {
                wipe(ctx, device, var, flags)?;
            }
            if let Some(bytes) = grow {
                run_tool(ctx, state_disk::resize_command(device))?;
                info!(device = %device.display(), bytes, "state filesystem grown with its partition");
            }
        }
    }
    for dir in ["/var/lib/kelson", "/var/log", "/var/tmp", "/var/cache"] {
        ctx.kernel.create_dir_all(Path::new(dir))?;
    }
    Ok(Done::Finished)
}

/// A reset asked for through the management API: the state partition,
/// just mounted, is unmounted, formatted afresh and mounted again, so the
/// node boots as on its first day (its seed is read again).
fn wipe(ctx: &BootContext<'_>, device: &Path, var: &Path, flags: MountFlags) -> Result<(), StateDiskError> {
    warn!(device = %device.display(), "reset requested at the last boot: wiping the state partition");
    ctx.kernel
        .unmount(var)
        .map_err(|source| StateDiskError::Tool { command: format!("umount {} (to wipe it)", var.display()), source })?;
    run_tool(ctx, state_disk::mkfs_command(device))?;
    ctx.kernel
        .mount(&device.to_string_lossy(), var, "ext4", flags, None)
        .map_err(|source| StateDiskError::Mount { what: device.display().to_string(), source })?;
    info!(device = %device.display(), "state partition wiped and mounted on /var");
    Ok(())
}

fn labelled_or_tmpfs(ctx: &BootContext<'_>) -> Result<StatePlan, StateDiskError> {
    let devices = state_disk::block_devices(ctx.kernel, Path::new("/sys/class/block"), Path::new("/dev"));
    state_disk::plan(ctx.kernel, None, &devices)
}

/// The boot disk's state partition, added or grown first; `None` when the
/// disk has none and no room for one. The second value is set when the
/// filesystem is to grow (to this many bytes) once mounted.
fn boot_disk_partition(ctx: &BootContext<'_>, disk: &Path) -> Result<Option<(StatePlan, Option<u64>)>, StateDiskError> {
    match state_part::ensure(ctx.kernel, disk)? {
        StatePartition::Created { device, number, bytes } => {
            info!(device = %device.display(), bytes, "state partition added over the boot disk's free space");
            run_tool(ctx, state_disk::partx_command("add", disk, number))?;
            if !appears(ctx, &device) {
                let waited_ms = STATE_DISK_WAIT.as_millis() as u64;
                return Err(StateDiskError::PartitionMissing { device, waited_ms });
            }
            Ok(Some((StatePlan::FormatThenMount(device), None)))
        }
        StatePartition::Grown { device, number, bytes } => {
            info!(device = %device.display(), bytes, "state partition grown over the space the disk gained");
            run_tool(ctx, state_disk::partx_command("update", disk, number))?;
            // A partition of ours, grown: its filesystem follows once mounted.
            let plan = state_disk::plan(ctx.kernel, Some(&device), &[])?;
            Ok(Some((plan, Some(bytes))))
        }
        // Ours, so a blank one (a power cut before its mkfs) is formatted;
        // anything but our filesystem is refused as on a named disk.
        StatePartition::Unchanged { device, .. } => Ok(Some((state_disk::plan(ctx.kernel, Some(&device), &[])?, None))),
        StatePartition::NoRoom { free_bytes } => {
            warn!(disk = %disk.display(), free_bytes, "no room on the boot disk for a state partition");
            Ok(None)
        }
    }
}

/// Whether `device` exists, or appears within [`STATE_DISK_WAIT`].
fn appears(ctx: &BootContext<'_>, device: &Path) -> bool {
    let started = std::time::Instant::now();
    while !ctx.kernel.exists(device) {
        if started.elapsed() >= STATE_DISK_WAIT {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    true
}

/// Runs a helper program through the reaper; its failure is an error.
fn run_tool(ctx: &BootContext<'_>, mut cmd: Command) -> Result<(), StateDiskError> {
    let command = format!("{cmd:?}");
    let exit = ctx
        .reaper
        .run_blocking(&mut cmd)
        .map_err(|source| StateDiskError::Tool { command: command.clone(), source })?;
    if !exit.success() {
        let source = std::io::Error::other(format!("it {exit}"));
        return Err(StateDiskError::Tool { command, source });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::boot::tests::ctx;
    use crate::kernel::fake::FakeKernel;
    use crate::state_part::StatePartition;

    /// A 2 MiB disk image with an ext4 superblock magic and `label`.
    fn ext4(label: &str) -> Vec<u8> {
        let mut data = vec![0u8; 2 << 20];
        data[1080..1082].copy_from_slice(&[0x53, 0xEF]);
        data[1144..1144 + label.len()].copy_from_slice(label.as_bytes());
        data
    }

    #[test]
    fn the_disk_labelled_kelson_state_is_mounted_on_var() {
        let k = FakeKernel::default()
            .with_file("/sys/class/block/vda/dev", "254:0")
            .with_file("/sys/class/block/vdb/dev", "254:16")
            .with_file("/sys/class/block/loop0/dev", "7:0")
            .with_bytes("/dev/vda", ext4("other"))
            .with_bytes("/dev/vdb", ext4("KELSON_STATE"));
        run(&mut ctx(&k, "")).unwrap();
        let calls = k.calls();
        assert!(calls.contains(&"mount /dev/vdb /var ext4 -".to_string()), "{calls:?}");
        assert!(calls.contains(&"mkdir /var/lib/kelson".to_string()), "{calls:?}");
    }

    #[test]
    fn without_a_state_disk_var_is_tmpfs() {
        let k =
            FakeKernel::default().with_file("/sys/class/block/vda/dev", "254:0").with_bytes("/dev/vda", ext4("data"));
        run(&mut ctx(&k, "")).unwrap();
        assert!(k.calls().contains(&"mount var /var tmpfs mode=0755".to_string()), "{:?}", k.calls());
    }

    #[test]
    fn on_a_disk_image_the_boot_disks_state_partition_is_mounted() {
        // A boot disk whose state partition an earlier boot added and formatted.
        let mut image = crate::verity::tests::disk(&[(crate::verity::USR_TYPE, uuid::Uuid::from_u128(1))]);
        image.resize(128 << 20, 0);
        let earlier = FakeKernel::default().with_bytes("/dev/vda", image);
        let made = crate::state_part::ensure(&earlier, Path::new("/dev/vda")).unwrap();
        assert!(matches!(made, StatePartition::Created { number: 2, .. }), "{made:?}");
        let image = earlier.files.lock().unwrap().remove(Path::new("/dev/vda")).unwrap();
        let k = FakeKernel::default()
            .with_bytes("/dev/vda", image)
            .with_bytes("/dev/vda2", ext4("KELSON_STATE"))
            .with_file("/sys/class/block/vdb/dev", "254:16")
            .with_bytes("/dev/vdb", ext4("KELSON_STATE"));
        let mut ctx = ctx(&k, "");
        ctx.boot_disk = Some(PathBuf::from("/dev/vda"));
        run(&mut ctx).unwrap();
        let calls = k.calls();
        assert!(calls.contains(&"mount /dev/vda2 /var ext4 -".to_string()), "the boot disk's, not vdb's: {calls:?}");
    }

    #[test]
    fn a_named_disk_that_is_in_use_is_refused_and_nothing_mounted() {
        let k = FakeKernel::default().with_bytes("/dev/vdb", ext4("data"));
        let err = run(&mut ctx(&k, "kelson.state=/dev/vdb")).err().expect("refused");
        assert!(err.to_string().contains("refusing to format state disk /dev/vdb"), "{err}");
        assert!(!k.calls().iter().any(|c| c.starts_with("mount")), "{:?}", k.calls());
    }
}
