//! The read-only /usr. The image keeps /usr as a squashfs file inside the
//! initramfs (`/usr.squashfs`): the kernel unpacks only that compressed file
//! into RAM, and pages of /usr are read from it as they are used, instead of
//! the whole of /usr being unpacked into tmpfs. The initramfs's own /usr
//! holds just kelson-init (static) and the loop and squashfs modules needed
//! to mount the rest over it.

use crate::kernel::{Kernel, MountFlags};
use crate::modules;
use std::io;
use std::path::{Path, PathBuf};

pub const USR_IMAGE: &str = "/usr.squashfs";

#[derive(Debug, thiserror::Error)]
pub enum UsrError {
    #[error("loading the modules to mount {image} (loop, squashfs)")]
    Modules {
        image: PathBuf,
        #[source]
        source: modules::ModuleError,
    },
    #[error("attaching {image} to a loop device")]
    Loop {
        image: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("mounting {device} ({image}) read-only on /usr")]
    Mount {
        device: PathBuf,
        image: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// What happened to /usr.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UsrOutcome {
    /// No image: /usr is the initramfs's own (a development root).
    InPlace,
    Mounted {
        device: PathBuf,
    },
}

/// Mounts `image` over /usr if it exists.
pub fn mount_usr(kernel: &dyn Kernel, image: &Path, module_dir: &Path) -> Result<UsrOutcome, UsrError> {
    if !kernel.exists(image) {
        return Ok(UsrOutcome::InPlace);
    }
    let names = ["loop".to_owned(), "squashfs".to_owned()];
    let report = modules::load_listed(kernel, module_dir, &names)
        .map_err(|source| UsrError::Modules { image: image.to_owned(), source })?;
    if let Some(source) = report.failed.into_iter().next() {
        return Err(UsrError::Modules { image: image.to_owned(), source });
    }
    let device = kernel.attach_loop(image).map_err(|source| UsrError::Loop { image: image.to_owned(), source })?;
    let flags = MountFlags { readonly: true, nodev: true, ..MountFlags::default() };
    kernel
        .mount(&device.to_string_lossy(), Path::new("/usr"), "squashfs", flags, None)
        .map_err(|source| UsrError::Mount { device: device.clone(), image: image.to_owned(), source })?;
    Ok(UsrOutcome::Mounted { device })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::fake::FakeKernel;

    const DEP: &str = "kernel/drivers/block/loop.ko:\nkernel/fs/squashfs/squashfs.ko:\n";

    #[test]
    fn without_an_image_usr_stays_as_it_is() {
        let k = FakeKernel::default();
        assert_eq!(mount_usr(&k, Path::new("/usr.squashfs"), Path::new("/m")).unwrap(), UsrOutcome::InPlace);
        assert!(k.calls().is_empty());
    }

    #[test]
    fn the_image_is_mounted_after_its_modules_load() {
        let k = FakeKernel::default().with_file("/usr.squashfs", "hsqs").with_file("/m/modules.dep", DEP);
        let outcome = mount_usr(&k, Path::new("/usr.squashfs"), Path::new("/m")).unwrap();
        assert_eq!(outcome, UsrOutcome::Mounted { device: PathBuf::from("/dev/loop0") });
        assert_eq!(
            k.calls(),
            vec![
                "load /m/kernel/drivers/block/loop.ko",
                "load /m/kernel/fs/squashfs/squashfs.ko",
                "loop /usr.squashfs",
                "mount /dev/loop0 /usr squashfs - ro"
            ]
        );
    }

    #[test]
    fn a_missing_module_is_named_and_nothing_is_mounted() {
        let k = FakeKernel::default()
            .with_file("/usr.squashfs", "hsqs")
            .with_file("/m/modules.dep", "kernel/drivers/block/loop.ko:\n");
        let err = mount_usr(&k, Path::new("/usr.squashfs"), Path::new("/m")).unwrap_err();
        assert_eq!(crate::boot::chain(&err), "loading the modules to mount /usr.squashfs (loop, squashfs): module squashfs is neither in modules.dep nor built in");
        assert!(!k.calls().iter().any(|c| c.starts_with("mount ")));
    }
}
