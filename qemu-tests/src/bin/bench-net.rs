//! `cargo xtask bench net`: how long the node's network setup takes inside
//! the guest, Kelson's Rust path beside the seed notes' shell commands.
//!
//! Every figure comes from its own freshly booted guest (three boots per
//! run; no two paths share a guest, since the first to run would leave
//! netfilter loaded and /usr's programs cached for the second):
//!
//! 1. a node booted from a `kelsonctl gen` seed (static uplink address, cbr0
//!    with MTU 1460, MASQUERADE, one peer route): the network stage's own
//!    duration from the console (`network applied elapsed_ms=`: stage start
//!    to cbr0 up with the rule installed);
//! 2. a node booted without a seed (so no network stage ran): kelson-net's
//!    `net-apply` with the same config, started from the shell;
//! 3. another node booted without a seed: the same steps as shell commands,
//!    as the seed notes write them (busybox `ip`, the image's iptables-nft,
//!    sysctls by `echo`).
//!
//! The like-for-like comparison is 2 against 3: both start from a shell
//! after boot with the page cache dropped and netfilter unused. 1 runs
//! inside PID 1 during boot, with other stages around it, and is printed
//! for what a booting node pays, not as a comparison with the shell. The
//! shell times itself from /proc/uptime (10 ms steps) with builtins only:
//! running a timing program would itself load libc, which the first
//! dynamically linked program after boot (iptables, for both paths)
//! otherwise pays for.

use anyhow::{bail, Context, Result};
use qemu_tests::bench::median;
use qemu_tests::{free_loopback_port, guest_layer_with_agent, ImagePaths, Layer, VmBuilder};
use std::time::Duration;

const RUNS: usize = 5;
const GUEST_NET_APPLY: &str = "/kelson-test/net-apply";

/// kelson-net's path as a process started from the shell, timed the same way.
const RUST_SETUP: &str = "sync; echo 3 > /proc/sys/vm/drop_caches
read t0 rest < /proc/uptime
/kelson-test/net-apply /kelson-test/machine-config.yaml
read t1 rest < /proc/uptime
echo $(( (${t1%.*}${t1#*.} - ${t0%.*}${t0#*.}) * 10000 ))";

// The page cache is dropped first: the network stage ran with /usr's
// programs not yet read from the squashfs, and so must the shell path.
const SHELL_SETUP: &str = "sync; echo 3 > /proc/sys/vm/drop_caches
read t0 rest < /proc/uptime
ip link set lo up
ip link set eth0 up
ip addr add 192.168.100.10/24 dev eth0
ip link add name cbr0 type bridge
ip link set dev cbr0 mtu 1460
ip addr add 10.244.0.1/24 dev cbr0
ip link set dev cbr0 up
echo 1 > /proc/sys/net/ipv4/ip_forward
echo 1 > /proc/sys/net/bridge/bridge-nf-call-iptables
iptables -t nat -N KELSON-POSTROUTING
iptables -t nat -A POSTROUTING -j KELSON-POSTROUTING
iptables -t nat -A KELSON-POSTROUTING ! -d 10.244.0.0/16 -m addrtype ! --dst-type LOCAL -j MASQUERADE
ip route add 10.244.1.0/24 via 192.168.100.11
read t1 rest < /proc/uptime
echo $(( (${t1%.*}${t1#*.} - ${t0%.*}${t0#*.}) * 10000 ))";

fn main() -> Result<()> {
    let image = ImagePaths::from_env()?;
    let dir = tempfile::tempdir()?;
    let spec = kelsonctl::gen::ClusterSpec::with_defaults("bench", 1, 1);
    kelsonctl::gen::generate_cluster(&spec, &dir.path().join("cluster"), false)?;
    // Network set-up is what is measured, not a control plane.
    let seed = qemu_tests::seed::without_control_plane(&dir.path().join("cluster/nodes/bench-cp-1"))?;
    // Built beside this program by `cargo xtask bench`.
    let net_apply = std::env::current_exe()?.with_file_name("net-apply");
    if !net_apply.exists() {
        bail!("{} is missing: build it with `cargo build --release -p qemu-tests --bins`", net_apply.display());
    }
    let (mut kelson_ms, mut rust_ms, mut shell_ms) = (Vec::new(), Vec::new(), Vec::new());
    let config = std::fs::read(dir.path().join("cluster/nodes/bench-cp-1/machine-config.yaml"))?;
    let apply_tool = || {
        Layer::new().file_from_host(GUEST_NET_APPLY, &net_apply, 0o755).file(
            "/kelson-test/machine-config.yaml",
            config.clone(),
            0o600,
        )
    };
    for run in 1..=RUNS {
        let port = free_loopback_port()?;
        let node = || {
            VmBuilder::from_image(&image)
                .layer(guest_layer_with_agent("/bin/busybox"))
                // A NIC for eth0; no peer joins this socket network.
                .socket_nic_listen(port, "52:54:00:be:00:01")
        };

        // Kelson's path: the network stage of a node booted from the seed.
        let mut vm = node().disk(&seed).boot().context("booting the node with its seed")?;
        let applied = vm.expect("network applied", Duration::from_secs(180))?;
        let Some(ms) =
            applied.split_whitespace().find_map(|w| w.strip_prefix("elapsed_ms=")).and_then(|v| v.parse::<f64>().ok())
        else {
            bail!("no elapsed_ms in {applied:?}");
        };
        if !applied.contains("failed=0") {
            bail!("the network stage had failures: {applied}");
        }
        kelson_ms.push(ms);
        vm.kill()?;

        // The shell path, in a node booted without a seed: no network config,
        // so the kernel's netfilter and the page cache are as cold as they
        // were for the network stage.
        let mut vm = node().layer(apply_tool()).boot().context("booting a node without a seed")?;
        vm.expect("kelson: ready", Duration::from_secs(180))?;
        let out = vm.agent_exec(RUST_SETUP, Duration::from_secs(60))?;
        if out.status != 0 {
            bail!("net-apply failed: {}", out.output);
        }
        let rust_micros: f64 = out
            .output
            .trim()
            .lines()
            .last()
            .unwrap_or("")
            .parse()
            .with_context(|| format!("reading {:?}", out.output))?;
        rust_ms.push(rust_micros / 1000.0);
        vm.kill()?;

        let mut vm = node().boot().context("booting a node without a seed")?;
        vm.expect("kelson: ready", Duration::from_secs(180))?;
        let out = vm.agent_exec(SHELL_SETUP, Duration::from_secs(60))?;
        if out.status != 0 {
            bail!("the shell path failed: {}", out.output);
        }
        let micros: f64 = out
            .output
            .trim()
            .lines()
            .last()
            .unwrap_or("")
            .parse()
            .with_context(|| format!("reading {:?}", out.output))?;
        shell_ms.push(micros / 1000.0);
        vm.kill()?;
        eprintln!(
            "bench-net: run {run}/{RUNS}: network stage {ms:.0} ms; net-apply {:.0} ms; shell {:.0} ms",
            rust_micros / 1000.0,
            micros / 1000.0
        );
    }
    let (rust, shell) = (median(&rust_ms), median(&shell_ms));
    println!("network setup benchmark, medians of {RUNS} runs, measured in the guest (TCG, 1 vCPU), each figure");
    println!("from its own freshly booted guest:");
    println!("  compared like for like (from a shell after boot, page cache dropped, netfilter unused):");
    println!("    Kelson: net-apply                             {rust:>7.0} ms");
    println!("    the seed notes' shell commands                {shell:>7.0} ms");
    println!("    Kelson / shell                                {:>7.2}x", rust / shell);
    println!("  for reference, not a comparison with the above (inside PID 1, during boot):");
    println!("    Kelson: PID 1's network stage                 {:>7.0} ms", median(&kelson_ms));
    Ok(())
}
