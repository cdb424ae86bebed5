//! Finding a cloud-init NoCloud seed: a volume labelled `cidata` or
//! `CIDATA`, vfat or iso9660, on any block device (CD-ROMs and partitions
//! included). Labels are read straight from each device's first sectors, so
//! nothing is mounted until the seed is found; then it is mounted
//! read-only just long enough to read its three files.
//!
//! Seeds fetched from a URL (`ds=nocloud;s=http://...`) are not supported
//! yet: the node says so on the console instead of ignoring the setting.

use crate::kernel::{BlockEvent, Kernel, MountFlags};
use kelson_config::nocloud::SeedFiles;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tracing::warn;

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

/// Whether a block device is worth probing: everything but RAM and loop
/// devices (the /usr image sits on a loop device).
fn is_candidate(name: &str) -> bool {
    !(name.starts_with("loop") || name.starts_with("ram") || name.starts_with("zram"))
}

/// `device` if it holds a seed volume, and its filesystem.
fn probe(kernel: &dyn Kernel, dev: &Path, name: &str) -> Option<(PathBuf, SeedFs)> {
    let device = dev.join(name);
    // No medium in a CD drive, or a device that went away: not a seed.
    let head = kernel.read_prefix(&device, PROBE_BYTES).ok()?;
    let (fs, label) = probe_label(&head)?;
    is_seed_label(&label).then_some((device, fs))
}

/// The first of the block devices there are now that holds a seed volume.
fn scan(kernel: &dyn Kernel, sys_block: &Path, dev: &Path) -> Option<(PathBuf, SeedFs)> {
    let names = kernel.list_dir(sys_block).unwrap_or_default();
    names.iter().filter(|n| is_candidate(n)).find_map(|name| probe(kernel, dev, name))
}

/// The first device holding a seed volume: among the block devices there
/// are, then among those the kernel adds until `wait` has passed (each
/// probed as it appears). With a zero `wait`, the devices there are now
/// are the answer.
pub fn find(kernel: &dyn Kernel, sys_block: &Path, dev: &Path, wait: Duration) -> Option<(PathBuf, SeedFs)> {
    let deadline = Instant::now() + wait;
    // Watching starts before the scan, so a device added in between is
    // still seen.
    let mut events = match wait.is_zero() {
        true => None,
        false => match kernel.watch_block_devices() {
            Ok(events) => Some(events),
            Err(e) => {
                warn!(error = %e, "cannot watch for block devices; looking for the seed every 100 ms instead");
                None
            }
        },
    };
    loop {
        if let Some(found) = scan(kernel, sys_block, dev) {
            return Some(found);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        let Some(watch) = events.as_mut() else {
            std::thread::sleep(left.min(Duration::from_millis(100)));
            continue;
        };
        // Until a device holds the seed or the time is up; a lost event
        // means looking at every device again.
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match watch.next(left) {
                Ok(Some(BlockEvent::Device(name))) if is_candidate(&name) => {
                    if let Some(found) = probe(kernel, dev, &name) {
                        return Some(found);
                    }
                }
                Ok(Some(BlockEvent::Device(_))) => {}
                Ok(Some(BlockEvent::Missed)) => break,
                Ok(None) => return None,
                Err(e) => {
                    warn!(error = %e, "watching for block devices failed; looking for the seed every 100 ms instead");
                    events = None;
                    break;
                }
            }
        }
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
    fn a_seed_device_added_while_waiting_is_found_as_it_appears() {
        let kernel = FakeKernel::default()
            .with_file("/sys/class/block/vda/dev", "254:0")
            .with_file("/dev/vda", "")
            .with_block_device_later("vdb", vec![0; 512])
            .with_block_device_later("sr0", iso_head("CIDATA"))
            .with_block_device_later("sr1", iso_head("cidata"));
        let found = find(&kernel, Path::new(SYS_BLOCK), Path::new("/dev"), Duration::from_secs(10));
        assert_eq!(found, Some((PathBuf::from("/dev/sr0"), SeedFs::Iso9660)));
        assert_eq!(kernel.calls(), vec!["watch block devices"]);
        assert_eq!(kernel.block_devices_to_come.lock().unwrap().len(), 1, "sr1 is never waited for");
    }

    #[test]
    fn without_a_wait_only_the_devices_there_now_are_looked_at() {
        let kernel = FakeKernel::default().with_block_device_later("vdb", fat16_head("cidata"));
        assert_eq!(find(&kernel, Path::new(SYS_BLOCK), Path::new("/dev"), Duration::ZERO), None);
        assert!(kernel.calls().is_empty(), "{:?}", kernel.calls());
    }

    #[test]
    fn the_wait_ends_when_no_device_comes_with_none_found() {
        let kernel = FakeKernel::default().with_block_device_later("vdb", vec![0; 512]);
        assert_eq!(find(&kernel, Path::new(SYS_BLOCK), Path::new("/dev"), Duration::from_secs(10)), None);
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
