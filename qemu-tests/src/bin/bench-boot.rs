//! `cargo xtask bench boot`: boots the node both ways, alternating, several
//! times each, and reports what the guest measured (CLOCK_BOOTTIME from
//! kernel start): when PID 1 started, how long each boot stage took, and
//! PID 1 start → `kelson: ready`.
//!
//! - direct: `-kernel vmlinuz -initrd kelson.initrd` (the whole root in RAM,
//!   /usr a squashfs inside it);
//! - disk: `kelson.raw` booted by OVMF through systemd-boot and the UKI,
//!   /usr verified from its partition (a fresh overlay each run, so each is
//!   a first boot).
//!
//! Firmware and boot loader time is before the kernel starts, so the guest
//! cannot measure it: host wall time from QEMU's start to `ready` shows it,
//! under TCG, for reference. Same QEMU, machine, CPU and memory for both.

use anyhow::{bail, Context, Result};
use qemu_tests::bench::{field, median};
use qemu_tests::{ImagePaths, Vm, VmBuilder};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const RUNS: usize = 3;
const MEMORY_MIB: u32 = 1024;

#[derive(Default)]
struct Runs {
    pid1_start: Vec<f64>,
    to_ready: Vec<f64>,
    host_wall: Vec<f64>,
    stages: BTreeMap<String, Vec<f64>>,
}

#[derive(Clone, Copy, PartialEq)]
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

fn boot(image: &ImagePaths, way: Way, dir: &Path) -> Result<Vm> {
    match way {
        Way::Direct => VmBuilder::from_image(image).memory_mib(MEMORY_MIB).boot(),
        Way::Disk => {
            let disk = dir.join("disk.qcow2");
            let _ = std::fs::remove_file(&disk);
            let status = Command::new("qemu-img")
                .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
                .arg(&image.disk)
                .arg(&disk)
                .status()
                .context("running qemu-img create")?;
            if !status.success() {
                bail!("qemu-img create of an overlay of {} failed ({status})", image.disk.display());
            }
            VmBuilder::firmware().name("bench-disk").memory_mib(MEMORY_MIB).ovmf(dir)?.disk_qcow2(&disk).boot()
        }
    }
}

fn measure(image: &ImagePaths, way: Way, run: usize, runs: &mut Runs) -> Result<()> {
    let dir = tempfile::tempdir().context("creating a temporary directory")?;
    let started = Instant::now();
    let mut vm = boot(image, way, dir.path()).with_context(|| format!("booting the node ({})", way.name()))?;
    let ready = vm.expect("kelson: ready", Duration::from_secs(300))?;
    runs.host_wall.push(started.elapsed().as_secs_f64());
    let console = vm.console_text()?;
    for line in console.lines().filter(|l| l.contains("kelson: stage done")) {
        if let (Some(stage), Some(ms)) = (field(line, "stage"), field(line, "elapsed_ms")) {
            runs.stages.entry(stage.to_owned()).or_default().push(ms.parse().unwrap_or(f64::NAN));
        }
    }
    let Some(start) = field(&ready, "pid1_start_s").and_then(|v| v.parse::<f64>().ok()) else {
        bail!("the ready line has no pid1_start_s: {ready}");
    };
    let Some(ms) = field(&ready, "pid1_to_ready_ms").and_then(|v| v.parse::<f64>().ok()) else {
        bail!("the ready line has no pid1_to_ready_ms: {ready}");
    };
    runs.pid1_start.push(start);
    runs.to_ready.push(ms);
    eprintln!("bench-boot: {} run {run}/{RUNS}: PID 1 started at {start:.3} s, ready {ms:.0} ms later", way.name());
    vm.kill()?;
    Ok(())
}

fn mib(path: &Path) -> String {
    std::fs::metadata(path).map_or("missing".into(), |m| format!("{:.1} MiB", m.len() as f64 / (1024.0 * 1024.0)))
}

fn main() -> Result<()> {
    let image = ImagePaths::from_env()?;
    let with_disk = image.disk.is_file();
    let mut direct = Runs::default();
    let mut disk = Runs::default();
    for run in 1..=RUNS {
        measure(&image, Way::Direct, run, &mut direct)?;
        if with_disk {
            measure(&image, Way::Disk, run, &mut disk)?;
        }
    }
    println!(
        "boot benchmark: medians of {RUNS} runs each, alternating, measured in the guest (TCG, 1 vCPU, {MEMORY_MIB} MiB)"
    );
    println!("{:<36} {:>10} {:>10}", "", "direct", if with_disk { "disk" } else { "(no disk)" });
    let row = |label: &str, a: &mut Vec<f64>, b: &mut Vec<f64>, scale: f64| {
        let b = if b.is_empty() { "-".to_owned() } else { format!("{:.0}", median(b) * scale) };
        println!("{label:<36} {:>10.0} {b:>10}", median(a) * scale);
    };
    row("kernel start -> PID 1 start (ms)", &mut direct.pid1_start, &mut disk.pid1_start, 1000.0);
    let names: Vec<String> = direct.stages.keys().chain(disk.stages.keys()).cloned().collect();
    let mut seen = std::collections::BTreeSet::new();
    for stage in names.into_iter().filter(|s| seen.insert(s.clone())) {
        let mut a = direct.stages.get(&stage).cloned().unwrap_or_default();
        let mut b = disk.stages.get(&stage).cloned().unwrap_or_default();
        row(&format!("  stage {stage} (ms)"), &mut a, &mut b, 1.0);
    }
    row("PID 1 start -> kelson: ready (ms)", &mut direct.to_ready, &mut disk.to_ready, 1.0);
    row("host wall, QEMU start -> ready (s)", &mut direct.host_wall, &mut disk.host_wall, 1.0);
    println!("sizes:");
    println!("  kernel                 {}", mib(&image.kernel));
    println!("  direct boot initrd     {}  (the whole root)", mib(&image.initrd));
    println!("  direct boot UKI        {}", mib(&image.uki));
    println!("  disk image initrd      {}", mib(&image.dir.join("kelson-disk.initrd")));
    println!("  disk image /usr        {}  (squashfs, in a fixed-size slot)", mib(&image.dir.join("usr.squashfs")));
    println!("  disk image, qcow2      {}", mib(&image.dir.join("kelson.qcow2")));
    Ok(())
}
