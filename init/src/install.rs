//! Installing Kelson from the ISO onto a disk.
//!
//! A node booted live from the ISO (see [`crate::live`]) whose machine config
//! names `install.disk` (or whose command line says `kelson.install=DISK`)
//! writes the disk image the ISO carries (`kelson/kelson.raw.zst`) onto that
//! disk, checks it, and reboots into it. A disk that holds anything known (a
//! partition table or a filesystem signature) is refused, with no byte
//! written, unless the config says `install.wipe: true`.
//!
//! What is written is checked twice against the SHA-256 and size the ISO
//! carries beside the image: the decompressed stream as it is written, and
//! the disk read back after the page cache was dropped (so the bytes come
//! from the device, not from memory).

use crate::kernel::{Kernel, KernelDisk};
use sha2::{Digest, Sha256};
use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};

/// The disk image and what it must hash to, relative to the ISO's root.
pub const IMAGE_FILE: &str = "kelson/kelson.raw.zst";
pub const SHA256_FILE: &str = "kelson/kelson.raw.sha256";
pub const SIZE_FILE: &str = "kelson/kelson.raw.size";

/// How much is written (and flushed) or read back at a time.
const CHUNK: usize = 4 << 20;

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error(
        "refusing to install Kelson on {disk}: it holds {what}; no byte was written (set install.wipe: true in the \
         machine config to overwrite it)"
    )]
    NotBlank { disk: PathBuf, what: &'static str },
    #[error("refusing to install Kelson on {disk}: it is the Kelson ISO this node is running from")]
    LiveMedia { disk: PathBuf },
    #[error("reading the install disk {disk}")]
    ReadDisk {
        disk: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("refusing to install Kelson on {disk}: it holds {size} bytes and the disk image needs {needed}")]
    TooSmall { disk: PathBuf, size: u64, needed: u64 },
    #[error("reading {path} from the Kelson ISO")]
    ReadIso {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the Kelson ISO's {path} is unusable: {reason}")]
    BadIso { path: PathBuf, reason: String },
    #[error("decompressing the disk image {path} at byte {offset} of its output")]
    Decompress {
        path: PathBuf,
        offset: u64,
        #[source]
        source: io::Error,
    },
    #[error("writing the disk image to {disk} at byte {offset}")]
    Write {
        disk: PathBuf,
        offset: u64,
        #[source]
        source: io::Error,
    },
    #[error(
        "the disk image decompressed from the ISO is {size} bytes with SHA-256 {sha256}, not the {expected_size} \
         bytes with SHA-256 {expected_sha256} the ISO carries; {disk} is not bootable"
    )]
    ImageMismatch { disk: PathBuf, size: u64, sha256: String, expected_size: u64, expected_sha256: String },
    #[error(
        "{disk} read back does not match the disk image: SHA-256 {sha256}, not {expected_sha256}; it is not bootable"
    )]
    ReadBackMismatch { disk: PathBuf, sha256: String, expected_sha256: String },
}

/// Signatures that say a disk holds something: (byte offset, magic, what).
const SIGNATURES: &[(usize, &[u8], &str)] = &[
    (512, b"EFI PART", "a GPT partition table"),
    (4096, b"EFI PART", "a GPT partition table"),
    (510, &[0x55, 0xaa], "an MBR partition table or boot sector"),
    (1024 + 56, &[0x53, 0xef], "an ext2/ext3/ext4 filesystem"),
    (0, b"XFSB", "an XFS filesystem"),
    (65536 + 64, b"_BHRfS_M", "a btrfs filesystem"),
    (1024, &[0x10, 0x20, 0xf5, 0xf2], "an F2FS filesystem"),
    (3, b"NTFS    ", "an NTFS filesystem"),
    (32769, b"CD001", "an ISO 9660 filesystem"),
    (0, b"hsqs", "a squashfs filesystem"),
    (0, b"LUKS\xba\xbe", "a LUKS volume"),
    (512, b"LABELONE", "an LVM physical volume"),
    (4096 - 10, b"SWAPSPACE2", "a swap area"),
    (0, b"verity\0\0", "a dm-verity hash tree"),
];

/// What `head` (a disk's first bytes) holds, if anything known.
pub fn signature(head: &[u8]) -> Option<&'static str> {
    SIGNATURES.iter().find(|(at, magic, _)| head.get(*at..at + magic.len()) == Some(*magic)).map(|(_, _, what)| *what)
}

/// What to install where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The mounted ISO's root.
    pub iso_root: PathBuf,
    /// The device the ISO is on (never installed over).
    pub iso_device: PathBuf,
    pub disk: PathBuf,
    pub wipe: bool,
}

/// What was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Installed {
    pub bytes: u64,
    pub sha256: String,
}

/// Checks the disk, writes the image, flushes it and reads it back.
pub fn install(kernel: &dyn Kernel, plan: &Plan) -> Result<Installed, InstallError> {
    let disk = &plan.disk;
    if disk == &plan.iso_device {
        return Err(InstallError::LiveMedia { disk: disk.clone() });
    }
    let (expected_sha256, expected_size) = carried_digest(kernel, &plan.iso_root)?;
    let read_disk = |source| InstallError::ReadDisk { disk: disk.clone(), source };
    if !plan.wipe {
        let head = kernel.read_at(disk, 0, 68 << 10).map_err(read_disk)?;
        if let Some(what) = signature(&head) {
            return Err(InstallError::NotBlank { disk: disk.clone(), what });
        }
    }
    let size = kernel.size(disk).map_err(read_disk)?;
    if size < expected_size {
        return Err(InstallError::TooSmall { disk: disk.clone(), size, needed: expected_size });
    }

    let image = plan.iso_root.join(IMAGE_FILE);
    let compressed = BufReader::with_capacity(1 << 20, KernelDisk::new(kernel, &image));
    let mut decoder = zstd::stream::read::Decoder::with_buffer(compressed)
        .map_err(|source| InstallError::Decompress { path: image.clone(), offset: 0, source })?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; CHUNK];
    let mut offset = 0u64;
    loop {
        let filled = fill(&mut decoder, &mut buffer).map_err(|source| InstallError::Decompress {
            path: image.clone(),
            offset,
            source,
        })?;
        if filled == 0 {
            break;
        }
        let chunk = &buffer[..filled];
        hasher.update(chunk);
        if offset + filled as u64 > expected_size {
            // Longer than the ISO says: stop before writing past the image.
            offset += filled as u64;
            break;
        }
        kernel.write_at(disk, offset, chunk).map_err(|source| InstallError::Write {
            disk: disk.clone(),
            offset,
            source,
        })?;
        offset += filled as u64;
    }
    let sha256 = hex(&hasher.finalize());
    if offset != expected_size || sha256 != expected_sha256 {
        return Err(InstallError::ImageMismatch {
            disk: disk.clone(),
            size: offset,
            sha256,
            expected_size,
            expected_sha256,
        });
    }

    // Each write above was flushed to the device; drop the page cache so
    // the read back comes from the disk. Without it the check still reads
    // what the kernel holds for the disk, so a failure here is not fatal.
    if let Err(e) = kernel.write_file(Path::new("/proc/sys/vm/drop_caches"), b"3") {
        tracing::warn!(error = %e, "could not drop the page cache before reading the install disk back");
    }
    let mut hasher = Sha256::new();
    let mut at = 0u64;
    while at < expected_size {
        let want = CHUNK.min((expected_size - at) as usize);
        let got = kernel.read_at(disk, at, want).map_err(read_disk)?;
        if got.len() < want {
            return Err(read_disk(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("{} of {want} bytes at byte {at}", got.len()),
            )));
        }
        hasher.update(&got);
        at += want as u64;
    }
    let read_back = hex(&hasher.finalize());
    if read_back != expected_sha256 {
        return Err(InstallError::ReadBackMismatch { disk: disk.clone(), sha256: read_back, expected_sha256 });
    }
    Ok(Installed { bytes: expected_size, sha256: expected_sha256 })
}

/// The SHA-256 and size the ISO carries for its disk image.
fn carried_digest(kernel: &dyn Kernel, iso_root: &Path) -> Result<(String, u64), InstallError> {
    let read = |file: &str| {
        let path = iso_root.join(file);
        kernel
            .read_file(&path)
            .map(|bytes| String::from_utf8_lossy(&bytes).trim().to_owned())
            .map_err(|source| InstallError::ReadIso { path, source })
    };
    let sha256 = read(SHA256_FILE)?;
    if sha256.len() != 64 || !sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
        let reason = format!("{sha256:?} is not a SHA-256 digest");
        return Err(InstallError::BadIso { path: iso_root.join(SHA256_FILE), reason });
    }
    let size = read(SIZE_FILE)?;
    let size = size.parse::<u64>().map_err(|_| InstallError::BadIso {
        path: iso_root.join(SIZE_FILE),
        reason: format!("{size:?} is not a size in bytes"),
    })?;
    Ok((sha256.to_ascii_lowercase(), size))
}

/// Reads until `buffer` is full or the stream ends; returns the bytes read.
fn fill(reader: &mut impl Read, buffer: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buffer.len() {
        match reader.read(&mut buffer[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::fake::FakeKernel;

    /// A disk image of 9 MiB (more than two chunks) with something in it.
    fn image() -> Vec<u8> {
        (0..9u32 << 20).map(|i| (i % 251) as u8).collect()
    }

    fn iso_with(image: &[u8], sha256: &str, size: u64) -> FakeKernel {
        let compressed = zstd::encode_all(image, 3).unwrap();
        FakeKernel::default()
            .with_bytes("/iso/kelson/kelson.raw.zst", compressed)
            .with_file("/iso/kelson/kelson.raw.sha256", &format!("{sha256}\n"))
            .with_file("/iso/kelson/kelson.raw.size", &format!("{size}\n"))
    }

    fn plan(wipe: bool) -> Plan {
        Plan { iso_root: "/iso".into(), iso_device: "/dev/sr0".into(), disk: "/dev/vda".into(), wipe }
    }

    fn disk_bytes(k: &FakeKernel) -> Vec<u8> {
        k.files.lock().unwrap().get(Path::new("/dev/vda")).unwrap().clone()
    }

    #[test]
    fn a_blank_disk_gets_the_image_written_and_read_back() {
        let image = image();
        let sha = hex(&Sha256::digest(&image));
        let k = iso_with(&image, &sha, image.len() as u64).with_bytes("/dev/vda", vec![0u8; 12 << 20]);
        let installed = install(&k, &plan(false)).unwrap();
        assert_eq!(installed, Installed { bytes: image.len() as u64, sha256: sha });
        let disk = disk_bytes(&k);
        assert_eq!(&disk[..image.len()], &image[..]);
        assert!(disk[image.len()..].iter().all(|b| *b == 0), "nothing written past the image");
        assert!(k.calls().contains(&"write /proc/sys/vm/drop_caches 3".to_owned()));
    }

    #[test]
    fn a_disk_holding_a_filesystem_or_partition_table_is_refused_unchanged_unless_wiped() {
        let image = image();
        let sha = hex(&Sha256::digest(&image));
        let mut ext4 = vec![0u8; 12 << 20];
        ext4[1024 + 56..1024 + 58].copy_from_slice(&[0x53, 0xef]);
        let k = iso_with(&image, &sha, image.len() as u64).with_bytes("/dev/vda", ext4.clone());
        let err = install(&k, &plan(false)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "refusing to install Kelson on /dev/vda: it holds an ext2/ext3/ext4 filesystem; no byte was written \
             (set install.wipe: true in the machine config to overwrite it)"
        );
        assert_eq!(disk_bytes(&k), ext4);
        // What the disk holds is said before whether it is large enough.
        let k_small = iso_with(&image, &sha, image.len() as u64).with_bytes("/dev/vda", ext4[..1 << 20].to_vec());
        let err = install(&k_small, &plan(false)).unwrap_err().to_string();
        assert!(err.contains("it holds an ext2/ext3/ext4 filesystem"), "{err}");

        let mut gpt = vec![0u8; 4096];
        gpt[510..512].copy_from_slice(&[0x55, 0xaa]);
        gpt[512..520].copy_from_slice(b"EFI PART");
        assert_eq!(signature(&gpt), Some("a GPT partition table"));
        assert_eq!(signature(&vec![0u8; 68 << 10]), None);

        install(&k, &plan(true)).unwrap();
        assert_eq!(&disk_bytes(&k)[..image.len()], &image[..]);
    }

    #[test]
    fn an_image_not_matching_its_digest_a_small_disk_and_the_iso_itself_are_refused() {
        let image = image();
        let wrong = "0".repeat(64);
        let k = iso_with(&image, &wrong, image.len() as u64).with_bytes("/dev/vda", vec![0u8; 12 << 20]);
        let err = install(&k, &plan(false)).unwrap_err().to_string();
        assert!(err.contains(&format!("not the {} bytes with SHA-256 {wrong}", image.len())), "{err}");

        let k = iso_with(&image, &wrong, image.len() as u64).with_bytes("/dev/vda", vec![0u8; 1 << 20]);
        let err = install(&k, &plan(false)).unwrap_err().to_string();
        assert!(err.contains("it holds 1048576 bytes and the disk image needs"), "{err}");
        assert!(disk_bytes(&k).iter().all(|b| *b == 0));

        let mut on_iso = plan(false);
        on_iso.disk = "/dev/sr0".into();
        let err = install(&k, &on_iso).unwrap_err().to_string();
        assert!(err.contains("it is the Kelson ISO this node is running from"), "{err}");
    }

    #[test]
    fn a_disk_that_reads_back_differently_fails_the_install() {
        let image = image();
        let sha = hex(&Sha256::digest(&image));
        // Writes succeed; reads fail after: the read back is where it shows.
        let k = iso_with(&image, &sha, image.len() as u64).with_bytes("/dev/vda", vec![0u8; 12 << 20]);
        install(&k, &plan(false)).unwrap();
        k.failures.lock().unwrap().insert(PathBuf::from("/dev/vda"), libc::EIO);
        let err = install(&k, &plan(true)).unwrap_err();
        assert!(crate::boot::chain(&err).starts_with("reading the install disk /dev/vda"), "{err}");
    }
}
