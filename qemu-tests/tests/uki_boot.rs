//! The UKI (`kelson.efi`) boots under real UEFI firmware (Debian's OVMF):
//! the firmware starts the UKI, systemd-stub hands the kernel its embedded
//! initramfs and command line, and the node reaches ready.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use qemu_tests::{ImagePaths, VmBuilder};
use std::time::Duration;

const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";

#[test]
fn the_uki_boots_to_ready_under_ovmf_and_powers_off() {
    let image = ImagePaths::from_env().expect("the node image (run `cargo xtask image`)");
    let dir = tempfile::tempdir().unwrap();
    let vars = dir.path().join("vars.fd");
    std::fs::copy(OVMF_VARS, &vars).expect("OVMF variable store (package ovmf)");
    let mut vm = VmBuilder::new(&image.uki)
        .name("uki")
        .qemu_args(["-drive".to_owned(), format!("if=pflash,format=raw,readonly=on,file={OVMF_CODE}")])
        .qemu_args(["-drive".to_owned(), format!("if=pflash,format=raw,file={}", vars.display())])
        .boot()
        .unwrap();
    let pid1 = vm.expect("kelson-init starting as PID 1", Duration::from_secs(300)).unwrap();
    assert!(pid1.contains("kelson:"), "{pid1}");
    vm.expect("watching power button", Duration::from_secs(120)).unwrap();
    vm.expect("kelson: ready", Duration::from_secs(120)).unwrap();
    vm.system_powerdown().unwrap();
    vm.expect("shutdown: power-off", Duration::from_secs(60)).unwrap();
    assert!(vm.wait_exit(Duration::from_secs(60)).unwrap().success());
}
