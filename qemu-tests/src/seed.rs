//! NoCloud seed volumes for test nodes: a FAT image labelled CIDATA, made
//! with mkfs.fat and mtools (the build host has no vfat driver to mount).

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

fn run(cmd: &mut Command) -> Result<()> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// `dir/seed.img`, holding `files` (name, content), e.g. `meta-data` and
/// `user-data`; the files are also left in `dir`.
pub fn fat_seed(dir: &Path, files: &[(&str, &str)]) -> Result<PathBuf> {
    let image = dir.join("seed.img");
    run(Command::new("mkfs.fat").args(["-C", "-n", "CIDATA"]).arg(&image).arg("2048"))?;
    for (name, content) in files {
        let local = dir.join(name);
        std::fs::write(&local, content).with_context(|| format!("writing {}", local.display()))?;
        run(Command::new("mcopy").arg("-i").arg(&image).arg(&local).arg(format!("::{name}")))?;
    }
    Ok(image)
}
