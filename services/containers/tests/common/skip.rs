//! How a test says it skipped something, in one line `cargo xtask test`
//! collects and names in its summary: `kelson-test-skip: <target>::<test>: <reason>`.
//! Shared by path with other crates' tests (`#[path = ...] mod skip;`).

use std::io::Write;

/// The environment variable naming the file `cargo xtask test` collects skips from.
pub const SKIP_LOG: &str = "KELSON_TEST_SKIP_LOG";

/// Reports that the running test skipped `what`: on stderr, and appended to
/// the file `KELSON_TEST_SKIP_LOG` names, since cargo hides a passing test's
/// output. The test is named by its thread, which libtest names after it.
pub fn report_skip(what: &str) {
    let thread = std::thread::current();
    let test = thread.name().unwrap_or("unnamed");
    let line = format!("kelson-test-skip: {}::{test}: {what}\n", env!("CARGO_CRATE_NAME"));
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
