//! Saying what is going on during long work: numbered steps with their
//! duration, and commands run with their output passed through.

use anyhow::{bail, Context, Result};
use std::process::Command;
use std::time::Instant;

pub struct Steps {
    total: usize,
    current: usize,
    started: Instant,
    step_started: Instant,
}

impl Steps {
    pub fn new(total: usize) -> Self {
        let now = Instant::now();
        Steps { total, current: 0, started: now, step_started: now }
    }

    pub fn start(&mut self, what: &str) {
        self.finish_step();
        self.current += 1;
        self.step_started = Instant::now();
        eprintln!("\n==> [{}/{}] {what}", self.current, self.total);
    }

    fn finish_step(&self) {
        if self.current > 0 {
            eprintln!(
                "==> [{}/{}] done in {:.1}s",
                self.current,
                self.total,
                self.step_started.elapsed().as_secs_f64()
            );
        }
    }

    pub fn done(&self) {
        self.finish_step();
        eprintln!("==> all {} steps passed in {:.1}s", self.total, self.started.elapsed().as_secs_f64());
    }
}

/// Runs a command with inherited output; fails naming `what` if it fails.
pub fn run(cmd: &mut Command, what: &str) -> Result<()> {
    let status = cmd.status().with_context(|| format!("starting {what} ({cmd:?})"))?;
    if !status.success() {
        bail!("{what} failed ({status})");
    }
    Ok(())
}

/// Free bytes on the filesystem holding `path`, as `df` reports them; `None`
/// when `df` cannot say (the caller only uses it to explain a failure).
pub fn free_bytes(path: &std::path::Path) -> Option<u64> {
    let out = Command::new("df").args(["--output=avail", "-B1"]).arg(path).output().ok()?;
    if !out.status.success() {
        return None;
    }
    String::from_utf8_lossy(&out.stdout).lines().nth(1)?.trim().parse().ok()
}

/// `bytes` in GiB with one decimal, for messages.
pub fn gib(bytes: u64) -> String {
    format!("{:.1} GiB", bytes as f64 / (1u64 << 30) as f64)
}
