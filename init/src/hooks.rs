//! Test hooks. A test-only image layer may put executables in
//! [`HOOK_DIR`] (outside /usr, which the read-only /usr image covers); PID 1
//! starts each one, in name order, once boot has finished (ready or
//! maintenance), but only when the kernel command line says
//! `kelson.test.hooks=1`. A directory alone is not enough: a production node
//! must never run a file because a directory happens to exist, and the UKI's
//! command line is fixed when the image is built. The QEMU harness adds the
//! key when a test layer carries hooks; the tests use hooks to start their
//! in-guest agent and helpers such as the orphan maker.

use crate::cmdline::Cmdline;
use std::path::{Path, PathBuf};

pub const HOOK_DIR: &str = "/kelson-test/hooks";

/// The kernel command-line key that enables test hooks (value `1`).
pub const ENABLE_KEY: &str = "kelson.test.hooks";

/// What PID 1 does about test hooks at the end of boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// No hook directory: nothing to do, nothing to say.
    Absent,
    /// Hooks are enabled: start these, in this order.
    Run(Vec<PathBuf>),
    /// A hook directory exists but the command line does not enable hooks:
    /// nothing runs, and PID 1 says so once.
    Ignored,
}

/// Whether the command line enables test hooks.
pub fn enabled(cmdline: &Cmdline) -> bool {
    cmdline.get(ENABLE_KEY) == Some("1")
}

/// What to do about the hook directory `dir` under `cmdline`.
pub fn plan(cmdline: &Cmdline, dir: &Path) -> Plan {
    if !dir.exists() {
        Plan::Absent
    } else if enabled(cmdline) {
        Plan::Run(find(dir))
    } else {
        Plan::Ignored
    }
}

/// The serial number of the virtual disk that carries a test layer to a
/// boot the harness cannot add an initrd to (the disk image, whose UKI
/// holds its own): a tar archive of the layer's files, unpacked over `/`.
pub const LAYER_DISK_SERIAL: &str = "kelson-test-layer";

/// Finds the disk whose serial is [`LAYER_DISK_SERIAL`] among the block
/// devices in `sys_class_block` and unpacks its tar archive into `root`;
/// returns the disk, or `None` when there is none. Only called when the
/// command line enables test hooks.
pub fn unpack_layer_disk(sys_class_block: &Path, dev: &Path, root: &Path) -> Result<Option<PathBuf>, String> {
    let Ok(entries) = std::fs::read_dir(sys_class_block) else { return Ok(None) };
    let disk = entries.filter_map(|e| e.ok()).find_map(|entry| {
        let serial = std::fs::read_to_string(entry.path().join("serial")).ok()?;
        (serial.trim() == LAYER_DISK_SERIAL).then(|| dev.join(entry.file_name()))
    });
    let Some(disk) = disk else { return Ok(None) };
    let file =
        std::fs::File::open(&disk).map_err(|e| format!("opening the test layer disk {}: {e}", disk.display()))?;
    let mut archive = tar::Archive::new(file);
    archive.set_preserve_permissions(true);
    archive
        .unpack(root)
        .map_err(|e| format!("unpacking the test layer from {} into {}: {e}", disk.display(), root.display()))?;
    Ok(Some(disk))
}

/// Executable regular files in `dir`, sorted by name.
pub fn find(dir: &Path) -> Vec<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut hooks: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| std::fs::metadata(p).map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0).unwrap_or(false))
        .collect();
    hooks.sort();
    hooks
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn hook_dir() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (name, mode) in [("20-b", 0o755), ("10-a", 0o700), ("30-not-exec", 0o644)] {
            let p = dir.path().join(name);
            std::fs::write(&p, "#!/bin/sh\n").unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        }
        std::fs::create_dir(dir.path().join("40-dir")).unwrap();
        dir
    }

    #[test]
    fn a_layer_disk_is_found_by_its_serial_and_unpacked() {
        let sys = tempfile::tempdir().unwrap();
        let dev = tempfile::tempdir().unwrap();
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(sys.path().join("vda")).unwrap();
        std::fs::write(sys.path().join("vda/serial"), "other\n").unwrap();
        assert_eq!(unpack_layer_disk(sys.path(), dev.path(), root.path()), Ok(None));

        std::fs::create_dir_all(sys.path().join("vdb")).unwrap();
        std::fs::write(sys.path().join("vdb/serial"), LAYER_DISK_SERIAL).unwrap();
        let mut archive = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_size(3);
        header.set_mode(0o750);
        header.set_cksum();
        archive.append_data(&mut header, "kelson-test/hooks/10-x", &b"hi\n"[..]).unwrap();
        let mut bytes = archive.into_inner().unwrap();
        // A disk is whole sectors: zeros after the archive's end.
        bytes.resize(bytes.len() + 4096, 0);
        std::fs::write(dev.path().join("vdb"), bytes).unwrap();
        assert_eq!(unpack_layer_disk(sys.path(), dev.path(), root.path()), Ok(Some(dev.path().join("vdb"))));
        let hook = root.path().join("kelson-test/hooks/10-x");
        assert_eq!(std::fs::read(&hook).unwrap(), b"hi\n");
        assert_eq!(std::fs::metadata(&hook).unwrap().permissions().mode() & 0o777, 0o750);
    }

    #[test]
    fn only_executable_files_are_hooks_in_name_order() {
        let dir = hook_dir();
        let names: Vec<_> = find(dir.path()).iter().map(|p| p.file_name().unwrap().to_owned()).collect();
        assert_eq!(names, vec!["10-a", "20-b"]);
        assert!(find(Path::new("/nonexistent-kelson")).is_empty());
    }

    #[test]
    fn hooks_run_only_when_the_command_line_enables_them() {
        let dir = hook_dir();
        let on = Cmdline::parse("console=ttyS0 kelson.test.hooks=1");
        match plan(&on, dir.path()) {
            Plan::Run(hooks) => assert_eq!(hooks.len(), 2),
            other => panic!("expected hooks to run, got {other:?}"),
        }
        for line in ["console=ttyS0", "kelson.test.hooks=0", "kelson.test.hooks", "kelson.test.hooks=yes"] {
            assert_eq!(plan(&Cmdline::parse(line), dir.path()), Plan::Ignored, "{line}");
        }
        // The last word wins, as for every key.
        assert_eq!(plan(&Cmdline::parse("kelson.test.hooks=1 kelson.test.hooks=0"), dir.path()), Plan::Ignored);
        assert_eq!(plan(&on, Path::new("/nonexistent-kelson")), Plan::Absent);
        assert_eq!(plan(&Cmdline::default(), Path::new("/nonexistent-kelson")), Plan::Absent);
    }
}
