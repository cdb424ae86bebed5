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

const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";
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

/// A VM with `firmware` (UEFI gets a private copy of the variable store in
/// `dir`; BIOS is QEMU's default SeaBIOS) and the ISO as a CD.
fn builder(name: &str, firmware: Firmware, iso: &Path, dir: &Path) -> VmBuilder {
    let mut vm = VmBuilder::firmware().name(name);
    if firmware == Firmware::Uefi {
        let vars = dir.join("vars.fd");
        std::fs::copy(OVMF_VARS, &vars).expect("OVMF variable store (package ovmf)");
        vm = vm
            .qemu_args(["-drive".to_owned(), format!("if=pflash,format=raw,readonly=on,file={OVMF_CODE}")])
            .qemu_args(["-drive".to_owned(), format!("if=pflash,format=raw,file={}", vars.display())]);
    }
    vm.qemu_args(cd_args(iso, 1))
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
