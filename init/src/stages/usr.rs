//! `usr`: a read-only /usr, verified from the disk when the command line
//! carries its root hash (`usrhash=`, the disk image's UKI; or the ISO's,
//! whose files then hold /usr: a live node), else from the squashfs image the initramfs carries (the direct boot), else /usr is
//! part of the initramfs. Critical: a /usr that fails verification never
//! runs.

use crate::boot::{BootContext, Done, StageError};
use crate::usr::{mount_usr, mount_verified_usr, UsrOutcome, USR_IMAGE};
use crate::verity::USR_HASH_KEY;
use std::path::Path;
use tracing::info;

pub fn run(ctx: &mut BootContext<'_>) -> Result<Done, StageError> {
    let outcome = match ctx.cmdline.get(USR_HASH_KEY) {
        Some(root_hash) => mount_verified_usr(ctx.kernel, root_hash, &ctx.module_dir)?,
        None => mount_usr(ctx.kernel, Path::new(USR_IMAGE), &ctx.module_dir)?,
    };
    match outcome {
        UsrOutcome::Verified { device, partitions } => {
            info!(
                device = %device.display(),
                data = %partitions.data.display(),
                hashes = %partitions.hash.display(),
                "verified /usr mounted read-only"
            );
            ctx.boot_disk = Some(partitions.disk);
        }
        UsrOutcome::Live { device, backing } => {
            info!(
                device = %device.display(),
                iso = %backing.disk.display(),
                "live: verified /usr mounted read-only from the Kelson ISO"
            );
            ctx.live_media = Some(backing.disk);
        }
        UsrOutcome::InPlace => info!("no /usr image: /usr is part of the initramfs"),
        UsrOutcome::Mounted { device } => {
            info!(image = USR_IMAGE, device = %device.display(), "read-only /usr mounted")
        }
    }
    Ok(Done::Finished)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::boot::tests::ctx;
    use crate::kernel::fake::FakeKernel;

    #[test]
    fn without_an_image_nothing_is_mounted() {
        let k = FakeKernel::default();
        run(&mut ctx(&k, "")).unwrap();
        assert!(!k.calls().iter().any(|c| c.starts_with("mount")), "{:?}", k.calls());
    }
}
