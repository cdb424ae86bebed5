//! The UKI (`kelson.efi`) boots under real UEFI firmware (Debian's OVMF):
//! the firmware starts the UKI, systemd-stub hands the kernel its embedded
//! initramfs and command line, and the node reaches ready.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use qemu_tests::{ImagePaths, VmBuilder};
use std::time::Duration;

#[test]
fn the_uki_boots_to_ready_under_ovmf_and_powers_off() {
    let image = ImagePaths::from_env().expect("the node image (run `cargo xtask image`)");
    let dir = tempfile::tempdir().unwrap();
    let mut vm = VmBuilder::new(&image.uki).name("uki").ovmf(dir.path()).unwrap().boot().unwrap();
    let pid1 = vm.expect("kelson-init starting as PID 1", Duration::from_secs(300)).unwrap();
    assert!(pid1.contains("kelson:"), "{pid1}");
    vm.expect("watching power button", Duration::from_secs(120)).unwrap();
    vm.expect("kelson: ready", Duration::from_secs(120)).unwrap();
    vm.system_powerdown().unwrap();
    vm.expect("shutdown: power-off", Duration::from_secs(60)).unwrap();
    assert!(vm.wait_exit(Duration::from_secs(60)).unwrap().success());
}
