//! `cargo xtask`: the project's one driver.
//!
//! ```text
//! cargo xtask run      install what is missing, build the image, boot a node in QEMU
//! cargo xtask test     style gates (fmt, clippy), unit tests, image build, kernel config check, QEMU tests
//! cargo xtask image    build target/image/{vmlinuz,kelson.initrd,kelson.efi}
//! cargo xtask deps     only install the host packages
//! cargo xtask bench    boot benchmarks measured inside the guest
//! cargo xtask fuzz     fuzz the config, seed and pod manifest parsers for a bounded time
//! ```

mod bench;
mod deps;
mod fuzz;
mod image;
mod kubernetes;
mod progress;
mod run;

use anyhow::{bail, Result};
use std::path::PathBuf;
use std::process::Command;
use std::process::ExitCode;

fn workspace_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(PathBuf::from).unwrap_or(manifest)
}

fn usage() -> &'static str {
    "usage: cargo xtask <run|test|image|deps|bench> [options]\n\
     \n  run            build the image and boot one node in QEMU (quit with ctrl-a x)\
     \n  test           fmt + clippy gates, unit tests, image build + kernel config check + QEMU tests\
     \n  image [--kubelet PATH] [--kube-proxy PATH]\
     \n                 build the node image into target/image/\
     \n  kubernetes pin VERSION | build [--separate]\
     \n                 rewrite image/kubernetes/go.mod for a release | build its programs\
     \n  deps           install the host packages the other commands need\
     \n  bench [boot|net|supervise|pods]  benchmarks measured inside the guest\
     \n  fuzz [SECS]    fuzz the config, cloud-init seed and pod manifest parsers (default 60 s per target)"
}

fn main() -> ExitCode {
    match main_exec() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e}");
            for cause in e.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::FAILURE
        }
    }
}

fn main_exec() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let root = workspace_root();
    match args.first().map(String::as_str) {
        Some("deps") => deps::ensure(),
        Some("image") => {
            let inputs = image::Inputs::parse(&args[1..])?;
            deps::ensure()?;
            image::build(&root, &inputs).map(|_| ())
        }
        Some("run") => {
            deps::ensure()?;
            let paths = image::build(&root, &image::Inputs::parse(&[])?)?;
            run::boot_interactive(&paths)
        }
        Some("test") => test(&root, &args[1..]),
        Some("bench") => {
            deps::ensure()?;
            let paths = image::build(&root, &image::Inputs::parse(&[])?)?;
            bench::run(&root, &paths, args.get(1).map(String::as_str).unwrap_or("boot"))
        }
        Some("fuzz") => {
            let seconds = match args.get(1) {
                Some(s) => s.parse().map_err(|_| anyhow::anyhow!("fuzz: {s:?} is not a number of seconds"))?,
                None => 60,
            };
            fuzz::run(&root, seconds)
        }
        Some("kubernetes") => match (args.get(1).map(String::as_str), args.get(2)) {
            (Some("pin"), Some(version)) => kubernetes::pin(&root, version),
            (Some("build"), layout) => {
                let layout = match layout.map(String::as_str) {
                    None => kubernetes::Layout::Multicall,
                    Some("--separate") => kubernetes::Layout::Separate,
                    Some(other) => bail!("kubernetes build: unknown option {other:?} (known: --separate)"),
                };
                kubernetes::build(&root, layout).map(|dir| println!("{}", dir.display()))
            }
            _ => bail!("usage: cargo xtask kubernetes <pin VERSION|build [--separate]>"),
        },
        Some("-h") | Some("--help") | None => {
            println!("{}", usage());
            Ok(())
        }
        Some(other) => bail!("unknown command {other:?}\n{}", usage()),
    }
}

/// The whole suite, in the order a failure is cheapest to find.
fn test(root: &std::path::Path, extra: &[String]) -> Result<()> {
    if !deps::is_root() {
        // Failing here, before any work, beats a suite whose host tests fail one by one:
        // they create network namespaces, mount overlayfs and run containers.
        bail!(
            "cargo xtask test must run as root: the host tests create network namespaces, \
             mount filesystems and run containers (sudo is not enough for them)"
        );
    }
    let mut steps = progress::Steps::new(6);
    steps.start("installing host packages that are missing");
    deps::ensure()?;
    steps.start("style gates: cargo fmt --check, cargo clippy -D warnings");
    progress::run(Command::new("cargo").current_dir(root).args(["fmt", "--all", "--check"]), "cargo fmt --check")?;
    progress::run(
        Command::new("cargo").current_dir(root).args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]),
        "cargo clippy -D warnings",
    )?;
    steps.start("unit and host tests (cargo test, all crates but qemu-tests)");
    progress::run(
        Command::new("cargo").current_dir(root).args([
            "test",
            "--workspace",
            "--exclude",
            "qemu-tests",
            "--",
            "--test-threads=2",
        ]),
        "cargo test (unit and host tests)",
    )?;
    steps.start("fuzz targets, a fixed number of inputs each from the committed corpus");
    fuzz::smoke(root)?;
    steps.start("building the node image with mkosi");
    let paths = image::build(root, &image::Inputs::parse(&[])?)?;
    steps.start("checking the image kernel's configuration");
    progress::run(
        Command::new("cargo")
            .current_dir(root)
            .args(["run", "--quiet", "-p", "kernel-config", "--"])
            .arg(&paths.kernel_config),
        "kernel config check",
    )?;
    steps.start("QEMU tests: booting the image (TCG, about a minute per test)");
    let mut cmd = Command::new("cargo");
    cmd.current_dir(root)
        .env("KELSON_IMAGE_DIR", &paths.dir)
        .args(["test", "--no-fail-fast", "-p", "qemu-tests", "--", "--test-threads=2"])
        .args(extra);
    progress::run(&mut cmd, "cargo test -p qemu-tests")?;
    steps.done();
    Ok(())
}
