//! Self-tests of the QEMU harness. They boot the image's kernel (found via
//! `KELSON_IMAGE_DIR` or `<workspace>/target/image`) with an initrd made
//! only of harness layers: a busybox `/init`, not Kelson. A missing kernel
//! is a failure, not a skip.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use qemu_tests::{free_loopback_port, guest_layer_with_agent, ImagePaths, Layer, Vm, VmBuilder, GUEST_BUSYBOX};

const HOST_BUSYBOX: &str = "/bin/busybox";
const BOOT_TIMEOUT: Duration = Duration::from_secs(120);
const CMD_TIMEOUT: Duration = Duration::from_secs(60);
const UP_LINE: &str = "harness-guest: up";

fn kernel() -> PathBuf {
    match ImagePaths::kernel_from_env() {
        Ok(p) => p.kernel,
        Err(e) => panic!("the harness self-tests need a kernel: {e:#}"),
    }
}

/// A busybox `/init` that mounts the API filesystems, runs `extra`, says
/// it is up, starts the test hooks (the agent) and waits forever.
fn init_layer(extra: &str) -> Layer {
    let script = format!(
        r#"#!{GUEST_BUSYBOX} sh
bb={GUEST_BUSYBOX}
export PATH=/kelson-test/bin:/usr/sbin:/usr/bin:/sbin:/bin
$bb mount -t proc proc /proc
$bb mount -t sysfs sysfs /sys
$bb mount -t devtmpfs devtmpfs /dev
{extra}
echo "{UP_LINE}"
for hook in /kelson-test/hooks/*; do
    "$hook" &
done
while :; do $bb sleep 3600; done
"#
    );
    Layer::new()
        .dir("/proc", 0o755)
        .dir("/sys", 0o755)
        .dir("/tmp", 0o1777)
        .char_dev("/dev/console", 0o600, 5, 1)
        .file("/init", script, 0o755)
}

fn guest(name: &str, extra_init: &str) -> VmBuilder {
    VmBuilder::new(kernel())
        .name(name)
        .memory_mib(256)
        .layer(guest_layer_with_agent(HOST_BUSYBOX))
        .layer(init_layer(extra_init))
}

/// Pids of processes whose command line mentions `needle`.
fn processes_mentioning(needle: &Path) -> Vec<u32> {
    let needle = needle.to_string_lossy().into_owned();
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
            if String::from_utf8_lossy(&cmdline).contains(&needle) {
                pids.push(pid);
            }
        }
    }
    pids
}

#[test]
fn boot_expect_agent_qmp_and_quit() {
    let started = Instant::now();
    let mut vm = guest("basic", "").boot().unwrap();
    let line = vm.expect(UP_LINE, BOOT_TIMEOUT).unwrap();
    assert!(line.contains(UP_LINE), "{line:?}");
    eprintln!("guest up after {:.1?}", started.elapsed());

    let out = vm.agent_exec("echo hi; false", CMD_TIMEOUT).unwrap();
    assert_eq!(out.status, 1, "{out:?}");
    assert_eq!(out.output, "hi\n");

    let out = vm
        .agent_exec("echo one; echo two >&2\necho 'it'\\''s' \"$((6 * 7))\"; printf 'no newline'", CMD_TIMEOUT)
        .unwrap();
    assert_eq!(out.status, 0, "{out:?}");
    assert_eq!(out.output, "one\ntwo\nit's 42\nno newline");

    // exit, a syntax error and a command reading stdin must not hurt the agent.
    assert_eq!(vm.agent_exec("exit 7", CMD_TIMEOUT).unwrap().status, 7);
    assert_ne!(vm.agent_exec("if then fi (", CMD_TIMEOUT).unwrap().status, 0);
    assert_eq!(vm.agent_exec("cat", CMD_TIMEOUT).unwrap().output, "");
    let out = vm.agent_exec("cat /proc/cmdline", CMD_TIMEOUT).unwrap().ok().unwrap();
    assert!(out.output.contains("console=ttyS0"), "{out:?}");
    let big = vm.agent_exec("seq 1 5000", CMD_TIMEOUT).unwrap();
    assert_eq!(big.output.lines().count(), 5000);
    assert_eq!(big.output.lines().last(), Some("5000"));

    let status = vm.hmp("info status").unwrap();
    assert!(status.contains("running"), "{status:?}");
    vm.system_powerdown().unwrap();
    // The guest (no ACPI button handling) keeps running.
    assert_eq!(vm.agent_exec("true", CMD_TIMEOUT).unwrap().status, 0);

    let dir = vm.dir().to_path_buf();
    assert!(!processes_mentioning(&dir).is_empty());
    let exit = vm.quit().unwrap();
    assert!(exit.success(), "{exit:?}");
    assert!(processes_mentioning(&dir).is_empty());
    drop(vm);
    assert!(!dir.exists(), "temp dir {} left behind", dir.display());
    eprintln!("basic test took {:.1?}", started.elapsed());
}

#[test]
fn agent_waits_for_a_booting_guest() {
    let mut vm = guest("early", "").boot().unwrap();
    // Connect while the kernel is still booting: the handshake must ride
    // out the serial port being opened, reset and switched to raw mode.
    let out = vm.agent_exec("echo early", BOOT_TIMEOUT).unwrap();
    assert_eq!(out.output, "early\n");
    assert_eq!(out.status, 0);
    assert!(vm.console_text().unwrap().contains(UP_LINE));
}

#[test]
fn drop_kills_qemu() {
    let vm = guest("drop", "").boot().unwrap();
    let dir = vm.dir().to_path_buf();
    let pid = vm.pid();
    assert_eq!(processes_mentioning(&dir), vec![pid]);
    drop(vm);
    assert!(processes_mentioning(&dir).is_empty(), "QEMU still running after drop");
}

#[test]
fn expect_timeout_shows_console_tail_and_reboot_finds_second_occurrence() {
    let mut vm = guest("reboot", "").reboot_allowed(true).boot().unwrap();
    vm.expect(UP_LINE, BOOT_TIMEOUT).unwrap();

    let err = vm.expect("this-line-never-appears", Duration::from_secs(2)).unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("this-line-never-appears"), "{msg}");
    assert!(msg.contains("timeout 2s"), "{msg}");
    assert!(msg.contains(UP_LINE), "console tail missing: {msg}");

    // The cursor is past the first "up": expecting it again waits for the
    // guest to come up a second time.
    let out = vm.agent_exec("(sleep 1; reboot -f) >/dev/null 2>&1 &", CMD_TIMEOUT).unwrap();
    assert_eq!(out.status, 0, "{out:?}");
    vm.expect(UP_LINE, BOOT_TIMEOUT).unwrap();
    let text = vm.console_text().unwrap();
    assert_eq!(text.matches(UP_LINE).count(), 2, "{text}");
    vm.reset_agent();
    let out = vm.agent_exec("echo after-reboot", CMD_TIMEOUT).unwrap();
    assert_eq!(out.output, "after-reboot\n");
}

#[test]
fn ctrl_alt_delete_reboots_and_no_reboot_ends_qemu() {
    let mut vm = guest("cad", "").boot().unwrap();
    vm.expect(UP_LINE, BOOT_TIMEOUT).unwrap();
    // PID 1 has not turned ctrl-alt-delete into a signal, so the kernel
    // restarts at once, which -no-reboot turns into QEMU exiting.
    vm.send_ctrl_alt_delete().unwrap();
    let status = vm.wait_exit(Duration::from_secs(60)).unwrap();
    assert!(status.success(), "{status:?}");
    // expect() on an exited VM fails at once, naming the exit.
    let t = Instant::now();
    let err = format!("{:#}", vm.expect("anything", BOOT_TIMEOUT).unwrap_err());
    assert!(err.contains("exited"), "{err}");
    assert!(t.elapsed() < Duration::from_secs(5));
}

#[test]
fn layers_override_a_compressed_base_initrd() {
    // A zstd-compressed base archive made by the host's cpio, whose /init
    // our uncompressed layer replaces.
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::write(root.join("etc/from-base"), "base\n").unwrap();
    std::fs::write(root.join("init"), "#!/bin/false\n").unwrap();
    let base = tmp.path().join("base.cpio.zst");
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!("cd {} && find . | cpio -o -H newc --quiet | zstd -q -19 -o {}", root.display(), base.display()))
        .status()
        .unwrap();
    assert!(status.success());

    let mut vm = guest("layers", "echo \"base-file: $(cat /etc/from-base)\"").initrd(&base).boot().unwrap();
    let line = vm.expect("base-file:", BOOT_TIMEOUT).unwrap();
    assert!(line.ends_with("base-file: base"), "{line:?}");
    vm.expect(UP_LINE, BOOT_TIMEOUT).unwrap();
}

/// Extracts the virtio-net modules from the image's /usr image, decompressed
/// for busybox insmod, in load order.
fn virtio_net_modules(dir: &Path) -> Result<Vec<PathBuf>> {
    let image = ImagePaths::locate();
    if !image.initrd.is_file() {
        bail!(
            "the network test needs the image's initrd for virtio_net.ko, and {} is missing: \
             run `cargo xtask image`",
            image.initrd.display()
        );
    }
    let status = Command::new("sh")
        .arg("-c")
        .arg(
            // The image keeps /usr, and so the modules, in usr.squashfs
            // inside the initrd.
            "zstd -dc \"$1\" | cpio -idm --quiet usr.squashfs && \
             unsquashfs -q -n -d usr usr.squashfs 'lib/modules/*/kernel/drivers/net/virtio_net.ko*' \
             'lib/modules/*/kernel/drivers/net/net_failover.ko*' 'lib/modules/*/kernel/net/core/failover.ko*' \
             >/dev/null",
        )
        .arg("sh")
        .arg(&image.initrd)
        .current_dir(dir)
        .status()
        .context("running zstd | cpio")?;
    if !status.success() {
        bail!("extracting modules from {} failed", image.initrd.display());
    }
    let mut found = Vec::new();
    // The image ships its modules uncompressed; a kernel package's
    // .ko.xz files are decompressed for busybox insmod.
    for name in ["failover", "net_failover", "virtio_net"] {
        let out = Command::new("find")
            .arg(dir)
            .args(["-name", &format!("{name}.ko"), "-o", "-name", &format!("{name}.ko.xz")])
            .output()
            .context("running find")?;
        let text = String::from_utf8_lossy(&out.stdout);
        let Some(path) = text.lines().next().map(str::to_owned) else {
            bail!("{name}.ko(.xz) not in {}", image.initrd.display());
        };
        if path.ends_with(".xz") {
            let status = Command::new("xz").args(["-d", "-f", &path]).status()?;
            if !status.success() {
                bail!("xz -d {path} failed");
            }
        }
        found.push(PathBuf::from(path.trim_end_matches(".xz")));
    }
    Ok(found)
}

fn net_guest(name: &str, modules: &[PathBuf], addr: &str) -> VmBuilder {
    let mut layer = Layer::new();
    let mut snippet = String::new();
    for m in modules {
        let file = m.file_name().unwrap().to_string_lossy().into_owned();
        let guest_path = format!("/kelson-test/modules/{file}");
        snippet.push_str(&format!("$bb insmod {guest_path}\n"));
        layer = layer.file_from_host(&guest_path, m, 0o644);
    }
    snippet.push_str(&format!("$bb ip link set lo up\n$bb ip link set eth0 up\n$bb ip addr add {addr}/24 dev eth0\n"));
    guest(name, &snippet).layer(layer)
}

fn wait_up(vm: &mut Vm) {
    vm.expect(UP_LINE, BOOT_TIMEOUT).unwrap();
}

#[test]
fn two_vms_ping_over_socket_network() {
    let tmp = tempfile::tempdir().unwrap();
    let modules = virtio_net_modules(tmp.path()).unwrap();
    let port = free_loopback_port().unwrap();
    // Addresses from TEST-NET-1; the link only exists between the two QEMUs.
    let mut a = net_guest("net-a", &modules, "192.0.2.1").socket_nic_listen(port, "52:54:00:4b:00:01").boot().unwrap();
    let mut b = net_guest("net-b", &modules, "192.0.2.2").socket_nic_connect(port, "52:54:00:4b:00:02").boot().unwrap();
    wait_up(&mut a);
    wait_up(&mut b);
    let out = a.agent_exec("ping -c 3 -w 60 192.0.2.2", Duration::from_secs(90)).unwrap();
    assert_eq!(out.status, 0, "{}", out.output);
    assert!(out.output.contains("3 packets received"), "{}", out.output);
    let out = b.agent_exec("ip neigh; ping -c 1 -w 30 192.0.2.1", Duration::from_secs(60)).unwrap().ok().unwrap();
    assert!(out.output.contains("52:54:00:4b:00:01"), "{}", out.output);
}
