//! `cargo xtask bench`: numbers measured inside the guest (and, for `api`,
//! first on the host).

use crate::image::ImagePaths;
use anyhow::{bail, Context, Result};
use std::path::Path;

pub fn run(root: &Path, paths: &ImagePaths, which: &str, options: &[String]) -> Result<()> {
    let bin = match which {
        "boot" => "bench-boot",
        "net" => "bench-net",
        "supervise" => "bench-supervise",
        "pods" => "bench-pods",
        "usr" => "bench-usr",
        "memory" => "bench-memory",
        "cluster" => "bench-cluster",
        "api" => "bench-api",
        "vs-systemd" => "bench-vs-systemd",
        other => bail!(
            "unknown benchmark {other:?} (known: boot, net, supervise, pods, usr, memory, cluster, api, vs-systemd)"
        ),
    };
    let build_only = match options {
        [] => false,
        [option] if which == "vs-systemd" && option == "--build-only" => true,
        _ => bail!("bench {which}: unknown options {options:?} (vs-systemd takes --build-only)"),
    };
    // All of qemu-tests' programs: a benchmark copies some into the guest.
    let built = std::process::Command::new("cargo")
        .current_dir(root)
        .args(["build", "--release", "--quiet", "-p", "qemu-tests", "--bins"])
        .status()
        .context("building the benchmark programs")?;
    if !built.success() {
        bail!("building the benchmark programs failed ({built})");
    }
    let mut command = std::process::Command::new("cargo");
    command.current_dir(root).env("KELSON_IMAGE_DIR", &paths.dir);
    if which == "usr" {
        // The image's tools tree (Debian trixie) has the mkfs.erofs that
        // writes every compressor the node kernel reads.
        command.env("KELSON_TOOLS_TREE", crate::image::tools_tree(root, &paths.dir)?);
    }
    if which == "cluster" {
        // The Kubernetes builds it sizes and the flags of the Go build it
        // times: the multi-call one is built (or found cached); the separate
        // one only named, since building it cold takes tens of minutes.
        use crate::kubernetes::{self, Layout};
        let release = kubernetes::pinned(root)?;
        command
            .env("KELSON_KUBERNETES_MULTICALL", kubernetes::build(root, Layout::Multicall)?)
            .env("KELSON_KUBERNETES_SEPARATE", kubernetes::build_dir(root, Layout::Separate)?)
            .env("KELSON_KUBERNETES_WRAPPER", root.join("image/kubernetes"))
            .env("KELSON_KUBERNETES_LDFLAGS", kubernetes::version_ldflags(&release));
    }
    if which == "vs-systemd" {
        // The systemd node it compares with, built from this tree's
        // rendering and the node image just built.
        let fixture = crate::bench_systemd::build(root, paths)?;
        if build_only {
            eprintln!("xtask: the systemd node is in {}", fixture.display());
            return Ok(());
        }
        command.env("KELSON_BENCH_SYSTEMD_DIR", fixture);
    }
    let status = command
        .args(["run", "--release", "--quiet", "-p", "qemu-tests", "--bin", bin])
        .status()
        .with_context(|| format!("starting the {which} benchmark"))?;
    if !status.success() {
        bail!("{which} benchmark failed ({status})");
    }
    Ok(())
}
