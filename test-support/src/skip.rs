//! How a test says it skipped something, in one line `cargo xtask test`
//! collects and names in its summary: `kelson-test-skip: <target>::<test>: <reason>`.

use std::io::Write;

/// The environment variable naming the file `cargo xtask test` collects skips from.
pub const SKIP_LOG: &str = "KELSON_TEST_SKIP_LOG";

/// Reports that the running test skipped `what`: on stderr, and appended to
/// the file `KELSON_TEST_SKIP_LOG` names, since cargo hides a passing test's
/// output. The test is named by its thread, which libtest names after it,
/// and its target by [`test_target`].
pub fn report_skip(what: &str) {
    let thread = std::thread::current();
    let test = thread.name().unwrap_or("unnamed");
    let target = std::env::current_exe().map(|exe| test_target(&exe)).unwrap_or_else(|_| "unknown".into());
    let line = format!("kelson-test-skip: {target}::{test}: {what}\n");
    eprint!("{line}");
    if let Some(log) = std::env::var_os(SKIP_LOG) {
        // One write of one short line with O_APPEND: lines from tests running
        // at once do not interleave.
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .and_then(|mut f| f.write_all(line.as_bytes()));
        if let Err(e) = written {
            panic!("recording a skip in {} ({SKIP_LOG}): {e}", std::path::Path::new(&log).display());
        }
    }
}

/// The test target a test executable was built from: its file name without
/// the `-<16 hex digits>` cargo appends (the guest runs them renamed,
/// without it).
pub fn test_target(executable: &std::path::Path) -> String {
    let name = executable.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    match name.rsplit_once('-') {
        Some((target, hash)) if hash.len() == 16 && hash.bytes().all(|b| b.is_ascii_hexdigit()) => target.to_owned(),
        _ => name,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn the_target_is_the_executable_without_cargos_hash() {
        assert_eq!(test_target(Path::new("/t/deps/runc-0123456789abcdef")), "runc");
        assert_eq!(test_target(Path::new("/t/deps/kelson_pods-fedcba9876543210")), "kelson_pods");
        assert_eq!(test_target(Path::new("/tmp/guest-tests/runc")), "runc");
        assert_eq!(test_target(Path::new("/x/power-cut")), "power-cut");
    }
}
