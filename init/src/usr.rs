//! The read-only /usr, from one of two places:
//!
//! - the disk image: a partition verified by dm-verity against the root hash
//!   on the UKI's command line (`usrhash=`, see [`crate::verity`]); the small
//!   initrd holds only kelson-init and the modules to reach it;
//! - the ISO, when no partition matches that root hash: a squashfs file and
//!   its hash tree on the ISO, verified the same way (see [`crate::live`]);
//! - the direct boot's initramfs: a squashfs file (`/usr.squashfs`) that the
//!   kernel unpacks into RAM as one compressed file, its pages read as they
//!   are used, loop-mounted.
//!
//! Either way the initramfs's own /usr holds just kelson-init (static) and
//! the modules needed to mount the rest over it.

use crate::kernel::{Kernel, MountFlags};
use crate::live::{self, LiveError, LIVE_LABEL};
use crate::modules;
use crate::verity::{self, RootHash, UsrPartitions, VerityError};
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

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
    /// From the disk, verified.
    Verified {
        device: PathBuf,
        partitions: UsrPartitions,
    },
    /// From the ISO, verified: `backing.disk` is the ISO's device.
    Live {
        device: PathBuf,
        backing: UsrPartitions,
    },
}

/// The modules that reach a verified /usr: the disk controllers a node may
/// boot from (absent hardware is skipped), device-mapper's verity target,
/// and the filesystem.
pub const VERITY_MODULES: &[&str] = &["virtio_blk", "virtio_scsi", "sd_mod", "ahci", "nvme", "dm_verity", "squashfs"];

/// How long the boot disk may take to appear after its driver loaded.
const DISK_WAIT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum VerifiedUsrError {
    #[error("loading the modules for a verified /usr")]
    Modules(#[source] modules::ModuleError),
    #[error(transparent)]
    Verity(#[from] VerityError),
    #[error("{source}; nor does any of {devices} hold the Kelson ISO (an iso9660 filesystem labelled {LIVE_LABEL})")]
    NotFound {
        #[source]
        source: VerityError,
        devices: String,
    },
    #[error(transparent)]
    Live(#[from] LiveError),
    #[error("mounting the verified /usr ({device}) read-only")]
    Mount {
        device: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Finds, verifies and mounts /usr from the disk that holds the partitions
/// of `root_hash` (the `usrhash=` value), else from the Kelson ISO.
pub fn mount_verified_usr(
    kernel: &dyn Kernel,
    root_hash: &str,
    module_dir: &Path,
) -> Result<UsrOutcome, VerifiedUsrError> {
    let root = RootHash::parse(root_hash)?;
    let names: Vec<String> = VERITY_MODULES.iter().chain(live::LIVE_MODULES).map(|m| (*m).to_owned()).collect();
    load_all(kernel, module_dir, &names).map_err(VerifiedUsrError::Modules)?;
    // Disks appear a little after their driver binds.
    let started = Instant::now();
    let (sys, dev) = (Path::new("/sys/class/block"), Path::new("/dev"));
    let (device, outcome) = loop {
        let disks = whole_disks(kernel, sys, dev);
        let error = match verity::find_partitions(kernel, &disks, &root) {
            Ok(partitions) => {
                let device = verity::open_usr(kernel, &partitions, &root)?;
                break (device.clone(), UsrOutcome::Verified { device, partitions });
            }
            Err(e) => e,
        };
        let candidates = live::candidate_devices(kernel, sys, dev);
        if let Some(iso) = live::find_iso(kernel, &candidates) {
            let (device, backing) = live::open_live_usr(kernel, &iso, &root)?;
            break (device.clone(), UsrOutcome::Live { device, backing });
        }
        if started.elapsed() >= DISK_WAIT {
            let devices = candidates.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(", ");
            return Err(VerifiedUsrError::NotFound { source: error, devices });
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let flags = MountFlags { readonly: true, nodev: true, ..MountFlags::default() };
    kernel
        .mount(&device.to_string_lossy(), Path::new("/usr"), "squashfs", flags, None)
        .map_err(|source| VerifiedUsrError::Mount { device: device.clone(), source })?;
    Ok(outcome)
}

/// Loads `names` with their dependencies; the first that fails is the error
/// (absent hardware is not a failure).
fn load_all(kernel: &dyn Kernel, module_dir: &Path, names: &[String]) -> Result<(), modules::ModuleError> {
    let report = modules::load_listed(kernel, module_dir, names)?;
    report.failed.into_iter().next().map_or(Ok(()), Err)
}

/// Whole disks the kernel knows, as /dev paths: not partitions, and not
/// loop, ram, zram, device-mapper or optical devices.
pub fn whole_disks(kernel: &dyn Kernel, sys_class_block: &Path, dev: &Path) -> Vec<PathBuf> {
    let names = kernel.list_dir(sys_class_block).unwrap_or_default();
    names
        .into_iter()
        .filter(|n| !["loop", "ram", "zram", "dm-", "sr"].iter().any(|p| n.starts_with(p)))
        .filter(|n| !kernel.exists(&sys_class_block.join(n).join("partition")))
        .map(|n| dev.join(n))
        .collect()
}

/// Mounts `image` over /usr if it exists.
pub fn mount_usr(kernel: &dyn Kernel, image: &Path, module_dir: &Path) -> Result<UsrOutcome, UsrError> {
    if !kernel.exists(image) {
        return Ok(UsrOutcome::InPlace);
    }
    let names = ["loop".to_owned(), "squashfs".to_owned()];
    load_all(kernel, module_dir, &names).map_err(|source| UsrError::Modules { image: image.to_owned(), source })?;
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
    fn whole_disks_leave_out_partitions_and_virtual_devices() {
        let k = FakeKernel::default()
            .with_file("/sys/class/block/vda/dev", "254:0")
            .with_file("/sys/class/block/vda1/partition", "1")
            .with_file("/sys/class/block/nvme0n1/dev", "259:0")
            .with_file("/sys/class/block/loop0/dev", "7:0")
            .with_file("/sys/class/block/dm-0/dev", "253:0")
            .with_file("/sys/class/block/sr0/dev", "11:0");
        let disks = whole_disks(&k, Path::new("/sys/class/block"), Path::new("/dev"));
        assert_eq!(disks, vec![PathBuf::from("/dev/nvme0n1"), PathBuf::from("/dev/vda")]);
    }

    #[test]
    fn a_verified_usr_is_found_set_up_read_through_and_mounted() {
        use crate::verity::tests::{disk, superblock, ROOT};
        let root = RootHash::parse(ROOT).unwrap();
        let dep: String =
            VERITY_MODULES.iter().chain(live::LIVE_MODULES).map(|m| format!("kernel/{m}.ko:\n")).collect();
        let k = FakeKernel::default()
            .with_file("/m/modules.dep", &dep)
            .with_file("/sys/class/block/vda/dev", "254:0")
            .with_bytes(
                "/dev/vda",
                disk(&[(verity::USR_TYPE, root.data_uuid()), (verity::USR_VERITY_TYPE, root.hash_uuid())]),
            )
            .with_bytes("/dev/vda2", superblock(&[]))
            .with_bytes("/dev/dm-0", vec![0u8; 1000 * 4096]);
        let outcome = mount_verified_usr(&k, ROOT, Path::new("/m")).unwrap();
        let partitions = UsrPartitions { disk: "/dev/vda".into(), data: "/dev/vda1".into(), hash: "/dev/vda2".into() };
        assert_eq!(outcome, UsrOutcome::Verified { device: "/dev/dm-0".into(), partitions });
        let calls = k.calls();
        assert_eq!(
            calls.iter().filter(|c| c.starts_with("load ")).count(),
            VERITY_MODULES.len() + live::LIVE_MODULES.len()
        );
        assert!(calls.contains(&format!("verity usr 8000 1 /dev/vda1 /dev/vda2 4096 4096 1000 1 sha256 {ROOT} -")));
        assert_eq!(calls.last().map(String::as_str), Some("mount /dev/dm-0 /usr squashfs - ro"));
    }

    #[test]
    fn with_no_partition_of_the_root_hash_usr_comes_verified_from_the_iso() {
        use crate::live::tests::iso;
        use crate::verity::tests::{disk, superblock, ROOT};
        let dep: String =
            VERITY_MODULES.iter().chain(live::LIVE_MODULES).map(|m| format!("kernel/{m}.ko:\n")).collect();
        let other = uuid::Uuid::from_u128(9);
        let k = FakeKernel::default()
            .with_file("/m/modules.dep", &dep)
            // An installed disk of another version: its partitions are not this root hash's.
            .with_file("/sys/class/block/vda/dev", "254:0")
            .with_bytes("/dev/vda", disk(&[(verity::USR_TYPE, other), (verity::USR_VERITY_TYPE, other)]))
            .with_file("/sys/class/block/sr0/dev", "11:0")
            .with_bytes("/dev/sr0", iso(LIVE_LABEL))
            .with_file("/run/kelson/live/kelson/usr.squashfs", "hsqs")
            .with_file("/run/kelson/live/kelson/usr.verity", "")
            .with_bytes("/dev/loop1", superblock(&[]))
            .with_bytes("/dev/dm-0", vec![0u8; 1000 * 4096]);
        let outcome = mount_verified_usr(&k, ROOT, Path::new("/m")).unwrap();
        let backing = UsrPartitions { disk: "/dev/sr0".into(), data: "/dev/loop0".into(), hash: "/dev/loop1".into() };
        assert_eq!(outcome, UsrOutcome::Live { device: "/dev/dm-0".into(), backing });
        let calls = k.calls();
        for module in ["isofs", "sr_mod", "loop"] {
            assert!(calls.contains(&format!("load /m/kernel/{module}.ko")), "{module} not loaded: {calls:?}");
        }
        assert!(calls.contains(&"mount /dev/sr0 /run/kelson/live iso9660 - ro".to_owned()), "{calls:?}");
        assert_eq!(calls.last().map(String::as_str), Some("mount /dev/dm-0 /usr squashfs - ro"));
    }

    #[test]
    fn a_bad_root_hash_is_named_before_anything_is_loaded() {
        let k = FakeKernel::default();
        let err = mount_verified_usr(&k, "abc", Path::new("/m")).unwrap_err();
        assert_eq!(err.to_string(), "usrhash=\"abc\" is not a SHA-256 root hash (64 hexadecimal digits)");
        assert!(k.calls().is_empty());
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
