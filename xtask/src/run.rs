//! `cargo xtask run`: one node on the console. No network device at all:
//! the guest must never reach a real network.

use crate::image::ImagePaths;
use anyhow::{bail, Context, Result};
use std::process::Command;

pub fn boot_interactive(paths: &ImagePaths) -> Result<()> {
    eprintln!("xtask: booting one Kelson node in QEMU (software emulation; expect 10-20 s to `kelson: ready`)");
    eprintln!("xtask: quit with ctrl-a x; power the node off with ctrl-a c, then `system_powerdown`");
    let status = Command::new("qemu-system-x86_64")
        .args(["-machine", "q35", "-accel", "tcg", "-cpu", "max", "-m", "1024", "-smp", "2"])
        .args(["-nographic", "-nic", "none"])
        .arg("-kernel")
        .arg(&paths.kernel)
        .arg("-initrd")
        .arg(&paths.initrd)
        .args(["-append", "console=ttyS0"])
        .status()
        .context("starting qemu-system-x86_64")?;
    if !status.success() {
        bail!("QEMU ended with {status}");
    }
    Ok(())
}
