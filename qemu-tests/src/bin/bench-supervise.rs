//! `cargo xtask bench supervise`: measured inside the guest, on a node
//! running containerd (Debian's) and the kubelet and kube-proxy **test
//! doubles** (the real programs are not available here):
//!
//! - restart latency: a supervised process is SIGKILLed; from its death
//!   (the supervisor's `to=backing-off` transition, CLOCK_BOOTTIME) to its
//!   replacement running (`to=running`, published once it is spawned), with
//!   the back-off delay shown apart, since that wait is policy (1 s before
//!   the first restart);
//! - PID 1's RSS and CPU time (user + system) over a minute with the
//!   services running.

use anyhow::{bail, Context, Result};
use qemu_tests::bench::{console_stamp, median};
use qemu_tests::{guest_layer_with_agent, ImagePaths, Layer, Vm, VmBuilder};
use std::process::Command;
use std::time::Duration;

const RUNS: usize = 3;
const CONFIG: &str = "apiVersion: kelson.dev/v1alpha1
kind: MachineConfig
node:
  hostname: bench-node
network:
  podCIDR: 10.244.3.0/24
  clusterCIDR: 10.244.0.0/16
kubelet:
  binary: /kelson-test/kubelet-double
kubeProxy:
  binary: /kelson-test/kube-proxy-double
";

fn sh(vm: &mut Vm, cmd: &str) -> Result<String> {
    let out = vm.agent_exec(cmd, Duration::from_secs(120))?;
    if out.status != 0 {
        bail!("{cmd}: {}", out.output);
    }
    Ok(out.output.trim().to_owned())
}

fn main() -> Result<()> {
    let image = ImagePaths::from_env()?;
    let dir = tempfile::tempdir()?;
    let exe = std::env::current_exe()?;
    let seed = dir.path().join("seed.img");
    let run = |cmd: &mut Command| -> Result<()> {
        let status = cmd.status().with_context(|| format!("{cmd:?}"))?;
        if !status.success() {
            bail!("{cmd:?} failed");
        }
        Ok(())
    };
    run(Command::new("mkfs.fat")
        .args(["-C", "-n", "CIDATA"])
        .arg(&seed)
        .arg("2048")
        .stdout(std::process::Stdio::null()))?;
    for (name, content) in [("meta-data", "instance-id: bench\n"), ("user-data", CONFIG)] {
        let local = dir.path().join(name);
        std::fs::write(&local, content)?;
        run(Command::new("mcopy").arg("-i").arg(&seed).arg(&local).arg(format!("::{name}")))?;
    }
    let (mut restart_ms, mut backoff_ms, mut rss_kib, mut cpu_ms) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for attempt in 1..=RUNS {
        let doubles = Layer::new()
            .file_from_host("/kelson-test/kubelet-double", exe.with_file_name("guest-kubelet-double"), 0o755)
            .file_from_host("/kelson-test/kube-proxy-double", exe.with_file_name("guest-kube-proxy-double"), 0o755);
        let mut vm = VmBuilder::from_image(&image)
            .layer(guest_layer_with_agent("/bin/busybox"))
            .layer(doubles)
            .disk(&seed)
            .boot()?;
        vm.expect("service state service=kube-proxy from=running to=healthy", Duration::from_secs(240))?;
        let pid = sh(&mut vm, "sed -n 's/.*\"pid\": \\([0-9]*\\).*/\\1/p' /run/kelson/services/kubelet.json")?;
        let before = vm.console_text()?.len();
        sh(&mut vm, &format!("kill -9 {pid}"))?;
        vm.expect("service state service=kubelet from=starting to=running", Duration::from_secs(60))?;
        let console = vm.console_text()?;
        let (at, died) = console_stamp(&console, before, "service=kubelet from=healthy to=backing-off")
            .context("no death transition")?;
        // `running` is published once the replacement has been spawned
        // (fork and exec done).
        let (_, started) =
            console_stamp(&console, at, "service=kubelet from=starting to=running").context("no restart transition")?;
        let wait = console[at..]
            .split("restarting in ")
            .nth(1)
            .and_then(|r| r.split('s').next())
            .and_then(|s| s.parse::<f64>().ok())
            .unwrap_or(0.0);
        restart_ms.push((started - died) * 1000.0 - wait * 1000.0);
        backoff_ms.push(wait * 1000.0);

        let ticks = |s: &str| -> f64 {
            let fields: Vec<&str> = s.rsplit(')').next().unwrap_or("").split_whitespace().collect();
            // After the command name: state is field 0; utime and stime are 11 and 12.
            fields.get(11).and_then(|u| u.parse::<f64>().ok()).unwrap_or(0.0)
                + fields.get(12).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0)
        };
        let first = sh(&mut vm, "cat /proc/1/stat")?;
        sh(&mut vm, "sleep 60")?;
        let second = sh(&mut vm, "cat /proc/1/stat")?;
        // USER_HZ is 100 on x86_64 Linux.
        cpu_ms.push((ticks(&second) - ticks(&first)) * 10.0);
        let rss = sh(&mut vm, "awk '/^VmRSS:/ {print $2}' /proc/1/status")?;
        rss_kib.push(rss.parse::<f64>().with_context(|| format!("reading VmRSS {rss:?}"))?);
        eprintln!(
            "bench-supervise: run {attempt}/{RUNS}: restart {:.0} ms after the {:.0} ms back-off; PID 1 RSS {:.0} KiB, CPU {:.0} ms/min",
            restart_ms.last().copied().unwrap_or(f64::NAN),
            backoff_ms.last().copied().unwrap_or(f64::NAN),
            rss_kib.last().copied().unwrap_or(f64::NAN),
            cpu_ms.last().copied().unwrap_or(f64::NAN)
        );
        vm.kill()?;
    }
    println!("supervision benchmark, {RUNS} boots, medians, measured in the guest (TCG, 1 vCPU):");
    println!("  death -> replacement running, minus the back-off   {:>7.0} ms", median(&restart_ms));
    println!("  back-off before the first restart (policy)          {:>7.0} ms", median(&backoff_ms));
    println!("  PID 1 RSS with containerd + 2 doubles running        {:>7.0} KiB", median(&rss_kib));
    println!("  PID 1 CPU time over one minute                       {:>7.0} ms", median(&cpu_ms));
    Ok(())
}
