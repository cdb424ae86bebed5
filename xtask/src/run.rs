//! `cargo xtask run`: a one-node Kubernetes cluster on the console. The
//! node is the disk image booted by OVMF, with a seed `kelsonctl gen
//! cluster` has just written; its only network is QEMU's user network
//! with `restrict=on` (the guest reaches nothing beyond it) and two ports
//! forwarded from the host's loopback: the Kubernetes API server's and the
//! node's management API.

use crate::image::ImagePaths;
use anyhow::{bail, Context, Result};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

const CLUSTER: &str = "demo";
const NODE: &str = "demo-cp-1";
/// `kelsonctl gen cluster`'s first node address and the gateway given to it:
/// QEMU's user network is set to the same subnet, its host side the gateway.
const NODE_ADDRESS: &str = "192.168.100.10";
const GATEWAY: &str = "192.168.100.1";
const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";

pub fn boot_interactive(root: &Path, paths: &ImagePaths) -> Result<()> {
    let run_dir = root.join("target/run");
    std::fs::create_dir_all(&run_dir).with_context(|| format!("creating {}", run_dir.display()))?;

    eprintln!("xtask: building kelsonctl");
    let status = Command::new("cargo")
        .current_dir(root)
        .args(["build", "--quiet", "--bin", "kelsonctl"])
        .status()
        .context("running cargo build --bin kelsonctl")?;
    if !status.success() {
        bail!("cargo build --bin kelsonctl failed ({status})");
    }
    let cluster = run_dir.join("cluster");
    eprintln!("xtask: kelsonctl gen cluster --name {CLUSTER} --workers 0 --output {}", cluster.display());
    let status = Command::new(root.join("target/debug/kelsonctl"))
        .args(["gen", "cluster", "--name", CLUSTER, "--workers", "0", "--gateway", GATEWAY, "--force", "--output"])
        .arg(&cluster)
        .status()
        .context("running kelsonctl gen cluster")?;
    if !status.success() {
        bail!("kelsonctl gen cluster failed ({status})");
    }

    let port = free_port()?;
    let kubeconfig = local_kubeconfig(&cluster, &run_dir, port)?;
    let api_port = free_port()?;
    let kelsonconfig = local_kelsonconfig(&cluster, &run_dir, api_port)?;
    let disk = fresh_overlay(&paths.disk_qcow2, &run_dir)?;
    let vars = run_dir.join("OVMF_VARS.fd");
    std::fs::copy(OVMF_VARS, &vars)
        .with_context(|| format!("copying the OVMF variable store {OVMF_VARS} (package ovmf)"))?;
    let seed = cluster.join(format!("nodes/{NODE}/seed.img"));

    let kubectl = paths.dir.join("kubectl");
    eprintln!("xtask: booting {NODE}, a control-plane node (software emulation: the node is Ready after some minutes)");
    eprintln!("xtask: from another terminal, once it is up:");
    eprintln!("    {} --kubeconfig {} get nodes", kubectl.display(), kubeconfig.display());
    let kelsonctl = root.join("target/debug/kelsonctl");
    eprintln!("    {} status --kelsonconfig {}", kelsonctl.display(), kelsonconfig.display());
    eprintln!("    {} logs -f kubelet --kelsonconfig {}", kelsonctl.display(), kelsonconfig.display());
    eprintln!("xtask: quit with ctrl-a x; power the node off with ctrl-a c, then `system_powerdown`");
    let netdev = format!(
        "user,id=up,restrict=on,net=192.168.100.0/24,host={GATEWAY},hostfwd=tcp:127.0.0.1:{port}-{NODE_ADDRESS}:6443,\
         hostfwd=tcp:127.0.0.1:{api_port}-{NODE_ADDRESS}:50000"
    );
    let status = Command::new("qemu-system-x86_64")
        .args(["-machine", "q35", "-accel", "tcg", "-cpu", "max", "-m", "3072", "-smp", "2", "-nographic"])
        .args(["-drive", &format!("if=pflash,format=raw,readonly=on,file={OVMF_CODE}")])
        .args(["-drive", &format!("if=pflash,format=raw,file={}", vars.display())])
        .args(["-drive", &format!("file={},if=virtio,format=qcow2", disk.display())])
        .args(["-drive", &format!("file={},if=virtio,format=raw,readonly=on", seed.display())])
        .args(["-netdev", &netdev, "-device", "virtio-net-pci,netdev=up"])
        .status()
        .context("starting qemu-system-x86_64")?;
    if !status.success() {
        bail!("QEMU ended with {status}");
    }
    Ok(())
}

/// A port on the host's loopback nobody listens on now.
fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port on 127.0.0.1")?;
    Ok(listener.local_addr().context("reading the free port")?.port())
}

/// The admin kubeconfig with its server moved to the forwarded port (the
/// API server's certificate names 127.0.0.1).
fn local_kubeconfig(cluster: &Path, run_dir: &Path, port: u16) -> Result<PathBuf> {
    let server = format!("server: https://{NODE_ADDRESS}:6443");
    local_copy(
        &cluster.join("admin.kubeconfig"),
        &run_dir.join("kubeconfig"),
        &server,
        &format!("server: https://127.0.0.1:{port}"),
    )
}

/// The admin kelsonconfig with the node's endpoint moved to the forwarded
/// port; kelsonctl still verifies the node by its name.
fn local_kelsonconfig(cluster: &Path, run_dir: &Path, port: u16) -> Result<PathBuf> {
    let endpoint = format!("{NODE_ADDRESS}:50000");
    local_copy(&cluster.join("kelsonconfig"), &run_dir.join("kelsonconfig"), &endpoint, &format!("127.0.0.1:{port}"))
}

/// A copy of the client config `from` at `to`, with `guest` (the node's
/// address, which the host cannot reach) replaced by `host` (the forwarded
/// port on 127.0.0.1).
fn local_copy(from: &Path, to: &Path, guest: &str, host: &str) -> Result<PathBuf> {
    let text = std::fs::read_to_string(from).with_context(|| format!("reading {}", from.display()))?;
    if !text.contains(guest) {
        bail!("{} does not name the node as `{guest}`", from.display());
    }
    let _ = std::fs::remove_file(to);
    // It holds the admin's private key: owner-only from the start.
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(to)
        .with_context(|| format!("creating {}", to.display()))?;
    file.write_all(text.replace(guest, host).as_bytes()).with_context(|| format!("writing {}", to.display()))?;
    Ok(to.to_owned())
}

/// A new copy-on-write overlay of the disk image with room for the state
/// partition, so every run starts from a factory-fresh node.
fn fresh_overlay(image: &Path, run_dir: &Path) -> Result<PathBuf> {
    let disk = run_dir.join("node.qcow2");
    let _ = std::fs::remove_file(&disk);
    let status = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
        .arg(image)
        .arg(&disk)
        .arg("8G")
        .status()
        .context("running qemu-img create")?;
    if !status.success() {
        bail!("qemu-img create {} failed ({status})", disk.display());
    }
    Ok(disk)
}
