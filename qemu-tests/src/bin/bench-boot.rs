//! `cargo xtask bench boot`: boots the node image several times and reports
//! what the guest measured (CLOCK_BOOTTIME): when PID 1 started, how long
//! each boot stage took, and PID 1 start → `kelson: ready`. Host wall time
//! under TCG says little, so it is shown only for reference.

use anyhow::{bail, Context, Result};
use qemu_tests::{ImagePaths, VmBuilder};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

const RUNS: usize = 3;

fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace().find_map(|w| w.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

fn main() -> Result<()> {
    let image = ImagePaths::from_env()?;
    let mut pid1_start = Vec::new();
    let mut to_ready = Vec::new();
    let mut host_wall = Vec::new();
    let mut stages: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for run in 1..=RUNS {
        let started = Instant::now();
        let mut vm = VmBuilder::from_image(&image).boot().context("booting the node image")?;
        let ready = vm.expect("kelson: ready", Duration::from_secs(180))?;
        host_wall.push(started.elapsed().as_secs_f64());
        let console = vm.console_text()?;
        for line in console.lines().filter(|l| l.contains("kelson: stage done")) {
            if let (Some(stage), Some(ms)) = (field(line, "stage"), field(line, "elapsed_ms")) {
                stages.entry(stage.to_owned()).or_default().push(ms.parse().unwrap_or(f64::NAN));
            }
        }
        let Some(start) = field(&ready, "pid1_start_s").and_then(|v| v.parse::<f64>().ok()) else {
            bail!("the ready line has no pid1_start_s: {ready}");
        };
        let Some(ms) = field(&ready, "pid1_to_ready_ms").and_then(|v| v.parse::<f64>().ok()) else {
            bail!("the ready line has no pid1_to_ready_ms: {ready}");
        };
        pid1_start.push(start);
        to_ready.push(ms);
        eprintln!("bench-boot: run {run}/{RUNS}: PID 1 started at {start:.3} s, ready {ms:.0} ms later");
        vm.kill()?;
    }
    println!("boot benchmark, {RUNS} runs, medians, measured in the guest (TCG, 1 vCPU):");
    println!("  kernel start -> PID 1 start      {:>8.0} ms", median(&mut pid1_start) * 1000.0);
    for (stage, values) in stages.iter_mut() {
        println!("    stage {stage:<22} {:>8.0} ms", median(values));
    }
    println!("  PID 1 start -> kelson: ready     {:>8.0} ms", median(&mut to_ready));
    println!("  (host wall time to ready: {:.1} s)", median(&mut host_wall));
    for (name, path) in [("initrd", &image.initrd), ("UKI", &image.uki), ("kernel", &image.kernel)] {
        let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        println!("  {name:<8} {:.1} MiB", size as f64 / (1024.0 * 1024.0));
    }
    Ok(())
}
