//! `cargo xtask bench memory`: the least guest memory in which the node
//! reaches `kelson: ready`, booted both ways:
//!
//! - direct: `-kernel vmlinuz -initrd kelson.initrd` (the whole root in RAM);
//! - disk: `kelson.raw` booted by OVMF through systemd-boot and the UKI
//!   (a fresh qcow2 overlay each boot, so each is a first boot).
//!
//! Sizes are tried in steps of 16 MiB from 320 MiB down to 64 MiB, by
//! bisection (a boot under TCG takes half a minute or more), assuming that
//! a node which is ready in some memory is ready in any more. A boot counts
//! only when `kelson: ready` appears within [`READY_TIMEOUT`]; a kernel panic,
//! a boot stopped in maintenance, an EFI stub error, a firmware exception or
//! QEMU exiting fails it at once.

use anyhow::{bail, Context, Result};
use qemu_tests::{ImagePaths, Vm, VmBuilder};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const HIGHEST_MIB: u32 = 320;
const LOWEST_MIB: u32 = 64;
const STEP_MIB: u32 = 16;
const READY_TIMEOUT: Duration = Duration::from_secs(240);

#[derive(Clone, Copy)]
enum Way {
    Direct,
    Disk,
}

impl Way {
    fn name(self) -> &'static str {
        match self {
            Way::Direct => "direct",
            Way::Disk => "disk",
        }
    }
}

fn boot(image: &ImagePaths, way: Way, mib: u32, dir: &Path) -> Result<Vm> {
    match way {
        Way::Direct => VmBuilder::from_image(image).name("memory-direct").memory_mib(mib).boot(),
        Way::Disk => {
            let disk = dir.join("disk.qcow2");
            let status = Command::new("qemu-img")
                .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
                .arg(&image.disk)
                .arg(&disk)
                .status()
                .context("running qemu-img create")?;
            if !status.success() {
                bail!("qemu-img create of an overlay of {} failed ({status})", image.disk.display());
            }
            VmBuilder::firmware().name("memory-disk").memory_mib(mib).ovmf(dir)?.disk_qcow2(&disk).boot()
        }
    }
}

/// How one boot went: ready after so many seconds (host wall time), or why not.
enum Outcome {
    Ready(f64),
    Failed(String),
}

/// The first console line containing one of `needles`.
fn first_line_with(console: &str, needles: &[&str]) -> Option<String> {
    console.lines().find(|l| needles.iter().any(|n| l.contains(n))).map(|l| l.trim().to_owned())
}

fn try_boot(image: &ImagePaths, way: Way, mib: u32) -> Result<Outcome> {
    let dir = tempfile::tempdir().context("creating a temporary directory")?;
    let started = Instant::now();
    let mut vm = boot(image, way, mib, dir.path()).with_context(|| format!("starting the {} VM", way.name()))?;
    let outcome = loop {
        // `expect` fails on its short timeout and when QEMU exits; both are
        // looked at below.
        if vm.expect("kelson: ready", Duration::from_secs(5)).is_ok() {
            break Outcome::Ready(started.elapsed().as_secs_f64());
        }
        let console = vm.console_text()?;
        // The kernel's EFI stub and OVMF report their own failures (at
        // 144 MiB the stub cannot decompress the kernel, then OVMF shows a
        // CPU exception and hangs).
        let failures = ["Kernel panic", "maintenance: boot stopped", "EFI stub: ERROR", "X64 Exception Type"];
        if let Some(line) = first_line_with(&console, &failures) {
            break Outcome::Failed(line);
        }
        let last = console.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("").trim().to_owned();
        if let Some(status) = vm.exit_status()? {
            break Outcome::Failed(format!("QEMU exited ({status}); last console line: {last}"));
        }
        if started.elapsed() >= READY_TIMEOUT {
            break Outcome::Failed(format!("not ready after {} s; last console line: {last}", READY_TIMEOUT.as_secs()));
        }
    };
    // Already exited when it failed that way; either way the VM goes.
    let _ = vm.kill();
    Ok(outcome)
}

/// What a search found for one way of booting.
struct Search {
    /// The least size (MiB) that reaches ready, if any up to [`HIGHEST_MIB`] does.
    least: Option<u32>,
    /// The sizes tried, in order, with their outcomes.
    tried: Vec<(u32, Outcome)>,
}

fn least_memory(image: &ImagePaths, way: Way) -> Result<Search> {
    let sizes: Vec<u32> = (LOWEST_MIB..=HIGHEST_MIB).step_by(STEP_MIB as usize).collect();
    let mut tried = Vec::new();
    // Invariant: every size below sizes[low] fails; sizes[high] (if in
    // range) is ready.
    let (mut low, mut high) = (0, sizes.len());
    while low < high {
        let mid = (low + high) / 2;
        let mib = sizes[mid];
        let outcome = try_boot(image, way, mib)?;
        match &outcome {
            Outcome::Ready(secs) => {
                eprintln!("bench-memory: {} {mib} MiB: ready after {secs:.0} s", way.name());
                high = mid;
            }
            Outcome::Failed(why) => {
                eprintln!("bench-memory: {} {mib} MiB: failed: {why}", way.name());
                low = mid + 1;
            }
        }
        tried.push((mib, outcome));
    }
    Ok(Search { least: sizes.get(low).copied(), tried })
}

fn main() -> Result<()> {
    let image = ImagePaths::disk_from_env()?;
    let direct = least_memory(&image, Way::Direct)?;
    let disk = least_memory(&image, Way::Disk)?;
    println!(
        "memory benchmark: least guest memory reaching `kelson: ready` within {} s (TCG, 1 vCPU), \
         bisected over {LOWEST_MIB}..={HIGHEST_MIB} MiB in steps of {STEP_MIB} MiB",
        READY_TIMEOUT.as_secs()
    );
    let least = |m: Option<u32>| m.map_or(format!("> {HIGHEST_MIB}"), |m| m.to_string());
    println!("{:<28} {:>10} {:>10}", "", "direct", "disk");
    println!("{:<28} {:>10} {:>10}", "least memory (MiB)", least(direct.least), least(disk.least));
    for (way, tried) in [(Way::Direct, &direct.tried), (Way::Disk, &disk.tried)] {
        let list: Vec<String> = tried
            .iter()
            .map(|(mib, o)| match o {
                Outcome::Ready(secs) => format!("{mib} ready ({secs:.0} s)"),
                Outcome::Failed(_) => format!("{mib} failed"),
            })
            .collect();
        println!("  {} boots tried: {}", way.name(), list.join(", "));
    }
    for (way, tried) in [(Way::Direct, &direct.tried), (Way::Disk, &disk.tried)] {
        for (mib, o) in tried {
            if let Outcome::Failed(why) = o {
                println!("  {} {mib} MiB failed: {why}", way.name());
            }
        }
    }
    Ok(())
}
