//! /usr of a live node, from the Kelson ISO.
//!
//! The ISO (image/build-iso) carries /usr as a squashfs file and its
//! dm-verity hash tree as a second file; the command line its boot loaders
//! give the kernel carries that tree's root hash (`usrhash=`), as the disk
//! image's UKI does for its partitions. When no disk partition matches the
//! root hash, PID 1 looks for a block device holding an iso9660 filesystem
//! with the ISO's volume id (a CD drive, or the ISO written to a USB stick or
//! attached as a disk), mounts it read-only, attaches the two files to loop
//! devices and sets up dm-verity over them with the root hash from the
//! command line, never from the ISO alone.

use crate::kernel::{Kernel, MountFlags};
use crate::verity::{self, RootHash, UsrPartitions, VerityError};
use std::io;
use std::path::{Path, PathBuf};

/// The ISO's volume id (`xorriso -V`).
pub const LIVE_LABEL: &str = "KELSON_LIVE";
/// Where the ISO stays mounted while the node runs (the install stage reads
/// the disk image from it).
pub const LIVE_MOUNT: &str = "/run/kelson/live";
/// The live /usr and its hash tree, relative to the ISO's root.
pub const USR_FILE: &str = "kelson/usr.squashfs";
pub const VERITY_FILE: &str = "kelson/usr.verity";
/// The modules that reach the ISO besides the disk controllers the verified
/// /usr loads anyway: CD drives (sr_mod, PIIX IDE), its filesystem and loop
/// devices for the two files.
pub const LIVE_MODULES: &[&str] = &["ata_piix", "sr_mod", "isofs", "loop"];

/// Byte offset of an iso9660 filesystem's primary volume descriptor (sector
/// 16 of 2048 bytes), and the volume id's place in it.
const VOLUME_DESCRIPTOR: u64 = 16 * 2048;
const VOLUME_ID: std::ops::Range<usize> = 40..72;

#[derive(Debug, thiserror::Error)]
pub enum LiveError {
    #[error("mounting the Kelson ISO {device} read-only on {LIVE_MOUNT}")]
    Mount {
        device: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the Kelson ISO {device} has no {file}")]
    Missing { device: PathBuf, file: &'static str },
    #[error("attaching {file} of the Kelson ISO {device} to a loop device")]
    Loop {
        device: PathBuf,
        file: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Verity(#[from] VerityError),
}

/// The volume id of the iso9660 filesystem on `device`, if it holds one.
pub fn iso_volume_id(kernel: &dyn Kernel, device: &Path) -> Option<String> {
    let descriptor = kernel.read_at(device, VOLUME_DESCRIPTOR, 2048).ok()?;
    // Type 1 (primary), then the standard identifier.
    if descriptor.len() < VOLUME_ID.end || descriptor[0] != 1 || &descriptor[1..6] != b"CD001" {
        return None;
    }
    Some(String::from_utf8_lossy(&descriptor[VOLUME_ID]).trim_end_matches([' ', '\0']).to_owned())
}

/// Whole devices an ISO can be on: CD drives and the disks (a USB stick, a
/// virtual disk), not partitions.
pub fn candidate_devices(kernel: &dyn Kernel, sys_class_block: &Path, dev: &Path) -> Vec<PathBuf> {
    let names = kernel.list_dir(sys_class_block).unwrap_or_default();
    names
        .into_iter()
        .filter(|n| ["sr", "vd", "sd", "nvme"].iter().any(|p| n.starts_with(p)))
        .filter(|n| !kernel.exists(&sys_class_block.join(n).join("partition")))
        .map(|n| dev.join(n))
        .collect()
}

/// The first of `devices` holding the Kelson ISO.
pub fn find_iso(kernel: &dyn Kernel, devices: &[PathBuf]) -> Option<PathBuf> {
    devices.iter().find(|d| iso_volume_id(kernel, d).as_deref() == Some(LIVE_LABEL)).cloned()
}

/// Mounts the ISO on `device`, sets up /usr's dm-verity device over its two
/// files and reads it through (as [`verity::open_usr`] does for a disk).
/// Returns the verified device and what backs it (`disk` is the ISO's
/// device, `data` and `hash` the loop devices).
pub fn open_live_usr(
    kernel: &dyn Kernel,
    device: &Path,
    root: &RootHash,
) -> Result<(PathBuf, UsrPartitions), LiveError> {
    let mount = Path::new(LIVE_MOUNT);
    kernel.create_dir_all(mount).map_err(|source| LiveError::Mount { device: device.to_owned(), source })?;
    let flags = MountFlags { readonly: true, nodev: true, nosuid: true, ..MountFlags::default() };
    kernel
        .mount(&device.to_string_lossy(), mount, "iso9660", flags, None)
        .map_err(|source| LiveError::Mount { device: device.to_owned(), source })?;
    let attach = |file: &'static str| {
        let path = mount.join(file);
        if !kernel.exists(&path) {
            return Err(LiveError::Missing { device: device.to_owned(), file });
        }
        kernel.attach_loop(&path).map_err(|source| LiveError::Loop { device: device.to_owned(), file: path, source })
    };
    let data = attach(USR_FILE)?;
    let hash = attach(VERITY_FILE)?;
    let backing = UsrPartitions { disk: device.to_owned(), data, hash };
    let verified = verity::open_usr(kernel, &backing, root)?;
    Ok((verified, backing))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::kernel::fake::FakeKernel;
    use crate::verity::tests::{superblock, ROOT};

    /// The first 34 KiB of an iso9660 filesystem labelled `label`.
    pub(crate) fn iso(label: &str) -> Vec<u8> {
        let mut image = vec![0u8; 17 * 2048];
        let pvd = &mut image[16 * 2048..];
        pvd[0] = 1;
        pvd[1..6].copy_from_slice(b"CD001");
        pvd[6] = 1;
        pvd[40..72].fill(b' ');
        pvd[40..40 + label.len()].copy_from_slice(label.as_bytes());
        image
    }

    #[test]
    fn the_iso_is_found_by_its_volume_id_on_cd_drives_and_disks() {
        let k = FakeKernel::default()
            .with_file("/sys/class/block/sr0/dev", "11:0")
            .with_file("/sys/class/block/sr1/dev", "11:1")
            .with_file("/sys/class/block/vda/dev", "254:0")
            .with_file("/sys/class/block/vda1/partition", "1")
            .with_file("/sys/class/block/loop0/dev", "7:0")
            .with_bytes("/dev/sr0", iso("SOME_OTHER_CD"))
            .with_bytes("/dev/sr1", vec![0u8; 1 << 16])
            .with_bytes("/dev/vda", iso(LIVE_LABEL));
        let devices = candidate_devices(&k, Path::new("/sys/class/block"), Path::new("/dev"));
        assert_eq!(devices, ["/dev/sr0", "/dev/sr1", "/dev/vda"].map(PathBuf::from));
        assert_eq!(iso_volume_id(&k, Path::new("/dev/sr0")).as_deref(), Some("SOME_OTHER_CD"));
        assert_eq!(iso_volume_id(&k, Path::new("/dev/sr1")), None);
        assert_eq!(find_iso(&k, &devices), Some(PathBuf::from("/dev/vda")));
        assert_eq!(find_iso(&k, &devices[..2]), None);
    }

    #[test]
    fn the_live_usr_is_verified_over_loop_devices_of_the_isos_files() {
        let root = RootHash::parse(ROOT).unwrap();
        let k = FakeKernel::default()
            .with_file("/run/kelson/live/kelson/usr.squashfs", "hsqs")
            .with_file("/run/kelson/live/kelson/usr.verity", "")
            .with_bytes("/dev/loop1", superblock(&[]))
            .with_bytes("/dev/dm-0", vec![0u8; 1000 * 4096]);
        let (device, backing) = open_live_usr(&k, Path::new("/dev/sr0"), &root).unwrap();
        assert_eq!(device, PathBuf::from("/dev/dm-0"));
        assert_eq!(
            backing,
            UsrPartitions { disk: "/dev/sr0".into(), data: "/dev/loop0".into(), hash: "/dev/loop1".into() }
        );
        let calls = k.calls();
        assert_eq!(
            calls[..5],
            [
                "mkdir /run/kelson/live".to_owned(),
                "mount /dev/sr0 /run/kelson/live iso9660 - ro".to_owned(),
                "loop /run/kelson/live/kelson/usr.squashfs".to_owned(),
                "loop /run/kelson/live/kelson/usr.verity".to_owned(),
                format!("verity usr 8000 1 /dev/loop0 /dev/loop1 4096 4096 1000 1 sha256 {ROOT} -"),
            ]
        );
    }

    #[test]
    fn an_iso_without_the_usr_files_or_failing_verification_is_an_error() {
        let root = RootHash::parse(ROOT).unwrap();
        let k = FakeKernel::default().with_file("/run/kelson/live/kelson/usr.squashfs", "hsqs");
        let err = open_live_usr(&k, Path::new("/dev/sr0"), &root).unwrap_err();
        assert_eq!(err.to_string(), "the Kelson ISO /dev/sr0 has no kelson/usr.verity");

        let k = FakeKernel::default()
            .with_file("/run/kelson/live/kelson/usr.squashfs", "hsqs")
            .with_file("/run/kelson/live/kelson/usr.verity", "")
            .with_bytes("/dev/loop1", superblock(&[]))
            .with_bytes("/dev/dm-0", vec![0u8; 1000 * 4096])
            .failing("/dev/dm-0", libc::EIO);
        let err = open_live_usr(&k, Path::new("/dev/sr0"), &root).unwrap_err();
        assert!(err.to_string().starts_with("/usr failed verification: reading /dev/dm-0"), "{err}");
    }
}
