//! `usr`: a read-only /usr from its squashfs image when the initramfs
//! carries one; otherwise /usr is part of the initramfs.

use crate::boot::{BootContext, Done, StageError};
use crate::usr::{mount_usr, UsrOutcome, USR_IMAGE};
use std::path::Path;
use tracing::info;

pub fn run(ctx: &mut BootContext<'_>) -> Result<Done, StageError> {
    match mount_usr(ctx.kernel, Path::new(USR_IMAGE), &ctx.module_dir)? {
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
