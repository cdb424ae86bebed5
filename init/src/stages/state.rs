//! `state`: /var on the disk labelled `KELSON_STATE`, or on the disk
//! `kelson.state=` names (formatted only when blank), or on tmpfs.

use crate::boot::{BootContext, Done, StageError};
use crate::kernel::MountFlags;
use crate::state_disk::{self, StateDiskError, StatePlan};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tracing::info;

/// How long a disk named by `kelson.state` may take to appear after its
/// driver loaded.
const STATE_DISK_WAIT: Duration = Duration::from_secs(5);

pub fn run(ctx: &mut BootContext<'_>) -> Result<Done, StageError> {
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
    let devices = state_disk::block_devices(ctx.kernel, Path::new("/sys/class/block"), Path::new("/dev"));
    let plan = state_disk::plan(ctx.kernel, named.as_deref(), &devices)?;
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
        }
    }
    for dir in ["/var/lib/kelson", "/var/log", "/var/tmp", "/var/cache"] {
        ctx.kernel.create_dir_all(Path::new(dir))?;
    }
    Ok(Done::Finished)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::boot::tests::ctx;
    use crate::kernel::fake::FakeKernel;

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
    fn a_named_disk_that_is_in_use_is_refused_and_nothing_mounted() {
        let k = FakeKernel::default().with_bytes("/dev/vdb", ext4("data"));
        let err = run(&mut ctx(&k, "kelson.state=/dev/vdb")).err().expect("refused");
        assert!(err.to_string().contains("refusing to format state disk /dev/vdb"), "{err}");
        assert!(!k.calls().iter().any(|c| c.starts_with("mount")), "{:?}", k.calls());
    }
}
