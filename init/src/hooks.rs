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
