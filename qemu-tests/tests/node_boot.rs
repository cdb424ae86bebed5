//! The node image booted under QEMU: PID 1's boot, reaping, power handling,
//! maintenance on failure and the state disk. Each test boots the real image
//! (`cargo xtask image`) with a test-only initrd layer that adds busybox, the
//! in-guest agent and the orphan maker.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use qemu_tests::{guest_layer_with_agent, ImagePaths, Layer, Vm, VmBuilder};
use std::time::Duration;

const BOOT: Duration = Duration::from_secs(180);
const SHORT: Duration = Duration::from_secs(60);
const GUEST_ORPHAN_MAKER: &str = "/kelson-test/orphan-maker";

fn node() -> VmBuilder {
    let image = ImagePaths::from_env().expect("the node image (run `cargo xtask image`)");
    let test_layer = Layer::new().file_from_host(GUEST_ORPHAN_MAKER, env!("CARGO_BIN_EXE_orphan-maker"), 0o755);
    VmBuilder::from_image(&image)
        .layer(guest_layer_with_agent("/bin/busybox"))
        .layer(test_layer)
        .append("kelson.shutdown_grace=3")
}

fn sh(vm: &mut Vm, cmd: &str) -> String {
    let out = vm.agent_exec(cmd, SHORT).unwrap_or_else(|e| panic!("agent: {cmd}: {e:#}"));
    assert_eq!(out.status, 0, "{cmd} failed: {}", out.output);
    out.output.trim().to_owned()
}

/// Expects `lines` on the console in this order.
fn expect_in_order(vm: &mut Vm, lines: &[&str], timeout: Duration) {
    for line in lines {
        vm.expect(line, timeout).unwrap_or_else(|e| panic!("{e:#}"));
    }
}

#[test]
fn the_node_boots_to_ready_with_kelson_init_as_pid_1_and_the_system_set_up() {
    let mut vm = node().uuid("6b29fc40-ca47-1067-b31d-00dd010662da").boot().unwrap();
    for stage in ["mounts", "kernel-log", "usr", "cgroups", "modules", "sysctls", "state", "identity"] {
        vm.expect(&format!("stage done stage={stage} "), BOOT).unwrap();
    }
    let ready = vm.expect("kelson: ready", BOOT).unwrap();
    assert!(ready.contains("pid1_to_ready_ms="), "{ready}");

    assert_eq!(sh(&mut vm, "readlink /proc/1/exe"), "/usr/sbin/init");
    assert!(sh(&mut vm, "/proc/1/exe --version").starts_with("kelson-init "));
    let mounts = sh(&mut vm, "cat /proc/mounts");
    for (target, fstype) in [
        ("/proc", "proc"),
        ("/sys", "sysfs"),
        ("/dev", "devtmpfs"),
        ("/dev/pts", "devpts"),
        ("/dev/shm", "tmpfs"),
        ("/run", "tmpfs"),
        ("/sys/fs/cgroup", "cgroup2"),
        ("/tmp", "tmpfs"),
        ("/var", "tmpfs"),
        ("/usr", "squashfs"),
    ] {
        assert!(mounts.contains(&format!(" {target} {fstype} ")), "{target} ({fstype}) not mounted:\n{mounts}");
    }
    assert!(mounts.contains(" /usr squashfs ro,"), "/usr must be read-only:\n{mounts}");
    // An appliance: no package manager, perl, systemd or docs in the image.
    let leftovers = sh(
        &mut vm,
        "for f in /usr/bin/perl /usr/bin/dpkg /usr/bin/apt-get /usr/lib/systemd/systemd /usr/bin/systemctl \
         /usr/lib/x86_64-linux-gnu/perl-base /usr/sbin/update-rc.d /usr/share/doc /var/lib/dpkg \
         /usr/bin/etcd /usr/bin/etcdutl /usr/sbin/adduser /var/lib/etcd; do \
         test -e $f && echo present: $f; done; true",
    );
    assert_eq!(leftovers, "", "the image still has:\n{leftovers}");
    // etcd lives only in the image store's layouts (image/oci-images.py), in /usr.
    assert_eq!(
        sh(&mut vm, "ls /usr/lib/kelson/images").split_whitespace().collect::<Vec<_>>(),
        ["busybox", "etcd", "kubernetes", "pause"]
    );
    let index = sh(&mut vm, "cat /usr/lib/kelson/images/etcd/index.json");
    assert!(index.contains(r#""io.containerd.image.name":"registry.k8s.io/etcd:3.5.16-0""#), "{index}");
    let controllers = sh(&mut vm, "cat /sys/fs/cgroup/cgroup.subtree_control");
    for c in ["cpu", "memory", "pids", "io"] {
        assert!(controllers.split_whitespace().any(|x| x == c), "{c} not enabled: {controllers}");
    }
    assert_eq!(sh(&mut vm, "cat /proc/sys/net/ipv4/ip_forward"), "1");
    assert_eq!(sh(&mut vm, "cat /proc/sys/net/bridge/bridge-nf-call-iptables"), "1");
    let modules = sh(&mut vm, "cut -d' ' -f1 /proc/modules");
    for m in
        ["br_netfilter", "bridge", "nf_nat", "xt_MASQUERADE", "xt_addrtype", "overlay", "virtio_net", "evdev", "button"]
    {
        assert!(modules.lines().any(|l| l == m), "module {m} not loaded:\n{modules}");
    }
    assert!(modules.lines().any(|l| l.starts_with("crc32c")), "no crc32c provider loaded:\n{modules}");
    assert_eq!(sh(&mut vm, "hostname"), "kelson-6b29fc40");
    assert_eq!(sh(&mut vm, "cat /etc/machine-id"), "6b29fc40ca471067b31d00dd010662da");
    // Kelson's lines reach the kernel log as well as the console.
    assert!(sh(&mut vm, "dmesg").contains("kelson: ready"));
    // The agent answering is a hook PID 1 ran; it ran because the harness
    // put the enabling key on the command line.
    assert!(sh(&mut vm, "cat /proc/cmdline").split_whitespace().any(|w| w == "kelson.test.hooks=1"));
    assert!(vm.console_text().unwrap().contains("test hook started hook=/kelson-test/hooks/50-agent"));
}

#[test]
fn test_hooks_are_not_run_without_the_command_line_key() {
    // The hook would announce itself on the console. Maintenance (a missing
    // state disk) is the quickest way to the end of boot, where hooks start.
    let hook = "#!/kelson-test/busybox sh\necho HOOK-RAN-WITHOUT-KEY >/dev/console\n";
    let layer = Layer::new().file("/kelson-test/hooks/70-announce", hook, 0o755);
    let mut vm = node().layer(layer).without_test_hooks_key().append("kelson.state=/dev/vdz").boot().unwrap();
    vm.expect("maintenance: boot stopped", BOOT).unwrap();
    let line = vm.expect("test hooks present but not run", SHORT).unwrap();
    assert!(line.contains("kelson.test.hooks=1"), "{line}");
    vm.system_powerdown().unwrap();
    vm.expect("shutdown: power-off", SHORT).unwrap();
    assert!(vm.wait_exit(SHORT).unwrap().success());
    let console = vm.console_text().unwrap();
    let kernel_line = console.lines().find(|l| l.contains("Command line:")).expect("the kernel's command line");
    assert!(!kernel_line.contains("kelson.test.hooks"), "{kernel_line}");
    assert!(!console.contains("test hook started"), "a hook started without the key:\n{console}");
    assert!(!console.contains("HOOK-RAN-WITHOUT-KEY"), "a hook ran without the key:\n{console}");
}

#[test]
fn the_power_button_powers_the_node_off_in_order_and_qemu_exits_cleanly() {
    // A process that ignores SIGTERM must be SIGKILLed after the grace
    // period; PID 1 starts it as a test hook.
    let hook = format!("#!/kelson-test/busybox sh\nexec {GUEST_ORPHAN_MAKER} ignore-term\n");
    let layer = Layer::new().file("/kelson-test/hooks/60-ignore-term", hook, 0o755);
    let mut vm = node().layer(layer).boot().unwrap();
    // The button is watched before boot announces its outcome.
    vm.expect("watching power button", BOOT).unwrap();
    vm.expect("kelson: ready", BOOT).unwrap();
    let running = sh(&mut vm, "ps -o pid,args | grep -c '[i]gnore-term'");
    assert_eq!(running, "1", "the SIGTERM-ignoring process is not running");
    vm.system_powerdown().unwrap();
    expect_in_order(
        &mut vm,
        &[
            "power button pressed",
            "shutdown: begin action=power-off",
            "shutdown: stopping processes signal=SIGTERM grace_ms=3000",
            "shutdown: grace period over, killing processes signal=SIGKILL",
            "shutdown: processes stopped",
            "shutdown: sync",
            "shutdown: unmounted /var",
            "shutdown: power-off",
        ],
        SHORT,
    );
    let status = vm.wait_exit(SHORT).unwrap();
    assert!(status.success(), "QEMU exited with {status}");
}

#[test]
fn sigterm_to_pid_1_powers_the_node_off() {
    let mut vm = node().boot().unwrap();
    vm.expect("kelson: ready", BOOT).unwrap();
    // In the background, so the agent answers before shutdown stops it.
    sh(&mut vm, "(sleep 1; kill -TERM 1) >/dev/null 2>&1 &");
    expect_in_order(&mut vm, &["shutdown requested action=power-off", "shutdown: sync", "shutdown: power-off"], SHORT);
    assert!(vm.wait_exit(SHORT).unwrap().success());
}

#[test]
fn ctrl_alt_del_reboots_the_node_back_to_ready() {
    let mut vm = node().reboot_allowed(true).boot().unwrap();
    vm.expect("kelson: ready", BOOT).unwrap();
    sh(&mut vm, "true");
    vm.send_ctrl_alt_delete().unwrap();
    expect_in_order(
        &mut vm,
        &["shutdown requested action=reboot", "shutdown: begin action=reboot", "shutdown: sync", "shutdown: reboot"],
        SHORT,
    );
    vm.expect("kelson-init starting as PID 1", BOOT).unwrap();
    vm.expect("kelson: ready", BOOT).unwrap();
    vm.reset_agent();
    assert_eq!(sh(&mut vm, "readlink /proc/1/exe"), "/usr/sbin/init");
}

#[test]
fn orphans_re_parented_to_pid_1_are_reaped() {
    let mut vm = node().boot().unwrap();
    vm.expect("kelson: ready", BOOT).unwrap();
    // The leaves live 5 s: starting 25 of them under emulation on a busy
    // host can take more than a second, and each must still be alive when
    // the maker checks its parent.
    let made = sh(&mut vm, &format!("{GUEST_ORPHAN_MAKER} make 25 5000"));
    assert_eq!(made, "orphans=25 reparented_to_pid1=25", "the leaves must have become PID 1's children");
    // Sample a few times after the leaves have exited.
    sh(&mut vm, "sleep 6");
    for _ in 0..3 {
        let zombies = sh(&mut vm, &format!("{GUEST_ORPHAN_MAKER} zombies"));
        assert_eq!(zombies, "zombies=0", "PID 1 left zombies:\n{zombies}");
        sh(&mut vm, "sleep 0.5");
    }
    let left = sh(&mut vm, "ps -o ppid,comm | grep -c orphan-maker || true");
    assert_eq!(left, "0", "orphan-maker processes still around");
}

#[test]
fn a_failed_critical_stage_leaves_pid_1_alive_in_maintenance() {
    // The induced failure: a state disk is named that does not exist.
    let mut vm = node().append("kelson.state=/dev/vdz").boot().unwrap();
    let line = vm.expect("maintenance: boot stopped", BOOT).unwrap();
    assert!(line.contains("stage=state"), "{line}");
    assert!(line.contains("/dev/vdz"), "{line}");
    assert!(!vm.console_text().unwrap().contains("kelson: ready"));
    // PID 1 is alive and still does its job: it started the agent, it
    // reaps, and it answers the power button.
    assert_eq!(sh(&mut vm, "readlink /proc/1/exe"), "/usr/sbin/init");
    assert_eq!(sh(&mut vm, "cat /proc/1/status | grep ^State: | cut -f2 | cut -c1"), "S");
    sh(&mut vm, &format!("{GUEST_ORPHAN_MAKER} make 5 100; sleep 1"));
    assert_eq!(sh(&mut vm, &format!("{GUEST_ORPHAN_MAKER} zombies")), "zombies=0");
    vm.system_powerdown().unwrap();
    vm.expect("shutdown: power-off", SHORT).unwrap();
    assert!(vm.wait_exit(SHORT).unwrap().success());
}

#[test]
fn a_panicking_stage_is_caught_and_the_node_stays_up_in_maintenance() {
    // cgroups is a critical stage: a panic there must mean maintenance.
    let mut vm = node().append("kelson.test.panic_stage=cgroups").boot().unwrap();
    vm.expect("panic caught; PID 1 carries on", BOOT).unwrap();
    let line = vm.expect("maintenance: boot stopped", BOOT).unwrap();
    assert!(line.contains("stage=cgroups") && line.contains("panicked"), "{line}");
    assert_eq!(sh(&mut vm, "readlink /proc/1/exe"), "/usr/sbin/init");
}

fn blank_disk(dir: &std::path::Path, name: &str, mib: u64) -> std::path::PathBuf {
    let path = dir.join(name);
    let f = std::fs::File::create(&path).unwrap();
    f.set_len(mib << 20).unwrap();
    path
}

#[test]
fn a_named_blank_state_disk_is_formatted_and_keeps_var_across_a_reboot() {
    let dir = tempfile::tempdir().unwrap();
    let disk = blank_disk(dir.path(), "state.img", 64);
    let mut vm = node().disk(&disk).append("kelson.state=/dev/vda").reboot_allowed(true).boot().unwrap();
    vm.expect("state disk is blank: formatting it", BOOT).unwrap();
    vm.expect("state disk mounted on /var", BOOT).unwrap();
    vm.expect("kelson: ready", BOOT).unwrap();
    assert!(sh(&mut vm, "cat /proc/mounts").contains("/dev/vda /var ext4 "));
    let id = sh(&mut vm, "cat /etc/machine-id");
    sh(&mut vm, "echo survived > /var/lib/kelson/marker");

    vm.send_ctrl_alt_delete().unwrap();
    vm.expect("shutdown: unmounted /var", SHORT).unwrap();
    vm.expect("kelson-init starting as PID 1", BOOT).unwrap();
    vm.expect("state disk mounted on /var", BOOT).unwrap();
    vm.expect("kelson: ready", BOOT).unwrap();
    assert_eq!(vm.console_text().unwrap().matches("formatting it").count(), 1, "formatted twice");
    vm.reset_agent();
    assert_eq!(sh(&mut vm, "cat /var/lib/kelson/marker"), "survived");
    assert_eq!(sh(&mut vm, "cat /etc/machine-id"), id, "the machine id is kept on the state disk");
}

#[test]
fn a_disk_labelled_kelson_state_is_used_without_being_named() {
    let dir = tempfile::tempdir().unwrap();
    let disk = blank_disk(dir.path(), "state.img", 32);
    let mkfs = kelson_init::state_disk::mkfs_command(&disk).status().expect("mkfs.ext4 (e2fsprogs) on the host");
    assert!(mkfs.success());
    let mut vm = node().disk(&disk).boot().unwrap();
    vm.expect("kelson: ready", BOOT).unwrap();
    assert!(sh(&mut vm, "cat /proc/mounts").contains("/dev/vda /var ext4 "));
}

#[test]
fn a_named_disk_with_a_signature_is_refused_and_left_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let disk = blank_disk(dir.path(), "used.img", 32);
    // An MBR boot signature, as any partitioned disk has.
    {
        use std::io::{Seek, SeekFrom, Write};
        let mut f = std::fs::OpenOptions::new().write(true).open(&disk).unwrap();
        f.seek(SeekFrom::Start(510)).unwrap();
        f.write_all(&[0x55, 0xAA]).unwrap();
    }
    let before = std::fs::read(&disk).unwrap();
    let mut vm = node().disk(&disk).append("kelson.state=/dev/vda").boot().unwrap();
    let line = vm.expect("maintenance: boot stopped", BOOT).unwrap();
    assert!(line.contains("refusing to format state disk /dev/vda"), "{line}");
    assert!(line.contains("MBR partition table at byte 510"), "{line}");
    vm.system_powerdown().unwrap();
    assert!(vm.wait_exit(SHORT).unwrap().success());
    assert!(std::fs::read(&disk).unwrap() == before, "the refused disk was written to");
}

/// The command the README gives: QEMU's defaults (pc machine, one CPU) but
/// 1024 MiB, since the RAM-resident root (containerd, runc, the CNI plugins,
/// the Kubernetes programs and the image store's etcd and control-plane
/// images: a ~150 MiB initramfs, held compressed and unpacked at once) no
/// longer fits the 320 MiB it booted in before the Kubernetes programs; and
/// `-nic none`: QEMU's default NIC would be user-mode networking, a path to
/// a real network.
#[test]
fn the_documented_direct_boot_command_reaches_ready() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    /// Kills and reaps QEMU when dropped, so no path out of the test (a
    /// panic included) leaves it running.
    struct KillOnDrop(std::process::Child);
    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let image = ImagePaths::from_env().expect("the node image (run `cargo xtask image`)");
    let mut qemu = KillOnDrop(
        Command::new("qemu-system-x86_64")
            .arg("-nographic")
            .args(["-m", "1024"])
            .arg("-kernel")
            .arg(&image.kernel)
            .arg("-initrd")
            .arg(&image.initrd)
            .args(["-append", "console=ttyS0", "-nic", "none"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting qemu-system-x86_64"),
    );
    let stdout = qemu.0.stdout.take().unwrap();
    // The console is read on a thread and handed over line by line, so this
    // thread can give up at a deadline and kill QEMU through the `Child` it
    // holds (never by a pid number, which may have been reused).
    let (lines, console) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = std::time::Instant::now() + BOOT;
    let mut seen = Vec::new();
    let mut ready = false;
    while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
        match console.recv_timeout(left) {
            Ok(line) if line.contains("kelson: ready") => {
                ready = true;
                break;
            }
            Ok(line) => seen.push(line),
            // Timed out, or QEMU closed its console (it exited).
            Err(_) => break,
        }
    }
    // QEMU ends here, pass or fail; the reader thread then sees end of file.
    drop(qemu);
    let tail = seen[seen.len().saturating_sub(30)..].join("\n");
    assert!(ready, "no `kelson: ready` from the documented command; console tail:\n{tail}");
}
