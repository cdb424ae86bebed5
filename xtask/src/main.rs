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
mod bench_systemd;
mod deps;
mod fuzz;
mod image;
mod kubernetes;
mod progress;
mod run;
mod schemathesis;
mod suite;

use anyhow::{bail, Result};
use std::path::PathBuf;
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
     \n  bench [boot|net|supervise|pods|usr|memory|cluster|api|vs-systemd]  benchmarks measured inside the guest\
     \n                 (vs-systemd --build-only: build the systemd node it compares with, and stop)\
     \n  api-check      schemathesis against the management API's OpenAPI document (a step of test)\
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
            run::boot_interactive(&root, &paths)
        }
        Some("test") => suite::run(&root, &args[1..]),
        Some("api-check") => schemathesis::run(&root),
        Some("bench") => {
            deps::ensure()?;
            let paths = image::build(&root, &image::Inputs::parse(&[])?)?;
            bench::run(&root, &paths, args.get(1).map(String::as_str).unwrap_or("boot"), &args[2.min(args.len())..])
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
