//! The state partition of a node booted from the disk image. The image
//! holds no state partition: on first boot PID 1 adds one, labelled
//! `KELSON_STATE`, over the free space after the image's partitions, and on
//! every later boot grows it over space the disk gained (a VM disk or a
//! cloud volume resized). Only the GPT is written here; the caller tells
//! the kernel, makes or grows the filesystem.

use crate::kernel::{Kernel, KernelDisk};
use gpt::partition_types::{OperatingSystem, Type};
use std::path::{Path, PathBuf};
use uuid::Uuid;

/// The GPT name of the state partition (its ext4 label is the same).
pub const STATE_NAME: &str = "KELSON_STATE";
/// "Linux filesystem data".
pub const LINUX_DATA: Uuid = Uuid::from_u128(0x0fc63daf_8483_4772_8e79_3d69d8477de4);
/// Less free space than this is left alone: not worth a partition, or a
/// disk that did not really grow.
pub const MIN_BYTES: u64 = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum StatePartitionError {
    #[error("reading the partition table of {disk}")]
    Read {
        disk: PathBuf,
        #[source]
        source: gpt::GptError,
    },
    #[error("changing the partition table of {disk}")]
    Write {
        disk: PathBuf,
        #[source]
        source: gpt::GptError,
    },
}

/// What happened to the state partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StatePartition {
    /// Added over the free space: it needs a filesystem.
    Created {
        device: PathBuf,
        number: u32,
        bytes: u64,
    },
    /// Extended over space the disk gained: its filesystem can grow.
    Grown {
        device: PathBuf,
        number: u32,
        bytes: u64,
    },
    Unchanged {
        device: PathBuf,
        number: u32,
    },
    /// No state partition and too little free space for one.
    NoRoom {
        free_bytes: u64,
    },
}

/// Adds or grows the state partition on `disk` (a whole disk with a GPT).
pub fn ensure(kernel: &dyn Kernel, disk: &Path) -> Result<StatePartition, StatePartitionError> {
    let read_error = |source| StatePartitionError::Read { disk: disk.to_owned(), source };
    let write_error = |source| StatePartitionError::Write { disk: disk.to_owned(), source };
    // The backup header is not where it was if the disk grew: it is moved
    // to the new end when the table is written.
    let mut gpt = gpt::GptConfig::new()
        .writable(true)
        .only_valid_headers(false)
        .open_from_device(KernelDisk::new(kernel, disk))
        .map_err(read_error)?;
    // Rewriting the headers from the disk's present size makes the space it
    // gained usable.
    let partitions = gpt.partitions().clone();
    gpt.update_partitions(partitions).map_err(write_error)?;
    let block = u64::from(*gpt.logical_block_size());
    let existing =
        gpt.partitions().iter().find(|(_, p)| p.is_used() && p.name == STATE_NAME).map(|(n, p)| (*n, p.clone()));
    let free_after = |last: u64| -> Option<(u64, u64)> {
        gpt.find_free_sectors().into_iter().filter(|(start, _)| *start > last).max_by_key(|(_, len)| *len)
    };
    match existing {
        Some((number, partition)) => {
            let device = crate::verity::partition_device(disk, number);
            let Some((start, len)) = free_after(partition.last_lba) else {
                return Ok(StatePartition::Unchanged { device, number });
            };
            if start != partition.last_lba + 1 || len * block < MIN_BYTES {
                return Ok(StatePartition::Unchanged { device, number });
            }
            let mut table = gpt.partitions().clone();
            let grown = table.get_mut(&number).map(|p| {
                p.last_lba += len;
                (p.last_lba - p.first_lba + 1) * block
            });
            gpt.update_partitions(table).map_err(write_error)?;
            gpt.write_inplace().map_err(write_error)?;
            Ok(StatePartition::Grown { device, number, bytes: grown.unwrap_or_default() })
        }
        None => {
            let last = gpt.partitions().values().filter(|p| p.is_used()).map(|p| p.last_lba).max().unwrap_or(0);
            let Some((_, len)) = free_after(last).filter(|(_, len)| len * block >= MIN_BYTES) else {
                let free_bytes = free_after(last).map_or(0, |(_, len)| len * block);
                return Ok(StatePartition::NoRoom { free_bytes });
            };
            let part_type = Type { guid: LINUX_DATA, os: OperatingSystem::Linux };
            // Sizes are rounded down to the alignment; what is left over is
            // a few sectors.
            let number = gpt.add_partition(STATE_NAME, len * block, part_type, 0, None).map_err(write_error)?;
            let bytes = gpt.partitions().get(&number).map_or(0, |p| (p.last_lba - p.first_lba + 1) * block);
            gpt.write_inplace().map_err(write_error)?;
            Ok(StatePartition::Created { device: crate::verity::partition_device(disk, number), number, bytes })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::fake::FakeKernel;
    use crate::verity::tests::disk;

    fn read_table(k: &FakeKernel, path: &str) -> Vec<(u32, String, u64, u64)> {
        let gpt = gpt::GptConfig::new().writable(false).open_from_device(KernelDisk::new(k, Path::new(path))).unwrap();
        gpt.partitions().iter().map(|(n, p)| (*n, p.name.clone(), p.first_lba, p.last_lba)).collect()
    }

    #[test]
    fn the_state_partition_is_added_over_the_free_space_then_kept_then_grown_with_the_disk() {
        let mut image = disk(&[(crate::verity::USR_TYPE, Uuid::from_u128(1))]);
        image.resize(256 << 20, 0);
        let k = FakeKernel::default().with_bytes("/dev/vda", image);
        let created = ensure(&k, Path::new("/dev/vda")).unwrap();
        let StatePartition::Created { device, number: 2, bytes } = created else { panic!("{created:?}") };
        assert_eq!(device, PathBuf::from("/dev/vda2"));
        assert!(bytes > 250 << 20 && bytes < 256 << 20, "{bytes}");
        let table = read_table(&k, "/dev/vda");
        assert_eq!(table.len(), 2);
        assert_eq!(table[1].1, STATE_NAME);

        assert_eq!(
            ensure(&k, Path::new("/dev/vda")).unwrap(),
            StatePartition::Unchanged { device: "/dev/vda2".into(), number: 2 }
        );

        // The disk grows by 512 MiB.
        let mut grown = k.files.lock().unwrap().get(Path::new("/dev/vda")).unwrap().clone();
        grown.resize(768 << 20, 0);
        let k = FakeKernel::default().with_bytes("/dev/vda", grown);
        let outcome = ensure(&k, Path::new("/dev/vda")).unwrap();
        let StatePartition::Grown { number: 2, bytes, .. } = outcome else { panic!("{outcome:?}") };
        assert!(bytes > 760 << 20, "{bytes}");
        let table = read_table(&k, "/dev/vda");
        assert_eq!(table[1].2, read_table(&k, "/dev/vda")[1].2, "the partition keeps its start");
        // The table is valid at the new end: both headers read back.
        let gpt = gpt::GptConfig::new()
            .writable(false)
            .only_valid_headers(true)
            .open_from_device(KernelDisk::new(&k, Path::new("/dev/vda")))
            .unwrap();
        assert_eq!(gpt.header().backup_lba, (768 << 20) / 512 - 1);
    }

    #[test]
    fn a_full_disk_gets_no_state_partition() {
        let image = disk(&[(crate::verity::USR_TYPE, Uuid::from_u128(1))]);
        let k = FakeKernel::default().with_bytes("/dev/vda", image);
        let outcome = ensure(&k, Path::new("/dev/vda")).unwrap();
        assert!(matches!(outcome, StatePartition::NoRoom { free_bytes } if free_bytes < MIN_BYTES), "{outcome:?}");
    }
}
