//! The systemd node `cargo xtask bench vs-systemd` compares Kelson's with:
//! a disk image built by mkosi from `image/bench-systemd/` (same Debian
//! trixie packages, kernel and kernel modules as the node image), with the
//! node's files from `bench-vs-systemd prepare` (qemu-tests), the pinned
//! Kubernetes build and the node image's image store. A benchmark fixture:
//! only this command builds it, into `target/bench-systemd/`.

use crate::image::ImagePaths;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Where the fixture and its inputs live, under the workspace.
pub fn fixture_dir(root: &Path) -> PathBuf {
    root.join("target/bench-systemd")
}

/// The kernel modules the node image keeps (`KernelModulesInclude=` of
/// image/mkosi.conf), for the systemd node to keep the same ones.
fn node_image_modules(root: &Path) -> Result<Vec<String>> {
    let path = root.join("image/mkosi.conf");
    let conf = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let Some(rest) = conf.split("KernelModulesInclude=").nth(1) else {
        bail!("{} has no KernelModulesInclude= list", path.display());
    };
    let modules: Vec<String> =
        rest.lines().skip(1).take_while(|l| l.starts_with(' ')).map(|l| l.trim().to_owned()).collect();
    if modules.is_empty() {
        bail!("{}'s KernelModulesInclude= list is empty", path.display());
    }
    Ok(modules)
}

/// `/usr/bin/kubernetes` and its links, as the node image has them, in an
/// extra tree of their own.
fn kubernetes_tree(root: &Path, dir: &Path) -> Result<PathBuf> {
    let build = crate::kubernetes::build(root, crate::kubernetes::Layout::Multicall)?;
    let tree = dir.join("kubernetes-extra");
    if tree.exists() {
        std::fs::remove_dir_all(&tree).with_context(|| format!("clearing {}", tree.display()))?;
    }
    let bin = tree.join("usr/bin");
    std::fs::create_dir_all(&bin).with_context(|| format!("creating {}", bin.display()))?;
    let binary = build.join(crate::kubernetes::MULTICALL_BINARY);
    let target = bin.join(crate::kubernetes::MULTICALL_BINARY);
    // A hard link when the cache is on the same filesystem: 139 MB.
    if std::fs::hard_link(&binary, &target).is_err() {
        std::fs::copy(&binary, &target).with_context(|| format!("copying {}", binary.display()))?;
    }
    for &program in crate::image::NODE_PROGRAMS {
        std::os::unix::fs::symlink(crate::kubernetes::MULTICALL_BINARY, bin.join(program))
            .with_context(|| format!("linking /usr/bin/{program} in {}", tree.display()))?;
    }
    Ok(tree)
}

/// Builds the systemd node's disk image (raw, and as qcow2 for its size)
/// into [`fixture_dir`]; the node image must have been built first.
pub fn build(root: &Path, node_image: &ImagePaths) -> Result<PathBuf> {
    let dir = fixture_dir(root);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    eprintln!("xtask: writing the systemd node's files (bench-vs-systemd prepare)");
    let status = Command::new("cargo")
        .current_dir(root)
        .args(["run", "--release", "--quiet", "-p", "qemu-tests", "--bin", "bench-vs-systemd", "--", "prepare"])
        .arg(&dir)
        .status()
        .context("running bench-vs-systemd prepare")?;
    if !status.success() {
        bail!("bench-vs-systemd prepare {} failed ({status})", dir.display());
    }
    let kubernetes = kubernetes_tree(root, &dir)?;
    let modules = node_image_modules(root)?;

    let _cache_lock = crate::image::lock_cache()?;
    let tools = crate::image::tools_tree(root, &dir)?;
    let out = dir.join("out");
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let args = vec![
        format!("--tools-tree={}", tools.display()),
        format!("--extra-tree={}", dir.join("extra").display()),
        format!("--extra-tree={}", kubernetes.display()),
        format!("--extra-tree={}:/usr/lib/kelson/images", node_image.images.display()),
        "--kernel-modules-exclude=.*".to_owned(),
        format!("--kernel-modules-include={}", modules.join(",")),
        format!("--output-dir={}", out.display()),
        // Its own incremental cache: mkosi names the cache by distribution,
        // release and architecture only, so sharing the node image's would
        // replace one package set with the other at every build.
        format!("--cache-dir={}/mkosi-cache-bench-systemd", crate::image::CACHE_ROOT),
        "--force".into(),
        "build".into(),
    ];
    crate::image::mkosi(&args, &root.join("image/bench-systemd"), &dir.join("mkosi.log"), "the systemd node")?;
    let raw = out.join("bench-systemd.raw");
    if !raw.is_file() {
        bail!("mkosi wrote no {}", raw.display());
    }
    let qcow2 = dir.join("bench-systemd.qcow2");
    let _ = std::fs::remove_file(&qcow2);
    crate::progress::run(
        Command::new("qemu-img").arg("convert").args(["-f", "raw", "-O", "qcow2"]).arg(&raw).arg(&qcow2),
        "qemu-img convert bench-systemd.raw to bench-systemd.qcow2",
    )?;
    Ok(dir)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_systemd_node_keeps_the_node_images_kernel_modules() {
        let modules = super::node_image_modules(&crate::workspace_root()).unwrap();
        assert!(modules.iter().any(|m| m == "/virtio[-_]net\\.ko"), "{modules:?}");
        assert!(modules.iter().all(|m| m.starts_with('/') && !m.contains(',')), "{modules:?}");
    }
}
