//! `cargo xtask fuzz [SECONDS]`: runs each fuzz target (the config and seed
//! parsers in services/config/fuzz, the pod manifest parser and validator
//! in services/pods/fuzz) for a bounded time with cargo-fuzz. cargo-fuzz
//! wants a nightly compiler for its sanitizer flags; this machine has only
//! stable, so the build runs with RUSTC_BOOTSTRAP=1, which unlocks those
//! flags on the stable compiler. `cargo xtask test` runs [`smoke`]: each
//! target for a fixed number of inputs from its committed corpus on, so a
//! parser change that panics on a known input fails the suite; a run long
//! enough to find new bugs is too slow for every change.

use crate::progress;
use anyhow::{Context, Result};
use std::path::Path;
use std::process::Command;

/// Each fuzz target: the cargo-fuzz project (relative to the repository)
/// and the target's name, which is also its corpus directory's.
const TARGETS: &[(&str, &str)] = &[
    ("services/config/fuzz", "machine_config"),
    ("services/config/fuzz", "nocloud_seed"),
    ("services/pods/fuzz", "pod_manifest"),
];

/// Inputs per target in `cargo xtask test`: the committed seeds and a few
/// thousand mutations of them, seconds per target once built.
pub const SMOKE_RUNS: u64 = 5000;

fn cargo_fuzz_installed() -> bool {
    Command::new("cargo").args(["fuzz", "--version"]).output().is_ok_and(|o| o.status.success())
}

fn ensure_cargo_fuzz() -> Result<()> {
    if !cargo_fuzz_installed() {
        eprintln!("xtask: installing cargo-fuzz from crates.io (a few minutes, once)");
        progress::run(Command::new("cargo").args(["install", "--locked", "cargo-fuzz"]), "cargo install cargo-fuzz")?;
    }
    Ok(())
}

/// Fuzzes every target for `seconds` each.
pub fn run(root: &Path, seconds: u64) -> Result<()> {
    ensure_cargo_fuzz()?;
    let mut steps = progress::Steps::new(TARGETS.len());
    for (dir, target) in TARGETS {
        steps.start(&format!("fuzzing {target} for {seconds} s"));
        fuzz_one(root, dir, target, &[], &format!("-max_total_time={seconds}"))?;
    }
    steps.done();
    Ok(())
}

/// Runs every target for [`SMOKE_RUNS`] inputs (for `cargo xtask test`).
pub fn smoke(root: &Path) -> Result<()> {
    ensure_cargo_fuzz()?;
    for (dir, target) in TARGETS {
        eprintln!("xtask: fuzz {target}: {SMOKE_RUNS} inputs");
        // Optimized, as cargo fuzz builds by default: unoptimized builds
        // compile faster but ran the config targets at about 20 inputs a
        // second (against 300-450), so the smoke run took longer in all.
        fuzz_one(root, dir, target, &[], &format!("-runs={SMOKE_RUNS}"))?;
    }
    Ok(())
}

fn fuzz_one(root: &Path, dir: &str, target: &str, build: &[&str], limit: &str) -> Result<()> {
    let dir = root.join(dir);
    // New inputs go to a working corpus under target/; the committed seeds
    // in each fuzz project's corpus/ are read, never written. Both fuzz
    // projects build into one target directory under the workspace's, so
    // they share their dependencies' builds and .ci/run's clean-up removes it.
    let seeds = dir.join("corpus").join(target);
    let corpus = root.join("target/fuzz-corpus").join(target);
    std::fs::create_dir_all(&corpus).with_context(|| format!("creating corpus dir {}", corpus.display()))?;
    progress::run(
        Command::new("cargo")
            .current_dir(&dir)
            .env("RUSTC_BOOTSTRAP", "1")
            .args(["fuzz", "run", target])
            .args(build)
            .arg("--target-dir")
            .arg(root.join("target/fuzz"))
            .arg(&corpus)
            .arg(&seeds)
            .arg("--")
            .arg(limit),
        &format!("cargo fuzz run {target} ({limit})"),
    )
}
