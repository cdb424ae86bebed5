//! `cargo xtask fuzz [SECONDS]`: runs each config and seed fuzz target
//! (services/config/fuzz) for a bounded time with cargo-fuzz. cargo-fuzz
//! wants a nightly compiler for its sanitizer flags; this machine has only
//! stable, so the build runs with RUSTC_BOOTSTRAP=1, which unlocks those
//! flags on the stable compiler. Not part of `cargo xtask test`: a fuzz run
//! long enough to be useful is too slow for every change.

use crate::progress;
use anyhow::{Context, Result};
use std::path::Path;
use std::process::Command;

const TARGETS: &[&str] = &["machine_config", "nocloud_seed"];

fn cargo_fuzz_installed() -> bool {
    Command::new("cargo").args(["fuzz", "--version"]).output().is_ok_and(|o| o.status.success())
}

pub fn run(root: &Path, seconds: u64) -> Result<()> {
    if !cargo_fuzz_installed() {
        eprintln!("xtask: installing cargo-fuzz from crates.io (a few minutes, once)");
        progress::run(Command::new("cargo").args(["install", "--locked", "cargo-fuzz"]), "cargo install cargo-fuzz")?;
    }
    let dir = root.join("services/config/fuzz");
    let mut steps = progress::Steps::new(TARGETS.len());
    for target in TARGETS {
        steps.start(&format!("fuzzing {target} for {seconds} s"));
        // New inputs go to a working corpus under target/; the committed
        // seeds in services/config/fuzz/corpus are read, never written.
        let seeds = dir.join("corpus").join(target);
        let corpus = root.join("target/fuzz-corpus").join(target);
        std::fs::create_dir_all(&corpus).with_context(|| format!("creating corpus dir {}", corpus.display()))?;
        progress::run(
            Command::new("cargo")
                .current_dir(&dir)
                .env("RUSTC_BOOTSTRAP", "1")
                .args(["fuzz", "run", target])
                .arg(&corpus)
                .arg(&seeds)
                .arg("--")
                .arg(format!("-max_total_time={seconds}")),
            &format!("cargo fuzz run {target}"),
        )?;
    }
    steps.done();
    Ok(())
}
