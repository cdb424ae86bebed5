//! Where /var lives. A persistent ext4 filesystem labelled `KELSON_STATE`
//! if a disk has one; a disk named by `kelson.state=/dev/...` is formatted
//! only when it is blank; otherwise tmpfs. A disk with any signature on it
//! is never written to.

use crate::kernel::Kernel;
use std::io;
use std::path::{Path, PathBuf};

pub const STATE_LABEL: &str = "KELSON_STATE";
/// How much of each end of a disk must be zero for it to count as blank:
/// every common partition table and filesystem puts a signature in the
/// first MiB, and GPT keeps its backup header in the last sectors.
const BLANK_WINDOW: u64 = 1 << 20;

/// What the first and last MiB of a disk say about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiskContent {
    Blank,
    Ext4 {
        label: String,
    },
    /// Something is there; `what` names it when it is recognised.
    Signature {
        what: String,
        offset: u64,
    },
}

fn has(buf: &[u8], offset: usize, magic: &[u8]) -> bool {
    buf.get(offset..offset + magic.len()) == Some(magic)
}

/// Classifies a disk from its head (first MiB, or all of a small disk) and
/// tail (last MiB). Pure, so every signature case is unit-tested.
pub fn classify(head: &[u8], tail: &[u8], tail_offset: u64) -> DiskContent {
    if has(head, 1080, &[0x53, 0xEF]) {
        let label = head.get(1144..1160).unwrap_or(&[]);
        let end = label.iter().position(|b| *b == 0).unwrap_or(label.len());
        return DiskContent::Ext4 { label: String::from_utf8_lossy(&label[..end]).into_owned() };
    }
    let known: &[(&str, usize, &[u8])] = &[
        ("GPT partition table", 512, b"EFI PART"),
        ("LUKS header", 0, b"LUKS\xba\xbe"),
        ("XFS filesystem", 0, b"XFSB"),
        ("ISO 9660 filesystem", 32769, b"CD001"),
        ("btrfs filesystem", 65600, b"_BHRfS_M"),
        ("FAT filesystem", 54, b"FAT"),
        ("FAT32 filesystem", 82, b"FAT32"),
        ("swap space", 4086, b"SWAPSPACE2"),
        ("squashfs", 0, b"hsqs"),
        ("MBR partition table", 510, &[0x55, 0xAA]),
    ];
    for (what, offset, magic) in known {
        if has(head, *offset, magic) {
            return DiskContent::Signature { what: what.to_string(), offset: *offset as u64 };
        }
    }
    if let Some(i) = head.iter().position(|b| *b != 0) {
        return DiskContent::Signature { what: "non-zero data".into(), offset: i as u64 };
    }
    if let Some(i) = tail.iter().position(|b| *b != 0) {
        return DiskContent::Signature { what: "non-zero data".into(), offset: tail_offset + i as u64 };
    }
    DiskContent::Blank
}

/// Reads the ends of a disk (or a file standing in for one) and classifies it.
pub fn probe(kernel: &dyn Kernel, path: &Path) -> io::Result<DiskContent> {
    let size = kernel.size(path)?;
    let head_len = size.min(BLANK_WINDOW);
    let head = read_exactly(kernel, path, 0, head_len)?;
    let tail_offset = size.saturating_sub(BLANK_WINDOW).max(head_len);
    let tail = read_exactly(kernel, path, tail_offset, size - tail_offset)?;
    Ok(classify(&head, &tail, tail_offset))
}

fn read_exactly(kernel: &dyn Kernel, path: &Path, offset: u64, len: u64) -> io::Result<Vec<u8>> {
    let data = kernel.read_at(path, offset, len as usize)?;
    if (data.len() as u64) < len {
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, format!("{len} bytes at byte {offset}")));
    }
    Ok(data)
}

/// Block devices the kernel knows, as /dev paths (whole disks and
/// partitions; loop, ram and zram devices left out).
pub fn block_devices(kernel: &dyn Kernel, sys_class_block: &Path, dev: &Path) -> Vec<PathBuf> {
    let mut names = kernel.list_dir(sys_class_block).unwrap_or_default();
    names.retain(|n| !(n.starts_with("loop") || n.starts_with("ram") || n.starts_with("zram")));
    names.sort();
    names.into_iter().map(|n| dev.join(n)).collect()
}

/// The first device carrying an ext4 filesystem labelled [`STATE_LABEL`].
pub fn find_labelled(kernel: &dyn Kernel, devices: &[PathBuf]) -> Option<PathBuf> {
    devices
        .iter()
        .find(|d| matches!(probe(kernel, d), Ok(DiskContent::Ext4 { label }) if label == STATE_LABEL))
        .cloned()
}

/// What to do about /var.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StatePlan {
    Mount(PathBuf),
    FormatThenMount(PathBuf),
    Tmpfs,
}

#[derive(Debug, thiserror::Error)]
pub enum StateDiskError {
    #[error("state disk {device} (named by kelson.state) did not appear within {waited_ms} ms")]
    Missing { device: PathBuf, waited_ms: u64 },
    #[error("reading state disk {device}")]
    Probe {
        device: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "refusing to format state disk {device}: it is not blank ({what} at byte {offset}); \
         wipe it, or give it an ext4 filesystem labelled KELSON_STATE"
    )]
    NotBlank { device: PathBuf, what: String, offset: u64 },
    #[error("formatting state disk {device} as ext4 ({command})")]
    Format {
        device: PathBuf,
        command: String,
        #[source]
        source: io::Error,
    },
    #[error("running {command}")]
    Tool {
        command: String,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Partition(#[from] crate::state_part::StatePartitionError),
    #[error("the new state partition {device} did not appear within {waited_ms} ms")]
    PartitionMissing { device: PathBuf, waited_ms: u64 },
    #[error("mounting {what} on /var")]
    Mount {
        what: String,
        #[source]
        source: io::Error,
    },
}

/// Decides what /var gets. `named` is the `kelson.state` device, which must
/// already exist (the caller waits for it).
pub fn plan(kernel: &dyn Kernel, named: Option<&Path>, devices: &[PathBuf]) -> Result<StatePlan, StateDiskError> {
    if let Some(device) = named {
        let content =
            probe(kernel, device).map_err(|source| StateDiskError::Probe { device: device.to_owned(), source })?;
        return match content {
            DiskContent::Ext4 { label } if label == STATE_LABEL => Ok(StatePlan::Mount(device.to_owned())),
            DiskContent::Blank => Ok(StatePlan::FormatThenMount(device.to_owned())),
            DiskContent::Ext4 { label } => Err(StateDiskError::NotBlank {
                device: device.to_owned(),
                what: format!("an ext4 filesystem labelled {label:?}"),
                offset: 1080,
            }),
            DiskContent::Signature { what, offset } => {
                Err(StateDiskError::NotBlank { device: device.to_owned(), what, offset })
            }
        };
    }
    Ok(find_labelled(kernel, devices).map_or(StatePlan::Tmpfs, StatePlan::Mount))
}

/// `partx` telling the kernel about partition `number` of `disk`: `add`
/// for a new one, `update` for one whose size changed.
pub fn partx_command(action: &str, disk: &Path, number: u32) -> std::process::Command {
    let mut cmd = std::process::Command::new("partx");
    cmd.arg(format!("--{action}")).arg(format!("--nr={number}")).arg(disk);
    cmd
}

/// Grows a mounted ext4 filesystem to its partition's size.
pub fn resize_command(device: &Path) -> std::process::Command {
    let mut cmd = std::process::Command::new("resize2fs");
    cmd.arg(device);
    cmd
}

/// The mkfs command for a blank state disk.
pub fn mkfs_command(device: &Path) -> std::process::Command {
    let mut cmd = std::process::Command::new("mkfs.ext4");
    cmd.args(["-q", "-F", "-L", STATE_LABEL, "-E", "lazy_itable_init=1,lazy_journal_init=1"]).arg(device);
    cmd
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::LinuxKernel;
    use std::io::Write;

    fn disk(size: usize, writes: &[(usize, &[u8])]) -> tempfile::NamedTempFile {
        let mut data = vec![0u8; size];
        for (off, bytes) in writes {
            data[*off..*off + bytes.len()].copy_from_slice(bytes);
        }
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(&data).unwrap();
        f
    }

    #[test]
    fn an_all_zero_disk_is_blank() {
        let d = disk(4 << 20, &[]);
        assert_eq!(probe(&LinuxKernel, d.path()).unwrap(), DiskContent::Blank);
    }

    #[test]
    fn a_disk_smaller_than_the_window_is_read_whole() {
        let d = disk(4096, &[]);
        assert_eq!(probe(&LinuxKernel, d.path()).unwrap(), DiskContent::Blank);
    }

    #[test]
    fn partition_tables_and_filesystems_are_recognised() {
        let cases: &[(usize, &[u8], &str)] = &[
            (510, &[0x55, 0xAA], "MBR partition table"),
            (512, b"EFI PART", "GPT partition table"),
            (32769, b"CD001", "ISO 9660 filesystem"),
            (0, b"XFSB", "XFS filesystem"),
            (65600, b"_BHRfS_M", "btrfs filesystem"),
        ];
        for (off, magic, what) in cases {
            let d = disk(4 << 20, &[(*off, magic)]);
            match probe(&LinuxKernel, d.path()).unwrap() {
                DiskContent::Signature { what: w, offset } => {
                    assert_eq!(&w, what);
                    assert_eq!(offset, *off as u64);
                }
                other => panic!("{what}: {other:?}"),
            }
        }
    }

    #[test]
    fn stray_data_at_the_end_is_not_blank() {
        let size = 4 << 20;
        let d = disk(size, &[(size - 100, b"x")]);
        assert_eq!(
            probe(&LinuxKernel, d.path()).unwrap(),
            DiskContent::Signature { what: "non-zero data".into(), offset: (size - 100) as u64 }
        );
    }

    #[test]
    fn an_ext4_label_is_read_from_the_superblock() {
        let d = disk(4 << 20, &[(1080, &[0x53, 0xEF]), (1144, b"KELSON_STATE")]);
        assert_eq!(probe(&LinuxKernel, d.path()).unwrap(), DiskContent::Ext4 { label: "KELSON_STATE".into() });
    }

    #[test]
    fn a_named_blank_disk_is_formatted_and_a_named_used_disk_refused() {
        let blank = disk(4 << 20, &[]);
        assert_eq!(
            plan(&LinuxKernel, Some(blank.path()), &[]).unwrap(),
            StatePlan::FormatThenMount(blank.path().to_owned())
        );
        let used = disk(4 << 20, &[(510, &[0x55, 0xAA])]);
        let err = plan(&LinuxKernel, Some(used.path()), &[]).unwrap_err();
        assert!(err.to_string().contains("refusing to format"), "{err}");
        assert!(err.to_string().contains("MBR partition table at byte 510"), "{err}");
        let other_ext4 = disk(4 << 20, &[(1080, &[0x53, 0xEF]), (1144, b"data")]);
        assert!(matches!(plan(&LinuxKernel, Some(other_ext4.path()), &[]), Err(StateDiskError::NotBlank { .. })));
    }

    #[test]
    fn without_a_named_disk_the_labelled_one_is_used_else_tmpfs() {
        let blank = disk(2 << 20, &[]);
        let state = disk(2 << 20, &[(1080, &[0x53, 0xEF]), (1144, b"KELSON_STATE")]);
        let devices = vec![blank.path().to_owned(), state.path().to_owned()];
        assert_eq!(plan(&LinuxKernel, None, &devices).unwrap(), StatePlan::Mount(state.path().to_owned()));
        assert_eq!(plan(&LinuxKernel, None, &devices[..1]).unwrap(), StatePlan::Tmpfs);
    }

    #[test]
    fn a_real_mkfs_ext4_is_recognised_as_the_state_filesystem() {
        let d = disk(16 << 20, &[]);
        let status = mkfs_command(d.path()).status();
        let Ok(status) = status else {
            panic!("mkfs.ext4 must be installed for this test (e2fsprogs)");
        };
        assert!(status.success());
        assert_eq!(probe(&LinuxKernel, d.path()).unwrap(), DiskContent::Ext4 { label: STATE_LABEL.into() });
    }
}
