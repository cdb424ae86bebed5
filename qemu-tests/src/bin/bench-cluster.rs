//! `cargo xtask bench cluster`: a one-node Kubernetes cluster, measured.
//!
//! 1. Times. The control-plane node boots `KELSON_BENCH_BOOTS` times (default
//!    2), each from a fresh qcow2 overlay of the disk image (under OVMF) and
//!    a fresh `kelsonctl gen cluster` seed. Each event is placed on the
//!    guest's CLOCK_BOOTTIME (seconds since the kernel started; firmware and
//!    boot loader come before and are not in it):
//!    - PID 1 ready: `pid1_start_s` + `pid1_to_ready_ms` from PID 1's
//!      `kelson: ready` console line;
//!    - kube-apiserver's /readyz ok and the node Ready: the host polls both
//!      with kubectl through the hostfwd, in the same rounds, and when the
//!      first poll of one succeeds reads the guest's /proc/uptime through
//!      the agent. The event happened between the previous round and that
//!      read, so the figure is late by at most the spacing of the rounds
//!      plus the agent's round trip; both are printed.
//! 2. Resident memory (VmRSS from /proc/PID/status, through the agent) of
//!    each control-plane component, the kubelet, kube-proxy, containerd and
//!    PID 1, `KELSON_BENCH_SETTLE_S` seconds (default 60) after the node is
//!    Ready.
//! 3. The image size the Kubernetes programs add, raw and as squashfs with
//!    the options of image/mkosi.finalize, for the multi-call layout
//!    (/usr/bin/kubernetes and the control-plane image's layout in the
//!    node's store) and, when `cargo xtask kubernetes build --separate` has
//!    been run, for the separate layout (the six binaries; the node's /usr
//!    would hold kubelet, kube-proxy and kubectl and the control-plane
//!    image the other three).
//! 4. The Go build of the multi-call binary with the warm build cache, into
//!    a temporary directory. The cold build (an empty GOCACHE, tens of
//!    minutes on two cores) only with `KELSON_BENCH_GO_COLD=1`.
//!
//! `cargo xtask bench cluster` sets the `KELSON_KUBERNETES_*` variables
//! (the builds and the version flags) that 3 and 4 need.

use anyhow::{bail, Context, Result};
use qemu_tests::bench::{env_number, field, median};
use qemu_tests::{free_loopback_port, guest_layer_with_agent, ImagePaths, Vm, VmBuilder};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const CLUSTER: &str = "k";
const NODE: &str = "k-cp-1";
const NODE_ADDRESS: &str = "192.168.100.10";
const MEMORY_MIB: u32 = 3072;
const CPUS: u32 = 2;
/// Power-on to PID 1's ready line.
const BOOT: Duration = Duration::from_secs(600);
/// PID 1 ready to the node Ready: minutes of Go start-up under TCG.
const CLUSTER_UP: Duration = Duration::from_secs(1200);
const AGENT: Duration = Duration::from_secs(120);
/// The host's polls of the API server start at most this often.
const POLL: Duration = Duration::from_secs(1);
/// One kubectl call of the polling, at most.
const CALL_LIMIT: Duration = Duration::from_secs(10);
/// The processes whose memory is read, by the name `pidof` finds them by.
const PROCESSES: &[&str] =
    &["etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet", "kube-proxy", "containerd"];
/// The squashfs options of image/mkosi.finalize for /usr.
const SQUASHFS_OPTIONS: &[&str] = &["-comp", "zstd", "-noappend", "-quiet", "-no-progress"];
const NODE_PROGRAMS: &[&str] = &["kubelet", "kube-proxy", "kubectl"];
const CONTROL_PLANE_PROGRAMS: &[&str] = &["kube-apiserver", "kube-controller-manager", "kube-scheduler"];

fn env_path(name: &str) -> Result<PathBuf> {
    std::env::var_os(name)
        .map(PathBuf::from)
        .with_context(|| format!("{name} is not set (run the benchmark with `cargo xtask bench cluster`)"))
}

fn guest(vm: &mut Vm, cmd: &str) -> Result<String> {
    let out = vm.agent_exec(cmd, AGENT)?;
    if out.status != 0 {
        bail!("in the guest, {cmd}: exit {}: {}", out.status, out.output);
    }
    Ok(out.output.trim().to_owned())
}

/// The guest's CLOCK_BOOTTIME in seconds, from /proc/uptime.
fn guest_uptime(vm: &mut Vm) -> Result<f64> {
    let text = guest(vm, "cat /proc/uptime")?;
    text.split_whitespace().next().and_then(|t| t.parse().ok()).with_context(|| format!("reading uptime {text:?}"))
}

/// kubectl on the host, pointed at the node through the forwarded port.
struct Kubectl {
    binary: PathBuf,
    kubeconfig: PathBuf,
    server: String,
}

impl Kubectl {
    /// kubectl's output when it exits 0 within [`CALL_LIMIT`] (it is
    /// killed after that: a connection the guest does not answer yet must
    /// not hold up the polling), else its error output.
    fn run(&self, args: &[&str]) -> Result<String, String> {
        let mut child = Command::new(&self.binary)
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(["--server", &self.server, "--request-timeout", "5s"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("starting kubectl: {e}"))?;
        let deadline = Instant::now() + CALL_LIMIT;
        loop {
            match child.try_wait() {
                // Its few bytes of output wait in the pipe.
                Ok(Some(_)) => {
                    let out = child.wait_with_output().map_err(|e| format!("waiting for kubectl: {e}"))?;
                    if out.status.success() {
                        return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
                    }
                    return Err(String::from_utf8_lossy(&out.stderr).into_owned());
                }
                Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(format!("no answer within {CALL_LIMIT:?}"));
                }
            }
        }
    }
}

/// Something the host polls for with kubectl.
struct Watch<'a> {
    what: &'a str,
    args: &'a [&'a str],
    done: fn(&str) -> bool,
}

/// When one watch's condition first held.
struct Seen {
    /// When its first successful poll returned (host clock).
    at: Instant,
    /// From the start of its last failed poll to `at` (seconds): the
    /// condition came true within this window.
    window_s: f64,
    /// The last failed poll's output.
    last_failure: String,
}

/// Polls every watch in the same rounds, each until `done` accepts its
/// kubectl output, and notes on the host's clock when each first did.
fn poll(vm: &Vm, kubectl: &Kubectl, watches: &[Watch]) -> Result<Vec<Seen>> {
    let deadline = Instant::now() + CLUSTER_UP;
    let mut seen: Vec<Option<Seen>> = watches.iter().map(|_| None).collect();
    // Per watch: when its last failed poll started, and what it said.
    let mut failed: Vec<(Instant, String)> = watches.iter().map(|_| (Instant::now(), String::new())).collect();
    loop {
        let started = Instant::now();
        for ((watch, slot), failure) in watches.iter().zip(seen.iter_mut()).zip(failed.iter_mut()) {
            if slot.is_some() {
                continue;
            }
            let attempt = Instant::now();
            match kubectl.run(watch.args) {
                Ok(out) if (watch.done)(&out) => {
                    let at = Instant::now();
                    let window_s = (at - failure.0).as_secs_f64();
                    *slot = Some(Seen { at, window_s, last_failure: std::mem::take(&mut failure.1) });
                }
                Ok(out) => *failure = (attempt, out),
                Err(err) => *failure = (attempt, err),
            }
        }
        if seen.iter().all(Option::is_some) {
            return Ok(seen.into_iter().flatten().collect());
        }
        if Instant::now() > deadline {
            let missing: Vec<&str> =
                watches.iter().zip(&seen).filter(|(_, f)| f.is_none()).map(|(w, _)| w.what).collect();
            let console = vm.console_text().unwrap_or_default();
            let tail: Vec<&str> = console.lines().rev().take(40).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            bail!("{}: not within {CLUSTER_UP:?}; console tail:\n{}", missing.join(", "), tail.join("\n"));
        }
        if let Some(rest) = POLL.checked_sub(started.elapsed()) {
            std::thread::sleep(rest);
        }
    }
}

/// The checks a failed `/readyz?verbose` named (`[-]name failed: ...`).
fn failed_checks(output: &str) -> Vec<String> {
    output
        .split("[-]")
        .skip(1)
        .filter_map(|rest| rest.split([' ', ':', '\\', '\n']).next())
        .filter(|name| !name.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Maps host instants onto the guest's CLOCK_BOOTTIME from one agent read
/// of /proc/uptime, taken to have happened halfway through its round trip.
/// Under TCG (no icount) the guest's clocks run at the host's rate, so
/// host intervals carry over.
struct GuestClock {
    guest_s: f64,
    at: Instant,
    round_trip_s: f64,
}

impl GuestClock {
    fn read(vm: &mut Vm) -> Result<GuestClock> {
        let before = Instant::now();
        let guest_s = guest_uptime(vm)?;
        let round_trip = before.elapsed();
        Ok(GuestClock { guest_s, at: before + round_trip / 2, round_trip_s: round_trip.as_secs_f64() })
    }

    fn guest_time_of(&self, host: Instant) -> f64 {
        if host <= self.at {
            self.guest_s - (self.at - host).as_secs_f64()
        } else {
            self.guest_s + (host - self.at).as_secs_f64()
        }
    }
}

/// One boot's figures.
struct Boot {
    host_to_ready_s: f64,
    ready_s: f64,
    /// PID 1's ready, placed by the host's clock like the two below: a
    /// check of the mapping against `ready_s`.
    ready_mapped_s: f64,
    apiserver_s: f64,
    node_s: f64,
    apiserver_window_s: f64,
    node_window_s: f64,
    /// The checks the last failed /readyz named.
    readyz_failing: Vec<String>,
    agent_round_trip_s: f64,
    /// (process, how many, KiB) in [`PROCESSES`] order, then PID 1.
    rss: Vec<(String, usize, u64)>,
    rss_read_at_s: f64,
    memory_used_kib: u64,
}

/// Resident memory of each process in [`PROCESSES`] and of PID 1 (summed
/// when a name has several), and the guest's MemTotal - MemAvailable.
const RSS_SCRIPT: &str = r#"rss() { awk '/^VmRSS:/ {print $2}' /proc/$1/status; }
for name in $PROCESSES; do
  count=0; kib=0
  for pid in $(pidof $name); do count=$((count+1)); kib=$((kib + $(rss $pid))); done
  echo "$name $count $kib"
done
echo "pid1 1 $(rss 1)"
awk '/^MemTotal:/ {t=$2} /^MemAvailable:/ {a=$2} END {print "used", 1, t-a}' /proc/meminfo"#;

fn boot_once(image: &ImagePaths, kubectl_binary: &Path, settle: Duration, run: usize) -> Result<Boot> {
    let dir = tempfile::tempdir().context("creating a temporary directory")?;
    let out = dir.path().join("cluster");
    let mut spec = kelsonctl::gen::ClusterSpec::with_defaults(CLUSTER, 1, 0);
    // QEMU's user network is the node network; its host side is the gateway.
    spec.gateway = Some("192.168.100.1".parse()?);
    kelsonctl::gen::generate_cluster(&spec, &out, false).context("generating the cluster's seed")?;
    let port = free_loopback_port()?;
    let kubectl = Kubectl {
        binary: kubectl_binary.to_owned(),
        kubeconfig: out.join("admin.kubeconfig"),
        server: format!("https://127.0.0.1:{port}"),
    };
    let disk = image.disk_overlay(dir.path(), "8G")?;
    let seed = out.join(format!("nodes/{NODE}/seed.img"));
    let netdev = format!(
        "user,id=up,restrict=on,net=192.168.100.0/24,host=192.168.100.1,\
         hostfwd=tcp:127.0.0.1:{port}-{NODE_ADDRESS}:6443"
    );
    let powered_on = Instant::now();
    let mut vm = VmBuilder::firmware()
        .name("bench-cluster")
        .ovmf(dir.path())?
        .disk_qcow2(&disk)
        .disk(&seed)
        .memory_mib(MEMORY_MIB)
        .smp(CPUS)
        .layer(guest_layer_with_agent("/bin/busybox"))
        .qemu_args(["-netdev", &netdev, "-device", "virtio-net-pci,netdev=up"])
        .boot()?;
    let ready = vm.expect("kelson: ready", BOOT)?;
    let ready_seen = Instant::now();
    let host_to_ready_s = powered_on.elapsed().as_secs_f64();
    let start = field(&ready, "pid1_start_s").and_then(|v| v.parse::<f64>().ok());
    let to_ready = field(&ready, "pid1_to_ready_ms").and_then(|v| v.parse::<f64>().ok());
    let (Some(start), Some(to_ready)) = (start, to_ready) else {
        bail!("the ready line has no pid1_start_s or pid1_to_ready_ms: {ready}");
    };
    let ready_s = start + to_ready / 1000.0;

    let condition = r#"jsonpath={.status.conditions[?(@.type=="Ready")].status}"#;
    let watches = [
        Watch {
            what: "/readyz ok",
            args: &["get", "--raw", "/readyz?verbose"],
            done: |o| o.trim_end().ends_with("readyz check passed"),
        },
        Watch { what: "node Ready", args: &["get", "node", NODE, "-o", condition], done: |o| o == "True" },
    ];
    let seen = poll(&vm, &kubectl, &watches)?;
    let clock = GuestClock::read(&mut vm)?;
    let [apiserver, node] = &seen[..] else {
        bail!("polling noted {} events, not 2", seen.len());
    };
    let (apiserver_s, node_s) = (clock.guest_time_of(apiserver.at), clock.guest_time_of(node.at));
    eprintln!(
        "bench-cluster: boot {run}: PID 1 ready at {ready_s:.1} s, /readyz ok at {apiserver_s:.1} s, node Ready at \
         {node_s:.1} s (guest uptime); reading memory in {} s",
        settle.as_secs()
    );

    std::thread::sleep(settle);
    let rss_read_at_s = guest_uptime(&mut vm)?;
    let text = guest(&mut vm, &format!("PROCESSES='{}'\n{RSS_SCRIPT}", PROCESSES.join(" ")))?;
    let mut rss = Vec::new();
    let mut memory_used_kib = 0;
    for line in text.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        let [name, count, kib] = words[..] else { bail!("the memory script printed {line:?}") };
        let (count, kib) = (count.parse::<usize>(), kib.parse::<u64>());
        let (Ok(count), Ok(kib)) = (count, kib) else { bail!("the memory script printed {line:?}") };
        if name == "used" {
            memory_used_kib = kib;
        } else {
            rss.push((name.to_owned(), count, kib));
        }
    }
    if rss.len() != PROCESSES.len() + 1 {
        bail!("the memory script printed {} processes, not {}:\n{text}", rss.len(), PROCESSES.len() + 1);
    }
    vm.kill()?;
    Ok(Boot {
        host_to_ready_s,
        ready_s,
        ready_mapped_s: clock.guest_time_of(ready_seen),
        apiserver_s,
        node_s,
        apiserver_window_s: apiserver.window_s,
        node_window_s: node.window_s,
        readyz_failing: failed_checks(&apiserver.last_failure),
        agent_round_trip_s: clock.round_trip_s,
        rss,
        rss_read_at_s,
        memory_used_kib,
    })
}

fn size_of(path: &Path) -> Result<u64> {
    let meta = std::fs::symlink_metadata(path).with_context(|| format!("reading {}", path.display()))?;
    if !meta.is_dir() {
        return Ok(meta.len());
    }
    let mut total = 0;
    for entry in std::fs::read_dir(path).with_context(|| format!("listing {}", path.display()))? {
        total += size_of(&entry.with_context(|| format!("listing {}", path.display()))?.path())?;
    }
    Ok(total)
}

/// The size of a squashfs holding `sources` (files or directories, each
/// at the root by its name), made as image/mkosi.finalize makes /usr's.
fn squashfs_size(sources: &[PathBuf]) -> Result<u64> {
    let dir = tempfile::tempdir().context("creating a temporary directory")?;
    let out = dir.path().join("out.squashfs");
    let status = Command::new("mksquashfs")
        .args(sources)
        .arg(&out)
        .args(SQUASHFS_OPTIONS)
        .status()
        .context("running mksquashfs (package squashfs-tools)")?;
    if !status.success() {
        bail!("mksquashfs of {sources:?} failed ({status})");
    }
    size_of(&out)
}

/// One row of the size table: (label, raw bytes, squashfs bytes).
type SizeRow = (String, u64, u64);

fn size_row(label: &str, sources: &[PathBuf]) -> Result<SizeRow> {
    let mut raw = 0;
    for source in sources {
        raw += size_of(source)?;
    }
    Ok((label.to_owned(), raw, squashfs_size(sources)?))
}

fn sizes(image: &ImagePaths) -> Result<(Vec<SizeRow>, String)> {
    let multicall = env_path("KELSON_KUBERNETES_MULTICALL")?;
    let separate = env_path("KELSON_KUBERNETES_SEPARATE")?;
    let mut rows = Vec::new();
    let binary = multicall.join("kubernetes");
    let layout = image.dir.join("images/kubernetes");
    eprintln!("bench-cluster: sizing the multi-call layout (mksquashfs)");
    let node = size_row("multicall: /usr/bin/kubernetes", std::slice::from_ref(&binary))?;
    let store = size_row("multicall: control-plane image in the store", std::slice::from_ref(&layout))?;
    rows.push(("multicall: total".to_owned(), node.1 + store.1, node.2 + store.2));
    rows.push(node);
    rows.push(store);
    let programs = |names: &[&str]| -> Vec<PathBuf> { names.iter().map(|p| separate.join(p)).collect() };
    let all: Vec<&str> = NODE_PROGRAMS.iter().chain(CONTROL_PLANE_PROGRAMS).copied().collect();
    let note = if programs(&all).iter().all(|p| p.is_file()) {
        eprintln!("bench-cluster: sizing the separate layout (mksquashfs)");
        let node = size_row("separate: kubelet, kube-proxy, kubectl in /usr", &programs(NODE_PROGRAMS))?;
        let store = size_row("separate: three control-plane binaries", &programs(CONTROL_PLANE_PROGRAMS))?;
        rows.push(("separate: total".to_owned(), node.1 + store.1, node.2 + store.2));
        rows.push(node);
        rows.push(store);
        format!("multi-call build {}; separate build {}", multicall.display(), separate.display())
    } else {
        format!(
            "multi-call build {}; the separate layout is not measured in this run: it is not built \
             ({} is missing; `cargo xtask kubernetes build --separate` builds it)",
            multicall.display(),
            separate.display()
        )
    };
    Ok((rows, note))
}

/// What one `go build` of the multi-call binary took.
struct GoBuild {
    seconds: f64,
    packages_compiled: usize,
    same_as_cached: bool,
}

/// `go build` of the multi-call package as `cargo xtask kubernetes build`
/// runs it, but into a temporary directory; with `gocache`, an empty
/// build cache there instead of the shared one.
fn go_build(gocache: Option<&Path>) -> Result<GoBuild> {
    let wrapper = env_path("KELSON_KUBERNETES_WRAPPER")?;
    let ldflags = std::env::var("KELSON_KUBERNETES_LDFLAGS")
        .context("KELSON_KUBERNETES_LDFLAGS is not set (run the benchmark with `cargo xtask bench cluster`)")?;
    let cached = env_path("KELSON_KUBERNETES_MULTICALL")?.join("kubernetes");
    let dir = tempfile::tempdir().context("creating a temporary directory")?;
    let binary = dir.path().join("kubernetes");
    let mut cmd = Command::new("go");
    // xtask's environment for Go: only the module proxy is reachable.
    cmd.current_dir(&wrapper)
        .env("GOPROXY", "https://proxy.golang.org")
        .env("GOFLAGS", "-mod=mod")
        .env("GOTOOLCHAIN", "local")
        .env("CGO_ENABLED", "0")
        .args(["build", "-v", "-trimpath", "-ldflags", &ldflags, "-o"])
        .arg(&binary)
        .arg("./multicall");
    if let Some(gocache) = gocache {
        cmd.env("GOCACHE", gocache);
    }
    let started = Instant::now();
    let out = cmd.output().with_context(|| format!("running go build in {}", wrapper.display()))?;
    let seconds = started.elapsed().as_secs_f64();
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        bail!("go build of ./multicall in {} failed ({}): {stderr}", wrapper.display(), out.status);
    }
    // -v names each package it compiles (not those it takes from the cache).
    let packages_compiled = stderr.lines().filter(|l| !l.contains(' ') && !l.starts_with('#')).count();
    let built = std::fs::read(&binary).with_context(|| format!("reading {}", binary.display()))?;
    let same_as_cached = std::fs::read(&cached).with_context(|| format!("reading {}", cached.display()))? == built;
    Ok(GoBuild { seconds, packages_compiled, same_as_cached })
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn main() -> Result<()> {
    let image = ImagePaths::disk_from_env()?;
    let boots = env_number("KELSON_BENCH_BOOTS", 2)?.max(1) as usize;
    let settle = Duration::from_secs(env_number("KELSON_BENCH_SETTLE_S", 60)?);
    let measure_cold = std::env::var("KELSON_BENCH_GO_COLD").is_ok_and(|v| v == "1");
    let kubectl = image.dir.join("kubectl");
    if !kubectl.exists() {
        bail!("{} is missing (cargo xtask image links it to the pinned build's kubectl)", kubectl.display());
    }

    // The CPU-heavy host work first, so the boots have the machine.
    let (size_rows, size_note) = sizes(&image)?;
    eprintln!("bench-cluster: go build of the multi-call binary, warm cache");
    let warm = go_build(None)?;
    let cold = if measure_cold {
        eprintln!("bench-cluster: go build of the multi-call binary, empty GOCACHE (tens of minutes)");
        let gocache = tempfile::tempdir().context("creating a temporary GOCACHE")?;
        Some(go_build(Some(gocache.path()))?)
    } else {
        None
    };

    let mut runs = Vec::new();
    for run in 1..=boots {
        runs.push(boot_once(&image, &kubectl, settle, run).with_context(|| format!("boot {run} of {boots}"))?);
    }

    println!(
        "cluster benchmark: one control-plane node ({CLUSTER}/{NODE}), disk image under OVMF, TCG, {CPUS} vCPUs, \
         {MEMORY_MIB} MiB; boots: {boots}, each from a fresh overlay and a fresh `kelsonctl gen cluster` seed"
    );
    println!("times: the guest's CLOCK_BOOTTIME, seconds from kernel start (firmware and boot loader are before it)");
    let mut header = format!("{:<44}", "");
    for run in 1..=boots {
        header.push_str(&format!(" {:>8}", format!("boot {run}")));
    }
    header.push_str(&format!(" {:>8}", "median"));
    println!("{header}");
    let row = |label: &str, values: Vec<f64>, decimals: usize| {
        let mut line = format!("{label:<44}");
        for v in &values {
            line.push_str(&format!(" {v:>8.decimals$}"));
        }
        line.push_str(&format!(" {:>8.decimals$}", median(&values)));
        println!("{line}");
    };
    row("PID 1 ready (s)", runs.iter().map(|b| b.ready_s).collect(), 1);
    row("kube-apiserver /readyz ok (s)", runs.iter().map(|b| b.apiserver_s).collect(), 1);
    row("node Ready (s)", runs.iter().map(|b| b.node_s).collect(), 1);
    row("  PID 1 ready -> /readyz ok (s)", runs.iter().map(|b| b.apiserver_s - b.ready_s).collect(), 1);
    row("  PID 1 ready -> node Ready (s)", runs.iter().map(|b| b.node_s - b.ready_s).collect(), 1);
    row("host wall, QEMU start -> PID 1 ready (s)", runs.iter().map(|b| b.host_to_ready_s).collect(), 1);
    row("check: PID 1 ready placed like the two above", runs.iter().map(|b| b.ready_mapped_s).collect(), 1);
    row("  /readyz ok came true within (s)", runs.iter().map(|b| b.apiserver_window_s).collect(), 1);
    row("  node Ready came true within (s)", runs.iter().map(|b| b.node_window_s).collect(), 1);
    row("agent's /proc/uptime round trip (s)", runs.iter().map(|b| b.agent_round_trip_s).collect(), 2);
    println!(
        "  /readyz ok and node Ready: kubectl polls from the host through the hostfwd, both in each round, rounds \
         started every {:.0} s at most (a call killed after {} s); each event is the host instant its first \
         successful poll returned, placed on the guest's clock by one /proc/uptime read through the agent after \
         both (TCG: guest time runs at host rate). An event is late by at most its \"came true within\" window \
         (from the start of the last failed poll); the check row places PID 1's console line the same way (it \
         lags the line's own figure by the console and expect delay).",
        POLL.as_secs_f64(),
        CALL_LIMIT.as_secs()
    );

    for (run, boot) in runs.iter().enumerate() {
        println!("  boot {}: the last failed /readyz?verbose named: {}", run + 1, boot.readyz_failing.join(", "));
    }
    println!("resident memory (VmRSS, MiB), read {} s after the node was Ready", settle.as_secs());
    println!("{header}");
    for (i, (name, _, _)) in runs[0].rss.iter().enumerate() {
        let name = if name == "pid1" { "PID 1 (kelson-init)".to_owned() } else { name.clone() };
        let counts: Vec<usize> = runs.iter().map(|b| b.rss[i].1).collect();
        let label = match counts.iter().max() {
            Some(0) => format!("{name} (not running)"),
            Some(&n) if n > 1 => format!("{name} ({n} processes, summed)"),
            _ => name,
        };
        row(&label, runs.iter().map(|b| b.rss[i].2 as f64 / 1024.0).collect(), 1);
    }
    row(
        "guest total in use (MemTotal - MemAvailable)",
        runs.iter().map(|b| b.memory_used_kib as f64 / 1024.0).collect(),
        1,
    );
    row("  read at guest uptime (s)", runs.iter().map(|b| b.rss_read_at_s).collect(), 0);

    println!("image size added by the Kubernetes programs (MiB; squashfs: {})", SQUASHFS_OPTIONS.join(" "));
    println!("{:<52} {:>9} {:>9}", "", "raw", "squashfs");
    for (label, raw, squashed) in &size_rows {
        println!("{label:<52} {:>9.1} {:>9.1}", mib(*raw), mib(*squashed));
    }
    println!("  {size_note}");

    println!("Go build of the multi-call binary (./multicall, CGO_ENABLED=0 -trimpath, the version flags)");
    let go_line = |label: &str, b: &GoBuild| {
        println!(
            "  {label:<6} {:>7.1} s  ({} packages compiled; output {} the cached build)",
            b.seconds,
            b.packages_compiled,
            if b.same_as_cached { "byte-identical to" } else { "differs from" }
        );
    };
    go_line("warm", &warm);
    match &cold {
        Some(cold) => go_line("cold", cold),
        None => println!(
            "  cold   not measured in this run (an empty GOCACHE takes tens of minutes on two cores; \
             KELSON_BENCH_GO_COLD=1 measures it, with the modules from the shared module cache)"
        ),
    }
    Ok(())
}
