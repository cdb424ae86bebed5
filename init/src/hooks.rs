//! Test hooks. A test-only image layer may put executables in
//! [`HOOK_DIR`] (outside /usr, which the read-only /usr image covers); PID 1 starts each one, in name order, once boot has
//! finished (ready or maintenance). The production image has no such
//! directory, so this does nothing there. The QEMU tests use it to start
//! their in-guest agent and helpers such as the orphan maker.

use std::path::{Path, PathBuf};

pub const HOOK_DIR: &str = "/kelson-test/hooks";

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

    #[test]
    fn only_executable_files_are_hooks_in_name_order() {
        let dir = tempfile::tempdir().unwrap();
        for (name, mode) in [("20-b", 0o755), ("10-a", 0o700), ("30-not-exec", 0o644)] {
            let p = dir.path().join(name);
            std::fs::write(&p, "#!/bin/sh\n").unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        }
        std::fs::create_dir(dir.path().join("40-dir")).unwrap();
        let names: Vec<_> = find(dir.path()).iter().map(|p| p.file_name().unwrap().to_owned()).collect();
        assert_eq!(names, vec!["10-a", "20-b"]);
        assert!(find(Path::new("/nonexistent-kelson")).is_empty());
    }
}
