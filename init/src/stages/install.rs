//! `install`: on a node booted live from the Kelson ISO whose config names
//! `install.disk` (or whose command line says `kelson.install=DISK`), writes
//! the disk image the ISO carries to that disk, checks it and reboots into
//! it (see [`crate::install`]). A refused disk (one holding a partition
//! table or filesystem without `install.wipe: true`) or a failed write stops
//! boot in maintenance, saying why. A node that did not boot from the ISO
//! (the installed one, among others) installs nothing.

use crate::boot::{BootContext, Done, StageError};
use crate::install::{self, Plan};
use crate::live::LIVE_MOUNT;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tracing::info;

/// How long the install disk may take to appear.
const DISK_WAIT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
#[error("the install disk {disk} did not appear within {}s", DISK_WAIT.as_secs())]
pub struct DiskMissing {
    disk: PathBuf,
}

#[derive(Debug, thiserror::Error)]
#[error("rebooting into the installed disk {disk}")]
pub struct Reboot {
    disk: PathBuf,
    #[source]
    source: std::io::Error,
}

pub fn run(ctx: &mut BootContext<'_>) -> Result<Done, StageError> {
    let Some(wanted) = ctx.config.as_ref().map(|c| c.config.install.clone()) else { return Ok(Done::Finished) };
    let Some(disk) = wanted.disk.map(PathBuf::from) else { return Ok(Done::Finished) };
    let Some(iso_device) = ctx.live_media.clone() else {
        info!(disk = %disk.display(), "install.disk is set but this node did not boot from the Kelson ISO: nothing to install");
        return Ok(Done::Finished);
    };
    let started = Instant::now();
    while !ctx.kernel.exists(&disk) {
        if started.elapsed() >= DISK_WAIT {
            return Err(DiskMissing { disk }.into());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    info!(disk = %disk.display(), wipe = wanted.wipe, "install: writing the disk image from the Kelson ISO");
    let plan = Plan { iso_root: PathBuf::from(LIVE_MOUNT), iso_device, disk: disk.clone(), wipe: wanted.wipe };
    let installed = install::install(ctx.kernel, &plan)?;
    info!(
        disk = %disk.display(),
        bytes = installed.bytes,
        sha256 = installed.sha256.as_str(),
        "install: written and read back matching; rebooting into the installed disk"
    );
    ctx.kernel.reboot_now().map_err(|source| Reboot { disk, source })?;
    Ok(Done::Finished)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::boot::tests::ctx;
    use crate::kernel::fake::FakeKernel;

    fn with_install(ctx: &mut BootContext<'_>, yaml: &str) {
        let text = format!("apiVersion: kelson.dev/v1alpha1\nkind: MachineConfig\n{yaml}");
        let layer =
            kelson_config::Layer::from_document(kelson_config::Source::ImageDefaults, "test.yaml", &text).unwrap();
        ctx.config = Some(kelson_config::resolve(&[layer]).unwrap());
    }

    #[test]
    fn a_node_not_booted_from_the_iso_installs_nothing() {
        let k = FakeKernel::default().with_bytes("/dev/vda", vec![0u8; 1 << 20]);
        let mut ctx = ctx(&k, "");
        with_install(&mut ctx, "install:\n  disk: /dev/vda\n");
        run(&mut ctx).unwrap();
        assert!(k.calls().is_empty(), "{:?}", k.calls());
    }

    #[test]
    fn a_live_node_refuses_a_disk_holding_a_filesystem_and_does_not_reboot() {
        let mut ext4 = vec![0u8; 1 << 20];
        ext4[1024 + 56..1024 + 58].copy_from_slice(&[0x53, 0xef]);
        let k = FakeKernel::default()
            .with_bytes("/dev/vda", ext4.clone())
            .with_file("/run/kelson/live/kelson/kelson.raw.sha256", &"a".repeat(64))
            .with_file("/run/kelson/live/kelson/kelson.raw.size", "4096");
        let mut ctx = ctx(&k, "");
        ctx.live_media = Some("/dev/sr0".into());
        with_install(&mut ctx, "install:\n  disk: /dev/vda\n");
        let Err(err) = run(&mut ctx) else { panic!("the install went ahead") };
        assert!(
            err.to_string().starts_with("refusing to install Kelson on /dev/vda: it holds an ext2/ext3/ext4"),
            "{err}"
        );
        assert!(!k.calls().contains(&"reboot".to_owned()));
        assert_eq!(k.files.lock().unwrap()[std::path::Path::new("/dev/vda")], ext4);
    }
}
