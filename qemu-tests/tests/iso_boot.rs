//! The hybrid ISO (`kelson.iso`) booted as a CD by real firmware: under
//! UEFI (Debian's OVMF, systemd-boot and the ISO's UKI from the El Torito EFI
//! image) and under legacy BIOS (QEMU's SeaBIOS, isolinux). Either way PID 1
//! finds no partition of the ISO's root hash, finds the ISO by its volume id
//! and mounts /usr from the ISO's files through dm-verity: a live node.
//!
//! The CD is on q35's AHCI controller (`ide-cd`), as a SATA optical drive.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use qemu_tests::{ImagePaths, Vm, VmBuilder};
use std::path::{Path, PathBuf};
use std::time::Duration;

const BOOT: Duration = Duration::from_secs(300);

/// The ISO and the root hash of its /usr, from the image directory.
fn iso() -> (PathBuf, String) {
    let dir = ImagePaths::locate().dir;
    let iso = dir.join("kelson.iso");
    assert!(iso.is_file(), "{} is missing (run `cargo xtask image`)", iso.display());
    let hash = std::fs::read_to_string(dir.join("kelson-iso.usrhash")).expect("kelson-iso.usrhash beside the ISO");
    (iso, hash.trim().to_owned())
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Firmware {
    Uefi,
    Bios,
}

/// QEMU arguments for the ISO as a CD on the AHCI controller, booted
/// `bootindex`-th.
fn cd_args(iso: &Path, bootindex: u32) -> Vec<String> {
    vec![
        "-drive".to_owned(),
        format!("file={},format=raw,media=cdrom,readonly=on,if=none,id=cd", iso.display()),
        "-device".to_owned(),
        format!("ide-cd,drive=cd,bus=ide.0,bootindex={bootindex}"),
    ]
}

/// A VM booted by `firmware` (UEFI gets a private copy of the variable
/// store in `dir`; BIOS is QEMU's default SeaBIOS).
fn firmware_vm(name: &str, firmware: Firmware, dir: &Path) -> VmBuilder {
    let vm = VmBuilder::firmware().name(name);
    if firmware == Firmware::Bios {
        return vm;
    }
    vm.ovmf(dir).unwrap()
}

/// A VM with `firmware` and the ISO as a CD.
fn builder(name: &str, firmware: Firmware, iso: &Path, dir: &Path) -> VmBuilder {
    firmware_vm(name, firmware, dir).qemu_args(cd_args(iso, 1))
}

/// Boots to ready and checks /usr came verified from the ISO on the CD.
fn boots_live(vm: &mut Vm, usr_hash: &str) {
    let cmdline = vm.expect("Command line:", BOOT).unwrap();
    assert!(cmdline.contains(&format!("usrhash={usr_hash}")), "the ISO's command line: {cmdline}");
    let usr = vm.expect("live: verified /usr mounted read-only from the Kelson ISO", BOOT).unwrap();
    assert!(usr.contains("iso=/dev/sr0") && usr.contains("device=/dev/dm-"), "{usr}");
    vm.expect("kelson: ready", BOOT).unwrap();
    let console = vm.console_text().unwrap();
    assert!(!console.contains("maintenance"), "{console}");
    vm.system_powerdown().unwrap();
    vm.expect("shutdown: power-off", Duration::from_secs(60)).unwrap();
    assert!(vm.wait_exit(Duration::from_secs(60)).unwrap().success());
}

#[test]
fn the_iso_boots_as_a_cd_under_uefi_to_a_live_node_with_usr_verified_from_the_iso() {
    let (iso, usr_hash) = iso();
    let dir = tempfile::tempdir().unwrap();
    let mut vm = builder("iso-uefi", Firmware::Uefi, &iso, dir.path()).boot().unwrap();
    boots_live(&mut vm, &usr_hash);
}

#[test]
fn the_iso_boots_as_a_cd_under_seabios_to_a_live_node_with_usr_verified_from_the_iso() {
    let (iso, usr_hash) = iso();
    let dir = tempfile::tempdir().unwrap();
    let mut vm = builder("iso-bios", Firmware::Bios, &iso, dir.path()).boot().unwrap();
    boots_live(&mut vm, &usr_hash);
}

/// The ISO written to a disk (a USB stick, here a read-only virtio disk):
/// the firmware boots it through the hybrid MBR (BIOS) or GPT (UEFI), and
/// PID 1 finds the ISO on `/dev/vda`.
fn boots_live_from_a_disk(firmware: Firmware, name: &str) {
    let (iso, usr_hash) = iso();
    let dir = tempfile::tempdir().unwrap();
    let mut vm = firmware_vm(name, firmware, dir.path())
        .qemu_args([
            "-drive".to_owned(),
            format!("file={},format=raw,readonly=on,if=none,id=stick", iso.display()),
            "-device".to_owned(),
            "virtio-blk-pci,drive=stick,bootindex=0".to_owned(),
        ])
        .boot()
        .unwrap();
    let cmdline = vm.expect("Command line:", BOOT).unwrap();
    assert!(cmdline.contains(&format!("usrhash={usr_hash}")), "the ISO's command line: {cmdline}");
    let usr = vm.expect("live: verified /usr mounted read-only from the Kelson ISO", BOOT).unwrap();
    assert!(usr.contains("iso=/dev/vda"), "{usr}");
    vm.expect("kelson: ready", BOOT).unwrap();
}

#[test]
fn the_iso_as_a_disk_boots_a_live_node_under_uefi() {
    boots_live_from_a_disk(Firmware::Uefi, "iso-disk-uefi");
}

#[test]
fn the_iso_as_a_disk_boots_a_live_node_under_seabios() {
    boots_live_from_a_disk(Firmware::Bios, "iso-disk-bios");
}

/// Install timeouts: the ISO writes a 2.4 GiB disk image and reads it back,
/// under emulation.
const INSTALL: Duration = Duration::from_secs(1500);

/// A NoCloud seed asking for an install onto `/dev/vda` (`wipe` as given),
/// for q35's second AHCI port (`/dev/sda`), so the disks on virtio keep
/// their names.
fn install_seed_args(dir: &Path, wipe: bool) -> Vec<String> {
    let user_data = format!(
        "apiVersion: kelson.dev/v1alpha1\nkind: MachineConfig\ninstall:\n  disk: /dev/vda\n{}",
        if wipe { "  wipe: true\n" } else { "" }
    );
    let seed = qemu_tests::seed::fat_seed(dir, &[("meta-data", "instance-id: install-1\n"), ("user-data", &user_data)])
        .unwrap();
    vec![
        "-drive".to_owned(),
        format!("file={},format=raw,if=none,id=seed", seed.display()),
        "-device".to_owned(),
        "ide-hd,drive=seed,bus=ide.1".to_owned(),
    ]
}

/// `disk` as the virtio disk `/dev/vda`, booted first (`bootindex=0`): a
/// disk with nothing bootable falls through to the CD.
fn target_disk_args(disk: &Path) -> Vec<String> {
    vec![
        "-drive".to_owned(),
        format!("file={},format=raw,if=none,id=target", disk.display()),
        "-device".to_owned(),
        "virtio-blk-pci,drive=target,bootindex=0".to_owned(),
    ]
}

fn sha256_of(path: &Path) -> String {
    use sha2::{Digest, Sha256};
    let mut file = std::fs::File::open(path).unwrap();
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher).unwrap();
    hasher.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn with_install_disk_in_the_config_the_iso_installs_onto_a_blank_disk_which_then_boots_itself_to_ready() {
    let (iso, _) = iso();
    let disk_hash = std::fs::read_to_string(ImagePaths::locate().usr_hash).expect("kelson.usrhash");
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("target.raw");
    // Blank (sparse zeros), larger than the 2.4 GiB image.
    std::fs::File::create(&disk).unwrap().set_len(3 << 30).unwrap();
    let mut vm = builder("iso-install", Firmware::Uefi, &iso, dir.path())
        .qemu_args(target_disk_args(&disk))
        .qemu_args(install_seed_args(dir.path(), false))
        .reboot_allowed(true)
        .boot()
        .unwrap();
    vm.expect("live: verified /usr mounted read-only from the Kelson ISO", BOOT).unwrap();
    let start = vm.expect("install: writing the disk image from the Kelson ISO", BOOT).unwrap();
    assert!(start.contains("disk=/dev/vda") && start.contains("wipe=false"), "{start}");
    let done = vm.expect("install: written and read back matching", INSTALL).unwrap();
    assert!(done.contains("disk=/dev/vda"), "{done}");

    // The reboot: the firmware now finds the disk bootable, PID 1 finds
    // /usr on its partitions (the disk image's root hash, not the ISO's).
    let cmdline = vm.expect("Command line:", BOOT).unwrap();
    assert!(cmdline.contains(&format!("usrhash={}", disk_hash.trim())), "the disk's UKI: {cmdline}");
    vm.expect("kelson-init starting as PID 1", BOOT).unwrap();
    let usr = vm.expect("verified /usr mounted read-only", BOOT).unwrap();
    assert!(!usr.contains("live:"), "the second boot came from the ISO again: {usr}");
    assert!(usr.contains("data=/dev/vda2") && usr.contains("hashes=/dev/vda3"), "{usr}");
    let skipped = vm.expect("install.disk is set but this node did not boot from the Kelson ISO", BOOT).unwrap();
    assert!(skipped.contains("disk=/dev/vda"), "{skipped}");
    vm.expect("kelson: ready", BOOT).unwrap();
    let console = vm.console_text().unwrap();
    assert_eq!(console.matches("install: writing the disk image").count(), 1, "installed twice:\n{console}");
    vm.system_powerdown().unwrap();
    vm.expect("shutdown: power-off", Duration::from_secs(60)).unwrap();
    assert!(vm.wait_exit(Duration::from_secs(60)).unwrap().success());
}

#[test]
fn the_iso_refuses_to_install_onto_a_disk_holding_a_filesystem_and_changes_no_byte_of_it() {
    let (iso, _) = iso();
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("ext4.raw");
    std::fs::File::create(&disk).unwrap().set_len(64 << 20).unwrap();
    let status = std::process::Command::new("mke2fs")
        .args(["-q", "-F", "-t", "ext4"])
        .arg(&disk)
        .status()
        .expect("mke2fs (package e2fsprogs)");
    assert!(status.success(), "mke2fs failed: {status}");
    let before = sha256_of(&disk);
    let mut vm = builder("iso-refuse", Firmware::Uefi, &iso, dir.path())
        .qemu_args(target_disk_args(&disk))
        .qemu_args(install_seed_args(dir.path(), false))
        .boot()
        .unwrap();
    vm.expect("live: verified /usr mounted read-only from the Kelson ISO", BOOT).unwrap();
    let line = vm.expect("maintenance: boot stopped", BOOT).unwrap();
    assert!(line.contains("stage=install"), "{line}");
    assert!(
        line.contains(
            "refusing to install Kelson on /dev/vda: it holds an ext2/ext3/ext4 filesystem; no byte was written"
        ),
        "{line}"
    );
    assert!(line.contains("install.wipe: true"), "the message says how to override: {line}");
    vm.quit().unwrap();
    assert_eq!(sha256_of(&disk), before, "the refused disk was changed");
}
