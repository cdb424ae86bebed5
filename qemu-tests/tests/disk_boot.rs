//! The disk image (`kelson.raw`) booted by real UEFI firmware (Debian's
//! OVMF) from a virtio disk, with no NVRAM boot entry: the firmware finds
//! systemd-boot as `\EFI\BOOT\BOOTX64.EFI`, which starts the UKI, whose
//! small initrd holds PID 1; PID 1 finds /usr's partitions by the root hash
//! on the UKI's command line and mounts them through dm-verity.
//!
//! Each VM boots a copy-on-write overlay of the image, so the image itself
//! is never written; the corruption test changes one byte of /usr in its
//! overlay only.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use qemu_tests::{guest_layer_with_agent, ImagePaths, Vm, VmBuilder};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const BOOT: Duration = Duration::from_secs(300);

/// A qcow2 overlay of the raw disk image in `dir`, as large as the image
/// or `size` (`3G`).
fn overlay(image: &ImagePaths, dir: &Path, size: Option<&str>) -> PathBuf {
    overlay_of(&image.disk, "raw", dir, size)
}

/// A qcow2 overlay of `backing` (of `format`) in `dir`.
fn overlay_of(backing: &Path, format: &str, dir: &Path, size: Option<&str>) -> PathBuf {
    let path = dir.join("disk.qcow2");
    let status = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", format, "-b"])
        .arg(backing)
        .arg(&path)
        .args(size)
        .status()
        .expect("qemu-img (package qemu-utils)");
    assert!(status.success(), "qemu-img create failed: {status}");
    path
}

fn boot(name: &str, disk: &Path, dir: &Path) -> Vm {
    boot_with(name, disk, dir, false)
}

fn boot_with(name: &str, disk: &Path, dir: &Path, reboot_allowed: bool) -> Vm {
    firmware_vm(name, disk, dir).reboot_allowed(reboot_allowed).boot().unwrap()
}

/// A VM whose OVMF (with its own copy of the variable store) boots `disk`.
fn firmware_vm(name: &str, disk: &Path, dir: &Path) -> VmBuilder {
    VmBuilder::firmware().name(name).ovmf(dir).unwrap().disk_qcow2(disk)
}

/// QEMU arguments for a read-only disk holding `file`, with serial number
/// `serial` (how the guest finds it).
fn serial_disk(serial: &str, file: &Path) -> [String; 4] {
    [
        "-drive".to_owned(),
        format!("file={},if=none,format=raw,readonly=on,id={serial}", file.display()),
        "-device".to_owned(),
        format!("virtio-blk-pci,drive={serial},serial={serial}"),
    ]
}

/// A guest shell command printing the device of the disk with `serial`.
fn find_disk(serial: &str) -> String {
    format!("for d in /sys/block/*; do [ \"$(cat $d/serial 2>/dev/null)\" = {serial} ] && echo /dev/${{d##*/}}; done")
}

/// The value of `key=` in a log line.
fn field(line: &str, key: &str) -> String {
    let rest = line.split(&format!(" {key}=")).nth(1).unwrap_or_else(|| panic!("no {key} in {line}"));
    rest.trim_start_matches('"').split(['"', ' ']).next().unwrap_or("").to_owned()
}

/// The machine id from the identity stage's line, and where it came from.
fn identity(line: &str) -> (String, String) {
    let field = |name: &str| {
        let rest = line.split(&format!("{name}=")).nth(1).unwrap_or_else(|| panic!("no {name} in {line}"));
        let value = rest.strip_prefix('"').map_or_else(
            || rest.split_whitespace().next().unwrap_or("").to_owned(),
            |quoted| quoted.split('"').next().unwrap_or("").to_owned(),
        );
        value
    };
    (field("machine_id"), field("source"))
}

/// Where a partition starts, in bytes, by its GPT label (sfdisk's JSON).
fn partition_offset(disk: &Path, label: &str) -> u64 {
    let out = Command::new("sfdisk").arg("--json").arg(disk).output().expect("sfdisk (util-linux)");
    assert!(out.status.success(), "sfdisk --json {}: {}", disk.display(), String::from_utf8_lossy(&out.stderr));
    let table: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let sector = table["partitiontable"]["sectorsize"].as_u64().unwrap_or(512);
    let partition = table["partitiontable"]["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == label)
        .unwrap_or_else(|| panic!("no partition labelled {label} in {}", disk.display()));
    partition["start"].as_u64().unwrap() * sector
}

#[test]
fn the_disk_image_boots_under_uefi_with_usr_verified_against_the_ukis_root_hash() {
    let image = ImagePaths::disk_from_env().expect("the disk image (run `cargo xtask image`)");
    let usr_hash = std::fs::read_to_string(&image.usr_hash).unwrap().trim().to_owned();
    let dir = tempfile::tempdir().unwrap();
    let disk = overlay(&image, dir.path(), None);
    let mut vm = boot("disk", &disk, dir.path());
    let cmdline = vm.expect("Command line:", BOOT).unwrap();
    assert!(cmdline.contains(&format!("usrhash={usr_hash}")), "the UKI's command line: {cmdline}");
    let usr = vm.expect("verified /usr mounted read-only", BOOT).unwrap();
    // Slot A's partitions: the second and third of the disk.
    assert!(usr.contains("data=/dev/vda2") && usr.contains("hashes=/dev/vda3"), "{usr}");
    assert!(usr.contains("device=/dev/dm-"), "{usr}");
    vm.expect("kelson: ready", BOOT).unwrap();
    vm.system_powerdown().unwrap();
    vm.expect("shutdown: power-off", Duration::from_secs(60)).unwrap();
    assert!(vm.wait_exit(Duration::from_secs(60)).unwrap().success());
}

#[test]
fn one_changed_byte_of_usr_stops_boot_in_maintenance_naming_the_verification_failure() {
    let image = ImagePaths::disk_from_env().expect("the disk image (run `cargo xtask image`)");
    let dir = tempfile::tempdir().unwrap();
    let disk = overlay(&image, dir.path(), None);
    // A byte in the squashfs's 40th block (well inside what /usr uses),
    // in the overlay only.
    let offset = partition_offset(&image.disk, "kelson-usr-a") + 40 * 4096 + 123;
    let status = Command::new("qemu-io")
        .args(["-f", "qcow2", "-c", &format!("write -P 0x5a {offset} 1")])
        .arg(&disk)
        .status()
        .expect("qemu-io (package qemu-utils)");
    assert!(status.success(), "qemu-io write failed: {status}");
    let mut vm = boot("corrupt", &disk, dir.path());
    let line = vm.expect("maintenance: boot stopped", BOOT).unwrap();
    assert!(line.contains("stage=usr"), "{line}");
    assert!(line.contains("/usr failed verification"), "{line}");
    let console = vm.console_text().unwrap();
    assert!(!console.contains("verified /usr mounted"), "an unverified /usr was mounted:\n{console}");
    assert!(!console.contains("kelson: ready"), "{console}");
}

#[test]
fn the_state_partition_is_made_from_the_free_space_kept_across_a_reboot_and_grown_with_the_disk() {
    let image = ImagePaths::disk_from_env().expect("the disk image (run `cargo xtask image`)");
    let dir = tempfile::tempdir().unwrap();
    // The qcow2 form of the image this time. It ends with its last
    // partition: 3 GiB leaves about 600 MiB free.
    let disk = overlay_of(&image.dir.join("kelson.qcow2"), "qcow2", dir.path(), Some("3G"));

    let mut vm = boot_with("state", &disk, dir.path(), true);
    let added = vm.expect("state partition added over the boot disk's free space", BOOT).unwrap();
    assert!(added.contains("device=/dev/vda6"), "{added}");
    vm.expect("state disk is blank: formatting it", BOOT).unwrap();
    vm.expect("state disk mounted on /var", BOOT).unwrap();
    let (id, source) = identity(&vm.expect("identity set", BOOT).unwrap());
    assert_ne!(source, "state disk", "a first boot has no kept machine id");
    vm.expect("kelson: ready", BOOT).unwrap();

    // A reboot: the same partition, not formatted again, and the id kept on it.
    vm.send_ctrl_alt_delete().unwrap();
    vm.expect("kelson-init starting as PID 1", BOOT).unwrap();
    vm.expect("state disk mounted on /var", BOOT).unwrap();
    let (again, source) = identity(&vm.expect("identity set", BOOT).unwrap());
    assert_eq!((again.as_str(), source.as_str()), (id.as_str(), "state disk"));
    vm.expect("kelson: ready", BOOT).unwrap();
    vm.system_powerdown().unwrap();
    vm.expect("shutdown: power-off", Duration::from_secs(60)).unwrap();
    assert!(vm.wait_exit(Duration::from_secs(60)).unwrap().success());
    let console = vm.console_text().unwrap();
    assert_eq!(console.matches("formatting it").count(), 1, "formatted twice:\n{console}");
    assert_eq!(console.matches("added over").count(), 1, "added twice:\n{console}");

    // The disk grows to 4 GiB: the partition and its filesystem follow.
    let status = Command::new("qemu-img").args(["resize", "-q"]).arg(&disk).arg("4G").status().unwrap();
    assert!(status.success(), "qemu-img resize failed: {status}");
    let mut vm = boot("grown", &disk, dir.path());
    let grown = vm.expect("state partition grown over the space the disk gained", BOOT).unwrap();
    let bytes: u64 = grown.split("bytes=").nth(1).and_then(|b| b.split_whitespace().next()).unwrap().parse().unwrap();
    assert!(bytes > 1500 << 20, "{grown}");
    vm.expect("state filesystem grown with its partition", BOOT).unwrap();
    let (kept, _) = identity(&vm.expect("identity set", BOOT).unwrap());
    assert_eq!(kept, id, "the machine id survives the growth");
    vm.expect("kelson: ready", BOOT).unwrap();
}

/// A/B updates end to end, in one VM that reboots as a node would: the
/// factory version installs a newer one into slot B, which boots on trial
/// and is marked good when ready; that one installs a broken newer version
/// into slot A (its command line stops boot in maintenance), which the
/// boot loader tries three times before falling back, and the node says so.
#[test]
fn a_newer_version_boots_on_trial_and_is_kept_and_a_broken_one_falls_back_after_its_tries() {
    let image = ImagePaths::disk_from_env().expect("the disk image (run `cargo xtask image`)");
    let bundles = image.dir.join("test-bundles");
    let dir = tempfile::tempdir().unwrap();
    let disk = overlay(&image, dir.path(), Some("3G"));
    let mut vm = firmware_vm("ab", &disk, dir.path())
        .layer(guest_layer_with_agent("/bin/busybox"))
        .qemu_args(serial_disk("update-good", &bundles.join("good.tar")))
        .qemu_args(serial_disk("update-broken", &bundles.join("broken.tar")))
        .reboot_allowed(true)
        .boot()
        .unwrap();
    let agent = Duration::from_secs(120);
    let install = |vm: &mut Vm, serial: &str| -> String {
        let out = vm
            .agent_exec(&format!("d=$({}); /usr/sbin/init update \"$d\"", find_disk(serial)), agent)
            .unwrap()
            .ok()
            .unwrap();
        out.output
    };

    // The factory version: slot A, no counter, nothing on trial.
    let booted = vm.expect("this version is not on trial", BOOT).unwrap();
    let factory = field(&booted, "version");
    let (good, broken) = (format!("{factory}.1"), format!("{factory}.2"));
    vm.expect("kelson: ready", BOOT).unwrap();
    let out = install(&mut vm, "update-good");
    assert!(
        out.contains(&format!("installed version {good} into kelson-usr-b; boot entry kelson-{good}+3.efi boots next")),
        "{out}"
    );

    // The new version boots from slot B on trial and is marked good.
    vm.send_ctrl_alt_delete().unwrap();
    vm.reset_agent();
    // Slot B: the disk's fourth and fifth partitions (the disk's name
    // depends on the order the firmware found the VM's disks in).
    let usr = vm.expect("verified /usr mounted read-only", BOOT).unwrap();
    assert!(field(&usr, "data").ends_with('4') && field(&usr, "hashes").ends_with('5'), "slot B: {usr}");
    let trial = vm.expect("this version is on trial", BOOT).unwrap();
    assert_eq!(field(&trial, "version"), good, "{trial}");
    assert_eq!(field(&trial, "entry"), format!("kelson-{good}+2-1.efi"), "{trial}");
    vm.expect("kelson: ready", BOOT).unwrap();
    let marked = vm.expect("marked good", BOOT).unwrap();
    assert_eq!(field(&marked, "entry"), format!("kelson-{good}.efi"), "{marked}");
    let release = vm.agent_exec("cat /usr/lib/os-release", agent).unwrap().ok().unwrap().output;
    assert!(release.contains(&format!("IMAGE_VERSION=\"{good}\"")), "{release}");

    // A broken newer version goes into slot A, replacing the factory one.
    let out = install(&mut vm, "update-broken");
    assert!(out.contains(&format!("removed boot entry kelson-{factory}.efi")), "{out}");
    assert!(out.contains(&format!("installed version {broken} into kelson-usr-a")), "{out}");
    vm.send_ctrl_alt_delete().unwrap();
    vm.reset_agent();
    for tries_left in [2, 1, 0] {
        let stopped = vm.expect("maintenance: boot stopped", BOOT).unwrap();
        assert!(stopped.contains("kelson.stat"), "{stopped}");
        let counted = vm.expect("did not reach ready: rebooting", BOOT).unwrap();
        assert_eq!(field(&counted, "tries_left"), tries_left.to_string(), "{counted}");
    }

    // Its tries ran out: the boot loader falls back to the good version,
    // which names the version that failed.
    let fallback = vm.expect("never reached ready in 3 tries", BOOT).unwrap();
    assert_eq!(field(&fallback, "failed_version"), broken, "{fallback}");
    assert_eq!(field(&fallback, "running"), good, "{fallback}");
    vm.expect("kelson: ready", BOOT).unwrap();
    let release = vm.agent_exec("cat /usr/lib/os-release", agent).unwrap().ok().unwrap().output;
    assert!(release.contains(&format!("IMAGE_VERSION=\"{good}\"")), "{release}");
    vm.system_powerdown().unwrap();
    vm.expect("shutdown: power-off", Duration::from_secs(60)).unwrap();
}
