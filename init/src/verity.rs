//! /usr from a dm-verity protected partition of the boot disk.
//!
//! The disk image carries /usr as a read-only filesystem in a GPT partition
//! of the `usr` type and its hash tree in one of the `usr-verity` type, as
//! systemd-repart writes them. The UKI's command line carries the tree's
//! root hash (`usrhash=`), so it is part of what the firmware measured and
//! signed. The two partitions are found by their GPT types and by the
//! partition UUIDs repart derives from the root hash (the data partition's
//! is its first 128 bits, the hash partition's its last 128), never by
//! device name. The hash partition's superblock gives the block sizes, the
//! number of data blocks and the salt; the device-mapper table is built
//! from those and the root hash from the command line, never from the disk
//! alone.

use crate::kernel::{Kernel, KernelDisk};
use std::io;
use std::path::{Path, PathBuf};
use uuid::Uuid;

/// The command line key holding the root hash of /usr's hash tree.
pub const USR_HASH_KEY: &str = "usrhash";
/// GPT partition types (the Discoverable Partitions Specification's, for
/// x86-64).
pub const USR_TYPE: Uuid = Uuid::from_u128(0x8484680c_9521_48c6_9c11_b0720656f69e);
pub const USR_VERITY_TYPE: Uuid = Uuid::from_u128(0x77ff5f63_e7b6_4633_acf4_1565b864c0e6);
/// The device-mapper name of the verified /usr.
pub const DM_NAME: &str = "usr";

#[derive(Debug, thiserror::Error)]
pub enum VerityError {
    #[error("{USR_HASH_KEY}={value:?} is not a SHA-256 root hash (64 hexadecimal digits)")]
    BadRootHash { value: String },
    #[error(
        "no disk holds the /usr partitions of {USR_HASH_KEY}={root_hash} (a usr partition with UUID {data} and a \
         usr-verity partition with UUID {hash}); disks looked at: {disks}"
    )]
    NotFound { root_hash: String, data: Uuid, hash: Uuid, disks: String },
    #[error("reading the verity superblock of {device}")]
    ReadSuperblock {
        device: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the verity superblock of {device} is unusable: {reason}")]
    BadSuperblock { device: PathBuf, reason: String },
    #[error("setting up dm-verity for /usr ({data} with hashes on {hash})")]
    Setup {
        data: PathBuf,
        hash: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "/usr failed verification: reading {device} at byte {offset} failed, so its data does not match \
         {USR_HASH_KEY}; the node will not run an unverified /usr"
    )]
    Corrupt {
        device: PathBuf,
        offset: u64,
        #[source]
        source: io::Error,
    },
}

/// A SHA-256 root hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RootHash([u8; 32]);

impl RootHash {
    pub fn parse(text: &str) -> Result<RootHash, VerityError> {
        let bad = || VerityError::BadRootHash { value: text.to_owned() };
        if text.len() != 64 {
            return Err(bad());
        }
        let mut bytes = [0u8; 32];
        for (i, byte) in bytes.iter_mut().enumerate() {
            *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2).ok_or_else(bad)?, 16).map_err(|_| bad())?;
        }
        Ok(RootHash(bytes))
    }

    /// The data partition's UUID: the hash's first 128 bits.
    pub fn data_uuid(&self) -> Uuid {
        Uuid::from_slice(&self.0[..16]).unwrap_or_default()
    }

    /// The hash partition's UUID: the hash's last 128 bits.
    pub fn hash_uuid(&self) -> Uuid {
        Uuid::from_slice(&self.0[16..]).unwrap_or_default()
    }

    pub fn hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// The two partitions backing /usr, and the disk that holds them (the boot
/// disk).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsrPartitions {
    pub disk: PathBuf,
    pub data: PathBuf,
    pub hash: PathBuf,
}

/// Looks through the whole disks in `disks` for the partitions of `root`.
pub fn find_partitions(kernel: &dyn Kernel, disks: &[PathBuf], root: &RootHash) -> Result<UsrPartitions, VerityError> {
    let (data_uuid, hash_uuid) = (root.data_uuid(), root.hash_uuid());
    for disk in disks {
        let Ok(gpt) = gpt::GptConfig::new().writable(false).open_from_device(KernelDisk::new(kernel, disk)) else {
            continue;
        };
        let mut data = None;
        let mut hash = None;
        for (number, partition) in gpt.partitions() {
            let type_guid = partition.part_type_guid.guid;
            if type_guid == USR_TYPE && partition.part_guid == data_uuid {
                data = Some(partition_device(disk, *number));
            } else if type_guid == USR_VERITY_TYPE && partition.part_guid == hash_uuid {
                hash = Some(partition_device(disk, *number));
            }
        }
        if let (Some(data), Some(hash)) = (data, hash) {
            return Ok(UsrPartitions { disk: disk.clone(), data, hash });
        }
    }
    Err(VerityError::NotFound {
        root_hash: root.hex(),
        data: data_uuid,
        hash: hash_uuid,
        disks: disks.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(", "),
    })
}

/// `/dev/vda` and 2 → `/dev/vda2`; `/dev/nvme0n1` and 2 → `/dev/nvme0n1p2`.
pub fn partition_device(disk: &Path, number: u32) -> PathBuf {
    let name = disk.to_string_lossy();
    if name.ends_with(|c: char| c.is_ascii_digit()) {
        PathBuf::from(format!("{name}p{number}"))
    } else {
        PathBuf::from(format!("{name}{number}"))
    }
}

/// The hash partition's superblock, in veritysetup's on-disk format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Superblock {
    pub algorithm: String,
    pub data_block_size: u32,
    pub hash_block_size: u32,
    pub data_blocks: u64,
    pub salt: Vec<u8>,
}

const SUPERBLOCK_SIZE: usize = 512;

impl Superblock {
    pub fn parse(bytes: &[u8]) -> Result<Superblock, String> {
        if bytes.len() < SUPERBLOCK_SIZE || &bytes[..8] != b"verity\0\0" {
            return Err("no verity signature at the partition's start".into());
        }
        let u32_at = |at: usize| u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
        let version = u32_at(8);
        let hash_type = u32_at(12);
        if version != 1 || hash_type != 1 {
            return Err(format!("version {version}, hash type {hash_type} (only 1 and 1 are known)"));
        }
        let name = &bytes[32..64];
        let end = name.iter().position(|b| *b == 0).unwrap_or(name.len());
        let algorithm = String::from_utf8_lossy(&name[..end]).into_owned();
        let data_block_size = u32_at(64);
        let hash_block_size = u32_at(68);
        let mut blocks = [0u8; 8];
        blocks.copy_from_slice(&bytes[72..80]);
        let data_blocks = u64::from_le_bytes(blocks);
        let salt_size = u16::from_le_bytes([bytes[80], bytes[81]]) as usize;
        if salt_size > 256 {
            return Err(format!("salt of {salt_size} bytes (at most 256)"));
        }
        let sizes_ok = |size: u32| size.is_power_of_two() && (512..=65536).contains(&size);
        if !sizes_ok(data_block_size) || !sizes_ok(hash_block_size) || data_blocks == 0 {
            return Err(format!(
                "data block size {data_block_size}, hash block size {hash_block_size}, {data_blocks} data blocks"
            ));
        }
        Ok(Superblock {
            algorithm,
            data_block_size,
            hash_block_size,
            data_blocks,
            salt: bytes[88..88 + salt_size].to_vec(),
        })
    }

    /// The data area in 512-byte sectors.
    pub fn data_sectors(&self) -> u64 {
        self.data_blocks * u64::from(self.data_block_size) / 512
    }

    /// The `verity` target's parameters for these partitions (the hash
    /// tree starts one hash block in, after the superblock).
    pub fn table_params(&self, partitions: &UsrPartitions, root: &RootHash) -> String {
        let salt =
            if self.salt.is_empty() { "-".to_owned() } else { self.salt.iter().map(|b| format!("{b:02x}")).collect() };
        format!(
            "1 {} {} {} {} {} 1 {} {} {salt}",
            partitions.data.display(),
            partitions.hash.display(),
            self.data_block_size,
            self.hash_block_size,
            self.data_blocks,
            self.algorithm,
            root.hex(),
        )
    }
}

/// Sets up /usr's dm-verity device and reads it through once, so a block
/// that does not match its hash stops boot here rather than when a program
/// happens to read it. Returns the device to mount.
pub fn open_usr(kernel: &dyn Kernel, partitions: &UsrPartitions, root: &RootHash) -> Result<PathBuf, VerityError> {
    open_verified(kernel, partitions, root, DM_NAME)
}

/// Sets up the dm-verity device `dm_name` over `partitions` and reads it
/// through once; returns the device.
pub fn open_verified(
    kernel: &dyn Kernel,
    partitions: &UsrPartitions,
    root: &RootHash,
    dm_name: &str,
) -> Result<PathBuf, VerityError> {
    let head = kernel
        .read_at(&partitions.hash, 0, SUPERBLOCK_SIZE)
        .map_err(|source| VerityError::ReadSuperblock { device: partitions.hash.clone(), source })?;
    let superblock = Superblock::parse(&head)
        .map_err(|reason| VerityError::BadSuperblock { device: partitions.hash.clone(), reason })?;
    let params = superblock.table_params(partitions, root);
    let device = kernel.create_verity(dm_name, superblock.data_sectors(), &params).map_err(|source| {
        VerityError::Setup { data: partitions.data.clone(), hash: partitions.hash.clone(), source }
    })?;
    let len = verified_length(kernel, &device, &superblock)?;
    read_through(kernel, &device, len)?;
    Ok(device)
}

/// How much of the device to read through: a squashfs's used bytes (its
/// superblock says; the rest of the fixed-size slot is padding, hashed but
/// never read), else all of it.
fn verified_length(kernel: &dyn Kernel, device: &Path, superblock: &Superblock) -> Result<u64, VerityError> {
    let all = superblock.data_sectors() * 512;
    let head = kernel.read_at(device, 0, 48).map_err(|source| VerityError::Corrupt {
        device: device.to_owned(),
        offset: 0,
        source,
    })?;
    if head.len() < 48 || &head[..4] != b"hsqs" {
        return Ok(all);
    }
    let mut used = [0u8; 8];
    used.copy_from_slice(&head[40..48]);
    let block = u64::from(superblock.data_block_size);
    Ok(u64::from_le_bytes(used).div_ceil(block).saturating_mul(block).min(all))
}

/// Reads `len` bytes of `device` in large chunks; dm-verity fails the read
/// of any block whose hash does not match.
fn read_through(kernel: &dyn Kernel, device: &Path, len: u64) -> Result<(), VerityError> {
    const CHUNK: usize = 1 << 20;
    let mut offset = 0;
    while offset < len {
        let want = CHUNK.min((len - offset) as usize);
        let got = kernel.read_at(device, offset, want).map_err(|source| VerityError::Corrupt {
            device: device.to_owned(),
            offset,
            source,
        })?;
        if got.len() < want {
            let source = io::Error::new(io::ErrorKind::UnexpectedEof, format!("{} of {want} bytes", got.len()));
            return Err(VerityError::Corrupt { device: device.to_owned(), offset, source });
        }
        offset += want as u64;
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::kernel::fake::FakeKernel;

    pub(crate) const ROOT: &str = "0123456789abcdef0123456789abcdeffedcba9876543210fedcba9876543210";

    #[test]
    fn the_root_hash_names_the_partitions_uuids() {
        let root = RootHash::parse(ROOT).unwrap();
        assert_eq!(root.data_uuid().to_string(), "01234567-89ab-cdef-0123-456789abcdef");
        assert_eq!(root.hash_uuid().to_string(), "fedcba98-7654-3210-fedc-ba9876543210");
        assert_eq!(root.hex(), ROOT);
        for bad in ["", "xyz", &ROOT[..63], &format!("{}g", &ROOT[..63])] {
            let err = RootHash::parse(bad).unwrap_err();
            assert!(err.to_string().starts_with("usrhash="), "{err}");
        }
    }

    pub(crate) fn superblock(salt: &[u8]) -> Vec<u8> {
        let mut sb = vec![0u8; 512];
        sb[..8].copy_from_slice(b"verity\0\0");
        sb[8..12].copy_from_slice(&1u32.to_le_bytes());
        sb[12..16].copy_from_slice(&1u32.to_le_bytes());
        sb[32..38].copy_from_slice(b"sha256");
        sb[64..68].copy_from_slice(&4096u32.to_le_bytes());
        sb[68..72].copy_from_slice(&4096u32.to_le_bytes());
        sb[72..80].copy_from_slice(&1000u64.to_le_bytes());
        sb[80..82].copy_from_slice(&(salt.len() as u16).to_le_bytes());
        sb[88..88 + salt.len()].copy_from_slice(salt);
        sb
    }

    #[test]
    fn the_superblock_gives_the_table() {
        let sb = Superblock::parse(&superblock(&[0xab, 0xcd])).unwrap();
        assert_eq!(sb.data_sectors(), 8000);
        let partitions = UsrPartitions { disk: "/dev/vda".into(), data: "/dev/vda2".into(), hash: "/dev/vda3".into() };
        assert_eq!(
            sb.table_params(&partitions, &RootHash::parse(ROOT).unwrap()),
            format!("1 /dev/vda2 /dev/vda3 4096 4096 1000 1 sha256 {ROOT} abcd")
        );
        let no_salt = Superblock::parse(&superblock(&[])).unwrap();
        assert!(no_salt.table_params(&partitions, &RootHash::parse(ROOT).unwrap()).ends_with(" -"));
        assert!(Superblock::parse(&[0u8; 512]).unwrap_err().contains("no verity signature"));
        let mut odd = superblock(&[]);
        odd[64..68].copy_from_slice(&3000u32.to_le_bytes());
        assert!(Superblock::parse(&odd).unwrap_err().contains("data block size 3000"));
    }

    /// A 4 MiB GPT disk with the given (type, UUID) partitions.
    pub(crate) fn disk(partitions: &[(Uuid, Uuid)]) -> Vec<u8> {
        let mut image = io::Cursor::new(vec![0u8; 4 << 20]);
        let mbr = gpt::mbr::ProtectiveMBR::with_lb_size(((4 << 20) / 512 - 1) as u32);
        mbr.overwrite_lba0(&mut image).unwrap();
        let mut gpt = gpt::GptConfig::new().writable(true).create_from_device(&mut image, None).unwrap();
        for (i, (type_guid, uuid)) in partitions.iter().enumerate() {
            let part_type =
                gpt::partition_types::Type { guid: *type_guid, os: gpt::partition_types::OperatingSystem::Linux };
            let id = gpt.add_partition(&format!("p{i}"), 512 << 10, part_type, 0, None).unwrap();
            let mut table = gpt.partitions().clone();
            table.get_mut(&id).unwrap().part_guid = *uuid;
            gpt.update_partitions(table).unwrap();
        }
        gpt.write().unwrap();
        image.into_inner()
    }

    #[test]
    fn the_partitions_are_found_by_type_and_uuid_on_whichever_disk_has_them() {
        let root = RootHash::parse(ROOT).unwrap();
        let other = Uuid::from_u128(7);
        let k = FakeKernel::default()
            .with_bytes("/dev/vda", disk(&[(USR_TYPE, other), (USR_VERITY_TYPE, root.hash_uuid())]))
            .with_bytes("/dev/vdb", vec![0u8; 1 << 20])
            .with_bytes(
                "/dev/nvme0n1",
                disk(&[(USR_TYPE, other), (USR_TYPE, root.data_uuid()), (USR_VERITY_TYPE, root.hash_uuid())]),
            );
        let disks: Vec<PathBuf> = ["/dev/vda", "/dev/vdb", "/dev/nvme0n1"].iter().map(PathBuf::from).collect();
        let found = find_partitions(&k, &disks, &root).unwrap();
        assert_eq!(
            found,
            UsrPartitions { disk: "/dev/nvme0n1".into(), data: "/dev/nvme0n1p2".into(), hash: "/dev/nvme0n1p3".into() }
        );

        let err = find_partitions(&k, &disks[..2], &root).unwrap_err().to_string();
        assert!(err.contains("01234567-89ab-cdef-0123-456789abcdef") && err.contains("/dev/vda, /dev/vdb"), "{err}");
    }

    #[test]
    fn usr_is_set_up_from_the_superblock_and_read_through() {
        let root = RootHash::parse(ROOT).unwrap();
        let partitions = UsrPartitions { disk: "/dev/vda".into(), data: "/dev/vda2".into(), hash: "/dev/vda3".into() };
        let k = FakeKernel::default()
            .with_bytes("/dev/vda3", superblock(&[1]))
            .with_bytes("/dev/dm-0", vec![7u8; 1000 * 4096]);
        assert_eq!(open_usr(&k, &partitions, &root).unwrap(), PathBuf::from("/dev/dm-0"));
        assert!(k
            .calls()
            .contains(&format!("verity usr 8000 1 /dev/vda2 /dev/vda3 4096 4096 1000 1 sha256 {ROOT} 01")));

        // A squashfs is read through only as far as its superblock's bytes_used.
        let mut squashfs = vec![0u8; 3 * 4096];
        squashfs[..4].copy_from_slice(b"hsqs");
        squashfs[40..48].copy_from_slice(&(2 * 4096u64 + 10).to_le_bytes());
        let k =
            FakeKernel::default().with_bytes("/dev/vda3", superblock(&[1])).with_bytes("/dev/dm-0", squashfs.clone());
        assert_eq!(open_usr(&k, &partitions, &root).unwrap(), PathBuf::from("/dev/dm-0"));
        squashfs.truncate(3 * 4096 - 1);
        let k = FakeKernel::default().with_bytes("/dev/vda3", superblock(&[1])).with_bytes("/dev/dm-0", squashfs);
        let err = open_usr(&k, &partitions, &root).unwrap_err();
        assert!(err.to_string().contains("at byte 0 failed"), "{err}");

        let short = FakeKernel::default()
            .with_bytes("/dev/vda3", superblock(&[1]))
            .with_bytes("/dev/dm-0", vec![7u8; 999 * 4096])
            .failing("/dev/dm-0", libc::EIO);
        let err = open_usr(&short, &partitions, &root).unwrap_err();
        assert!(err.to_string().starts_with("/usr failed verification: reading /dev/dm-0 at byte 0 failed"), "{err}");
    }
}
