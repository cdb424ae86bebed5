//! Locating the image artifacts that `cargo xtask image` builds.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// Environment variable naming the directory with the image artifacts.
pub const IMAGE_DIR_ENV: &str = "KELSON_IMAGE_DIR";

/// The files of a built Kelson image (mkosi's split artifacts).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImagePaths {
    /// The directory holding them.
    pub dir: PathBuf,
    /// The kernel, `vmlinuz`.
    pub kernel: PathBuf,
    /// The zstd-compressed whole-root initramfs, `kelson.initrd`.
    pub initrd: PathBuf,
    /// The unified kernel image, `kelson.efi`.
    pub uki: PathBuf,
    /// The GPT disk image, `kelson.raw` (booted by firmware).
    pub disk: PathBuf,
    /// The root hash of the disk image's /usr, `kelson.usrhash`.
    pub usr_hash: PathBuf,
}

impl ImagePaths {
    /// `dir/disk.qcow2`: a copy-on-write overlay of the raw disk image,
    /// `size` large (`8G`; the state partition takes what the image does
    /// not), so a VM writes its disk without touching the image.
    pub fn disk_overlay(&self, dir: &Path, size: &str) -> Result<PathBuf> {
        let path = dir.join("disk.qcow2");
        let status = std::process::Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
            .arg(&self.disk)
            .arg(&path)
            .arg(size)
            .status()
            .context("running qemu-img create (package qemu-utils)")?;
        if !status.success() {
            bail!("qemu-img create of an overlay of {} failed ({status})", self.disk.display());
        }
        Ok(path)
    }

    /// The paths inside `dir`, without checking that they exist.
    pub fn in_dir(dir: impl Into<PathBuf>) -> Self {
        let dir = dir.into();
        Self {
            kernel: dir.join("vmlinuz"),
            initrd: dir.join("kelson.initrd"),
            uki: dir.join("kelson.efi"),
            disk: dir.join("kelson.raw"),
            usr_hash: dir.join("kelson.usrhash"),
            dir,
        }
    }

    /// The directory named by `KELSON_IMAGE_DIR`, or else
    /// `<workspace>/target/image`, without checking anything.
    pub fn locate() -> Self {
        match std::env::var_os(IMAGE_DIR_ENV) {
            Some(dir) if !dir.is_empty() => Self::in_dir(dir),
            _ => Self::in_dir(default_image_dir()),
        }
    }

    /// Like [`ImagePaths::locate`], but fails, saying how to build the
    /// image, unless the kernel, initrd and UKI all exist.
    pub fn from_env() -> Result<Self> {
        let paths = Self::locate();
        paths.check(&[&paths.kernel, &paths.initrd, &paths.uki])?;
        Ok(paths)
    }

    /// Like [`ImagePaths::from_env`], but requires the disk image and its
    /// root hash instead.
    pub fn disk_from_env() -> Result<Self> {
        let paths = Self::locate();
        paths.check(&[&paths.disk, &paths.usr_hash])?;
        Ok(paths)
    }

    /// Like [`ImagePaths::from_env`], but only requires the kernel.
    pub fn kernel_from_env() -> Result<Self> {
        let paths = Self::locate();
        paths.check(&[&paths.kernel])?;
        Ok(paths)
    }

    fn check(&self, required: &[&Path]) -> Result<()> {
        let missing: Vec<String> = required.iter().filter(|p| !p.is_file()).map(|p| p.display().to_string()).collect();
        if !missing.is_empty() {
            bail!(
                "Kelson image artifacts missing: {} (looked in {}, taken from {}). \
                 Run `cargo xtask image` to build the image, or point {IMAGE_DIR_ENV} at a \
                 directory holding vmlinuz, kelson.initrd and kelson.efi.",
                missing.join(", "),
                self.dir.display(),
                if std::env::var_os(IMAGE_DIR_ENV).is_some_and(|v| !v.is_empty()) {
                    IMAGE_DIR_ENV.to_owned()
                } else {
                    format!("the default; {IMAGE_DIR_ENV} is unset")
                }
            );
        }
        Ok(())
    }
}

/// `<workspace>/target/image`, the workspace being this crate's parent.
fn default_image_dir() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).join("target").join("image")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_inside_dir() {
        let p = ImagePaths::in_dir("/x");
        assert_eq!(p.kernel, Path::new("/x/vmlinuz"));
        assert_eq!(p.initrd, Path::new("/x/kelson.initrd"));
        assert_eq!(p.uki, Path::new("/x/kelson.efi"));
    }

    #[test]
    fn missing_files_say_how_to_build() {
        let tmp = tempfile::tempdir().unwrap();
        let p = ImagePaths::in_dir(tmp.path());
        let err = p.check(&[&p.kernel, &p.uki]).unwrap_err().to_string();
        assert!(err.contains("cargo xtask image"), "{err}");
        assert!(err.contains("vmlinuz"), "{err}");
        assert!(err.contains("kelson.efi"), "{err}");
    }

    #[test]
    fn default_dir_is_under_workspace_target() {
        let d = default_image_dir();
        assert!(d.ends_with("target/image"), "{}", d.display());
        assert!(d.parent().unwrap().parent().unwrap().join("Cargo.toml").is_file());
    }
}
