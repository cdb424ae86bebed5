//! `cargo xtask bench vs-systemd`: Kelson's node beside a systemd node made
//! from the same packages, kernel and machine config, booted the same way,
//! measured the same way.
//!
//! `bench-vs-systemd prepare DIR` (run by xtask before its mkosi build)
//! generates a one-control-plane, one-worker cluster in `DIR/cluster` (once;
//! later runs reuse it, so the fixture image stays valid) and writes the
//! systemd node's files for the worker's machine config into `DIR/extra`
//! (`qemu_tests::systemd_node`).
//!
//! Without arguments it boots the worker `KELSON_BENCH_BOOTS` times (default
//! 3) from each disk image, alternating Kelson and systemd, one VM at a
//! time. Both VMs are the same: QEMU (TCG, `-cpu max`, q35) under OVMF, the
//! same memory and vCPUs, a fresh 8 GiB qcow2 overlay of the disk image
//! (so every boot is a first boot), the worker's NoCloud seed as a second
//! disk (Kelson reads it; the systemd node has the same config built in
//! and ignores it), the harness's layer disk, and one virtio NIC with the
//! same MAC on a socket network no peer joins (the control plane is not
//! booted, so the node never becomes Ready: that milestone is left out).
//!
//! Milestones, in seconds of the guest's clock since the kernel started
//! (CLOCK_BOOTTIME for Kelson, CLOCK_MONOTONIC for systemd: the same clock
//! on a guest that never suspends), each read from the init system's own
//! record of it:
//!
//! | milestone | Kelson (console lines, stamped by PID 1) | systemd (`systemctl show`) |
//! | --- | --- | --- |
//! | PID 1 | `pid1_start_s` of `kelson: ready` | `InitRDTimestampMonotonic` (the initrd's systemd; PID 1 of the real root later: `UserspaceTimestampMonotonic`) |
//! | network configured | `stage done stage=network` | `network-online.target` active (uplink and cbr0 configured by networkd, MASQUERADE installed) |
//! | containerd answering | containerd `to=healthy` (its socket accepted a connection) | `containerd.service` active (containerd's READY=1, sent once its socket serves) |
//! | kubelet started | kubelet `to=running` (spawned) | kubelet's `ExecMainStartTimestampMonotonic` (spawned) |
//! | kubelet ready | kubelet `to=healthy` (/healthz answered) | `kubelet.service` active (the kubelet's READY=1, sent once /healthz serves) |
//!
//! Power-on to kernel start (firmware and boot loader) is measured on the
//! host's clock for both: the host's time since QEMU started minus the
//! guest's uptime, read together through the agent.
//!
//! Footprint, `KELSON_BENCH_SETTLE_S` (default 30) seconds after the
//! kubelet was ready, by the same shell script through the same agent on
//! both: every userspace process's VmRSS from /proc (kernel threads have
//! none and are not counted), less the agent's own process tree. Kubernetes
//! is containerd, the kubelet, kube-proxy and everything under them (shims,
//! pods); everything else is the node's own. Image size: the qcow2 of each
//! disk image.

use anyhow::{bail, Context, Result};
use qemu_tests::bench::{env_number, field, median};
use qemu_tests::systemd_node;
use qemu_tests::{free_loopback_port, guest_layer_with_agent, ImagePaths, Vm, VmBuilder};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const CLUSTER: &str = "bench";
const NODE: &str = "bench-worker-1";
const MEMORY_MIB: u32 = 2048;
const CPUS: u32 = 1;
const MAC: &str = "52:54:00:be:00:01";
const DISK_SIZE: &str = "8G";
/// Power-on to the kubelet ready, at most.
const BOOT: Duration = Duration::from_secs(900);
const AGENT: Duration = Duration::from_secs(120);
const BUSYBOX: &str = "/bin/busybox";
/// The process names (comm) that are Kubernetes, with everything under them.
const KUBERNETES: &[&str] = &["containerd", "kubelet", "kube-proxy"];
/// containerd's shims (comm is cut to 15 characters: `containerd-shim`).
const SHIM_PREFIX: &str = "containerd-shim";

/// Every userspace process with its parent, name and VmRSS, and the
/// script's own pid (in the agent's tree).
const PROCESSES_SCRIPT: &str = r#"for d in /proc/[0-9]*; do
  [ -r $d/status ] || continue
  awk -v pid=${d#/proc/} '/^Name:/ {n=$2} /^PPid:/ {p=$2} /^VmRSS:/ {r=$2} END {if (r != "") print "proc", pid, p, n, r}' $d/status 2>/dev/null
done
echo "self $$""#;

/// The `[   12.345678]` stamp before `kelson:` on a console line of PID 1.
fn kelson_stamp(line: &str) -> Option<f64> {
    let before = &line[..line.find("kelson:")?];
    let open = before.rfind('[')?;
    let close = before[open..].find(']')? + open;
    before[open + 1..close].trim().parse().ok()
}

/// The first console line containing every one of `needles`.
fn console_line<'a>(console: &'a str, needles: &[&str]) -> Option<&'a str> {
    console.lines().find(|line| needles.iter().all(|n| line.contains(n)))
}

/// The kernel's banner, `Linux version ...`, up to the build date.
fn kernel_banner(console: &str) -> String {
    console
        .lines()
        .find_map(|l| l.find("Linux version ").map(|i| l[i..].trim().to_owned()))
        .unwrap_or_else(|| "(no Linux version line on the console)".to_owned())
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Milestone {
    Pid1,
    Network,
    Containerd,
    KubeletStarted,
    KubeletReady,
}

impl Milestone {
    const ALL: [Milestone; 5] = [
        Milestone::Pid1,
        Milestone::Network,
        Milestone::Containerd,
        Milestone::KubeletStarted,
        Milestone::KubeletReady,
    ];

    fn label(self) -> &'static str {
        match self {
            Milestone::Pid1 => "kernel start -> PID 1 (s)",
            Milestone::Network => "kernel start -> network configured (s)",
            Milestone::Containerd => "kernel start -> containerd answering (s)",
            Milestone::KubeletStarted => "kernel start -> kubelet started (s)",
            Milestone::KubeletReady => "kernel start -> kubelet ready (s)",
        }
    }
}

/// One process as the footprint script saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Process {
    pid: u32,
    ppid: u32,
    name: String,
    rss_kib: u64,
}

/// The processes of one node, sorted into the node's own and Kubernetes'.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Footprint {
    pid1_kib: u64,
    own: Vec<Process>,
    kubernetes: Vec<Process>,
}

/// Parses the footprint script's output and sorts the processes: the
/// agent's tree (from the script's own pid up to the child of PID 1, and
/// all under it) is left out; the Kubernetes processes and all under them
/// are Kubernetes'; the rest, PID 1 included, are the node's own.
fn footprint(output: &str) -> Result<Footprint> {
    let mut processes = BTreeMap::new();
    let mut me = None;
    for line in output.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words[..] {
            ["proc", pid, ppid, name, rss] => {
                let (Ok(pid), Ok(ppid), Ok(rss_kib)) = (pid.parse(), ppid.parse(), rss.parse()) else {
                    bail!("the footprint script printed {line:?}");
                };
                processes.insert(pid, Process { pid, ppid, name: name.to_owned(), rss_kib });
            }
            ["self", pid] => me = pid.parse::<u32>().ok(),
            _ => {}
        }
    }
    let Some(me) = me else { bail!("the footprint script did not say its pid:\n{output}") };
    // The agent: the script's ancestor that PID 1 started.
    let mut agent = me;
    while let Some(p) = processes.get(&agent) {
        if p.ppid <= 1 {
            break;
        }
        agent = p.ppid;
    }
    let under = |pid: u32, roots: &BTreeSet<u32>| {
        let mut at = pid;
        loop {
            if roots.contains(&at) {
                return true;
            }
            match processes.get(&at) {
                Some(p) if p.ppid > 1 && p.ppid != at => at = p.ppid,
                _ => return false,
            }
        }
    };
    let agent_root = BTreeSet::from([agent]);
    let kube_roots: BTreeSet<u32> = processes
        .values()
        .filter(|p| KUBERNETES.contains(&p.name.as_str()) || p.name.starts_with(SHIM_PREFIX))
        .map(|p| p.pid)
        .collect();
    let mut result = Footprint::default();
    for p in processes.values() {
        if under(p.pid, &agent_root) {
            continue;
        }
        if p.pid == 1 {
            result.pid1_kib = p.rss_kib;
        }
        if under(p.pid, &kube_roots) {
            result.kubernetes.push(p.clone());
        } else {
            result.own.push(p.clone());
        }
    }
    if result.pid1_kib == 0 {
        bail!("the footprint script saw no PID 1:\n{output}");
    }
    Ok(result)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Node {
    Kelson,
    Systemd,
}

impl Node {
    fn name(self) -> &'static str {
        match self {
            Node::Kelson => "Kelson",
            Node::Systemd => "systemd",
        }
    }
}

/// One boot's figures.
struct Boot {
    milestones: BTreeMap<Milestone, f64>,
    firmware_s: f64,
    footprint: Footprint,
    kernel: String,
    /// systemd only: PID 1 of the real root (after the initrd).
    switch_root_s: Option<f64>,
}

/// The guest's uptime and, from the host's clock, how long before the
/// kernel started QEMU was started.
fn firmware_time(vm: &mut Vm, powered_on: Instant) -> Result<(f64, f64)> {
    let before = Instant::now();
    let out = vm.agent_exec("cat /proc/uptime", AGENT)?.ok()?;
    let round_trip = before.elapsed();
    let uptime: f64 = out
        .output
        .split_whitespace()
        .next()
        .and_then(|t| t.parse().ok())
        .with_context(|| format!("reading the guest's uptime from {:?}", out.output))?;
    let host = (before + round_trip / 2 - powered_on).as_secs_f64();
    Ok((uptime, host - uptime))
}

/// Waits until `settle` seconds after `ready_s` on the guest's clock, then
/// reads the footprint.
fn read_footprint(vm: &mut Vm, uptime: f64, ready_s: f64, settle: Duration) -> Result<Footprint> {
    let wait = ready_s + settle.as_secs_f64() - uptime;
    if wait > 0.0 {
        std::thread::sleep(Duration::from_secs_f64(wait));
    }
    let out = vm.agent_exec(PROCESSES_SCRIPT, AGENT)?.ok()?;
    footprint(&out.output)
}

/// `systemctl show` blocks (one per unit, blank-line separated) as
/// `Id → property → value`.
fn systemctl_show(text: &str) -> BTreeMap<String, BTreeMap<String, String>> {
    let mut units = BTreeMap::new();
    for block in text.split("\n\n") {
        let props: BTreeMap<String, String> = block
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
            .collect();
        if let Some(id) = props.get("Id") {
            units.insert(id.clone(), props);
        }
    }
    units
}

fn monotonic_s(units: &BTreeMap<String, BTreeMap<String, String>>, unit: &str, property: &str) -> Result<f64> {
    let value = units.get(unit).and_then(|p| p.get(property)).with_context(|| format!("no {property} of {unit}"))?;
    let micros: u64 = value.parse().with_context(|| format!("{unit} {property}={value:?}"))?;
    if micros == 0 {
        bail!("{unit} has no {property} (never reached)");
    }
    Ok(micros as f64 / 1e6)
}

fn boot_vm(name: &str, disk: &Path, seed: &Path, dir: &Path) -> Result<Vm> {
    let port = free_loopback_port()?;
    VmBuilder::firmware()
        .name(name)
        .ovmf(dir)?
        .disk_qcow2(disk)
        .disk(seed)
        .memory_mib(MEMORY_MIB)
        .smp(CPUS)
        .layer(guest_layer_with_agent(BUSYBOX))
        // No peer joins this socket network: the uplink has a link, and
        // the control plane it names is not there.
        .socket_nic_listen(port, MAC)
        .boot()
}

fn measure_kelson(image: &ImagePaths, seed: &Path, settle: Duration) -> Result<Boot> {
    let dir = tempfile::tempdir().context("creating a temporary directory")?;
    let disk = image.disk_overlay(dir.path(), DISK_SIZE)?;
    let powered_on = Instant::now();
    let mut vm = boot_vm("vs-kelson", &disk, seed, dir.path())?;
    vm.expect("service=kubelet from=running to=healthy", BOOT)?;
    let console = vm.console_text()?;
    let stamp = |needles: &[&str]| -> Result<f64> {
        let line = console_line(&console, needles).with_context(|| format!("no console line with {needles:?}"))?;
        kelson_stamp(line).with_context(|| format!("no time stamp on {line:?}"))
    };
    let ready = console_line(&console, &["kelson: ready"]).context("no `kelson: ready` line")?;
    let pid1 = field(ready, "pid1_start_s")
        .and_then(|v| v.parse::<f64>().ok())
        .with_context(|| format!("no pid1_start_s in {ready:?}"))?;
    let milestones = BTreeMap::from([
        (Milestone::Pid1, pid1),
        (Milestone::Network, stamp(&["kelson: stage done", "stage=network"])?),
        (Milestone::Containerd, stamp(&["service=containerd", "to=healthy"])?),
        (Milestone::KubeletStarted, stamp(&["service=kubelet", "to=running"])?),
        (Milestone::KubeletReady, stamp(&["service=kubelet", "from=running", "to=healthy"])?),
    ]);
    let (uptime, firmware_s) = firmware_time(&mut vm, powered_on)?;
    let footprint = read_footprint(&mut vm, uptime, milestones[&Milestone::KubeletReady], settle)?;
    vm.kill()?;
    Ok(Boot { milestones, firmware_s, footprint, kernel: kernel_banner(&console), switch_root_s: None })
}

fn measure_systemd(raw: &Path, seed: &Path, settle: Duration) -> Result<Boot> {
    let dir = tempfile::tempdir().context("creating a temporary directory")?;
    let fixture = ImagePaths { disk: raw.to_owned(), ..ImagePaths::in_dir(dir.path()) };
    let disk = fixture.disk_overlay(dir.path(), DISK_SIZE)?;
    let powered_on = Instant::now();
    let mut vm = boot_vm("vs-systemd", &disk, seed, dir.path())?;
    // The agent starts with the node's services; wait for the kubelet's READY=1.
    let deadline = powered_on + BOOT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            let status = vm.agent_exec(
                "systemctl list-jobs --no-pager; systemctl status --no-pager containerd.service kubelet.service",
                AGENT,
            )?;
            bail!("the systemd node's kubelet was not active within {BOOT:?}:\n{}", status.output);
        }
        let out = vm.agent_exec("systemctl is-active kubelet.service", left)?;
        match out.output.trim() {
            "active" => break,
            "failed" => {
                let status = vm.agent_exec("systemctl status --no-pager kubelet.service; journalctl -b -u kubelet.service --no-pager | tail -20", AGENT)?;
                bail!("the systemd node's kubelet failed:\n{}", status.output);
            }
            _ => std::thread::sleep(Duration::from_millis(500)),
        }
    }
    let manager =
        vm.agent_exec("systemctl show -p InitRDTimestampMonotonic -p UserspaceTimestampMonotonic", AGENT)?.ok()?;
    let manager = systemctl_show(&format!("Id=manager\n{}", manager.output));
    let units = vm
        .agent_exec(
            "systemctl show -p Id -p ActiveEnterTimestampMonotonic -p ExecMainStartTimestampMonotonic \
             network-online.target containerd.service kubelet.service",
            AGENT,
        )?
        .ok()?;
    let units = systemctl_show(&units.output);
    let userspace = monotonic_s(&manager, "manager", "UserspaceTimestampMonotonic")?;
    // Without an initrd, the first PID 1 is the real root's.
    let pid1 = monotonic_s(&manager, "manager", "InitRDTimestampMonotonic").unwrap_or(userspace);
    let milestones = BTreeMap::from([
        (Milestone::Pid1, pid1),
        (Milestone::Network, monotonic_s(&units, "network-online.target", "ActiveEnterTimestampMonotonic")?),
        (Milestone::Containerd, monotonic_s(&units, "containerd.service", "ActiveEnterTimestampMonotonic")?),
        (Milestone::KubeletStarted, monotonic_s(&units, "kubelet.service", "ExecMainStartTimestampMonotonic")?),
        (Milestone::KubeletReady, monotonic_s(&units, "kubelet.service", "ActiveEnterTimestampMonotonic")?),
    ]);
    let (uptime, firmware_s) = firmware_time(&mut vm, powered_on)?;
    let footprint = read_footprint(&mut vm, uptime, milestones[&Milestone::KubeletReady], settle)?;
    let console = vm.console_text()?;
    vm.kill()?;
    Ok(Boot { milestones, firmware_s, footprint, kernel: kernel_banner(&console), switch_root_s: Some(userspace) })
}

fn prepare(dir: &Path) -> Result<()> {
    let cluster = dir.join("cluster");
    let config_path = cluster.join(format!("nodes/{NODE}/machine-config.yaml"));
    if !config_path.is_file() {
        let _ = std::fs::remove_dir_all(&cluster);
        let spec = kelsonctl::gen::ClusterSpec::with_defaults(CLUSTER, 1, 1);
        kelsonctl::gen::generate_cluster(&spec, &cluster, false).context("generating the benchmark's cluster")?;
    }
    let text = std::fs::read_to_string(&config_path).with_context(|| format!("reading {}", config_path.display()))?;
    let config = kelson_config::parse(&config_path.display().to_string(), &text)
        .map_err(|e| anyhow::anyhow!("{e}"))
        .with_context(|| format!("parsing {}", config_path.display()))?;
    let extra = dir.join("extra");
    if extra.exists() {
        std::fs::remove_dir_all(&extra).with_context(|| format!("clearing {}", extra.display()))?;
    }
    let enabled = systemd_node::write_tree(&config, &extra, Path::new(BUSYBOX))?;
    eprintln!(
        "bench-vs-systemd: the systemd node's files are in {}; units enabled: {}",
        extra.display(),
        enabled.join(", ")
    );
    Ok(())
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn file_mib(path: &Path) -> Result<f64> {
    let meta = std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(meta.len() as f64 / (1024.0 * 1024.0))
}

fn report(kelson: &[Boot], systemd: &[Boot], sizes: (f64, f64), settle: Duration) {
    let runs = kelson.len().min(systemd.len());
    println!(
        "Kelson vs systemd: medians of {runs} boots each, alternating (TCG, -cpu max, {CPUS} vCPU, {MEMORY_MIB} MiB, \
         OVMF, disk image on a fresh {DISK_SIZE} qcow2 overlay: first boots)"
    );
    println!("kernel: {}", kelson.first().map_or("?", |b| b.kernel.as_str()));
    if let (Some(k), Some(s)) = (kelson.first(), systemd.first()) {
        if k.kernel != s.kernel {
            println!("WARNING: the systemd node booted another kernel: {}", s.kernel);
        }
    }
    println!("{:<46} {:>9} {:>9} {:>15}", "", "Kelson", "systemd", "Kelson/systemd");
    let row = |label: &str, k: f64, s: f64, digits: usize| {
        println!("{label:<46} {k:>9.digits$} {s:>9.digits$} {:>15.2}", k / s);
    };
    let m = |boots: &[Boot], f: &dyn Fn(&Boot) -> f64| {
        median(&boots.iter().map(f).filter(|v| !v.is_nan()).collect::<Vec<_>>())
    };
    row("power-on -> kernel start (s, host clock)", m(kelson, &|b| b.firmware_s), m(systemd, &|b| b.firmware_s), 1);
    for milestone in Milestone::ALL {
        let get = |b: &Boot| b.milestones.get(&milestone).copied().unwrap_or(f64::NAN);
        row(milestone.label(), m(kelson, &get), m(systemd, &get), 2);
    }
    row(
        "power-on -> kubelet started (s)",
        m(kelson, &|b| b.firmware_s + b.milestones[&Milestone::KubeletStarted]),
        m(systemd, &|b| b.firmware_s + b.milestones[&Milestone::KubeletStarted]),
        1,
    );
    println!("footprint {} s after the kubelet was ready (VmRSS; the harness's agent left out):", settle.as_secs());
    row("  PID 1 RSS (MiB)", m(kelson, &|b| mib(b.footprint.pid1_kib)), m(systemd, &|b| mib(b.footprint.pid1_kib)), 1);
    let own = |b: &Boot| mib(b.footprint.own.iter().map(|p| p.rss_kib).sum());
    row("  RSS of all but Kubernetes (MiB)", m(kelson, &own), m(systemd, &own), 1);
    let kube = |b: &Boot| mib(b.footprint.kubernetes.iter().map(|p| p.rss_kib).sum());
    row("  RSS of containerd, kubelet, kube-proxy (MiB)", m(kelson, &kube), m(systemd, &kube), 1);
    let count = |b: &Boot| (b.footprint.own.len() + b.footprint.kubernetes.len()) as f64;
    row("  userspace processes", m(kelson, &count), m(systemd, &count), 0);
    let own_count = |b: &Boot| b.footprint.own.len() as f64;
    row("  of them not Kubernetes", m(kelson, &own_count), m(systemd, &own_count), 0);
    row("disk image, qcow2 (MiB)", sizes.0, sizes.1, 1);
    if let Some(s) = systemd.first().and_then(|b| b.switch_root_s) {
        println!("(systemd: the initrd's PID 1 switched to the real root's, started at {s:.2} s in the first boot)");
    }
    for (name, boots) in [("Kelson", kelson), ("systemd", systemd)] {
        if let Some(last) = boots.last() {
            let list: Vec<String> =
                last.footprint.own.iter().map(|p| format!("{} {:.1}", p.name, mib(p.rss_kib))).collect();
            println!("{name}'s own processes in the last boot (MiB): {}", list.join(", "));
        }
    }
    println!("compared: each milestone as the init system itself records it, on the guest's clock since the kernel");
    println!("started: PID 1 = the first userspace process (Kelson's in its disk initrd, the systemd initrd's);");
    println!("network = Kelson's network stage done / network-online.target (uplink + cbr0 + MASQUERADE);");
    println!("containerd = Kelson's socket probe passing / containerd's READY=1; kubelet started = spawned;");
    println!("kubelet ready = /healthz answering / the kubelet's READY=1 (sent once /healthz serves).");
}

fn run() -> Result<()> {
    let image = ImagePaths::disk_from_env()?;
    let fixture = std::env::var_os("KELSON_BENCH_SYSTEMD_DIR")
        .map(PathBuf::from)
        .context("KELSON_BENCH_SYSTEMD_DIR is not set (run the benchmark with `cargo xtask bench vs-systemd`)")?;
    let raw = fixture.join("out/bench-systemd.raw");
    let seed = fixture.join(format!("cluster/nodes/{NODE}/seed.img"));
    for path in [&raw, &seed] {
        if !path.is_file() {
            bail!("{} is missing (`cargo xtask bench vs-systemd` builds it)", path.display());
        }
    }
    let runs = env_number("KELSON_BENCH_BOOTS", 3)?.max(1) as usize;
    let settle = Duration::from_secs(env_number("KELSON_BENCH_SETTLE_S", 30)?);
    let (mut kelson, mut systemd) = (Vec::new(), Vec::new());
    for run in 1..=runs {
        for node in [Node::Kelson, Node::Systemd] {
            let boot = match node {
                Node::Kelson => measure_kelson(&image, &seed, settle),
                Node::Systemd => measure_systemd(&raw, &seed, settle),
            }
            .with_context(|| format!("boot {run} of the {} node", node.name()))?;
            let times: Vec<String> = Milestone::ALL
                .iter()
                .map(|m| format!("{:.2}", boot.milestones.get(m).copied().unwrap_or(f64::NAN)))
                .collect();
            eprintln!(
                "bench-vs-systemd: {} boot {run}/{runs}: firmware {:.1} s; PID 1, network, containerd, kubelet started, \
                 kubelet ready at {} s; PID 1 {:.1} MiB, own {:.1} MiB in {} processes",
                node.name(),
                boot.firmware_s,
                times.join(", "),
                mib(boot.footprint.pid1_kib),
                mib(boot.footprint.own.iter().map(|p| p.rss_kib).sum()),
                boot.footprint.own.len()
            );
            match node {
                Node::Kelson => kelson.push(boot),
                Node::Systemd => systemd.push(boot),
            }
        }
    }
    let sizes = (file_mib(&image.dir.join("kelson.qcow2"))?, file_mib(&fixture.join("bench-systemd.qcow2"))?);
    report(&kelson, &systemd, sizes, settle);
    Ok(())
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [] => run(),
        [verb, dir] if verb == "prepare" => prepare(Path::new(dir)),
        _ => bail!("usage: bench-vs-systemd [prepare DIR]"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_agent_tree_is_left_out_and_kubernetes_is_told_from_the_nodes_own() {
        let output = "proc 1 0 systemd 12000\nproc 300 1 systemd-journal 8000\nproc 400 1 containerd 50000\n\
                      proc 410 1 containerd-shim 9000\nproc 411 410 pause 500\nproc 500 1 kubelet 90000\n\
                      proc 600 1 50-agent 700\nproc 601 600 sh 600\nproc 602 601 sh 500\nproc 603 602 awk 400\n\
                      self 602\n";
        let f = footprint(output).unwrap();
        assert_eq!(f.pid1_kib, 12000);
        let own: Vec<&str> = f.own.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(own, ["systemd", "systemd-journal"]);
        let kube: Vec<&str> = f.kubernetes.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(kube, ["containerd", "containerd-shim", "pause", "kubelet"]);
        assert!(footprint("proc 5 1 x 10\n").is_err(), "no self line");
        assert!(footprint("proc 5 1 x 10\nself 5\n").is_err(), "no PID 1");
    }

    #[test]
    fn kelson_stamps_and_systemctl_show_blocks_are_read() {
        let line = "[   12.345678] kelson: service state service=kubelet from=starting to=running";
        assert_eq!(kelson_stamp(line), Some(12.345678));
        assert_eq!(kelson_stamp("kelson: no stamp"), None);
        let units = systemctl_show(
            "Id=containerd.service\nActiveEnterTimestampMonotonic=5123456\n\nId=kubelet.service\n\
             ExecMainStartTimestampMonotonic=7000000\nActiveEnterTimestampMonotonic=0\n",
        );
        assert_eq!(monotonic_s(&units, "containerd.service", "ActiveEnterTimestampMonotonic").unwrap(), 5.123456);
        assert_eq!(monotonic_s(&units, "kubelet.service", "ExecMainStartTimestampMonotonic").unwrap(), 7.0);
        assert!(monotonic_s(&units, "kubelet.service", "ActiveEnterTimestampMonotonic").is_err());
    }
}
