//! `cargo xtask bench`: numbers measured inside the guest.

use crate::image::ImagePaths;
use anyhow::{bail, Context, Result};
use std::path::Path;

pub fn run(root: &Path, paths: &ImagePaths, which: &str) -> Result<()> {
    match which {
        "boot" => {
            let status = std::process::Command::new("cargo")
                .current_dir(root)
                .env("KELSON_IMAGE_DIR", &paths.dir)
                .args(["run", "--release", "--quiet", "-p", "qemu-tests", "--bin", "bench-boot"])
                .status()
                .context("starting the boot benchmark")?;
            if !status.success() {
                bail!("boot benchmark failed ({status})");
            }
            Ok(())
        }
        other => bail!("unknown benchmark {other:?} (known: boot)"),
    }
}
