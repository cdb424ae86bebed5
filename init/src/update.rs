//! Installing a new version into the inactive /usr slot (A/B updates).
//!
//! The boot disk has two /usr slots, each a `usr` partition and its
//! `usr-verity` partition, paired by label (`kelson-usr-a` and
//! `kelson-usr-a-verity`, likewise `b`). The running slot is the one whose
//! partition UUIDs the running root hash names; the other is inactive.
//!
//! An update bundle is a tar of three files, in this order: `kelson.efi`
//! (the new version's UKI, whose command line carries the new `usrhash=`
//! and whose `.osrel` carries `IMAGE_ID=kelson` and `IMAGE_VERSION`),
//! `usr.img` (the /usr image) and `usr.verity` (its dm-verity hash tree
//! with superblock). Installing:
//!
//! 1. checks the UKI: a Kelson UKI, a version newer than the running one,
//!    a root hash;
//! 2. removes every boot entry but the running version's, so nothing can
//!    boot the inactive slot while it is rewritten;
//! 3. writes the image and hash tree into the inactive slot;
//! 4. verifies them: dm-verity over the slot with the UKI's root hash, read
//!    through once, then removed;
//! 5. gives the slot's partitions the UUIDs the root hash names, which is
//!    how PID 1 finds /usr at boot;
//! 6. installs the UKI as `kelson-<version>+<tries>.efi`. Being the newest
//!    version, it is what systemd-boot boots next; it counts the tries,
//!    PID 1 marks it good when ready, and if it never is, the boot loader
//!    falls back to the running version.
//!
//! The management API calls [`install`]; `kelson-init update BUNDLE` does
//! the same from a shell (tests and recovery).

use crate::boot_entry::{self, compare_versions, trial_file_name, valid_version, VERSION_FIELD};
use crate::esp::{EspError, MountedEsp};
use crate::kernel::{Kernel, KernelDisk};
use crate::verity::{self, RootHash, UsrPartitions, VerityError, USR_HASH_KEY, USR_TYPE, USR_VERITY_TYPE};
use std::cmp::Ordering;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

pub const BUNDLE_UKI: &str = "kelson.efi";
pub const BUNDLE_USR: &str = "usr.img";
pub const BUNDLE_VERITY: &str = "usr.verity";
/// The device-mapper name used while a new slot is verified.
const CHECK_DM_NAME: &str = "usr-update-check";
/// A UKI is a kernel and a small initrd; anything much larger is not one.
const MAX_UKI_BYTES: u64 = 256 << 20;

#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    #[error("reading the update bundle {bundle}")]
    Read {
        bundle: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the update bundle {bundle} is not usable: {reason}")]
    Bundle { bundle: PathBuf, reason: String },
    #[error("the update bundle's {BUNDLE_UKI} is not usable: {reason}")]
    Uki { reason: String },
    #[error("the update bundle holds version {version}, which is not newer than the running {running}")]
    NotNewer { version: String, running: String },
    #[error("the /usr slots on {disk}: {reason}")]
    Slots { disk: PathBuf, reason: String },
    #[error("reading the partition table of {disk}")]
    ReadTable {
        disk: PathBuf,
        #[source]
        source: gpt::GptError,
    },
    #[error("writing the partition table of {disk}")]
    WriteTable {
        disk: PathBuf,
        #[source]
        source: gpt::GptError,
    },
    #[error(transparent)]
    Esp(#[from] EspError),
    #[error("writing {what} to {device}")]
    Write {
        what: &'static str,
        device: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{size} bytes of {what} do not fit in {device} ({room} bytes)")]
    TooBig { what: &'static str, device: PathBuf, size: u64, room: u64 },
    #[error("checking the written slot against the UKI's root hash")]
    Verify(#[source] VerityError),
}

/// What a UKI says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UkiInfo {
    pub version: String,
    pub root_hash: RootHash,
}

/// Reads the version (`.osrel`) and the /usr root hash (`.cmdline`) of a UKI.
pub fn inspect_uki(bytes: &[u8]) -> Result<UkiInfo, String> {
    use object::{Object, ObjectSection};
    let file = object::File::parse(bytes).map_err(|e| format!("not a PE image: {e}"))?;
    let section = |name: &str| -> Result<String, String> {
        let data = file
            .section_by_name(name)
            .ok_or_else(|| format!("no {name} section"))?
            .data()
            .map_err(|e| format!("reading its {name} section: {e}"))?;
        Ok(String::from_utf8_lossy(data).trim_end_matches('\0').to_owned())
    };
    let osrel = section(".osrel")?;
    if boot_entry::os_release_field(&osrel, "IMAGE_ID").as_deref() != Some("kelson") {
        return Err("its .osrel does not say IMAGE_ID=kelson".to_owned());
    }
    let version = boot_entry::os_release_field(&osrel, VERSION_FIELD)
        .ok_or_else(|| format!("its .osrel has no {VERSION_FIELD}"))?;
    if !valid_version(&version) {
        return Err(format!("{VERSION_FIELD}={version:?} cannot name a boot entry"));
    }
    let cmdline = section(".cmdline")?;
    let hash = crate::cmdline::Cmdline::parse(&cmdline)
        .get(USR_HASH_KEY)
        .map(str::to_owned)
        .ok_or_else(|| format!("its command line has no {USR_HASH_KEY}="))?;
    let root_hash = RootHash::parse(&hash).map_err(|e| e.to_string())?;
    Ok(UkiInfo { version, root_hash })
}

/// The running system an update is installed beside.
#[derive(Debug, Clone)]
pub struct Running {
    /// The boot disk.
    pub disk: PathBuf,
    pub root_hash: RootHash,
    pub version: String,
    /// Where to mount the ESP while changing it.
    pub esp_mount: PathBuf,
}

/// What was installed, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Installed {
    pub version: String,
    /// The slot's /usr partition label.
    pub slot: String,
    pub entry: String,
    pub removed_entries: Vec<String>,
}

/// The inactive slot's two partitions, with their GPT numbers.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Slot {
    label: String,
    data: u32,
    hash: u32,
}

/// Installs the bundle at `bundle` into the inactive slot; see the module
/// documentation for the steps.
pub fn install(kernel: &dyn Kernel, running: &Running, bundle: &Path, tries: u32) -> Result<Installed, UpdateError> {
    let read_error = |source| UpdateError::Read { bundle: bundle.to_owned(), source };
    let bundle_error = |reason: String| UpdateError::Bundle { bundle: bundle.to_owned(), reason };
    let file = std::fs::File::open(bundle).map_err(read_error)?;
    let mut archive = tar::Archive::new(file);
    let mut entries = archive.entries().map_err(read_error)?;
    let mut next = |want: &'static str| -> Result<tar::Entry<'_, std::fs::File>, UpdateError> {
        let entry =
            entries.next().ok_or_else(|| bundle_error(format!("it ends before {want}")))?.map_err(read_error)?;
        let path = entry.path().map_err(read_error)?.to_string_lossy().into_owned();
        if path.trim_start_matches("./") != want {
            return Err(bundle_error(format!(
                "found {path:?} where {want} should be (the order is {BUNDLE_UKI}, {BUNDLE_USR}, {BUNDLE_VERITY})"
            )));
        }
        Ok(entry)
    };

    let mut uki_entry = next(BUNDLE_UKI)?;
    if uki_entry.size() > MAX_UKI_BYTES {
        return Err(UpdateError::Uki { reason: format!("{} bytes is too large for a UKI", uki_entry.size()) });
    }
    let mut uki = Vec::new();
    uki_entry.read_to_end(&mut uki).map_err(read_error)?;
    let info = inspect_uki(&uki).map_err(|reason| UpdateError::Uki { reason })?;
    if compare_versions(&info.version, &running.version) != Ordering::Greater {
        return Err(UpdateError::NotNewer { version: info.version, running: running.version.clone() });
    }
    if info.root_hash == running.root_hash {
        return Err(UpdateError::Uki { reason: "its /usr is the running /usr (the same root hash)".to_owned() });
    }

    let slot = inactive_slot(kernel, &running.disk, &running.root_hash)?;
    let data = verity::partition_device(&running.disk, slot.data);
    let hash = verity::partition_device(&running.disk, slot.hash);

    // The image's size is known from its header: check it fits before
    // anything changes.
    let usr_entry = next(BUNDLE_USR)?;
    fits(kernel, &usr_entry, "the /usr image", &data)?;

    // From here on the inactive slot is rewritten: first make sure no boot
    // entry can start it.
    let esp_device = crate::esp::find(kernel, &running.disk)?;
    let mut removed_entries = Vec::new();
    {
        let esp = MountedEsp::mount(kernel, &esp_device, &running.esp_mount, true)?;
        for entry in esp.entries()? {
            if entry.version != running.version {
                esp.remove_entry(&entry.file)?;
                removed_entries.push(entry.file);
            }
        }
    }

    write_entry(kernel, usr_entry, "the /usr image", &data)?;
    let verity_entry = next(BUNDLE_VERITY)?;
    fits(kernel, &verity_entry, "the /usr hash tree", &hash)?;
    write_entry(kernel, verity_entry, "the /usr hash tree", &hash)?;

    let partitions = UsrPartitions { disk: running.disk.clone(), data, hash };
    verity::open_verified(kernel, &partitions, &info.root_hash, CHECK_DM_NAME).map_err(UpdateError::Verify)?;
    if let Err(e) = kernel.remove_device_mapper(CHECK_DM_NAME) {
        tracing::warn!(name = CHECK_DM_NAME, error = %e, "could not remove the device used to check the new slot");
    }

    set_slot_uuids(kernel, &running.disk, &slot, &info.root_hash)?;

    let entry = trial_file_name(&info.version, tries);
    MountedEsp::mount(kernel, &esp_device, &running.esp_mount, true)?.install_entry(&entry, &uki)?;
    Ok(Installed { version: info.version, slot: slot.label, entry, removed_entries })
}

/// Whether a bundle entry fits in `device`.
fn fits(
    kernel: &dyn Kernel,
    entry: &tar::Entry<'_, std::fs::File>,
    what: &'static str,
    device: &Path,
) -> Result<(), UpdateError> {
    let room = kernel.size(device).map_err(|source| UpdateError::Write { what, device: device.to_owned(), source })?;
    let size = entry.size();
    if size > room {
        return Err(UpdateError::TooBig { what, device: device.to_owned(), size, room });
    }
    Ok(())
}

/// Streams one bundle entry into `device`.
fn write_entry(
    kernel: &dyn Kernel,
    mut entry: tar::Entry<'_, std::fs::File>,
    what: &'static str,
    device: &Path,
) -> Result<(), UpdateError> {
    let write_error = |source| UpdateError::Write { what, device: device.to_owned(), source };
    let size = entry.size();
    let copied = kernel.copy_into(device, 0, &mut entry).map_err(write_error)?;
    if copied != size {
        let short = io::Error::new(io::ErrorKind::UnexpectedEof, format!("{copied} of {size} bytes"));
        return Err(write_error(short));
    }
    Ok(())
}

/// The slot whose /usr partition is not the running one, with its hash
/// partition (paired by label).
fn inactive_slot(kernel: &dyn Kernel, disk: &Path, running: &RootHash) -> Result<Slot, UpdateError> {
    let slots_error = |reason: String| UpdateError::Slots { disk: disk.to_owned(), reason };
    let gpt = gpt::GptConfig::new()
        .writable(false)
        .open_from_device(KernelDisk::new(kernel, disk))
        .map_err(|source| UpdateError::ReadTable { disk: disk.to_owned(), source })?;
    let used = || gpt.partitions().iter().filter(|(_, p)| p.is_used());
    let usr: Vec<_> = used().filter(|(_, p)| p.part_type_guid.guid == USR_TYPE).collect();
    if !usr.iter().any(|(_, p)| p.part_guid == running.data_uuid()) {
        return Err(slots_error(format!("no usr partition has the running root hash's UUID {}", running.data_uuid())));
    }
    let inactive: Vec<_> = usr.iter().filter(|(_, p)| p.part_guid != running.data_uuid()).collect();
    let [(number, partition)] = inactive.as_slice() else {
        return Err(slots_error(format!("expected one inactive usr partition, found {}", inactive.len())));
    };
    let hash_label = format!("{}-verity", partition.name);
    let hash = used()
        .find(|(_, p)| p.part_type_guid.guid == USR_VERITY_TYPE && p.name == hash_label)
        .map(|(n, _)| *n)
        .ok_or_else(|| slots_error(format!("no usr-verity partition labelled {hash_label}")))?;
    Ok(Slot { label: partition.name.clone(), data: **number, hash })
}

/// Gives the slot's partitions the UUIDs `root` names.
fn set_slot_uuids(kernel: &dyn Kernel, disk: &Path, slot: &Slot, root: &RootHash) -> Result<(), UpdateError> {
    let write_error = |source| UpdateError::WriteTable { disk: disk.to_owned(), source };
    let mut gpt = gpt::GptConfig::new()
        .writable(true)
        .open_from_device(KernelDisk::new(kernel, disk))
        .map_err(|source| UpdateError::ReadTable { disk: disk.to_owned(), source })?;
    let mut table = gpt.partitions().clone();
    for (number, uuid) in [(slot.data, root.data_uuid()), (slot.hash, root.hash_uuid())] {
        if let Some(partition) = table.get_mut(&number) {
            partition.part_guid = uuid;
        }
    }
    gpt.update_partitions(table).map_err(write_error)?;
    gpt.write_inplace().map_err(write_error)?;
    Ok(())
}

/// `kelson-init update BUNDLE [--tries N]`.
pub const SUBCOMMAND: &str = "update";

/// The `update` subcommand: installs `BUNDLE` beside the running system,
/// found as PID 1 found it at boot. The new version boots at the next
/// reboot, which is left to the caller.
pub fn main(args: Vec<String>) -> std::process::ExitCode {
    use std::process::ExitCode;
    let usage = "usage: kelson-init update BUNDLE [--tries N]";
    let (bundle, tries) = match args.as_slice() {
        [bundle] => (bundle, boot_entry::DEFAULT_TRIES),
        [bundle, flag, n] if flag == "--tries" => match n.parse::<u32>() {
            Ok(n) if (1..=9).contains(&n) => (bundle, n),
            _ => {
                eprintln!("kelson-init update: --tries takes a number from 1 to 9, not {n:?}\n{usage}");
                return ExitCode::from(2);
            }
        },
        _ => {
            eprintln!("{usage}");
            return ExitCode::from(2);
        }
    };
    let kernel = crate::kernel::LinuxKernel;
    let result = running_system(&kernel)
        .and_then(|running| install(&kernel, &running, Path::new(bundle), tries).map_err(|e| crate::boot::chain(&e)));
    match result {
        Ok(done) => {
            for removed in &done.removed_entries {
                println!("removed boot entry {removed}");
            }
            println!(
                "installed version {} into {}; boot entry {} boots next, on trial",
                done.version, done.slot, done.entry
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("kelson-init update: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Why an update through the API was not installed, sorted for the answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InstallError {
    /// The node has no A/B slots to install into (booted directly or from
    /// the ISO): nothing was changed.
    NotOnSlots(String),
    /// The bundle was refused, or installing it failed; the message says
    /// which and why.
    Refused(String),
}

/// Installs `bundle` beside the running system, as `kelson-init update`
/// does; what the management API calls.
pub fn install_on_running(kernel: &dyn Kernel, bundle: &Path, tries: u32) -> Result<Installed, InstallError> {
    let running = running_system(kernel)
        .map_err(|why| InstallError::NotOnSlots(format!("this node cannot install updates: {why}")))?;
    install(kernel, &running, bundle, tries).map_err(|e| InstallError::Refused(crate::boot::chain(&e)))
}

/// The running system: its root hash from the command line, its boot disk
/// (the one holding that hash's partitions) and its version.
fn running_system(kernel: &dyn Kernel) -> Result<Running, String> {
    let cmdline = crate::cmdline::Cmdline::from_proc();
    let hash = cmdline
        .get(USR_HASH_KEY)
        .ok_or_else(|| format!("the kernel command line has no {USR_HASH_KEY}=: not booted from a disk image"))?;
    let root_hash = RootHash::parse(hash).map_err(|e| e.to_string())?;
    let disks = crate::usr::whole_disks(kernel, Path::new("/sys/class/block"), Path::new("/dev"));
    let partitions = verity::find_partitions(kernel, &disks, &root_hash).map_err(|e| e.to_string())?;
    let version = crate::stages::boot_entry::running_version(kernel).map_err(|e| e.to_string())?;
    Ok(Running { disk: partitions.disk, root_hash, version, esp_mount: PathBuf::from("/run/kelson/esp-update") })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::esp::ESP_TYPE;
    use crate::kernel::fake::FakeKernel;
    use crate::verity::tests::{superblock, ROOT};
    use uuid::Uuid;

    const NEW: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaabbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

    /// A 4 MiB disk laid out as the image is: ESP, slot A (running, `ROOT`),
    /// slot B (empty); 512 KiB partitions.
    fn disk() -> Vec<u8> {
        let root = RootHash::parse(ROOT).unwrap();
        let mut image = io::Cursor::new(vec![0u8; 4 << 20]);
        let mbr = gpt::mbr::ProtectiveMBR::with_lb_size(((4 << 20) / 512 - 1) as u32);
        mbr.overwrite_lba0(&mut image).unwrap();
        let mut gpt = gpt::GptConfig::new().writable(true).create_from_device(&mut image, None).unwrap();
        for (label, type_guid, uuid) in [
            ("esp", ESP_TYPE, Uuid::from_u128(1)),
            ("kelson-usr-a", USR_TYPE, root.data_uuid()),
            ("kelson-usr-a-verity", USR_VERITY_TYPE, root.hash_uuid()),
            ("kelson-usr-b", USR_TYPE, Uuid::from_u128(4)),
            ("kelson-usr-b-verity", USR_VERITY_TYPE, Uuid::from_u128(5)),
        ] {
            let part_type =
                gpt::partition_types::Type { guid: type_guid, os: gpt::partition_types::OperatingSystem::Linux };
            let id = gpt.add_partition(label, 512 << 10, part_type, 0, None).unwrap();
            let mut table = gpt.partitions().clone();
            table.get_mut(&id).unwrap().part_guid = uuid;
            gpt.update_partitions(table).unwrap();
        }
        gpt.write().unwrap();
        image.into_inner()
    }

    fn running() -> Running {
        Running {
            disk: "/dev/vda".into(),
            root_hash: RootHash::parse(ROOT).unwrap(),
            version: "1".into(),
            esp_mount: "/esp".into(),
        }
    }

    /// A minimal PE32+ image whose only sections are `.osrel` and
    /// `.cmdline`, laid out by hand (headers, then each section's bytes at
    /// a 512-byte file alignment).
    pub(crate) fn uki(osrel: &str, cmdline: &str) -> Vec<u8> {
        const OPTIONAL_HEADER: usize = 240;
        let sections = [(".osrel", osrel.as_bytes()), (".cmdline", cmdline.as_bytes())];
        let headers_end = 0x40 + 4 + 20 + OPTIONAL_HEADER + 40 * sections.len();
        let align = |n: usize| n.div_ceil(0x200) * 0x200;
        let mut out = vec![0u8; align(headers_end)];
        out[..2].copy_from_slice(b"MZ");
        out[0x3c..0x40].copy_from_slice(&0x40u32.to_le_bytes());
        out[0x40..0x44].copy_from_slice(b"PE\0\0");
        let coff = 0x44;
        out[coff..coff + 2].copy_from_slice(&0x8664u16.to_le_bytes());
        out[coff + 2..coff + 4].copy_from_slice(&(sections.len() as u16).to_le_bytes());
        out[coff + 16..coff + 18].copy_from_slice(&(OPTIONAL_HEADER as u16).to_le_bytes());
        out[coff + 18..coff + 20].copy_from_slice(&0x0022u16.to_le_bytes());
        let opt = coff + 20;
        out[opt..opt + 2].copy_from_slice(&0x20bu16.to_le_bytes());
        out[opt + 32..opt + 36].copy_from_slice(&0x1000u32.to_le_bytes()); // section alignment
        out[opt + 36..opt + 40].copy_from_slice(&0x200u32.to_le_bytes()); // file alignment
        out[opt + 60..opt + 64].copy_from_slice(&(align(headers_end) as u32).to_le_bytes()); // size of headers
        out[opt + 68..opt + 70].copy_from_slice(&10u16.to_le_bytes()); // EFI application
        out[opt + 108..opt + 112].copy_from_slice(&16u32.to_le_bytes()); // data directories
        let mut header = opt + OPTIONAL_HEADER;
        let mut address = 0x1000u32;
        for (name, bytes) in sections {
            let offset = out.len();
            out[header..header + name.len()].copy_from_slice(name.as_bytes());
            out[header + 8..header + 12].copy_from_slice(&(bytes.len() as u32).to_le_bytes());
            out[header + 12..header + 16].copy_from_slice(&address.to_le_bytes());
            out[header + 16..header + 20].copy_from_slice(&(bytes.len() as u32).to_le_bytes());
            out[header + 20..header + 24].copy_from_slice(&(offset as u32).to_le_bytes());
            out[header + 36..header + 40].copy_from_slice(&0x4000_0040u32.to_le_bytes());
            out.extend_from_slice(bytes);
            out.resize(align(out.len()), 0);
            header += 40;
            address += 0x1000;
        }
        let image_size = address;
        out[opt + 56..opt + 60].copy_from_slice(&image_size.to_le_bytes());
        out
    }

    fn osrel(version: &str) -> String {
        format!("ID=debian\nIMAGE_ID=kelson\nIMAGE_VERSION={version}\n")
    }

    #[test]
    fn a_uki_says_its_version_and_root_hash() {
        let info = inspect_uki(&uki(&osrel("2"), &format!("console=ttyS0 usrhash={NEW}\n"))).unwrap();
        assert_eq!(info, UkiInfo { version: "2".into(), root_hash: RootHash::parse(NEW).unwrap() });
        for (osrel, cmdline, want) in [
            ("ID=debian\nIMAGE_VERSION=2\n", format!("usrhash={NEW}"), "IMAGE_ID=kelson"),
            ("IMAGE_ID=kelson\n", format!("usrhash={NEW}"), "no IMAGE_VERSION"),
            ("IMAGE_ID=kelson\nIMAGE_VERSION=2+1\n", format!("usrhash={NEW}"), "cannot name a boot entry"),
            ("IMAGE_ID=kelson\nIMAGE_VERSION=2\n", "console=ttyS0".to_owned(), "no usrhash="),
            ("IMAGE_ID=kelson\nIMAGE_VERSION=2\n", "usrhash=xyz".to_owned(), "not a SHA-256 root hash"),
        ] {
            let err = inspect_uki(&uki(osrel, &cmdline)).unwrap_err();
            assert!(err.contains(want), "{err} (wanted {want})");
        }
        assert!(inspect_uki(b"not a PE").unwrap_err().starts_with("not a PE image"));
    }

    /// A bundle of `files` (name, bytes), in that order.
    fn bundle(dir: &Path, files: &[(&str, Vec<u8>)]) -> PathBuf {
        let path = dir.join("bundle.tar");
        let mut builder = tar::Builder::new(std::fs::File::create(&path).unwrap());
        for (name, bytes) in files {
            let mut header = tar::Header::new_gnu();
            header.set_size(bytes.len() as u64);
            header.set_mode(0o644);
            header.set_cksum();
            builder.append_data(&mut header, name, bytes.as_slice()).unwrap();
        }
        builder.finish().unwrap();
        path
    }

    fn node() -> FakeKernel {
        FakeKernel::default()
            .with_bytes("/dev/vda", disk())
            .with_bytes("/dev/vda4", vec![0; 512 << 10])
            .with_bytes("/dev/vda5", vec![0; 512 << 10])
            .with_bytes("/dev/dm-0", vec![7; 1000 * 4096])
            .with_file("/esp/EFI/Linux/kelson-1.efi", "running")
            .with_file("/esp/EFI/Linux/kelson-1.5+0-3.efi", "failed before")
    }

    #[test]
    fn a_newer_version_goes_into_the_inactive_slot_and_boots_next() {
        let dir = tempfile::tempdir().unwrap();
        let new_uki = uki(&osrel("2"), &format!("usrhash={NEW}"));
        let path = bundle(
            dir.path(),
            &[(BUNDLE_UKI, new_uki.clone()), (BUNDLE_USR, vec![0x55; 8192]), (BUNDLE_VERITY, superblock(&[1]))],
        );
        let k = node();
        let installed = install(&k, &running(), &path, 3).unwrap();
        assert_eq!(
            installed,
            Installed {
                version: "2".into(),
                slot: "kelson-usr-b".into(),
                entry: "kelson-2+3.efi".into(),
                removed_entries: vec!["kelson-1.5+0-3.efi".into()],
            }
        );
        let files = k.files.lock().unwrap();
        assert_eq!(files[Path::new("/esp/EFI/Linux/kelson-2+3.efi")], new_uki);
        assert!(files.contains_key(Path::new("/esp/EFI/Linux/kelson-1.efi")));
        assert!(!files.contains_key(Path::new("/esp/EFI/Linux/kelson-1.5+0-3.efi")));
        assert_eq!(&files[Path::new("/dev/vda4")][..8192], &[0x55; 8192][..]);
        assert_eq!(&files[Path::new("/dev/vda5")][..512], &superblock(&[1])[..]);
        drop(files);
        let new = RootHash::parse(NEW).unwrap();
        let found = verity::find_partitions(&k, &["/dev/vda".into()], &new).unwrap();
        assert_eq!((found.data, found.hash), (PathBuf::from("/dev/vda4"), PathBuf::from("/dev/vda5")));
        let calls = k.calls();
        let verity = calls.iter().position(|c| c.starts_with("verity usr-update-check 8000 1 /dev/vda4 /dev/vda5"));
        let entry = calls.iter().position(|c| c == "create /esp/EFI/Linux/kelson-2+3.efi.partial");
        assert!(verity.is_some() && verity < entry, "checked before the entry is installed: {calls:?}");
        assert!(calls.contains(&"dm remove usr-update-check".to_owned()), "{calls:?}");
    }

    #[test]
    fn a_bundle_that_is_not_newer_or_out_of_order_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let k = node();
        let same = bundle(
            dir.path(),
            &[
                (BUNDLE_UKI, uki(&osrel("1"), &format!("usrhash={NEW}"))),
                (BUNDLE_USR, vec![1]),
                (BUNDLE_VERITY, vec![2]),
            ],
        );
        let err = install(&k, &running(), &same, 3).unwrap_err();
        assert_eq!(err.to_string(), "the update bundle holds version 1, which is not newer than the running 1");
        let swapped = bundle(dir.path(), &[(BUNDLE_USR, vec![1]), (BUNDLE_UKI, vec![2])]);
        let err = install(&k, &running(), &swapped, 3).unwrap_err();
        assert!(err.to_string().contains("found \"usr.img\" where kelson.efi should be"), "{err}");
        let too_big = bundle(
            dir.path(),
            &[
                (BUNDLE_UKI, uki(&osrel("2"), &format!("usrhash={NEW}"))),
                (BUNDLE_USR, vec![1; (512 << 10) + 1]),
                (BUNDLE_VERITY, vec![2]),
            ],
        );
        let err = install(&k, &running(), &too_big, 3).unwrap_err();
        assert!(err.to_string().contains("do not fit in /dev/vda4"), "{err}");
        let calls = k.calls();
        assert!(
            !calls.iter().any(|c| c.starts_with("copy") || c.starts_with("create") || c.starts_with("rm")),
            "{calls:?}"
        );
    }
}
