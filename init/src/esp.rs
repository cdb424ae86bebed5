//! The EFI system partition of the boot disk, where the UKIs live, and
//! systemd-boot's EFI variables.
//!
//! The ESP is found by its GPT type on the boot disk and mounted (vfat)
//! only while PID 1 reads or changes it, so a power cut at any other time
//! cannot leave it half-written. New files are written under a temporary
//! name and renamed, so the boot loader never sees half a UKI.

use crate::boot_entry::{self, EntryFile};
use crate::kernel::{Kernel, KernelDisk, MountFlags};
use std::io;
use std::path::{Path, PathBuf};
use tracing::warn;
use uuid::Uuid;

/// The GPT type of an EFI system partition.
pub const ESP_TYPE: Uuid = Uuid::from_u128(0xc12a7328_f81f_11d2_ba4b_00a0c93ec93b);
/// Where the UKIs are, relative to the ESP's root.
pub const LINUX_DIR: &str = "EFI/Linux";
/// Where efivarfs shows the firmware's variables.
pub const EFIVARS: &str = "/sys/firmware/efi/efivars";

#[derive(Debug, thiserror::Error)]
pub enum EspError {
    #[error("reading the partition table of {disk}")]
    Table {
        disk: PathBuf,
        #[source]
        source: gpt::GptError,
    },
    #[error("{disk} has no EFI system partition")]
    NotFound { disk: PathBuf },
    #[error("mounting the EFI system partition {device} on {dir}")]
    Mount {
        device: PathBuf,
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{action} {path} on the EFI system partition")]
    File {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// The ESP's partition device on `disk`.
pub fn find(kernel: &dyn Kernel, disk: &Path) -> Result<PathBuf, EspError> {
    let gpt = gpt::GptConfig::new()
        .writable(false)
        .open_from_device(KernelDisk::new(kernel, disk))
        .map_err(|source| EspError::Table { disk: disk.to_owned(), source })?;
    gpt.partitions()
        .iter()
        .find(|(_, p)| p.is_used() && p.part_type_guid.guid == ESP_TYPE)
        .map(|(number, _)| crate::verity::partition_device(disk, *number))
        .ok_or_else(|| EspError::NotFound { disk: disk.to_owned() })
}

/// The ESP, mounted at `dir` until this is dropped.
pub struct MountedEsp<'k> {
    kernel: &'k dyn Kernel,
    dir: PathBuf,
}

impl std::fmt::Debug for MountedEsp<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ESP at {}", self.dir.display())
    }
}

impl<'k> MountedEsp<'k> {
    pub fn mount(kernel: &'k dyn Kernel, device: &Path, dir: &Path, writable: bool) -> Result<Self, EspError> {
        let mount_error = |source| EspError::Mount { device: device.to_owned(), dir: dir.to_owned(), source };
        kernel.create_dir_all(dir).map_err(mount_error)?;
        let flags = MountFlags { readonly: !writable, nosuid: true, nodev: true, noexec: true, relatime: false };
        kernel.mount(&device.to_string_lossy(), dir, "vfat", flags, Some("umask=0077")).map_err(mount_error)?;
        Ok(MountedEsp { kernel, dir: dir.to_owned() })
    }

    fn linux_dir(&self) -> PathBuf {
        self.dir.join(LINUX_DIR)
    }

    /// Kelson's boot entries, in name order; other files are ignored.
    pub fn entries(&self) -> Result<Vec<EntryFile>, EspError> {
        let dir = self.linux_dir();
        let names = self.kernel.list_dir(&dir).map_err(|source| EspError::File {
            action: "listing",
            path: dir.clone(),
            source,
        })?;
        Ok(names.iter().filter_map(|name| EntryFile::parse(name)).collect())
    }

    pub fn read_entry(&self, file: &str) -> Result<Vec<u8>, EspError> {
        let path = self.linux_dir().join(file);
        self.kernel.read_file(&path).map_err(|source| EspError::File { action: "reading", path, source })
    }

    /// Renames `entry` to its name without a counter: the boot loader will
    /// choose it without counting from now on.
    pub fn bless(&self, entry: &EntryFile) -> Result<String, EspError> {
        let blessed = entry.blessed_name();
        let (from, to) = (self.linux_dir().join(&entry.file), self.linux_dir().join(&blessed));
        self.kernel.rename(&from, &to).map_err(|source| EspError::File { action: "renaming", path: from, source })?;
        Ok(blessed)
    }

    pub fn remove_entry(&self, file: &str) -> Result<(), EspError> {
        let path = self.linux_dir().join(file);
        self.kernel.remove_file(&path).map_err(|source| EspError::File { action: "removing", path, source })
    }

    /// Writes a new entry under a temporary name, then renames it into place.
    pub fn install_entry(&self, file: &str, data: &[u8]) -> Result<(), EspError> {
        let path = self.linux_dir().join(file);
        // Not `.efi`, so neither the boot loader nor `entries` sees it.
        let partial = self.linux_dir().join(format!("{file}.partial"));
        self.kernel.create_file(&partial, data).map_err(|source| EspError::File {
            action: "writing",
            path: partial.clone(),
            source,
        })?;
        self.kernel.rename(&partial, &path).map_err(|source| EspError::File { action: "renaming", path, source })
    }
}

impl Drop for MountedEsp<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.kernel.unmount(&self.dir) {
            warn!(dir = %self.dir.display(), error = %e, "could not unmount the EFI system partition");
        }
    }
}

/// What systemd-boot told the system about this boot.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoaderVars {
    /// The entry's id.
    pub entry_selected: Option<String>,
    /// The boot-counted file started, when the entry is on trial.
    pub boot_count_file: Option<String>,
}

/// Reads systemd-boot's variables, mounting efivarfs (its module from
/// `module_dir`) if it is not yet; `None` when the machine did not boot
/// through UEFI.
pub fn loader_vars(kernel: &dyn Kernel, module_dir: &Path) -> Option<LoaderVars> {
    let efi = Path::new("/sys/firmware/efi");
    if !kernel.exists(efi) {
        return None;
    }
    let vars = Path::new(EFIVARS);
    if kernel.list_dir(vars).map_or(true, |names| names.is_empty()) {
        // The initrd carries the module too: a boot that stops before /usr
        // must still find out whether it was a counted try.
        if let Err(e) = crate::modules::load_listed(kernel, module_dir, &["efivarfs".to_owned()]) {
            warn!(error = %e, "could not load efivarfs");
        }
        let flags = MountFlags { nosuid: true, nodev: true, noexec: true, ..MountFlags::default() };
        if let Err(e) = kernel.mount("efivarfs", vars, "efivarfs", flags, None) {
            warn!(error = %e, "could not mount efivarfs: the boot loader's variables are unknown");
        }
    }
    let read = |name: &str| {
        let path = vars.join(format!("{name}-{}", boot_entry::LOADER_VENDOR));
        kernel.read_file(&path).ok().and_then(|bytes| boot_entry::parse_efi_string(&bytes))
    };
    Some(LoaderVars {
        entry_selected: read(boot_entry::ENTRY_SELECTED_VAR),
        boot_count_file: read(boot_entry::BOOT_COUNT_PATH_VAR).map(|path| boot_entry::esp_file_name(&path).to_owned()),
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::kernel::fake::FakeKernel;

    /// An EFI string variable's bytes as efivarfs shows them.
    pub(crate) fn efi_string(text: &str) -> Vec<u8> {
        let mut bytes = vec![6, 0, 0, 0];
        for unit in text.encode_utf16().chain([0]) {
            bytes.extend(unit.to_le_bytes());
        }
        bytes
    }

    #[test]
    fn the_loader_variables_name_the_counted_file() {
        let vendor = boot_entry::LOADER_VENDOR;
        let k = FakeKernel::default()
            .with_file("/sys/firmware/efi", "")
            .with_bytes(
                &format!("{EFIVARS}/LoaderBootCountPath-{vendor}"),
                efi_string("\\EFI\\Linux\\kelson-2+2-1.efi"),
            )
            .with_bytes(&format!("{EFIVARS}/LoaderEntrySelected-{vendor}"), efi_string("kelson-2.efi"));
        let vars = loader_vars(&k, Path::new("/m")).unwrap();
        assert_eq!(vars.boot_count_file.as_deref(), Some("kelson-2+2-1.efi"));
        assert_eq!(vars.entry_selected.as_deref(), Some("kelson-2.efi"));
        // efivarfs was there already: not mounted again.
        assert!(!k.calls().iter().any(|c| c.starts_with("mount")), "{:?}", k.calls());
        assert_eq!(loader_vars(&FakeKernel::default(), Path::new("/m")), None);
    }

    #[test]
    fn entries_are_blessed_and_installed_by_rename() {
        let k = FakeKernel::default()
            .with_file("/esp/EFI/Linux/kelson-1.efi", "one")
            .with_file("/esp/EFI/Linux/kelson-2+2-1.efi", "two")
            .with_file("/esp/EFI/Linux/notes.txt", "");
        {
            let esp = MountedEsp::mount(&k, Path::new("/dev/vda1"), Path::new("/esp"), true).unwrap();
            let entries = esp.entries().unwrap();
            assert_eq!(entries.len(), 2);
            assert_eq!(esp.bless(&entries[1]).unwrap(), "kelson-2.efi");
            esp.install_entry("kelson-3+3.efi", b"three").unwrap();
            esp.remove_entry("kelson-1.efi").unwrap();
        }
        assert_eq!(k.file("/esp/EFI/Linux/kelson-2.efi").as_deref(), Some("two"));
        assert_eq!(k.file("/esp/EFI/Linux/kelson-3+3.efi").as_deref(), Some("three"));
        assert_eq!(k.file("/esp/EFI/Linux/kelson-1.efi"), None);
        let calls = k.calls();
        assert!(calls[1].starts_with("mount /dev/vda1 /esp vfat"), "{calls:?}");
        assert!(calls.contains(&"create /esp/EFI/Linux/kelson-3+3.efi.partial".to_owned()), "{calls:?}");
        assert_eq!(calls.last().map(String::as_str), Some("umount /esp"));
    }
}
