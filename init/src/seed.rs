//! Finding a cloud-init NoCloud seed: a volume labelled `cidata` or
//! `CIDATA`, vfat or iso9660, on any block device (CD-ROMs and partitions
//! included). Labels are read straight from each device's first sectors, so
//! nothing is mounted until the seed is found; then it is mounted
//! read-only just long enough to read its three files.
//!
//! Seeds fetched from a URL (`ds=nocloud;s=http://...`) are not supported
//! yet: the node says so on the console instead of ignoring the setting.

use crate::kernel::{Kernel, MountFlags};
use kelson_config::nocloud::SeedFiles;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub const SEED_MOUNT: &str = "/run/kelson/seed";
pub const SYS_BLOCK: &str = "/sys/class/block";

/// Enough of a device to see both a FAT boot sector and the ISO 9660
/// primary volume descriptor (sector 16 of 2048 bytes).
const PROBE_BYTES: usize = 32768 + 2048;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeedFs {
    Vfat,
    Iso9660,
}

impl SeedFs {
    pub fn fstype(self) -> &'static str {
        match self {
            SeedFs::Vfat => "vfat",
            SeedFs::Iso9660 => "iso9660",
        }
    }
}

/// The filesystem type and volume label in a device's first bytes, if it
/// holds FAT or ISO 9660.
pub fn probe_label(head: &[u8]) -> Option<(SeedFs, String)> {
    let text = |range: std::ops::Range<usize>| -> Option<String> {
        head.get(range).map(|b| String::from_utf8_lossy(b).trim_end_matches([' ', '\0']).to_owned())
    };
    // ISO 9660: a primary volume descriptor (type 1, "CD001") at 32 KiB,
    // its volume identifier 40 bytes in.
    if head.get(32768) == Some(&1) && head.get(32769..32774) == Some(b"CD001") {
        return Some((SeedFs::Iso9660, text(32808..32840)?));
    }
    // FAT: boot signature, then the extended BPB's signature 0x29 at the
    // FAT12/16 or the FAT32 offset, the label 5 bytes after it.
    if head.get(510..512) != Some(&[0x55, 0xAA]) {
        return None;
    }
    let fat =
        |sig: usize, fs_type: usize| head.get(sig) == Some(&0x29) && head.get(fs_type..fs_type + 3) == Some(b"FAT");
    if fat(0x26, 0x36) {
        return Some((SeedFs::Vfat, text(0x2B..0x36)?));
    }
    if fat(0x42, 0x52) {
        return Some((SeedFs::Vfat, text(0x47..0x52)?));
    }
    None
}

fn is_seed_label(label: &str) -> bool {
    label.eq_ignore_ascii_case("cidata")
}

/// Block devices worth probing: everything but RAM and loop devices
/// (the /usr image sits on a loop device).
fn candidates(kernel: &dyn Kernel, sys_block: &Path) -> Vec<String> {
    kernel
        .list_dir(sys_block)
        .unwrap_or_default()
        .into_iter()
        .filter(|n| !(n.starts_with("loop") || n.starts_with("ram") || n.starts_with("zram")))
        .collect()
}

/// The first device holding a seed volume, looked for until `wait` has
/// passed (block devices appear a while after their drivers load).
pub fn find(kernel: &dyn Kernel, sys_block: &Path, dev: &Path, wait: Duration) -> Option<(PathBuf, SeedFs)> {
    let started = Instant::now();
    loop {
        for name in candidates(kernel, sys_block) {
            let device = dev.join(&name);
            // No medium in a CD drive, or a device that went away: skip it.
            let Ok(head) = kernel.read_prefix(&device, PROBE_BYTES) else { continue };
            if let Some((fs, label)) = probe_label(&head) {
                if is_seed_label(&label) {
                    return Some((device, fs));
                }
            }
        }
        if started.elapsed() >= wait {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SeedError {
    #[error("mounting seed {device} ({fstype}) on {target}")]
    Mount {
        device: PathBuf,
        fstype: &'static str,
        target: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("reading {file} from seed {device}")]
    Read {
        device: PathBuf,
        file: &'static str,
        #[source]
        source: io::Error,
    },
}

/// Mounts the seed read-only, reads its files, and unmounts it again.
pub fn read(kernel: &dyn Kernel, device: &Path, fs: SeedFs, mount_at: &Path) -> Result<SeedFiles, SeedError> {
    let _ = kernel.create_dir_all(mount_at);
    let flags = MountFlags { readonly: true, nosuid: true, nodev: true, noexec: true, relatime: false };
    kernel.mount(&device.to_string_lossy(), mount_at, fs.fstype(), flags, None).map_err(|source| SeedError::Mount {
        device: device.to_owned(),
        fstype: fs.fstype(),
        target: mount_at.to_owned(),
        source,
    })?;
    let read_one = |file: &'static str| -> Result<Option<String>, SeedError> {
        match kernel.read_file(&mount_at.join(file)) {
            Ok(bytes) => Ok(Some(String::from_utf8_lossy(&bytes).into_owned())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(SeedError::Read { device: device.to_owned(), file, source }),
        }
    };
    let files = (|| {
        Ok(SeedFiles {
            origin: format!("{} ({})", device.display(), fs.fstype()),
            meta_data: read_one("meta-data")?,
            user_data: read_one("user-data")?,
            network_config: read_one("network-config")?,
        })
    })();
    // The seed stays attached; unmounting lets it be ejected or replaced.
    let _ = kernel.unmount(mount_at);
    files
}

/// A `ds=nocloud;s=URL` or `ds=nocloud-net;s=URL` setting, from the
/// command line or the SMBIOS system serial.
pub fn url_setting(ds: &str) -> Option<String> {
    let mut parts = ds.split(';');
    let kind = parts.next()?;
    if kind != "nocloud" && kind != "nocloud-net" {
        return None;
    }
    parts.find_map(|p| p.strip_prefix("s=").or_else(|| p.strip_prefix("seedfrom=")).map(str::to_owned))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::fake::FakeKernel;

    fn iso_head(label: &str) -> Vec<u8> {
        let mut head = vec![0u8; PROBE_BYTES];
        head[32768] = 1;
        head[32769..32774].copy_from_slice(b"CD001");
        let mut id = [b' '; 32];
        id[..label.len()].copy_from_slice(label.as_bytes());
        head[32808..32840].copy_from_slice(&id);
        head
    }

    fn fat16_head(label: &str) -> Vec<u8> {
        let mut head = vec![0u8; 512];
        head[510] = 0x55;
        head[511] = 0xAA;
        head[0x26] = 0x29;
        let mut l = [b' '; 11];
        l[..label.len()].copy_from_slice(label.as_bytes());
        head[0x2B..0x36].copy_from_slice(&l);
        head[0x36..0x3E].copy_from_slice(b"FAT16   ");
        head
    }

    #[test]
    fn labels_are_read_from_iso_and_fat_headers() {
        assert_eq!(probe_label(&iso_head("cidata")), Some((SeedFs::Iso9660, "cidata".into())));
        assert_eq!(probe_label(&fat16_head("CIDATA")), Some((SeedFs::Vfat, "CIDATA".into())));
        assert_eq!(probe_label(&vec![0u8; PROBE_BYTES]), None);
        let mut ext4ish = vec![0u8; 4096];
        ext4ish[0x438] = 0x53;
        assert_eq!(probe_label(&ext4ish), None);
    }

    #[test]
    fn the_first_device_with_a_seed_label_is_found_and_loop_devices_are_skipped() {
        let mut data_iso = iso_head("DATA");
        data_iso.truncate(PROBE_BYTES);
        let kernel = FakeKernel::default()
            .with_file("/sys/class/block/loop0/dev", "7:0")
            .with_file("/sys/class/block/sr0/dev", "11:0")
            .with_file("/sys/class/block/vda/dev", "254:0")
            .with_file("/sys/class/block/vdb/dev", "254:16")
            .with_file("/dev/loop0", "")
            .with_file("/dev/vda", "");
        kernel.files.lock().unwrap().insert("/dev/sr0".into(), data_iso);
        kernel.files.lock().unwrap().insert("/dev/vdb".into(), fat16_head("cidata"));
        let found = find(&kernel, Path::new(SYS_BLOCK), Path::new("/dev"), Duration::ZERO);
        assert_eq!(found, Some((PathBuf::from("/dev/vdb"), SeedFs::Vfat)));
        assert!(!kernel.calls().iter().any(|c| c.contains("loop0")));
    }

    #[test]
    fn the_seed_is_mounted_read_only_read_and_unmounted() {
        let kernel = FakeKernel::default()
            .with_file("/run/kelson/seed/meta-data", "instance-id: i-1\n")
            .with_file("/run/kelson/seed/user-data", "#cloud-config\n");
        let files = read(&kernel, Path::new("/dev/sr0"), SeedFs::Iso9660, Path::new(SEED_MOUNT)).unwrap();
        assert_eq!(files.origin, "/dev/sr0 (iso9660)");
        assert_eq!(files.meta_data.as_deref(), Some("instance-id: i-1\n"));
        assert_eq!(files.network_config, None);
        let calls = kernel.calls();
        assert!(calls.contains(&"mount /dev/sr0 /run/kelson/seed iso9660 - ro".to_owned()), "{calls:?}");
        assert_eq!(calls.last().map(String::as_str), Some("umount /run/kelson/seed"));
    }

    #[test]
    fn url_settings_are_recognised() {
        assert_eq!(url_setting("nocloud;s=http://10.0.2.2:8000/"), Some("http://10.0.2.2:8000/".into()));
        assert_eq!(url_setting("nocloud-net;s=https://x/seed/"), Some("https://x/seed/".into()));
        assert_eq!(url_setting("nocloud"), None);
        assert_eq!(url_setting("ec2;s=http://x"), None);
    }
}
